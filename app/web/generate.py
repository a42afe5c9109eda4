"""The Generate and Control tabs: an identity (a photo's face, an embedding file or a random
one) → new images, optionally with the pose and expression of a reference photo."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facegen.errors import NoFaceDetectedError
from facegen.pipelines.generation.job import (
    MAX_SEED,
    EmbeddingIdentities,
    GeneratedImage,
    GenerateRequest,
    IdentitySource,
    PhotoIdentities,
    PhotoIdentity,
    PoseReference,
    RandomIdentities,
    landmark_map,
    pose_face,
    run_generate,
)
from facegen.types import Face

from .files import (
    FieldValue,
    SavedImage,
    embedding_upload,
    float_input,
    image_upload,
    provenance_notice,
    user_error,
    zip_folder,
)
from .services import Services, SessionState

__all__ = [
    "IDENTITY_SOURCES",
    "FacePreview",
    "GenerationResult",
    "control_preview",
    "detect_faces",
    "generate_images",
    "identity_source",
    "parse_face_choice",
]

IDENTITY_SOURCES = ("photo", "embedding", "random")

Progress = Callable[..., Any]


# ------------------------------------------------------------------------------- faces


@dataclass(frozen=True)
class FacePreview:
    """Faces found in an uploaded photo: the annotated image (RGB uint8), the picker's
    ``(label, value)`` choices, the chosen value and a one-line summary."""

    image: np.ndarray
    choices: list[tuple[str, str]]
    value: str
    summary: str


def _largest(faces: Sequence[Face]) -> int:
    return int(np.argmax([f.area for f in faces]))


def detect_faces(services: Services, path: str | None, *, what: str = "a photo") -> FacePreview:
    """Detect the faces of an uploaded photo and number them for the face picker."""
    from facegen.visualize import draw_faces

    lim = services.limits
    image, name = image_upload(
        path, what=what, max_bytes=lim.max_upload_bytes, max_pixels=lim.max_pixels
    )
    with services.using_analyzer() as analyzer:
        faces = analyzer.detect(image)
    if not faces:
        det = analyzer.detector
        raise NoFaceDetectedError(
            source=name, threshold=det.score_threshold, detector=getattr(det, "name", None)
        )
    big = _largest(faces)
    choices = [
        (f"#{i}{' (largest)' if i == big else ''} — score {f.score:.2f}", str(i))
        for i, f in enumerate(faces)
    ]
    summary = (
        f"{len(faces)} faces found in {name}, numbered in the picture; #{big} is the largest."
        if len(faces) > 1
        else f"1 face found in {name}."
    )
    return FacePreview(draw_faces(image, faces), choices, str(big), summary)


def parse_face_choice(value: FieldValue, n_faces: int) -> int | None:
    """The face picker's value → a face index (``None`` = the largest)."""
    text = "" if value is None else str(value).strip()
    if text in ("", "largest", "auto"):
        return None
    if text.startswith("#"):
        text = text[1:].split()[0]
    try:
        index = int(text)
    except ValueError:
        raise user_error(
            f"The face must be 'largest' or a face number, got {value!r}.", "Which face?"
        ) from None
    if not 0 <= index < n_faces:
        raise user_error(
            f"Face #{index} does not exist: the photo has {n_faces} face(s) (#0–#{n_faces - 1}).",
            "Which face?",
        )
    return index


# ------------------------------------------------------------------------------- inputs


def identity_source(
    services: Services,
    source: str,
    photo: str | None,
    face: FieldValue,
    embedding_file: str | None,
    embedding_index: FieldValue,
) -> IdentitySource:
    """The identity inputs of the form as the job's identity source (one identity)."""
    lim = services.limits
    if source == "random":
        return RandomIdentities(1)
    if source == "embedding":
        embs, name = embedding_upload(embedding_file, max_bytes=lim.max_upload_bytes)
        k = _index(embedding_index, len(embs), name)
        return EmbeddingIdentities(tuple(embs), name, (k,))
    if source != "photo":
        raise user_error(
            f"The identity source must be one of {', '.join(IDENTITY_SOURCES)}, got {source!r}.",
            "Missing input",
        )
    image, name = image_upload(
        photo,
        what="a photo of the person",
        max_bytes=lim.max_upload_bytes,
        max_pixels=lim.max_pixels,
    )
    # the picker numbers the faces as detect_faces found them
    with services.using_analyzer() as analyzer:
        faces = analyzer.detect(image)
    if not faces:
        det = analyzer.detector
        raise NoFaceDetectedError(source=name, threshold=det.score_threshold, detector=det.name)
    k = parse_face_choice(face, len(faces))
    k = _largest(faces) if k is None else k
    x1, y1, x2, y2 = (float(v) for v in faces[k].bbox)
    return PhotoIdentities((PhotoIdentity(image, name, (x1, y1, x2, y2), k),))


def _index(value: FieldValue, n: int, name: str) -> int:
    try:
        k = int(value or 0)
    except (TypeError, ValueError):
        raise user_error(f"The embedding number must be an integer, got {value!r}.") from None
    if not 0 <= k < n:
        raise user_error(
            f"{name} holds {n} embedding(s) (numbers 0–{n - 1}); got number {k}.",
            "No such embedding",
        )
    return k


def _reference_photo(services: Services, path: str | None) -> tuple[np.ndarray, str]:
    lim = services.limits
    return image_upload(
        path,
        what="a reference photo (its pose and expression are used)",
        max_bytes=lim.max_upload_bytes,
        max_pixels=lim.max_pixels,
    )


def control_preview(
    services: Services, path: str | None, size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """The reference photo with its landmarks drawn, and the landmark map the ControlNet gets
    (RGB uint8 ``(size, size, 3)``; generation renders it at the pipeline's size)."""
    from facegen.visualize import draw_faces

    image, name = _reference_photo(services, path)
    with services.using_analyzer() as analyzer:
        face = pose_face(analyzer, image, name)
    return draw_faces(image, [face]), landmark_map(face, size)


def _check_request(
    services: Services, num_images: FieldValue, steps: FieldValue, seed: FieldValue, rand: bool
) -> tuple[int, int, int]:
    lim = services.limits
    try:
        n = int(num_images)
        s = int(steps or 0)
    except (TypeError, ValueError):
        raise user_error("The number of images and steps must be whole numbers.") from None
    if not 1 <= n <= lim.max_images:
        raise user_error(f"The number of images must be 1–{lim.max_images}, got {n}.")
    if not 0 <= s <= lim.max_steps:
        raise user_error(f"Steps must be 0 (preset default) to {lim.max_steps}, got {s}.")
    if rand or seed is None or seed == "":
        base = secrets.randbelow(MAX_SEED - lim.max_images)
    else:
        try:
            base = int(seed)
        except (TypeError, ValueError):
            raise user_error(f"The seed must be a whole number, got {seed!r}.") from None
        if not 0 <= base <= MAX_SEED - n + 1:
            raise user_error(f"The seed must be in [0, {MAX_SEED - n + 1}], got {base}.")
    return n, s, base


# ------------------------------------------------------------------------------- generation


@dataclass
class GenerationResult:
    """Saved images with their captions, the per-image table, the zip, the seed used, the
    provenance line, and (Control tab) the landmark overlay and control map."""

    saved: list[SavedImage]
    captions: list[str]
    rows: list[list[Any]]
    zip_path: Path
    seed: int
    notice: str
    overlay: np.ndarray | None = None
    control: np.ndarray | None = None


TABLE_HEADERS = ["file", "seed", "similarity (conditioning encoder)", "similarity (dlib)"]


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def _progress(progress: Progress | None) -> Callable[[str, int, int], None] | None:
    """The job's progress reports on the page's progress bar."""
    if progress is None:
        return None

    def report(stage: str, done: int, total: int) -> None:
        if stage == "denoising":
            progress((done, total), desc="denoising", unit="steps")
        else:
            progress(1.0, desc=stage)

    return report


def _saved(image: GeneratedImage) -> SavedImage:
    """What the saved file carries, read back from it."""
    from facegen.provenance import can_watermark, check

    rep = check(image.path)
    return SavedImage(
        image.path,
        rep.has_metadata,
        can_watermark(image.image),
        rep.watermark_detected,
        rep.digital_source_type,
    )


def generate_images(
    services: Services,
    state: SessionState,
    *,
    preset: str,
    source: str,
    photo: str | None,
    face: FieldValue,
    embedding_file: str | None,
    embedding_index: FieldValue,
    num_images: FieldValue,
    seed: FieldValue,
    randomize_seed: bool,
    steps: FieldValue,
    guidance: FieldValue,
    prompt: str | None,
    reference: str | None = None,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> GenerationResult:
    """Generate ``num_images`` images of one identity (seeds ``seed … seed+n-1``); with
    ``reference`` (Control tab, a ControlNet preset), in the reference's pose.

    The form is parsed into a :class:`~facegen.pipelines.generation.job.GenerateRequest`
    and run by :func:`~facegen.pipelines.generation.job.run_generate`, the job
    ``facegen generate`` runs too (the same seed gives the same images). ``warn`` is kept
    for the page's warnings (the job has none to give today).
    """
    n, n_steps, base = _check_request(services, num_images, steps, seed, randomize_seed)
    offered = services.control_presets if reference is not None else services.generate_presets
    if preset not in offered:
        raise user_error(f"The preset must be one of {', '.join(offered)}, got {preset!r}.")
    g = None if guidance in (None, "") else float_input(guidance, "Guidance", 0.0, 30.0)
    pose = PoseReference(*_reference_photo(services, reference)) if reference else None
    request = GenerateRequest(
        preset=preset,
        identities=identity_source(services, source, photo, face, embedding_file, embedding_index),
        num_images=n,
        seed=base,
        prompt=(prompt or "").strip() or None,
        steps=n_steps or None,
        guidance=g,
        control=pose,
    )
    if progress is not None:
        progress(0, desc=f"loading {preset}")
    run = services.run_dir(state, request.operation)
    with services.using_pipeline(preset) as pipe:
        res = run_generate(
            request, pipe, run, analyzer=services.using_analyzer, progress=_progress(progress)
        )
    saved = [_saved(im) for im in res.images]
    captions = [
        f"seed {im.seed} · similarity "
        f"{_fmt(next((v for v in im.similarity.values() if v is not None), None))}"
        for im in res.images
    ]
    rows = [
        [
            im.path.name,
            im.seed,
            _fmt(im.similarity.get("conditioning")),
            _fmt(im.similarity.get("dlib")),
        ]
        for im in res.images
    ]
    zip_path = zip_folder(run / f"facegen-{request.operation}-seed{base}.zip", run)
    overlay = None
    if res.pose_face is not None and pose is not None:
        from facegen.visualize import draw_faces

        overlay = draw_faces(pose.image, [res.pose_face])
    return GenerationResult(
        saved, captions, rows, zip_path, base, provenance_notice(saved), overlay, res.control
    )
