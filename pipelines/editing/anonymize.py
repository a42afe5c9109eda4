"""Face anonymization: blur, pixelate or fill every selected face, in one image or a folder.

Each selected face gets its own mask (:mod:`facegen.masks`: ``shape`` hull / ellipse / box,
forehead extension, ``margin`` = dilation, ``feather`` = outward Gaussian falloff) and its
own effect, scaled with the face's size (:attr:`facegen.masks.FaceRegion.scale`, about the
brows-to-chin height):

* ``"blur"``: Gaussian blur of σ = ``blur_sigma`` × face size (computed on a downscaled copy
  for big faces, so its cost does not grow with σ);
* ``"pixelate"``: blocks of face size / ``pixel_blocks`` pixels, anchored at the mask's
  top-left corner;
* ``"mask"``: a solid ``fill`` colour.

Faces are processed in detector order and composited one after another with
:func:`facegen.masks.blend`, so every pixel outside the union of the masks keeps its exact
bytes, and inside a (dilated) mask the original never shows through: the feather only
fades *outward*. An image in which nothing is detected is never passed through silently:
:func:`anonymize_image` raises :class:`~facegen.errors.NoFaceDetectedError`, and
:func:`anonymize_folder` records it with status ``"no_face"`` and writes no output.

``"generate"`` (a synthetic identity in place of the face) needs a generation pipeline,
which this module does not build: pass it as ``replace_face``, a callable
``(image, face, mask) -> GeneratedFace``. The hook returns a full-frame candidate and its
verdict (typically: the cosine similarity between the original and the new face under an
encoder independent of the generator, and whether it is low enough). A rejected candidate,
or a hook raising a :class:`~facegen.errors.FacegenError`, falls back to ``fallback_mode``;
the per-face :class:`FaceRecord` says which mode was used, whether it was a fallback and
why, and the similarity. ``mode="generate"`` without a hook raises ``ValueError``.

Folder runs: :mod:`facegen.pipelines.editing.anonymize_folder`.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from facegen.analyzer import FaceAnalyzer, select_faces
from facegen.errors import FacegenError, InvalidArgumentError, NoFaceDetectedError
from facegen.image_io import ImageSource, load_image
from facegen.masks import (
    FaceRegion,
    Length,
    MaskSpec,
    blend,
    face_region,
    parse_length,
    region_mask,
)
from facegen.pipelines.editing.options import ANONYMIZE_MODES, CLASSICAL_MODES, FACE_POLICIES
from facegen.types import Face
from facegen.validate import check_choice, check_int, check_number

__all__ = [
    "CLASSICAL_MODES",
    "MODES",
    "AnonymizeOptions",
    "AnonymizeResult",
    "FaceRecord",
    "FaceReplacement",
    "GeneratedFace",
    "ReplaceFaceFn",
    "anonymize_image",
    "anonymize_settings",
]

logger = logging.getLogger(__name__)

MODES = ANONYMIZE_MODES
#: Below this σ (pixels) the blur runs at full resolution.
_BLUR_DIRECT_SIGMA = 3.0


@dataclass(frozen=True, eq=False)
class GeneratedFace:
    """What a ``replace_face`` hook returns for one face.

    ``image``: RGB uint8 ``(H, W, 3)``, the whole frame with the face replaced (only pixels
    under the face's mask are used). ``accepted``: the hook's verdict; when false the face
    falls back to a classical mode. ``similarity``: cosine similarity between the original
    and the new face under ``verifier`` (an encoder id), for the report. ``reason``: why a
    candidate was rejected.
    """

    image: np.ndarray
    accepted: bool
    similarity: float | None = None
    verifier: str | None = None
    reason: str | None = None


#: ``(image, face, mask) -> GeneratedFace``: ``image`` is the RGB uint8 ``(H, W, 3)`` working
#: image (faces earlier in detector order already anonymized), ``face`` in its pixels, ``mask``
#: float32 ``(H, W)`` in [0, 1], the face's mask (1 = must be replaced). Raise a
#: :class:`~facegen.errors.FacegenError` (or return ``accepted=False``) to fall back.
ReplaceFaceFn = Callable[[np.ndarray, Face, np.ndarray], GeneratedFace]


@dataclass(frozen=True, eq=False)
class FaceReplacement:
    """A ``replace_face`` hook and how it was made: ``settings`` (JSON-ready: the preset, the
    edit options, the verifier, …) are recorded with every output it helps make, and a
    folder run redoes its files when they change."""

    hook: ReplaceFaceFn
    settings: dict[str, Any]

    def __call__(self, image: np.ndarray, face: Face, mask: np.ndarray) -> GeneratedFace:
        return self.hook(image, face, mask)


@dataclass(frozen=True)
class AnonymizeOptions:
    """Validated anonymization settings (see the module doc for what each one does).

    ``mode``: one of :data:`MODES`. ``shape``: the mask's (:data:`facegen.masks.MASK_SHAPES`).
    ``margin`` and ``feather`` are :data:`facegen.masks.Length` values (a fraction of the
    face size, or ``"Npx"``). ``forehead``: mask extension above the brows, a fraction of
    the face height. ``blur_sigma``: fraction of face size, in (0, 5]. ``pixel_blocks``:
    blocks across the face size, an int in [1, 256]. ``fill``: RGB, each in [0, 255].
    ``faces``: ``"all"``, ``"largest"``, ``"best"`` or an index in detector order.
    ``fallback_mode``: the classical mode used when ``"generate"`` rejects a face.
    """

    mode: str = "blur"
    shape: str = "hull"
    margin: Length = 0.1
    forehead: float = 0.3
    feather: Length = 0.05
    blur_sigma: float = 0.25
    pixel_blocks: int = 8
    fill: tuple[int, int, int] = (0, 0, 0)
    faces: str | int = "all"
    fallback_mode: str = "blur"

    def __post_init__(self) -> None:
        check_choice(self.mode, "mode", MODES)
        check_choice(self.fallback_mode, "fallback_mode", CLASSICAL_MODES)
        parse_length(self.margin, "margin")
        self.mask_spec()  # validates shape, forehead and feather
        check_number(self.blur_sigma, "blur_sigma", minimum=0, maximum=5, min_open=True)
        check_int(self.pixel_blocks, "pixel_blocks", minimum=1, maximum=256)
        fill = tuple(self.fill) if isinstance(self.fill, (tuple, list, np.ndarray)) else ()
        if len(fill) != 3:
            raise InvalidArgumentError(
                f"`fill` must be three integers in [0, 255] (RGB), got {self.fill!r}"
            )
        object.__setattr__(
            self, "fill", tuple(check_int(c, "fill", minimum=0, maximum=255) for c in fill)
        )
        f = self.faces
        if f not in FACE_POLICIES and (isinstance(f, bool) or not isinstance(f, numbers.Integral)):
            raise InvalidArgumentError(
                f"`faces` must be one of {', '.join(FACE_POLICIES)} or a face index, got {f!r}"
            )

    def mask_spec(self) -> MaskSpec:
        """The :class:`~facegen.masks.MaskSpec` of these options."""
        return MaskSpec(
            shape=self.shape, forehead=self.forehead, dilate=self.margin, feather=self.feather
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (what a folder run compares to decide a file is finished)."""
        d = asdict(self)
        d["fill"] = list(self.fill)
        d["faces"] = self.faces if isinstance(self.faces, str) else int(self.faces)
        for k in ("margin", "feather"):
            d[k] = d[k] if isinstance(d[k], str) else float(d[k])
        d["forehead"] = float(self.forehead)
        d["blur_sigma"] = float(self.blur_sigma)
        d["pixel_blocks"] = int(self.pixel_blocks)
        return d


@dataclass(frozen=True)
class FaceRecord:
    """What was done to one face.

    ``index``: the face's position in detector order. ``bbox``: xyxy pixels. ``region``:
    ``"ibug68"`` (mask from 68 landmarks) or ``"bbox"``. ``requested_mode`` / ``mode``: what
    was asked and what was applied (they differ after a fallback). ``params``: the effect's
    pixel parameters (``sigma_px``, ``block_px`` or ``fill``). ``mask_pixels``: pixels with
    mask > 0. ``similarity`` / ``verifier``: from a ``generate`` hook, else ``None``.
    """

    index: int
    bbox: tuple[float, float, float, float]
    score: float
    region: str
    requested_mode: str
    mode: str
    params: dict[str, Any]
    mask_pixels: int
    fallback: bool = False
    fallback_reason: str | None = None
    similarity: float | None = None
    verifier: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bbox"] = [round(float(v), 2) for v in self.bbox]
        d["score"] = round(float(self.score), 4)
        return d


@dataclass(frozen=True, eq=False)
class AnonymizeResult:
    """The anonymized image and what was done.

    ``image``: RGB uint8 ``(H, W, 3)``. ``faces``: one :class:`FaceRecord` per processed face.
    ``mask``: float32 ``(H, W)`` in [0, 1], the union of the faces' masks (pixels where it is
    0 equal the input's). ``num_detected``: faces the detector found before selection.
    """

    image: np.ndarray
    faces: list[FaceRecord]
    mask: np.ndarray
    num_detected: int
    options: AnonymizeOptions


def _roi(mask: np.ndarray) -> tuple[slice, slice] | None:
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _blur(image: np.ndarray, roi: tuple[slice, slice], sigma: float) -> np.ndarray:
    """``image[roi]`` blurred with σ ``sigma`` px, using context around the ROI."""
    h, w = image.shape[:2]
    ys, xs = roi
    pad = math.ceil(3 * sigma)
    y0, y1 = max(ys.start - pad, 0), min(ys.stop + pad, h)
    x0, x1 = max(xs.start - pad, 0), min(xs.stop + pad, w)
    ctx = image[y0:y1, x0:x1]
    factor = max(1.0, sigma / _BLUR_DIRECT_SIGMA)
    if factor > 1.0:
        sw, sh = max(1, round(ctx.shape[1] / factor)), max(1, round(ctx.shape[0] / factor))
        small = cv2.resize(ctx, (sw, sh), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), sigma / factor, borderType=cv2.BORDER_REFLECT)
        out = cv2.resize(small, (ctx.shape[1], ctx.shape[0]), interpolation=cv2.INTER_LINEAR)
    else:
        out = cv2.GaussianBlur(ctx, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return out[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]


def _pixelate(patch: np.ndarray, block: int) -> np.ndarray:
    ph, pw = patch.shape[:2]
    nx, ny = math.ceil(pw / block), math.ceil(ph / block)
    small = cv2.resize(patch, (nx, ny), interpolation=cv2.INTER_AREA)
    big = cv2.resize(small, (nx * block, ny * block), interpolation=cv2.INTER_NEAREST)
    return big[:ph, :pw]


def _classical(
    image: np.ndarray, region: FaceRegion, mask: np.ndarray, mode: str, opts: AnonymizeOptions
) -> dict[str, Any]:
    """Apply ``mode`` under ``mask`` to ``image`` in place; returns the effect's pixel parameters."""
    roi = _roi(mask)
    if mode == "blur":
        sigma = opts.blur_sigma * region.scale
        params: dict[str, Any] = {"sigma_px": round(sigma, 2)}
    elif mode == "pixelate":
        block = max(2, round(region.scale / opts.pixel_blocks))
        params = {"block_px": block}
    else:
        params = {"fill": list(opts.fill)}
    if roi is None:  # the face lies wholly outside the image
        return params
    if mode == "blur":
        patch = _blur(image, roi, sigma)
    elif mode == "pixelate":
        patch = _pixelate(image[roi], block)
    else:
        patch = np.empty_like(image[roi])
        patch[:] = np.array(opts.fill, np.uint8)
    image[roi] = blend(image[roi], np.ascontiguousarray(patch), mask[roi])
    return params


def _check_generated(gen: object, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(gen, GeneratedFace):
        raise TypeError(f"`replace_face` must return a GeneratedFace, got {type(gen).__name__}")
    img = np.asarray(gen.image)
    if img.dtype != np.uint8 or img.shape != shape:
        raise ValueError(
            f"`replace_face` must return an RGB uint8 image of shape {shape}, "
            f"got {img.dtype} {img.shape}"
        )
    return img


def _anonymize_array(
    image: np.ndarray,
    found: list[Face],
    selected: list[Face],
    opts: AnonymizeOptions,
    replace_face: ReplaceFaceFn | None,
) -> AnonymizeResult:
    """Anonymize ``selected`` (a subset of the detected ``found``) in a copy of ``image``."""
    h, w = image.shape[:2]
    spec = opts.mask_spec()
    out = image.copy()
    union = np.zeros((h, w), np.float32)
    records: list[FaceRecord] = []
    for face in selected:
        index = next(i for i, f in enumerate(found) if f is face)
        region = face_region(face, forehead=spec.forehead)
        mask = region_mask(region, (h, w), spec)
        np.maximum(union, mask, out=union)
        mode, extra = opts.mode, {}
        if mode == "generate":
            assert replace_face is not None  # checked by _check_hook
            mode, out, extra = _generate(out, face, mask, opts, replace_face)
        params = _classical(out, region, mask, mode, opts) if mode in CLASSICAL_MODES else {}
        records.append(
            FaceRecord(
                index=index,
                bbox=tuple(float(v) for v in face.bbox),  # type: ignore[arg-type]
                score=face.score,
                region=region.source,
                requested_mode=opts.mode,
                mode=mode,
                params=params,
                mask_pixels=int(np.count_nonzero(mask)),
                **extra,
            )
        )
    return AnonymizeResult(out, records, union, len(found), opts)


def _generate(
    image: np.ndarray,
    face: Face,
    mask: np.ndarray,
    opts: AnonymizeOptions,
    replace_face: ReplaceFaceFn,
) -> tuple[str, np.ndarray, dict[str, Any]]:
    """Run the hook; returns (mode used, image, record extras)."""
    try:
        gen = replace_face(image, face, mask)
        candidate = _check_generated(gen, image.shape)
    except FacegenError as exc:
        logger.warning("face replacement failed (%s); falling back to %s", exc, opts.fallback_mode)
        return opts.fallback_mode, image, {"fallback": True, "fallback_reason": str(exc)}
    extra: dict[str, Any] = {
        "similarity": None if gen.similarity is None else float(gen.similarity),
        "verifier": gen.verifier,
    }
    if not gen.accepted:
        reason = gen.reason or "rejected by the replacement's verifier"
        logger.info("replacement rejected (%s); falling back to %s", reason, opts.fallback_mode)
        return opts.fallback_mode, image, {**extra, "fallback": True, "fallback_reason": reason}
    return "generate", blend(image, candidate, mask), extra


def _check_hook(options: AnonymizeOptions, replace_face: ReplaceFaceFn | None) -> None:
    if not isinstance(options, AnonymizeOptions):
        raise InvalidArgumentError(
            f"`options` must be AnonymizeOptions, got {type(options).__name__}"
        )
    if options.mode == "generate" and replace_face is None:
        raise InvalidArgumentError(
            "`replace_face` must be given for mode 'generate' (it needs a generation pipeline "
            "that replaces a face and verifies it), got None; or use one of "
            + ", ".join(CLASSICAL_MODES)
        )
    if replace_face is not None and not callable(replace_face):
        raise InvalidArgumentError(
            f"`replace_face` must be callable, got {type(replace_face).__name__}"
        )


def anonymize_settings(
    options: AnonymizeOptions, replace_face: ReplaceFaceFn | None = None
) -> dict[str, Any]:
    """JSON-ready settings of a run: the options, and with a :class:`FaceReplacement` hook
    in ``"generate"`` mode its ``settings`` (key ``"generator"``)."""
    settings = options.to_dict()
    if options.mode == "generate" and isinstance(replace_face, FaceReplacement):
        settings["generator"] = replace_face.settings
    return settings


def _detector_info(analyzer: FaceAnalyzer) -> tuple[str | None, float | None]:
    det = getattr(analyzer, "detector", None)
    return getattr(det, "name", None), getattr(det, "score_threshold", None)


def anonymize_image(
    image: ImageSource,
    analyzer: FaceAnalyzer,
    options: AnonymizeOptions | None = None,
    *,
    replace_face: ReplaceFaceFn | None = None,
    source: str | None = None,
) -> AnonymizeResult:
    """Anonymize the faces of one image as ``options`` say (default :class:`AnonymizeOptions`;
    see the module doc).

    ``image``: anything :func:`facegen.image_io.load_image` reads (an RGB uint8 ``(H, W, 3)``
    array, a path, bytes, a PIL image). ``analyzer``: detects the faces (only its
    ``detect`` is used; no encoder needed). ``replace_face``: the hook of mode
    ``"generate"``. ``source`` names the image in errors.

    Raises :class:`~facegen.errors.NoFaceDetectedError` when no face is detected (the image
    is never returned unchanged as if it were anonymized), :class:`~facegen.errors.FaceIndexError`
    for an index the image does not have, ``ValueError`` for invalid options.
    """
    opts = options or AnonymizeOptions()
    _check_hook(opts, replace_face)
    name = source or (str(image) if isinstance(image, (str, os.PathLike)) else None)
    arr = load_image(image, name=name)
    found = analyzer.detect(arr)
    detector, threshold = _detector_info(analyzer)
    if not found:
        raise NoFaceDetectedError(source=name, threshold=threshold, detector=detector)
    selected = select_faces(found, opts.faces, source=name, threshold=threshold, detector=detector)
    return _anonymize_array(arr, found, selected, opts, replace_face)
