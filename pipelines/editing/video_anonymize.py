"""Anonymize the faces of a video: detect, track, and cover every tracked face on every frame.

The pass is :func:`~facegen.pipelines.editing.video_pass.run_video_pass` (streamed decode,
detection every frame or every ``detect_every``-th, tracking, encoding in resumable parts with
the source's times, audio and the provenance record in the container's ``comment`` tag).
Each frame's tracked faces are blurred, pixelated, masked or replaced over their tracked box
(the tracker's spatial margin, then the mask's ``margin``), exactly as
:func:`~facegen.pipelines.editing.anonymize.anonymize_image` treats a still face.

Rules:

* **Err towards covering.** A frame the detector missed between two detections of a face is
  covered by interpolation; after a face's last detection it stays covered for the tracker's
  ``max_gap`` / ``margin_after`` frames; before its first, ``margin_before`` frames. The
  report counts the faces covered without a detection on their frame (``faces_filled``).
* **Whole faces only**: ``faces`` must be ``"all"`` (picking one person across a video is a
  tracking question: not offered yet).
* **Generate mode** takes one ``replace_face`` hook per track
  (:func:`~facegen.pipelines.editing.jobs.track_replacement`): a track keeps one synthetic
  identity; with a secret, one per real person across every video of the run.
* **A video without any detected face** is still written (its frames unchanged would be a
  leak only if a face was there: the report says ``faces_detected: 0`` and the command warns).

:func:`anonymize_video` returns a :class:`~facegen.pipelines.editing.video_pass.VideoAnonymizeReport`
(``to_dict()`` is the JSON report the command writes beside the video).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facegen.errors import InvalidArgumentError
from facegen.pipelines.editing.anonymize import (
    AnonymizeOptions,
    ReplaceFaceFn,
    _anonymize_array,
    anonymize_settings,
)
from facegen.pipelines.editing.tracking import TrackedFrame, TrackerConfig
from facegen.pipelines.editing.video_pass import (
    ProgressFn,
    VideoAnonymizeReport,
    _Detects,
    by_position,
    run_video_pass,
)
from facegen.types import Face

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


#: ``track_id -> replace_face hook`` for mode ``generate``: called once per track.
TrackHooks = Callable[[int], ReplaceFaceFn]


def is_video_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a video by its suffix (:data:`VIDEO_SUFFIXES`)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


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
        self.counts = {"faces_generated": 0, "faces_fallback": 0}  # saved with each part

    def __call__(self, image: np.ndarray, frame: TrackedFrame) -> np.ndarray:
        if not frame.faces:
            return image
        tracked_faces = by_position(frame.faces)
        faces = [Face(bbox=f.bbox, score=max(f.score, 0.0), kps5=f.kps5) for f in tracked_faces]
        if self.options.mode != "generate":
            return _anonymize_array(image, faces, faces, self.options, None).image
        assert self.factory is not None  # checked by _check_options
        for tracked, face in zip(tracked_faces, faces, strict=True):
            hook = self.hooks.get(tracked.track_id)
            if hook is None:
                hook = self.hooks[tracked.track_id] = self.factory(tracked.track_id)
            observe = getattr(hook, "observe", None)  # a pseudonym waits for a detected face
            if observe is not None and tracked.source == "detected" and tracked.face is not None:
                observe(image, tracked.face, frame.index)
            result = _anonymize_array(image, [face], [face], self.options, hook)
            image = result.image
            fell_back = result.faces[0].fallback
            self.counts["faces_fallback"] += fell_back
            self.counts["faces_generated"] += not fell_back
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
    chunk_frames: int | None = 300,
    resume: bool = True,
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
    record in the container's ``comment`` tag says whether it is there). ``chunk_frames``:
    frames per resumable part (None: one piece); ``resume``: continue a killed run's parts
    (see :mod:`~facegen.pipelines.editing.video_pass`).

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
        watermark=watermark, max_frames=max_frames, progress=progress, chunk_frames=chunk_frames,
        resume=resume, resume_extra=str(getattr(replace_face_for_track, "resume_token", "")),
    )  # fmt: skip
    if opts.mode == "generate":
        report.faces_generated = cover.counts["faces_generated"]
        report.faces_fallback = cover.counts["faces_fallback"]
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
        per_video = dict(kwargs)
        if hasattr(hooks, "for_video"):  # pseudonym keys name the video
            per_video["replace_face_for_track"] = hooks.for_video(str(rel))
        try:
            report = anonymize_video(src, out, detector, opts, progress=progress, **per_video)
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
