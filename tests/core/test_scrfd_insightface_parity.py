"""SCRFD post-processing against insightface's ``SCRFD.detect`` rules.

The reference functions below are written in this file from insightface's documented
behaviour (``insightface/model_zoo/scrfd.py``): the image resized keeping its aspect into
the input size, boxes and keypoints divided by ONE ``det_scale = new_height / height``,
NMS with ``+1`` pixel areas and overlaps, and ``max_num`` keeping the top ``area - 2·offset²``
(``metric="default"``) or the top areas (``metric="max"``). Where insightface itself imports,
its ``SCRFD`` runs on the same canned network outputs too.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from facegen.backends.scrfd import (
    SCRFDDetector,
    max_faces_ranking,
    nms,
    select_max_faces,
)

STRIDES = (8, 16, 32)
NUM_ANCHORS = 2
INPUT = 640


# --------------------------------------------------------------------------- references


def reference_nms(dets: np.ndarray, thresh: float, pixel: float = 1.0) -> list[int]:
    """insightface's greedy NMS on ``(N, 5)`` ``[x1, y1, x2, y2, score]`` rows (``pixel=0``:
    the continuous-area variant, for contrast)."""
    x1, y1, x2, y2, scores = (dets[:, i] for i in range(5))
    areas = (x2 - x1 + pixel) * (y2 - y1 + pixel)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        w = np.maximum(0.0, xx2 - xx1 + pixel)
        h = np.maximum(0.0, yy2 - yy1 + pixel)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


def reference_max_num(det: np.ndarray, img_hw: tuple[int, int], k: int, metric: str) -> set[int]:
    """Row indices insightface's ``detect(max_num=k, metric=metric)`` keeps."""
    if k <= 0 or len(det) <= k:
        return set(range(len(det)))
    area = (det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1])
    centre_y, centre_x = img_hw[0] // 2, img_hw[1] // 2
    off_x = (det[:, 0] + det[:, 2]) / 2 - centre_x
    off_y = (det[:, 1] + det[:, 3]) / 2 - centre_y
    off2 = off_x**2 + off_y**2
    values = area if metric == "max" else area - off2 * 2.0
    return {int(i) for i in np.argsort(values)[::-1][:k]}


def reference_detect(
    outs: list[np.ndarray],
    img_hw: tuple[int, int],
    *,
    threshold: float = 0.5,
    nms_thresh: float = 0.4,
    max_num: int = 0,
    metric: str = "default",
) -> tuple[np.ndarray, np.ndarray]:
    """insightface's post-processing of 640×640 SCRFD outputs for an ``img_hw`` image.

    Returns ``det`` float32 ``(K, 5)`` and keypoints ``(K, 5, 2)``, sorted by score.
    """
    h, w = img_hw
    if h / w > 1.0:
        new_h = INPUT
        new_w = int(new_h / (h / w))
    else:
        new_w = INPUT
        new_h = int(new_w * (h / w))
    det_scale = float(new_h) / h
    scores_l, boxes_l, kps_l = [], [], []
    for idx, stride in enumerate(STRIDES):
        n = INPUT // stride
        grid = np.stack(np.mgrid[:n, :n][::-1], axis=-1).astype(np.float32)
        centres = np.repeat((grid * stride).reshape(-1, 2), NUM_ANCHORS, axis=0)
        score = outs[idx]
        dist = outs[idx + 3] * stride
        kdist = outs[idx + 6] * stride
        pos = np.where(score >= threshold)[0]
        box = np.stack(
            [
                centres[:, 0] - dist[:, 0],
                centres[:, 1] - dist[:, 1],
                centres[:, 0] + dist[:, 2],
                centres[:, 1] + dist[:, 3],
            ],
            axis=-1,
        )
        kps = np.stack([centres[:, i % 2] + kdist[:, i] for i in range(10)], axis=-1).reshape(
            -1, 5, 2
        )
        scores_l.append(score[pos])
        boxes_l.append(box[pos])
        kps_l.append(kps[pos])
    scores = np.vstack(scores_l)
    order = np.argsort(-scores.ravel(), kind="stable")
    boxes = np.vstack(boxes_l) / det_scale
    kps = np.vstack(kps_l) / det_scale
    pre = np.hstack((boxes, scores)).astype(np.float32)[order]
    kps = kps[order]
    keep = reference_nms(pre, nms_thresh)
    det, kps = pre[keep], kps[keep]
    chosen = sorted(reference_max_num(det, img_hw, max_num, metric))
    return det[chosen], kps[chosen]


# --------------------------------------------------------------------- canned network outputs


@dataclass
class _Meta:
    name: str
    shape: list[Any]


class CannedSCRFD:
    """A stand-in for a 640×640 SCRFD model (3 strides, 2 anchors, keypoints) whose outputs are
    fixed random numbers, whatever the image: ``n_pos`` anchors per stride score >= 0.5, all
    of them well inside the letterboxed image, so no box needs clipping."""

    def __init__(self, seed: int, img_hw: tuple[int, int], n_pos: int = 80) -> None:
        rng = np.random.default_rng(seed)
        h, w = img_hw
        new_w, new_h = (INPUT, int(INPUT * h / w)) if h <= w else (int(INPUT * w / h), INPUT)
        scores, boxes, kpss = [], [], []
        for s in STRIDES:
            n = INPUT // s
            ys, xs = np.mgrid[:n, :n]
            c = np.repeat(np.stack([xs, ys], -1).reshape(-1, 2) * s, NUM_ANCHORS, axis=0)
            score = rng.uniform(0.0, 0.45, (len(c), 1)).astype(np.float32)
            inside = np.flatnonzero(
                (c[:, 0] > 60) & (c[:, 0] < new_w - 60) & (c[:, 1] > 60) & (c[:, 1] < new_h - 60)
            )
            pos = rng.choice(inside, size=min(n_pos, len(inside)), replace=False)
            score[pos, 0] = rng.uniform(0.5, 1.0, len(pos))
            scores.append(score)
            boxes.append((rng.uniform(4.0, 55.0, (len(c), 4)) / s).astype(np.float32))
            kpss.append((rng.uniform(-50.0, 50.0, (len(c), 10)) / s).astype(np.float32))
        self.outs = scores + boxes + kpss
        widths = [1] * 3 + [4] * 3 + [10] * 3
        self._outputs = [
            _Meta(f"out{i}", [len(o), wd]) for i, (o, wd) in enumerate(zip(self.outs, widths))
        ]

    def get_inputs(self) -> list[_Meta]:
        return [_Meta("input.1", [1, 3, INPUT, INPUT])]

    def get_outputs(self) -> list[_Meta]:
        return self._outputs

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        assert feeds["input.1"].shape == (1, 3, INPUT, INPUT)
        return [o.copy() for o in self.outs]


def _as_arrays(faces: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.stack([f.bbox for f in faces]),
        np.array([f.score for f in faces], np.float32),
        np.stack([f.kps5 for f in faces]),
    )


# --------------------------------------------------------------------------- NMS


def _random_candidates(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 640, (n, 2))
    wh = rng.uniform(3, 40, (n, 2))
    boxes = np.hstack([xy, xy + wh]).astype(np.float32)
    return boxes, rng.uniform(0.5, 1.0, n).astype(np.float32)


@pytest.mark.parametrize(("seed", "thresh"), [(0, 0.4), (1, 0.4), (2, 0.3), (3, 0.6)])
def test_nms_keeps_exactly_what_insightface_keeps(seed: int, thresh: float) -> None:
    boxes, scores = _random_candidates(seed, 2000)
    dets = np.hstack([boxes, scores[:, None]])
    want = reference_nms(dets, thresh)
    got = nms(boxes, scores, thresh).tolist()
    assert got == want
    # the +1 rule matters on these candidates: continuous areas keep more boxes
    assert len(reference_nms(dets, thresh, pixel=0.0)) > len(want)


def test_nms_matches_insightface_own_method() -> None:
    scrfd = pytest.importorskip("insightface.model_zoo.scrfd")
    boxes, scores = _random_candidates(7, 3000)
    dets = np.hstack([boxes, scores[:, None]]).astype(np.float32)
    theirs = scrfd.SCRFD.nms(types.SimpleNamespace(nms_thresh=0.4), dets)
    assert nms(boxes, scores, 0.4).tolist() == [int(i) for i in theirs]


def test_nms_plus_one_rule_on_a_closed_form_pair() -> None:
    # two 10×10 boxes offset by 4 px: +1 areas 121, overlap 7·11 = 77 → 77 / 165 ≈ 0.467;
    # continuous areas would give 60 / 140 ≈ 0.43
    boxes = np.array([[0, 0, 10, 10], [4, 0, 14, 10]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    assert nms(boxes, scores, 0.45).tolist() == [0]
    assert nms(boxes, scores, 0.47).tolist() == [0, 1]


# --------------------------------------------------------------------------- max_faces


#: (height, width) = (400, 600): centre (300, 200). "far" is the largest box, in a corner.
RANKING_IMAGE_HW = (400, 600)
RANKING_BOXES = {
    "far": [0.0, 0.0, 120.0, 120.0],  # area 14400, area - 2·offset² = -140000
    "centre": [260.0, 160.0, 340.0, 240.0],  # 6400, 6400
    "near": [200.0, 150.0, 250.0, 200.0],  # 2500, -10000
    "right": [400.0, 250.0, 482.0, 330.0],  # 6560, -49402
    "corner": [520.0, 320.0, 600.0, 401.0],  # 6480, -180240.5
    "dot": [280.0, 180.0, 310.0, 210.0],  # 900, 800
}


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("metric", ["default", "max"])
def test_max_faces_keeps_insightface_choice(k: int, metric: str) -> None:
    boxes = np.array(list(RANKING_BOXES.values()), np.float32)
    names = list(RANKING_BOXES)
    want = reference_max_num(boxes, RANKING_IMAGE_HW, k, metric)
    got = select_max_faces(boxes, RANKING_IMAGE_HW, k, metric).tolist()
    assert set(got) == want and got == sorted(got)
    kept = {names[i] for i in got}
    if metric == "default":
        # the largest box, far off-centre, loses to smaller centred ones
        assert (
            kept
            == [{"centre"}, {"centre", "dot", "near"}, set(names) - {"corner"}][[1, 3, 5].index(k)]
        )
        assert "far" not in kept or k == 5
    else:
        assert "far" in kept


def test_max_faces_ranking_values_in_closed_form() -> None:
    boxes = np.array([RANKING_BOXES["far"], RANKING_BOXES["centre"]], np.float32)
    np.testing.assert_array_equal(
        max_faces_ranking(boxes, RANKING_IMAGE_HW), np.array([-140000.0, 6400.0], np.float32)
    )
    np.testing.assert_array_equal(
        max_faces_ranking(boxes, RANKING_IMAGE_HW, "max"), np.array([14400.0, 6400.0])
    )
    with pytest.raises(ValueError, match="`metric` must be one of 'default', 'max', got 'area'"):
        max_faces_ranking(boxes, RANKING_IMAGE_HW, "area")  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_max_faces_random_boxes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    hw = (int(rng.integers(200, 900)), int(rng.integers(200, 900)))
    xy = rng.uniform(0, 1, (40, 2)) * [hw[1], hw[0]]
    boxes = np.hstack([xy, xy + rng.uniform(10, 150, (40, 2))]).astype(np.float32)
    for k in (1, 3, 5):
        for metric in ("default", "max"):
            got = set(select_max_faces(boxes, hw, k, metric).tolist())
            assert got == reference_max_num(boxes, hw, k, metric), (k, metric)


# --------------------------------------------------------------------------- whole detector


@pytest.mark.parametrize(
    "img_hw",
    [(333, 500), (500, 333), (480, 640), (767, 1023)],  # x and y factors differ for all but one
)
@pytest.mark.parametrize("k", [0, 1, 3, 5])
def test_detect_equals_reference_pipeline(img_hw: tuple[int, int], k: int) -> None:
    session = CannedSCRFD(seed=sum(img_hw), img_hw=img_hw)
    img = np.zeros((*img_hw, 3), np.uint8)
    det = SCRFDDetector(session, max_faces=k)
    faces = det.detect(img)
    want, want_kps = reference_detect(session.outs, img_hw, max_num=k)
    assert len(faces) == len(want)
    assert len(want) == k if k else len(want) > 20
    boxes, scores, kps = _as_arrays(faces)
    np.testing.assert_array_equal(boxes, want[:, :4])
    np.testing.assert_array_equal(scores, want[:, 4])
    np.testing.assert_array_equal(kps, want_kps)


def test_detect_maps_back_with_one_scale() -> None:
    # 500×333 → 640×426 in the input: det_scale = 426 / 333 ≈ 1.2793, the x factor is 1.28
    img_hw = (333, 500)
    session = CannedSCRFD(seed=3, img_hw=img_hw)
    faces = SCRFDDetector(session, max_faces=0).detect(np.zeros((*img_hw, 3), np.uint8))
    want, _ = reference_detect(session.outs, img_hw)
    det_scale = 426 / 333
    boxes = _as_arrays(faces)[0]
    np.testing.assert_array_equal(boxes, want[:, :4])
    raw = want[:, :4] * np.float32(det_scale)  # back to input pixels (to float32 rounding)
    per_axis = raw / np.array([1.28, det_scale, 1.28, det_scale])
    assert np.abs(per_axis - boxes)[:, [0, 2]].max() > 0.1  # what separate factors would give
    np.testing.assert_allclose(boxes, raw / det_scale, atol=1e-3)


@pytest.mark.parametrize("k", [0, 1, 3, 5])
@pytest.mark.parametrize("metric", ["default", "max"])
def test_detect_equals_insightface_scrfd(k: int, metric: str) -> None:
    scrfd = pytest.importorskip("insightface.model_zoo.scrfd")
    img_hw = (333, 500)
    session = CannedSCRFD(seed=11, img_hw=img_hw)
    img = np.random.default_rng(0).integers(0, 256, (*img_hw, 3), dtype=np.uint8)
    faces = SCRFDDetector(session, max_faces=k, max_faces_metric=metric).detect(img)
    theirs = scrfd.SCRFD(session=session)
    det, kps = theirs.detect(np.ascontiguousarray(img[..., ::-1]), max_num=k, metric=metric)
    order = np.argsort(-det[:, 4], kind="stable")  # insightface orders by rank, facegen by score
    boxes, scores, our_kps = _as_arrays(faces)
    np.testing.assert_array_equal(boxes, det[order, :4])
    np.testing.assert_array_equal(scores, det[order, 4])
    np.testing.assert_array_equal(our_kps, kps[order])


def test_max_faces_metric_is_validated() -> None:
    session = CannedSCRFD(seed=0, img_hw=(64, 64), n_pos=1)
    with pytest.raises(ValueError, match="`max_faces_metric` must be one of 'default', 'max'"):
        SCRFDDetector(session, max_faces_metric="largest")  # type: ignore[arg-type]
    assert SCRFDDetector(session).max_faces_metric == "default"
