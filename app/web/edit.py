"""The Swap and Anonymize handlers: identity edits of real photos.

They read the form (uploads within the app's limits, numbers from fields), build the
library's option values once (:class:`~facegen.pipelines.editing.options.EditOptions`,
:class:`~facegen.pipelines.editing.anonymize.AnonymizeOptions`) and run the same jobs as the
``facegen`` CLI (:mod:`facegen.pipelines.editing.jobs`), which write each output with its
provenance record; what is left here is how the results are shown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facegen.errors import FacegenError
from facegen.pipelines.editing.options import ANONYMIZE_MODES, FACE_POLICIES

from .files import (
    FieldValue,
    SavedImage,
    float_input,
    image_upload,
    int_input,
    provenance_notice,
    user_error,
    write_zip,
)
from .services import Services, SessionState

if TYPE_CHECKING:
    from facegen.pipelines.editing.anonymize import AnonymizeOptions, FaceRecord
    from facegen.pipelines.editing.jobs import JobOutput
    from facegen.pipelines.editing.options import EditOptions
    from facegen.pipelines.editing.swap import SwapFace

__all__ = [
    "ANONYMIZE_HEADERS",
    "ANONYMIZE_MODES",
    "SWAP_HEADERS",
    "AnonymizeResult",
    "SwapOutcome",
    "anonymize_files",
    "swap_faces",
]

Progress = Callable[..., Any]

SWAP_HEADERS = [
    "face",
    "box",
    "seed",
    "similarity to source (conditioning)",
    "similarity to source (dlib)",
    "similarity to original (dlib)",
]
ANONYMIZE_HEADERS = [
    "image",
    "face",
    "box",
    "detector score",
    "mode",
    "fallback",
    "similarity to original",
]


def _png_name(name: str, suffix: str) -> str:
    return f"{Path(name).stem}_{suffix}.png"


def _box(bbox: Sequence[float]) -> str:
    return ", ".join(str(round(float(v))) for v in bbox)


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def _face_selection(value: object) -> str | int:
    text = "all" if value is None else str(value).strip()
    if text in FACE_POLICIES:
        return text
    if text.startswith("#"):
        text = text[1:].split()[0]
    try:
        return int(text)
    except ValueError:
        raise user_error(
            f"The faces to change must be all, largest, best or a face number, got {value!r}.",
            "Which face?",
        ) from None


def _number(value: FieldValue, what: str, parse: Callable[[FieldValue], float]) -> float:
    try:
        return parse(value)
    except (TypeError, ValueError):
        raise user_error(f"{what} must be a number, got {value!r}.") from None


def _edit_options(
    services: Services, seed: FieldValue, steps: FieldValue, strength: FieldValue = 1.0
) -> EditOptions:
    """The generation settings of the form: ``steps`` 0 = the preset's; the seed leaves room
    for one seed per face (``seed + k``); strength in (0, 1]."""
    from facegen.pipelines.editing.options import EditOptions

    n_steps = int_input(steps or 0, "Steps (0 = the preset's)", 0, services.limits.max_steps)
    s = int_input(seed or 0, "The seed", 0, 2**31 - 64)
    st = float_input(strength, "Strength", 0.0, 1.0)
    return EditOptions(strength=st, num_inference_steps=n_steps or None, seed=s)


def _check_preset(services: Services, preset: str | None) -> str:
    if preset not in services.edit_presets:
        raise user_error(
            f"The preset must be one of {', '.join(services.edit_presets)}, got {preset!r}."
        )
    return preset


def _upload(services: Services, path: str | None, what: str) -> tuple[np.ndarray, str]:
    lim = services.limits
    return image_upload(path, what=what, max_bytes=lim.max_upload_bytes, max_pixels=lim.max_pixels)


def _saved(job: JobOutput[Any] | Path, image: np.ndarray) -> SavedImage:
    """What the job's file carries, read back (as :func:`.files.save_output` reports it)."""
    from facegen.provenance import can_watermark, check

    path = job if isinstance(job, Path) else job.path
    rep = check(path)
    return SavedImage(
        path,
        rep.has_metadata,
        can_watermark(image),
        rep.watermark_detected,
        rep.digital_source_type,
    )


# ------------------------------------------------------------------------------- swap


@dataclass
class SwapOutcome:
    """The target with its faces numbered, the swapped result, per-face rows (by face
    number), the saved file and the provenance line."""

    target_preview: np.ndarray
    saved: SavedImage
    rows: list[list[Any]]
    notice: str


def _swap_row(face: SwapFace, independent: str | None) -> list[Any]:
    """One table row: similarities under the conditioning encoder and the independent one."""
    cond = {k: v for k, v in face.source_similarity.items() if k != independent}
    return [
        face.detector_index,
        _box(face.edit.bbox),
        face.edit.seed,
        _fmt(next(iter(cond.values()), None)),
        _fmt(face.source_similarity.get(independent or "")),
        _fmt(face.target_similarity.get(independent or "")),
    ]


def swap_faces(
    services: Services,
    state: SessionState,
    *,
    source: str | None,
    target: str | None,
    faces: str | None,
    preset: str,
    seed: FieldValue,
    steps: FieldValue,
    strength: FieldValue,
    method: str | None = "diffusion",
    restore: str | None = None,
    restore_blend: FieldValue = 0.8,
    progress: Progress | None = None,
) -> SwapOutcome:
    """Put the source photo's identity on the selected faces of the target photo
    (:func:`facegen.pipelines.editing.jobs.swap_file`, or with a one-shot ``method``
    :func:`facegen.pipelines.editing.oneshot_jobs.oneshot_swap_file`, then ``restore``)."""
    status = services.swap_status()
    if not status.available:
        raise user_error(status.message, "Not available")
    from facegen.pipelines.editing.jobs import swap_file
    from facegen.visualize import draw_faces

    src, src_name = _upload(services, source, "a source photo (whose identity is used)")
    tgt, tgt_name = _upload(services, target, "a target photo (whose faces are replaced)")
    selection = _face_selection(faces)
    if method not in (None, "", "diffusion"):
        return _swap_oneshot(
            services, state, str(method), restore, restore_blend, src, src_name, tgt, tgt_name,
            selection, progress,
        )  # fmt: skip
    _check_preset(services, preset)
    options = _edit_options(services, seed, steps, strength)
    if progress is not None:
        progress(0, desc=f"loading {preset}")
    with services.using_pipeline(preset) as pipe, services.using_analyzer() as analyzer:
        if progress is not None:
            progress(0.1, desc="swapping")
        path = services.run_dir(state, "swap") / _png_name(tgt_name, "swap")
        job = swap_file(
            tgt, src, path, pipe, analyzer, selection, options,
            target_name=tgt_name, source_name=src_name,
        )  # fmt: skip
        independent = getattr(analyzer.encoder, "encoder_id", None)
    res = job.result
    saved = _saved(job, res.image)
    rows = [_swap_row(f, independent) for f in res.faces]
    # the faces numbered as in the face list
    return SwapOutcome(draw_faces(tgt, res.detected), saved, rows, provenance_notice([saved]))


ONESHOT_NOTE = "one-shot swap (no seed, no similarity check)"


def _swap_oneshot(
    services: Services,
    state: SessionState,
    method: str,
    restore: str | None,
    restore_blend: FieldValue,
    src: np.ndarray,
    src_name: str,
    tgt: np.ndarray,
    tgt_name: str,
    selection: Any,
    progress: Progress | None,
) -> SwapOutcome:
    """The Swap tab with a one-shot swapper (and restoration)."""
    from facegen.errors import ModelNotAvailableError
    from facegen.pipelines.editing.oneshot_jobs import oneshot_source, oneshot_swap_file
    from facegen.validate import check_choice
    from facegen.visualize import draw_faces

    method = check_choice(method, "method", services.swap_methods)
    if restore in ("", "none"):
        restore = None
    if restore is not None:
        restore = check_choice(restore, "restore", ("gfpgan", "codeformer"))
    blend = float_input(restore_blend, "restoration blend", 0.0, 1.0)
    if progress is not None:
        progress(0, desc=f"loading {method}")
    try:
        with (
            services.using_oneshot(method, restore=restore, restore_blend=blend) as (swap, src_an),
            services.using_analyzer() as analyzer,
        ):
            identity = oneshot_source(src, src_an, name=src_name)
            path = services.run_dir(state, "swap") / _png_name(tgt_name, "swap")
            detected = analyzer.detect(tgt)  # once: for the swap and the numbered preview
            written, record = oneshot_swap_file(
                tgt, identity, swap, analyzer, path, faces=selection, target_name=tgt_name,
                source_name=src_name, found=detected,
            )  # fmt: skip
    except ModelNotAvailableError as exc:
        from .files import _model_message

        raise user_error(_model_message(exc), "Model not available") from None
    from facegen.image_io import load_image

    saved = _saved(written, load_image(written))
    rows = [
        [n, _box(np.asarray(f["bbox"])), None, ONESHOT_NOTE, None, None]
        for n, f in enumerate(record["faces"])
    ]
    return SwapOutcome(draw_faces(tgt, detected), saved, rows, provenance_notice([saved]))


# ------------------------------------------------------------------------------- anonymize


@dataclass
class AnonymizeResult:
    """One saved output per anonymized image (with its caption), the per-face report rows,
    the zip of everything, the provenance line and the files that were skipped (and why)."""

    saved: list[SavedImage]
    captions: list[str]
    rows: list[list[Any]]
    zip_path: Path | None
    notice: str
    skipped: list[str]


def _anonymize_options(
    mode: str, faces: str | None, blur_sigma: FieldValue, pixel_blocks: FieldValue, shape: str
) -> AnonymizeOptions:
    """The form's settings (an empty field keeps the default), checked before any file is
    read."""
    from facegen.pipelines.editing.anonymize import AnonymizeOptions

    if mode not in ANONYMIZE_MODES:
        raise user_error(f"The mode must be one of {', '.join(ANONYMIZE_MODES)}, got {mode!r}.")
    given: dict[str, Any] = {}
    what = "Blur strength and pixel blocks"
    if blur_sigma not in (None, ""):
        given["blur_sigma"] = _number(blur_sigma, what, float)
    if pixel_blocks not in (None, ""):
        given["pixel_blocks"] = int(_number(pixel_blocks, what, int))
    return AnonymizeOptions(mode=mode, faces=_face_selection(faces), shape=shape, **given)


def _is_user_error(exc: BaseException) -> bool:
    """An error meant for the user (a ``gr.Error`` from the upload checks, or facegen's)."""
    import gradio as gr

    return isinstance(exc, (gr.Error, FacegenError))


def _read_uploads(
    services: Services, paths: list[str], skipped: list[str], warn: Callable[[str], None] | None
) -> list[tuple[np.ndarray, str]]:
    """Every readable upload with its name, before any model work: an unreadable, empty or
    too large file is reported in ``skipped`` like a photo without a face (an error when it
    is the only one)."""
    images = []
    for p in paths:
        try:
            images.append(_upload(services, p, "a photo"))
        except Exception as exc:
            if len(paths) == 1 or not _is_user_error(exc):
                raise
            reason = getattr(exc, "message", None) or str(exc)
            skipped.append(f"{Path(p).name}: {reason}")
            if warn is not None:
                warn(f"{Path(p).name} was skipped: {reason}")
    return images


def _anonymize_one(
    services: Services,
    image: np.ndarray,
    name: str,
    path: Path,
    options: AnonymizeOptions,
    preset: str | None,
    edit: EditOptions,
) -> JobOutput[Any]:
    """:func:`facegen.pipelines.editing.jobs.anonymize_file` with the app's models."""
    from facegen.pipelines.editing.jobs import anonymize_file, face_replacement

    if options.mode != "generate":
        with services.using_analyzer() as ana:
            return anonymize_file(image, path, ana, options, source=name)
    using = services.using_pipeline(_check_preset(services, preset))
    with using as pipe, services.using_analyzer() as ana:
        # verified with the app's dlib encoder, independent of every conditioning encoder
        hook = face_replacement(pipe, ana, edit)
        return anonymize_file(image, path, ana, options, replace_face=hook, source=name)


def _face_row(name: str, f: FaceRecord) -> list[Any]:
    fallback = f.fallback_reason or ("yes" if f.fallback else "no")
    score = round(float(f.score), 3)
    return [name, f.index, _box(f.bbox), score, f.mode, fallback, _fmt(f.similarity)]


def anonymize_files(
    services: Services,
    state: SessionState,
    *,
    files: Sequence[str] | None,
    mode: str,
    faces: str | None,
    blur_sigma: FieldValue,
    pixel_blocks: FieldValue,
    shape: str,
    preset: str | None,
    seed: FieldValue,
    steps: FieldValue,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> AnonymizeResult:
    """Anonymize every selected face of every uploaded image. ``blur_sigma``: the blur's σ as
    a fraction of the face size; ``pixel_blocks``: blocks across a face (pixelate). An image
    without a face is skipped with a warning (an error when it is the only one)."""
    lim = services.limits
    paths = [str(f) for f in (files or []) if f]
    if not paths:
        raise user_error("Please upload one or more photos.", "Missing input")
    if len(paths) > lim.max_files:
        raise user_error(f"At most {lim.max_files} images at once, got {len(paths)}.")
    options = _anonymize_options(mode, faces, blur_sigma, pixel_blocks, shape)
    edit = _edit_options(services, seed, steps)
    skipped: list[str] = []
    images = _read_uploads(services, paths, skipped, warn)
    if mode == "generate":
        status = services.swap_status()
        if not status.available:
            raise user_error(
                f"{status.message} Choose blur, pixelate or mask instead.", "Not available"
            )
        _check_preset(services, preset)
    run = services.run_dir(state, "anonymize")
    saved: list[SavedImage] = []
    captions: list[str] = []
    rows: list[list[Any]] = []
    records: list[dict[str, Any]] = []
    for k, (image, name) in enumerate(images):
        if progress is not None:
            progress((k, len(images)), desc=f"anonymizing {name}", unit="images")
        out_name = _png_name(name, f"anon{k:02d}")
        try:
            job = _anonymize_one(services, image, name, run / out_name, options, preset, edit)
        except FacegenError as exc:
            if len(paths) == 1:
                raise
            skipped.append(f"{name}: {exc}")
            if warn is not None:
                warn(f"{name} was skipped: {exc}")
            continue
        res = job.result
        saved.append(_saved(job, res.image))
        captions.append(f"{name}: {len(res.faces)} of {res.num_detected} face(s), {mode}")
        rows += [_face_row(name, f) for f in res.faces]
        records.append({"file": out_name, **job.record})
    if not saved:
        raise user_error(
            "No image could be anonymized:\n" + "\n".join(skipped), "Nothing anonymized"
        )
    if progress is not None:
        progress((len(images), len(images)), desc="done", unit="images")
    manifest = {"operation": "anonymize", "images": records, "skipped": skipped}
    zip_path = write_zip(run / "facegen-anonymized.zip", [x.path for x in saved], manifest)
    return AnonymizeResult(saved, captions, rows, zip_path, provenance_notice(saved), skipped)
