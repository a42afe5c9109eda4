"""Synthetic identities: seeded samplers, exact pairwise separation, leakage checks.

Identities are unit vectors in an identity encoder's space (e.g. Arc2Face's ArcFace,
``arcface-onnx/arc2face``). :func:`sample_identities` draws candidates from a sampler and keeps
a candidate only if its cosine similarity to every identity kept so far stays below
``max_similarity`` (exact: every pair is compared, in blocks, so memory stays
``O(block²)``, never ``O(N²)``), and — when a bank of real embeddings is given — below
``leakage_threshold`` to every real vector, so that no real person is reproduced.

Samplers (:data:`SAMPLERS`):

* ``uniform``: uniform on the unit hypersphere (normalised Gaussian vectors);
* ``gaussian``: a Gaussian fitted to a bank of real embeddings (mean + covariance of the
  normalised bank, optionally restricted to its top ``pca_components``), then normalised —
  samples look like real identities' distribution;
* ``spread``: uniform candidates pushed apart by a few repulsion steps before the exact check
  (fewer rejections at tight thresholds; costs ``O(N²)`` per step, for moderate N).

The same arguments and seed give the same identities, in the same order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facegen.identity import l2_normalize
from facegen.registry import Registry
from facegen.types import IdentityEmbedding

__all__ = ["SAMPLERS", "IdentitySet", "SeparationError", "sample_identities"]

logger = logging.getLogger(__name__)

#: name → factory(rng, n, dim, bank, **options) → float32 (n, dim) candidates (any norm).
SAMPLERS: Registry[Callable[..., np.ndarray]] = Registry("identity sampler")


class SeparationError(ValueError):
    """Not enough identities could be found under the separation/leakage constraints."""


@dataclass
class IdentitySet:
    """``vectors``: float32 ``(N, D)`` unit rows, in acceptance order. ``stats``: counts of
    candidates drawn and rejected (too close to another identity, too close to the bank)."""

    vectors: np.ndarray
    encoder_id: str
    sampler: str
    seed: int
    max_similarity: float
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def embeddings(self) -> list[IdentityEmbedding]:
        return [IdentityEmbedding(v, self.encoder_id, True) for v in self.vectors]

    def save(self, path: Any) -> Any:
        """Write as a facegen embeddings file (names ``id000000``…, sampling settings inside)."""
        from facegen.embedding_io import save_embeddings

        names = [f"id{i:06d}" for i in range(len(self))]
        extra = {
            "sampler": self.sampler,
            "seed": self.seed,
            "max_similarity": self.max_similarity,
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
    fit = _fit_gaussian(bank, pca_components)
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
    progress: Callable[[int], None] | None = None,
    **sampler_options: Any,
) -> IdentitySet:
    """``n`` distinct identities: pairwise cosine < ``max_similarity``, and < ``leakage_threshold``
    (default: ``max_similarity``) to every row of ``leakage_bank``.

    Candidates are drawn ``batch_size`` at a time from ``sampler`` with ``seed`` and accepted
    greedily in order. At most ``max_candidates`` (default ``20·n + batch_size``) are drawn;
    if ``n`` identities cannot be found, :class:`SeparationError` says how many were.
    ``progress(k)`` is called with the number accepted so far after each batch.
    """
    if n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}")
    if dim < 2:
        raise ValueError(f"`dim` must be >= 2, got {dim}")
    if not -1.0 < max_similarity <= 1.0:
        raise ValueError(f"`max_similarity` must be in (-1, 1], got {max_similarity}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
    make = SAMPLERS.get(sampler).factory
    leak_thr = max_similarity if leakage_threshold is None else float(leakage_threshold)
    leak = None
    if leakage_bank is not None:
        leak = l2_normalize(np.asarray(leakage_bank, np.float32))
        if leak.ndim != 2 or leak.shape[1] != dim:
            raise ValueError(f"`leakage_bank` must be (M, {dim}), got {leak.shape}")
    limit = max_candidates if max_candidates is not None else 20 * n + batch_size
    rng = np.random.default_rng(seed)
    kept = np.empty((n, dim), np.float32)
    k = drawn = too_close = leaked = 0
    while k < n and drawn < limit:
        b = min(batch_size, limit - drawn)
        cand = l2_normalize(np.asarray(make(rng, b, dim, bank, **sampler_options), np.float32))
        drawn += b
        ok = np.ones(b, bool)
        if leak is not None:
            bad = _max_sim_to(cand, leak, batch_size) >= leak_thr
            leaked += int(bad.sum())
            ok &= ~bad
        if k:
            close = _max_sim_to(cand, kept[:k], batch_size) >= max_similarity
            too_close += int((close & ok).sum())
            ok &= ~close
        # within the batch: greedy in order, against the candidates accepted before
        idx = np.flatnonzero(ok)
        if len(idx):
            sub = cand[idx]
            sims = np.triu(sub @ sub.T, 1)
            take: list[int]
            if not (sims >= max_similarity).any():  # the common case: no pair conflicts
                take = list(range(min(len(idx), n - k)))
            else:
                take = []
                for j in range(len(idx)):
                    if take and sims[take, j].max() >= max_similarity:
                        too_close += 1
                        continue
                    take.append(j)
                    if k + len(take) == n:
                        break
            kept[k : k + len(take)] = sub[take]
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
    logger.debug("sampled %d identities: %s", n, stats)
    return IdentitySet(kept, encoder_id, sampler, seed, max_similarity, stats)
