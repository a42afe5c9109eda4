"""Pose and expression variation for dataset runs, through the landmark ControlNet path.

A :class:`PoseBank` holds the 68 iBUG landmarks of a folder of reference photos, each moved
into the aligned ArcFace-template frame (:func:`facegen.control.transfer_landmarks`, at
:data:`BANK_SIZE` pixels), so every shape is already normalised for position, scale and
in-plane rotation relative to the eyes, nose and mouth. It gives a landmark shape per image:

* ``reference``: one of the reference shapes, drawn with the image's seed;
* ``sampled``: a new shape from a point-distribution model fitted to the bank (mean shape +
  the principal components that explain 98 % of the variance, coefficients drawn from a
  standard normal and clipped at ±2.5σ), so poses and expressions vary continuously within
  the range the references span, without copying any one of them;
* ``bands`` (:meth:`PoseBank.sample_band`): a shape whose head pose lies in a yaw/pitch band
  (:class:`PoseBand`, e.g. ``"yaw=20:40"``): shapes are drawn from the model (or the
  references) with the image's seed until one's measured pose falls in the band; when none
  of :data:`BAND_TRIES` draws does, the closest one is used and the record says
  ``pose_band_met: false``. Bands outside the references' range cannot be met: give
  references that span the poses you ask for.

The shape is rendered with :func:`facegen.control.render_landmarks68` (facegen's own
landmark map, the conditioning that ``facegen train controlnet`` trains on) at the
pipeline's resolution. Each shape's head pose (yaw, pitch, roll from ``cv2.solvePnP``) is
returned with it so that the dataset records the pose it asked for.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facegen.analyzer import FaceAnalyzer
from facegen.errors import FacegenError, InvalidImageError, NoFaceDetectedError
from facegen.image_io import ImageSource, load_image

__all__ = ["BAND_TRIES", "BANK_SIZE", "POSE_MODES", "PoseBand", "PoseBank", "parse_pose_band"]

logger = logging.getLogger(__name__)

#: Side of the aligned frame the bank's landmarks are stored in (pixels).
BANK_SIZE = 512
POSE_MODES = ("reference", "sampled")
#: Shapes drawn at most per image to find one in a pose band.
BAND_TRIES = 400
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".pgm", ".ppm", ".tif", ".tiff"}


def _pose_angles(points: np.ndarray) -> dict[str, float]:
    from facegen.head_pose import pose_from_landmarks

    try:
        p = pose_from_landmarks(points)
    except FacegenError:  # degenerate shape: no pose rather than no image
        return {}
    return {
        "target_yaw": round(p.yaw, 2),
        "target_pitch": round(p.pitch, 2),
        "target_roll": round(p.roll, 2),
    }


@dataclass(frozen=True)
class PoseBand:
    """Head-pose limits in degrees (:class:`~facegen.head_pose.HeadPose` conventions; None:
    unbounded): ``yaw`` in ``[yaw_min, yaw_max]`` and ``pitch`` in ``[pitch_min, pitch_max]``."""

    text: str
    yaw: tuple[float, float] | None = None
    pitch: tuple[float, float] | None = None

    def contains(self, yaw: float, pitch: float) -> bool:
        ok = self.yaw is None or self.yaw[0] <= yaw <= self.yaw[1]
        return ok and (self.pitch is None or self.pitch[0] <= pitch <= self.pitch[1])

    def distance(self, yaw: float, pitch: float) -> float:
        """Degrees outside the band (0 inside)."""

        def out(v: float, r: tuple[float, float] | None) -> float:
            return 0.0 if r is None else max(r[0] - v, 0.0, v - r[1])

        return float(np.hypot(out(yaw, self.yaw), out(pitch, self.pitch)))


def parse_pose_band(text: str) -> PoseBand:
    """``"yaw=-40:-20"``, ``"pitch=-10:10"`` or both joined by a comma → :class:`PoseBand`."""
    limits: dict[str, tuple[float, float]] = {}
    for part in str(text).split(","):
        name, sep, rng = part.strip().partition("=")
        lo, colon, hi = rng.partition(":")
        try:
            a, b = float(lo), float(hi)
        except ValueError:
            a = b = float("nan")
        if (
            not sep
            or not colon
            or name not in ("yaw", "pitch")
            or name in limits
            or not (-90 <= a < b <= 90)
        ):
            raise FacegenError(
                f"a pose band must be 'yaw=A:B', 'pitch=A:B' or both joined by ',' with "
                f"-90 <= A < B <= 90 (degrees), got {text!r}"
            )
        limits[name] = (a, b)
    return PoseBand(str(text), limits.get("yaw"), limits.get("pitch"))


@dataclass
class PoseBank:
    """``landmarks``: float32 ``(K, 68, 2)`` in the :data:`BANK_SIZE` ArcFace-template frame;
    ``names``: the reference each shape came from (relative path)."""

    landmarks: np.ndarray
    names: list[str]

    def __post_init__(self) -> None:
        lm = np.asarray(self.landmarks, np.float32)
        if lm.ndim != 3 or lm.shape[1:] != (68, 2) or len(lm) < 1:
            raise ValueError(f"`landmarks` must be (K >= 1, 68, 2), got {lm.shape}")
        if not np.isfinite(lm).all():
            raise ValueError("`landmarks` must be finite")
        if len(self.names) != len(lm):
            raise ValueError(f"`names` must have {len(lm)} entries, got {len(self.names)}")
        self.landmarks = lm
        self._pdm: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.landmarks.shape[0])

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def from_images(
        cls, images: Sequence[ImageSource], names: Sequence[str], analyzer: FaceAnalyzer
    ) -> PoseBank:
        """Shapes of the largest face of each image (``analyzer`` must give 68 landmarks)."""
        from facegen.control import transfer_landmarks

        shapes, kept = [], []
        for img, name in zip(images, names, strict=True):
            try:
                face = analyzer.analyze(img, select="largest", source=name, embed=False)[0]
            except (NoFaceDetectedError, InvalidImageError) as e:
                logger.warning("pose reference %s skipped: %s", name, e)
                continue
            if face.landmarks is None or len(face.landmarks) != 68:
                raise FacegenError(
                    "pose references need 68 landmarks: use an analyzer with a 68-point "
                    "landmarker (e.g. FaceAnalyzer.from_names('dlib', 'dlib68', None))"
                )
            shapes.append(transfer_landmarks(face, size=BANK_SIZE)[:, :2])
            kept.append(str(name))
        if not shapes:
            raise FacegenError(f"no face found in any of the {len(names)} pose reference image(s)")
        return cls(np.stack(shapes).astype(np.float32), kept)

    @classmethod
    def from_folder(
        cls,
        folder: str | os.PathLike[str],
        analyzer: FaceAnalyzer | None = None,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> PoseBank:
        """Every image under ``folder`` (recursive, sorted); unreadable or face-less ones are
        skipped with a warning. ``analyzer`` defaults to dlib HOG + 68 points."""
        root = Path(folder)
        if not root.is_dir():
            raise FacegenError(f"pose reference folder {root} does not exist")
        files = sorted(
            p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
        )
        if not files:
            raise FacegenError(f"no images ({', '.join(sorted(_IMAGE_SUFFIXES))}) under {root}")
        if analyzer is None:
            analyzer = FaceAnalyzer.from_names("dlib", "dlib68", None)
        images, names = [], []
        for n, f in enumerate(files):
            try:
                images.append(load_image(f))
                names.append(f.relative_to(root).as_posix())
            except InvalidImageError as e:
                logger.warning("pose reference %s skipped: %s", f, e)
            if progress is not None:
                progress(n + 1, len(files))
        return cls.from_images(images, names, analyzer)

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """safetensors ``landmarks`` + the names in the header metadata (written atomically)."""
        import json

        import torch
        from safetensors.torch import save_file

        from facegen.fileio import atomic_write

        with atomic_write(path) as tmp:
            save_file(
                {"landmarks": torch.from_numpy(self.landmarks.copy())},
                str(tmp),
                metadata={"names": json.dumps(self.names), "frame_size": str(BANK_SIZE)},
            )
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PoseBank:
        import json

        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            lm = f.get_tensor("landmarks")
        if int(meta.get("frame_size", BANK_SIZE)) != BANK_SIZE:
            raise FacegenError(f"{path}: landmarks stored at another frame size")
        return cls(lm, json.loads(meta.get("names", "[]")))

    # -- sampling ---------------------------------------------------------------------------
    def _model(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean shape ``(136,)`` and scaled components ``(k, 136)`` (98 % of the variance)."""
        if self._pdm is None:
            x = self.landmarks.reshape(len(self), -1).astype(np.float64)
            mean = x.mean(0)
            _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
            var = s**2 / max(len(x) - 1, 1)
            total = var.sum()
            k = int(np.searchsorted(np.cumsum(var) / total, 0.98) + 1) if total > 0 else 0
            self._pdm = (mean, vt[:k] * np.sqrt(var[:k])[:, None])
        return self._pdm

    def sample(self, mode: str, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        """A shape ``(68, 2)`` float32 in the :data:`BANK_SIZE` frame and what it is (JSON-able:
        the reference's name or the model's coefficients' seed, and the shape's head pose)."""
        if mode not in POSE_MODES:
            raise ValueError(f"`mode` must be one of {', '.join(POSE_MODES)}, got {mode!r}")
        rng = np.random.default_rng(seed)
        if mode == "reference":
            k = int(rng.integers(len(self)))
            pts = self.landmarks[k]
            info: dict[str, Any] = {"pose_mode": mode, "pose_reference": self.names[k]}
        else:
            if len(self) < 2:
                raise FacegenError("pose mode 'sampled' needs at least 2 reference faces")
            mean, basis = self._model()
            z = np.clip(rng.standard_normal(len(basis)), -2.5, 2.5)
            pts = (mean + z @ basis).reshape(68, 2).astype(np.float32)
            info = {"pose_mode": mode}
        return pts, {**info, **_pose_angles(pts)}

    def sample_band(self, band: PoseBand, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        """A shape whose head pose lies in ``band`` (see the module docstring): ``(68, 2)``
        float32 in the :data:`BANK_SIZE` frame and its record (band, measured pose, whether
        the band was met)."""
        rng = np.random.default_rng(seed)
        best: tuple[float, np.ndarray, dict[str, float]] | None = None
        for _ in range(BAND_TRIES):
            if len(self) >= 2:
                mean, basis = self._model()
                z = np.clip(rng.standard_normal(len(basis)), -2.5, 2.5)
                pts = (mean + z @ basis).reshape(68, 2).astype(np.float32)
            else:
                pts = self.landmarks[0]
            angles = _pose_angles(pts)
            if not angles:
                continue
            d = band.distance(angles["target_yaw"], angles["target_pitch"])
            if best is None or d < best[0]:
                best = (d, pts, angles)
            if d == 0.0 or len(self) < 2:
                break
        if best is None:
            raise FacegenError("no pose could be measured on the bank's shapes")
        d, pts, angles = best
        return pts, {
            "pose_mode": "bands",
            "pose_band": band.text,
            "pose_band_met": d == 0.0,
            **angles,
        }

    @staticmethod
    def render(points: np.ndarray, size: int) -> np.ndarray:
        """The landmark map of a bank-frame shape at ``size`` px: RGB uint8 ``(size, size, 3)``."""
        from facegen.control import render_landmarks68

        return render_landmarks68(np.asarray(points) * (size / BANK_SIZE), size)
