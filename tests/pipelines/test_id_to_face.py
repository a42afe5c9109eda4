"""IDToFacePipeline with tiny random components: equivalence, seeds, metadata, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from facegen import IdentityEmbedding, IncompatibleEmbeddingError
from facegen.errors import FacegenError
from facegen.pipelines.generation.presets import from_preset, resolve_dtype

STEPS = 3


@pytest.fixture(scope="module")
def pipe():
    p = from_preset("tiny")
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def ids() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2, 512)).astype(np.float32)


def test_same_images_as_diffusers_given_the_same_embeddings(pipe, ids) -> None:
    """facegen adds nothing to the denoising: diffusers with our prompt_embeds gives the same."""
    out = pipe(
        ids,
        num_images_per_identity=2,
        seeds=[5, 6, 7, 8],
        num_inference_steps=STEPS,
        output_type="np",
    )
    sd = StableDiffusionPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        scheduler=pipe.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    sd.set_progress_bar_config(disable=True)
    cond = pipe.id_encoder.encode(ids).repeat_interleave(2, dim=0)
    uncond = pipe.id_encoder.encode_unconditional(4)
    ref = sd(
        prompt_embeds=cond,
        negative_prompt_embeds=uncond,
        num_inference_steps=STEPS,
        guidance_scale=3.0,
        height=64,
        width=64,
        output_type="np",
        generator=[torch.Generator().manual_seed(s) for s in (5, 6, 7, 8)],
    ).images
    np.testing.assert_array_equal(out.images, ref)


def test_seeds_reproduce_across_batching(pipe, ids) -> None:
    seeds = [11, 12, 13, 14]
    batched = pipe(
        ids, num_images_per_identity=2, seeds=seeds, num_inference_steps=STEPS, output_type="np"
    ).images
    chunked = pipe(
        ids,
        num_images_per_identity=2,
        seeds=seeds,
        num_inference_steps=STEPS,
        output_type="np",
        batch_size=1,
    ).images
    single = pipe(
        ids[1:], num_images_per_identity=1, seeds=[13], num_inference_steps=STEPS, output_type="np"
    ).images
    np.testing.assert_allclose(batched, chunked, atol=2e-3)
    np.testing.assert_allclose(batched[2], single[0], atol=2e-3)
    assert np.abs(batched[0] - batched[1]).mean() > 1e-3  # different seeds, different images
    again = pipe(
        ids, num_images_per_identity=2, seeds=seeds, num_inference_steps=STEPS, output_type="np"
    ).images
    np.testing.assert_array_equal(batched, again)


def test_identity_changes_the_image(pipe, ids) -> None:
    a = pipe(ids[:1], seeds=[3], num_inference_steps=STEPS, output_type="np").images
    b = pipe(ids[1:], seeds=[3], num_inference_steps=STEPS, output_type="np").images
    assert np.abs(a - b).mean() > 1e-3


def test_metadata_and_pil_output(pipe) -> None:
    emb = IdentityEmbedding(np.eye(512, dtype=np.float32)[3], "arcface-onnx/arc2face")
    out = pipe([emb, emb], num_images_per_identity=3, num_inference_steps=2)
    assert len(out.images) == 6 and out.images[0].size == (64, 64)
    md = out.metadata
    assert [m["identity_index"] for m in md] == [0, 0, 0, 1, 1, 1]
    assert [m["image_index"] for m in md] == [0, 1, 2, 0, 1, 2]
    assert all(isinstance(m["seed"], int) for m in md) and len({m["seed"] for m in md}) == 6
    assert md[0]["preset"] == "tiny" and md[0]["steps"] == 2 and md[0]["guidance_scale"] == 3.0
    assert md[0]["identity_encoder"] == ["arcface-onnx/arc2face"]
    # a recorded seed regenerates its image
    again = pipe([emb], seeds=[md[4]["seed"]], num_inference_steps=2)
    np.testing.assert_allclose(
        np.asarray(again.images[0], float), np.asarray(out.images[4], float), atol=2
    )


def test_callback_and_zero_identity_option(pipe, ids) -> None:
    steps: list[int] = []

    def cb(p, i, t, kw):
        steps.append(i)
        return kw

    pipe(ids[:1], seeds=[1], num_inference_steps=STEPS, output_type="np", callback_on_step_end=cb)
    assert steps == list(range(STEPS))
    a = pipe(ids[:1], seeds=[1], num_inference_steps=STEPS, output_type="np").images
    b = pipe(
        ids[:1],
        seeds=[1],
        num_inference_steps=STEPS,
        output_type="np",
        unconditional="zero-identity",
    ).images
    assert np.abs(a - b).mean() > 1e-4


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"id_embeds": np.ones((1, 128))}, IncompatibleEmbeddingError, r"\(N, 512\)"),
        ({"id_embeds": np.zeros((1, 512))}, IncompatibleEmbeddingError, "zero vector"),
        ({"id_embeds": np.full((1, 512), np.nan)}, IncompatibleEmbeddingError, "finite"),
        (
            {
                "id_embeds": [
                    IdentityEmbedding(np.eye(512, dtype=np.float32)[0], "arcface-onnx/buffalo_l")
                ]
            },
            IncompatibleEmbeddingError,
            "arcface-onnx/arc2face",
        ),
        ({"id_embeds": np.ones((2, 512)), "seeds": [1, 2, 3]}, ValueError, "one seed per image"),
        (
            {"id_embeds": np.ones((1, 512)), "num_inference_steps": 0},
            ValueError,
            "num_inference_steps",
        ),
        ({"id_embeds": np.ones((1, 512)), "height": 60}, ValueError, "multiple of 8"),
        ({"id_embeds": np.ones((1, 512)), "seeds": [-1]}, ValueError, "seeds"),
        ({"id_embeds": np.ones((1, 512)), "num_images_per_identity": 0}, ValueError, ">= 1"),
        ({}, ValueError, "exactly one of"),
        ({"id_embeds": np.ones((1, 512)), "prompt": "a cat"}, ValueError, "identity-only"),
    ],
)
def test_bad_inputs(pipe, kwargs, err, match) -> None:
    with pytest.raises(err, match=match):
        pipe(num_inference_steps=kwargs.pop("num_inference_steps", 1), **kwargs)


def test_photo_input_needs_an_analyzer(pipe, t1_path) -> None:
    with pytest.raises(FacegenError, match="no identity analyzer"):
        pipe(images=[t1_path], num_inference_steps=1)


def test_dtype_rules() -> None:
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="needs a GPU"):
        resolve_dtype("float16", "cpu")
    with pytest.raises(ValueError, match="`dtype` must be one of"):
        resolve_dtype("int8", "cpu")


def test_lcm_defaults_and_scheduler(tmp_path, monkeypatch) -> None:
    """enable_lcm on the tiny pipeline (a random LoRA stands in for LCM-LoRA's weights)."""
    from peft import LoraConfig

    from facegen.adapters.lora import enable_lcm, save_lora

    p = from_preset("tiny")
    p.set_progress_bar_config(disable=True)
    p.unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"]), "tmp"
    )
    lora = save_lora(p.unet, tmp_path / "lcm", adapter_name="tmp")
    p.unet.delete_adapters("tmp")
    call = enable_lcm(p, source=lora)
    p.default_steps, p.default_guidance = call["num_inference_steps"], call["guidance_scale"]
    steps: list[int] = []
    out = p(
        np.ones((1, 512), np.float32),
        seeds=[0],
        output_type="np",
        callback_on_step_end=lambda pp, i, t, kw: (steps.append(i), kw)[1],
    )
    assert type(p.scheduler).__name__ == "LCMScheduler" and len(steps) == 4
    assert out.metadata[0]["steps"] == 4 and out.metadata[0]["guidance_scale"] == 1.0


def test_lcm_preset_missing_weights_is_a_clear_error(monkeypatch, tmp_path) -> None:
    from facegen import ModelNotAvailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("FACEGEN_HOME", str(tmp_path))
    with pytest.raises(ModelNotAvailableError, match="FoivosPar/Arc2Face"):
        from_preset("arc2face-lcm")


def test_measure_identity_similarity_with_real_encoders(pipe, dlib_analyzer) -> None:
    from facegen.image_io import load_image
    from facegen.samples import sample_path

    astro = load_image(sample_path("astronaut"))
    mirrored = np.ascontiguousarray(astro[:, ::-1])
    noise = np.random.default_rng(0).integers(0, 255, astro.shape, dtype=np.uint8)
    pipe._independent_analyzer = dlib_analyzer
    old = pipe.identity_analyzer
    pipe.identity_analyzer = dlib_analyzer  # stands in for the conditioning encoder
    try:
        target = dlib_analyzer.embed(astro)
        sims = pipe.measure_identity_similarity([mirrored, noise], [target, target], [astro, astro])
    finally:
        pipe.identity_analyzer = old
    assert sims[0]["dlib-resnet-v1"] > 0.925  # same person, mirrored
    assert sims[1] == {"dlib-resnet-v1": None}  # no face in noise


def test_measure_identity_in_a_call_records_none_without_faces(pipe) -> None:
    class NoFace:
        class encoder:
            encoder_id = "arcface-onnx/arc2face"

        def embed(self, image, select="largest"):
            from facegen import NoFaceDetectedError

            raise NoFaceDetectedError(num_candidates=0)

    emb = IdentityEmbedding(np.eye(512, dtype=np.float32)[1], "arcface-onnx/arc2face")
    pipe.identity_analyzer = NoFace()
    try:
        out = pipe([emb], seeds=[0], num_inference_steps=1, measure_identity=True)
    finally:
        pipe.identity_analyzer = None
    assert out.metadata[0]["identity_similarity"] == {"arcface-onnx/arc2face": None}
    with pytest.raises(ValueError, match="needs IdentityEmbedding targets"):
        pipe(np.ones((1, 512)), seeds=[0], num_inference_steps=1, measure_identity=True)


def test_latents_are_split_per_chunk_and_single_embeddings_keep_metadata(pipe) -> None:
    lat = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    ids = np.random.default_rng(4).normal(size=(2, 512)).astype(np.float32)
    kw = {"num_inference_steps": 1, "output_type": "np", "seeds": [1, 2]}
    whole = pipe(ids, latents=lat, **kw).images
    chunked = pipe(ids, latents=lat, batch_size=1, **kw).images
    np.testing.assert_allclose(whole, chunked, atol=2e-3)
    with pytest.raises(ValueError, match="one row per image"):
        pipe(ids, latents=lat[:1], **kw)
    emb = IdentityEmbedding(np.eye(512, dtype=np.float32)[2], "arcface-onnx/arc2face")
    out = pipe(emb, seeds=[1], num_inference_steps=1, output_type="np")
    assert out.metadata[0]["identity_encoder"] == ["arcface-onnx/arc2face"]
    out = pipe((emb, emb), seeds=[1, 2], num_inference_steps=1, output_type="np")
    assert out.metadata[1]["identity_encoder"] == ["arcface-onnx/arc2face"]
