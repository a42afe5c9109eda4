"""Generation speed on the CPU with the tiny preset (plumbing cost, not model speed).

1. facegen's ``IDToFacePipeline`` vs a plain diffusers ``StableDiffusionPipeline`` call with
   the same components and precomputed embeddings: overhead in % (median of ``--repeats``).
2. Batching: images/s generating 8 images one per call vs 8 in one call.

Usage: ``python benchmarks/generation.py [--repeats 10] [--steps 4]``. The full-size SD1.5
timings need a GPU; see BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from facegen.pipelines.generation.presets import from_preset


def _median(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()

    pipe = from_preset("tiny")
    pipe.set_progress_bar_config(disable=True)
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
    ids = np.random.default_rng(0).standard_normal((1, 512)).astype(np.float32)
    cond = pipe.id_encoder.encode(ids)
    uncond = pipe.id_encoder.encode_unconditional(1)
    common = {"num_inference_steps": args.steps, "guidance_scale": 3.0, "output_type": "np"}

    def facegen_call() -> Any:
        return pipe(ids, seeds=[0], **common)

    def diffusers_call() -> Any:
        # the same work in plain diffusers: encode a prompt (and the empty negative), denoise
        return sd(
            prompt="photo of a id person",
            height=64,
            width=64,
            generator=[torch.Generator().manual_seed(0)],
            **common,
        )

    def diffusers_ready() -> Any:
        # diffusers given ready embeddings: no text encoding at all (a lower bound)
        return sd(
            prompt_embeds=cond,
            negative_prompt_embeds=uncond,
            height=64,
            width=64,
            generator=[torch.Generator().manual_seed(0)],
            **common,
        )

    # interleaved, so that the machine's noise is shared fairly
    calls = {"facegen": facegen_call, "diffusers": diffusers_call, "ready": diffusers_ready}
    times: dict[str, list[float]] = {k: [] for k in calls}
    for fn in calls.values():
        fn()
    for _ in range(args.repeats):
        for k, fn in calls.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    fg, df, rd = (statistics.median(times[k]) for k in ("facegen", "diffusers", "ready"))
    print(f"facegen IDToFacePipeline   {fg * 1000:8.1f} ms / image ({args.steps} steps, 64x64)")
    print(f"diffusers, prompt          {df * 1000:8.1f} ms / image  (same work)")
    print(f"diffusers, ready embeds    {rd * 1000:8.1f} ms / image  (no text encoding)")
    print(f"overhead vs same work      {100 * (fg - df) / df:8.1f} %")
    print(f"overhead vs ready embeds   {100 * (fg - rd) / rd:8.1f} %")

    ids8 = np.random.default_rng(1).standard_normal((8, 512)).astype(np.float32)
    reps = max(3, args.repeats // 3)
    t8 = _median(lambda: pipe(ids8, seeds=list(range(8)), **common), reps)
    t1 = _median(lambda: [pipe(ids8[i : i + 1], seeds=[i], **common) for i in range(8)], reps)
    print(f"batch 1                    {8 / t1:8.2f} images/s")
    print(f"batch 8                    {8 / t8:8.2f} images/s  ({t1 / t8:.2f}x)")


if __name__ == "__main__":
    main()
