"""Face masks: regions, shapes, dilation, feather, borders, unions, blending, colour matching."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from facegen.landmarks import IBUG68, kps5_from_ibug68
from facegen.masks import (
    MASK_SHAPES,
    MaskSpec,
    blend,
    face_mask,
    face_region,
    faces_mask,
    match_color,
    parse_length,
)
from facegen.types import Face

SIZE = (240, 320)


def synthetic_landmarks(cx: float, cy: float, s: float, roll_deg: float = 0.0) -> np.ndarray:
    """A plausible iBUG-68 layout: eyes at ``cy``, chin at ``cy + 0.55 s``, brows above."""
    pts = np.zeros((68, 2))
    th = np.pi - np.arange(17) * np.pi / 16  # jaw: left temple → chin → right temple
    pts[0:17] = np.stack([cx + 0.5 * s * np.cos(th), cy + 0.55 * s * np.sin(th)], 1)
    pts[17:22] = np.stack(
        [np.linspace(cx - 0.4 * s, cx - 0.05 * s, 5), np.full(5, cy - 0.15 * s)], 1
    )
    pts[22:27] = np.stack(
        [np.linspace(cx + 0.05 * s, cx + 0.4 * s, 5), np.full(5, cy - 0.15 * s)], 1
    )
    pts[27:31] = np.stack([np.full(4, cx), np.linspace(cy - 0.1 * s, cy + 0.2 * s, 4)], 1)
    pts[31:36] = np.stack(
        [np.linspace(cx - 0.1 * s, cx + 0.1 * s, 5), np.full(5, cy + 0.25 * s)], 1
    )
    t6 = np.arange(6) * np.pi / 3
    for start, ex in ((36, cx - 0.2 * s), (42, cx + 0.2 * s)):
        pts[start : start + 6] = np.stack(
            [ex + 0.07 * s * np.cos(t6), cy + 0.03 * s * np.sin(t6)], 1
        )
    t12 = np.pi - np.arange(12) * np.pi / 6
    pts[48:60] = np.stack([cx + 0.18 * s * np.cos(t12), cy + 0.38 * s + 0.06 * s * np.sin(t12)], 1)
    t8 = np.pi - np.arange(8) * np.pi / 4
    pts[60:68] = np.stack([cx + 0.12 * s * np.cos(t8), cy + 0.38 * s + 0.02 * s * np.sin(t8)], 1)
    if roll_deg:
        a = math.radians(roll_deg)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        pts = (pts - [cx, cy]) @ rot.T + [cx, cy]
    return pts


def make_face(cx: float = 160, cy: float = 110, s: float = 100, roll_deg: float = 0.0) -> Face:
    lm = synthetic_landmarks(cx, cy, s, roll_deg)
    lo, hi = lm.min(0), lm.max(0)
    return Face(
        bbox=[*lo, *hi],
        score=1.0,
        kps5=kps5_from_ibug68(lm),
        landmarks=lm,
        landmark_scheme=IBUG68,
    )


def box_face(x1: float, y1: float, x2: float, y2: float) -> Face:
    """A face with only a box and a kps5 guess (no dense landmarks)."""
    w, h = x2 - x1, y2 - y1
    rel = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]])
    return Face(bbox=[x1, y1, x2, y2], score=1.0, kps5=rel * [w, h] + [x1, y1])


def pixel_values(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    ij = np.round(points).astype(int)
    return mask[ij[:, 1], ij[:, 0]]


def test_mask_is_float32_in_range_and_covers_the_landmarks() -> None:
    face = make_face()
    m = face_mask(face, SIZE, MaskSpec(dilate="2px"))
    assert m.dtype == np.float32 and m.shape == SIZE
    assert m.min() == 0.0 and m.max() == 1.0
    assert np.all(pixel_values(m, face.landmarks) == 1.0)
    # far from the face stays zero
    assert m[:, :40].max() == 0.0 and m[:, -40:].max() == 0.0


def test_hull_matches_the_polygon_and_the_forehead_is_extended() -> None:
    face = make_face()
    lm = face.landmarks
    plain = face_mask(face, SIZE, MaskSpec(forehead=0.0))
    hull = cv2.convexHull(np.concatenate([lm[0:17], lm[17:27]]).astype(np.float32))
    ys, xs = np.mgrid[0 : SIZE[0] : 3, 0 : SIZE[1] : 3]
    for x, y in zip(xs.ravel(), ys.ravel()):
        d = cv2.pointPolygonTest(hull, (float(x), float(y)), True)
        if abs(d) > 1.0:
            assert plain[y, x] == (1.0 if d > 0 else 0.0), (x, y, d)
    # forehead: 0.5 × face height (brows → chin) above the brow centre
    brow_y = lm[17:27, 1].min()
    height = lm[8, 1] - brow_y
    probe = (int(lm[27, 0]), int(brow_y - 0.4 * height))
    assert plain[probe[1], probe[0]] == 0.0
    tall = face_mask(face, SIZE, MaskSpec(forehead=0.5))
    assert tall[probe[1], probe[0]] == 1.0
    assert tall[int(brow_y - 0.6 * height), probe[0]] == 0.0
    assert np.all(tall >= plain)


def test_forehead_follows_a_rolled_face() -> None:
    face = make_face(roll_deg=30.0)
    region = face_region(face, forehead=0.4)
    a = math.radians(30.0)
    assert np.allclose(region.up, [math.sin(a), -math.cos(a)], atol=1e-6)
    m = face_mask(face, SIZE, MaskSpec(forehead=0.4))
    centre = face.landmarks[17:27].mean(0)
    height = 0.55 * 100 + 0.15 * 100
    along = centre + 0.3 * height * region.up
    straight_up = centre + np.array([0.0, -0.3 * height])
    assert pixel_values(m, along[None])[0] == 1.0
    assert m[int(straight_up[1]), int(straight_up[0])] == 1.0  # still inside, but nearer the edge
    beyond = centre + 0.5 * height * region.up
    assert pixel_values(m, beyond[None])[0] == 0.0


@pytest.mark.parametrize("shape", MASK_SHAPES)
def test_every_shape_contains_the_hull(shape: str) -> None:
    face = make_face()
    hull = face_mask(face, SIZE, MaskSpec(shape="hull")) > 0
    m = face_mask(face, SIZE, MaskSpec(shape=shape)) > 0
    assert np.all(m[hull])
    if shape != "hull":
        assert m.sum() > hull.sum() * 1.05


def test_box_of_an_upright_face_is_an_axis_aligned_rectangle() -> None:
    m = face_mask(make_face(), SIZE, MaskSpec(shape="box")) > 0
    ys, xs = np.nonzero(m)
    assert np.all(m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1])


def test_ellipse_is_close_to_an_ellipse() -> None:
    m = (face_mask(make_face(), SIZE, MaskSpec(shape="ellipse")) > 0).astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    fitted = cv2.fitEllipse(contours[0])
    assert fitted[1][0] != pytest.approx(fitted[1][1], rel=0.05)  # an ellipse, not a circle
    ideal = np.zeros_like(m)
    cv2.ellipse(ideal, fitted, 1, -1)
    inter = np.logical_and(m, ideal).sum()
    union = np.logical_or(m, ideal).sum()
    assert inter / union > 0.97


def extent(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask > 0)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()])


def test_dilation_in_pixels_and_in_face_fractions() -> None:
    face = make_face()
    base = extent(face_mask(face, SIZE, MaskSpec(shape="box")))
    grown = extent(face_mask(face, SIZE, MaskSpec(shape="box", dilate="6px")))
    assert np.all(np.abs((grown - base) * [-1, -1, 1, 1] - 6) <= 1)
    scale = face_region(face).scale
    frac = extent(face_mask(face, SIZE, MaskSpec(shape="box", dilate=0.1)))
    assert np.all(np.abs((frac - base) * [-1, -1, 1, 1] - 0.1 * scale) <= 1)


def test_feather_is_an_outward_gaussian_falloff() -> None:
    face = make_face()
    solid = face_mask(face, SIZE, MaskSpec(dilate="4px"))
    soft = face_mask(face, SIZE, MaskSpec(dilate="4px", feather="5px"))
    # the dilated shape stays exactly 1; feathering only adds outside it
    assert np.array_equal(soft == 1.0, solid == 1.0)
    assert np.all(soft >= solid)
    dist = cv2.distanceTransform((solid == 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    assert soft[dist > 15.5].max() == 0.0  # 3σ
    ring = (dist > 4.5) & (dist < 5.5)
    expected = (math.exp(-0.5) - math.exp(-4.5)) / (1 - math.exp(-4.5))
    assert abs(float(np.median(soft[ring])) - expected) < 0.06
    # monotone: further out is never brighter
    for a, b in ((1, 3), (3, 6), (6, 10)):
        assert (
            soft[(dist > a - 0.5) & (dist < a + 0.5)].mean()
            > soft[(dist > b - 0.5) & (dist < b + 0.5)].mean()
        )


@pytest.mark.parametrize("shape", MASK_SHAPES)
def test_faces_across_the_border_are_clipped_exactly(shape: str) -> None:
    spec = MaskSpec(shape=shape, dilate="3px", feather="4px")
    pad = 80
    for cx, cy in ((10, 110), (300, 20), (-30, -20), (330, 250)):
        face = make_face(cx, cy)
        shifted = make_face(cx + pad, cy + pad)
        m = face_mask(face, SIZE, spec)
        big = face_mask(shifted, (SIZE[0] + 2 * pad, SIZE[1] + 2 * pad), spec)
        assert np.allclose(m, big[pad:-pad, pad:-pad], atol=1e-6), (cx, cy)
        assert m.max() > 0


def test_faces_outside_the_image() -> None:
    # just outside: reaches in through dilation + feather only
    near = box_face(-60, 50, -5, 120)
    assert face_mask(near, SIZE, MaskSpec(forehead=0.0)).max() == 0.0
    assert face_mask(near, SIZE, MaskSpec(forehead=0.0, dilate="8px")).max() == 1.0
    # far away, huge coordinates: all zero, no overflow
    for face in (box_face(5000, 5000, 5100, 5100), box_face(-1e8, -1e8, 1e8, -9e7)):
        assert face_mask(face, SIZE, MaskSpec(dilate="5px", feather=0.1)).max() == 0.0
    # a face bigger than the image covers all of it
    assert face_mask(box_face(-1e6, -1e6, 1e6, 1e6), SIZE).min() == 1.0


def test_bbox_fallback_without_landmarks() -> None:
    face = box_face(100, 60, 200, 180)
    region = face_region(face, forehead=0.25)
    assert region.source == "bbox"
    m = face_mask(face, SIZE, MaskSpec(forehead=0.25))
    assert np.all(m[60:181, 100:201] == 1.0)
    top = extent(m)[1]
    assert abs(top - (60 - 0.25 * 120)) <= 1
    # other landmark schemes are not read as iBUG-68; their points still count
    lm = np.array([[90.0, 100.0], [210.0, 130.0], [150, 200]])
    other = Face(face.bbox, 1.0, face.kps5, landmarks=lm, landmark_scheme="insightface106")
    m2 = face_mask(other, SIZE, MaskSpec(forehead=0.0)) > 0
    assert face_region(other).source == "bbox"
    assert np.all(pixel_values(m2, lm))


def test_degenerate_face_does_not_crash() -> None:
    face = box_face(50, 50, 50, 50)
    m = face_mask(face, SIZE, MaskSpec(dilate="3px"))
    assert 0 < (m > 0).sum() < 200


def test_overlapping_faces_give_the_union() -> None:
    a, b = make_face(130, 110), make_face(190, 120)
    ma, mb = face_mask(a, SIZE), face_mask(b, SIZE)
    assert np.logical_and(ma > 0, mb > 0).any()
    union = faces_mask([a, b], SIZE)
    assert np.array_equal(union, np.maximum(ma, mb))
    assert (union > 0).sum() < (ma > 0).sum() + (mb > 0).sum()
    assert faces_mask([], SIZE).max() == 0.0


def test_mask_in_an_aligned_crop_frame() -> None:
    face = make_face(roll_deg=15.0)
    a = math.radians(-15.0)
    scale = 1.3
    rot = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    matrix = np.concatenate([rot, (np.array([128.0, 128.0]) - rot @ [160.0, 110.0])[:, None]], 1)
    spec = MaskSpec(shape="hull", dilate=0.05)
    in_crop = face_mask(face, (256, 256), spec, matrix=matrix)
    warped = cv2.warpAffine(
        face_mask(face, SIZE, spec), matrix, (256, 256), flags=cv2.INTER_NEAREST
    )
    iou = (
        np.logical_and(in_crop > 0, warped > 0).sum() / np.logical_or(in_crop > 0, warped > 0).sum()
    )
    assert iou > 0.96
    # pixel lengths are pixels of the crop frame
    r_img, r_crop = face_region(face), face_region(face, matrix=matrix)
    assert r_crop.scale == pytest.approx(scale * r_img.scale, rel=1e-3)
    assert np.allclose(r_crop.up, [0.0, -1.0], atol=1e-6)


def test_real_landmarks_on_t1(dlib_analyzer, t1_image: np.ndarray) -> None:
    faces = dlib_analyzer.detect(t1_image)
    assert len(faces) == 6
    union = faces_mask(faces, t1_image.shape[:2], MaskSpec(dilate="2px"))
    for face in faces:
        assert face_region(face).source == IBUG68
        assert np.all(pixel_values(union, np.clip(face.landmarks, 0, None)) == 1.0)
    assert 0.05 < (union > 0).mean() < 0.2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": "circle"}, "`shape` must be one of hull, ellipse, box"),
        ({"forehead": 3.0}, "`forehead` must be a finite number in [0, 2], got 3.0"),
        ({"forehead": True}, "`forehead` must be a number"),
        ({"dilate": -1.0}, "`dilate` must be a number >= 0"),
        ({"dilate": "3cm"}, "`dilate` must be a number >= 0"),
        ({"feather": "-2px"}, "`feather` must be a number >= 0"),
        ({"feather": float("nan")}, "`feather` must be a number >= 0"),
    ],
)
def test_invalid_specs(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{__import__('re').escape(message)}"):
        MaskSpec(**kwargs)


def test_parse_length() -> None:
    assert parse_length(0.2, "x") == (0.2, "face")
    assert parse_length("12px", "x") == (12.0, "px")
    assert parse_length(" 2.5 PX", "x") == (2.5, "px")
    with pytest.raises(ValueError, match="`x` must be"):
        parse_length(True, "x")


def test_invalid_size_and_matrix() -> None:
    face = make_face()
    for size in ((0, 10), (10,), (10.5, 10), "ab"):
        with pytest.raises(ValueError, match=r"`size` must be \(H, W\)"):
            face_mask(face, size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`matrix` must be a finite \(2, 3\)"):
        face_mask(face, SIZE, matrix=np.eye(3))


# ----------------------------------------------------------------------------- blend


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    return a, b


def test_blend_keeps_unmasked_pixels_byte_identical(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    m = face_mask(make_face(), SIZE, MaskSpec(feather="6px"))
    out = blend(a, b, m)
    assert out.dtype == np.uint8 and out.shape == a.shape
    assert np.array_equal(out[m == 0], a[m == 0])
    assert np.array_equal(out[m == 1], b[m == 1])
    part = (m > 0) & (m < 1)
    assert part.any()
    expected = np.round(a[part] * (1 - m[part, None]) + b[part] * m[part, None])
    assert np.abs(out[part].astype(int) - expected).max() <= 1
    assert not np.shares_memory(out, a)


def test_blend_accepts_bool_masks_and_empty_masks(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    m = np.zeros(SIZE, bool)
    m[10:20, 30:40] = True
    out = blend(a, b, m)
    assert np.array_equal(out[m], b[m]) and np.array_equal(out[~m], a[~m])
    assert np.array_equal(blend(a, b, np.zeros(SIZE, np.float32)), a)


def test_blend_rejects_bad_inputs(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    ok = np.zeros(SIZE, np.float32)
    with pytest.raises(ValueError, match="`edited` must have the shape of `original`"):
        blend(a, b[:10], ok)
    with pytest.raises(ValueError, match="`original` must be an RGB uint8"):
        blend(a.astype(np.float32), b, ok)
    with pytest.raises(ValueError, match="`mask` must have shape"):
        blend(a, b, ok[:10])
    with pytest.raises(ValueError, match=r"`mask` must hold finite values in \[0, 1\]"):
        blend(a, b, ok + 1.5)
    with pytest.raises(ValueError, match=r"`mask` must hold finite values in \[0, 1\]"):
        blend(a, b, np.full(SIZE, np.nan, np.float32))
    with pytest.raises(ValueError, match="`mask` must be a float or bool array"):
        blend(a, b, ok.astype(np.uint8))


# ----------------------------------------------------------------------------- colour


def weighted_stats(values: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = values.reshape(-1, 3).astype(np.float64)
    w = m.reshape(-1).astype(np.float64)
    mean = (v * w[:, None]).sum(0) / w.sum()
    std = np.sqrt((((v - mean) ** 2) * w[:, None]).sum(0) / w.sum())
    return mean, std


@pytest.mark.parametrize("space", ["rgb", "lab"])
def test_match_color_matches_the_statistics_inside_the_mask(space: str) -> None:
    rng = np.random.default_rng(1)
    ref = np.clip(rng.normal([150, 110, 90], [20, 15, 12], (*SIZE, 3)), 0, 255).astype(np.uint8)
    img = np.clip(rng.normal([80, 120, 170], [35, 30, 25], (*SIZE, 3)), 0, 255).astype(np.uint8)
    m = face_mask(make_face(), SIZE, MaskSpec(feather="4px"))
    out = match_color(img, ref, m, space=space)
    assert out.dtype == np.uint8 and out.shape == img.shape

    def in_space(x: np.ndarray) -> np.ndarray:
        f = x.astype(np.float32) / 255.0
        return cv2.cvtColor(f, cv2.COLOR_RGB2LAB) if space == "lab" else f * 255.0

    mean_o, std_o = weighted_stats(in_space(out), m)
    mean_r, std_r = weighted_stats(in_space(ref), m)
    mean_i, _ = weighted_stats(in_space(img), m)
    assert np.all(np.abs(mean_o - mean_r) < 1.0), (mean_o, mean_r)
    assert np.all(np.abs(std_o - std_r) < 1.0), (std_o, std_r)
    assert np.abs(mean_i - mean_r).max() > 20  # the check above could have failed
    # restricted to the mask by blend: outside stays the original's
    pasted = blend(ref, out, m)
    assert np.array_equal(pasted[m == 0], ref[m == 0])


def test_match_color_with_a_separate_reference_mask() -> None:
    ref = np.full((50, 60, 3), (200, 100, 50), np.uint8)
    img = np.full((*SIZE, 3), (10, 20, 30), np.uint8)
    img[0, 0] = (12, 22, 32)
    m = np.ones(SIZE, np.float32)
    out = match_color(img, ref, m, reference_mask=np.ones((50, 60), np.float32), space="rgb")
    assert np.abs(out[5, 5].astype(int) - [200, 100, 50]).max() <= 1


def test_match_color_rejects_bad_inputs() -> None:
    img = np.zeros((*SIZE, 3), np.uint8)
    m = np.zeros(SIZE, np.float32)
    with pytest.raises(ValueError, match="`mask` must select at least one pixel"):
        match_color(img, img, m)
    with pytest.raises(ValueError, match="`space` must be one of lab, rgb"):
        match_color(img, img, m + 1, space="hsv")
    with pytest.raises(ValueError, match="`reference` must have the shape of `image`"):
        match_color(img, img[:5], m + 1)
