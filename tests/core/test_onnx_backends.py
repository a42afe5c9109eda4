"""ONNX backends (SCRFD detector, insightface landmarkers, ArcFace encoder) on tiny test doubles.

The models come from ``tests/core/conftest.py``: they have the real input/output signatures
and compute known functions of their input, so these tests check preprocessing (RGB order,
letterbox, mean/std, crops) and decoding against closed-form expectations. They say nothing
about detection or recognition quality — that needs the published weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from facegen.backends.arcface_onnx import ArcFaceOnnxEncoder
from facegen.backends.insightface_landmarks import InsightfaceLandmarker, kps5_from_ibug68
from facegen.backends.onnx_utils import graph_normalises_input, open_session
from facegen.backends.scrfd import SCRFDDetector, nms
from facegen.errors import (
    InvalidImageError,
    InvalidModelError,
    UnknownNameError,
)
from facegen.types import Face

pytest.importorskip("onnx")


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


def _norm(v: float) -> float:
    """A pixel value as the SCRFD/landmark networks see it: (v - 127.5) / 128."""
    return (v - 127.5) / 128.0


def _expected(
    spec: dict[str, Any], row: int, col: int, stride: int, anchor: int = 0, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Box (4,) and keypoints (5, 2) that the tiny SCRFD decodes for a cell, in source pixels.

    SCRFD anchor centres are the cells' top-left corners: (col · stride, row · stride).
    """
    c = np.array([col * stride, row * stride], np.float64)
    d = spec["box_dist"][anchor] * stride
    box = np.array([c[0] - d[0], c[1] - d[1], c[0] + d[2], c[1] + d[3]]) / scale
    kps = (c + spec["kps_dist"][anchor].reshape(5, 2) * stride) / scale
    return box, kps


def _plant(img: np.ndarray, x: int, y: int, size: int, channel: int, value: int = 255) -> None:
    img[y : y + size, x : x + size, channel] = value


# =========================================================================== SCRFD


def test_scrfd_decodes_a_planted_face(scrfd_model: Any) -> None:
    spec = scrfd_model.spec
    det = SCRFDDetector(model_path=scrfd_model.path, name="tiny")
    assert (det.fmc, det.num_anchors, det.batched, det.input_size) == (3, 2, False, (640, 640))
    img = np.zeros((640, 640, 3), np.uint8)
    _plant(img, 5 * 32, 10 * 32, 32, channel=2)  # blue drives stride 32: cell (10, 5)
    faces = det.detect(img)
    assert len(faces) == 1
    f = faces[0]
    box, kps = _expected(spec, 10, 5, 32)
    # a BGR feed would put the marker on the stride-8 channel: many small boxes instead
    np.testing.assert_allclose(f.bbox, box, atol=1e-3)
    np.testing.assert_allclose(f.kps5, kps, atol=1e-3)
    assert f.score == pytest.approx(_sigmoid(spec["gain"] * _norm(255) + spec["bias"]), abs=1e-5)
    assert f.detector == "tiny" and f.landmarks is None


class _Poisoned:
    """An ONNX session whose outputs ``which`` are overwritten with ``value`` (NaN, inf)."""

    def __init__(self, path: Path, which: list[int], value: float) -> None:
        self.sess, self.which, self.value = open_session(path), which, value

    def get_inputs(self) -> Any:
        return self.sess.get_inputs()

    def get_outputs(self) -> Any:
        return self.sess.get_outputs()

    def run(self, names: Any, feeds: Any) -> list[np.ndarray]:
        outs = [np.array(o, copy=True) for o in self.sess.run(names, feeds)]
        for i in self.which:
            outs[i][...] = self.value
        return outs


@pytest.mark.parametrize(
    ("which", "value"),
    [
        ([0, 1, 2], float("nan")),  # scores: NaN never passes a threshold, nothing would show
        ([3, 4, 5], float("nan")),  # boxes
        ([6, 7, 8], float("inf")),  # keypoints
    ],
)
def test_scrfd_non_finite_outputs_are_a_model_error(
    scrfd_model: Any, which: list[int], value: float
) -> None:
    det = SCRFDDetector(_Poisoned(scrfd_model.path, which, value), name="poisoned")
    img = np.zeros((640, 640, 3), np.uint8)
    _plant(img, 5 * 32, 10 * 32, 32, channel=2)
    with pytest.raises(InvalidModelError, match=r"poisoned.*NaN or inf"):
        det.detect(img)


def test_scrfd_nms_merges_the_two_anchors_of_a_cell(scrfd_model: Any) -> None:
    spec = scrfd_model.spec
    img = np.zeros((640, 640, 3), np.uint8)
    _plant(img, 8 * 32, 4 * 32, 32, channel=2)
    # the two anchors' boxes overlap with IoU ≈ 0.73: kept apart only above that
    loose = SCRFDDetector(model_path=scrfd_model.path, nms_threshold=0.9).detect(img)
    assert len(loose) == 2
    assert loose[0].score > loose[1].score
    np.testing.assert_allclose(loose[1].bbox, _expected(spec, 4, 8, 32, anchor=1)[0], atol=1e-3)
    tight = SCRFDDetector(model_path=scrfd_model.path).detect(img)
    assert len(tight) == 1
    np.testing.assert_allclose(tight[0].bbox, loose[0].bbox)


def test_scrfd_score_threshold(scrfd_model: Any) -> None:
    spec = scrfd_model.spec
    img = np.zeros((640, 640, 3), np.uint8)
    _plant(img, 6 * 32, 6 * 32, 32, channel=2, value=208)
    s0 = _sigmoid(spec["gain"] * _norm(208) + spec["bias"])  # ≈ 0.737
    s1 = _sigmoid(spec["gain"] * _norm(208) + spec["bias"] + spec["anchor_step"])  # ≈ 0.51
    assert s1 < 0.6 < s0 < 0.8
    loose = SCRFDDetector(model_path=scrfd_model.path, score_threshold=0.5, nms_threshold=1.0)
    assert sorted(f.score for f in loose.detect(img)) == pytest.approx([s1, s0], abs=1e-5)
    mid = SCRFDDetector(model_path=scrfd_model.path, score_threshold=0.6, nms_threshold=1.0)
    assert [f.score for f in mid.detect(img)] == pytest.approx([s0], abs=1e-5)
    assert SCRFDDetector(model_path=scrfd_model.path, score_threshold=0.8).detect(img) == []
    assert SCRFDDetector(model_path=scrfd_model.path).detect(np.zeros((64, 64, 3), np.uint8)) == []


def test_scrfd_letterbox_scales_back_on_a_wide_image(scrfd_model: Any) -> None:
    # 480×240 (W×H) → 640×320 in the 640×640 input: scale 4/3, padding below
    img = np.zeros((240, 480, 3), np.uint8)
    _plant(img, 144, 72, 24, channel=2)  # → input x 192…224, y 96…128: stride-32 cell (3, 6)
    faces = SCRFDDetector(model_path=scrfd_model.path).detect(img)
    assert len(faces) == 1
    box, kps = _expected(scrfd_model.spec, 3, 6, 32, scale=4 / 3)
    np.testing.assert_allclose(faces[0].bbox, box, atol=1e-3)
    np.testing.assert_allclose(faces[0].kps5, kps, atol=1e-3)
    np.testing.assert_allclose(faces[0].bbox, [120, 42, 168, 108], atol=1e-3)


def test_scrfd_letterbox_maps_back_with_one_scale(scrfd_model: Any) -> None:
    # 500×333 (W×H) → 640×426: insightface's det_scale = 426 / 333 ≈ 1.2793 maps BOTH axes
    # back, although the x resize factor is 640 / 500 = 1.28
    img = np.zeros((333, 500, 3), np.uint8)
    _plant(img, 295, 195, 40, channel=2)  # → input x 377…429, y 249…301: stride-32 cell (8, 12)
    faces = SCRFDDetector(model_path=scrfd_model.path).detect(img)
    assert len(faces) == 1
    det_scale = 426 / 333
    box, kps = _expected(scrfd_model.spec, 8, 12, 32, scale=det_scale)
    np.testing.assert_allclose(faces[0].bbox, box, atol=1e-3)
    np.testing.assert_allclose(faces[0].kps5, kps, atol=1e-3)
    per_axis, _ = _expected(scrfd_model.spec, 8, 12, 32, scale=1.0)
    per_axis = per_axis / [1.28, det_scale, 1.28, det_scale]
    assert abs(per_axis[2] - faces[0].bbox[2]) > 0.15  # separate factors: ~0.18 px apart


def test_scrfd_letterbox_tall_image_and_non_square_input(scrfd_model: Any) -> None:
    # 200×400 (W×H) into a 320×256 input: height-bound, 128×256, scale 0.64, padding right
    det = SCRFDDetector(model_path=scrfd_model.path, input_size=(320, 256))
    img = np.zeros((400, 200, 3), np.uint8)
    _plant(img, 100, 100, 50, channel=2)  # → input x 64…96, y 64…96: stride-32 cell (2, 2)
    faces = det.detect(img)
    assert len(faces) == 1
    box, kps = _expected(scrfd_model.spec, 2, 2, 32, scale=0.64)
    np.testing.assert_allclose(faces[0].bbox, box, atol=1e-3)
    np.testing.assert_allclose(faces[0].kps5, kps, atol=1e-3)


def test_scrfd_clips_boxes_to_the_image(scrfd_model: Any) -> None:
    img = np.zeros((320, 320, 3), np.uint8)
    _plant(img, 0, 0, 16, channel=2)  # cell (0, 0): box starts at (-32, -40)
    faces = SCRFDDetector(model_path=scrfd_model.path).detect(img)
    assert len(faces) == 1
    box, kps = _expected(scrfd_model.spec, 0, 0, 32, scale=2.0)
    np.testing.assert_allclose(faces[0].bbox, [0, 0, box[2], box[3]], atol=1e-3)
    np.testing.assert_allclose(faces[0].kps5, kps, atol=1e-3)  # keypoints are not clipped


def test_scrfd_sorts_by_score_and_max_faces_ranks_like_insightface(scrfd_model: Any) -> None:
    spec = scrfd_model.spec
    img = np.zeros((640, 640, 3), np.uint8)
    _plant(img, 45 * 8, 30 * 8, 8, channel=0, value=255)  # stride 8, small, off-centre, best
    _plant(img, 20 * 16, 20 * 16, 16, channel=1, value=230)  # stride 16, medium, centred
    _plant(img, 2 * 32, 2 * 32, 32, channel=2, value=210)  # stride 32, largest, in a corner
    exp = {
        8: _expected(spec, 30, 45, 8)[0],
        16: _expected(spec, 20, 20, 16)[0],
        32: _expected(spec, 2, 2, 32)[0],
    }
    faces = SCRFDDetector(model_path=scrfd_model.path).detect(img)
    assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
    np.testing.assert_allclose(
        np.stack([f.bbox for f in faces]), np.stack([exp[8], exp[16], exp[32]]), atol=1e-3
    )

    def kept(k: int, metric: str) -> np.ndarray:
        det = SCRFDDetector(model_path=scrfd_model.path, max_faces=k, max_faces_metric=metric)
        return np.stack([f.bbox for f in det.detect(img)])

    # insightface's default: area - 2·(distance of the box centre from the image centre)²
    def value(b: np.ndarray) -> float:
        dx, dy = (b[0] + b[2]) / 2 - 320, (b[1] + b[3]) / 2 - 320
        return (b[2] - b[0]) * (b[3] - b[1]) - 2 * (dx * dx + dy * dy)

    assert value(exp[16]) > value(exp[8]) > value(exp[32])  # the largest box ranks last
    np.testing.assert_allclose(kept(1, "default"), exp[16][None], atol=1e-3)
    np.testing.assert_allclose(kept(2, "default"), np.stack([exp[8], exp[16]]), atol=1e-3)
    # metric="max": box area alone, the corner face wins
    np.testing.assert_allclose(kept(1, "max"), exp[32][None], atol=1e-3)
    np.testing.assert_allclose(kept(2, "max"), np.stack([exp[16], exp[32]]), atol=1e-3)
    np.testing.assert_allclose(kept(3, "default"), np.stack(list(exp.values())), atol=1e-3)


def test_scrfd_batched_outputs_decode_the_same(scrfd_model: Any, scrfd_batched_model: Any) -> None:
    img = np.zeros((480, 640, 3), np.uint8)
    _plant(img, 3 * 32, 7 * 32, 32, channel=2)
    _plant(img, 30 * 16, 20 * 16, 16, channel=1)
    det = SCRFDDetector(model_path=scrfd_batched_model.path)
    assert det.batched
    got, ref = det.detect(img), SCRFDDetector(model_path=scrfd_model.path).detect(img)
    assert len(got) == len(ref) == 2
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a.bbox, b.bbox)
        np.testing.assert_allclose(a.kps5, b.kps5)
        assert a.score == pytest.approx(b.score)


def test_scrfd_five_strides_one_anchor(scrfd_fmc5_model: Any) -> None:
    det = SCRFDDetector(model_path=scrfd_fmc5_model.path)
    assert (det.fmc, det.strides, det.num_anchors) == (5, (8, 16, 32, 64, 128), 1)
    img = np.zeros((640, 640, 3), np.uint8)
    _plant(img, 9 * 32, 2 * 32, 32, channel=2)
    faces = det.detect(img)
    assert len(faces) == 1
    np.testing.assert_allclose(
        faces[0].bbox, _expected(scrfd_fmc5_model.spec, 2, 9, 32)[0], atol=1e-3
    )


def test_scrfd_fixed_input_size(scrfd_fixed_model: Any) -> None:
    det = SCRFDDetector(model_path=scrfd_fixed_model.path)
    assert det.input_size == (320, 256)
    with pytest.raises(ValueError, match="input_size"):
        SCRFDDetector(model_path=scrfd_fixed_model.path, input_size=(640, 640))


def test_scrfd_refuses_bad_models_and_arguments(
    scrfd_model: Any, scrfd_no_kps_model: Any, scrfd_7_outputs_model: Any, tmp_path: Path
) -> None:
    with pytest.raises(InvalidModelError, match="keypoint"):
        SCRFDDetector(model_path=scrfd_no_kps_model.path)
    with pytest.raises(InvalidModelError, match=r"6, 9, 10 or 15 outputs.*got 7"):
        SCRFDDetector(model_path=scrfd_7_outputs_model.path)
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(InvalidModelError, match=r"corrupt\.onnx"):
        SCRFDDetector(model_path=bad)
    for kw in (
        {"input_size": (650, 640)},
        {"score_threshold": 1.5},
        {"nms_threshold": 0.0},
        {"max_faces": -1},
    ):
        with pytest.raises(ValueError):
            SCRFDDetector(model_path=scrfd_model.path, **kw)
    det = SCRFDDetector(open_session(scrfd_model.path))  # injected session
    with pytest.raises(InvalidImageError, match="uint8"):
        det.detect(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(InvalidImageError):
        det.detect(np.zeros((64, 64), np.uint8))


def test_nms_is_greedy_by_score() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], float)
    scores = np.array([0.6, 0.9, 0.5, 0.1])
    # box 1 wins, suppresses 0 and 3 (+1-pixel IoU 100 / 142 ≈ 0.70 with both); box 2 does
    # not overlap
    assert nms(boxes, scores, 0.4).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 0, 2]  # 0 and 3 coincide: IoU 1
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.4).tolist() == []


# =========================================================================== landmarks


def _face(bbox: list[float]) -> Face:
    x1, y1, x2, y2 = bbox
    kps = np.array([[x1, y1], [x2, y1], [(x1 + x2) / 2, (y1 + y2) / 2], [x1, y2], [x2, y2]])
    return Face(bbox=np.array(bbox), score=0.9, kps5=kps, detector="test")


def _expected_points(spec: dict[str, Any], face: Face, m: float, dims: int) -> np.ndarray:
    """The tiny landmark model's points mapped back to the image, in closed form.

    pred ∈ crop units [-1, 1] → crop pixel (pred + 1)·96 → image: centre + pred·96 / s with
    s = 192 / (1.5 · max(w, h)); z scales the same way.
    """
    raw = (spec["const"] + spec["alpha"] * m).reshape(-1, dims)
    pts = raw[-(68 if dims == 3 else 106) :].astype(np.float64)
    x1, y1, x2, y2 = face.bbox.astype(np.float64)
    s = spec["size"] / (1.5 * max(x2 - x1, y2 - y1))
    half = spec["size"] // 2
    out = pts * half / s
    out[:, 0] += (x1 + x2) / 2
    out[:, 1] += (y1 + y2) / 2
    return out


def test_landmark68_decodes_last_68_points_and_maps_back(landmark68_model: Any) -> None:
    spec = landmark68_model.spec
    lm = InsightfaceLandmarker(model_path=landmark68_model.path, scheme="ibug68")
    assert (lm.input_size, lm.input_mean, lm.input_std) == (192, 127.5, 128.0)
    img = np.zeros((300, 400, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 200, 10, 60  # only R feeds the model
    face = _face([150.0, 100.0, 210.0, 180.0])
    (out,) = lm.annotate(img, [face])
    assert out.landmark_scheme == "ibug68" and out.landmarks is not None
    assert out.landmarks.shape == (68, 3)
    exp = _expected_points(spec, face, _norm(200), 3)
    np.testing.assert_allclose(out.landmarks, exp, atol=1e-3)
    # kps5 recomputed from the 68 points; everything else kept
    np.testing.assert_allclose(out.kps5, kps5_from_ibug68(exp), atol=1e-3)
    np.testing.assert_allclose(out.bbox, face.bbox)
    assert out.detector == "test" and out.extras["landmarker"] == "insightface-68"


def test_landmark_all_zero_prediction_lands_on_the_box_centre() -> None:
    spec = {"const": np.zeros(212), "alpha": np.zeros(212), "size": 192}
    face = _face([10.0, 20.0, 50.0, 100.0])
    pts = _expected_points(spec, face, 0.0, 2)
    np.testing.assert_allclose(pts, np.tile([[30.0, 60.0]], (106, 1)))


def test_landmark106_graph_normalisation_and_batch(landmark106_model: Any) -> None:
    spec = landmark106_model.spec
    lm = InsightfaceLandmarker(model_path=landmark106_model.path, scheme="insightface106")
    # the graph starts with Sub_0/Mul_1: it normalises itself and gets raw pixels
    assert (lm.input_mean, lm.input_std) == (0.0, 1.0)
    img = np.zeros((240, 320, 3), np.uint8)
    img[..., 0] = 90
    faces = [_face([40.0, 40.0, 100.0, 90.0]), _face([200.0, 120.0, 240.0, 180.0])]
    out = lm.annotate(img, faces)  # batch axis fixed at 1: one run per face
    assert len(out) == 2
    for o, f in zip(out, faces):
        assert o.landmark_scheme == "insightface106" and o.landmarks is not None
        assert o.landmarks.shape == (106, 2)
        np.testing.assert_allclose(o.landmarks, _expected_points(spec, f, _norm(90), 2), atol=1e-3)
        np.testing.assert_allclose(o.kps5, f.kps5)  # the detector's keypoints are kept
    assert lm.annotate(img, []) == []


def test_landmark_crop_is_centred_on_the_box(landmark68_model: Any) -> None:
    spec = landmark68_model.spec
    lm = InsightfaceLandmarker(model_path=landmark68_model.path, scheme="ibug68")
    img = np.zeros((400, 400, 3), np.uint8)
    # bright R exactly where the first face's crop looks (1.5 × the 40 px box, plus 1 px)
    img[99:162, 199:262, 0] = 255
    inside, elsewhere = _face([210.0, 110.0, 250.0, 150.0]), _face([40.0, 240.0, 80.0, 280.0])
    a, b = lm.annotate(img, [inside, elsewhere])
    np.testing.assert_allclose(
        a.landmarks, _expected_points(spec, inside, _norm(255), 3), atol=1e-3
    )
    np.testing.assert_allclose(
        b.landmarks, _expected_points(spec, elsewhere, _norm(0), 3), atol=1e-3
    )


def test_landmark_explicit_normalisation_with_an_injected_session(landmark68_model: Any) -> None:
    sess = open_session(landmark68_model.path)
    with pytest.raises(ValueError, match="input_mean"):
        InsightfaceLandmarker(sess, scheme="ibug68")
    lm = InsightfaceLandmarker(sess, scheme="ibug68", input_mean=0.0, input_std=1.0)
    img = np.full((200, 200, 3), 40, np.uint8)
    face = _face([80.0, 80.0, 120.0, 120.0])
    (out,) = lm.annotate(img, [face])
    # raw pixels reach a graph that does not normalise: m = 40, not (40 - 127.5) / 128
    np.testing.assert_allclose(
        out.landmarks, _expected_points(landmark68_model.spec, face, 40.0, 3), atol=1e-2
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_landmark_non_finite_outputs_are_a_model_error(landmark68_model: Any, value: float) -> None:
    sess = _Poisoned(landmark68_model.path, [0], value)
    lm = InsightfaceLandmarker(sess, scheme="ibug68", input_mean=127.5, input_std=128.0)
    img = np.full((200, 200, 3), 40, np.uint8)
    with pytest.raises(InvalidModelError, match=r"insightface-68.*NaN or inf"):
        lm.annotate(img, [_face([80.0, 80.0, 120.0, 120.0])])


def test_landmark_scheme_must_match_the_model(
    landmark68_model: Any, landmark106_model: Any
) -> None:
    with pytest.raises(InvalidModelError, match="212"):
        InsightfaceLandmarker(model_path=landmark68_model.path, scheme="insightface106")
    with pytest.raises(InvalidModelError, match="68"):
        InsightfaceLandmarker(model_path=landmark106_model.path, scheme="ibug68")
    with pytest.raises(UnknownNameError, match="ibug68"):
        InsightfaceLandmarker(model_path=landmark68_model.path, scheme="ibug69")
    with pytest.raises(UnknownNameError, match="landmark_106"):
        InsightfaceLandmarker.from_pretrained(role="landmark_5", model_path=landmark68_model.path)


def test_graph_normalisation_rule(
    arcface_model: Any, arcface_submul_model: Any, bn_data_model: Any
) -> None:
    assert not graph_normalises_input(arcface_model.path, check_bn_data=False)
    assert graph_normalises_input(arcface_submul_model.path, check_bn_data=False)
    # `bn_data` first counts for the landmark models only (as in insightface)
    assert graph_normalises_input(bn_data_model.path, check_bn_data=True)
    assert not graph_normalises_input(bn_data_model.path, check_bn_data=False)


def test_kps5_from_ibug68() -> None:
    pts = np.zeros((68, 2))
    pts[36:42] = [10, 20]
    pts[42:48] = [30, 20]
    pts[36, 0] = 16  # the eye centre is a mean: (16 + 5·10) / 6 = 11
    pts[30], pts[48], pts[54] = [20, 30], [12, 40], [28, 40]
    np.testing.assert_allclose(
        kps5_from_ibug68(pts), [[11, 20], [30, 20], [20, 30], [12, 40], [28, 40]]
    )
    with pytest.raises(ValueError, match="68"):
        kps5_from_ibug68(np.zeros((67, 2)))


# =========================================================================== end to end


def test_parity_with_insightface_reference_implementation(
    scrfd_model: Any, landmark68_model: Any, landmark106_model: Any, arcface_model: Any
) -> None:
    """Our backends and insightface's own model_zoo classes agree on the same tiny models.

    insightface takes BGR images (and swaps them back to RGB for the network), so it gets
    ``img[..., ::-1]``. The image is 480×240 so that both letterbox axes scale by exactly
    4/3 (see ``SCRFDDetector._letterbox`` on the sub-pixel difference otherwise).
    """
    zoo = pytest.importorskip("insightface.model_zoo")
    from insightface.app.common import Face as InsightfaceFace

    rng = np.random.default_rng(7)
    img = np.zeros((240, 480, 3), np.uint8)
    _plant(img, 144, 72, 24, channel=2)
    _plant(img, 300, 120, 40, channel=1, value=235)
    _plant(img, 30, 180, 9, channel=0, value=250)
    bgr = np.ascontiguousarray(img[..., ::-1])

    ref_det = zoo.scrfd.SCRFD(model_file=str(scrfd_model.path))
    ref_det.prepare(-1, input_size=(640, 640))
    boxes, kpss = ref_det.detect(bgr, input_size=(640, 640))
    ours = SCRFDDetector(model_path=scrfd_model.path).detect(img)
    assert len(ours) == len(boxes) >= 3  # unaligned markers fire several cells
    np.testing.assert_allclose(np.stack([f.bbox for f in ours]), boxes[:, :4], atol=1e-3)
    np.testing.assert_allclose([f.score for f in ours], boxes[:, 4], atol=1e-5)
    np.testing.assert_allclose(np.stack([f.kps5 for f in ours]), kpss, atol=1e-3)

    photo = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    # fractional corners, as detectors give them: insightface's crop arithmetic is float32
    bbox = np.array([150.37, 100.81, 210.23, 180.69], np.float32)
    for model, scheme in ((landmark68_model, "ibug68"), (landmark106_model, "insightface106")):
        ref_lm = zoo.landmark.Landmark(model_file=str(model.path))
        ref_face = InsightfaceFace(bbox=bbox)
        ref_pts = ref_lm.get(np.ascontiguousarray(photo[..., ::-1]), ref_face)
        lm = InsightfaceLandmarker(model_path=model.path, scheme=scheme)
        assert (lm.input_mean, lm.input_std) == (ref_lm.input_mean, ref_lm.input_std)
        (got,) = lm.annotate(photo, [Face(bbox=bbox, score=1.0, kps5=np.zeros((5, 2)))])
        np.testing.assert_allclose(got.landmarks, ref_pts, atol=1e-3)

    ref_enc = zoo.arcface_onnx.ArcFaceONNX(model_file=str(arcface_model.path))
    crops = np.random.default_rng(8).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    ref_feat = ref_enc.get_feat([np.ascontiguousarray(c[..., ::-1]) for c in crops])
    enc = ArcFaceOnnxEncoder(model_path=arcface_model.path)
    np.testing.assert_allclose(enc._forward(crops), ref_feat, rtol=1e-5, atol=1e-5)


def test_face_analyzer_runs_the_three_onnx_backends(
    scrfd_model: Any, landmark68_model: Any, arcface_model: Any
) -> None:
    from facegen.analyzer import FaceAnalyzer

    analyzer = FaceAnalyzer(
        SCRFDDetector(model_path=scrfd_model.path),
        InsightfaceLandmarker(model_path=landmark68_model.path, scheme="ibug68"),
        ArcFaceOnnxEncoder(model_path=arcface_model.path),
    )
    img = np.zeros((480, 640, 3), np.uint8)
    _plant(img, 6 * 32, 3 * 32, 32, channel=2)
    (face,) = analyzer.analyze(img)
    np.testing.assert_allclose(face.bbox, _expected(scrfd_model.spec, 3, 6, 32)[0], atol=1e-3)
    assert face.landmarks is not None and face.landmarks.shape == (68, 3)
    assert face.embedding is not None and face.embedding.encoder_id == "arcface-onnx/arcface_tiny"


def test_landmark_crop_is_bit_identical_to_insightfaces() -> None:
    """The landmark models' box crop equals insightface's ``face_align.transform`` crop pixel
    for pixel: its centre and scale are float32 arithmetic under NumPy 2, and a float64
    matrix moves a few pixels of every crop by one level."""
    import cv2
    from insightface.utils import face_align

    from facegen.backends.insightface_landmarks import crop_matrix

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    for _ in range(40):
        x1, y1 = rng.uniform(50, 200), rng.uniform(50, 150)
        w, h = rng.uniform(20, 90), rng.uniform(20, 90)
        box = np.array([x1, y1, x1 + w, y1 + h], np.float32)
        centre = ((box[2] + box[0]) / 2, (box[3] + box[1]) / 2)
        scale = 192 / (max(box[2] - box[0], box[3] - box[1]) * 1.5)
        ref, _ = face_align.transform(img, centre, 192, scale, 0)
        ours = cv2.warpAffine(img, crop_matrix(box, 192), (192, 192), borderValue=0.0)
        assert np.array_equal(ours, ref)
