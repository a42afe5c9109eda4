"""Tiny, randomly initialised Stable-Diffusion-1.5-shaped components (the ``tiny`` preset).

For demos, tests and benchmarks of the plumbing only: a tiny model is never evidence of
quality. The shapes follow SD1.5 where facegen relies on them (a CLIP text encoder with 77
positions whose hidden size can hold a 512-D identity, a UNet conditioned on it, a VAE with
4 latent channels), scaled down so that a 64×64 image takes milliseconds on a CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import CLIPTokenizer, CLIPVisionModelWithProjection

__all__ = [
    "TINY_IMAGE_SIZE",
    "tiny_components",
    "tiny_image_encoder",
    "tiny_inpaint_components",
    "tiny_tokenizer",
]

#: Output resolution of the tiny preset (the VAE downsamples by 2).
TINY_IMAGE_SIZE = 64

# A handful of whole words so that the prompts facegen uses are single tokens, like in
# CLIP's real vocabulary (Arc2Face replaces the token of "id").
_WORDS = ("photo", "of", "a", "id", "person", "face", "portrait", "smiling", "man", "woman")


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE (GPT-2/CLIP layout)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    extra = [b for b in range(256) if b not in keep]
    order = keep + extra
    codes = keep + [256 + i for i in range(len(extra))]
    return [chr(c) for _, c in sorted(zip(order, codes))]


def tiny_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP tokenizer over bytes plus a few whole words (``"id"`` is one token)."""
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append((parts[0], parts[1]))
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.setdefault(parts[0], len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def tiny_components(seed: int = 0, *, hidden_size: int = 512) -> dict[str, Any]:
    """``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler`` (DPM-Solver++), seeded.

    ``hidden_size`` is the text encoder's width and the UNet's cross-attention size; it must
    be at least the identity dimension (512 for ArcFace) for Arc2Face-style conditioning.
    """
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=TINY_IMAGE_SIZE // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=hidden_size,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=16,
        sample_size=TINY_IMAGE_SIZE,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=2,
            num_attention_heads=8,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        algorithm_type="dpmsolver++",
        solver_order=2,
        steps_offset=1,
    )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


def tiny_image_encoder(seed: int = 0) -> CLIPVisionModelWithProjection:
    """A tiny random CLIP vision encoder (hidden size 48, 32×32 input) standing in for
    IP-Adapter PlusV2's ViT-H/14 in tests and demos (``clip_embeddings_dim=48``)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    return CLIPVisionModelWithProjection(cfg).eval()


def tiny_inpaint_components(seed: int = 0, *, hidden_size: int = 512) -> dict[str, Any]:
    """:func:`tiny_components` with a 9-channel inpainting UNet (latents, mask, masked-image
    latents → 4 channels), the shape of ``stable-diffusion-v1-5/stable-diffusion-inpainting``."""
    import torch
    from diffusers import UNet2DConditionModel

    parts = tiny_components(seed, hidden_size=hidden_size)
    torch.manual_seed(seed + 4)
    unet = UNet2DConditionModel.from_config(parts["unet"].config, in_channels=9)
    parts["unet"] = unet.eval()
    return parts
