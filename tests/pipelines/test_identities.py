"""Synthetic identity sampling: reproducibility, exact separation, leakage, samplers."""

from __future__ import annotations

import numpy as np
import pytest

from facegen import UnknownNameError
from facegen.embedding_io import load_embeddings
from facegen.pipelines.identities import SeparationError, sample_identities


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
    with pytest.raises(ValueError, match="`n` must be >= 1"):
        sample_identities(0)


def test_save_and_progress(tmp_path) -> None:
    seen: list[int] = []
    s = sample_identities(10, seed=1, batch_size=4, progress=seen.append)
    assert seen[-1] == 10 and seen == sorted(seen)
    embs, names = load_embeddings(s.save(tmp_path / "ids.safetensors"))
    assert names[0] == "id000000" and embs[0].encoder_id == "arcface-onnx/arc2face"
    np.testing.assert_allclose(embs[3].vector, s.vectors[3])
