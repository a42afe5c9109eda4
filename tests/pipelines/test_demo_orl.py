"""The ``demo-orl`` generator facegen trained itself and ships: a regression test, not a
benchmark (the numbers are in its model card and BENCHMARKS.md).

It must load offline from the installed package, agree with its registered preset record,
make faces that the dataset verifier accepts at no less than the floor measured when it was
trained (``ACCEPTANCE_FLOOR``), and refuse identity vectors of another encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facegen.errors import IncompatibleEmbeddingError
from facegen.pipelines.generation.generator_folder import load_identity_bank, read_generator_info
from facegen.pipelines.generation.presets import (
    DEMO_ORL_CONTROLNET_NAME,
    DEMO_ORL_NAME,
    default_generate_preset,
    from_preset,
    preset_info,
)
from facegen.types import IdentityEmbedding

pytestmark = pytest.mark.skipif(
    not (Path(__file__).resolve().parents[2] / "facegen" / "models" / "demo-orl").is_dir(),
    reason="the demo-orl weights are not in this checkout (facegen/models/demo-orl)",
)

#: per-image acceptance of the dataset verifier (one attempt per image) on the model's own
#: training people (each person's mean identity), with this test's settings and seeds: 7 of
#: 30 (0.23) when the weights shipped; 1 of 30 or less means the identity is lost (the
#: condition-dropped control of ``benchmarks/generator_orl.py`` is accepted 1.7 % of the time)
ACCEPTANCE_FLOOR = 0.10
#: identities of 10 kept by the anchored novel-identity run below (2 images each, 3 attempts):
#: 5 when measured on the shipped weights (10 of 16 in the README's run; 0 of 16 verified
#: against the sampled vectors)
NOVEL_FLOOR = 3


@pytest.fixture(scope="module")
def folder() -> Path:
    from facegen.pipelines.generation.preset_builders import demo_orl_dir

    return demo_orl_dir()


@pytest.fixture(scope="module")
def pipe(monkeypatch_module):
    monkeypatch_module.setenv("FACEGEN_OFFLINE", "1")
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    p = from_preset(DEMO_ORL_NAME)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_the_shipped_folder_is_small_half_precision_and_matches_its_preset(folder: Path) -> None:
    from safetensors import safe_open

    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 15 * 1024 * 1024
    for weights in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        with safe_open(str(folder / weights), "pt") as f:
            names = list(f.keys())
            assert {f.get_slice(k).get_dtype() for k in names} == {"F16"}
    card = (folder / "README.md").read_text()
    assert "AT&T Laboratories Cambridge" in card and "facegen train generator" in card
    info = read_generator_info(folder)
    registered = preset_info(DEMO_ORL_NAME)
    from_folder = info.preset_info(DEMO_ORL_NAME)
    for field in ("identity", "default_steps", "default_guidance", "family", "takes_prompt"):
        assert getattr(registered, field) == getattr(from_folder, field), field
    assert dict(registered.dataset_defaults) == info.dataset_defaults
    assert not registered.test_double
    # trained on ORL's training people only: s32–s40 are the held-out evaluation set
    vectors, names = load_identity_bank(folder)
    assert vectors.shape[1] == 128 and len(vectors) == len(names)
    assert set(names) == {f"s{k}" for k in range(2, 32)}
    from facegen import hub

    where = hub.status(DEMO_ORL_NAME)  # what `facegen models list` shows
    assert all(where.values()) and all(str(folder) in p for p in where.values())


def _per_image(out: Path) -> tuple[int, list[str], list[float]]:
    """(images accepted, rejection reasons, similarities of the accepted) over a run's journal,
    whole identities or not (a dataset keeps only identities whose every image passed)."""
    from facegen.pipelines.dataset.build import read_journal

    accepted, reasons, sims = 0, [], []
    for journal in sorted((out / "journal").glob("*.jsonl")):
        for record in read_journal(journal):
            accepted += len(record["images"])
            sims += [image["similarity"] for image in record["images"]]
            reasons += [r["reason"] for r in record["rejections"]]
    return accepted, reasons, sims


def test_loads_offline_and_makes_its_training_people_the_verifier_accepts(
    pipe, tmp_path: Path
) -> None:
    """A dataset of 10 of the people it was trained on, through the real machinery
    (generation, face detection, dlib verification), one attempt per image."""
    from facegen.pipelines.dataset.config import DatasetConfig
    from facegen.pipelines.dataset.run import pipeline_worker, run_shard
    from facegen.pipelines.identities import with_person_means

    vectors, names = pipe.identity_bank
    means = with_person_means(vectors, names)[len(vectors) :]
    assert len(means) == 30
    people = np.linspace(0, 29, 10).round().astype(int)
    cfg = DatasetConfig(
        identities=10,
        images_per_identity=3,
        preset=DEMO_ORL_NAME,
        attempts=1,
        batch_size=10,
        verify_against="target",  # its training people: the vector is the person
    )
    worker = pipeline_worker(pipe, cfg)
    summary = run_shard(tmp_path / "ds", cfg, (0, 1), worker, prepared=(means[people], None))
    accepted, reasons, sims = _per_image(tmp_path / "ds")
    assert accepted + len(reasons) == 30
    assert accepted / 30 >= ACCEPTANCE_FLOOR, (accepted, reasons)
    assert all(0.925 <= s <= 0.995 for s in sims)
    assert set(reasons) <= {"identity_drift", "no_face", "near_duplicate"}
    # every accepted image has its crop; the dataset counts whole identities only
    assert len(sorted((tmp_path / "ds" / "images").rglob("*.png"))) == accepted
    assert summary.images == 3 * summary.done
    assert summary.done + summary.failed == 10


def test_novel_identities_are_verified_against_the_person_the_model_renders(
    pipe, tmp_path: Path
) -> None:
    """The main job's default on this model: identities sampled from the Gaussian of the
    training bank with the leakage check on, each image verified against its identity's anchor
    (the model renders a sampled vector as a consistent person, not as the vector: see the
    model card). Every kept identity's anchor is new (below the leakage threshold to every
    training photo and person) and apart from the others', and enough identities are kept."""
    from facegen.pipelines.dataset.anchors import ANCHOR_REASONS, read_anchors
    from facegen.pipelines.dataset.build import committed_identities
    from facegen.pipelines.dataset.config import DatasetConfig
    from facegen.pipelines.dataset.run import pipeline_worker, run_shard
    from facegen.pipelines.identities import with_person_means

    cfg = DatasetConfig(identities=10, images_per_identity=2, preset=DEMO_ORL_NAME)
    out = tmp_path / "ds"
    run_shard(out, cfg, (0, 1), pipeline_worker(pipe, cfg))
    saved = json.loads((out / "config.json").read_text())
    assert saved["sampler"] == "gaussian" and saved["leakage_check"] is True
    assert saved["verify_against"] == "anchor" and saved["min_similarity"] == 0.925
    anchors = read_anchors(out)
    kept = committed_identities(out)
    assert len(anchors) == 10 and len(kept) >= NOVEL_FLOOR, anchors
    bank = with_person_means(*pipe.identity_bank)
    found = np.stack([a["vector"] for a in anchors if a["status"] == "done"])
    assert float((found @ bank.T).max()) < 0.925  # new people, not training ones
    between = found @ found.T
    np.fill_diagonal(between, -1)
    assert float(between.max()) < 0.925
    for r in kept:
        assert all(0.925 <= im["similarity"] <= 0.995 for im in r["images"])
        assert all(im["rival_similarity"] < 0.925 for im in r["images"])  # no other anchor
    reasons = {x["reason"] for a in anchors for x in a["rejections"]}
    assert reasons <= set(ANCHOR_REASONS)


def test_same_seed_same_face_and_other_encoders_refused(pipe) -> None:
    vectors, _ = pipe.identity_bank
    ident = [IdentityEmbedding(vectors[0], "dlib-resnet-v1", True)]
    a = pipe(ident, seeds=[7], output_type="np").images[0]
    b = pipe(ident, seeds=[7], output_type="np").images[0]
    assert a.shape == (64, 64, 3) and np.array_equal(a, b)
    assert float(a.std()) > 0.05  # an image, not a flat field
    other = np.ones(512, np.float32) / np.sqrt(512)
    with pytest.raises(IncompatibleEmbeddingError, match="dlib-resnet-v1"):
        pipe([IdentityEmbedding(other, "arcface-onnx/antelopev2", True)], seeds=[0])


def test_it_is_the_default_where_no_published_weights_are(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("FACEGEN_HOME", str(tmp_path / "fg"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    assert default_generate_preset() == DEMO_ORL_NAME
    from facegen.app.web.dataset import preset_thresholds
    from facegen.app.web.services import Services

    presets = ["tiny", DEMO_ORL_NAME, DEMO_ORL_CONTROLNET_NAME, "arc2face", "arc2face-controlnet"]
    services = Services(presets=presets, output_root=tmp_path / "o")
    try:
        assert services.default_preset == DEMO_ORL_NAME
        assert services.default_for("generate") == DEMO_ORL_NAME
        # the Swap tab and generative anonymization start on it too (not on an inpainting
        # preset whose weights are not here)
        assert DEMO_ORL_NAME in services.edit_presets
        assert services.default_for("edit") == DEMO_ORL_NAME
        # the Control tab on its own ControlNet; the Generate tab keeps the plain model
        assert services.default_for("control") == DEMO_ORL_CONTROLNET_NAME
        assert DEMO_ORL_CONTROLNET_NAME not in services.generate_presets
    finally:
        services.close()
    # the web Dataset tab's thresholds follow the preset's identity space
    assert preset_thresholds(DEMO_ORL_NAME) == (0.925, 0.925, 0.995)
    assert preset_thresholds("arc2face") == (0.3, 0.5, 0.98)


def test_generate_command_samples_identities_in_the_models_domain(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """`facegen generate --preset demo-orl --random-identities`: identities from the Gaussian
    of its training identities, each below the leakage threshold to every training photo."""
    from facegen.app.cli.main import main
    from facegen.image_io import load_image
    from facegen.pipelines.generation.job import _random_identities
    from facegen.pipelines.generation.request import RandomIdentities

    monkeypatch.setenv("FACEGEN_OFFLINE", "1")
    out = tmp_path / "gen"
    args = ["generate", "--preset", DEMO_ORL_NAME, "--random-identities", "2"]
    args += ["--num-images", "1", "--steps", "4", "--out", str(out), "--no-watermark"]
    assert main(args) == 0, capsys.readouterr().err
    pngs = sorted(out.rglob("*.png"))
    assert len(pngs) == 2 and load_image(pngs[0]).shape == (64, 64, 3)
    pipe = from_preset(DEMO_ORL_NAME, with_analyzer=False)
    bank = pipe.identity_bank[0]
    ids = np.stack([i.embedding.vector for i in _random_identities(RandomIdentities(8), pipe, 0)])
    ids /= np.linalg.norm(ids, axis=1, keepdims=True)
    assert float((ids @ bank.T).max()) < 0.925
    mean = bank.mean(0) / np.linalg.norm(bank.mean(0))
    assert float((ids @ mean).min()) > 0.5  # near the training identities, not anywhere


def test_swaps_a_face_in_a_real_photo(pipe, dlib_analyzer) -> None:
    """Face edits (the Swap tab) run on it offline: latent blending on its space-to-depth
    latents regenerates the largest face of t1.jpg with another person's identity and keeps
    every pixel outside the face's mask."""
    from facegen.image_io import load_image
    from facegen.pipelines.editing.options import EditOptions
    from facegen.pipelines.editing.swap import swap
    from facegen.samples import sample_path

    vectors, _ = pipe.identity_bank
    target = sample_path("t1")
    ident = IdentityEmbedding(vectors[0], "dlib-resnet-v1", True)
    options = EditOptions(seed=3, num_inference_steps=10)
    out = swap(target, ident, pipe, dlib_analyzer, "largest", options)
    before = load_image(target)
    assert out.image.shape == before.shape and len(out.faces) == 1
    face = out.faces[0]
    assert face.edit.skipped is None and face.edit.metadata["method"] == "repaint"
    outside = out.mask == 0
    assert np.array_equal(out.image[outside], before[outside])
    inside = out.mask > 0.5
    assert inside.sum() > 1000
    assert np.abs(out.image[inside].astype(int) - before[inside]).mean() > 5


# ------------------------------------------------------------------ its landmark ControlNet

#: yaw correlation (requested vs measured, see ``_yaw``) over t1's six faces and their
#: mirror images with this test's settings: 0.84 when the ControlNet shipped; the generator
#: alone gives -0.28 (its memorised poses, whatever is asked)
YAW_R_FLOOR = 0.6


def _yaw(points: np.ndarray) -> float:
    """The nose tip's horizontal offset from the outer eye corners' midpoint, over their
    distance (68-point iBUG layout)."""
    eyes = (points[36] + points[45]) / 2
    return float((points[30, 0] - eyes[0]) / np.linalg.norm(points[36] - points[45]))


def test_the_shipped_controlnet_turns_faces_into_poses_it_never_saw(dlib_analyzer) -> None:
    """``demo-orl-controlnet`` offline: t1.jpg's six faces and their mirror images (yaw of
    both signs) as pose references, never seen in training. The requested and the generated
    yaw (dlib's 68 points on the ×4 enlarged output, predicted in one fixed box so the
    measurement knows nothing of the request) correlate above the floor measured when it
    shipped; the plain generator, same identities and seeds, does not follow."""
    import cv2
    from PIL import Image

    from facegen.backends import LANDMARKERS
    from facegen.control import render_landmarks68, transfer_landmarks
    from facegen.image_io import load_image
    from facegen.pipelines.generation.preset_builders import demo_orl_controlnet_dir
    from facegen.samples import sample_path
    from facegen.types import Face

    folder = demo_orl_controlnet_dir()
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 8 * 1024 * 1024
    assert "AT&T Laboratories Cambridge" in (folder / "README.md").read_text()
    meta = json.loads((folder / "facegen_controlnet.json").read_text())
    assert meta["base_generator"] and meta["encoder_id"] == "dlib-resnet-v1"
    pipe = from_preset(DEMO_ORL_CONTROLNET_NAME, with_analyzer=False)
    plain = from_preset(DEMO_ORL_NAME, with_analyzer=False)
    for p in (pipe, plain):
        p.set_progress_bar_config(disable=True)
    assert pipe.preset_info.controlnet == "built-in"
    assert pipe.model_ids["controlnet"] == f"facegen/{DEMO_ORL_CONTROLNET_NAME}"
    image = load_image(sample_path("t1"))
    faces = [f for f in dlib_analyzer.analyze(image, embed=False) if f.landmarks is not None]
    mirrored = [f for f in dlib_analyzer.analyze(image[:, ::-1].copy(), embed=False)]
    points = [transfer_landmarks(f, size=64)[:, :2] for f in faces + mirrored]
    assert len(points) == 12
    maps = [Image.fromarray(np.asarray(render_landmarks68(p, 64))) for p in points]
    vectors, _ = pipe.identity_bank
    ids = [IdentityEmbedding(vectors[10 * k], "dlib-resnet-v1", True) for k in range(12)]
    kw = {"seeds": list(range(12)), "num_inference_steps": 10, "output_type": "np"}
    made = pipe(ids, control_image=maps, **kw).images
    alone = plain(ids, **kw).images

    landmarker = LANDMARKERS.create("dlib68")
    # one box for every image: the ArcFace template's face box at 64 px (the one
    # benchmarks/controlnet_pose.py measures in), in the ×4 image's pixels
    box = np.array([12.8, 18.4, 51.1, 67.9], np.float32) * 4

    def measured(images: np.ndarray) -> list[float]:
        out = []
        for img in images:
            big = cv2.resize((img * 255).round().astype(np.uint8), (256, 256))
            face = Face(bbox=box, score=1.0, kps5=np.zeros((5, 2), np.float32))
            out.append(_yaw(landmarker.annotate(big, [face])[0].landmarks[:, :2]))
        return out

    wanted = [_yaw(p) for p in points]
    r = float(np.corrcoef(wanted, measured(made))[0, 1])
    r_alone = float(np.corrcoef(wanted, measured(alone))[0, 1])
    assert r > YAW_R_FLOOR, (r, r_alone)
    assert r > r_alone + 0.3, (r, r_alone)
