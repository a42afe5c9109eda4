"""One-shot face swap and face restoration: the fast path (ONNX models, one forward pass per
face), for photos and for every frame of a video.

Per target face: the swapper's aligned crop (:meth:`~facegen.backends.swappers.OnnxFaceSwapper.align`),
the swap (all the image's faces in one batch), a mask in crop space, and the paste back
through the crop's inverse transform (:func:`facegen.align.paste_back`: only the region the
crop covers is touched, and a pixel where the mask is 0 keeps its value exactly). Then,
optionally, restoration: each face's 512 FFHQ crop restored (GFPGAN or CodeFormer) and pasted
back under a box mask scaled by ``restore_blend`` (1 = the restored face only).

Masks (:class:`MaskOptions`, ``--mask`` on the command line), all in crop space, combined by
their minimum:

* ``box`` (default): the crop's square with its border faded out — ``blur`` × half the
  crop is the fade (Gaussian, σ = a quarter of it), ``padding`` (top, right, bottom, left,
  in % of the crop) cuts it in; it reaches exactly 0 at the crop's edge;
* ``hull``: facegen's landmark mask (:func:`facegen.masks.face_mask`: the 68-point hull with
  the forehead, or the box and 5 points without 68 landmarks), mapped into the crop;
* ``parsing[:classes]``: the face-parsing model's classes on the *swapped* crop (default:
  skin, brows, eyes, glasses, nose, mouth, lips; ``parsing:face,-glasses``,
  ``parsing:skin,nose``; see :func:`facegen.backends.face_parsing.parse_classes`);
* ``occlusion`` (with any of them): the occluder's visible-face mask of the *target* crop,
  so a hand or a microphone in front of the face stays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from facegen.align import paste_back
from facegen.errors import InvalidArgumentError
from facegen.types import AlignedFace, Face

__all__ = [
    "MASK_KINDS",
    "MaskOptions",
    "OneShotResult",
    "OneShotSwap",
    "box_mask",
    "parse_mask",
    "restore_faces",
]

MASK_KINDS = ("box", "hull", "parsing")


@dataclass(frozen=True)
class MaskOptions:
    """How the swapped crop is pasted (see the module doc). ``classes``: parsing classes
    (indices) for ``kind="parsing"``; ``blur`` in [0, 1]; ``padding`` in % of the crop."""

    kind: str = "box"
    classes: tuple[int, ...] = ()
    blur: float = 0.3
    padding: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    occlusion: bool = False

    def __post_init__(self) -> None:
        if self.kind not in MASK_KINDS:
            raise InvalidArgumentError(
                f"mask must be one of {', '.join(MASK_KINDS)}, got {self.kind!r}"
            )
        if not 0.0 <= float(self.blur) <= 1.0:
            raise InvalidArgumentError(f"mask blur must be in [0, 1], got {self.blur!r}")
        if len(self.padding) != 4 or not all(0 <= float(p) <= 100 for p in self.padding):
            raise InvalidArgumentError(
                f"mask padding must be four percentages in [0, 100], got {self.padding!r}"
            )
        if self.kind == "parsing" and not self.classes:
            from facegen.backends.face_parsing import parse_classes

            object.__setattr__(self, "classes", parse_classes(None))

    def to_dict(self) -> dict[str, Any]:
        from facegen.backends.face_parsing import PARSING_CLASSES

        out: dict[str, Any] = {"kind": self.kind, "blur": self.blur, "padding": list(self.padding)}
        if self.kind == "parsing":
            out["classes"] = [PARSING_CLASSES[i] for i in self.classes]
        out["occlusion"] = self.occlusion
        return out


def parse_mask(text: str, *, occlusion: bool = False) -> MaskOptions:
    """``box``, ``hull``, ``parsing`` or ``parsing:CLASSES`` → :class:`MaskOptions`."""
    from facegen.backends.face_parsing import parse_classes

    kind, _, rest = str(text).strip().partition(":")
    if kind != "parsing" and rest:
        raise InvalidArgumentError(f"only the parsing mask takes classes, got {text!r}")
    classes = parse_classes(rest or None) if kind == "parsing" else ()
    return MaskOptions(kind=kind, classes=classes, occlusion=occlusion)


def box_mask(size: int, blur: float = 0.3, padding: Sequence[float] = (0, 0, 0, 0)) -> np.ndarray:
    """The crop's square, its border faded out (see the module doc): float32 ``(size, size)``."""
    amount = int(size * 0.5 * float(blur))
    area = max(amount // 2, 1)
    top, right, bottom, left = (int(size * float(p) / 100) for p in padding)
    m = np.ones((size, size), np.float32)
    m[: max(area, top), :] = 0
    m[size - max(area, bottom) :, :] = 0
    m[:, : max(area, left)] = 0
    m[:, size - max(area, right) :] = 0
    if amount > 0:
        m = cv2.GaussianBlur(m, (0, 0), amount * 0.25)
        # the blur leaves a little weight on the crop's edge: shift it to 0 there, so the
        # pasted crop never ends in a step
        edge = float(max(m[0].max(), m[-1].max(), m[:, 0].max(), m[:, -1].max()))
        if 0 < edge < 1:
            m = np.clip((m - edge) / (1 - edge), 0, 1)
    return m.astype(np.float32)


@dataclass
class OneShotResult:
    """The image with the faces swapped (and restored), and per face what was done."""

    image: np.ndarray
    faces: list[dict[str, Any]] = field(default_factory=list)


class OneShotSwap:
    """Swap one source identity into faces (see the module doc).

    ``swapper``: an :class:`~facegen.backends.swappers.OnnxFaceSwapper`. ``mask``: a
    :class:`MaskOptions` or its text (``"parsing:face,-glasses"``); ``parser`` / ``occluder``:
    the face-parsing and occlusion models those masks need. ``restorer``: an
    :class:`~facegen.backends.restorers.OnnxFaceRestorer` run after the swap, blended by
    ``restore_blend`` in [0, 1].
    """

    def __init__(
        self,
        swapper: Any,
        *,
        mask: MaskOptions | str = "box",
        parser: Any = None,
        occluder: Any = None,
        restorer: Any = None,
        restore_blend: float = 0.8,
    ) -> None:
        self.swapper = swapper
        self.mask = parse_mask(mask) if isinstance(mask, str) else mask
        if not isinstance(self.mask, MaskOptions):
            raise InvalidArgumentError(f"`mask` must be MaskOptions or text, got {mask!r}")
        if self.mask.kind == "parsing" and parser is None:
            raise InvalidArgumentError("the parsing mask needs a face-parsing model (`parser`)")
        if self.mask.occlusion and occluder is None:
            raise InvalidArgumentError("the occlusion mask needs an occluder model (`occluder`)")
        self.parser, self.occluder, self.restorer = parser, occluder, restorer
        self.restore_blend = check_blend(restore_blend)

    def settings(self) -> dict[str, Any]:
        """JSON-ready settings for reports and provenance."""
        from facegen.backends.swappers import describe

        out = {**describe(self.swapper), "mask": self.mask.to_dict()}
        if self.restorer is not None:
            out["restore"] = {"model": self.restorer.name, "blend": self.restore_blend}
            if self.restorer.spec.fidelity:
                out["restore"]["fidelity"] = self.restorer.fidelity
        return out

    def prepare_source(self, embedding: Any) -> np.ndarray:
        """The swapper's source input from a w600k_r50 embedding (compute it once per run)."""
        return self.swapper.prepare_source(embedding)

    def masks(
        self, faces: Sequence[Face], aligned: Sequence[AlignedFace], target: np.ndarray,
        swapped: np.ndarray,
    ) -> np.ndarray:  # fmt: skip
        """The crop-space masks, float32 ``(N, S, S)``."""
        n, s = len(aligned), self.swapper.spec.size
        opts = self.mask
        out = np.repeat(box_mask(s, opts.blur, opts.padding)[None], n, axis=0)
        if opts.kind == "hull":
            from facegen.masks import face_mask

            hull = np.stack(
                [face_mask(f, (s, s), matrix=a.matrix) for f, a in zip(faces, aligned, strict=True)]
            )
            out = np.minimum(out, hull)
        elif opts.kind == "parsing":
            out = np.minimum(out, self.parser.masks(swapped, opts.classes))
        if opts.occlusion:
            out = np.minimum(out, self.occluder.masks(target))
        return np.clip(out, 0, 1).astype(np.float32)

    def swap(self, image: np.ndarray, faces: Sequence[Face], source: np.ndarray) -> OneShotResult:
        """``image`` (RGB uint8) with ``source`` (from :meth:`prepare_source`) on ``faces``."""
        from facegen.backends.onnx_utils import check_rgb_image

        img = check_rgb_image(image)
        if not faces:
            return OneShotResult(img.copy(), [])
        aligned = [self.swapper.align(img, f) for f in faces]
        target = np.stack([a.image for a in aligned])
        swapped = self.swapper.swap_crops(target, source)
        masks = self.masks(faces, aligned, target, swapped)
        out = img
        for a, crop, m in zip(aligned, swapped, masks, strict=True):
            out = paste_back(out, a, crop, mask=m)
        if self.restorer is not None:
            out = restore_faces(out, faces, self.restorer, blend=self.restore_blend)
        records = [
            {"bbox": [round(float(v), 1) for v in f.bbox], "swapped": True,
             "restored": self.restorer is not None}
            for f in faces
        ]  # fmt: skip
        return OneShotResult(out, records)


def check_blend(value: float) -> float:
    """A restoration blend as a float in [0, 1], or :class:`InvalidArgumentError`."""
    b = float(value)
    if not 0.0 <= b <= 1.0:
        raise InvalidArgumentError(f"the restoration blend must be in [0, 1], got {value!r}")
    return b


def restore_faces(
    image: np.ndarray,
    faces: Sequence[Face],
    restorer: Any,
    *,
    blend: float = 0.8,
    mask: MaskOptions | None = None,
    parser: Any = None,
) -> np.ndarray:
    """``image`` with each face restored on its 512 FFHQ crop (all faces in one batch) and
    pasted back under a box mask (or ``mask``: ``parsing`` with ``parser``) × ``blend``."""
    from facegen.backends.onnx_utils import check_rgb_image

    img = check_rgb_image(image)
    b = check_blend(blend)
    if not faces or b == 0:
        return img.copy()
    opts = mask or MaskOptions()
    aligned = [restorer.align(img, f) for f in faces]
    crops = np.stack([a.image for a in aligned])
    restored = restorer.restore_crops(crops)
    s = restorer.spec.size
    m = np.repeat(box_mask(s, opts.blur, opts.padding)[None], len(faces), axis=0)
    if opts.kind == "parsing":
        if parser is None:
            raise InvalidArgumentError("the parsing mask needs a face-parsing model (`parser`)")
        m = np.minimum(m, parser.masks(restored, opts.classes))
    out = img
    for a, crop, mm in zip(aligned, restored, m * b, strict=True):
        out = paste_back(out, a, crop, mask=mm)
    return out
