"""insightface verification ``.bin`` files: write them, and read them back safely."""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from facegen.fileio import atomic_write
from facegen.pipelines.dataset.writers.base import (
    JPEG_QUALITY,
    InvalidDatasetFileError,
    encode_image,
)

__all__ = ["VerificationBin", "read_verification_bin", "write_verification_bin"]


@dataclass(frozen=True)
class VerificationBin:
    """A verification set: ``bins`` = encoded images a0, b0, a1, b1, …; ``issame`` per pair."""

    bins: list[bytes]
    issame: list[bool]

    def pairs(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Decoded pairs as RGB uint8 ``(H, W, 3)`` arrays."""
        from PIL import Image

        imgs = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in self.bins]
        return list(zip(imgs[0::2], imgs[1::2]))


def write_verification_bin(
    path: str | Path,
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    issame: Sequence[bool],
    *,
    fmt: str = "jpg",
    quality: int = JPEG_QUALITY,
) -> Path:
    """Write insightface's verification ``.bin``: ``pickle.dump((bins, issame_list))``.

    ``pairs``: RGB uint8 ``(H, W, 3)`` aligned images (112×112); ``bins`` holds them encoded
    (``fmt`` ``"jpg"`` or ``"png"``) in the order a0, b0, a1, b1, … that insightface's
    ``load_bin`` expects. Written atomically.
    """
    pairs, flags = list(pairs), list(issame)
    if len(pairs) != len(flags):
        raise ValueError(f"`issame` must have one entry per pair ({len(pairs)}), got {len(flags)}")
    bins: list[bytes] = []
    for i, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(f"`pairs[{i}]` must be a pair of images, got {len(pair)} items")
        for img in pair:
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3:
                got = getattr(img, "shape", type(img).__name__)
                raise ValueError(f"`pairs[{i}]` images must be uint8 (H, W, 3), got {got}")
            bins.append(encode_image(img, fmt, quality))
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        pickle.dump((bins, [bool(s) for s in flags]), f, protocol=4)
    return Path(path)


class _SafeUnpickler(pickle.Unpickler):
    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("builtins", "bytes"),
        ("builtins", "bool"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise InvalidDatasetFileError(
            f"verification .bin must contain only lists of bytes and bools, but it references "
            f"{module}.{name}; refusing to load it"
        )


def read_verification_bin(path: str | Path) -> VerificationBin:
    """Read a verification ``.bin`` safely: only ``(list[bytes], list[bool])`` is accepted.

    The unpickler constructs no classes beyond ``list``/``tuple``/``bytes``/``bool``, so a
    malicious file cannot run code; anything else raises :class:`InvalidDatasetFileError`.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except InvalidDatasetFileError:
        raise
    except OSError as exc:
        raise InvalidDatasetFileError(f"cannot read {p}: {exc.strerror or exc}") from exc
    except Exception as exc:
        raise InvalidDatasetFileError(f"{p} is not a verification .bin: {exc}") from exc
    if not (isinstance(obj, tuple | list) and len(obj) == 2):
        raise InvalidDatasetFileError(
            f"{p} must hold (bins, issame_list), got {type(obj).__name__}"
        )
    bins, issame = obj
    if not isinstance(bins, list) or not all(isinstance(b, bytes) for b in bins):
        raise InvalidDatasetFileError(f"{p}: bins must be a list of bytes")
    if not isinstance(issame, list) or not all(isinstance(s, bool) for s in issame):
        raise InvalidDatasetFileError(f"{p}: issame_list must be a list of bools")
    if len(bins) != 2 * len(issame):
        raise InvalidDatasetFileError(
            f"{p}: bins must hold 2 images per pair ({2 * len(issame)}), got {len(bins)}"
        )
    return VerificationBin(bins, issame)
