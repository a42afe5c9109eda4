"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) in PyTorch.

dlib's own CPU build of this network (``dlib-bin``: no BLAS, one thread, holds the GIL) embeds
~13 faces/s on one core; the same maths in PyTorch embeds ~270 faces/s on that core (batches of
32, oneDNN) and also runs on CUDA, in float16 if wanted. Nothing here needs dlib:

* :func:`parse_dat` reads dlib's serialised network (dlib's own binary format) into named
  float32 arrays, checking every layer against the network definition below;
* :class:`DlibResNet` is the network, built from an explicit definition (:data:`STAGES`), not
  guessed from tensor shapes.

The network (``anet_type`` of dlib's ``dnn_face_recognition_ex.cpp``), as dlib computes it:

* input ``input_rgb_image_sized<150>``: RGB, ``(pixel - mean[c]) / 256`` with the per-channel
  means stored in the file (122.78, 117.00, 104.30);
* ``con 7×7/2, 32`` (dlib pads ``k // 2`` only for stride 1, so this conv and every stride-2
  conv are unpadded) → per-channel affine (batch-norm frozen at training end) → ReLU →
  ``max_pool 3×3/2`` (unpadded): 150 → 72 → 35;
* 14 residual blocks, ``conv3×3 → affine → ReLU → conv3×3 → affine`` plus a shortcut, then
  ReLU. A down-sampling block's first conv has stride 2 and its shortcut is a 2×2/2 average
  pool; dlib's ``add_prev`` adds tensors of different shapes by zero-padding both to the larger
  channel count and spatial size (the smaller one sits at the top-left). That happens twice
  spatially: at 8×8 the strided conv gives 3×3 but the pool 4×4, at 4×4 they give 1×1 and 2×2;
* widths 32 ×3, 64 ×4, 128 ×3, 256 ×3, 256 ×1 (the first block of each width after the first
  down-samples) → global average pool → ``fc_no_bias 128``.

The output is dlib's raw 128-D descriptor (not normalised), what
``face_recognition_model_v1.compute_face_descriptor`` returns with ``num_jitters=0``.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facegen.errors import InvalidModelError

__all__ = [
    "INPUT_SIZE",
    "STAGES",
    "DlibResNet",
    "parse_dat",
]

logger = logging.getLogger(__name__)

INPUT_SIZE = 150
STEM_WIDTH = 32
DESCRIPTOR_DIM = 128
#: Residual stages, input side first: ``(width, blocks, first block down-samples)``.
STAGES: tuple[tuple[int, int, bool], ...] = (
    (32, 3, False),
    (64, 4, True),
    (128, 3, True),
    (256, 3, True),
    (256, 1, True),
)


@dataclass(frozen=True)
class _BlockSpec:
    name: str
    cin: int
    cout: int
    down: bool


def _blocks() -> list[_BlockSpec]:
    out: list[_BlockSpec] = []
    cin = STEM_WIDTH
    for width, count, down in STAGES:
        for j in range(count):
            out.append(_BlockSpec(f"blocks.{len(out)}", cin, width, down and j == 0))
            cin = width
    return out


# --------------------------------------------------------------------------- dlib's format


class _Reader:
    """A cursor over dlib's serialisation (``dlib/serialize.h``).

    Integers: one control byte (low nibble = byte count, 0x80 = negative, 0x70 must be 0) then
    that many little-endian magnitude bytes. Floats: integer mantissa and exponent
    (``mantissa · 2**exponent``; exponents 32000/32001/32002 mean inf/-inf/NaN). Strings: a
    length then bytes. Bools: the characters ``'0'``/``'1'``.
    """

    def __init__(self, data: bytes, source: str) -> None:
        self.buf = memoryview(data)
        self.pos = 0
        self.source = source

    def fail(self, message: str) -> InvalidModelError:
        return InvalidModelError(
            f"{self.source}: not dlib's face recognition ResNet v1 ({message}, at byte {self.pos})"
        )

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(f"file ends early (need {n} bytes)")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        ctrl = self.take(1)[0]
        size = ctrl & 0x0F
        if ctrl & 0x70 or size > 8:
            raise self.fail(f"bad integer control byte 0x{ctrl:02x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if ctrl & 0x80 else value

    def float(self) -> float:
        if self.pos < len(self.buf) and self.buf[self.pos] & 0x70:
            raise self.fail("old ASCII float encoding (unsupported)")
        mantissa, exponent = self.int(), self.int()
        if exponent < 32000:
            return math.ldexp(float(mantissa), exponent)
        return {32000: math.inf, 32001: -math.inf}.get(exponent, math.nan)

    def bool(self) -> bool:
        ch = self.take(1)[0]
        if ch not in (0x30, 0x31):
            raise self.fail(f"bad bool byte 0x{ch:02x}")
        return ch == 0x31

    def string(self) -> str:
        n = self.int()
        if n > 256:
            raise self.fail(f"implausible string length {n}")
        return bytes(self.take(n)).decode("latin-1")

    def expect_int(self, want: int, what: str) -> None:
        got = self.int()
        if got != want:
            raise self.fail(f"{what} must be {want}, got {got}")

    def expect_string(self, *want: str) -> str:
        got = self.string()
        if got not in want:
            raise self.fail(f"expected {' or '.join(map(repr, want))}, got {got!r}")
        return got

    def tensor(self) -> np.ndarray:
        """A ``resizable_tensor``: version, (n, k, nr, nc), then the float32 values."""
        version = self.int()
        dims = tuple(self.int() for _ in range(4))
        if any(d < 0 for d in dims):
            raise self.fail(f"negative tensor shape {dims}")
        count = math.prod(dims)
        if version == 2:  # raw little-endian IEEE float32
            arr = np.frombuffer(self.take(4 * count), dtype="<f4").astype(np.float32)
        elif version == 1:  # dlib's mantissa/exponent floats
            arr = np.array([self.float() for _ in range(count)], dtype=np.float32)
        else:
            raise self.fail(f"unknown tensor version {version}")
        return arr.reshape(dims)

    def alias(self) -> tuple[int, int, int, int]:
        """An ``alias_tensor``: version 1 and its (n, k, nr, nc) shape."""
        self.expect_int(1, "alias_tensor version")
        n, k, nr, nc = (self.int() for _ in range(4))
        return n, k, nr, nc

    def skip_doubles(self, n: int) -> None:
        for _ in range(n):
            self.float()


@dataclass(frozen=True)
class _Layer:
    """One ``add_layer`` of the definition: ``kind`` and where its parameters go."""

    kind: str  # con, affine, relu, max_pool, avg_pool, avg_pool_all, add_prev, fc
    name: str = ""
    cin: int = 0
    cout: int = 0
    size: int = 0  # filter / window size
    stride: int = 1


def _definition() -> list[_Layer | str]:
    """The network, input side first; strings are dlib's ``tag``/``skip`` wrappers.

    Mirrors ``dnn_face_recognition_ex.cpp``: ``block = affine<con<N,3,3,1,1,relu<affine<
    con<N,3,3,s,s,…>>>>>``, ``residual = add_prev1<block<tag1<…>>>``, ``residual_down =
    add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<tag1<…>>>>>>``, each wrapped in ``relu``.
    """
    seq: list[_Layer | str] = [
        _Layer("con", "stem.conv", 3, STEM_WIDTH, 7, 2),
        _Layer("affine", "stem.affine", cout=STEM_WIDTH),
        _Layer("relu"),
        _Layer("max_pool", size=3, stride=2),
    ]
    for b in _blocks():
        seq.append("tag1")
        seq += [
            _Layer("con", f"{b.name}.conv1", b.cin, b.cout, 3, 2 if b.down else 1),
            _Layer("affine", f"{b.name}.affine1", cout=b.cout),
            _Layer("relu"),
            _Layer("con", f"{b.name}.conv2", b.cout, b.cout, 3, 1),
            _Layer("affine", f"{b.name}.affine2", cout=b.cout),
        ]
        if b.down:
            seq += ["tag2", "skip1", _Layer("avg_pool", size=2, stride=2)]
        seq += [_Layer("add_prev"), _Layer("relu")]
    seq += [_Layer("avg_pool_all"), _Layer("fc", "fc", 256, DESCRIPTOR_DIM)]
    return seq


def _padding(size: int, stride: int) -> int:
    """dlib's default for ``con_`` and pooling: ``size // 2`` at stride 1, else 0."""
    return size // 2 if stride == 1 else 0


def _read_layer(r: _Reader, layer: _Layer, out: dict[str, np.ndarray]) -> None:
    """One layer's details (``layers.h`` serialisers), checked against ``layer``."""
    if layer.kind == "con":
        r.expect_string("con_4", "con_5")
        params = r.tensor().reshape(-1)
        r.expect_int(layer.cout, f"{layer.name} num_filters")
        r.expect_int(layer.size, f"{layer.name} nr")
        r.expect_int(layer.size, f"{layer.name} nc")
        r.expect_int(layer.stride, f"{layer.name} stride_y")
        r.expect_int(layer.stride, f"{layer.name} stride_x")
        pad = _padding(layer.size, layer.stride)
        r.expect_int(pad, f"{layer.name} padding_y")
        r.expect_int(pad, f"{layer.name} padding_x")
        filters = r.alias()
        biases = r.alias()
        r.skip_doubles(4)  # learning-rate / weight-decay multipliers
        want = (layer.cout, layer.cin, layer.size, layer.size)
        if filters != want or biases[0] * biases[1] * biases[2] * biases[3] != layer.cout:
            raise r.fail(f"{layer.name} filters {filters} / biases {biases}, want {want}")
        n_w = math.prod(want)
        if params.size != n_w + layer.cout:
            raise r.fail(f"{layer.name} has {params.size} parameters, want {n_w + layer.cout}")
        out[f"{layer.name}.weight"] = params[:n_w].reshape(want)
        out[f"{layer.name}.bias"] = params[n_w:].copy()
    elif layer.kind == "affine":
        r.expect_string("affine_")
        params = r.tensor().reshape(-1)
        gamma, beta = r.alias(), r.alias()
        r.expect_int(0, f"{layer.name} mode (CONV_MODE = 0)")
        c = layer.cout
        if math.prod(gamma) != c or math.prod(beta) != c or params.size != 2 * c:
            raise r.fail(f"{layer.name} gamma {gamma} / beta {beta} for {c} channels")
        out[f"{layer.name}.gamma"] = params[:c].copy()
        out[f"{layer.name}.beta"] = params[c:].copy()
    elif layer.kind == "relu":
        r.expect_string("relu_")
    elif layer.kind == "add_prev":
        r.expect_string("add_prev_")
    elif layer.kind in ("max_pool", "avg_pool", "avg_pool_all"):
        r.expect_string("max_pool_2" if layer.kind == "max_pool" else "avg_pool_2")
        size = layer.size  # 0 = the whole input (avg_pool_everything)
        for what in ("nr", "nc"):
            r.expect_int(size, f"{layer.kind} {what}")
        for what in ("stride_y", "stride_x"):
            r.expect_int(layer.stride, f"{layer.kind} {what}")
        for what in ("padding_y", "padding_x"):
            r.expect_int(_padding(size, layer.stride), f"{layer.kind} {what}")
    elif layer.kind == "fc":
        r.expect_string("fc_2")
        r.expect_int(layer.cout, "fc num_outputs")
        r.expect_int(layer.cin, "fc num_inputs")
        params = r.tensor().reshape(-1)
        weights = r.alias()
        r.alias()  # biases (empty: fc_no_bias)
        r.expect_int(1, "fc bias_mode (FC_NO_BIAS = 1)")
        r.skip_doubles(4)
        if weights != (layer.cin, layer.cout, 1, 1) or params.size != layer.cin * layer.cout:
            raise r.fail(f"fc weights {weights} / {params.size} parameters")
        # dlib computes x @ W with W (num_inputs, num_outputs); torch's Linear wants W.T.
        out["fc.weight"] = np.ascontiguousarray(params.reshape(layer.cin, layer.cout).T)
    else:  # pragma: no cover - the definition only holds the kinds above
        raise AssertionError(layer.kind)


def _read_trailer(r: _Reader, version: int, on_input: bool) -> None:
    """What ``add_layer`` writes after its details (``core.h``): 3 bools, then (usually
    empty) tensors: ``x_grad``, ``cached_output`` and, from version 2, ``params_grad`` — or,
    for the layer sitting on the input layer, ``grad_final`` and from version 3 the sample
    expansion factor."""
    for _ in range(3):
        r.bool()
    for _ in range(3 if on_input or version == 2 else 2):
        r.tensor()
    if on_input and version == 3:
        r.expect_int(1, "sample expansion factor")


def parse_dat(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read ``dlib_face_recognition_resnet_model_v1.dat`` into float32 arrays, without dlib.

    Returns :class:`DlibResNet`'s state dict as numpy: ``input.mean`` ``(3,)`` (RGB, pixel
    units), ``{conv}.weight`` ``(out, in, k, k)`` and ``{conv}.bias``, ``{affine}.gamma`` /
    ``.beta`` ``(C,)``, ``fc.weight`` ``(128, 256)``. Raises :class:`InvalidModelError` when
    the file is not exactly this network (every layer's kind, size, stride and padding is
    checked, and the whole file must be consumed).
    """
    data = Path(path).read_bytes()
    r = _Reader(data, str(path))
    out: dict[str, np.ndarray] = {}
    # add_loss_layer: version 1, loss_metric_ details, then the network
    r.expect_int(1, "add_loss_layer version")
    r.expect_string("loss_metric_2")
    r.float(), r.float()  # margin, distance threshold (training only)
    seq = _definition()
    # Every wrapper writes its version before its subnetwork, so versions come outermost first.
    # The layer on the input layer is a different add_layer specialisation (versions 2-3).
    versions: list[int] = []
    for k, item in reversed(list(enumerate(seq))):
        v = r.int()
        allowed = (1,) if isinstance(item, str) else (2, 3) if k == 0 else (1, 2)
        if v not in allowed:
            raise r.fail(f"{item if isinstance(item, str) else 'add_layer'} version {v}")
        if not isinstance(item, str):
            versions.append(v)
    versions.reverse()
    # The input layer, then each layer's details from the input side out.
    r.expect_string("input_rgb_image_sized")
    mean = np.array([r.float(), r.float(), r.float()], np.float32)
    r.expect_int(INPUT_SIZE, "input rows")
    r.expect_int(INPUT_SIZE, "input columns")
    out["input.mean"] = mean
    layers = [item for item in seq if isinstance(item, _Layer)]
    for k, (layer, version) in enumerate(zip(layers, versions)):
        _read_layer(r, layer, out)
        _read_trailer(r, version, on_input=k == 0)
    if r.pos != len(data):
        raise r.fail(f"{len(data) - r.pos} bytes left after the network")
    for name, arr in out.items():
        if not np.all(np.isfinite(arr)):
            raise r.fail(f"{name} holds NaN or inf")
    return out


# --------------------------------------------------------------------------- network


class _Affine(nn.Module):
    """dlib's ``affine_`` in CONV_MODE: ``x · gamma[c] + beta[c]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels), requires_grad=False)
        self.beta = nn.Parameter(torch.zeros(channels), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.beta.view(1, -1, 1, 1), x, self.gamma.view(1, -1, 1, 1))


def _conv(cin: int, cout: int, size: int, stride: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, size, stride=stride, padding=_padding(size, stride))
    conv.requires_grad_(False)
    return conv


def _add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: pad both to the larger (C, H, W) with zeros at the end, then add."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


class _Block(nn.Module):
    """``relu(affine2(conv2(relu(affine1(conv1(x))))) ⊕ shortcut(x))``, ⊕ = zero-padded add."""

    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        self.down = down
        self.conv1 = _conv(cin, cout, 3, 2 if down else 1)
        self.affine1 = _Affine(cout)
        self.conv2 = _conv(cout, cout, 3, 1)
        self.affine2 = _Affine(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.affine1(self.conv1(x)))
        y = self.affine2(self.conv2(y))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return torch.relu(_add_zero_padded(y, shortcut))


class DlibResNet(nn.Module):
    """dlib's 29-conv face-recognition ResNet; ``forward`` gives dlib's raw descriptors.

    ``forward(x)``: RGB faces aligned like ``dlib.get_face_chip`` (150×150, padding 0.25),
    channels last, pixel values 0–255: a uint8 numpy array or any-dtype tensor
    ``(N, 150, 150, 3)`` (or one face ``(150, 150, 3)``). Returns float32 ``(N, 128)`` raw
    descriptors (norm ≈ 1.3–1.6) on the module's device, whatever the module's dtype.

    Build it with :meth:`from_dat` (parses the ``.dat``) or from a state dict
    (``load_state_dict`` with the arrays of :func:`parse_dat` as tensors). All parameters are
    frozen (``requires_grad=False``); gradients still flow to the input.
    """

    def __init__(self) -> None:
        super().__init__()
        #: per-channel RGB means (pixel units) the input layer subtracts; kept out of the
        #: parameters so that a float16 network still centres its input in float32, like dlib
        self.input_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self.stem = nn.Module()
        self.stem.conv = _conv(3, STEM_WIDTH, 7, 2)
        self.stem.affine = _Affine(STEM_WIDTH)
        self.blocks = nn.ModuleList(_Block(b.cin, b.cout, b.down) for b in _blocks())
        self.fc = nn.Linear(256, DESCRIPTOR_DIM, bias=False)
        self.fc.requires_grad_(False)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> DlibResNet:
        """A float32 CPU network from :func:`parse_dat`'s arrays (all of them, exactly)."""
        net = cls()
        state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in arrays.items()}
        mean = state.pop("input.mean")
        net.load_state_dict(state, strict=True)
        net.input_mean = (float(mean[0]), float(mean[1]), float(mean[2]))
        return net.eval()

    @classmethod
    def from_dat(
        cls,
        dat_path: str | os.PathLike[str],
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> DlibResNet:
        """Parse ``dlib_face_recognition_resnet_model_v1.dat`` (~0.05 s) onto ``device`` in
        ``dtype``, in eval mode."""
        net = cls.from_arrays(parse_dat(dat_path))
        return net.to(device=device, dtype=dtype)

    def preprocess(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Faces (see :meth:`forward`) → ``(N, 3, 150, 150)`` network input in the module's
        dtype, ``(pixel - mean) / 256`` like dlib's ``input_rgb_image_sized``."""
        t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
        if t.ndim == 3:
            t = t.unsqueeze(0)
        if t.ndim != 4 or tuple(t.shape[1:]) != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(
                f"`x` must have shape (N, {INPUT_SIZE}, {INPUT_SIZE}, 3), got {tuple(t.shape)}"
            )
        weight = self.stem.conv.weight
        t = t.to(device=weight.device).float()
        mean = torch.tensor(self.input_mean, dtype=torch.float32, device=t.device)
        t = (t - mean) / 256.0
        return t.permute(0, 3, 1, 2).to(weight.dtype)

    def forward(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        h = self.preprocess(x)
        h = F.max_pool2d(torch.relu(self.stem.affine(self.stem.conv(h))), 3, 2)
        for block in self.blocks:
            h = block(h)
        return self.fc(h.mean(dim=(2, 3))).float()
