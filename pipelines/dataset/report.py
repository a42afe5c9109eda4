"""Quality report of a built dataset: identity separation, consistency, verification rates.

Embeds the stored 112×112 crops with an *independent* encoder (dlib by default: it was not
used to condition the generator, so it cannot be fooled by the same features), then
measures per dataset:

* unique-identity ratio: classes whose centre is below the encoder's same-person threshold
  to every other centre;
* intra-class consistency: mean cosine of each image to its class centre;
* intra-class diversity: mean pairwise cosine *distance* within a class;
* genuine / impostor similarity distributions with ROC AUC, EER and TAR@FAR=1e-3;
* the generator-side rejection statistics from the journals.

Writes ``report/report.json``, ``report/similarity_hist.png``, ``report/contact_sheet.png``
and a dataset card ``report/README.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from facegen.analyzer import FaceAnalyzer
from facegen.errors import FacegenError, NoFaceDetectedError
from facegen.fileio import atomic_write, write_json
from facegen.identity import class_centers, cosine_similarity_matrix, eer, roc_auc, tar_at_far
from facegen.image_io import load_image, save_image
from facegen.pipelines.dataset.build import crop_path, iter_records

__all__ = ["dataset_report"]


def _journals(out: Path) -> list[dict[str, Any]]:
    """One record per identity (a ``done`` one where any journal has it)."""
    best: dict[int, dict[str, Any]] = {}
    for r in iter_records(out):
        i = int(r["identity"])
        if i not in best or (best[i]["status"] != "done" and r["status"] == "done"):
            best[i] = r
    return [best[i] for i in sorted(best)]


def _pose_spread(done: list[dict[str, Any]]) -> dict[str, float]:
    """Mean within-identity standard deviation of the measured yaw/pitch/roll (degrees)."""
    out: dict[str, float] = {}
    for angle in ("yaw", "pitch", "roll"):
        stds = [
            float(np.std(vals))
            for r in done
            for vals in [[im[angle] for im in r["images"] if angle in im]]
            if len(vals) >= 2
        ]
        if stds:
            out[f"pose_spread_{angle}"] = float(np.mean(stds))
    return out


def _pose_bands(done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per pose band: images, the share whose requested shape lay in the band, and the share
    whose generated face's measured pose (when the verifier gives 68 landmarks) did."""
    from facegen.pipelines.dataset.poses import parse_pose_band

    rows: dict[str, dict[str, Any]] = {}
    for r in done:
        for im in r["images"]:
            text = im.get("pose_band")
            if text is None:
                continue
            row = rows.setdefault(text, {"band": text, "images": 0, "met": 0, "measured": 0})
            row["images"] += 1
            row["met"] += bool(im.get("pose_band_met"))
            if "yaw" in im and "pitch" in im:
                row.setdefault("in_band", 0)
                row["measured"] += 1
                row["in_band"] += parse_pose_band(text).contains(im["yaw"], im["pitch"])
    out = []
    for row in rows.values():
        entry = {
            "band": row["band"],
            "images": row["images"],
            "requested_in_band": round(row["met"] / row["images"], 4),
        }
        if row["measured"]:
            entry["generated_in_band"] = round(row["in_band"] / row["measured"], 4)
        out.append(entry)
    return out


def _histogram_png(genuine: np.ndarray, impostor: np.ndarray, path: Path, threshold: float) -> None:
    """Genuine (green) and impostor (red) cosine histograms on [-0.2, 1], threshold in white."""
    w, h, lo, hi, bins = 600, 300, -0.2, 1.0, 60
    img = np.zeros((h, w, 3), np.uint8)
    edges = np.linspace(lo, hi, bins + 1)
    for scores, colour in ((impostor, (220, 60, 60)), (genuine, (60, 200, 90))):
        if scores.size == 0:
            continue
        counts, _ = np.histogram(np.clip(scores, lo, hi), edges)
        heights = (counts / counts.max() * (h - 20)).astype(int)
        for b, ht in enumerate(heights):
            x0, x1 = int(b * w / bins), int((b + 1) * w / bins) - 1
            region = img[h - ht : h, x0:x1]
            region[:] = np.maximum(region, np.array(colour, np.uint8) // 2 + region // 2)
    x = int((threshold - lo) / (hi - lo) * w)
    img[:, max(0, min(w - 1, x))] = 255
    save_image(img, path)


def _contact_sheet(
    out: Path, records: list[dict[str, Any]], path: Path, rows: int = 8, cols: int = 8
) -> None:
    tiles = []
    for r in records[:rows]:
        row = [load_image(crop_path(out, r["identity"], im["index"])) for im in r["images"][:cols]]
        row += [np.zeros_like(row[0])] * (cols - len(row))
        tiles.append(np.concatenate(row, axis=1))
    if tiles:
        save_image(np.concatenate(tiles, axis=0), path)


def _pair_scores(
    v: np.ndarray, labels: np.ndarray, max_pairs: int
) -> tuple[np.ndarray, np.ndarray]:
    """All genuine pairs (within classes) and at most ``max_pairs`` impostor pairs (all of
    them when there are fewer, else a seeded sample), without an N×N matrix."""
    u = v / np.linalg.norm(v, axis=1, keepdims=True)
    genuine = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) >= 2:
            s = u[idx] @ u[idx].T
            genuine.append(s[np.triu_indices(len(idx), 1)])
    n = len(u)
    n_imp = n * (n - 1) // 2 - sum(len(g) for g in genuine)
    if n_imp <= max_pairs:
        iu = np.triu_indices(n, 1)
        keep = labels[iu[0]] != labels[iu[1]]
        a, b = iu[0][keep], iu[1][keep]
    else:
        rng = np.random.default_rng(0)
        a, b = rng.integers(0, n, (2, int(max_pairs * 1.5)))
        keep = labels[a] != labels[b]
        a, b = a[keep][:max_pairs], b[keep][:max_pairs]
    impostor = np.einsum("nd,nd->n", u[a], u[b])
    return (np.concatenate(genuine) if genuine else np.zeros(0, np.float32)), impostor


def dataset_report(
    out_dir: str | Path,
    analyzer: FaceAnalyzer | None = None,
    *,
    max_pairs: int = 200_000,
    max_identities: int = 2000,
) -> dict[str, Any]:
    """Measure the dataset in ``out_dir`` (see module doc); returns the report dict.

    ``analyzer``: a FaceAnalyzer with an encoder (default: dlib, offline). Large sets are
    measured on a seeded subset of at most ``max_identities`` identities, and impostor pairs
    are subsampled to at most ``max_pairs`` (seeded); memory stays bounded either way.
    """
    out = Path(out_dir)
    recs = _journals(out)
    if not recs:
        raise FacegenError(f"{out}: no committed identities (journal/ is empty or missing)")
    done = [r for r in recs if r["status"] == "done"]
    measured = done
    if len(done) > max_identities:
        pick = np.random.default_rng(0).choice(len(done), max_identities, replace=False)
        measured = [done[k] for k in sorted(pick)]
    rejections: dict[str, int] = {}
    for r in recs:
        for rej in r["rejections"]:
            rejections[rej["reason"]] = rejections.get(rej["reason"], 0) + 1
    if analyzer is None:
        analyzer = FaceAnalyzer.from_names("dlib", None, "dlib")
    if analyzer.encoder is None:
        raise FacegenError("the dataset report needs an analyzer with an identity encoder")
    vecs, labels, undetected = _embed_crops(out, measured, analyzer)
    report: dict[str, Any] = {
        "identities_done": len(done),
        "identities_failed": len(recs) - len(done),
        "images": sum(len(r["images"]) for r in done),
        "rejections": rejections,
        "identities_measured": len(measured),
        "encoder": analyzer.encoder.encoder_id,
        "independent_encoder_missed_faces": undetected,
        **_pose_spread(done),
        **_anchor_summary(out),
    }
    from facegen.pipelines.dataset.groups import group_summary, read_groups

    groups = read_groups(out)
    if groups is not None:
        report["groups"] = group_summary(groups, [int(r["identity"]) for r in done])
    bands = _pose_bands(done)
    if bands:
        report["pose_bands"] = bands
    rdir = out / "report"
    if len(set(labels)) >= 2:
        thr = float(analyzer.encoder.same_person_threshold)
        genuine, impostor = _separation(np.stack(vecs), labels, thr, max_pairs, report)
        _histogram_png(genuine, impostor, rdir / "similarity_hist.png", thr)
    _contact_sheet(out, done, rdir / "contact_sheet.png")
    write_json(rdir / "report.json", report)
    _write_card(out, rdir / "README.md", report)
    return report


def _anchor_summary(out: Path) -> dict[str, Any]:
    """A run verified against anchors: how many identities have one, how near an anchor
    lies to its sampled vector (``anchor_target_similarity``: how faithfully the generator
    rendered the vector) and to the nearest real identity of the bank."""
    from facegen.pipelines.dataset.anchors import ANCHOR_FILE, read_anchors

    if not (out / ANCHOR_FILE).exists():
        return {}
    recs = read_anchors(out)
    found = [r for r in recs if r["status"] == "done"]
    summary: dict[str, Any] = {"anchors_decided": len(recs), "anchors_found": len(found)}
    for key, name in (
        ("target_similarity", "anchor_target_similarity_mean"),
        ("nearest_bank", "anchor_nearest_bank_mean"),
        ("nearest_anchor", "anchor_nearest_other_anchor_mean"),
    ):
        values = [r[key] for r in found if key in r]
        if values:
            summary[name] = round(float(np.mean(values)), 4)
    return summary


def _embed_crops(
    out: Path, records: list[dict[str, Any]], analyzer: FaceAnalyzer
) -> tuple[list[np.ndarray], list[int], int]:
    """The stored crops' embeddings with their identities, and how many had no face."""
    vecs, labels, undetected = [], [], 0
    for r in records:
        for im in r["images"]:
            crop = load_image(crop_path(out, r["identity"], im["index"]))
            try:
                vecs.append(analyzer.embed(crop).vector)
                labels.append(r["identity"])
            except NoFaceDetectedError:
                undetected += 1
    return vecs, labels, undetected


def _separation(
    v: np.ndarray, labels: list[int], thr: float, max_pairs: int, report: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Add the identity-separation measures of embeddings ``v`` ``(N, D)`` to ``report``;
    returns the genuine and impostor similarities."""
    lab = np.array(labels)
    names, centres = class_centers(v, labels)
    cc = cosine_similarity_matrix(centres)
    np.fill_diagonal(cc, -1)
    to_centre = np.einsum(
        "nd,nd->n",
        v / np.linalg.norm(v, axis=1, keepdims=True),
        centres[[names.index(x) for x in labels]],
    )
    genuine, impostor = _pair_scores(v, lab, max_pairs)
    report.update(
        unique_identity_ratio=float((cc.max(1) < thr).mean()),
        same_person_threshold=thr,
        intra_class_consistency=float(to_centre.mean()),
        intra_class_diversity=float(1 - genuine.mean()) if genuine.size else None,
        genuine_mean=float(genuine.mean()) if genuine.size else None,
        impostor_mean=float(impostor.mean()),
    )
    if genuine.size:
        e, e_thr = eer(genuine, impostor)
        tar, tar_thr = tar_at_far(genuine, impostor, 1e-3)
        report.update(
            roc_auc=roc_auc(genuine, impostor),
            eer=e,
            eer_threshold=e_thr,
            tar_at_far_1e3=tar,
            tar_threshold=tar_thr,
        )
    return genuine, impostor


def _write_card(out: Path, path: Path, report: dict[str, Any]) -> None:
    """The dataset card: settings, quality numbers, the plots, the licence note."""
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    lines = [
        "# Synthetic face dataset",
        "",
        "Made with facegen. Settings:",
        "",
        "```json",
        json.dumps(cfg, indent=2),
        "```",
        "",
        "## Quality",
        "",
    ]
    lines += [f"- **{k}**: {v}" for k, v in report.items() if k not in ("groups", "pose_bands")]
    if report.get("pose_bands"):
        lines += [
            "",
            "## Pose bands",
            "",
            "| band | images | requested shape in band | generated face in band |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {b['band']} | {b['images']} | {b['requested_in_band']:.2f} | "
            f"{b.get('generated_in_band', float('nan')):.2f} |"
            for b in report["pose_bands"]
        ]
    if report.get("groups"):
        lines += [
            "",
            "## Groups: targets and what was achieved",
            "",
            "Groups are the attribute estimator's labels of the identity vectors (see "
            "`groups.json`); *committed* counts identities whose images all passed.",
            "",
            "| group | target | quota | sampled | committed | committed share |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['group']} | {r['target']:.3f} | {r['quota']} | {r['sampled']} | "
            f"{r['committed']} | {r['committed_proportion']:.3f} |"
            for r in report["groups"]
        ]
    lines += [
        "",
        "![similarities](similarity_hist.png)",
        "",
        "![samples](contact_sheet.png)",
        "",
        "Licences: the images inherit the licences of the models that made them (see the "
        "preset's model cards; insightface-derived identity encoders are non-commercial).",
    ]
    with atomic_write(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
