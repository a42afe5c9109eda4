"""Random-weight ONNX test doubles for the face-attribute estimators, built with ``onnx.helper``.

Both compute ``feats = per-channel mean of the (normalised) input`` ``(N, 3)`` followed by a
fixed random affine map, so tests can predict every output from the blob in numpy:

* genderage: input ``data`` ``(1|N, 3, 96, 96)`` → one output ``fc1`` ``(N, 3)`` =
  ``feats · W + b`` (two gender scores, age / 100). Variants start with ``Sub``/``Mul`` nodes
  (mxnet exports: the graph does ``(x - 127.5) / 128`` itself) or a ``BatchNormalization``
  named ``bn_data`` that does the same; ``width`` ≠ 3 and ``two_outputs`` make invalid ones.
* classifier: input ``input`` NCHW ``(N, 3, S, S)`` or NHWC ``(N, S, S, 3)`` → one output
  ``(N, width)`` per entry of ``outputs`` = ``feats · W_k + b_k``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tests.onnx_face_models import _const, _h, _save


def reference(blob: np.ndarray, w: np.ndarray, b: np.ndarray, *, layout: str = "NCHW"):
    """What the doubles compute from the blob they are fed, in numpy (float64)."""
    axes = (2, 3) if layout == "NCHW" else (1, 2)
    feats = np.asarray(blob, np.float64).mean(axis=axes)
    return feats @ w.astype(np.float64) + b.astype(np.float64)


def build_genderage(
    path: Path,
    *,
    dynamic_batch: bool = False,
    normaliser: str | None = None,
    width: int = 3,
    two_outputs: bool = False,
    size: int = 96,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A genderage double; ``normaliser``: ``None``, ``"sub_mul"`` or ``"bn_data"``.

    Returns ``{"w": (3, width), "b": (width,)}``: ``out = mean_c(normalised input) · w + b``,
    where the normalised input is ``(x - 127.5) / 128`` of raw pixels for the normalising
    variants, and what the caller fed otherwise.
    """
    onnx = _h()
    h = onnx.helper
    f32 = onnx.TensorProto.FLOAT
    rng = np.random.default_rng(seed)
    # gender scores of either sign; the age column lands near 0.2-0.6 for typical crops
    w = rng.standard_normal((3, width)).astype(np.float32)
    b = np.zeros(width, np.float32)
    if width == 3:
        w[:, 2] *= 0.1
        b[2] = 0.4
    n: Any = "N" if dynamic_batch else 1
    nodes: list[Any] = []
    inits: list[Any] = [_const("w", w), _const("b", b)]
    x = "data"
    if normaliser == "sub_mul":
        nodes += [
            h.make_node("Sub", [x, "norm_mean"], ["x_centred"], name="Sub_0"),
            h.make_node("Mul", ["x_centred", "norm_scale"], ["x_normed"], name="Mul_1"),
        ]
        inits += [
            _const("norm_mean", np.array(127.5, np.float32)),
            _const("norm_scale", np.array(1 / 128, np.float32)),
        ]
        x = "x_normed"
    elif normaliser == "bn_data":
        eps = 1e-5
        nodes.append(
            h.make_node(
                "BatchNormalization",
                [x, "bn_gamma", "bn_beta", "bn_mean", "bn_var"],
                ["x_normed"],
                name="bn_data",
                epsilon=eps,
            )
        )
        inits += [
            _const("bn_gamma", np.ones(3, np.float32)),
            _const("bn_beta", np.zeros(3, np.float32)),
            _const("bn_mean", np.full(3, 127.5, np.float32)),
            _const("bn_var", np.full(3, 128.0**2 - eps, np.float32)),
        ]
        x = "x_normed"
    elif normaliser is not None:
        raise ValueError(f"unknown normaliser {normaliser!r}")
    nodes += [
        h.make_node("ReduceMean", [x], ["pooled"], axes=[2, 3], keepdims=0, name="pool"),
        h.make_node("Gemm", ["pooled", "w", "b"], ["fc1"], name="fc"),
    ]
    outputs = [h.make_tensor_value_info("fc1", f32, [n, width])]
    if two_outputs:
        nodes.append(h.make_node("Identity", ["fc1"], ["fc1_copy"]))
        outputs.append(h.make_tensor_value_info("fc1_copy", f32, [n, width]))
    inp = h.make_tensor_value_info("data", f32, [n, 3, size, size])
    _save(h.make_graph(nodes, "tiny_genderage", [inp], outputs, initializer=inits), path)
    return {"w": w, "b": b}


def build_classifier(
    path: Path,
    *,
    outputs: dict[str, int],
    size: int | None = 32,
    layout: str = "NCHW",
    dynamic_batch: bool = True,
    seed: int = 7,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A classifier double with one output per ``outputs`` entry (name → width).

    ``size=None`` leaves the input's spatial size symbolic. Returns name → ``(w, b)``.
    """
    onnx = _h()
    h = onnx.helper
    f32 = onnx.TensorProto.FLOAT
    rng = np.random.default_rng(seed)
    n: Any = "N" if dynamic_batch else 1
    s: Any = size if size is not None else "S"
    shape = [n, 3, s, s] if layout == "NCHW" else [n, s, s, 3]
    axes = [2, 3] if layout == "NCHW" else [1, 2]
    nodes = [h.make_node("ReduceMean", ["input"], ["pooled"], axes=axes, keepdims=0)]
    inits: list[Any] = []
    infos: list[Any] = []
    consts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, width in outputs.items():
        w = rng.standard_normal((3, width)).astype(np.float32)
        b = (rng.standard_normal(width) * 0.1).astype(np.float32)
        inits += [_const(f"w_{name}", w), _const(f"b_{name}", b)]
        nodes.append(h.make_node("Gemm", ["pooled", f"w_{name}", f"b_{name}"], [name]))
        infos.append(h.make_tensor_value_info(name, f32, [n, width]))
        consts[name] = (w, b)
    inp = h.make_tensor_value_info("input", f32, shape)
    _save(h.make_graph(nodes, "tiny_classifier", [inp], infos, initializer=inits), path)
    return consts
