"""``facegen analyze --attributes``: each face's attributes in the per-image JSON and on stdout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facegen.app.cli.main import main
from tests.onnx_attribute_models import build_classifier, build_genderage

pytest.importorskip("onnx", reason="building tiny ONNX models needs the `onnx` package")


@pytest.fixture(scope="module")
def genderage_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli_attributes") / "genderage.onnx"
    build_genderage(path, dynamic_batch=True)
    return path


def test_analyze_writes_genderage_attributes(
    tmp_path: Path, t1_path: Path, genderage_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    args = ["analyze", str(t1_path), "--out", str(out), "--encoder", "none", "--no-preview"]
    assert main([*args, "--attributes", "--attribute-model", str(genderage_path)]) == 0
    rec = json.loads((out / "t1.json").read_text())
    assert len(rec["faces"]) == 6
    for f in rec["faces"]:
        attrs = f["extras"]["attributes"]
        assert attrs["gender"] in ("female", "male") and attrs["estimator"] == "genderage"
        assert isinstance(attrs["age"], float) and attrs["age"] == round(attrs["age"])
        probs = attrs["probabilities"]["gender"]
        assert set(probs) == {"female", "male"}
        assert sum(probs.values()) == pytest.approx(1, abs=2e-4)
        assert probs[attrs["gender"]] >= 0.5
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["attributes"]["estimator"] == "genderage"
    assert [a["name"] for a in manifest["attributes"]["attributes"]] == ["gender", "age"]
    assert manifest["model_files"]["attributes"] == {"genderage": str(genderage_path.absolute())}
    assert "6 face(s)" in capsys.readouterr().out


def test_analyze_json_classifier_on_stdout(tmp_path: Path, hanks_path: Path, capsys) -> None:
    build_classifier(tmp_path / "models" / "clf.onnx", outputs={"logits": 3, "age": 1}, size=48)
    cfg = {
        "model": "models/clf.onnx",
        "crop": "arcface",
        "scale": 255,
        "mean": 0.5,
        "std": 0.5,
        "attributes": [
            {"name": "group", "labels": ["a", "b", "c"], "output": "logits"},
            {"name": "age", "kind": "numeric", "output": "age", "scale": 100, "unit": "years"},
        ],
    }
    (tmp_path / "mine.json").write_text(json.dumps(cfg))
    args = ["analyze", str(hanks_path), "--json", "--encoder", "none", "--select", "largest"]
    assert main([*args, "--attributes", str(tmp_path / "mine.json")]) == 0
    (rec,) = json.loads(capsys.readouterr().out)
    (face,) = rec["faces"]
    attrs = face["extras"]["attributes"]
    assert attrs["group"] in ("a", "b", "c") and attrs["estimator"] == "mine"
    assert set(attrs["probabilities"]) == {"group"} and np.isfinite(attrs["age"])


def test_analyze_missing_attribute_model_is_one_clear_error(
    tmp_path: Path, t1_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("FACEGEN_HOME", str(tmp_path / "fg"))
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path / "if"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    out = tmp_path / "out"
    args = ["analyze", str(t1_path), "--out", str(out), "--offline", "--encoder", "none"]
    assert main([*args, "--attributes", "genderage"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("facegen: error: model 'buffalo_l/genderage.onnx' is not available")
    assert str(tmp_path / "fg" / "models" / "buffalo_l" / "genderage.onnx") in err
    assert "--attribute-model on the command line" in err and "Traceback" not in err
    assert "--detector-model" not in err and "--encoder-model" not in err  # the file's own option
    assert not out.exists()  # stopped before any output was written
    assert main([*args, "--attributes", "--attribute-model", str(tmp_path / "no.onnx")]) == 1
    assert "The explicit path does not exist" in capsys.readouterr().err
    (tmp_path / "c.json").write_text(
        json.dumps(
            {"model": "x.onnx", "crop": "box", "attributes": [{"name": "g", "labels": ["a", "b"]}]}
        )
    )
    assert main([*args, "--attributes", str(tmp_path / "c.json")]) == 1
    err = capsys.readouterr().err
    assert f"model '{tmp_path / 'x.onnx'}' is not available" in err
    assert err.count("--attribute-model") == 1


def test_analyze_attribute_options_are_checked(tmp_path: Path, t1_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["analyze", str(t1_path), "--json", "--attributes", "nope"])
    err = capsys.readouterr().err
    assert ei.value.code == 2 and "argument --attributes: must be one of genderage" in err
    with pytest.raises(SystemExit):  # the JSON classifier is chosen by its path, not its name
        main(["analyze", str(t1_path), "--json", "--attributes", "onnx-json"])
    assert "path of a classifier's .json" in capsys.readouterr().err
    code = main(["analyze", str(t1_path), "--json", "--attribute-model", "m.onnx"])
    assert code == 1 and "applies with `--attributes` only" in capsys.readouterr().err
