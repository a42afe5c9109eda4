"""``facegen generate``: identity-conditioned images from a photo, an embedding file or random identities."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facegen.app.cli.options import positive_int, preset_name, subcommand_parents
from facegen.errors import FacegenError
from facegen.validate import check_count, check_safetensors

if TYPE_CHECKING:
    import numpy as np

    from facegen.pipelines.generation.job import GenerateRequest, IdentitySource

__all__ = ["add_generate_parser", "cmd_generate"]


#: Bounds of one ``facegen generate`` call (``facegen dataset generate`` is for more).
MAX_IDENTITIES = 1_000_000
MAX_IMAGES_PER_IDENTITY = 10_000


def add_generate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from facegen.pipelines.generation.presets import PRESETS

    g = sub.add_parser(
        "generate",
        parents=subcommand_parents(),
        help="new images of an identity (Arc2Face, …)",
        description="Generate M images for each of N identities. Images are written as PNG "
        "(with their metadata inside) plus a manifest.json; seeds are base seed + image number.",
    )
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--id-image", nargs="+", type=Path, metavar="PHOTO", help="one identity per photo"
    )
    src.add_argument(
        "--id-embedding", type=Path, metavar="FILE", help="safetensors from `facegen embed`"
    )
    src.add_argument(
        "--random-identities",
        type=positive_int,
        metavar="N",
        help="N random identities (pairwise separated, drawn with --seed)",
    )
    g.add_argument(
        "--num-images", type=positive_int, default=4, metavar="M", help="per identity (4)"
    )
    g.add_argument(
        "--preset",
        default="arc2face",
        type=preset_name,
        metavar="{" + ",".join(PRESETS.names()) + "} or PATH",
        help="a preset, or the folder of a generator trained with `facegen train generator` "
        "(default: arc2face)",
    )
    g.add_argument(
        "--prompt",
        help="text prompt: needed by presets that take one, refused by identity-only ones",
    )
    ctl = g.add_mutually_exclusive_group()
    ctl.add_argument(
        "--pose-from",
        type=Path,
        metavar="PHOTO",
        help="take pose/expression from this photo: its 68 landmarks, moved into the output "
        "frame, drawn as facegen's landmark map (ControlNet presets)",
    )
    ctl.add_argument(
        "--control-image",
        type=Path,
        metavar="IMAGE",
        help="a ready conditioning image (e.g. an EMOCA render for arc2face-controlnet)",
    )
    g.add_argument(
        "--controlnet",
        type=Path,
        metavar="PATH",
        help="a local ControlNet folder (e.g. facegen-trained landmark ControlNet) for "
        "arc2face-controlnet",
    )
    g.add_argument("--steps", type=positive_int, help="denoising steps (preset default)")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale (preset default)")
    g.add_argument("--seed", type=int, default=0, help="base seed: image k uses seed+k (0)")
    g.add_argument("--batch-size", type=positive_int, help="images per denoising batch (all)")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    g.add_argument(
        "--lora",
        help="a LoRA to apply: a .safetensors file or folder (e.g. `facegen train lora` output)",
    )
    g.add_argument("--lora-scale", type=float, default=1.0, help="LoRA strength (1.0)")
    g.add_argument(
        "--no-watermark",
        action="store_true",
        help="label outputs with metadata only (the invisible watermark is on by default)",
    )
    g.add_argument(
        "--cpu-offload",
        action="store_true",
        help="keep models on the CPU and move each to the GPU only while it runs (small GPUs)",
    )
    g.add_argument("--vae-tiling", action="store_true", help="decode in tiles (less memory)")
    g.add_argument("--out", type=Path, required=True, help="output folder")
    g.set_defaults(func=cmd_generate)


def _request(args: argparse.Namespace) -> GenerateRequest:
    """The command's options as a generate request (files read and checked here)."""
    from facegen.pipelines.generation.job import (
        ControlImage,
        EmbeddingIdentities,
        GenerateRequest,
        PhotoIdentities,
        PhotoIdentity,
        PoseReference,
        RandomIdentities,
    )

    identities: IdentitySource
    if args.id_image:
        identities = PhotoIdentities(tuple(PhotoIdentity(_read(p), str(p)) for p in args.id_image))
    elif args.id_embedding is not None:
        from facegen.embedding_io import load_embeddings

        embs, _ = load_embeddings(args.id_embedding)
        identities = EmbeddingIdentities(tuple(embs), str(args.id_embedding))
    else:
        check_count(args.random_identities, "--random-identities", maximum=MAX_IDENTITIES)
        identities = RandomIdentities(args.random_identities)
    control = None
    if args.pose_from is not None:
        control = PoseReference(_read(args.pose_from), str(args.pose_from))
    elif args.control_image is not None:
        control = ControlImage(_read(args.control_image), str(args.control_image))
    return GenerateRequest(
        preset=args.preset,
        identities=identities,
        num_images=args.num_images,
        seed=args.seed,
        prompt=args.prompt,
        steps=args.steps,
        guidance=args.guidance,
        control=control,
        batch_size=args.batch_size,
        watermark=not args.no_watermark,
    )


def _read(path: Path) -> np.ndarray:
    from facegen.image_io import load_image

    if not path.is_file():
        raise FacegenError(f"{path}: file not found")
    return load_image(path)


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from facegen.pipelines.generation.job import load_generate_pipeline, run_generate

    check_count(args.num_images, "--num-images", maximum=MAX_IMAGES_PER_IDENTITY)
    if args.lora is not None and Path(args.lora).is_file():
        check_safetensors(args.lora, "LoRA file")
    if args.cpu_offload and not str(args.device).startswith("cuda"):
        raise FacegenError("`--cpu-offload` needs `--device cuda[:N]`")
    request = _request(args)
    pipe = load_generate_pipeline(
        args.preset,
        device=args.device,
        dtype=args.dtype,
        offline=args.offline,
        controlnet=args.controlnet,
        lora=args.lora,
        lora_scale=args.lora_scale,
        cpu_offload=args.cpu_offload,
        vae_tiling=args.vae_tiling,
    )
    with tqdm(desc="generate", unit="step", file=sys.stderr) as bar:

        def progress(stage: str, done: int, total: int) -> None:
            if stage == "denoising":
                bar.total = total
                bar.update(done - bar.n)

        result = run_generate(request, pipe, args.out, progress=progress)
    n, people = len(result.images), len(result.identities)
    print(f"wrote {n} image(s) of {people} identit{'y' if people == 1 else 'ies'} → {args.out}")
    return 0


def manifest(out: Path) -> dict[str, Any]:
    """Read a generate run's manifest (used by tests and tools)."""
    return json.loads((out / "manifest.json").read_text())
