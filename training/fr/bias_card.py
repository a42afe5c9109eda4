"""The demographic bias report as data and as files: :class:`BiasReport` (made by
:func:`facegen.training.fr.bias.bias_report`, where every measure is defined), its JSON form,
its Markdown card, its plots and :func:`write_bias_report`.

The plots use matplotlib (imported here lazily, drawn on an off-screen Agg canvas without
pyplot, so no global backend or state is touched):

- ``scores.png``: genuine (green) and impostor (red) cosine-similarity histograms, one panel
  per group (within-group pairs; densities, so groups of different sizes compare) and one for
  the cross-group pairs, on the same 40 bins spanning all scores, the global threshold as a
  dashed line;
- ``det.png``: a DET curve per group (FNMR against FMR over all thresholds, log-log axes),
  the global threshold's operating point marked on each. A rate of 0 cannot be drawn on a log
  axis and is drawn at the axis floor, ``0.5 / (largest pair count)``, said on the axes.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facegen.errors import InvalidArgumentError, MissingDependencyError
from facegen.fileio import atomic_write, write_json
from facegen.training.fr.bias_groups import PairGroups

__all__ = [
    "BiasReport",
    "GroupStats",
    "det_curve",
    "det_png",
    "report_markdown",
    "scores_png",
    "write_bias_report",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupStats:
    """One group's within-group pairs at the global threshold (rates are fractions in [0, 1]).

    ``fnmr``/``fmr``: NaN when the group has no genuine/impostor pairs. ``accuracy`` ±
    ``accuracy_std``, ``tar_at_far`` ± ``tar_at_far_std``: insightface's protocol on these
    pairs alone (NaN, with ``protocol_note`` saying why, when they cannot form the folds).
    ``eer``, ``auc``: on cosine similarity (NaN without both kinds). Score means/sds: cosine.
    """

    name: str
    num_pairs: int
    num_genuine: int
    num_impostor: int
    false_non_matches: int
    false_matches: int
    fnmr: float
    fmr: float
    accuracy: float
    accuracy_std: float
    tar_at_far: float
    tar_at_far_std: float
    eer: float
    auc: float
    genuine_mean: float
    genuine_sd: float
    impostor_mean: float
    impostor_sd: float
    protocol_note: str = ""


@dataclass(frozen=True)
class BiasReport:
    """Result of :func:`bias_report` (see the module docstring for every definition).

    ``threshold``: τ on cosine similarity (a pair matches when ``score >= τ``);
    ``threshold_rule``: how it was chosen. ``fmr``/``fnmr``: over all pairs at τ.
    ``cross_fmr``: float ``(G, G)`` FMR of impostor pairs joining group i and group j
    (symmetric; the diagonal is each group's ``fmr``; NaN without such pairs) and
    ``cross_impostors``: int ``(G, G)`` their counts, rows/columns in ``groups`` order.
    ``mixed_genuine``/``mixed_fnmr``: cross-group genuine pairs. ``scores``, ``issame``,
    ``pair_groups``: the inputs, kept for the plots.
    """

    name: str
    num_pairs: int
    num_genuine: int
    num_impostor: int
    threshold: float
    threshold_rule: str
    far_target: float
    fmr: float
    fnmr: float
    groups: tuple[GroupStats, ...]
    cross_fmr: np.ndarray
    cross_impostors: np.ndarray
    mixed_genuine: int
    mixed_fnmr: float
    fmr_ratio: float
    fnmr_ratio: float
    fdr: float
    fdr_alpha: float
    fdr_a: float
    fdr_b: float
    gini_fmr: float
    gini_fnmr: float
    garbe: float
    garbe_alpha: float
    nfolds: int
    notes: tuple[str, ...] = ()
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    issame: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)
    pair_groups: PairGroups | None = field(default=None, repr=False)

    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: non-finite numbers become the strings ``"nan"``, ``"inf"``, ``"-inf"``
        (``float()`` reads them back; strict JSON has no such numbers); no per-pair arrays."""
        names = self.group_names
        return {
            "name": self.name,
            "num_pairs": self.num_pairs,
            "num_genuine": self.num_genuine,
            "num_impostor": self.num_impostor,
            "num_groups": len(self.groups),
            "threshold": {
                "cosine": _num(self.threshold),
                "rule": self.threshold_rule,
                "far_target": _num(self.far_target),
                "fmr": _num(self.fmr),
                "fnmr": _num(self.fnmr),
            },
            "groups": [
                {k: _num(v) if isinstance(v, float) else v for k, v in vars(g).items()}
                for g in self.groups
            ],
            "cross_fmr": {
                names[i]: {
                    names[j]: {
                        "fmr": _num(float(self.cross_fmr[i, j])),
                        "impostors": int(self.cross_impostors[i, j]),
                    }
                    for j in range(len(names))
                }
                for i in range(len(names))
            },
            "mixed": {"genuine": self.mixed_genuine, "fnmr": _num(self.mixed_fnmr)},
            "summary": {
                "fmr_max_min_ratio": _num(self.fmr_ratio),
                "fnmr_max_min_ratio": _num(self.fnmr_ratio),
                "fdr": _num(self.fdr),
                "fdr_alpha": self.fdr_alpha,
                "fdr_A_max_fmr_difference": _num(self.fdr_a),
                "fdr_B_max_fnmr_difference": _num(self.fdr_b),
                "gini_fmr": _num(self.gini_fmr),
                "gini_fnmr": _num(self.gini_fnmr),
                "garbe": _num(self.garbe),
                "garbe_alpha": self.garbe_alpha,
            },
            "nfolds": self.nfolds,
            "notes": list(self.notes),
        }

    def table(self) -> str:
        """A fixed-width text table of the groups and the summary, for a terminal."""
        head = (
            f"{'group':<24} {'pairs':>6} {'gen':>5} {'imp':>5} {'FNMR':>8} {'FMR':>8} "
            f"{'acc':>7} {'TAR@FAR':>8} {'EER':>7}"
        )
        lines = [
            f"[{self.name}] threshold {self.threshold:.4f} (cosine; FMR {self.fmr:.4g}, "
            f"FNMR {self.fnmr:.4g} over all {self.num_pairs} pairs)",
            head,
        ]
        for g in self.groups:
            lines.append(
                f"{g.name:<24} {g.num_pairs:>6} {g.num_genuine:>5} {g.num_impostor:>5} "
                f"{_fmt(g.fnmr):>8} {_fmt(g.fmr):>8} {_fmt(g.accuracy):>7} "
                f"{_fmt(g.tar_at_far):>8} {_fmt(g.eer):>7}"
            )
        lines += [
            f"FNMR max/min {_fmt(self.fnmr_ratio)}  FMR max/min {_fmt(self.fmr_ratio)}  "
            f"FDR {_fmt(self.fdr)} (alpha {self.fdr_alpha:g})  "
            f"GARBE {_fmt(self.garbe)} (alpha {self.garbe_alpha:g})"
        ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def markdown(self) -> str:
        """A short report card (Markdown)."""
        return report_markdown(self)


def _num(x: float) -> float | str:
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def _fmt(x: float, digits: int = 4, inf: str = "inf") -> str:
    """``x`` for people: ``n/a`` for NaN, ``inf`` (or the given sign) for infinities."""
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return inf if x > 0 else f"-{inf}"
    return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"


_SOURCES = {
    "ratio": "NIST FRVT Part 3: Demographic Effects (NISTIR 8280, Grother, Ngan & Hanaoka, 2019)",
    "fdr": 'de Freitas Pereira & Marcel, "Fairness in Biometrics: a figure of merit to assess '
    'biometric verification systems", IEEE T-BIOM 2021 (arXiv:2011.02395)',
    "garbe": 'Howard, Laird, Sirotin, Rubin, Tipton & Vemury, "Evaluating Proposed Fairness '
    'Models for Face Recognition Algorithms", arXiv:2203.05051 (2022); taken up by ISO/IEC '
    "19795-10",
}


def _f(x: float, digits: int = 4) -> str:
    return _fmt(x, digits, inf="∞")


def _pm(mean: float, sd: float) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:.3f} ± {_f(sd, 3)}"


def report_markdown(r: BiasReport) -> str:
    """The report card: data, threshold, per-group table, cross-group FMR, summary, caveats."""
    names = r.group_names
    within = sum(g.num_pairs for g in r.groups)
    cross = r.num_pairs - within
    out = [f"# Demographic bias report{': ' + r.name if r.name else ''}", "", "## Data", ""]
    out.append(
        f"{r.num_pairs} pairs ({r.num_genuine} genuine, {r.num_impostor} impostor) over "
        f"{len(names)} group(s): {within} within-group pairs (both images in one group) and "
        f"{cross} cross-group pairs"
        + (f", of which {r.mixed_genuine} genuine ('mixed')" if r.mixed_genuine else "")
        + "."
    )
    out += ["", "## Threshold", ""]
    out.append(
        f"One global threshold τ = {r.threshold:.6f} on cosine similarity for every group; "
        f"a pair matches when its score ≥ τ. Chosen as: {r.threshold_rule}. Over all pairs at "
        f"τ: FMR {_f(r.fmr)}, FNMR {_f(r.fnmr)}."
    )
    far = f"TAR@FAR={r.far_target:g}"
    out += [
        "",
        "## Per group",
        "",
        "Within-group pairs only. Accuracy and TAR@FAR: insightface's "
        f"{r.nfolds}-fold protocol on the group's pairs alone (its own thresholds); FNMR and FMR: "
        "at the global τ; EER on cosine similarity; scores: mean ± sd of cosine similarity.",
        "",
        f"| group | pairs | genuine | impostor | FNMR | FMR | accuracy | {far} | EER "
        "| genuine score | impostor score |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in r.groups:
        out.append(
            f"| {g.name} | {g.num_pairs} | {g.num_genuine} | {g.num_impostor} "
            f"| {_f(g.fnmr)} ({g.false_non_matches}) | {_f(g.fmr)} ({g.false_matches}) "
            f"| {_f(g.accuracy)} | {_f(g.tar_at_far)} | {_f(g.eer)} "
            f"| {_pm(g.genuine_mean, g.genuine_sd)} | {_pm(g.impostor_mean, g.impostor_sd)} |"
        )
    if r.mixed_genuine:
        out.append(
            f"| mixed (cross-group genuine) | {r.mixed_genuine} | {r.mixed_genuine} | 0 "
            f"| {_f(r.mixed_fnmr)} | n/a | n/a | n/a | n/a | n/a | n/a |"
        )
    out += [
        "",
        "## Cross-group FMR",
        "",
        "FMR at τ of the impostor pairs joining the row's and the column's group (number of "
        "such pairs in brackets); the diagonal is each group's own FMR.",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for i, gi in enumerate(names):
        cells = [
            f"{_f(float(r.cross_fmr[i, j]))} ({int(r.cross_impostors[i, j])})"
            for j in range(len(names))
        ]
        out.append(f"| {gi} | " + " | ".join(cells) + " |")
    out += [
        "",
        "## Summary",
        "",
        f"- **FNMR max/min** {_f(r.fnmr_ratio)}, **FMR max/min** {_f(r.fmr_ratio)}: how many "
        "times more often the worst group meets an error than the best (1 = equal). "
        f"Source: {_SOURCES['ratio']}.",
        f"- **FDR** {_f(r.fdr)} (α = {r.fdr_alpha:g}; A = max FMR gap {_f(r.fdr_a)}, B = max "
        f"FNMR gap {_f(r.fdr_b)}): FDR(τ) = 1 − (α·A + (1−α)·B); 1 = no gap between any two "
        f"groups. Source: {_SOURCES['fdr']}.",
        f"- **GARBE** {_f(r.garbe)} (α = {r.garbe_alpha:g}; Gini of FMR {_f(r.gini_fmr)}, of "
        f"FNMR {_f(r.gini_fnmr)}): GARBE(τ) = α·G_FMR + (1−α)·G_FNMR with "
        "G = n/(n−1)·ΣᵢΣⱼ|xᵢ−xⱼ| / (2n²x̄) over the n groups' rates; 0 = equal rates, "
        f"larger = more unequal. Source: {_SOURCES['garbe']}.",
        "",
        "## Caveats",
        "",
    ]
    sizes = ", ".join(
        f"{g.name}: {g.num_genuine} genuine / {g.num_impostor} impostor" for g in r.groups
    )
    out.append(
        f"- Every rate is a count over a limited number of pairs ({sizes}). A rate p "
        "measured on n pairs has a binomial standard error of about √(p(1−p)/n), and 0 "
        "errors in n pairs only bound the true rate below ≈ 3/n (95 %, rule of three): small "
        "groups give wide uncertainty, and ratios of small rates (and the measures built on "
        "them) are unstable."
    )
    out.append(
        "- Group labels describe the images as labelled; the measures say nothing about groups "
        "absent from the set."
    )
    out += [f"- {n}" for n in r.notes]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# plots


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _group_pairs(r: BiasReport) -> list[tuple[str, np.ndarray]]:
    """(title, pair indices) for each group's within-group pairs, then the cross-group ones."""
    if r.pair_groups is None:
        raise InvalidArgumentError("`report` must carry its pair groups (made by bias_report)")
    a = np.asarray(r.pair_groups.a, dtype=object)
    b = np.asarray(r.pair_groups.b, dtype=object)
    out = [(g, np.flatnonzero((a == g) & (b == g))) for g in r.group_names]
    cross = np.flatnonzero(a != b)
    if cross.size:
        out.append(("cross-group", cross))
    return out


def scores_png(r: BiasReport, path: str | os.PathLike[str]) -> None:
    """Genuine/impostor cosine histograms, a panel per group (module docstring) → PNG."""
    panels = _group_pairs(r)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = _figure(4.2 * ncols, 3.0 * nrows)
    lo = min(float(r.scores.min()), r.threshold)
    hi = max(float(r.scores.max()), r.threshold)
    pad = max(hi - lo, 1e-3) * 0.02
    edges = np.linspace(lo - pad, hi + pad, 41)
    for k, (title, idx) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        s, same = r.scores[idx], r.issame[idx]
        for sel, colour, label in ((~same, "tab:red", "impostor"), (same, "tab:green", "genuine")):
            if sel.any():
                ax.hist(
                    s[sel],
                    bins=edges,
                    density=True,
                    alpha=0.5,
                    color=colour,
                    label=f"{label} ({int(sel.sum())})",
                )
        ax.axvline(r.threshold, color="k", linestyle="--", linewidth=1, label="τ")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("cosine similarity", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.suptitle(f"Score distributions per group (τ = {r.threshold:.4f})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")


def det_curve(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FMR, FNMR) at every distinct score as threshold (match when score >= threshold), plus
    the end points: float arrays, FMR decreasing, FNMR increasing."""
    g, i = np.sort(genuine), np.sort(impostor)
    thr = np.concatenate([np.unique(np.concatenate([g, i])), [np.inf]])
    fmr = 1.0 - np.searchsorted(i, thr, side="left") / i.size
    fnmr = np.searchsorted(g, thr, side="left") / g.size
    return fmr, fnmr


def det_png(r: BiasReport, path: str | os.PathLike[str]) -> None:
    """DET curves per group with the global threshold's operating points → PNG."""
    fig = _figure(6.0, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    most = max([g.num_genuine for g in r.groups] + [g.num_impostor for g in r.groups] + [1])
    floor = 0.5 / most
    drawn = 0
    for k, (g, (title, idx)) in enumerate(zip(r.groups, _group_pairs(r))):
        s, same = r.scores[idx], r.issame[idx]
        if not same.any() or same.all():
            continue
        colour = f"C{k % 10}"
        fmr, fnmr = det_curve(s[same], s[~same])
        ax.step(
            np.maximum(fmr, floor),
            np.maximum(fnmr, floor),
            where="post",
            color=colour,
            label=f"{title} (EER {g.eer:.3f})",
        )
        ax.plot([max(g.fmr, floor)], [max(g.fnmr, floor)], "o", color=colour, markersize=6)
        drawn += 1
    if drawn == 0:
        ax.text(
            0.5,
            0.5,
            "no group has both genuine and impostor pairs",
            ha="center",
            transform=ax.transAxes,
        )
    ax.axvline(
        max(r.far_target, floor),
        color="grey",
        linestyle=":",
        linewidth=1,
        label=f"target FMR {r.far_target:g}",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor * 0.8, 1.05)
    ax.set_ylim(floor * 0.8, 1.05)
    ax.set_xlabel(f"FMR (0 drawn at {floor:.2g})")
    ax.set_ylabel(f"FNMR (0 drawn at {floor:.2g})")
    ax.set_title(f"DET per group; dots: the global τ = {r.threshold:.4f}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")


# --------------------------------------------------------------------------------------------
# writing


def write_bias_report(
    report: BiasReport,
    out_dir: str | os.PathLike[str],
    *,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``bias.json``, ``bias.md``, ``scores.png`` and ``det.png`` into ``out_dir``.

    Each file is written atomically (:func:`facegen.fileio.atomic_write`). ``provenance``
    (e.g. the model and set used) is stored in the JSON with facegen's version. The plots need
    matplotlib (drawn off-screen with its Agg canvas); without it the JSON and Markdown are
    still written and :class:`MissingDependencyError` says how to get the plots.
    """
    from facegen import __version__

    out = Path(out_dir)
    data = report.to_dict()
    data["provenance"] = {"facegen_version": __version__, **dict(provenance or {})}
    paths = {"json": write_json(out / "bias.json", data)}
    with atomic_write(out / "bias.md") as tmp:
        tmp.write_text(report.markdown(), encoding="utf-8")
    paths["markdown"] = out / "bias.md"
    try:
        import matplotlib  # noqa: F401 - only to know whether the plots can be drawn
    except ImportError as e:
        raise MissingDependencyError(
            "matplotlib",
            purpose=f"the bias plots; {paths['json']} and {paths['markdown']} were written",
        ) from e
    with atomic_write(out / "scores.png") as tmp:
        scores_png(report, tmp)
    paths["scores"] = out / "scores.png"
    with atomic_write(out / "det.png") as tmp:
        det_png(report, tmp)
    paths["det"] = out / "det.png"
    logger.info("bias report written to %s", out)
    return paths
