"""dlib's 128-D ResNet face recogniser, on dlib's own 150×150 chips.

* :class:`DlibEncoder` — the network runs in PyTorch by default
  (:mod:`facegen.backends.dlib_torch`, same vectors, ~20× faster on one CPU core,
  CUDA/float16 possible) or in dlib itself (``backend="dlib"``).
* :func:`chip_matrix` — the source→chip affine of a dlib ``chip_details``.

``model_path`` is as for every dlib backend (see :mod:`facegen.backends.dlib_backend`): a
folder holding the ``.dat`` files, or ``dlib_face_recognition_resnet_model_v1.dat`` itself
(the 5-point predictor it may need is then taken from that file's folder when it is there).
Also importable from :mod:`facegen.backends.dlib_backend`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from facegen.backends.dlib_common import (
    absolute_paths,
    check_device,
    check_image,
    import_dlib,
    load_model,
    model_file,
    rect_from_bbox,
)
from facegen.base import IdentityEncoder
from facegen.devices import parse_device
from facegen.errors import DeviceNotAvailableError
from facegen.types import AlignedFace, Face
from facegen.validate import check_choice, check_int

if TYPE_CHECKING:
    import torch

    from facegen.backends.dlib_torch import DlibResNet

__all__ = ["ENCODER_BACKENDS", "DlibEncoder", "chip_matrix"]

logger = logging.getLogger(__name__)

#: Where :class:`DlibEncoder` runs its network: PyTorch (default) or dlib itself.
ENCODER_BACKENDS: tuple[str, ...] = ("torch", "dlib")
_TORCH_DTYPES = ("float32", "float16")

_CHIP_SIZE = 150
_CHIP_PADDING = 0.25


def _torch_device(device: str) -> str:
    """``device`` for the torch backend: ``"cpu"`` or an available ``"cuda:N"``."""
    kind, index = parse_device(device)
    if kind == "cpu":
        return "cpu"
    if kind == "cuda":
        import torch

        if torch.cuda.is_available() and index < torch.cuda.device_count():
            return f"cuda:{index}"
        raise DeviceNotAvailableError(
            f"`device` {device!r} is not available to this PyTorch "
            f"({torch.cuda.device_count()} CUDA device(s)); use 'cpu'"
        )
    raise DeviceNotAvailableError(
        f"`device` must be 'cpu' or 'cuda[:N]' for the torch backend, got {device!r}"
    )


def _dtype_name(dtype: str | torch.dtype) -> str:
    """``"float32"`` / ``"float16"`` (or the torch dtypes) → the name; anything else raises."""
    return check_choice(str(dtype).removeprefix("torch."), "dtype", _TORCH_DTYPES)


@functools.lru_cache(maxsize=4)
def _load_torch(path: str, device: str, dtype: str) -> DlibResNet:
    """The PyTorch port of the recogniser, once per (file, device, dtype) per process."""
    import torch

    from facegen.backends.dlib_torch import DlibResNet

    logger.debug("loading dlib ResNet %s into PyTorch (%s, %s)", path, device, dtype)
    return DlibResNet.from_dat(path, device=device, dtype=getattr(torch, dtype))


def chip_matrix(details: Any) -> np.ndarray:
    """dlib ``chip_details`` → float64 ``(2, 3)`` source→chip matrix (``cv2.warpAffine`` style).

    dlib maps chip pixel (0, 0) to the rectangle's top-left corner, (cols-1, 0) to its top-right
    and (cols-1, rows-1) to its bottom-right, all rotated by ``angle`` about the centre.
    """
    r = details.rect
    left, top, right, bottom = r.left(), r.top(), r.right(), r.bottom()
    if right <= left or bottom <= top:
        raise ValueError(f"`details.rect` must have a positive size, got {r}")
    centre = np.array([(left + right) / 2.0, (top + bottom) / 2.0])
    c, s = math.cos(details.angle), math.sin(details.angle)
    rot_t = np.array([[c, s], [-s, c]])  # undo the rotation about the centre
    scale = np.diag([(details.cols - 1.0) / (right - left), (details.rows - 1.0) / (bottom - top)])
    lin = scale @ rot_t
    m = np.empty((2, 3), np.float64)
    m[:, :2] = lin
    m[:, 2] = scale @ (centre - np.array([left, top])) - lin @ centre
    return m


class DlibEncoder(IdentityEncoder):
    """dlib's ResNet face recogniser (``dlib_face_recognition_resnet_model_v1``), 128-D.

    ``align`` cuts dlib's own 150×150 RGB uint8 chip (padding 0.25, exactly
    ``dlib.get_face_chip``): from ``face.landmarks`` when they are ``"ibug68"``, otherwise from
    dlib's 5-point shape predictor run in ``face.bbox``. ``_forward`` maps uint8
    ``(N, 150, 150, 3)`` chips to float32 ``(N, 128)`` raw descriptors (norm ≈ 1.3–1.6);
    :meth:`embed_crops` L2-normalises them.

    ``backend`` picks what runs the network (alignment is dlib's either way):

    * ``"torch"`` (default): :class:`~facegen.backends.dlib_torch.DlibResNet`, the same network
      in PyTorch with the weights parsed from the same ``.dat``. It reproduces dlib's descriptors to ~4e-7 (max abs, float32
      CPU) and embeds ~270 faces/s on one CPU core where dlib manages ~13. ``device`` may be
      ``"cpu"`` or ``"cuda[:N]"``; ``dtype`` ``"float32"`` or, on CUDA, ``"float16"`` (≈5e-4
      max abs off dlib's vectors, cosine > 0.99999, measured in float16 on CPU). Batches of
      ``batch_size`` run under ``torch.inference_mode``.
    * ``"dlib"``: dlib's own ``compute_face_descriptor`` (CPU only for ``dlib-bin``, float32).

    Both give the same ``encoder_id``: their vectors agree to ~4e-7.

    ``model_path``: a folder holding the dlib ``.dat`` files, or the
    ``dlib_face_recognition_resnet_model_v1.dat`` file itself (see the module doc).

    ``same_person_threshold = 0.925`` is a cosine between the normalised vectors, measured
    (``tests/core/test_dlib_backend.py::orl_similarities``) on all pairs of ORL's 390 photos
    (39 people × 10, grey; HOG at upsample 0, raw threshold 0 found 386, the other 4 use the
    median detected box + 68-point landmarks) plus the 15 cross-person pairs of insightface's t1.jpg: 1 755 genuine
    and 74 115 impostor pairs. ROC AUC 0.99994; the equal-error threshold is 0.926 (EER 0.34 %);
    at 0.925 FAR 0.41 %, FRR 0.17 %. The EER point was chosen over the accuracy maximum (0.941),
    which the 42:1 impostor excess pushes up. t1's most similar pair of different people scores
    0.912. dlib's own rule "Euclidean distance < 0.6" works on the raw vectors, whose norms are
    about 1.3–1.6 rather than 1, so it is not cosine 0.82 but ≈ 0.91 here (FAR 2.2 % on the
    set above); 0.82 would accept 87 % of impostors — dlib's descriptors sit in a narrow cone
    (median impostor cosine 0.86, median genuine 0.98). ORL is easy (frontal, same session);
    expect more false rejects on in-the-wild photos.

    ``num_jitters > 1`` averages that many randomly jittered copies of each chip (dlib's
    ``jitter_image``; ~``num_jitters``× slower, slightly more robust; 0 and 1 both mean no
    jitter). dlib's jitter generator cannot be seeded from Python, so jittered embeddings
    differ slightly from call to call.
    """

    encoder_id = "dlib-resnet-v1"
    dim = 128
    input_size = _CHIP_SIZE
    same_person_threshold = 0.925

    def __init__(
        self,
        *,
        flip: bool = False,
        batch_size: int = 32,
        num_jitters: int = 0,
        backend: str = "torch",
        device: str = "cpu",
        dtype: str | torch.dtype = "float32",
        model_path: str | os.PathLike[str] | None = None,
        offline: bool | None = None,
    ) -> None:
        super().__init__(flip=flip, batch_size=batch_size)
        self.num_jitters = check_int(num_jitters, "num_jitters", minimum=0)
        self.backend = check_choice(backend, "backend", ENCODER_BACKENDS)
        self.dtype = _dtype_name(dtype)
        dlib = import_dlib("dlib face recognition")  # alignment is dlib's for both backends
        self._model_path = model_path
        self._offline = offline
        weights = model_file("recognition", model_path, offline, own_file=True)
        self._files = {"recognition": weights}
        self._net: Any = None  # dlib's face_recognition_model_v1 (backend "dlib")
        self._torch_net: DlibResNet | None = None
        if backend == "dlib":
            if self.dtype != "float32":
                raise ValueError(f"`dtype` must be 'float32' for backend 'dlib', got {dtype!r}")
            self.device = check_device(device, dlib)
            self._net = load_model("recognition", weights)
        else:
            self.device = _torch_device(device)
            if self.dtype == "float16" and not self.device.startswith("cuda"):
                raise ValueError(
                    f"`dtype` 'float16' needs a CUDA `device` (PyTorch's float16 convolutions "
                    f"are ~6x slower than float32 on CPU), got device {device!r}"
                )
            self._torch_net = _load_torch(weights, self.device, self.dtype)
        self._sp5: Any | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(backend={self.backend!r}, device={self.device!r}, "
            f"dtype={self.dtype!r}, batch_size={self.batch_size}, flip={self.flip}, "
            f"num_jitters={self.num_jitters})"
        )

    def model_files(self) -> dict[str, str]:
        return absolute_paths(self._files)

    def _shape5(self) -> Any:
        if self._sp5 is None:
            path = model_file("landmark_5", self._model_path, self._offline, own_file=False)
            self._files["landmark_5"] = path
            self._sp5 = load_model("shape_predictor", path)
        return self._sp5

    def chip_details(self, image: np.ndarray, face: Face) -> Any:
        """dlib ``chip_details`` (rect + angle) of ``face``'s 150×150 chip in ``image``."""
        dlib = import_dlib("dlib face recognition")
        img = check_image(image)
        rect = rect_from_bbox(dlib, face.bbox)
        if face.landmark_scheme == "ibug68" and face.landmarks is not None:
            if face.landmarks.shape[0] != 68:
                raise ValueError(
                    f"`face.landmarks` must have 68 points for scheme 'ibug68', "
                    f"got {face.landmarks.shape[0]}"
                )
            pts = [dlib.point(round(float(x)), round(float(y))) for x, y in face.landmarks[:, :2]]
            shape = dlib.full_object_detection(rect, pts)
        else:
            shape = self._shape5()(img, rect)
        return dlib.get_face_chip_details(shape, _CHIP_SIZE, _CHIP_PADDING)

    def align(self, image: np.ndarray, face: Face) -> AlignedFace:
        """dlib's 150×150 chip of ``face`` with its source→chip ``matrix`` (template ``"dlib"``).

        ``cv2.warpAffine(image, matrix, (150, 150))`` reproduces the chip to within a grey
        level for faces up to ~2× the chip size; for much larger faces dlib low-pass filters
        (image pyramid) before sampling, so its chip is smoother than a plain bilinear warp.
        """
        dlib = import_dlib("dlib face recognition")
        img = check_image(image)
        details = self.chip_details(img, face)
        chip = np.asarray(dlib.extract_image_chip(img, details), dtype=np.uint8)
        m = chip_matrix(details)
        inv = cv2.invertAffineTransform(m).astype(np.float64)
        return AlignedFace(chip, m, inv, "dlib", _CHIP_SIZE, (img.shape[0], img.shape[1]))

    def _forward(self, crops: np.ndarray) -> np.ndarray:
        """uint8 ``(N, 150, 150, 3)`` RGB chips → float32 ``(N, 128)`` raw descriptors."""
        arr = np.asarray(crops)
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (150, 150, 3):
            raise ValueError(f"`crops` must be uint8 (N, 150, 150, 3), got {arr.dtype} {arr.shape}")
        if len(arr) == 0:
            return np.zeros((0, self.dim), np.float32)
        if self._torch_net is not None:
            return self._forward_torch(self._torch_net, arr)
        batch = [np.ascontiguousarray(c) for c in arr]
        vecs = self._net.compute_face_descriptor(batch, self.num_jitters)
        return np.array([np.asarray(v) for v in vecs], dtype=np.float32).reshape(len(arr), self.dim)

    def _forward_torch(self, net: DlibResNet, arr: np.ndarray) -> np.ndarray:
        import torch

        bs = self.batch_size

        def run(x: np.ndarray) -> np.ndarray:
            parts = [net(x[s : s + bs]).cpu().numpy() for s in range(0, len(x), bs)]
            return np.concatenate(parts).astype(np.float32, copy=False)

        with torch.inference_mode():
            if self.num_jitters <= 1:  # like dlib: 0 and 1 both mean no jitter
                return run(arr)
            dlib = import_dlib("dlib face recognition")
            out = np.empty((len(arr), self.dim), np.float32)
            for i, chip in enumerate(arr):
                copies = np.stack(dlib.jitter_image(np.ascontiguousarray(chip), self.num_jitters))
                out[i] = run(copies.astype(np.uint8, copy=False)).mean(axis=0)
            return out
