"""One-shot swappers, restorers, the face parser and the occluder, on random-weight ONNX
doubles with the real signatures (tests/onnx_face_models.py), checked against reference
preprocessing written from the published descriptions and run on a real photo (t1.jpg)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("onnx")

from onnx_face_models import (
    build_converter,
    build_occluder,
    build_parser,
    build_restorer,
    build_swapper,
    swapper_reference,
)

from facegen.align import ARCFACE_TEMPLATE_112, POINT_TEMPLATES, arcface_template
from facegen.backends.face_parsing import (
    PARSING_CLASSES,
    FaceParser,
    Occluder,
    parse_classes,
)
from facegen.backends.restorers import OnnxFaceRestorer
from facegen.backends.swappers import SWAPPER_SPECS, OnnxFaceSwapper
from facegen.errors import (
    IncompatibleEmbeddingError,
    InvalidArgumentError,
    InvalidModelError,
    ModelNotAvailableError,
)
from facegen.types import IdentityEmbedding

#: facexlib's 512×512 face template (GFPGAN, CodeFormer), in pixels.
FACEXLIB_512 = np.array(
    [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
     [201.26117, 371.41043], [313.08905, 371.15118]]
)  # fmt: skip


@pytest.fixture(scope="module")
def faces(t1_image: np.ndarray, dlib_analyzer) -> list:
    found = dlib_analyzer.detect(t1_image)
    assert len(found) >= 5
    return found


def _emb(seed: int = 0, encoder: str = "arcface-onnx/buffalo_l", dim: int = 512):
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32) * 7
    return IdentityEmbedding(v, encoder, False)


def test_templates_are_the_published_points() -> None:
    assert np.allclose(POINT_TEMPLATES["arcface_112_v2"] * 112, ARCFACE_TEMPLATE_112, atol=1e-3)
    assert np.allclose(POINT_TEMPLATES["arcface_128"] * 128, arcface_template(128), atol=1e-3)
    assert np.allclose(POINT_TEMPLATES["ffhq_512"] * 512, FACEXLIB_512, atol=1e-3)


def test_inswapper_matches_insightface_on_a_real_photo(
    t1_image: np.ndarray, faces: list, tmp_path: Path
) -> None:
    """insightface's INSwapper.get, step by step (norm_crop2 at 128, blobFromImage with
    scale 1/255 and swapRB, normed @ emap renormalised, clip(255·y) truncated, BGR): the crop,
    the source and the swapped crop come out the same here."""
    from insightface.utils import face_align

    path = tmp_path / "inswapper_128.onnx"
    c = build_swapper(path, size=128, emap=True)
    swapper = OnnxFaceSwapper("inswapper_128", model_path=path)
    assert np.array_equal(swapper.emap, c["emap"])
    bgr = np.ascontiguousarray(t1_image[..., ::-1])
    emb = _emb()
    for face in faces[:3]:
        ref_crop, _ = face_align.norm_crop2(bgr, face.kps5, 128)
        ours = swapper.align(t1_image, face)
        diff = np.abs(ours.image.astype(int) - ref_crop[..., ::-1])
        assert diff.max() <= 1 and diff.mean() < 0.05
        blob = cv2.dnn.blobFromImage(ref_crop, 1.0 / 255, (128, 128), (0, 0, 0), swapRB=True)
        normed = emb.vector / np.linalg.norm(emb.vector)
        latent = normed.reshape(1, -1) @ c["emap"]
        latent /= np.linalg.norm(latent)
        assert np.allclose(swapper.prepare_source(emb), latent, atol=1e-6)
        pred = swapper.session.run(
            ["output"], {"target": blob, "source": latent.astype(np.float32)}
        )[0]
        ref_fake = np.clip(255 * pred.transpose(0, 2, 3, 1)[0], 0, 255).astype(np.uint8)[..., ::-1]
        got = swapper.swap_crops(np.ascontiguousarray(ref_crop[..., ::-1])[None], latent)[0]
        assert np.array_equal(got, ref_fake[..., ::-1])
        assert np.allclose(pred, swapper_reference(blob, latent, c, "sigmoid"), atol=1e-5)


@pytest.mark.parametrize("name", ["simswap_256", "simswap_512", "ghost_256", "hyperswap_256"])
def test_converter_swappers_preprocess_and_decode_as_published(
    name: str, t1_image: np.ndarray, faces: list, tmp_path: Path
) -> None:
    """The crop (template × size, edges replicated; FaceFusion's RANSAC fit of the same five
    points gives the same crop within a grey level), the blob ((x/255 - mean)/std, RGB,
    NCHW), the source (converter output, unit for SimSwap, raw for GHOST; the unit vector for
    HyperSwap) and the decoding (y·std + mean for GHOST/HyperSwap, clip, ×255)."""
    spec = SWAPPER_SPECS[name]
    act = "tanh" if spec.denormalize else "sigmoid"
    path = tmp_path / f"{name}.onnx"
    c = build_swapper(path, size=spec.size, activation=act, mask_output=name == "hyperswap_256")
    conv_path = None
    if spec.converter:
        conv_path = tmp_path / f"{spec.converter}.onnx"
        m = build_converter(conv_path)
    swapper = OnnxFaceSwapper(name, model_path=path, converter_path=conv_path)
    face = faces[0]
    ours = swapper.align(t1_image, face)
    tpl = POINT_TEMPLATES[spec.template] * spec.size
    mat = cv2.estimateAffinePartial2D(face.kps5, tpl, method=cv2.RANSAC, ransacReprojThreshold=100)[
        0
    ]
    ff = cv2.warpAffine(t1_image, mat, (spec.size, spec.size), borderMode=cv2.BORDER_REPLICATE,
                        flags=cv2.INTER_AREA)  # fmt: skip
    assert np.abs(ours.image.astype(int) - ff).mean() < 1.5
    emb = _emb(3)
    if spec.converter:
        raw = emb.vector[None] @ m
        want = raw / np.linalg.norm(raw) if spec.source == "converter_unit" else raw
    else:
        want = (emb.vector / np.linalg.norm(emb.vector))[None]
    src = swapper.prepare_source(emb)
    assert np.allclose(src, want, atol=1e-5)
    mean, std = np.array(spec.mean, np.float32), np.array(spec.std, np.float32)
    blob = ((ours.image / 255.0 - mean) / std).astype(np.float32).transpose(2, 0, 1)[None]
    y = swapper_reference(blob, src, c, act).transpose(0, 2, 3, 1)[0]
    if spec.denormalize:
        y = y * std + mean
    want_crop = np.clip(255 * y, 0, 255).astype(np.uint8)
    got = swapper.swap_crops(ours.image[None], src)[0]
    assert np.abs(got.astype(int) - want_crop).max() <= 1


def test_batched_and_one_at_a_time_agree(t1_image: np.ndarray, faces: list, tmp_path: Path) -> None:
    fixed, dynamic = tmp_path / "fixed.onnx", tmp_path / "dynamic.onnx"
    build_swapper(fixed, size=128, emap=True, seed=7)
    build_swapper(dynamic, size=128, emap=True, seed=7, dynamic_batch=True)
    a = OnnxFaceSwapper("inswapper_128", model_path=fixed)
    b = OnnxFaceSwapper("inswapper_128", model_path=dynamic)
    assert a._fixed_batch_one and not b._fixed_batch_one
    crops = np.stack([a.align(t1_image, f).image for f in faces[:4]])
    src = a.prepare_source(_emb())
    one, many = a.swap_crops(crops, src), b.swap_crops(crops, src)
    assert one.shape == crops.shape and np.abs(one.astype(int) - many).max() <= 1
    assert b.swap_crops(crops[:0], src).shape == (0, 128, 128, 3)


def test_swappers_refuse_other_encoders_and_models_that_do_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "inswapper_128.onnx"
    build_swapper(path, size=128, emap=True)
    swapper = OnnxFaceSwapper("inswapper_128", model_path=path)
    with pytest.raises(IncompatibleEmbeddingError, match="buffalo_l"):
        swapper.prepare_source(_emb(encoder="arcface-onnx/antelopev2"))
    with pytest.raises(IncompatibleEmbeddingError, match="512-D"):
        swapper.prepare_source(
            IdentityEmbedding(np.ones(128, np.float32), "arcface-onnx/buffalo_l", False)
        )
    nan = np.full(512, np.nan, np.float32)
    with pytest.raises(IncompatibleEmbeddingError, match="NaN"):
        swapper.prepare_source(IdentityEmbedding(nan, "arcface-onnx/buffalo_l", False))
    with pytest.raises(IncompatibleEmbeddingError, match="no direction"):
        swapper.prepare_source(
            IdentityEmbedding(np.zeros(512, np.float32), "arcface-onnx/buffalo_l", False)
        )
    small = tmp_path / "small.onnx"
    build_swapper(small, size=64, emap=True)
    with pytest.raises(InvalidModelError, match="128×128"):
        OnnxFaceSwapper("inswapper_128", model_path=small)
    no_emap = tmp_path / "no_emap.onnx"
    build_swapper(no_emap, size=128)
    with pytest.raises(InvalidModelError, match="emap"):
        OnnxFaceSwapper("inswapper_128", model_path=no_emap)
    sim = tmp_path / "sim.onnx"
    build_swapper(sim, size=256)
    with pytest.raises(InvalidModelError, match="crossface_simswap"):
        OnnxFaceSwapper("simswap_256", model_path=sim)
    with pytest.raises(InvalidModelError, match="two inputs"):
        OnnxFaceSwapper("simswap_256", model_path=_restorer(tmp_path))
    with pytest.raises(ValueError, match="uint8"):
        swapper.swap_crops(np.zeros((1, 64, 64, 3), np.uint8), np.zeros((1, 512), np.float32))


def _restorer(tmp_path: Path, **kw) -> Path:
    path = tmp_path / ("codeformer.onnx" if kw.get("codeformer") else "gfpgan.onnx")
    build_restorer(path, **kw)
    return path


def test_restorers_feed_and_decode_as_published(
    t1_image: np.ndarray, faces: list, tmp_path: Path
) -> None:
    """GFPGAN: RGB (x/255 - 0.5)/0.5 in, clip(-1, 1) → round((y+1)/2·255) out, on the
    ffhq_512 crop; CodeFormer: the same plus ``weight`` as float64 (1,) = fidelity."""
    c = build_restorer(tmp_path / "g.onnx")
    gfpgan = OnnxFaceRestorer("gfpgan", model_path=tmp_path / "g.onnx")
    crop = gfpgan.align(t1_image, faces[0])
    kps = faces[0].kps5[None].astype(np.float64)
    ref = cv2.estimateAffinePartial2D(kps[0], FACEXLIB_512, method=cv2.LMEDS)[0]
    ours_err = ((cv2.transform(kps, crop.matrix)[0] - FACEXLIB_512) ** 2).sum()
    ref_err = ((cv2.transform(kps, ref)[0] - FACEXLIB_512) ** 2).sum()
    assert ours_err <= ref_err + 1e-6  # the least-squares fit onto facexlib's template
    x = (crop.image / 255.0 - 0.5) / 0.5
    pre = np.einsum("oc,hwc->hwo", c["w"], x) + c["b"]
    want = np.round((np.tanh(pre) + 1) / 2 * 255).astype(np.uint8)
    got = gfpgan.restore_crops(crop.image[None])[0]
    assert np.abs(got.astype(int) - want).max() <= 1
    cf_path = _restorer(tmp_path, codeformer=True)
    cf = OnnxFaceRestorer("codeformer", model_path=cf_path, fidelity=0.0)
    low = cf.restore_crops(crop.image[None])[0]
    cf.fidelity = 1.0
    high = cf.restore_crops(crop.image[None])[0]
    assert (high.astype(int) - low).mean() > 5  # the weight reaches the graph
    with pytest.raises(InvalidArgumentError, match="fidelity"):
        cf.fidelity = 1.5
    with pytest.raises(InvalidModelError, match="weight"):
        OnnxFaceRestorer("codeformer", model_path=tmp_path / "g.onnx")
    with pytest.raises(InvalidModelError, match="one input"):
        OnnxFaceRestorer("gfpgan", model_path=cf_path)


def test_parser_class_maps_and_class_names(
    t1_image: np.ndarray, faces: list, tmp_path: Path
) -> None:
    c = build_parser(tmp_path / "bisenet.onnx")
    parser = FaceParser(model_path=tmp_path / "bisenet.onnx")
    crop = cv2.resize(t1_image[40:200, 60:220], (256, 256))
    maps = parser.parse(crop[None])
    big = cv2.resize(crop, (512, 512), interpolation=cv2.INTER_LINEAR)
    x = (big / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    want = (np.einsum("oc,hwc->ohw", c["w"], x) + c["b"][:, None, None]).argmax(0)
    assert maps.shape == (1, 512, 512) and (maps[0] == want).mean() > 0.999
    masks = parser.masks(crop[None], "skin,nose")
    assert masks.shape == (1, 256, 256) and masks.min() >= 0 and masks.max() <= 1
    assert parse_classes(None) == parse_classes("face")
    assert parse_classes("face,hair,-glasses") == tuple(
        sorted(set(parse_classes("face")) - {6} | {17})
    )
    assert [PARSING_CLASSES[i] for i in parse_classes("lips")] == ["upper-lip", "lower-lip"]
    with pytest.raises(InvalidArgumentError, match="beard"):
        parse_classes("skin,beard")


def test_occluder_takes_bgr_nhwc(tmp_path: Path) -> None:
    c = build_occluder(tmp_path / "xseg.onnx")
    occ = Occluder(model_path=tmp_path / "xseg.onnx")
    rgb = np.zeros((1, 256, 256, 3), np.uint8)
    rgb[0, :, :128, 0] = 255  # red on the left half
    m = occ.masks(rgb)[0]
    red_bgr = 1 / (1 + np.exp(-(np.array([0, 0, 1.0]) @ c["w"])))  # red is BGR's last channel
    black = 1 / (1 + np.exp(-(np.zeros(3) @ c["w"])))
    assert ((m[128, 20] > 0.5) == (red_bgr[0] > 0.75)) and (
        (m[128, 230] > 0.5) == (black[0] > 0.75)
    )


def test_missing_models_say_which_and_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FACEGEN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotAvailableError) as info:
        OnnxFaceSwapper.from_pretrained("simswap_256", offline=True)
    assert "simswap_256" in str(info.value) and "facefusion/models-3.0.0" in str(info.value)
    target = tmp_path / "home" / "models"
    build_swapper(target / "inswapper_128" / "inswapper_128.onnx", size=128, emap=True)
    swapper = OnnxFaceSwapper.from_pretrained("inswapper_128", offline=True)
    assert swapper.model_files()["swapper"].endswith("inswapper_128.onnx")
    build_restorer(target / "codeformer" / "codeformer.onnx", codeformer=True)
    assert (
        OnnxFaceRestorer.from_pretrained("codeformer", offline=True, fidelity=0.3).fidelity == 0.3
    )
