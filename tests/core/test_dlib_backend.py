"""dlib backends on real photos: detection, 68-point landmarks, alignment, 128-D identity.

Offline: photos ship with the installed insightface wheel, weights with
``face_recognition_models``; the ORL test reads ``../shared/data/orl_faces`` beside the
checkout and skips when it is absent.
"""

from __future__ import annotations

import sys
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np
import pytest

from facegen.backends import DETECTORS, ENCODERS, LANDMARKERS
from facegen.backends.dlib_backend import (
    DEFAULT_RAW_THRESHOLDS,
    DlibDetector,
    DlibEncoder,
    DlibLandmarker,
    chip_matrix,
    kps5_from_box,
)
from facegen.errors import (
    DeviceNotAvailableError,
    InvalidImageError,
    InvalidModelError,
    MissingDependencyError,
    ModelNotAvailableError,
)
from facegen.hub import get_preset, resolve
from facegen.landmarks import kps5_from_ibug68
from facegen.types import Face

dlib = pytest.importorskip("dlib", reason="dlib-bin is not installed")
insightface = pytest.importorskip(
    "insightface", reason="insightface (test photos) is not installed"
)

IMAGES = Path(insightface.__file__).parent / "data" / "images"
ORL_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "orl_faces"


def _load_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"could not read {path}"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _grow(bbox: np.ndarray, frac: float) -> np.ndarray:
    x1, y1, x2, y2 = bbox
    dx, dy = frac * (x2 - x1), frac * (y2 - y1)
    return np.array([x1 - dx, y1 - dy, x2 + dx, y2 + dy])


def _inside(points: np.ndarray, box: np.ndarray) -> bool:
    p = np.asarray(points)[:, :2]
    return bool(
        np.all(p[:, 0] >= box[0])
        and np.all(p[:, 0] <= box[2])
        and np.all(p[:, 1] >= box[1])
        and np.all(p[:, 1] <= box[3])
    )


def roc_auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Rank-based (Mann–Whitney) ROC AUC with average ranks for ties."""
    scores = np.concatenate([genuine, impostor])
    order = np.argsort(scores, kind="mergesort")
    _, inverse, counts = np.unique(scores[order], return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = np.empty(len(scores))
    ranks[order] = avg_rank[inverse]
    n_g, n_i = len(genuine), len(impostor)
    return float((ranks[:n_g].sum() - n_g * (n_g + 1) / 2.0) / (n_g * n_i))


def equal_error(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """``(threshold, EER)``: the cosine where false accepts (>= t) ≈ false rejects (< t)."""
    g, i = np.sort(genuine), np.sort(impostor)
    thresholds = np.unique(np.concatenate([g, i]))
    far = 1.0 - np.searchsorted(i, thresholds, side="left") / len(i)
    frr = np.searchsorted(g, thresholds, side="left") / len(g)
    k = int(np.argmin(np.abs(far - frr)))
    return float(thresholds[k]), float((far[k] + frr[k]) / 2.0)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def t1() -> np.ndarray:
    return _load_rgb(IMAGES / "t1.jpg")


@pytest.fixture(scope="module")
def hanks() -> np.ndarray:
    return _load_rgb(IMAGES / "Tom_Hanks_54745.png")


@pytest.fixture(scope="module")
def detector() -> DlibDetector:
    return DlibDetector()


@pytest.fixture(scope="module")
def encoder() -> DlibEncoder:
    return DlibEncoder()


@pytest.fixture(scope="module")
def t1_faces(detector: DlibDetector, t1: np.ndarray) -> list[Face]:
    return detector.detect(t1)


@pytest.fixture(scope="module")
def t1_vectors(encoder: DlibEncoder, t1: np.ndarray, t1_faces: list[Face]) -> np.ndarray:
    return encoder.embed_crops([encoder.align(t1, f) for f in t1_faces])


# --------------------------------------------------------------------------- detector


def test_detects_the_six_people_in_t1(t1_faces: list[Face], t1: np.ndarray) -> None:
    assert len(t1_faces) == 6
    scores = [f.score for f in t1_faces]
    assert scores == sorted(scores, reverse=True)
    h, w = t1.shape[:2]
    for f in t1_faces:
        assert f.detector == "dlib-hog"
        raw = f.extras["raw_score"]
        assert raw >= DEFAULT_RAW_THRESHOLDS["hog"] == 0.2
        assert 0.5 < f.score < 1.0
        assert f.score == pytest.approx(1.0 / (1.0 + np.exp(-raw)))
        assert 0 <= f.bbox[0] < f.bbox[2] <= w and 0 <= f.bbox[1] < f.bbox[3] <= h
        assert f.width > 50 and f.height > 50


def test_landmarks_and_kps5_are_plausible(t1_faces: list[Face]) -> None:
    for f in t1_faces:
        assert f.landmark_scheme == "ibug68"
        assert f.landmarks is not None and f.landmarks.shape == (68, 2)
        box = _grow(f.bbox, 0.15)
        assert _inside(f.landmarks, box), f"landmarks leave {box}"
        assert _inside(f.kps5, box)
        np.testing.assert_allclose(f.kps5, kps5_from_ibug68(f.landmarks), atol=1e-5)
        k = f.kps5
        assert k[0, 0] < k[1, 0], "eyes must be image-left, image-right"
        assert k[3, 0] < k[4, 0], "mouth corners must be image-left, image-right"
        assert max(k[0, 1], k[1, 1]) < k[2, 1] < min(k[3, 1], k[4, 1]), "eyes > nose > mouth"


def test_default_threshold_rejects_the_mission_patch(detector: DlibDetector) -> None:
    """At dlib's raw 0 the patch on astronaut's suit is a 'face' (0.12); the default is 0.2."""
    skimage_data = pytest.importorskip("skimage.data")
    astronaut = np.ascontiguousarray(skimage_data.astronaut())
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    assert 60 < faces[0].bbox[1] < faces[0].bbox[3] < 200  # the face, not the chest patch
    loose = DlibDetector(score_threshold=0.0, landmarks5=False).detect(astronaut)
    assert len(loose) == 2 and 0.0 <= loose[1].extras["raw_score"] < 0.2


def test_no_face_in_grey_or_noise(detector: DlibDetector) -> None:
    grey = np.full((240, 320, 3), 128, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    assert detector.detect(grey) == []
    assert detector.detect(noise) == []


def test_max_faces_keeps_the_best(t1: np.ndarray, t1_faces: list[Face]) -> None:
    top2 = DlibDetector(max_faces=2).detect(t1)
    assert len(top2) == 2
    for got, want in zip(top2, t1_faces[:2]):
        np.testing.assert_array_equal(got.bbox, want.bbox)
        assert got.score == want.score


def test_threshold_is_on_the_raw_score(t1: np.ndarray, t1_faces: list[Face]) -> None:
    raws = sorted(f.extras["raw_score"] for f in t1_faces)
    cut = (raws[2] + raws[3]) / 2.0  # keeps the best three
    assert len(DlibDetector(score_threshold=cut).detect(t1)) == 3
    assert len(DlibDetector(score_threshold=-1.0).detect(t1)) >= 6


def test_landmarks5_false_uses_the_box_template(t1: np.ndarray, t1_faces: list[Face]) -> None:
    rough = DlibDetector(landmarks5=False).detect(t1)
    assert len(rough) == len(t1_faces)
    errors = []
    for r, f in zip(rough, t1_faces):
        assert r.landmarks is None and r.landmark_scheme is None
        np.testing.assert_array_equal(r.bbox, f.bbox)
        assert r.kps5[0, 0] < r.kps5[1, 0]
        errors.append(np.linalg.norm(r.kps5 - f.kps5, axis=1) / f.width)
    err = np.array(errors)
    # a box template ignores head pose (t1 has turned and rolled heads), hence the loose bounds
    assert np.median(err) < 0.15 and err.max() < 0.3, f"box template off by {err} box widths"


def test_cnn_detector_clips_its_box(hanks: np.ndarray) -> None:
    faces = DlibDetector(model="cnn", upsample=0).detect(hanks)
    assert len(faces) == 1
    f = faces[0]
    assert f.detector == "dlib-cnn"
    assert f.extras["raw_score"] > 0.5 and 0.5 < f.score < 1.0
    h, w = hanks.shape[:2]
    assert f.bbox[0] == 0.0, "MMOD's box starts left of this tight crop and must be clipped"
    assert f.bbox[1] >= 0 and f.bbox[2] <= w and f.bbox[3] <= h
    assert f.kps5[0, 0] < f.kps5[1, 0]


def test_registry_builds_dlib_backends() -> None:
    assert isinstance(DETECTORS.create("dlib"), DlibDetector)
    assert DETECTORS.create("dlib-cnn").name == "dlib-cnn"
    assert isinstance(LANDMARKERS.create("dlib68"), DlibLandmarker)
    assert isinstance(ENCODERS.create("dlib"), DlibEncoder)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model": "mtcnn"}, "`model` must be one of 'hog', 'cnn', got 'mtcnn'"),
        ({"max_faces": -1}, "`max_faces` must be an integer >= 0, got -1"),
        ({"upsample": 9}, r"`upsample` must be an integer in \[0, 4\], got 9"),
        ({"upsample": True}, r"`upsample` must be an integer in \[0, 4\], got True"),
        ({"score_threshold": float("nan")}, "`score_threshold` must be a finite number, got nan"),
        ({"score_threshold": "high"}, "`score_threshold` must be a number, got 'high'"),
    ],
)
def test_detector_rejects_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DlibDetector(**kwargs)  # type: ignore[arg-type]


def test_device_and_model_path_are_checked(tmp_path: Path) -> None:
    if not dlib.DLIB_USE_CUDA:
        with pytest.raises(DeviceNotAvailableError, match="`device` must be 'cpu'"):
            DlibDetector(device="cuda")
    with pytest.raises(ModelNotAvailableError, match=r"shape_predictor_68_face_landmarks\.dat"):
        DlibDetector(model_path=tmp_path)
    with pytest.raises(ValueError, match="`num_jitters` must be an integer >= 0, got -1"):
        DlibEncoder(num_jitters=-1)


def _dlib_file(role: str) -> Path:
    return resolve("dlib", get_preset("dlib").file_for(role))


def test_model_path_is_a_folder_or_the_one_file(tmp_path: Path, hanks: np.ndarray) -> None:
    roles = ("detector_cnn", "landmark_68", "landmark_5", "recognition")
    folder = tmp_path / "all"
    folder.mkdir()
    for role in roles:
        (folder / _dlib_file(role).name).symlink_to(_dlib_file(role))
    # landmarker and encoder: a folder, or their one file (here alone in its folder: the
    # encoder's 5-point predictor, needed for faces without 68 landmarks, is found as usual)
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "recognition.dat").symlink_to(_dlib_file("recognition"))
    (lone / "lm68.dat").symlink_to(_dlib_file("landmark_68"))
    box_only = DlibDetector(landmarks5=False).detect(hanks)
    want = DlibEncoder().embed(hanks, box_only)[0].vector
    for mp in (folder, lone / "recognition.dat"):
        got = DlibEncoder(model_path=mp).embed(hanks, box_only)[0].vector
        np.testing.assert_allclose(got, want, atol=1e-6)
    for mp in (folder, lone / "lm68.dat"):
        pts = DlibLandmarker(model_path=mp).annotate(hanks, box_only)[0].landmarks
        assert pts is not None and pts.shape == (68, 2)
    # the CNN detector: a folder, or its mmod file (the 68-point predictor is then looked for
    # next to it, else as usual)
    for mp in (folder, _dlib_file("detector_cnn"), folder / _dlib_file("detector_cnn").name):
        faces = DlibDetector(model="cnn", upsample=0, model_path=mp).detect(hanks)
        assert len(faces) == 1 and faces[0].landmark_scheme == "ibug68"
    # each backend says which files it loaded
    det = DlibDetector(model="cnn", upsample=0, model_path=_dlib_file("detector_cnn"))
    assert det.model_files() == {
        "detector_cnn": str(_dlib_file("detector_cnn")),
        "landmark_68": str(_dlib_file("landmark_68")),
    }
    assert DlibDetector(landmarks5=False).model_files() == {}
    assert DlibLandmarker(model_path=lone / "lm68.dat").model_files() == {
        "landmark_68": str(lone / "lm68.dat")
    }
    enc = DlibEncoder(model_path=folder)
    assert enc.model_files() == {"recognition": str(folder / _dlib_file("recognition").name)}
    enc.embed(hanks, box_only)  # needs the 5-point predictor: now it is named too
    assert enc.model_files()["landmark_5"] == str(folder / _dlib_file("landmark_5").name)
    # HOG needs no detector file: a folder only
    with pytest.raises(ValueError, match=r"`model_path` must be a folder .*model='hog'"):
        DlibDetector(model_path=lone / "lm68.dat")
    # a file that is not the model: InvalidModelError naming it, whichever backend
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\x00" * 64)
    for build in (
        lambda: DlibEncoder(model_path=junk),
        lambda: DlibEncoder(model_path=junk, backend="dlib"),
        lambda: DlibLandmarker(model_path=junk),
        lambda: DlibDetector(model="cnn", model_path=junk),
    ):
        with pytest.raises(InvalidModelError, match=r"junk\.dat"):
            build()
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        DlibEncoder(model_path=tmp_path / "missing.dat")


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((0, 0, 3), np.uint8), "must not be empty"),
        (np.zeros((64, 64, 3), np.float32), "must have dtype uint8, got float32"),
        (np.zeros((64, 64), np.uint8), r"must have shape \(H, W, 3\)"),
        ([[0, 1], [2, 3]], "must be an RGB uint8 numpy array"),
    ],
)
def test_bad_images_raise_value_error(detector: DlibDetector, image: object, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        detector.detect(image)  # type: ignore[arg-type]
    assert isinstance(info.value, InvalidImageError)


def test_missing_dlib_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(MissingDependencyError, match="dlib-bin is not installed"):
        DlibDetector()


# --------------------------------------------------------------------------- landmarks


def test_kps5_rule() -> None:
    pts = np.zeros((68, 3), np.float32)
    pts[36:42, :2] = [10.0, 20.0]
    pts[42:48, :2] = [30.0, 21.0]
    pts[36, :2] = [4.0, 20.0]  # the eye centre is the mean of its six points
    pts[30, :2] = [20.0, 30.0]
    pts[48, :2] = [12.0, 40.0]
    pts[54, :2] = [28.0, 41.0]
    want = [[9.0, 20.0], [30.0, 21.0], [20.0, 30.0], [12.0, 40.0], [28.0, 41.0]]
    out = kps5_from_ibug68(pts)
    assert out.dtype == np.float32 and out.shape == (5, 2)
    np.testing.assert_allclose(out, want)
    np.testing.assert_allclose(kps5_from_ibug68(pts[:, :2]), want)
    with pytest.raises(ValueError, match=r"`points` must have shape \(68, 2\) or \(68, 3\)"):
        kps5_from_ibug68(np.zeros((5, 2)))
    box = kps5_from_box(np.array([0, 0, 100, 100]))
    assert box.shape == (5, 2) and box[0, 0] < box[1, 0] < 100


def test_landmarker_matches_detector(t1: np.ndarray, t1_faces: list[Face]) -> None:
    bare = [
        f.replace(landmarks=None, landmark_scheme=None, kps5=np.zeros((5, 2))) for f in t1_faces
    ]
    out = DlibLandmarker().annotate(t1, bare)
    assert len(out) == len(t1_faces)
    for got, want in zip(out, t1_faces):
        assert got.landmark_scheme == "ibug68"
        np.testing.assert_array_equal(got.landmarks, want.landmarks)
        np.testing.assert_array_equal(got.kps5, want.kps5)
        np.testing.assert_array_equal(got.bbox, want.bbox)


# --------------------------------------------------------------------------- encoder


def _five_point_chip(image: np.ndarray, face: Face) -> np.ndarray:
    sp5 = dlib.shape_predictor(str(resolve("dlib", "shape_predictor_5_face_landmarks.dat")))
    x1, y1, x2, y2 = (round(float(v)) for v in face.bbox)
    return dlib.get_face_chip(image, sp5(image, dlib.rectangle(x1, y1, x2 - 1, y2 - 1)), 150, 0.25)


@pytest.mark.parametrize("angle", [0.0, 0.3, -0.7])
def test_chip_matrix_is_dlibs_sampling_grid(angle: float) -> None:
    """Sampling images of x and y through dlib's chip extractor reveals its exact mapping."""
    details = dlib.chip_details(
        dlib.drectangle(10.5, 20.25, 130.75, 141.0), dlib.chip_dims(150, 150), angle
    )
    h, w = 200, 220
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    got_x = dlib.extract_image_chip(np.ascontiguousarray(xs), details)
    got_y = dlib.extract_image_chip(np.ascontiguousarray(ys), details)
    inv = cv2.invertAffineTransform(chip_matrix(details))
    u, v = np.meshgrid(np.arange(150.0), np.arange(150.0))
    px = inv[0, 0] * u + inv[0, 1] * v + inv[0, 2]
    py = inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]
    inside = (px > 1) & (px < w - 2) & (py > 1) & (py < h - 2)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(got_x[inside], px[inside], atol=1e-6)
    np.testing.assert_allclose(got_y[inside], py[inside], atol=1e-6)


def test_alignment_matrix_reproduces_dlib_chip(
    encoder: DlibEncoder,
    detector: DlibDetector,
    t1: np.ndarray,
    t1_faces: list[Face],
    hanks: np.ndarray,
) -> None:
    cases = [(t1, f) for f in t1_faces] + [(hanks, detector.detect(hanks)[0])]
    # a face without ibug68 landmarks goes through dlib's 5-point predictor
    cases.append((t1, t1_faces[0].replace(landmarks=None, landmark_scheme=None)))
    for k, (img, face) in enumerate(cases):
        al = encoder.align(img, face)
        assert al.template == "dlib" and al.size == 150 and al.image.shape == (150, 150, 3)
        assert al.source_shape == img.shape[:2]
        if face.landmarks is not None:
            x1, y1, x2, y2 = (int(v) for v in face.bbox)
            shape = dlib.full_object_detection(
                dlib.rectangle(x1, y1, x2 - 1, y2 - 1),
                [dlib.point(int(x), int(y)) for x, y in face.landmarks],
            )
            want = dlib.get_face_chip(img, shape, 150, 0.25)
        else:
            want = _five_point_chip(img, face)
        np.testing.assert_array_equal(al.image, want)
        warped = cv2.warpAffine(img, al.matrix, (150, 150), flags=cv2.INTER_LINEAR)
        mad = np.abs(warped.astype(np.float64) - al.image).mean()
        assert mad < 2.0, f"case {k}: warpAffine differs from dlib's chip by {mad:.2f}"
        back = al.to_source(al.to_crop(face.kps5))
        np.testing.assert_allclose(back, face.kps5, atol=1e-3)
        eyes = al.to_crop(face.kps5[:2])
        assert abs(eyes[0, 1] - eyes[1, 1]) < 8.0, "the chip must be rotated upright"


def test_six_people_are_below_the_threshold(t1_vectors: np.ndarray) -> None:
    assert t1_vectors.shape == (6, 128) and t1_vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(t1_vectors, axis=1), 1.0, atol=1e-5)
    sims = t1_vectors @ t1_vectors.T
    for i, j in combinations(range(6), 2):
        assert sims[i, j] < DlibEncoder.same_person_threshold, f"faces {i} and {j}: {sims[i, j]}"


def test_mirrored_photo_is_the_same_person(
    detector: DlibDetector, encoder: DlibEncoder, hanks: np.ndarray
) -> None:
    faces = detector.detect(hanks)
    assert len(faces) == 1
    mirrored = np.ascontiguousarray(hanks[:, ::-1])
    faces_m = detector.detect(mirrored)
    assert len(faces_m) == 1
    a = encoder.embed(hanks, faces)[0]
    b = encoder.embed(mirrored, faces_m)[0]
    assert a.encoder_id == "dlib-resnet-v1" and a.dim == 128 and a.normalized
    assert a.similarity(b) > DlibEncoder.same_person_threshold


def test_batch_equals_one_by_one(
    t1: np.ndarray, t1_faces: list[Face], t1_vectors: np.ndarray
) -> None:
    enc = DlibEncoder(batch_size=4)
    crops = [enc.align(t1, f) for f in t1_faces]
    singles = np.concatenate([enc.embed_crops([c]) for c in crops])
    np.testing.assert_allclose(enc.embed_crops(crops), singles, atol=1e-5)
    np.testing.assert_allclose(t1_vectors, singles, atol=1e-5)
    raw = enc._forward(np.stack([c.image for c in crops]))
    assert raw.shape == (6, 128) and raw.dtype == np.float32
    assert enc._forward(np.zeros((0, 150, 150, 3), np.uint8)).shape == (0, 128)
    with pytest.raises(ValueError, match=r"must be uint8 \(N, 150, 150, 3\)"):
        enc._forward(np.zeros((1, 112, 112, 3), np.uint8))


def test_flip_averaging_stays_close(
    t1: np.ndarray, t1_faces: list[Face], t1_vectors: np.ndarray
) -> None:
    flipped = DlibEncoder(flip=True).embed(t1, t1_faces[:2])
    # exactly the normalised sum of the chip's and the mirrored chip's raw descriptors
    enc = DlibEncoder()
    chips = np.stack([enc.align(t1, f).image for f in t1_faces[:2]])
    raw = enc._forward(chips) + enc._forward(np.ascontiguousarray(chips[:, :, ::-1]))
    want = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(np.stack([e.vector for e in flipped]), want, atol=1e-5)
    for emb, plain in zip(flipped, t1_vectors[:2]):
        assert emb.normalized
        assert float(emb.vector @ plain) > 0.97
        # ... and it did change the vector (by ~0.015 here; float noise is ~4e-7)
        assert float(np.abs(emb.vector - plain).max()) > 1e-3


def test_jitter_averaging_stays_close(
    t1: np.ndarray, t1_faces: list[Face], t1_vectors: np.ndarray
) -> None:
    jittered = DlibEncoder(num_jitters=3).embed(t1, t1_faces[:1])[0]
    assert float(jittered.vector @ t1_vectors[0]) > 0.97
    assert float(np.abs(jittered.vector - t1_vectors[0]).max()) > 1e-3  # jitter took effect
    unjittered = DlibEncoder(num_jitters=1).embed(t1, t1_faces[:1])[0]
    np.testing.assert_allclose(unjittered.vector, t1_vectors[0], atol=1e-5)


# --------------------------------------------------------------------------- ORL


def _orl_images() -> tuple[list[np.ndarray], np.ndarray]:
    people = sorted((p for p in ORL_DIR.iterdir() if p.is_dir()), key=lambda p: int(p.name[1:]))
    images, labels = [], []
    for label, person in enumerate(people):
        for k in range(1, 11):
            grey = cv2.imread(str(person / f"{k}.pgm"), cv2.IMREAD_GRAYSCALE)
            assert grey is not None, f"could not read {person / f'{k}.pgm'}"
            images.append(np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2)))
            labels.append(label)
    return images, np.array(labels)


def orl_similarities(
    encoder: DlibEncoder, t1_vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Embed all 390 ORL photos; ``(genuine, impostor, misses)``: cosine scores of all pairs.

    Alignment: HOG at ``upsample=0`` and dlib's raw threshold 0 (ORL faces are ~80 px, the size
    HOG looks for at 0; upsampling finds fewer). The photo's best face is used; the few photos where HOG finds
    none use the median box of the detected ones with dlib's 68-point landmarks. The 15
    cross-person pairs of t1.jpg join the impostors.
    """
    images, labels = _orl_images()
    found = DlibDetector(upsample=0, max_faces=1, score_threshold=0.0)
    faces: list[Face | None] = [(found.detect(im) or [None])[0] for im in images]
    boxes = np.array([f.bbox for f in faces if f is not None])
    median_box = np.round(np.median(boxes, axis=0))
    landmarker = DlibLandmarker()
    misses = [i for i, f in enumerate(faces) if f is None]
    for i in misses:
        guess = Face(bbox=median_box, score=0.0, kps5=kps5_from_box(median_box))
        faces[i] = landmarker.annotate(images[i], [guess])[0]
    crops = [encoder.align(im, f) for im, f in zip(images, faces) if f is not None]
    vecs = encoder.embed_crops(crops)
    sims = vecs @ vecs.T
    iu = np.triu_indices(len(vecs), 1)
    same = (labels[:, None] == labels[None, :])[iu]
    t1_sims = (t1_vectors @ t1_vectors.T)[np.triu_indices(len(t1_vectors), 1)]
    return sims[iu][same], np.concatenate([sims[iu][~same], t1_sims]), misses


@pytest.mark.skipif(not ORL_DIR.is_dir(), reason=f"ORL faces not found at {ORL_DIR}")
def test_orl_verification(encoder: DlibEncoder, t1_vectors: np.ndarray) -> None:
    genuine, impostor, misses = orl_similarities(encoder, t1_vectors)
    assert len(genuine) == 39 * 45
    assert len(misses) <= 20
    auc = roc_auc(genuine, impostor)
    assert auc >= 0.99, f"ORL ROC AUC {auc:.5f}"
    threshold, eer = equal_error(genuine, impostor)
    assert eer < 0.02, f"ORL EER {eer:.4f}"
    assert abs(threshold - DlibEncoder.same_person_threshold) < 0.015, (
        f"the EER threshold {threshold:.4f} no longer matches the documented "
        f"same_person_threshold {DlibEncoder.same_person_threshold}"
    )
