"""``facegen dataset``: build a verified synthetic identity dataset, and export it."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facegen.app.cli.options import positive_int, preset_name, subcommand_parents
from facegen.errors import FacegenError
from facegen.pipelines.dataset.config import POSE_CHOICES, VERIFY_CHOICES

if TYPE_CHECKING:
    from facegen.pipelines.dataset.config import DatasetConfig

__all__ = ["add_dataset_parser"]


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
    from facegen.pipelines.dataset.config import export_formats

    valid = export_formats()
    names = [t for t in text.split(",") if t]
    bad = [t for t in names if t not in valid]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown format(s) {bad}; valid: {', '.join(valid)}")
    return names


def add_dataset_parser(sub: Any) -> None:
    from facegen.pipelines.dataset.config import export_formats

    d = sub.add_parser("dataset", parents=subcommand_parents(), help="synthetic identity datasets")
    dsub = d.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    formats = ",".join(export_formats())  # the dataset writers' registry
    _add_generate_parser(dsub, formats)
    e = dsub.add_parser(
        "export",
        parents=subcommand_parents(),
        help="write the committed images as training formats",
    )
    e.add_argument("out", type=Path)
    _add_export_options(e, formats)
    _add_eval_set_options(e)
    e.set_defaults(func=cmd_dataset_export)
    m = dsub.add_parser(
        "merge",
        parents=subcommand_parents(),
        help="fold parts made elsewhere into one dataset and check it is complete",
    )
    m.add_argument("out", type=Path)
    m.add_argument("--from", dest="parts", type=Path, nargs="*", default=[], metavar="PART")
    _add_export_options(m, f"export when complete ({formats})")
    m.set_defaults(func=cmd_dataset_merge)
    r = dsub.add_parser(
        "report",
        parents=subcommand_parents(),
        help="quality report: separation, consistency, EER/TAR with an independent encoder",
    )
    r.add_argument("out", type=Path)
    r.set_defaults(func=cmd_dataset_report)


def _add_export_options(p: argparse.ArgumentParser, formats: str) -> None:
    p.add_argument("--format", type=_formats, default=[], help=formats)
    p.add_argument("--holdout", type=int, default=0, help="identities for verification.bin")


def _add_eval_set_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--eval-set",
        action="store_true",
        help="also write an evaluation set of all identities: export/evaluation.bin + "
        "evaluation_pairs.csv (genuine/impostor pairs balanced within and across groups, "
        "each image's group; for `facegen eval fr --groups`)",
    )
    p.add_argument(
        "--pairs-per-identity",
        type=positive_int,
        default=10,
        help="genuine pairs per identity in the evaluation set (10)",
    )


def _add_generate_parser(dsub: Any, formats: str) -> None:
    """``dataset generate``: one option per :class:`DatasetConfig` setting (same name; no
    default here, so a config file's value holds unless the flag is given), then how to run."""
    from facegen.pipelines.generation.presets import PRESETS

    g = dsub.add_parser(
        "generate",
        parents=subcommand_parents(),
        help="sample identities, generate and verify images (resumable, shardable)",
        description="Settings come from --config (YAML/TOML/JSON; keys as the long options, "
        "e.g. images_per_identity) and/or the flags (flags win). Rerun the same command after a "
        "crash to resume. Executors: local (--shard K/N for any launcher; then `facegen dataset "
        "merge`), accelerate (under `accelerate launch`: one shard per process, merged at the "
        "end), ray (shards as actors on a Ray cluster, or a local one).",
    )
    g.add_argument("--config", type=Path, help="run description: .yaml, .toml or .json")
    g.add_argument("--identities", type=positive_int, metavar="N")
    g.add_argument("--images-per-identity", type=positive_int, metavar="M")
    g.add_argument(
        "--preset",
        type=preset_name,
        metavar="PRESET",
        help=f"generation preset ({', '.join(PRESETS.names())}) or a generator folder "
        "(`facegen train generator`'s output) (arc2face)",
    )
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--seed", type=int, help="dataset seed (0)")
    g.add_argument(
        "--sampler",
        help="identity sampler: auto (gaussian fitted to the identity bank when there is "
        "one, else uniform), uniform, gaussian, spread (auto)",
    )
    g.add_argument(
        "--identity-bank",
        help="real identity vectors (.safetensors, e.g. from `facegen analyze "
        "--save-embeddings`) to fit the gaussian sampler to and check leakage against "
        "(default: the preset's own bank, if it ships one)",
    )
    g.add_argument(
        "--no-leakage-check",
        dest="leakage_check",
        action="store_false",
        default=None,
        help="do not keep sampled identities away from the identity bank",
    )
    g.add_argument(
        "--leakage-threshold",
        type=float,
        help="max cosine of a sampled identity to any identity of the bank (preset's "
        "calibration, else --identity-separation)",
    )
    g.add_argument(
        "--identity-separation",
        type=float,
        help="max cosine between two identities (preset's calibration, else 0.3)",
    )
    g.add_argument(
        "--min-similarity",
        type=float,
        help="reject images less similar to their identity (preset's calibration, else 0.5)",
    )
    g.add_argument(
        "--max-similarity",
        type=float,
        help="reject near-copies more similar than this (preset's calibration, else 0.98)",
    )
    g.add_argument("--attempts", type=positive_int, help="tries per image (and per anchor) (3)")
    g.add_argument(
        "--verify-against",
        choices=VERIFY_CHOICES,
        help="check each image against its sampled identity vector (target), or against the "
        "identity as the generator renders it: one anchor image per identity, kept when it is "
        "new (leakage check) and apart from the other identities (anchor). Default: the "
        "preset's recommendation (anchor for demo-orl), else target",
    )
    g.add_argument(
        "--perturbation",
        type=_levels,
        metavar="L1,L2,…",
        help="identity noise levels cycled over the images of an identity (e.g. 0,0.1,0.2)",
    )
    g.add_argument(
        "--prompt",
        dest="prompts",
        action="append",
        help="a prompt for presets that take text; repeat to vary (chosen per image)",
    )
    g.add_argument(
        "--pose",
        choices=POSE_CHOICES,
        help="pose/expression per image from --pose-from: a reference's landmarks, new "
        "shapes sampled from a model fitted to them, or shapes in --pose-band yaw/pitch "
        "bands (needs a ControlNet preset)",
    )
    g.add_argument("--pose-from", help="folder of reference photos for --pose")
    g.add_argument(
        "--pose-band",
        dest="pose_bands",
        action="append",
        metavar="BAND",
        help="with --pose bands: a yaw/pitch band in degrees ('yaw=-40:-20', "
        "'yaw=-10:10,pitch=-10:10'); repeat, cycled over each identity's images",
    )
    g.add_argument(
        "--attribute-head",
        help="attribute estimator for identity vectors (`facegen train attributes` output), "
        "to meet --group-targets while sampling; or probe:NAME (e.g. probe:genderage): "
        "estimate from one generated probe image per candidate (slower)",
    )
    g.add_argument(
        "--group-targets",
        metavar="FILE",
        help="groups and target proportions (.yaml/.json: attributes, bins, targets "
        "'balanced' or {group: share}, prompts {group: text})",
    )
    g.add_argument(
        "--attribute-budget",
        type=positive_int,
        metavar="N",
        help="candidate identities drawn at most to meet the group quotas (50 per identity)",
    )
    g.add_argument(
        "--keep-full",
        action="store_true",
        default=None,
        help="also keep the full-resolution images (full/)",
    )
    g.add_argument(
        "--no-watermark",
        dest="watermark",
        action="store_false",
        default=None,
        help="store images with the provenance record only (no invisible watermark)",
    )
    g.add_argument("--batch-size", type=positive_int, help="images per generator call (8)")
    g.add_argument("--steps", type=positive_int, help="denoising steps (preset default)")
    g.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    g.add_argument(
        "--format", dest="formats", type=_formats, help=f"export when complete ({formats})"
    )
    g.add_argument(
        "--holdout",
        type=int,
        help="identities kept out of training exports for export/verification.bin (0)",
    )
    g.add_argument("--executor", choices=["local", "accelerate", "ray"], default="local")
    g.add_argument("--shard", type=_shard, default=(0, 1), metavar="K/N", help="local executor")
    g.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    g.add_argument("--workers", type=positive_int, default=1, help="Ray actors (1)")
    g.add_argument("--gpus-per-worker", type=float, default=None, help="Ray (1 with CUDA, else 0)")
    g.set_defaults(func=cmd_dataset_generate)


def _run_config(args: argparse.Namespace) -> DatasetConfig:
    """The config file's settings, overridden by the flags given on the command line (every
    setting has a flag of its name)."""
    from facegen.pipelines.dataset.config import CONFIG_KEYS, DatasetConfig, load_config

    data: dict[str, Any] = load_config(args.config) if args.config else {}
    data = {k.replace("-", "_"): v for k, v in data.items()}
    for k in CONFIG_KEYS:
        v = getattr(args, k)
        if v is not None:
            data[k] = v
    if data.get("pose_bands") and data.get("pose") is None:
        data["pose"] = "bands"
    if data.get("pose_from") is not None and data.get("pose") is None:
        data["pose"] = "reference"
    for key in ("pose_from", "identity_bank", "attribute_head"):
        if data.get(key) is not None and not str(data[key]).startswith("probe:"):
            data[key] = str(Path(data[key]).resolve())
    if isinstance(data.get("group_targets"), str):  # a file: its content is the setting
        data["group_targets"] = load_config(data["group_targets"])
    from facegen.pipelines.generation.generator_folder import is_generator_folder
    from facegen.pipelines.generation.presets import PRESETS

    preset = data.get("preset")
    if isinstance(preset, str) and preset not in PRESETS.names() and is_generator_folder(preset):
        data["preset"] = str(Path(preset).resolve())  # a folder: the same run from anywhere
    return DatasetConfig.from_dict(data, source=str(args.config or "options"))


def _finish(out: Path, cfg: DatasetConfig, formats: Sequence[str], holdout: int) -> int:
    """Merge summary (``dataset.json``) and, when complete, the exports."""
    from facegen.pipelines.dataset.export import export
    from facegen.pipelines.dataset.run import merge

    summary = merge(out)
    state = "complete" if summary["complete"] else f"{len(summary['missing'])} identities missing"
    print(
        f"dataset {out}: {summary['done']}/{summary['identities']} identities done, "
        f"{len(summary['failed'])} failed, {summary['images']} images ({state})"
    )
    if summary["failed"] and not summary["done"]:
        print(
            f"no identity kept: each had an image (or anchor) the verifier rejected after "
            f"{cfg.attempts} attempt(s) (`facegen dataset report {out}` shows why). This "
            "generator does not render these identities recognisably; give it more --attempts, "
            "try --verify-against anchor, or use a stronger one (see the model card of "
            "demo-orl for what a small model can do)"
        )
    if formats:
        if not summary["complete"]:
            print("not exported: run the missing shards first, then `facegen dataset export`")
            return 1
        files = export(out, formats, holdout=holdout)
        print(f"exported {len(files)} file(s) → {out / 'export'}")
    return 0


def _generate_ray(args: argparse.Namespace, cfg: DatasetConfig) -> int:
    import time

    from tqdm.auto import tqdm

    from facegen.pipelines.dataset.run import preset_worker, run_ray

    t0 = time.perf_counter()
    gpus = args.gpus_per_worker
    if gpus is None:
        import torch

        gpus = 1.0 if torch.cuda.is_available() else 0.0
    bar = tqdm(total=None, desc="shards", unit="shard", file=sys.stderr)
    results = run_ray(
        args.out,
        cfg,
        address=args.address,
        num_workers=args.workers,
        gpus_per_worker=gpus,
        factory=lambda c, device: preset_worker(c, device, offline=args.offline),
        progress=lambda r: bar.update(1),
    )
    bar.close()
    images = sum(r["images"] for r in results)
    print(f"ray: {len(results)} shards, {images} new images in {time.perf_counter() - t0:.1f} s")
    return _finish(args.out, cfg, cfg.formats, cfg.holdout)


def cmd_dataset_generate(args: argparse.Namespace) -> int:
    import time

    from tqdm.auto import tqdm

    from facegen.pipelines.dataset.run import accelerate_shard, preset_worker, run_shard

    cfg = _run_config(args)
    if args.executor == "ray":
        return _generate_ray(args, cfg)
    out: Path = args.out
    t0 = time.perf_counter()
    state = None
    shard, device = args.shard, args.device
    if args.executor == "accelerate":
        shard, device, state = accelerate_shard()
    worker = preset_worker(cfg, device, offline=args.offline)
    n_mine = len(range(shard[0], cfg.identities, shard[1]))
    bar = tqdm(
        total=n_mine * cfg.images_per_identity,
        desc=f"shard {shard[0]}/{shard[1]}",
        unit="img",
        file=sys.stderr,
        disable=state is not None and not state.is_local_main_process,
    )

    def progress(done: int, total: int, images: int) -> None:
        bar.n = min(done * cfg.images_per_identity, bar.total)
        bar.set_postfix(ids=f"{done}/{total}", kept=images, refresh=False)
        bar.refresh()

    anchor_bar: Any = None

    def anchor_progress(decided: int, total: int) -> None:
        nonlocal anchor_bar
        if anchor_bar is None:
            anchor_bar = tqdm(
                total=total,
                initial=decided - 1,
                desc="anchors",
                unit="id",
                file=sys.stderr,
                disable=bar.disable,
            )
        anchor_bar.update(1)
        if decided == total:
            anchor_bar.close()

    try:
        summary = run_shard(
            out, cfg, shard, worker, progress=progress, anchor_progress=anchor_progress
        )
    finally:
        bar.close()
        if anchor_bar is not None:
            anchor_bar.close()
    dt = time.perf_counter() - t0
    print(
        f"shard {shard[0]}/{shard[1]}: {summary.done} identities done, "
        f"{summary.failed} failed, {summary.skipped_existing} already done, "
        f"{summary.images} images ({summary.images / max(dt, 1e-9):.2f} img/s); "
        f"rejections: {summary.rejections or 'none'} → {out}"
    )
    if state is not None:
        state.wait_for_everyone()
        if not state.is_main_process:
            return 0
    elif shard[1] > 1:
        print(f"when every shard is done: facegen dataset merge {out} [--format …]")
        return 0
    return _finish(out, cfg, cfg.formats, cfg.holdout)


def cmd_dataset_export(args: argparse.Namespace) -> int:
    from facegen.pipelines.dataset.export import export

    if not (args.out / "journal").is_dir():
        raise FacegenError(f"{args.out}: not a dataset folder (no journal/)")
    if not args.format and not args.holdout and not args.eval_set:
        raise FacegenError("nothing to export: give --format, --holdout and/or --eval-set")
    files = (
        export(args.out, args.format, holdout=args.holdout) if args.format or args.holdout else []
    )
    if args.eval_set:
        from facegen.pipelines.dataset.evalset import export_evaluation_set

        made = export_evaluation_set(args.out, pairs_per_identity=args.pairs_per_identity)
        files += made
        info = json.loads(made[2].read_text())
        print(
            f"evaluation set: {info['pairs']} pairs ({info['genuine']} genuine, "
            f"{info['impostor']} impostor) over {len(info['groups'])} group(s)"
        )
        for g, c in info["groups"].items():
            print(
                f"  {g}: {c['identities']} identities, {c['genuine']} genuine, "
                f"{c['impostor_within']} impostor within, {c['impostor_cross']} across"
            )
    print(f"exported {len(files)} file(s) → {args.out / 'export'}")
    return 0


def cmd_dataset_merge(args: argparse.Namespace) -> int:
    from facegen.pipelines.dataset.run import DatasetConfig, merge

    merge(args.out, args.parts)
    cfg = DatasetConfig.from_dict(json.loads((args.out / "config.json").read_text()))
    return _finish(args.out, cfg, args.format, args.holdout)


def cmd_dataset_report(args: argparse.Namespace) -> int:
    from facegen.pipelines.dataset.report import dataset_report

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
    if rep.get("groups"):
        print(f"{'group':<40} {'target':>7} {'quota':>6} {'committed':>10} {'share':>7}")
        for r in rep["groups"]:
            print(
                f"{r['group']:<40} {r['target']:>7.3f} {r['quota']:>6} {r['committed']:>10} "
                f"{r['committed_proportion']:>7.3f}"
            )
    print(f"report → {args.out / 'report'}")
    return 0
