"""Datasets verified against anchors (``verify_against: anchor``): each identity's images are
checked against the person the generator renders for it, kept only when that person is new
(not in the identity bank) and apart from the other identities.

The stand-in generator renders every identity as *another* ORL person (the next one of
s10, s11, s12): a consistent person that is not the requested vector, the case anchors are for.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from photo_generator import PhotoGenerator, load_people, photo_worker

from facegen.errors import FacegenError, InvalidArgumentError
from facegen.identity import l2_normalize
from facegen.pipelines.dataset.anchors import (
    ANCHOR_FILE,
    anchor_seed,
    anchor_vectors,
    find_anchors,
    read_anchors,
)
from facegen.pipelines.dataset.build import DatasetSpec, build_dataset, image_seed, read_journal
from facegen.pipelines.dataset.config import DatasetConfig
from facegen.pipelines.generation.capabilities import check_dataset_defaults


class OtherPerson(PhotoGenerator):
    """Renders the identity nearest to a vector as the next person of the list (seeded
    photo); records every seed and vector asked for."""

    def __init__(self, people, **kw) -> None:
        super().__init__(people, **kw)
        self.seeds: list[int] = []
        self.vectors: list[np.ndarray] = []

    def __call__(self, vectors, seeds, conds=None):
        self.seeds += list(seeds)
        self.vectors += list(vectors)
        shifted = np.roll(self.targets, -1, axis=0)  # person k's vector → person k+1's face
        who = np.argmax(vectors @ self.targets.T, axis=1)
        return super().__call__(shifted[who], seeds, conds)


SPEC = DatasetSpec(
    images_per_identity=3, min_similarity=0.93, max_similarity=0.9999, max_attempts=3, batch_size=4
)
#: below dlib's cosine between two photos of one of these ORL people (>= 0.96), above that of
#: two of them (<= 0.90)
SEPARATION = 0.93


@pytest.fixture(scope="module")
def people(orl_dir: Path, dlib_analyzer):
    return load_people(orl_dir, dlib_analyzer)


def _targets(people) -> np.ndarray:
    return l2_normalize(np.stack([t for t, _ in people]).astype(np.float32))


def _anchors(out: Path, people, gen, analyzer, **kw):
    args = {"seed": 0, "attempts": 3, "separation": SEPARATION, **kw}
    return find_anchors(out, _targets(people), gen, analyzer, **args)


def test_images_of_a_consistent_other_person_pass_against_the_anchor_not_the_target(
    tmp_path: Path, people, dlib_analyzer
) -> None:
    targets = _targets(people)
    gen = OtherPerson(people)
    by_target = build_dataset(tmp_path / "target", targets, gen, dlib_analyzer, SPEC)
    assert by_target.done == 0 and by_target.rejections["identity_drift"] == 27  # 3 × 3 × 3

    out = tmp_path / "anchor"
    anchors = _anchors(out, people, OtherPerson(people), dlib_analyzer)
    assert [a["status"] for a in anchors] == ["done"] * 3
    assert [a["seed"] for a in anchors] == [anchor_seed(0, i, 0) for i in range(3)]
    gen = OtherPerson(people)
    summary = build_dataset(out, targets, gen, dlib_analyzer, SPEC, anchors=anchors)
    assert summary.done == 3 and summary.images == 9
    # the generator was still given the sampled vectors, with the images' seeds
    assert {image_seed(0, i, j, 0) for i in range(3) for j in range(3)} <= set(gen.seeds)
    assert set(gen.seeds) <= {image_seed(0, i, j, a) for i in range(3) for j in range(3)
                              for a in range(3)}  # fmt: skip
    assert np.abs(np.stack(gen.vectors) @ targets.T).max(1).min() > 0.9999
    vecs = anchor_vectors(out)
    for r in read_journal(out / "journal" / "shard-0-of-1.jsonl"):
        i = r["identity"]
        assert r["anchor"]["seed"] == anchors[i]["seed"]
        # each anchor is the next person: far from its own target, near the next target
        assert anchors[i]["target_similarity"] < 0.9 < float(vecs[i] @ targets[(i + 1) % 3])
        assert all(SPEC.min_similarity <= im["similarity"] for im in r["images"])
    # the exported embedding is the anchor, what the images were checked against
    export_dir = out / "export"
    from facegen.pipelines.dataset.export import export

    export(out, ["wds"])
    arrays = {}
    for shard in sorted(export_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".npy"):
                    meta = json.loads(tar.extractfile(m.name[:-4] + ".json").read())
                    buf = io.BytesIO(tar.extractfile(m).read())
                    arrays[meta["source_identity"]] = np.load(buf, allow_pickle=False)
    assert sorted(arrays) == [0, 1, 2]
    for i, v in arrays.items():
        np.testing.assert_allclose(v, vecs[i], atol=1e-6)


def test_an_anchor_in_the_bank_or_too_near_another_is_rejected_and_retried(
    tmp_path: Path, people, dlib_analyzer
) -> None:
    targets = _targets(people)
    # identity 0 renders as person 1, whose photos are in the bank: leakage on every attempt
    bank = l2_normalize(np.stack([dlib_analyzer.embed(p).vector for p in people[1][1][:3]]))
    anchors = _anchors(tmp_path, people, OtherPerson(people), dlib_analyzer, bank=bank,
                       leakage_threshold=SEPARATION)  # fmt: skip
    assert anchors[0]["status"] == "failed"
    assert [r["reason"] for r in anchors[0]["rejections"]] == ["anchor_leakage"] * 3
    assert all(r["nearest_bank"] >= SEPARATION for r in anchors[0]["rejections"])
    assert anchors[1]["status"] == anchors[2]["status"] == "done"
    summary = build_dataset(
        tmp_path, targets, OtherPerson(people), dlib_analyzer, SPEC, anchors=anchors
    )
    assert summary.done == 2 and summary.failed == 1 and summary.rejections["anchor_leakage"] == 3
    failed = [r for r in read_journal(tmp_path / "journal" / "shard-0-of-1.jsonl") if
              r["status"] == "failed"]  # fmt: skip
    assert failed[0]["identity"] == 0 and failed[0]["images"] == []

    # two identities that render as one person: the later one is refused
    twins = np.stack([targets[0], targets[0] + 0.01 * targets[2], targets[2]])
    out = tmp_path / "twins"
    anchors = find_anchors(out, twins, OtherPerson(people), dlib_analyzer, seed=0, attempts=2,
                           separation=SEPARATION)  # fmt: skip
    assert [a["status"] for a in anchors] == ["done", "failed", "done"]
    assert [r["reason"] for r in anchors[1]["rejections"]] == ["anchor_too_close"] * 2
    assert anchors[2]["nearest_anchor"] < SEPARATION


def test_an_image_that_also_matches_another_identitys_anchor_is_ambiguous(
    tmp_path: Path, people, dlib_analyzer
) -> None:
    """With a separation too lax to tell two renders of one person apart, two identities get
    anchors of the same person; their images match both anchors, and none is kept."""
    targets = _targets(people)
    twins = np.stack([targets[0], targets[0] + 0.01 * targets[2], targets[2]])
    anchors = find_anchors(tmp_path, twins, OtherPerson(people), dlib_analyzer, seed=0,
                           attempts=2, separation=0.999)  # fmt: skip
    assert [a["status"] for a in anchors] == ["done"] * 3
    assert anchors[1]["nearest_anchor"] >= SPEC.min_similarity  # one person, two anchors
    summary = build_dataset(tmp_path, twins, OtherPerson(people), dlib_analyzer, SPEC,
                            anchors=anchors)  # fmt: skip
    assert (summary.done, summary.failed) == (1, 2) and summary.rejections["ambiguous"] >= 6
    for r in read_journal(tmp_path / "journal" / "shard-0-of-1.jsonl"):
        assert (r["status"] == "done") == (r["identity"] == 2)
        for im in r["images"]:  # kept: its own anchor only
            assert im["rival_similarity"] < SPEC.min_similarity <= im["similarity"]
        for rej in r["rejections"]:
            if rej["reason"] == "ambiguous":
                assert rej["rival_similarity"] >= SPEC.min_similarity


def _same(got: list[dict], want: list[dict]) -> None:
    """The same decisions (identity, status, attempt, seed, rejection reasons); vectors and
    similarities equal up to float32 rounding (an embedding batch of another size may differ
    in the last bits)."""
    assert len(got) == len(want)
    for a, b in zip(got, want):
        keys = ("identity", "status", "attempt", "seed")
        assert [a.get(k) for k in keys] == [b.get(k) for k in keys]
        assert [r["reason"] for r in a["rejections"]] == [r["reason"] for r in b["rejections"]]
        if "vector" in b:
            np.testing.assert_allclose(a["vector"], b["vector"], atol=1e-5)


def test_anchors_resume_after_a_kill_and_do_not_depend_on_batching(
    tmp_path: Path, people, dlib_analyzer
) -> None:
    ref = _anchors(tmp_path / "ref", people, OtherPerson(people), dlib_analyzer, batch_size=3)
    one_by_one = _anchors(tmp_path / "one", people, OtherPerson(people), dlib_analyzer,
                          batch_size=1)  # fmt: skip
    _same(one_by_one, ref)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _anchors(out, people, OtherPerson(people, fail_after=2), dlib_analyzer, batch_size=1)
    assert len(read_anchors(out)) == 2
    with open(out / ANCHOR_FILE, "a") as f:
        f.write('{"identity": 2, "status": "do')  # a torn line: the kill came mid-write
    gen = OtherPerson(people)
    _same(_anchors(out, people, gen, dlib_analyzer, batch_size=1), ref)
    assert gen.seeds == [anchor_seed(0, 2, 0)]  # only the undecided identity was rendered
    gen = OtherPerson(people)
    _same(_anchors(out, people, gen, dlib_analyzer), ref)
    assert gen.seeds == []
    with pytest.raises(FacegenError, match="this run has 2 identities"):
        find_anchors(out, _targets(people)[:2], gen, dlib_analyzer, seed=0, attempts=3,
                     separation=SEPARATION)  # fmt: skip
    lines = (out / ANCHOR_FILE).read_text().splitlines()
    (out / ANCHOR_FILE).write_text("\n".join([lines[1], lines[0], lines[2]]) + "\n")
    with pytest.raises(FacegenError, match="damaged"):
        read_anchors(out)


def test_verify_against_is_a_content_setting_the_preset_may_recommend(tmp_path: Path) -> None:
    cfg = DatasetConfig(identities=3, images_per_identity=2, preset="x")
    assert cfg.resolved(None).verify_against == "target"
    assert cfg.resolved({"verify_against": "anchor"}).verify_against == "anchor"
    chosen = DatasetConfig(identities=3, images_per_identity=2, preset="x", verify_against="target")
    assert chosen.resolved({"verify_against": "anchor"}).verify_against == "target"
    assert "verify_against" in cfg.identity_dict()
    with pytest.raises(InvalidArgumentError, match="verify_against"):
        DatasetConfig(identities=3, images_per_identity=2, verify_against="centroid")
    check_dataset_defaults({"verify_against": "anchor", "min_similarity": 0.9})
    with pytest.raises(InvalidArgumentError, match="verify_against"):
        check_dataset_defaults({"verify_against": 0.5})
    with pytest.raises(InvalidArgumentError, match="min_similarity"):
        check_dataset_defaults({"min_similarity": "anchor"})


def test_run_shards_share_one_set_of_anchors_and_refuse_a_change_of_mode(tmp_path: Path) -> None:
    """Through ``run_shard`` (what the CLI, accelerate and Ray run): the first shard finds every
    identity's anchor, the second reads them; a folder made against targets (a config recorded
    before the setting existed included) is not resumed against anchors."""
    from facegen.pipelines.dataset.run import run_shard

    cfg = DatasetConfig(identities=3, images_per_identity=2, preset="photos",
                        min_similarity=0.93, max_similarity=0.9999, verify_against="anchor",
                        identity_separation=SEPARATION, leakage_check=False)  # fmt: skip
    out = tmp_path / "ds"
    first = photo_worker(cfg)
    run_shard(out, cfg, (0, 2), first)
    assert len(read_anchors(out)) == 3
    before = (out / ANCHOR_FILE).read_bytes()
    second = photo_worker(cfg)
    s = run_shard(out, cfg, (1, 2), second)
    assert (out / ANCHOR_FILE).read_bytes() == before
    has_anchor = read_anchors(out)[1]["status"] == "done"
    assert second.generate.calls == int(has_anchor)  # its identity's images only
    assert (s.done + s.failed, s.images > 0) == (1, has_anchor)
    assert json.loads((out / "config.json").read_text())["verify_against"] == "anchor"

    old = tmp_path / "old"
    target_cfg = DatasetConfig(identities=3, images_per_identity=2, preset="photos",
                               leakage_check=False)  # fmt: skip
    run_shard(old, target_cfg, (0, 1), photo_worker(target_cfg))
    recorded = json.loads((old / "config.json").read_text())
    del recorded["verify_against"]  # as written before the setting existed
    (old / "config.json").write_text(json.dumps(recorded))
    assert run_shard(old, target_cfg, (0, 1), photo_worker(target_cfg)).skipped_existing == 3
    with pytest.raises(FacegenError, match="verify_against"):
        run_shard(old, replace(target_cfg, verify_against="anchor"), (0, 1),
                  photo_worker(target_cfg))  # fmt: skip
