"""`facegen anonymize` and `facegen provenance check` end to end on real photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from facegen.app.cli.main import main
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


def _identity_file(path: Path) -> Path:
    from facegen.pipelines.identities import sample_identities

    sample_identities(1, seed=1).save(path)
    return path


def test_swap_and_reenact_with_tiny_models(
    tmp_path: Path, t1_path: Path, astronaut, capsys
) -> None:
    """Plumbing only: tiny random pipelines make noise, but the edit is placed, masked,
    labelled and measured."""
    src = _identity_file(tmp_path / "src.safetensors")
    out = tmp_path / "swap"
    args = ["swap", "--source", str(src), "--target", str(t1_path), "--preset", "tiny"]
    assert main([*args, "--steps", "2", "--faces", "1", "--no-watermark", "--out", str(out)]) == 0
    assert "t1.jpg face 1: to source" in capsys.readouterr().out  # numbered as detected
    rep = json.loads((out / "swap_report.json").read_text())
    face = rep["images"][0]["faces"][0]
    assert face["target_similarity"]["dlib-resnet-v1"] < 1.0
    swapped = load_image(out / "t1.jpg").astype(int)
    diff = np.abs(swapped - load_image(t1_path).astype(int)).mean(axis=2)
    x1, y1, x2, y2 = (int(v) for v in face["bbox"])
    inside = diff[y1:y2, x1:x2].mean()
    outside = np.delete(diff, np.s_[max(0, y1 - 80) : y2 + 80], axis=0).mean()
    assert inside > 10 * outside  # the face region was regenerated, the rest only re-encoded
    assert read_metadata(out / "t1.jpg")["operation"] == "swap"
    save_image(astronaut, tmp_path / "astronaut.png")
    re_out = tmp_path / "re"
    re_args = ["reenact", "--source", str(tmp_path / "astronaut.png"), "--driving", str(t1_path)]
    re_args += ["--identity", str(src), "--preset", "tiny-controlnet", "--steps", "2"]
    assert main([*re_args, "--out", str(re_out)]) == 0
    assert load_image(re_out / "astronaut.png").shape == astronaut.shape
    assert main([*re_args[:-4], "--preset", "tiny", "--out", str(re_out)]) == 1
    assert "ControlNet" in capsys.readouterr().err


def test_anonymize_generate_falls_back_when_nothing_passes(
    tmp_path: Path, astronaut, capsys
) -> None:
    """Tiny models make noise: the independent verifier finds no face in any try, so the face
    is blurred instead, and the report says so."""
    save_image(astronaut, tmp_path / "astronaut.png")
    out = tmp_path / "out"
    args = ["anonymize", str(tmp_path / "astronaut.png"), "--out", str(out), "--mode", "generate"]
    args += [
        "--preset",
        "tiny-inpaint",
        "--steps",
        "2",
        "--attempts",
        "2",
        "--secret",
        "s3cret-key",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "face 0: blur" in text and "fallback: no replacement passed in 2 tries" in text
    faces = read_metadata(out / "astronaut.png")["params"]["faces"]
    assert faces[0]["requested_mode"] == "generate" and faces[0]["fallback"] is True


def test_edit_commands_bad_input(tmp_path: Path, t1_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    # the output "folder" is a file: a clear error, nothing half-written
    assert main(["anonymize", str(t1_path), "--out", str(blocker / "out")]) == 1
    assert "file" in capsys.readouterr().err
    noise = tmp_path / "noise.png"
    save_image(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8), noise)
    assert main(["anonymize", str(noise), "--out", str(tmp_path / "o")]) == 1
    assert "no face" in capsys.readouterr().err.lower()
    src = _identity_file(tmp_path / "src.safetensors")
    swap = ["swap", "--source", str(src), "--preset", "tiny", "--steps", "1"]
    assert main([*swap, "--target", str(noise), "--out", str(tmp_path / "s")]) == 1
    assert "no face" in capsys.readouterr().err.lower()  # target without faces
    assert (
        main(
            [*swap, "--target", str(t1_path), "--faces", "reference", "--out", str(tmp_path / "s")]
        )
        == 1
    )
    assert "--faces reference and --reference REF go together" in capsys.readouterr().err
    ref = tmp_path / "astro.png"
    from skimage import data

    save_image(np.ascontiguousarray(data.astronaut()), ref)
    args = [*swap, "--target", str(t1_path), "--faces", "reference", "--reference", str(ref)]
    assert main([*args, "--out", str(tmp_path / "s")]) == 1  # nobody in t1 is the astronaut
    assert "no face of the target matches" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["tiny", "tiny-controlnet", "tiny-inpaint"])
def test_a_controlnet_the_preset_would_ignore_is_refused(
    tmp_path: Path, t1_path: Path, preset: str, capsys
) -> None:
    """`--controlnet PATH` (even one that does not exist) with a preset that has no ControlNet
    to load is an error, not silently ignored."""
    src = tmp_path / "src.png"
    save_image(load_image(t1_path), src)
    args = ["--source", str(src), "--target", str(t1_path), "--preset", preset]
    args += ["--controlnet", str(tmp_path / "missing"), "--steps", "1"]
    assert main(["swap", *args, "--out", str(tmp_path / "o.png")]) == 1
    err = capsys.readouterr().err
    assert "`controlnet` must" in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.png").exists()


def test_rerunning_anonymize_on_a_finished_folder_succeeds(
    tmp_path: Path, t1_path: Path, capsys
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(t1_path, src / "t1.jpg")
    args = ["anonymize", str(src), "--out", str(tmp_path / "out"), "--mode", "blur"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0  # everything is already done: nothing to do is not an error
    assert "1 already done" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["anonymize", str(empty), "--out", str(tmp_path / "o2")]) == 1
    assert "no images found" in capsys.readouterr().err
