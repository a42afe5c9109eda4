"""Random-weight ONNX test doubles in the real signatures of the one-shot swappers, restorers,
parsers and occluders (input/output names, shapes, value ranges; inswapper's ``emap`` as the
graph's last initializer), built with ``onnx.helper``.

Each computes a simple known function so tests can check preprocessing and decoding against
a reference written from the published descriptions:

* swappers: ``out = act(W · target_pixel + V · source + b)`` per pixel (1×1 convolution of the
  normalised target, the source projected to 3 channels and broadcast), ``act`` = sigmoid
  (outputs in [0, 1]: inswapper, SimSwap) or tanh (outputs in [-1, 1]: GHOST, HyperSwap, whose
  second output ``mask`` is a constant map);
* converters: ``input`` (1, 512) → ``output`` (1, 512) = ``input · M``;
* restorers: ``tanh(W · pixel + b)`` (CodeFormer adds ``weight`` (float64, cast) to every
  channel);
* BiSeNet: 19 logits per pixel = ``W · pixel + b`` (first of its outputs);
* XSeg: NHWC in, NHWC ``(N, 256, 256, 1)`` = sigmoid of one channel mix out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17
IR_VERSION = 8


def _h() -> Any:
    import onnx

    return onnx


def _save(graph: Any, path: Path) -> Path:
    onnx = _h()
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)], producer_name="facegen-tests"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _const(name: str, value: np.ndarray) -> Any:
    return _h().numpy_helper.from_array(np.asarray(value), name)


def _batch(dynamic: bool) -> Any:
    return "N" if dynamic else 1


def build_swapper(
    path: Path,
    *,
    size: int,
    activation: str = "sigmoid",
    names: tuple[str, str] = ("target", "source"),
    emap: bool = False,
    mask_output: bool = False,
    dynamic_batch: bool = False,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A swapper double; returns its constants (``w`` 3×3, ``v`` 512×3, ``b`` 3, ``emap``)."""
    onnx = _h()
    h = onnx.helper
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((3, 3)) * 0.5).astype(np.float32)
    v = (rng.standard_normal((512, 3)) * 0.5).astype(np.float32)
    b = (rng.standard_normal(3) * 0.1).astype(np.float32)
    n = _batch(dynamic_batch)
    target, source = names
    nodes = [
        h.make_node("Conv", [target, "w"], ["mixed"]),
        h.make_node("MatMul", [source, "v"], ["proj"]),
        h.make_node("Add", ["proj", "b"], ["shift"]),
        h.make_node("Reshape", ["shift", "shape4"], ["shift4"]),
        h.make_node("Add", ["mixed", "shift4"], ["pre"]),
        h.make_node("Sigmoid" if activation == "sigmoid" else "Tanh", ["pre"], ["output"]),
    ]
    inits = [
        _const("w", w.reshape(3, 3, 1, 1)),
        _const("v", v),
        _const("b", b),
        _const("shape4", np.array([-1, 3, 1, 1], np.int64)),
    ]
    outputs = [h.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [n, 3, size, size])]
    if mask_output:
        nodes.append(h.make_node("ReduceMean", ["output"], ["mask"], axes=[1], keepdims=1))
        outputs.append(h.make_tensor_value_info("mask", onnx.TensorProto.FLOAT, [n, 1, size, size]))
    consts = {"w": w, "v": v, "b": b}
    if emap:
        e = (rng.standard_normal((512, 512)) / np.sqrt(512)).astype(np.float32)
        inits.append(_const("emap", e))  # last: where insightface reads it from
        consts["emap"] = e
    inputs = [
        h.make_tensor_value_info(target, onnx.TensorProto.FLOAT, [n, 3, size, size]),
        h.make_tensor_value_info(source, onnx.TensorProto.FLOAT, [n, 512]),
    ]
    _save(h.make_graph(nodes, "tiny_swapper", inputs, outputs, initializer=inits), path)
    return consts


def swapper_reference(blob: np.ndarray, source: np.ndarray, c: dict[str, np.ndarray], act: str):
    """What :func:`build_swapper`'s graph computes, in numpy."""
    mixed = np.einsum("oc,nchw->nohw", c["w"], blob)
    pre = mixed + (source @ c["v"] + c["b"])[:, :, None, None]
    return 1 / (1 + np.exp(-pre)) if act == "sigmoid" else np.tanh(pre)


def build_converter(path: Path, *, seed: int = 1) -> np.ndarray:
    onnx = _h()
    h = onnx.helper
    m = (np.random.default_rng(seed).standard_normal((512, 512)) / np.sqrt(512)).astype(np.float32)
    graph = h.make_graph(
        [h.make_node("MatMul", ["input", "m"], ["output"])],
        "tiny_converter",
        [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 512])],
        [h.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1, 512])],
        initializer=[_const("m", m)],
    )
    _save(graph, path)
    return m


def build_restorer(
    path: Path, *, codeformer: bool = False, dynamic_batch: bool = False, seed: int = 2
) -> dict[str, np.ndarray]:
    onnx = _h()
    h = onnx.helper
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((3, 3)) * 0.5).astype(np.float32)
    b = (rng.standard_normal(3) * 0.1).astype(np.float32).reshape(1, 3, 1, 1)
    n = _batch(dynamic_batch)
    nodes = [
        h.make_node("Conv", ["input", "w"], ["mixed"]),
        h.make_node("Add", ["mixed", "b"], ["pre"]),
    ]
    inputs = [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [n, 3, 512, 512])]
    last = "pre"
    if codeformer:
        inputs.append(h.make_tensor_value_info("weight", onnx.TensorProto.DOUBLE, [1]))
        nodes += [
            h.make_node("Cast", ["weight"], ["wf"], to=onnx.TensorProto.FLOAT),
            h.make_node("Add", ["pre", "wf"], ["pre_w"]),
        ]
        last = "pre_w"
    nodes.append(h.make_node("Tanh", [last], ["output"]))
    graph = h.make_graph(
        nodes, "tiny_restorer", inputs,
        [h.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [n, 3, 512, 512])],
        initializer=[_const("w", w.reshape(3, 3, 1, 1)), _const("b", b)],
    )  # fmt: skip
    _save(graph, path)
    return {"w": w, "b": b.reshape(3)}


def build_parser(path: Path, *, seed: int = 3) -> dict[str, np.ndarray]:
    onnx = _h()
    h = onnx.helper
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((19, 3)).astype(np.float32)
    b = (rng.standard_normal(19) * 0.1).astype(np.float32).reshape(1, 19, 1, 1)
    nodes = [
        h.make_node("Conv", ["input", "w"], ["mixed"]),
        h.make_node("Add", ["mixed", "b"], ["output"]),
        h.make_node("Identity", ["output"], ["aux"]),  # BiSeNet has more outputs; [0] counts
    ]
    graph = h.make_graph(
        nodes, "tiny_bisenet",
        [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 512, 512])],
        [h.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1, 19, 512, 512]),
         h.make_tensor_value_info("aux", onnx.TensorProto.FLOAT, [1, 19, 512, 512])],
        initializer=[_const("w", w.reshape(19, 3, 1, 1)), _const("b", b)],
    )  # fmt: skip
    _save(graph, path)
    return {"w": w, "b": b.reshape(19)}


def build_occluder(path: Path, *, seed: int = 4) -> dict[str, np.ndarray]:
    onnx = _h()
    h = onnx.helper
    w = np.random.default_rng(seed).standard_normal((3, 1)).astype(np.float32) * 4
    nodes = [
        h.make_node("MatMul", ["input", "w"], ["pre"]),
        h.make_node("Sigmoid", ["pre"], ["output"]),
    ]
    graph = h.make_graph(
        nodes, "tiny_xseg",
        [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 256, 256, 3])],
        [h.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1, 256, 256, 1])],
        initializer=[_const("w", w)],
    )  # fmt: skip
    _save(graph, path)
    return {"w": w}


def build_arcface_w600k(path: Path, *, seed: int = 5) -> Path:
    """An ArcFace-shaped encoder (``input.1`` (N, 3, 112, 112) → (N, 512); 8×8 average pool,
    flatten, a fixed random matrix) saved as ``w600k_r50.onnx`` so its embeddings carry
    buffalo_l's encoder id."""
    onnx = _h()
    h = onnx.helper
    m = (np.random.default_rng(seed).standard_normal((3 * 14 * 14, 512)) * 0.05).astype(np.float32)
    nodes = [
        h.make_node("AveragePool", ["input.1"], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        h.make_node("Flatten", ["pooled"], ["flat"]),
        h.make_node("MatMul", ["flat", "m"], ["683"]),
    ]
    graph = h.make_graph(
        nodes, "tiny_w600k",
        [h.make_tensor_value_info("input.1", onnx.TensorProto.FLOAT, ["N", 3, 112, 112])],
        [h.make_tensor_value_info("683", onnx.TensorProto.FLOAT, ["N", 512])],
        initializer=[_const("m", m)],
    )  # fmt: skip
    return _save(graph, path)
