"""Dataset-writer core: :class:`DatasetSample`, the :class:`DatasetWriter` base (staging folder,
atomic rename on close) and shared encoding helpers."""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import numpy as np

from facegen.errors import FacegenError, OutputError
from facegen.validate import check_int

logger = logging.getLogger(__name__)

__all__ = [
    "JPEG_QUALITY",
    "DatasetSample",
    "DatasetWriter",
    "InvalidDatasetFileError",
    "encode_image",
]

JPEG_QUALITY = 95
_STAGING_PREFIX = ".facegen-tmp-"


class InvalidDatasetFileError(FacegenError, ValueError):
    """A dataset file (e.g. a verification ``.bin``) is not what it must be."""


@dataclass(frozen=True)
class DatasetSample:
    """One image of a synthetic FR dataset.

    ``image``: aligned RGB uint8 ``(H, W, 3)`` (112×112 on the ArcFace template).
    ``embedding``: float32 ``(D,)`` identity vector, optional. ``metadata``: JSON-serialisable
    dict (seed, similarity, …).
    """

    identity: int  # class index, 0-based
    index: int  # image number within the identity
    image: np.ndarray
    embedding: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("identity", "index"):
            check_int(getattr(self, name), name, minimum=0)
        img = self.image
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3:
            got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
            raise ValueError(f"`image` must be a uint8 (H, W, 3) array, got {got}")
        if img.shape[2] != 3:
            raise ValueError(f"`image` must be a uint8 (H, W, 3) array, got shape {img.shape}")
        emb = self.embedding
        if emb is not None and (not isinstance(emb, np.ndarray) or emb.ndim != 1):
            got = getattr(emb, "shape", type(emb).__name__)
            raise ValueError(f"`embedding` must be a 1-D array (D,), got {got}")
        if not isinstance(self.metadata, dict):
            raise ValueError(f"`metadata` must be a dict, got {type(self.metadata).__name__}")

    @property
    def key(self) -> str:
        """``<identity:06d>_<index:04d>``: the sample's name in every format."""
        return f"{self.identity:06d}_{self.index:04d}"


def encode_image(image: np.ndarray, fmt: str = "jpg", quality: int = JPEG_QUALITY) -> bytes:
    """Encode RGB uint8 ``(H, W, 3)`` ``image`` as JPEG (``fmt="jpg"``) or PNG bytes."""
    buf = io.BytesIO()
    from PIL import Image  # lazily: the CLI lists the writers before any image exists

    pil = Image.fromarray(np.ascontiguousarray(image), "RGB")
    if fmt in ("jpg", "jpeg"):
        pil.save(buf, format="JPEG", quality=quality)
    elif fmt == "png":
        pil.save(buf, format="PNG", compress_level=1)
    else:
        raise ValueError(f"`fmt` must be 'jpg' or 'png', got {fmt!r}")
    return buf.getvalue()


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"metadata value of type {type(o).__name__} is not JSON-serialisable")


def _metadata_json(sample: DatasetSample) -> bytes:
    try:
        return json.dumps(sample.metadata, sort_keys=True, default=_json_default).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`metadata` must be JSON-serialisable, got {exc}") from None


class CloseOrAbort:
    """``with`` support: :meth:`close` on success, :meth:`abort` when an exception escapes."""

    def close(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def abort(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is None:
            self.close()
        else:
            self.abort()


class DatasetWriter(CloseOrAbort, ABC):
    """Base class: validates samples, owns the staging folder, renames on :meth:`close`.

    Subclasses implement :meth:`_write` (stage one sample) and :meth:`_finish` (return
    ``[(staged_path, final_path), …]``). Usable as a context manager: a clean exit closes,
    an exception aborts (nothing final is written, the staging folder is removed).
    """

    name: ClassVar[str] = ""

    def __init__(self, out_dir: str | Path, **options: Any) -> None:
        if options:
            raise TypeError(f"{type(self).__name__} got unknown options: {', '.join(options)}")
        self.out_dir = Path(out_dir)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._staging = self.out_dir / f"{_STAGING_PREFIX}{self.name}-{secrets.token_hex(4)}"
            self._staging.mkdir()
        except OSError as exc:
            raise OutputError(
                f"`out_dir` must be a writable folder, got {str(out_dir)!r}: {exc.strerror or exc}"
            ) from exc
        self._keys: set[tuple[int, int]] = set()
        self._closed = False
        self._files: list[Path] = []

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, sample: DatasetSample) -> None:
        """Stage ``sample``; raises ``ValueError`` for a repeated (identity, index)."""
        if self._closed:
            raise ValueError(f"{self.name} writer for {self.out_dir} is already closed")
        if not isinstance(sample, DatasetSample):
            raise TypeError(f"`sample` must be a DatasetSample, got {type(sample).__name__}")
        k = (int(sample.identity), int(sample.index))
        if k in self._keys:
            raise ValueError(f"sample (identity={k[0]}, index={k[1]}) was already written")
        try:
            self._write(sample)
        except OSError as exc:
            raise OutputError(f"cannot write to {self._staging}: {exc.strerror or exc}") from exc
        self._keys.add(k)

    def close(self) -> list[Path]:
        """Finalise: rename staged files to their final names; returns them (idempotent)."""
        if self._closed:
            return list(self._files)
        try:
            moves = self._finish()
            for src, dst in moves:
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
                self._files.append(dst)
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot finalise {self.out_dir}: {exc.strerror or exc}") from exc
        except BaseException:
            self.abort()
            raise
        self._closed = True
        shutil.rmtree(self._staging, ignore_errors=True)
        logger.info("%s writer: %d file(s) in %s", self.name, len(self._files), self.out_dir)
        return list(self._files)

    def abort(self) -> None:
        """Drop everything staged; no final file is written (files already renamed stay)."""
        self._closed = True
        self._abort()
        shutil.rmtree(self._staging, ignore_errors=True)

    @abstractmethod
    def _write(self, sample: DatasetSample) -> None: ...

    @abstractmethod
    def _finish(self) -> list[tuple[Path, Path]]: ...

    def _abort(self) -> None:
        """Close open handles before the staging folder is removed."""
