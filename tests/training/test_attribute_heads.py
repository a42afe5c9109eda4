"""Attribute heads on identity vectors: training on planted attributes, the head folder
format, input refusals, labelled CSVs (embeddings files and real photos, with the embedding
cache) and ``facegen train attributes`` end to end."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from facegen.attribute_heads import AttributeHead, AttributeHeadConfig
from facegen.attributes import AttributeSpec
from facegen.embedding_io import save_embeddings
from facegen.errors import (
    DeviceNotAvailableError,
    IncompatibleEmbeddingError,
    InvalidArgumentError,
    InvalidModelError,
    ModelNotAvailableError,
)
from facegen.training.attribute_data import describe_skipped, load_labelled_csv
from facegen.training.attributes import split_rows, summarize_metrics, train_attribute_head
from facegen.types import IdentityEmbedding

ENC = "test-encoder/v1"
SPECS = (
    AttributeSpec("gender", "categorical", ("female", "male")),
    AttributeSpec("age", "numeric", unit="years"),
)


def planted(n: int, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, dict[str, list[Any]]]:
    """Unit vectors whose gender is the sign of one direction and whose age is linear in
    another (``40 + 15·sqrt(dim)·x·w``, about 40 ± 15 years) plus 2 years of noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    truth = planted_truth(x)
    age = truth["age"] + rng.normal(0, 2, n)
    return x.astype(np.float32), {"gender": truth["gender"], "age": [float(a) for a in age]}


def planted_truth(x: np.ndarray) -> dict[str, Any]:
    """The planted attributes of unit rows ``x`` (no noise)."""
    dim = x.shape[1]
    u, w = np.linalg.qr(np.random.default_rng(99).standard_normal((dim, 2)))[0].T
    return {
        "gender": list(np.where(x @ u > 0, "male", "female")),
        "age": 40 + 15 * np.sqrt(dim) * (x @ w),
    }


@pytest.fixture(scope="module")
def trained():
    x, labels = planted(1500)
    return x, labels, train_attribute_head(x, labels, SPECS, ENC, epochs=40, progress=False)


def test_head_learns_planted_attributes_and_shuffled_labels_stay_at_chance(trained) -> None:
    x, labels, res = trained
    g = res.metrics["attributes"]["gender"]["validation"]
    a = res.metrics["attributes"]["age"]["validation"]
    assert res.metrics["rows"] == {"train": 1200, "validation": 300}
    assert g["accuracy"] > 0.9 and g["balanced_accuracy"] > 0.9  # chance: 0.5
    assert a["mae"] < 5.0 and a["mae"] < 0.4 * a["baseline_mae"]  # baseline ≈ 12 years
    assert sum(g["counts"].values()) == 300
    lines = summarize_metrics(res.metrics, SPECS)
    assert "gender: accuracy" in lines[1] and "age: MAE" in lines[2] and "years" in lines[2]
    # the control: the same vectors with the labels shuffled carry no signal
    rng = np.random.default_rng(5)
    shuffled = {k: list(rng.permutation(np.asarray(v, dtype=object))) for k, v in labels.items()}
    ctrl = train_attribute_head(x, shuffled, SPECS, ENC, epochs=40, progress=False).metrics
    cg = ctrl["attributes"]["gender"]["validation"]
    ca = ctrl["attributes"]["age"]["validation"]
    assert 0.35 < cg["accuracy"] < 0.65
    assert ca["mae"] > 0.85 * ca["baseline_mae"]
    # estimates: the most probable label, probabilities summing to one, age in years
    est = res.head.predict(x[:5])
    for e in est:
        assert e.values["gender"] in ("female", "male") and e.estimator == res.head.name
        assert sum(e.probabilities["gender"].values()) == pytest.approx(1.0, abs=1e-5)
        assert isinstance(e.values["age"], float)
    assert sum(e.values["gender"] == t for e, t in zip(est, labels["gender"][:5])) >= 4


def test_training_is_deterministic_and_leaves_the_global_rng_alone() -> None:
    x, labels = planted(300, dim=16)
    state = torch.random.get_rng_state()
    kw = {"epochs": 3, "hidden": 8, "progress": False}
    a = train_attribute_head(x, labels, SPECS, ENC, seed=3, **kw).head.predict_arrays(x)
    b = train_attribute_head(x, labels, SPECS, ENC, seed=3, **kw).head.predict_arrays(x)
    c = train_attribute_head(x, labels, SPECS, ENC, seed=4, **kw).head.predict_arrays(x)
    assert torch.equal(state, torch.random.get_rng_state())
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["age"], c["age"])


def test_missing_labels_and_balanced_weights_and_linear_heads() -> None:
    x, labels = planted(400, dim=16)
    labels["gender"][:50] = [""] * 50
    labels["age"][50:100] = [float("nan")] * 50
    res = train_attribute_head(
        x, labels, SPECS, ENC, hidden=0, epochs=20, balanced=True, progress=False
    )
    counts = res.metrics["attributes"]["gender"]["train_counts"]
    val = res.metrics["attributes"]["gender"]["validation"]
    assert sum(counts.values()) + val["count"] == 350  # the 50 unlabelled rows are left out
    assert (
        res.metrics["attributes"]["age"]["train_counts"]["count"]
        + (res.metrics["attributes"]["age"]["validation"]["count"])
        == 350
    )
    assert res.head.config.kind == "linear" and "body.0.weight" not in res.head.model.state_dict()
    assert res.head.config.training["settings"]["balanced"] is True


def test_training_refuses_bad_input() -> None:
    x, labels = planted(50, dim=8)
    with pytest.raises(InvalidArgumentError, match="among \\['female', 'male'\\]"):
        train_attribute_head(x, {**labels, "gender": ["f"] * 50}, SPECS, ENC, progress=False)
    with pytest.raises(InvalidArgumentError, match="one value per vector"):
        train_attribute_head(x, {**labels, "age": [1.0]}, SPECS, ENC, progress=False)
    with pytest.raises(InvalidArgumentError, match="exactly the attributes"):
        train_attribute_head(x, {"gender": labels["gender"]}, SPECS, ENC, progress=False)
    bad = x.copy()
    bad[7, 0] = np.nan
    with pytest.raises(InvalidArgumentError, match="row\\(s\\) \\[7\\]"):
        train_attribute_head(bad, labels, SPECS, ENC, progress=False)
    with pytest.raises(IncompatibleEmbeddingError, match="unit L2 norm"):
        train_attribute_head(x * 2, labels, SPECS, ENC, progress=False)
    with pytest.raises(InvalidArgumentError, match="two different training values"):
        train_attribute_head(x, {**labels, "age": [30.0] * 50}, SPECS, ENC, progress=False)


def test_grouped_split_keeps_each_identity_on_one_side() -> None:
    groups = [f"p{i // 5}" for i in range(100)]
    train, val = split_rows(100, 0.2, seed=1, groups=groups)
    assert len(train) + len(val) == 100 and 15 <= len(val) <= 25
    assert not {groups[i] for i in train} & {groups[i] for i in val}
    assert np.array_equal(split_rows(100, 0.2, 1, groups)[1], val)  # same seed, same split


def test_save_load_round_trip_gives_identical_predictions(trained, tmp_path: Path) -> None:
    x, _, res = trained
    out = res.head.save(tmp_path / "head")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == "facegen-attribute-head" and cfg["kind"] == "mlp"
    assert cfg["encoder_id"] == ENC and cfg["dim"] == 64 and cfg["hidden"] == 256
    assert cfg["attributes"] == [s.to_dict() for s in SPECS]
    assert set(cfg["numeric_targets"]["age"]) == {"mean", "std"}
    assert cfg["facegen_version"]
    assert cfg["training"]["metrics"]["attributes"]["gender"]["validation"]["accuracy"] > 0.9
    assert sum(cfg["training"]["metrics"]["attributes"]["gender"]["train_counts"].values()) == 1200
    loaded = AttributeHead.load(out)
    a, b = res.head.predict_arrays(x), loaded.predict_arrays(x)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert [e.values for e in loaded.predict(x[:3])] == [e.values for e in res.head.predict(x[:3])]
    embs = [IdentityEmbedding(v, ENC) for v in x[:3]]
    assert [e.values for e in loaded.predict_embeddings(embs)] == [
        e.values for e in res.head.predict(x[:3])
    ]


def test_a_saved_head_drives_attribute_quota_sampling(trained, tmp_path: Path) -> None:
    """What the head is for: identities sampled to balanced groups before any image exists."""
    from facegen.attributes import Grouping
    from facegen.pipelines.attribute_quota import GroupTargets, sample_identities_by_group

    head = AttributeHead.load(trained[2].head.save(tmp_path / "head"))
    grouping = Grouping(("gender", "age"), {"age": (30.0, 50.0)})
    ids, sel = sample_identities_by_group(
        60, GroupTargets(grouping), head, dim=64, encoder_id=ENC, seed=0
    )
    assert ids.stats["achieved"] == {g: 10 for g in ids.stats["quotas"]}  # 6 groups x 10
    truth = planted_truth(ids.vectors)
    true_groups = [
        grouping.label({"gender": g, "age": float(a)})
        for g, a in zip(truth["gender"], truth["age"], strict=True)
    ]
    agree = np.mean([t == g for t, g in zip(true_groups, sel.groups, strict=True)])
    assert agree > 0.7  # six groups: chance would be about 1/6


def test_predict_refuses_other_encoders_widths_and_bad_rows(trained) -> None:
    x, _, res = trained
    head = res.head
    with pytest.raises(IncompatibleEmbeddingError, match=r"\(N, 64\).*'test-encoder/v1'"):
        head.predict(np.ones((2, 128), np.float32) / np.sqrt(128))
    with pytest.raises(IncompatibleEmbeddingError, match=r"\(N, 64\)"):
        head.predict(x[0])  # one vector, not (N, D)
    bad = x[:4].copy()
    bad[2, 5] = np.nan
    with pytest.raises(InvalidArgumentError, match=r"finite.*\[2\]"):
        head.predict(bad)
    with pytest.raises(IncompatibleEmbeddingError, match="unit L2 norm"):
        head.predict(x[:2] * 3)
    other = IdentityEmbedding(x[0], "dlib-resnet-v1")
    with pytest.raises(IncompatibleEmbeddingError, match=r"'test-encoder/v1'.*'dlib-resnet-v1'"):
        head.predict_embeddings([IdentityEmbedding(x[1], ENC), other])
    assert head.predict_embeddings([]) == [] and head.predict(x[:0]) == []
    raw = IdentityEmbedding(x[0] * 2, ENC, normalized=False)  # normalised as similarity() does
    assert head.predict_embeddings([raw])[0].values == head.predict(x[:1])[0].values
    with pytest.raises(DeviceNotAvailableError, match="`device` must be"):
        AttributeHead(head.config, device="tpu")


def test_load_names_what_is_wrong_with_a_folder(tmp_path: Path) -> None:
    cfg = AttributeHeadConfig(ENC, 8, SPECS, hidden=4, numeric_targets={"age": (40.0, 10.0)})
    good = AttributeHead(cfg).save(tmp_path / "good")
    with pytest.raises(
        ModelNotAvailableError, match=r"(?s)no such folder.*facegen train attributes"
    ):
        AttributeHead.load(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotAvailableError, match=r"config\.json is missing"):
        AttributeHead.load(empty)

    def variant(name: str, config: Any = None, weights: bytes | None = None) -> Path:
        d = tmp_path / name
        d.mkdir()
        text = (good / "config.json").read_text()
        (d / "config.json").write_text(config(json.loads(text)) if callable(config) else text)
        (d / "model.safetensors").write_bytes(
            weights if weights is not None else (good / "model.safetensors").read_bytes()
        )
        return d

    def edit(**changes: Any) -> Any:
        return lambda c: json.dumps({**c, **changes})

    with pytest.raises(InvalidModelError, match="not a readable JSON"):
        AttributeHead.load(variant("json", lambda c: "{not json"))
    with pytest.raises(InvalidModelError, match="`format` must be 'facegen-attribute-head'"):
        AttributeHead.load(variant("other", edit(format="diffusers")))
    with pytest.raises(InvalidModelError, match=r"unknown attribute head kind 'transformer'.*mlp"):
        AttributeHead.load(variant("kind", edit(kind="transformer")))
    with pytest.raises(InvalidModelError, match="'encoder_id'"):
        AttributeHead.load(
            variant(
                "nokey", lambda c: json.dumps({k: v for k, v in c.items() if k != "encoder_id"})
            )
        )
    with pytest.raises(InvalidModelError, match="not a valid safetensors"):
        AttributeHead.load(variant("corrupt", weights=b"\x10\x00\x00\x00garbage"))
    with pytest.raises(InvalidModelError, match=r"do not match config\.json.*shape"):
        AttributeHead.load(variant("width", edit(dim=16)))
    with pytest.raises(InvalidModelError, match=r"do not match config\.json.*missing heads\.race"):
        attrs = [*[s.to_dict() for s in SPECS], {"name": "race", "labels": ["a", "b"]}]
        AttributeHead.load(variant("attrs", edit(attributes=attrs)))
    pickled = variant("pickle")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ModelNotAvailableError, match=r"pytorch_model\.bin found.*safetensors only"):
        AttributeHead.load(pickled)


# --------------------------------------------------------------------------- CSV files


def test_csv_with_embedding_references_decides_and_reports_kinds(tmp_path: Path) -> None:
    x, _ = planted(6, dim=8)
    save_embeddings(tmp_path / "vecs.safetensors", [IdentityEmbedding(v, ENC) for v in x])
    (tmp_path / "labels.csv").write_text(
        "embedding,identity,gender,age,score,note\n"
        "vecs.safetensors#0,p1,female,31,1,x\n"
        "vecs.safetensors#1,p1,,nan,2,y\n"
        "vecs.safetensors#2,p2,male,,1,z\n"
        "vecs.safetensors#3,p2,male,45.5,3,w\n"
        "vecs.safetensors#4,p3,,,,\n"
        "vecs.safetensors#5,p3,female,70,2,v\n"
    )
    data = load_labelled_csv(tmp_path / "labels.csv", categorical=["score"], ignore=["note"])
    assert data.encoder_id == ENC and data.vectors.shape == (5, 8)  # row 4 has no label at all
    assert data.rows_read == 6 and data.rows_dropped == 1
    assert np.allclose(data.vectors[0], x[0]) and data.sources[0] == "vecs.safetensors#0"
    assert data.identities == ["p1", "p1", "p2", "p2", "p3"]
    assert [s.kind for s in data.specs] == ["categorical", "numeric", "categorical"]
    assert data.specs[2].labels == ("1", "2", "3")
    assert data.labels["gender"] == ["female", "", "male", "male", "female"]
    assert np.isnan(data.labels["age"][1]) and data.labels["age"][3] == 45.5
    text = "\n".join(data.decisions)
    assert "gender: categorical, female 2, male 2 (inferred: not every value is a number)" in text
    assert "age: numeric, 3 values (inferred: every value is a number" in text
    assert "--categorical age" in text and "score: categorical" in text and "as asked" in text
    # the same vectors by row number of one --embeddings file
    (tmp_path / "rows.csv").write_text("row,gender\n0,female\n3,male\n")
    rows = load_labelled_csv(tmp_path / "rows.csv", embeddings=tmp_path / "vecs.safetensors")
    assert np.allclose(rows.vectors[1], x[3]) and rows.labels == {"gender": ["female", "male"]}
    # vectors of two encoders are never mixed
    save_embeddings(tmp_path / "other.safetensors", [IdentityEmbedding(x[0], "other-encoder")])
    (tmp_path / "mixed.csv").write_text(
        "embedding,gender\nvecs.safetensors#0,female\nother.safetensors#0,male\n"
    )
    with pytest.raises(IncompatibleEmbeddingError, match=r"mixed\.csv:3: .*one encoder"):
        load_labelled_csv(tmp_path / "mixed.csv")


@pytest.mark.parametrize(
    ("text", "kwargs", "match"),
    [
        ("gender,age\nfemale,3\n", {}, "exactly one of the columns image, embedding, row"),
        ("image,embedding,g\na.png,v#0,x\n", {}, "exactly one of the columns"),
        ("embedding,age\nvecs.safetensors#0,old\n", {"numeric": ["age"]}, "line 2: 'old'"),
        ("embedding,age\nvecs.safetensors#9,3\n", {}, "row must be in \\[0, 1\\]"),
        ("embedding,age\nvecs.safetensors:0,3\n", {}, "FILE#ROW"),
        ("embedding,age\nmissing.safetensors#0,3\n", {}, "must exist"),
        ("embedding,age\nvecs.safetensors#0,3\n", {"categorical": ["sex"]}, "`categorical`"),
        ("embedding,a|b\nvecs.safetensors#0,3\n", {}, "identifier"),
        ("embedding,g\nvecs.safetensors#0,a|b\nvecs.safetensors#1,c\n", {}, "free of '\\|'"),
        ("row,g\n0,x\n", {}, "needs the embeddings file"),
        ("embedding,g\nvecs.safetensors#0,x\nvecs.safetensors#1\n", {}, ":3: a row must have 2"),
    ],
)
def test_csv_errors_name_the_problem(tmp_path: Path, text: str, kwargs: dict, match: str) -> None:
    x, _ = planted(2, dim=8)
    save_embeddings(tmp_path / "vecs.safetensors", [IdentityEmbedding(v, ENC) for v in x])
    (tmp_path / "l.csv").write_text(text)
    with pytest.raises(InvalidArgumentError, match=match):
        load_labelled_csv(tmp_path / "l.csv", **kwargs)


class CountingAnalyzer:
    """A FaceAnalyzer that counts the images it analyses."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, 0
        self.detector, self.landmarker, self.encoder = (
            inner.detector,
            inner.landmarker,
            inner.encoder,
        )

    def analyze(self, image: Any, **kw: Any) -> Any:
        self.calls += 1
        return self.inner.analyze(image, **kw)


def _photo_csv(root: Path, orl: Path, people: range, shots: range, extra: list[str]) -> Path:
    """A CSV of ORL photos (copied under ``root/photos``), labelled by a fixed rule: ``parity``
    of the person number and the number itself as ``number``; ``extra`` rows are files that
    must be skipped."""
    photos = root / "photos"
    photos.mkdir(parents=True)
    lines = ["image,identity,parity,number"]
    for p in people:
        for k in shots:
            dst = photos / f"s{p}_{k}.pgm"
            dst.write_bytes((orl / f"s{p}" / f"{k}.pgm").read_bytes())
            lines.append(f"photos/{dst.name},s{p},{'even' if p % 2 == 0 else 'odd'},{p}")
    lines += [f"photos/{name},x,odd,1" for name in extra]
    (photos / "broken.jpg").write_bytes(b"this is not a JPEG")
    from PIL import Image

    Image.new("RGB", (160, 160), (128, 128, 128)).save(photos / "blank.png")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def test_csv_with_photos_embeds_skips_and_caches(
    tmp_path: Path, orl_dir: Path, dlib_analyzer: Any
) -> None:
    extra = ["broken.jpg", "blank.png", "gone.png"]
    csv_path = _photo_csv(tmp_path, orl_dir, range(2, 12), range(1, 5), extra)
    cache = tmp_path / "out" / "embedding_cache.safetensors"
    first = CountingAnalyzer(dlib_analyzer)
    data = load_labelled_csv(csv_path, analyzer=first, cache=cache, progress=False)
    assert data.vectors.shape == (40, 128) and data.encoder_id == "dlib-resnet-v1"
    assert np.allclose(np.linalg.norm(data.vectors, axis=1), 1.0, atol=1e-5)
    assert data.rows_read == 43 and data.rows_dropped == 3 and data.images == 43
    assert first.calls == 42  # the missing file is never handed to the analyzer
    assert data.embedded == 40 and data.reused == 0
    reasons = {s.path: s.reason for s in data.skipped}
    assert reasons == {
        "photos/broken.jpg": "unreadable",
        "photos/blank.png": "no face",
        "photos/gone.png": "unreadable",
    }
    line = describe_skipped(data.skipped, data.images)
    assert line.startswith("skipped 3 of 43 images (no face: 1, unreadable: 2): photos/")
    assert "photos/blank.png (no face)" in line
    assert [s.kind for s in data.specs] == ["categorical", "numeric"]
    assert data.labels["parity"][:4] == ["even"] * 4 and data.labels["number"][4] == 3.0
    assert len(set(data.identities or [])) == 10
    # photos of one person are closer to each other than to other people's (real vectors)
    sims = data.vectors @ data.vectors.T
    assert sims[0, 1:4].mean() > sims[0, 4:].mean() + 0.05
    assert cache.is_file()

    # a second run embeds nothing new: vectors and "no face" come from the cache; only the
    # unreadable file is tried again
    again = CountingAnalyzer(dlib_analyzer)
    data2 = load_labelled_csv(csv_path, analyzer=again, cache=cache, progress=False)
    assert again.calls == 1 and data2.embedded == 0 and data2.reused == 41
    assert np.array_equal(data2.vectors, data.vectors)
    # a changed file is embedded again
    touched = tmp_path / "photos" / "s3_2.pgm"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = CountingAnalyzer(dlib_analyzer)
    data3 = load_labelled_csv(csv_path, analyzer=third, cache=cache, progress=False)
    assert third.calls == 2 and data3.embedded == 1
    assert np.allclose(data3.vectors, data.vectors, atol=1e-6)


# --------------------------------------------------------------------------- the CLI


def _train_subparsers(parser: argparse.ArgumentParser) -> Any:
    def subparsers(p: argparse.ArgumentParser) -> Any:
        return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))

    return subparsers(subparsers(parser).choices["train"])


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``facegen.app.cli.main.main`` with ``facegen train attributes`` registered the way
    ``add_train_parsers`` registers it."""
    from facegen.app.cli import main as cli_main
    from facegen.app.cli.train_attributes import add_train_attributes_parser

    original = cli_main.build_parser

    def build() -> argparse.ArgumentParser:
        parser = original()
        tsub = _train_subparsers(parser)
        if "attributes" not in tsub.choices:
            add_train_attributes_parser(tsub)
        return parser

    monkeypatch.setattr(cli_main, "build_parser", build)
    return cli_main.main


def test_cli_trains_on_photos_end_to_end(
    tmp_path: Path, orl_dir: Path, cli: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_path = _photo_csv(tmp_path, orl_dir, range(2, 6), range(1, 4), ["blank.png"])
    out = tmp_path / "head"
    args = ["train", "attributes", str(csv_path), "--out", str(out), "--encoder", "dlib"]
    code = cli([*args, "--categorical", "number", "--epochs", "20", "--hidden", "16"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "parity: categorical, even 6, odd 6 (inferred" in text
    assert "number: categorical, 2 3, 3 3, 4 3, 5 3 (as asked)" in text
    assert "photos: 13; 12 embedded now, 0 taken from the cache" in text
    assert "skipped 1 of 13 images (no face: 1): photos/blank.png (no face)" in text
    assert "12 rows used (1 dropped), 128-D vectors of dlib-resnet-v1" in text
    assert "validation: " in text and "identities held out; trained on" in text
    assert "parity: accuracy" in text and "balanced accuracy" in text
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors"}
    assert (out / "embedding_cache.safetensors").is_file()
    head = AttributeHead.load(out)
    cfg = json.loads((out / "config.json").read_text())
    assert head.encoder_id == "dlib-resnet-v1" and head.dim == 128
    assert cfg["training"]["data"] == str(csv_path)
    assert cfg["training"]["skipped_images"] == [["photos/blank.png", "no face"]]
    assert cfg["training"]["metrics"]["split"] == "identity"
    assert cfg["training"]["analysis"]["encoder"] == "dlib-resnet-v1"


def test_cli_on_embedding_rows_prints_the_validation_metrics(
    tmp_path: Path, cli: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    x, labels = planted(1000, dim=32)
    save_embeddings(tmp_path / "v.safetensors", [IdentityEmbedding(v, ENC) for v in x])
    rows = [f"{i},{g},{a:.2f}" for i, (g, a) in enumerate(zip(labels["gender"], labels["age"]))]
    (tmp_path / "l.csv").write_text("row,gender,age\n" + "\n".join(rows) + "\n")
    out = tmp_path / "head"
    argv = ["train", "attributes", str(tmp_path / "l.csv"), "--out", str(out)]
    argv += ["--embeddings", str(tmp_path / "v.safetensors"), "--numeric", "age", "--epochs", "30"]
    assert cli(argv) == 0
    text = capsys.readouterr().out
    assert "validation: 200 rows held out at random" in text and "trained on 800" in text
    assert "age: numeric, 1000 values (as asked)" in text
    metrics = json.loads((out / "config.json").read_text())["training"]["metrics"]
    assert metrics["attributes"]["gender"]["validation"]["accuracy"] > 0.9
    assert f"accuracy {metrics['attributes']['gender']['validation']['accuracy']:.3f}" in text
    assert not (out / "embedding_cache.safetensors").exists()  # no photos, no cache
    # usage errors are argparse's; data errors one line
    with pytest.raises(SystemExit) as exc:
        cli([*argv, "--val-fraction", "1.5"])
    assert exc.value.code == 2
    assert (
        cli([*argv[:5], "--embeddings", str(tmp_path / "v.safetensors"), "--numeric", "sex"]) == 1
    )
    assert "`numeric` must name attribute columns" in capsys.readouterr().err
