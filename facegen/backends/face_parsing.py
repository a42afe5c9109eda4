"""Face parsing (BiSeNet, CelebAMask-HQ's 19 classes) and occlusion (XSeg) as ONNX backends,
for masks that follow the face's real outline instead of the landmark hull.

* **BiSeNet** (``bisenet_resnet_34`` / ``bisenet_resnet_18``, the exports FaceFusion ships):
  a face crop resized to 512×512, RGB, ``(x / 255 - mean) / std`` with ImageNet's mean and
  std, NCHW float32 ``input``; the first output's first item holds 19 class logits per pixel
  and the class map is their argmax. Classes (:data:`PARSING_CLASSES`, CelebAMask-HQ's
  order): 0 background, 1 skin, 2/3 left/right brow, 4/5 left/right eye, 6 glasses, 7/8
  left/right ear, 9 earring, 10 nose, 11 mouth (inside), 12/13 upper/lower lip, 14 neck, 15
  necklace, 16 cloth, 17 hair, 18 hat.
* **XSeg occluder** (``xseg_1``): the crop resized to 256×256, kept **BGR** and **NHWC**,
  ``x / 255``; its output (the face's visible part, 1 = face) is clipped to [0, 1]. Where a
  hand, a microphone or hair covers the face, a swap or restoration must not paint over it.

Masks are soft: the 0/1 map is blurred (σ = 5 px at the model's size) and remapped so that
0.5 becomes 0 and 1 stays 1 (``(blur.clip(0.5, 1) - 0.5) · 2``), a feathered edge inside the
region.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from facegen.backends.onnx_utils import load_session, run_feeds, static_dim
from facegen.errors import InvalidArgumentError, InvalidModelError, UnknownNameError

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

__all__ = [
    "DEFAULT_FACE_CLASSES",
    "PARSING_CLASSES",
    "FaceParser",
    "Occluder",
    "parse_classes",
    "soften",
]

#: CelebAMask-HQ's 19 classes in the parser's output order.
PARSING_CLASSES = (
    "background", "skin", "left-brow", "right-brow", "left-eye", "right-eye", "glasses",
    "left-ear", "right-ear", "earring", "nose", "mouth", "upper-lip", "lower-lip", "neck",
    "necklace", "cloth", "hair", "hat",
)  # fmt: skip
#: The face proper (what a swap replaces): skin, brows, eyes, glasses, nose, mouth, lips.
DEFAULT_FACE_CLASSES = (
    "skin", "left-brow", "right-brow", "left-eye", "right-eye", "glasses", "nose", "mouth",
    "upper-lip", "lower-lip",
)  # fmt: skip
_ALIASES = {
    "brows": ("left-brow", "right-brow"),
    "eyes": ("left-eye", "right-eye"),
    "ears": ("left-ear", "right-ear"),
    "lips": ("upper-lip", "lower-lip"),
    "face": DEFAULT_FACE_CLASSES,
}
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def parse_classes(spec: str | Iterable[str] | None) -> tuple[int, ...]:
    """Class indices from names: a comma-separated string or names; ``brows``, ``eyes``,
    ``ears``, ``lips`` and ``face`` (the default set) stand for groups; a leading ``-``
    removes (``face,hair,-glasses``). None or ``""``: the default face classes."""
    items = [spec] if isinstance(spec, str) else list(spec or [])
    names = [p.strip() for item in items for p in str(item).split(",") if p.strip()]
    chosen: list[str] = [] if names and not names[0].startswith("-") else list(DEFAULT_FACE_CLASSES)
    for name in names:
        drop = name.startswith("-")
        key = name[1:] if drop else name
        group = _ALIASES.get(key, (key,))
        for cls in group:
            if cls not in PARSING_CLASSES:
                raise InvalidArgumentError(
                    f"face-parsing class must be one of {', '.join(PARSING_CLASSES)} or a group "
                    f"({', '.join(_ALIASES)}), got {key!r}"
                )
            if drop and cls in chosen:
                chosen.remove(cls)
            elif not drop and cls not in chosen:
                chosen.append(cls)
    if not chosen:
        raise InvalidArgumentError(f"no face-parsing class left in {spec!r}")
    return tuple(sorted(PARSING_CLASSES.index(c) for c in chosen))


def soften(mask: np.ndarray, sigma: float = 5.0) -> np.ndarray:
    """A 0/1 float mask blurred by ``sigma`` px and remapped so 0.5 → 0, 1 → 1 (see the
    module doc): the edge is feathered inside the region, never outside it."""
    m = cv2.GaussianBlur(np.asarray(mask, np.float32), (0, 0), sigma)
    return ((np.clip(m, 0.5, 1.0) - 0.5) * 2).astype(np.float32)


def _check_crops(crops: np.ndarray) -> np.ndarray:
    crops = np.asarray(crops)
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[3] != 3:
        raise ValueError(f"`crops` must be uint8 (N, S, S, 3), got {crops.dtype} {crops.shape}")
    return crops


def _resize_all(crops: np.ndarray, size: int) -> np.ndarray:
    if crops.shape[1:3] == (size, size):
        return crops
    return np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_LINEAR) for c in crops])


class _OnnxMasker:
    size = 512
    role = "parser"

    def __init__(
        self,
        session: InferenceSession | None = None,
        *,
        model_path: str | Path | None = None,
        device: str | None = "cpu",
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else None
        self.session = load_session(session, model_path, device)
        inp = self.session.get_inputs()[0]
        self._input, shape = inp.name, inp.shape
        self._check_shape(shape, str(model_path or "session"))
        self._fixed_batch_one = static_dim(shape[0]) == 1
        self._output = self.session.get_outputs()[0].name

    def _check_shape(self, shape: list, where: str) -> None:
        raise NotImplementedError

    def _run(self, blob: np.ndarray) -> np.ndarray:
        return run_feeds(
            self.session, self._output, {self._input: blob}, fixed_batch_one=self._fixed_batch_one
        )

    def model_files(self) -> dict[str, str]:
        return {} if self.model_path is None else {self.role: str(self.model_path.absolute())}


class FaceParser(_OnnxMasker):
    """BiSeNet face parsing (see the module doc)."""

    size = 512
    role = "parser"

    def _check_shape(self, shape: list, where: str) -> None:
        if len(shape) != 4 or any(static_dim(shape[a]) not in (None, 512) for a in (2, 3)):
            raise InvalidModelError(f"{where}: the parser takes (N, 3, 512, 512), got {shape}")

    @staticmethod
    def to_blob(crops: np.ndarray) -> np.ndarray:
        x = (_resize_all(crops, 512).astype(np.float32) / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def parse(self, crops: np.ndarray) -> np.ndarray:
        """Class maps, uint8 ``(N, 512, 512)`` (indices into :data:`PARSING_CLASSES`)."""
        crops = _check_crops(crops)
        logits = np.asarray(self._run(self.to_blob(crops)))
        if logits.ndim != 4 or logits.shape[1] != len(PARSING_CLASSES):
            raise InvalidModelError(
                f"the parser must output (N, 19, H, W) class logits, got {logits.shape}"
            )
        return logits.argmax(axis=1).astype(np.uint8)

    def masks(self, crops: np.ndarray, classes: Iterable[int] | str | None = None) -> np.ndarray:
        """Soft masks of the chosen classes, float32 ``(N, S, S)`` at the crops' size."""
        crops = _check_crops(crops)
        idx = (
            parse_classes(classes)
            if classes is None or isinstance(classes, str)
            else tuple(classes)
        )
        maps = self.parse(crops)
        out = []
        for m in maps:
            soft = soften(np.isin(m, idx).astype(np.float32))
            out.append(cv2.resize(soft, crops.shape[2:0:-1], interpolation=cv2.INTER_LINEAR))
        return np.clip(np.stack(out), 0, 1).astype(np.float32)

    @classmethod
    def from_pretrained(
        cls, name: str = "bisenet_resnet_34", model_path: str | Path | None = None, *,
        device: str | None = "cpu", offline: bool | None = None,
    ) -> FaceParser:  # fmt: skip
        from facegen.hub import get_preset, resolve

        if name not in ("bisenet_resnet_34", "bisenet_resnet_18"):
            raise UnknownNameError("face parser", name, ("bisenet_resnet_34", "bisenet_resnet_18"))
        path = resolve(name, get_preset(name).file_for("parser"), path=model_path, offline=offline)
        return cls(model_path=path, device=device)


class Occluder(_OnnxMasker):
    """XSeg occlusion (see the module doc)."""

    size = 256
    role = "occluder"

    def _check_shape(self, shape: list, where: str) -> None:
        if len(shape) != 4 or static_dim(shape[3]) not in (None, 3):
            raise InvalidModelError(
                f"{where}: the occluder takes NHWC (N, 256, 256, 3), got {shape}"
            )

    def masks(self, crops: np.ndarray) -> np.ndarray:
        """Soft masks of the visible face, float32 ``(N, S, S)`` at the crops' size."""
        crops = _check_crops(crops)
        x = _resize_all(crops, 256)[..., ::-1].astype(np.float32) / 255.0  # BGR, NHWC
        pred = np.asarray(self._run(np.ascontiguousarray(x)), np.float32)
        pred = pred.reshape(len(crops), 256, 256, -1)[..., 0]
        out = []
        for p in np.clip(pred, 0, 1):
            soft = soften(p)
            out.append(cv2.resize(soft, crops.shape[2:0:-1], interpolation=cv2.INTER_LINEAR))
        return np.clip(np.stack(out), 0, 1).astype(np.float32)

    @classmethod
    def from_pretrained(
        cls, name: str = "xseg_1", model_path: str | Path | None = None, *,
        device: str | None = "cpu", offline: bool | None = None,
    ) -> Occluder:  # fmt: skip
        from facegen.hub import get_preset, resolve

        if name != "xseg_1":
            raise UnknownNameError("occluder", name, ("xseg_1",))
        path = resolve(
            name, get_preset(name).file_for("occluder"), path=model_path, offline=offline
        )
        return cls(model_path=path, device=device)
