"""``facegen dataset``: build a verified synthetic identity dataset, and export it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from facegen.errors import FacegenError

__all__ = ["add_dataset_parser"]

FORMATS = ("wds", "rec", "parquet", "imagefolder")


def _shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be K/N, got {text!r}") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"must be K/N with 0 <= K < N, got {text!r}")
    return k, n


def _levels(text: str) -> tuple[float, ...]:
    try:
        levels = tuple(float(t) for t in text.split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers, got {text!r}") from None
    if not levels or any(not 0 <= v < 10 for v in levels):
        raise argparse.ArgumentTypeError(f"levels must be in [0, 10), got {text!r}")
    return levels


def _formats(text: str) -> list[str]:
    names = [t for t in text.split(",") if t]
    bad = [t for t in names if t not in FORMATS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown format(s) {bad}; valid: {', '.join(FORMATS)}")
    return names


def add_dataset_parser(sub: Any, common: argparse.ArgumentParser, positive_int: Any) -> None:
    from facegen.pipelines.presets import PRESETS

    d = sub.add_parser("dataset", parents=[common], help="synthetic identity datasets")
    dsub = d.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    g = dsub.add_parser(
        "generate",
        parents=[common],
        help="sample identities, generate and verify images (resumable, shardable)",
        description="Rerun the same command after a crash to resume; run every --shard K/N "
        "(any launcher), then `facegen dataset export` once all shards are done.",
    )
    g.add_argument("--identities", type=positive_int, required=True, metavar="N")
    g.add_argument("--images-per-identity", type=positive_int, required=True, metavar="M")
    g.add_argument("--preset", default="arc2face", choices=PRESETS.names())
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--identity-separation",
        type=float,
        default=0.3,
        help="max cosine between two identities (0.3)",
    )
    g.add_argument(
        "--min-similarity",
        type=float,
        default=0.5,
        help="reject images less similar to their identity (0.5)",
    )
    g.add_argument(
        "--max-similarity",
        type=float,
        default=0.98,
        help="reject near-copies more similar than this (0.98)",
    )
    g.add_argument("--attempts", type=positive_int, default=3, help="tries per image (3)")
    g.add_argument(
        "--perturbation",
        type=_levels,
        default=(0.0,),
        metavar="L1,L2,…",
        help="identity noise levels cycled over the images of an identity (e.g. 0,0.1,0.2)",
    )
    g.add_argument("--batch-size", type=positive_int, default=8)
    g.add_argument("--steps", type=positive_int, help="denoising steps (preset default)")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    g.add_argument("--shard", type=_shard, default=(0, 1), metavar="K/N")
    g.add_argument("--format", type=_formats, default=[], help="export when done: wds,rec,parquet")
    g.set_defaults(func=cmd_dataset_generate)
    e = dsub.add_parser(
        "export", parents=[common], help="write the committed images as training formats"
    )
    e.add_argument("out", type=Path)
    e.add_argument("--format", type=_formats, required=True, help="wds,rec,parquet,imagefolder")
    e.set_defaults(func=cmd_dataset_export)
    r = dsub.add_parser(
        "report",
        parents=[common],
        help="quality report: separation, consistency, EER/TAR with an independent encoder",
    )
    r.add_argument("out", type=Path)
    r.set_defaults(func=cmd_dataset_report)


def _config(args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        "identities",
        "images_per_identity",
        "preset",
        "seed",
        "identity_separation",
        "min_similarity",
        "max_similarity",
        "attempts",
        "steps",
        "dtype",
        "perturbation",
    )
    # JSON has no tuples: compare and store lists, so a resumed run matches its config
    return {k: list(v) if isinstance(v, tuple) else v for k in keys for v in [getattr(args, k)]}


def cmd_dataset_generate(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from facegen.analysis_writer import write_json
    from facegen.pipelines.dataset import DatasetSpec, build_dataset, export
    from facegen.pipelines.identities import sample_identities
    from facegen.pipelines.presets import from_preset

    spec = DatasetSpec(
        images_per_identity=args.images_per_identity,
        min_similarity=args.min_similarity,
        max_similarity=args.max_similarity,
        max_attempts=args.attempts,
        seed=args.seed,
        batch_size=args.batch_size,
        perturbation=args.perturbation,
    )
    cfg = _config(args)
    cfg_path = args.out / "config.json"
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        if old != cfg:
            diff = {k: (old.get(k), v) for k, v in cfg.items() if old.get(k) != v}
            raise FacegenError(f"{args.out} holds a dataset made with other settings: {diff}")
    pipe = from_preset(
        args.preset,
        device=args.device,
        dtype=args.dtype,
        local_files_only=True if args.offline else None,
    )
    pipe.set_progress_bar_config(disable=True)
    verifier = pipe.identity_analyzer
    if verifier is None or getattr(verifier, "encoder", None) is None:
        raise FacegenError(
            f"preset {args.preset!r} has no identity analyzer to verify images; use a preset with "
            "one (arc2face, ip-adapter-faceid-*)"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(cfg_path, cfg)
    ids = sample_identities(
        args.identities,
        dim=verifier.encoder.dim,
        seed=args.seed,
        max_similarity=args.identity_separation,
        encoder_id=verifier.encoder.encoder_id,
    )
    ids_file = args.out / "identities.safetensors"
    if not ids_file.exists():
        ids.save(ids_file)
    call: dict[str, Any] = {"output_type": "np"}
    if args.steps:
        call["num_inference_steps"] = args.steps

    def generate(vectors: Any, seeds: list[int]) -> list[Any]:
        out = pipe(vectors, seeds=seeds, **call).images
        return [(np.clip(im, 0, 1) * 255).round().astype(np.uint8) for im in out]

    bar = tqdm(total=None, desc="identities", unit="id", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        summary = build_dataset(
            args.out, ids.vectors, generate, verifier, spec, shard=args.shard, progress=progress
        )
    finally:
        bar.close()
    print(
        f"shard {args.shard[0]}/{args.shard[1]}: {summary.done} identities done, "
        f"{summary.failed} failed, {summary.skipped_existing} already done, "
        f"{summary.images} images; rejections: {summary.rejections or 'none'} → {args.out}"
    )
    if args.format and args.shard == (0, 1):
        files = export(args.out, args.format)
        print(f"exported {len(files)} file(s) → {args.out / 'export'}")
    return 0


def cmd_dataset_export(args: argparse.Namespace) -> int:
    from facegen.pipelines.dataset import export

    if not (args.out / "journal").is_dir():
        raise FacegenError(f"{args.out}: not a dataset folder (no journal/)")
    files = export(args.out, args.format)
    print(f"exported {len(files)} file(s) → {args.out / 'export'}")
    return 0


def cmd_dataset_report(args: argparse.Namespace) -> int:
    from facegen.pipelines.dataset_report import dataset_report

    rep = dataset_report(args.out)
    keys = (
        "identities_done",
        "identities_failed",
        "images",
        "unique_identity_ratio",
        "intra_class_consistency",
        "eer",
        "tar_at_far_1e3",
        "rejections",
    )
    for k in keys:
        if k in rep:
            v = rep[k]
            print(f"{k:<26} {v:.4f}" if isinstance(v, float) else f"{k:<26} {v}")
    print(f"report → {args.out / 'report'}")
    return 0
