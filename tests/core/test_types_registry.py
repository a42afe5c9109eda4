from __future__ import annotations

import numpy as np
import pytest

from facegen import Face, IdentityEmbedding, IncompatibleEmbeddingError, UnknownNameError
from facegen.registry import Registry
from facegen.types import AlignedFace


def _kps() -> np.ndarray:
    return np.array([[30, 40], [60, 40], [45, 55], [35, 70], [55, 70]], np.float32)


def test_face_is_frozen_and_validated() -> None:
    f = Face(bbox=[10, 20, 90, 110], score=0.9, kps5=_kps())
    assert f.bbox.dtype == np.float32 and f.kps5.shape == (5, 2)
    with pytest.raises(ValueError):
        f.bbox[0] = 3  # read-only array
    with pytest.raises(AttributeError):
        f.score = 0.1  # type: ignore[misc]
    with pytest.raises(ValueError, match="kps5"):
        Face(bbox=[0, 0, 1, 1], score=1, kps5=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="finite"):
        Face(bbox=[0, 0, np.nan, 1], score=1, kps5=_kps())
    with pytest.raises(ValueError, match="x2 >= x1"):
        Face(bbox=[10, 0, 5, 1], score=1, kps5=_kps())
    with pytest.raises(ValueError, match="landmark_scheme"):
        Face(bbox=[0, 0, 1, 1], score=1, kps5=_kps(), landmarks=np.zeros((68, 2)))
    g = f.replace(score=0.5)
    assert g.score == 0.5 and f.score == 0.9
    d = f.to_dict()
    assert d["bbox"] == [10.0, 20.0, 90.0, 110.0] and len(d["kps5"]) == 5


@pytest.mark.parametrize("score", [float("nan"), float("inf"), -float("inf")])
def test_face_score_must_be_finite(score: float) -> None:
    with pytest.raises(ValueError, match="`score` must be finite"):
        Face(bbox=[10, 20, 90, 110], score=score, kps5=_kps())


def test_face_to_dict_rounds_float32_values() -> None:
    kps = _kps() + np.float32(0.123456)
    lm = np.full((68, 2), 12.345678, np.float32)
    f = Face(
        bbox=[10.126, 20, 90, 110], score=0.912345, kps5=kps, landmarks=lm, landmark_scheme="ibug68"
    )
    d = f.to_dict()
    assert d["kps5"][0] == [30.12, 40.12] and d["landmarks"][0] == [12.35, 12.35]
    assert d["bbox"][0] == 10.13 and d["score"] == 0.9123
    assert all(isinstance(v, float) for v in d["kps5"][0])


def test_embedding_checks() -> None:
    v = np.arange(1, 5, dtype=np.float32)
    raw = IdentityEmbedding(v, "enc-a", normalized=False)
    n = raw.normalize()
    assert n.normalized and abs(np.linalg.norm(n.vector) - 1) < 1e-6
    with pytest.raises(IncompatibleEmbeddingError, match="norm"):
        IdentityEmbedding(v, "enc-a", normalized=True)
    with pytest.raises(IncompatibleEmbeddingError, match="finite"):
        IdentityEmbedding(np.array([np.nan, 1.0]), "enc-a", normalized=False)
    with pytest.raises(IncompatibleEmbeddingError, match="1-D"):
        IdentityEmbedding(np.zeros((2, 2)), "enc-a", normalized=False)
    other = IdentityEmbedding(n.vector, "enc-b")
    with pytest.raises(IncompatibleEmbeddingError, match="same encoder"):
        n.similarity(other)
    assert n.similarity(n) == pytest.approx(1.0)


def test_aligned_face_point_mapping() -> None:
    m = np.array([[2.0, 0, 5], [0, 2.0, -3]])
    inv = np.array([[0.5, 0, -2.5], [0, 0.5, 1.5]])
    a = AlignedFace(np.zeros((8, 8, 3), np.uint8), m, inv, "arcface", 8)
    pts = np.array([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(a.to_source(a.to_crop(pts)), pts, atol=1e-5)


def test_registry_lists_valid_names() -> None:
    r: Registry[int] = Registry("widget")
    r.register("one", lambda: 1)

    @r.register("two")
    def _two() -> int:
        return 2

    assert r.create("two") == 2 and r.names() == ["one", "two"]
    with pytest.raises(UnknownNameError, match="valid names: one, two") as ei:
        r.create("three")
    assert isinstance(ei.value, KeyError)
    with pytest.raises(ValueError, match="already registered"):
        r.register("one", lambda: 3)


def test_backend_registries_know_the_real_backends() -> None:
    from facegen.backends import DETECTORS, ENCODERS, LANDMARKERS

    assert {"dlib", "insightface"} <= set(DETECTORS.names())
    assert {"dlib", "arcface-onnx"} <= set(ENCODERS.names())
    assert {"dlib68", "insightface-68", "insightface-106"} <= set(LANDMARKERS.names())
    with pytest.raises(UnknownNameError, match="insightface"):
        DETECTORS.create("retinaface")
