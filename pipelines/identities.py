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

Always measure instead of assuming: :func:`verify_separation`
(:mod:`facegen.pipelines.separation`) counts the pairs at or above the threshold exactly, or
estimates the count from a random sample of rows, with an upper bound.

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
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike

from facegen.errors import MissingDependencyError, UnknownNameError
from facegen.identity import l2_normalize
from facegen.pipelines.separation import SeparationReport, verify_separation
from facegen.registry import Registry
from facegen.types import IdentityEmbedding
from facegen.validate import check_int, check_number

__all__ = [
    "INDEXES",
    "SAMPLERS",
    "CandidateSelector",
    "IdentitySet",
    "SeparationError",
    "SeparationReport",
    "sample_identities",
    "verify_separation",
    "with_person_means",
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


class CandidateSelector(Protocol):
    """Narrows each batch of candidates that passed the separation and leakage checks, e.g.
    to meet per-group quotas (:mod:`facegen.pipelines.attribute_quota`).

    ``choose(candidates)``: float32 ``(m, D)`` unit rows in draw order → int indices into
    them to try, in the order to try them. ``accepted(indices)``: those of the chosen indices
    (same numbering) that were kept, in acceptance order. ``shortfall()``: a sentence on what
    is still missing, for the error when the candidate budget runs out.
    """

    def choose(self, candidates: np.ndarray) -> np.ndarray: ...

    def accepted(self, indices: np.ndarray) -> None: ...

    def shortfall(self) -> str: ...


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

    def save(self, path: str | os.PathLike[str]) -> Path:
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
def _uniform(
    rng: np.random.Generator, n: int, dim: int, bank: ArrayLike | None = None, **_: Any
) -> np.ndarray:
    return rng.standard_normal((n, dim), dtype=np.float32)


@dataclass(frozen=True)
class _GaussianFit:
    mean: np.ndarray
    basis: np.ndarray  # (k, D) rows scaled by sqrt(eigenvalue)


def _fit_gaussian(bank: ArrayLike, components: int | None) -> _GaussianFit:
    x = l2_normalize(np.asarray(bank, np.float32)).astype(np.float64)
    if len(x) < 2:
        raise ValueError(f"`bank` must have at least 2 embeddings to fit a Gaussian, got {len(x)}")
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = s**2 / (len(x) - 1)
    k = (
        len(var)
        if components is None
        else min(check_int(components, "pca_components", minimum=1), len(var))
    )
    return _GaussianFit(
        mean.astype(np.float32), (vt[:k] * np.sqrt(var[:k])[:, None]).astype(np.float32)
    )


@SAMPLERS.register("gaussian", description="Gaussian fitted to a bank of real embeddings")
def _gaussian(
    rng: np.random.Generator,
    n: int,
    dim: int,
    bank: ArrayLike | _GaussianFit | None = None,
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
    bank: ArrayLike | None = None,
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


def _import_faiss() -> ModuleType:
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
    if nprobe is not None:
        check_int(nprobe, "nprobe", minimum=1)
    if nlist is not None:
        check_int(nlist, "nlist", minimum=1)
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
    bank: ArrayLike | _GaussianFit | None,
    options: dict[str, Any],
) -> np.ndarray:
    """``count`` unit candidates from a sampler, ``batch_size`` per call: float32 ``(count, D)``."""
    out = np.empty((count, dim), np.float32)
    for s in range(0, count, batch_size):
        b = min(batch_size, count - s)
        out[s : s + b] = l2_normalize(np.asarray(make(rng, b, dim, bank, **options), np.float32))
    return out


def _neighbours(
    index: str,
    kept: np.ndarray,
    nlist: int | None,
    nprobe: int | None,
    seed: int,
    draw: Callable[[np.random.Generator, int], np.ndarray],
    batch_size: int,
) -> tuple[_ExactNeighbours | _FaissIVFNeighbours, dict[str, Any]]:
    """The search over the kept identities ``kept`` (float32 ``(n, D)``, filled as they are
    accepted) and its parameters; ``draw(rng, count)`` gives the faiss cells' training draws."""
    if index != "faiss":
        return _ExactNeighbours(kept, batch_size), {}
    _import_faiss()  # fail before any work
    cells, probe = _ivf_params(len(kept), nlist, nprobe)
    # a separate stream, so the candidates themselves are those of index="exact"
    train = draw(np.random.default_rng([seed, 1]), _TRAIN_PER_CELL * cells)
    logger.debug("faiss IVF-Flat index: %d cells, %d probed per candidate", cells, probe)
    return _FaissIVFNeighbours(train, cells, probe), {"nlist": cells, "nprobe": probe}


def _greedy(cand: np.ndarray, max_similarity: float, room: int) -> tuple[list[int], int]:
    """Candidates (unit rows, in draw order) accepted against those accepted before them in
    the same batch (exactly), at most ``room``; and how many were rejected as too close."""
    sims = cand @ cand.T
    np.fill_diagonal(sims, -np.inf)
    if not (sims >= max_similarity).any():  # the common case: no pair conflicts
        return list(range(min(len(cand), room))), 0
    take: list[int] = []
    rejected = 0
    for j in range(len(cand)):  # `take` < j: compared with those accepted before j
        if take and sims[take, j].max() >= max_similarity:
            rejected += 1
            continue
        take.append(j)
        if len(take) == room:
            break
    return take, rejected


def _check_sampling(
    n: int,
    dim: int,
    max_similarity: float,
    batch_size: int,
    index: str,
    nlist: int | None,
    nprobe: int | None,
) -> float:
    """The arguments of :func:`sample_identities`; returns ``max_similarity`` as a float."""
    check_int(n, "n", minimum=1)
    check_int(dim, "dim", minimum=2)
    check_int(batch_size, "batch_size", minimum=1)
    if index not in INDEXES:
        raise UnknownNameError("identity index", index, INDEXES)
    if index == "exact" and (nlist is not None or nprobe is not None):
        raise ValueError(
            f"`nlist`/`nprobe` apply only to index='faiss', got index={index!r} with "
            f"nlist={nlist}, nprobe={nprobe}"
        )
    return check_number(max_similarity, "max_similarity", minimum=-1.0, maximum=1.0, min_open=True)


def _leakage_rows(leakage_bank: ArrayLike | None, dim: int) -> np.ndarray | None:
    """The real bank as float32 ``(M, dim)`` unit rows (``None`` when not given)."""
    if leakage_bank is None:
        return None
    leak = l2_normalize(np.asarray(leakage_bank, np.float32))
    if leak.ndim != 2 or leak.shape[1] != dim:
        raise ValueError(f"`leakage_bank` must be (M, {dim}), got {leak.shape}")
    return leak


def with_person_means(vectors: ArrayLike, names: list[str] | None) -> np.ndarray:
    """A bank of real identity vectors (one row per photo) plus, where ``names`` says which
    person each row is, each person's mean (L2-normalised): what the leakage check compares
    sampled identities with, so that a sample is kept away from every photo and also from
    every person as a whole (a sample can lie below the threshold to each photo of a person
    and still above it to their mean). Without names: the rows as they are."""
    rows = l2_normalize(np.asarray(vectors, np.float32))
    if not names or len(names) != len(rows) or len(set(names)) == len(names):
        return rows
    people: dict[str, list[int]] = {}
    for k, name in enumerate(names):
        people.setdefault(name, []).append(k)
    means = l2_normalize(np.stack([rows[idx].mean(axis=0) for idx in people.values()]))
    return np.concatenate([rows, means.astype(np.float32)])


def sample_identities(
    n: int,
    *,
    dim: int = 512,
    sampler: str = "uniform",
    seed: int = 0,
    max_similarity: float = 0.3,
    bank: ArrayLike | None = None,
    leakage_bank: ArrayLike | None = None,
    leakage_threshold: float | None = None,
    encoder_id: str = "arcface-onnx/arc2face",
    batch_size: int = 4096,
    max_candidates: int | None = None,
    index: str = "exact",
    nlist: int | None = None,
    nprobe: int | None = None,
    progress: Callable[[int], None] | None = None,
    select: CandidateSelector | None = None,
    **sampler_options: Any,
) -> IdentitySet:
    """``n`` distinct identities: pairwise cosine < ``max_similarity``, and < ``leakage_threshold``
    (default: ``max_similarity``) to every row of ``leakage_bank`` (float ``(M, dim)``).

    Candidates are drawn ``batch_size`` at a time from ``sampler`` with ``seed`` and accepted
    greedily in order. At most ``max_candidates`` (default ``20·n + batch_size``) are drawn;
    if ``n`` identities cannot be found, :class:`SeparationError` says how many were.
    ``progress(k)`` is called with the number accepted so far after each batch.
    ``select`` (a :class:`CandidateSelector`) narrows every batch's surviving candidates
    before the greedy acceptance; those it passes over count as ``rejected_by_selector``.

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
    max_similarity = _check_sampling(n, dim, max_similarity, batch_size, index, nlist, nprobe)
    make = SAMPLERS.get(sampler).factory
    if sampler == "gaussian" and bank is not None and not isinstance(bank, _GaussianFit):
        bank = _fit_gaussian(bank, sampler_options.get("pca_components"))  # once, not per batch
    leak = _leakage_rows(leakage_bank, dim)
    leak_thr = max_similarity if leakage_threshold is None else float(leakage_threshold)
    limit = max_candidates if max_candidates is not None else 20 * n + batch_size

    def draw(rng: np.random.Generator, count: int) -> np.ndarray:
        return _draw(make, rng, count, batch_size, dim, bank, sampler_options)

    kept = np.empty((n, dim), np.float32)
    near, index_params = _neighbours(index, kept, nlist, nprobe, seed, draw, batch_size)
    rng = np.random.default_rng(seed)
    stats = {"drawn": 0, "rejected_too_close": 0, "rejected_leakage": 0}
    if select is not None:
        stats["rejected_by_selector"] = 0
    k = 0
    while k < n and stats["drawn"] < limit:
        cand = draw(rng, min(batch_size, limit - stats["drawn"]))
        stats["drawn"] += len(cand)
        ok = np.ones(len(cand), bool)
        if leak is not None:  # always exact: it protects real people
            ok &= _max_sim_to(cand, leak, batch_size) < leak_thr
            stats["rejected_leakage"] += int((~ok).sum())
        close = near.max_sim(cand) >= max_similarity
        stats["rejected_too_close"] += int((close & ok).sum())
        idx = np.flatnonzero(ok & ~close)
        chosen = np.arange(len(idx))
        if select is not None and len(idx):
            chosen = np.asarray(select.choose(cand[idx]), np.int64)
            stats["rejected_by_selector"] += len(idx) - len(chosen)
            idx = idx[chosen]
        if len(idx):  # within the batch: greedy in order, against those accepted before
            take, rejected = _greedy(cand[idx], max_similarity, n - k)
            stats["rejected_too_close"] += rejected
            if select is not None:
                select.accepted(chosen[take])
            if take:
                kept[k : k + len(take)] = cand[idx[take]]
                near.add(kept[k : k + len(take)], idx[take])
                k += len(take)
        if progress is not None:
            progress(k)
    if k < n:
        more = ""
        if select is not None:
            more = (
                f", {stats['rejected_by_selector']} passed over by the selector: "
                f"{select.shortfall()}"
            )
        raise SeparationError(
            f"found only {k} of {n} identities with max similarity {max_similarity} after "
            f"{stats['drawn']} candidates ({stats['rejected_too_close']} too close, "
            f"{stats['rejected_leakage']} too close to the real bank{more}); raise "
            "`max_similarity`, lower `n`, or allow more candidates (`max_candidates`)"
        )
    logger.debug("sampled %d identities (%s index): %s", n, index, stats)
    return IdentitySet(kept, encoder_id, sampler, seed, max_similarity, stats, index, index_params)
