"""Checks at public entries that turn absurd or broken input into one clear error.

* :func:`check_int`, :func:`check_number`, :func:`check_choice`: one argument's type and
  range, with the house message ``"`name` must be …, got …"`` (booleans are never numbers).
* :func:`check_count`: an integer count within bounds (``n`` identities, images, steps).
* :func:`check_fits_in_memory`: an allocation estimated *before* it is made, against the
  machine's physical memory, so ``--random-identities 1000000000000`` says what it would
  need instead of dying in NumPy.
* :func:`check_safetensors`: a ``.safetensors`` file whose header parses, so a corrupt or
  foreign file is named in one line before a library deep down fails on it.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from facegen.errors import InvalidArgumentError, InvalidModelError

__all__ = [
    "available_memory_bytes",
    "check_choice",
    "check_count",
    "check_fits_in_memory",
    "check_int",
    "check_number",
    "check_safetensors",
]

T = TypeVar("T")


def _range_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    assert hi is not None
    return f"{'<' if hi_open else '<='} {hi}"


def check_int(
    value: object, name: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``value`` as a Python ``int`` in ``[minimum, maximum]`` (either bound may be None).

    NumPy integers are accepted; booleans and floats (even ``2.0``) are refused with
    :class:`InvalidArgumentError` (a ``ValueError``): ``"`name` must be an integer >= 1, got 0"``.
    """
    bounds = (
        " " + _range_text(minimum, maximum, False, False)
        if minimum is not None or maximum is not None
        else ""
    )
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgumentError(f"`{name}` must be an integer{bounds}, got {value!r}")
    v = int(value)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise InvalidArgumentError(f"`{name}` must be an integer{bounds}, got {v}")
    return v


def check_number(
    value: object,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
) -> float:
    """``value`` as a finite ``float`` within the bounds (``min_open``/``max_open`` exclude them).

    Ints and NumPy numbers are accepted; booleans, NaN and infinities are refused with
    :class:`InvalidArgumentError`: ``"`name` must be a number in (0, 1], got 1.5"``.
    """
    bounds = (
        " " + _range_text(minimum, maximum, min_open, max_open)
        if minimum is not None or maximum is not None
        else ""
    )
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"`{name}` must be a number{bounds}, got {value!r}")
    v = float(value)
    bad = not math.isfinite(v)
    if minimum is not None:
        bad = bad or (v <= minimum if min_open else v < minimum)
    if maximum is not None:
        bad = bad or (v >= maximum if max_open else v > maximum)
    if bad:
        raise InvalidArgumentError(f"`{name}` must be a finite number{bounds}, got {value!r}")
    return v


def check_choice(value: T, name: str, choices: Iterable[T]) -> T:
    """``value`` if it is one of ``choices``; else :class:`InvalidArgumentError` listing them."""
    options = list(choices)
    if isinstance(value, bool) and not any(isinstance(c, bool) for c in options):
        raise InvalidArgumentError(
            f"`{name}` must be one of {', '.join(map(repr, options))}, got {value!r}"
        )
    try:
        ok = value in options
    except TypeError:  # unhashable or incomparable values
        ok = False
    if not ok:
        raise InvalidArgumentError(
            f"`{name}` must be one of {', '.join(map(repr, options))}, got {value!r}"
        )
    return value


def check_count(value: object, name: str, *, minimum: int = 1, maximum: int) -> int:
    """``value`` as an int in ``[minimum, maximum]``; raises ``InvalidArgumentError``
    (``"`name` must be …, got …"``) otherwise. Booleans are refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"`{name}` must be an integer, got {value!r}")
    if not minimum <= value <= maximum:
        raise InvalidArgumentError(f"`{name}` must be in [{minimum}, {maximum:,}], got {value:,}")
    return value  # the range is printed with thousands separators: counts can be huge


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
