"""Face-attribute estimators on tiny random-weight ONNX doubles (``tests/onnx_attribute_models``).

``GenderAgeOnnx`` is checked against insightface's own ``Attribute`` class (its
``face_align.transform`` crop and ``cv2.dnn.blobFromImage`` blob) on insightface's ``t1.jpg``:
the blob facegen feeds must be the one insightface feeds, and the decoded gender/age the ones
it returns. The JSON classifier is checked for its schema, graph checks and preprocessing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from facegen.align import align_face
from facegen.attributes import AttributeEstimate
from facegen.backends import ATTRIBUTE_ESTIMATORS
from facegen.backends.attribute_config import ClassifierConfig
from facegen.backends.attributes_onnx import (
    GenderAgeOnnx,
    OnnxAttributeClassifier,
    box_crop_matrix,
)
from facegen.backends.onnx_utils import open_session
from facegen.errors import (
    InvalidArgumentError,
    InvalidImageError,
    InvalidModelError,
    ModelNotAvailableError,
    UnknownNameError,
)
from facegen.image_io import load_image
from facegen.samples import sample_path
from facegen.types import Face
from tests.onnx_attribute_models import build_classifier, build_genderage, reference

pytest.importorskip("onnx", reason="building tiny ONNX models needs the `onnx` package")


class RecordingSession:
    """An ONNX Runtime session that keeps every input it was fed."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.fed: list[np.ndarray] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
        self.fed.append(np.array(next(iter(feeds.values()))))
        return self.session.run(names, feeds)


def _face(bbox: list[float]) -> Face:
    return Face(bbox=np.array(bbox), score=1.0, kps5=np.zeros((5, 2)))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    d = tmp_path_factory.mktemp("attribute_models")
    out = {}
    for key, kw in {
        "plain": {"dynamic_batch": True},
        "batch1": {},
        "sub_mul": {"normaliser": "sub_mul"},
        "bn_data": {"normaliser": "bn_data", "dynamic_batch": True},
        "width4": {"width": 4},
        "two_outputs": {"two_outputs": True},
    }.items():
        path = d / f"genderage_{key}.onnx"
        out[key] = (path, build_genderage(path, **kw))
    return out


@pytest.fixture(scope="module")
def t1() -> tuple[np.ndarray, np.ndarray, list[Face]]:
    """t1.jpg as RGB (facegen) and BGR (cv2.imread, what insightface reads), and its faces:
    dlib's six detections (integer boxes) plus two hand-made ones (fractional coordinates,
    partly outside the image)."""
    from facegen.backends import DETECTORS

    path = sample_path("t1")
    rgb = load_image(path)
    bgr = cv2.imread(str(path))
    assert np.array_equal(bgr[..., ::-1], rgb)
    faces = list(DETECTORS.create("dlib").detect(rgb))
    assert len(faces) == 6
    faces += [_face([-10.3, -20.7, 140.9, 100.2]), _face([1200.25, 800.5, 1290.75, 900.125])]
    return rgb, bgr, faces


# =========================================================================== genderage


@pytest.mark.parametrize("key", ["plain", "batch1", "sub_mul", "bn_data"])
def test_genderage_feeds_insightfaces_blob_and_decodes_like_it(
    models: dict, t1: tuple, key: str
) -> None:
    from insightface.app.common import Face as InsightfaceFace
    from insightface.model_zoo.attribute import Attribute

    rgb, bgr, faces = t1
    path, _ = models[key]
    theirs = RecordingSession(open_session(path))
    ref = Attribute(model_file=str(path), session=theirs)
    decoded = [ref.get(bgr, InsightfaceFace(bbox=f.bbox.copy())) for f in faces]

    ours = RecordingSession(open_session(path))
    ga = GenderAgeOnnx(ours, model_path=path)
    assert (ga.input_mean, ga.input_std) == (ref.input_mean, ref.input_std)
    assert (ga.input_mean, ga.input_std) == (
        (127.5, 128.0) if key in ("plain", "batch1") else (0, 1)
    )
    estimates = ga.estimate(rgb, faces)
    np.testing.assert_allclose(np.concatenate(ours.fed), np.concatenate(theirs.fed), atol=1e-6)
    # dynamic batch: one run for all faces; batch fixed at 1: one run per face
    assert len(ours.fed) == (1 if key in ("plain", "bn_data") else len(faces))
    assert [(e.values["gender"], e.values["age"]) for e in estimates] == [
        (("female", "male")[int(g)], float(a)) for g, a in decoded
    ]


def test_genderage_decoding_against_numpy(models: dict, t1: tuple) -> None:
    rgb, _, faces = t1
    path, consts = models["plain"]
    ga = GenderAgeOnnx(model_path=path)
    blob = ga.preprocess(rgb, faces)
    assert blob.dtype == np.float32 and blob.shape == (len(faces), 3, 96, 96)
    raw = ga.session.run(None, {"data": blob})[0]
    np.testing.assert_allclose(raw, reference(blob, consts["w"], consts["b"]), atol=1e-4)
    estimates = ga.estimate(rgb, faces)
    for row, est in zip(raw, estimates):
        assert est.values["gender"] == ("female", "male")[int(np.argmax(row[:2]))]
        assert est.values["age"] == float(np.round(row[2] * 100))
        e = np.exp(row[:2] - row[:2].max())
        p = e / e.sum()
        np.testing.assert_allclose(
            [est.probabilities["gender"]["female"], est.probabilities["gender"]["male"]],
            p,
            rtol=1e-6,
        )
        assert est.estimator == "genderage"
    genders = {e.values["gender"] for e in estimates}
    assert genders == {"female", "male"}  # the random weights split these faces


def test_genderage_decode_rules(models: dict) -> None:
    ga = GenderAgeOnnx(model_path=models["plain"][0])
    raw = np.array([[2.0, -1.0, 0.255], [0.0, 3.0, 0.325], [0.1, 0.1, 0.5]], np.float32)
    out = ga.decode(raw)
    assert [e.values for e in out] == [
        {"gender": "female", "age": 26.0},  # float32 · 100 = 25.5: half to even (numpy)
        {"gender": "male", "age": 32.0},  # 32.5 → 32, not 33
        {"gender": "female", "age": 50.0},  # a tie goes to the first (argmax)
    ]
    assert out[2].probabilities["gender"] == {"female": 0.5, "male": 0.5}
    assert out[0].to_dict()["probabilities"]["gender"]["female"] == pytest.approx(0.9526, abs=1e-4)
    with pytest.raises(InvalidModelError, match="NaN or inf"):
        ga.decode(np.array([[np.nan, 0.0, 0.3]], np.float32))
    with pytest.raises(InvalidModelError, match="3 values per face, got 4"):
        ga.decode(np.zeros((1, 4), np.float32))


def test_genderage_graph_normalisation_gives_the_same_answers(models: dict, t1: tuple) -> None:
    rgb, _, faces = t1
    plain = GenderAgeOnnx(model_path=models["plain"][0]).estimate(rgb, faces)
    for key in ("sub_mul", "bn_data"):
        got = GenderAgeOnnx(model_path=models[key][0]).estimate(rgb, faces)
        assert [e.values for e in got] == [e.values for e in plain]


def test_genderage_refuses_bad_graphs_and_inputs(models: dict, t1: tuple) -> None:
    with pytest.raises(InvalidModelError, match=r"output must be \(N, 3\).*got \[1, 4\]"):
        GenderAgeOnnx(model_path=models["width4"][0])
    with pytest.raises(InvalidModelError, match="exactly one output, got 2"):
        GenderAgeOnnx(model_path=models["two_outputs"][0])
    sess = open_session(models["plain"][0])
    with pytest.raises(ValueError, match="`input_mean` and `input_std` must be given"):
        GenderAgeOnnx(sess)
    ga = GenderAgeOnnx(sess, input_mean=127.5, input_std=128.0)
    assert ga.model_files() == {}
    assert ga.estimate(t1[0], []) == []
    with pytest.raises(InvalidImageError, match="must be an RGB uint8"):
        ga.estimate(t1[0].astype(np.float32), t1[2][:1])
    with pytest.raises(InvalidArgumentError, match="positive width or height"):
        ga.estimate(t1[0], [_face([5, 5, 5, 5])])


@pytest.fixture()
def no_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every model location points into an empty temporary folder."""
    monkeypatch.setenv("FACEGEN_HOME", str(tmp_path / "fg"))
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path / "if"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    return tmp_path


@pytest.mark.parametrize("preset", ["buffalo_l", "antelopev2"])
def test_genderage_from_pretrained(no_models: Path, models: dict, preset: str) -> None:
    with pytest.raises(ModelNotAvailableError) as ei:
        GenderAgeOnnx.from_pretrained(preset, offline=True)
    msg = str(ei.value)
    assert f"model '{preset}/genderage.onnx' is not available" in msg and "offline" in msg
    assert str(no_models / "fg" / "models" / preset / "genderage.onnx") in msg
    assert "model_path=" in msg
    # a pack copied where insightface keeps it is found
    path, _ = models["plain"]
    pack = no_models / "if" / "models" / preset
    pack.mkdir(parents=True)
    (pack / "genderage.onnx").write_bytes(path.read_bytes())
    ga = ATTRIBUTE_ESTIMATORS.create("genderage", preset=preset, offline=True)
    assert ga.model_files() == {"genderage": str((pack / "genderage.onnx").absolute())}
    assert [a.name for a in ga.attributes] == ["gender", "age"]
    assert ga.attributes[0].labels == ("female", "male") and ga.attributes[1].unit == "years"


def test_genderage_explicit_path_and_unknown_preset(no_models: Path, models: dict) -> None:
    path, _ = models["batch1"]
    ga = GenderAgeOnnx.from_pretrained(model_path=path, offline=True)
    assert ga.model_files() == {"genderage": str(path.absolute())} and ga.input_size == 96
    with pytest.raises(UnknownNameError, match="valid names: antelopev2, buffalo_l"):
        GenderAgeOnnx.from_pretrained("arc2face-arcface")
    with pytest.raises(ModelNotAvailableError, match="explicit path does not exist"):
        GenderAgeOnnx.from_pretrained(model_path=no_models / "nope.onnx")


# =========================================================================== JSON classifier

RACES = ["White", "Black", "Latino_Hispanic", "East_Asian", "SE_Asian", "Indian", "Middle_Eastern"]


def _fairface_like(model: str = "clf.onnx", **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "model": model,
        "crop": "arcface",
        "input_size": 32,
        "scale": 255,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "attributes": [
            {"name": "race", "labels": RACES, "output": "logits", "slice": [0, 7]},
            {
                "name": "gender",
                "labels": ["male", "female"],
                "output": "logits",
                "slice": [7, 9],
                "activation": "softmax",
            },
            {
                "name": "age",
                "kind": "numeric",
                "output": 1,
                "slice": [0, 1],
                "scale": 100,
                "offset": 1,
                "unit": "years",
            },
            {"name": "smile", "labels": ["no", "yes"], "output": "extra", "activation": "sigmoid"},
        ],
    }
    cfg.update(over)
    return cfg


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("classifier")
    consts = build_classifier(d / "clf.onnx", outputs={"logits": 9, "age": 1, "extra": 1})
    return d, consts


@pytest.fixture(scope="module")
def hanks() -> tuple[np.ndarray, list[Face]]:
    img = load_image(sample_path("hanks"))
    kps = np.array(
        [[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]], np.float32
    )
    faces = [
        Face(bbox=np.array([20, 25, 95, 110]), score=1.0, kps5=kps),
        Face(bbox=np.array([0, 0, 60, 60]), score=1.0, kps5=kps * 0.5 + 3),
    ]
    return img, faces


def test_classifier_config_round_trip(clf_dir: tuple) -> None:
    d, _ = clf_dir
    cfg = ClassifierConfig.from_json(_write(d / "fairface.json", _fairface_like()))
    assert cfg.name == "fairface" and cfg.model_path == d / "clf.onnx"
    assert (cfg.color, cfg.layout, cfg.scale, cfg.input_size) == ("RGB", "NCHW", 255.0, 32)
    assert [a.spec.name for a in cfg.attributes] == ["race", "gender", "age", "smile"]
    assert [a.width for a in cfg.attributes] == [7, 2, 1, 1]
    d2 = cfg.to_dict()
    again = ClassifierConfig.from_dict(json.loads(json.dumps(d2)), base_dir=d)
    assert again == cfg and again.to_dict() == d2
    assert d2["attributes"][2] == {
        "name": "age",
        "kind": "numeric",
        "output": 1,
        "slice": [0, 1],
        "activation": "none",
        "scale": 100.0,
        "offset": 1.0,
        "unit": "years",
    }
    # defaults: one number stands for all three channels
    small = ClassifierConfig.from_dict(
        {"model": "m.onnx", "crop": "box", "mean": 127.5, "std": 128, "attributes": [
            {"name": "g", "labels": ["a", "b"]}]}
    )  # fmt: skip
    assert small.mean == (127.5,) * 3 and small.std == (128.0,) * 3 and small.box_scale == 1.5
    assert small.to_dict()["box_scale"] == 1.5 and "margin" not in small.to_dict()


_A0 = {"name": "g", "labels": ["a", "b"]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "RGB"}, "unknown key `colour`"),
        ({"model": None}, "`model` must be a non-empty string, got None"),
        ({"model": ""}, "`model` must be a non-empty string"),
        ({"crop": "square"}, "`crop` must be one of box, arcface, ffhq"),
        ({"margin": 1.2}, "`margin` applies to crop 'ffhq' only"),
        ({"crop": "ffhq", "margin": 0}, "`margin` must be a finite number > 0, got 0"),
        ({"crop": "arcface", "box_scale": 2}, "`box_scale` applies to crop 'box' only"),
        ({"input_size": 8}, "`input_size` must be an integer in [16, 4096], got 8"),
        ({"input_size": 32.0}, "`input_size` must be an integer"),
        ({"color": "RGBA"}, "`color` must be one of RGB, BGR"),
        ({"layout": "CHW"}, "`layout` must be one of NCHW, NHWC"),
        ({"scale": 0}, "`scale` must be a finite number > 0, got 0"),
        ({"scale": True}, "`scale` must be a finite number > 0"),
        ({"mean": [1, 2]}, "`mean` must be one finite number or a list of three"),
        ({"std": [1, 0, 1]}, "`std` must be one positive finite number or a list of three"),
        ({"attributes": []}, "`attributes` must be a non-empty list"),
        ({"attributes": [_A0, _A0]}, "`attributes` must name each attribute once"),
        ({"attributes": ["g"]}, "`attributes[0]` must be a JSON object, got str"),
        ({"attributes": [{**_A0, "labls": []}]}, "unknown key `attributes[0].labls`"),
        ({"attributes": [{**_A0, "name": "bad name"}]}, "`attributes[0]`: attribute `name`"),
        ({"attributes": [{**_A0, "kind": "ordinal"}]}, "`attributes[0].kind` must be one of"),
        ({"attributes": [{"name": "g"}]}, "`attributes[0].labels` is required"),
        ({"attributes": [{**_A0, "labels": ["a"]}]}, "at least two distinct labels"),
        ({"attributes": [{**_A0, "labels": "ab"}]}, "`attributes[0].labels` must be a list"),
        ({"attributes": [{**_A0, "output": -1}]}, "`attributes[0].output` must be an output name"),
        ({"attributes": [{**_A0, "slice": [3, 1]}]}, "`attributes[0].slice` must be [start, stop]"),
        ({"attributes": [{**_A0, "slice": [0, 3]}]}, "`attributes[0].slice` [0, 3] holds 3"),
        ({"attributes": [{**_A0, "activation": "relu"}]}, "`attributes[0].activation` must be"),
        ({"attributes": [{**_A0, "unit": "y"}]}, "`attributes[0].unit` does not apply to a categ"),
        (
            {"attributes": [{**_A0, "labels": ["a", "b", "c"], "activation": "sigmoid"}]},
            "`labels` must have exactly 2 entries, got 3",
        ),
        (
            {"attributes": [{"name": "age", "kind": "numeric", "labels": ["a", "b"]}]},
            "`attributes[0].labels` does not apply to a numeric attribute",
        ),
        (
            {"attributes": [{"name": "age", "kind": "numeric", "activation": "softmax"}]},
            "`attributes[0].activation` must be one of none, sigmoid",
        ),
    ],
)
def test_classifier_config_refuses_each_bad_key(tmp_path: Path, change: dict, message: str) -> None:
    data: dict[str, Any] = {"model": "m.onnx", "crop": "box", "attributes": [_A0], **change}
    path = _write(tmp_path / "c.json", data)
    with pytest.raises(InvalidArgumentError) as ei:
        ClassifierConfig.from_json(path)
    assert message in str(ei.value) and str(path) in str(ei.value)


def test_classifier_config_refuses_missing_keys_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="`model` is required"):
        ClassifierConfig.from_dict({"crop": "box", "attributes": [_A0]})
    with pytest.raises(InvalidArgumentError, match="`crop` is required"):
        ClassifierConfig.from_dict({"model": "m.onnx", "attributes": [_A0]})
    with pytest.raises(InvalidArgumentError, match="`attributes` is required"):
        ClassifierConfig.from_dict({"model": "m.onnx", "crop": "box"})
    with pytest.raises(InvalidArgumentError, match=r"not valid JSON .* line 1"):
        ClassifierConfig.from_json(_write(tmp_path / "bad.json", "{'model': 1}"))
    with pytest.raises(InvalidArgumentError, match="must be a JSON object, got list"):
        ClassifierConfig.from_json(_write(tmp_path / "list.json", []))
    with pytest.raises(InvalidArgumentError, match=r"must be an existing \.json file"):
        ClassifierConfig.from_json(tmp_path / "missing.json")


def test_classifier_preprocesses_and_decodes(clf_dir: tuple, hanks: tuple) -> None:
    d, consts = clf_dir
    img, faces = hanks
    clf = OnnxAttributeClassifier.from_json(_write(d / "fairface.json", _fairface_like()))
    assert clf.name == "fairface" and clf.output_names == ["logits", "age", "extra"]
    crops = clf.crops(img, faces)
    for crop, f in zip(crops, faces):
        np.testing.assert_array_equal(crop, align_face(img, f, size=32, template="arcface").image)
    blob = clf.preprocess(img, faces)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = ((crops / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    assert blob.dtype == np.float32 and blob.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(blob, expected, atol=1e-5)

    estimates = clf.estimate(img, faces)
    logits = reference(blob, *consts["logits"])
    age = reference(blob, *consts["age"])[:, 0]
    extra = reference(blob, *consts["extra"])[:, 0]
    for i, est in enumerate(estimates):
        assert isinstance(est, AttributeEstimate) and est.estimator == "fairface"
        race_p = np.exp(logits[i, :7] - logits[i, :7].max())
        race_p /= race_p.sum()
        assert est.values["race"] == RACES[int(np.argmax(logits[i, :7]))]
        np.testing.assert_allclose(list(est.probabilities["race"].values()), race_p, atol=1e-5)
        assert est.values["gender"] == ["male", "female"][int(np.argmax(logits[i, 7:9]))]
        assert est.values["age"] == pytest.approx(age[i] * 100 + 1, abs=1e-3)
        p_yes = 1 / (1 + np.exp(-extra[i]))
        assert est.probabilities["smile"]["yes"] == pytest.approx(p_yes, abs=1e-5)
        assert est.values["smile"] == ("yes" if p_yes > 0.5 else "no")
        assert "age" not in est.probabilities
    assert clf.model_files() == {
        "attributes": str((d / "clf.onnx").absolute()),
        "attributes_config": str((d / "fairface.json").absolute()),
    }
    assert clf.estimate(img, []) == []


def test_classifier_nhwc_bgr_sees_the_same_face(tmp_path: Path, hanks: tuple) -> None:
    """An NHWC network taking BGR, with its weights' channel rows reversed, computes exactly
    what the NCHW RGB one does, when both are described correctly."""
    img, faces = hanks
    rgb_consts = build_classifier(tmp_path / "rgb.onnx", outputs={"out": 3}, seed=3)
    bgr_consts = build_classifier(tmp_path / "bgr.onnx", outputs={"out": 3}, layout="NHWC", seed=3)
    np.testing.assert_array_equal(rgb_consts["out"][0], bgr_consts["out"][0])
    # reverse the channel rows of the NHWC model's weights in place
    import onnx

    m = onnx.load(str(tmp_path / "bgr.onnx"))
    for init in m.graph.initializer:
        if init.name == "w_out":
            w = onnx.numpy_helper.to_array(init)[::-1].copy()
            init.CopyFrom(onnx.numpy_helper.from_array(w, "w_out"))
    onnx.save(m, str(tmp_path / "bgr.onnx"))
    attrs = [{"name": "k", "labels": ["a", "b", "c"]}]
    common = {"crop": "box", "box_scale": 1.3, "scale": 255, "attributes": attrs}
    rgb_cfg = {"model": "rgb.onnx", "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.6, 0.7], **common}
    bgr_cfg = {
        "model": "bgr.onnx",
        "color": "BGR",
        "layout": "NHWC",
        "mean": [0.3, 0.2, 0.1],
        "std": [0.7, 0.6, 0.5],
        **common,
    }
    a = OnnxAttributeClassifier.from_json(_write(tmp_path / "rgb.json", rgb_cfg))
    b = OnnxAttributeClassifier.from_json(_write(tmp_path / "bgr.json", bgr_cfg))
    blob_a, blob_b = a.preprocess(img, faces), b.preprocess(img, faces)
    assert blob_b.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(blob_b, blob_a.transpose(0, 2, 3, 1)[..., ::-1], atol=1e-6)
    crop0 = cv2.warpAffine(img, box_crop_matrix(faces[0].bbox, 32, 1.3), (32, 32))
    np.testing.assert_allclose(blob_b[0, ..., 0], (crop0[..., 2] / 255 - 0.3) / 0.7, atol=1e-5)
    pa = [e.probabilities["k"] for e in a.estimate(img, faces)]
    pb = [e.probabilities["k"] for e in b.estimate(img, faces)]
    for x, y in zip(pa, pb):
        assert x == pytest.approx(y, abs=1e-5)


def test_classifier_checks_the_graph_at_load(tmp_path: Path) -> None:
    build_classifier(tmp_path / "m.onnx", outputs={"logits": 5, "age": 1})
    build_classifier(tmp_path / "one.onnx", outputs={"logits": 5}, size=None, dynamic_batch=False)

    def load(**over: Any) -> OnnxAttributeClassifier:
        cfg = {"model": "m.onnx", "crop": "box", "attributes": [], **over}
        return OnnxAttributeClassifier.from_json(_write(tmp_path / "c.json", cfg))

    seven = {"name": "race", "labels": RACES, "output": "logits"}
    with pytest.raises(InvalidModelError, match=r"'race' .*needs 7 value\(s\), got 5"):
        load(attributes=[seven])
    with pytest.raises(InvalidModelError, match=r"5 value\(s\) per face, but .*`slice` \[2, 9\]"):
        load(attributes=[{**seven, "slice": [2, 9]}])
    with pytest.raises(InvalidModelError, match="reads `output` 'race_logits', which the model"):
        load(attributes=[{**seven, "output": "race_logits"}])
    with pytest.raises(InvalidModelError, match="reads `output` 2, but the model has 2"):
        load(attributes=[{**seven, "output": 2}])
    with pytest.raises(InvalidArgumentError, match="must say which `output` it reads"):
        load(attributes=[{"name": "g", "labels": ["a", "b"], "slice": [0, 2]}])
    with pytest.raises(InvalidModelError, match="`input_size` 64 does not match"):
        load(attributes=[{**seven, "slice": [0, 5], "labels": RACES[:5]}], input_size=64)
    with pytest.raises(InvalidModelError, match="is it NCHW"):
        load(attributes=[{**seven, "labels": RACES[:5]}], layout="NHWC")
    # a symbolic input size needs `input_size`; a batch fixed at 1 runs face by face
    five = {"name": "k", "labels": RACES[:5]}
    with pytest.raises(InvalidArgumentError, match="`input_size` must be given"):
        load(model="one.onnx", attributes=[five])
    clf = load(model="one.onnx", attributes=[five], input_size=48)
    img = load_image(sample_path("hanks"))
    faces = [_face([10, 10, 100, 100]), _face([0, 0, 50, 50]), _face([30, 30, 90, 110])]
    assert clf.preprocess(img, faces).shape == (3, 3, 48, 48)
    got = clf.estimate(img, faces)
    one = [clf.estimate(img, [f])[0] for f in faces]
    assert [e.probabilities for e in got] == [e.probabilities for e in one]
    no_probs = load(model="one.onnx", attributes=[{**five, "activation": "none"}], input_size=48)
    est = no_probs.estimate(img, faces[:1])[0]
    assert est.values["k"] in RACES and est.probabilities == {}


def test_classifier_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    cfg = _write(
        tmp_path / "c.json", {"model": "weights/x.onnx", "crop": "box", "attributes": [_A0]}
    )
    with pytest.raises(ModelNotAvailableError) as ei:
        ATTRIBUTE_ESTIMATORS.create("onnx-json", config=str(cfg))
    msg = str(ei.value)
    assert str(tmp_path / "weights" / "x.onnx") in msg and "--attribute-model" in msg
    assert str(cfg) in msg and "model_path=" in msg
    with pytest.raises(InvalidArgumentError, match="`config` must be the path"):
        ATTRIBUTE_ESTIMATORS.create("onnx-json")
    # an explicit model path wins over the JSON's
    build_classifier(tmp_path / "elsewhere.onnx", outputs={"o": 2})
    clf = ATTRIBUTE_ESTIMATORS.create(
        "onnx-json", config=str(cfg), model_path=tmp_path / "elsewhere.onnx", offline=True
    )
    assert clf.model_files()["attributes"] == str((tmp_path / "elsewhere.onnx").absolute())
