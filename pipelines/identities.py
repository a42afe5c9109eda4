"""Synthetic identities: seeded samplers, pairwise separation, leakage checks, verification.

Identities are unit vectors in an identity encoder's space (e.g. Arc2Face's ArcFace,
``arcface-onnx/arc2face``). :func:`sample_identities` draws candidates from a sampler and keeps
a candidate only if its cosine similarity to every identity kept so far stays below
``max_similarity``, and — when a bank of real embeddings is given — below
``leakage_threshold`` to every real vector, so that no real person is reproduced.

How "every identity kept so far" is searched is the ``index`` (:data:`INDEXES`):

* ``exact`` (default): every pair is compared, in blocks, so memory stays ``O(block²)``,
  never ``O(N²)``; time grows as ``N²`` (100K 512-D identities: about half a minute on two
  cores; 1M: about an hour).
* ``faiss``: an IVF-Flat inner-product index (``faiss-cpu``, the ``faiss`` extra). The kept
  identities are split into ``nlist`` cells (spherical k-means on a separate, seeded draw from
  the same sampler); each candidate is compared — exactly, in float32 — with the kept
  identities of the ``nprobe`` cells whose centroids are most similar to it, so the time
  grows as ``N²·nprobe/nlist + N·nlist``. This is **approximate** in one precise sense: a kept
  identity whose cosine to the candidate is ``>= max_similarity`` but which lies in a cell
  that was not probed is not seen, and that too-close pair is kept. Nothing else changes:
  every rejection is real (a rejected candidate did have a too-close identity), candidates
  drawn in the same batch are checked against each other exactly, the leakage check against
  the real bank is always exact, and ``nprobe == nlist`` is exhaustive (then identical to
  ``exact``). How many pairs slip through depends on the data: cells separate well-clustered
  vectors (low dimension, a sampler fitted to a real bank) but hardly help for isotropic
  high-dimensional vectors: for uniform 512-D identities and the defaults at N = 100K, a kept
  identity at cosine 0.3 to a candidate is found 9% of the time (at cosine 0.5: 26%). Such
  pairs are rare there, though: uniform 512-D vectors drawn with no check at all have about
  one pair at cosine >= 0.3 among 1M (0.01 among 100K; at 0.25: about 24 among 100K).

Always measure instead of assuming: :func:`verify_separation` counts the pairs at or above the
threshold exactly (``O(N²·D)`` time in matrix products, ``O(block²)`` memory), or estimates the
count from every pair of a random sample of rows (``sample=``, ``O(sample·N·D)``), with an
upper bound.

Samplers (:data:`SAMPLERS`):

* ``uniform``: uniform on the unit hypersphere (normalised Gaussian vectors);
* ``gaussian``: a Gaussian fitted to a bank of real embeddings (mean + covariance of the
  normalised bank, optionally restricted to its top ``pca_components``), then normalised —
  samples look like real identities' distribution;
* ``spread``: uniform candidates pushed apart by a few repulsion steps before the check
  (fewer rejections at tight thresholds; costs ``O(batch²)`` per step and batch).

The same arguments and seed give the same identities, in the same order (with ``faiss`` too:
training, cell assignment and search are deterministic, whatever the number of threads).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facegen.errors import MissingDependencyError, UnknownNameError
from facegen.identity import l2_normalize
from facegen.registry import Registry
from facegen.types import IdentityEmbedding

__all__ = [
    "INDEXES",
    "SAMPLERS",
    "IdentitySet",
    "SeparationError",
    "SeparationReport",
    "sample_identities",
    "verify_separation",
]

logger = logging.getLogger(__name__)

#: name → factory(rng, n, dim, bank, **options) → float32 (n, dim) candidates (any norm).
SAMPLERS: Registry[Callable[..., np.ndarray]] = Registry("identity sampler")

#: How candidates are compared with the identities kept so far (see the module docstring).
INDEXES: tuple[str, ...] = ("exact", "faiss")

_FAISS_NPROBE = 16  # default cells probed per candidate
_TRAIN_PER_CELL = 20  # training draws per IVF cell (k-means)
_KMEANS_ITERS = 10


class SeparationError(ValueError):
    """Not enough identities could be found under the separation/leakage constraints."""


@dataclass
class IdentitySet:
    """``vectors``: float32 ``(N, D)`` unit rows, in acceptance order. ``stats``: counts of
    candidates drawn and rejected (too close to another identity, too close to the bank).
    ``index`` / ``index_params``: how kept identities were searched (``exact``, or ``faiss``
    with its ``nlist`` and ``nprobe``)."""

    vectors: np.ndarray
    encoder_id: str
    sampler: str
    seed: int
    max_similarity: float
    stats: dict[str, Any] = field(default_factory=dict)
    index: str = "exact"
    index_params: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def embeddings(self) -> list[IdentityEmbedding]:
        return [IdentityEmbedding(v, self.encoder_id, True) for v in self.vectors]

    def verify(self, *, sample: int | None = None, seed: int = 0) -> SeparationReport:
        """:func:`verify_separation` of these vectors at this set's ``max_similarity``."""
        return verify_separation(self.vectors, self.max_similarity, sample=sample, seed=seed)

    def save(self, path: Any) -> Any:
        """Write as a facegen embeddings file (names ``id000000``…, sampling settings inside)."""
        from facegen.embedding_io import save_embeddings

        names = [f"id{i:06d}" for i in range(len(self))]
        extra = {
            "sampler": self.sampler,
            "seed": self.seed,
            "max_similarity": self.max_similarity,
            "index": self.index,
            "index_params": self.index_params,
            "stats": self.stats,
        }
        return save_embeddings(path, self.embeddings(), names=names, extra=extra)


@SAMPLERS.register("uniform", description="uniform on the unit hypersphere")
def _uniform(rng: np.random.Generator, n: int, dim: int, bank: Any = None, **_: Any) -> np.ndarray:
    return rng.standard_normal((n, dim), dtype=np.float32)


@dataclass(frozen=True)
class _GaussianFit:
    mean: np.ndarray
    basis: np.ndarray  # (k, D) rows scaled by sqrt(eigenvalue)


def _fit_gaussian(bank: np.ndarray, components: int | None) -> _GaussianFit:
    x = l2_normalize(np.asarray(bank, np.float32)).astype(np.float64)
    if len(x) < 2:
        raise ValueError(f"`bank` must have at least 2 embeddings to fit a Gaussian, got {len(x)}")
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = s**2 / (len(x) - 1)
    k = len(var) if components is None else min(int(components), len(var))
    if k < 1:
        raise ValueError(f"`pca_components` must be >= 1, got {components}")
    return _GaussianFit(
        mean.astype(np.float32), (vt[:k] * np.sqrt(var[:k])[:, None]).astype(np.float32)
    )


@SAMPLERS.register("gaussian", description="Gaussian fitted to a bank of real embeddings")
def _gaussian(
    rng: np.random.Generator,
    n: int,
    dim: int,
    bank: Any = None,
    pca_components: int | None = None,
    **_: Any,
) -> np.ndarray:
    if bank is None:
        raise ValueError("the 'gaussian' sampler needs `bank` (real embeddings to fit)")
    fit = bank if isinstance(bank, _GaussianFit) else _fit_gaussian(bank, pca_components)
    if fit.mean.shape[0] != dim:
        raise ValueError(f"`bank` must have {dim}-D rows, got {fit.mean.shape[0]}-D")
    z = rng.standard_normal((n, fit.basis.shape[0]), dtype=np.float32)
    return fit.mean + z @ fit.basis


@SAMPLERS.register("spread", description="uniform, then pushed apart by repulsion steps")
def _spread(
    rng: np.random.Generator,
    n: int,
    dim: int,
    bank: Any = None,
    steps: int = 5,
    step_size: float = 0.5,
    **_: Any,
) -> np.ndarray:
    x = l2_normalize(rng.standard_normal((n, dim), dtype=np.float32))
    for _ in range(steps):
        sims = x @ x.T
        np.fill_diagonal(sims, 0.0)
        push = np.maximum(sims, 0.0) ** 3 @ x  # close neighbours push hardest
        x = l2_normalize(x - step_size * push)
    return x


def _max_sim_to(block: np.ndarray, others: np.ndarray, chunk: int) -> np.ndarray:
    """Max cosine of each row of ``block`` to all rows of ``others`` (chunked)."""
    best = np.full(len(block), -np.inf, np.float32)
    for s in range(0, len(others), chunk):
        np.maximum(best, (block @ others[s : s + chunk].T).max(1), out=best)
    return best


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise MissingDependencyError(
            "faiss-cpu", extra="faiss", purpose="index='faiss' in sample_identities"
        ) from exc
    return faiss


class _ExactNeighbours:
    """The kept identities ``kept[:k]`` (float32 ``(N, D)`` unit rows), compared exactly."""

    def __init__(self, kept: np.ndarray, chunk: int) -> None:
        self.kept = kept
        self.chunk = chunk
        self.k = 0

    def max_sim(self, cand: np.ndarray) -> np.ndarray:
        """Max cosine of each ``(B, D)`` candidate row to the kept rows: float32 ``(B,)``."""
        if not self.k:
            return np.full(len(cand), -np.inf, np.float32)
        return _max_sim_to(cand, self.kept[: self.k], self.chunk)

    def add(self, rows: np.ndarray, which: np.ndarray) -> None:
        """Keep ``rows`` (``cand[which]`` of the last :meth:`max_sim` call)."""
        self.k += len(rows)  # the caller already wrote them into ``kept``


class _FaissIVFNeighbours:
    """Kept identities in a faiss ``IndexIVFFlat`` (inner product): ``max_sim`` searches only
    the ``nprobe`` most similar of ``nlist`` cells, so it can miss a close identity (never
    invent one). ``train``: float32 ``(T, D)`` unit rows, ``T >= nlist``."""

    def __init__(self, train: np.ndarray, nlist: int, nprobe: int) -> None:
        faiss = _import_faiss()
        self._faiss = faiss
        dim = train.shape[1]
        self._quantizer = faiss.IndexFlatIP(dim)
        self._index = faiss.IndexIVFFlat(self._quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        cp = self._index.cp
        cp.niter = _KMEANS_ITERS
        cp.spherical = True  # unit centroids: cells of directions, as inner product wants
        cp.seed = 1234
        cp.min_points_per_centroid = min(_TRAIN_PER_CELL, len(train) // nlist)
        cp.max_points_per_centroid = max(_TRAIN_PER_CELL, len(train) // nlist + 1)
        self._index.train(np.ascontiguousarray(train, np.float32))
        self._index.nprobe = nprobe
        self._cells = np.empty((0, nprobe), np.int64)

    def max_sim(self, cand: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(cand, np.float32)
        # the probed cells, most similar first; the first is where a candidate is stored
        cell_sims, self._cells = self._quantizer.search(x, self._index.nprobe)
        if not self._index.ntotal:
            return np.full(len(cand), -np.inf, np.float32)
        sims, _ = self._index.search_preassigned(x, 1, self._cells, cell_sims)
        return sims[:, 0]  # -FLT_MAX where the probed cells are empty

    def add(self, rows: np.ndarray, which: np.ndarray) -> None:
        x = np.ascontiguousarray(rows, np.float32)
        cells = np.ascontiguousarray(self._cells[which, 0])
        sp = self._faiss.swig_ptr
        self._index.add_core(len(x), sp(x), None, sp(cells))


def _ivf_params(n: int, nlist: int | None, nprobe: int | None) -> tuple[int, int]:
    """Validated ``(nlist, nprobe)``; defaults: ``nprobe`` 16, ``nlist ≈ sqrt(nprobe·n)`` (which
    balances the centroid search, ``nlist`` per candidate, against the cell scan,
    ``nprobe·N/nlist``)."""
    if nprobe is not None and nprobe < 1:
        raise ValueError(f"`nprobe` must be >= 1, got {nprobe}")
    if nlist is not None and nlist < 1:
        raise ValueError(f"`nlist` must be >= 1, got {nlist}")
    probe = nprobe if nprobe is not None else _FAISS_NPROBE
    if nlist is None:
        nlist = max(min(probe, n), min(round(math.sqrt(probe * n)), n))
    if nprobe is None:
        probe = min(probe, nlist)
    if probe > nlist:
        raise ValueError(f"`nprobe` must be <= `nlist` ({nlist}), got {probe}")
    return nlist, probe


def _draw(
    make: Callable[..., np.ndarray],
    rng: np.random.Generator,
    count: int,
    batch_size: int,
    dim: int,
    bank: Any,
    options: dict[str, Any],
) -> np.ndarray:
    """``count`` unit candidates from a sampler, ``batch_size`` per call: float32 ``(count, D)``."""
    out = np.empty((count, dim), np.float32)
    for s in range(0, count, batch_size):
        b = min(batch_size, count - s)
        out[s : s + b] = l2_normalize(np.asarray(make(rng, b, dim, bank, **options), np.float32))
    return out


def sample_identities(
    n: int,
    *,
    dim: int = 512,
    sampler: str = "uniform",
    seed: int = 0,
    max_similarity: float = 0.3,
    bank: Any = None,
    leakage_bank: Any = None,
    leakage_threshold: float | None = None,
    encoder_id: str = "arcface-onnx/arc2face",
    batch_size: int = 4096,
    max_candidates: int | None = None,
    index: str = "exact",
    nlist: int | None = None,
    nprobe: int | None = None,
    progress: Callable[[int], None] | None = None,
    **sampler_options: Any,
) -> IdentitySet:
    """``n`` distinct identities: pairwise cosine < ``max_similarity``, and < ``leakage_threshold``
    (default: ``max_similarity``) to every row of ``leakage_bank`` (float ``(M, dim)``).

    Candidates are drawn ``batch_size`` at a time from ``sampler`` with ``seed`` and accepted
    greedily in order. At most ``max_candidates`` (default ``20·n + batch_size``) are drawn;
    if ``n`` identities cannot be found, :class:`SeparationError` says how many were.
    ``progress(k)`` is called with the number accepted so far after each batch.

    ``index``: ``"exact"`` (default; every pair compared) or ``"faiss"`` (IVF-Flat index with
    ``nlist`` cells, ``nprobe`` searched per candidate; defaults ``nprobe=16``,
    ``nlist≈sqrt(nprobe·n)``). ``faiss`` is approximate — a too-close pair can slip through
    when the earlier identity's cell is not probed; see the module docstring, and check the
    result with :meth:`IdentitySet.verify`. It needs ``faiss-cpu`` (``pip install
    'facegen[faiss]'``, else :class:`~facegen.errors.MissingDependencyError`), draws
    ``20·nlist`` extra candidates from a separate seeded stream to place the cells, and holds a
    second copy of the vectors in its lists (about ``1.5·N·dim·4`` bytes with their growth
    slack). Memory never grows as ``N²`` with either index.

    Returns an :class:`IdentitySet` with float32 ``(n, dim)`` unit rows.
    """
    if n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}")
    if dim < 2:
        raise ValueError(f"`dim` must be >= 2, got {dim}")
    if not -1.0 < max_similarity <= 1.0:
        raise ValueError(f"`max_similarity` must be in (-1, 1], got {max_similarity}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    if index not in INDEXES:
        raise UnknownNameError("identity index", index, INDEXES)
    if index == "exact" and (nlist is not None or nprobe is not None):
        raise ValueError(
            f"`nlist`/`nprobe` apply only to index='faiss', got index={index!r} with "
            f"nlist={nlist}, nprobe={nprobe}"
        )
    make = SAMPLERS.get(sampler).factory
    if sampler == "gaussian" and bank is not None and not isinstance(bank, _GaussianFit):
        bank = _fit_gaussian(bank, sampler_options.get("pca_components"))  # once, not per batch
    leak_thr = max_similarity if leakage_threshold is None else float(leakage_threshold)
    leak = None
    if leakage_bank is not None:
        leak = l2_normalize(np.asarray(leakage_bank, np.float32))
        if leak.ndim != 2 or leak.shape[1] != dim:
            raise ValueError(f"`leakage_bank` must be (M, {dim}), got {leak.shape}")
    limit = max_candidates if max_candidates is not None else 20 * n + batch_size
    kept = np.empty((n, dim), np.float32)
    index_params: dict[str, Any] = {}
    near: _ExactNeighbours | _FaissIVFNeighbours
    if index == "faiss":
        _import_faiss()  # fail before any work
        cells, probe = _ivf_params(n, nlist, nprobe)
        index_params = {"nlist": cells, "nprobe": probe}
        # a separate stream, so the candidates themselves are those of index="exact"
        train_rng = np.random.default_rng([seed, 1])
        train = _draw(
            make, train_rng, _TRAIN_PER_CELL * cells, batch_size, dim, bank, sampler_options
        )
        near = _FaissIVFNeighbours(train, cells, probe)
        del train
        logger.debug("faiss IVF-Flat index: %d cells, %d probed per candidate", cells, probe)
    else:
        near = _ExactNeighbours(kept, batch_size)
    rng = np.random.default_rng(seed)
    k = drawn = too_close = leaked = 0
    while k < n and drawn < limit:
        b = min(batch_size, limit - drawn)
        cand = l2_normalize(np.asarray(make(rng, b, dim, bank, **sampler_options), np.float32))
        drawn += b
        ok = np.ones(b, bool)
        if leak is not None:  # always exact: it protects real people
            bad = _max_sim_to(cand, leak, batch_size) >= leak_thr
            leaked += int(bad.sum())
            ok &= ~bad
        close = near.max_sim(cand) >= max_similarity
        too_close += int((close & ok).sum())
        ok &= ~close
        # within the batch: greedy in order, against the candidates accepted before (exact)
        idx = np.flatnonzero(ok)
        if len(idx):
            sub = cand[idx]
            sims = sub @ sub.T
            np.fill_diagonal(sims, -np.inf)
            take: list[int]
            if not (sims >= max_similarity).any():  # the common case: no pair conflicts
                take = list(range(min(len(idx), n - k)))
            else:
                take = []
                for j in range(len(idx)):  # `take` < j: compared with those accepted before j
                    if take and sims[take, j].max() >= max_similarity:
                        too_close += 1
                        continue
                    take.append(j)
                    if k + len(take) == n:
                        break
            if take:
                kept[k : k + len(take)] = sub[take]
                near.add(kept[k : k + len(take)], idx[take])
                k += len(take)
        if progress is not None:
            progress(k)
    stats = {"drawn": drawn, "rejected_too_close": too_close, "rejected_leakage": leaked}
    if k < n:
        raise SeparationError(
            f"found only {k} of {n} identities with max similarity {max_similarity} after "
            f"{drawn} candidates ({too_close} too close, {leaked} too close to the real bank); "
            "raise `max_similarity`, lower `n`, or allow more candidates (`max_candidates`)"
        )
    logger.debug("sampled %d identities (%s index): %s", n, index, stats)
    return IdentitySet(kept, encoder_id, sampler, seed, max_similarity, stats, index, index_params)


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


def verify_separation(
    vectors: Any,
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
    if not -1.0 <= max_similarity <= 1.0:
        raise ValueError(f"`max_similarity` must be in [-1, 1], got {max_similarity}")
    if block < 1:
        raise ValueError(f"`block` must be >= 1, got {block}")
    if max_pairs < 0:
        raise ValueError(f"`max_pairs` must be >= 0, got {max_pairs}")
    n = len(x)
    if sample is not None and not 1 <= sample <= n:
        raise ValueError(f"`sample` must be in [1, {n}] (the number of rows), got {sample}")
    u = _UnitRows(x, block)
    thr = float(max_similarity)
    total = n * (n - 1) // 2
    found: list[np.ndarray] = []
    count = 0
    best = -np.inf

    def record(i: np.ndarray, j: np.ndarray) -> None:
        nonlocal count
        count += len(i)
        room = max_pairs - sum(len(p) for p in found)
        if room > 0 and len(i):
            found.append(np.stack([i[:room], j[:room]], 1).astype(np.int64))

    if sample is None:
        lower = ~np.triu(np.ones((min(block, n),) * 2, bool), 1)  # diagonal and below
        for a in range(0, n, block):
            xa = u.rows(slice(a, a + block))
            for b in range(a, n, block):
                s = xa @ u.rows(slice(b, b + block)).T
                if b == a:
                    s[lower[: len(xa), : len(xa)]] = -np.inf
                m = float(s.max())
                best = max(best, m)
                if m >= thr:
                    i, j = np.nonzero(s >= thr)
                    record(i + a, j + b)
            if progress is not None:
                progress(min(a + block, n))
        checked = total
        estimate = upper = float(count)
    else:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(n, size=sample, replace=False))
        in_sample = np.zeros(n, bool)
        in_sample[rows] = True
        for a in range(0, sample, block):
            ids = rows[a : a + block]
            xa = u.rows(ids)
            for b in range(0, n, block):
                s = xa @ u.rows(slice(b, b + block)).T
                own = np.flatnonzero((ids >= b) & (ids < b + s.shape[1]))
                s[own, ids[own] - b] = -np.inf  # a row with itself
                m = float(s.max())
                best = max(best, m)
                if m >= thr:
                    i, j = np.nonzero(s >= thr)
                    i, j = ids[i], j + b
                    once = ~in_sample[j] | (j > i)  # a pair of two sampled rows: count once
                    record(np.minimum(i, j)[once], np.maximum(i, j)[once])
            if progress is not None:
                progress(min(a + block, sample))
        checked = sample * (n - 1) - sample * (sample - 1) // 2
        scale = total / checked
        estimate = count * scale
        upper = _poisson_upper95(count) * scale
    pairs = np.concatenate(found) if found else np.empty((0, 2), np.int64)
    return SeparationReport(
        n, thr, sample is None, checked, total, count, estimate, upper, best, pairs
    )
