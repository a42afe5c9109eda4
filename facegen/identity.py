"""Identity math: normalisation, similarity matrices, class centres, verification metrics.

Arrays are float32 ``(N, D)`` rows of identity vectors unless stated otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from facegen.errors import IncompatibleEmbeddingError
from facegen.types import IdentityEmbedding
from facegen.validate import check_int, check_number

__all__ = [
    "class_centers",
    "cosine_similarity_matrix",
    "eer",
    "l2_normalize",
    "roc_auc",
    "stack_embeddings",
    "tar_at_far",
    "threshold_at_best_accuracy",
]


def l2_normalize(x: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """Unit-normalise along ``axis`` (float32). Zero or non-finite rows raise."""
    a = np.asarray(x, dtype=np.float32)
    if not np.all(np.isfinite(a)):
        raise IncompatibleEmbeddingError("identity vectors must be finite, got NaN or inf")
    n = np.linalg.norm(a, axis=axis, keepdims=True)
    if np.any(n == 0):
        raise IncompatibleEmbeddingError("cannot normalise a zero identity vector")
    return a / n


def stack_embeddings(embeddings: Sequence[IdentityEmbedding]) -> tuple[np.ndarray, str]:
    """Stack embeddings of ONE encoder into normalised ``(N, D)``; returns it and the encoder id."""
    if not embeddings:
        raise ValueError("`embeddings` must not be empty")
    first = embeddings[0]
    for e in embeddings[1:]:
        first.check_compatible(e)
    return l2_normalize(np.stack([e.vector for e in embeddings])), first.encoder_id


def cosine_similarity_matrix(
    a: np.ndarray, b: np.ndarray | None = None, *, block_size: int = 4096, normalized: bool = False
) -> np.ndarray:
    """Cosine similarities ``(N, M)`` between rows of ``a`` ``(N, D)`` and ``b`` ``(M, D)``.

    ``b=None`` compares ``a`` with itself. Computed in row blocks of ``block_size`` so that
    large sets never hold more than one block of intermediates; the output itself is
    float32 ``N·M`` (use :func:`class_centers` or stream blocks yourself beyond that).
    """
    block_size = check_int(block_size, "block_size", minimum=1)
    an = np.asarray(a, np.float32) if normalized else l2_normalize(a)
    bn = an if b is None else (np.asarray(b, np.float32) if normalized else l2_normalize(b))
    if an.ndim != 2 or bn.ndim != 2 or an.shape[1] != bn.shape[1]:
        raise IncompatibleEmbeddingError(
            f"vectors must be (N, D) and (M, D) with the same D, got {an.shape} and {bn.shape}"
        )
    out = np.empty((an.shape[0], bn.shape[0]), np.float32)
    for s in range(0, an.shape[0], block_size):
        np.matmul(an[s : s + block_size], bn.T, out=out[s : s + block_size])
    np.clip(out, -1.0, 1.0, out=out)
    return out


def class_centers(vectors: np.ndarray, labels: Sequence[object]) -> tuple[list[object], np.ndarray]:
    """Unit-norm mean vector per label: returns (labels in first-seen order, ``(K, D)``).

    ``vectors``: ``(N, D)`` with N >= 1; ``labels``: N hashable labels.
    """
    shape = np.shape(vectors)
    if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"`vectors` must be a non-empty (N, D) array, got shape {shape}")
    v = l2_normalize(vectors)
    lab = list(labels)
    if len(lab) != len(v):
        raise ValueError(f"`labels` must have one entry per vector ({len(v)}), got {len(lab)}")
    order: dict[object, int] = {}
    idx = np.array([order.setdefault(x, len(order)) for x in lab])
    sums = np.zeros((len(order), v.shape[1]), np.float64)
    np.add.at(sums, idx, v)
    return list(order), l2_normalize(sums.astype(np.float32))


def _scores(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(genuine, np.float64).ravel()
    i = np.asarray(impostor, np.float64).ravel()
    if g.size == 0 or i.size == 0:
        raise ValueError("need at least one genuine and one impostor score")
    return g, i


def roc_auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Area under the ROC curve (probability a genuine pair outscores an impostor pair; ties ½)."""
    g, i = _scores(genuine, impostor)
    scores = np.concatenate([g, i])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    rank_sum = ranks[: g.size].sum()
    return float((rank_sum - g.size * (g.size + 1) / 2.0) / (g.size * i.size))


def _sweep(g: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    thr = np.unique(np.concatenate([g, i]))
    gs, is_ = np.sort(g), np.sort(i)
    frr = np.searchsorted(gs, thr, side="left") / g.size  # genuine below threshold
    far = 1.0 - np.searchsorted(is_, thr, side="left") / i.size  # impostor at/above threshold
    return thr, far, frr


def eer(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """Equal error rate and the threshold where it occurs (accept when score >= threshold)."""
    g, i = _scores(genuine, impostor)
    thr, far, frr = _sweep(g, i)
    k = int(np.argmin(np.abs(far - frr)))
    return float((far[k] + frr[k]) / 2.0), float(thr[k])


def threshold_at_best_accuracy(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """The threshold maximising pair-balanced accuracy ``1 - (FAR + FRR)/2``; returns (acc, thr)."""
    g, i = _scores(genuine, impostor)
    thr, far, frr = _sweep(g, i)
    acc = 1.0 - (far + frr) / 2.0
    k = int(np.argmax(acc))
    return float(acc[k]), float(thr[k])


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float = 1e-3) -> tuple[float, float]:
    """True-accept rate at the threshold where the false-accept rate is at most ``far``.

    Returns ``(tar, threshold)``; the threshold is the smallest score that keeps at most
    ``far`` of impostor pairs at or above it (accept when score >= threshold).
    """
    g, i = _scores(genuine, impostor)
    far = check_number(far, "far", minimum=0, maximum=1, min_open=True, max_open=True)
    s = np.sort(i)[::-1]
    allowed = int(np.floor(far * i.size))  # impostors that may be accepted
    thr = float(np.nextafter(s[allowed], np.inf)) if allowed < s.size else float(s[-1])
    return float((g >= thr).mean()), thr
