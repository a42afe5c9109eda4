"""Group labels of a verification set's pairs, for :mod:`facegen.training.fr.bias`.

Each pair of a :class:`~facegen.training.fr.eval.VerificationSet` gets two labels, one per
image (any non-empty strings, e.g. ``"gender=female|age=20-39"``), from a CSV file read by
:func:`load_pair_groups` or built in code as :class:`PairGroups`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facegen.errors import InvalidArgumentError
from facegen.validate import check_int

__all__ = ["PairGroups", "load_pair_groups"]


@dataclass(frozen=True)
class PairGroups:
    """The group labels of each pair's two images: ``a[i]``, ``b[i]`` for pair i (non-empty str)."""

    a: tuple[str, ...]
    b: tuple[str, ...]

    def __post_init__(self) -> None:
        a, b = tuple(self.a), tuple(self.b)
        if len(a) != len(b):
            raise InvalidArgumentError(
                f"`a` and `b` must label the same pairs, got {len(a)} and {len(b)} labels"
            )
        for side, labels in (("a", a), ("b", b)):
            for i, g in enumerate(labels):
                if not isinstance(g, str) or not g.strip():
                    raise InvalidArgumentError(
                        f"`{side}[{i}]` must be a non-empty group label, got {g!r}"
                    )
        object.__setattr__(self, "a", tuple(g.strip() for g in a))
        object.__setattr__(self, "b", tuple(g.strip() for g in b))

    @classmethod
    def from_images(cls, labels: Sequence[str]) -> PairGroups:
        """From one label per image in pair order a0, b0, a1, b1, … (``2N`` labels)."""
        if len(labels) % 2:
            raise InvalidArgumentError(
                f"`labels` must hold two labels per pair (an even count), got {len(labels)}"
            )
        return cls(tuple(labels[0::2]), tuple(labels[1::2]))

    def __len__(self) -> int:
        return len(self.a)


_TRUE = {"1", "true", "yes", "same"}
_FALSE = {"0", "false", "no", "diff", "different"}


def load_pair_groups(
    path: str | os.PathLike[str],
    num_pairs: int,
    *,
    issame: Sequence[bool] | np.ndarray | None = None,
) -> PairGroups:
    """Group labels from a CSV file (UTF-8, a header row) for a set of ``num_pairs`` pairs.

    Two layouts:

    - per pair: columns ``a_group`` and ``b_group``, one row per pair in the set's order. An
      optional ``issame`` column (``1/0``, ``true/false``, ``yes/no``) is checked against
      ``issame`` (the set's labels) when given, and a mismatch is refused;
    - per image: a column ``group``, ``2 * num_pairs`` rows in image order (a0, b0, a1, …).

    Other columns are ignored. Labels are stripped of surrounding spaces; an empty label is
    refused with its line number.
    """
    p = Path(path)
    num_pairs = check_int(num_pairs, "num_pairs", minimum=1)
    try:
        with p.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = [c.strip() for c in reader.fieldnames or []]
    except OSError as e:
        raise InvalidArgumentError(f"`groups` file {p} cannot be read: {e.strerror or e}") from e
    rows = [{(k or "").strip(): (v or "") for k, v in r.items()} for r in rows]
    if "a_group" in columns and "b_group" in columns:
        if len(rows) != num_pairs:
            raise InvalidArgumentError(
                f"{p}: a per-pair groups file must have one row per pair ({num_pairs}), "
                f"got {len(rows)}"
            )
        a = [_label(r["a_group"], p, n, "a_group") for n, r in enumerate(rows, 2)]
        b = [_label(r["b_group"], p, n, "b_group") for n, r in enumerate(rows, 2)]
        if "issame" in columns and issame is not None:
            _check_issame(p, [r["issame"] for r in rows], np.asarray(issame, bool))
        return PairGroups(tuple(a), tuple(b))
    if "group" in columns:
        if len(rows) != 2 * num_pairs:
            raise InvalidArgumentError(
                f"{p}: a per-image groups file must have one row per image (2 x {num_pairs} "
                f"pairs = {2 * num_pairs}), got {len(rows)}"
            )
        return PairGroups.from_images(
            [_label(r["group"], p, n, "group") for n, r in enumerate(rows, 2)]
        )
    raise InvalidArgumentError(
        f"{p}: the header must name columns 'a_group' and 'b_group' (one row per pair) or "
        f"'group' (one row per image), got {columns}"
    )


def _label(value: str, path: Path, line: int, column: str) -> str:
    v = value.strip()
    if not v:
        raise InvalidArgumentError(f"{path}:{line}: `{column}` must be a non-empty label, got ''")
    return v


def _check_issame(path: Path, values: list[str], same: np.ndarray) -> None:
    parsed = []
    for n, v in enumerate(values, 2):
        t = v.strip().lower()
        if t not in _TRUE | _FALSE:
            raise InvalidArgumentError(f"{path}:{n}: `issame` must be 1/0 or true/false, got {v!r}")
        parsed.append(t in _TRUE)
    if len(same) != len(parsed):
        raise InvalidArgumentError(
            f"`issame` must have one value per pair ({len(parsed)}), got {len(same)}"
        )
    bad = np.flatnonzero(np.asarray(parsed) != same)
    if bad.size:
        lines = ", ".join(str(int(i) + 2) for i in bad[:5])
        raise InvalidArgumentError(
            f"{path}: the `issame` column must agree with the verification set, got {bad.size} "
            f"mismatch(es) (lines {lines}{', …' if bad.size > 5 else ''}); is it the groups "
            "file of another set, or in another order?"
        )
