"""The `facegen` command line, run in-process and as a real subprocess, on real photos."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from facegen.app.cli.main import main
from facegen.embedding_io import load_embeddings
from facegen.image_io import load_image


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["--version"])
    assert ei.value.code == 0 and "facegen" in capsys.readouterr().out
    assert main([]) == 2


def test_analyze_group_photo_writes_everything(tmp_path: Path, t1_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["analyze", str(t1_path), "--out", str(out)]) == 0
    rec = json.loads((out / "t1.json").read_text())
    assert len(rec["faces"]) == 6
    for f in rec["faces"]:
        x1, y1, x2, y2 = f["bbox"]
        pts = np.array(f["landmarks"])
        assert pts.shape == (68, 2) and f["landmark_scheme"] == "ibug68"
        pad = 0.25 * (x2 - x1)
        assert (pts[:, 0] > x1 - pad).all() and (pts[:, 0] < x2 + pad).all()
        assert (pts[:, 1] > y1 - pad).all() and (pts[:, 1] < y2 + pad).all()
        assert load_image(out / f["crop"]).shape == (112, 112, 3)
        assert f["embedding"]["encoder_id"] == "dlib-resnet-v1"
    embs, names = load_embeddings(out / "t1.safetensors")
    assert len(embs) == 6 and embs[0].dim == 128 and names[5] == f"{t1_path}#5"
    assert load_image(out / "t1_preview.png").shape == (886, 1280, 3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["encoder"] == "dlib-resnet-v1" and manifest["images"][0]["faces"] == 6
    assert "6 face(s)" in capsys.readouterr().out


def test_analyze_manifest_records_the_options_and_model_files(
    tmp_path: Path, hanks_path: Path
) -> None:
    out = tmp_path / "out"
    opts = ["--select", "largest", "--det-threshold", "0.1", "--max-faces", "2", "--flip"]
    crop = ["--crop-size", "128", "--template", "ffhq", "--margin", "1.2", "--no-preview"]
    args = ["analyze", str(hanks_path), "--out", str(out), *opts, *crop, "--landmarker", "dlib68"]
    assert main(args) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert (m["crop_size"], m["template"], m["margin"]) == (128, "ffhq", 1.2)
    assert m["detector"] == "dlib-hog" and m["landmarker"] == "dlib68"
    assert m["options"] == {
        "select": "largest",
        "det_threshold": 0.1,
        "max_faces": 2,
        "flip": True,
        "detector_preset": None,
        "encoder_preset": None,
    }
    files = m["model_files"]
    assert Path(files["detector"]["landmark_68"]).name == "shape_predictor_68_face_landmarks.dat"
    assert Path(files["landmarker"]["landmark_68"]).is_file()
    assert Path(files["encoder"]["recognition"]).name.startswith("dlib_face_recognition")


def test_analyze_json_and_folder_walk_with_bad_files(tmp_path: Path, t1_path: Path, capsys) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    shutil.copy(t1_path, src / "sub" / "group.jpg")
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    (src / "blank.png").write_bytes(b"")
    grey = np.full((64, 64, 3), 128, np.uint8)
    from facegen.image_io import save_image

    save_image(grey, src / "noface.png")
    code = main(["analyze", str(src), "--json", "--encoder", "none", "--select", "largest"])
    cap = capsys.readouterr()
    assert code == 1  # two unreadable files and one without a face (with --select largest)
    results = json.loads(cap.out)
    by_name = {Path(r["source"]).name: r for r in results}
    assert set(by_name) == {"broken.jpg", "blank.png", "noface.png", "group.jpg"}
    assert len(by_name["group.jpg"]["faces"]) == 1  # --select largest
    assert "0 bytes" in by_name["blank.png"]["error"]
    assert (
        "noface.png" in by_name["noface.png"]["error"]
        and "no face" in by_name["noface.png"]["error"]
    )
    assert cap.err.count("facegen: error:") == 3
    assert "Traceback" not in cap.err


def test_face_index_out_of_range_fails_one_image_not_the_batch(
    tmp_path: Path, t1_path: Path, hanks_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    args = ["--select", "1", "--encoder", "none", "--no-preview", "--out", str(out)]
    assert main(["analyze", str(t1_path), str(hanks_path), *args]) == 1
    err = capsys.readouterr().err
    assert f"{hanks_path}: face index must be in [-1, 0], got 1" in err
    manifest = json.loads((out / "manifest.json").read_text())
    by_name = {Path(i["source"]).name: i for i in manifest["images"]}
    assert by_name["t1.jpg"]["faces"] == 1 and "face index" in by_name[hanks_path.name]["error"]
    ids = tmp_path / "ids.safetensors"
    assert main(["embed", str(hanks_path), str(t1_path), "--select", "1", "--out", str(ids)]) == 1
    assert "face index must be in" in capsys.readouterr().err
    assert load_embeddings(ids)[1] == [str(t1_path)]


def test_compare_names_the_image_without_a_face(t1_path: Path, tmp_path: Path, capsys) -> None:
    from facegen.image_io import save_image

    blank = save_image(np.full((80, 80, 3), 128, np.uint8), tmp_path / "blank.png")
    assert main(["compare", str(t1_path), str(blank)]) == 1
    assert f"facegen: error: {blank}: no face detected" in capsys.readouterr().err


def test_analyze_skips_its_own_output_folder(tmp_path: Path, t1_path: Path) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    shutil.copy(t1_path, src / "group.jpg")
    out = src / "out"
    args = ["analyze", str(src), "--out", str(out), "--encoder", "none", "--select", "largest"]
    assert main(args) == 0
    assert main(args) == 0  # the second run must not analyse the first run's crops
    manifest = json.loads((out / "manifest.json").read_text())
    assert [Path(i["source"]).name for i in manifest["images"]] == ["group.jpg"]
    # a relative --out spelled differently is the same folder
    other = src / "sub"
    other.mkdir()
    args2 = ["analyze", str(src), "--out", str(other / ".." / "out"), "--encoder", "none"]
    assert main([*args2, "--select", "largest"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [Path(i["source"]).name for i in manifest["images"]] == ["group.jpg"]


def test_broken_pipe_exits_quietly(tmp_path: Path) -> None:
    exe = shutil.which("facegen") or f"{sys.executable} -m facegen.app.cli.main"
    proc = subprocess.Popen(
        [*exe.split(), "samples"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `facegen samples | head -0`
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert err == "" and proc.returncode != 0


def test_compare_same_and_different(t1_path: Path, tmp_path: Path, capsys) -> None:
    img = load_image(t1_path)
    from facegen.image_io import save_image

    # crop two different people out of the group photo; mirror one of them for "same"
    left = save_image(np.ascontiguousarray(img[:, :430]), tmp_path / "left.png")
    mirrored = save_image(np.ascontiguousarray(img[:, :430][:, ::-1]), tmp_path / "mirror.png")
    right = save_image(np.ascontiguousarray(img[:, 850:]), tmp_path / "right.png")
    assert main(["compare", str(left), str(mirrored), "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["same_person"] is True and same["encoder_id"] == "dlib-resnet-v1"
    assert main(["compare", str(left), str(right), "--json"]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert diff["same_person"] is False and diff["similarity"] < same["similarity"]
    assert main(["compare", str(left), str(right), "--threshold", "-1"]) == 0
    assert "same person" in capsys.readouterr().out


def test_embed_writes_safetensors(t1_path: Path, hanks_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "ids.safetensors"
    copy = shutil.copy(t1_path, tmp_path / "copy.jpg")
    assert main(["embed", str(t1_path), str(copy), "--out", str(out)]) == 0
    embs, names = load_embeddings(out)
    assert names == [str(t1_path), str(copy)]
    assert len(embs) == 2 and embs[0].similarity(embs[1]) == pytest.approx(1.0, abs=1e-5)
    from safetensors import safe_open

    with safe_open(str(out), framework="numpy") as f:
        meta = f.metadata()
    assert json.loads(meta["options"])["select"] == "largest"
    assert json.loads(meta["detector"]) == "dlib-hog"
    assert json.loads(meta["model_files"])["encoder"]["recognition"].endswith(".dat")
    assert main(["embed", str(t1_path), "--select", "all", "--out", str(out)]) == 1


def test_models_commands(capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FACEGEN_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["models", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["dlib"]["files_present"] == 4 and "antelopev2" in rows
    assert main(["models", "where", "dlib"]) == 0
    assert "shape_predictor_68_face_landmarks.dat: /" in capsys.readouterr().out
    assert main(["models", "download", "dlib", "antelopev2", "--offline"]) == 1
    cap = capsys.readouterr()
    assert "dlib/shape_predictor_68_face_landmarks.dat: /" in cap.out
    assert "antelopev2/scrfd_10g_bnkps.onnx" in cap.err and "Looked in" in cap.err


def test_missing_onnx_model_is_one_clear_error(
    capsys, monkeypatch, tmp_path: Path, t1_path: Path
) -> None:
    monkeypatch.setenv("FACEGEN_HOME", str(tmp_path))
    code = main(["analyze", str(t1_path), "--json", "--detector", "insightface", "--offline"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("facegen: error: model 'antelopev2/scrfd_10g_bnkps.onnx'")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--crop-size", "0", "must be in [16, 4096], got 0"),
        ("--crop-size", "8", "must be in [16, 4096], got 8"),
        ("--crop-size", "5000", "must be in [16, 4096], got 5000"),
        ("--crop-size", "big", "must be an integer, got 'big'"),
        ("--margin", "0", "must be a finite number > 0, got 0"),
        ("--margin", "-1", "must be a finite number > 0, got -1"),
        ("--margin", "nan", "must be a finite number > 0, got nan"),
        ("--margin", "inf", "must be a finite number > 0, got inf"),
        ("--margin", "wide", "must be a number, got 'wide'"),
        ("--detector-preset", "scrfd_2.5g", "invalid choice: 'scrfd_2.5g'"),
        ("--encoder-preset", "dlib", "invalid choice: 'dlib'"),
    ],
)
def test_analysis_options_are_checked_by_the_parser(
    option: str, value: str, message: str, capsys
) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["analyze", "x.jpg", "--json", option, value])
    err = capsys.readouterr().err
    assert ei.value.code == 2 and f"argument {option}: {message}" in err


def test_preset_choices_are_what_the_backends_load() -> None:
    from facegen.app.cli.main import build_parser

    actions = {a.dest: a for sp in _subparsers(build_parser()) for a in sp._actions}
    assert list(actions["detector_preset"].choices) == ["antelopev2", "buffalo_l"]
    assert list(actions["encoder_preset"].choices) == [
        "antelopev2",
        "buffalo_l",
        "arc2face-arcface",
    ]


def _subparsers(parser):  # the sub-command parsers of `parser`
    import argparse

    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            yield from a.choices.values()


def test_bad_options_exit_2(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["analyze", "x.jpg", "--detector", "nope"])
    assert main(["analyze", "missing.jpg", "--json"]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["analyze", "x.jpg", "--json", "--detector-preset", "buffalo_l"]) == 1
    assert "applies to `--detector insightface` only" in capsys.readouterr().err


def test_bad_pixel_limit_is_one_error_before_any_work(
    t1_path: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("FACEGEN_MAX_PIXELS", "64MP")
    out = tmp_path / "out"
    assert main(["analyze", str(t1_path), str(t1_path), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("facegen: error:") == 1 and "FACEGEN_MAX_PIXELS must be a positive" in err
    assert not out.exists()
    assert main(["embed", str(t1_path), "--out", str(tmp_path / "e.safetensors")]) == 1
    assert capsys.readouterr().err.count("FACEGEN_MAX_PIXELS") == 1


def test_value_errors_are_one_line_without_debug(t1_path: Path, tmp_path: Path, capsys) -> None:
    args = ["analyze", str(t1_path), "--json", "--detector-model", str(t1_path)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("facegen: error: `model_path` must be a folder") and "Traceback" not in err
    )
    with pytest.raises(ValueError):
        main([*args, "--debug"])


def test_console_script_runs(t1_path: Path, tmp_path: Path) -> None:
    exe = shutil.which("facegen") or f"{sys.executable} -m facegen.app.cli.main"
    proc = subprocess.run(
        [*exe.split(), "analyze", str(t1_path), "--json", "--encoder", "none", "--no-preview"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)[0]["faces"]) == 6


def test_generate_random_identities_with_the_tiny_preset(tmp_path: Path, capsys) -> None:
    from facegen.image_io import read_metadata

    out = tmp_path / "gen"
    args = ["generate", "--random-identities", "2", "--num-images", "2", "--preset", "tiny"]
    assert (
        main(
            [
                *args,
                "--steps",
                "2",
                "--seed",
                "7",
                "--batch-size",
                "3",
                "--vae-tiling",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    man = json.loads((out / "manifest.json").read_text())
    files = [r["file"] for r in man["images"]]
    assert files == [
        "id0000_img000_seed7.png",
        "id0000_img001_seed8.png",
        "id0001_img000_seed9.png",
        "id0001_img001_seed10.png",
    ]
    record = read_metadata(out / files[3])
    assert record["operation"] == "generate" and record["kind"] == "generated"
    md = record["params"]
    assert md["seed"] == 10 and md["identity_index"] == 1 and md["preset"] == "tiny"
    assert record["watermark"] == "facegen-dct-v1"  # on by default
    assert load_image(out / files[0]).shape == (64, 64, 3)
    assert "wrote 4 image(s) of 2 identities" in capsys.readouterr().out
    # the same command gives the same images
    again = tmp_path / "again"
    assert main([*args, "--steps", "2", "--seed", "7", "--out", str(again)]) == 0
    diff = np.abs(load_image(out / files[2]).astype(int) - load_image(again / files[2]).astype(int))
    assert diff.max() <= 2


def test_generate_errors(tmp_path: Path, capsys) -> None:
    base = ["generate", "--preset", "tiny", "--out", str(tmp_path / "o")]
    assert main([*base, "--random-identities", "1", "--prompt", "a cat"]) == 1
    assert "identity-only" in capsys.readouterr().err
    assert main([*base, "--id-image", str(tmp_path / "missing.jpg")]) == 1
    assert "file not found" in capsys.readouterr().err
    assert main([*base, "--random-identities", "1", "--cpu-offload"]) == 1
    assert "needs `--device cuda" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--random-identities", "0"])
    emb = tmp_path / "dlib.safetensors"
    from facegen.embedding_io import save_embeddings
    from facegen.types import IdentityEmbedding

    save_embeddings(emb, [IdentityEmbedding(np.eye(128, dtype=np.float32)[0], "dlib-resnet-v1")])
    assert main([*base, "--id-embedding", str(emb)]) == 1
    assert "dlib-resnet-v1" in capsys.readouterr().err


def test_generate_with_pose_from_a_photo(tmp_path: Path, capsys) -> None:
    from facegen.samples import sample_path

    out = tmp_path / "pose"
    args = ["generate", "--random-identities", "1", "--num-images", "1", "--steps", "1"]
    ok = main(
        [
            *args,
            "--preset",
            "tiny-controlnet",
            "--pose-from",
            str(sample_path("astronaut")),
            "--out",
            str(out),
        ]
    )
    assert ok == 0
    control = load_image(out / "control.png")
    assert control.shape == (64, 64, 3) and control.max() > 0  # a drawn landmark map
    assert json.loads((out / "manifest.json").read_text())["source"]["pose_from"].endswith(
        "astronaut.png"
    )
    assert (
        main(
            [
                *args,
                "--preset",
                "tiny",
                "--pose-from",
                str(sample_path("astronaut")),
                "--out",
                str(out),
            ]
        )
        == 1
    )
    assert "need a ControlNet preset" in capsys.readouterr().err


@pytest.fixture
def photo_preset(monkeypatch, orl_dir: Path, dlib_analyzer) -> str:
    """A preset named "photos" whose pipeline returns real ORL photos (chosen by the seed)."""
    from types import SimpleNamespace

    import cv2

    from facegen.pipelines.generation.presets import PRESETS
    from facegen.registry import RegistryEntry

    photos = [
        cv2.resize(load_image(orl_dir / "s10" / f"{k}.pgm"), None, fx=2, fy=2) for k in range(1, 11)
    ]

    class PhotoPipe:
        identity_analyzer = dlib_analyzer
        takes_prompt = False
        unet = SimpleNamespace(config=SimpleNamespace(sample_size=8))
        vae_scale_factor = 8

        def set_progress_bar_config(self, **_):
            pass

        def __call__(self, vectors, seeds, output_type="np", **_):
            from facegen.pipelines.generation.id_to_face import FaceGenerationOutput

            return FaceGenerationOutput(images=np.stack([photos[s % 10] / 255.0 for s in seeds]))

    monkeypatch.setitem(
        PRESETS._entries, "photos", RegistryEntry("photos", lambda **kw: PhotoPipe())
    )
    return "photos"


def test_dataset_generate_resume_and_export(tmp_path: Path, capsys, photo_preset: str) -> None:
    """`facegen dataset generate` end to end with a stand-in pipeline that returns real photos."""
    out = tmp_path / "ds"
    args = [
        "dataset",
        "generate",
        "--identities",
        "3",
        "--images-per-identity",
        "2",
        "--preset",
        "photos",
        "--min-similarity",
        "-1",
        "--max-similarity",
        "1",
        "--perturbation",
        "0,0.1",
        "--out",
        str(out),
    ]
    assert main([*args, "--format", "wds,rec"]) == 0
    assert json.loads((out / "config.json").read_text())["perturbation"] == [0.0, 0.1]
    assert "3 identities done, 0 failed" in capsys.readouterr().out
    assert len(list((out / "images").rglob("*.png"))) == 6
    assert (out / "export" / "train.rec").is_file() and (out / "identities.safetensors").is_file()
    assert main(args) == 0  # same command again: everything is already there
    assert "0 identities done, 0 failed, 3 already done" in capsys.readouterr().out
    assert main([*args[:-2], "--seed", "5", "--out", str(out)]) == 1
    assert "other settings" in capsys.readouterr().err
    assert main(["dataset", "export", str(out), "--format", "parquet"]) == 0
    assert (out / "export" / "manifest.parquet").is_file()
    capsys.readouterr()
    assert main(["dataset", "report", str(out)]) == 0
    assert "identities_done            3" in capsys.readouterr().out
    assert (out / "report" / "README.md").is_file()
    assert main(["dataset", "report", str(tmp_path)]) == 1
    assert "no committed identities" in capsys.readouterr().err


def test_dataset_config_file_flags_merge_and_holdout(
    tmp_path: Path, capsys, photo_preset: str
) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "identities: 4\nimages-per-identity: 3\npreset: photos\nmin_similarity: -1\n"
        "max_similarity: 1\nseed: 3\nformats: [parquet]\n"
    )
    out = tmp_path / "ds"
    # the flag wins over the file; shard 0/2 alone is not complete: no export yet
    args = ["dataset", "generate", "--config", str(cfg), "--images-per-identity", "2"]
    assert main([*args, "--out", str(out), "--shard", "0/2"]) == 0
    assert "facegen dataset merge" in capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())
    assert saved["images_per_identity"] == 2 and saved["seed"] == 3 and saved["identities"] == 4
    assert main(["dataset", "merge", str(out), "--format", "parquet"]) == 1
    assert "2 identities missing" in capsys.readouterr().out
    assert main([*args, "--out", str(out), "--shard", "1/2"]) == 0
    assert main(["dataset", "merge", str(out), "--format", "parquet", "--holdout", "2"]) == 0
    text = capsys.readouterr().out
    assert "4/4 identities done" in text and "(complete)" in text
    assert (out / "export" / "manifest.parquet").is_file()
    assert (out / "export" / "verification.bin").is_file()
    bad = tmp_path / "bad.toml"
    bad.write_text("identities = 2\nimages_per_identity = 1\ncolour = 'red'\n")
    assert main(["dataset", "generate", "--config", str(bad), "--out", str(tmp_path / "x")]) == 1
    assert "unknown setting(s) ['colour']" in capsys.readouterr().err
    assert main(["dataset", "generate", "--out", str(tmp_path / "y")]) == 1
    assert "`identities`, `images_per_identity` must be given" in capsys.readouterr().err
