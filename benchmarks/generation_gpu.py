"""Full-size SD1.5 generation throughput on a GPU (random weights: true timings, no images).

Builds the SD1.5 architecture (UNet 860M, VAE, CLIP ViT-L/14 text encoder) from its published
configs with random weights, in fp16, and times 512×512, 25 DPM-Solver++ steps with CFG:

(a) the authors' demo style: one pipeline call per image;
(b) facegen's batched path: ``IDToFacePipeline`` with one call for the whole batch, SDPA
    attention, channels_last, optionally ``torch.compile`` of the UNet;
(c) the LCM path: 4 steps, guidance 1 (no CFG), batched.

Reports images/s and peak GPU memory for each. Usage (needs CUDA):
``python benchmarks/generation_gpu.py --batch 8 [--compile]``
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

# SD1.5's published configs (stable-diffusion-v1-5/stable-diffusion-v1-5, unet/vae/text_encoder).
UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ),
}
VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512),
    "sample_size": 512,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}


def build(dtype: torch.dtype) -> Any:
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from facegen.pipelines.generation.id_to_face import IDToFacePipeline
    from facegen.pipelines.generation.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    sched = DPMSolverMultistepScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        algorithm_type="dpmsolver++",
    )
    pipe = IDToFacePipeline(
        vae=AutoencoderKL(**VAE),
        text_encoder=text,
        tokenizer=tok,
        unet=UNet2DConditionModel(**UNET),
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cuda", dtype)


def timed(fn: Any, n_images: int, repeats: int) -> tuple[float, float]:
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / repeats
    return n_images / dt, torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    pipe = build(torch.float16)
    ids = torch.nn.functional.normalize(torch.randn(args.batch, 512), dim=1).numpy()
    common = {"num_inference_steps": 25, "guidance_scale": 3.0, "output_type": "np"}
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")

    def per_image() -> Any:
        return [pipe(ids[i : i + 1], seeds=[i], **common) for i in range(args.batch)]

    ips, mem = timed(per_image, args.batch, args.repeats)
    print(f"(a) per-image loop     {ips:7.2f} images/s  peak {mem:5.1f} GiB")
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    if args.compile:
        pipe.unet = torch.compile(pipe.unet, mode="max-autotune", fullgraph=True)

    def batched() -> Any:
        return pipe(ids, seeds=list(range(args.batch)), **common)

    ips_b, mem_b = timed(batched, args.batch, args.repeats)
    print(
        f"(b) batched{' + compile' if args.compile else ''}  {ips_b:7.2f} images/s  peak {mem_b:5.1f} GiB  ({ips_b / ips:.2f}x)"
    )
    lcm = {"num_inference_steps": 4, "guidance_scale": 1.0, "output_type": "np"}
    ips_l, mem_l = timed(
        lambda: pipe(ids, seeds=list(range(args.batch)), **lcm), args.batch, args.repeats
    )
    print(f"(c) LCM 4 steps        {ips_l:7.2f} images/s  peak {mem_l:5.1f} GiB")


if __name__ == "__main__":
    main()
