"""Drawing detections for previews (boxes, scores, keypoints, landmarks)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from facegen.types import Face

__all__ = ["draw_faces"]

_KPS_COLOURS = [(255, 64, 64), (64, 160, 255), (64, 220, 64), (255, 200, 0), (220, 64, 255)]


def draw_faces(image: np.ndarray, faces: Sequence[Face], *, labels: bool = True) -> np.ndarray:
    """A copy of RGB uint8 ``image`` with each face's box, index/score, kps5 and landmarks."""
    out = np.ascontiguousarray(image.copy())
    scale = max(1.0, max(out.shape[:2]) / 800.0)
    thick = max(1, round(2 * scale))
    for i, f in enumerate(faces):
        x1, y1, x2, y2 = (round(float(v)) for v in f.bbox)
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 255, 0), thick)
        if f.landmarks is not None:
            for x, y in f.landmarks[:, :2]:
                cv2.circle(out, (round(float(x)), round(float(y))), thick, (255, 255, 255), -1)
        for (x, y), c in zip(f.kps5, _KPS_COLOURS):
            cv2.circle(out, (round(float(x)), round(float(y))), 2 * thick, c, -1)
        if labels:
            cv2.putText(
                out,
                f"#{i} {f.score:.2f}",
                (x1, max(12, y1 - 4)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.5 * scale,
                (0, 255, 0),
                thick,
                cv2.LINE_AA,
            )
    return out
