"""Demographic differentials of a face-verification set: per-group error rates at one threshold.

Inputs: the N pairs of a :class:`~facegen.training.fr.eval.VerificationSet` (their L2-normalised
embeddings, or their cosine similarities), ``issame``, and each pair's two group labels (any
strings, e.g. ``"gender=female|age=20-39"``; see :class:`PairGroups` and
:func:`load_pair_groups`). A pair is *within* group g when both images are in g, *cross-group*
otherwise. Cross-group pairs are impostors in practice; a cross-group genuine pair (one
person's photos labelled differently) is counted under ``mixed`` and said so in the notes.

**One global threshold.** A pair *matches* when its cosine similarity ``s >= τ``. FMR(τ) is the
fraction of impostor pairs that match, FNMR(τ) the fraction of genuine pairs that do not.
Unless ``threshold`` is given, τ is chosen on *all* impostor pairs (within and cross-group) for
a target FMR ``f`` (:func:`threshold_at_fmr`): with the n impostor scores sorted from high to
low (``s_1 >= s_2 >= …``) and ``k = ⌊f·n⌋`` the number of impostors that may match, τ is the
smallest threshold with FMR(τ) <= f, i.e. the next float above ``s_{k+1}``. Impostors tied with
``s_{k+1}`` are all rejected, so the achieved FMR may be below ``f``. When ``1/n > f`` (too few
impostors to measure ``f``) then k = 0 and τ lies just above the highest impostor score (FMR 0
on these pairs); the report warns. This is the rule of :func:`facegen.identity.tar_at_far`.
Every group is then measured at that same τ, as an operator deploys one threshold for everyone.
NIST FRVT Part 3: Demographic Effects (NISTIR 8280, P. Grother, M. Ngan and K. Hanaoka, 2019)
reports FMR and FNMR per demographic group at one threshold, states the differentials as
factors between groups, and reports the FMR of impostor pairs for every pair of groups (the
``cross_fmr`` matrix here).

**Per group** (within-group pairs only): genuine/impostor counts, FNMR and FMR at τ,
insightface's 10-fold accuracy and TAR@FAR (exactly
:func:`~facegen.training.fr.eval.verification_metrics` run on those pairs alone, in their
original order; NaN with the reason when they cannot form the folds), EER and AUC on cosine
similarity, and mean ± sd (``ddof=1``) of the genuine and impostor scores.

**Summary** over the groups where the rate is defined (FMR: groups with impostor pairs; FNMR:
groups with genuine pairs):

- ``fmr_ratio``, ``fnmr_ratio``: max/min over groups, the largest factor between two groups
  (NISTIR 8280's way of stating differentials). A minimum of 0 with a non-zero maximum gives
  ``inf``; all groups at 0 gives 1 (no observed differential); each case is noted.
- ``fdr``: the Fairness Discrepancy Rate (T. de Freitas Pereira and S. Marcel, "Fairness in
  Biometrics: a figure of merit to assess biometric verification systems", IEEE Transactions
  on Biometrics, Behavior, and Identity Science, 2021; arXiv:2011.02395):
  ``FDR(τ) = 1 − (α·A(τ) + (1−α)·B(τ))`` with ``A = max_{i,j} |FMR_i − FMR_j|``,
  ``B = max_{i,j} |FNMR_i − FNMR_j|``, α (``fdr_alpha``, default 0.5) the weight of false
  matches. 1 = no differential.
- ``garbe``: the Gini Aggregation Rate for Biometric Equitability (J. J. Howard, E. J. Laird,
  Y. B. Sirotin, R. E. Rubin, J. L. Tipton and A. R. Vemury, "Evaluating Proposed Fairness
  Models for Face Recognition Algorithms", arXiv:2203.05051, 2022; the measure ISO/IEC
  19795-10 takes up): ``GARBE(τ) = α·G_FMR + (1−α)·G_FNMR`` where, for the n per-group rates
  x_i, ``G = n/(n−1) · Σ_i Σ_j |x_i − x_j| / (2·n²·x̄)`` (the Gini coefficient with the
  small-sample correction n/(n−1)). α (``garbe_alpha``) weighs FMR inequality against FNMR
  inequality; the default 0.5 weighs them equally; choose it for the application. G is 0 when
  all rates are equal (also all 0, where the formula reads 0/0) and NaN for fewer than two
  groups. 0 = no differential.

With one group (or one group with a defined rate) every differential is NaN, with a note.

The report object, its files and plots live in :mod:`facegen.training.fr.bias_card`, the label
files in :mod:`facegen.training.fr.bias_groups`; the names are re-exported here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from facegen.errors import InvalidArgumentError
from facegen.identity import eer, roc_auc
from facegen.training.fr.bias_card import BiasReport, GroupStats, write_bias_report
from facegen.training.fr.bias_groups import PairGroups, load_pair_groups
from facegen.training.fr.eval import (
    ModelOrEncoder,
    VerificationResult,
    VerificationSet,
    embed_verification_set,
    verification_metrics,
)
from facegen.validate import check_int, check_number

__all__ = [
    "BiasReport",
    "GroupStats",
    "PairGroups",
    "bias_report",
    "evaluate_bias",
    "gini",
    "load_pair_groups",
    "max_min_ratio",
    "threshold_at_fmr",
    "write_bias_report",
]

logger = logging.getLogger(__name__)

#: How the threshold is chosen for a target FMR (written into every report).
THRESHOLD_RULE = (
    "smallest cosine threshold whose FMR over all impostor pairs (within and cross-group) is "
    "at most the target: with n impostor scores sorted high to low and k = floor(target * n), "
    "the next float above the (k+1)-th highest; impostors tied with it are rejected; a pair "
    "matches when its score >= threshold"
)


# --------------------------------------------------------------------------------------------
# threshold and summary measures


def threshold_at_fmr(
    impostor_scores: np.ndarray | Sequence[float], target: float
) -> tuple[float, float, str]:
    """The smallest cosine threshold τ with FMR(τ) <= ``target`` over ``impostor_scores``.

    Rule (module docstring): k = ⌊target·n⌋ (with a 1e-9 tolerance against rounding),
    τ = the next float above the (k+1)-th highest score; a pair matches when ``s >= τ``.
    Returns ``(τ, achieved FMR, warning)``; ``warning`` is ``""`` unless ``1/n > target``.
    """
    target = check_number(target, "far_target", minimum=0, maximum=1, min_open=True, max_open=True)
    s = np.sort(np.asarray(impostor_scores, np.float64).ravel())[::-1]
    n = s.size
    if not np.all(np.isfinite(s)):
        raise InvalidArgumentError("`impostor_scores` must be finite, got NaN or inf")
    if n == 0:
        raise InvalidArgumentError(
            "impostor pairs must exist to choose a threshold for a target FMR, got none; "
            "give `threshold` instead"
        )
    k = min(math.floor(target * n + 1e-9), n - 1)
    thr = float(np.nextafter(s[k], np.inf))
    achieved = float(np.mean(s >= thr))
    warning = ""
    if 1.0 / n > target:
        warning = (
            f"only {n} impostor pairs: the smallest non-zero FMR they can show is 1/{n} = "
            f"{1.0 / n:.3g} > the target {target:g}, so the threshold is set just above the "
            "highest impostor score (FMR 0 on these pairs) and estimates the target-FMR "
            f"threshold only loosely; at least {math.ceil(1.0 / target)} impostor pairs are "
            "needed to measure it"
        )
    return thr, achieved, warning


def max_min_ratio(values: Sequence[float], what: str = "rate") -> tuple[float, str]:
    """max/min of ``values`` (finite, >= 0) and a note: NaN for fewer than two values; ``inf``
    when the minimum is 0 and the maximum is not; 1 when all are 0 (no observed differential)."""
    x = np.asarray(values, np.float64)
    if x.size < 2:
        return float("nan"), f"{what} max/min needs two or more groups with a {what}, got {x.size}"
    lo, hi = float(x.min()), float(x.max())
    if hi == 0.0:
        return 1.0, f"{what} is 0 in every group: no differential can be observed at this threshold"
    if lo == 0.0:
        return float("inf"), f"{what} is 0 in at least one group: max/min reported as inf"
    return hi / lo, ""


def gini(values: Sequence[float]) -> float:
    """Gini coefficient with the small-sample correction (Howard et al. 2022, GARBE):
    ``n/(n−1) · Σ_i Σ_j |x_i − x_j| / (2·n²·x̄)`` over ``values`` (finite, >= 0).

    0 when all values are equal (including all 0, where the formula reads 0/0); NaN for fewer
    than two values.
    """
    x = np.asarray(values, np.float64).ravel()
    n = x.size
    if n < 2:
        return float("nan")
    diff = float(np.abs(x[:, None] - x[None, :]).sum())
    if diff == 0.0:
        return 0.0
    return n / (n - 1) * diff / (2.0 * n * n * float(x.mean()))


# --------------------------------------------------------------------------------------------
# the report


def _mean_sd(x: np.ndarray) -> tuple[float, float]:
    if x.size == 0:
        return float("nan"), float("nan")
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else float("nan")


def _embeddings_from_scores(scores: np.ndarray) -> np.ndarray:
    """Unit 2-D vectors whose pair cosines are ``scores``: (1, 0) and (s, √(1−s²))."""
    e = np.zeros((2 * len(scores), 2))
    e[0::2, 0] = 1.0
    e[1::2, 0] = scores
    e[1::2, 1] = np.sqrt(np.clip(1.0 - scores**2, 0.0, None))
    return e


def bias_report(
    issame: Sequence[bool] | np.ndarray,
    groups: PairGroups,
    *,
    embeddings: np.ndarray | None = None,
    scores: np.ndarray | Sequence[float] | None = None,
    far_target: float = 1e-3,
    threshold: float | None = None,
    nfolds: int = 10,
    fdr_alpha: float = 0.5,
    garbe_alpha: float = 0.5,
    name: str = "",
) -> BiasReport:
    """Per-group error rates at one global threshold, and their differentials.

    ``issame``: bool ``(N,)``. ``groups``: the pairs' group labels (:class:`PairGroups`).
    Give exactly one of ``embeddings`` (L2-normalised float ``(2N, D)`` in pair order, as
    :func:`~facegen.training.fr.eval.embed_verification_set` returns; the per-group protocol
    then runs on exactly these vectors) or ``scores`` (cosine similarities in [-1, 1],
    float ``(N,)``; the protocol then runs on unit 2-D vectors with those cosines, equal up to
    floating-point rounding). ``threshold``: τ on cosine similarity; when ``None`` it is chosen
    for ``far_target`` (:func:`threshold_at_fmr`). ``nfolds``/``far_target`` also set the
    per-group protocol (insightface: 10, 1e-3). ``fdr_alpha``/``garbe_alpha`` in [0, 1].
    """
    same = np.asarray(issame)
    if same.ndim != 1 or same.dtype != bool:
        raise InvalidArgumentError(
            f"`issame` must be a bool (N,) array, got {same.dtype} {same.shape}"
        )
    n = len(same)
    if n == 0:
        raise InvalidArgumentError("`issame` must hold at least one pair, got none")
    if not isinstance(groups, PairGroups):
        raise InvalidArgumentError(f"`groups` must be a PairGroups, got {type(groups).__name__}")
    if len(groups) != n:
        raise InvalidArgumentError(
            f"`groups` must label every pair ({n}), got labels for {len(groups)} pairs"
        )
    far_target = check_number(
        far_target, "far_target", minimum=0, maximum=1, min_open=True, max_open=True
    )
    nfolds = check_int(nfolds, "nfolds", minimum=2)
    fdr_alpha = check_number(fdr_alpha, "fdr_alpha", minimum=0, maximum=1)
    garbe_alpha = check_number(garbe_alpha, "garbe_alpha", minimum=0, maximum=1)
    emb, cos = _inputs(embeddings, scores, n)

    notes: list[str] = []
    if threshold is None:
        thr, _, warning = threshold_at_fmr(cos[~same], far_target)
        rule = f"{THRESHOLD_RULE} (target FMR {far_target:g}, {int((~same).sum())} impostors)"
        if warning:
            notes.append(warning)
    else:
        thr = check_number(threshold, "threshold")
        rule = "given by the caller; a pair matches when its score >= threshold"
    match = cos >= thr

    names = sorted(set(groups.a) | set(groups.b))
    index = {g: i for i, g in enumerate(names)}
    ia = np.array([index[g] for g in groups.a])
    ib = np.array([index[g] for g in groups.b])
    within = ia == ib

    stats = [
        _group_stats(
            g, np.flatnonzero(within & (ia == index[g])), emb, cos, same, match, nfolds, far_target
        )
        for g in names
    ]
    for s in stats:
        if s.protocol_note:
            notes.append(f"group {s.name!r}: {s.protocol_note}")

    num_groups = len(names)
    lo, hi = np.minimum(ia, ib), np.maximum(ia, ib)
    imp_counts = np.zeros((num_groups, num_groups), np.int64)
    fm_counts = np.zeros((num_groups, num_groups), np.int64)
    np.add.at(imp_counts, (lo[~same], hi[~same]), 1)
    np.add.at(fm_counts, (lo[~same], hi[~same]), match[~same].astype(np.int64))
    imp_counts = imp_counts + np.triu(imp_counts, 1).T
    fm_counts = fm_counts + np.triu(fm_counts, 1).T
    with np.errstate(invalid="ignore", divide="ignore"):
        cross_fmr = np.where(imp_counts > 0, fm_counts / np.maximum(imp_counts, 1), np.nan)

    mixed = same & ~within
    mixed_n = int(mixed.sum())
    mixed_fnmr = float((~match[mixed]).mean()) if mixed_n else float("nan")
    if mixed_n:
        notes.append(
            f"{mixed_n} genuine pair(s) join images labelled with different groups (one "
            "person's photos labelled differently?): they count in the overall FNMR and under "
            "'mixed', in no group's FNMR"
        )

    fmrs = [s.fmr for s in stats if s.num_impostor > 0]
    fnmrs = [s.fnmr for s in stats if s.num_genuine > 0]
    if num_groups == 1:
        notes.append(
            f"only one group ({names[0]!r}): differentials between groups are undefined (NaN)"
        )
    fmr_ratio, note = max_min_ratio(fmrs, "FMR")
    if note and num_groups > 1:
        notes.append(note)
    fnmr_ratio, note = max_min_ratio(fnmrs, "FNMR")
    if note and num_groups > 1:
        notes.append(note)
    fdr_a = float(max(fmrs) - min(fmrs)) if len(fmrs) >= 2 else float("nan")
    fdr_b = float(max(fnmrs) - min(fnmrs)) if len(fnmrs) >= 2 else float("nan")
    fdr = 1.0 - (fdr_alpha * fdr_a + (1.0 - fdr_alpha) * fdr_b)
    g_fmr, g_fnmr = gini(fmrs), gini(fnmrs)
    garbe = garbe_alpha * g_fmr + (1.0 - garbe_alpha) * g_fnmr
    left_out = [s.name for s in stats if s.num_genuine == 0 or s.num_impostor == 0]
    if left_out and num_groups > 1:
        notes.append(
            "groups without genuine or without impostor pairs of their own are left out of the "
            f"FNMR or FMR differentials: {', '.join(left_out)}"
        )

    n_imp = int((~same).sum())
    return BiasReport(
        name=name,
        num_pairs=n,
        num_genuine=n - n_imp,
        num_impostor=n_imp,
        threshold=float(thr),
        threshold_rule=rule,
        far_target=far_target,
        fmr=float(match[~same].mean()) if n_imp else float("nan"),
        fnmr=float((~match[same]).mean()) if n_imp < n else float("nan"),
        groups=tuple(stats),
        cross_fmr=cross_fmr,
        cross_impostors=imp_counts,
        mixed_genuine=mixed_n,
        mixed_fnmr=mixed_fnmr,
        fmr_ratio=fmr_ratio,
        fnmr_ratio=fnmr_ratio,
        fdr=float(fdr),
        fdr_alpha=fdr_alpha,
        fdr_a=fdr_a,
        fdr_b=fdr_b,
        gini_fmr=g_fmr,
        gini_fnmr=g_fnmr,
        garbe=float(garbe),
        garbe_alpha=garbe_alpha,
        nfolds=nfolds,
        notes=tuple(notes),
        scores=cos,
        issame=same.copy(),
        pair_groups=groups,
    )


def evaluate_bias(
    model: ModelOrEncoder,
    vset: VerificationSet,
    groups: PairGroups,
    *,
    nfolds: int = 10,
    far_target: float = 1e-3,
    threshold: float | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> tuple[VerificationResult, BiasReport]:
    """:func:`~facegen.training.fr.eval.evaluate_verification` of ``vset`` and its
    :func:`bias_report`, from one embedding pass (the same embeddings feed both)."""
    emb, xnorm = embed_verification_set(model, vset, batch_size=batch_size, device=device)
    res = verification_metrics(
        emb, vset.issame, nfolds=nfolds, far_target=far_target, name=vset.name, xnorm=xnorm
    )
    logger.info("%s", res.summary())
    report = bias_report(
        vset.issame,
        groups,
        embeddings=emb,
        far_target=far_target,
        threshold=threshold,
        nfolds=nfolds,
        name=vset.name,
    )
    return res, report


def _inputs(
    embeddings: np.ndarray | None, scores: np.ndarray | Sequence[float] | None, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (2N, D) float64, cosine scores (N,)) from exactly one of the two inputs."""
    if (embeddings is None) == (scores is None):
        raise InvalidArgumentError("give exactly one of `embeddings` or `scores`")
    if embeddings is not None:
        emb = np.asarray(embeddings, np.float64)
        if emb.ndim != 2 or len(emb) != 2 * n:
            raise InvalidArgumentError(
                f"`embeddings` must be (2N, D) with N = {n} pairs, got {emb.shape}"
            )
        norms = np.linalg.norm(emb, axis=1)
        if not np.all(np.isfinite(emb)) or np.any(np.abs(norms - 1.0) > 1e-3):
            raise InvalidArgumentError(
                "`embeddings` must be finite and L2-normalised (norm 1), got norms in "
                f"[{norms.min():.4g}, {norms.max():.4g}]"
            )
        return emb, np.sum(emb[0::2] * emb[1::2], 1)
    cos = np.asarray(scores, np.float64)
    if cos.shape != (n,):
        raise InvalidArgumentError(f"`scores` must be (N,) with N = {n} pairs, got {cos.shape}")
    if not np.all(np.isfinite(cos)) or np.any(np.abs(cos) > 1.0 + 1e-9):
        raise InvalidArgumentError(
            "`scores` must be cosine similarities in [-1, 1], got values in "
            f"[{cos.min():.4g}, {cos.max():.4g}]"
        )
    cos = np.clip(cos, -1.0, 1.0)
    return _embeddings_from_scores(cos), cos


def _group_stats(
    name: str,
    idx: np.ndarray,
    emb: np.ndarray,
    cos: np.ndarray,
    same: np.ndarray,
    match: np.ndarray,
    nfolds: int,
    far_target: float,
) -> GroupStats:
    s, m, c = same[idx], match[idx], cos[idx]
    ng, ni = int(s.sum()), int((~s).sum())
    fnm, fm = int((~m[s]).sum()), int(m[~s].sum())
    nan = float("nan")
    acc = acc_sd = tar = tar_sd = nan
    note = ""
    if len(idx) < nfolds:
        note = (
            f"only {len(idx)} within-group pairs; the {nfolds}-fold protocol needs at least "
            f"{nfolds} (accuracy and TAR@FAR not computed)"
        )
    else:
        rows = np.stack([2 * idx, 2 * idx + 1], 1).ravel()
        try:
            r = verification_metrics(emb[rows], s, nfolds=nfolds, far_target=far_target)
        except InvalidArgumentError as e:
            note = f"{e} (accuracy and TAR@FAR not computed)"
        else:
            acc, acc_sd, tar, tar_sd = r.accuracy, r.accuracy_std, r.tar_at_far, r.tar_at_far_std
    e = auc = nan
    if ng and ni:
        e = eer(c[s], c[~s])[0]
        auc = roc_auc(c[s], c[~s])
    gm, gsd = _mean_sd(c[s])
    im, isd = _mean_sd(c[~s])
    return GroupStats(
        name=name,
        num_pairs=len(idx),
        num_genuine=ng,
        num_impostor=ni,
        false_non_matches=fnm,
        false_matches=fm,
        fnmr=fnm / ng if ng else nan,
        fmr=fm / ni if ni else nan,
        accuracy=acc,
        accuracy_std=acc_sd,
        tar_at_far=tar,
        tar_at_far_std=tar_sd,
        eer=float(e),
        auc=float(auc),
        genuine_mean=gm,
        genuine_sd=gsd,
        impostor_mean=im,
        impostor_sd=isd,
        protocol_note=note,
    )
