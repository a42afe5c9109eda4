"""`facegen anonymize` and `facegen provenance check` end to end on real photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from facegen.app.cli import main
from facegen.image_io import load_image, read_metadata, save_image


def test_anonymize_one_photo_then_check_its_provenance(
    tmp_path: Path, t1_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    assert main(["anonymize", str(t1_path), "--out", str(out), "--mode", "pixelate"]) == 0
    text = capsys.readouterr().out
    assert "6 of 6 detected face(s) anonymized" in text
    result = load_image(out / "t1.jpg")
    original = load_image(t1_path)
    assert result.shape == original.shape and not np.array_equal(result, original)
    assert read_metadata(out / "t1.jpg")["operation"] == "anonymize"
    assert main(["provenance", "check", str(out / "t1.jpg"), str(t1_path), "--json"]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert [r["synthetic"] for r in reports] == [True, False]
    assert reports[0]["watermark"]["detected"] and reports[0]["metadata"]["kind"] == "edited"
    assert reports[1]["metadata"] is None and not reports[1]["watermark"]["detected"]


def test_anonymize_folder_reports_no_face_and_resumes(
    tmp_path: Path, t1_path: Path, capsys
) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    shutil.copy(t1_path, src / "sub" / "group.jpg")
    save_image(np.full((80, 80, 3), 128, np.uint8), src / "grey.png")
    out = tmp_path / "out"
    args = ["anonymize", str(src), "--out", str(out), "--mode", "mask", "--no-watermark"]
    assert main(args) == 1  # one image had no face: reported, not copied
    text = capsys.readouterr().out
    assert "no_face  grey.png" in text and "1 anonymized (6 faces)" in text
    assert (out / "sub" / "group.jpg").is_file() and not (out / "grey.png").exists()
    assert main(args) == 1
    assert "0 anonymized (0 faces), 1 already done" in capsys.readouterr().out
    assert main(["anonymize", str(tmp_path / "missing"), "--out", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["anonymize", str(src), "--out", str(out), "--margin", "wide"])
    assert e.value.code == 2 and "fraction of the face size" in capsys.readouterr().err
