"""``facegen train …`` and ``facegen eval fr``: training loops and face-recognition evaluation."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from facegen.app.cli.options import non_negative_int, positive_int, subcommand_parents
from facegen.app.cli.train_attributes import add_train_attributes_parser
from facegen.errors import FacegenError

__all__ = ["add_train_parsers", "config_from"]


def config_from(cls: type, args: argparse.Namespace, keys: dict[str, str]) -> Any:
    """``cls(**settings)`` from ``--config`` (YAML/TOML/JSON; keys as the dataclass fields,
    dashes allowed) overridden by the flags given (``keys``: field → argparse dest)."""
    from facegen.pipelines.dataset.run import load_config

    data: dict[str, Any] = {}
    if getattr(args, "config", None):
        data = {k.replace("-", "_"): v for k, v in load_config(args.config).items()}
    for field, dest in keys.items():
        v = getattr(args, dest, None)
        if v is not None:
            data[field] = str(v) if isinstance(v, Path) else v
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - valid)
    if unknown:
        where = f"{args.config}: " if getattr(args, "config", None) else ""
        raise FacegenError(
            f"{where}unknown setting(s) {unknown}; valid: {', '.join(sorted(valid))}"
        )
    for f in dataclasses.fields(cls):  # lists from YAML/TOML into the tuples the configs use
        if isinstance(data.get(f.name), list) and "tuple" in str(f.type):
            data[f.name] = tuple(data[f.name])
    where = f"{args.config}: " if getattr(args, "config", None) else ""
    try:
        return cls(**data)
    except TypeError as e:
        raise FacegenError(f"{where}incomplete settings: {e}") from None
    except ValueError as e:  # InvalidArgumentError included: "`key` must be …, got …"
        raise FacegenError(f"{where}{e}") from None


def add_train_parsers(sub: Any) -> None:
    t = sub.add_parser("train", parents=subcommand_parents(), help="train facegen's models")
    tsub = t.add_subparsers(dest="train_command", metavar="WHAT", required=True)
    _add_fr_parser(tsub)
    _add_generative_parsers(tsub)
    add_train_attributes_parser(tsub)
    _add_eval_parsers(sub)


def _add_fr_parser(tsub: Any) -> None:
    f = tsub.add_parser(
        "fr",
        parents=subcommand_parents(),
        help="face recognition: IResNet + ArcFace/CosFace/AdaFace on a facegen dataset",
        description="Reads ImageFolder, WebDataset shards or RecordIO (train.rec/.idx), e.g. "
        "a `facegen dataset` export. Writes model.safetensors, model.onnx (an identity "
        "encoder facegen can use) and config.json; rerun with --resume latest to continue.",
    )
    f.add_argument("data", nargs="?", type=Path, help="dataset folder or file")
    f.add_argument("--out", type=Path, help="output folder")
    f.add_argument("--config", type=Path, help="settings file (.yaml/.toml/.json)")
    f.add_argument("--format", dest="data_format", choices=["imagefolder", "wds", "rec"])
    f.add_argument("--backbone", choices=["iresnet18", "iresnet34", "iresnet50", "iresnet100"])
    f.add_argument("--head", choices=["arcface", "cosface", "adaface"])
    f.add_argument("--batch-size", type=positive_int)
    f.add_argument("--epochs", type=positive_int)
    f.add_argument("--max-steps", type=positive_int)
    f.add_argument("--lr", type=float)
    f.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"])
    f.add_argument("--val", dest="val_sets", action="append", help="verification .bin (repeat)")
    f.add_argument("--eval-every", type=positive_int)
    f.add_argument("--save-every", type=positive_int)
    f.add_argument("--resume", help="'latest' or a checkpoint folder")
    f.add_argument("--seed", type=int)
    f.add_argument("--workers", dest="num_workers", type=int)
    f.set_defaults(func=cmd_train_fr)


def _add_generative_parsers(tsub: Any) -> None:
    for name, what in (
        ("lora", "LoRA personalization from photos of one person (diffusers LoRA file)"),
        ("adapter", "an IP-Adapter-FaceID-style identity adapter for any identity encoder"),
        ("controlnet", "a landmark ControlNet matching facegen's landmark maps"),
        (
            "generator",
            "an identity-conditioned generator (Arc2Face's recipe), from scratch or fine-tuned; "
            "the output folder loads with `facegen generate --preset OUT`",
        ),
    ):
        g = tsub.add_parser(
            name,
            parents=subcommand_parents(),
            help=what,
            description="Photos are detected, aligned and cached once (safetensors) so "
            "epochs are cheap; rerun with --resume latest to continue from the last "
            "checkpoint. --config takes every setting of the loop's config (YAML/TOML/JSON).",
        )
        g.add_argument(
            "data",
            nargs="?",
            type=Path,
            help="face photos: a folder, WebDataset shards (a .tar, 'shards-{000..099}.tar' "
            "quoted, or a folder of them) or a `facegen dataset generate` folder",
        )
        g.add_argument("--out", type=Path, help="output folder")
        g.add_argument("--config", type=Path, help="settings file (.yaml/.toml/.json)")
        g.add_argument(
            "--base-model",
            help="'scratch' (default: a small model trained from nothing), SD1.5 folder or hub "
            "id, 'arc2face', or 'tiny' (random, for plumbing)"
            if name == "generator"
            else "SD1.5 folder or hub id, 'arc2face', a generator folder (`facegen train "
            "generator`'s output) or 'demo-orl', or 'tiny' (random, for plumbing)"
            if name == "controlnet"
            else "SD1.5 folder or hub id, 'arc2face', or 'tiny' (random, for plumbing)",
        )
        g.add_argument(
            "--resolution",
            type=positive_int,
            help="training image size in pixels (default: the base model's own: 512 for SD1.5 "
            "and arc2face, 64 for scratch and tiny)",
        )
        g.add_argument("--batch-size", type=positive_int, help="images per step and device (1)")
        g.add_argument("--max-steps", type=positive_int, help="optimizer steps (500)")
        g.add_argument(
            "--lr", type=float, help=f"learning rate ({'1e-5' if name == 'controlnet' else '1e-4'})"
        )
        g.add_argument(
            "--mixed-precision",
            choices=["no", "fp16", "bf16"],
            help="autocast precision on a GPU (no)",
        )
        g.add_argument(
            "--checkpointing-steps",
            type=positive_int,
            help="save a resumable checkpoint every N steps (500; the last 2 are kept)",
        )
        g.add_argument(
            "--validation-steps",
            type=int,
            help="render validation images every N steps (0 = never)",
        )
        g.add_argument("--resume", help="'latest' or a checkpoint folder")
        g.add_argument("--seed", type=int, help="seed of the run (0)")
        if name == "lora":
            g.add_argument("--rank", type=positive_int)
            g.add_argument("--alpha", type=float)
            g.add_argument("--instance-prompt", help="e.g. 'a photo of sks person'")
            g.add_argument(
                "--train-text-encoder",
                action="store_true",
                default=None,
                help="also put the LoRA on the CLIP text encoder (prompt conditioning)",
            )
        if name in ("lora", "controlnet"):
            g.add_argument("--conditioning", choices=["prompt", "arc2face"])
        if name == "controlnet":
            g.add_argument(
                "--random-affine",
                type=float,
                metavar="S",
                help="warp each crop and its landmark map by a random similarity (0 = off; 1 = "
                "up to ±15°, ±10 %% scale, ±8 %% shift): makes a base that memorised its "
                "photos follow the map",
            )
            g.add_argument(
                "--empty-prompts",
                type=float,
                metavar="P",
                help="share of steps with the unconditional prompt / null identity (0)",
            )
            g.add_argument(
                "--save-dtype",
                choices=("float32", "float16"),
                help="the saved ControlNet's weights (float32; float16 halves the size)",
            )
        if name == "adapter":
            g.add_argument("--encoder", help="identity encoder the adapter expects (dlib)")
            g.add_argument("--num-tokens", type=positive_int)
        if name == "generator":
            _add_generator_options(g)
        g.set_defaults(func=cmd_train_generative, train_kind=name)


def _add_eval_parsers(sub: Any) -> None:
    from facegen.app.cli.options import unit_float

    e = sub.add_parser("eval", parents=subcommand_parents(), help="evaluate models")
    esub = e.add_subparsers(dest="eval_command", metavar="WHAT", required=True)
    v = esub.add_parser(
        "fr",
        parents=subcommand_parents(),
        help="verification accuracy (insightface protocol) of a face-recognition model",
        description="MODEL: a `facegen train fr` output folder, or an identity-encoder name "
        "(e.g. dlib). Sets: insightface .bin files (lfw.bin, cfp_fp.bin, a facegen dataset's "
        "export/verification.bin) and/or pair lists ('pathA pathB 0|1' per line).",
    )
    v.add_argument("model", help="trained model folder or encoder name")
    v.add_argument("--bin", dest="bins", action="append", type=Path, default=[])
    v.add_argument("--pairs", action="append", type=Path, default=[])
    v.add_argument("--root", type=Path, help="folder the pair-list paths are relative to")
    v.add_argument("--folds", type=positive_int, default=10)
    v.add_argument(
        "--far",
        type=_open_unit_float,
        default=1e-3,
        help="target FAR/FMR of TAR@FAR and of the bias report's threshold (default 1e-3)",
    )
    v.add_argument("--json", action="store_true")
    b = v.add_argument_group(
        "demographic bias report (one set only)",
        "Per-group FNMR/FMR at one global threshold, per-group protocol accuracy, cross-group "
        "FMR, max/min ratios, FDR and GARBE; see facegen.training.fr.bias.",
    )
    b.add_argument(
        "--groups",
        type=Path,
        help="CSV of group labels: columns a_group,b_group (one row per pair, optional issame) "
        "or group (one row per image)",
    )
    b.add_argument(
        "--threshold",
        type=unit_float,
        help="cosine threshold for every group (default: chosen on all impostors for --far)",
    )
    b.add_argument(
        "--bias-out",
        type=Path,
        metavar="DIR",
        help="where bias.json, bias.md, scores.png, det.png go (default: <set stem>_bias/ "
        "next to the set)",
    )
    v.set_defaults(func=cmd_eval_fr)


def _open_unit_float(text: str) -> float:
    """A number in (0, 1) (argparse type)."""
    from facegen.app.cli.options import positive_float

    v = positive_float(text)
    if v >= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {v:g}")
    return v


_FR_KEYS = {
    "data": "data",
    "output_dir": "out",
    "data_format": "data_format",
    "backbone": "backbone",
    "head": "head",
    "batch_size": "batch_size",
    "epochs": "epochs",
    "max_steps": "max_steps",
    "lr": "lr",
    "mixed_precision": "mixed_precision",
    "val_sets": "val_sets",
    "eval_every": "eval_every",
    "save_every": "save_every",
    "resume": "resume",
    "seed": "seed",
    "num_workers": "num_workers",
}


def cmd_train_fr(args: argparse.Namespace) -> int:
    from facegen.training.fr.train import FRTrainConfig, train_fr

    if args.val_sets:
        args.val_sets = tuple(args.val_sets)
    cfg = config_from(FRTrainConfig, args, _FR_KEYS)
    if args.device == "cpu" and not cfg.cpu:
        cfg = dataclasses.replace(cfg, cpu=True)
    res = train_fr(cfg)
    print(f"{res.steps} steps ({res.epochs} epochs, {res.num_classes} classes) → {res.output_dir}")
    if res.losses:
        print(f"loss {res.losses[0]:.4f} → {res.losses[-1]:.4f}")
    for _, results in res.validation[-1:]:
        for r in results:
            print(r.summary())
    return 0


def _add_generator_options(g: argparse.ArgumentParser) -> None:
    """The options only ``facegen train generator`` has (the rest: ``--config``)."""
    g.add_argument("--encoder", help="identity encoder (dlib; arcface-onnx for arc2face)")
    g.add_argument("--grad-accum-steps", type=positive_int)
    g.add_argument(
        "--gradient-checkpointing", action="store_true", default=None, help="save memory"
    )
    g.add_argument("--id-drop-prob", type=float, help="null-identity rate for CFG (0.1)")
    g.add_argument(
        "--partial-drop-prob",
        type=float,
        help="IDiff-Face contextual partial dropout of the identity's entries (0 = off)",
    )
    g.add_argument("--unet-lr", type=float, help="UNet learning rate (default --lr)")
    g.add_argument(
        "--text-encoder-lr",
        type=float,
        help="text encoder learning rate (--lr; --lr × 0.02 for the scratch model)",
    )
    g.add_argument(
        "--no-ema", dest="use_ema", action="store_false", default=None, help="save the last weights"
    )
    g.add_argument("--ema-decay", type=float, help="EMA decay of the saved weights (0.9999)")
    g.add_argument(
        "--random-flip", action="store_true", default=None, help="mirror photos at random"
    )
    g.add_argument(
        "--prediction-type",
        choices=("v_prediction", "epsilon"),
        help="what a scratch model's UNet predicts (v_prediction)",
    )
    g.add_argument(
        "--save-dtype",
        choices=("float32", "float16"),
        help="the saved generator's weights (float32; float16 halves the size)",
    )
    g.add_argument(
        "--identity-morphs",
        type=non_negative_int,
        metavar="N",
        help="add N morphs of the photos' people as extra training identities (0 = none; "
        "made once into OUT/morphs with dlib's 68 landmarks, left out of the identity bank)",
    )
    g.add_argument(
        "--morph-parents",
        type=positive_int,
        metavar="K",
        help="people blended into each morph (3; at least 2)",
    )


_GEN_KEYS = {
    "data_dir": "data",
    "output_dir": "out",
    "base_model": "base_model",
    "resolution": "resolution",
    "batch_size": "batch_size",
    "max_steps": "max_steps",
    "learning_rate": "lr",
    "mixed_precision": "mixed_precision",
    "checkpointing_steps": "checkpointing_steps",
    "validation_steps": "validation_steps",
    "resume_from_checkpoint": "resume",
    "seed": "seed",
    "rank": "rank",
    "alpha": "alpha",
    "instance_prompt": "instance_prompt",
    "train_text_encoder": "train_text_encoder",
    "conditioning": "conditioning",
    "encoder": "encoder",
    "num_tokens": "num_tokens",
    "grad_accum_steps": "grad_accum_steps",
    "gradient_checkpointing": "gradient_checkpointing",
    "id_drop_prob": "id_drop_prob",
    "id_partial_drop_prob": "partial_drop_prob",
    "unet_learning_rate": "unet_lr",
    "text_encoder_learning_rate": "text_encoder_lr",
    "use_ema": "use_ema",
    "ema_decay": "ema_decay",
    "random_flip": "random_flip",
    "save_dtype": "save_dtype",
    "prediction_type": "prediction_type",
    "identity_morphs": "identity_morphs",
    "morph_parents": "morph_parents",
    "random_affine": "random_affine",
    "proportion_empty_prompts": "empty_prompts",
}


def _generative_trainer(kind: str) -> tuple[type, Callable[[Any], Any]]:
    """The config class and training function of ``facegen train KIND`` (imported lazily)."""
    if kind == "lora":
        from facegen.training.diffusion.lora import LoraTrainConfig, train_lora

        return LoraTrainConfig, train_lora
    if kind == "adapter":
        from facegen.training.diffusion.adapter import AdapterTrainConfig, train_adapter

        return AdapterTrainConfig, train_adapter
    if kind == "generator":
        from facegen.training.diffusion.generator import GeneratorTrainConfig, train_generator

        return GeneratorTrainConfig, train_generator
    from facegen.training.diffusion.controlnet import ControlNetTrainConfig, train_controlnet

    return ControlNetTrainConfig, train_controlnet


def cmd_train_generative(args: argparse.Namespace) -> int:
    kind = args.train_kind
    config_cls, train = _generative_trainer(kind)
    keys = {f: d for f, d in _GEN_KEYS.items() if hasattr(args, d)}
    cfg = config_from(config_cls, args, keys)
    if args.device == "cpu" and hasattr(cfg, "cpu") and not cfg.cpu:
        cfg = dataclasses.replace(cfg, cpu=True)
    res = train(cfg)
    print(f"{res.steps} steps (from step {res.start_step}) → {res.weights}")
    if res.losses:
        k = max(1, min(5, len(res.losses) // 2))
        first, last = sum(res.losses[:k]) / k, sum(res.losses[-k:]) / k
        print(f"mean loss, first {k} steps {first:.4f} → last {k} steps {last:.4f}")
    print(f"metadata: {res.metadata}")
    return 0


def _model(spec: str, device: str) -> Any:
    path = Path(spec)
    if path.is_dir():
        if (path / "model.onnx").is_file():
            from facegen.training.fr.encoder import load_trained_encoder

            return load_trained_encoder(path, device=device)
        from facegen.training.fr.models import load_backbone

        return load_backbone(path, device=device)
    from facegen.backends import ENCODERS

    return ENCODERS.create(spec, device=device)


def cmd_eval_fr(args: argparse.Namespace) -> int:
    from facegen.training.fr.eval import evaluate_bin, evaluate_pairs

    if not args.bins and not args.pairs:
        raise FacegenError("give at least one --bin FILE or --pairs FILE")
    if args.groups is None and (args.threshold is not None or args.bias_out is not None):
        raise FacegenError("--threshold and --bias-out belong to the bias report: add --groups")
    sets = [*args.bins, *args.pairs]
    if args.groups is not None and len(sets) != 1:
        raise FacegenError(
            "--groups labels the pairs of one set: give exactly one --bin or --pairs, "
            f"got {len(sets)}"
        )
    model = _model(args.model, args.device)
    if args.groups is not None:
        return _eval_fr_with_bias(args, model, sets[0])
    results = []
    for b in args.bins:
        results.append(evaluate_bin(model, b, nfolds=args.folds, far_target=args.far))
    for p in args.pairs:
        results.append(
            evaluate_pairs(model, p, root=args.root, nfolds=args.folds, far_target=args.far)
        )
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2, default=str))
    else:
        for r in results:
            print(r.summary())
    sys.stdout.flush()
    return 0


def _eval_fr_with_bias(args: argparse.Namespace, model: Any, set_path: Path) -> int:
    """``facegen eval fr --groups``: the normal evaluation of one set plus its bias report, from
    one embedding pass."""
    from facegen.training.fr.bias import evaluate_bias, load_pair_groups, write_bias_report
    from facegen.training.fr.eval import load_pair_list, load_verification_bin

    is_bin = set_path in args.bins
    vset = load_verification_bin(set_path) if is_bin else load_pair_list(set_path, root=args.root)
    groups = load_pair_groups(args.groups, len(vset), issame=vset.issame)
    res, report = evaluate_bias(
        model, vset, groups, nfolds=args.folds, far_target=args.far, threshold=args.threshold
    )
    out = args.bias_out or set_path.with_name(f"{set_path.stem}_bias")
    provenance = {"model": args.model, "set": str(set_path), "groups": str(args.groups)}
    paths = write_bias_report(report, out, provenance=provenance)
    if args.json:
        both = {"verification": res.to_dict(), "bias": report.to_dict()}
        print(json.dumps(both, indent=2, default=str))
    else:
        print(res.summary())
        print(report.table())
        print(f"bias report: {', '.join(str(p) for p in paths.values())}")
    sys.stdout.flush()
    return 0
