"""`facegen train lora|adapter|controlnet` end to end with the tiny base model, then use the
LoRA in `facegen generate --lora`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from facegen.app.cli.main import main


@pytest.fixture(scope="module")
def photos(tmp_path_factory, t1_image, dlib_analyzer) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    h, w = t1_image.shape[:2]
    for i, f in enumerate(dlib_analyzer.detect(t1_image)[:3]):
        cx, cy = (f.bbox[:2] + f.bbox[2:]) / 2
        r = 0.9 * max(f.width, f.height)
        box = (max(0, cx - r), max(0, cy - r), min(w, cx + r), min(h, cy + r))
        Image.fromarray(t1_image).crop(tuple(int(v) for v in box)).save(folder / f"p{i}.png")
    return folder


COMMON = [
    "--base-model",
    "tiny",
    "--resolution",
    "32",
    "--batch-size",
    "2",
    "--validation-steps",
    "0",
]


def test_train_lora_resume_and_generate_with_it(tmp_path: Path, photos: Path, capsys) -> None:
    out = tmp_path / "lora"
    args = ["train", "lora", str(photos), "--out", str(out), *COMMON, "--conditioning", "prompt"]
    assert main([*args, "--max-steps", "2", "--checkpointing-steps", "1", "--rank", "2"]) == 0
    assert "2 steps (from step 0)" in capsys.readouterr().out
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    meta = json.loads((out / "facegen_lora.json").read_text())
    assert meta["rank"] == 2
    # a longer run with --resume latest continues from the checkpoint
    assert main([*args, "--max-steps", "3", "--rank", "2", "--resume", "latest"]) == 0
    assert "3 steps (from step 2)" in capsys.readouterr().out
    gen = tmp_path / "gen"
    cmd = ["generate", "--random-identities", "1", "--num-images", "1", "--preset", "tiny"]
    assert main([*cmd, "--steps", "2", "--lora", str(out), "--out", str(gen)]) == 0
    assert "wrote 1 image(s)" in capsys.readouterr().out


@pytest.mark.parametrize("through", ["installed", "peft-only"])
def test_train_lora_with_text_encoder_resumes_and_generates(
    tmp_path: Path, photos: Path, capsys, monkeypatch: pytest.MonkeyPatch, through: str
) -> None:
    """`--train-text-encoder` through the CLI, then `generate --lora` with both parts, with
    transformers' peft integration as installed and when it refuses the installed peft."""
    from safetensors.torch import load_file

    if through == "peft-only":
        from transformers.integrations import peft as integration

        monkeypatch.setattr(integration, "MIN_PEFT_VERSION", "999.0.0")
    out = tmp_path / "lora"
    args = ["train", "lora", str(photos), "--out", str(out), *COMMON, "--train-text-encoder"]
    assert main([*args, "--max-steps", "1", "--checkpointing-steps", "1"]) == 0
    assert main([*args, "--max-steps", "2", "--resume", "latest"]) == 0
    assert "2 steps (from step 1)" in capsys.readouterr().out
    keys = load_file(out / "pytorch_lora_weights.safetensors")
    assert any(k.startswith("text_encoder.") for k in keys)
    gen = tmp_path / "gen"
    cmd = ["generate", "--random-identities", "1", "--num-images", "1", "--preset", "tiny"]
    assert main([*cmd, "--steps", "2", "--lora", str(out), "--out", str(gen)]) == 0
    assert "wrote 1 image(s)" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["adapter", "controlnet"])
def test_train_adapter_and_controlnet(tmp_path: Path, photos: Path, kind: str, capsys) -> None:
    out = tmp_path / kind
    extra = ["--conditioning", "prompt"] if kind == "controlnet" else []
    assert (
        main(["train", kind, str(photos), "--out", str(out), *COMMON, "--max-steps", "2", *extra])
        == 0
    )
    text = capsys.readouterr().out
    assert "2 steps (from step 0)" in text and "mean loss" in text


def test_train_bad_input(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        main(
            ["train", "lora", str(empty), "--out", str(tmp_path / "o"), *COMMON, "--max-steps", "1"]
        )
        == 1
    )
    assert capsys.readouterr().err.strip()  # a one-line reason, no traceback
    assert main(["train", "lora", "--out", str(tmp_path / "o")]) == 1
    assert "incomplete settings" in capsys.readouterr().err


def test_train_skips_unreadable_and_faceless_photos(tmp_path: Path, photos: Path, caplog) -> None:
    import shutil

    import numpy as np
    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(photos / "p0.png", folder / "only-face.png")  # one photo of the person
    noise = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "noise.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "o"
    args = ["train", "lora", str(folder), "--out", str(out), *COMMON, "--max-steps", "1"]
    args += ["--batch-size", "1"]  # one usable photo
    with caplog.at_level("WARNING"):
        assert main([*args, "--conditioning", "prompt"]) == 0
    assert "broken.jpg" in caplog.text and "noise.png" in caplog.text  # reported, skipped
    assert json.loads((out / "facegen_lora.json").read_text())["num_faces"] == 1
    blocker = tmp_path / "file"
    blocker.write_text("x")
    bad_out = ["--out", str(blocker / "o"), *COMMON, "--max-steps", "1", "--conditioning", "prompt"]
    assert main(["train", "lora", str(folder), *bad_out]) == 1  # unwritable output: an error


def _stated(help_text: str) -> str:
    """The default an option's help states: the parenthesised text's first word."""
    m = re.search(r"\(([^;)\s]+)", help_text)
    assert m, help_text
    return m.group(1)


@pytest.mark.parametrize("kind", ["lora", "adapter", "controlnet", "generator"])
def test_train_help_names_each_loops_own_defaults(kind: str) -> None:
    """The defaults the options' help states are the config's (help is built without
    importing the training code, so the two are kept in step here)."""
    import dataclasses

    from facegen.app.cli.main import build_parser
    from facegen.app.cli.train import _generative_trainer

    config_cls, _ = _generative_trainer(kind)
    defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
    commands = build_parser()._subparsers._group_actions[0].choices
    train = next(a for a in commands["train"]._actions if a.dest == "train_command")
    helps = {a.dest: a.help or "" for a in train.choices[kind]._actions}
    assert int(_stated(helps["batch_size"])) == defaults["batch_size"]
    assert int(_stated(helps["max_steps"])) == defaults["max_steps"]
    assert float(_stated(helps["lr"])) == defaults["learning_rate"]
    assert _stated(helps["mixed_precision"]) == defaults["mixed_precision"]
    assert int(_stated(helps["checkpointing_steps"])) == defaults["checkpointing_steps"]
    assert f"last {defaults['checkpoints_total_limit']} are kept" in helps["checkpointing_steps"]
    assert int(_stated(helps["seed"])) == defaults["seed"]
    assert defaults["validation_steps"] == 0 and "0 = never" in helps["validation_steps"]
    assert defaults["resolution"] is None and "base model's own" in helps["resolution"]
    if kind == "generator":
        assert float(_stated(helps["ema_decay"])) == defaults["ema_decay"]
