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
  It lives in :mod:`facegen.backends.dlib_encoder` and is importable from here too.
* :func:`kps5_from_box` — a rough 5-point guess from a dlib box alone (no predictor).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from facegen.backends.dlib_common import (
    absolute_paths,
    check_device,
    check_image,
    import_dlib,
    load_model,
    model_file,
    parts_array,
    rect_from_bbox,
)
from facegen.backends.dlib_encoder import ENCODER_BACKENDS, DlibEncoder, chip_matrix
from facegen.base import FaceDetector, Landmarker
from facegen.landmarks import kps5_from_ibug68
from facegen.types import Face
from facegen.validate import check_choice, check_int, check_number

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

_MAX_UPSAMPLE = 4


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def kps5_from_box(bbox: np.ndarray, model: str = "hog") -> np.ndarray:
    """A rough ArcFace-order ``(5, 2)`` float32 guess from a dlib ``model`` box alone.

    ``bbox``: xyxy pixels. The points sit where the 68-point rule puts them on average
    relative to that detector's boxes (5–20 % of the box width off: it ignores head pose); use a
    :class:`Landmarker` for real keypoints.
    """
    check_choice(model, "model", _BOX_KPS5)
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
        self.model = check_choice(model, "model", DETECTOR_MODELS)
        self.name = f"dlib-{model}"
        self.score_threshold = check_number(
            DEFAULT_RAW_THRESHOLDS[model] if score_threshold is None else score_threshold,
            "score_threshold",
        )
        self.max_faces = check_int(max_faces, "max_faces", minimum=0)
        self.upsample = check_int(upsample, "upsample", minimum=0, maximum=_MAX_UPSAMPLE)
        if not isinstance(landmarks5, bool):
            raise ValueError(f"`landmarks5` must be a bool, got {landmarks5!r}")
        self.landmarks5 = landmarks5
        dlib = import_dlib("dlib face detection")
        self.device = check_device(device, dlib)
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
            self._files[role] = model_file(role, model_path, offline, own_file=True)
            self._detector = load_model("cnn_detector", self._files[role])
        self._predictor = None
        if landmarks5:
            path = model_file("landmark_68", model_path, offline, own_file=False)
            self._files["landmark_68"] = path
            self._predictor = load_model("shape_predictor", path)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.model!r}, score_threshold={self.score_threshold}, "
            f"max_faces={self.max_faces}, upsample={self.upsample}, landmarks5={self.landmarks5})"
        )

    def model_files(self) -> dict[str, str]:
        return absolute_paths(self._files)

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
                detector = import_dlib("dlib face detection").get_frontal_face_detector()
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
        img = check_image(image)
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
                landmarks: np.ndarray | None = parts_array(self._predictor(img, rect))
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
        dlib = import_dlib("dlib 68-point landmarks")
        self.device = check_device(device, dlib)
        path = model_file("landmark_68", model_path, offline, own_file=True)
        self._files = {"landmark_68": path}
        self._predictor = load_model("shape_predictor", path)

    def model_files(self) -> dict[str, str]:
        return absolute_paths(self._files)

    def annotate(self, image: np.ndarray, faces: Sequence[Face]) -> list[Face]:
        """Return copies of ``faces`` with 68 landmarks and ``kps5`` from them."""
        img = check_image(image)
        dlib = import_dlib("dlib 68-point landmarks")
        out = []
        for face in faces:
            pts = parts_array(self._predictor(img, rect_from_bbox(dlib, face.bbox)))
            out.append(
                face.replace(landmarks=pts, landmark_scheme=self.scheme, kps5=kps5_from_ibug68(pts))
            )
        return out
