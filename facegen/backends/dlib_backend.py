"""dlib backends: HOG / MMOD-CNN face detection, 68-point landmarks, 128-D ResNet identity.

Everything here runs offline on the CPU. The weights are the ``.dat`` files of the
``face_recognition_models`` PyPI package, found through :func:`facegen.hub.resolve` with the
``"dlib"`` preset. ``model_path``, the same for every class here, is either a folder holding
the ``.dat`` files or, where one file is all a class needs (the encoder's
``dlib_face_recognition_resnet_model_v1.dat``, the landmarker's
``shape_predictor_68_face_landmarks.dat``, the CNN detector's
``mmod_human_face_detector.dat``), that file itself; the other files a class may need (the
detector's 68-point predictor, the encoder's 5-point one) are then taken from the file's
folder when they are there, else found as usual. ``dlib`` itself (the ``dlib-bin`` wheel) is
imported lazily, inside the classes.

* :class:`DlibDetector` — HOG + linear SVM (``model="hog"``, fast) or the MMOD CNN
  (``model="cnn"``, more robust to pose, slow on CPU). Every face gets ``kps5`` and the 68
  iBUG landmarks from dlib's 68-point shape predictor.
* :class:`DlibLandmarker` — the 68-point shape predictor run inside any face's box.
* :class:`DlibEncoder` — dlib's ResNet face recogniser (128-D), on dlib's own 150×150 chips; the
  network runs in PyTorch by default (:mod:`facegen.backends.dlib_torch`, same vectors, ~20×
  faster on one CPU core, CUDA/float16 possible) or in dlib itself (``backend="dlib"``).
* :func:`kps5_from_box` — a rough 5-point guess from a dlib box alone (no predictor).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from facegen.base import FaceDetector, IdentityEncoder, Landmarker
from facegen.devices import parse_device
from facegen.errors import (
    DeviceNotAvailableError,
    InvalidImageError,
    InvalidModelError,
    MissingDependencyError,
)
from facegen.hub import get_preset, resolve
from facegen.landmarks import kps5_from_ibug68
from facegen.types import AlignedFace, Face

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_RAW_THRESHOLDS",
    "DETECTOR_MODELS",
    "ENCODER_BACKENDS",
    "DlibDetector",
    "DlibEncoder",
    "DlibLandmarker",
    "chip_matrix",
    "kps5_from_box",
]

logger = logging.getLogger(__name__)

#: Detector models by name → the ``"dlib"`` preset role of the extra file they need.
DETECTOR_MODELS: dict[str, str | None] = {"hog": None, "cnn": "detector_cnn"}

#: Default raw-score thresholds. HOG (linear SVM margin): 0.2, a little above dlib's own
#: boundary 0, measured: at 0 the mission patch on scikit-image's ``astronaut`` is a face
#: (0.12, upsample 1), while the weakest real face of insightface's t1.jpg scores 0.37 and only
#: 8 of ORL's 390 faces (upsample 0) fall in [0, 0.2); no other scikit-image sample photo has a
#: candidate above -0.1. CNN (MMOD confidence): 0.0 — the network only returns detections above
#: its built-in boundary (real faces score ≈ 1), so lower values find nothing more.
DEFAULT_RAW_THRESHOLDS: dict[str, float] = {"hog": 0.2, "cnn": 0.0}

#: ``kps5`` relative to a dlib box (``(p - box.tl) / box.size``), the median over the 393 HOG
#: boxes of ORL + t1.jpg + Tom_Hanks and 55 MMOD boxes of a subset, with the 68-point rule.
_BOX_KPS5: dict[str, np.ndarray] = {
    "hog": np.array(
        [[0.28, 0.28], [0.70, 0.29], [0.49, 0.49], [0.31, 0.71], [0.68, 0.71]], np.float32
    ),
    "cnn": np.array(
        [[0.32, 0.37], [0.75, 0.37], [0.52, 0.59], [0.33, 0.80], [0.74, 0.80]], np.float32
    ),
}

#: Where :class:`DlibEncoder` runs its network: PyTorch (default) or dlib itself.
ENCODER_BACKENDS: tuple[str, ...] = ("torch", "dlib")
_TORCH_DTYPES = ("float32", "float16")

_CHIP_SIZE = 150
_CHIP_PADDING = 0.25
_MAX_UPSAMPLE = 4


# --------------------------------------------------------------------------- helpers


def _import_dlib(purpose: str) -> Any:
    try:
        import dlib
    except ImportError as exc:
        raise MissingDependencyError("dlib-bin", purpose=purpose) from exc
    return dlib


@functools.lru_cache(maxsize=8)
def _load(kind: str, path: str) -> Any:
    """Load one dlib model file once per process (instances share it; inference is read-only).

    A file dlib cannot read as ``kind`` raises :class:`InvalidModelError` naming it.
    """
    dlib = _import_dlib(f"dlib {kind}")
    logger.debug("loading dlib %s from %s", kind, path)
    loaders = {
        "shape_predictor": dlib.shape_predictor,
        "cnn_detector": dlib.cnn_face_detection_model_v1,
        "recognition": dlib.face_recognition_model_v1,
    }
    if kind not in loaders:
        raise ValueError(
            f"`kind` must be shape_predictor, cnn_detector or recognition, got {kind!r}"
        )
    try:
        return loaders[kind](path)
    except RuntimeError as exc:  # dlib's deserialisation errors
        raise InvalidModelError(
            f"{path}: not a dlib {kind.replace('_', ' ')} model file ({str(exc).strip()})"
        ) from exc


def _model_file(
    role: str,
    model_path: str | os.PathLike[str] | None,
    offline: bool | None,
    *,
    own_file: bool,
) -> str:
    """Local path of the ``"dlib"`` preset's file for ``role``.

    ``model_path``: ``None`` (the usual places), a folder holding the file, or a file. A file
    is taken as the ``role`` file itself when ``own_file`` (it is the one file this class is
    given); otherwise the ``role`` file is a companion, looked for next to it, then as usual.
    """
    filename = get_preset("dlib").file_for(role)
    if model_path is None:
        return str(resolve("dlib", filename, offline=offline))
    p = Path(model_path).expanduser()
    if p.is_dir() or own_file or not p.is_file():
        return str(resolve("dlib", filename, path=p, offline=offline))
    sibling = p.parent / filename
    if sibling.is_file():
        return str(sibling)
    return str(resolve("dlib", filename, offline=offline))


def _absolute(files: dict[str, str]) -> dict[str, str]:
    return {role: os.path.abspath(path) for role, path in files.items()}


def _check_device(device: str, dlib: Any) -> str:
    kind, _ = parse_device(device)
    if kind == "cpu":
        return "cpu"
    if kind == "cuda" and bool(getattr(dlib, "DLIB_USE_CUDA", False)):
        return str(device)
    raise DeviceNotAvailableError(
        f"`device` must be 'cpu' for this dlib build (dlib-bin is CPU-only; a CUDA build of "
        f"dlib uses the GPU by itself), got {device!r}"
    )


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
    name = str(dtype).removeprefix("torch.")
    if name not in _TORCH_DTYPES:
        raise ValueError(f"`dtype` must be one of {', '.join(_TORCH_DTYPES)}, got {dtype!r}")
    return name


@functools.lru_cache(maxsize=4)
def _load_torch(path: str, device: str, dtype: str) -> Any:
    """The PyTorch port of the recogniser, once per (file, device, dtype) per process."""
    import torch

    from facegen.backends.dlib_torch import DlibResNet

    logger.debug("loading dlib ResNet %s into PyTorch (%s, %s)", path, device, dtype)
    return DlibResNet.from_dat(path, device=device, dtype=getattr(torch, dtype))


def _check_image(image: np.ndarray) -> np.ndarray:
    """Validate an RGB uint8 ``(H, W, 3)`` image; return a C-contiguous view/copy for dlib."""
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(
            f"`image` must be an RGB uint8 numpy array (H, W, 3), got {type(image).__name__}"
        )
    if image.dtype != np.uint8:
        raise InvalidImageError(f"`image` must have dtype uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidImageError(f"`image` must have shape (H, W, 3), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidImageError(f"`image` must not be empty, got shape {image.shape}")
    return np.ascontiguousarray(image)


def _rect_from_bbox(dlib: Any, bbox: np.ndarray) -> Any:
    """xyxy float box (``x2``/``y2`` exclusive edges) → dlib rectangle (inclusive corners)."""
    x1, y1, x2, y2 = (round(float(v)) for v in bbox)
    return dlib.rectangle(x1, y1, max(x1, x2 - 1), max(y1, y2 - 1))


def _parts(shape: Any) -> np.ndarray:
    """A dlib ``full_object_detection`` → float32 ``(K, 2)`` pixel coordinates."""
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"`{name}` must be an int, got {type(value).__name__} {value!r}")
    if value < lo or (hi is not None and value > hi):
        want = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"`{name}` must be {want}, got {value}")
    return int(value)


def kps5_from_box(bbox: np.ndarray, model: str = "hog") -> np.ndarray:
    """A rough ArcFace-order ``(5, 2)`` float32 guess from a dlib ``model`` box alone.

    ``bbox``: xyxy pixels. The points sit where the 68-point rule puts them on average
    relative to that detector's boxes (5–20 % of the box width off: it ignores head pose); use a
    :class:`Landmarker` for real keypoints.
    """
    if model not in _BOX_KPS5:
        raise ValueError(f"`model` must be one of {', '.join(_BOX_KPS5)}, got {model!r}")
    b = np.asarray(bbox, dtype=np.float32).reshape(-1)
    if b.shape != (4,):
        raise ValueError(f"`bbox` must have shape (4,), got {np.asarray(bbox).shape}")
    return (b[:2] + _BOX_KPS5[model] * (b[2:] - b[:2])).astype(np.float32)


# --------------------------------------------------------------------------- detector


class DlibDetector(FaceDetector):
    """dlib face detector: HOG + linear SVM (``"hog"``) or the MMOD CNN (``"cnn"``).

    ``detect(image)`` takes RGB uint8 ``(H, W, 3)`` and returns :class:`Face` objects sorted by
    descending score, at most ``max_faces`` (0 = all). Scores:

    * ``Face.extras["raw_score"]``: dlib's own score — the SVM margin for HOG (about -1…3), the
      MMOD confidence for the CNN (about 1 for clear faces).
    * ``Face.score = sigmoid(raw_score)`` in (0, 1), so ``score >= 0.5`` ⇔ ``raw >= 0``.
    * ``score_threshold`` is in RAW units; default :data:`DEFAULT_RAW_THRESHOLDS` (HOG 0.2,
      measured, see there; CNN 0.0). ``0.0`` is dlib's own HOG default; lower values (e.g.
      -0.5) find more faces at the price of false positives; the CNN ignores values below its
      built-in boundary.

    Boxes are xyxy float32, clipped to the image. With ``landmarks5=True`` (default) the
    68-point shape predictor runs in every box: ``Face.landmarks`` is ``(68, 2)`` float32
    (``landmark_scheme="ibug68"``) and ``kps5`` follows :func:`kps5_from_ibug68`. With
    ``landmarks5=False`` no predictor is loaded, ``landmarks`` stay ``None`` and ``kps5`` is
    the rough box template of :func:`kps5_from_box` (run a :class:`DlibLandmarker` next).

    ``upsample`` enlarges the image 2× that many times before detecting: HOG's smallest face is
    about 80 px at 0 and 40 px at 1 (cost grows ~4× per step). ``model_path``: a folder holding
    the dlib ``.dat`` files (default: the ``face_recognition_models`` package, then
    ``$FACEGEN_HOME/models/dlib``), or for ``model="cnn"`` the ``mmod_human_face_detector.dat``
    file (see the module doc). ``device``: ``"cpu"`` (``"cuda"`` only with a CUDA dlib).
    """

    thread_safe = True  # one HOG detector per thread, a lock around the CNN one

    def __init__(
        self,
        *,
        model: str = "hog",
        score_threshold: float | None = None,
        max_faces: int = 0,
        upsample: int = 1,
        device: str = "cpu",
        model_path: str | os.PathLike[str] | None = None,
        offline: bool | None = None,
        landmarks5: bool = True,
    ) -> None:
        if model not in DETECTOR_MODELS:
            raise ValueError(f"`model` must be one of {', '.join(DETECTOR_MODELS)}, got {model!r}")
        if score_threshold is None:
            score_threshold = DEFAULT_RAW_THRESHOLDS[model]
        if isinstance(score_threshold, bool) or not isinstance(
            score_threshold, (int, float, np.floating, np.integer)
        ):
            raise ValueError(f"`score_threshold` must be a float, got {score_threshold!r}")
        if not math.isfinite(float(score_threshold)):
            raise ValueError(f"`score_threshold` must be finite, got {score_threshold}")
        self.model = model
        self.name = f"dlib-{model}"
        self.score_threshold = float(score_threshold)
        self.max_faces = _check_int("max_faces", max_faces, 0)
        self.upsample = _check_int("upsample", upsample, 0, _MAX_UPSAMPLE)
        if not isinstance(landmarks5, bool):
            raise ValueError(f"`landmarks5` must be a bool, got {landmarks5!r}")
        self.landmarks5 = landmarks5
        dlib = _import_dlib("dlib face detection")
        self.device = _check_device(device, dlib)
        role = DETECTOR_MODELS[model]
        if role is None and model_path is not None and os.path.isfile(model_path):
            raise ValueError(
                f"`model_path` must be a folder holding the dlib .dat files for model='hog' "
                f"(a single file is accepted for model='cnn': its mmod_human_face_detector.dat), "
                f"got {str(model_path)!r}"
            )
        self._files: dict[str, str] = {}
        # dlib's object detectors must not be used by two threads at once: concurrent HOG
        # calls each borrow an instance from a free list (made on demand, kept for reuse:
        # making one costs about as much as a detection), the CNN detector takes a lock
        self._free: list[Any] = []
        self._lock = threading.Lock()
        if role is None:
            self._detector = dlib.get_frontal_face_detector()
            self._free.append(self._detector)
        else:
            self._files[role] = _model_file(role, model_path, offline, own_file=True)
            self._detector = _load("cnn_detector", self._files[role])
        self._predictor = None
        if landmarks5:
            path = _model_file("landmark_68", model_path, offline, own_file=False)
            self._files["landmark_68"] = path
            self._predictor = _load("shape_predictor", path)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.model!r}, score_threshold={self.score_threshold}, "
            f"max_faces={self.max_faces}, upsample={self.upsample}, landmarks5={self.landmarks5})"
        )

    def model_files(self) -> dict[str, str]:
        return _absolute(self._files)

    def __getstate__(self) -> dict[str, Any]:  # the lock and the spare detectors stay behind
        state = dict(self.__dict__)
        state.pop("_free", None)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._free = [self._detector] if self.model == "hog" else []

    def _candidates(self, img: np.ndarray) -> list[tuple[Any, float]]:
        """Run dlib; ``(rectangle, raw score)`` pairs at or above the raw threshold."""
        if self.model == "hog":
            with self._lock:
                detector = self._free.pop() if self._free else None
            if detector is None:
                detector = _import_dlib("dlib face detection").get_frontal_face_detector()
            try:
                rects, scores, _ = detector.run(img, self.upsample, self.score_threshold)
            finally:
                with self._lock:
                    self._free.append(detector)
            pairs = [(r, float(s)) for r, s in zip(rects, scores)]
        else:
            with self._lock:
                found = self._detector(img, self.upsample)
            pairs = [(d.rect, float(d.confidence)) for d in found]
        return [p for p in pairs if p[1] >= self.score_threshold]

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in RGB uint8 ``(H, W, 3)`` ``image``, best first (``[]`` when none)."""
        img = _check_image(image)
        h, w = img.shape[:2]
        pairs = sorted(self._candidates(img), key=lambda p: -p[1])
        if self.max_faces:
            pairs = pairs[: self.max_faces]
        faces: list[Face] = []
        for rect, raw in pairs:
            edges = np.array(
                [rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], np.float32
            )
            bbox = np.clip(edges, 0, [w, h, w, h]).astype(np.float32)
            if self._predictor is not None:
                landmarks: np.ndarray | None = _parts(self._predictor(img, rect))
                kps5 = kps5_from_ibug68(landmarks)
            else:
                landmarks = None
                kps5 = kps5_from_box(edges, self.model)
            faces.append(
                Face(
                    bbox=bbox,
                    score=_sigmoid(raw),
                    kps5=kps5,
                    landmarks=landmarks,
                    landmark_scheme="ibug68" if landmarks is not None else None,
                    detector=self.name,
                    extras={"raw_score": raw},
                )
            )
        logger.debug("%s: %d face(s) in %dx%d image", self.name, len(faces), w, h)
        return faces


# --------------------------------------------------------------------------- landmarker


class DlibLandmarker(Landmarker):
    """dlib's 68-point shape predictor (iBUG 300-W layout), run inside each face's box.

    ``annotate(image, faces)``: RGB uint8 ``(H, W, 3)`` image → copies of ``faces`` with
    ``landmarks`` float32 ``(68, 2)``, ``landmark_scheme="ibug68"`` and ``kps5`` recomputed by
    :func:`kps5_from_ibug68`. The predictor was trained on dlib HOG boxes; boxes of other
    detectors (taller, looser) still work but slightly less precisely. ``model_path``: the
    ``shape_predictor_68_face_landmarks.dat`` file or a folder holding it.
    """

    thread_safe = True  # dlib's shape predictor is read-only while predicting

    name = "dlib68"
    scheme = "ibug68"

    def __init__(
        self,
        *,
        device: str = "cpu",
        model_path: str | os.PathLike[str] | None = None,
        offline: bool | None = None,
    ) -> None:
        dlib = _import_dlib("dlib 68-point landmarks")
        self.device = _check_device(device, dlib)
        path = _model_file("landmark_68", model_path, offline, own_file=True)
        self._files = {"landmark_68": path}
        self._predictor = _load("shape_predictor", path)

    def model_files(self) -> dict[str, str]:
        return _absolute(self._files)

    def annotate(self, image: np.ndarray, faces: Sequence[Face]) -> list[Face]:
        """Return copies of ``faces`` with 68 landmarks and ``kps5`` from them."""
        img = _check_image(image)
        dlib = _import_dlib("dlib 68-point landmarks")
        out = []
        for face in faces:
            pts = _parts(self._predictor(img, _rect_from_bbox(dlib, face.bbox)))
            out.append(
                face.replace(landmarks=pts, landmark_scheme=self.scheme, kps5=kps5_from_ibug68(pts))
            )
        return out


# --------------------------------------------------------------------------- encoder


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
        self.num_jitters = _check_int("num_jitters", num_jitters, 0)
        if backend not in ENCODER_BACKENDS:
            raise ValueError(
                f"`backend` must be one of {', '.join(ENCODER_BACKENDS)}, got {backend!r}"
            )
        self.backend = backend
        self.dtype = _dtype_name(dtype)
        dlib = _import_dlib("dlib face recognition")  # alignment is dlib's for both backends
        self._model_path = model_path
        self._offline = offline
        weights = _model_file("recognition", model_path, offline, own_file=True)
        self._files = {"recognition": weights}
        self._net: Any = None
        self._torch_net: Any = None
        if backend == "dlib":
            if self.dtype != "float32":
                raise ValueError(f"`dtype` must be 'float32' for backend 'dlib', got {dtype!r}")
            self.device = _check_device(device, dlib)
            self._net = _load("recognition", weights)
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
        return _absolute(self._files)

    def _shape5(self) -> Any:
        if self._sp5 is None:
            path = _model_file("landmark_5", self._model_path, self._offline, own_file=False)
            self._files["landmark_5"] = path
            self._sp5 = _load("shape_predictor", path)
        return self._sp5

    def chip_details(self, image: np.ndarray, face: Face) -> Any:
        """dlib ``chip_details`` (rect + angle) of ``face``'s 150×150 chip in ``image``."""
        dlib = _import_dlib("dlib face recognition")
        img = _check_image(image)
        rect = _rect_from_bbox(dlib, face.bbox)
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
        dlib = _import_dlib("dlib face recognition")
        img = _check_image(image)
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
            return self._forward_torch(arr)
        batch = [np.ascontiguousarray(c) for c in arr]
        vecs = self._net.compute_face_descriptor(batch, self.num_jitters)
        return np.array([np.asarray(v) for v in vecs], dtype=np.float32).reshape(len(arr), self.dim)

    def _forward_torch(self, arr: np.ndarray) -> np.ndarray:
        import torch

        net = self._torch_net
        bs = self.batch_size

        def run(x: np.ndarray) -> np.ndarray:
            parts = [net(x[s : s + bs]).cpu().numpy() for s in range(0, len(x), bs)]
            return np.concatenate(parts).astype(np.float32, copy=False)

        with torch.inference_mode():
            if self.num_jitters <= 1:  # like dlib: 0 and 1 both mean no jitter
                return run(arr)
            dlib = _import_dlib("dlib face recognition")
            out = np.empty((len(arr), self.dim), np.float32)
            for i, chip in enumerate(arr):
                copies = np.stack(dlib.jitter_image(np.ascontiguousarray(chip), self.num_jitters))
                out[i] = run(copies.astype(np.uint8, copy=False)).mean(axis=0)
            return out
