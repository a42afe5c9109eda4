"""Video reading and writing: tiny clips built here with PyAV (moving squares, a sine track)."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facegen.errors import (
    InvalidArgumentError,
    InvalidImageError,
    InvalidVideoError,
    MissingDependencyError,
    OutputError,
)

av = pytest.importorskip("av")

from facegen import video_io  # noqa: E402
from facegen.video_io import VideoReader, probe_video  # noqa: E402
from facegen.video_write import VideoWriter  # noqa: E402

W, H, N, FPS = 96, 64, 24, 15
VFR_STEPS_MS = (40, 100, 67)


def _picture(i: int, w: int = W, h: int = H, *, noise: bool = False) -> np.ndarray:
    """Black, a green 8×8 marker in the top-left corner, a red 8×8 square at x = 4 + 3i."""
    if noise:
        return np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = np.zeros((h, w, 3), np.uint8)
    img[:8, :8] = (0, 255, 0)
    img[20:28, 4 + 3 * i : 12 + 3 * i] = (255, 0, 0)
    return img


def _square_index(img: np.ndarray) -> int:
    """The frame number the red square's position encodes (centroid x = 7.5 + 3i)."""
    xs = np.nonzero((img[..., 0] > 150) & (img[..., 1] < 100))[1]
    return round((xs.mean() - 7.5) / 3)


def _write_clip(
    path: Path,
    *,
    n: int = N,
    size: tuple[int, int] = (W, H),
    times_ms: list[int] | None = None,
    rotation: float | None = None,
    audio: bool = False,
    noise: bool = False,
    faststart: bool = False,
    fmt: str | None = None,
) -> Path:
    w, h = size
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format=fmt, options=options) as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "18", "g": "6", "keyint_min": "6"}
        if times_ms is not None:
            vs.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            vs.set_display_rotation(rotation)
        if audio:
            aus = out.add_stream("aac", rate=16000)
            aus.layout = "mono"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(_picture(i, w, h, noise=noise), format="rgb24")
            frame.pts = times_ms[i] if times_ms is not None else i
            if times_ms is not None:
                frame.time_base = Fraction(1, 1000)
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        if audio:
            t = np.arange(16000 * n // FPS) / 16000
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            for k in range(0, samples.shape[1], 1024):
                af = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(samples[:, k : k + 1024]), format="fltp", layout="mono"
                )
                af.sample_rate, af.pts = 16000, k
                out.mux(aus.encode(af))
            out.mux(aus.encode())
    return path


def _audio(path: Path) -> tuple[list[tuple[int, int, bytes]], Fraction, int]:
    """Audio packets (pts, dts, bytes), time base and stream duration."""
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        packets = [(p.pts, p.dts, bytes(p)) for p in c.demux(a) if p.size]
        return packets, a.time_base, a.duration


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    times, t = [], 0
    for i in range(12):
        times.append(t)
        t += VFR_STEPS_MS[i % 3]
    return {
        "squares": _write_clip(d / "squares.mp4", audio=True),
        "vfr": _write_clip(d / "vfr.mp4", n=12, times_ms=times),
        "rotated": _write_clip(d / "rotated.mp4", n=6, rotation=-90),  # an iPhone portrait clip
    }


def _read_all(path: Path, **kwargs: object) -> list[video_io.DecodedFrame]:
    with VideoReader(path, **kwargs) as reader:  # type: ignore[arg-type]
        return list(reader)


# --------------------------------------------------------------------------- probe and read


def test_probe_describes_the_clip(clips: dict[str, Path]) -> None:
    info = probe_video(clips["squares"])
    assert (info.width, info.height, info.fps, info.frame_count) == (W, H, FPS, N)
    assert info.codec == "h264" and info.rotation == 0 and info.has_audio
    assert info.is_variable_frame_rate is False and info.sample_aspect_ratio is None
    assert info.duration == pytest.approx(N / FPS, abs=1e-3)
    assert info.upright_shape == (H, W, 3)
    vfr = probe_video(clips["vfr"])
    assert vfr.is_variable_frame_rate is True and not vfr.has_audio


@pytest.mark.parametrize("threads", [1, 2])
def test_reader_streams_frames_in_order(clips: dict[str, Path], threads: int) -> None:
    frames = _read_all(clips["squares"], threads=threads)
    assert [f.index for f in frames] == list(range(N))
    assert [_square_index(f.image) for f in frames] == list(range(N))
    assert all(f.image.dtype == np.uint8 and f.image.shape == (H, W, 3) for f in frames)
    assert [f.time for f in frames] == pytest.approx([i / FPS for i in range(N)])


def test_frame_range_seeks_and_matches_a_full_read(
    clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    found: list[int | None] = []
    real = video_io._pts_of_frame
    monkeypatch.setattr(video_io, "_pts_of_frame", lambda *a: found.append(real(*a)) or found[-1])
    full = _read_all(clips["squares"])
    part = _read_all(clips["squares"], start=8, end=15)
    assert found and found[0] is not None  # the seek path was taken
    assert [f.index for f in part] == list(range(8, 15))
    assert [_square_index(f.image) for f in part] == list(range(8, 15))
    for f in part:
        assert np.array_equal(f.image, full[f.index].image) and f.pts == full[f.index].pts
    tail = _read_all(clips["squares"], start=20)
    assert [_square_index(f.image) for f in tail] == [20, 21, 22, 23]
    with VideoReader(clips["squares"], start=3, end=5) as reader:
        assert reader.num_frames == 2


def test_frame_range_decodes_from_the_start_when_the_seek_misses(
    clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = video_io._pts_of_frame  # one tick early: the first frame after the seek is "late"
    monkeypatch.setattr(video_io, "_pts_of_frame", lambda *a: real(*a) - 1)
    caplog.set_level(logging.DEBUG, logger="facegen.video_io")
    with VideoReader(clips["squares"], start=9, end=13) as reader:
        first, again = list(reader), list(reader)
    assert caplog.text.count("seek missed frame 9") == 2
    assert [_square_index(f.image) for f in first] == [9, 10, 11, 12]
    assert [f.index for f in again] == [9, 10, 11, 12] and reader.frames_read == 4


def test_frame_range_out_of_bounds_is_refused(clips: dict[str, Path]) -> None:
    with pytest.raises(InvalidArgumentError, match="`start` must be < the frame count 24, got 24"):
        VideoReader(clips["squares"], start=N)
    with pytest.raises(InvalidArgumentError, match="`end` must be <= the frame count 24"):
        VideoReader(clips["squares"], end=N + 1)
    with pytest.raises(InvalidArgumentError, match="`end` must be an integer >= 6"):
        VideoReader(clips["squares"], start=5, end=5)


@pytest.mark.parametrize("fmt", ["matroska", "avi"])
def test_other_containers_read_whole(tmp_path: Path, fmt: str) -> None:
    path = _write_clip(tmp_path / f"clip.{fmt[:3]}", n=10, fmt=fmt)  # with B-frames
    frames = _read_all(path)
    assert [_square_index(f.image) for f in frames] == list(range(10))
    assert [f.time for f in frames] == pytest.approx([i / FPS for i in range(10)], abs=1e-3)
    assert [_square_index(f.image) for f in _read_all(path, start=4, end=7)] == [4, 5, 6]
    if fmt == "matroska":  # no frame count in the container: a start past the end says so
        assert probe_video(path).frame_count is None
        with pytest.raises(
            InvalidArgumentError, match=r"`start` must be < the number of frames \(10\), got 12"
        ):
            _read_all(path, start=12)
        with pytest.raises(
            InvalidArgumentError, match=r"`end` must be <= the number of frames \(10\), got 11"
        ):
            _read_all(path, start=8, end=11)


def test_rotated_input_comes_out_upright(clips: dict[str, Path], tmp_path: Path) -> None:
    info = probe_video(clips["rotated"])
    assert info.rotation == 270 and info.upright_shape == (W, H, 3)
    upright = _read_all(clips["rotated"])
    assert upright[0].image.shape == (W, H, 3)
    # turned 90° clockwise: the top-left marker is now top-right
    assert upright[0].image[:8, -8:, 1].min() > 200 and upright[0].image[:8, :8, 1].max() < 50
    stored = _read_all(clips["rotated"], auto_rotate=False)
    assert stored[0].image.shape == (H, W, 3) and stored[0].image[:8, :8, 1].min() > 200
    out = tmp_path / "upright.mp4"
    with VideoWriter(out, fps=info.fps) as writer:
        for f in upright:
            writer.write(f.image, time=f.time)
    back = probe_video(out)
    assert back.rotation == 0 and (back.height, back.width) == (W, H)
    assert np.abs(_read_all(out)[0].image.astype(int) - upright[0].image).mean() < 4


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_rotation_matches_opencv_autorotate(tmp_path: Path, rotation: int) -> None:
    """OpenCV's FFmpeg backend turns frames upright on its own: an independent reference."""
    cv2 = pytest.importorskip("cv2")
    path = _write_clip(tmp_path / "rot.mp4", n=3, rotation=rotation)
    cap = cv2.VideoCapture(str(path))
    ok, bgr = cap.read()
    cap.release()
    assert ok
    ours = _read_all(path, end=1)[0].image
    assert ours.shape == bgr.shape and np.abs(ours.astype(int) - bgr[..., ::-1]).mean() < 1


# --------------------------------------------------------------------------- write


def test_round_trip_keeps_frames_fps_audio_and_metadata(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    src, out = clips["squares"], tmp_path / "out.mp4"
    info = probe_video(src)
    meta = {"title": "anonymized", "comment": '{"facegen": "0.1", "seed": 7}'}
    with (
        VideoReader(src) as reader,
        VideoWriter(
            out, fps=info.fps, metadata=meta, audio_from=src, sample_aspect_ratio=Fraction(4, 3)
        ) as writer,
    ):
        for f in reader:
            writer.write(f.image, time=f.time)
    back = probe_video(out)
    assert (back.frame_count, back.fps, back.width, back.height) == (N, FPS, W, H)
    assert back.sample_aspect_ratio == Fraction(4, 3) and back.is_variable_frame_rate is False
    assert back.metadata["title"] == meta["title"] and back.metadata["comment"] == meta["comment"]
    assert back.duration == pytest.approx(info.duration, abs=1e-3)
    frames = _read_all(out)
    assert [_square_index(f.image) for f in frames] == list(range(N))
    assert [f.time for f in frames] == pytest.approx([i / FPS for i in range(N)])
    assert _audio(out) == _audio(src)  # every packet's bytes and times, and the duration
    assert not list(tmp_path.glob(".*.part"))


def test_vfr_round_trip_keeps_timestamps(clips: dict[str, Path], tmp_path: Path) -> None:
    src = _read_all(clips["vfr"])
    expected = np.cumsum([0] + [VFR_STEPS_MS[i % 3] for i in range(11)]) / 1000
    assert [f.time for f in src] == pytest.approx(expected, abs=1e-6)
    out = tmp_path / "vfr.mp4"
    with VideoWriter(out, fps=probe_video(clips["vfr"]).fps) as writer:
        for f in src:
            writer.write(f.image, time=f.time)
    back = _read_all(out)
    assert [f.time for f in back] == pytest.approx(expected, abs=1e-6)
    assert [_square_index(f.image) for f in back] == list(range(12))
    assert probe_video(out).is_variable_frame_rate is True


def test_range_copies_the_audio_of_its_span(clips: dict[str, Path], tmp_path: Path) -> None:
    src, out = clips["squares"], tmp_path / "range.mp4"
    with (
        VideoReader(src, start=6, end=18) as reader,
        VideoWriter(out, fps=FPS, audio_from=src, audio_span="frames") as writer,
    ):
        for f in reader:
            writer.write(f.image, time=f.time)
    frames = _read_all(out)
    assert [_square_index(f.image) for f in frames] == list(range(6, 18))
    assert frames[0].time == 0 and frames[-1].time == pytest.approx(11 / FPS)
    packets, tb, _ = _audio(src)
    t0, t1 = 6 / FPS, 18 / FPS
    shift = round(t0 / tb)
    want = [(p - shift, d - shift, b) for p, d, b in packets if t0 <= p * tb < t1]
    got, out_tb, _ = _audio(out)
    assert out_tb == tb and len(want) > 10 and got == want


def test_writer_leaves_nothing_when_interrupted(tmp_path: Path) -> None:
    out = tmp_path / "half.mp4"
    with pytest.raises(RuntimeError, match="boom"), VideoWriter(out, fps=FPS) as writer:
        for i in range(5):
            writer.write(_picture(i))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_without_frames_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="no frame was written"):
        VideoWriter(tmp_path / "empty.mp4", fps=FPS).close()
    assert list(tmp_path.iterdir()) == []


def test_writer_odd_size_is_refused_or_padded(tmp_path: Path) -> None:
    odd = np.full((49, 65, 3), 200, np.uint8)
    refused = pytest.raises(InvalidImageError, match=r"must be even.*got 65×49.*odd_size=\"pad\"")
    with refused, VideoWriter(tmp_path / "odd.mp4", fps=FPS) as writer:
        writer.write(odd)
    assert list(tmp_path.iterdir()) == []
    with VideoWriter(tmp_path / "pad.mp4", fps=FPS, odd_size="pad") as writer:
        writer.write(odd)
    info = probe_video(tmp_path / "pad.mp4")
    assert (info.width, info.height) == (66, 50)


@pytest.mark.parametrize(
    ("frames", "error", "match"),
    [
        ([np.zeros((H, W), np.uint8)], InvalidImageError, r"RGB uint8 \(H, W, 3\).*\(64, 96\)"),
        ([np.zeros((H, W, 3), np.float32)], InvalidImageError, "got dtype float32"),
        ([_picture(0), _picture(1, 64, 48)], InvalidImageError, "first frame's shape"),
        ([(_picture(0), 0.5), (_picture(1), 0.5)], InvalidArgumentError, "must be later"),
        ([(_picture(0), 0.0), _picture(1)], InvalidArgumentError, "every frame or none"),
    ],
    ids=["grey", "float", "size-change", "same-time", "time-then-none"],
)
def test_writer_refuses_bad_frames(
    tmp_path: Path, frames: list[object], error: type[Exception], match: str
) -> None:
    out = tmp_path / "bad.mp4"
    with pytest.raises(error, match=match), VideoWriter(out, fps=FPS) as writer:
        for item in frames:
            image, time = item if isinstance(item, tuple) else (item, None)
            writer.write(image, time=time)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_bad_arguments_and_paths(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="`metadata` keys must be among"):
        VideoWriter(tmp_path / "a.mp4", fps=FPS, metadata={"facegen_seed": "7"})
    with pytest.raises(InvalidArgumentError, match=r"`path` must end in \.mp4"):
        VideoWriter(tmp_path / "a.avi", fps=FPS)
    with pytest.raises(InvalidArgumentError, match="`fps` must be a finite number > 0"):
        VideoWriter(tmp_path / "a.mp4", fps=0)
    with pytest.raises(InvalidArgumentError, match="`crf` must be a finite number in"):
        VideoWriter(tmp_path / "a.mp4", fps=FPS, crf=60)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        VideoWriter(blocker / "out.mp4", fps=FPS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_folder"]


def test_missing_av_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(MissingDependencyError, match=r"facegen\[video\]"):
        probe_video(tmp_path / "x.mp4")
    with pytest.raises(MissingDependencyError, match=r"facegen\[video\]"):
        VideoWriter(tmp_path / "x.mp4", fps=FPS)


# --------------------------------------------------------------------------- bad inputs


def _still(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_picture(0)).save(buf, fmt)
    return buf.getvalue()


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w") as out:
        a = out.add_stream("aac", rate=16000)
        a.layout = "mono"
        for k in range(0, 4096, 1024):
            af = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            af.sample_rate, af.pts = 16000, k
            out.mux(a.encode(af))
        out.mux(a.encode())


def _no_frames(path: Path) -> None:
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        out.start_encoding()
        out.mux(vs.encode())


def _unknown_codec(path: Path) -> None:
    mkv = _write_clip(path.with_name("ok.mkv"), n=3, fmt="matroska").read_bytes()
    assert b"V_MPEG4/ISO/AVC" in mkv
    path.write_bytes(mkv.replace(b"V_MPEG4/ISO/AVC", b"V_FACEGEN/NOPE!"))


def _cut(path: Path, at: Callable[[bytes], int], **kwargs: object) -> bytes:
    """Write a clip, keep its first ``at(data)`` bytes at ``path``; returns the whole file."""
    data = _write_clip(path.with_name("full.mp4"), **kwargs).read_bytes()  # type: ignore[arg-type]
    path.write_bytes(data[: at(data)])
    return data


BAD_INPUTS = {
    "missing": (lambda p: None, "file not found"),
    "folder": (lambda p: p.mkdir(), "is a folder"),
    "zero-bytes": (lambda p: p.write_bytes(b""), r"empty file \(0 bytes\)"),
    "garbage": (lambda p: p.write_bytes(bytes(range(256)) * 20), "FFmpeg cannot open it"),
    # a plain MP4 has its index (moov) after the frames (mdat): cut in the frames, or the index
    "cut-before-index": (
        lambda p: _cut(p, lambda d: d.find(b"moov") // 2),
        "FFmpeg cannot open it.*truncated or corrupt",
    ),
    "cut-in-index": (
        lambda p: _cut(p, lambda d: d.find(b"trak") + 64),
        r"no video stream.*truncated or corrupt\?",
    ),
    "audio-only": (_audio_only, r"has no video stream \(streams: audio\)"),
    "png-renamed": (lambda p: p.write_bytes(_still("PNG")), r"is a still image \(PNG\)"),
    "jpeg-renamed": (lambda p: p.write_bytes(_still("JPEG")), r"is a still image \(JPEG\)"),
    "no-frames": (_no_frames, "has no frames"),
    "unknown-codec": (_unknown_codec, "video codec cannot be decoded by this FFmpeg build"),
}
SUFFIX = {"audio-only": ".m4a", "no-frames": ".avi", "unknown-codec": ".mkv"}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_are_refused_clearly(tmp_path: Path, case: str) -> None:
    make, match = BAD_INPUTS[case]
    path = tmp_path / f"input{SUFFIX.get(case, '.mp4')}"
    make(path)
    for call in (probe_video, VideoReader):
        with pytest.raises(InvalidVideoError, match=match) as info:
            call(path)
        assert str(path) in str(info.value)


@pytest.mark.parametrize("cut", ["mid-packet", "packet-boundary"])
def test_truncated_file_yields_its_good_frames_then_says_how_many(tmp_path: Path, cut: str) -> None:
    path = tmp_path / "cut.mp4"  # index first (faststart), so the cut file still opens
    data = _cut(path, lambda d: len(d) * 6 // 10, n=30, size=(160, 120), noise=True, faststart=True)
    if cut == "packet-boundary":
        with av.open(str(tmp_path / "full.mp4")) as c:
            starts = sorted(e.pos for e in c.streams.video[0].index_entries)
        path.write_bytes(data[: starts[len(starts) // 2]])
    got: list[int] = []
    with pytest.raises(InvalidVideoError, match=r"reading stopped after \d+ frame\(s\)") as err:
        for f in VideoReader(path):
            got.append(f.index)
    assert 0 < err.value.frames_read == len(got) < 30 and got == list(range(len(got)))
    with VideoReader(path, allow_truncated=True) as reader:
        assert len(list(reader)) == len(got) and reader.truncated


def test_writer_recovers_from_a_refused_first_time(tmp_path: Path) -> None:
    """A bad ``time`` on the first frame is refused without leaving the writer half set up."""
    with VideoWriter(tmp_path / "t.mp4", fps=FPS) as writer:
        with pytest.raises(InvalidArgumentError):
            writer.write(_picture(0), time=float("nan"))
        writer.write(_picture(0), time=0.0)
        writer.write(_picture(1), time=1 / FPS)
    assert probe_video(tmp_path / "t.mp4").frame_count == 2


# --------------------------------------------------------------------------- parts


def _write_parts(frames: list, sizes: tuple[int, ...], tmp_path: Path) -> list[Path]:
    parts, k = [], 0
    for n, size in enumerate(sizes):
        path = tmp_path / f"part{n}.mp4"
        with VideoWriter(path, fps=FPS, crf=0) as writer:
            for f in frames[k : k + size]:
                writer.write(f.image, time=f.time)
        parts.append(path)
        k += size
    return parts


def test_parts_join_into_the_file_one_writer_makes(clips: dict[str, Path], tmp_path: Path) -> None:
    from facegen.video_write import concat_videos

    src = clips["squares"]
    frames = _read_all(src, start=6, end=18)
    whole = tmp_path / "whole.mp4"
    with VideoWriter(whole, fps=FPS, crf=0, audio_from=src, audio_span="frames") as writer:
        for f in frames:
            writer.write(f.image, time=f.time)
    parts = _write_parts(frames, (5, 4, 3), tmp_path)
    origin, end = frames[0].time, frames[-1].time + 1 / FPS
    starts = [frames[k].time - origin for k in (0, 5, 9)]
    joined = concat_videos(
        parts, tmp_path / "joined.mp4", starts=starts, metadata={"comment": "joined"},
        audio_from=src, audio_span="frames", time_origin=origin, end_time=end,
    )  # fmt: skip
    a, b = _read_all(whole), _read_all(joined)
    assert [f.time for f in b] == pytest.approx([f.time for f in a], abs=1e-4) and len(b) == 12
    assert [_square_index(f.image) for f in b] == list(range(6, 18))
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    assert _audio(joined) == _audio(whole)  # the same packets at the same times
    assert probe_video(joined).metadata["comment"] == "joined"
    # without `starts` each part follows the previous one: a constant-rate clip comes out the same
    packed = _read_all(concat_videos(parts, tmp_path / "packed.mp4"))
    assert [f.time for f in packed] == pytest.approx([f.time for f in a], abs=1e-4)


def test_parts_that_do_not_fit_are_refused_and_nothing_is_written(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    from facegen.video_write import concat_videos

    frames = _read_all(clips["squares"], end=8)
    good = _write_parts(frames, (4, 4), tmp_path)
    out = tmp_path / "out.mp4"
    with pytest.raises(InvalidVideoError, match="do not follow"):
        concat_videos(good, out, starts=[0.0, 0.1])  # the second starts inside the first
    with pytest.raises(InvalidArgumentError, match="one time per part"):
        concat_videos(good, out, starts=[0.0])
    other = tmp_path / "other"
    other.mkdir()
    with VideoWriter(other / "small.mp4", fps=FPS) as writer:
        writer.write(np.zeros((32, 48, 3), np.uint8))
    with pytest.raises(InvalidVideoError, match="does not fit"):
        concat_videos([good[0], other / "small.mp4"], out)
    with pytest.raises(InvalidArgumentError, match="at least one"):
        concat_videos([], out)
    assert not out.exists() and not list(tmp_path.glob(".*.part"))
