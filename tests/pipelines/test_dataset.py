"""Dataset building with an injected generator that returns real photos (ORL faces), verified by dlib."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from photo_generator import PhotoGenerator, load_people

from facegen.image_io import load_image
from facegen.pipelines.dataset.build import (
    DatasetSpec,
    build_dataset,
    image_seed,
    read_journal,
)
from facegen.pipelines.dataset.export import export


@pytest.fixture(scope="module")
def people(orl_dir: Path, dlib_analyzer):
    return load_people(orl_dir, dlib_analyzer)


SPEC = DatasetSpec(
    images_per_identity=3, min_similarity=0.85, max_similarity=0.9999, max_attempts=6, batch_size=2
)


def test_build_verify_retry_and_export(tmp_path: Path, people, dlib_analyzer) -> None:
    targets = np.stack([t for t, _ in people])
    gen = PhotoGenerator(people, noise_every=3)
    summary = build_dataset(tmp_path, targets, gen, dlib_analyzer, SPEC)
    assert summary.done == 3 and summary.failed == 0 and summary.images == 9
    assert summary.rejections.get("no_face", 0) > 0  # noise images were rejected and retried
    recs = list(read_journal(tmp_path / "journal" / "shard-0-of-1.jsonl"))
    assert [r["identity"] for r in recs] == [0, 1, 2]
    for r in recs:
        assert [im["index"] for im in r["images"]] == [0, 1, 2]
        assert all(
            SPEC.min_similarity <= im["similarity"] <= SPEC.max_similarity for im in r["images"]
        )
        for rej in r["rejections"]:
            assert rej["seed"] == image_seed(0, r["identity"], rej["index"], rej["attempt"])
    crop = load_image(tmp_path / "images" / "000001" / "0002.png")
    assert crop.shape == (112, 112, 3)
    files = export(tmp_path, ["wds", "rec"])
    names = {p.name for p in files}
    assert {"train.rec", "train.idx", "property"} <= names and any(
        n.endswith(".tar") for n in names
    )
    assert (tmp_path / "export" / "property").read_text().startswith("3,")


def test_identity_that_cannot_be_filled_is_reported(tmp_path: Path, people, dlib_analyzer) -> None:
    targets = np.stack([t for t, _ in people])
    strict = DatasetSpec(
        images_per_identity=2, min_similarity=0.9999, max_similarity=1.0, max_attempts=2
    )
    summary = build_dataset(tmp_path, targets[:1], PhotoGenerator(people), dlib_analyzer, strict)
    assert summary.failed == 1 and summary.done == 0
    assert summary.rejections["identity_drift"] == 4  # 2 images × 2 attempts, no endless loop
    rec = next(read_journal(tmp_path / "journal" / "shard-0-of-1.jsonl"))
    assert rec["status"] == "failed"


def test_killed_run_resumes_without_loss_or_duplicates(
    tmp_path: Path, people, dlib_analyzer
) -> None:
    targets = np.stack([t for t, _ in people])
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    build_dataset(ref_dir, targets, PhotoGenerator(people), dlib_analyzer, SPEC)
    with pytest.raises(KeyboardInterrupt):
        # 1 s per generator call: the first identity's checks finish and it is committed
        # before the crash (verification runs beside generation)
        build_dataset(
            run_dir, targets, PhotoGenerator(people, fail_after=3, delay=1.0), dlib_analyzer, SPEC
        )
    # a torn journal line (killed while writing) is ignored
    journal = run_dir / "journal" / "shard-0-of-1.jsonl"
    with open(journal, "a") as f:
        f.write('{"identity": 2, "sta')
    before = len(list(read_journal(journal)))
    assert 0 < before < 3
    summary = build_dataset(run_dir, targets, PhotoGenerator(people), dlib_analyzer, SPEC)
    assert summary.skipped_existing == before and summary.done == 3 - before
    records = [json.loads(line) for line in journal.read_text().splitlines() if line.endswith("}")]
    ids = [r["identity"] for r in records]
    assert sorted(ids) == [0, 1, 2] and len(ids) == len(set(ids))
    got = sorted(p.relative_to(run_dir) for p in (run_dir / "images").rglob("*.png"))
    want = sorted(p.relative_to(ref_dir) for p in (ref_dir / "images").rglob("*.png"))
    assert got == want and len(got) == 9
    for rel in got:
        assert np.array_equal(load_image(run_dir / rel), load_image(ref_dir / rel))


def test_shards_split_identities(tmp_path: Path, people, dlib_analyzer) -> None:
    targets = np.stack([t for t, _ in people])
    a = build_dataset(tmp_path, targets, PhotoGenerator(people), dlib_analyzer, SPEC, shard=(0, 2))
    b = build_dataset(tmp_path, targets, PhotoGenerator(people), dlib_analyzer, SPEC, shard=(1, 2))
    assert (a.done, b.done) == (2, 1)
    with pytest.raises(ValueError, match="shard"):
        build_dataset(tmp_path, targets, PhotoGenerator(people), dlib_analyzer, SPEC, shard=(2, 2))


def test_quality_report(tmp_path: Path, people, dlib_analyzer) -> None:
    from facegen.pipelines.dataset.report import dataset_report

    targets = np.stack([t for t, _ in people])
    spec = DatasetSpec(
        images_per_identity=4, min_similarity=0.85, max_similarity=0.9999, max_attempts=6
    )
    build_dataset(tmp_path, targets, PhotoGenerator(people, noise_every=4), dlib_analyzer, spec)
    rep = dataset_report(tmp_path, dlib_analyzer)
    assert rep["identities_done"] == 3 and rep["images"] == 12
    assert rep["rejections"].get("no_face", 0) > 0
    assert rep["encoder"] == "dlib-resnet-v1"
    measured = rep["images"] - rep["independent_encoder_missed_faces"]
    assert measured >= 9  # most aligned crops are found again by the independent check
    assert rep["unique_identity_ratio"] == 1.0  # three different people
    assert rep["genuine_mean"] > rep["impostor_mean"] and rep["roc_auc"] > 0.9
    assert 0 < rep["intra_class_consistency"] <= 1
    for f in ("report.json", "README.md", "similarity_hist.png", "contact_sheet.png"):
        assert (tmp_path / "report" / f).is_file()
    sheet = load_image(tmp_path / "report" / "contact_sheet.png")
    assert sheet.shape == (3 * 112, 8 * 112, 3)


def test_embedding_perturbation_schedule(tmp_path: Path, people, dlib_analyzer) -> None:
    targets = np.stack([t for t, _ in people])
    seen: list[np.ndarray] = []

    class Recording(PhotoGenerator):
        def __call__(self, vectors, seeds):
            seen.extend(vectors)
            return super().__call__(vectors, seeds)

    spec = DatasetSpec(
        images_per_identity=4,
        min_similarity=0.85,
        max_similarity=0.9999,
        perturbation=(0.0, 0.3),
        batch_size=4,
    )
    build_dataset(tmp_path, targets[:1], Recording(people), dlib_analyzer, spec)
    sims = [float(v @ targets[0] / np.linalg.norm(targets[0])) for v in seen[:4]]
    np.testing.assert_allclose(np.linalg.norm(np.stack(seen[:4]), axis=1), 1.0, atol=1e-5)
    assert sims[0] == pytest.approx(1.0, abs=1e-5) and sims[2] == pytest.approx(1.0, abs=1e-5)
    assert 0.85 < sims[1] < 0.995 and 0.85 < sims[3] < 0.995 and sims[1] != sims[3]
    with pytest.raises(ValueError, match="perturbation"):
        DatasetSpec(images_per_identity=1, perturbation=())


def test_the_builder_waits_instead_of_spinning(
    tmp_path: Path, people, dlib_analyzer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an instant generator, the builder waits for running checks; waiting on finished
    ones returned at once and spun the loop (hundreds of thousands of calls), starving the
    verification thread of the GIL."""
    import facegen.pipelines.dataset.build as ds

    calls = []
    real_wait = ds.wait

    def counting_wait(futures, **kw):  # type: ignore[no-untyped-def]
        calls.append(len(futures))
        assert all(not f.done() for f in futures) or not futures
        return real_wait(futures, **kw)

    monkeypatch.setattr(ds, "wait", counting_wait)
    targets = np.stack([t for t, _ in people])
    spec = DatasetSpec(images_per_identity=4, min_similarity=0.85, max_similarity=0.9999,
                       max_attempts=3, batch_size=1)  # fmt: skip
    summary = build_dataset(tmp_path, targets, PhotoGenerator(people), dlib_analyzer, spec)
    assert summary.images == 4 * len(targets)
    batches = 4 * len(targets) * spec.max_attempts
    assert len(calls) <= batches, len(calls)


def test_verification_in_batches_equals_one_image_at_a_time(
    tmp_path: Path, people, dlib_analyzer
) -> None:
    """A verifier without the batched entry (asked image by image) builds the same dataset."""

    class OneByOne:
        def __init__(self, analyzer) -> None:  # type: ignore[no-untyped-def]
            self.analyze = analyzer.analyze

    targets = np.stack([t for t, _ in people])
    a = build_dataset(tmp_path / "a", targets, PhotoGenerator(people, noise_every=3),
                      dlib_analyzer, SPEC)  # fmt: skip
    b = build_dataset(tmp_path / "b", targets, PhotoGenerator(people, noise_every=3),
                      OneByOne(dlib_analyzer), SPEC)  # fmt: skip
    assert (a.images, a.rejections) == (b.images, b.rejections)
    ja = [r for r in read_journal(tmp_path / "a" / "journal" / "shard-0-of-1.jsonl")]
    jb = [r for r in read_journal(tmp_path / "b" / "journal" / "shard-0-of-1.jsonl")]
    assert json.dumps(ja, sort_keys=True) == json.dumps(jb, sort_keys=True)
