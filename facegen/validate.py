"""Checks at public entries that turn absurd or broken input into one clear error.

* :func:`check_count`: an integer count within bounds (``n`` identities, images, steps).
* :func:`check_fits_in_memory`: an allocation estimated *before* it is made, against the
  machine's physical memory, so ``--random-identities 1000000000000`` says what it would
  need instead of dying in NumPy.
* :func:`check_safetensors`: a ``.safetensors`` file whose header parses, so a corrupt or
  foreign file is named in one line before a library deep down fails on it.
"""

from __future__ import annotations

import os
from pathlib import Path

from facegen.errors import InvalidArgumentError, InvalidModelError

__all__ = ["available_memory_bytes", "check_count", "check_fits_in_memory", "check_safetensors"]


def check_count(value: object, name: str, *, minimum: int = 1, maximum: int) -> int:
    """``value`` as an int in ``[minimum, maximum]``; raises ``InvalidArgumentError``
    (``"`name` must be …, got …"``) otherwise. Booleans are refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"`{name}` must be an integer, got {value!r}")
    if not minimum <= value <= maximum:
        raise InvalidArgumentError(f"`{name}` must be in [{minimum}, {maximum:,}], got {value:,}")
    return value


def available_memory_bytes() -> int | None:
    """Physical memory of this machine in bytes (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} PiB"  # pragma: no cover


def check_fits_in_memory(nbytes: int, what: str, *, fraction: float = 0.8) -> None:
    """Refuse an allocation of about ``nbytes`` for ``what`` that would exceed ``fraction``
    of physical memory, before it is attempted (one line, with the estimate)."""
    total = available_memory_bytes()
    if total is None or nbytes <= fraction * total:
        return
    raise InvalidArgumentError(
        f"{what} would need about {_human(nbytes)} of memory, more than this machine has "
        f"({_human(total)}); ask for fewer"
    )


def check_safetensors(path: str | os.PathLike[str], what: str = "file") -> Path:
    """``path`` if it is a readable ``.safetensors`` file whose header parses; else
    :class:`~facegen.errors.InvalidModelError` naming it (never a library traceback)."""
    from safetensors import safe_open

    p = Path(path)
    try:
        with safe_open(str(p), framework="numpy") as f:
            f.keys()
    except FileNotFoundError:
        raise InvalidModelError(f"{p}: {what} not found") from None
    except Exception as exc:  # SafetensorError, OSError, …: all mean "not a usable file"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidModelError(
            f"{p}: not a valid safetensors {what} ({reason}); is it corrupt or truncated?"
        ) from exc
    return p
