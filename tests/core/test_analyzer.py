"""FaceAnalyzer plumbing with injected fake components (no models)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from facegen import (
    AmbiguousFaceError,
    Face,
    FacegenError,
    IdentityEmbedding,
    IncompatibleEmbeddingError,
    NoFaceDetectedError,
)
from facegen.align import align_face, arcface_template
from facegen.analyzer import FaceAnalyzer, select_faces
from facegen.base import FaceDetector, IdentityEncoder
from facegen.errors import FaceIndexError
from facegen.image_io import save_image
from facegen.types import AlignedFace


def _face(x: float, size: float, score: float) -> Face:
    kps = (arcface_template(112) / 112.0) * size + [x, 10]
    return Face(bbox=[x, 10, x + size, 10 + size], score=score, kps5=kps)


class FakeDetector(FaceDetector):
    name = "fake"

    def __init__(self, faces: list[Face]) -> None:
        self.faces = faces
        self.calls = 0

    def detect(self, image: np.ndarray) -> list[Face]:
        self.calls += 1
        return list(self.faces)


class MeanColourEncoder(IdentityEncoder):
    """Embeds a crop as its mean colour plus a bias: a stand-in with a checkable output."""

    encoder_id = "fake-colour"
    dim = 4
    input_size = 32

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.batches: list[int] = []

    def align(self, image: np.ndarray, face: Face) -> AlignedFace:
        return align_face(image, face, size=self.input_size)

    def _forward(self, crops: np.ndarray) -> np.ndarray:
        self.batches.append(len(crops))
        m = crops.reshape(len(crops), -1, 3).mean(1) / 255.0
        return np.concatenate([m, np.ones((len(crops), 1))], axis=1)


def _image(colour: tuple[int, int, int]) -> np.ndarray:
    img = np.zeros((120, 240, 3), np.uint8)
    img[:] = colour
    return img


def test_selection_policies() -> None:
    faces = [_face(0, 50, 0.9), _face(100, 80, 0.6), _face(190, 30, 0.95)]
    assert select_faces(faces, "all") == faces
    assert select_faces(faces, "largest")[0] is faces[1]
    assert select_faces(faces, "best")[0] is faces[2]
    assert select_faces(faces, -1)[0] is faces[2]
    with pytest.raises(FaceIndexError, match=r"^x\.jpg: face index must be in \[-3, 2\]") as ei:
        select_faces(faces, 3, source="x.jpg")
    assert isinstance(ei.value, FacegenError) and isinstance(ei.value, IndexError)
    assert ei.value.source == "x.jpg" and ei.value.index == 3 and ei.value.num_faces == 3
    with pytest.raises(FaceIndexError, match=r"got -4 \(3 face\(s\) found\)"):
        select_faces(faces, -4)
    with pytest.raises(AmbiguousFaceError, match="exactly one face is required, got 3"):
        select_faces(faces, "largest", require_single=True)
    with pytest.raises(NoFaceDetectedError, match=r"threshold 0.5 \(found 0 face"):
        select_faces([], "largest", threshold=0.5, source="x.jpg")
    assert select_faces([], "all") == []
    with pytest.raises(ValueError, match="`select` must be one of"):
        select_faces(faces, "smallest")


def test_embedding_is_batched_across_images() -> None:
    det = FakeDetector([_face(10, 60, 0.9), _face(120, 60, 0.8)])
    enc = MeanColourEncoder(batch_size=64)
    an = FaceAnalyzer(det, None, enc)
    res = an.analyze_many([_image((255, 0, 0)), _image((0, 0, 255)), _image((0, 255, 0))])
    assert [len(r) for r in res] == [2, 2, 2]
    assert enc.batches == [6]  # one forward pass for all six faces
    red = res[0][0].embedding
    assert red is not None and red.encoder_id == "fake-colour"
    np.testing.assert_allclose(red.vector, np.array([1, 0, 0, 1]) / np.sqrt(2), atol=1e-6)
    # batch size smaller than the face count → several passes, same result
    enc2 = MeanColourEncoder(batch_size=4)
    res2 = FaceAnalyzer(det, None, enc2).analyze_many([_image((255, 0, 0))] * 3)
    assert enc2.batches == [4, 2]
    np.testing.assert_allclose(res2[2][1].embedding.vector, red.vector, atol=1e-6)


def test_select_closest_to_reference() -> None:
    det = FakeDetector([_face(10, 60, 0.9), _face(150, 60, 0.8)])
    img = _image((0, 0, 0))
    img[:, 120:] = (0, 200, 0)  # the second face sits on green
    an = FaceAnalyzer(det, None, MeanColourEncoder())
    ref = IdentityEmbedding(np.array([0, 1, 0, 1.0]) / np.sqrt(2), "fake-colour")
    chosen = an.analyze(img, select=ref)
    assert len(chosen) == 1 and chosen[0].bbox[0] == 150
    wrong = IdentityEmbedding(np.array([1.0, 0, 0, 0]), "other-encoder")
    with pytest.raises(IncompatibleEmbeddingError, match="same encoder"):
        an.analyze(img, select=wrong)


def test_no_face_and_embed_errors(tmp_path: Path) -> None:
    an = FaceAnalyzer(FakeDetector([]), None, MeanColourEncoder())
    assert an.analyze(_image((1, 2, 3))) == []
    with pytest.raises(NoFaceDetectedError, match="detector 'fake'"):
        an.embed(_image((1, 2, 3)))
    # errors name the image: an explicit source, or the path the image was read from
    with pytest.raises(NoFaceDetectedError, match=r"^a\.jpg: no face detected"):
        an.embed(_image((1, 2, 3)), source="a.jpg")
    path = save_image(_image((1, 2, 3)), tmp_path / "b.png")
    with pytest.raises(NoFaceDetectedError, match=rf"^{re.escape(str(path))}: no face"):
        an.embed(path)
    # select="all" on an image without a face: no face, not "exactly one … got 0"
    with pytest.raises(NoFaceDetectedError, match="no face detected"):
        an.embed(_image((1, 2, 3)), select="all")
    two = FaceAnalyzer(FakeDetector([_face(10, 60, 0.9), _face(120, 60, 0.8)]), None, an.encoder)
    with pytest.raises(AmbiguousFaceError, match=r"^c\.jpg: exactly one face .* got 2"):
        two.embed(_image((1, 2, 3)), select="all", source="c.jpg")
    assert two.embed(_image((1, 2, 3))).encoder_id == "fake-colour"  # largest of two
    with pytest.raises(ValueError, match="no encoder"):
        FaceAnalyzer(FakeDetector([])).embed(_image((1, 2, 3)))


def test_analyze_many_checks_sources(tmp_path: Path) -> None:
    an = FaceAnalyzer(FakeDetector([]), None, None)
    imgs = [_image((1, 2, 3))] * 3
    with pytest.raises(ValueError, match="`sources` must have 3 entries, got 2"):
        an.analyze_many(imgs, sources=["a", "b"])
    with pytest.raises(ValueError, match="`sources` must have 3 entries, got 4"):
        an.analyze_many(imgs, sources=["a", "b", "c", "d"])
    assert an.analyze_many(imgs, sources=["a", "b", "c"]) == [[], [], []]
    # without sources, errors name the file an image was read from
    path = save_image(_image((1, 2, 3)), tmp_path / "p.png")
    with pytest.raises(NoFaceDetectedError, match=rf"^{re.escape(str(path))}: no face"):
        an.analyze_many([path, imgs[0]], select="largest", sources=None)


def test_encoder_base_checks_crops_and_flip() -> None:
    enc = MeanColourEncoder(flip=True)
    crop = np.zeros((32, 32, 3), np.uint8)
    crop[:, :16] = 255  # left half white: flipping changes nothing in the mean
    out = enc.embed_crops([crop])
    assert out.shape == (1, 4) and enc.batches == [1, 1]
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match=r"uint8 \(32, 32, 3\)"):
        enc.embed_crops([np.zeros((31, 32, 3), np.uint8)])
    with pytest.raises(ValueError, match="batch_size"):
        MeanColourEncoder(batch_size=0)


@pytest.mark.parametrize("workers", [1, 3])
def test_largest_faces_equals_analyze_per_image(
    dlib_analyzer, t1_image: np.ndarray, hanks_path: Path, workers: int
) -> None:
    """The dataset verifier's batched path: the largest face of each image (None without
    one), embedded in one batch, equal to ``analyze(select="largest")`` image by image."""
    from facegen.image_io import load_image

    hanks = load_image(hanks_path)
    blank = np.full((200, 200, 3), 127, np.uint8)
    images = [t1_image, blank, hanks, t1_image[:, ::-1].copy()]
    found = dlib_analyzer.largest_faces(images, workers=workers)
    assert found[1] is None and all(f is not None for i, f in enumerate(found) if i != 1)
    for img, face in zip(images, found):
        if face is None:
            continue
        one = dlib_analyzer.analyze(img, select="largest")[0]
        np.testing.assert_array_equal(face.bbox, one.bbox)
        np.testing.assert_allclose(face.embedding.vector, one.embedding.vector, atol=1e-5)
    with pytest.raises(ValueError, match="workers"):
        dlib_analyzer.largest_faces(images, workers=0)


def test_largest_faces_calls_an_undeclared_detector_from_one_thread_at_a_time() -> None:
    import threading
    import time

    class Counting(FaceDetector):
        name = "counting"

        def __init__(self) -> None:
            self.active = self.most = 0
            self.lock = threading.Lock()

        def detect(self, image: np.ndarray) -> list[Face]:
            with self.lock:
                self.active += 1
                self.most = max(self.most, self.active)
            time.sleep(0.02)
            with self.lock:
                self.active -= 1
            return [_face(10, 20, 0.9)]

    det = Counting()
    found = FaceAnalyzer(det, None, None).largest_faces([_image((1, 2, 3))] * 6, workers=4)
    assert len(found) == 6 and det.most == 1
    det.thread_safe = True
    FaceAnalyzer(det, None, None).largest_faces([_image((1, 2, 3))] * 6, workers=4)
    assert det.most > 1
