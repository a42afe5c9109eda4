"""Conditioning-image renderers, pose transfer and head pose (facegen.control).

Geometry is checked against closed forms on a synthetic 68-point face whose parts are far
apart; the transfer and pose tests also run on the dlib landmarks of insightface's t1.jpg.
"""

from __future__ import annotations

import importlib.util
import itertools

import cv2
import numpy as np
import pytest
from PIL import Image

from facegen.align import align_face, arcface_template
from facegen.control import (
    FACE_MESH_COLOURS,
    FACE_MESH_IRIS_CENTRES,
    INSTANTID_COLOURS,
    LANDMARKS68_PARTS,
    render_face_mesh,
    render_instantid_kps,
    render_landmarks68,
    render_openpose_face,
    transfer_face,
    transfer_landmarks,
)
from facegen.errors import MissingDependencyError
from facegen.head_pose import (
    POSE_MODEL_INDICES,
    POSE_MODEL_POINTS,
    head_rotation,
    pose_from_landmarks,
)
from facegen.types import Face

# --------------------------------------------------------------------------- helpers


def _ring(cx: float, cy: float, a: float, b: float, degrees: list[float]) -> np.ndarray:
    t = np.deg2rad(degrees)
    return np.stack([cx + a * np.cos(t), cy - b * np.sin(t)], axis=1)


def face68(scale: float = 1.0) -> np.ndarray:
    """A synthetic iBUG-68 face in a 512 frame (``scale`` zooms about the centre)."""
    cx = cy = 256.0
    u = np.linspace(0, 1, 5)
    t = np.linspace(0, np.pi, 17)
    jaw = np.stack([cx - 150 * np.cos(t), cy - 40 + 210 * np.sin(t)], axis=1)
    brow_r = np.stack([cx - 130 + 90 * u, cy - 110 - 15 * np.sin(np.pi * u)], axis=1)
    brow_l = np.stack([cx + 40 + 90 * u, cy - 110 - 15 * np.sin(np.pi * u)], axis=1)
    bridge = np.stack([np.full(4, cx), np.linspace(cy - 90, cy - 20, 4)], axis=1)
    nose = np.stack([cx - 30 + 60 * u, cy + 10 * np.sin(np.pi * u)], axis=1)
    eye_deg = [180, 120, 60, 0, -60, -120]
    eye_r = _ring(cx - 85, cy - 60, 30, 10, eye_deg)
    eye_l = _ring(cx + 85, cy - 60, 30, 10, eye_deg)
    outer = _ring(cx, cy + 75, 60, 25, [180, 150, 120, 90, 60, 30, 0, -30, -60, -90, -120, -150])
    inner = _ring(cx, cy + 75, 40, 10, [180, 135, 90, 45, 0, -45, -90, -135])
    pts = np.vstack([jaw, brow_r, brow_l, bridge, nose, eye_r, eye_l, outer, inner])
    assert pts.shape == (68, 2)
    return (pts - 256.0) * scale + 256.0


KPS5_512 = arcface_template(512)


def _distance_map(size: int, segments: list, reach: float = 16.0) -> np.ndarray:
    """Distance of each pixel centre of a ``size`` grid to the nearest segment ``(a, b)``
    (``a == b`` for a point); ``inf`` beyond ``reach`` px of all of them."""
    out = np.full((size, size), np.inf)
    for a, b in segments:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        lo = np.clip(np.floor(np.minimum(a, b) - reach), 0, size).astype(int)
        hi = np.clip(np.ceil(np.maximum(a, b) + reach) + 1, 0, size).astype(int)
        ys, xs = np.mgrid[lo[1] : hi[1], lo[0] : hi[0]]
        px = np.stack([xs, ys], axis=-1).astype(np.float64)
        d = b - a
        t = np.clip(((px - a) @ d) / max(float(d @ d), 1e-12), 0, 1)
        dist = np.linalg.norm(px - (a + t[..., None] * d), axis=-1)
        view = out[lo[1] : hi[1], lo[0] : hi[0]]
        np.minimum(view, dist, out=view)
    return out


def _lit(img: np.ndarray) -> np.ndarray:
    return img.max(axis=2) > 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _colours(img: np.ndarray) -> set[tuple[int, ...]]:
    packed = np.unique(img.reshape(-1, 3).astype(np.uint32) @ np.array([65536, 256, 1], np.uint32))
    return {(int(v) >> 16, (int(v) >> 8) & 255, int(v) & 255) for v in packed}


def _mesh_fixture() -> tuple[np.ndarray, dict[str, list[tuple[int, int]]]]:
    """478 points: six rings of 8 (one per region) plus the rest parked at one spot, and
    iris centres at 468 / 473; each region's edges close its ring."""
    pts = np.full((478, 2), 256.0)
    conns: dict[str, list[tuple[int, int]]] = {}
    centres = [(256, 256, 225), (150, 180, 30), (150, 120, 40), (360, 180, 30), (360, 120, 40)]
    centres.append((256, 400, 50))
    for r, (region, (cx, cy, rad)) in enumerate(zip(FACE_MESH_COLOURS, centres)):
        idx = list(range(8 * r, 8 * r + 8))
        flat = 0.98 if r == 0 else 0.4  # the oval round everything, the others flat rings
        pts[idx] = _ring(cx, cy, rad, rad * flat, list(np.arange(8) * 45.0))
        conns[region] = [(idx[i], idx[(i + 1) % 8]) for i in range(8)]
    pts[468], pts[473] = (150, 180), (360, 180)
    return pts, conns


# --------------------------------------------------------------------------- golden renders


def test_openpose_face_dots_at_points_and_pupils_from_eye_centres() -> None:
    pts = face68()
    img = render_openpose_face(pts, 512)
    assert img.shape == (512, 512, 3) and img.dtype == np.uint8
    assert _colours(img) == {(0, 0, 0), (255, 255, 255)}
    dots = np.vstack([pts, pts[36:42].mean(0), pts[42:48].mean(0)])
    dist = _distance_map(512, [(p, p) for p in dots])
    white = img[..., 0] == 255
    assert white[dist <= 2.0].all()  # radius 3 at the 512 reference
    assert not white[dist > 4.5].any()
    # Pupils are part of the OpenPose layout: without them the eye centres stay dark.
    no_pupils = render_openpose_face(pts, 512, pupils=False)
    for c in dots[68:]:
        assert no_pupils[round(c[1]), round(c[0])].max() == 0
        assert img[round(c[1]), round(c[0])].tolist() == [255, 255, 255]


def test_openpose_face_uses_given_pupils_of_70_points() -> None:
    pts = np.vstack([face68(), [[180.0, 200.0], [330.0, 200.0]]])
    img = render_openpose_face(pts, 512)
    assert img[200, 180].tolist() == [255, 255, 255] and img[200, 330].tolist() == [255] * 3
    centre = face68()[36:42].mean(0)
    assert img[round(centre[1]), round(centre[0])].max() == 0
    assert not render_openpose_face(pts, 512, pupils=False)[200, 180].any()


def test_instantid_kps_colours_limbs_and_sizes_at_reference() -> None:
    kps = arcface_template(1024)
    img = render_instantid_kps(kps, 1024)
    limb = {tuple(int(v * 0.6) for v in INSTANTID_COLOURS[i]) for i in (0, 1, 3, 4)}
    assert _colours(img) <= {(0, 0, 0), *INSTANTID_COLOURS, *limb}
    for p, colour in zip(kps, INSTANTID_COLOURS):
        near = _distance_map(1024, [(p, p)]) <= 8.5  # dot radius 10
        assert (img[near] == colour).all()
        row = img[round(p[1]), :, :]
        run = np.flatnonzero((row == colour).all(axis=1))
        assert 19 <= run.max() - run.min() + 1 <= 23  # diameter ≈ 21 px
    for i in (0, 1, 3, 4):  # limbs end at the nose, in the colour of their first point
        mid = (kps[i] + kps[2]) / 2
        assert img[round(mid[1]), round(mid[0])].tolist() == [
            int(v * 0.6) for v in INSTANTID_COLOURS[i]
        ]
        d = kps[2] - kps[i]
        n = np.array([-d[1], d[0]]) / np.hypot(*d)
        across = [mid + n * k for k in np.arange(-10, 10.25, 0.25)]
        lit = [img[round(q[1]), round(q[0])].any() for q in across]
        width = np.count_nonzero(lit) * 0.25
        assert 7.0 <= width <= 10.0  # 2 × stickwidth 4
    dist_limb = _distance_map(1024, [(kps[i], kps[2]) for i in (0, 1, 3, 4)])
    dist_dot = _distance_map(1024, [(p, p) for p in kps])
    assert not img[(dist_limb > 6.5) & (dist_dot > 12.5)].any()


def test_landmarks68_parts_in_their_colours_and_black_elsewhere() -> None:
    pts = face68()
    img = render_landmarks68(pts, 512)
    table = {c for _, _, c in LANDMARKS68_PARTS.values()}
    assert len(table) == len(LANDMARKS68_PARTS)
    assert _colours(img) == {(0, 0, 0), *table}
    segments = []
    for name, (idx, closed, colour) in LANDMARKS68_PARTS.items():
        chain = [*idx, idx[0]] if closed else list(idx)
        for a, b in itertools.pairwise(chain):
            segments.append((pts[a], pts[b]))
        for i in idx:
            assert img[round(pts[i][1]), round(pts[i][0])].tolist() == list(colour), (name, i)
    assert not img[_distance_map(512, segments) > 3.0].any()  # 2 px lines at 512


def test_landmarks68_colour_table_is_well_separated() -> None:
    colours = [np.array(c) for _, _, c in LANDMARKS68_PARTS.values()]
    for i, a in enumerate(colours):
        for b in colours[i + 1 :]:
            assert np.abs(a - b).max() >= 85
    covered = sorted(i for idx, _, _ in LANDMARKS68_PARTS.values() for i in idx)
    assert covered == list(range(68))


def test_instantid_reference_size_gives_absolute_pixels() -> None:
    kps = arcface_template(512)
    img = render_instantid_kps(kps, 512, reference_size=512)  # InstantID's own 10 px dots
    row = np.flatnonzero((img[round(kps[0][1])] == INSTANTID_COLOURS[0]).all(axis=1))
    assert 19 <= row.max() - row.min() + 1 <= 23
    scaled = render_instantid_kps(kps, 512)  # 5 px at 512 for the 1024 reference
    row = np.flatnonzero((scaled[round(kps[0][1])] == INSTANTID_COLOURS[0]).all(axis=1))
    assert 9 <= row.max() - row.min() + 1 <= 12
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="`reference_size` must be an integer >= 1, got"):
            render_instantid_kps(kps, 512, reference_size=bad)


def draw_kps_reference(
    width: int,
    height: int,
    kps: np.ndarray,
    skip: tuple[int, ...] = (),
    colours: tuple[tuple[int, int, int], ...] = (
        (255, 0, 0),
        (0, 255, 0),
        (0, 0, 255),
        (255, 255, 0),
        (255, 0, 255),
    ),
) -> np.ndarray:
    """InstantID's ``draw_kps``, transcribed from its description: a black canvas of the
    image size, ``ellipse2Poly`` limbs (stickwidth 4) at integer centres / half-lengths /
    angles filled on a float canvas, ×0.6 to uint8, then radius-10 ``cv2.circle`` dots at
    ``(int(x), int(y))``. Points in ``skip`` get neither limb nor dot. Returns RGB uint8
    ``(height, width, 3)``."""
    stickwidth = 4
    limb_seq = np.array([[0, 2], [1, 2], [3, 2], [4, 2]])
    kps = np.array(kps)
    out = np.zeros([height, width, 3])
    for index in limb_seq:
        if index[0] in skip:
            continue
        colour = colours[index[0]]
        x = kps[index][:, 0]
        y = kps[index][:, 1]
        length = ((x[0] - x[1]) ** 2 + (y[0] - y[1]) ** 2) ** 0.5
        angle = np.degrees(np.arctan2(y[0] - y[1], x[0] - x[1]))
        polygon = cv2.ellipse2Poly(
            (int(np.mean(x)), int(np.mean(y))), (int(length / 2), stickwidth), int(angle), 0, 360, 1
        )
        out = cv2.fillConvexPoly(out.copy(), polygon, colour)
    out = (out * 0.6).astype(np.uint8)
    for i, (x, y) in enumerate(kps):
        if i in skip:
            continue
        out = cv2.circle(out.copy(), (int(x), int(y)), 10, colours[i], -1)
    return np.asarray(Image.fromarray(out.astype(np.uint8)))


def _face_like_kps(rng: np.random.Generator, size: int) -> np.ndarray:
    """Five fractional insightface-order keypoints: the ArcFace template, scaled, turned,
    moved and jittered as detections of real faces are."""
    base = arcface_template(112) - 56.0
    turn = rng.uniform(-0.6, 0.6)
    rot = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    scale = rng.uniform(0.15, 0.45) * size / 112
    centre = rng.uniform(0.3, 0.7, 2) * size
    return base @ rot.T * scale + centre + rng.normal(0.0, 0.02 * size / 10, (5, 2))


@pytest.mark.parametrize("seed", range(6))
def test_instantid_kps_equals_draw_kps_pixel_for_pixel(seed: int) -> None:
    rng = np.random.default_rng(seed)
    kps = _face_like_kps(rng, 1024)
    assert np.abs(kps - np.round(kps)).min() > 1e-6  # truly fractional
    want = draw_kps_reference(1024, 1024, kps)
    np.testing.assert_array_equal(render_instantid_kps(kps, 1024), want)
    # any size, at InstantID's absolute 4 / 10 px
    small = _face_like_kps(rng, 640)
    np.testing.assert_array_equal(
        render_instantid_kps(small, 640, reference_size=640),
        draw_kps_reference(640, 640, small),
    )
    pil = render_instantid_kps(kps, 1024, output_type="pil")
    assert isinstance(pil, Image.Image) and np.array_equal(np.asarray(pil), want)


def test_instantid_subpixel_drawing_is_an_explicit_option() -> None:
    kps = _face_like_kps(np.random.default_rng(0), 1024)
    want = draw_kps_reference(1024, 1024, kps)
    sub = render_instantid_kps(kps, 1024, drawing="subpixel")
    differ = (sub != want).any(axis=2).sum() / (sub.any(axis=2) | want.any(axis=2)).sum()
    assert 0.02 < differ < 0.3  # same map, other pixel rules
    with pytest.raises(
        ValueError, match="`drawing` must be one of 'instantid', 'subpixel', got 'aa'"
    ):
        render_instantid_kps(kps, 1024, drawing="aa")  # type: ignore[arg-type]


def test_instantid_integer_drawing_with_a_point_far_off_canvas() -> None:
    kps = _face_like_kps(np.random.default_rng(1), 512)
    far = kps.copy()
    far[4] = [3e12, -5e11]  # beyond cv2's integers: drawn without error
    img = render_instantid_kps(far, 512, reference_size=512)
    # that limb is a needle along the ray from the nose (its ellipse is 3·10¹² px long);
    # everywhere else the map is draw_kps of the other four points
    want = draw_kps_reference(512, 512, kps, skip=(4,))
    ray = (far[4] - kps[2]) / np.hypot(*(far[4] - kps[2]))
    yy, xx = np.mgrid[:512, :512]
    rel = np.stack([xx - kps[2][0], yy - kps[2][1]], axis=-1)
    off_ray = np.abs(rel @ np.array([-ray[1], ray[0]])) > 3
    np.testing.assert_array_equal(img[off_ray], want[off_ray])
    assert set(map(tuple, img[~off_ray].reshape(-1, 3).tolist())) <= {
        (0, 0, 0),
        (153, 0, 153),
        *INSTANTID_COLOURS,
        *{tuple(int(v * 0.6) for v in c) for c in INSTANTID_COLOURS},
    }


def test_face_mesh_regions_and_irises() -> None:
    pts, conns = _mesh_fixture()
    img = render_face_mesh(pts, 512, connections=conns)
    assert _colours(img) <= {
        (0, 0, 0),
        *FACE_MESH_COLOURS.values(),
        *FACE_MESH_IRIS_CENTRES.values(),
    }
    for region, edges in conns.items():
        a, b = pts[edges[0][0]], pts[edges[0][1]]
        mid = (a + b) / 2
        assert img[round(mid[1]), round(mid[0])].tolist() == list(FACE_MESH_COLOURS[region])
    for idx, colour in FACE_MESH_IRIS_CENTRES.items():
        x, y = pts[idx]
        assert (img[int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2] == colour).all()
    assert not render_face_mesh(pts[:468], 512, connections=conns)[180, 150].any()
    only_lips = render_face_mesh(pts, 512, connections={"lips": conns["lips"]})
    assert _colours(only_lips) == {
        (0, 0, 0),
        FACE_MESH_COLOURS["lips"],
        *FACE_MESH_IRIS_CENTRES.values(),
    }


@pytest.mark.skipif(importlib.util.find_spec("mediapipe") is not None, reason="mediapipe installed")
def test_face_mesh_without_connections_needs_mediapipe() -> None:
    pts, _ = _mesh_fixture()
    with pytest.raises(MissingDependencyError, match="mediapipe"):
        render_face_mesh(pts, 512)


# --------------------------------------------------------------------------- resolution, frames


RENDERERS = {
    "openpose": (render_openpose_face, face68(), {}, 0.9),
    "instantid": (render_instantid_kps, KPS5_512, {}, 0.8),
    "instantid-subpixel": (render_instantid_kps, KPS5_512, {"drawing": "subpixel"}, 0.8),
    "landmarks68": (render_landmarks68, face68(), {}, 0.75),
    "mesh": (render_face_mesh, _mesh_fixture()[0], {"connections": _mesh_fixture()[1]}, 0.75),
}


def _coverage(img: np.ndarray, size: int) -> np.ndarray:
    """Fraction of each ``size``-grid pixel that ``img`` lights (any colour)."""
    lit = (img.max(axis=2) > 0).astype(np.float32)
    return cv2.resize(lit, (size, size), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("name", [n for n in RENDERERS if n != "instantid"])
def test_resolution_independent(name: str) -> None:
    # (InstantID's default integer drawing rounds widths to whole pixels: exact at its
    # reference size, not resolution independent)
    fn, pts, kw, min_iou = RENDERERS[name]
    small = fn(pts, 256, source_size=512, **kw).max(axis=2) > 0
    cover = _coverage(fn(pts, 1024, source_size=512, **kw), 256)
    # Same lit area (widths and radii scale with the size) and the same place.
    assert 0.8 < cover.sum() / small.sum() < 1.2
    assert _iou(small, cover >= 0.5) >= min_iou
    # Not trivially true: the same points drawn 3 px further right overlap much less.
    shifted = (
        fn(np.asarray(pts) + 6.0 * np.array([1.0, 0.0]), 256, source_size=512, **kw).max(axis=2) > 0
    )
    assert _iou(shifted, cover >= 0.5) < 0.3


@pytest.mark.parametrize("name", list(RENDERERS))
def test_deterministic_and_pil_output(name: str) -> None:
    fn, pts, kw, _ = RENDERERS[name]
    a = fn(pts, 300, source_size=512, **kw)
    b = fn(pts.copy(), 300, source_size=512, **kw)
    assert a.tobytes() == b.tobytes()
    pil = fn(pts, 300, source_size=512, output_type="pil", **kw)
    assert isinstance(pil, Image.Image) and pil.mode == "RGB" and pil.size == (300, 300)
    assert np.array_equal(np.asarray(pil), a)


def test_source_size_and_matrix_frames() -> None:
    pts = face68()
    # A 1024×512 source squeezed onto a 256 canvas: x/4, y/2 (pixel centres kept).
    wide = pts * [2.0, 1.0] + [1.5, 0.5]
    direct = (wide + 0.5) * [256 / 1024, 256 / 512] - 0.5
    assert np.array_equal(
        render_landmarks68(wide, 256, source_size=(1024, 512)), render_landmarks68(direct, 256)
    )
    m = np.array([[0.8, -0.2, 30.0], [0.2, 0.8, -10.0]])
    moved = pts @ m[:, :2].T + m[:, 2]
    assert np.array_equal(
        render_openpose_face(pts, 512, matrix=m), render_openpose_face(moved, 512)
    )


@pytest.mark.parametrize("name", list(RENDERERS))
def test_points_off_canvas_are_clipped_not_errors(name: str) -> None:
    fn, pts, kw, _ = RENDERERS[name]
    for far in (1e6, -1e9, 1e300):
        img = fn(pts + far, 128, **kw)
        assert img.shape == (128, 128, 3) and not img.any()
    with pytest.raises(ValueError, match="mapped points must be finite"):
        fn(pts, 128, matrix=[[1e308, 0, 0], [0, 1e308, 0]], **kw)
    half = fn(pts - [256.0, 0.0], 512, **kw)  # left half of the face hangs off the canvas
    full = fn(pts, 512, **kw)
    assert half.any() and _lit(half).sum() < _lit(full).sum()
    assert not half[:, 300:].any()  # nothing wrapped round to the far side


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("name", list(RENDERERS))
def test_bad_inputs_raise(name: str) -> None:
    fn, pts, kw, _ = RENDERERS[name]
    with pytest.raises(ValueError, match=r"`size` must be an integer in \[16, 4096\], got 8"):
        fn(pts, 8, **kw)
    for size in (512.0, True, "512", 5000):
        with pytest.raises(ValueError, match="`size` must be"):
            fn(pts, size, **kw)
    with pytest.raises(ValueError, match=r"must have shape .*, got \(3, 2\)"):
        fn(pts[:3], 512, **kw)
    with pytest.raises(ValueError, match=r"must have shape"):
        fn(np.zeros((len(pts), 4)), 512, **kw)
    bad = pts.copy()
    bad[2, 0] = np.nan
    with pytest.raises(ValueError, match="must be finite, got NaN or inf"):
        fn(bad, 512, **kw)
    with pytest.raises(ValueError, match="`output_type` must be"):
        fn(pts, 512, output_type="tensor", **kw)
    with pytest.raises(ValueError, match="must not both be given"):
        fn(pts, 512, source_size=512, matrix=np.eye(2, 3), **kw)
    with pytest.raises(ValueError, match="`matrix` must be a finite"):
        fn(pts, 512, matrix=np.eye(3), **kw)
    for src in (0, -5, (512,), (512, float("nan")), "512"):
        with pytest.raises(ValueError, match="`source_size` must be"):
            fn(pts, 512, source_size=src, **kw)


def test_renderer_specific_bad_inputs() -> None:
    with pytest.raises(ValueError, match="`pupils` must be a bool"):
        render_openpose_face(face68(), 512, pupils="yes")
    with pytest.raises(ValueError, match=r"shape \(68, 2\|3\) or \(70, 2\|3\), got \(69, 2\)"):
        render_openpose_face(np.zeros((69, 2)), 512)
    pts, _ = _mesh_fixture()
    with pytest.raises(ValueError, match="`connections` keys must be among"):
        render_face_mesh(pts, 512, connections={"nose": [(0, 1)]})
    with pytest.raises(ValueError, match=r"indices must be in \[0, 477\], got \[0, 478\]"):
        render_face_mesh(pts, 512, connections={"lips": [(0, 478)]})
    with pytest.raises(ValueError, match="`connections` must map"):
        render_face_mesh(pts, 512, connections=[(0, 1)])


# --------------------------------------------------------------------------- pose transfer


@pytest.fixture(scope="module")
def t1_faces() -> tuple[np.ndarray, list[Face]]:
    pytest.importorskip("dlib", reason="dlib-bin is not installed")
    pytest.importorskip("insightface", reason="insightface (t1.jpg) is not installed")
    from facegen.backends.dlib_backend import DlibDetector
    from facegen.image_io import load_image
    from facegen.samples import sample_path

    image = load_image(sample_path("t1"))
    faces = DlibDetector().detect(image)
    assert len(faces) == 6
    return image, faces


def test_transfer_matches_align_face_and_places_eyes(t1_faces) -> None:
    image, faces = t1_faces
    tpl = arcface_template(512)
    for face in faces:
        moved = transfer_face(face, size=512)
        m = np.array(moved.extras["control_matrix"])
        assert np.allclose(m, align_face(image, face, size=512).matrix, atol=1e-9)
        lm = transfer_landmarks(face, size=512)
        assert lm.shape == (68, 2)
        eyes = np.stack([lm[36:42].mean(0), lm[42:48].mean(0)])
        # Least squares over 5 points: the eyes land near, not on, the template (measured on
        # t1: 3–31 px at 512, the dlib eye centres sit lower than ArcFace's).
        assert np.all(np.linalg.norm(eyes - tpl[:2], axis=1) < 0.07 * 512)
        assert np.allclose(moved.kps5, face.kps5 @ m[:, :2].T + m[:, 2], atol=1e-3)
        # fit="eyes": exactly on the template's eyes.
        exact = transfer_landmarks(face, size=512, fit="eyes")
        eyes = np.stack([exact[36:42].mean(0), exact[42:48].mean(0)])
        assert np.abs(eyes - tpl[:2]).max() < 0.01
        # The rendered control image is lit there.
        img = render_landmarks68(exact, 512)
        for x, y in exact[36:48]:
            assert img[round(y), round(x)].any()


def test_transfer_ffhq_template_and_bad_inputs(t1_faces) -> None:
    image, faces = t1_faces
    face = faces[0]
    moved = transfer_face(face, size=256, template="ffhq")
    assert np.allclose(
        moved.extras["control_matrix"],
        align_face(image, face, size=256, template="ffhq").matrix,
        atol=1e-6,
    )
    assert moved.landmark_scheme == face.landmark_scheme and moved.score == face.score
    bare = face.replace(landmarks=None, landmark_scheme=None)
    with pytest.raises(ValueError, match=r"`reference_face.landmarks` must be set"):
        transfer_landmarks(bare, size=512)
    with pytest.raises(ValueError, match="`reference_face` must be a Face"):
        transfer_face(face.kps5, size=512)
    with pytest.raises(ValueError, match="`template` must be one of"):
        transfer_face(face, size=512, template="dlib")
    with pytest.raises(ValueError, match="`fit` must be"):
        transfer_face(face, size=512, template="ffhq", fit="eyes")
    with pytest.raises(ValueError, match="`size` must be"):
        transfer_face(face, size=4)


# --------------------------------------------------------------------------- head pose


def _project(yaw: float, pitch: float, roll: float, *, noise: float = 0.0, seed: int = 0):
    """68 points whose model points are a perspective projection at the given angles."""
    k = np.array([[800.0, 0, 320], [0, 800.0, 240], [0, 0, 1]])
    rvec, _ = cv2.Rodrigues(head_rotation(yaw, pitch, roll))
    proj, _ = cv2.projectPoints(POSE_MODEL_POINTS, rvec, np.array([0, 0, 2500.0]), k, None)
    pts = np.full((68, 2), proj.reshape(-1, 2).mean(0))
    pts[list(POSE_MODEL_INDICES)] = proj.reshape(-1, 2)
    pts += np.random.default_rng(seed).normal(0, noise, pts.shape)
    return pts


@pytest.mark.parametrize("yaw", [-50, -20, 0, 35])
@pytest.mark.parametrize("pitch", [-25, 0, 20])
@pytest.mark.parametrize("roll", [-30, 0, 15])
def test_pose_recovers_synthetic_angles(yaw: float, pitch: float, roll: float) -> None:
    pts = _project(yaw, pitch, roll)
    pose = pose_from_landmarks(pts, image_size=(640, 480), focal_length=800.0)
    assert abs(pose.yaw - yaw) < 0.01 and abs(pose.pitch - pitch) < 0.01
    assert abs(pose.roll - roll) < 0.01 and pose.reprojection_error < 1e-3
    assert np.allclose(pose.rotation, head_rotation(yaw, pitch, roll), atol=1e-6)
    # Camera unknown (default intrinsics): within 2°.
    guess = pose_from_landmarks(pts)
    assert max(abs(guess.yaw - yaw), abs(guess.pitch - pitch), abs(guess.roll - roll)) < 2.0
    # Half-pixel landmark noise on a ~150 px face, true camera: within 2°.
    noisy = _project(yaw, pitch, roll, noise=0.5, seed=yaw + 2 * pitch + 3 * roll + 200)
    rough = pose_from_landmarks(noisy, image_size=(640, 480), focal_length=800.0)
    assert max(abs(rough.yaw - yaw), abs(rough.pitch - pitch), abs(rough.roll - roll)) < 2.0


def test_pose_sign_conventions_in_the_image() -> None:
    nose, eye_l, eye_r = 30, 36, 45
    p = _project(30, 0, 0)
    assert p[nose, 0] > (p[eye_l, 0] + p[eye_r, 0]) / 2  # yaw > 0: nose toward image right
    up, level = _project(0, 25, 0), _project(0, 0, 0)

    def nose_below_eyes(q: np.ndarray) -> float:
        return float(q[nose, 1] - (q[eye_l, 1] + q[eye_r, 1]) / 2)

    assert nose_below_eyes(up) < 0.7 * nose_below_eyes(level)  # pitch > 0: looking up
    p = _project(0, 0, 20)
    assert p[eye_r, 1] > p[eye_l, 1]  # roll > 0: image-right eye lower


def test_pose_mirrored_photo_flips_yaw_and_roll(t1_faces) -> None:
    image, faces = t1_faces
    from facegen.backends.dlib_backend import DlibDetector

    width = image.shape[1]
    mirrored = DlibDetector().detect(np.ascontiguousarray(image[:, ::-1]))
    for face in faces:
        cx = width - 1 - (face.bbox[0] + face.bbox[2]) / 2
        twin = min(mirrored, key=lambda f: abs((f.bbox[0] + f.bbox[2]) / 2 - cx))
        a, b = pose_from_landmarks(face.landmarks), pose_from_landmarks(twin.landmarks)
        assert abs(a.yaw + b.yaw) < 6.0 and abs(a.roll + b.roll) < 4.0
        assert abs(a.pitch - b.pitch) < 6.0
        assert abs(a.yaw) < 70 and abs(a.pitch) < 45


def test_pose_bad_inputs() -> None:
    pts = _project(0, 0, 0)
    with pytest.raises(ValueError, match=r"`points68` must have shape \(68, 2\|3\)"):
        pose_from_landmarks(pts[:67])
    bad = pts.copy()
    bad[30, 1] = np.inf
    with pytest.raises(ValueError, match="must be finite"):
        pose_from_landmarks(bad)
    with pytest.raises(ValueError, match="`points68` must not all coincide"):
        pose_from_landmarks(np.zeros((68, 2)))
    with pytest.raises(ValueError, match="`image_size` must be"):
        pose_from_landmarks(pts, image_size=(640, -1))
    with pytest.raises(ValueError, match="`focal_length` must be"):
        pose_from_landmarks(pts, focal_length=0.0)
