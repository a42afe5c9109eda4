"""``facegen train generator`` in two processes, as ``accelerate launch --multi_gpu`` runs it.

``torchrun --nproc_per_node 2`` starts two CPU processes (Accelerate joins them over gloo)
that run the CLI on four ORL photos with the tiny ``"scratch"`` model, then a second pair
resumes from the first pair's checkpoint. A small wrapper around the CLI lets each process
report what only it sees: its own replica of the trained weights, and whether it saved the
generator. What is checked: both runs finish on both processes at the requested step; the
main process alone writes one generator, which ``from_preset`` loads; the resumed run
continues from the checkpoint's step; DDP keeps the two replicas equal, and equal to the
checkpoint's weights.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

#: the CLI in each process (argv: REPORTS ARGS…), reporting what this process trained
_LAUNCH_SCRIPT = """
import os, sys
from safetensors.torch import save_file
import facegen.pipelines.generation.generator_folder as folder
from facegen.app.cli.main import main
from facegen.training.diffusion.components import TrainingRun

rank = os.environ["RANK"]
finish, save_generator = TrainingRun.finish, folder.save_generator

def finish_and_report(self, *args, **kwargs):
    # this process's replica of the trained parts, named as in a checkpoint's trainable.safetensors
    weights = {
        f"{part}.{k}": p.detach().clone()
        for part in ("unet", "text_encoder")
        for k, p in getattr(self, part).named_parameters()
    }
    save_file(weights, os.path.join(sys.argv[1], f"rank-{rank}.safetensors"))
    return finish(self, *args, **kwargs)

def save_and_report(*args, **kwargs):
    print(f"SAVED by rank {rank}", flush=True)
    return save_generator(*args, **kwargs)

TrainingRun.finish, folder.save_generator = finish_and_report, save_and_report
sys.exit(main(sys.argv[2:]))
"""

#: the tiny scratch model (see test_train_generator's SMALL), one 2-step validation image
_CONFIG = {
    "resolution": 32,
    "scratch_unet_channels": [32, 64],
    "scratch_text_width": 128,
    "scratch_text_layers": 1,
    "tensorboard": False,
    "num_validation_images": 1,
    "validation_inference_steps": 2,
    "log_every": 1,
}


def _two_processes(torchrun: str, script: Path, reports: Path, args: list[str]) -> str:
    """Run the CLI with ``args`` in two torchrun processes; their stdout, once both exit 0."""
    shutil.rmtree(reports, ignore_errors=True)
    reports.mkdir()
    port = str(29500 + os.getpid() % 1000)
    res = subprocess.run(
        [
            torchrun,
            "--nproc_per_node",
            "2",
            "--master_port",
            port,
            str(script),
            str(reports),
            *args,
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,  # a hang fails; a busy machine is slow, not wrong
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res.stdout


def _replicas_in_sync(reports: Path, checkpoint: Path) -> dict[str, torch.Tensor]:
    """Both processes' trained weights, which must be equal to each other and to the
    checkpoint's (written by the main process); returns them."""
    ranks = [load_file(reports / f"rank-{i}.safetensors") for i in (0, 1)]
    saved = load_file(checkpoint / "trainable.safetensors")
    assert ranks[0].keys() == ranks[1].keys() == saved.keys()
    for k in saved:
        assert torch.equal(ranks[0][k], ranks[1][k]), k
        assert torch.equal(ranks[0][k], saved[k]), k
    return saved


def test_generator_trains_and_resumes_in_two_processes(orl_dir: Path, tmp_path: Path) -> None:
    from facegen.pipelines.generation.presets import from_preset
    from facegen.training.diffusion.generator import GeneratorTrainConfig, scratch_components

    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun (installed with torch) is not on PATH")
    photos, out, reports = tmp_path / "photos", tmp_path / "gen", tmp_path / "reports"
    for person in ("s10", "s11"):
        (photos / person).mkdir(parents=True)
        for k in (1, 2):
            shutil.copyfile(orl_dir / person / f"{k}.pgm", photos / person / f"{k}.pgm")
    conf = tmp_path / "small.json"
    conf.write_text(json.dumps(_CONFIG))
    script = tmp_path / "launch.py"
    script.write_text(_LAUNCH_SCRIPT)
    args = ["train", "generator", str(photos), "--out", str(out), "--config", str(conf)]
    args += ["--batch-size", "2", "--validation-steps", "0", "--checkpointing-steps", "2"]

    stdout = _two_processes(torchrun, script, reports, [*args, "--max-steps", "2"])
    # both processes ran every step; the main process alone saved the generator (the two
    # share one stdout, so a line of one may land right after an unfinished line of the other:
    # matched anywhere, not at line starts)
    assert len(re.findall(r"2 steps \(from step 0\)", stdout)) == 2, stdout
    assert re.findall(r"SAVED by rank \d+", stdout) == ["SAVED by rank 0"], stdout
    for name in ("facegen_generator.json", "unet", "text_encoder", "identity_bank.safetensors"):
        assert (out / name).exists(), name
    assert [p.name for p in (out / "validation").rglob("*.png")] == ["00.png"]
    info = json.loads((out / "facegen_generator.json").read_text())
    assert info["training"]["steps"] == 2
    first = out / "checkpoints" / "checkpoint-2"
    state = json.loads((first / "state.json").read_text())
    assert state["num_processes"] == 2 and {"rng_0.json", "rng_1.json"} <= set(state["files"])
    trained = _replicas_in_sync(reports, first)
    cfg = GeneratorTrainConfig(output_dir=str(out), data_dir=str(photos), **_CONFIG)
    start = scratch_components(cfg, 128)  # what both processes started from
    init = {
        f"{part}.{k}": p
        for part in ("unet", "text_encoder")
        for k, p in start[part].named_parameters()
    }
    assert any(not torch.equal(trained[k], init[k]) for k in init)  # they did train
    pipe = from_preset(str(out), with_analyzer=False)
    assert pipe.identity_bank[0].shape == (4, 128)  # the four photos, banked once

    # a second pair continues from checkpoint-2 to step 4
    stdout = _two_processes(
        torchrun, script, reports, [*args, "--max-steps", "4", "--resume", "latest"]
    )
    assert len(re.findall(r"4 steps \(from step 2\)", stdout)) == 2, stdout
    assert re.findall(r"SAVED by rank \d+", stdout) == ["SAVED by rank 0"], stdout
    assert json.loads((out / "facegen_generator.json").read_text())["training"]["steps"] == 4
    resumed = _replicas_in_sync(reports, out / "checkpoints" / "checkpoint-4")
    assert any(not torch.equal(resumed[k], trained[k]) for k in trained)
    # the folder now holds the EMA of step 4 (what the main process checkpointed)
    ema = load_file(out / "checkpoints" / "checkpoint-4" / "ema.safetensors")
    unet = load_file(next((out / "unet").glob("*.safetensors")))
    assert all(torch.equal(v, ema[f"unet.{k}"]) for k, v in unet.items())
    from_preset(str(out), with_analyzer=False)
