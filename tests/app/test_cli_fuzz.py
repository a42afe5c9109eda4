"""Every command with bad input: broken images, embedding/LoRA/model/checkpoint files and
absurd numbers. Each run must end with an exit code and at most a short message: never a
Python traceback, never the CLI's "internal error" (which would be a bug reached)."""

from __future__ import annotations

import io
import json
import struct
import zlib
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from facegen.app.cli.main import main

NUMBERS = ["-1", "0", "nan", "inf", "abc", "1e12", "99999999999999999999"]


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width × height`` but holds almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, t1_path: Path) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("corpus")
    c: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        (d / name).write_bytes(data)
        c[name] = d / name

    real = t1_path.read_bytes()
    put("empty.jpg", b"")
    put("garbage.png", np.random.default_rng(0).bytes(4096))
    put("truncated.jpg", real[: len(real) // 3])
    put("text.jpg", b"hello, I am not an image\n")
    put("bomb.png", _png_header(100_000, 100_000))
    (d / "folder.jpg").mkdir()
    c["folder.jpg"] = d / "folder.jpg"
    # embedding files
    put("emb-empty.safetensors", b"")
    put("emb-garbage.safetensors", b"\x00" * 64)
    meta = {"encoder_id": "arcface-onnx/arc2face", "normalized": "true", "names": "[]"}
    save_file({"embeddings": np.zeros((0, 512), np.float32)}, d / "emb-zero.safetensors", meta)
    c["emb-zero.safetensors"] = d / "emb-zero.safetensors"
    m1 = {**meta, "names": '["a"]'}
    save_file({"embeddings": np.zeros((1, 2, 3), np.float32)}, d / "emb-3d.safetensors", m1)
    c["emb-3d.safetensors"] = d / "emb-3d.safetensors"
    save_file({"embeddings": np.full((1, 512), np.nan, np.float32)}, d / "emb-nan.safetensors", m1)
    c["emb-nan.safetensors"] = d / "emb-nan.safetensors"
    save_file({"embeddings": np.ones((1, 7), np.float32)}, d / "emb-7d.safetensors", m1)
    c["emb-7d.safetensors"] = d / "emb-7d.safetensors"
    # LoRA files
    put("lora-garbage.safetensors", b"garbage" * 10)
    save_file({"nothing.matches": np.zeros((2, 2), np.float32)}, d / "lora-foreign.safetensors")
    c["lora-foreign.safetensors"] = d / "lora-foreign.safetensors"
    # model folders
    bad_model = d / "model-bad"
    bad_model.mkdir()
    (bad_model / "model.safetensors").write_bytes(b"not safetensors")
    (bad_model / "config.json").write_text("{not json")
    c["model-bad"] = bad_model
    (d / "model-empty").mkdir()
    c["model-empty"] = d / "model-empty"
    put("bin-garbage.bin", b"\x80\x04garbage")
    put("config-bad.yaml", b"identities: [unclosed\n")
    put("config-types.yaml", b"identities: many\nimages_per_identity: 1\n")
    photos = d / "bad-photos"
    photos.mkdir()
    for name in ("empty.jpg", "garbage.png", "text.jpg"):
        (photos / name).write_bytes((d / name).read_bytes() if (d / name).is_file() else b"")
    c["bad-photos"] = photos
    return c


def run_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def check(args: list[str], *, ok: tuple[int, ...] = (1, 2)) -> str:
    code, out, err = run_cli(args)
    text = out + err
    assert "Traceback" not in text, (args, text)
    assert "internal error" not in err, (args, err)
    assert code in ok, (args, code, text)
    if code != 0:
        assert err.strip(), (args, "an error needs a message")
    return err


IMAGES = ["empty.jpg", "garbage.png", "truncated.jpg", "text.jpg", "bomb.png", "folder.jpg"]


@pytest.mark.parametrize("image", IMAGES)
def test_analysis_commands_with_bad_images(
    corpus: dict[str, Path], tmp_path: Path, image: str
) -> None:
    p = str(corpus[image])
    check(["analyze", p, "--out", str(tmp_path / "a")])
    check(["embed", p, "--out", str(tmp_path / "e.safetensors")])
    check(["compare", p, p])
    check(["provenance", "check", p])
    check(["anonymize", p, "--out", str(tmp_path / "anon.png")])


def test_folder_of_bad_photos_is_reported_not_fatal(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    check(["anonymize", str(corpus["bad-photos"]), "--out", str(tmp_path / "o")], ok=(0, 1))
    check(["analyze", str(corpus["bad-photos"]), "--out", str(tmp_path / "a")], ok=(0, 1))


GEN = ["generate", "--preset", "tiny", "--steps", "1", "--num-images", "1"]


@pytest.mark.parametrize(
    "emb",
    [
        "emb-empty.safetensors",
        "emb-garbage.safetensors",
        "emb-zero.safetensors",
        "emb-3d.safetensors",
        "emb-nan.safetensors",
        "emb-7d.safetensors",
    ],
)
def test_generate_with_bad_embedding_files(
    corpus: dict[str, Path], tmp_path: Path, emb: str
) -> None:
    check([*GEN, "--id-embedding", str(corpus[emb]), "--out", str(tmp_path / "g")])


@pytest.mark.parametrize("lora", ["lora-garbage.safetensors", "lora-foreign.safetensors"])
def test_generate_with_bad_lora_files(corpus: dict[str, Path], tmp_path: Path, lora: str) -> None:
    args = [*GEN, "--random-identities", "1", "--lora", str(corpus[lora])]
    check([*args, "--out", str(tmp_path / "g")])


@pytest.mark.parametrize("number", NUMBERS)
def test_generate_with_absurd_numbers(tmp_path: Path, number: str) -> None:
    out = ["--out", str(tmp_path / "g")]
    check(["generate", "--preset", "tiny", "--random-identities", number, *out])
    check([*GEN, "--random-identities", "1", "--seed", number, *out], ok=(0, 1, 2))
    check(["generate", "--preset", "tiny", "--random-identities", "1", "--steps", number, *out])
    check(
        ["generate", "--preset", "tiny", "--random-identities", "1", "--num-images", number, *out]
    )


@pytest.mark.parametrize("image", ["garbage.png", "bomb.png", "empty.jpg"])
def test_generate_and_swap_with_bad_photos(
    corpus: dict[str, Path], tmp_path: Path, t1_path: Path, image: str
) -> None:
    p = str(corpus[image])
    check([*GEN, "--id-image", p, "--out", str(tmp_path / "g")])
    swap = ["swap", "--preset", "tiny-inpaint", "--steps", "1", "--out", str(tmp_path / "s.png")]
    check([*swap, "--source", p, "--target", str(t1_path)])
    check([*swap, "--source", str(t1_path), "--target", p])


def test_dataset_commands_with_bad_input(corpus: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    check(["dataset", "report", str(empty)])
    check(["dataset", "export", str(empty), "--format", "wds"])
    check(["dataset", "merge", str(empty)], ok=(0, 1))
    for cfg in ("config-bad.yaml", "config-types.yaml"):
        err = check(
            ["dataset", "generate", "--config", str(corpus[cfg]), "--out", str(tmp_path / "d")]
        )
        assert cfg in err, err  # the message names the file
    for number in NUMBERS:
        check(["dataset", "generate", "--preset", "tiny", "--identities", number,
               "--out", str(tmp_path / "d")])  # fmt: skip


def test_training_commands_with_bad_input(corpus: dict[str, Path], tmp_path: Path) -> None:
    tiny = ["--base-model", "tiny", "--resolution", "32", "--max-steps", "1"]
    check(["train", "lora", str(corpus["bad-photos"]), "--out", str(tmp_path / "l"), *tiny])
    check(
        ["train", "fr", str(corpus["bad-photos"]), "--out", str(tmp_path / "f"), "--max-steps", "1"]
    )
    check(["train", "fr", str(corpus["garbage.png"]), "--out", str(tmp_path / "f2")])
    for number in NUMBERS:
        check(["train", "lora", str(corpus["bad-photos"]), "--out", str(tmp_path / "l2"),
               "--base-model", "tiny", "--max-steps", number])  # fmt: skip
    for model in ("model-bad", "model-empty"):
        check(["eval", "fr", str(corpus[model]), "--bin", str(corpus["bin-garbage.bin"])])
    check(["eval", "fr", "dlib", "--bin", str(corpus["bin-garbage.bin"])])


def test_model_commands_with_unknown_names() -> None:
    check(["models", "where", "no-such-model"])
    check(["models", "download", "no-such-model"])
    check(["samples", "no-such-sample"])


def test_config_errors_name_the_file_and_the_key(corpus: dict[str, Path], tmp_path: Path) -> None:
    err = check(
        ["dataset", "generate", "--config", str(corpus["config-types.yaml"]),
         "--out", str(tmp_path / "d")]
    )  # fmt: skip
    assert "config-types.yaml" in err and "identities" in err, err
    for key, value in (("seed", -1), ("perturbation", "abc"), ("identities", 0)):
        bad = tmp_path / f"{key}.json"
        settings = {"identities": 2, "images_per_identity": 1, "preset": "tiny", key: value}
        bad.write_text(json.dumps(settings))
        err = check(["dataset", "generate", "--config", str(bad), "--out", str(tmp_path / "d2")])
        assert f"{key}.json" in err and f"`{key}`" in err, err
    for key, value in (("rank", "abc"), ("learning_rate", -1), ("max_steps", 0)):
        bad = tmp_path / f"train-{key}.yaml"
        bad.write_text(f"{key}: {value}\nbase_model: tiny\ndata_dir: {tmp_path}\n")
        err = check(["train", "lora", "--config", str(bad), "--out", str(tmp_path / "t")])
        assert f"train-{key}.yaml" in err and f"`{key}`" in err, err
