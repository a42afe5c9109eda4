"""Identity edits of the faces in a photo: the driver behind swap, reenact and generative
anonymization (:mod:`facegen.pipelines.editing.swap`).

:func:`edit_faces` regenerates each given face with a new identity, keeping everything
else. Per face, in the order given:

1. **Align** the face at the pipeline's size ``S`` (:func:`facegen.align.align_face`):
   template ``"arcface"`` for Arc2Face pipelines (the framing their UNet was trained on),
   ``"ffhq"`` with ``margin`` for IP-Adapter-FaceID ones (SD1.5 framing: the whole head,
   forehead and chin inside).
2. **Mask** in image pixels (:func:`facegen.masks.face_mask`, :data:`DEFAULT_MASK`; or one
   given per face), limited to what the crop covers: it is multiplied by the crop's footprint,
   which fades to 0 over the outer :data:`CROP_EDGE` of the crop, so a mask that reaches past
   the crop is cut softly there (:attr:`FaceEdit.coverage` says how much of it remained).
   The crop-frame mask is this mask warped into the crop.
3. **Control map** (ControlNet pipelines): :func:`facegen.control.render_landmarks68` of the
   target face's own 68 landmarks in the crop (``control_faces`` may give other landmarks in
   image pixels, as :func:`reenact` does), so pose and expression stay the target's.
4. **Generate** the masked part with the new identity (:func:`facegen.pipelines.generation.inpaint.
   masked_generate`: latent blending for 4-channel UNets, the inpainting UNet for 9).
5. **Colour-match** the generated crop to the original inside the mask
   (:func:`facegen.masks.match_color`, CIELAB mean/std), warp it back through the crop's
   inverse transform, and composite with :func:`facegen.masks.blend` through the mask
   (feathered outward by the mask's own ``feather``).

Pixels where the applied mask is 0 keep their exact bytes (``EditResult.mask`` is the
union of the applied masks). Faces are processed one after another on the working image:
a later face's crop shows the earlier faces already edited, and where masks overlap the
later face wins — as in :mod:`facegen.pipelines.editing.anonymize`. A face whose mask lies wholly
outside its crop is skipped and says so (:attr:`FaceEdit.skipped`); faces at the image
border are fine (the crop's outside is black, and no pixel outside the image is written).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from PIL import Image

from facegen.align import align_face, feather_mask
from facegen.analyzer import FaceAnalyzer, select_faces
from facegen.control import render_landmarks68
from facegen.errors import InvalidArgumentError
from facegen.image_io import ImageSource, load_image
from facegen.landmarks import IBUG68
from facegen.masks import MaskSpec, blend, face_mask, faces_mask, match_color
from facegen.pipelines.editing.options import CONTROLS, EditOptions
from facegen.types import AlignedFace, Face, IdentityEmbedding, transform_points
from facegen.validate import check_int

if TYPE_CHECKING:
    from facegen.pipelines.generation.id_to_face import IDGenerationMixin

__all__ = [
    "CONTROLS",
    "CROP_EDGE",
    "DEFAULT_MASK",
    "DEFAULT_PROMPT",
    "EditOptions",
    "EditResult",
    "FaceEdit",
    "Identities",
    "edit_faces",
    "map_face",
    "pipeline_size",
    "reenact",
]

logger = logging.getLogger(__name__)

#: The default edit mask: the landmark hull with a forehead band, grown a little and
#: feathered outward (fractions of the face size).
DEFAULT_MASK = MaskSpec(shape="hull", forehead=0.2, dilate=0.03, feather=0.03)
#: The prompt of text (IP-Adapter-FaceID) pipelines when none is given.
DEFAULT_PROMPT = "a photo of a face"
#: Fraction of the crop over which the edit fades out at the crop's border.
CROP_EDGE = 0.02

StepCallback = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]
#: One identity for every face, or one per face: :class:`~facegen.types.IdentityEmbedding`
#: objects of the pipeline's encoder, or float32 ``(D,)`` / ``(N, D)`` vectors.
Identities = IdentityEmbedding | np.ndarray | Sequence[IdentityEmbedding | np.ndarray]


@dataclass(frozen=True, eq=False)
class FaceEdit:
    """What was done to one face.

    ``index``: position in the ``faces`` given. ``bbox``: xyxy image pixels. ``seed``: the
    seed its generation used. ``matrix``: float64 ``(2, 3)`` image → crop transform.
    ``mask_pixels``: image pixels with applied mask > 0. ``coverage``: the applied mask's
    weight over the requested mask's (1 = the crop held all of it). ``crop``: RGB uint8
    ``(S, S, 3)``, the generated crop after colour matching (``None`` when skipped).
    ``control``: RGB uint8 ``(S, S, 3)`` control map, or ``None``. ``metadata``: the
    generation's (pipeline, models, seed, steps, strength, …) and the edit settings.
    ``skipped``: why nothing was generated, else ``None``.
    """

    index: int
    bbox: tuple[float, float, float, float]
    seed: int
    matrix: np.ndarray
    mask_pixels: int
    coverage: float
    crop: np.ndarray | None
    control: np.ndarray | None
    metadata: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (no arrays but the bbox)."""
        return {
            "index": self.index,
            "bbox": [round(float(v), 2) for v in self.bbox],
            "seed": self.seed,
            "mask_pixels": self.mask_pixels,
            "coverage": round(self.coverage, 4),
            "skipped": self.skipped,
            "metadata": self.metadata,
        }


@dataclass(frozen=True, eq=False)
class EditResult:
    """``image``: RGB uint8 ``(H, W, 3)``. ``mask``: float32 ``(H, W)`` in [0, 1], the union
    of the applied masks (pixels where it is 0 are the input's bytes). ``faces``: one
    :class:`FaceEdit` per face, in processing order."""

    image: np.ndarray
    mask: np.ndarray
    faces: list[FaceEdit]


# ----------------------------------------------------------------------------- checks


def pipeline_size(pipe: IDGenerationMixin) -> int:
    """The pipeline's native output size in pixels (UNet sample size × VAE factor)."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)  # type: ignore[attr-defined]


def _check_pipe(pipe: object) -> None:
    from facegen.pipelines.generation.id_to_face import IDGenerationMixin

    if not isinstance(pipe, IDGenerationMixin):
        raise ValueError(
            "`pipe` must be a facegen identity pipeline (IDToFacePipeline, "
            f"IDToFaceControlNetPipeline, IDTextToFaceInpaintPipeline, …), got {type(pipe).__name__}"
        )
    faceid = getattr(pipe, "faceid", None)
    if faceid is not None and getattr(faceid, "variant", None) == "plusv2":
        raise ValueError(
            "`pipe` must not be IP-Adapter-FaceID PlusV2 for face edits (it needs a photo crop "
            "of each identity, which synthetic or embedding-only identities lack), got PlusV2; "
            "use the FaceID (non-Plus) or an Arc2Face preset"
        )


def _has_controlnet(pipe: IDGenerationMixin) -> bool:
    return getattr(pipe, "controlnet", None) is not None


def _resolve_control(pipe: IDGenerationMixin, control: str | None) -> str | None:
    """The control map for ``pipe`` (``control`` is one of :data:`CONTROLS`, checked by
    :class:`EditOptions`)."""
    if control == "auto":
        return "landmarks" if _has_controlnet(pipe) else None
    if control == "landmarks" and not _has_controlnet(pipe):
        raise ValueError(
            f"`control` 'landmarks' needs a ControlNet pipeline, got {type(pipe).__name__}"
        )
    if control is None and _has_controlnet(pipe):
        raise ValueError(
            f"`control` must be 'landmarks' for a ControlNet pipeline ({type(pipe).__name__}), "
            "got None"
        )
    return control


def _resolve_template(pipe: IDGenerationMixin, template: str | None) -> str:
    if template is not None:
        return template
    return "ffhq" if pipe.takes_prompt else "arcface"


def _resolve_seeds(seeds: Sequence[int] | None, first: int | None, n: int) -> list[int]:
    """Explicit per-face ``seeds``, else ``first, first + 1, …``, else drawn."""
    from facegen.pipelines.generation.id_to_face import MAX_SEED

    if seeds is None:
        if first is None:
            return [secrets.randbelow(MAX_SEED + 1) for _ in range(n)]
        seeds = [first + k for k in range(n)]
    seeds = list(seeds)
    if len(seeds) != n:
        raise ValueError(f"`seeds` must be one seed or one per face ({n}), got {len(seeds)}")
    return [check_int(s, "seeds", minimum=0, maximum=MAX_SEED) for s in seeds]


def _resolve_identities(identities: Identities, n: int) -> list[IdentityEmbedding | np.ndarray]:
    if isinstance(identities, IdentityEmbedding):
        return [identities] * n
    if isinstance(identities, np.ndarray):
        arr = identities[None] if identities.ndim == 1 else identities
        if arr.ndim != 2:
            raise ValueError(f"`identities` must be (D,) or (N, D) vectors, got {arr.shape}")
        items: list[IdentityEmbedding | np.ndarray] = list(arr)
    elif isinstance(identities, (list, tuple)):
        items = list(identities)
    else:
        raise ValueError(
            "`identities` must be an IdentityEmbedding, a list of them, or (N, D) vectors, got "
            f"{type(identities).__name__}"
        )
    if len(items) == 1:
        return items * n
    if len(items) != n:
        raise ValueError(f"`identities` must be one or one per face ({n}), got {len(items)}")
    return items


def _resolve_masks(
    masks: Sequence[np.ndarray] | None, n: int, hw: tuple[int, int]
) -> list[np.ndarray | None]:
    if masks is None:
        return [None] * n
    masks = list(masks)
    if len(masks) != n:
        raise ValueError(f"`masks` must have one mask per face ({n}), got {len(masks)}")
    out: list[np.ndarray | None] = []
    for m in masks:
        arr = np.asarray(m)
        if arr.shape != hw:
            raise ValueError(f"`masks` must be (H, W) = {hw} each, got {arr.shape}")
        arr = arr.astype(np.float32)
        if not (np.all(np.isfinite(arr)) and arr.min() >= 0 and arr.max() <= 1):
            raise ValueError("`masks` must hold finite values in [0, 1]")
        out.append(arr)
    return out


def _landmarks68(face: Face, what: str) -> np.ndarray:
    lm = face.landmarks
    if lm is None or face.landmark_scheme != IBUG68 or lm.shape[0] != 68:
        raise ValueError(
            f"{what} must have 68 iBUG landmarks for the landmark control map (use an analyzer "
            f"with a 68-point landmarker, e.g. dlib), got scheme {face.landmark_scheme!r}"
        )
    return np.asarray(lm[:, :2], np.float64)


# ----------------------------------------------------------------------------- geometry


def map_face(face: Face, matrix: np.ndarray) -> Face:
    """``face`` moved through the affine ``matrix`` (float ``(2, 3)``): box (of the mapped
    corners), ``kps5`` and landmarks (z of ``(K, 3)`` landmarks times the scale)."""
    m = np.asarray(matrix, np.float64)
    x1, y1, x2, y2 = (float(v) for v in face.bbox)
    corners = transform_points(np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]), m)
    landmarks = None
    if face.landmarks is not None:
        lm = np.array(face.landmarks, np.float32)
        lm[:, :2] = transform_points(lm[:, :2], m)
        if lm.shape[1] == 3:
            lm[:, 2] *= float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
        landmarks = lm
    return face.replace(
        bbox=np.concatenate([corners.min(0), corners.max(0)]),
        kps5=transform_points(face.kps5, m),
        landmarks=landmarks,
        embedding=None,
    )


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The affine ``outer ∘ inner`` (apply ``inner`` first), both ``(2, 3)``."""
    a = np.vstack([np.asarray(outer, np.float64), [0.0, 0.0, 1.0]])
    b = np.vstack([np.asarray(inner, np.float64), [0.0, 0.0, 1.0]])
    return (a @ b)[:2]


# ----------------------------------------------------------------------------- the driver


@dataclass(frozen=True, eq=False)
class _Plan:
    """Everything :func:`edit_faces` resolved before its first face: per face, the identity,
    seed, given mask (or None) and the face whose landmarks draw the control map."""

    options: EditOptions
    size: int
    template: str
    control: str | None
    spec: MaskSpec
    prompt: str | None
    identities: list[IdentityEmbedding | np.ndarray]
    seeds: list[int]
    masks: list[np.ndarray | None]
    drivers: list[Face]
    edge: np.ndarray  # float32 (size, size): the crop's footprint, fading at its border


def _plan(
    pipe: IDGenerationMixin,
    hw: tuple[int, int],
    faces: list[Face],
    identities: Identities,
    options: EditOptions,
    seeds: Sequence[int] | None,
    masks: Sequence[np.ndarray] | None,
    control_faces: Sequence[Face] | None,
) -> _Plan:
    """Check the inputs of :func:`edit_faces` against each other and the pipeline."""
    if not faces or not all(isinstance(f, Face) for f in faces):
        raise ValueError(f"`faces` must be a non-empty list of Face objects, got {faces!r}")
    n = len(faces)
    if not isinstance(options, EditOptions):
        raise InvalidArgumentError(f"`options` must be EditOptions, got {type(options).__name__}")
    drivers = faces if control_faces is None else list(control_faces)
    if len(drivers) != n:
        raise ValueError(f"`control_faces` must have one face per face ({n}), got {len(drivers)}")
    ctrl = _resolve_control(pipe, options.control)
    if ctrl == "landmarks":
        for k, f in enumerate(drivers):
            _landmarks68(f, f"face {k}")
    size = pipeline_size(pipe) if options.crop_size is None else options.crop_size
    prompt = options.prompt
    if pipe.takes_prompt and prompt is None:
        prompt = DEFAULT_PROMPT
    return _Plan(
        options=options,
        size=int(size),
        template=_resolve_template(pipe, options.template),
        control=ctrl,
        spec=options.mask_spec or DEFAULT_MASK,
        prompt=prompt,
        identities=_resolve_identities(identities, n),
        seeds=_resolve_seeds(seeds, options.seed, n),
        masks=_resolve_masks(masks, n, hw),
        drivers=drivers,
        edge=feather_mask(int(size), CROP_EDGE),
    )


def edit_faces(
    image: ImageSource,
    faces: Sequence[Face],
    identities: Identities,
    pipe: IDGenerationMixin,
    options: EditOptions | None = None,
    *,
    seeds: Sequence[int] | None = None,
    masks: Sequence[np.ndarray] | None = None,
    control_faces: Sequence[Face] | None = None,
    callback_on_step_end: StepCallback | None = None,
) -> EditResult:
    """Regenerate ``faces`` of ``image`` with ``identities`` (see the module doc).

    ``image``: anything :func:`facegen.image_io.load_image` reads. ``faces``: faces in its
    pixels (68 landmarks needed for the control map and best masks). ``identities``: one
    identity for all faces or one per face (see :data:`Identities`). ``options``: how each
    face is regenerated (:class:`EditOptions`; its ``seed`` gives faces ``s, s+1, …``).
    ``seeds``: explicit per-face seeds instead. ``masks``: ready float ``(H, W)`` masks in
    [0, 1], one per face, instead of ``options.mask_spec``. ``control_faces`` (image pixels,
    one per face) supply the landmarks for the control map instead of ``faces``.
    ``callback_on_step_end``: diffusers' hook, run after the latent blending of each step.
    """
    _check_pipe(pipe)
    arr = load_image(image)
    h, w = arr.shape[:2]
    faces = list(faces)
    plan = _plan(
        pipe, (h, w), faces, identities, options or EditOptions(), seeds, masks, control_faces
    )
    work = arr.copy()
    union = np.zeros((h, w), np.float32)
    records: list[FaceEdit] = []
    for k, face in enumerate(faces):
        work, record, applied = _edit_face(pipe, work, k, face, plan, callback_on_step_end)
        np.maximum(union, applied, out=union)
        records.append(record)
    return EditResult(work, union, records)


def _edit_face(
    pipe: IDGenerationMixin,
    work: np.ndarray,
    k: int,
    face: Face,
    plan: _Plan,
    callback: StepCallback | None,
) -> tuple[np.ndarray, FaceEdit, np.ndarray]:
    """Steps 1–5 of the module doc for face ``k``: the new working image, its record and
    the mask applied (float32 ``(H, W)``; all zero when the face was skipped)."""
    h, w = work.shape[:2]
    opts, size = plan.options, plan.size
    aligned = align_face(work, face, size=size, template=plan.template, margin=opts.margin)
    given = plan.masks[k]
    wanted = given if given is not None else face_mask(face, (h, w), plan.spec)
    footprint = cv2.warpAffine(plan.edge, aligned.inverse, (w, h), flags=cv2.INTER_LINEAR)
    applied = wanted * np.clip(footprint, 0.0, 1.0)
    crop_mask = cv2.warpAffine(wanted, aligned.matrix, (size, size), flags=cv2.INTER_LINEAR)
    crop_mask = np.clip(crop_mask * plan.edge, 0.0, 1.0)
    total = float(wanted.sum())
    coverage = float(applied.sum()) / total if total > 0 else 0.0
    settings = {
        "template": plan.template,
        "margin": float(opts.margin),
        "crop_size": size,
        "mask": plan.spec.to_dict() if given is None else "given",
        "control": plan.control,
        "color_match": opts.color_match,
        "coverage": round(coverage, 4),
    }
    bbox = tuple(float(v) for v in face.bbox)
    base = {"index": k, "bbox": bbox, "seed": plan.seeds[k], "matrix": aligned.matrix}
    if applied.max() <= 0 or crop_mask.max() <= 0:
        reason = "the face's mask lies outside its crop" if total > 0 else "empty mask"
        logger.info("face %d skipped: %s", k, reason)
        skipped = FaceEdit(
            **base,
            mask_pixels=0,
            coverage=coverage,
            crop=None,
            control=None,
            metadata=settings,
            skipped=reason,
        )
        return work, skipped, np.zeros((h, w), np.float32)
    control_map = None
    if plan.control == "landmarks":
        points = _landmarks68(plan.drivers[k], f"face {k}")
        control_map = np.asarray(render_landmarks68(points, size, matrix=aligned.matrix))
    new_crop, metadata = _generate(pipe, aligned, crop_mask, k, plan, control_map, callback)
    warped = cv2.warpAffine(
        new_crop, aligned.inverse, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    record = FaceEdit(
        **base,
        mask_pixels=int(np.count_nonzero(applied)),
        coverage=coverage,
        crop=new_crop,
        control=control_map,
        metadata={**metadata, **settings},
    )
    return blend(work, warped, applied), record, applied


def _generate(
    pipe: IDGenerationMixin,
    aligned: AlignedFace,
    crop_mask: np.ndarray,
    k: int,
    plan: _Plan,
    control_map: np.ndarray | None,
    callback: StepCallback | None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Step 4–5a: the masked crop regenerated (RGB uint8 ``(S, S, 3)``, colour-matched when
    asked) and the generation's metadata."""
    from facegen.pipelines.generation.inpaint import masked_generate

    opts = plan.options
    gen = masked_generate(
        pipe,
        aligned.image,
        crop_mask,
        [plan.identities[k]],
        seeds=[plan.seeds[k]],
        strength=opts.strength,
        num_inference_steps=opts.num_inference_steps,
        guidance_scale=opts.guidance_scale,
        control_image=None if control_map is None else Image.fromarray(control_map),
        prompt=plan.prompt,
        negative_prompt=opts.negative_prompt,
        callback_on_step_end=callback,
    )
    new_crop = gen.raw[0]
    if opts.color_match:
        new_crop = match_color(new_crop, aligned.image, crop_mask)
    return new_crop, gen.metadata[0]


def reenact(
    source_photo: ImageSource,
    driving_photo: ImageSource,
    pipe: IDGenerationMixin,
    analyzer: FaceAnalyzer,
    options: EditOptions | None = None,
    *,
    source_identity: IdentityEmbedding | np.ndarray | None = None,
    select: str | int = "largest",
) -> EditResult:
    """The source photo's person with the driving photo's pose and expression, in place.

    The driving face's 68 landmarks are moved into the source face's aligned crop (the
    driving face's own alignment, then the source crop's inverse: the same points
    :func:`facegen.control.transfer_landmarks` gives with ``fit="kps5"``), rendered as the
    control map, and the crop region is regenerated under a mask covering both the source face
    and the driving face's outline there, with the source identity. ``pipe`` must have a
    ControlNet (the pose reaches the model only through it). ``analyzer`` finds the faces
    (68 landmarks needed) with ``select`` in both photos. ``source_identity``: the source's
    identity for ``pipe``; default: from the source photo with ``pipe.identity_analyzer``.
    ``options``: as for :func:`edit_faces` (its ``control`` is always ``"landmarks"``).
    Returns an :class:`EditResult` on the source photo (its ``image`` has the source's size).
    """
    _check_pipe(pipe)
    if not _has_controlnet(pipe):
        raise ValueError(
            "`pipe` must have a ControlNet for reenactment (the driving pose reaches the model "
            f"only through the landmark map), got {type(pipe).__name__}"
        )
    opts = options or EditOptions()
    src, drv = load_image(source_photo), load_image(driving_photo)
    src_face = _one_face(analyzer, src, select, "source photo")
    drv_face = _one_face(analyzer, drv, select, "driving photo")
    _landmarks68(drv_face, "the driving face")
    if source_identity is None:
        source_identity = pipe.identities_from_images([src], select=select, require_single=False)[0]
    tmpl = _resolve_template(pipe, opts.template)
    size = pipeline_size(pipe) if opts.crop_size is None else opts.crop_size
    a_src = align_face(src, src_face, size=size, template=tmpl, margin=opts.margin)
    a_drv = align_face(drv, drv_face, size=size, template=tmpl, margin=opts.margin)
    # driving pixels → canonical crop → source pixels
    driven = map_face(drv_face, _compose(a_src.inverse, a_drv.matrix))
    spec = opts.mask_spec or DEFAULT_MASK
    mask = faces_mask([src_face, driven], src.shape[:2], spec)
    fixed = replace(opts, crop_size=size, template=tmpl, mask_spec=spec, control="landmarks")
    return edit_faces(
        src, [src_face], [source_identity], pipe, fixed, masks=[mask], control_faces=[driven]
    )


def _one_face(analyzer: FaceAnalyzer, image: np.ndarray, select: str | int, name: str) -> Face:
    found = analyzer.analyze(image, select="all", embed=False, source=name)
    return select_faces(found, select, source=name)[0]
