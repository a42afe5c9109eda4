"""Training checkpoints hold only safetensors and JSON, and resuming never runs a pickle.

Every loop (LoRA, adapter, ControlNet on facegen's tiny random components at 32×32; face
recognition on a tiny IResNet) makes a real one-step checkpoint. Then each file of it in turn
is replaced by a pickle whose unpickling would create a marker file, both as a plain
replacement (the checksum in ``state.json`` no longer matches) and with ``state.json``
rewritten to match (the file itself must be refused when parsed), and Accelerate's pickle
names are added beside the real files. Every resume must stop with one line naming the
folder and the file, without creating the marker. The checkpoint module's own guarantees
(round trip of every state, atomic saves, ``latest`` skipping incomplete folders) are tested
with a tiny model and a one-process stand-in for the accelerator.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import pickle
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from facegen.errors import FacegenError, InvalidArgumentError
from facegen.pipelines.generation.tiny import tiny_components
from facegen.training import checkpoint
from facegen.training.checkpoint import TrainingState

SIZE = 32
#: Accelerate's pickle files; none may ever be read from a facegen checkpoint.
ACCELERATE_PICKLES = ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Plant:
    """Unpickling this creates ``path``: what a malicious checkpoint file would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.path,))


def payload(marker: Path) -> bytes:
    return pickle.dumps(Plant(marker))


def test_the_payload_would_run_if_unpickled(tmp_path: Path) -> None:
    """The marker test below means something: unpickling the payload does create it."""
    marker = tmp_path / "ran"
    pickle.loads(payload(marker))
    assert marker.exists()


def _digest(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def tampered(pristine: Path, root: Path, marker: Path) -> Iterator[tuple[str, Path]]:
    """Copies of ``pristine`` under ``root``, each with one planted pickle: ``(the file
    named in the refusal, the folder)``."""
    names = sorted(p.name for p in pristine.iterdir())
    assert "state.json" in names and not any(n.endswith((".pkl", ".bin")) for n in names)
    k = 0

    def fresh() -> Path:
        nonlocal k
        k += 1
        folder = root / f"case{k}" / pristine.name
        shutil.copytree(pristine, folder)
        return folder

    for name in names:
        # a plain replacement: state.json's checksum no longer matches
        folder = fresh()
        (folder / name).write_bytes(payload(marker))
        yield name, folder
        if name == "state.json":
            continue
        # the same with state.json rewritten to match: the file itself must be refused
        folder = fresh()
        (folder / name).write_bytes(payload(marker))
        state = json.loads((folder / "state.json").read_text())
        state["files"][name] = _digest(folder / name)
        (folder / "state.json").write_text(json.dumps(state))
        yield name, folder
    for extra in ACCELERATE_PICKLES:
        folder = fresh()
        (folder / extra).write_bytes(payload(marker))
        yield extra, folder
    # listed in state.json as well
    folder = fresh()
    (folder / "custom_checkpoint_0.pkl").write_bytes(payload(marker))
    state = json.loads((folder / "state.json").read_text())
    state["files"]["custom_checkpoint_0.pkl"] = _digest(folder / "custom_checkpoint_0.pkl")
    (folder / "state.json").write_text(json.dumps(state))
    yield "custom_checkpoint_0.pkl", folder
    folder = fresh()
    (folder / "notes.txt").write_text("hello")
    yield "notes.txt", folder


def assert_every_tampering_refused(pristine: Path, resume: Callable[[str], Any], root: Path) -> int:
    marker = root / "MARKER"
    cases = 0
    for name, folder in tampered(pristine, root, marker):
        with pytest.raises(FacegenError) as info:
            resume(str(folder))
        message = str(info.value)
        assert "\n" not in message, message
        assert name in message and message.count(str(folder)) == 1, (name, message)
        assert not marker.exists(), f"{name}: the planted pickle ran"
        cases += 1
    return cases


# --------------------------------------------------------------------------- the loops


@functools.cache
def _components() -> dict[str, Any]:
    return tiny_components(0)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, t1_image: np.ndarray, dlib_analyzer) -> Path:
    """Three photos of three people (t1's faces with context)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    h, w = t1_image.shape[:2]
    for i, f in enumerate(dlib_analyzer.detect(t1_image)[:3]):
        cx, cy = (f.bbox[:2] + f.bbox[2:]) / 2
        r = 0.9 * max(f.width, f.height)
        box = (max(0, cx - r), max(0, cy - r), min(w, cx + r), min(h, cy + r))
        Image.fromarray(t1_image).crop(tuple(int(v) for v in box)).save(folder / f"p{i}.png")
    return folder


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache") / "dlib"


def generative_run(
    kind: str, out: Path, photos: Path, cache: Path, analyzer: Any
) -> Callable[..., Any]:
    from facegen.training.diffusion.adapter import AdapterTrainConfig, train_adapter
    from facegen.training.diffusion.controlnet import ControlNetTrainConfig, train_controlnet
    from facegen.training.diffusion.lora import LoraTrainConfig, train_lora

    cls, train, extra = {
        "lora": (LoraTrainConfig, train_lora, {"rank": 2}),
        "adapter": (AdapterTrainConfig, train_adapter, {"lora_rank": 2}),
        "controlnet": (ControlNetTrainConfig, train_controlnet, {"conditioning": "prompt"}),
    }[kind]

    def run(resume: str | None = None, steps: int = 1) -> Any:
        cfg = cls(
            output_dir=str(out),
            data_dir=str(photos),
            cache_dir=str(cache),
            base_model="tiny",
            resolution=SIZE,
            batch_size=2,
            max_steps=steps,
            checkpointing_steps=1,
            resume_from_checkpoint=resume,
            num_validation_images=0,
            tensorboard=False,
            **extra,
        )
        parts = {**copy.deepcopy(_components()), "analyzer": analyzer}
        return train(cfg, components=parts, progress=False)

    return run


@pytest.mark.parametrize("kind", ["lora", "adapter", "controlnet"])
def test_generative_checkpoints_refuse_every_planted_pickle(
    kind: str, photos: Path, cache: Path, dlib_analyzer, tmp_path: Path
) -> None:
    run = generative_run(kind, tmp_path / "out", photos, cache, dlib_analyzer)
    first = run()
    (pristine,) = first.checkpoints
    assert pristine.name == "checkpoint-1"
    names = {p.name for p in pristine.iterdir()}
    assert names == {
        "trainable.safetensors",
        "optimizer.safetensors",
        "optimizer.json",
        "scheduler.json",
        "rng_0.safetensors",
        "rng_0.json",
        "state.json",
    }
    state = json.loads((pristine / "state.json").read_text())
    assert state["loop"] == kind and state["counters"] == {"global_step": 1}
    assert set(state["files"]) == names - {"state.json"}
    cases = assert_every_tampering_refused(pristine, run, tmp_path / "tampered")
    assert cases == 2 * len(names) - 1 + len(ACCELERATE_PICKLES) + 2
    # the untouched checkpoint still resumes
    rest = run(str(pristine), steps=2)
    assert (rest.start_step, rest.steps, len(rest.losses)) == (1, 2, 1)


def _write_fr_set(root: Path) -> None:
    from facegen.pipelines.dataset.writers import DatasetSample, ImageFolderWriter

    rng = np.random.default_rng(0)
    protos = rng.integers(0, 256, (3, 8, 8, 3))
    with ImageFolderWriter(root) as w:
        for i in range(3):
            for j in range(4):
                base = np.kron(protos[i], np.ones((4, 4, 1)))
                img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
                w.write(DatasetSample(identity=i, index=j, image=img))


def fr_run(tmp_path: Path) -> Callable[..., Any]:
    from facegen.training.fr.train import FRTrainConfig, train_fr

    def run(resume: str | None = None, steps: int = 1) -> Any:
        cfg = FRTrainConfig(
            data=str(tmp_path / "data"),
            output_dir=str(tmp_path / "out"),
            backbone="iresnet18",
            width=8,
            input_size=32,
            embedding_size=16,
            head="cosface",
            scale=16.0,
            lr=0.05,
            batch_size=4,
            num_workers=0,
            max_steps=steps,
            save_every=1,
            resume=resume,
            tensorboard=False,
            export_onnx=False,
            cpu=True,
        )
        return train_fr(cfg, progress=False)

    return run


def test_fr_checkpoints_refuse_every_planted_pickle(tmp_path: Path) -> None:
    from facegen.training.fr.train import latest_checkpoint

    _write_fr_set(tmp_path / "data")
    run = fr_run(tmp_path)
    run()
    pristine = latest_checkpoint(tmp_path / "out")
    assert pristine is not None and pristine.name == "step-00000001"
    names = {p.name for p in pristine.iterdir()}
    assert names == {
        "backbone.safetensors",
        "head.safetensors",
        "optimizer.safetensors",
        "optimizer.json",
        "scheduler.json",
        "rng_0.safetensors",
        "rng_0.json",
        "state.json",
    }
    # the whole backbone state: batch-norm statistics too
    from safetensors.torch import load_file

    assert any(k.endswith("running_mean") for k in load_file(pristine / "backbone.safetensors"))
    cases = assert_every_tampering_refused(pristine, run, tmp_path / "tampered")
    assert cases == 2 * len(names) - 1 + len(ACCELERATE_PICKLES) + 2
    rest = run(str(pristine), steps=2)
    assert (rest.start_step, rest.steps, len(rest.losses)) == (1, 2, 1)


# --------------------------------------------------------------------------- through the CLI


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line the CLI wrote (log warnings, such as the LoRA loop's note that
    the photos show different people, may come before it)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if not line.startswith("WARNING ")]
    assert len(lines) == 1 and lines[0].startswith("facegen: error: "), err
    return lines[0]


def test_cli_train_lora_refuses_a_planted_pickle_in_one_line(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from facegen.app.cli.main import main

    out = tmp_path / "lora"
    args = ["train", "lora", str(photos), "--out", str(out), "--base-model", "tiny"]
    args += ["--resolution", str(SIZE), "--batch-size", "2", "--validation-steps", "0"]
    args += ["--conditioning", "prompt", "--rank", "2"]
    assert main([*args, "--max-steps", "1", "--checkpointing-steps", "1"]) == 0
    capsys.readouterr()
    ckpt = out / "checkpoints" / "checkpoint-1"
    marker = tmp_path / "MARKER"
    (ckpt / "custom_checkpoint_0.pkl").write_bytes(payload(marker))
    assert main([*args, "--max-steps", "2", "--resume", "latest"]) == 1
    err = error_line(capsys)
    assert "custom_checkpoint_0.pkl" in err and str(ckpt) in err
    # a pickle in place of the weights, its checksum recorded too
    (ckpt / "custom_checkpoint_0.pkl").unlink()
    (ckpt / "trainable.safetensors").write_bytes(payload(marker))
    state = json.loads((ckpt / "state.json").read_text())
    state["files"]["trainable.safetensors"] = _digest(ckpt / "trainable.safetensors")
    (ckpt / "state.json").write_text(json.dumps(state))
    assert main([*args, "--max-steps", "2", "--resume", str(ckpt)]) == 1
    err = error_line(capsys)
    assert "trainable.safetensors" in err and "safetensors" in err
    assert not marker.exists()


def test_cli_train_fr_refuses_a_planted_pickle_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from facegen.app.cli.main import main

    _write_fr_set(tmp_path / "data")
    cfg = tmp_path / "fr.yaml"
    cfg.write_text(
        "backbone: iresnet18\nwidth: 8\ninput_size: 32\nembedding_size: 16\nhead: cosface\n"
        "scale: 16.0\nbatch_size: 4\nnum_workers: 0\nexport_onnx: false\ntensorboard: false\n"
        "cpu: true\n"
    )
    out = tmp_path / "fr"
    args = ["train", "fr", str(tmp_path / "data"), "--out", str(out), "--config", str(cfg)]
    assert main([*args, "--max-steps", "1", "--save-every", "1"]) == 0
    capsys.readouterr()
    ckpt = out / "checkpoints" / "step-00000001"
    marker = tmp_path / "MARKER"
    (ckpt / "random_states_0.pkl").write_bytes(payload(marker))
    assert main([*args, "--max-steps", "2", "--resume", "latest"]) == 1
    err = error_line(capsys)
    assert "random_states_0.pkl" in err and str(ckpt) in err
    assert not marker.exists()


# --------------------------------------------------------------------------- the module


class OneProcess:
    """What the checkpoint functions use of an ``accelerate.Accelerator``, for one process."""

    is_main_process = True
    process_index = 0
    num_processes = 1
    distributed_type = "NO"
    scaler = None

    def __init__(self) -> None:
        self.step = 0

    def wait_for_everyone(self) -> None:
        pass

    def unwrap_model(self, model: Any) -> Any:
        return model


class Loader:
    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)


def tiny_state(seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.9))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (s + 1))
    return {
        "models": {"net": model},
        "optimizer": optimizer,
        "scheduler": scheduler,
        "loaders": [Loader(seed)],
    }


def train_a_bit(state: dict[str, Any], steps: int) -> None:
    model = state["models"]["net"]
    for _ in range(steps):
        loss = model(torch.randn(5, 4)).square().mean()
        loss.backward()
        state["optimizer"].step()
        state["scheduler"].step()
        state["optimizer"].zero_grad()
        torch.randint(0, 10, (3,), generator=state["loaders"][0].generator)


def draws(state: dict[str, Any]) -> tuple[Any, ...]:
    return (
        random.random(),
        float(np.random.rand()),
        float(torch.rand(())),
        int(torch.randint(0, 1 << 30, (), generator=state["loaders"][0].generator)),
    )


def test_round_trip_restores_every_state_exactly(tmp_path: Path) -> None:
    acc = OneProcess()
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    acc.scaler.scale(torch.ones(()))  # the scale tensor exists from the first use
    acc.scaler.update(new_scale=256.0)
    a = tiny_state(0)
    train_a_bit(a, 3)
    acc.step = 2
    folder = checkpoint.save_checkpoint(
        tmp_path / "checkpoints" / "c-3",
        acc,
        TrainingState(**a),
        loop="t",
        counters={"global_step": 3},
    )
    expected = draws(a)
    assert (folder / "scaler.json").is_file()
    b = tiny_state(1)  # other weights, a fresh optimizer, other RNG states
    random.seed(5)
    acc.step = 0
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    counters = checkpoint.load_checkpoint(folder, acc, TrainingState(**b), loop="t")
    assert counters == {"global_step": 3} and acc.step == 2
    assert acc.scaler.state_dict()["scale"] == 256.0
    assert draws(b) == expected
    for (k, va), vb in zip(
        a["models"]["net"].state_dict().items(), b["models"]["net"].state_dict().values()
    ):
        torch.testing.assert_close(va, vb, msg=k)
    sa, sb = a["optimizer"].state_dict(), b["optimizer"].state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sb["param_groups"][0]["betas"] == (0.8, 0.9)  # a tuple again
    for i in sa["state"]:
        for k, v in sa["state"][i].items():
            torch.testing.assert_close(sb["state"][i][k], v)
    assert a["scheduler"].state_dict() == b["scheduler"].state_dict()
    # and both continue alike (on the same data)
    for s in (a, b):
        torch.manual_seed(9)
        train_a_bit(s, 2)
    for va, vb in zip(a["models"]["net"].parameters(), b["models"]["net"].parameters()):
        torch.testing.assert_close(va, vb)


def test_a_save_cut_short_leaves_no_checkpoint_that_looks_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acc = OneProcess()
    state = tiny_state(0)
    root = tmp_path / "checkpoints"
    checkpoint.save_checkpoint(
        root / "c-1", acc, TrainingState(**state), loop="t", counters={"global_step": 1}
    )

    def killed(path: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "digest", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(
            root / "c-2", acc, TrainingState(**state), loop="t", counters={"global_step": 2}
        )
    monkeypatch.undo()
    assert (root / "c-2.tmp").is_dir() and not (root / "c-2").exists()
    assert checkpoint.latest_checkpoint(tmp_path, "c-") == root / "c-1"
    # a folder without state.json (cut short, or an older facegen's) is skipped too
    (root / "c-7").mkdir()
    (root / "c-7" / "optimizer.bin").write_bytes(b"x")
    assert checkpoint.latest_checkpoint(tmp_path, "c-") == root / "c-1"
    with pytest.raises(InvalidArgumentError, match=r"optimizer\.bin is a pickle file"):
        checkpoint.load_checkpoint(root / "c-7", acc, TrainingState(**state), loop="t")
    (root / "c-7" / "optimizer.bin").unlink()
    with pytest.raises(InvalidArgumentError, match=r"state\.json is missing"):
        checkpoint.load_checkpoint(root / "c-7", acc, TrainingState(**state), loop="t")
    # pruning keeps the newest complete ones and clears the leftovers
    checkpoint.save_checkpoint(
        root / "c-3", acc, TrainingState(**state), loop="t", counters={"global_step": 3}
    )
    checkpoint.prune_checkpoints(tmp_path, "c-", 1)
    assert sorted(p.name for p in root.iterdir()) == ["c-3", "c-7"]


def test_other_runs_and_loops_are_refused_in_one_line(tmp_path: Path) -> None:
    acc = OneProcess()
    state = tiny_state(0)
    train_a_bit(state, 1)
    folder = checkpoint.save_checkpoint(
        tmp_path / "c-1", acc, TrainingState(**state), loop="t", counters={"global_step": 1}
    )
    with pytest.raises(InvalidArgumentError, match="does not describe a u checkpoint"):
        checkpoint.load_checkpoint(folder, acc, TrainingState(**state), loop="u")
    other = tiny_state(0)
    other["models"]["net"][0] = torch.nn.Linear(4, 3, bias=False)
    other["optimizer"] = torch.optim.AdamW(other["models"]["net"].parameters())
    with pytest.raises(InvalidArgumentError, match=r"net\.safetensors does not match") as info:
        checkpoint.load_checkpoint(folder, acc, TrainingState(**other), loop="t")
    assert "\n" not in str(info.value)
    sgd = tiny_state(0)
    sgd["optimizer"] = torch.optim.SGD(sgd["models"]["net"].parameters(), lr=0.1)
    sgd["scheduler"] = torch.optim.lr_scheduler.LambdaLR(sgd["optimizer"], lambda s: 1.0)
    with pytest.raises(InvalidArgumentError, match=r"optimizer\.json does not fit this run"):
        checkpoint.load_checkpoint(folder, acc, TrainingState(**sgd), loop="t")


def rewrite(folder: Path, name: str, edit: Callable[[Any], Any]) -> None:
    """Change JSON file ``name`` of ``folder`` with ``edit``, and record it in state.json
    (as someone altering a checkpoint would)."""
    path = folder / name
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    state = json.loads((folder / "state.json").read_text())
    state["files"][name] = _digest(path)
    (folder / "state.json").write_text(json.dumps(state))


def _with(d: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {**d, **kw}


@pytest.mark.parametrize(
    ("name", "edit", "why"),
    [
        ("scheduler.json", lambda d: _with(d, optimizer="x"), "does not fit this run"),
        ("scheduler.json", lambda d: _with(d, last_epoch="3"), "`last_epoch` is str"),
        ("optimizer.json", lambda d: _with(d, state={"0": 1}), "does not fit|unknown parameter"),
        (
            "optimizer.json",
            lambda d: _with(d, param_groups=[_with(d["param_groups"][0], lr={"__tensor__": "x"})]),
            "refers to a tensor 'x'",
        ),
        ("rng_0.json", lambda d: _with(d, python=[1, 2, 3]), "not hold valid random states"),
        ("rng_0.json", lambda d: _with(d, torch={"__ndarray__": "torch"}), "malformed"),
        ("state.json", lambda d: _with(d, counters={"global_step": -1}), "does not describe"),
    ],
)
def test_altered_json_is_refused_in_one_line(
    tmp_path: Path, name: str, edit: Callable[[Any], Any], why: str
) -> None:
    acc = OneProcess()
    state = tiny_state(0)
    train_a_bit(state, 1)
    folder = checkpoint.save_checkpoint(
        tmp_path / "c-1", acc, TrainingState(**state), loop="t", counters={"global_step": 1}
    )
    if name == "state.json":
        path = folder / name
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    else:
        rewrite(folder, name, edit)
    with pytest.raises(InvalidArgumentError, match=why) as info:
        checkpoint.load_checkpoint(folder, acc, TrainingState(**tiny_state(1)), loop="t")
    message = str(info.value)
    assert "\n" not in message and name in message and str(folder) in message


def test_latest_skips_a_checkpoint_whose_state_file_is_empty(tmp_path: Path) -> None:
    """After a power loss ``state.json`` may exist but be empty: that folder is not the
    latest complete checkpoint."""
    from facegen.training.checkpoint import latest_checkpoint

    root = tmp_path / "checkpoints"
    (root / "checkpoint-3").mkdir(parents=True)
    (root / "checkpoint-3" / "state.json").write_text('{"loop": "lora"}')
    (root / "checkpoint-5").mkdir()
    (root / "checkpoint-5" / "state.json").write_text("")
    assert latest_checkpoint(tmp_path, "checkpoint-") == root / "checkpoint-3"
