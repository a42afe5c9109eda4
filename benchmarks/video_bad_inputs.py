"""Bad video inputs: what `facegen anonymize` does with each (a clear error or a correct output).

Inputs, built here (a 64-frame 640×360 clip of t1.jpg's people panning, with audio, is the
base): a zero-byte file; the clip cut at half its bytes (index at the end, so it cannot be
opened; and with ``+faststart``, index first, so the frames before the cut can be read); the
clip with 4 KiB of its middle overwritten with garbage; an audio-only file named ``.mp4``; a
PNG renamed ``.mp4``; an MP4 with no frames; a variable-frame-rate clip (frame gaps of 33,
50 and 100 ms); a phone-style portrait clip (stored landscape, display matrix -90°); an
MKV/WebM (VP9) clip. Each is run through the command as a user runs it, in this process
(``facegen.app.cli.main``), and the outcome is checked: the exit status, the message, and for
a written video its frame count, times and upright size against the source's.

Usage: ``python benchmarks/video_bad_inputs.py [--work DIR]``; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np

N, FPS, W, H = 64, 25, 640, 360


def _frames() -> list[np.ndarray]:
    import cv2

    from facegen.image_io import load_image
    from facegen.samples import sample_path

    t1 = load_image(sample_path("t1"))
    big = cv2.resize(t1, (1000, round(t1.shape[0] * 1000 / t1.shape[1])))
    y0 = max(0, (big.shape[0] - H) // 2)
    return [np.ascontiguousarray(big[y0 : y0 + H, 5 * i : 5 * i + W]) for i in range(N)]


def _write(
    path: Path,
    frames: list[np.ndarray],
    *,
    times_ms: list[int] | None = None,
    rotation: float | None = None,
    audio: bool = True,
    faststart: bool = False,
    codec: str = "libx264",
) -> Path:
    import av

    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as out:
        vs = out.add_stream(codec, rate=FPS)
        vs.height, vs.width = frames[0].shape[:2]
        vs.pix_fmt = "yuv420p"
        if codec == "libx264":
            vs.options = {"preset": "veryfast", "crf": "18"}
        if times_ms is not None:
            vs.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            vs.set_display_rotation(rotation)
        aus = None
        if audio:
            aus = out.add_stream("aac" if codec == "libx264" else "libopus", rate=48000)
            aus.layout = "mono"
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = times_ms[i] if times_ms is not None else i
            if times_ms is not None:
                frame.time_base = Fraction(1, 1000)
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        if aus is not None:
            t = np.arange(48000 * len(frames) // FPS) / 48000
            samples = (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)[None]
            for k in range(0, samples.shape[1], 960):
                af = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(samples[:, k : k + 960]), format="fltp", layout="mono"
                )
                af.sample_rate, af.pts = 48000, k
                out.mux(aus.encode(af))
            out.mux(aus.encode())
    return path


def _audio_only(path: Path) -> Path:
    import av

    with av.open(str(path), "w", format="mp4") as out:
        a = out.add_stream("aac", rate=16000)
        a.layout = "mono"
        for k in range(0, 16000, 1024):
            af = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            af.sample_rate, af.pts = 16000, k
            out.mux(a.encode(af))
        out.mux(a.encode())
    return path


def _no_frames(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        out.start_encoding()
        out.mux(vs.encode())
    return path


def _inputs(work: Path) -> dict[str, tuple[Path, str]]:
    """name → (file, what a correct outcome is)."""
    from PIL import Image

    frames = _frames()
    base = _write(work / "clip.mp4", frames)
    data = base.read_bytes()
    fast = _write(work / "fast.mp4", frames, faststart=True).read_bytes()
    made: dict[str, tuple[Path, str]] = {}

    def put(name: str, blob: bytes, expect: str) -> None:
        path = work / name
        path.write_bytes(blob)
        made[name] = (path, expect)

    put("zero-byte.mp4", b"", "error")
    put("truncated-index-at-end.mp4", data[: len(data) // 2], "error")
    put("truncated-faststart.mp4", fast[: len(fast) // 2], "error, naming the frames read")
    middle = len(data) // 2
    rng = np.random.default_rng(0)
    put(
        "garbage-in-the-middle.mp4",
        data[:middle] + rng.integers(0, 256, 4096, np.uint8).tobytes() + data[middle + 4096 :],
        "error or a written video (decoders conceal damage)",
    )
    made["audio-only.mp4"] = (_audio_only(work / "audio-only.mp4"), "error")
    png = work / "still.png"
    Image.fromarray(frames[0]).save(png)
    put("still-image-renamed.mp4", png.read_bytes(), "error")
    made["no-frames.mp4"] = (_no_frames(work / "no-frames.mp4"), "error")
    steps = [33, 50, 100]
    times = [int(t) for t in np.cumsum([0] + [steps[i % 3] for i in range(N - 1)])]
    made["variable-frame-rate.mp4"] = (
        _write(work / "variable-frame-rate.mp4", frames, times_ms=times),
        "video with the same frame times",
    )
    made["phone-portrait.mp4"] = (
        _write(work / "phone-portrait.mp4", frames, rotation=-90),
        "upright video (360×640)",
    )
    made["vp9.webm"] = (
        _write(work / "vp9.webm", frames, codec="libvpx-vp9"),
        "H.264 MP4, same frames and times",
    )
    return made


def _run(src: Path, out: Path) -> tuple[int, str]:
    from facegen.app.cli.main import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["anonymize", str(src), "--out", str(out), "--detect-every", "3"])
    lines = [ln for ln in err.getvalue().splitlines() if "error:" in ln]
    message = lines[-1].split("error:", 1)[1].strip() if lines else ""
    return rc, message.replace(str(src.parent) + "/", "")


def _check(src: Path, out: Path) -> str:
    from facegen.errors import FacegenError
    from facegen.video_io import VideoReader, probe_video

    try:
        want = [f.time for f in VideoReader(src)]
        want_shape = probe_video(src).upright_shape
    except FacegenError as exc:
        return f"source not readable here either ({exc})"
    got = [f.time for f in VideoReader(out)]
    info = probe_video(out)
    same_times = len(got) == len(want) and np.allclose(
        np.array(got) - got[0], np.array(want) - want[0], atol=2e-3
    )
    return (
        f"{len(got)}/{len(want)} frames, times {'kept' if same_times else 'CHANGED'}, "
        f"{info.width}×{info.height} (source upright {want_shape[1]}×{want_shape[0]}), "
        f"audio {'kept' if info.has_audio else 'none'}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="video_bad_"))
    work.mkdir(parents=True, exist_ok=True)
    print("| input | a correct outcome | exit | outcome |")
    print("|---|---|---|---|")
    for name, (src, expect) in _inputs(work).items():
        out = work / "out" / (Path(name).stem + ".mp4")
        rc, message = _run(src, out)
        if out.exists():
            what = _check(src, out)
        else:
            what = (message or "no output, no message").replace("|", "\\|")
            what += "; nothing written" if not list(out.parent.glob(f"*{out.stem}*")) else ""
        print(f"| `{name}` | {expect} | {rc} | {what} |")


if __name__ == "__main__":
    main()
