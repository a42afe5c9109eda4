"""Does a scratch generator's checkpoint use the identity yet? A probe for training runs.

Loads a checkpoint's EMA weights (``ema.safetensors``) into the ``"scratch"`` model built with
the run's sizes, and on cached training photos of three people (the run's face cache) prints:

* how far the text encoder's ``prompt_embeds`` differ between two people, per token position
  (at initialisation the ``id`` position and those after it differ by ~0.3–0.6 per entry;
  a text encoder that has washed the identity out shows ~0.01);
* the error of the clean latent the model infers (x̂₀, from its ε or v prediction) on the
  cached latents at fixed timesteps, with each photo's own identity and with the null (zero)
  identity, with another probed person's identity, and the mean absolute difference of the
  own-identity and null x̂₀: a model that uses the identity predicts better with the right
  one than with someone else's or none, most of all at high noise.

Usage: ``python benchmarks/generator_probe.py RUN_DIR checkpoint-1000 [--channels 128,128]
[--text-width 128] [--text-layers 2] [--no-center] [--prediction-type epsilon]`` (the sizes,
the centring and the prediction type of the run;
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
    ap.add_argument(
        "--prediction-type", default="v_prediction", choices=("v_prediction", "epsilon")
    )
    ap.add_argument("--people", type=int, default=8, help="people probed (first photo each)")
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
        prediction_type=args.prediction_type,
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
    rows = [labels.index(p) for p in dict.fromkeys(labels)][: max(2, args.people)]
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
        wrong = cond.roll(1, 0)  # each photo with the next person's identity
        print("| t | x̂₀ error, own identity | other person's | null identity | mean |Δx̂₀| |")
        print("|---|---|---|---|---|")
        for t in (100, 300, 500, 700, 850, 950):
            noise = torch.randn(latents.shape, generator=generator)
            steps = torch.full((len(rows),), t)
            noisy = schedule.add_noise(latents, noise, steps)
            a = schedule.alphas_cumprod[t]
            x0 = []
            for context in (cond, wrong, null):
                out = parts["unet"](noisy, steps, context).sample
                if args.prediction_type == "epsilon":
                    x0.append((noisy - (1 - a).sqrt() * out) / a.sqrt())
                else:
                    x0.append(a.sqrt() * noisy - (1 - a).sqrt() * out)
            err_id = float(((x0[0] - latents) ** 2).mean())
            err_other = float(((x0[1] - latents) ** 2).mean())
            err_null = float(((x0[2] - latents) ** 2).mean())
            delta = float((x0[0] - x0[2]).abs().mean())
            print(f"| {t} | {err_id:.4f} | {err_other:.4f} | {err_null:.4f} | {delta:.4f} |")


if __name__ == "__main__":
    main()
