"""The ControlNet variant of IDToFacePipeline with a tiny random ControlNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

from facegen.align import arcface_template
from facegen.control import render_landmarks68
from facegen.pipelines.generation.id_to_face import IDToFaceControlNetPipeline, IDToFacePipeline
from facegen.pipelines.generation.tiny import tiny_components

STEPS = 2


def _face68(shift: float) -> np.ndarray:
    """A plausible 68-point layout (ellipse jaw, eyes, nose, mouth) in a 64×64 frame."""
    t = np.linspace(np.pi * 0.1, np.pi * 0.9, 17)
    jaw = np.stack([32 - 22 * np.cos(t), 30 + 24 * np.sin(t)], 1)
    rest = np.array([[20 + i * 1.5 + shift, 20 + (i % 5)] for i in range(51)])
    return np.concatenate([jaw, rest])


@pytest.fixture(scope="module")
def parts():
    c = tiny_components(seed=1)
    torch.manual_seed(5)
    controlnet = ControlNetModel.from_unet(c["unet"], conditioning_embedding_out_channels=(16, 32))
    # random (not zero) output blocks, so that the control image matters in this test double
    zero_init = [
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
        controlnet.controlnet_cond_embedding.conv_out,
    ]
    for blk in zero_init:
        torch.nn.init.normal_(blk.weight, std=0.5)
    c["controlnet"] = controlnet.eval()
    return c


@pytest.fixture(scope="module")
def pipe(parts):
    p = IDToFaceControlNetPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    p.set_progress_bar_config(disable=True)
    return p


def test_same_as_diffusers_controlnet_pipeline(pipe, parts) -> None:
    ids = np.random.default_rng(0).normal(size=(2, 512)).astype(np.float32)
    ctrl = render_landmarks68(_face68(0), 64, output_type="pil")
    out = pipe(ids, control_image=ctrl, seeds=[1, 2], num_inference_steps=STEPS, output_type="np")
    ref_pipe = StableDiffusionControlNetPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    ref_pipe.set_progress_bar_config(disable=True)
    ref = ref_pipe(
        prompt_embeds=pipe.id_encoder.encode(ids),
        negative_prompt_embeds=pipe.id_encoder.encode_unconditional(2),
        image=[ctrl, ctrl],
        num_inference_steps=STEPS,
        guidance_scale=3.0,
        height=64,
        width=64,
        output_type="np",
        generator=[torch.Generator().manual_seed(s) for s in (1, 2)],
    ).images
    np.testing.assert_allclose(out.images, ref, atol=1e-6)


def test_control_image_matters_and_broadcasts(pipe) -> None:
    ids = np.random.default_rng(1).normal(size=(2, 512)).astype(np.float32)
    a = render_landmarks68(_face68(0), 64, output_type="pil")
    b = render_landmarks68(_face68(12), 64, output_type="pil")
    kw = {"num_inference_steps": STEPS, "output_type": "np", "num_images_per_identity": 2}
    per_id = pipe(ids, control_image=[a, b], seeds=[1, 2, 3, 4], **kw).images
    per_img = pipe(ids, control_image=[a, a, b, b], seeds=[1, 2, 3, 4], **kw).images
    np.testing.assert_allclose(per_id, per_img, atol=1e-6)
    only_a = pipe(ids, control_image=a, seeds=[1, 2, 3, 4], **kw).images
    np.testing.assert_allclose(only_a[:2], per_id[:2], atol=1e-6)
    assert np.abs(only_a[2:] - per_id[2:]).mean() > 1e-4  # b ≠ a changes identity 1's images
    with pytest.raises(ValueError, match="one per identity"):
        pipe(ids, control_image=[a, b, a], seeds=[1, 2, 3, 4], **kw)
    with pytest.raises(ValueError, match="`control_image` is required"):
        pipe(ids, seeds=[1, 2, 3, 4], **kw)


def test_plain_pipeline_refuses_control_images() -> None:
    p = IDToFacePipeline(
        **tiny_components(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    kps = arcface_template(64)
    with pytest.raises(ValueError, match="needs the ControlNet pipeline"):
        p(np.ones((1, 512)), control_image=kps, num_inference_steps=1)
