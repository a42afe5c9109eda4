"""Does a scratch generator's checkpoint use the identity yet? A probe for training runs.

Loads a checkpoint's EMA weights (``ema.safetensors``) into the ``"scratch"`` model built with
the run's sizes, and on cached training photos of three people (the run's face cache) prints:

* how far the text encoder's ``prompt_embeds`` differ between two people, per token position
  (at initialisation the ``id`` position and those after it differ by ~0.3–0.6 per entry;
  a text encoder that has washed the identity out shows ~0.01);
* the ε-prediction error on the cached latents at fixed timesteps, with each photo's own
  identity and with the null (zero) identity, and the mean absolute difference of the two
  predictions: a model that uses the identity predicts better with it, and differently.

Usage: ``python benchmarks/generator_probe.py RUN_DIR checkpoint-1000 [--channels 128,128]
[--text-width 128] [--text-layers 2] [--no-center]`` (the sizes and the centring of the run;
``RUN_DIR`` is ``facegen train generator``'s ``--out``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("checkpoint")
    ap.add_argument("--channels", default="128,128")
    ap.add_argument("--text-width", type=int, default=128)
    ap.add_argument("--text-layers", type=int, default=2)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--no-center", action="store_true")
    args = ap.parse_args()

    import torch
    from diffusers import DDPMScheduler
    from safetensors.torch import load_file

    from facegen.adapters.arc2face import Arc2FaceIDEncoder
    from facegen.training.diffusion.face_cache import FaceCache
    from facegen.training.diffusion.generator import GeneratorTrainConfig, scratch_components

    cfg = GeneratorTrainConfig(
        data_dir=str(args.run),
        output_dir=str(args.run),
        resolution=args.resolution,
        scratch_unet_channels=tuple(int(c) for c in args.channels.split(",")),
        scratch_text_width=args.text_width,
        scratch_text_layers=args.text_layers,
    )
    cache = FaceCache(args.run / "face_cache")
    vectors = np.stack([e.normalize().vector for e in cache.identity_embeddings()])
    parts = scratch_components(cfg, vectors.shape[1])
    state = load_file(args.run / "checkpoints" / args.checkpoint / "ema.safetensors")
    for name in ("unet", "text_encoder"):
        prefix = name + "."
        parts[name].load_state_dict(
            {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        )
        parts[name].eval()
    encoder = Arc2FaceIDEncoder(
        parts["text_encoder"],
        parts["tokenizer"],
        encoder_ids=(str(cache.encoder_id),),
        identity_dim=vectors.shape[1],
        identity_center=None if args.no_center else vectors.mean(0),
    )
    labels = cache.index.get("labels") or [Path(i.source).parent.name for i in cache.items]
    rows = [labels.index(p) for p in dict.fromkeys(labels)][:3]  # first photo of 3 people
    ids = torch.from_numpy(vectors[rows]).float()
    latents = torch.from_numpy(np.asarray(cache.read("latents_mean"))[rows]).float()
    schedule = DDPMScheduler.from_config(parts["scheduler"].config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        cond = encoder.prompt_embeds(ids)
        null = encoder.encode_unconditional(len(rows), "zero-identity")
        per_position = (cond[0] - cond[1]).abs().mean(-1)
        print("prompt_embeds |person A − person B| per position:", end=" ")
        print(" ".join(f"{float(v):.3f}" for v in per_position))
        print("| t | ε error, own identity | ε error, null identity | mean |Δε| |")
        print("|---|---|---|---|")
        for t in (100, 300, 500, 800):
            noise = torch.randn(latents.shape, generator=generator)
            steps = torch.full((len(rows),), t)
            noisy = schedule.add_noise(latents, noise, steps)
            with_id = parts["unet"](noisy, steps, cond).sample
            without = parts["unet"](noisy, steps, null).sample
            err_id = float(((with_id - noise) ** 2).mean())
            err_null = float(((without - noise) ** 2).mean())
            delta = float((with_id - without).abs().mean())
            print(f"| {t} | {err_id:.4f} | {err_null:.4f} | {delta:.4f} |")


if __name__ == "__main__":
    main()
