"""The Generate and Control tabs: an identity (a photo's face, an embedding file or a random
one) → new images, optionally with the pose and expression of a reference photo."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facegen.errors import FacegenError, NoFaceDetectedError
from facegen.types import Face, IdentityEmbedding

from .files import (
    SavedImage,
    embedding_upload,
    float_input,
    image_upload,
    provenance_notice,
    save_output,
    user_error,
    write_zip,
)
from .services import Services, SessionState

__all__ = [
    "IDENTITY_SOURCES",
    "FacePreview",
    "GenerationResult",
    "control_preview",
    "detect_faces",
    "generate_images",
    "parse_face_choice",
]

MAX_SEED = 2**31 - 1
IDENTITY_SOURCES = ("photo", "embedding", "random")
#: The longest prompt accepted (CLIP reads only its first 77 tokens).
MAX_PROMPT = 1000
#: Faces whose boxes overlap less than this are not the same face (detector matching).
_MIN_IOU = 0.3

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


def parse_face_choice(value: Any, n_faces: int) -> int | None:
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


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


# ------------------------------------------------------------------------------- identity


@dataclass
class Identity:
    """The identity to generate: its embedding for the pipeline, the independent (dlib)
    embedding of the photo's face when it came from a photo, and a record for manifests."""

    embedding: IdentityEmbedding
    reference: IdentityEmbedding | None
    record: dict[str, Any] = field(default_factory=dict)
    #: The face's 224 ArcFace-template crop (photo identities): IP-Adapter-FaceID PlusV2's
    #: face-structure input.
    crop: Any = None


def identity_spec(pipe: Any) -> Any:
    """The pipeline's identity spec (encoder ids, dimension)."""
    return pipe.identity_spec


def resolve_identity(
    services: Services,
    pipe: Any,
    preset: str,
    source: str,
    photo: str | None,
    face: Any,
    embedding_file: str | None,
    embedding_index: Any,
    seed: int,
) -> Identity:
    """Turn the identity inputs into an :class:`Identity` for ``pipe`` (held by the caller)."""
    lim = services.limits
    spec = identity_spec(pipe)
    if source == "random":
        from facegen.pipelines.identities import sample_identities

        ids = sample_identities(1, dim=spec.dim, seed=seed, encoder_id=spec.encoder_ids[0])
        return Identity(ids.embeddings()[0], None, {"random_identity_seed": seed})
    if source == "embedding":
        embs, name = embedding_upload(embedding_file, max_bytes=lim.max_upload_bytes)
        k = _index(embedding_index, len(embs), name)
        emb = embs[k]
        if emb.encoder_id not in spec.encoder_ids:
            raise user_error(
                f"{name} holds {emb.encoder_id} embeddings, but preset {preset!r} needs "
                f"{' or '.join(spec.encoder_ids)} embeddings. Make the file with the matching "
                "encoder (facegen embed --encoder …), or use a photo.",
                "Wrong kind of embedding",
            )
        return Identity(emb, None, {"embedding_file": name, "embedding_index": k})
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
    with services.using_analyzer() as analyzer:
        faces = analyzer.analyze(image, select="all", source=name)
    if not faces:
        det = analyzer.detector
        raise NoFaceDetectedError(source=name, threshold=det.score_threshold, detector=det.name)
    k = parse_face_choice(face, len(faces))
    k = _largest(faces) if k is None else k
    chosen = faces[k]
    ident_analyzer = getattr(pipe, "identity_analyzer", None)
    if ident_analyzer is None:
        raise user_error(
            f"Preset {preset!r} cannot read identities from photos (it has no identity "
            "encoder). Use an embedding file or a random identity.",
            "Not possible with this preset",
        )
    cond = ident_analyzer.analyze(image, select="all", source=name)
    best = max(cond, key=lambda f: _iou(f.bbox, chosen.bbox), default=None)
    if best is None or _iou(best.bbox, chosen.bbox) < _MIN_IOU or best.embedding is None:
        raise user_error(
            f"The identity encoder of preset {preset!r} did not find face #{k} of {name}; "
            "pick another face or a clearer photo.",
            "No face found",
        )
    from facegen.align import align_face

    record = {"photo": name, "face": k, "bbox": [round(float(v), 1) for v in chosen.bbox]}
    return Identity(best.embedding, chosen.embedding, record, align_face(image, best, size=224))


def _index(value: Any, n: int, name: str) -> int:
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


# ------------------------------------------------------------------------------- control


def _reference_face(services: Services, path: str | None) -> tuple[np.ndarray, Face, str]:
    lim = services.limits
    image, name = image_upload(
        path,
        what="a reference photo (its pose and expression are used)",
        max_bytes=lim.max_upload_bytes,
        max_pixels=lim.max_pixels,
    )
    with services.using_analyzer() as analyzer:
        face = analyzer.analyze(image, select="largest", embed=False, source=name)[0]
    if face.landmarks is None or len(face.landmarks) != 68:
        raise user_error(
            f"No 68-point landmarks were found for the face in {name}.", "No landmarks"
        )
    return image, face, name


def control_preview(
    services: Services, path: str | None, size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """The reference photo with its landmarks drawn, and the landmark map the ControlNet gets
    (RGB uint8 ``(size, size, 3)``; generation renders it at the pipeline's size)."""
    from facegen.control import render_landmarks68, transfer_landmarks
    from facegen.visualize import draw_faces

    image, face, _ = _reference_face(services, path)
    points = transfer_landmarks(face, size=size)
    control = np.asarray(render_landmarks68(points, size))
    return draw_faces(image, [face]), control


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


def _check_request(
    services: Services, num_images: Any, steps: Any, seed: Any, rand: bool
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


def _similarities(
    services: Services, pipe: Any, images: list[Any], ident: Identity
) -> tuple[list[float | None], list[float | None]]:
    """Per image: similarity to the identity under the conditioning encoder, and under dlib
    to the photo's face (``None``: no face found, or nothing to compare with)."""
    cond: list[float | None] = [None] * len(images)
    ind: list[float | None] = [None] * len(images)
    analyzer = getattr(pipe, "identity_analyzer", None)
    enc = getattr(analyzer, "encoder", None)
    if enc is not None and enc.encoder_id == ident.embedding.encoder_id:
        try:
            sims = pipe.measure_identity_similarity(images, [ident.embedding] * len(images), None)
            cond = [s.get(enc.encoder_id) for s in sims]
        except FacegenError:
            pass
    if ident.reference is not None:
        with services.using_analyzer() as dlib:
            for k, img in enumerate(images):
                try:
                    emb = dlib.embed(np.asarray(img), select="largest")
                except NoFaceDetectedError:
                    continue
                ind[k] = round(float(emb.similarity(ident.reference)), 4)
    return cond, ind


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def generate_images(
    services: Services,
    state: SessionState,
    *,
    preset: str,
    source: str,
    photo: str | None,
    face: Any,
    embedding_file: str | None,
    embedding_index: Any,
    num_images: Any,
    seed: Any,
    randomize_seed: bool,
    steps: Any,
    guidance: Any,
    prompt: str | None,
    reference: str | None = None,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
) -> GenerationResult:
    """Generate ``num_images`` images of one identity (seeds ``seed … seed+n-1``); with
    ``reference`` (Control tab, a ControlNet preset), in the reference's pose."""
    from facegen.control import render_landmarks68, transfer_landmarks
    from facegen.visualize import draw_faces

    n, n_steps, base = _check_request(services, num_images, steps, seed, randomize_seed)
    wants_control = reference is not None
    offered = services.control_presets if wants_control else services.generate_presets
    if preset not in offered:
        raise user_error(f"The preset must be one of {', '.join(offered)}, got {preset!r}.")
    g = None if guidance in (None, "") else float_input(guidance, "Guidance", 0.0, 30.0)
    prompt = (prompt or "").strip() or None
    if prompt is not None and len(prompt) > MAX_PROMPT:
        raise user_error(f"The prompt must be at most {MAX_PROMPT} characters, got {len(prompt)}.")
    ref = _reference_face(services, reference) if wants_control else None
    if progress is not None:
        progress(0, desc=f"loading {preset}")
    with services.using_pipeline(preset) as pipe:
        takes_text = pipe.takes_prompt
        if prompt is not None and not takes_text:
            if warn is not None:
                warn(f"Preset {preset!r} is identity-only; the prompt was ignored.")
            prompt = None
        if takes_text and prompt is None:
            raise user_error(f"Preset {preset!r} needs a text prompt.", "Missing input")
        ident = resolve_identity(
            services, pipe, preset, source, photo, face, embedding_file, embedding_index, base
        )
        total = n_steps or int(pipe.default_steps)
        done = [0]

        def on_step(_p: Any, _i: int, _t: Any, kw: dict[str, Any]) -> dict[str, Any]:
            done[0] += 1
            if progress is not None:
                progress((done[0], total), desc="denoising", unit="steps")
            return kw

        kwargs: dict[str, Any] = {
            "num_images_per_identity": n,
            "seeds": [base + k for k in range(n)],
            "callback_on_step_end": on_step,
        }
        if n_steps:
            kwargs["num_inference_steps"] = n_steps
        if g is not None:
            kwargs["guidance_scale"] = g
        if prompt is not None:
            kwargs["prompt"] = prompt
        if getattr(getattr(pipe, "faceid", None), "variant", None) == "plusv2":
            if ident.crop is None:
                raise user_error(
                    f"Preset {preset!r} also uses the face's structure, so it needs a photo of "
                    "the person (not an embedding file or a random identity).",
                    "Not possible with this preset",
                )
            kwargs["face_crops"] = [ident.crop]
        overlay = control = None
        if ref is not None:
            image, rface, _ = ref
            size = int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
            control = np.asarray(render_landmarks68(transfer_landmarks(rface, size=size), size))
            overlay = draw_faces(image, [rface])
            from PIL import Image

            kwargs["control_image"] = Image.fromarray(control)
        out = pipe([ident.embedding], **kwargs)
        if progress is not None:
            progress(1.0, desc="measuring identity similarity")
        cond, ind = _similarities(services, pipe, list(out.images), ident)
    op = "control" if wants_control else "generate"
    run = services.run_dir(state, op)
    saved, captions, rows, records = [], [], [], []
    for k, (img, md) in enumerate(zip(out.images, out.metadata)):
        name = f"{op}_{k:02d}_seed{md['seed']}.png"
        params = {
            **md,
            "identity_source": source,
            "identity": ident.record,
            "identity_similarity": {"conditioning": cond[k], "dlib": ind[k]},
        }
        if ref is not None:
            params["pose_reference"] = ref[2]
        s = save_output(img, run / name, op, params)
        saved.append(s)
        captions.append(
            f"seed {md['seed']} · similarity {_fmt(cond[k] if cond[k] is not None else ind[k])}"
        )
        rows.append([name, md["seed"], _fmt(cond[k]), _fmt(ind[k])])
        records.append({"file": name, **params, "watermark_detected": s.watermark_detected})
    manifest = {"operation": op, "preset": preset, "seed": base, "images": records}
    zip_path = write_zip(run / f"facegen-{op}-seed{base}.zip", [s.path for s in saved], manifest)
    return GenerationResult(
        saved, captions, rows, zip_path, base, provenance_notice(saved), overlay, control
    )
