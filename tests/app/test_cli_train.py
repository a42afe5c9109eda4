"""`facegen train fr` and `facegen eval fr` end to end on a small real-face dataset."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from facegen.app.cli.main import main
from facegen.image_io import load_image


def test_train_fr_then_evaluate_on_a_verification_bin(
    tmp_path: Path, orl_dir: Path, capsys
) -> None:
    from facegen.pipelines.dataset.writers import (
        DatasetSample,
        create_writers,
        write_verification_bin,
    )

    people = [f"s{k}" for k in range(10, 16)]
    data = tmp_path / "data"
    crops = {}
    with create_writers(["imagefolder"], data) as w:
        for c, p in enumerate(people):
            for k in range(1, 11):
                img = cv2.resize(load_image(orl_dir / p / f"{k}.pgm"), (112, 112))
                crops[c, k] = img
                w.write(DatasetSample(identity=c, index=k, image=img))
    pairs, same = [], []
    for c in range(len(people)):  # interleaved: every contiguous fold holds both kinds
        for k in range(1, 5):
            pairs += [(crops[c, k], crops[c, k + 5]), (crops[c, k], crops[(c + k) % 6, k + 5])]
            same += [True, False]
    write_verification_bin(tmp_path / "val.bin", pairs, same)
    cfg = tmp_path / "fr.yaml"
    cfg.write_text(
        "backbone: iresnet18\nwidth: 8\ninput_size: 56\nembedding_size: 32\nhead: cosface\n"
        "batch_size: 16\nlr: 0.05\nnum_workers: 0\nexport_onnx: true\n"
    )
    out = tmp_path / "model"
    args = ["train", "fr", str(data), "--out", str(out), "--config", str(cfg), "--max-steps", "6"]
    assert main([*args, "--val", str(tmp_path / "val.bin")]) == 0
    text = capsys.readouterr().out
    assert "6 steps" in text and "6 classes" in text
    assert (out / "model.safetensors").is_file() and (out / "model.onnx").is_file()
    assert (
        main(["eval", "fr", str(out), "--bin", str(tmp_path / "val.bin"), "--folds", "2", "--json"])
        == 0
    )
    res = json.loads(capsys.readouterr().out)[0]
    assert 0.0 <= res["accuracy"] <= 1.0 and np.isfinite(res["auc"])
    # the same protocol with facegen's dlib encoder, by name
    assert main(["eval", "fr", "dlib", "--bin", str(tmp_path / "val.bin"), "--folds", "2"]) == 0
    assert "Accuracy-Flip" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: iresnet18\nlayers: 3\n")
    assert main(["train", "fr", str(data), "--out", str(out), "--config", str(bad)]) == 1
    assert "unknown setting(s) ['layers']" in capsys.readouterr().err
    assert main(["eval", "fr", str(out)]) == 1
    assert "--bin" in capsys.readouterr().err
