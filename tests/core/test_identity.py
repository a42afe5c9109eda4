from __future__ import annotations

import numpy as np
import pytest

from facegen import IdentityEmbedding, IncompatibleEmbeddingError
from facegen.identity import (
    class_centers,
    cosine_similarity_matrix,
    eer,
    l2_normalize,
    roc_auc,
    stack_embeddings,
    threshold_at_best_accuracy,
)


def test_blockwise_similarity_equals_dense() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(37, 16)), rng.normal(size=(11, 16))
    an, bn = (
        a / np.linalg.norm(a, axis=1, keepdims=True),
        b / np.linalg.norm(b, axis=1, keepdims=True),
    )
    np.testing.assert_allclose(cosine_similarity_matrix(a, b, block_size=5), an @ bn.T, atol=1e-5)
    s = cosine_similarity_matrix(a, block_size=8)
    np.testing.assert_allclose(np.diag(s), 1.0, atol=1e-5)
    with pytest.raises(IncompatibleEmbeddingError, match="same D"):
        cosine_similarity_matrix(a, rng.normal(size=(3, 8)))


def test_normalize_rejects_zero_and_nan() -> None:
    with pytest.raises(IncompatibleEmbeddingError, match="zero"):
        l2_normalize(np.zeros((2, 3)))
    with pytest.raises(IncompatibleEmbeddingError, match="finite"):
        l2_normalize(np.array([[np.nan, 1.0]]))


def test_class_centers() -> None:
    v = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 1]], np.float32)
    labels, c = class_centers(v, ["a", "a", "b", "b"])
    assert labels == ["a", "b"]
    assert c[0, 0] > 0.99 and c[1, 1] > 0.99
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1, atol=1e-6)
    for empty in (np.zeros((0, 8), np.float32), np.zeros(0, np.float32), []):
        with pytest.raises(ValueError, match=r"`vectors` must be a non-empty \(N, D\) array"):
            class_centers(empty, [])
    with pytest.raises(ValueError, match=r"`vectors` must be a non-empty \(N, D\) array"):
        class_centers(np.ones(4, np.float32), ["a"] * 4)
    with pytest.raises(ValueError, match="`labels` must have one entry per vector"):
        class_centers(v, ["a"])


def test_stack_refuses_mixed_encoders() -> None:
    e1 = IdentityEmbedding(np.array([1.0, 0.0]), "a")
    e2 = IdentityEmbedding(np.array([0.0, 1.0]), "b")
    m, enc = stack_embeddings([e1, e1])
    assert m.shape == (2, 2) and enc == "a"
    with pytest.raises(IncompatibleEmbeddingError):
        stack_embeddings([e1, e2])


def test_roc_auc_and_eer_against_known_values() -> None:
    assert roc_auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert roc_auc(np.array([0.1]), np.array([0.9])) == 0.0
    assert roc_auc(np.array([0.5]), np.array([0.5])) == 0.5
    rng = np.random.default_rng(0)
    g, i = rng.normal(2, 1, 20000), rng.normal(0, 1, 20000)
    # for N(2,1) vs N(0,1): AUC = Phi(2/sqrt 2) = 0.9214, EER = Phi(-1) = 0.1587 at t = 1
    assert roc_auc(g, i) == pytest.approx(0.9214, abs=0.01)
    e, t = eer(g, i)
    assert e == pytest.approx(0.1587, abs=0.01) and t == pytest.approx(1.0, abs=0.05)
    acc, t2 = threshold_at_best_accuracy(g, i)
    assert acc == pytest.approx(1 - 0.1587, abs=0.01) and t2 == pytest.approx(1.0, abs=0.1)


def test_tar_at_far() -> None:
    from facegen.identity import tar_at_far

    impostor = np.linspace(0, 1, 1000, endpoint=False)  # 0.000 … 0.999
    genuine = np.array([0.5, 0.9995, 1.0])
    tar, thr = tar_at_far(genuine, impostor, far=1e-3)
    assert 0.998 < thr <= 0.999 and (impostor >= thr).mean() <= 1e-3
    assert tar == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="far"):
        tar_at_far(genuine, impostor, far=0)
