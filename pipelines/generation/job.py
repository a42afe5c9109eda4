"""The ``generate`` job: identities → new images, saved with their provenance and a manifest.

(The request types live in :mod:`facegen.pipelines.generation.request` and are exported
here too.)

The CLI (``facegen generate``) and the web app (Generate and Control tabs) both describe
what they want as a :class:`GenerateRequest` and call :func:`run_generate`, so one request
and seed give the same identities, images, file names and records on either surface; a
surface only parses its inputs into the request and shows the result.

Steps of :func:`run_generate`: 1 check the request against the pipeline → 2 resolve the
identities (:func:`resolve_identities`) → 3 the control image (ControlNet presets) →
4 generate (image ``k`` with seed ``seed + k``, identity-major) → 5 measure each image's
identity similarity → 6 save the PNGs with provenance, ``control.png`` and
``manifest.json``.

The rules, in one place:

* **identities**: random ones are :func:`~facegen.pipelines.identities.sample_identities`
  (uniform, pairwise cosine < 0.3) in the pipeline's identity space, seeded with the
  request's seed; for a generator that ships its training identities (``identity_bank``,
  e.g. ``demo-orl``), from the Gaussian fitted to them, below its calibrated separation to
  each other and below its leakage threshold to every training identity; embedding files must hold the pipeline's encoder's vectors; a photo's
  face is read by the pipeline's own identity analyzer.
* **prompt** (:func:`check_prompt`): identity-only presets refuse one, text presets need one.
* **control** (:func:`check_control`): ControlNet presets need a pose reference or a
  control image, the others take none.
* **outputs**: ``id{identity:04d}_img{image:03d}_seed{seed}.png``, each with the pipeline's
  metadata plus how its identity was chosen (``identity_source``, ``identity``), its
  similarities and the control input; operation ``control`` with a control input, else
  ``generate``.

``analyzer`` (a :class:`~facegen.analyzer.FaceAnalyzer` with 68 landmarks and an encoder
independent of the conditioning one; dlib by default) places pose references and measures
the photo identities' similarity; pass a callable returning a context manager to hold it
under a lock only while it is used.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facegen.errors import (
    FacegenError,
    IncompatibleEmbeddingError,
    InvalidArgumentError,
    NoFaceDetectedError,
)
from facegen.pipelines.generation.presets import preset_names
from facegen.pipelines.generation.request import (
    MAX_PROMPT,
    MAX_SEED,
    ControlImage,
    EmbeddingIdentities,
    GenerateRequest,
    IdentitySource,
    PhotoIdentities,
    PhotoIdentity,
    PoseReference,
    RandomIdentities,
    check_control,
    check_prompt,
)
from facegen.types import AlignedFace, Face, IdentityEmbedding
from facegen.validate import check_fits_in_memory

if TYPE_CHECKING:
    from facegen.analyzer import FaceAnalyzer
    from facegen.pipelines.generation.id_to_face import IDGenerationMixin

    #: A face analyzer, or a callable returning a context manager that holds one (a lock).
    AnalyzerSource = FaceAnalyzer | Callable[[], contextlib.AbstractContextManager[FaceAnalyzer]]

__all__ = [
    "MAX_PROMPT",
    "MAX_SEED",
    "ControlImage",
    "EmbeddingIdentities",
    "GenerateRequest",
    "GenerateResult",
    "GeneratedImage",
    "Identity",
    "IdentitySource",
    "PhotoIdentities",
    "PhotoIdentity",
    "PoseReference",
    "RandomIdentities",
    "check_control",
    "check_prompt",
    "image_file_name",
    "landmark_map",
    "load_generate_pipeline",
    "output_size",
    "pose_face",
    "resolve_identities",
    "run_generate",
]

logger = logging.getLogger(__name__)

#: Faces whose boxes overlap less than this are not the same face (matching across detectors).
MIN_IOU = 0.3

#: ``progress(stage, done, total)``: ``"denoising"`` after every step (``total`` = steps ×
#: chunks), ``"measuring identity similarity"`` once before the measurement.
Progress = Callable[[str, int, int], None]


# ------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Identity:
    """One identity to generate: its embedding for the pipeline, how it was chosen
    (``record``, saved with every image), the independent encoder's embedding of its
    photo's face (``reference``; photos only) and the face's aligned 224 crop (``crop``;
    pipelines that need one, IP-Adapter-FaceID PlusV2)."""

    embedding: IdentityEmbedding
    record: dict[str, Any]
    reference: IdentityEmbedding | None = None
    crop: AlignedFace | None = None


@dataclass(frozen=True)
class GeneratedImage:
    """One saved image: ``image`` RGB uint8 ``(S, S, 3)``, its file, seed, identity number,
    provenance ``record`` and ``similarity`` to its identity (``{"conditioning": …,
    "dlib": …}``, ``None`` where not measured or no face was found)."""

    path: Path
    image: np.ndarray
    seed: int
    identity_index: int
    record: dict[str, Any]
    similarity: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class GenerateResult:
    """The saved images (identity-major), the identities used, ``manifest.json``, and with a
    control input the control image (RGB uint8 ``(S, S, 3)``, saved as ``control.png``) and,
    for a pose reference, its face (for drawing)."""

    request: GenerateRequest
    images: list[GeneratedImage]
    identities: list[Identity]
    manifest_path: Path
    control: np.ndarray | None = None
    control_path: Path | None = None
    pose_face: Face | None = None

    @property
    def paths(self) -> list[Path]:
        return [im.path for im in self.images]


def image_file_name(identity_index: int, image_index: int, seed: int) -> str:
    """The file name of an image: ``id0000_img000_seed7.png``."""
    return f"id{identity_index:04d}_img{image_index:03d}_seed{seed}.png"


# ------------------------------------------------------------------------------- analyzers


@functools.cache
def _default_analyzer() -> FaceAnalyzer:
    from facegen.analyzer import FaceAnalyzer

    # detection + 68 landmarks (pose maps) + an encoder independent of every conditioning one
    return FaceAnalyzer.from_names("dlib", "dlib68", "dlib")


@contextlib.contextmanager
def _using(analyzer: AnalyzerSource | None) -> Iterator[FaceAnalyzer]:
    """The analyzer for a ``with`` block: ``analyzer`` itself, the one its context manager
    holds (a callable), or dlib's (``None``)."""
    if analyzer is None:
        yield _default_analyzer()
    elif callable(analyzer) and not hasattr(analyzer, "detect"):
        with analyzer() as held:
            yield held
    else:
        yield analyzer


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _best_match(faces: Sequence[Face], box: np.ndarray) -> Face | None:
    """The face overlapping ``box`` most, if it overlaps at least :data:`MIN_IOU`."""
    best = max(faces, key=lambda f: _iou(f.bbox, box), default=None)
    return best if best is not None and _iou(best.bbox, box) >= MIN_IOU else None


# ------------------------------------------------------------------------------- identities


def _random_identities(
    source: RandomIdentities, pipe: IDGenerationMixin, seed: int
) -> list[Identity]:
    from facegen.pipelines.identities import sample_identities

    spec = pipe.identity_spec
    check_fits_in_memory(source.count * spec.dim * 8, "drawing the random identities")
    bank = getattr(pipe, "identity_bank", None)
    if bank is None:
        ids = sample_identities(
            source.count, dim=spec.dim, seed=seed, encoder_id=spec.encoder_ids[0]
        )
    else:  # in the model's own domain, and never one of the people it was trained on
        from facegen.pipelines.identities import with_person_means

        rows = with_person_means(bank[0], bank[1])
        calibrated = dict(getattr(pipe.preset_info, "dataset_defaults", None) or {})
        separation = float(calibrated.get("identity_separation", 0.3))
        ids = sample_identities(
            source.count,
            dim=spec.dim,
            sampler="gaussian",
            bank=rows,
            seed=seed,
            max_similarity=separation,
            leakage_bank=rows,
            leakage_threshold=float(calibrated.get("leakage_threshold", separation)),
            encoder_id=spec.encoder_ids[0],
        )
    return [
        Identity(e, {"random_identity_seed": seed, "random_identity_index": i})
        for i, e in enumerate(ids.embeddings())
    ]


def _file_identities(
    source: EmbeddingIdentities, pipe: IDGenerationMixin, preset: str
) -> list[Identity]:
    spec = pipe.identity_spec
    out = []
    for k, emb in source.chosen:
        if emb.encoder_id not in spec.encoder_ids:
            raise IncompatibleEmbeddingError(
                f"{source.name} holds {emb.encoder_id} embeddings, but preset {preset!r} needs "
                f"{' or '.join(spec.encoder_ids)} embeddings. Make the file with the matching "
                "encoder (facegen embed --encoder …), or use a photo."
            )
        out.append(Identity(emb, {"embedding_file": source.name, "embedding_index": k}))
    return out


def _photo_identity(
    photo: PhotoIdentity,
    pipe: IDGenerationMixin,
    preset: str,
    analyzer: AnalyzerSource | None,
    reference: bool,
) -> Identity:
    """The conditioning encoder's identity of the photo's chosen face (and the independent
    encoder's, ``reference``, for measuring)."""
    cond = pipe.identity_analyzer
    if cond is None:
        raise InvalidArgumentError(
            f"preset {preset!r} cannot read identities from photos (it has no identity "
            "encoder); use an embedding file or random identities"
        )
    if photo.box is None:
        face = cond.analyze(photo.image, select="largest", require_single=True, source=photo.name)[
            0
        ]
    else:
        face = _best_match(
            cond.analyze(photo.image, select="all", source=photo.name), np.asarray(photo.box)
        )
        if face is None:
            which = "the chosen face" if photo.face is None else f"face #{photo.face}"
            raise FacegenError(
                f"The identity encoder of preset {preset!r} did not find {which} of "
                f"{photo.name}; pick another face or a clearer photo."
            )
    if face.embedding is None:
        raise NoFaceDetectedError(source=photo.name)
    box = face.bbox if photo.box is None else np.asarray(photo.box, np.float32)
    record: dict[str, Any] = {"photo": photo.name}
    if photo.face is not None:
        record["face"] = photo.face
    record["bbox"] = [round(float(v), 1) for v in box]
    ref = None
    if reference:
        with _using(analyzer) as ind:
            match = _best_match(ind.analyze(photo.image, select="all", source=photo.name), box)
        ref = match.embedding if match is not None else None
    crop = None
    if pipe.needs_face_crops:
        from facegen.align import align_face

        crop = align_face(photo.image, face, size=224)
    return Identity(face.embedding, record, ref, crop)


def resolve_identities(
    request: GenerateRequest, pipe: IDGenerationMixin, *, analyzer: AnalyzerSource | None = None
) -> list[Identity]:
    """Step 2: the request's identities, in the pipeline's identity space (see the module
    doc for the rules); refused when the pipeline cannot take them."""
    src = request.identities
    if isinstance(src, RandomIdentities):
        ids = _random_identities(src, pipe, request.seed)
    elif isinstance(src, EmbeddingIdentities):
        ids = _file_identities(src, pipe, request.preset)
    else:
        ids = [
            _photo_identity(p, pipe, request.preset, analyzer, request.measure_identity)
            for p in src.photos
        ]
    if pipe.needs_face_crops and any(i.crop is None for i in ids):
        raise InvalidArgumentError(
            f"preset {request.preset!r} also uses the face's structure, so it needs a photo of "
            "the person (not an embedding file or random identities)"
        )
    return ids


# ------------------------------------------------------------------------------- control


def pose_face(analyzer: FaceAnalyzer, image: np.ndarray, name: str) -> Face:
    """The largest face of a pose reference, with its 68 landmarks."""
    face = analyzer.analyze(image, select="largest", embed=False, source=name)[0]
    if face.landmarks is None or len(face.landmarks) != 68:
        raise InvalidArgumentError(f"No 68-point landmarks were found for the face in {name}.")
    return face


def landmark_map(face: Face, size: int) -> np.ndarray:
    """``face``'s landmarks moved into a ``size`` output frame and drawn as facegen's
    landmark map: RGB uint8 ``(size, size, 3)``."""
    from facegen.control import render_landmarks68, transfer_landmarks

    return np.asarray(render_landmarks68(transfer_landmarks(face, size=size), size))


def _control(
    control: PoseReference | ControlImage, size: int, analyzer: AnalyzerSource | None
) -> tuple[np.ndarray, Face | None]:
    """Step 3: the control image at the output size, and the pose reference's face."""
    from PIL import Image

    if isinstance(control, ControlImage):
        return np.asarray(Image.fromarray(control.image).resize((size, size))), None
    with _using(analyzer) as a:
        face = pose_face(a, control.image, control.name)
    return landmark_map(face, size), face


# ------------------------------------------------------------------------------- the job


def output_size(pipe: IDGenerationMixin) -> int:
    """The side of the pipeline's square images."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def _similarities(
    pipe: IDGenerationMixin,
    images: list[np.ndarray],
    ids: list[Identity],
    m: int,
    analyzer: AnalyzerSource | None,
) -> list[dict[str, float | None]]:
    """Step 5, per image: similarity to its identity under the conditioning encoder, and
    under the independent one (dlib) to its photo's face (``None``: no face, or nothing to
    compare with)."""
    cond: list[float | None] = [None] * len(images)
    ind: list[float | None] = [None] * len(images)
    targets = [ids[k // m] for k in range(len(images))]
    enc = getattr(pipe.identity_analyzer, "encoder", None)
    if enc is not None and all(t.embedding.encoder_id == enc.encoder_id for t in targets):
        try:
            sims = pipe.measure_identity_similarity(images, [t.embedding for t in targets], None)
            cond = [s.get(enc.encoder_id) for s in sims]
        except FacegenError:
            pass
    if any(t.reference is not None for t in targets):
        with _using(analyzer) as a:
            for k, (img, t) in enumerate(zip(images, targets)):
                if t.reference is None:
                    continue
                try:
                    emb = a.embed(img, select="largest")
                except NoFaceDetectedError:
                    continue
                ind[k] = round(float(emb.similarity(t.reference)), 4)
    return [{"conditioning": c, "dlib": d} for c, d in zip(cond, ind)]


def _call_pipeline(
    request: GenerateRequest,
    pipe: IDGenerationMixin,
    ids: list[Identity],
    control: np.ndarray | None,
    progress: Progress | None,
) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """Step 4: every image (identity-major, seeds ``seed + k``) as RGB uint8 arrays, with
    the pipeline's metadata."""
    from PIL import Image

    steps = request.steps or int(pipe.default_steps)
    total = steps * -(-request.total // (request.batch_size or request.total))
    done = [0]

    def on_step(_p: Any, _i: int, _t: Any, kw: dict[str, Any]) -> dict[str, Any]:
        done[0] += 1
        if progress is not None:
            progress("denoising", done[0], total)
        return kw

    kwargs: dict[str, Any] = {}
    if request.steps is not None:
        kwargs["num_inference_steps"] = request.steps
    if request.guidance is not None:
        kwargs["guidance_scale"] = request.guidance
    if request.prompt is not None:
        kwargs["prompt"] = request.prompt
    if control is not None:
        kwargs["control_image"] = Image.fromarray(control)
    if pipe.needs_face_crops:
        kwargs["face_crops"] = [i.crop for i in ids]
    out = pipe(
        [i.embedding for i in ids],
        num_images_per_identity=request.num_images,
        seeds=request.seeds,
        batch_size=request.batch_size,
        callback_on_step_end=on_step,
        **kwargs,
    )
    return [np.asarray(im.convert("RGB")) for im in out.images], list(out.metadata)


def run_generate(
    request: GenerateRequest,
    pipe: IDGenerationMixin,
    out_dir: str | Path,
    *,
    analyzer: AnalyzerSource | None = None,
    progress: Progress | None = None,
) -> GenerateResult:
    """Run ``request`` with ``pipe`` (the request's preset, built by
    :func:`load_generate_pipeline` or borrowed) and save everything under ``out_dir``.

    ``analyzer``: see the module doc (``None`` builds dlib's when needed). ``progress``:
    see :data:`Progress`. Returns the :class:`GenerateResult`.
    """
    from facegen.fileio import write_json

    # 1. the pipeline is the request's preset; every image is held until the call returns
    built = getattr(pipe, "preset_name", None)
    if built is not None and built != request.preset:
        raise InvalidArgumentError(
            f"`pipe` must be the pipeline of preset {request.preset!r}, got one of {built!r}"
        )
    size = output_size(pipe)
    n = request.total
    check_fits_in_memory(n * size * size * 3 * 2, f"{n:,} images of {size}×{size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # 2. identities, 3. control image
    ids = resolve_identities(request, pipe, analyzer=analyzer)
    control, face = _control(request.control, size, analyzer) if request.control else (None, None)
    control_path = _save_control(control, out)
    # 4. generate, 5. measure
    images, metadata = _call_pipeline(request, pipe, ids, control, progress)
    sims: list[dict[str, float | None]] = [{} for _ in images]
    if request.measure_identity:
        if progress is not None:
            progress("measuring identity similarity", 0, 1)
        sims = _similarities(pipe, images, ids, request.num_images, analyzer)
    # 6. save with provenance + manifest
    saved = _save_images(request, images, metadata, ids, sims, out)
    manifest = {
        "operation": request.operation,
        "preset": request.preset,
        "seed": request.seed,
        "source": request.source_record(),
        "images": [{"file": s.path.name, **s.record} for s in saved],
    }
    path = write_json(out / "manifest.json", manifest)
    logger.info("generated %d image(s) of %d identities → %s", n, len(ids), out)
    return GenerateResult(request, saved, ids, path, control, control_path, face)


def _save_control(control: np.ndarray | None, out: Path) -> Path | None:
    if control is None:
        return None
    from facegen.image_io import save_image

    save_image(control, out / "control.png")
    return out / "control.png"


def _save_images(
    request: GenerateRequest,
    images: list[np.ndarray],
    metadata: list[dict[str, Any]],
    ids: list[Identity],
    sims: list[dict[str, float | None]],
    out: Path,
) -> list[GeneratedImage]:
    """Step 6: each image as a PNG carrying its provenance record (and the watermark)."""
    from facegen.provenance import can_watermark, save_with_provenance

    saved = []
    for img, md, sim in zip(images, metadata, sims):
        i = int(md["identity_index"])
        record = {
            **md,
            "identity_source": request.identities.kind,
            "identity": ids[i].record,
        }
        if sim:
            record["identity_similarity"] = sim
        if request.control is not None:
            key = (
                "pose_reference" if isinstance(request.control, PoseReference) else "control_image"
            )
            record[key] = request.control.name
        name = image_file_name(i, int(md["image_index"]), int(md["seed"]))
        mark = request.watermark and can_watermark(img)
        path = save_with_provenance(img, out / name, request.operation, record, watermark=mark)
        saved.append(GeneratedImage(path, img, int(md["seed"]), i, record, sim))
    return saved


# ------------------------------------------------------------------------------- pipeline


def load_generate_pipeline(
    preset: str,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    offline: bool | None = None,
    controlnet: str | Path | None = None,
    lora: str | Path | None = None,
    lora_scale: float = 1.0,
    cpu_offload: bool = False,
    vae_tiling: bool = False,
) -> IDGenerationMixin:
    """The pipeline of ``preset`` for :func:`run_generate`: ``controlnet`` (a local folder,
    for presets that load a ControlNet), a ``lora`` (file or folder) at ``lora_scale``,
    ``cpu_offload`` (CUDA only: each model on the GPU only while it runs), ``vae_tiling``;
    its progress bar off (the caller shows progress)."""
    from facegen.pipelines.generation.presets import from_preset

    loads_controlnet = preset_names(controlnet="built-in", test_double=False)
    if controlnet is not None and preset not in loads_controlnet:
        raise InvalidArgumentError(
            f"`controlnet` applies to presets that load a ControlNet "
            f"({', '.join(loads_controlnet)}), got preset {preset!r}"
        )
    if cpu_offload and not str(device).startswith("cuda"):
        raise InvalidArgumentError(f"`cpu_offload` needs a CUDA device, got device {device!r}")
    local = True if offline else None
    extra = {"controlnet": str(controlnet)} if controlnet is not None else {}
    pipe = from_preset(preset, device=device, dtype=dtype, local_files_only=local, **extra)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        from facegen.adapters.lora import load_lora

        load_lora(pipe, lora, adapter_name="user", scale=lora_scale, local_files_only=local)
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    if vae_tiling:
        pipe.vae.enable_tiling()
    return pipe
