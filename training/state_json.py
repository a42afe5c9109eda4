"""Nested training state (optimizer, LR scheduler, RNG states) as JSON plus named tensors.

:func:`encode` turns a ``state_dict()``-like value into a JSON value and a dict of tensors
(for a safetensors file); :func:`decode` turns them back. Dicts, lists, tuples, ``None``,
bools, ints, floats and strings are kept as such (tuples and dicts with non-string keys are
marked so they come back as they were); a tensor is stored under its path (dict keys and
list positions joined by dots, e.g. ``state.0.exp_avg``); a numpy array is stored as a
tensor with its dtype noted (uint32 as int64). Nothing else is accepted, so decoding only
ever builds plain values, tensors and arrays: no pickle, nothing executed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facegen.errors import InvalidArgumentError

__all__ = ["StateFormatError", "decode", "encode", "unshared", "write_state", "write_tensors"]

_NDARRAY_DTYPES = ("uint32", "uint8", "int32", "int64", "float32", "float64", "bool")
_MARKERS = ("__tensor__", "__ndarray__", "__tuple__", "__items__")


def _join(name: str, key: Any) -> str:
    return f"{name}.{key}" if name else str(key)


def encode(obj: Any, tensors: dict[str, torch.Tensor], name: str = "") -> Any:
    """``obj`` as a JSON value. Every tensor (any shape and dtype, moved to the CPU) and numpy
    array in it goes into ``tensors`` under its path from ``name`` (dict keys and list
    positions joined by dots) and is referenced by that name in the returned value."""
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, torch.Tensor | np.ndarray):
        if name in tensors:
            raise InvalidArgumentError(f"two training-state tensors would both be named {name!r}")
        if isinstance(obj, torch.Tensor):
            tensors[name] = obj.detach().cpu().contiguous()
            return {"__tensor__": name}
        dtype = str(obj.dtype)
        if dtype not in _NDARRAY_DTYPES:
            raise InvalidArgumentError(
                f"training state `{name}` must be a numeric array, got dtype {dtype}"
            )
        data = obj.astype(np.int64) if dtype == "uint32" else np.ascontiguousarray(obj)
        tensors[name] = torch.from_numpy(data.copy())
        return {"__ndarray__": name, "dtype": dtype}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, tensors, _join(name, i)) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, tensors, _join(name, i)) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        plain = all(isinstance(k, str) and k not in _MARKERS for k in obj)
        if plain:
            return {k: encode(v, tensors, _join(name, k)) for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if k is not None and not isinstance(k, bool | int | float | str):
                raise InvalidArgumentError(
                    f"training state `{name}` must have str or number keys, got {type(k).__name__}"
                )
            items.append([k, encode(v, tensors, _join(name, k))])
        return {"__items__": items}
    raise InvalidArgumentError(
        f"training state `{name}` must be numbers, strings, lists, dicts or tensors to be saved "
        f"without pickle, got {type(obj).__name__}"
    )


class StateFormatError(Exception):
    """A checkpoint file is not what facegen writes (turned into one line naming it)."""


def decode(node: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The value :func:`encode` encoded; only plain values, tensors and arrays come out."""
    if node is None or isinstance(node, bool | int | float | str):
        return node
    if isinstance(node, list):
        return [decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        raise StateFormatError(f"unexpected {type(node).__name__}")
    marker = [k for k in _MARKERS if k in node]
    if not marker:
        return {k: decode(v, tensors) for k, v in node.items()}
    kind = marker[0]
    allowed = {kind, "dtype"} if kind == "__ndarray__" else {kind}
    if len(marker) > 1 or set(node) != allowed:
        raise StateFormatError(f"malformed {kind} entry")
    value = node[kind]
    if kind in ("__tensor__", "__ndarray__"):
        if not isinstance(value, str) or value not in tensors:
            raise StateFormatError(f"it refers to a tensor {value!r} that is not in the checkpoint")
        if kind == "__tensor__":
            return tensors[value]
        if node["dtype"] not in _NDARRAY_DTYPES:
            raise StateFormatError(f"unsupported array dtype {node['dtype']!r}")
        return tensors[value].numpy().astype(node["dtype"])
    if not isinstance(value, list):
        raise StateFormatError(f"malformed {kind} entry")
    if kind == "__tuple__":
        return tuple(decode(v, tensors) for v in value)
    out: dict[Any, Any] = {}
    for pair in value:
        if not (isinstance(pair, list) and len(pair) == 2) or isinstance(pair[0], list | dict):
            raise StateFormatError("malformed __items__ entry")
        out[pair[0]] = decode(pair[1], tensors)
    return out


def unshared(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` with every tensor that shares memory with an earlier one copied
    (safetensors refuses shared memory)."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for k, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen:
            t = t.clone()
        elif ptr != -1:
            seen.add(ptr)
        out[k] = t
    return out


def write_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Write ``tensors`` (name → tensor of any shape and dtype) as a safetensors file."""
    from safetensors.torch import save_file

    save_file(unshared(tensors), str(path), metadata={"format": "pt"})


def write_state(path: Path, value: Any) -> None:
    """Write the JSON value ``value`` (as :func:`encode` returns it) as compact UTF-8 text
    (into a checkpoint's temporary folder, which becomes visible only once complete)."""
    path.write_text(json.dumps(value), encoding="utf-8")
