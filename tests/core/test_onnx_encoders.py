"""ONNX ArcFace encoder, model loading and the analyzer on tiny test doubles (see
``tests/core/conftest.py``): preprocessing and plumbing, not recognition quality."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from facegen.align import ARCFACE_TEMPLATE_112
from facegen.backends.arcface_onnx import ArcFaceOnnxEncoder, encoder_id_for_file
from facegen.backends.insightface_landmarks import InsightfaceLandmarker
from facegen.backends.onnx_utils import graph_normalises_input, open_session
from facegen.backends.scrfd import SCRFDDetector
from facegen.errors import (
    InvalidModelError,
    ModelNotAvailableError,
    UnknownNameError,
)
from facegen.types import Face

pytest.importorskip("onnx")


# =========================================================================== ArcFace


def _crops(n: int, seed: int = 0, size: int = 112) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _blob(crops: np.ndarray, mean: float, std: float) -> np.ndarray:
    """The RGB NCHW blob an insightface ArcFace expects, written independently."""
    return np.stack([(c.astype(np.float64) - mean) / std for c in crops]).transpose(0, 3, 1, 2)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_arcface_shapes_normalisation_and_reference(arcface_model: Any) -> None:
    enc = ArcFaceOnnxEncoder(model_path=arcface_model.path)
    assert (enc.input_size, enc.dim) == (112, 512)
    assert (enc.input_mean, enc.input_std) == (127.5, 127.5)
    assert enc.encoder_id == "arcface-onnx/arcface_tiny"
    assert 0.3 <= enc.same_person_threshold <= 0.4
    crops = _crops(3)
    raw = enc._forward(crops)
    ref = arcface_model.spec["reference"](_blob(crops, 127.5, 127.5))
    np.testing.assert_allclose(raw, ref, rtol=1e-4, atol=1e-4)
    # a BGR feed gives something else (the check above is sensitive to channel order)
    bgr = arcface_model.spec["reference"](_blob(crops[..., ::-1], 127.5, 127.5))
    assert not np.allclose(raw, bgr, atol=1e-2)
    emb = enc.embed_crops(crops)
    assert emb.shape == (3, 512) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb, _unit(ref), atol=1e-5)


def test_arcface_sub_mul_graph_gets_raw_pixels(
    arcface_submul_model: Any, arcface_model: Any
) -> None:
    enc = ArcFaceOnnxEncoder(model_path=arcface_submul_model.path)
    assert (enc.input_mean, enc.input_std) == (0.0, 1.0)
    crops = _crops(2, seed=1)
    ref = arcface_submul_model.spec["reference"](_blob(crops, 0.0, 1.0))
    np.testing.assert_allclose(enc._forward(crops), ref, rtol=1e-4, atol=1e-4)
    # explicit arguments override the graph rule
    plain = ArcFaceOnnxEncoder(model_path=arcface_model.path, input_mean=0.0, input_std=1.0)
    np.testing.assert_allclose(
        plain._forward(crops),
        arcface_model.spec["reference"](_blob(crops, 0.0, 1.0)),
        rtol=1e-4,
        atol=1e-3,
    )


def test_arcface_batches_equal_one_by_one(arcface_model: Any, arcface_batch1_model: Any) -> None:
    crops = _crops(5, seed=2)
    batched = ArcFaceOnnxEncoder(model_path=arcface_model.path, batch_size=32).embed_crops(crops)
    single = ArcFaceOnnxEncoder(model_path=arcface_model.path, batch_size=1).embed_crops(crops)
    np.testing.assert_allclose(batched, single, atol=1e-6)
    fixed = ArcFaceOnnxEncoder(model_path=arcface_batch1_model.path)  # batch axis fixed at 1
    assert fixed._fixed_batch_one
    np.testing.assert_allclose(fixed.embed_crops(crops), batched, atol=1e-6)


def test_arcface_flip_averaging(arcface_model: Any) -> None:
    crops = _crops(2, seed=3)
    plain = ArcFaceOnnxEncoder(model_path=arcface_model.path).embed_crops(crops)
    flipped = ArcFaceOnnxEncoder(model_path=arcface_model.path, flip=True).embed_crops(crops)
    np.testing.assert_allclose(np.linalg.norm(flipped, axis=1), 1.0, atol=1e-5)
    assert np.abs(flipped - plain).max() > 1e-3
    ref = arcface_model.spec["reference"]
    exp = ref(_blob(crops, 127.5, 127.5)) + ref(_blob(crops[:, :, ::-1], 127.5, 127.5))
    np.testing.assert_allclose(flipped, _unit(exp), atol=1e-5)


def test_arcface_embed_aligns_with_the_arcface_template(arcface_model: Any) -> None:
    enc = ArcFaceOnnxEncoder(model_path=arcface_model.path)
    img = _crops(1, seed=4)[0]
    # keypoints already on the template: the alignment is the identity
    face = Face(bbox=np.array([0, 0, 112, 112]), score=1.0, kps5=ARCFACE_TEMPLATE_112)
    aligned = enc.align(img, face)
    assert aligned.size == 112 and aligned.template == "arcface"
    np.testing.assert_array_equal(aligned.image, img)
    (emb,) = enc.embed(img, [face])
    assert emb.encoder_id == enc.encoder_id and emb.normalized and emb.dim == 512
    np.testing.assert_allclose(emb.vector, enc.embed_crops([img])[0], atol=1e-6)


def test_arcface_encoder_ids_name_the_weights(arcface_model: Any, tmp_path: Path) -> None:
    assert encoder_id_for_file("/x/glintr100.onnx") == "arcface-onnx/antelopev2"
    assert encoder_id_for_file("w600k_r50.onnx") == "arcface-onnx/buffalo_l"
    assert encoder_id_for_file("my_model.onnx") == "arcface-onnx/my_model"
    glint = tmp_path / "glintr100.onnx"
    shutil.copy(arcface_model.path, glint)
    assert ArcFaceOnnxEncoder(model_path=glint).encoder_id == "arcface-onnx/antelopev2"
    arc2face = tmp_path / "arc2face"
    arc2face.mkdir()
    shutil.copy(arcface_model.path, arc2face / "arcface.onnx")
    enc = ArcFaceOnnxEncoder.from_pretrained("arc2face-arcface", model_path=arc2face, offline=True)
    assert enc.encoder_id == "arcface-onnx/arc2face"
    # a differently named file passed for a preset is named after itself, not the preset
    other = ArcFaceOnnxEncoder.from_pretrained("antelopev2", model_path=arcface_model.path)
    assert other.encoder_id == "arcface-onnx/arcface_tiny"
    assert ArcFaceOnnxEncoder(model_path=glint, encoder_id="mine/v1").encoder_id == "mine/v1"
    sess = open_session(arcface_model.path)
    with pytest.raises(ValueError, match="encoder_id"):
        ArcFaceOnnxEncoder(sess, input_mean=127.5, input_std=127.5)
    enc = ArcFaceOnnxEncoder(sess, encoder_id="test/tiny", input_mean=127.5, input_std=127.5)
    assert enc.embed_crops(_crops(1)).shape == (1, 512)


# =========================================================================== from_pretrained


@pytest.fixture()
def no_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every model location points into an empty temporary folder."""
    monkeypatch.setenv("FACEGEN_HOME", str(tmp_path / "fg"))
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path / "if"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path


@pytest.mark.parametrize(
    ("build", "filename"),
    [
        (lambda: SCRFDDetector.from_pretrained(offline=True), "scrfd_10g_bnkps.onnx"),
        (lambda: SCRFDDetector.from_pretrained("buffalo_l", offline=True), "det_10g.onnx"),
        (lambda: InsightfaceLandmarker.from_pretrained("landmark_68", offline=True), "1k3d68.onnx"),
        (
            lambda: InsightfaceLandmarker.from_pretrained("landmark_106", offline=True),
            "2d106det.onnx",
        ),
        (lambda: ArcFaceOnnxEncoder.from_pretrained(offline=True), "glintr100.onnx"),
        (lambda: ArcFaceOnnxEncoder.from_pretrained("buffalo_l", offline=True), "w600k_r50.onnx"),
    ],
)
def test_from_pretrained_offline_without_files(no_models: Path, build: Any, filename: str) -> None:
    with pytest.raises(ModelNotAvailableError) as ei:
        build()
    msg = str(ei.value)
    assert filename in msg and "offline" in msg
    assert str(no_models / "fg" / "models") in msg  # FACEGEN_HOME
    assert str(no_models / "if" / "models") in msg  # insightface's own folder
    assert str(no_models / "hf" / "hub") in msg  # the Hugging Face cache


def test_from_pretrained_with_model_path(
    no_models: Path,
    scrfd_model: Any,
    landmark68_model: Any,
    landmark106_model: Any,
    arcface_model: Any,
) -> None:
    det = SCRFDDetector.from_pretrained(model_path=scrfd_model.path, offline=True, max_faces=3)
    # a file that is not the preset's is named after itself, like ArcFace encoder ids
    assert (det.name, det.max_faces) == ("scrfd/scrfd_tiny_kps", 3)
    assert det.model_files() == {"detector": str(scrfd_model.path.absolute())}
    pack = no_models / "pack"
    pack.mkdir()
    shutil.copy(scrfd_model.path, pack / "det_10g.onnx")
    assert SCRFDDetector.from_pretrained("buffalo_l", model_path=pack).name == "scrfd/buffalo_l"
    assert SCRFDDetector(model_path=scrfd_model.path).name == "scrfd"
    lm68 = InsightfaceLandmarker.from_pretrained("landmark_68", model_path=landmark68_model.path)
    lm106 = InsightfaceLandmarker.from_pretrained(
        role="landmark_106", model_path=landmark106_model.path
    )
    assert (lm68.scheme, lm106.scheme) == ("ibug68", "insightface106")
    assert lm68.model_files() == {"landmark_68": str(landmark68_model.path.absolute())}
    assert lm106.model_files() == {"landmark_106": str(landmark106_model.path.absolute())}
    enc = ArcFaceOnnxEncoder.from_pretrained(model_path=arcface_model.path, flip=True, batch_size=4)
    assert (enc.flip, enc.batch_size, enc.dim) == (True, 4, 512)
    assert enc.model_files() == {"recognition": str(arcface_model.path.absolute())}
    sess = open_session(arcface_model.path)  # built from a session: no file to name
    assert ArcFaceOnnxEncoder(sess, encoder_id="x", input_mean=0, input_std=1).model_files() == {}
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        SCRFDDetector.from_pretrained(model_path=no_models / "missing.onnx")


def test_from_pretrained_refuses_presets_without_such_a_model(no_models: Path) -> None:
    from facegen.backends import ARCFACE_PRESETS, SCRFD_PRESETS
    from facegen.backends.arcface_onnx import _PRESET_IDS
    from facegen.hub import get_preset

    assert set(_PRESET_IDS) == set(ARCFACE_PRESETS)
    assert all(get_preset(p).file_for("detector").endswith(".onnx") for p in SCRFD_PRESETS)
    with pytest.raises(UnknownNameError, match=r"ArcFace ONNX preset 'dlib'.*buffalo_l"):
        ArcFaceOnnxEncoder.from_pretrained("dlib", offline=True)
    with pytest.raises(UnknownNameError, match=r"SCRFD detector preset 'arc2face-arcface'"):
        SCRFDDetector.from_pretrained("arc2face-arcface", offline=True)


def test_registries_build_the_onnx_backends(
    no_models: Path, scrfd_model: Any, arcface_model: Any
) -> None:
    from facegen.backends import DETECTORS, ENCODERS, LANDMARKERS

    assert isinstance(DETECTORS.create("insightface", model_path=scrfd_model.path), SCRFDDetector)
    assert isinstance(
        ENCODERS.create("arcface-onnx", model_path=arcface_model.path), ArcFaceOnnxEncoder
    )
    with pytest.raises(ModelNotAvailableError, match=r"2d106det\.onnx"):
        LANDMARKERS.create("insightface-106", offline=True)


def test_corrupt_model_files(tmp_path: Path) -> None:
    bad = tmp_path / "glintr100.onnx"
    bad.write_bytes(b"\x00\x01 definitely not onnx")
    with pytest.raises(InvalidModelError, match=r"glintr100\.onnx"):
        ArcFaceOnnxEncoder.from_pretrained(model_path=bad)
    with pytest.raises(InvalidModelError):
        InsightfaceLandmarker(model_path=bad, scheme="ibug68")
    with pytest.raises(InvalidModelError, match="ONNX graph"):
        graph_normalises_input(bad, check_bn_data=True)


# =========================================================================== insightface parity
