"""Typed objects that travel between facegen's stages (frozen dataclasses).

Conventions
-----------
* Coordinates are in pixels of the image the object came from, ``(x, y)`` order, float32.
* ``Face.kps5`` is ``(5, 2)`` in the ArcFace order: image-left eye centre, image-right eye
  centre, nose tip, image-left mouth corner, image-right mouth corner.
* Images are RGB ``uint8`` ``(H, W, 3)`` numpy arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from facegen.errors import IncompatibleEmbeddingError

__all__ = ["AlignedFace", "Face", "IdentityEmbedding"]


def _frozen_array(
    value: npt.ArrayLike, dtype: npt.DTypeLike, shape: tuple[int | None, ...], name: str
) -> np.ndarray:
    arr = np.array(value, dtype=dtype, copy=True)
    if arr.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, arr.shape)):
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"`{name}` must have shape {want}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must be finite, got NaN or inf")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class IdentityEmbedding:
    """An identity vector and the encoder that produced it.

    ``vector`` is float32 ``(D,)``; when ``normalized`` it has unit L2 norm.
    Embeddings of different ``encoder_id`` are never comparable.
    """

    vector: np.ndarray
    encoder_id: str
    normalized: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.encoder_id, str) or not self.encoder_id:
            raise ValueError(f"`encoder_id` must be a non-empty string, got {self.encoder_id!r}")
        vec = np.asarray(self.vector)
        if vec.ndim != 1 or vec.size == 0:
            raise IncompatibleEmbeddingError(
                f"`vector` must be a non-empty 1-D array, got shape {vec.shape}"
            )
        if not np.all(np.isfinite(vec)):
            raise IncompatibleEmbeddingError("`vector` must be finite, got NaN or inf")
        object.__setattr__(self, "vector", _frozen_array(vec, np.float32, (None,), "vector"))
        if self.normalized:
            n = float(np.linalg.norm(self.vector))
            if abs(n - 1.0) > 1e-3:
                raise IncompatibleEmbeddingError(
                    f"`vector` is marked normalized but its L2 norm is {n:.4f}"
                )

    @property
    def dim(self) -> int:
        return int(self.vector.shape[0])

    def normalize(self) -> IdentityEmbedding:
        """Return a unit-norm copy (self when already normalized)."""
        if self.normalized:
            return self
        n = float(np.linalg.norm(self.vector))
        if n == 0.0:
            raise IncompatibleEmbeddingError("cannot normalize a zero vector")
        return IdentityEmbedding(self.vector / n, self.encoder_id, True)

    def check_compatible(self, other: IdentityEmbedding) -> None:
        """Raise :class:`IncompatibleEmbeddingError` unless both come from the same encoder."""
        if self.encoder_id != other.encoder_id or self.dim != other.dim:
            raise IncompatibleEmbeddingError(
                f"embeddings must come from the same encoder, got {self.encoder_id!r} "
                f"({self.dim}-D) and {other.encoder_id!r} ({other.dim}-D)"
            )

    def similarity(self, other: IdentityEmbedding) -> float:
        """Cosine similarity in [-1, 1]."""
        self.check_compatible(other)
        a, b = self.normalize().vector, other.normalize().vector
        return float(np.dot(a, b))

    def to_dict(self) -> dict[str, Any]:
        return {
            "encoder_id": self.encoder_id,
            "normalized": self.normalized,
            "dim": self.dim,
            "vector": self.vector.tolist(),
        }


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face.

    ``bbox``: float32 ``(4,)`` xyxy in pixels. ``score``: detector confidence, a finite
    float; facegen's detectors give it in [0, 1] (higher = more certain), other values are
    accepted for faces built by hand or by other detectors.
    ``kps5``: float32 ``(5, 2)`` in the ArcFace order (see module doc).
    ``landmarks``: optional dense points ``(K, 2)`` or ``(K, 3)`` named by ``landmark_scheme``
    (e.g. ``"ibug68"`` for the 68-point iBUG layout, ``"insightface106"``).
    """

    bbox: np.ndarray
    score: float
    kps5: np.ndarray
    landmarks: np.ndarray | None = None
    landmark_scheme: str | None = None
    embedding: IdentityEmbedding | None = None
    detector: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bbox", _frozen_array(self.bbox, np.float32, (4,), "bbox"))
        object.__setattr__(self, "kps5", _frozen_array(self.kps5, np.float32, (5, 2), "kps5"))
        object.__setattr__(self, "score", float(self.score))
        if not math.isfinite(self.score):
            raise ValueError(f"`score` must be finite, got {self.score}")
        if self.landmarks is not None:
            lm = np.asarray(self.landmarks)
            if lm.ndim != 2 or lm.shape[1] not in (2, 3):
                raise ValueError(f"`landmarks` must have shape (K, 2) or (K, 3), got {lm.shape}")
            object.__setattr__(
                self, "landmarks", _frozen_array(lm, np.float32, (None, lm.shape[1]), "landmarks")
            )
            if not self.landmark_scheme:
                raise ValueError("`landmark_scheme` must name the landmarks' layout")
        x1, y1, x2, y2 = self.bbox
        if x2 < x1 or y2 < y1:
            raise ValueError(f"`bbox` must be xyxy with x2 >= x1 and y2 >= y1, got {self.bbox}")

    @property
    def width(self) -> float:
        return float(self.bbox[2] - self.bbox[0])

    @property
    def height(self) -> float:
        return float(self.bbox[3] - self.bbox[1])

    @property
    def area(self) -> float:
        return self.width * self.height

    def replace(self, **changes: Any) -> Face:
        """A copy with some fields changed (dataclasses.replace)."""
        return replace(self, **changes)

    def to_dict(self, *, with_embedding: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "bbox": [round(float(v), 2) for v in self.bbox],
            "score": round(self.score, 4),
            # float64 before rounding: float32 values would come back as 12.350000381…
            "kps5": np.round(self.kps5.astype(np.float64), 2).tolist(),
            "detector": self.detector,
        }
        if self.landmarks is not None:
            d["landmarks"] = np.round(self.landmarks.astype(np.float64), 2).tolist()
            d["landmark_scheme"] = self.landmark_scheme
        if self.embedding is not None:
            d["embedding"] = {
                "encoder_id": self.embedding.encoder_id,
                "dim": self.embedding.dim,
                "normalized": self.embedding.normalized,
            }
            if with_embedding:
                d["embedding"]["vector"] = self.embedding.vector.tolist()
        if self.extras:
            d["extras"] = self.extras
        return d


@dataclass(frozen=True, eq=False)
class AlignedFace:
    """A face crop warped onto a canonical template.

    ``image``: RGB uint8 ``(size, size, 3)``. ``matrix``: float64 ``(2, 3)`` mapping source
    image pixels to crop pixels (``cv2.warpAffine`` convention); ``inverse`` maps back.
    ``template``: the template's name (``"arcface"``, ``"ffhq"``, ``"dlib"``).
    """

    image: np.ndarray
    matrix: np.ndarray
    inverse: np.ndarray
    template: str
    size: int
    source_shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        img = np.asarray(self.image)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"`image` must be uint8 (H, W, 3), got {img.dtype} {img.shape}")
        img = img.copy()
        img.setflags(write=False)
        object.__setattr__(self, "image", img)
        object.__setattr__(self, "matrix", _frozen_array(self.matrix, np.float64, (2, 3), "matrix"))
        object.__setattr__(
            self, "inverse", _frozen_array(self.inverse, np.float64, (2, 3), "inverse")
        )

    def to_source(self, points: np.ndarray) -> np.ndarray:
        """Map ``(N, 2)`` crop coordinates back to the source image."""
        return transform_points(points, self.inverse)

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Map ``(N, 2)`` source coordinates into the crop."""
        return transform_points(points, self.matrix)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a ``(2, 3)`` affine matrix to ``(N, 2)`` points; returns float32 ``(N, 2)``."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    out = pts @ np.asarray(matrix, dtype=np.float64)[:, :2].T + np.asarray(matrix)[:, 2]
    return out.astype(np.float32)
