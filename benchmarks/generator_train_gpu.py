"""Training throughput of the full-size Arc2Face recipe on a GPU (random weights: true
timings, nothing learned): images/s and peak memory per GPU at 512×512.

The model is the one ``facegen train generator --base-model <SD1.5 folder>`` trains: SD1.5's
UNet (860 M parameters, its published config) and a CLIP ViT-L/14 text encoder (123 M) trained
jointly, the identity written into the ``id`` token of "photo of a id person"
(:class:`~facegen.adapters.arc2face.Arc2FaceIDEncoder`, 512-D ArcFace vectors zero-padded to
768) through facegen's own generator module. One step is what the training loop does per
batch: cached latents (a 512² crop is 64×64×4 after the VAE; the face cache encodes each photo
once, so the VAE is not in the step) with a fresh noise sample and timestep, 10 % of the
identities dropped to the null identity, the ε-prediction loss under mixed precision (autocast;
loss scaling for fp16, as Accelerate does), AdamW over both parts, gradient clipping at 1.0,
and the EMA update of both parts (diffusers' ``EMAModel``, as ``use_ema`` does; ``--no-ema``
leaves it out). Variants: weight dtype × gradient checkpointing × batch size; a variant that
runs out of memory is reported as such.

Usage (needs CUDA)::

    python benchmarks/generator_train_gpu.py [--batch 8,16,32] [--dtype bf16,fp16]
        [--checkpointing off,on] [--steps 10] [--warmup 3] [--no-ema] [--json OUT]

``--tiny`` runs the same code on a tiny configuration on whatever device there is (the CPU
here): it checks the script, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path
from typing import Any

import torch
from generation_gpu import UNET

#: CLIP ViT-L/14's text encoder (SD1.5's ``text_encoder`` config).
TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
}
#: SD1.5's training noise schedule (its ``scheduler`` config, ε-prediction).
SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}
TINY_UNET = {
    **UNET,
    "sample_size": 8,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "cross_attention_dim": 64,
    "attention_head_dim": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
}
TINY_TEXT = {
    **TEXT,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def build(tiny: bool) -> tuple[Any, Any, Any, Any, int]:
    """``(unet, text_encoder, id_encoder, scheduler, identity_dim)``, float32, random."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from facegen.adapters.arc2face import Arc2FaceIDEncoder
    from facegen.pipelines.generation.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    text_cfg = TINY_TEXT if tiny else TEXT
    text = CLIPTextModel(
        CLIPTextConfig(
            **text_cfg,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(**(TINY_UNET if tiny else UNET))
    dim = 32 if tiny else 512
    encoder = Arc2FaceIDEncoder(text, tok, identity_dim=dim)
    return unet, text, encoder, DDPMScheduler(**SCHEDULE), dim


def run_variant(
    batch: int, dtype: str, checkpointing: bool, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Time ``args.steps`` training steps after ``args.warmup``; images/s and peak memory."""
    from diffusers.training_utils import EMAModel

    from facegen.compat import enable_checkpointing
    from facegen.training.diffusion.generator import _generator_module
    from facegen.training.diffusion.objective import diffusion_loss, noisy_latents

    cuda = device.type == "cuda"
    unet, text, encoder, scheduler, dim = build(args.tiny)
    for part in (unet, text):
        part.to(device).train().requires_grad_(True)
    if checkpointing:
        unet.enable_gradient_checkpointing()
        enable_checkpointing(text)
    model = _generator_module(encoder, unet)
    params = [*unet.parameters(), *text.parameters()]
    optimizer = torch.optim.AdamW(
        [{"params": list(unet.parameters())}, {"params": list(text.parameters())}], lr=1e-5
    )
    ema = None if args.no_ema else EMAModel(params, decay=0.9999)  # one float32 copy
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "fp16")
    side = unet.config.sample_size
    channels = unet.config.in_channels

    def step() -> float:
        latents = torch.randn(batch, channels, side, side, device=device)
        ids = torch.nn.functional.normalize(torch.randn(batch, dim, device=device), dim=1)
        ids = ids * (torch.rand(batch, 1, device=device) >= 0.1)
        with torch.autocast(device.type, dtype=DTYPES[dtype], enabled=dtype != "fp32"):
            noisy, t, target = noisy_latents(scheduler, latents)
            pred = model(noisy, t, ids)
        loss = diffusion_loss(pred.float(), target, t, scheduler, None).mean()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(params)
        return float(loss.detach())

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    sync()
    dt = time.perf_counter() - t0
    n_params = sum(p.numel() for p in params)
    out = {
        "batch": batch,
        "dtype": dtype,
        "gradient_checkpointing": checkpointing,
        "ema": ema is not None,
        "images_per_s": batch * args.steps / dt,
        "s_per_step": dt / args.steps,
        "params_millions": n_params / 1e6,
        "loss_finite": all(map(lambda x: x == x and abs(x) != float("inf"), losses)),
    }
    if cuda:
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out  # the models go with this frame: main() collects them before the next


def _release(cuda: bool) -> None:
    """Free the last variant's models and optimizer state before the next is built."""
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", default="8,16,32", help="batch sizes per GPU")
    ap.add_argument("--dtype", default="bf16,fp16", help=f"mixed precision: {', '.join(DTYPES)}")
    ap.add_argument("--checkpointing", default="off,on", help="gradient checkpointing: off,on")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--no-ema", action="store_true", help="leave the EMA update out")
    ap.add_argument("--tiny", action="store_true", help="tiny configuration (checks the script)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    batches = [int(b) for b in _list(args.batch)]
    dtypes = _list(args.dtype)
    ckpts = _list(args.checkpointing)
    if any(d not in DTYPES for d in dtypes) or any(c not in ("off", "on") for c in ckpts):
        ap.error(f"--dtype takes {', '.join(DTYPES)}; --checkpointing takes off,on")
    if args.steps < 1 or args.warmup < 0 or min(batches) < 1:
        ap.error("--steps and every batch must be >= 1, --warmup >= 0")
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        raise SystemExit("this benchmark needs a CUDA GPU (--tiny checks it on the CPU)")
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}", flush=True)
    print(
        "| dtype | checkpointing | batch | images/s | s/step | peak GiB |\n"
        "|---|---|---|---|---|---|",
        flush=True,
    )
    rows = []
    for dtype in dtypes:
        for ckpt in ckpts:
            for batch in batches:
                try:
                    r = run_variant(batch, dtype, ckpt == "on", args, device)
                except torch.OutOfMemoryError:
                    r = {"batch": batch, "dtype": dtype, "gradient_checkpointing": ckpt == "on"}
                    r["out_of_memory"] = True
                    _release(cuda)
                    print(f"| {dtype} | {ckpt} | {batch} | out of memory | | |", flush=True)
                    rows.append(r)
                    continue
                peak = f"{r['peak_gib']:.1f}" if "peak_gib" in r else "—"
                print(
                    f"| {dtype} | {ckpt} | {batch} | {r['images_per_s']:.2f} | "
                    f"{r['s_per_step']:.3f} | {peak} |",
                    flush=True,
                )
                if not r["loss_finite"]:
                    print(f"  (a loss was not finite in {dtype})", flush=True)
                rows.append(r)
                _release(cuda)
    if rows and "params_millions" in rows[0]:
        print(f"trained parameters: {rows[0]['params_millions']:.0f} M (UNet + text encoder)")
    if args.json:
        args.json.write_text(json.dumps({"device": str(device), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
