"""facegen's training checkpoints: every piece of a run's state in safetensors and JSON.

Every training loop (LoRA, adapter, ControlNet through
:func:`facegen.training.diffusion.loop.run_training`, and face recognition through
:func:`facegen.training.fr.train.train_fr`) writes and reads its checkpoints here, never
with ``accelerator.save_state`` / ``load_state``, whose optimizer, scheduler, sampler, RNG
and custom-object files are pickles that loading would execute. A checkpoint folder holds::

    <model>.safetensors     one per model of the loop: its trainable parameters (generative
                            loops: ``trainable``) or its whole state dict (face recognition:
                            ``backbone`` and ``head``), float tensors as trained
    optimizer.safetensors   the optimizer's tensors (``state.<i>.exp_avg``, ``…momentum_buffer``,
                            ``state.<i>.step``, …: parameter ``i`` of the optimizer's order)
    optimizer.json          its parameter groups (learning rate, betas, weight decay, …) and
                            every non-tensor entry, pointing at the tensors by name
    scheduler.json          the LR scheduler's ``state_dict()``
    scaler.json             the fp16 gradient scaler's ``state_dict()`` (fp16 runs only)
    rng_<i>.safetensors     process ``i``'s random states: torch CPU (uint8), CUDA / MPS
    rng_<i>.json            (uint8, one per device), numpy's MT19937 key (624 uint32, stored
                            as int64), the data loaders' shuffling generators (uint8); the
                            JSON holds Python's ``random`` state and the rest of numpy's
    state.json              written last: loop, counters (``global_step``, …), Accelerate's
                            accumulation step, process count, and the byte size and SHA-256
                            of every other file

A checkpoint is written into ``<name>.tmp`` and renamed to ``<name>`` once complete, so a
run killed while saving leaves no folder that looks finished; :func:`latest_checkpoint`
also skips any folder without ``state.json``. Only the main process writes the shared
files; every process writes its own ``rng_<i>`` pair.

Reading (the checks are in :mod:`facegen.training.checkpoint_files`) refuses, with one line
naming the folder and the file, a folder holding any file it did not write (a ``*.pkl``,
``*.bin``, ``*.pt`` … or anything unknown), a file whose size or checksum differs from
``state.json``, and a file that does not parse as what its name says. Nothing in a checkpoint is ever unpickled or executed: JSON is parsed into plain
values and tensors come from safetensors. (The checksums catch damage and careless edits;
they are no signature, since whoever can write the folder can rewrite ``state.json`` too.
What keeps a planted file harmless is that nothing here can run code.)
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from facegen._version import __version__
from facegen.errors import InvalidArgumentError
from facegen.fileio import write_json
from facegen.training.checkpoint_files import (
    FORMAT,
    FORMAT_VERSION,
    OPTIMIZER_JSON,
    OPTIMIZER_TENSORS,
    SCALER_FILE,
    SCHEDULER_FILE,
    STATE_FILE,
    check_files,
    check_like,
    check_optimizer,
    check_state,
    check_weights,
    digest,
    first_line,
    read_tensors,
    read_value,
    refuse,
)
from facegen.training.state_json import StateFormatError, encode, write_state, write_tensors

if TYPE_CHECKING:
    from accelerate import Accelerator
    from accelerate.scheduler import AcceleratedScheduler
    from torch.optim.lr_scheduler import LRScheduler
    from torch.utils.data import DataLoader

__all__ = [
    "STATE_FILE",
    "TrainingState",
    "is_complete",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

_MODEL_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_UNSUPPORTED = ("DEEPSPEED", "FSDP", "MEGATRON_LM")


# --------------------------------------------------------------------------- finding them


def _step_of(p: Path, prefix: str) -> int:
    m = re.fullmatch(rf"{re.escape(prefix)}(\d+)", p.name)
    return int(m.group(1)) if m else -1


def list_checkpoints(output_dir: str | Path, prefix: str) -> list[Path]:
    """``output_dir/checkpoints/<prefix>N`` folders (complete or not), oldest first."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _step_of(p, prefix) >= 0]
    return sorted(found, key=lambda p: _step_of(p, prefix))


def is_complete(folder: str | Path) -> bool:
    """Whether ``folder`` holds the ``state.json`` a checkpoint gets when fully written (a
    file that parses as a JSON object: after a power loss it may exist but be empty)."""
    path = Path(folder) / STATE_FILE
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


def _fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` and the folder itself to disk (before the rename that
    makes the checkpoint visible)."""
    for p in [*sorted(folder.iterdir()), folder]:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:  # a file system without fsync on folders
            pass
        finally:
            os.close(fd)


def latest_checkpoint(output_dir: str | Path, prefix: str) -> Path | None:
    """The complete ``<prefix>N`` folder with the largest ``N``, or None; newer folders
    without ``state.json`` (a save that was cut short, or a checkpoint of an older facegen
    whose pickled state is no longer read) are skipped with a warning."""
    for p in reversed(list_checkpoints(output_dir, prefix)):
        if is_complete(p):
            return p
        logger.warning(
            "skipping %s: it has no %s (a save cut short, or a checkpoint of an older facegen, "
            "whose pickled state is no longer loaded)",
            p,
            STATE_FILE,
        )
    return None


def prune_checkpoints(output_dir: str | Path, prefix: str, keep: int | None) -> None:
    """Delete all but the newest ``keep`` complete checkpoints (None: keep all), and the
    leftovers of cut-short saves (``*.tmp`` / ``*.old``). The marker goes first, so a
    half-deleted folder is never taken for a checkpoint."""
    complete = [p for p in list_checkpoints(output_dir, prefix) if is_complete(p)]
    for old in complete[:-keep] if keep else []:
        (old / STATE_FILE).unlink(missing_ok=True)
        shutil.rmtree(old, ignore_errors=True)
    folder = Path(output_dir) / "checkpoints"
    for stale in folder.glob(f"{prefix}*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in folder.glob(f"{prefix}*.old"):
        shutil.rmtree(stale, ignore_errors=True)


# --------------------------------------------------------------------------- what is saved


@dataclass(frozen=True)
class TrainingState:
    """What a checkpoint holds, all prepared by the run's Accelerator: ``models`` (name →
    model; the name becomes ``<name>.safetensors``), the ``optimizer``, the LR ``scheduler``
    and the data ``loaders`` whose own generators are saved with the random states."""

    models: Mapping[str, torch.nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler | AcceleratedScheduler
    loaders: Sequence[DataLoader[Any]] = ()


def _model_state(
    accelerator: Accelerator, model: torch.nn.Module, trainable_only: bool
) -> dict[str, torch.Tensor]:
    m = accelerator.unwrap_model(model)
    if trainable_only:
        return {n: p.detach() for n, p in m.named_parameters() if p.requires_grad}
    return {k: v.detach() for k, v in m.state_dict().items()}


def _device_rng() -> tuple[str, Any] | None:
    """``("cuda", torch.cuda)`` or ``("mps", torch.mps)`` when there is such a device."""
    if torch.cuda.is_available():
        return "cuda", torch.cuda
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps", torch.mps
    return None


def _rng_state(loaders: Sequence[DataLoader[Any]]) -> dict[str, Any]:
    """This process's random states: Python, numpy, torch CPU, the device's, the loaders'
    own generators (they draw the workers' seeds, and shuffle where the sampler uses them)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "loaders": [
            g.get_state()
            if isinstance(g := getattr(ld, "generator", None), torch.Generator)
            else None
            for ld in loaders
        ],
    }
    device = _device_rng()
    if device is not None:
        kind, module = device
        state[kind] = module.get_rng_state_all() if kind == "cuda" else [module.get_rng_state()]
    return state


def _check_distributed(accelerator: Accelerator) -> None:
    kind = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
    if kind.upper() in _UNSUPPORTED:
        raise InvalidArgumentError(
            f"checkpoints need one device or data-parallel processes (DDP), got {kind}"
        )


def _check_names(models: Mapping[str, torch.nn.Module]) -> None:
    for name in models:
        if (
            not _MODEL_NAME.fullmatch(name)
            or name.startswith("rng_")
            or name in ("optimizer", "scheduler", "scaler", "state")
        ):
            raise InvalidArgumentError(
                "a checkpoint's model name must be lower-case letters, digits and _, and not "
                f"a state file's name, got {name!r}"
            )


def _plain_states(accelerator: Accelerator, state: TrainingState) -> dict[str, Any]:
    """The JSON-only files (LR schedule, gradient scaler) by name, encoded; refused when
    they hold tensors."""
    plain: dict[str, Any] = {SCHEDULER_FILE: state.scheduler.state_dict()}
    if getattr(accelerator, "scaler", None) is not None:
        plain[SCALER_FILE] = accelerator.scaler.state_dict()
    for name, value in plain.items():
        stray: dict[str, torch.Tensor] = {}
        plain[name] = encode(value, stray)
        if stray:
            raise InvalidArgumentError(
                f"the state in {name} must be plain numbers to be saved as JSON, got tensors "
                f"({', '.join(stray)})"
            )
    return plain


def _publish(tmp: Path, final: Path) -> None:
    """Make the finished ``tmp`` folder the checkpoint ``final`` (replacing an older one)."""
    _fsync_tree(tmp)
    old = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    _fsync_tree(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    folder: str | Path,
    accelerator: Accelerator,
    state: TrainingState,
    *,
    loop: str,
    counters: Mapping[str, int],
    trainable_only: bool = False,
) -> Path:
    """Write the whole training ``state`` into ``folder`` (see the module docstring); call it
    on every process. ``trainable_only``: save only the parameters that require grad (a LoRA
    inside a frozen UNet) instead of the state dict. ``counters``: ints restored by
    :func:`load_checkpoint` (``global_step`` at least)."""
    _check_distributed(accelerator)
    _check_names(state.models)
    final = Path(folder)
    tmp = final.with_name(final.name + ".tmp")
    main = accelerator.is_main_process
    # the small JSON-only states first, on every process: a failure stops all of them alike
    plain = _plain_states(accelerator, state)
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    tensors: dict[str, torch.Tensor] = {}
    rng = encode(_rng_state(state.loaders), tensors)
    i = accelerator.process_index
    write_tensors(tmp / f"rng_{i}.safetensors", tensors)
    write_state(tmp / f"rng_{i}.json", rng)
    if main:
        for name, model in state.models.items():
            write_tensors(
                tmp / f"{name}.safetensors", _model_state(accelerator, model, trainable_only)
            )
        tensors = {}
        write_state(tmp / OPTIMIZER_JSON, encode(state.optimizer.state_dict(), tensors))
        write_tensors(tmp / OPTIMIZER_TENSORS, tensors)
        for name, value in plain.items():
            write_state(tmp / name, value)
    accelerator.wait_for_everyone()
    if main:
        marker = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "loop": loop,
            "facegen_version": __version__,
            "counters": {k: int(v) for k, v in counters.items()},
            "accelerator_step": int(getattr(accelerator, "step", 0)),
            "num_processes": int(accelerator.num_processes),
            "models": list(state.models),
            "trainable_only": trainable_only,
            "files": {p.name: digest(p) for p in sorted(tmp.iterdir())},
        }
        write_json(tmp / STATE_FILE, marker)
        _publish(tmp, final)
    accelerator.wait_for_everyone()
    return final


# --------------------------------------------------------------------------- reading them


def _set_rng(folder: Path, i: int, rng: Any, loaders: Sequence[DataLoader[Any]]) -> None:
    """Restore process ``i``'s random states ``rng`` (read from ``folder``)."""
    name = f"rng_{i}.json"
    if not isinstance(rng, dict) or not {"python", "numpy", "torch", "loaders"} <= set(rng):
        raise refuse(folder, name, "does not hold random states")
    try:
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        saved = rng["loaders"]
        if not isinstance(saved, list) or len(saved) != len(loaders):
            raise StateFormatError("it holds another number of data loaders")
        for ld, g in zip(loaders, saved, strict=True):
            gen = getattr(ld, "generator", None)
            if g is not None and isinstance(gen, torch.Generator):
                gen.set_state(g)
        device = _device_rng()
        if device is not None and isinstance(rng.get(device[0]), list):
            kind, module = device
            states = rng[kind]
            if kind == "cuda" and len(states) == module.device_count():
                module.set_rng_state_all(states)
            elif kind == "mps" and len(states) == 1:
                module.set_rng_state(states[0])
            else:
                logger.info("%s: %d %s RNG states saved; not restored", folder, len(states), kind)
    except (StateFormatError, TypeError, ValueError, RuntimeError, IndexError, KeyError) as exc:
        raise refuse(
            folder, name, f"does not hold valid random states ({first_line(exc)})"
        ) from None


@dataclass
class _Saved:
    """Everything read from a checkpoint folder and checked, before any of it is restored."""

    weights: dict[str, dict[str, torch.Tensor]]
    optimizer: dict[str, Any]
    scheduler: Any
    scaler: Any
    rng: Any


def _read_saved(
    folder: Path,
    files: Mapping[str, Any],
    accelerator: Accelerator,
    state: TrainingState,
    *,
    trainable_only: bool,
    with_rng: bool,
) -> _Saved:
    """Read and check every file of ``folder`` this process restores (``files``: the file
    table of its ``state.json``)."""
    weights = {}
    for name, model in state.models.items():
        sd = read_tensors(folder, f"{name}.safetensors")
        live = _model_state(accelerator, model, trainable_only)
        check_weights(folder, f"{name}.safetensors", sd, live)
        weights[name] = sd
    opt = check_optimizer(
        folder, read_value(folder, OPTIMIZER_JSON, OPTIMIZER_TENSORS), state.optimizer
    )
    live = state.scheduler.state_dict()
    sched = check_like(folder, SCHEDULER_FILE, read_value(folder, SCHEDULER_FILE), live)
    scaler = getattr(accelerator, "scaler", None)
    scaler_state = None
    if scaler is not None and SCALER_FILE in files:
        live = scaler.state_dict()
        scaler_state = check_like(folder, SCALER_FILE, read_value(folder, SCALER_FILE), live)
    i = accelerator.process_index
    rng = read_value(folder, f"rng_{i}.json", f"rng_{i}.safetensors") if with_rng else None
    return _Saved(weights, opt, sched, scaler_state, rng)


def _restore(
    folder: Path,
    saved: _Saved,
    accelerator: Accelerator,
    state: TrainingState,
    *,
    trainable_only: bool,
) -> None:
    """Load what :func:`_read_saved` read into the run; a state that still does not fit
    (the optimizer's, the schedule's, the scaler's own checks) is refused naming its file."""
    for name, model in state.models.items():
        accelerator.unwrap_model(model).load_state_dict(
            saved.weights[name], strict=not trainable_only
        )
    loads: list[tuple[Any, Any, str, str, tuple[type[BaseException], ...]]] = [
        (state.optimizer, saved.optimizer, OPTIMIZER_JSON, "optimizer", _OPTIMIZER_ERRORS),
        (state.scheduler, saved.scheduler, SCHEDULER_FILE, "LR schedule", _SCHEDULER_ERRORS),
    ]
    if saved.scaler is not None:
        loads.append(
            (accelerator.scaler, saved.scaler, SCALER_FILE, "gradient scaler", _SCALER_ERRORS)
        )
    for target, value, name, what, errors in loads:
        try:
            target.load_state_dict(value)
        except errors as exc:
            raise refuse(
                folder, name, f"does not fit this run's {what} ({first_line(exc)})"
            ) from None


_OPTIMIZER_ERRORS = (KeyError, TypeError, ValueError, RuntimeError)
_SCHEDULER_ERRORS = (KeyError, TypeError, ValueError, AttributeError)
_SCALER_ERRORS = (KeyError, TypeError, ValueError, RuntimeError, OverflowError)


def load_checkpoint(
    folder: str | Path,
    accelerator: Accelerator,
    state: TrainingState,
    *,
    loop: str,
    trainable_only: bool = False,
) -> dict[str, int]:
    """Restore what :func:`save_checkpoint` wrote into ``folder`` into ``state`` (the same
    models and loaders, the same ``trainable_only``); returns the saved counters. Every file
    is checked (name, size, checksum, format, keys and shapes) before anything is restored;
    any problem is an :class:`~facegen.errors.InvalidArgumentError` of one line naming the
    file."""
    _check_distributed(accelerator)
    _check_names(state.models)
    folder = Path(folder)
    marker = check_files(folder, state.models)
    i = accelerator.process_index
    check_state(
        folder,
        marker,
        loop=loop,
        models=list(state.models),
        trainable_only=trainable_only,
        process_index=i,
    )
    num = marker["num_processes"]
    saved = _read_saved(
        folder, marker["files"], accelerator, state, trainable_only=trainable_only, with_rng=i < num
    )
    _restore(folder, saved, accelerator, state, trainable_only=trainable_only)
    if saved.rng is not None:
        _set_rng(folder, i, saved.rng, state.loaders)
    else:
        logger.info("%s was saved by %d process(es): process %d's RNG not restored", folder, num, i)
    accelerator.step = marker["accelerator_step"]
    return dict(marker["counters"])
