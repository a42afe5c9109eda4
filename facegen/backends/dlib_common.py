"""What the dlib backends share: the lazy ``dlib`` import, model files, devices, images.

Used by :mod:`facegen.backends.dlib_backend` (detector, landmarker) and
:mod:`facegen.backends.dlib_encoder` (encoder); not a public API of its own.

* :func:`import_dlib` — ``dlib`` itself (the ``dlib-bin`` wheel), or
  :class:`~facegen.errors.MissingDependencyError` naming it;
* :func:`load_model` — one dlib model file, loaded once per process and shared;
* :func:`model_file` — where a ``"dlib"`` preset file is, given a class's ``model_path``
  (a folder holding the ``.dat`` files, or the one file the class needs; the other files it
  may need are taken from that file's folder when they are there, else found as usual);
* :func:`check_device`, :func:`check_image` — the checks every dlib class does;
* :func:`rect_from_bbox`, :func:`parts_array` — facegen boxes/points ↔ dlib objects.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from facegen.devices import parse_device
from facegen.errors import (
    DeviceNotAvailableError,
    InvalidImageError,
    InvalidModelError,
    MissingDependencyError,
)
from facegen.hub import get_preset, resolve
from facegen.validate import check_choice

__all__ = [
    "absolute_paths",
    "check_device",
    "check_image",
    "import_dlib",
    "load_model",
    "model_file",
    "parts_array",
    "rect_from_bbox",
]

logger = logging.getLogger(__name__)

#: What :func:`load_model` can load, by kind → the dlib class's attribute name.
_LOADERS = {
    "shape_predictor": "shape_predictor",
    "cnn_detector": "cnn_face_detection_model_v1",
    "recognition": "face_recognition_model_v1",
}


def import_dlib(purpose: str) -> Any:
    """The ``dlib`` module; :class:`MissingDependencyError` (``dlib-bin``) when missing."""
    try:
        import dlib
    except ImportError as exc:
        raise MissingDependencyError("dlib-bin", purpose=purpose) from exc
    return dlib


@functools.lru_cache(maxsize=8)
def load_model(kind: str, path: str) -> Any:
    """Load one dlib model file once per process (instances share it; inference is read-only).

    ``kind``: ``"shape_predictor"``, ``"cnn_detector"`` or ``"recognition"``. A file dlib
    cannot read as ``kind`` raises :class:`InvalidModelError` naming it.
    """
    check_choice(kind, "kind", _LOADERS)
    dlib = import_dlib(f"dlib {kind}")
    logger.debug("loading dlib %s from %s", kind, path)
    try:
        return getattr(dlib, _LOADERS[kind])(path)
    except RuntimeError as exc:  # dlib's deserialisation errors
        raise InvalidModelError(
            f"{path}: not a dlib {kind.replace('_', ' ')} model file ({str(exc).strip()})"
        ) from exc


def model_file(
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


def absolute_paths(files: dict[str, str]) -> dict[str, str]:
    """``role → path`` with every path made absolute (what ``model_files()`` returns)."""
    return {role: os.path.abspath(path) for role, path in files.items()}


def check_device(device: str, dlib: Any) -> str:
    """``"cpu"``, or a CUDA ``device`` when this dlib was built with CUDA; else raises."""
    kind, _ = parse_device(device)
    if kind == "cpu":
        return "cpu"
    if kind == "cuda" and bool(getattr(dlib, "DLIB_USE_CUDA", False)):
        return str(device)
    raise DeviceNotAvailableError(
        f"`device` must be 'cpu' for this dlib build (dlib-bin is CPU-only; a CUDA build of "
        f"dlib uses the GPU by itself), got {device!r}"
    )


def check_image(image: np.ndarray) -> np.ndarray:
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


def rect_from_bbox(dlib: Any, bbox: np.ndarray) -> Any:
    """xyxy float box (``x2``/``y2`` exclusive edges) → dlib rectangle (inclusive corners)."""
    x1, y1, x2, y2 = (round(float(v)) for v in bbox)
    return dlib.rectangle(x1, y1, max(x1, x2 - 1), max(y1, y2 - 1))


def parts_array(shape: Any) -> np.ndarray:
    """A dlib ``full_object_detection`` → float32 ``(K, 2)`` pixel coordinates."""
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
