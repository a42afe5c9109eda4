"""The Swap and Anonymize tabs: identity edits of real photos."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facegen.errors import FacegenError

from .files import (
    SavedImage,
    image_upload,
    provenance_notice,
    save_output,
    user_error,
    write_zip,
)
from .services import Services, SessionState

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

ANONYMIZE_MODES = ("blur", "pixelate", "mask", "generate")
FACE_POLICIES = ("all", "largest", "best")
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


def _face_selection(value: Any) -> str | int:
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


def _steps(services: Services, steps: Any) -> int | None:
    try:
        s = int(steps or 0)
    except (TypeError, ValueError):
        raise user_error(f"Steps must be a whole number, got {steps!r}.") from None
    if not 0 <= s <= services.limits.max_steps:
        raise user_error(f"Steps must be 0 (preset default) to {services.limits.max_steps}.")
    return s or None


def _seed(seed: Any) -> int:
    try:
        s = int(seed or 0)
    except (TypeError, ValueError):
        raise user_error(f"The seed must be a whole number, got {seed!r}.") from None
    if not 0 <= s <= 2**31 - 64:
        raise user_error(f"The seed must be in [0, {2**31 - 64}], got {s}.")
    return s


# ------------------------------------------------------------------------------- swap


@dataclass
class SwapOutcome:
    """The target with its faces numbered, the swapped result, per-face rows (by face
    number), the saved file and the provenance line."""

    target_preview: np.ndarray
    saved: SavedImage
    rows: list[list[Any]]
    notice: str


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def swap_faces(
    services: Services,
    state: SessionState,
    *,
    source: str | None,
    target: str | None,
    faces: Any,
    preset: str,
    seed: Any,
    steps: Any,
    strength: Any,
    progress: Progress | None = None,
) -> SwapOutcome:
    """Put the source photo's identity on the selected faces of the target photo."""
    status = services.swap_status()
    if not status.available:
        raise user_error(status.message, "Not available")
    from facegen.pipelines.editing.swap import swap
    from facegen.visualize import draw_faces

    if preset not in services.edit_presets:
        raise user_error(
            f"The preset must be one of {', '.join(services.edit_presets)}, got {preset!r}."
        )
    lim = services.limits
    src, src_name = image_upload(
        source, what="a source photo (whose identity is used)",
        max_bytes=lim.max_upload_bytes, max_pixels=lim.max_pixels,
    )  # fmt: skip
    tgt, tgt_name = image_upload(
        target, what="a target photo (whose faces are replaced)",
        max_bytes=lim.max_upload_bytes, max_pixels=lim.max_pixels,
    )  # fmt: skip
    selection = _face_selection(faces)
    n_steps = _steps(services, steps)
    s = _seed(seed)
    try:
        st = float(strength)
    except (TypeError, ValueError):
        raise user_error(f"Strength must be a number in (0, 1], got {strength!r}.") from None
    if not 0 < st <= 1:
        raise user_error(f"Strength must be in (0, 1], got {st}.")
    if progress is not None:
        progress(0, desc=f"loading {preset}")
    analyzer = services.analyzer
    with services.using_pipeline(preset) as pipe, services.using_analyzer():
        if progress is not None:
            progress(0.1, desc="swapping")
        res = swap(
            tgt,
            src,
            pipe,
            analyzer,
            selection,
            independent_analyzer=analyzer,
            seeds=s,
            num_inference_steps=n_steps,
            strength=st,
        )
        found = analyzer.detect(tgt)
    preview = draw_faces(tgt, found)  # numbered as in the face list
    rows, per_face = [], []
    dlib_id = getattr(analyzer.encoder, "encoder_id", "dlib")
    for f in res.faces:
        index = next((i for i, d in enumerate(found) if np.allclose(d.bbox, f.edit.bbox)), None)
        cond = {k: v for k, v in f.source_similarity.items() if k != dlib_id}
        rows.append(
            [
                index,
                _box(f.edit.bbox),
                f.edit.seed,
                _fmt(next(iter(cond.values()), None)),
                _fmt(f.source_similarity.get(dlib_id)),
                _fmt(f.target_similarity.get(dlib_id)),
            ]
        )
        per_face.append({**f.to_dict(), "face": index})
    run = services.run_dir(state, "swap")
    params = {
        "source": src_name,
        "target": tgt_name,
        "preset": preset,
        "faces": per_face,
        "selection": selection,
    }
    saved = save_output(res.image, run / _png_name(tgt_name, "swap"), "swap", params, kind="edited")
    return SwapOutcome(preview, saved, rows, provenance_notice([saved]))


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


def _replace_hook(services: Services, pipe: Any, seed: int, steps: int | None) -> Any:
    from facegen.pipelines.editing.swap import make_replace_face

    options: dict[str, Any] = {}
    if steps:
        options["num_inference_steps"] = steps
    # verified with the app's dlib encoder, independent of every conditioning encoder
    return make_replace_face(pipe, services.analyzer, seed=seed, **options)


def _is_user_error(exc: BaseException) -> bool:
    """An error meant for the user (a ``gr.Error`` from the upload checks, or facegen's)."""
    import gradio as gr

    return isinstance(exc, (gr.Error, FacegenError))


def anonymize_files(
    services: Services,
    state: SessionState,
    *,
    files: Sequence[str] | None,
    mode: str,
    faces: Any,
    blur_sigma: Any,
    pixel_blocks: Any,
    shape: str,
    preset: str | None,
    seed: Any,
    steps: Any,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> AnonymizeResult:
    """Anonymize every selected face of every uploaded image. ``blur_sigma``: the blur's σ as
    a fraction of the face size; ``pixel_blocks``: blocks across a face (pixelate). An image
    without a face is skipped with a warning (an error when it is the only one)."""
    from facegen.pipelines.editing.anonymize import AnonymizeOptions, anonymize_image

    lim = services.limits
    paths = [str(f) for f in (files or []) if f]
    if not paths:
        raise user_error("Please upload one or more photos.", "Missing input")
    if len(paths) > lim.max_files:
        raise user_error(f"At most {lim.max_files} images at once, got {len(paths)}.")
    if mode not in ANONYMIZE_MODES:
        raise user_error(f"The mode must be one of {', '.join(ANONYMIZE_MODES)}, got {mode!r}.")
    selection = _face_selection(faces)
    opts: dict[str, Any] = {"mode": mode, "faces": selection, "shape": shape}
    try:
        if blur_sigma not in (None, ""):
            opts["blur_sigma"] = float(blur_sigma)
        if pixel_blocks not in (None, ""):
            opts["pixel_blocks"] = int(pixel_blocks)
    except (TypeError, ValueError):
        raise user_error(
            f"Blur strength and pixel blocks must be numbers, got {blur_sigma!r} and "
            f"{pixel_blocks!r}."
        ) from None
    AnonymizeOptions(**opts)  # checks the settings before any file is read
    n_steps = _steps(services, steps)
    s = _seed(seed)
    # read every image first, before any model work: an unreadable, empty or too large file
    # is reported and skipped like a photo without a face (an error when it is the only one)
    images = []
    skipped: list[str] = []
    for p in paths:
        try:
            images.append(
                image_upload(
                    p, what="a photo", max_bytes=lim.max_upload_bytes, max_pixels=lim.max_pixels
                )
            )
        except Exception as exc:
            if len(paths) == 1 or not _is_user_error(exc):
                raise
            reason = getattr(exc, "message", None) or str(exc)
            skipped.append(f"{Path(p).name}: {reason}")
            if warn is not None:
                warn(f"{Path(p).name} was skipped: {reason}")
    status = services.swap_status()
    if mode == "generate" and not status.available:
        raise user_error(
            f"{status.message} Choose blur, pixelate or mask instead.", "Not available"
        )
    if mode == "generate" and preset not in services.edit_presets:
        raise user_error(
            f"The preset must be one of {', '.join(services.edit_presets)}, got {preset!r}."
        )
    run = services.run_dir(state, "anonymize")
    saved: list[SavedImage] = []
    captions: list[str] = []
    rows: list[list[Any]] = []
    records: list[dict[str, Any]] = []
    for k, (image, name) in enumerate(images):
        if progress is not None:
            progress((k, len(images)), desc=f"anonymizing {name}", unit="images")
        try:
            if mode == "generate" and preset is not None:
                with services.using_pipeline(preset) as pipe, services.using_analyzer() as ana:
                    hook = _replace_hook(services, pipe, s, n_steps)
                    result = anonymize_image(image, ana, replace_face=hook, source=name, **opts)
            else:
                with services.using_analyzer() as ana:
                    result = anonymize_image(image, ana, source=name, **opts)
        except FacegenError as exc:
            if len(paths) == 1:
                raise
            skipped.append(f"{name}: {exc}")
            if warn is not None:
                warn(f"{name} was skipped: {exc}")
            continue
        report = [f.to_dict() for f in result.faces]
        params = {
            "source": name,
            "anonymize": {k2: v for k2, v in opts.items()},
            "preset": preset if mode == "generate" else None,
            "faces": report,
        }
        out_name = _png_name(name, f"anon{k:02d}")
        saved.append(save_output(result.image, run / out_name, "anonymize", params, kind="edited"))
        captions.append(f"{name}: {len(result.faces)} of {result.num_detected} face(s), {mode}")
        for f in result.faces:
            rows.append(
                [
                    name,
                    f.index,
                    _box(f.bbox),
                    round(float(f.score), 3),
                    f.mode,
                    f.fallback_reason or ("yes" if f.fallback else "no"),
                    _fmt(f.similarity),
                ]
            )
        records.append({"file": out_name, **params})
    if not saved:
        raise user_error(
            "No image could be anonymized:\n" + "\n".join(skipped), "Nothing anonymized"
        )
    if progress is not None:
        progress((len(images), len(images)), desc="done", unit="images")
    manifest = {"operation": "anonymize", "images": records, "skipped": skipped}
    zip_path = write_zip(run / "facegen-anonymized.zip", [x.path for x in saved], manifest)
    return AnonymizeResult(saved, captions, rows, zip_path, provenance_notice(saved), skipped)
