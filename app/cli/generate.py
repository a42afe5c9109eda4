"""``facegen generate``: identity-conditioned images from a photo, an embedding file or random identities."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from facegen.app.cli.options import positive_int, subcommand_parents
from facegen.errors import FacegenError
from facegen.validate import check_count, check_fits_in_memory, check_safetensors

__all__ = ["add_generate_parser", "cmd_generate"]


#: Bounds of one ``facegen generate`` call (``facegen dataset generate`` is for more).
MAX_IDENTITIES = 1_000_000
MAX_IMAGES_PER_IDENTITY = 10_000


def add_generate_parser(sub: Any) -> None:
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
        "--random-identities", type=positive_int, metavar="N", help="N random unit vectors"
    )
    g.add_argument(
        "--num-images", type=positive_int, default=4, metavar="M", help="per identity (4)"
    )
    g.add_argument(
        "--preset", default="arc2face", choices=PRESETS.names(), help="(default: arc2face)"
    )
    g.add_argument("--prompt", help="text prompt (required by the ip-adapter-faceid presets)")
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


def _identities(args: argparse.Namespace, pipe: Any) -> Any:
    import numpy as np

    if args.id_embedding is not None:
        from facegen.embedding_io import load_embeddings

        embs, _ = load_embeddings(args.id_embedding)
        if not embs:
            raise FacegenError(
                f"{args.id_embedding}: `--id-embedding` must hold at least one embedding, got 0"
            )
        return embs
    if args.random_identities is not None:
        check_fits_in_memory(args.random_identities * 512 * 8, "drawing the random identities")
        rng = np.random.default_rng(args.seed)
        v = rng.standard_normal((args.random_identities, 512)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)
    raise AssertionError("photos are analysed by the pipeline call")


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from facegen.fileio import write_json
    from facegen.image_io import save_image
    from facegen.pipelines.generation.presets import from_preset, preset_info, preset_names
    from facegen.provenance import can_watermark, save_with_provenance

    info = preset_info(args.preset)
    text_preset = info.takes_prompt
    if args.prompt is not None and not text_preset:
        raise FacegenError(f"preset {args.preset!r} is identity-only; `--prompt` is not taken")
    if text_preset and not args.prompt:
        raise FacegenError(f"preset {args.preset!r} needs `--prompt TEXT`")
    if not 0 <= args.seed <= 2**31 - 1:
        raise FacegenError(f"`--seed` must be in [0, 2147483647], got {args.seed}")
    if args.random_identities is not None:
        check_count(args.random_identities, "--random-identities", maximum=MAX_IDENTITIES)
    check_count(args.num_images, "--num-images", maximum=MAX_IMAGES_PER_IDENTITY)
    if args.lora is not None and Path(args.lora).is_file():
        check_safetensors(args.lora, "LoRA file")
    if args.id_image:
        for p in args.id_image:
            if not p.is_file():
                raise FacegenError(f"{p}: file not found")
    args.out.mkdir(parents=True, exist_ok=True)
    wants_control = args.pose_from is not None or args.control_image is not None
    is_control = info.needs_control_image
    control_presets = ", ".join(preset_names(controlnet="built-in"))
    if wants_control != is_control:
        raise FacegenError(
            f"`--pose-from`/`--control-image` need a ControlNet preset ({control_presets}), "
            "and those presets need one of them"
        )
    loads_controlnet = preset_names(controlnet="built-in", test_double=False)
    if args.controlnet is not None and args.preset not in loads_controlnet:
        raise FacegenError(
            f"`--controlnet` applies to presets that load a ControlNet "
            f"({', '.join(loads_controlnet)}), got {args.preset!r}"
        )
    for p in (args.pose_from, args.control_image):
        if p is not None and not p.is_file():
            raise FacegenError(f"{p}: file not found")
    extra = {"controlnet": str(args.controlnet)} if args.controlnet else {}
    pipe = from_preset(
        args.preset,
        device=args.device,
        dtype=args.dtype,
        local_files_only=True if args.offline else None,
        **extra,
    )
    pipe.set_progress_bar_config(disable=True)
    if args.lora is not None:
        from facegen.adapters.lora import load_lora

        load_lora(
            pipe,
            args.lora,
            adapter_name="user",
            scale=args.lora_scale,
            local_files_only=True if args.offline else None,
        )
    if args.cpu_offload:
        if not str(args.device).startswith("cuda"):
            raise FacegenError("`--cpu-offload` needs `--device cuda[:N]`")
        pipe.enable_model_cpu_offload(device=args.device)
    if args.vae_tiling:
        pipe.vae.enable_tiling()
    # photos go into the pipeline call itself (it analyses them, and keeps what PlusV2 needs)
    ids = None if args.id_image else _identities(args, pipe)
    n = len(args.id_image) if args.id_image else len(ids)
    total = n * args.num_images
    if args.seed + total - 1 > 2**31 - 1:
        raise FacegenError("`--seed` + number of images must stay below 2147483648")
    # every image is held until the call returns: refuse what cannot fit before starting
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    check_fits_in_memory(total * side * side * 3 * 2, f"{total:,} images of {side}×{side}")
    seeds = [args.seed + k for k in range(total)]
    kwargs: dict[str, Any] = {}
    if args.steps is not None:
        kwargs["num_inference_steps"] = args.steps
    if args.guidance is not None:
        kwargs["guidance_scale"] = args.guidance
    if args.prompt is not None:
        kwargs["prompt"] = args.prompt
    steps = args.steps or pipe.default_steps
    chunks = -(-total // (args.batch_size or total))
    bar = tqdm(total=steps * chunks, desc="generate", unit="step", file=sys.stderr)

    def on_step(_pipe: Any, _i: int, _t: Any, kw: dict[str, Any]) -> dict[str, Any]:
        bar.update(1)
        return kw

    if is_control:
        kwargs["control_image"] = _control_image(args, pipe)
        save_image(kwargs["control_image"], args.out / "control.png")
    try:
        out = pipe(
            ids,
            images=[str(p) for p in args.id_image] if args.id_image else None,
            num_images_per_identity=args.num_images,
            seeds=seeds,
            batch_size=args.batch_size,
            callback_on_step_end=on_step,
            **kwargs,
        )
    finally:
        bar.close()
    records = []
    for img, md in zip(out.images, out.metadata):
        name = f"id{md['identity_index']:04d}_img{md['image_index']:03d}_seed{md['seed']}.png"
        save_with_provenance(
            img,
            args.out / name,
            "generate",
            md,
            watermark=not args.no_watermark and can_watermark(img),
        )
        records.append({"file": name, **md})
    write_json(
        args.out / "manifest.json",
        {"images": records, "command": "generate", "source": _source(args)},
    )
    print(f"wrote {total} image(s) of {n} identit{'y' if n == 1 else 'ies'} → {args.out}")
    return 0


def _control_image(args: argparse.Namespace, pipe: Any) -> Any:
    """The conditioning image: a given file, or the pose of ``--pose-from`` as a landmark map."""
    from PIL import Image

    from facegen.image_io import load_image

    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    if args.control_image is not None:
        return Image.fromarray(load_image(args.control_image)).resize((size, size))
    from facegen.analyzer import FaceAnalyzer
    from facegen.control import render_landmarks68, transfer_landmarks

    analyzer = FaceAnalyzer.from_names("dlib", "dlib68", None)
    face = analyzer.analyze(args.pose_from, select="largest", source=str(args.pose_from))[0]
    points = transfer_landmarks(face, size=size)
    return render_landmarks68(points, size, output_type="pil")


def _source(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any]
    if args.id_image:
        out = {"id_image": [str(p) for p in args.id_image]}
    elif args.id_embedding:
        out = {"id_embedding": str(args.id_embedding)}
    else:
        out = {"random_identities": args.random_identities, "seed": args.seed}
    if args.pose_from:
        out["pose_from"] = str(args.pose_from)
    if args.control_image:
        out["control_image"] = str(args.control_image)
    return out


def manifest(out: Path) -> dict[str, Any]:
    """Read a generate run's manifest (used by tests and tools)."""
    return json.loads((out / "manifest.json").read_text())
