"""Masked identity edits (edit_faces, swap, reenact, the anonymize hook) with tiny random
models on real photos: the generated pixels are noise, the plumbing is what is tested."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facegen.align import align_face
from facegen.analyzer import FaceAnalyzer
from facegen.base import IdentityEncoder
from facegen.control import render_landmarks68, transfer_landmarks
from facegen.errors import FacegenError
from facegen.image_io import load_image
from facegen.masks import face_mask, faces_mask
from facegen.pipelines.editing.anonymize import AnonymizeOptions, anonymize_image
from facegen.pipelines.editing.face_edit import DEFAULT_MASK, EditOptions, edit_faces, reenact
from facegen.pipelines.editing.swap import embed_at, make_replace_face, swap
from facegen.pipelines.generation.inpaint import (
    IDTextToFaceControlNetInpaintPipeline,
    IDTextToFaceInpaintPipeline,
    masked_generate,
)
from facegen.pipelines.generation.presets import PRESETS, from_preset
from facegen.samples import sample_path
from facegen.types import AlignedFace, IdentityEmbedding

STEPS = 2
FAST = EditOptions(num_inference_steps=STEPS)
ONE = EditOptions(num_inference_steps=1)


class ProjectionEncoder(IdentityEncoder):
    """Test double for Arc2Face's ArcFace: a fixed random projection of the 112 ArcFace crop
    (so its vectors carry the tiny pipeline's encoder id)."""

    encoder_id = "arcface-onnx/arc2face"
    dim = 512
    input_size = 112

    def __init__(self) -> None:
        super().__init__()
        self.w = np.random.default_rng(0).normal(size=(28 * 28 * 3, 512)).astype(np.float32)

    def align(self, image: np.ndarray, face) -> AlignedFace:
        return align_face(image, face, size=112)

    def _forward(self, crops: np.ndarray) -> np.ndarray:
        small = crops.reshape(len(crops), 28, 4, 28, 4, 3).mean((2, 4)) / 255.0 - 0.5
        return small.reshape(len(crops), -1).astype(np.float32) @ self.w


def _quiet(p):
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def pipe():
    return _quiet(from_preset("tiny"))


@pytest.fixture(scope="module")
def cn_pipe():
    return _quiet(from_preset("tiny-controlnet"))


@pytest.fixture(scope="module")
def inpaint_pipe():
    return _quiet(from_preset("tiny-inpaint"))


@pytest.fixture(scope="module")
def t1() -> np.ndarray:
    return load_image(sample_path("t1"))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return load_image(sample_path("astronaut"))


@pytest.fixture(scope="module")
def t1_faces(t1, dlib_analyzer):
    faces = dlib_analyzer.detect(t1)
    assert len(faces) == 6
    return faces


@pytest.fixture(scope="module")
def conditioning(dlib_analyzer) -> FaceAnalyzer:
    """dlib detection + the projection encoder standing in for the conditioning encoder."""
    return FaceAnalyzer(dlib_analyzer.detector, dlib_analyzer.landmarker, ProjectionEncoder())


def _ids(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 512)).astype(np.float32)


# ----------------------------------------------------------------------------- edit_faces


def test_pixels_outside_every_mask_keep_their_bytes(pipe, t1, t1_faces) -> None:
    res = edit_faces(t1, t1_faces, _ids(6), pipe, EditOptions(seed=0, num_inference_steps=STEPS))
    outside = res.mask == 0
    np.testing.assert_array_equal(res.image[outside], t1[outside])
    # the applied masks lie within the requested ones (cut at the crop border, never grown)
    wanted = faces_mask(t1_faces, t1.shape[:2], DEFAULT_MASK)
    assert np.all(res.mask <= wanted + 1e-6)
    assert 0.4 < (res.mask > 0).sum() / (wanted > 0).sum() <= 1.0
    inside = res.mask >= 0.99
    assert np.abs(res.image[inside].astype(int) - t1[inside]).mean() > 5  # really edited
    assert [f.index for f in res.faces] == list(range(6))
    assert [f.seed for f in res.faces] == list(range(6))
    for f in res.faces:
        assert f.skipped is None and 0.5 < f.coverage <= 1.0
        assert f.crop.shape == (64, 64, 3) and f.control is None
        assert f.metadata["method"] == "repaint" and f.metadata["template"] == "arcface"
        assert f.to_dict()["metadata"]["seed"] == f.seed


def test_faces_at_the_border_and_overlapping_faces(pipe, t1, t1_faces) -> None:
    # a face cut by the image border: pad nothing, crop the photo through the face
    face = t1_faces[1]  # the leftmost face (x ≈ 67–176)
    x_cut = int(face.bbox[0] + face.width / 2)
    cut = np.ascontiguousarray(t1[:, x_cut:])
    moved = face.replace(
        bbox=face.bbox - [x_cut, 0, x_cut, 0],
        kps5=face.kps5 - [x_cut, 0],
        landmarks=face.landmarks - [x_cut, 0],
    )
    res = edit_faces(cut, [moved], _ids(1), pipe, FAST, seeds=[1])
    assert res.image.shape == cut.shape and res.faces[0].skipped is None
    np.testing.assert_array_equal(res.image[res.mask == 0], cut[res.mask == 0])
    # the same face twice: the second edit sees the first and wins where the masks overlap
    twice = edit_faces(t1, [face, face], _ids(2), pipe, FAST, seeds=[1, 2])
    second = edit_faces(t1, [face], _ids(2)[1:], pipe, FAST, seeds=[2])
    full = twice.mask >= 0.99
    assert np.abs(twice.image[full].astype(int) - second.image[full]).mean() > 0  # saw edit 1
    np.testing.assert_array_equal(twice.image[twice.mask == 0], t1[twice.mask == 0])


def test_per_face_seeds_are_reproducible(pipe, t1, t1_faces) -> None:
    faces = [t1_faces[0], t1_faces[1]]  # far apart: neither crop reaches the other face
    a = edit_faces(t1, faces, _ids(2), pipe, FAST, seeds=[5, 6])
    b = edit_faces(t1, faces, _ids(2), pipe, EditOptions(seed=5, num_inference_steps=STEPS))
    np.testing.assert_array_equal(a.image, b.image)
    # face 1 alone with its seed gives the same pixels as in the two-face run
    alone = edit_faces(t1, [faces[1]], _ids(2)[1:], pipe, FAST, seeds=[6])
    region = alone.mask > 0
    np.testing.assert_array_equal(a.image[region], alone.image[region])
    other = edit_faces(t1, [faces[1]], _ids(2)[1:], pipe, FAST, seeds=[7])
    assert np.abs(other.image[region].astype(int) - alone.image[region]).mean() > 1
    # no seeds: drawn, recorded, and they regenerate the result
    drawn = edit_faces(t1, [faces[1]], _ids(2)[1:], pipe, FAST)
    again = edit_faces(t1, [faces[1]], _ids(2)[1:], pipe, FAST, seeds=[drawn.faces[0].seed])
    np.testing.assert_array_equal(drawn.image, again.image)


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_latent_blending_keeps_the_unmasked_latents_on_the_noised_original(
    pipe, t1, t1_faces, strength
) -> None:
    crops = np.stack([align_face(t1, f, size=64).image for f in t1_faces[:2]])
    masks = np.zeros((2, 64, 64), np.float32)
    masks[0, 16:48, 16:48] = 1.0
    masks[1, 8:40, 20:60] = 0.5
    seen: list[tuple[int, torch.Tensor]] = []

    def record(p, i, t, kw):
        seen.append((i, kw["latents"].clone()))
        return kw

    out = masked_generate(
        pipe,
        crops,
        masks,
        _ids(2),
        seeds=[3, 4],
        strength=strength,
        num_inference_steps=4,
        callback_on_step_end=record,
    )
    assert [i for i, _ in seen] == list(range(len(pipe.scheduler.timesteps)))
    assert len(seen) == (4 if strength == 1.0 else 2)
    ts = pipe.scheduler.timesteps
    keep = ~out.latent_mask.expand_as(out.image_latents)
    assert keep.any() and (~keep).any()
    for i, lat in seen:
        last = i + 1 == len(ts)
        expected = (
            out.image_latents
            if last
            else pipe.scheduler.add_noise(out.image_latents, out.noise, ts[i + 1 : i + 2].repeat(2))
        )
        torch.testing.assert_close(lat[keep], expected[keep], rtol=0, atol=0)
        assert (lat[~keep] - expected[~keep]).abs().mean() > 1e-2  # the model's, inside
    # the latent mask covers every masked pixel; the composite keeps the rest byte-exact
    cover = out.latent_mask[:, 0].repeat_interleave(2, 1).repeat_interleave(2, 2).numpy()
    assert np.all(cover[masks > 0])
    for k in range(2):
        np.testing.assert_array_equal(out.images[k][masks[k] == 0], crops[k][masks[k] == 0])
    assert out.metadata[0]["strength"] == strength and out.metadata[1]["seed"] == 4


def test_controlnet_variant_gets_the_target_landmark_map(cn_pipe, t1, t1_faces) -> None:
    conds: list[torch.Tensor] = []

    def grab(module, args, kwargs):
        conds.append(kwargs["controlnet_cond"].detach().clone())

    face = t1_faces[2]
    handle = cn_pipe.controlnet.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        res = edit_faces(t1, [face], _ids(1), cn_pipe, FAST, seeds=[0])
    finally:
        handle.remove()
    rec = res.faces[0]
    expected = render_landmarks68(face.landmarks, 64, matrix=rec.matrix)
    np.testing.assert_array_equal(rec.control, expected)
    assert rec.control.any() and rec.metadata["control"] == "landmarks"
    assert len(conds) == STEPS
    got = conds[0][-1].permute(1, 2, 0).numpy()  # (guidance-doubled batch) → HWC in [0, 1]
    np.testing.assert_allclose(got, expected / 255.0, atol=1e-6)
    np.testing.assert_array_equal(res.image[res.mask == 0], t1[res.mask == 0])
    with pytest.raises(ValueError, match="`control` must be 'landmarks'"):
        edit_faces(t1, [face], _ids(1), cn_pipe, EditOptions(control=None, num_inference_steps=1))
    no_lm = face.replace(landmarks=None, landmark_scheme=None)
    with pytest.raises(ValueError, match="68 iBUG landmarks"):
        edit_faces(t1, [no_lm], _ids(1), cn_pipe, EditOptions(num_inference_steps=1))


def test_inpainting_pipelines_with_a_9_channel_unet(inpaint_pipe, t1, t1_faces) -> None:
    assert isinstance(inpaint_pipe, IDTextToFaceInpaintPipeline)
    assert inpaint_pipe.unet.config.in_channels == 9
    ids = _ids(2)
    ids /= np.linalg.norm(ids, axis=1, keepdims=True)
    faces = t1_faces[:2]
    res = edit_faces(t1, faces, ids, inpaint_pipe, FAST, seeds=[1, 2])
    np.testing.assert_array_equal(res.image[res.mask == 0], t1[res.mask == 0])
    md = res.faces[0].metadata
    assert md["method"] == "inpaint" and md["template"] == "ffhq" and md["prompt"]
    assert md["pipeline"] == "IDTextToFaceInpaintPipeline" and md["preset"] == "tiny-inpaint"
    assert min(f.coverage for f in res.faces) > 0.9  # the FFHQ crop holds the whole mask
    again = edit_faces(t1, faces, ids, inpaint_pipe, FAST, seeds=[1, 2])
    np.testing.assert_array_equal(res.image, again.image)
    # strength < 1 runs fewer steps (diffusers' own rule)
    steps: list[int] = []
    edit_faces(
        t1,
        faces[:1],
        ids[:1],
        inpaint_pipe,
        EditOptions(num_inference_steps=4, strength=0.5),
        seeds=[1],
        callback_on_step_end=lambda p, i, t, kw: steps.append(i) or kw,
    )
    assert steps == [0, 1]
    # the ControlNet inpainting variant receives the landmark map as `control_image`
    cn = _quiet(from_preset("tiny-inpaint", controlnet=True))
    assert isinstance(cn, IDTextToFaceControlNetInpaintPipeline)
    conds: list[torch.Tensor] = []
    handle = cn.controlnet.register_forward_pre_hook(
        lambda m, a, kw: conds.append(kw["controlnet_cond"].clone()), with_kwargs=True
    )
    try:
        out = edit_faces(t1, faces[:1], ids[:1], cn, FAST, seeds=[3])
    finally:
        handle.remove()
    got = conds[0][-1].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, out.faces[0].control / 255.0, atol=1e-6)
    np.testing.assert_array_equal(out.image[out.mask == 0], t1[out.mask == 0])


def test_edit_inputs_are_checked(pipe, t1, t1_faces) -> None:
    face = t1_faces[0]
    with pytest.raises(ValueError, match="`seeds` must be one seed or one per face"):
        edit_faces(t1, [face], _ids(1), pipe, seeds=[1, 2])
    with pytest.raises(
        ValueError, match=r"`strength` must be a finite number in \(0, 1\], got 0.0"
    ):
        EditOptions(strength=0.0)
    with pytest.raises(ValueError, match=r"`crop_size` must be a multiple of 8, >= 16, got 20"):
        EditOptions(crop_size=20)
    with pytest.raises(ValueError, match="`template` must be one of None, 'arcface', 'ffhq'"):
        EditOptions(template="dlib")
    with pytest.raises(ValueError, match="`seed` must be an integer >= 0, got -1"):
        EditOptions(seed=-1)
    with pytest.raises(ValueError, match="needs a ControlNet pipeline"):
        edit_faces(t1, [face], _ids(1), pipe, EditOptions(control="landmarks"))
    with pytest.raises(ValueError, match="`faces` must be a non-empty list"):
        edit_faces(t1, [], _ids(1), pipe)
    with pytest.raises(ValueError, match="`identities` must be one or one per face"):
        edit_faces(t1, [face, face], _ids(3), pipe)
    with pytest.raises(ValueError, match="`masks` must be"):
        edit_faces(t1, [face], _ids(1), pipe, masks=[np.zeros((8, 8), np.float32)])
    with pytest.raises(ValueError, match="Arc2Face is identity-only"):
        edit_faces(t1, [face], _ids(1), pipe, EditOptions(prompt="a face", num_inference_steps=1))
    with pytest.raises(ValueError, match="`pipe` must be a facegen identity pipeline"):
        edit_faces(t1, [face], _ids(1), object())
    # a given mask outside the face's crop: skipped, and said so
    far = np.zeros(t1.shape[:2], np.float32)
    far[:5, :5] = 1.0
    res = edit_faces(t1, [face], _ids(1), pipe, masks=[far], seeds=[0])
    assert res.faces[0].skipped and np.array_equal(res.image, t1) and not res.mask.any()


# ----------------------------------------------------------------------------- swap, reenact


def test_swap_reports_similarities_to_source_and_target(
    pipe, t1, t1_faces, astronaut, dlib_analyzer, conditioning
) -> None:
    pipe.identity_analyzer = conditioning
    try:
        res = swap(
            t1,
            astronaut,
            pipe,
            dlib_analyzer,
            "largest",
            EditOptions(seed=4, num_inference_steps=STEPS),
            independent_analyzer=dlib_analyzer,
        )
        by_ref = swap(
            t1,
            conditioning.embed(astronaut),
            pipe,
            dlib_analyzer,
            ("reference", embed_at(dlib_analyzer, t1, [t1_faces[3]])[0], 0.99),
            EditOptions(seed=4, num_inference_steps=STEPS),
            independent_analyzer=dlib_analyzer,
        )
    finally:
        pipe.identity_analyzer = None
    assert res.num_detected == 6 and len(res.faces) == 1 and len(res.detected) == 6
    largest = max(t1_faces, key=lambda f: f.area)
    assert res.faces[0].detector_index == t1_faces.index(largest)
    assert res.faces[0].to_dict()["face"] == t1_faces.index(largest)
    assert tuple(res.faces[0].edit.bbox) == tuple(float(v) for v in largest.bbox)
    np.testing.assert_array_equal(res.image[res.mask == 0], t1[res.mask == 0])
    src, tgt = res.faces[0].source_similarity, res.faces[0].target_similarity
    assert set(src) == set(tgt) == {"arcface-onnx/arc2face", "dlib-resnet-v1"}
    for v in (*src.values(), *tgt.values()):
        assert v is not None and -1.0 <= v <= 1.0
    # the edit moved the face away from the person it replaced (noise from the tiny model)
    assert tgt["dlib-resnet-v1"] < dlib_analyzer.encoder.same_person_threshold
    # reference selection picks exactly the face the reference came from
    assert len(by_ref.faces) == 1
    assert tuple(by_ref.faces[0].edit.bbox) == tuple(float(v) for v in t1_faces[3].bbox)
    # a source given as an embedding has no photo for the independent encoder
    assert by_ref.faces[0].source_similarity["dlib-resnet-v1"] is None
    assert by_ref.faces[0].source_similarity["arcface-onnx/arc2face"] is not None
    assert by_ref.faces[0].to_dict()["target_similarity"]["dlib-resnet-v1"] is not None


def test_swap_errors(pipe, t1, t1_faces, dlib_analyzer) -> None:
    from facegen.errors import NoFaceDetectedError

    emb = IdentityEmbedding(np.eye(512, dtype=np.float32)[0], "arcface-onnx/arc2face")
    noise = np.random.default_rng(0).integers(0, 255, (120, 120, 3), dtype=np.uint8)
    with pytest.raises(NoFaceDetectedError, match="target image"):
        swap(noise, emb, pipe, dlib_analyzer)
    v = np.random.default_rng(1).normal(size=128).astype(np.float32)
    stranger = IdentityEmbedding(v / np.linalg.norm(v), "dlib-resnet-v1")
    with pytest.raises(FacegenError, match="no face of the target matches"):
        swap(t1, emb, pipe, dlib_analyzer, ("reference", stranger, 0.9), ONE)
    with pytest.raises(ValueError, match="must be one of the analyzers' encoders"):
        swap(t1, emb, pipe, dlib_analyzer, ("reference", emb, 0.5), ONE)
    with pytest.raises(FacegenError, match="no identity analyzer"):
        swap(t1, t1, pipe, dlib_analyzer, "all", ONE)


def test_reenact_puts_the_driving_pose_on_the_source(
    cn_pipe, pipe, astronaut, t1, dlib_analyzer
) -> None:
    res = reenact(
        astronaut,
        t1,
        cn_pipe,
        dlib_analyzer,
        EditOptions(seed=2, num_inference_steps=STEPS),
        source_identity=_ids(1)[0],
    )
    assert res.image.shape == astronaut.shape and len(res.faces) == 1
    np.testing.assert_array_equal(res.image[res.mask == 0], astronaut[res.mask == 0])
    driving = max(dlib_analyzer.detect(t1), key=lambda f: f.area)
    expected = render_landmarks68(transfer_landmarks(driving, size=64), 64)
    # the same points through another chain of float32 transforms: compare lit areas
    lit, want = res.faces[0].control.any(-1), expected.any(-1)
    assert (lit & want).sum() / (lit | want).sum() > 0.9
    source = dlib_analyzer.detect(astronaut)[0]
    own = render_landmarks68(source.landmarks, 64, matrix=res.faces[0].matrix).any(-1)
    assert (lit & own).sum() / (lit | own).sum() < 0.5  # not the source's own pose
    # the mask covers the source face (up to the crop's border) and the driving face's outline
    own_mask = face_mask(source, astronaut.shape[:2], DEFAULT_MASK) > 0
    applied = res.mask > 0
    assert (applied & own_mask).sum() / own_mask.sum() > 0.8
    assert (applied & ~own_mask).sum() > 100
    with pytest.raises(ValueError, match="must have a ControlNet"):
        reenact(astronaut, t1, pipe, dlib_analyzer, source_identity=_ids(1)[0])


# ----------------------------------------------------------------------------- anonymize hook


def test_anonymize_hook_retries_then_gives_up_with_a_reason(
    pipe, t1, t1_faces, dlib_analyzer, conditioning
) -> None:
    calls: list[int] = []

    def pseudonym(original, seed):
        calls.append(seed)
        assert original is not None and original.encoder_id == "arcface-onnx/arc2face"
        v = np.random.default_rng(seed).normal(size=512).astype(np.float32)
        return IdentityEmbedding(v / np.linalg.norm(v), "arcface-onnx/arc2face")

    pipe.identity_analyzer = conditioning
    try:
        hook = make_replace_face(
            pipe,
            dlib_analyzer,
            FAST,
            threshold=-0.99,
            max_tries=2,
            identity_fn=pseudonym,
            identity_threshold=1.0,
            check_face=False,
        )
        face = t1_faces[3]
        # the mask the anonymizer draws with its defaults
        mask = face_mask(face, t1.shape[:2], AnonymizeOptions().mask_spec())
        gen = hook(t1, face, mask)
        assert not gen.accepted and gen.verifier == "dlib-resnet-v1"
        assert gen.reason.startswith("no replacement passed in 2 tries")
        assert gen.reason.count("is not below -0.99") == 2
        assert len(calls) == 2 and len(set(calls)) == 2  # a new identity and seed per try
        assert gen.similarity is not None and gen.image.shape == t1.shape
        # through the anonymizer: the same face gets the same tries again (seeds come from
        # the face, not from a counter), then falls back to blur with the hook's reason
        opts = AnonymizeOptions(mode="generate", faces=3, fallback_mode="blur")
        res = anonymize_image(t1, dlib_analyzer, opts, replace_face=hook)
        assert calls[2:] == calls[:2]
        rec = res.faces[0]
        assert rec.fallback and rec.mode == "blur" and rec.fallback_reason == gen.reason
        # an accepting verifier threshold: the generated face is used
        ok = make_replace_face(
            pipe, dlib_analyzer, FAST, threshold=1.0, max_tries=2, check_face=False
        )
        res = anonymize_image(t1, dlib_analyzer, opts, replace_face=ok)
        rec = res.faces[0]
        assert rec.mode == "generate" and not rec.fallback and rec.verifier == "dlib-resnet-v1"
        assert rec.similarity is not None and rec.similarity < 1.0
        np.testing.assert_array_equal(res.image[res.mask == 0], t1[res.mask == 0])
        # a result the verifier's detector cannot find is refused (noise from the tiny model)
        strict = make_replace_face(pipe, dlib_analyzer, FAST, threshold=1.0, max_tries=1)
        gen = strict(t1, face, mask)
        assert not gen.accepted and "no face detected in the result" in gen.reason
        with pytest.raises(ValueError, match="independent of the conditioning"):
            make_replace_face(pipe, conditioning)
    finally:
        pipe.identity_analyzer = None
    with pytest.raises(ValueError, match="`max_tries` must be an integer >= 1, got 0"):
        make_replace_face(pipe, dlib_analyzer, max_tries=0)
    with pytest.raises(ValueError, match=r"`threshold` must be a finite number in \(-1, 1\]"):
        make_replace_face(pipe, dlib_analyzer, threshold=-1)


def test_anonymize_hook_samples_identities_far_from_the_original(
    pipe, t1, t1_faces, dlib_analyzer, conditioning, monkeypatch
) -> None:
    import facegen.pipelines.identities as identities

    seen: list[IdentityEmbedding] = []
    real = identities.sample_identities

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.extend(out.embeddings())
        return out

    monkeypatch.setattr(identities, "sample_identities", recording)
    monkeypatch.setattr(pipe, "identity_analyzer", conditioning)
    hook = make_replace_face(
        pipe,
        dlib_analyzer,
        ONE,
        threshold=1.0,
        max_tries=1,
        check_face=False,
        identity_threshold=0.05,
    )
    face = t1_faces[0]
    gen = hook(t1, face, face_mask(face, t1.shape[:2]))
    assert gen.accepted and len(seen) == 1
    original = embed_at(conditioning, t1, [face])[0]
    assert seen[0].encoder_id == "arcface-onnx/arc2face"
    assert seen[0].similarity(original) < 0.05


def test_presets_are_registered_and_the_real_one_names_its_weights(monkeypatch, tmp_path) -> None:
    from facegen import ModelNotAvailableError

    assert {"tiny-inpaint", "ip-adapter-faceid-inpaint-sd15"} <= set(PRESETS.names())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FACEGEN_HOME", str(tmp_path))
    with pytest.raises(ModelNotAvailableError, match="stable-diffusion-inpainting"):
        from_preset("ip-adapter-faceid-inpaint-sd15")
