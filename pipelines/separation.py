"""How well separated a set of identity vectors is: the pairs at or above a cosine threshold,
counted exactly or estimated from a random sample of rows.

:func:`verify_separation` is the measurement :func:`facegen.pipelines.identities.sample_identities`
promises (and its approximate ``faiss`` index can miss); it works on any ``(N, D)`` vectors.
Exact counting compares every pair in ``block × block`` matrix products (``O(N²·D)`` time,
``O(block²)`` memory beyond the input); sampling compares ``s`` random rows with all rows
(``O(s·N·D)``) and reports an estimate with an upper bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from facegen.validate import check_int, check_number

__all__ = ["SeparationReport", "verify_separation"]


@dataclass(frozen=True)
class SeparationReport:
    """Pairs of identities at cosine ``>= max_similarity`` (violations of the separation).

    ``exact``: every one of the ``pairs_total = N·(N-1)/2`` pairs was compared; otherwise
    ``pairs_checked`` of them (all pairs involving ``sample`` random rows).
    ``violations``: violating pairs found among those checked; ``estimated_violations``: the
    count scaled to all pairs (``violations / (pairs_checked / pairs_total)``);
    ``upper_bound``: an approximate one-sided 95% upper bound on the total (Poisson, i.e.
    assuming violating pairs rarely share an identity); both equal ``violations`` when
    ``exact``. ``max_observed``: the largest cosine among the checked pairs. ``pairs``: int64
    ``(P, 2)`` row indices ``i < j`` of (up to ``max_pairs``) violating pairs found."""

    n: int
    max_similarity: float
    exact: bool
    pairs_checked: int
    pairs_total: int
    violations: int
    estimated_violations: float
    upper_bound: float
    max_observed: float
    pairs: np.ndarray

    @property
    def ok(self) -> bool:
        """True when no checked pair reaches the threshold."""
        return self.violations == 0

    def __str__(self) -> str:
        if self.exact:
            return (
                f"{self.violations} of {self.pairs_total} pairs at cosine >= "
                f"{self.max_similarity} (exact; max {self.max_observed:.4f})"
            )
        return (
            f"{self.violations} of {self.pairs_checked} sampled pairs at cosine >= "
            f"{self.max_similarity}; about {self.estimated_violations:.1f} of "
            f"{self.pairs_total} in all (95% upper bound {self.upper_bound:.1f}; "
            f"max seen {self.max_observed:.4f})"
        )


def _poisson_upper95(x: int) -> float:
    """One-sided 95% upper confidence limit of a Poisson mean after ``x`` events
    (exact for 0, Wilson–Hilferty otherwise; within about 1%)."""
    if x == 0:
        return -math.log(0.05)
    a = x + 1
    return a * (1 - 1 / (9 * a) + 1.6448536 / (3 * math.sqrt(a))) ** 3


class _UnitRows:
    """Row blocks of ``x`` (``(N, D)``) as float32 unit rows, normalised on the fly (no full
    normalised copy is made; none at all when the rows are already float32 unit vectors)."""

    def __init__(self, x: np.ndarray, block: int) -> None:
        self.x = x
        sq = np.empty(len(x), np.float64)
        for s in range(0, len(x), block):
            part = np.asarray(x[s : s + block], np.float32)
            if not np.all(np.isfinite(part)):
                raise ValueError("`vectors` must be finite, got NaN or inf")
            sq[s : s + block] = np.einsum("ij,ij->i", part, part, dtype=np.float64)
        if np.any(sq == 0):
            raise ValueError(f"`vectors` must not have zero rows, got {int((sq == 0).sum())}")
        self.inv = (1.0 / np.sqrt(sq)).astype(np.float32)
        self.unit = x.dtype == np.float32 and bool(np.all(np.abs(sq - 1.0) < 1e-5))

    def rows(self, idx: slice | np.ndarray) -> np.ndarray:
        part = np.asarray(self.x[idx], np.float32)
        return part if self.unit else part * self.inv[idx, None]


class _Violations:
    """Running count of violating pairs, the largest cosine seen, and up to ``limit`` pairs."""

    def __init__(self, threshold: float, limit: int) -> None:
        self.threshold = threshold
        self.limit = limit
        self.count = 0
        self.best = -np.inf
        self.found: list[np.ndarray] = []
        self._kept = 0

    def scan(self, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Note the block's maximum; return the ``(i, j)`` indices at or above the threshold."""
        m = float(sims.max())
        self.best = max(self.best, m)
        return np.nonzero(sims >= self.threshold) if m >= self.threshold else None

    def record(self, i: np.ndarray, j: np.ndarray) -> None:
        self.count += len(i)
        room = self.limit - self._kept
        if room > 0 and len(i):
            self.found.append(np.stack([i[:room], j[:room]], 1).astype(np.int64))
            self._kept += min(room, len(i))

    @property
    def pairs(self) -> np.ndarray:
        return np.concatenate(self.found) if self.found else np.empty((0, 2), np.int64)


def _exact(
    u: _UnitRows, block: int, found: _Violations, progress: Callable[[int], None] | None
) -> None:
    """Every pair ``i < j``, block by block (the upper triangle of the block grid)."""
    n = len(u.x)
    lower = ~np.triu(np.ones((min(block, n),) * 2, bool), 1)  # diagonal and below
    for a in range(0, n, block):
        xa = u.rows(slice(a, a + block))
        for b in range(a, n, block):
            s = xa @ u.rows(slice(b, b + block)).T
            if b == a:
                s[lower[: len(xa), : len(xa)]] = -np.inf
            hits = found.scan(s)
            if hits is not None:
                found.record(hits[0] + a, hits[1] + b)
        if progress is not None:
            progress(min(a + block, n))


def _sampled(
    u: _UnitRows,
    rows: np.ndarray,
    block: int,
    found: _Violations,
    progress: Callable[[int], None] | None,
) -> None:
    """Every pair involving the sorted sample ``rows`` (a pair of two sampled rows once)."""
    n = len(u.x)
    in_sample = np.zeros(n, bool)
    in_sample[rows] = True
    for a in range(0, len(rows), block):
        ids = rows[a : a + block]
        xa = u.rows(ids)
        for b in range(0, n, block):
            s = xa @ u.rows(slice(b, b + block)).T
            own = np.flatnonzero((ids >= b) & (ids < b + s.shape[1]))
            s[own, ids[own] - b] = -np.inf  # a row with itself
            hits = found.scan(s)
            if hits is not None:
                i, j = ids[hits[0]], hits[1] + b
                once = ~in_sample[j] | (j > i)  # a pair of two sampled rows: count once
                found.record(np.minimum(i, j)[once], np.maximum(i, j)[once])
        if progress is not None:
            progress(min(a + block, len(rows)))


def verify_separation(
    vectors: ArrayLike,
    max_similarity: float,
    *,
    sample: int | None = None,
    seed: int = 0,
    block: int = 4096,
    max_pairs: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> SeparationReport:
    """Count the pairs of rows of ``vectors`` (float ``(N, D)``, any norms: cosine is used)
    whose cosine similarity is ``>= max_similarity``.

    ``sample=None`` (default): exact — every pair, in ``block × block`` matrix products, so
    memory is ``O(block²)`` beyond the input and time ``O(N²·D)`` — the same ``N²/2`` products
    as exact sampling, so about as long (100K 512-D rows: under a minute on two idle cores;
    1M: over an hour, so sample there).
    ``sample=s``: ``s`` distinct random rows (``seed``) compared with all ``N`` rows —
    ``O(s·N·D)`` — giving an estimate and an upper bound instead (see
    :class:`SeparationReport`). ``progress(rows)`` is called with the rows done so far.
    """
    x = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors, np.float32)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"`vectors` must be (N, D) with N >= 2, got shape {x.shape}")
    thr = check_number(max_similarity, "max_similarity", minimum=-1.0, maximum=1.0)
    check_int(block, "block", minimum=1)
    check_int(max_pairs, "max_pairs", minimum=0)
    n = len(x)
    if sample is not None:
        check_int(sample, "sample", minimum=1, maximum=n)
    u = _UnitRows(x, block)
    total = n * (n - 1) // 2
    found = _Violations(thr, max_pairs)
    if sample is None:
        _exact(u, block, found, progress)
        checked, estimate, upper = total, float(found.count), float(found.count)
    else:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
        _sampled(u, rows, block, found, progress)
        checked = sample * (n - 1) - sample * (sample - 1) // 2
        scale = total / checked
        estimate, upper = found.count * scale, _poisson_upper95(found.count) * scale
    return SeparationReport(
        n, thr, sample is None, checked, total, found.count, estimate, upper, found.best,
        found.pairs,
    )  # fmt: skip
