"""Safe output names: user-given names never escape their output folder."""

from __future__ import annotations

import re
from pathlib import Path

from facegen.errors import OutputError

__all__ = ["safe_child", "safe_name"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str, *, max_len: int = 120) -> str:
    """A file-name-safe version of ``name``: only ``[A-Za-z0-9._-]``, no leading dots.

    Path separators, ``..`` and control characters cannot survive, so the result always
    names a direct child of whatever folder it is joined to.
    """
    s = _UNSAFE.sub("_", name).strip("._") or "unnamed"
    return s[:max_len]


def safe_child(folder: str | Path, name: str) -> Path:
    """``folder / name`` after checking the result stays inside ``folder``."""
    base = Path(folder).resolve()
    p = (base / name).resolve()
    if p.parent != base:
        raise OutputError(f"`name` must be a plain file name inside {base}, got {name!r}")
    return p
