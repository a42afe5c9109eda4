"""Classical face anonymization on real photos, the generate hook, and the folder driver."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from facegen.backends.dlib_backend import DlibEncoder
from facegen.errors import (
    FacegenError,
    FaceIndexError,
    InvalidImageError,
    NoFaceDetectedError,
    OutputError,
)
from facegen.image_io import load_image, read_metadata, save_image
from facegen.masks import MaskSpec, face_mask, face_region
from facegen.pipelines.editing.anonymize import (
    CLASSICAL_MODES,
    AnonymizeOptions,
    AnonymizeResult,
    GeneratedFace,
    anonymize_image,
)
from facegen.pipelines.editing.anonymize import AnonymizeOptions as Opts
from facegen.pipelines.editing.anonymize_folder import REPORT_NAME, anonymize_folder, read_report
from facegen.samples import sample_path
from facegen.types import Face

SAME_PERSON = DlibEncoder.same_person_threshold
GENERATE = Opts(mode="generate")


class StubAnalyzer:
    """Returns fixed faces (detections made once by the real analyzer), for quick tests."""

    class detector:  # mirrors FaceAnalyzer.detector
        name = "stub"
        score_threshold = 0.0

    def __init__(self, faces: list[Face]) -> None:
        self.faces = faces

    def detect(self, image: np.ndarray) -> list[Face]:
        return list(self.faces)


@pytest.fixture(scope="module")
def t1(t1_path: Path) -> np.ndarray:
    image = load_image(sample_path("t1"))
    assert np.array_equal(image, load_image(t1_path))
    return image


@pytest.fixture(scope="module")
def t1_faces(dlib_analyzer: Any, t1: np.ndarray) -> list[Face]:
    """The six faces of t1.jpg, with 68 landmarks and dlib embeddings."""
    faces = dlib_analyzer.analyze(t1)
    assert len(faces) == 6
    return faces


@pytest.fixture(scope="module")
def results(dlib_analyzer: Any, t1: np.ndarray) -> dict[str, AnonymizeResult]:
    return {mode: anonymize_image(t1, dlib_analyzer, Opts(mode=mode)) for mode in CLASSICAL_MODES}


def core_region(face: Face, shape: tuple[int, ...]) -> np.ndarray:
    """The face itself (landmark hull, no forehead or margin), as a bool mask."""
    return face_mask(face, shape[:2], MaskSpec(forehead=0.0)) > 0


def in_image(points: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    ij = np.round(points).astype(int)
    ok = (ij[:, 0] >= 0) & (ij[:, 1] >= 0) & (ij[:, 0] < shape[1]) & (ij[:, 1] < shape[0])
    return ij[ok]


def embed_at(analyzer: Any, image: np.ndarray, faces: list[Face]) -> list[Any]:
    """dlib embeddings of ``image`` at the given faces' places (no new detection)."""
    enc = analyzer.encoder
    return enc.wrap(enc.embed_crops([enc.align(image, f) for f in faces]))


# ----------------------------------------------------------------------------- t1.jpg


@pytest.mark.parametrize("mode", CLASSICAL_MODES)
def test_t1_all_six_faces_are_replaced_and_nothing_else(
    mode: str, results: dict[str, AnonymizeResult], t1: np.ndarray, t1_faces: list[Face]
) -> None:
    res = results[mode]
    assert res.num_detected == 6
    assert [r.index for r in res.faces] == list(range(6))
    assert all(r.mode == mode and r.requested_mode == mode and not r.fallback for r in res.faces)
    assert all(r.region == "ibug68" and r.mask_pixels > 5000 for r in res.faces)
    out = res.image
    assert out.dtype == np.uint8 and out.shape == t1.shape
    # outside the union of the masks: byte-identical
    outside = res.mask == 0
    assert np.array_equal(out[outside], t1[outside])
    assert 0.05 < (~outside).mean() < 0.25
    for face in t1_faces:
        # every landmark is fully covered, and the face region changed substantially
        pts = in_image(face.landmarks, t1.shape)
        assert np.all(res.mask[pts[:, 1], pts[:, 0]] == 1.0)
        region = core_region(face, t1.shape)
        diff = np.abs(out[region].astype(int) - t1[region].astype(int)).mean()
        assert diff > 10, f"{mode}: face at {face.bbox} changed by only {diff:.1f} on average"


@pytest.mark.parametrize("mode", CLASSICAL_MODES)
def test_t1_identities_no_longer_match(
    mode: str, results: dict[str, AnonymizeResult], dlib_analyzer: Any, t1_faces: list[Face]
) -> None:
    out = results[mode].image
    # a fresh detection + encoding of the output matches none of the originals
    for new in dlib_analyzer.analyze(out):
        sims = [new.embedding.similarity(f.embedding) for f in t1_faces]
        assert max(sims) < SAME_PERSON, f"{mode}: a face at {new.bbox} still matches ({sims})"
    # and embedding the output at the original places does not match either
    for face, emb in zip(t1_faces, embed_at(dlib_analyzer, out, t1_faces)):
        sim = face.embedding.similarity(emb)
        assert sim < SAME_PERSON, f"{mode}: face at {face.bbox} still matches ({sim:.3f})"


def test_a_too_weak_blur_would_fail_the_identity_check(
    dlib_analyzer: Any, t1: np.ndarray, t1_faces: list[Face]
) -> None:
    weak = anonymize_image(t1, StubAnalyzer(t1_faces), Opts(blur_sigma=0.01)).image  # type: ignore[arg-type]
    sims = [
        f.embedding.similarity(e) for f, e in zip(t1_faces, embed_at(dlib_analyzer, weak, t1_faces))
    ]
    assert min(sims) > SAME_PERSON


def shifted(face: Face, offset: tuple[float, float], zoom: float = 1.0) -> Face:
    """``face`` moved by ``offset`` and then scaled by ``zoom`` about the origin."""
    off = np.asarray(offset, np.float32)
    return Face(
        (np.asarray(face.bbox) + np.tile(off, 2)) * zoom,
        face.score,
        (face.kps5 + off) * zoom,
        landmarks=(face.landmarks + off) * zoom,
        landmark_scheme=face.landmark_scheme,
    )


def test_effects_scale_with_face_size(
    results: dict[str, AnonymizeResult], t1: np.ndarray, t1_faces: list[Face]
) -> None:
    scales = np.array([face_region(f).scale for f in t1_faces])
    sigma = np.array([r.params["sigma_px"] for r in results["blur"].faces])
    block = np.array([r.params["block_px"] for r in results["pixelate"].faces])
    assert np.allclose(sigma, 0.25 * scales, atol=0.01)
    assert np.array_equal(block, np.round(scales / 8).astype(int))
    assert results["mask"].faces[0].params == {"fill": [0, 0, 0]}
    json.dumps([r.to_dict() for r in results["blur"].faces])
    # the same face twice as big gets twice the blur and twice the blocks
    crop = np.ascontiguousarray(t1[100:400, 200:500])
    big = cv2.resize(crop, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    small_face, big_face = shifted(t1_faces[5], (-200, -100)), shifted(t1_faces[5], (-200, -100), 2)
    for mode, key in (("blur", "sigma_px"), ("pixelate", "block_px")):
        (r1,) = anonymize_image(crop, StubAnalyzer([small_face]), Opts(mode=mode)).faces  # type: ignore[arg-type]
        (r2,) = anonymize_image(big, StubAnalyzer([big_face]), Opts(mode=mode)).faces  # type: ignore[arg-type]
        assert abs(r2.params[key] - 2 * r1.params[key]) <= 1.0, (mode, r1.params, r2.params)


def test_mask_mode_fills_with_the_colour(t1: np.ndarray, t1_faces: list[Face]) -> None:
    opts = Opts(mode="mask", fill=(0, 200, 50), shape="box", feather=0.0)
    res = anonymize_image(t1, StubAnalyzer(t1_faces), opts)  # type: ignore[arg-type]
    assert np.all(res.image[res.mask == 1] == [0, 200, 50])
    assert np.array_equal(res.image[res.mask == 0], t1[res.mask == 0])


def test_selecting_one_face_leaves_the_others(t1: np.ndarray, t1_faces: list[Face]) -> None:
    stub = StubAnalyzer(t1_faces)
    res = anonymize_image(t1, stub, Opts(faces="largest"))  # type: ignore[arg-type]
    largest = max(range(6), key=lambda i: t1_faces[i].area)
    assert [r.index for r in res.faces] == [largest]
    for i, face in enumerate(t1_faces):
        region = core_region(face, t1.shape)
        same = np.array_equal(res.image[region], t1[region])
        assert same == (i != largest)
    assert [r.index for r in anonymize_image(t1, stub, Opts(faces=-1)).faces] == [5]  # type: ignore[arg-type]
    with pytest.raises(FaceIndexError, match="face index must be in"):
        anonymize_image(t1, stub, Opts(faces=6))  # type: ignore[arg-type]


def test_overlapping_faces_are_both_anonymized(t1: np.ndarray, t1_faces: list[Face]) -> None:
    face = t1_faces[0]
    other = shifted(face, (45.0, 10.0))
    res = anonymize_image(t1, StubAnalyzer([face, other]), Opts(mode="pixelate"))  # type: ignore[arg-type]
    masks = [face_mask(f, t1.shape[:2], AnonymizeOptions().mask_spec()) for f in (face, other)]
    assert np.logical_and(masks[0] > 0, masks[1] > 0).sum() > 1000
    assert np.array_equal(res.mask, np.maximum(*masks))
    assert len(res.faces) == 2
    assert np.array_equal(res.image[res.mask == 0], t1[res.mask == 0])
    for f in (face, other):
        region = core_region(f, t1.shape)
        assert np.abs(res.image[region].astype(int) - t1[region].astype(int)).mean() > 10


def test_face_cut_by_the_border(dlib_analyzer: Any, t1: np.ndarray) -> None:
    crop = np.ascontiguousarray(t1[:, 100:])
    res = anonymize_image(crop, dlib_analyzer, Opts(mode="blur", shape="ellipse"))
    assert len(res.faces) == 6
    cut = [r for r in res.faces if r.bbox[0] <= 0.5]
    assert len(cut) == 1
    face = dlib_analyzer.detect(crop)[cut[0].index]
    assert face.landmarks[:, 0].min() < 0  # part of the face lies outside the image
    pts = in_image(face.landmarks, crop.shape)
    assert len(pts) > 30 and np.all(res.mask[pts[:, 1], pts[:, 0]] == 1.0)
    region = core_region(face, crop.shape)
    assert np.abs(res.image[region].astype(int) - crop[region].astype(int)).mean() > 10
    assert np.array_equal(res.image[res.mask == 0], crop[res.mask == 0])


def test_no_face_raises_instead_of_passing_the_image_through(dlib_analyzer: Any) -> None:
    ramp = np.linspace(0, 255, 200, dtype=np.float32)
    image = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 128 + 0 * ramp[None, :]), 2)
    with pytest.raises(NoFaceDetectedError, match="scenery: no face detected"):
        anonymize_image(image.astype(np.uint8), dlib_analyzer, source="scenery")


# ----------------------------------------------------------------------------- generate hook


def inverting_hook(accepted: bool, similarity: float | None, reason: str | None = None) -> Any:
    calls: list[Face] = []

    def hook(image: np.ndarray, face: Face, mask: np.ndarray) -> GeneratedFace:
        assert image.dtype == np.uint8 and mask.shape == image.shape[:2] and mask.max() == 1.0
        calls.append(face)
        return GeneratedFace(255 - image, accepted, similarity, "test-encoder", reason)

    hook.calls = calls  # type: ignore[attr-defined]
    return hook


def test_generate_needs_a_hook(t1: np.ndarray, t1_faces: list[Face]) -> None:
    with pytest.raises(
        ValueError,
        match=r"`replace_face` must be given for mode 'generate' \(it needs a generation pipeline",
    ):
        anonymize_image(t1, StubAnalyzer(t1_faces), Opts(mode="generate"))  # type: ignore[arg-type]


def test_generate_hook_accepted(t1: np.ndarray, t1_faces: list[Face]) -> None:
    hook = inverting_hook(True, 0.12)
    res = anonymize_image(t1, StubAnalyzer(t1_faces), GENERATE, replace_face=hook)  # type: ignore[arg-type]
    assert len(hook.calls) == 6
    for r in res.faces:
        assert (r.requested_mode, r.mode, r.fallback, r.similarity, r.verifier) == (
            "generate",
            "generate",
            False,
            0.12,
            "test-encoder",
        )
    full = res.mask == 1
    assert np.array_equal(res.image[full], 255 - t1[full])
    assert np.array_equal(res.image[res.mask == 0], t1[res.mask == 0])


def test_generate_hook_rejected_falls_back(t1: np.ndarray, t1_faces: list[Face]) -> None:
    hook = inverting_hook(False, 0.97, "too similar to the original")
    opts = Opts(mode="generate", fallback_mode="pixelate")
    res = anonymize_image(t1, StubAnalyzer(t1_faces[:2]), opts, replace_face=hook)  # type: ignore[arg-type]
    for r in res.faces:
        assert (r.mode, r.fallback, r.fallback_reason, r.similarity) == (
            "pixelate",
            True,
            "too similar to the original",
            0.97,
        )
        assert "block_px" in r.params
    d = res.faces[0].to_dict()
    assert json.loads(json.dumps(d))["fallback_reason"] == "too similar to the original"
    region = core_region(t1_faces[0], t1.shape)
    assert not np.array_equal(res.image[region], 255 - t1[region])
    assert np.abs(res.image[region].astype(int) - t1[region].astype(int)).mean() > 10


def test_generate_hook_failure_falls_back(t1: np.ndarray, t1_faces: list[Face]) -> None:
    def failing(image: np.ndarray, face: Face, mask: np.ndarray) -> GeneratedFace:
        raise FacegenError("generator out of memory")

    res = anonymize_image(t1, StubAnalyzer(t1_faces[:1]), GENERATE, replace_face=failing)  # type: ignore[arg-type]
    (r,) = res.faces
    assert (r.mode, r.fallback, r.fallback_reason, r.similarity) == (
        "blur",
        True,
        "generator out of memory",
        None,
    )

    def wrong(image: np.ndarray, face: Face, mask: np.ndarray) -> GeneratedFace:
        return GeneratedFace(image[:10], True)

    with pytest.raises(ValueError, match="`replace_face` must return an RGB uint8 image"):
        anonymize_image(t1, StubAnalyzer(t1_faces[:1]), GENERATE, replace_face=wrong)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"mode": "swap"},
            "`mode` must be one of 'blur', 'pixelate', 'mask', 'generate', got 'swap'",
        ),
        ({"shape": "star"}, "`shape` must be one of hull, ellipse, box"),
        ({"margin": "5cm"}, "`margin` must be a number >= 0"),
        ({"feather": -0.1}, "`feather` must be a number >= 0"),
        ({"fill": (0, 0)}, "`fill` must be three integers in [0, 255] (RGB)"),
        ({"fill": (0, 0, 300)}, "`fill` must be an integer in [0, 255], got 300"),
        ({"fill": (0, 0, 1.5)}, "`fill` must be an integer in [0, 255], got 1.5"),
        ({"faces": "biggest"}, "`faces` must be one of all, largest, best or a face index"),
        ({"faces": True}, "`faces` must be one of"),
        ({"pixel_blocks": 0}, "`pixel_blocks` must be an integer in [1, 256], got 0"),
        ({"pixel_blocks": 8.0}, "`pixel_blocks` must be an integer in [1, 256], got 8.0"),
        ({"blur_sigma": 0.0}, "`blur_sigma` must be a finite number in (0, 5], got 0.0"),
        ({"blur_sigma": True}, "`blur_sigma` must be a number in (0, 5], got True"),
        (
            {"fallback_mode": "generate"},
            "`fallback_mode` must be one of 'blur', 'pixelate', 'mask', got 'generate'",
        ),
    ],
)
def test_invalid_options(kwargs: dict[str, Any], message: str, t1: np.ndarray) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        anonymize_image(t1, StubAnalyzer([]), Opts(**kwargs))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- folders


@pytest.fixture
def tree(tmp_path: Path, t1_path: Path, astronaut: np.ndarray) -> Path:
    root = tmp_path / "in"
    (root / "group").mkdir(parents=True)
    shutil.copy(t1_path, root / "group" / "t1.jpg")
    (root / "nested" / "deeper").mkdir(parents=True)
    from PIL import Image

    Image.fromarray(astronaut).save(root / "nested" / "deeper" / "astro.bmp")
    ramp = np.linspace(0, 255, 160).astype(np.uint8)
    save_image(np.dstack([np.tile(ramp, (120, 1))] * 3), root / "scenery.png")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


def by_input(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["input"]: r for r in records}


def test_folder_mirrors_the_tree_and_reports_every_file(
    tree: Path, tmp_path: Path, dlib_analyzer: Any, astronaut: np.ndarray
) -> None:
    out = tmp_path / "out"
    calls: list[tuple[int, int]] = []
    rep = anonymize_folder(
        tree, out, dlib_analyzer, watermark=False, progress=lambda n, t: calls.append((n, t))
    )
    assert (rep.total, rep.done, rep.no_face, rep.errors, rep.skipped) == (4, 2, 1, 1, 0)
    assert rep.faces == 7
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [REPORT_NAME, "group/t1.jpg", "nested/deeper/astro.png"]
    recs = by_input(list(read_report(out / REPORT_NAME)))
    assert recs == by_input(rep.records)
    assert recs["scenery.png"]["status"] == "no_face"
    assert recs["scenery.png"]["output"] is None and recs["scenery.png"]["faces_detected"] == 0
    assert recs["broken.jpg"]["status"] == "error"
    assert (
        "InvalidImageError" in recs["broken.jpg"]["error"]
        and "broken.jpg" in recs["broken.jpg"]["error"]
    )
    group = recs["group/t1.jpg"]
    assert group["status"] == "done" and group["output"] == "group/t1.jpg"
    assert len(group["faces"]) == 6 and {f["mode"] for f in group["faces"]} == {"blur"}
    assert group["detector"] == "dlib-hog" and group["settings"]["mode"] == "blur"
    # the PNG output is exactly what anonymize_image makes: outside the masks, byte-identical
    astro = recs["nested/deeper/astro.bmp"]
    assert astro["output"] == "nested/deeper/astro.png"
    written = load_image(out / astro["output"])
    direct = anonymize_image(astronaut, dlib_analyzer)
    assert np.array_equal(written, direct.image)
    assert np.array_equal(written[direct.mask == 0], astronaut[direct.mask == 0])
    record = read_metadata(out / "group" / "t1.jpg")
    assert record["operation"] == "anonymize" and record["params"]["anonymize"]["mode"] == "blur"
    assert record["watermark"] is None


def test_folder_outputs_carry_provenance_and_watermark_by_default(
    tree: Path, tmp_path: Path, dlib_analyzer: Any
) -> None:
    from facegen.provenance import check

    out = tmp_path / "out"
    anonymize_folder(tree, out, dlib_analyzer)
    for rel in ("group/t1.jpg", "nested/deeper/astro.png"):
        rep = check(out / rel)
        assert rep.watermark_detected and rep.info is not None
        assert rep.info.operation == "anonymize" and rep.info.kind == "edited"
    original = check(tree / "group" / "t1.jpg")
    assert not original.watermark_detected and original.info is None


def test_folder_rerun_skips_finished_files(tree: Path, tmp_path: Path, dlib_analyzer: Any) -> None:
    out = tmp_path / "out"
    anonymize_folder(tree, out, dlib_analyzer)
    outputs = [out / "group" / "t1.jpg", out / "nested" / "deeper" / "astro.png"]
    stamps = [p.stat().st_mtime_ns for p in outputs]
    calls: list[tuple[int, int]] = []
    rep = anonymize_folder(tree, out, dlib_analyzer, progress=lambda n, t: calls.append((n, t)))
    assert (rep.done, rep.skipped, rep.no_face, rep.errors) == (0, 2, 1, 1)
    assert calls[-1] == (4, 4)
    assert [p.stat().st_mtime_ns for p in outputs] == stamps
    assert len(list(read_report(out / REPORT_NAME))) == 4  # one line per input: its latest
    # a missing output is made again; other settings redo everything
    outputs[1].unlink()
    rep = anonymize_folder(tree, out, dlib_analyzer)
    assert (rep.done, rep.skipped) == (1, 1) and outputs[1].is_file()
    rep = anonymize_folder(tree, out, dlib_analyzer, Opts(mode="pixelate"))
    assert (rep.done, rep.skipped) == (2, 0)
    assert {f["mode"] for r in rep.records if r["status"] == "done" for f in r["faces"]} == {
        "pixelate"
    }


def test_folder_survives_a_torn_journal_and_drops_stale_outputs(
    tree: Path, tmp_path: Path, dlib_analyzer: Any
) -> None:
    out = tmp_path / "out"
    anonymize_folder(tree, out, dlib_analyzer, Opts(mode="mask"))
    with open(out / REPORT_NAME, "a", encoding="utf-8") as f:
        f.write('{"input": "group/t1.jpg", "sta')  # a crash mid-line
    # the group photo becomes unreadable: its old output must not survive as if it were current
    (tree / "group" / "t1.jpg").write_bytes(b"garbage")
    rep = anonymize_folder(tree, out, dlib_analyzer, Opts(mode="mask"))
    assert (rep.done, rep.skipped, rep.errors) == (0, 1, 2)
    assert not (out / "group" / "t1.jpg").exists()
    lines = (out / REPORT_NAME).read_text(encoding="utf-8").splitlines()
    assert all(json.loads(line) for line in lines)


def test_folder_output_inside_input_and_bad_folders(
    tree: Path, tmp_path: Path, dlib_analyzer: Any
) -> None:
    shutil.rmtree(tree / "group")  # keep it quick: the astronaut, the scenery and the broken file
    shutil.copy(tree / "scenery.png", tree / "scenery.bmp")  # both would become scenery.png
    inner = tree / "anonymized"
    first = anonymize_folder(tree, inner, dlib_analyzer, output_format="png")
    assert (first.total, first.done, first.no_face, first.errors) == (4, 1, 1, 2)
    assert (inner / "nested" / "deeper" / "astro.png").is_file()
    clash = by_input(first.records)["scenery.png"]
    assert clash["status"] == "error"
    assert "output scenery.png is already the output of scenery.bmp" in clash["error"]
    again = anonymize_folder(tree, inner, dlib_analyzer, output_format="png")
    assert again.total == 4 and again.skipped == 1
    with pytest.raises(OutputError, match="`out_dir` must differ from `input_dir`"):
        anonymize_folder(tree, tree, dlib_analyzer)
    with pytest.raises(InvalidImageError, match="`input_dir` must be an existing folder"):
        anonymize_folder(tree / "scenery.png", tmp_path / "o", dlib_analyzer)
    with pytest.raises(
        ValueError, match="`output_format` must be one of None, 'png', 'jpg', 'webp', got 'gif'"
    ):
        anonymize_folder(tree, tmp_path / "o", dlib_analyzer, output_format="gif")
