"""The whole analyzer on awkward inputs: right result or the right error, never a crash."""

from __future__ import annotations

import numpy as np
import pytest

from facegen import AmbiguousFaceError, InvalidImageError, NoFaceDetectedError


@pytest.mark.parametrize(
    "shape",
    [(1, 1, 3), (1, 500, 3), (3, 3, 3), (40, 40, 3), (2000, 8, 3)],
    ids=["1x1", "1x500", "3x3", "40x40", "tall-thin"],
)
def test_tiny_and_degenerate_images_give_no_faces(dlib_analyzer, shape) -> None:
    img = np.full(shape, 128, np.uint8)
    assert dlib_analyzer.analyze(img) == []
    with pytest.raises(NoFaceDetectedError, match="found 0 face"):
        dlib_analyzer.analyze(img, select="largest")


def test_noise_image_has_no_face(dlib_analyzer) -> None:
    rng = np.random.default_rng(0)
    assert dlib_analyzer.analyze(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)) == []


def test_several_faces_with_require_single(dlib_analyzer, t1_image) -> None:
    with pytest.raises(AmbiguousFaceError, match="got 6"):
        dlib_analyzer.analyze(t1_image, select="largest", require_single=True)
    faces = dlib_analyzer.analyze(t1_image, select="largest", embed=False)
    assert len(faces) == 1 and faces[0].embedding is None
    areas = [f.area for f in dlib_analyzer.detect(t1_image)]
    assert faces[0].area == pytest.approx(max(areas))


def test_grey_and_rgba_inputs_work(dlib_analyzer, t1_image) -> None:
    grey = t1_image.mean(axis=2).astype(np.uint8)
    assert len(dlib_analyzer.analyze(grey, embed=False)) == 6
    rgba = np.concatenate([t1_image, np.full((*t1_image.shape[:2], 1), 255, np.uint8)], axis=2)
    assert len(dlib_analyzer.analyze(rgba, embed=False)) == 6


def test_wrong_array_types_are_invalid_images(dlib_analyzer) -> None:
    with pytest.raises(InvalidImageError, match="uint8"):
        dlib_analyzer.analyze(np.zeros((50, 50, 3), np.float64))
    with pytest.raises(InvalidImageError, match="shape"):
        dlib_analyzer.analyze(np.zeros((50, 50, 2), np.uint8))


def test_reference_selection_picks_the_same_person(dlib_analyzer, t1_image) -> None:
    faces = dlib_analyzer.analyze(t1_image)
    ref = faces[3].embedding
    mirrored = np.ascontiguousarray(t1_image[:, ::-1])
    chosen = dlib_analyzer.analyze(mirrored, select=ref)[0]
    # the chosen face is the mirror image of face 3
    w = t1_image.shape[1]
    assert abs((w - chosen.bbox[2]) - faces[3].bbox[0]) < 15
