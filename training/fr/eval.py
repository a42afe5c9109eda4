"""Face-verification evaluation with insightface's protocol (``arcface_torch/eval/verification.py``).

For a set of N pairs (images a0, b0, a1, b1, …):

1. every image and its horizontal flip go through the network; the two raw feature vectors
   are summed and L2-normalised (insightface's "Accuracy-Flip");
2. the score of a pair is the squared L2 distance of its two vectors (0…4);
3. accuracy: the pairs are split into ``nfolds`` (10) contiguous folds, in order, without
   shuffling (``sklearn.model_selection.KFold(shuffle=False)``: the first ``N mod 10`` folds
   get one pair more); for each fold the threshold in ``np.arange(0, 4, 0.01)`` with the best
   accuracy on the other nine folds (first one on ties; "same" when ``dist < threshold``) is
   applied to the fold; the result is mean ± std (population std) of the ten accuracies;
4. VAL@FAR (TAR at FAR = 1e-3): per fold, the false-accept rate on the other nine folds is
   computed for every threshold in ``np.arange(0, 4, 0.001)``; the threshold where it equals
   the target is found by linear interpolation (insightface's
   ``interp1d(far, thresholds, kind="slinear")``; 0 when the target FAR is never reached) and
   the true-accept rate at it is measured on the fold; mean ± std over folds, and the mean
   achieved FAR.

scipy ≥ 1.9 refuses that ``interp1d`` call whenever two thresholds share a FAR (always the
case; insightface issue #2152), so the interpolation is evaluated here directly as the
degree-1 B-spline older scipy built (knots ``[x0, x, xn]``, coefficients = thresholds; for
unique FARs this is exactly ``interp1d(..., "slinear")``).

Also reported, over all pairs at once: ROC AUC and the EER (on cosine similarity, from
:mod:`facegen.identity`) and ``xnorm``, the mean L2 norm of the raw features.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facegen.base import IdentityEncoder
from facegen.errors import InvalidArgumentError
from facegen.identity import eer, roc_auc
from facegen.image_io import load_image
from facegen.validate import check_int

__all__ = [
    "ACC_THRESHOLDS",
    "VAL_THRESHOLDS",
    "VerificationResult",
    "VerificationSet",
    "embed_flip_sum",
    "embed_verification_set",
    "evaluate_bin",
    "evaluate_pairs",
    "evaluate_verification",
    "kfold_indices",
    "load_pair_list",
    "load_verification_bin",
    "load_verification_set",
    "make_verification_pairs",
    "verification_metrics",
]

logger = logging.getLogger(__name__)

#: Squared-distance thresholds of the accuracy protocol and of VAL@FAR (insightface's grids).
ACC_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)

ModelOrEncoder = nn.Module | IdentityEncoder


@dataclass(frozen=True)
class VerificationSet:
    """``images``: uint8 ``(2N, H, W, 3)`` RGB in pair order a0, b0, a1, b1, …; ``issame``: bool ``(N,)``."""

    name: str
    images: np.ndarray
    issame: np.ndarray

    def __post_init__(self) -> None:
        im, same = self.images, np.asarray(self.issame)
        if im.dtype != np.uint8 or im.ndim != 4 or im.shape[3] != 3:
            raise InvalidArgumentError(
                f"`images` must be uint8 (2N, H, W, 3), got {im.dtype} {im.shape}"
            )
        if same.ndim != 1 or len(im) != 2 * len(same):
            raise InvalidArgumentError(
                f"`images` must hold 2 images per pair ({2 * len(same)}), got {len(im)}"
            )
        object.__setattr__(self, "issame", same.astype(bool))

    def __len__(self) -> int:
        return len(self.issame)


@dataclass(frozen=True)
class VerificationResult:
    """Result of :func:`evaluate_verification`.

    ``accuracy``/``accuracy_std``: insightface's 10-fold "Accuracy-Flip" (fractions, not %).
    ``threshold``: mean of the folds' best squared-distance thresholds (``cosine_threshold``
    = ``1 - threshold / 2`` is the same cut on cosine similarity). ``tar_at_far``,
    ``tar_at_far_std``, ``far``: insightface's VAL ± std and achieved FAR at ``far_target``.
    ``auc``, ``eer``, ``eer_threshold`` (cosine): over all pairs. ``tpr``/``fpr``: the mean ROC
    over folds at ``ACC_THRESHOLDS``. ``xnorm``: mean L2 norm of the raw features.
    """

    name: str
    num_pairs: int
    accuracy: float
    accuracy_std: float
    threshold: float
    tar_at_far: float
    tar_at_far_std: float
    far: float
    far_target: float
    auc: float
    eer: float
    eer_threshold: float
    xnorm: float
    fold_accuracies: tuple[float, ...] = ()
    fold_thresholds: tuple[float, ...] = ()
    tpr: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    fpr: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    @property
    def cosine_threshold(self) -> float:
        return 1.0 - self.threshold / 2.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready scalars (no ROC arrays)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("tpr", "fpr")}
        d["fold_accuracies"] = list(self.fold_accuracies)
        d["fold_thresholds"] = list(self.fold_thresholds)
        d["cosine_threshold"] = self.cosine_threshold
        return d

    def summary(self) -> str:
        return (
            f"[{self.name}] Accuracy-Flip: {self.accuracy:1.5f}+-{self.accuracy_std:1.5f}  "
            f"TAR@FAR={self.far_target:g}: {self.tar_at_far:1.5f}+-{self.tar_at_far_std:1.5f} "
            f"(FAR {self.far:.5f})  AUC {self.auc:.5f}  EER {self.eer:.5f}  "
            f"XNorm {self.xnorm:.3f}  pairs {self.num_pairs}"
        )


# --------------------------------------------------------------------------------------------
# loading pair sets


def load_verification_bin(path: str | os.PathLike[str]) -> VerificationSet:
    """An insightface ``.bin`` (read safely by :func:`read_verification_bin`) as arrays.

    Images of another size than the first one are resized to it (bilinear), as insightface
    resizes every image to the model's input size.
    """
    from facegen.pipelines.dataset.writers import read_verification_bin

    vb = read_verification_bin(path)
    p = Path(path)
    imgs = [load_image(b, name=f"{p.name}[{i}]") for i, b in enumerate(vb.bins)]
    return VerificationSet(p.stem, _stack(imgs), np.asarray(vb.issame, bool))


def _stack(imgs: Sequence[np.ndarray]) -> np.ndarray:
    if not imgs:
        return np.zeros((0, 112, 112, 3), np.uint8)
    h, w = imgs[0].shape[:2]
    from PIL import Image

    out = [
        im
        if im.shape[:2] == (h, w)
        else np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR))
        for im in imgs
    ]
    return np.stack(out)


def load_pair_list(
    path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None
) -> VerificationSet:
    """A pair list: text lines ``pathA pathB 0|1`` (1 = same person; ``#`` starts a comment).

    Relative paths are taken from ``root`` (default: the list's folder). Images must be
    aligned crops; they are read as RGB (grey → three channels).
    """
    p = Path(path)
    base = Path(root) if root is not None else p.parent
    imgs: list[np.ndarray] = []
    same: list[bool] = []
    for n, raw in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3 or parts[2] not in ("0", "1"):
            raise InvalidArgumentError(f"{p}:{n}: lines must be 'pathA pathB 0|1', got {raw!r}")
        for q in parts[:2]:
            imgs.append(load_image(base / q))
        same.append(parts[2] == "1")
    if not same:
        raise InvalidArgumentError(f"`path` must list at least one pair, got none in {p}")
    return VerificationSet(p.stem, _stack(imgs), np.asarray(same))


def load_verification_set(path: str | os.PathLike[str]) -> VerificationSet:
    """``.bin`` → :func:`load_verification_bin`; anything else → :func:`load_pair_list`."""
    return load_verification_bin(path) if Path(path).suffix == ".bin" else load_pair_list(path)


def make_verification_pairs(
    labels: Sequence[int] | np.ndarray, *, num_impostor: int | None = None, seed: int = 0
) -> list[tuple[int, int, bool]]:
    """Pairs over samples with ``labels``: every genuine pair, and as many impostor pairs.

    Impostor pairs (``num_impostor``, default = number of genuine pairs) are drawn without
    repetition with ``seed``. Both lists are shuffled and interleaved (g, i, g, i, …) so that
    every contiguous fold of the 10-fold protocol holds both kinds. Returns ``(i, j, issame)``.
    """
    lab = np.asarray(labels)
    rng = np.random.default_rng(seed)
    n = len(lab)
    ii, jj = np.triu_indices(n, k=1)
    same = lab[ii] == lab[jj]
    gen = np.stack([ii[same], jj[same]], 1)
    imp_all = np.stack([ii[~same], jj[~same]], 1)
    k = len(gen) if num_impostor is None else num_impostor
    check_int(k, "num_impostor", minimum=0, maximum=len(imp_all))
    gen = gen[rng.permutation(len(gen))]
    imp = imp_all[rng.choice(len(imp_all), size=k, replace=False)]
    out: list[tuple[int, int, bool]] = []
    for t in range(max(len(gen), len(imp))):
        if t < len(gen):
            out.append((int(gen[t, 0]), int(gen[t, 1]), True))
        if t < len(imp):
            out.append((int(imp[t, 0]), int(imp[t, 1]), False))
    return out


# --------------------------------------------------------------------------------------------
# embedding


def _input_size(model: ModelOrEncoder, image_size: int | None) -> int:
    if image_size is not None:
        return image_size
    if isinstance(model, IdentityEncoder):
        return int(model.input_size)
    return int(getattr(model, "input_size", 112))


@torch.no_grad()
def embed_flip_sum(
    model: ModelOrEncoder,
    images: np.ndarray,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    image_size: int | None = None,
) -> tuple[np.ndarray, float]:
    """Raw features of every image plus those of its horizontal flip, summed (float64 ``(M, D)``).

    ``images``: uint8 ``(M, H, W, 3)`` RGB, resized to the model's input size when needed.
    ``model``: an ``nn.Module`` taking float32 ``(B, 3, S, S)`` in [-1, 1] (run in eval mode,
    its training flag restored afterwards) or an :class:`IdentityEncoder` (its raw
    ``_forward``). Also returns insightface's ``xnorm``: the mean norm of all raw features.
    """
    check_int(batch_size, "batch_size", minimum=1)
    from facegen.training.fr.data import resize_square, to_input_tensor

    size = _input_size(model, image_size)
    feats: list[np.ndarray] = []
    norms: list[np.ndarray] = []
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
        if device is None:
            p = next(model.parameters(), None)
            device = p.device if p is not None else "cpu"
    try:
        for s in range(0, len(images), batch_size):
            chunk = images[s : s + batch_size]
            if isinstance(model, IdentityEncoder):
                if chunk.shape[1:3] != (size, size):
                    chunk = np.stack([resize_square(c, size) for c in chunk])
                a = np.asarray(model._forward(chunk), np.float64)
                b = np.asarray(model._forward(np.ascontiguousarray(chunk[:, :, ::-1])), np.float64)
            else:
                x = torch.stack([to_input_tensor(c, size) for c in chunk]).to(device)
                a = model(x).float().cpu().numpy().astype(np.float64)
                b = model(torch.flip(x, dims=[3])).float().cpu().numpy().astype(np.float64)
            feats.append(a + b)
            norms += [np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)]
    finally:
        if was_training:
            model.train()  # type: ignore[union-attr]
    if not feats:
        raise InvalidArgumentError("`images` must not be empty")
    return np.concatenate(feats), float(np.concatenate(norms).mean())


# --------------------------------------------------------------------------------------------
# metrics


def kfold_indices(n: int, nfolds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``KFold(n_splits=nfolds, shuffle=False).split(range(n))``: contiguous (train, test) folds."""
    if nfolds < 2 or nfolds > n:
        raise InvalidArgumentError(f"`nfolds` must be in [2, number of pairs = {n}], got {nfolds}")
    sizes = np.full(nfolds, n // nfolds)
    sizes[: n % nfolds] += 1
    idx = np.arange(n)
    out, start = [], 0
    for sz in sizes:
        test = idx[start : start + sz]
        out.append((np.concatenate([idx[:start], idx[start + sz :]]), test))
        start += sz
    return out


def _counts(dist: np.ndarray, issame: np.ndarray, thr: np.ndarray) -> tuple[np.ndarray, ...]:
    """tp, fp, n_same, n_diff at every threshold (predict "same" when ``dist < thr``)."""
    same = np.sort(dist[issame])
    diff = np.sort(dist[~issame])
    tp = np.searchsorted(same, thr, side="left")
    fp = np.searchsorted(diff, thr, side="left")
    return tp, fp, len(same), len(diff)


def _slinear(x: np.ndarray, y: np.ndarray, x0: float) -> float:
    """Old scipy ``interp1d(x, y, kind="slinear")(x0)``: BSpline(t=[x0, x, xn], c=y, k=1)."""
    order = np.argsort(x, kind="mergesort")
    xs, ys = x[order], y[order]
    t = np.concatenate([xs[:1], xs, xs[-1:]])
    n = len(t) - 2  # number of coefficients (k = 1)
    if not xs[0] <= x0 <= xs[-1]:
        raise InvalidArgumentError(f"x0 = {x0} is outside [{xs[0]}, {xs[-1]}]")
    l_ = int(np.clip(np.searchsorted(t, x0, side="right"), 2, n)) - 1  # t[l] <= x0 < t[l+1]
    h = t[l_ + 1] - t[l_]
    if h == 0:
        return float("nan")
    return float((ys[l_ - 1] * (t[l_ + 1] - x0) + ys[l_] * (x0 - t[l_])) / h)


def verification_metrics(
    embeddings: np.ndarray,
    issame: Sequence[bool] | np.ndarray,
    *,
    nfolds: int = 10,
    far_target: float = 1e-3,
    name: str = "",
    xnorm: float = float("nan"),
) -> VerificationResult:
    """insightface's ``evaluate`` on L2-normalised ``embeddings`` ``(2N, D)`` (pairs 0::2, 1::2).

    ``issame``: bool ``(N,)``. Every fold must hold both genuine and impostor pairs (VAL
    divides by both counts); interleave or shuffle a sorted pair list.
    """
    emb = np.asarray(embeddings, np.float64)
    same = np.asarray(issame, bool)
    if emb.ndim != 2 or len(emb) != 2 * len(same):
        raise InvalidArgumentError(
            f"`embeddings` must be (2N, D) with N = {len(same)} pairs, got {emb.shape}"
        )
    e1, e2 = emb[0::2], emb[1::2]
    dist = np.sum(np.square(e1 - e2), 1)
    folds = kfold_indices(len(same), nfolds)
    for f, (_, test) in enumerate(folds):
        ns = int(same[test].sum())
        if ns == 0 or ns == len(test):
            raise InvalidArgumentError(
                f"every one of the {nfolds} contiguous folds must hold genuine and impostor "
                f"pairs (the protocol splits pairs in order), got fold {f} with {ns} genuine "
                f"of {len(test)}; interleave the pair list"
            )
    # accuracy (calculate_roc)
    tprs = np.zeros((nfolds, len(ACC_THRESHOLDS)))
    fprs = np.zeros((nfolds, len(ACC_THRESHOLDS)))
    accs = np.zeros(nfolds)
    best_thr = np.zeros(nfolds)
    for f, (train, test) in enumerate(folds):
        tp, fp, ns, nd = _counts(dist[train], same[train], ACC_THRESHOLDS)
        acc_train = (tp + (nd - fp)) / len(train)
        k = int(np.argmax(acc_train))
        tp, fp, ns, nd = _counts(dist[test], same[test], ACC_THRESHOLDS)
        tprs[f] = tp / ns
        fprs[f] = fp / nd
        accs[f] = (tp[k] + (nd - fp[k])) / len(test)
        best_thr[f] = ACC_THRESHOLDS[k]
    # VAL@FAR (calculate_val)
    vals = np.zeros(nfolds)
    fars = np.zeros(nfolds)
    for f, (train, test) in enumerate(folds):
        _, fp, _, nd = _counts(dist[train], same[train], VAL_THRESHOLDS)
        far_train = fp / nd
        thr = (
            _slinear(far_train, VAL_THRESHOLDS, far_target)
            if far_train.max() >= far_target
            else 0.0
        )
        tp, fp, ns, nd = _counts(dist[test], same[test], np.array([thr]))
        vals[f], fars[f] = tp[0] / ns, fp[0] / nd
    cos = np.sum(e1 * e2, 1)
    e, e_thr = eer(cos[same], cos[~same])  # every fold holds both kinds (checked above)
    return VerificationResult(
        name=name,
        num_pairs=len(same),
        accuracy=float(accs.mean()),
        accuracy_std=float(accs.std()),
        threshold=float(best_thr.mean()),
        tar_at_far=float(vals.mean()),
        tar_at_far_std=float(vals.std()),
        far=float(fars.mean()),
        far_target=far_target,
        auc=roc_auc(cos[same], cos[~same]),
        eer=float(e),
        eer_threshold=float(e_thr),
        xnorm=xnorm,
        fold_accuracies=tuple(float(a) for a in accs),
        fold_thresholds=tuple(float(t) for t in best_thr),
        tpr=tprs.mean(0),
        fpr=fprs.mean(0),
    )


def embed_verification_set(
    model: ModelOrEncoder,
    vset: VerificationSet,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, float]:
    """The L2-normalised flip-sum embeddings of ``vset`` (float64 ``(2N, D)``, pair order) and
    ``xnorm``: what :func:`evaluate_verification` scores, for callers that reuse them (e.g.
    :func:`facegen.training.fr.bias.bias_report`) without embedding twice."""
    raw, xnorm = embed_flip_sum(model, vset.images, batch_size=batch_size, device=device)
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    return raw / np.maximum(norms, 1e-12), xnorm  # sklearn.preprocessing.normalize


def evaluate_verification(
    model: ModelOrEncoder,
    vset: VerificationSet,
    *,
    nfolds: int = 10,
    far_target: float = 1e-3,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> VerificationResult:
    """Embed ``vset`` with flip-sum, L2-normalise, and run :func:`verification_metrics`."""
    emb, xnorm = embed_verification_set(model, vset, batch_size=batch_size, device=device)
    res = verification_metrics(
        emb, vset.issame, nfolds=nfolds, far_target=far_target, name=vset.name, xnorm=xnorm
    )
    logger.info("%s", res.summary())
    return res


def evaluate_bin(
    model: ModelOrEncoder,
    path: str | os.PathLike[str],
    *,
    nfolds: int = 10,
    far_target: float = 1e-3,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> VerificationResult:
    """Verification on an insightface ``.bin`` (e.g. ``lfw.bin``, or facegen's export)."""
    return evaluate_verification(
        model,
        load_verification_bin(path),
        nfolds=nfolds,
        far_target=far_target,
        batch_size=batch_size,
        device=device,
    )


def evaluate_pairs(
    model: ModelOrEncoder,
    pairs_file: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    nfolds: int = 10,
    far_target: float = 1e-3,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> VerificationResult:
    """Verification on a pair list over image files (see :func:`load_pair_list`)."""
    return evaluate_verification(
        model,
        load_pair_list(pairs_file, root=root),
        nfolds=nfolds,
        far_target=far_target,
        batch_size=batch_size,
        device=device,
    )
