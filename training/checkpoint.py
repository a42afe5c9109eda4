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

Reading refuses, with one line naming the folder and the file, a folder holding any file
it did not write (a ``*.pkl``, ``*.bin``, ``*.pt`` … or anything unknown), a file whose
size or checksum differs from ``state.json``, and a file that does not parse as what its
name says. Nothing in a checkpoint is ever unpickled or executed: JSON is parsed into plain
values and tensors come from safetensors. (The checksums catch damage and careless edits;
they are no signature, since whoever can write the folder can rewrite ``state.json`` too.
What keeps a planted file harmless is that nothing here can run code.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facegen._version import __version__
from facegen.errors import InvalidArgumentError
from facegen.training.state_json import (
    StateFormatError,
    decode,
    encode,
    write_json,
    write_tensors,
)

__all__ = [
    "STATE_FILE",
    "is_complete",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

FORMAT = "facegen-training-checkpoint"
FORMAT_VERSION = 1
#: Written last into every checkpoint folder: what the folder holds, and the counters.
STATE_FILE = "state.json"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
SCHEDULER_FILE = "scheduler.json"
SCALER_FILE = "scaler.json"
_SHARED = (OPTIMIZER_TENSORS, OPTIMIZER_JSON, SCHEDULER_FILE, SCALER_FILE)
_RNG = re.compile(r"rng_(\d{1,6})\.(safetensors|json)")
_MODEL_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: Suffixes of files that pickle (PyTorch, Accelerate, joblib, numpy object arrays).
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt", ".joblib", ".npy", ".npz")
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


def _model_state(accelerator: Any, model: Any, trainable_only: bool) -> dict[str, torch.Tensor]:
    m = accelerator.unwrap_model(model)
    if trainable_only:
        return {n: p.detach() for n, p in m.named_parameters() if p.requires_grad}
    return {k: v.detach() for k, v in m.state_dict().items()}


def _device_rng() -> tuple[str, Any] | None:
    if torch.cuda.is_available():
        return "cuda", torch.cuda
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps", torch.mps
    return None


def _rng_state(loaders: Sequence[Any]) -> dict[str, Any]:
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


def _check_distributed(accelerator: Any) -> None:
    kind = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
    if kind.upper() in _UNSUPPORTED:
        raise InvalidArgumentError(
            f"checkpoints need one device or data-parallel processes (DDP), got {kind}"
        )


def _check_names(models: Mapping[str, Any]) -> None:
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


def _allowed(models: Mapping[str, Any] | Sequence[str]) -> set[str]:
    return {*_SHARED, *(f"{m}.safetensors" for m in models)}


def _digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": h.hexdigest()}


def save_checkpoint(
    folder: str | Path,
    accelerator: Any,
    *,
    loop: str,
    models: Mapping[str, Any],
    optimizer: Any,
    scheduler: Any,
    loaders: Sequence[Any] = (),
    counters: Mapping[str, int],
    trainable_only: bool = False,
) -> Path:
    """Write the whole training state into ``folder`` (see the module docstring); call it on
    every process. ``models``: name → (prepared) model; ``trainable_only``: save only the
    parameters that require grad (a LoRA inside a frozen UNet) instead of the state dict.
    ``counters``: ints restored by :func:`load_checkpoint` (``global_step`` at least)."""
    _check_distributed(accelerator)
    _check_names(models)
    final = Path(folder)
    tmp = final.with_name(final.name + ".tmp")
    main = accelerator.is_main_process
    # the small JSON-only states first, on every process: a failure stops all of them alike
    plain: dict[str, Any] = {SCHEDULER_FILE: scheduler.state_dict()}
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
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    tensors: dict[str, torch.Tensor] = {}
    rng = encode(_rng_state(loaders), tensors)
    i = accelerator.process_index
    write_tensors(tmp / f"rng_{i}.safetensors", tensors)
    write_json(tmp / f"rng_{i}.json", rng)
    if main:
        for name, model in models.items():
            state = _model_state(accelerator, model, trainable_only)
            write_tensors(tmp / f"{name}.safetensors", state)
        tensors = {}
        write_json(tmp / OPTIMIZER_JSON, encode(optimizer.state_dict(), tensors))
        write_tensors(tmp / OPTIMIZER_TENSORS, tensors)
        for name, value in plain.items():
            write_json(tmp / name, value)
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
            "models": list(models),
            "trainable_only": trainable_only,
            "files": {p.name: _digest(p) for p in sorted(tmp.iterdir())},
        }
        (tmp / STATE_FILE).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        _fsync_tree(tmp)
        old = final.with_name(final.name + ".old")
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        tmp.rename(final)
        _fsync_tree(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# --------------------------------------------------------------------------- reading them


def _refuse(folder: Path, name: str, why: str) -> InvalidArgumentError:
    """The one-line error for file ``name`` of checkpoint ``folder``."""
    shown = name if name.isprintable() else repr(name)
    return InvalidArgumentError(f"cannot resume from {folder}: {shown} {why}")


def _check_files(folder: Path, models: Mapping[str, Any]) -> dict[str, Any]:
    """The parsed ``state.json`` of ``folder``, once every file in it is one facegen writes
    and matches the size and checksum recorded there."""
    if not folder.is_dir():
        raise InvalidArgumentError(f"a checkpoint must be a folder, got {folder}")
    allowed = _allowed(models) | {STATE_FILE}
    entries = sorted(
        folder.iterdir(), key=lambda p: (not p.name.lower().endswith(PICKLE_SUFFIXES), p.name)
    )
    for p in entries:
        if p.name.lower().endswith(PICKLE_SUFFIXES):
            raise _refuse(
                folder,
                p.name,
                "is a pickle file, which facegen never loads: its checkpoints hold only "
                "safetensors and JSON files (one written by an older facegen, or altered?); "
                "resume from another checkpoint or start afresh",
            )
        if p.is_symlink() or not p.is_file():
            raise _refuse(folder, p.name, "is not a regular file; checkpoints hold only files")
        if p.name not in allowed and not _RNG.fullmatch(p.name):
            raise _refuse(
                folder,
                p.name,
                "is not a file facegen writes into this loop's checkpoints; remove it or "
                "resume from another checkpoint",
            )
    if not (folder / STATE_FILE).is_file():
        raise _refuse(
            folder, STATE_FILE, "is missing: the checkpoint is incomplete (a save cut short)"
        )
    state = _read_json(folder, STATE_FILE)
    files = state.get("files") if isinstance(state, dict) else None
    ok = (
        isinstance(state, dict)
        and state.get("format") == FORMAT
        and isinstance(files, dict)
        and all(k != STATE_FILE and (k in allowed or _RNG.fullmatch(k)) for k in files)
        and all(
            isinstance(v, dict)
            and isinstance(v.get("bytes"), int)
            and isinstance(v.get("sha256"), str)
            for v in files.values()
        )
    )
    if not ok:
        raise _refuse(folder, STATE_FILE, "is not the state file of a facegen checkpoint")
    present = {p.name for p in entries} - {STATE_FILE}
    for name in sorted(present - set(files)):
        raise _refuse(folder, name, f"is not listed in {STATE_FILE} (added after the save?)")
    for name in sorted(set(files) - present):
        raise _refuse(folder, name, f"is missing (listed in {STATE_FILE})")
    for name in sorted(files):
        if _digest(folder / name) != {k: files[name][k] for k in ("bytes", "sha256")}:
            raise _refuse(
                folder,
                name,
                f"does not match the size and checksum {STATE_FILE} records "
                "(damaged or altered after the save)",
            )
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_json(folder: Path, name: str) -> Any:
    try:
        return json.loads((folder / name).read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise _refuse(folder, name, f"is not valid JSON ({_first_line(exc)})") from None


def _read_tensors(folder: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(folder / name), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise _refuse(
            folder, name, f"is not a valid safetensors file ({_first_line(exc)})"
        ) from None


def _read(folder: Path, name: str, tensors_name: str | None = None) -> Any:
    """The value :func:`save_checkpoint` encoded into ``name`` (tensors from ``tensors_name``)."""
    tensors = _read_tensors(folder, tensors_name) if tensors_name else {}
    value = _read_json(folder, name)
    try:
        return decode(value, tensors)
    except (StateFormatError, TypeError, ValueError, RecursionError) as exc:
        raise _refuse(folder, name, f"is not what facegen writes there ({exc})") from None


def _kind(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return type(v).__name__
    return "number" if isinstance(v, int | float) else type(v).__name__


def _difference(got: Any, live: Any, path: str) -> str | None:
    """Where ``got`` is not shaped like ``live`` (same dict keys, list lengths and kinds of
    value; numbers may differ, booleans and None may not), or None."""
    if _kind(got) != _kind(live):
        return f"`{path}` is {_kind(got)}, this run's is {_kind(live)}"
    if isinstance(live, dict):
        if set(got) != set(live):
            return f"`{path or '.'}` holds {sorted(map(str, got))}, not {sorted(live)}"
        subs = ((got[k], live[k], f"{path}.{k}" if path else str(k)) for k in live)
    elif isinstance(live, list | tuple):
        if len(got) != len(live):
            return f"`{path}` holds {len(got)} entries, this run's {len(live)}"
        subs = ((a, b, f"{path}.{i}") for i, (a, b) in enumerate(zip(got, live, strict=True)))
    else:
        return None
    return next((d for a, b, p in subs if (d := _difference(a, b, p))), None)


def _check_like(folder: Path, name: str, got: Any, live: Any, path: str = "") -> Any:
    """``got``, when it is shaped like ``live`` (see :func:`_difference`)."""
    where = _difference(got, live, path)
    if where:
        raise _refuse(folder, name, f"does not fit this run: {where}")
    return got


def _check_weights(
    folder: Path, name: str, sd: Mapping[str, torch.Tensor], live: Mapping[str, torch.Tensor]
) -> None:
    if set(sd) != set(live):
        raise _refuse(
            folder,
            name,
            f"does not match this run's model: {len(set(sd) - set(live))} unknown and "
            f"{len(set(live) - set(sd))} missing tensors (was it made with other settings?)",
        )
    for k, v in sd.items():
        if v.shape != live[k].shape:
            raise _refuse(
                folder,
                name,
                f"holds `{k}` of shape {tuple(v.shape)}, this run's is "
                f"{tuple(live[k].shape)} (was it made with other settings?)",
            )


def _check_optimizer(folder: Path, got: Any, optimizer: Any) -> dict[str, Any]:
    """``got`` when it is an optimizer state for ``optimizer``: the same parameter groups
    (hyperparameters of the same kinds), per-parameter tensors of the parameters' shapes."""
    live = optimizer.state_dict()
    if not isinstance(got, dict) or set(got) != {"state", "param_groups"}:
        raise _refuse(folder, OPTIMIZER_JSON, "does not hold an optimizer state")
    _check_like(folder, OPTIMIZER_JSON, got["param_groups"], live["param_groups"], "param_groups")
    for g, lg in zip(got["param_groups"], live["param_groups"], strict=True):
        if g["params"] != lg["params"]:
            raise _refuse(folder, OPTIMIZER_JSON, "does not hold this run's parameters")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not isinstance(got["state"], dict):
        raise _refuse(folder, OPTIMIZER_JSON, "does not hold an optimizer state")
    for i, st in got["state"].items():
        if not (isinstance(i, int) and 0 <= i < len(params) and isinstance(st, dict)):
            raise _refuse(folder, OPTIMIZER_JSON, f"holds a state for an unknown parameter {i!r}")
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.ndim and v.shape != params[i].shape:
                raise _refuse(
                    folder,
                    OPTIMIZER_TENSORS,
                    f"holds `state.{i}.{k}` of shape {tuple(v.shape)}, this run's parameter "
                    f"is {tuple(params[i].shape)}",
                )
    return got


def _set_rng(folder: Path, i: int, rng: Any, loaders: Sequence[Any]) -> None:
    name = f"rng_{i}.json"
    if not isinstance(rng, dict) or not {"python", "numpy", "torch", "loaders"} <= set(rng):
        raise _refuse(folder, name, "does not hold random states")
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
        raise _refuse(
            folder, name, f"does not hold valid random states ({_first_line(exc)})"
        ) from None


def load_checkpoint(
    folder: str | Path,
    accelerator: Any,
    *,
    loop: str,
    models: Mapping[str, Any],
    optimizer: Any,
    scheduler: Any,
    loaders: Sequence[Any] = (),
    trainable_only: bool = False,
) -> dict[str, int]:
    """Restore what :func:`save_checkpoint` wrote into ``folder`` (the same ``models``,
    ``loaders`` and ``trainable_only``); returns the saved counters. Every file is checked
    (name, size, checksum, format, keys and shapes) before anything is restored; any problem
    is an :class:`~facegen.errors.InvalidArgumentError` of one line naming the file."""
    _check_distributed(accelerator)
    _check_names(models)
    folder = Path(folder)
    state = _check_files(folder, models)
    counters = state.get("counters")
    num = state.get("num_processes")
    if (
        state.get("format_version") != FORMAT_VERSION
        or state.get("loop") != loop
        or state.get("models") != list(models)
        or state.get("trainable_only") is not trainable_only
        or not isinstance(counters, dict)
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counters.values()
        )
        or "global_step" not in counters
        or not isinstance(state.get("accelerator_step"), int)
        or not (isinstance(num, int) and num >= 1)
    ):
        raise _refuse(
            folder,
            STATE_FILE,
            f"does not describe a {loop} checkpoint of this facegen (format {FORMAT_VERSION}, "
            f"models {', '.join(models)})",
        )
    present = set(state["files"])
    needed = [f"{m}.safetensors" for m in models] + [OPTIMIZER_TENSORS, OPTIMIZER_JSON]
    i = accelerator.process_index
    rng_files = {f"rng_{i}.safetensors", f"rng_{i}.json"}
    for name in [*needed, SCHEDULER_FILE, *(sorted(rng_files) if i < num else [])]:
        if name not in present:
            raise _refuse(folder, name, "is missing")

    # read and check everything before anything changes
    weights = {}
    for name, model in models.items():
        sd = _read_tensors(folder, f"{name}.safetensors")
        _check_weights(
            folder, f"{name}.safetensors", sd, _model_state(accelerator, model, trainable_only)
        )
        weights[name] = sd
    opt = _check_optimizer(folder, _read(folder, OPTIMIZER_JSON, OPTIMIZER_TENSORS), optimizer)
    sched = _check_like(
        folder, SCHEDULER_FILE, _read(folder, SCHEDULER_FILE), scheduler.state_dict()
    )
    scaler = getattr(accelerator, "scaler", None)
    scaler_state = None
    if scaler is not None and SCALER_FILE in present:
        live = scaler.state_dict()
        scaler_state = _check_like(folder, SCALER_FILE, _read(folder, SCALER_FILE), live)
    rng = _read(folder, f"rng_{i}.json", f"rng_{i}.safetensors") if i < num else None

    for name, model in models.items():
        accelerator.unwrap_model(model).load_state_dict(weights[name], strict=not trainable_only)
    try:
        optimizer.load_state_dict(opt)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise _refuse(
            folder, OPTIMIZER_JSON, f"does not fit this run's optimizer ({_first_line(exc)})"
        ) from None
    try:
        scheduler.load_state_dict(sched)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _refuse(
            folder, SCHEDULER_FILE, f"does not fit this run's LR schedule ({_first_line(exc)})"
        ) from None
    if scaler_state is not None:
        try:
            scaler.load_state_dict(scaler_state)
        except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise _refuse(
                folder, SCALER_FILE, f"does not fit this run's gradient scaler ({_first_line(exc)})"
            ) from None
    if rng is not None:
        _set_rng(folder, i, rng, loaders)
    else:
        logger.info("%s was saved by %d process(es): process %d's RNG not restored", folder, num, i)
    accelerator.step = state["accelerator_step"]
    return dict(counters)
