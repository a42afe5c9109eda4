"""Dataset runs with group targets: quotas met while sampling, groups.json, per-group prompts,
pose bands, the report's achieved proportions, and the labelled evaluation-set export.

The generator is the ORL stand-in (real photos of three people); the verifier's
``min_similarity`` is set low so that any face passes (these tests are about the
bookkeeping of groups, not about identity fidelity). Attributes come from the simulated model.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from photo_generator import PhotoGenerator, load_people
from simulated_attributes import SimulatedAttributes

from facegen.errors import FacegenError
from facegen.pipelines.dataset.evalset import export_evaluation_set
from facegen.pipelines.dataset.groups import read_groups
from facegen.pipelines.dataset.poses import PoseBank, parse_pose_band
from facegen.pipelines.dataset.report import dataset_report
from facegen.pipelines.dataset.run import DatasetConfig, Worker, run_shard
from facegen.training.fr.eval import load_verification_bin, verification_metrics

ENC = "dlib-resnet-v1"
TARGETS = {
    "attributes": ["gender", "age"],
    "bins": {"age": [30, 50]},
    "targets": {
        "gender=female|age=30-49": 1,
        "gender=male|age=30-49": 1,
        "gender=female|age=50+": 1,
    },
}


@pytest.fixture(scope="module")
def people(orl_dir: Path, dlib_analyzer):
    return load_people(orl_dir, dlib_analyzer)


def _cfg(**kw) -> DatasetConfig:
    base = dict(
        identities=6,
        images_per_identity=3,
        min_similarity=-0.9,
        max_similarity=0.99999,
        attempts=2,
        batch_size=3,
        preset="photos",
        sampler="uniform",
        group_targets=TARGETS,
    )
    return DatasetConfig(**{**base, **kw})


def _worker(people, analyzer, **kw) -> Worker:
    return Worker(
        PhotoGenerator(people),
        analyzer,
        ENC,
        128,
        size=64,
        attribute_estimator=SimulatedAttributes(128, ENC),
        **kw,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory, people, dlib_analyzer) -> Path:
    out = tmp_path_factory.mktemp("groups")
    summary = run_shard(out, _cfg(), (0, 1), _worker(people, dlib_analyzer))
    assert summary.done == 6
    return out


def test_groups_file_meets_the_quotas(run: Path) -> None:
    groups = read_groups(run)
    assert groups is not None
    assert groups["quotas"] == dict.fromkeys(TARGETS["targets"], 2)
    labels = [r["group"] for r in groups["identities"]]
    assert sorted(labels) == sorted(g for g in TARGETS["targets"] for _ in range(2))
    # the labels are the estimator's on the sampled identity vectors
    from facegen.embedding_io import load_embeddings

    embs, _ = load_embeddings(run / "identities.safetensors")
    est = SimulatedAttributes(128, ENC).predict(np.stack([e.vector for e in embs]))
    from facegen.attributes import Grouping

    grouping = Grouping.from_dict(TARGETS)
    assert [grouping.label(e) for e in est] == labels
    assert groups["estimator"]["name"] == "simulated"


def test_report_shows_achieved_against_targets(run: Path) -> None:
    rep = dataset_report(run)
    rows = {r["group"]: r for r in rep["groups"]}
    assert set(rows) == set(TARGETS["targets"])
    for r in rows.values():
        assert r["target"] == pytest.approx(1 / 3, abs=1e-3)
        assert r["quota"] == 2 and r["sampled"] == 2 and r["committed"] == 2
        assert r["committed_proportion"] == pytest.approx(1 / 3, abs=1e-3)
    card = (run / "report" / "README.md").read_text()
    assert "gender=female|age=50+" in card


def test_evaluation_set_is_balanced_and_labelled(run: Path) -> None:
    files = export_evaluation_set(run, pairs_per_identity=2)
    bin_path, csv_path, info_path = files
    rows = list(csv.DictReader(csv_path.open()))
    vset = load_verification_bin(bin_path)
    assert len(rows) == len(vset.issame)
    assert [r["issame"] == "1" for r in rows] == list(vset.issame)
    groups = {int(r["identity"]): r["group"] for r in read_groups(run)["identities"]}
    info = json.loads(info_path.read_text())
    for r in rows:
        assert r["a_group"] == groups[int(r["a_identity"])]
        assert r["b_group"] == groups[int(r["b_identity"])]
        assert r["a_gender"] in ("female", "male") and float(r["a_age"]) > 0
        assert (r["a_identity"] == r["b_identity"]) == (r["issame"] == "1")
    for g in TARGETS["targets"]:
        mine = [r for r in rows if r["a_group"] == g and r["b_group"] == g]
        gen = sum(r["issame"] == "1" for r in mine)
        imp = len(mine) - gen
        assert gen == imp == 4  # 2 identities x 2 genuine pairs, as many impostors
        assert info["groups"][g]["genuine"] == 4
        # cross-group impostors: each group pair gets min genuine // (groups - 1) = 2
        assert info["groups"][g]["impostor_cross"] == 4
    cross = [r for r in rows if r["a_group"] != r["b_group"]]
    assert len(cross) == 6 and all(r["issame"] == "0" for r in cross)
    # the whole set runs through the 10-fold protocol (every fold holds both kinds)
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((2 * len(rows), 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    verification_metrics(emb, vset.issame)


def test_evaluation_set_without_groups_has_one_group(tmp_path: Path, people, dlib_analyzer):
    cfg = _cfg(identities=3, group_targets=None)
    run_shard(tmp_path, cfg, (0, 1), _worker(people, dlib_analyzer))
    _, csv_path, _ = export_evaluation_set(tmp_path, pairs_per_identity=3)
    rows = list(csv.DictReader(csv_path.open()))
    assert {r["a_group"] for r in rows} == {"all"}
    assert sum(r["issame"] == "1" for r in rows) == 9


def test_group_prompts_reach_the_generator(tmp_path: Path, people, dlib_analyzer) -> None:
    prompts = {g: f"a photo of a {g.split('|')[0][7:]} person" for g in TARGETS["targets"]}
    cfg = _cfg(identities=3, group_targets={**TARGETS, "prompts": prompts})
    w = _worker(people, dlib_analyzer, takes_prompt=True)
    run_shard(tmp_path, cfg, (0, 1), w)
    labels = [r["group"] for r in read_groups(tmp_path)["identities"]]
    seen = {c["prompt"] for c in w.generate.conditions}
    assert seen == {prompts[g] for g in labels}


def test_budget_and_missing_estimator_errors(tmp_path: Path, people, dlib_analyzer) -> None:
    rare = {"attributes": ["age"], "bins": {"age": [90]}, "targets": "balanced"}
    cfg = _cfg(identities=4, group_targets=rare, attribute_budget=400)
    with pytest.raises(ValueError, match=r"age=90\+: 0/2"):
        run_shard(tmp_path / "a", cfg, (0, 1), _worker(people, dlib_analyzer))
    plain = Worker(PhotoGenerator(people), dlib_analyzer, ENC, 128, size=64)
    with pytest.raises(FacegenError, match="attribute_head"):
        run_shard(tmp_path / "b", _cfg(), (0, 1), plain)


def test_config_refusals() -> None:
    with pytest.raises(ValueError, match="must name the grouped attributes"):
        _cfg(group_targets={"attributes": ["gender"], "targets": {"age=50+": 1}})
    with pytest.raises(ValueError, match="attribute_budget"):
        _cfg(group_targets=None, attribute_budget=100)
    with pytest.raises(ValueError, match="pose_bands"):
        _cfg(pose="bands", pose_from="x")
    with pytest.raises(FacegenError, match="pose band"):
        _cfg(pose="bands", pose_from="x", pose_bands=("yaw=10:-10",))


def test_pose_bands_draw_shapes_in_the_band(orl_dir: Path, dlib_analyzer) -> None:
    from facegen.analyzer import FaceAnalyzer

    analyzer = FaceAnalyzer.from_names("dlib", "dlib68", None)
    import cv2

    from facegen.image_io import load_image

    imgs, names = [], []
    for p in ("s2", "s5", "s9", "s14", "s20"):
        for k in (1, 4, 7):
            im = load_image(orl_dir / p / f"{k}.pgm")
            imgs.append(cv2.resize(im, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC))
            names.append(f"{p}/{k}")
    bank = PoseBank.from_images(imgs, names, analyzer)
    from facegen.pipelines.dataset.poses import _pose_angles

    yaws = [_pose_angles(s)["target_yaw"] for s in bank.landmarks]
    lo, hi = float(np.percentile(yaws, 20)), float(np.percentile(yaws, 80))
    for text in (f"yaw={lo - 5:.1f}:{lo + 2:.1f}", f"yaw={hi - 2:.1f}:{hi + 5:.1f}"):
        band = parse_pose_band(text)
        for seed in range(3):
            pts, rec = bank.sample_band(band, seed)
            assert rec["pose_band_met"], rec
            assert band.yaw[0] <= rec["target_yaw"] <= band.yaw[1]
            assert rec["target_yaw"] == _pose_angles(pts)["target_yaw"]
    # a band the references cannot reach: the closest shape, flagged
    _, rec = bank.sample_band(parse_pose_band("yaw=80:89"), 0)
    assert rec["pose_band_met"] is False


def test_cli_export_eval_set_and_report(run: Path, capsys) -> None:
    from facegen.app.cli.main import main

    assert main(["dataset", "export", str(run), "--eval-set", "--pairs-per-identity", "2"]) == 0
    out = capsys.readouterr().out
    assert "evaluation set:" in out
    for g in TARGETS["targets"]:
        assert g in out
    assert (run / "export" / "evaluation_pairs.csv").is_file()
    assert main(["dataset", "report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "gender=male|age=30-49" in out and "committed" in out


def test_cli_group_targets_file_becomes_the_setting(tmp_path: Path) -> None:
    import argparse

    import yaml

    from facegen.app.cli.dataset import _run_config
    from facegen.app.cli.main import build_parser

    f = tmp_path / "targets.yaml"
    f.write_text(yaml.safe_dump(TARGETS))
    args = build_parser().parse_args(
        [
            "dataset",
            "generate",
            "--identities",
            "6",
            "--images-per-identity",
            "2",
            "--out",
            str(tmp_path / "o"),
            "--group-targets",
            str(f),
            "--attribute-head",
            "heads",
            "--pose-from",
            str(tmp_path),
            "--pose-band",
            "yaw=-30:-10",
            "--pose-band",
            "yaw=10:30",
        ]
    )
    assert isinstance(args, argparse.Namespace)
    cfg = _run_config(args)
    assert cfg.group_targets == TARGETS
    assert cfg.attribute_head == str((Path.cwd() / "heads").resolve())
    assert cfg.pose == "bands" and cfg.pose_bands == ("yaw=-30:-10", "yaw=10:30")


class _Brightness:
    """An image estimator double: 'light' or 'dark' by the mean grey level of the face box."""

    name = "brightness"

    def __init__(self, threshold: float) -> None:
        from facegen.attributes import AttributeSpec

        self.threshold = threshold
        self.attributes = (AttributeSpec("tone", "categorical", ("dark", "light")),)
        self.calls = 0

    @staticmethod
    def level(image, face) -> float:
        x0, y0, x1, y1 = (int(v) for v in face.bbox)
        return float(image[max(y0, 0) : y1, max(x0, 0) : x1].mean())

    def estimate(self, image, faces):
        from facegen.attributes import AttributeEstimate

        self.calls += 1
        level = self.level(image, faces[0])
        return [AttributeEstimate({"tone": "light" if level > self.threshold else "dark"})]


def test_probe_images_label_candidates(people, dlib_analyzer) -> None:
    from facegen.attributes import Grouping
    from facegen.pipelines.attribute_quota import (
        GroupTargets,
        ProbeImageEstimator,
        sample_identities_by_group,
    )

    gen = PhotoGenerator(people)
    levels = sorted(
        _Brightness.level(ph[0], dlib_analyzer.analyze(ph[0], select="largest", embed=False)[0])
        for _, ph in people
    )
    est = _Brightness(threshold=float(np.mean(levels[:2])))  # one person dark, two light
    probe = ProbeImageEstimator(gen, dlib_analyzer, est, encoder_id=ENC, seed=5, batch_size=4)
    ids, sel = sample_identities_by_group(
        4,
        GroupTargets(Grouping(("tone",))),
        probe,
        dim=128,
        encoder_id=ENC,
        batch_size=8,
        max_similarity=0.5,
    )
    assert ids.stats["achieved"] == {"tone=dark": 2, "tone=light": 2}
    # every probed candidate was either estimated or had no face
    assert probe.probed >= 4 and est.calls + probe.no_face == probe.probed
    assert sorted(sel.groups) == ["tone=dark", "tone=dark", "tone=light", "tone=light"]


def test_run_with_pose_bands_reports_each_band(
    tmp_path: Path, orl_dir: Path, people, dlib_analyzer
) -> None:
    import cv2

    from facegen.image_io import load_image, save_image
    from facegen.pipelines.dataset.build import committed_identities

    refs = tmp_path / "refs"
    for p in ("s2", "s5", "s9", "s14"):
        for k in (1, 4, 7):
            im = load_image(orl_dir / p / f"{k}.pgm")
            save_image(cv2.resize(im, None, fx=2, fy=2), refs / p / f"{k}.png")
    bands = ("yaw=-90:0", "yaw=0:90")
    cfg = _cfg(
        identities=2,
        images_per_identity=4,
        group_targets=None,
        pose="bands",
        pose_from=str(refs),
        pose_bands=bands,
        batch_size=4,
    )
    w = _worker(people, dlib_analyzer, takes_control=True)
    out = tmp_path / "run"
    assert run_shard(out, cfg, (0, 1), w).done == 2
    for r in committed_identities(out):
        for im in r["images"]:
            assert im["pose_band"] == bands[im["index"] % 2]
            band = parse_pose_band(im["pose_band"])
            assert im["pose_band_met"] == band.contains(im["target_yaw"], im["target_pitch"])
    rep = dataset_report(out)
    rows = {b["band"]: b for b in rep["pose_bands"]}
    assert set(rows) == set(bands)
    assert all(b["images"] == 4 for b in rows.values())
    assert all(b["requested_in_band"] == 1.0 for b in rows.values())  # both signs in the refs
    assert all(0.0 <= b["generated_in_band"] <= 1.0 for b in rows.values())
    assert "## Pose bands" in (out / "report" / "README.md").read_text()


def test_evaluation_export_feeds_the_bias_report(run: Path, dlib_analyzer) -> None:
    """dataset with groups → --eval-set export → the bias report reads its pairs CSV."""
    from facegen.training.fr.bias import bias_report
    from facegen.training.fr.bias_groups import load_pair_groups

    bin_path, csv_path, _ = export_evaluation_set(run, pairs_per_identity=2)
    vset = load_verification_bin(bin_path)
    groups = load_pair_groups(csv_path, len(vset.issame))
    from facegen.training.fr.eval import embed_verification_set

    emb, _ = embed_verification_set(dlib_analyzer.encoder, vset)
    rep = bias_report(vset.issame, groups, embeddings=emb, far_target=0.1)
    d = rep.to_dict()
    names = {g["name"] for g in d["groups"]}
    assert set(TARGETS["targets"]) <= names
    for g in d["groups"]:
        if g["name"] in TARGETS["targets"]:
            assert g["num_genuine"] == 4 and g["num_impostor"] == 4
