"""insightface's dense landmark models on ONNX Runtime: ``1k3d68.onnx`` and ``2d106det.onnx``.

Both take a 192×192 RGB crop centred on the detector's box and scaled so that
``1.5 · max(box width, box height)`` fills it, and predict points in [-1, 1] crop units:

* ``1k3d68``: output ``(1, 3309)`` = 1103 × (x, y, z); the **last** 68 rows are the 68
  iBUG points (scheme ``"ibug68"``, 3 columns, ``z`` scaled like ``x``/``y``). The five
  ArcFace keypoints are recomputed from them.
* ``2d106det``: output ``(1, 212)`` = 106 × (x, y) (scheme ``"insightface106"``). The
  detector's five keypoints are kept.

Decoding follows insightface: ``p = (pred + 1) · (size // 2)`` for x and y, ``z · (size // 2)``,
then the inverse crop transform maps x, y back to the image (and divides z by the crop scale).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from facegen.backends.onnx_utils import (
    check_rgb_image,
    input_normalisation,
    load_session,
    run_batched,
    square_image_input,
    static_dim,
    to_blob,
)
from facegen.base import Landmarker
from facegen.errors import InvalidModelError, UnknownNameError
from facegen.landmarks import kps5_from_ibug68
from facegen.types import Face, transform_points

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

__all__ = ["LANDMARK_SCHEMES", "ROLE_SCHEMES", "InsightfaceLandmarker", "kps5_from_ibug68"]

logger = logging.getLogger(__name__)

#: scheme → (number of points, columns)
LANDMARK_SCHEMES: dict[str, tuple[int, int]] = {"ibug68": (68, 3), "insightface106": (106, 2)}
#: model-preset role → scheme
ROLE_SCHEMES: dict[str, str] = {"landmark_68": "ibug68", "landmark_106": "insightface106"}
#: insightface's default pixel normalisation for these models (when the graph has none)
_DEFAULT_NORMALISATION = (127.5, 128.0)
#: the crop covers this multiple of the box's longer side
_CROP_MARGIN = 1.5


def crop_matrix(bbox: np.ndarray, size: int) -> np.ndarray:
    """float64 ``(2, 3)`` similarity (no rotation) taking the box's neighbourhood to the crop,
    as insightface's ``Landmark.get`` builds it: the box centre to the crop centre, scale =
    ``size / (1.5 · max(w, h))``, computed in float32 as insightface does under NumPy ≥ 2
    (:func:`~facegen.backends.attributes_onnx.box_crop_matrix`, the same crop)."""
    from facegen.backends.attributes_onnx import box_crop_matrix

    return box_crop_matrix(bbox, size, _CROP_MARGIN)


class InsightfaceLandmarker(Landmarker):
    """Dense landmarks from insightface's ``1k3d68`` / ``2d106det`` ONNX models.

    Parameters
    ----------
    session:
        An ``onnxruntime.InferenceSession`` (or equivalent). When omitted, ``model_path``
        is opened on ``device``.
    scheme:
        ``"ibug68"`` (1k3d68) or ``"insightface106"`` (2d106det). Said explicitly, then
        checked against the model's output size.
    model_path:
        The ``.onnx`` file; also read to decide the input normalisation.
    input_mean, input_std:
        Pixel normalisation ``(x - mean) / std``. By default insightface's rule decides
        from the graph: mean 0 / std 1 when its first nodes are ``Sub`` and ``Mul`` (or
        ``bn_data``), else 127.5 / 128. Required when only a session is given.
    name:
        Recorded in ``Face.extras["landmarker"]``; defaults to ``insightface-68`` /
        ``insightface-106``.
    """

    thread_safe = True  # ONNX Runtime sessions run concurrently

    def __init__(
        self,
        session: InferenceSession | None = None,
        *,
        scheme: str,
        model_path: str | Path | None = None,
        device: str | None = "cpu",
        input_mean: float | None = None,
        input_std: float | None = None,
        name: str | None = None,
    ) -> None:
        if scheme not in LANDMARK_SCHEMES:
            raise UnknownNameError("landmark scheme", scheme, LANDMARK_SCHEMES)
        self.session = load_session(session, model_path, device)
        self.model_path = Path(model_path) if model_path is not None else None
        self.scheme = scheme
        self.num_points, self.point_dim = LANDMARK_SCHEMES[scheme]
        self.name = name or f"insightface-{self.num_points}"
        where = str(model_path) if model_path is not None else "landmark session"

        self.input_name, self.input_size, self._fixed_batch_one = square_image_input(
            self.session, where, "a landmark model"
        )

        outputs = self.session.get_outputs()
        if len(outputs) != 1:
            raise InvalidModelError(
                f"{where}: a landmark model must have exactly one output, got {len(outputs)}"
            )
        self.output_name: str = outputs[0].name
        width = static_dim(outputs[0].shape[-1])
        if width is not None and not self._width_ok(width):
            raise InvalidModelError(
                f"{where}: {self._width_rule()}, got output shape {list(outputs[0].shape)}"
            )

        self.input_mean, self.input_std = input_normalisation(
            model_path=model_path,
            input_mean=input_mean,
            input_std=input_std,
            default=_DEFAULT_NORMALISATION,
            check_bn_data=True,
            what=where,
        )
        logger.debug(
            "%s: scheme %s, input %d, mean %g, std %g",
            where,
            scheme,
            self.input_size,
            self.input_mean,
            self.input_std,
        )

    def model_files(self) -> dict[str, str]:
        if self.model_path is None:
            return {}
        role = next(r for r, sch in ROLE_SCHEMES.items() if sch == self.scheme)
        return {role: str(self.model_path.absolute())}

    def _width_ok(self, width: int) -> bool:
        if self.point_dim == 3:
            return width % 3 == 0 and width >= 3 * self.num_points
        return width == 2 * self.num_points

    def _width_rule(self) -> str:
        if self.point_dim == 3:
            return (
                f"scheme {self.scheme!r} needs an output of (x, y, z) triples ending in "
                f"{self.num_points} points (e.g. 1k3d68's 3309 values)"
            )
        return f"scheme {self.scheme!r} needs an output of {2 * self.num_points} values"

    @classmethod
    def from_pretrained(
        cls,
        role: str,
        preset: str = "antelopev2",
        model_path: str | Path | None = None,
        *,
        device: str | None = "cpu",
        offline: bool | None = None,
        **kwargs: Any,
    ) -> InsightfaceLandmarker:
        """Open the preset's ``landmark_68`` or ``landmark_106`` file (see :func:`facegen.hub.resolve`)."""
        if role not in ROLE_SCHEMES:
            raise UnknownNameError("landmark role", role, ROLE_SCHEMES)
        from facegen.hub import get_preset, resolve

        path = resolve(preset, get_preset(preset).file_for(role), path=model_path, offline=offline)
        return cls(model_path=path, scheme=ROLE_SCHEMES[role], device=device, **kwargs)

    def _decode(self, raw: np.ndarray) -> np.ndarray:
        """Raw outputs ``(N, L)`` → crop-pixel points float64 ``(N, K, point_dim)``."""
        n = len(raw)
        flat = raw.reshape(n, -1).astype(np.float64)
        if not np.isfinite(flat).all():
            raise InvalidModelError(f"landmark model {self.name!r} produced NaN or inf outputs")
        if not self._width_ok(flat.shape[1]):
            raise InvalidModelError(f"{self._width_rule()}, got {flat.shape[1]} values")
        pts = flat.reshape(n, -1, self.point_dim)[:, -self.num_points :, :].copy()
        half = self.input_size // 2
        pts[..., :2] = (pts[..., :2] + 1.0) * half
        if self.point_dim == 3:
            pts[..., 2] *= half
        return pts

    def annotate(self, image: np.ndarray, faces: Sequence[Face]) -> list[Face]:
        """Return copies of ``faces`` with ``landmarks`` (float32 ``(K, 2|3)``, image pixels).

        ``image`` is RGB uint8 ``(H, W, 3)``. For ``ibug68`` the ``kps5`` are recomputed from
        the 68 points; for ``insightface106`` the detector's are kept. Non-finite network
        outputs raise :class:`InvalidModelError`.
        """
        img = check_rgb_image(image)
        if not faces:
            return []
        size = self.input_size
        mats = [crop_matrix(f.bbox, size) for f in faces]
        crops = np.stack(
            [
                cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
                for m in mats
            ]
        )
        blob = to_blob(crops, self.input_mean, self.input_std)
        raw = run_batched(
            self.session,
            self.input_name,
            [self.output_name],
            blob,
            fixed_batch_one=self._fixed_batch_one,
        )[0]
        preds = self._decode(raw)
        out: list[Face] = []
        for face, m, pred in zip(faces, mats, preds):
            inv = cv2.invertAffineTransform(m)
            pts = pred.astype(np.float32)
            pts[:, :2] = transform_points(pred[:, :2], inv)
            if self.point_dim == 3:
                pts[:, 2] = pred[:, 2] * float(np.hypot(inv[0, 0], inv[0, 1]))
            changes: dict[str, Any] = {
                "landmarks": pts,
                "landmark_scheme": self.scheme,
                "extras": {**face.extras, "landmarker": self.name},
            }
            if self.scheme == "ibug68":
                changes["kps5"] = kps5_from_ibug68(pts)
            out.append(face.replace(**changes))
        return out
