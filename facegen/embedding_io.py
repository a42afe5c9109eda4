"""Identity embeddings on disk: safetensors with the encoder recorded in the metadata."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facegen._version import __version__
from facegen.errors import IncompatibleEmbeddingError, InvalidModelError
from facegen.fileio import atomic_write
from facegen.types import IdentityEmbedding

__all__ = ["RESERVED_METADATA", "load_embeddings", "save_embeddings"]

#: Metadata keys :func:`save_embeddings` writes itself; ``extra`` may not use them.
RESERVED_METADATA = ("encoder_id", "normalized", "names", "facegen_version")


def save_embeddings(
    path: str | os.PathLike[str],
    embeddings: Sequence[IdentityEmbedding],
    *,
    names: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write embeddings of one encoder as a float32 ``(N, D)`` tensor named ``embeddings``.

    The safetensors metadata holds ``encoder_id``, ``normalized``, ``names`` (JSON list, one
    per row), ``facegen_version`` and, JSON-encoded, any ``extra`` entries (which must not
    use those reserved keys). Atomic write.
    """
    from safetensors.numpy import save_file

    if not embeddings:
        raise ValueError("`embeddings` must not be empty")
    first = embeddings[0]
    for e in embeddings[1:]:
        first.check_compatible(e)
        if e.normalized != first.normalized:
            raise IncompatibleEmbeddingError("embeddings must all be normalized or all not")
    if names is not None and len(names) != len(embeddings):
        raise ValueError(f"`names` must have {len(embeddings)} entries, got {len(names)}")
    clash = sorted(str(k) for k in (extra or {}) if str(k) in RESERVED_METADATA)
    if clash:
        raise ValueError(
            f"`extra` must not use the reserved keys {', '.join(RESERVED_METADATA)}, "
            f"got {', '.join(clash)}"
        )
    meta = {
        "encoder_id": first.encoder_id,
        "normalized": json.dumps(first.normalized),
        "names": json.dumps(list(names) if names is not None else []),
        "facegen_version": __version__,
    }
    for k, v in (extra or {}).items():
        meta[str(k)] = json.dumps(v, default=str)
    p = Path(path)
    with atomic_write(p) as tmp:
        save_file({"embeddings": np.stack([e.vector for e in embeddings])}, tmp, metadata=meta)
    return p


def load_embeddings(path: str | os.PathLike[str]) -> tuple[list[IdentityEmbedding], list[str]]:
    """Read a file written by :func:`save_embeddings`: (embeddings, names).

    ``names`` is empty when the file was saved without names. Anything that does not
    follow the format (no ``(N, D)`` ``embeddings`` tensor, missing ``encoder_id``,
    ``normalized`` not ``true``/``false``, ``names`` not a JSON list of N strings, vectors
    that are not finite or not unit-norm although marked normalized) raises
    :class:`InvalidModelError` naming the file.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            arr = f.get_tensor("embeddings")
    except Exception as exc:
        raise InvalidModelError(f"{path}: not a facegen embeddings file ({exc})") from exc
    if "encoder_id" not in meta or arr.ndim != 2:
        raise InvalidModelError(f"{path}: missing encoder_id metadata or not an (N, D) tensor")
    raw_norm = meta.get("normalized", "true")
    if raw_norm not in ("true", "false"):
        raise InvalidModelError(
            f"{path}: `normalized` metadata must be true or false, got {raw_norm[:60]!r}"
        )
    normalized = raw_norm == "true"
    raw_names = meta.get("names", "[]")
    try:
        names = json.loads(raw_names)
    except ValueError:
        names = None
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise InvalidModelError(
            f"{path}: `names` metadata must be a JSON list of {len(arr)} strings, "
            f"got {raw_names[:60]!r}"
        )
    if names and len(names) != len(arr):
        raise InvalidModelError(
            f"{path}: `names` metadata must be a JSON list of {len(arr)} strings, got {len(names)}"
        )
    try:
        embs = [IdentityEmbedding(v, meta["encoder_id"], normalized) for v in arr]
    except ValueError as exc:  # IncompatibleEmbeddingError too
        raise InvalidModelError(f"{path}: {exc}") from exc
    return embs, names
