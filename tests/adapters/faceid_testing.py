"""Helpers shared by the IP-Adapter-FaceID tests (``test_faceid_*.py``): a tiny SD1.5-shaped
pipeline, a seeded 2-step run of it, and random buffalo_l identities.

Checkpoints in those tests are random (``faceid_state_dict_for``) with the real key names and
shapes; they prove the file format and the plumbing, never image quality.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import torch

from facegen import IdentityEmbedding
from facegen.pipelines.generation.tiny import TINY_IMAGE_SIZE, tiny_components

PROMPT = "a photo of a person"


@functools.cache
def components() -> dict:
    return tiny_components(0)


def make_pipe():
    """A fresh tiny SD1.5-shaped pipeline (deep copies of one seeded set of components)."""
    from diffusers import StableDiffusionPipeline

    c = copy.deepcopy(components())
    pipe = StableDiffusionPipeline(
        **c, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@functools.cache
def _prompt_embeds() -> tuple[torch.Tensor, torch.Tensor]:
    """``PROMPT`` and the empty negative prompt, encoded once (the adapters leave the text
    encoder alone, so every pipeline here would compute the same)."""
    with torch.no_grad():
        return make_pipe().encode_prompt(PROMPT, "cpu", 1, True)


def run(pipe, embeds=None, *, seed: int = 0, **kw) -> np.ndarray:
    """2 steps at 64×64, seeded; ``embeds`` is ``ip_adapter_image_embeds``."""
    extra = {} if embeds is None else {"ip_adapter_image_embeds": embeds}
    prompt_embeds, negative_prompt_embeds = _prompt_embeds()
    return pipe(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_prompt_embeds,
        num_inference_steps=2,
        height=TINY_IMAGE_SIZE,
        width=TINY_IMAGE_SIZE,
        output_type="np",
        generator=torch.Generator().manual_seed(seed),
        **extra,
        **kw,
    ).images


def buffalo(seed: int = 0, n: int = 1) -> list[IdentityEmbedding]:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, 512)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return [IdentityEmbedding(v, "arcface-onnx/buffalo_l") for v in vecs]
