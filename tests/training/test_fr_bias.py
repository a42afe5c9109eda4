"""Demographic bias report: threshold rule, hand-computed measures, ORL consistency, inputs, CLI."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from facegen.errors import InvalidArgumentError, MissingDependencyError
from facegen.identity import tar_at_far
from facegen.training.fr.bias import (
    PairGroups,
    bias_report,
    gini,
    load_pair_groups,
    max_min_ratio,
    threshold_at_fmr,
    write_bias_report,
)
from facegen.training.fr.eval import make_verification_pairs, verification_metrics

# ------------------------------------------------------------------------ threshold rule


def test_threshold_for_a_target_fmr_follows_the_documented_rule() -> None:
    imp = np.array([0.1, 0.9, 0.8, 0.3, 0.8, 0.7, 0.6, 0.5, 0.4, 0.2])  # n = 10
    # target 0.1: k = floor(0.1 * 10) = 1 impostor may match; sorted high to low the 2nd score
    # is 0.8, so τ is the next float above 0.8 and only 0.9 matches: FMR 1/10.
    thr, fmr, warning = threshold_at_fmr(imp, 0.1)
    assert thr == np.nextafter(0.8, 1.0) and fmr == 0.1 and warning == ""
    assert thr == tar_at_far(np.array([1.0]), imp, 0.1)[1]  # the rule of facegen.identity
    # target 0.2: k = 2; the 3rd highest is 0.8 again (tied with the 2nd): τ just above 0.8
    # rejects both 0.8s, so the achieved FMR (1/10) is below the target.
    thr, fmr, _ = threshold_at_fmr(imp, 0.2)
    assert thr == np.nextafter(0.8, 1.0) and fmr == 0.1
    # target 0.35: k = 3; the 4th highest is 0.7: 0.9, 0.8, 0.8 match: FMR 3/10.
    thr, fmr, _ = threshold_at_fmr(imp, 0.35)
    assert thr == np.nextafter(0.7, 1.0) and fmr == pytest.approx(0.3)
    # too few impostors: 1/10 > 0.05, k = 0, τ just above the highest score, warned
    thr, fmr, warning = threshold_at_fmr(imp, 0.05)
    assert thr == np.nextafter(0.9, 1.0) and fmr == 0.0
    assert "only 10 impostor pairs" in warning and "at least 20" in warning
    with pytest.raises(InvalidArgumentError, match="impostor pairs must exist"):
        threshold_at_fmr(np.zeros(0), 0.1)
    with pytest.raises(InvalidArgumentError, match="far_target"):
        threshold_at_fmr(imp, 1.0)


# ------------------------------------------------------------- hand-computed measures

# Three groups, four genuine and four impostor within-group pairs each, plus cross-group
# pairs; at τ = 0.5 a pair matches when its score >= 0.5.
HAND = {
    #       genuine scores            impostor scores
    "A": ([0.9, 0.8, 0.7, 0.4], [0.6, 0.3, 0.2, 0.1]),  # FNMR 1/4, FMR 1/4
    "B": ([0.9, 0.3, 0.2, 0.6], [0.1, 0.2, 0.0, 0.51]),  # FNMR 2/4, FMR 1/4
    "C": ([0.9, 0.8, 0.7, 0.45], [0.55, 0.7, 0.6, 0.2]),  # FNMR 1/4, FMR 3/4
}
CROSS = [("A", "B", False, 0.6), ("B", "A", False, 0.1), ("A", "C", False, 0.2)]
MIXED = [("A", "C", True, 0.3)]  # a genuine pair labelled with two groups


def _hand_pairs() -> tuple[np.ndarray, np.ndarray, PairGroups]:
    a, b, same, scores = [], [], [], []
    for g, (gen, imp) in HAND.items():
        for s_gen, s_imp in zip(gen, imp):  # interleaved genuine / impostor
            a += [g, g]
            b += [g, g]
            same += [True, False]
            scores += [s_gen, s_imp]
    for ga, gb, s, score in CROSS + MIXED:
        a.append(ga)
        b.append(gb)
        same.append(s)
        scores.append(score)
    return np.array(scores), np.array(same), PairGroups(tuple(a), tuple(b))


def test_hand_computed_rates_ratios_fdr_and_garbe() -> None:
    scores, same, groups = _hand_pairs()
    r = bias_report(same, groups, scores=scores, threshold=0.5)
    by = {g.name: g for g in r.groups}
    assert r.group_names == ["A", "B", "C"]
    assert [(by[g].fnmr, by[g].fmr) for g in "ABC"] == [(0.25, 0.25), (0.5, 0.25), (0.25, 0.75)]
    assert (by["B"].false_non_matches, by["C"].false_matches) == (2, 3)
    assert all(by[g].num_genuine == 4 and by[g].num_impostor == 4 for g in "ABC")
    # max/min: FMR 0.75 / 0.25 = 3; FNMR 0.5 / 0.25 = 2
    assert r.fmr_ratio == pytest.approx(3.0) and r.fnmr_ratio == pytest.approx(2.0)
    # FDR: A = 0.75 - 0.25 = 0.5, B = 0.5 - 0.25 = 0.25; 1 - (0.5 * 0.5 + 0.5 * 0.25) = 0.625
    assert (r.fdr_a, r.fdr_b) == (0.5, 0.25) and r.fdr == pytest.approx(0.625)
    # Gini of FMR [.25, .25, .75]: sum over ordered pairs |xi - xj| = 4 * 0.5 = 2, mean 5/12,
    #   G = 3/2 * 2 / (2 * 9 * 5/12) = 3/2 * 2 / 7.5 = 0.4
    # Gini of FNMR [.25, .5, .25]: sum = 4 * 0.25 = 1, mean 1/3, G = 3/2 * 1 / (18 / 3) = 0.25
    assert r.gini_fmr == pytest.approx(0.4) and r.gini_fnmr == pytest.approx(0.25)
    # GARBE(alpha 0.5) = 0.5 * 0.4 + 0.5 * 0.25 = 0.325
    assert r.garbe == pytest.approx(0.325)
    r25 = bias_report(same, groups, scores=scores, threshold=0.5, garbe_alpha=0.25, fdr_alpha=0.9)
    assert r25.garbe == pytest.approx(0.25 * 0.4 + 0.75 * 0.25)  # 0.2875
    assert r25.fdr == pytest.approx(1 - (0.9 * 0.5 + 0.1 * 0.25))  # 0.525
    # cross-group FMR: A-B impostors 0.6 (match) and 0.1 → 1/2; A-C: 0.2 → 0; B-C: none
    i = {g: k for k, g in enumerate(r.group_names)}
    assert r.cross_fmr[i["A"], i["B"]] == r.cross_fmr[i["B"], i["A"]] == 0.5
    assert r.cross_impostors[i["A"], i["B"]] == 2 and r.cross_fmr[i["A"], i["C"]] == 0.0
    assert math.isnan(r.cross_fmr[i["B"], i["C"]]) and r.cross_impostors[i["B"], i["C"]] == 0
    assert [r.cross_fmr[k, k] for k in range(3)] == [0.25, 0.25, 0.75]
    # the genuine A-C pair (0.3 < 0.5) is 'mixed', in the overall FNMR only
    assert r.mixed_genuine == 1 and r.mixed_fnmr == 1.0
    assert any("different groups" in n for n in r.notes)
    # overall: impostors 4 + 4 + 4 + 3 = 15, matching 1 + 1 + 3 + 1 = 6; genuine 13, 5 miss
    assert r.fmr == pytest.approx(6 / 15) and r.fnmr == pytest.approx(5 / 13)
    # group A genuine scores 0.9 0.8 0.7 0.4: mean 0.7, sd sqrt(0.14 / 3)
    assert by["A"].genuine_mean == pytest.approx(0.7)
    assert by["A"].genuine_sd == pytest.approx(math.sqrt(0.14 / 3))
    # 8 pairs cannot form 10 folds: protocol values NaN with the reason
    assert math.isnan(by["A"].accuracy) and math.isnan(by["A"].tar_at_far)
    assert "only 8 within-group pairs" in by["A"].protocol_note
    assert by["A"].eer == pytest.approx(0.25)  # 1 of 4 each way at any cut in (0.4, 0.6]
    # the report's forms
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["summary"]["fdr"] == pytest.approx(0.625)
    assert d["groups"][0]["accuracy"] == "nan" and d["cross_fmr"]["B"]["C"]["fmr"] == "nan"
    md = r.markdown()
    assert all(f"| {g} |" in md for g in "ABC") and "Fairness in Biometrics" in md
    assert "arXiv:2203.05051" in md and "NISTIR 8280" in md
    assert "A" in r.table() and "GARBE 0.3250" in r.table()


def test_threshold_chosen_on_all_impostors_of_the_hand_set() -> None:
    scores, same, groups = _hand_pairs()
    r = bias_report(same, groups, scores=scores, far_target=0.2)
    # 15 impostor scores; k = floor(0.2 * 15) = 3 may match; high to low: 0.7 0.6 0.6 0.6 …
    # the 4th is 0.6 (tied with the 2nd and 3rd): τ just above 0.6, only 0.7 matches.
    assert r.threshold == np.nextafter(0.6, 1.0)
    assert r.fmr == pytest.approx(1 / 15)
    assert "target FMR 0.2, 15 impostors" in r.threshold_rule


def test_zero_rates_single_group_and_gini_edges() -> None:
    ratio, note = max_min_ratio([0.0, 0.1], "FMR")
    assert ratio == math.inf and "reported as inf" in note
    assert max_min_ratio([0.0, 0.0], "FNMR")[0] == 1.0
    assert math.isnan(max_min_ratio([0.2], "FMR")[0])
    assert gini([0.0, 0.0, 0.0]) == 0.0 and gini([0.3, 0.3]) == 0.0
    assert math.isnan(gini([0.1]))
    # [0, 1]: sum over ordered pairs 2, mean 0.5: 2/1 * 2 / (2 * 4 * 0.5) = 1
    assert gini([0.0, 1.0]) == pytest.approx(1.0)
    scores, same, groups = _hand_pairs()
    one = PairGroups(("all",) * len(same), ("all",) * len(same))
    r = bias_report(same, one, scores=scores, threshold=0.5)
    assert len(r.groups) == 1 and r.groups[0].num_pairs == len(same)
    for v in (r.fmr_ratio, r.fnmr_ratio, r.fdr, r.garbe):
        assert math.isnan(v)
    assert any("only one group" in n for n in r.notes)
    assert r.to_dict()["summary"]["garbe"] == "nan"
    # no false match in any group: FMR max/min 1 and Gini 0, with a note
    zero = bias_report(same, groups, scores=np.where(same, scores, -0.5), threshold=0.5)
    assert zero.fmr_ratio == 1.0 and zero.gini_fmr == 0.0 and zero.fdr_a == 0.0
    assert any("FMR is 0 in every group" in n for n in zero.notes)
    # one group without false matches: FMR max/min inf
    some = np.where(same | (np.array(groups.a) != "C"), scores, -0.5)
    assert bias_report(same, groups, scores=some, threshold=0.5).fmr_ratio == math.inf


def test_bad_report_inputs() -> None:
    scores, same, groups = _hand_pairs()
    with pytest.raises(InvalidArgumentError, match="exactly one of"):
        bias_report(same, groups)
    with pytest.raises(InvalidArgumentError, match="label every pair"):
        bias_report(same[:-1], groups, scores=scores[:-1])
    with pytest.raises(InvalidArgumentError, match=r"cosine similarities in \[-1, 1\]"):
        bias_report(same, groups, scores=scores * 3)
    with pytest.raises(InvalidArgumentError, match="L2-normalised"):
        bias_report(same, groups, embeddings=np.ones((2 * len(same), 4)))
    with pytest.raises(InvalidArgumentError, match="non-empty group label"):
        PairGroups(("a", " "), ("a", "b"))


# ------------------------------------------------------------------------------ label files


def test_load_pair_groups_layouts_and_refusals(tmp_path: Path) -> None:
    same = np.array([True, False, True])
    per_pair = tmp_path / "pairs.csv"
    per_pair.write_text("a_group,b_group,issame,extra\nf,f,1,x\nf, m ,0,y\nm,m,true,z\n")
    g = load_pair_groups(per_pair, 3, issame=same)
    assert g.a == ("f", "f", "m") and g.b == ("f", "m", "m")
    per_image = tmp_path / "images.csv"
    per_image.write_text("group\nf\nf\nf\nm\nm\nm\n")
    assert load_pair_groups(per_image, 3) == g
    with pytest.raises(InvalidArgumentError, match=r"one row per pair \(4\), got 3"):
        load_pair_groups(per_pair, 4)
    with pytest.raises(InvalidArgumentError, match=r"one row per image .* = 4\), got 6"):
        load_pair_groups(per_image, 2)
    missing = tmp_path / "missing.csv"
    missing.write_text("a_group,label\nf,f\n")
    with pytest.raises(InvalidArgumentError, match=r"'a_group' and 'b_group'.*'group'"):
        load_pair_groups(missing, 1)
    empty = tmp_path / "empty.csv"
    empty.write_text("a_group,b_group\nf,f\nf,\n")
    with pytest.raises(InvalidArgumentError, match=r"empty.csv:3: `b_group` must be a non-empty"):
        load_pair_groups(empty, 2)
    with pytest.raises(InvalidArgumentError, match=r"must agree with the verification set.*line"):
        load_pair_groups(per_pair, 3, issame=np.array([True, True, True]))
    bad = tmp_path / "bad.csv"
    bad.write_text("a_group,b_group,issame\nf,f,maybe\n")
    with pytest.raises(InvalidArgumentError, match="`issame` must be 1/0"):
        load_pair_groups(bad, 1, issame=np.array([True]))
    with pytest.raises(InvalidArgumentError, match="cannot be read"):
        load_pair_groups(tmp_path / "nope.csv", 1)


# ------------------------------------------------------------------------------ writing


def test_write_report_files(tmp_path: Path) -> None:
    scores, same, groups = _hand_pairs()
    r = bias_report(same, groups, scores=scores, threshold=0.5)
    paths = write_bias_report(r, tmp_path / "out", provenance={"model": "m"})
    assert sorted(p.name for p in paths.values()) == [
        "bias.json",
        "bias.md",
        "det.png",
        "scores.png",
    ]
    for name in ("det.png", "scores.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "out" / "bias.json").read_text())
    assert data["provenance"]["model"] == "m" and "facegen_version" in data["provenance"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".part")]


def test_plots_without_matplotlib_still_write_json_and_markdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scores, same, groups = _hand_pairs()
    r = bias_report(same, groups, scores=scores, threshold=0.5)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    with pytest.raises(MissingDependencyError, match="matplotlib"):
        write_bias_report(r, tmp_path)
    assert (tmp_path / "bias.json").is_file() and (tmp_path / "bias.md").is_file()
    assert not (tmp_path / "det.png").exists()


# ------------------------------------------------------------------------------ ORL


def _orl_embeddings(orl_dir: Path, people: range) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised flip-sum dlib embeddings of 10 photos of each person, and person numbers."""
    from facegen.backends import ENCODERS
    from facegen.image_io import load_image
    from facegen.training.fr.eval import embed_flip_sum

    imgs = np.stack(
        [load_image(orl_dir / f"s{p}" / f"{k}.pgm") for p in people for k in range(1, 11)]
    )
    raw, _ = embed_flip_sum(ENCODERS.create("dlib", device="cpu"), imgs)
    return raw / np.linalg.norm(raw, axis=1, keepdims=True), np.repeat(np.array(people), 10)


def test_orl_groups_match_the_protocol_on_their_own_pairs(orl_dir: Path) -> None:
    vecs, person = _orl_embeddings(orl_dir, range(2, 14))  # 12 people, 120 photos
    pairs = make_verification_pairs(person, seed=3)
    ii = np.array([i for i, _, _ in pairs])
    jj = np.array([j for _, j, _ in pairs])
    same = np.array([s for *_, s in pairs])
    emb = np.empty((2 * len(pairs), vecs.shape[1]))
    emb[0::2], emb[1::2] = vecs[ii], vecs[jj]
    label = {p: ("number=even" if p % 2 == 0 else "number=odd") for p in person}
    groups = PairGroups(tuple(label[p] for p in person[ii]), tuple(label[p] for p in person[jj]))
    r = bias_report(same, groups, embeddings=emb, far_target=1e-2)
    assert r.group_names == ["number=even", "number=odd"] and not r.mixed_genuine
    cos = np.sum(emb[0::2] * emb[1::2], 1)
    ga, gb = np.array(groups.a), np.array(groups.b)
    for g in r.groups:
        sel = np.flatnonzero((ga == g.name) & (gb == g.name))
        rows = np.stack([2 * sel, 2 * sel + 1], 1).ravel()
        ref = verification_metrics(emb[rows], same[sel], far_target=1e-2)
        assert g.protocol_note == ""
        assert (g.accuracy, g.accuracy_std, g.tar_at_far, g.eer, g.auc) == (
            ref.accuracy,
            ref.accuracy_std,
            ref.tar_at_far,
            ref.eer,
            ref.auc,
        )
        s, c = same[sel], cos[sel]
        assert g.fnmr == np.mean(c[s] < r.threshold) and g.fmr == np.mean(c[~s] >= r.threshold)
        assert (g.num_genuine, g.num_impostor) == (int(s.sum()), int((~s).sum()))
    cross = ga != gb
    assert r.cross_fmr[0, 1] == np.mean(cos[cross] >= r.threshold)
    assert r.fmr <= 1e-2 and r.fmr == np.mean(cos[~same] >= r.threshold)
    # the same report from the scores alone: same rates, protocol equal up to rounding
    rs = bias_report(same, groups, scores=cos, far_target=1e-2)
    assert rs.threshold == r.threshold
    for a, b in zip(rs.groups, r.groups):
        assert (a.fnmr, a.fmr, a.eer) == (b.fnmr, b.fmr, b.eer)
        assert a.accuracy == pytest.approx(b.accuracy, abs=1e-9)


# ------------------------------------------------------------------------------ CLI


def test_cli_eval_fr_with_groups_writes_the_report(tmp_path: Path, orl_dir: Path, capsys) -> None:
    import cv2

    from facegen.app.cli.main import main
    from facegen.image_io import load_image
    from facegen.pipelines.dataset.writers import write_verification_bin

    people = [f"s{k}" for k in range(20, 26)]
    crops = {
        (c, k): cv2.resize(load_image(orl_dir / p / f"{k}.pgm"), (112, 112))
        for c, p in enumerate(people)
        for k in range(1, 11)
    }
    pairs, same, rows = [], [], ["a_group,b_group,issame"]
    parity = ["even", "odd"]
    for c in range(6):
        for k in range(1, 5):
            for other, s in ((c, True), ((c + k) % 6, False)):
                pairs.append((crops[c, k], crops[other, k + 5]))
                same.append(s)
                rows.append(f"parity={parity[c % 2]},parity={parity[other % 2]},{int(s)}")
    write_verification_bin(tmp_path / "val.bin", pairs, same)
    (tmp_path / "groups.csv").write_text("\n".join(rows) + "\n")
    args = ["eval", "fr", "dlib", "--bin", str(tmp_path / "val.bin"), "--folds", "2"]
    assert main([*args, "--groups", str(tmp_path / "groups.csv"), "--far", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "Accuracy-Flip" in out and "parity=even" in out and "parity=odd" in out
    assert "FDR" in out and "GARBE" in out
    folder = tmp_path / "val_bias"
    assert {p.name for p in folder.iterdir()} == {"bias.json", "bias.md", "det.png", "scores.png"}
    data = json.loads((folder / "bias.json").read_text())
    assert [g["name"] for g in data["groups"]] == ["parity=even", "parity=odd"]
    assert data["threshold"]["far_target"] == 0.05 and data["provenance"]["model"] == "dlib"
    # refusals, before any model is loaded
    two = [*args, "--bin", str(tmp_path / "val.bin"), "--groups", str(tmp_path / "groups.csv")]
    assert main(two) == 1
    assert "exactly one --bin or --pairs, got 2" in capsys.readouterr().err
    assert main([*args, "--threshold", "0.5"]) == 1
    assert "add --groups" in capsys.readouterr().err
    short = tmp_path / "short.csv"
    short.write_text("\n".join(rows[:-1]) + "\n")
    assert main([*args, "--groups", str(short)]) == 1
    assert "one row per pair (48), got 47" in capsys.readouterr().err
