"""Landmark schemes and the rules that turn dense landmarks into ArcFace-order keypoints."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["IBUG68", "check_points", "kps5_from_ibug68"]

#: Name of the 68-point iBUG 300-W layout (dlib's predictor, insightface's 1k3d68).
IBUG68 = "ibug68"


def kps5_from_ibug68(points: np.ndarray) -> np.ndarray:
    """iBUG 68-point landmarks → ArcFace-order 5 points.

    ``points``: ``(68, 2)`` or ``(68, 3)`` pixels (only x, y are used). Returns float32
    ``(5, 2)``: image-left eye centre (mean of points 36–41), image-right eye centre (42–47),
    nose tip (30), image-left mouth corner (48), image-right mouth corner (54).
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] != 68 or pts.shape[1] not in (2, 3):
        raise ValueError(f"`points` must have shape (68, 2) or (68, 3), got {pts.shape}")
    xy = pts[:, :2]
    return np.stack([xy[36:42].mean(0), xy[42:48].mean(0), xy[30], xy[48], xy[54]]).astype(
        np.float32
    )


def check_points(points: npt.ArrayLike, name: str, counts: Sequence[int]) -> np.ndarray:
    """``(N, 2)`` or ``(N, 3)`` with ``N`` in ``counts``, finite → float64 ``(N, 2)``."""
    try:
        pts = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"`{name}` must be a numeric array, got {type(points).__name__}") from e
    if pts.ndim != 2 or pts.shape[0] not in counts or pts.shape[1] not in (2, 3):
        want = " or ".join(f"({n}, 2|3)" for n in counts)
        raise ValueError(f"`{name}` must have shape {want}, got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError(f"`{name}` must be finite, got NaN or inf")
    return pts[:, :2].copy()
