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

__all__ = ["load_embeddings", "save_embeddings"]


def save_embeddings(
    path: str | os.PathLike[str],
    embeddings: Sequence[IdentityEmbedding],
    *,
    names: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write embeddings of one encoder as a float32 ``(N, D)`` tensor named ``embeddings``.

    The safetensors metadata holds ``encoder_id``, ``normalized``, ``names`` (JSON list, one
    per row), ``facegen_version`` and, JSON-encoded, any ``extra`` entries. Atomic write.
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
    """Read a file written by :func:`save_embeddings`: (embeddings, names)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            arr = f.get_tensor("embeddings")
    except Exception as exc:
        raise InvalidModelError(f"{path}: not a facegen embeddings file ({exc})") from exc
    if "encoder_id" not in meta or arr.ndim != 2:
        raise InvalidModelError(f"{path}: missing encoder_id metadata or not an (N, D) tensor")
    normalized = json.loads(meta.get("normalized", "true"))
    names = json.loads(meta.get("names", "[]"))
    embs = [IdentityEmbedding(v, meta["encoder_id"], normalized) for v in arr]
    return embs, names
