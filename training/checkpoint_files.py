"""The files of a facegen training checkpoint folder, and the checks each one passes before
anything is restored from it (see :mod:`facegen.training.checkpoint` for the layout).

A folder is refused, with one line naming it and the file (:func:`refuse`), when it holds any
file facegen does not write there (a pickle above all), a file whose size or SHA-256 differs
from ``state.json``, or a file that does not parse as what its name says or does not fit the
run it is loaded into (other keys, shapes or kinds of value). Reading only ever parses JSON
and safetensors.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from facegen.errors import InvalidArgumentError
from facegen.training.state_json import StateFormatError, decode

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "OPTIMIZER_JSON",
    "OPTIMIZER_TENSORS",
    "PICKLE_SUFFIXES",
    "SCALER_FILE",
    "SCHEDULER_FILE",
    "STATE_FILE",
    "check_files",
    "check_like",
    "check_optimizer",
    "check_state",
    "check_weights",
    "digest",
    "first_line",
    "read_tensors",
    "read_value",
    "refuse",
]

FORMAT = "facegen-training-checkpoint"
FORMAT_VERSION = 1
#: Written last into every checkpoint folder: what the folder holds, and the counters.
STATE_FILE = "state.json"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
SCHEDULER_FILE = "scheduler.json"
SCALER_FILE = "scaler.json"
SHARED_FILES = (OPTIMIZER_TENSORS, OPTIMIZER_JSON, SCHEDULER_FILE, SCALER_FILE)
RNG_FILE = re.compile(r"rng_(\d{1,6})\.(safetensors|json)")
#: Suffixes of files that pickle (PyTorch, Accelerate, joblib, numpy object arrays).
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt", ".joblib", ".npy", ".npz")


def allowed_files(models: Mapping[str, Any] | Sequence[str]) -> set[str]:
    """The shared files a checkpoint of ``models`` may hold (not ``state.json``, not RNG)."""
    return {*SHARED_FILES, *(f"{m}.safetensors" for m in models)}


def digest(path: Path) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex digest}`` of the file ``path``."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": h.hexdigest()}


def refuse(folder: Path, name: str, why: str) -> InvalidArgumentError:
    """The one-line error for file ``name`` of checkpoint ``folder``."""
    shown = name if name.isprintable() else repr(name)
    return InvalidArgumentError(f"cannot resume from {folder}: {shown} {why}")


def check_files(folder: Path, models: Mapping[str, Any]) -> dict[str, Any]:
    """The parsed ``state.json`` of ``folder``, once every file in it is one facegen writes
    and matches the size and checksum recorded there."""
    if not folder.is_dir():
        raise InvalidArgumentError(f"a checkpoint must be a folder, got {folder}")
    allowed = allowed_files(models) | {STATE_FILE}
    entries = sorted(
        folder.iterdir(), key=lambda p: (not p.name.lower().endswith(PICKLE_SUFFIXES), p.name)
    )
    for p in entries:
        if p.name.lower().endswith(PICKLE_SUFFIXES):
            raise refuse(
                folder,
                p.name,
                "is a pickle file, which facegen never loads: its checkpoints hold only "
                "safetensors and JSON files (one written by an older facegen, or altered?); "
                "resume from another checkpoint or start afresh",
            )
        if p.is_symlink() or not p.is_file():
            raise refuse(folder, p.name, "is not a regular file; checkpoints hold only files")
        if p.name not in allowed and not RNG_FILE.fullmatch(p.name):
            raise refuse(
                folder,
                p.name,
                "is not a file facegen writes into this loop's checkpoints; remove it or "
                "resume from another checkpoint",
            )
    if not (folder / STATE_FILE).is_file():
        raise refuse(
            folder, STATE_FILE, "is missing: the checkpoint is incomplete (a save cut short)"
        )
    state = read_json(folder, STATE_FILE)
    files = state.get("files") if isinstance(state, dict) else None
    ok = (
        isinstance(state, dict)
        and state.get("format") == FORMAT
        and isinstance(files, dict)
        and all(k != STATE_FILE and (k in allowed or RNG_FILE.fullmatch(k)) for k in files)
        and all(
            isinstance(v, dict)
            and isinstance(v.get("bytes"), int)
            and isinstance(v.get("sha256"), str)
            for v in files.values()
        )
    )
    if not ok:
        raise refuse(folder, STATE_FILE, "is not the state file of a facegen checkpoint")
    present = {p.name for p in entries} - {STATE_FILE}
    for name in sorted(present - set(files)):
        raise refuse(folder, name, f"is not listed in {STATE_FILE} (added after the save?)")
    for name in sorted(set(files) - present):
        raise refuse(folder, name, f"is missing (listed in {STATE_FILE})")
    for name in sorted(files):
        if digest(folder / name) != {k: files[name][k] for k in ("bytes", "sha256")}:
            raise refuse(
                folder,
                name,
                f"does not match the size and checksum {STATE_FILE} records "
                "(damaged or altered after the save)",
            )
    return state


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_json(folder: Path, name: str) -> Any:
    try:
        return json.loads((folder / name).read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise refuse(folder, name, f"is not valid JSON ({first_line(exc)})") from None


def read_tensors(folder: Path, name: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(folder / name), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise refuse(folder, name, f"is not a valid safetensors file ({first_line(exc)})") from None


def read_value(folder: Path, name: str, tensors_name: str | None = None) -> Any:
    """The value :func:`save_checkpoint` encoded into ``name`` (tensors from ``tensors_name``)."""
    tensors = read_tensors(folder, tensors_name) if tensors_name else {}
    value = read_json(folder, name)
    try:
        return decode(value, tensors)
    except (StateFormatError, TypeError, ValueError, RecursionError) as exc:
        raise refuse(folder, name, f"is not what facegen writes there ({exc})") from None


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


def check_like(folder: Path, name: str, got: Any, live: Any, path: str = "") -> Any:
    """``got``, when it is shaped like ``live`` (see :func:`_difference`)."""
    where = _difference(got, live, path)
    if where:
        raise refuse(folder, name, f"does not fit this run: {where}")
    return got


def check_weights(
    folder: Path, name: str, sd: Mapping[str, torch.Tensor], live: Mapping[str, torch.Tensor]
) -> None:
    if set(sd) != set(live):
        raise refuse(
            folder,
            name,
            f"does not match this run's model: {len(set(sd) - set(live))} unknown and "
            f"{len(set(live) - set(sd))} missing tensors (was it made with other settings?)",
        )
    for k, v in sd.items():
        if v.shape != live[k].shape:
            raise refuse(
                folder,
                name,
                f"holds `{k}` of shape {tuple(v.shape)}, this run's is "
                f"{tuple(live[k].shape)} (was it made with other settings?)",
            )


def check_optimizer(folder: Path, got: Any, optimizer: Any) -> dict[str, Any]:
    """``got`` when it is an optimizer state for ``optimizer``: the same parameter groups
    (hyperparameters of the same kinds), per-parameter tensors of the parameters' shapes."""
    live = optimizer.state_dict()
    if not isinstance(got, dict) or set(got) != {"state", "param_groups"}:
        raise refuse(folder, OPTIMIZER_JSON, "does not hold an optimizer state")
    check_like(folder, OPTIMIZER_JSON, got["param_groups"], live["param_groups"], "param_groups")
    for g, lg in zip(got["param_groups"], live["param_groups"], strict=True):
        if g["params"] != lg["params"]:
            raise refuse(folder, OPTIMIZER_JSON, "does not hold this run's parameters")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not isinstance(got["state"], dict):
        raise refuse(folder, OPTIMIZER_JSON, "does not hold an optimizer state")
    for i, st in got["state"].items():
        if not (isinstance(i, int) and 0 <= i < len(params) and isinstance(st, dict)):
            raise refuse(folder, OPTIMIZER_JSON, f"holds a state for an unknown parameter {i!r}")
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.ndim and v.shape != params[i].shape:
                raise refuse(
                    folder,
                    OPTIMIZER_TENSORS,
                    f"holds `state.{i}.{k}` of shape {tuple(v.shape)}, this run's parameter "
                    f"is {tuple(params[i].shape)}",
                )
    return got


def check_state(
    folder: Path,
    state: Mapping[str, Any],
    *,
    loop: str,
    models: Sequence[str],
    trainable_only: bool,
    process_index: int,
) -> None:
    """Refuse a ``state.json`` (as :func:`check_files` returns it) that does not describe a
    checkpoint of ``loop`` with these ``models``, or whose folder lacks a file this process
    needs (its own ``rng_<i>`` pair only when the run that saved it had process ``i``)."""
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
        raise refuse(
            folder,
            STATE_FILE,
            f"does not describe a {loop} checkpoint of this facegen (format {FORMAT_VERSION}, "
            f"models {', '.join(models)})",
        )
    i = process_index
    needed = [f"{m}.safetensors" for m in models] + [OPTIMIZER_TENSORS, OPTIMIZER_JSON]
    needed.append(SCHEDULER_FILE)
    if i < num:
        needed += [f"rng_{i}.json", f"rng_{i}.safetensors"]
    for name in needed:
        if name not in state["files"]:
            raise refuse(folder, name, "is missing")
