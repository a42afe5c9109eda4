from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

from facegen.align import (
    align_face,
    arcface_template,
    estimate_similarity,
    feather_mask,
    paste_back,
)
from facegen.types import Face, transform_points


def _kps_from(
    rng: np.random.Generator, center: np.ndarray, scale: float, angle: float
) -> np.ndarray:
    base = (arcface_template(112) - 56.0) * scale
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return (base @ rot.T + center + rng.normal(0, 1.0, (5, 2))).astype(np.float32)


def test_similarity_recovers_a_known_transform() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    ang, sc, t = 0.3, 1.7, np.array([4.0, -9.0])
    r = sc * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    dst = src @ r.T + t
    m = estimate_similarity(src, dst)
    np.testing.assert_allclose(m[:, :2], r, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)


def test_arcface_template_sizes() -> None:
    np.testing.assert_allclose(arcface_template(224), arcface_template(112) * 2)
    t512 = arcface_template(512)
    np.testing.assert_allclose(t512[:, 1], arcface_template(112)[:, 1] * 4)
    np.testing.assert_allclose(t512[:, 0], arcface_template(112)[:, 0] * 4 + 32)
    with pytest.raises(ValueError, match="size"):
        arcface_template(8)


def test_crop_matches_insightface_norm_crop_on_real_photos(
    t1_image, dlib_analyzer, astronaut
) -> None:
    """At 112 (and 512) our crop equals insightface's norm_crop to within one grey level."""
    from insightface.utils import face_align

    checked = 0
    for image in (t1_image, astronaut):
        faces = dlib_analyzer.detect(image)
        assert faces
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        for f in faces:
            for size in (112, 512):
                ours = align_face(image, f, size=size).image
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # skimage's estimate() deprecation
                    ref = face_align.norm_crop(bgr, f.kps5, image_size=size)[:, :, ::-1]
                diff = np.abs(ours.astype(int) - ref.astype(int))
                assert diff.max() <= 1, f"max diff {diff.max()} at size {size}"
                checked += 1
    assert checked == 2 * 7


def test_aligned_keypoints_land_on_the_template() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (400, 500, 3), dtype=np.uint8)
    kps = _kps_from(rng, np.array([250.0, 200.0]), 1.8, 0.4)
    face = Face(bbox=[150, 100, 350, 300], score=1.0, kps5=kps)
    a = align_face(img, face, size=256)
    err = np.abs(a.to_crop(kps) - arcface_template(256)).max()
    assert err < 4.0  # keypoint noise of 1 px × scale
    np.testing.assert_allclose(a.to_source(a.to_crop(kps)), kps, atol=1e-3)


def test_ffhq_template_is_upright_and_margin_zooms_out() -> None:
    kps = np.array([[100, 100], [140, 100], [120, 125], [105, 145], [135, 145]], np.float32)
    img = np.zeros((300, 300, 3), np.uint8)
    a1 = align_face(img, kps, size=256, template="ffhq")
    a2 = align_face(img, kps, size=256, template="ffhq", margin=1.5)
    e1 = a1.to_crop(kps[:2])
    assert abs(e1[0, 1] - e1[1, 1]) < 1e-3  # eyes level
    assert e1[0, 0] < e1[1, 0]
    d1 = np.linalg.norm(e1[1] - e1[0])
    e2 = a2.to_crop(kps[:2])
    assert np.linalg.norm(e2[1] - e2[0]) == pytest.approx(d1 / 1.5, rel=1e-4)
    with pytest.raises(ValueError, match="template"):
        align_face(img, kps, template="nope")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="`margin` must be a finite number > 0"):
            align_face(img, kps, template="ffhq", margin=bad)


def test_paste_back_roundtrip_and_mask() -> None:
    rng = np.random.default_rng(3)
    img = cv2.GaussianBlur(rng.integers(0, 255, (300, 320, 3), dtype=np.uint8), (0, 0), 3)
    kps = _kps_from(rng, np.array([160.0, 150.0]), 1.5, -0.2)
    a = align_face(img, kps, size=128)
    # pasting the unedited crop back leaves the image (almost) unchanged
    same = paste_back(img, a, a.image)
    inner = (slice(120, 180), slice(130, 190))
    assert np.abs(same[inner].astype(int) - img[inner].astype(int)).mean() < 3
    # a white crop with a zero mask changes nothing; with the default mask the centre turns white
    white = np.full((128, 128, 3), 255, np.uint8)
    assert np.array_equal(paste_back(img, a, white, mask=np.zeros((128, 128))), img)
    out = paste_back(img, a, white)
    cx, cy = transform_points(np.array([[64.0, 64.0]]), a.inverse)[0]
    assert out[round(cy), round(cx)].min() >= 250
    assert np.array_equal(out[:5, :5], img[:5, :5])  # far away: untouched
    # a crop of another size is resized onto the crop grid
    assert paste_back(img, a, np.full((64, 64, 3), 255, np.uint8)).shape == img.shape
    with pytest.raises(ValueError, match="new_crop"):
        paste_back(img, a, np.zeros((128, 128), np.uint8))


def test_feather_mask_range() -> None:
    m = feather_mask(64, 0.2)
    assert m.shape == (64, 64) and m.min() == 0.0 and m[32, 32] == 1.0
    with pytest.raises(ValueError, match="feather"):
        feather_mask(64, 0.6)
