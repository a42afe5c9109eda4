"""Tiny ONNX test doubles with the real insightface signatures, built with ``onnx.helper``.

They compute simple, known functions of their input so the tests can check the backends'
preprocessing and decoding against closed-form expectations:

* SCRFD-like detectors: input ``input.1`` ``(1, 3, H, W)`` (dynamic H, W). For stride ``s`` the
  score of anchor ``a`` in cell ``(row, col)`` is ``sigmoid(gain · m + bias + a · anchor_step)``
  where ``m`` is the mean of one colour channel of the *normalised* input over that cell
  (R drives stride 8, G stride 16, B stride 32; strides 64 and 128 never fire). Box and
  keypoint distances are constants per anchor, in stride units.
* Landmark-like models: input ``(1, 3, 192, 192)`` → ``(1, L)`` with
  ``out = const + alpha · mean(R channel of the normalised input)``.
* ArcFace-like encoders: input ``(N|1, 3, 112, 112)`` → ``(N, 512)``: 8×8 average pooling,
  flatten, then a fixed random ``Gemm``.

"Normalised input" is what the graph sees after its own ``Sub``/``Mul`` nodes when it has
them (mxnet-style graphs), otherwise what the backend fed it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

OPSET = 17
IR_VERSION = 8


@dataclass
class TinyModel:
    """A built test model: where it is and the constants it computes with."""

    path: Path
    spec: dict[str, Any] = field(default_factory=dict)


def _onnx() -> Any:
    return pytest.importorskip("onnx", reason="building tiny ONNX models needs the `onnx` package")


def _save(graph: Any, path: Path) -> Path:
    onnx = _onnx()
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)], producer_name="facegen-tests"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _const(name: str, value: np.ndarray) -> Any:
    return _onnx().numpy_helper.from_array(np.asarray(value), name)


def _normaliser_nodes(
    x: str, mean: float, scale: float, names: tuple[str, str] = ("Sub_0", "Mul_1")
) -> tuple[list[Any], list[Any], str]:
    """``Sub``/``Mul`` nodes named like mxnet exports: ``(x - mean) * scale``."""
    h = _onnx().helper
    nodes = [
        h.make_node("Sub", [x, "norm_mean"], ["x_centred"], name=names[0]),
        h.make_node("Mul", ["x_centred", "norm_scale"], ["x_normed"], name=names[1]),
    ]
    inits = [
        _const("norm_mean", np.array(mean, np.float32)),
        _const("norm_scale", np.array(scale, np.float32)),
    ]
    return nodes, inits, "x_normed"


# --------------------------------------------------------------------------- SCRFD

SCRFD_BOX_DIST = np.array([[1.0, 1.25, 1.0, 1.5], [1.2, 1.45, 1.2, 1.7]], np.float32)
SCRFD_KPS_DIST = np.array(
    [
        [-0.5, -0.4, 0.5, -0.4, 0.0, 0.1, -0.35, 0.6, 0.35, 0.6],
        [-0.6, -0.5, 0.6, -0.5, 0.1, 0.2, -0.45, 0.7, 0.45, 0.7],
    ],
    np.float32,
)
SCRFD_GAIN, SCRFD_BIAS, SCRFD_ANCHOR_STEP = 8.0, -4.0, -1.0
SCRFD_CHANNELS = {8: 0, 16: 1, 32: 2, 64: None, 128: None}


def build_scrfd(
    path: Path,
    *,
    strides: tuple[int, ...] = (8, 16, 32),
    num_anchors: int = 2,
    with_kps: bool = True,
    batched: bool = False,
    extra_outputs: int = 0,
    fixed_hw: tuple[int, int] | None = None,
) -> TinyModel:
    """An SCRFD-like detector (see the module doc)."""
    onnx = _onnx()
    h = onnx.helper
    f32 = onnx.TensorProto.FLOAT
    hw: list[Any] = list(fixed_hw) if fixed_hw else ["height", "width"]
    inp = h.make_tensor_value_info("input.1", f32, [1, 3, *hw])
    nodes: list[Any] = []
    inits: list[Any] = []
    score_outs, box_outs, kps_outs = [], [], []
    box_dist = SCRFD_BOX_DIST[:num_anchors]
    kps_dist = SCRFD_KPS_DIST[:num_anchors]
    lead = [1] if batched else []

    def out_info(name: str, width: int) -> Any:
        return h.make_tensor_value_info(name, f32, [*lead, f"n_{name}", width])

    inits.append(_const("shape_1", np.array([*lead, -1, 1], np.int64)))
    inits.append(_const("shape_4", np.array([*lead, -1, 4], np.int64)))
    inits.append(_const("shape_10", np.array([*lead, -1, 10], np.int64)))
    for s in strides:
        ch = SCRFD_CHANNELS[s]
        w = np.zeros((num_anchors, 3, s, s), np.float32)
        b = np.full(num_anchors, -30.0, np.float32)
        if ch is not None:
            w[:, ch] = SCRFD_GAIN / (s * s)
            b = SCRFD_BIAS + SCRFD_ANCHOR_STEP * np.arange(num_anchors, dtype=np.float32)
        inits += [
            _const(f"w{s}", w),
            _const(f"b{s}", b),
            _const(f"wz{s}", np.zeros((1, 3, s, s), np.float32)),
            _const(f"box{s}", (box_dist.reshape(1, 1, 1, -1))),
            _const(f"kps{s}", (kps_dist.reshape(1, 1, 1, -1))),
        ]
        conv = {"kernel_shape": [s, s], "strides": [s, s]}
        nodes += [
            h.make_node("Conv", ["input.1", f"w{s}", f"b{s}"], [f"logit{s}"], **conv),
            h.make_node("Sigmoid", [f"logit{s}"], [f"prob{s}"]),
            h.make_node("Transpose", [f"prob{s}"], [f"prob_t{s}"], perm=[0, 2, 3, 1]),
            h.make_node("Reshape", [f"prob_t{s}", "shape_1"], [f"score_{s}"]),
            h.make_node("Conv", ["input.1", f"wz{s}"], [f"zero{s}"], **conv),
            h.make_node("Transpose", [f"zero{s}"], [f"zero_t{s}"], perm=[0, 2, 3, 1]),
            h.make_node("Add", [f"zero_t{s}", f"box{s}"], [f"box_map{s}"]),
            h.make_node("Reshape", [f"box_map{s}", "shape_4"], [f"bbox_{s}"]),
        ]
        score_outs.append(out_info(f"score_{s}", 1))
        box_outs.append(out_info(f"bbox_{s}", 4))
        if with_kps:
            nodes += [
                h.make_node("Add", [f"zero_t{s}", f"kps{s}"], [f"kps_map{s}"]),
                h.make_node("Reshape", [f"kps_map{s}", "shape_10"], [f"kps_{s}"]),
            ]
            kps_outs.append(out_info(f"kps_{s}", 10))
    outputs = score_outs + box_outs + kps_outs
    for i in range(extra_outputs):
        nodes.append(h.make_node("Identity", [f"score_{strides[0]}"], [f"extra_{i}"]))
        outputs.append(out_info(f"extra_{i}", 1))
    graph = h.make_graph(nodes, "tiny_scrfd", [inp], outputs, initializer=inits)
    spec = {
        "strides": strides,
        "num_anchors": num_anchors,
        "channels": {s: SCRFD_CHANNELS[s] for s in strides},
        "gain": SCRFD_GAIN,
        "bias": SCRFD_BIAS,
        "anchor_step": SCRFD_ANCHOR_STEP,
        "box_dist": box_dist,
        "kps_dist": kps_dist,
    }
    return TinyModel(_save(graph, path), spec)


# --------------------------------------------------------------------------- landmarks


def build_landmark(
    path: Path,
    *,
    out_len: int,
    sub_mul: bool = False,
    first_node_name: str | None = None,
    seed: int = 0,
    size: int = 192,
) -> TinyModel:
    """A landmark-like model: ``out = const + alpha · mean(R of the normalised input)``.

    ``const`` is random in [-0.8, 0.8]; ``alpha`` is 0.1 for every value. With ``sub_mul``
    the graph starts with ``Sub_0``/``Mul_1`` doing ``(x - 127.5) / 128`` itself.
    ``first_node_name`` prepends an ``Identity`` node with that name (e.g. ``bn_data``).
    """
    onnx = _onnx()
    h = onnx.helper
    f32 = onnx.TensorProto.FLOAT
    rng = np.random.default_rng(seed)
    const = rng.uniform(-0.8, 0.8, (1, out_len)).astype(np.float32)
    alpha = np.full((1, out_len), 0.1, np.float32)
    inp = h.make_tensor_value_info("data", f32, [1, 3, size, size])
    nodes: list[Any] = []
    inits: list[Any] = []
    x = "data"
    if first_node_name:
        nodes.append(h.make_node("Identity", [x], ["x_first"], name=first_node_name))
        x = "x_first"
    if sub_mul:
        n, i, x = _normaliser_nodes(x, 127.5, 1.0 / 128.0)
        nodes += n
        inits += i
    red = np.zeros((1, 3, 1, 1), np.float32)
    red[0, 0] = 1.0
    inits += [
        _const("w_red", red),
        _const("flat_shape", np.array([-1, 1], np.int64)),
        _const("alpha", alpha),
        _const("const", const),
    ]
    nodes += [
        h.make_node("Conv", [x, "w_red"], ["red"], name="conv_red"),
        h.make_node("GlobalAveragePool", ["red"], ["red_mean"], name="gap"),
        h.make_node("Reshape", ["red_mean", "flat_shape"], ["red_flat"], name="flatten"),
        h.make_node("Mul", ["red_flat", "alpha"], ["shift"], name="scale_alpha"),
        h.make_node("Add", ["shift", "const"], ["fc1"], name="add_const"),
    ]
    out = h.make_tensor_value_info("fc1", f32, [1, out_len])
    graph = h.make_graph(nodes, "tiny_landmark", [inp], [out], initializer=inits)
    return TinyModel(_save(graph, path), {"const": const[0], "alpha": alpha[0], "size": size})


# --------------------------------------------------------------------------- ArcFace


def build_arcface(
    path: Path,
    *,
    batch: int | str = "N",
    sub_mul: bool = False,
    dim: int = 512,
    seed: int = 0,
    size: int = 112,
) -> TinyModel:
    """An ArcFace-like encoder: 8×8 average pool → flatten → ``Gemm`` to ``dim``.

    With ``sub_mul`` the graph starts with ``Sub_0``/``Mul_1`` doing ``(x - 127.5) / 128``.
    ``spec["reference"]`` computes the graph in numpy from its (already normalised) NCHW input.
    """
    onnx = _onnx()
    h = onnx.helper
    f32 = onnx.TensorProto.FLOAT
    rng = np.random.default_rng(seed)
    feat = 3 * (size // 8) ** 2
    w = (rng.standard_normal((feat, dim)) / np.sqrt(feat)).astype(np.float32)
    b = (0.1 * rng.standard_normal(dim)).astype(np.float32)
    inp = h.make_tensor_value_info("input.1", f32, [batch, 3, size, size])
    nodes: list[Any] = []
    inits: list[Any] = [_const("fc_w", w), _const("fc_b", b)]
    x = "input.1"
    scale = 1.0 / 128.0
    if sub_mul:
        n, i, x = _normaliser_nodes(x, 127.5, scale)
        nodes += n
        inits += i
    nodes += [
        h.make_node("AveragePool", [x], ["pooled"], kernel_shape=[8, 8], strides=[8, 8]),
        h.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        h.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["683"]),
    ]
    out = h.make_tensor_value_info("683", f32, [batch, dim])
    graph = h.make_graph(nodes, "tiny_arcface", [inp], [out], initializer=inits)

    def reference(blob: np.ndarray) -> np.ndarray:
        """float32 NCHW input as fed to the graph → ``(N, dim)`` output, in numpy."""
        x = blob.astype(np.float64)
        if sub_mul:
            x = (x - 127.5) * scale
        n = len(x)
        pooled = x.reshape(n, 3, size // 8, 8, size // 8, 8).mean(axis=(3, 5))
        return (pooled.reshape(n, -1) @ w + b).astype(np.float32)

    return TinyModel(_save(graph, path), {"reference": reference, "dim": dim, "size": size})


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def tiny_onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny_onnx")


@pytest.fixture(scope="session")
def scrfd_model(tiny_onnx_dir: Path) -> TinyModel:
    """9 outputs (3 strides × scores/boxes/keypoints), 2 anchors, unbatched 2-D outputs."""
    return build_scrfd(tiny_onnx_dir / "scrfd_tiny_kps.onnx")


@pytest.fixture(scope="session")
def scrfd_batched_model(tiny_onnx_dir: Path) -> TinyModel:
    """As :func:`scrfd_model` with 3-D ``(1, N, C)`` outputs."""
    return build_scrfd(tiny_onnx_dir / "scrfd_tiny_batched.onnx", batched=True)


@pytest.fixture(scope="session")
def scrfd_fmc5_model(tiny_onnx_dir: Path) -> TinyModel:
    """15 outputs (strides 8…128), 1 anchor."""
    return build_scrfd(
        tiny_onnx_dir / "scrfd_tiny_fmc5.onnx", strides=(8, 16, 32, 64, 128), num_anchors=1
    )


@pytest.fixture(scope="session")
def scrfd_fixed_model(tiny_onnx_dir: Path) -> TinyModel:
    """As :func:`scrfd_model` with a fixed 256×320 (H×W) input."""
    return build_scrfd(tiny_onnx_dir / "scrfd_tiny_fixed.onnx", fixed_hw=(256, 320))


@pytest.fixture(scope="session")
def scrfd_no_kps_model(tiny_onnx_dir: Path) -> TinyModel:
    """6 outputs: scores and boxes only."""
    return build_scrfd(tiny_onnx_dir / "scrfd_tiny_nokps.onnx", with_kps=False)


@pytest.fixture(scope="session")
def scrfd_7_outputs_model(tiny_onnx_dir: Path) -> TinyModel:
    """6 outputs plus a stray seventh: no SCRFD layout has 7."""
    return build_scrfd(tiny_onnx_dir / "scrfd_tiny_7out.onnx", with_kps=False, extra_outputs=1)


@pytest.fixture(scope="session")
def landmark68_model(tiny_onnx_dir: Path) -> TinyModel:
    """1k3d68-like: ``(1, 3309)`` output, no normalisation in the graph."""
    return build_landmark(tiny_onnx_dir / "lmk68_tiny.onnx", out_len=3309, seed=1)


@pytest.fixture(scope="session")
def landmark106_model(tiny_onnx_dir: Path) -> TinyModel:
    """2d106det-like: ``(1, 212)`` output, graph starts with ``Sub_0``/``Mul_1``."""
    return build_landmark(tiny_onnx_dir / "lmk106_tiny.onnx", out_len=212, sub_mul=True, seed=2)


@pytest.fixture(scope="session")
def bn_data_model(tiny_onnx_dir: Path) -> TinyModel:
    """A landmark-like graph whose first node is named ``bn_data`` (mxnet exports)."""
    return build_landmark(
        tiny_onnx_dir / "bn_data_tiny.onnx", out_len=212, first_node_name="bn_data"
    )


@pytest.fixture(scope="session")
def arcface_model(tiny_onnx_dir: Path) -> TinyModel:
    """Dynamic batch, no normalisation in the graph."""
    return build_arcface(tiny_onnx_dir / "arcface_tiny.onnx")


@pytest.fixture(scope="session")
def arcface_batch1_model(tiny_onnx_dir: Path) -> TinyModel:
    """Same weights as :func:`arcface_model`, batch axis fixed at 1."""
    return build_arcface(tiny_onnx_dir / "arcface_tiny_b1.onnx", batch=1)


@pytest.fixture(scope="session")
def arcface_submul_model(tiny_onnx_dir: Path) -> TinyModel:
    """Graph starts with ``Sub_0``/``Mul_1`` (mxnet-style): takes raw pixel values."""
    return build_arcface(tiny_onnx_dir / "arcface_tiny_submul.onnx", sub_mul=True, seed=3)
