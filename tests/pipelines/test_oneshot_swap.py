"""One-shot swap, restoration and their masks on a real photo (t1.jpg) with random-weight
ONNX doubles in the real signatures, and the commands that run them on photos and video."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("onnx")

from onnx_face_models import (
    build_arcface_w600k,
    build_occluder,
    build_parser,
    build_restorer,
    build_swapper,
)

from facegen.backends.face_parsing import FaceParser, Occluder
from facegen.backends.restorers import OnnxFaceRestorer
from facegen.backends.swappers import OnnxFaceSwapper
from facegen.errors import InvalidArgumentError
from facegen.pipelines.editing.oneshot import OneShotSwap, box_mask, restore_faces
from facegen.types import IdentityEmbedding


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FACEGEN_HOME holding every model the one-shot path loads, as doubles."""
    root = tmp_path_factory.mktemp("facegen_home")
    models = root / "models"
    build_swapper(models / "inswapper_128" / "inswapper_128.onnx", size=128, emap=True)
    build_arcface_w600k(models / "buffalo_l" / "w600k_r50.onnx")
    build_restorer(models / "gfpgan_1.4" / "gfpgan_1.4.onnx")
    build_restorer(models / "codeformer" / "codeformer.onnx", codeformer=True)
    build_parser(models / "bisenet_resnet_34" / "bisenet_resnet_34.onnx")
    build_occluder(models / "xseg_1" / "xseg_1.onnx")
    return root


@pytest.fixture
def offline_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FACEGEN_HOME", str(home))
    monkeypatch.setenv("FACEGEN_OFFLINE", "1")
    return home


@pytest.fixture(scope="module")
def faces(t1_image: np.ndarray, dlib_analyzer) -> list:
    return dlib_analyzer.detect(t1_image)[:3]


def _source() -> IdentityEmbedding:
    v = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    return IdentityEmbedding(v, "arcface-onnx/buffalo_l", False)


def _image_masks(swap: OneShotSwap, image: np.ndarray, faces: list) -> np.ndarray:
    """The crop-space masks mapped into the image: the most any pixel can change by."""
    aligned = [swap.swapper.align(image, f) for f in faces]
    target = np.stack([a.image for a in aligned])
    swapped = swap.swapper.swap_crops(target, swap.prepare_source(_source()))
    masks = swap.masks(faces, aligned, target, swapped)
    h, w = image.shape[:2]
    warped = [cv2.warpAffine(m, a.inverse, (w, h)) for m, a in zip(masks, aligned, strict=True)]
    return np.max(warped, axis=0)


def test_the_swap_changes_exactly_the_masked_region(
    t1_image: np.ndarray, faces: list, offline_home: Path
) -> None:
    swapper = OnnxFaceSwapper.from_pretrained("inswapper_128")
    changed = {}
    for kind in ("box", "hull"):
        swap = OneShotSwap(swapper, mask=kind)
        out = swap.swap(t1_image, faces, swap.prepare_source(_source())).image
        reach = _image_masks(swap, t1_image, faces)
        diff = np.abs(out.astype(int) - t1_image).max(axis=2)
        assert (diff[reach == 0] == 0).all()  # outside every mask: the same bytes
        assert (diff[reach > 0.99] > 0).mean() > 0.5  # inside: swapped
        changed[kind] = int((diff > 0).sum())
    assert 0 < changed["hull"] < changed["box"]  # the hull is inside the crop's square
    assert box_mask(128)[64, 64] == pytest.approx(1.0) and box_mask(128)[0, 64] == 0


def test_parsing_and_occlusion_masks_narrow_the_box(
    t1_image: np.ndarray, faces: list, offline_home: Path
) -> None:
    swapper = OnnxFaceSwapper.from_pretrained("inswapper_128")
    parser, occluder = FaceParser.from_pretrained(), Occluder.from_pretrained()
    box = _image_masks(OneShotSwap(swapper), t1_image, faces)
    swap = OneShotSwap(swapper, mask="parsing:skin,nose", parser=parser)
    parsed = _image_masks(swap, t1_image, faces)
    both = OneShotSwap(swapper, mask="parsing:skin,nose", parser=parser, occluder=occluder)
    both = OneShotSwap(swapper, mask=both.mask.__class__("parsing", both.mask.classes, occlusion=True),
                       parser=parser, occluder=occluder)  # fmt: skip
    occluded = _image_masks(both, t1_image, faces)
    assert (parsed <= box + 1e-6).all() and (occluded <= parsed + 1e-6).all()
    assert parsed.sum() < box.sum()
    settings = swap.settings()
    assert (
        settings["mask"]["classes"] == ["skin", "nose"] and settings["swapper"] == "inswapper_128"
    )
    with pytest.raises(InvalidArgumentError, match="face-parsing model"):
        OneShotSwap(swapper, mask="parsing")
    with pytest.raises(InvalidArgumentError, match="only the parsing mask"):
        OneShotSwap(swapper, mask="hull:skin")
    with pytest.raises(InvalidArgumentError, match="mask must be one of"):
        OneShotSwap(swapper, mask="circle")
    with pytest.raises(InvalidArgumentError, match="blend"):
        OneShotSwap(swapper, restore_blend=2)


def test_restoration_blends_by_its_weight(
    t1_image: np.ndarray, faces: list, offline_home: Path
) -> None:
    gfpgan = OnnxFaceRestorer.from_pretrained("gfpgan")
    assert np.array_equal(restore_faces(t1_image, faces, gfpgan, blend=0.0), t1_image)
    half = restore_faces(t1_image, faces, gfpgan, blend=0.5).astype(int)
    full = restore_faces(t1_image, faces, gfpgan, blend=1.0).astype(int)
    d_half, d_full = np.abs(half - t1_image), np.abs(full - t1_image)
    inside = d_full.max(axis=2) > 20
    assert inside.sum() > 1000
    ratio = d_half[inside].sum() / d_full[inside].sum()
    assert 0.4 < ratio < 0.6  # half the blend, half the change


def test_commands_swap_photos_and_a_video_and_restore(
    t1_path: Path, astronaut: np.ndarray, offline_home: Path, tmp_path: Path, capsys
) -> None:
    import av
    from PIL import Image

    from facegen.app.cli.main import main
    from facegen.video_io import probe_video

    src = tmp_path / "source.png"
    Image.fromarray(astronaut).save(src)
    out = tmp_path / "swapped"
    args = ["swap", "--method", "inswapper", "--source", str(src), "--target", str(t1_path)]
    rc = main([*args, "--out", str(out), "--restore", "codeformer", "--fidelity", "0.7",
               "--mask", "parsing:face,-glasses", "--occlusion"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "swap_report.json").read_text())
    settings = report["settings"]
    assert settings["swapper"] == "inswapper_128" and settings["restore"]["fidelity"] == 0.7
    assert "glasses" not in settings["mask"]["classes"] and settings["mask"]["occlusion"]
    assert len(report["images"][0]["faces"]) >= 5
    written = np.asarray(Image.open(report["images"][0]["output"]).convert("RGB"))
    original = np.asarray(Image.open(t1_path).convert("RGB"))
    assert written.shape == original.shape and np.abs(written.astype(int) - original).mean() > 0.5
    # a video: the frame's faces in one batch, the source prepared once
    frames = [np.ascontiguousarray(original[:320, 8 * i : 8 * i + 480]) for i in range(6)]
    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as c:
        vs = c.add_stream("libx264", rate=10)
        vs.width, vs.height, vs.pix_fmt = 480, 320, "yuv420p"
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            c.mux(vs.encode(frame))
        c.mux(vs.encode())
    video_out = tmp_path / "swapped.mp4"
    rc = main(["swap", "--method", "inswapper", "--source", str(src), "--target", str(clip),
               "--out", str(video_out), "--detect-every", "2"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    rep = json.loads(video_out.with_suffix(".json").read_text())
    assert rep["frames"] == 6 and rep["faces_generated"] == rep["faces_covered"] > 0
    assert rep["settings"]["swap"]["swapper"] == "inswapper_128"
    assert probe_video(video_out).frame_count == 6
    # restore on its own
    restored = tmp_path / "restored"
    assert main(["restore", str(t1_path), "--out", str(restored), "--model", "gfpgan"]) == 0
    assert "face(s) restored" in capsys.readouterr().out
    assert len(list(restored.glob("*"))) == 1


def test_commands_refuse_what_they_cannot_do(
    t1_path: Path, offline_home: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refusals, with FACEGEN_OFFLINE=1 and no --offline: the environment alone keeps the
    commands off the network (a missing model is refused at once, saying offline mode is on)."""
    import socket

    from facegen.app.cli.main import main

    def no_network(*args: object, **kw: object) -> None:
        raise AssertionError("offline mode must not open a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    base = ["swap", "--source", str(t1_path), "--target", str(t1_path), "--out", str(tmp_path)]
    assert main([*base, "--method", "faceswapper9000"]) != 0
    assert "faceswapper9000" in capsys.readouterr().err
    assert main([*base, "--method", "simswap"]) != 0  # not in this FACEGEN_HOME
    err = capsys.readouterr().err
    assert "simswap_256" in err and "facefusion/models-3.0.0" in err
    assert "offline mode is on" in err
    # bad settings are refused before any model is looked for (simswap is missing here)
    for bad, said in (("--restore-blend", "blend"), ("--fidelity", "fidelity")):
        assert main([*base, "--method", "simswap", "--restore", "codeformer", bad, "3"]) != 0
        err = capsys.readouterr().err
        assert said in err and "[0, 1]" in err and "not available" not in err
    assert main([*base, "--method", "simswap", "--mask", "parsing:wings"]) != 0
    err = capsys.readouterr().err
    assert "wings" in err and "not available" not in err


def test_models_list_shows_each_swapper_and_its_licence(offline_home: Path, capsys) -> None:
    from facegen.app.cli.main import main

    assert main(["models", "list"]) == 0
    text = capsys.readouterr().out
    for name in ("inswapper_128", "simswap_256", "gfpgan_1.4", "codeformer", "bisenet_resnet_34"):
        assert name in text
    assert "non-commercial" in text


def test_generated_faces_are_restored_after_verification(
    t1_image: np.ndarray, faces: list, offline_home: Path
) -> None:
    """Generative anonymization with --restore: an accepted face is restored inside its
    crop, a rejected one is left for the fallback; a video track's hook keeps its other
    methods (a pseudonym's observe)."""
    from facegen.pipelines.editing.anonymize import FaceReplacement, GeneratedFace
    from facegen.pipelines.editing.jobs import TrackReplacement
    from facegen.pipelines.editing.oneshot_jobs import load_restorer, restore_generated

    gfpgan = load_restorer("gfpgan")
    verdicts = iter([True, False])

    def hook(image, face, mask):
        return GeneratedFace(image.copy(), next(verdicts), 0.1, "stub")

    wrapped = restore_generated(FaceReplacement(hook, {"preset": "stub"}), gfpgan, 1.0)
    assert wrapped.settings["restore"] == {"model": "gfpgan", "blend": 1.0}
    mask = np.zeros(t1_image.shape[:2], np.float32)
    accepted = wrapped(t1_image, faces[0], mask)
    rejected = wrapped(t1_image, faces[0], mask)
    assert accepted.accepted and np.abs(accepted.image.astype(int) - t1_image).mean() > 0.05
    assert not rejected.accepted and np.array_equal(rejected.image, t1_image)

    class Track:
        seen = 0

        def observe(self, image, face, frame=None):
            Track.seen += 1

        def __call__(self, image, face, mask):
            return GeneratedFace(image.copy(), True)

    tracks = restore_generated(TrackReplacement(lambda v, t: Track(), {}), gfpgan, 0.5)
    hook_of_track = tracks.for_video("clip.mp4")(3)
    hook_of_track.observe(t1_image, faces[0], 0)
    assert Track.seen == 1 and tracks.settings["restore"]["blend"] == 0.5


def test_anonymize_generate_records_the_restoration(
    t1_path: Path, offline_home: Path, tmp_path: Path, capsys
) -> None:
    from facegen.app.cli.main import main

    out = tmp_path / "anon"
    rc = main(["anonymize", str(t1_path), "--out", str(out), "--mode", "generate", "--preset",
               "tiny", "--steps", "2", "--attempts", "1", "--restore", "codeformer"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    from facegen.provenance import read_provenance

    written = [p for p in out.iterdir() if p.suffix in (".png", ".jpg")]
    info = read_provenance(written[0])
    assert info.params["anonymize"]["generator"]["restore"]["model"] == "codeformer"


def test_bad_inputs_get_clear_errors_and_the_rest_go_on(
    t1_path: Path, offline_home: Path, tmp_path: Path, capsys
) -> None:
    """A source embedding of another encoder is refused before any work; in a folder of
    targets a corrupt file, an empty one and a photo without a face are reported and the good
    photo is still swapped."""
    from PIL import Image

    from facegen.app.cli.main import main
    from facegen.embedding_io import save_embeddings

    dlib_vec = tmp_path / "dlib.safetensors"
    save_embeddings(
        dlib_vec, [IdentityEmbedding(np.ones(128, np.float32), "dlib-resnet-v1", False)]
    )
    base = ["swap", "--method", "inswapper", "--target", str(t1_path), "--out", str(tmp_path / "o")]
    assert main([*base, "--source", str(dlib_vec)]) != 0
    assert "arcface-onnx/buffalo_l" in capsys.readouterr().err
    targets = tmp_path / "targets"
    targets.mkdir()
    (targets / "group.jpg").write_bytes(t1_path.read_bytes())
    (targets / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (targets / "empty.png").write_bytes(b"")
    Image.fromarray(np.full((200, 300, 3), 120, np.uint8)).save(targets / "wall.png")
    out = tmp_path / "swapped"
    rc = main(["swap", "--method", "inswapper", "--source", str(t1_path), "--target", str(targets),
               "--out", str(out)])  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 1 and "1 of 4 image(s) swapped" in captured.out
    assert "wall.png" in captured.err and "no face" in captured.err
    report = json.loads((out / "swap_report.json").read_text())
    assert sum("error" in r for r in report["images"]) == 3
    assert [p.name for p in out.iterdir() if p.suffix != ".json"] == ["group.jpg"]
