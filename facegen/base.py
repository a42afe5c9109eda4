"""The interfaces every backend implements: detectors, landmarkers, identity encoders."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from facegen.errors import IncompatibleEmbeddingError
from facegen.types import AlignedFace, Face, IdentityEmbedding
from facegen.validate import check_int

__all__ = ["FaceDetector", "IdentityEncoder", "Landmarker"]


class FaceDetector(ABC):
    """Finds faces in an RGB uint8 ``(H, W, 3)`` image.

    ``detect`` returns faces sorted by descending score, each with ``kps5`` in the
    ArcFace order, keeping at most ``max_faces`` (0 = all) above ``score_threshold``.
    ``score_threshold`` is in the backend's own units (a probability for SCRFD, dlib's raw
    SVM/MMOD margin for dlib); ``Face.score`` is always in [0, 1].
    """

    name: str = "detector"
    score_threshold: float = 0.5
    max_faces: int = 0
    #: Whether ``detect`` may run in several threads at once (declared by each backend; a
    #: detector that does not say so is only ever called from one thread at a time).
    thread_safe: bool = False

    @abstractmethod
    def detect(self, image: np.ndarray) -> list[Face]: ...

    def model_files(self) -> dict[str, str]:
        """Absolute paths of the weight files this detector loaded, by role (for provenance)."""
        return {}


class Landmarker(ABC):
    """Adds dense landmarks (and refined ``kps5``) to detected faces."""

    name: str = "landmarker"
    scheme: str = ""
    #: Whether ``annotate`` may run in several threads at once (see ``FaceDetector``).
    thread_safe: bool = False

    @abstractmethod
    def annotate(self, image: np.ndarray, faces: Sequence[Face]) -> list[Face]:
        """Return copies of ``faces`` with ``landmarks``/``landmark_scheme`` (and ``kps5``) set."""

    def model_files(self) -> dict[str, str]:
        """Absolute paths of the weight files this landmarker loaded, by role."""
        return {}


class IdentityEncoder(ABC):
    """Turns faces into :class:`IdentityEmbedding` vectors.

    Subclasses implement :meth:`align` (how their network wants faces cropped) and
    :meth:`_forward` (a batch of crops → raw features). Batching, flip-averaging and
    normalisation live here.
    """

    encoder_id: str = "encoder"
    dim: int = 0
    input_size: int = 112
    #: Cosine similarity above which two faces are taken as the same person (see README).
    same_person_threshold: float = 0.5

    def __init__(self, *, flip: bool = False, batch_size: int = 32) -> None:
        self.flip = flip
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)

    @abstractmethod
    def align(self, image: np.ndarray, face: Face) -> AlignedFace:
        """Crop ``face`` from ``image`` the way this encoder expects."""

    @abstractmethod
    def _forward(self, crops: np.ndarray) -> np.ndarray:
        """``crops``: uint8 ``(N, S, S, 3)`` RGB → float32 ``(N, dim)`` raw features."""

    def embed_crops(self, crops: Sequence[np.ndarray | AlignedFace] | np.ndarray) -> np.ndarray:
        """Embed aligned crops in batches; returns L2-normalised float32 ``(N, dim)``."""
        arrs = [c.image if isinstance(c, AlignedFace) else np.asarray(c) for c in crops]
        if not arrs:
            return np.zeros((0, self.dim), np.float32)
        for a in arrs:
            if a.dtype != np.uint8 or a.shape != (self.input_size, self.input_size, 3):
                raise ValueError(
                    f"aligned crops for {self.encoder_id!r} must be uint8 "
                    f"({self.input_size}, {self.input_size}, 3), got {a.dtype} {a.shape}"
                )
        batch = np.stack(arrs)
        out = np.empty((len(arrs), self.dim), np.float32)
        for start in range(0, len(arrs), self.batch_size):
            chunk = batch[start : start + self.batch_size]
            feats = self._forward(chunk).astype(np.float32)
            if self.flip:
                feats = feats + self._forward(np.ascontiguousarray(chunk[:, :, ::-1])).astype(
                    np.float32
                )
            out[start : start + len(chunk)] = feats
        if not np.all(np.isfinite(out)):
            raise IncompatibleEmbeddingError(f"encoder {self.encoder_id!r} produced NaN or inf")
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def model_files(self) -> dict[str, str]:
        """Absolute paths of the weight files this encoder has loaded so far, by role."""
        return {}

    def wrap(self, vectors: np.ndarray) -> list[IdentityEmbedding]:
        """Wrap normalised ``(N, dim)`` vectors as :class:`IdentityEmbedding`."""
        return [IdentityEmbedding(v, self.encoder_id, True) for v in vectors]

    def embed(self, image: np.ndarray, faces: Sequence[Face]) -> list[IdentityEmbedding]:
        """Align and embed every face of one image (one batched forward pass)."""
        return self.wrap(self.embed_crops([self.align(image, f) for f in faces]))
