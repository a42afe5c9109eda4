"""IDTextToFacePipeline (IP-Adapter-FaceID) with tiny components and a random FaceID checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from facegen import IdentityEmbedding, IncompatibleEmbeddingError
from facegen.adapters.ip_adapter_faceid import faceid_state_dict_for, save_faceid_weights
from facegen.pipelines.generation.id_text_to_face import (
    DEFAULT_NEGATIVE_PROMPT,
    IDTextToFacePipeline,
)
from facegen.pipelines.generation.tiny import tiny_components, tiny_image_encoder

STEPS = 2
PROMPT = "photo of a smiling man"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    c = tiny_components(seed=2)
    path = tmp_path_factory.mktemp("faceid") / "ip-adapter-faceid_sd15.bin"
    save_faceid_weights(faceid_state_dict_for(c["unet"], seed=4, lora_rank=None), path)
    return path


def _pipe(cls, ckpt):
    p = cls(
        **tiny_components(seed=2),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def pipe(ckpt):
    p = _pipe(IDTextToFacePipeline, ckpt)
    p.load_faceid(ckpt.name, path=ckpt, lora=False)
    return p


def test_per_image_identities_match_diffusers(pipe, ckpt) -> None:
    ids = np.random.default_rng(0).normal(size=(2, 512)).astype(np.float32)
    ids /= np.linalg.norm(ids, axis=1, keepdims=True)
    out = pipe(
        ids,
        prompt=PROMPT,
        num_images_per_identity=2,
        seeds=[1, 2, 3, 4],
        num_inference_steps=STEPS,
        output_type="np",
    )
    assert out.images.shape == (4, 64, 64, 3) and out.metadata[0]["prompt"] == PROMPT
    ref = _pipe(StableDiffusionPipeline, ckpt)
    ref.load_ip_adapter(
        str(ckpt.parent), subfolder="", weight_name=ckpt.name, image_encoder_folder=None
    )
    # diffusers one image at a time, each with its own identity
    for k, ident in enumerate([0, 0, 1, 1]):
        pos = torch.from_numpy(ids[ident])[None, None]
        img = ref(
            prompt=PROMPT,
            # the official IPAdapterFaceID.generate() default: facegen's default too
            negative_prompt="monochrome, lowres, bad anatomy, worst quality, low quality",
            ip_adapter_image_embeds=[torch.cat([torch.zeros_like(pos), pos])],
            num_inference_steps=STEPS,
            guidance_scale=7.5,
            height=64,
            width=64,
            output_type="np",
            generator=torch.Generator().manual_seed(k + 1),
        ).images[0]
        np.testing.assert_allclose(out.images[k], img, atol=2e-3)


def test_default_negative_prompt_is_the_official_one(pipe) -> None:
    assert DEFAULT_NEGATIVE_PROMPT == "monochrome, lowres, bad anatomy, worst quality, low quality"
    ids = np.random.default_rng(2).normal(size=(1, 512)).astype(np.float32)
    kw = {"prompt": PROMPT, "seeds": [3], "num_inference_steps": STEPS, "output_type": "np"}
    default = pipe(ids, **kw).images
    official = pipe(ids, negative_prompt=DEFAULT_NEGATIVE_PROMPT, **kw).images
    np.testing.assert_array_equal(default, official)
    blurry = pipe(ids, negative_prompt=DEFAULT_NEGATIVE_PROMPT + ", blurry", **kw).images
    assert np.abs(default - blurry).max() > 1e-4


def test_identity_and_scale_matter(pipe) -> None:
    ids = np.random.default_rng(1).normal(size=(2, 512)).astype(np.float32)
    kw = {"prompt": PROMPT, "seeds": [5], "num_inference_steps": STEPS, "output_type": "np"}
    a, b = pipe(ids[:1], **kw).images, pipe(ids[1:], **kw).images
    assert np.abs(a - b).mean() > 1e-4
    pipe.set_identity_scale(0.0)
    try:
        a0, b0 = pipe(ids[:1], **kw).images, pipe(ids[1:], **kw).images
    finally:
        pipe.set_identity_scale(1.0)
    np.testing.assert_allclose(a0, b0, atol=1e-6)  # no identity left


def test_errors(pipe, ckpt) -> None:
    with pytest.raises(ValueError, match="`prompt` must be a non-empty string"):
        pipe(np.ones((1, 512)), num_inference_steps=1)
    wrong = IdentityEmbedding(np.eye(512, dtype=np.float32)[0], "arcface-onnx/arc2face")
    with pytest.raises(IncompatibleEmbeddingError, match="buffalo_l"):
        pipe([wrong], prompt=PROMPT, num_inference_steps=1)
    bare = _pipe(IDTextToFacePipeline, ckpt)
    with pytest.raises(ValueError, match="load_faceid"):
        bare(np.ones((1, 512)), prompt=PROMPT, num_inference_steps=1)


def test_faceid_preset_loads_the_published_layout_offline(tmp_path, monkeypatch) -> None:
    """The preset's real loading path: an SD1.5-layout folder + the .bin where the hub looks."""
    from facegen.pipelines.generation.presets import from_preset

    base = tmp_path / "sd15"
    parts = tiny_components(seed=2)
    StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    ).save_pretrained(base)
    home = tmp_path / "home"
    weights = home / "models" / "ip-adapter-faceid-sd15" / "ip-adapter-faceid_sd15.bin"
    weights.parent.mkdir(parents=True)
    save_faceid_weights(faceid_state_dict_for(parts["unet"], seed=4, lora_rank=4), weights)
    monkeypatch.setenv("FACEGEN_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = from_preset("ip-adapter-faceid-sd15", base=str(base), with_analyzer=False)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler" and pipe.default_steps == 30
    out = pipe(np.ones((1, 512)), prompt=PROMPT, seeds=[0], num_inference_steps=2, output_type="np")
    assert out.images.shape == (1, 64, 64, 3)
    assert out.metadata[0]["preset"] == "ip-adapter-faceid-sd15"
    assert "faceid_0" in str(pipe.unet.peft_config.keys())  # the checkpoint's own LoRA is active


def test_plusv2_per_image_identities_and_structure(tmp_path, t1_image, dlib_analyzer) -> None:
    """PlusV2 with a tiny CLIP image encoder: each image its own identity and face crop."""
    from facegen.adapters.ip_adapter_faceid import FACEID_PLUSV2_SD15_WEIGHTS
    from facegen.align import align_face

    clip = tiny_image_encoder()
    parts = tiny_components(seed=2)
    save_faceid_weights(
        faceid_state_dict_for(
            parts["unet"], seed=4, variant="plusv2", lora_rank=None, clip_embeddings_dim=48
        ),
        tmp_path / FACEID_PLUSV2_SD15_WEIGHTS,
    )
    pipe = _pipe(IDTextToFacePipeline, None)
    pipe.load_faceid(FACEID_PLUSV2_SD15_WEIGHTS, path=tmp_path, image_encoder=clip, lora=False)
    faces = dlib_analyzer.detect(t1_image)[:2]
    crops = [align_face(t1_image, f, size=224) for f in faces]
    ids = np.random.default_rng(3).normal(size=(2, 512)).astype(np.float32)
    ids /= np.linalg.norm(ids, axis=1, keepdims=True)
    kw = {"prompt": PROMPT, "num_inference_steps": STEPS, "output_type": "np"}
    both = pipe(ids, face_crops=crops, num_images_per_identity=2, seeds=[1, 2, 3, 4], **kw).images
    for k, i in enumerate([0, 0, 1, 1]):
        one = pipe(ids[i : i + 1], face_crops=[crops[i]], seeds=[k + 1], **kw).images[0]
        np.testing.assert_allclose(both[k], one, atol=2e-3)
    swapped = pipe(ids[:1], face_crops=[crops[1]], seeds=[1], **kw).images[0]
    assert np.abs(swapped - both[0]).mean() > 1e-4  # the crop (face structure) matters
    # the crops travel with each call, never on the pipeline: the next call has none
    assert pipe.needs_face_crops and "_face_crops" not in vars(pipe)
    with pytest.raises(ValueError, match="needs one face crop per identity"):
        pipe(ids, seeds=[1, 2], **kw)


def test_plusv2_preset_offline(tmp_path, monkeypatch) -> None:
    from facegen import ModelNotAvailableError
    from facegen.pipelines.generation.presets import from_preset

    base = tmp_path / "sd15"
    parts = tiny_components(seed=2)
    StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    ).save_pretrained(base)
    home = tmp_path / "home"
    weights = (
        home / "models" / "ip-adapter-faceid-plusv2-sd15" / "ip-adapter-faceid-plusv2_sd15.bin"
    )
    weights.parent.mkdir(parents=True)
    save_faceid_weights(
        faceid_state_dict_for(
            parts["unet"], seed=4, variant="plusv2", lora_rank=4, clip_embeddings_dim=48
        ),
        weights,
    )
    monkeypatch.setenv("FACEGEN_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match="models/image_encoder"):
        from_preset("ip-adapter-faceid-plusv2-sd15", base=str(base), with_analyzer=False)
    clip = tiny_image_encoder()
    pipe = from_preset(
        "ip-adapter-faceid-plusv2-sd15", base=str(base), with_analyzer=False, image_encoder=clip
    )
    assert pipe.faceid.variant == "plusv2" and pipe.preset_name == "ip-adapter-faceid-plusv2-sd15"
    # the published PlusV2 usage feeds CLIP a BGR crop; the preset can say otherwise
    assert pipe.faceid.face_crop_channel_order == "bgr"
    rgb = from_preset(
        "ip-adapter-faceid-plusv2-sd15",
        base=str(base),
        with_analyzer=False,
        image_encoder=clip,
        face_crop_channel_order="rgb",
    )
    assert rgb.faceid.face_crop_channel_order == "rgb"
    with pytest.raises(ValueError, match="`face_crop_channel_order` must be one of bgr, rgb"):
        from_preset(
            "ip-adapter-faceid-plusv2-sd15",
            base=str(base),
            with_analyzer=False,
            image_encoder=clip,
            face_crop_channel_order="BGR",
        )


def test_controlnet_variant_and_photo_errors(ckpt, t1_image, dlib_analyzer) -> None:
    from diffusers import ControlNetModel

    from facegen import AmbiguousFaceError, NoFaceDetectedError
    from facegen.control import render_instantid_kps
    from facegen.pipelines.generation.id_text_to_face import IDTextToFaceControlNetPipeline

    parts = tiny_components(seed=2)
    torch.manual_seed(1)
    cn = ControlNetModel.from_unet(parts["unet"], conditioning_embedding_out_channels=(16, 32))
    torch.nn.init.normal_(cn.controlnet_cond_embedding.conv_out.weight, std=0.5)
    for blk in [*cn.controlnet_down_blocks, cn.controlnet_mid_block]:
        torch.nn.init.normal_(blk.weight, std=0.5)
    pipe = IDTextToFaceControlNetPipeline(
        **parts,
        controlnet=cn.eval(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.load_faceid(ckpt.name, path=ckpt, lora=False)
    kps = np.array([[20, 24], [44, 24], [32, 36], [22, 46], [42, 46]], np.float32)
    a = render_instantid_kps(kps, 64, output_type="pil")
    b = render_instantid_kps(kps + 8, 64, output_type="pil")
    kw = {"prompt": PROMPT, "seeds": [3], "num_inference_steps": STEPS, "output_type": "np"}
    ia = pipe(np.ones((1, 512)), control_image=a, **kw).images
    ib = pipe(np.ones((1, 512)), control_image=b, **kw).images
    assert ia.shape == (1, 64, 64, 3) and np.abs(ia - ib).mean() > 1e-4
    # identities from photos: several faces without a selection, or none, are clear errors
    pipe.identity_analyzer = dlib_analyzer
    with pytest.raises(AmbiguousFaceError, match="got 6"):
        pipe(images=[t1_image], control_image=a, **kw)
    noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    with pytest.raises(NoFaceDetectedError, match="identity image 0"):
        pipe(images=[noise], control_image=a, **kw)
