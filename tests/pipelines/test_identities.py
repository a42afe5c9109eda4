"""Synthetic identity sampling: reproducibility, separation (exact and faiss index), leakage,
samplers, verification."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from facegen import UnknownNameError
from facegen.embedding_io import load_embeddings
from facegen.errors import MissingDependencyError
from facegen.identity import l2_normalize
from facegen.pipelines.identities import (
    SAMPLERS,
    SeparationError,
    sample_identities,
    verify_separation,
)
from facegen.registry import RegistryEntry

try:
    import faiss
except ImportError:  # the index tests need the `faiss` extra
    faiss = None

needs_faiss = pytest.mark.skipif(faiss is None, reason="faiss-cpu not installed (facegen[faiss])")


def _max_offdiag(v: np.ndarray) -> float:
    s = v @ v.T
    np.fill_diagonal(s, -1)
    return float(s.max())


def test_reproducible_and_unit_norm() -> None:
    a = sample_identities(500, seed=3)
    b = sample_identities(500, seed=3)
    c = sample_identities(500, seed=4)
    assert a.vectors.shape == (500, 512) and a.vectors.dtype == np.float32
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert not np.allclose(a.vectors, c.vectors)
    np.testing.assert_allclose(np.linalg.norm(a.vectors, axis=1), 1.0, atol=1e-5)
    # batch size does not change the result
    d = sample_identities(500, seed=3, batch_size=64)
    assert d.vectors.shape == a.vectors.shape


def test_separation_is_exact_when_it_binds() -> None:
    # 16-D at 0.5: many candidates collide, so the check really works
    s = sample_identities(120, dim=16, max_similarity=0.5, seed=0, batch_size=64)
    assert _max_offdiag(s.vectors) < 0.5
    assert s.stats["rejected_too_close"] > 0
    assert s.stats["drawn"] >= 120 + s.stats["rejected_too_close"]


def test_leakage_bank_is_respected() -> None:
    rng = np.random.default_rng(1)
    bank = rng.standard_normal((20, 16)).astype(np.float32)
    s = sample_identities(
        100, dim=16, max_similarity=0.6, leakage_bank=bank, leakage_threshold=0.5, seed=2
    )
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    assert float((s.vectors @ b.T).max()) < 0.5
    assert s.stats["rejected_leakage"] > 0


def test_gaussian_sampler_follows_the_bank() -> None:
    rng = np.random.default_rng(5)
    centre = rng.standard_normal(32)
    bank = centre + 0.3 * rng.standard_normal((400, 32))
    g = sample_identities(200, dim=32, sampler="gaussian", bank=bank, max_similarity=0.999, seed=0)
    u = sample_identities(200, dim=32, max_similarity=0.999, seed=0)
    c = centre / np.linalg.norm(centre)
    assert float((g.vectors @ c).mean()) > 0.8 > float(abs((u.vectors @ c).mean())) + 0.5
    g2 = sample_identities(
        50, dim=32, sampler="gaussian", bank=bank, pca_components=4, max_similarity=0.999
    )
    assert g2.vectors.shape == (50, 32)
    with pytest.raises(ValueError, match="needs `bank`"):
        sample_identities(5, sampler="gaussian")


def test_spread_sampler_rejects_less() -> None:
    kw = {"dim": 8, "max_similarity": 0.6, "seed": 0, "batch_size": 24}
    u = sample_identities(12, **kw)
    s = sample_identities(12, sampler="spread", **kw)
    assert s.stats["rejected_too_close"] < u.stats["rejected_too_close"]
    assert _max_offdiag(s.vectors) < 0.6


def test_impossible_request_is_a_clear_error() -> None:
    with pytest.raises(SeparationError, match=r"found only .* of 50 identities"):
        sample_identities(50, dim=2, max_similarity=0.1, max_candidates=2000)
    with pytest.raises(UnknownNameError, match="uniform"):
        sample_identities(5, sampler="sphere")
    with pytest.raises(ValueError, match="`n` must be an integer >= 1"):
        sample_identities(0)


def test_save_and_progress(tmp_path) -> None:
    seen: list[int] = []
    s = sample_identities(10, seed=1, batch_size=4, progress=seen.append)
    assert seen[-1] == 10 and seen == sorted(seen)
    embs, names = load_embeddings(s.save(tmp_path / "ids.safetensors"))
    assert names[0] == "id000000" and embs[0].encoder_id == "arcface-onnx/arc2face"
    np.testing.assert_allclose(embs[3].vector, s.vectors[3])


# --- verification -----------------------------------------------------------------------------


def test_verify_separation_counts_every_pair_exactly() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((700, 16)).astype(np.float32) * rng.uniform(0.5, 3, (700, 1))
    u = l2_normalize(x)
    s = u @ u.T
    iu = np.triu_indices(700, 1)
    want = int((s[iu] >= 0.6).sum())
    rep = verify_separation(x, 0.6, block=128, max_pairs=5)  # any norms; blocks straddle rows
    assert rep.exact and rep.violations == want > 0 and not rep.ok
    assert rep.pairs_total == rep.pairs_checked == 700 * 699 // 2
    assert rep.max_observed == pytest.approx(float(s[iu].max()), abs=1e-5)
    assert rep.pairs.shape == (5, 2) and np.all(rep.pairs[:, 0] < rep.pairs[:, 1])
    assert np.all(s[rep.pairs[:, 0], rep.pairs[:, 1]] >= 0.6 - 1e-6)
    assert verify_separation(u, float(s[iu].max()) + 1e-3).ok


def test_verify_separation_sampled_estimate() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2000, 24)).astype(np.float32)
    exact = verify_separation(x, 0.55)
    est = verify_separation(x, 0.55, sample=400, seed=3, block=300)
    assert not est.exact and est.pairs_checked < est.pairs_total
    assert est.violations < exact.violations
    # the estimate is within 25% of the truth here, and the bound lies above it
    assert abs(est.estimated_violations - exact.violations) < 0.25 * exact.violations
    assert est.upper_bound > est.estimated_violations
    u = l2_normalize(x)
    assert np.all(np.sum(u[est.pairs[:, 0]] * u[est.pairs[:, 1]], 1) >= 0.55 - 1e-6)
    # all rows sampled: every pair is seen once, the count is exact
    full = verify_separation(x, 0.55, sample=2000, block=512)
    assert full.violations == exact.violations and full.pairs_checked == full.pairs_total
    with pytest.raises(ValueError, match=r"`sample` must be an integer in \[1, 2000\]"):
        verify_separation(x, 0.5, sample=0)


def test_identity_set_verify() -> None:
    s = sample_identities(150, dim=16, max_similarity=0.5, seed=0, batch_size=64)
    rep = s.verify()
    assert rep.ok and rep.exact and rep.max_observed < 0.5
    assert s.index == "exact" and s.index_params == {}


# --- faiss index ------------------------------------------------------------------------------


@needs_faiss
def test_faiss_exhaustive_probe_equals_exact() -> None:
    # probing every cell searches every kept identity: the same identities as `exact`
    kw = {"dim": 32, "max_similarity": 0.6, "seed": 0, "batch_size": 256}
    e = sample_identities(1500, **kw)
    f = sample_identities(1500, index="faiss", nlist=24, nprobe=24, **kw)
    assert e.stats["rejected_too_close"] > 100  # the check binds
    np.testing.assert_array_equal(e.vectors, f.vectors)
    assert f.index == "faiss" and f.index_params == {"nlist": 24, "nprobe": 24}
    assert f.verify().ok


def _structured_bank(dim: int = 64, rank: int = 16) -> np.ndarray:
    rng = np.random.default_rng(5)
    return rng.standard_normal((400, rank)) @ rng.standard_normal((rank, dim)) + 3 * (
        rng.standard_normal(dim)
    )


@needs_faiss
def test_faiss_index_misses_few_pairs_and_verify_measures_them() -> None:
    bank = _structured_bank()
    # a sampler fitted to a structured bank (16-D subspace, off-centre), as real embeddings are
    kw = {"dim": 64, "sampler": "gaussian", "bank": bank, "max_similarity": 0.9, "batch_size": 512}
    unchecked = l2_normalize(
        SAMPLERS.get("gaussian").factory(np.random.default_rng(0), 2000, 64, bank)
    )
    baseline = verify_separation(unchecked, 0.9).violations  # pairs with no check at all
    approx = sample_identities(2000, index="faiss", **kw)
    low = sample_identities(2000, index="faiss", nprobe=1, **kw)
    rep = approx.verify()
    assert approx.index_params["nprobe"] == 16
    assert baseline > 100
    # few slip through (only pairs whose earlier identity lies in a cell not probed) ...
    assert rep.violations <= 0.1 * baseline
    assert rep.max_observed < 0.96
    # ... and fewer cells probed lets more through; exact sampling lets none through
    assert low.verify().violations > rep.violations
    assert sample_identities(2000, **kw).verify().ok


@needs_faiss
def test_faiss_index_is_reproducible_whatever_the_threads() -> None:
    kw = {"dim": 32, "max_similarity": 0.6, "batch_size": 256, "index": "faiss"}
    a = sample_identities(1200, seed=7, **kw)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        b = sample_identities(1200, seed=7, **kw)
    finally:
        faiss.omp_set_num_threads(before)
    c = sample_identities(1200, seed=8, **kw)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert a.stats == b.stats and a.index_params == b.index_params
    assert not np.allclose(a.vectors, c.vectors)


@needs_faiss
def test_faiss_index_keeps_the_leakage_check_exact(monkeypatch) -> None:
    rng = np.random.default_rng(2)
    bank = l2_normalize(rng.standard_normal((50, 32)).astype(np.float32))
    planted = l2_normalize(bank[7] + 0.05 * rng.standard_normal(32).astype(np.float32))

    def with_planted(rng: np.random.Generator, n: int, dim: int, bank=None, **_) -> np.ndarray:
        x = rng.standard_normal((n, dim), dtype=np.float32)
        x[n // 2] = planted  # a near-copy of one real identity in every batch
        return x

    monkeypatch.setitem(SAMPLERS._entries, "planted", RegistryEntry("planted", with_planted))
    s = sample_identities(
        400,
        dim=32,
        sampler="planted",
        max_similarity=0.7,
        leakage_bank=bank,
        leakage_threshold=0.5,
        index="faiss",
        nprobe=1,
        batch_size=64,
        seed=0,
    )
    assert float((s.vectors @ bank.T).max()) < 0.5
    assert not np.any(s.vectors @ planted > 0.99)
    assert s.stats["rejected_leakage"] >= s.stats["drawn"] // 64


def test_faiss_index_without_faiss_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss → ImportError
    with pytest.raises(MissingDependencyError, match=r"faiss-cpu.*facegen\[faiss\]") as err:
        sample_identities(10, index="faiss")
    assert err.value.extra == "faiss"
    sample_identities(10)  # the exact default needs no faiss


def test_index_arguments_are_checked() -> None:
    with pytest.raises(UnknownNameError, match="exact, faiss"):
        sample_identities(5, index="hnsw")
    with pytest.raises(ValueError, match="apply only to index='faiss'"):
        sample_identities(5, nprobe=4)
    with pytest.raises(ValueError, match=r"`nprobe` must be <= `nlist` \(4\), got 8"):
        sample_identities(5, index="faiss", nlist=4, nprobe=8)
    with pytest.raises(ValueError, match="`nprobe` must be an integer >= 1, got 0"):
        sample_identities(5, index="faiss", nprobe=0)
