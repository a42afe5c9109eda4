"""Anonymize the faces of a video: detect, track, and cover every tracked face on every frame.

One pass, streamed (never the whole video in memory): :class:`~facegen.video_io.VideoReader`
decodes a frame, the detector runs on it (every frame, or every ``detect_every``-th), the
:class:`~facegen.pipelines.editing.tracking.FaceTracker` turns detections into tracks and
gives each frame the faces to treat — detected, interpolated between detections,
extrapolated through short misses, or in the temporal safety margin — and each face is
blurred, pixelated or filled over its tracked box (the tracker's spatial margin, then the
mask's ``margin``), exactly as :func:`~facegen.pipelines.editing.anonymize.anonymize_image`
treats a still face. The tracker needs a few frames of lookahead
(:attr:`~facegen.pipelines.editing.tracking.TrackerConfig.latency`), so that many decoded
frames wait in a queue. Frames go to :class:`~facegen.video_io.VideoWriter` (H.264 MP4,
written under a temporary name and renamed at the end) with their source times; the audio is
copied packet for packet; the provenance record (what was done, with which detector and
settings) goes into the container's ``comment`` tag.

Rules:

* **Err towards covering.** A frame the detector missed between two detections of a face is
  covered by interpolation; after a face's last detection it stays covered for the tracker's
  ``max_gap`` / ``margin_after`` frames; before its first, ``margin_before`` frames. The
  report counts the faces covered without a detection on their frame (``faces_filled``).
* **Whole faces only**: ``faces`` must be ``"all"`` (picking one person across a video is a
  tracking question: not offered yet), and the ``generate`` mode is for still images for
  now; both are refused with a clear error.
* **A video without any detected face** is still written (its frames unchanged would be a
  leak only if a face was there: the report says ``faces_detected: 0`` and the command warns).

:func:`anonymize_video` returns a :class:`VideoAnonymizeReport` (``to_dict()`` is the JSON
report the command writes beside the video).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from facegen import __version__
from facegen.errors import InvalidArgumentError, InvalidVideoError
from facegen.pipelines.editing.anonymize import (
    AnonymizeOptions,
    ReplaceFaceFn,
    _anonymize_array,
    anonymize_settings,
)
from facegen.pipelines.editing.tracking import FaceTracker, TrackedFrame, TrackerConfig
from facegen.types import Face
from facegen.validate import check_int

__all__ = [
    "VIDEO_SUFFIXES",
    "VideoAnonymizeReport",
    "VideoFolderReport",
    "anonymize_video",
    "anonymize_video_folder",
    "find_videos",
    "is_video_path",
    "run_video_pass",
]

logger = logging.getLogger(__name__)

#: File suffixes `facegen anonymize` treats as videos.
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")


class _Detects(Protocol):
    def detect(self, image: np.ndarray) -> list[Face]: ...


#: ``track_id -> replace_face hook`` for mode ``generate``: called once per track.
TrackHooks = Callable[[int], ReplaceFaceFn]

#: ``(frames done, frames in total or None)``, called after each written frame.
ProgressFn = Callable[[int, "int | None"], None]


def is_video_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a video by its suffix (:data:`VIDEO_SUFFIXES`)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass
class VideoAnonymizeReport:
    """What :func:`anonymize_video` did.

    ``frames``: frames written. ``frames_detected``: frames the detector ran on.
    ``faces_detected``: detections. ``faces_covered``: faces treated over all frames, of
    which ``faces_filled`` were covered on a frame without their own detection (interpolated,
    extrapolated or in the temporal margin: the tracker's safety net, each one a face the
    detector alone would have left visible, or a margin frame where there may be none).
    ``frames_with_faces``: frames where at least one face was covered. ``tracks``: one
    summary per track (see :class:`~facegen.pipelines.editing.tracking.TrackSummary`).
    ``seconds``: wall time of the whole pass.
    """

    source: str
    output: str
    fps: float | None
    width: int
    height: int
    frames: int = 0
    frames_detected: int = 0
    faces_detected: int = 0
    faces_covered: int = 0
    faces_filled: int = 0
    frames_with_faces: int = 0
    faces_by_source: dict[str, int] = field(default_factory=dict)
    tracks: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    audio_copied: bool = False
    seconds: float = 0.0
    faces_generated: int | None = None
    faces_fallback: int | None = None

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "software": f"facegen {__version__}",
            "source": self.source,
            "output": self.output,
            "fps": self.fps,
            "size": [self.width, self.height],
            "frames": self.frames,
            "frames_detected": self.frames_detected,
            "faces_detected": self.faces_detected,
            "faces_covered": self.faces_covered,
            "faces_filled": self.faces_filled,
            "frames_with_faces": self.frames_with_faces,
            "faces_by_source": dict(self.faces_by_source),
            "tracks": list(self.tracks),
            "settings": dict(self.settings),
            "audio_copied": self.audio_copied,
            "faces_generated": self.faces_generated,
            "faces_fallback": self.faces_fallback,
            "seconds": round(self.seconds, 3),
            "frames_per_second": round(self.frames_per_second, 2),
        }


def _check_options(options: AnonymizeOptions, hooks: TrackHooks | None = None) -> None:
    if not isinstance(options, AnonymizeOptions):
        raise InvalidArgumentError(
            f"`options` must be AnonymizeOptions, got {type(options).__name__}"
        )
    if options.mode == "generate" and hooks is None:
        raise InvalidArgumentError(
            "mode 'generate' on a video needs `replace_face_for_track` (one replacement hook "
            "per track, e.g. facegen.pipelines.editing.jobs.track_replacement); or use blur, "
            "pixelate or mask"
        )
    if hooks is not None and not callable(hooks):
        raise InvalidArgumentError("`replace_face_for_track` must be callable")
    if options.faces != "all":
        raise InvalidArgumentError(
            f"a video's faces are all covered (`faces` must be 'all'), got {options.faces!r}"
        )


class _Coverer:
    """Treats each frame's tracked faces; in ``generate`` mode one hook per track, made on the
    track's first frame and kept, so a track keeps its synthetic identity throughout."""

    def __init__(self, options: AnonymizeOptions, hooks: TrackHooks | None) -> None:
        self.options = options
        self.factory = hooks
        self.hooks: dict[int, ReplaceFaceFn] = {}
        self.generated = 0
        self.fallbacks = 0

    def __call__(self, image: np.ndarray, frame: TrackedFrame) -> np.ndarray:
        if not frame.faces:
            return image
        faces = [Face(bbox=f.bbox, score=max(f.score, 0.0), kps5=f.kps5) for f in frame.faces]
        if self.options.mode != "generate":
            return _anonymize_array(image, faces, faces, self.options, None).image
        assert self.factory is not None  # checked by _check_options
        for tracked, face in zip(frame.faces, faces, strict=True):
            hook = self.hooks.get(tracked.track_id)
            if hook is None:
                hook = self.hooks[tracked.track_id] = self.factory(tracked.track_id)
            result = _anonymize_array(image, [face], [face], self.options, hook)
            image = result.image
            fell_back = result.faces[0].fallback
            self.fallbacks += fell_back
            self.generated += not fell_back
        return image


def anonymize_video(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    detector: _Detects,
    options: AnonymizeOptions | None = None,
    *,
    tracker: TrackerConfig | None = None,
    detect_every: int = 1,
    start: int = 0,
    end: int | None = None,
    audio: bool = True,
    crf: float = 18,
    preset: str = "medium",
    watermark: bool = True,
    replace_face_for_track: TrackHooks | None = None,
    max_frames: int | None = None,
    progress: ProgressFn | None = None,
) -> VideoAnonymizeReport:
    """Anonymize every face of the video ``src`` into the MP4 ``out`` (see the module doc).

    ``detector``: anything with ``detect(image) -> list[Face]`` (a
    :class:`~facegen.analyzer.FaceAnalyzer` or a detector backend; ``centerface`` is the
    fast one made for video). ``options``: the still-image settings (mode, mask shape and
    margin, blur strength, …; ``faces="all"``, not ``generate``). ``tracker``: the
    :class:`~facegen.pipelines.editing.tracking.TrackerConfig`; by default ``max_gap`` is
    raised to cover the frames between detections (``detect_every - 1``). ``start``/``end``:
    frame range ``[start, end)``. ``audio``: copy the source's audio (only the packets of the
    range when one is given). ``crf``/``preset``: x264 quality and speed. ``max_frames``: refuse
    (:class:`~facegen.errors.InvalidVideoError`, nothing written) a video that turns out to
    hold more frames, counted as they are decoded, whatever its header says. ``watermark``: embed
    facegen's invisible watermark in every frame (it survives H.264 at crf ≤ 23; the
    record in the container's ``comment`` tag says whether it is there).

    Raises :class:`~facegen.errors.InvalidVideoError` for an unreadable or damaged source
    (nothing is left under ``out``), :class:`~facegen.errors.InvalidArgumentError` for bad
    settings, :class:`~facegen.errors.OutputError` when ``out`` cannot be written.
    """
    opts = options or AnonymizeOptions()
    _check_options(opts, replace_face_for_track)
    cover = _Coverer(opts, replace_face_for_track)
    settings: dict[str, Any] = {"anonymize": anonymize_settings(opts)}
    generator = getattr(replace_face_for_track, "settings", None)
    if opts.mode == "generate" and isinstance(generator, dict):
        settings["anonymize"]["generator"] = generator
    report = run_video_pass(
        src, out, detector, cover, operation="anonymize", settings=settings, tracker=tracker,
        detect_every=detect_every, start=start, end=end, audio=audio, crf=crf, preset=preset,
        watermark=watermark, max_frames=max_frames, progress=progress,
    )  # fmt: skip
    if opts.mode == "generate":
        report.faces_generated, report.faces_fallback = cover.generated, cover.fallbacks
    return report


def _upright_sar(info: Any) -> Any:
    """The pixel aspect of the upright frames: a stored portrait video turned by 90° has its
    pixels turned too."""
    sar = info.sample_aspect_ratio
    if sar is None or info.rotation % 180 != 90 or sar == 0:
        return sar
    return 1 / sar


#: ``(image, frame) -> image``: what a video pass does to one frame's tracked faces.
TreatFn = Callable[[np.ndarray, TrackedFrame], np.ndarray]


def run_video_pass(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    detector: _Detects,
    treat: TreatFn,
    *,
    operation: str,
    settings: dict[str, Any],
    tracker: TrackerConfig | None = None,
    detect_every: int = 1,
    start: int = 0,
    end: int | None = None,
    audio: bool = True,
    crf: float = 18,
    preset: str = "medium",
    watermark: bool = True,
    max_frames: int | None = None,
    progress: ProgressFn | None = None,
) -> VideoAnonymizeReport:
    """The pass every video edit makes (see the module doc): decode, detect every
    ``detect_every``-th frame, track, ``treat`` each frame with its tracked faces, watermark,
    encode with the source's times and audio, and record ``operation`` with ``settings`` (plus
    the detector and tracker) in the container and the report."""
    from facegen.provenance import provenance_metadata
    from facegen.video_io import VideoReader, VideoWriter
    from facegen.watermark import MIN_EMBED_SIDE, embed_watermark

    every = check_int(detect_every, "detect_every", minimum=1, maximum=10_000)
    config = tracker or TrackerConfig(max_gap=max(5, 2 * (every - 1)))
    if not isinstance(config, TrackerConfig):
        raise InvalidArgumentError(f"`tracker` must be TrackerConfig, got {type(config).__name__}")
    if config.max_gap < every - 1:
        raise InvalidArgumentError(
            f"`tracker.max_gap` ({config.max_gap}) must be at least detect_every - 1 "
            f"({every - 1}): faces would be left uncovered between detections"
        )
    if not callable(getattr(detector, "detect", None)):
        raise InvalidArgumentError("`detector` must have a detect(image) method")
    if max_frames is not None:
        max_frames = check_int(max_frames, "max_frames", minimum=1)
    t0 = time.perf_counter()
    reader = VideoReader(src, start=start, end=end)
    info = reader.info
    det_name = getattr(getattr(detector, "detector", detector), "name", type(detector).__name__)
    settings = {
        "detector": det_name,
        "detect_every": every,
        "tracker": config.to_dict(),
        **settings,
        "range": [start, end],
    }
    record = {"software": f"facegen {__version__}", "source": Path(src).name, **settings}
    h, w = info.upright_shape[:2]
    mark = bool(watermark) and min(h, w) >= MIN_EMBED_SIDE
    meta = provenance_metadata(operation, record, kind="edited", watermarked=mark)
    settings["watermark"] = mark
    report = VideoAnonymizeReport(
        source=str(src),
        output=str(out),
        fps=float(info.fps) if info.fps else None,
        width=w,
        height=h,
        settings=settings,
    )
    ranged = start > 0 or end is not None
    total = reader.num_frames
    track = FaceTracker(config)
    queue: deque[np.ndarray] = deque()
    times: deque[float | None] = deque()
    with (
        reader,
        VideoWriter(
            out,
            fps=info.fps or 25,
            crf=crf,
            preset=preset,
            metadata={"comment": meta["facegen"], "description": meta["Description"]},
            sample_aspect_ratio=_upright_sar(info),
            audio_from=src if audio and info.has_audio else None,
            audio_span="frames" if ranged else "all",
            odd_size="pad",
        ) as writer,
    ):

        def emit(frames: list[TrackedFrame]) -> None:
            for frame in frames:
                image = treat(queue.popleft(), frame)
                if mark:
                    image = embed_watermark(image)
                writer.write(image, time=times.popleft())
                report.frames += 1
                report.faces_covered += len(frame.faces)
                report.frames_with_faces += bool(frame.faces)
                for face in frame.faces:
                    report.faces_by_source[face.source] = (
                        report.faces_by_source.get(face.source, 0) + 1
                    )
                if progress is not None:
                    progress(report.frames, total)

        for k, decoded in enumerate(reader):
            if max_frames is not None and k >= max_frames:
                raise InvalidVideoError(
                    f"holds more than {max_frames} frames, the most this run takes",
                    source=str(src),
                )
            queue.append(decoded.image)
            times.append(decoded.time)
            faces = None
            if k % every == 0:
                faces = detector.detect(decoded.image)
                report.frames_detected += 1
                report.faces_detected += len(faces)
            emit(track.push(faces))
        emit(track.flush())
        report.audio_copied = bool(audio and info.has_audio)
    report.faces_filled = report.faces_covered - report.faces_by_source.get("detected", 0)
    report.tracks = [s.to_dict() for s in track.summaries()]
    report.seconds = time.perf_counter() - t0
    if report.faces_detected == 0:
        logger.warning("%s: no face detected in %d frames", src, report.frames)
    return report


# ------------------------------------------------------------------------------ folders


def find_videos(
    root: str | os.PathLike[str], *, exclude: str | os.PathLike[str] | None = None
) -> list[Path]:
    """The video files under ``root`` (by suffix, sorted, links to folders not followed),
    leaving out everything inside ``exclude`` (an output folder inside the input)."""
    base = Path(root)
    skip = Path(exclude).resolve() if exclude is not None else None
    found = []
    for path in sorted(base.rglob("*")):
        if not is_video_path(path) or not path.is_file():
            continue
        if skip is not None and path.resolve().is_relative_to(skip):
            continue
        found.append(path)
    return found


def video_output_name(relative: Path) -> Path:
    """Where a video lands under the output folder: ``a/b.mp4`` stays ``a/b.mp4``; any other
    container keeps its suffix in the name (``a/b.mov`` → ``a/b.mov.mp4``; an input that
    would share its output with another, e.g. ``b.mov`` beside ``b.mov.mp4``, is refused)."""
    if relative.suffix.lower() == ".mp4":
        return relative
    return relative.with_name(relative.name + ".mp4")


@dataclass
class VideoFolderReport:
    """:func:`anonymize_video_folder`'s outcome: per video (relative path) ``done`` (its
    report), ``skipped`` (finished by an earlier run with the same settings), ``no_face`` and
    ``failed`` (with the reason; nothing is left under its output name)."""

    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    no_face: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.done) + len(self.skipped) + len(self.failed)


def _resume_key(src: Path, settings: dict[str, Any]) -> dict[str, Any]:
    st = src.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, **settings}


def anonymize_video_folder(
    root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    detector: _Detects,
    options: AnonymizeOptions | None = None,
    *,
    on_video: Callable[[Path, int, int], ProgressFn | None] | None = None,
    **kwargs: Any,
) -> VideoFolderReport:
    """Every video under ``root`` anonymized into the mirrored tree under ``out_dir``
    (:func:`video_output_name`), each with its JSON report beside it (``NAME.json``), as
    :func:`anonymize_video` does with ``kwargs``.

    Resumable at file granularity: a video is written under a temporary name and its report
    after it, so a run killed halfway leaves the finished videos (skipped on rerun when the
    report's ``resume`` record — the source's size and modification time, the settings —
    still matches) and no half video. A video that cannot be read is recorded in ``failed``
    and the others go on. ``on_video(path, k, total)`` is called before each video and may
    return the progress callback for it."""
    from facegen.errors import FacegenError
    from facegen.fileio import write_json

    base, out_base = Path(root), Path(out_dir)
    opts = options or AnonymizeOptions()
    hooks = kwargs.get("replace_face_for_track")
    _check_options(opts, hooks)
    if "progress" in kwargs:
        raise InvalidArgumentError(
            "pass `on_video` (a progress callback per video), not `progress`"
        )
    root_abs, out_abs = base.resolve(), out_base.resolve()
    if root_abs.is_relative_to(out_abs):
        raise InvalidArgumentError(
            f"the output folder {out_base} must not be the input folder {base} or hold it"
        )
    videos = find_videos(base, exclude=out_base)
    det_name = getattr(getattr(detector, "detector", detector), "name", type(detector).__name__)
    settings = {
        "anonymize": anonymize_settings(opts),
        "detector": det_name,
        "generator": getattr(hooks, "settings", None) if opts.mode == "generate" else None,
        **{k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in sorted(kwargs.items())
           if k != "replace_face_for_track"},
    }  # fmt: skip
    result = VideoFolderReport()
    owners: dict[Path, Path] = {}
    for src in videos:
        target = video_output_name(src.relative_to(base))
        if target in owners:  # e.g. b.mov and b.mov.mp4: one would overwrite the other
            result.failed[str(src.relative_to(base))] = (
                f"its output {target} would overwrite that of {owners[target]}; rename one"
            )
        else:
            owners[target] = src.relative_to(base)
    for k, src in enumerate(videos):
        rel = src.relative_to(base)
        if str(rel) in result.failed:
            continue
        out = out_base / video_output_name(rel)
        report_path = out.with_suffix(".json")
        try:
            key = json.loads(json.dumps(_resume_key(src, settings), default=str))
        except OSError as exc:
            result.failed[str(rel)] = f"cannot be read: {exc}"
            continue
        if out.is_file() and report_path.is_file():
            try:
                previous = json.loads(report_path.read_text())
            except (OSError, ValueError):
                previous = {}
            if previous.get("resume") == key:
                result.skipped.append(str(rel))
                continue
        progress = on_video(src, k, len(videos)) if on_video is not None else None
        try:
            report = anonymize_video(src, out, detector, opts, progress=progress, **kwargs)
        except FacegenError as exc:
            result.failed[str(rel)] = str(exc)
            logger.warning("%s: not anonymized (%s)", src, exc)
            continue
        data = {**report.to_dict(), "resume": key}
        write_json(report_path, data)
        result.done[str(rel)] = data
        if report.faces_detected == 0:
            result.no_face.append(str(rel))
    return result
