"""``facegen train attributes``: an attribute head (gender, age, …) on identity vectors."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facegen.app.cli.options import (
    EXIT_OK,
    analysis_options,
    analysis_provenance,
    build_analyzer,
    check_analysis_options,
    non_negative_int,
    positive_float,
    positive_int,
    subcommand_parents,
)

if TYPE_CHECKING:
    from facegen.analyzer import FaceAnalyzer

__all__ = ["add_train_attributes_parser", "cmd_train_attributes"]

#: the cache file inside --out when --cache is not given
DEFAULT_CACHE = "embedding_cache.safetensors"


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"must be column names separated by commas, got {text!r}")
    return names


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0.0 <= v <= 0.9:
        raise argparse.ArgumentTypeError(f"must be in [0, 0.9], got {text}")
    return v


def _non_negative_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


def add_train_attributes_parser(tsub: Any) -> None:
    """Register ``facegen train attributes`` on the ``facegen train`` sub-parsers ``tsub``."""
    a = tsub.add_parser(
        "attributes",
        parents=[*subcommand_parents(), analysis_options()],
        help="an attribute head: gender, age, … estimated from an identity vector alone",
        description="LABELS.csv has one of the columns `image` (a photo, relative to the "
        "CSV's folder; its largest face is embedded with --encoder), `embedding` (FILE#ROW of "
        "a `facegen embed` file) or `row` (a row of --embeddings FILE), an optional `identity` "
        "column (the person: the validation split keeps each person on one side), and one "
        "column per attribute. Columns not named by --categorical/--numeric are numeric when "
        "every value is a number, categorical otherwise (printed). Writes config.json and "
        "model.safetensors, which `attribute_head:` in a dataset config loads.",
    )
    a.add_argument("labels", type=Path, metavar="LABELS.csv", help="the labelled CSV")
    a.add_argument("--out", type=Path, required=True, help="output folder (the head)")
    a.add_argument(
        "--categorical",
        type=_names,
        action="extend",
        default=[],
        metavar="A,B",
        help="attribute columns that hold classes (labels), e.g. gender,race",
    )
    a.add_argument(
        "--numeric",
        type=_names,
        action="extend",
        default=[],
        metavar="A,B",
        help="attribute columns that hold numbers, e.g. age",
    )
    a.add_argument(
        "--ignore", type=_names, action="extend", default=[], metavar="A,B", help="other columns"
    )
    a.add_argument(
        "--embeddings", type=Path, metavar="FILE", help="the embeddings file of a `row` column"
    )
    a.add_argument(
        "--cache",
        type=Path,
        metavar="FILE",
        help=f"embedding cache of the photos (default: OUT/{DEFAULT_CACHE}); unchanged photos "
        "are not embedded again",
    )
    a.add_argument(
        "--hidden", type=non_negative_int, default=256, help="hidden units (256); 0 = linear"
    )
    a.add_argument("--epochs", type=positive_int, default=100, help="(100)")
    a.add_argument("--batch-size", type=positive_int, default=256, help="(256)")
    a.add_argument("--lr", type=positive_float, default=3e-3, help="learning rate (0.003)")
    a.add_argument(
        "--weight-decay", type=_non_negative_float, default=1e-2, help="AdamW weight decay (0.01)"
    )
    a.add_argument(
        "--val-fraction",
        type=_fraction,
        default=0.2,
        help="share of rows (of identities, with an `identity` column) held out for the "
        "validation metrics (0.2; 0 = none)",
    )
    a.add_argument(
        "--balanced", action="store_true", help="class-balanced loss weights (rare labels count)"
    )
    a.add_argument("--seed", type=int, default=0, help="(0)")
    a.set_defaults(func=cmd_train_attributes, select="largest")


def cmd_train_attributes(args: argparse.Namespace) -> int:
    from facegen.locks import folder_lock
    from facegen.training.attribute_data import describe_skipped, reference_column
    from facegen.training.attributes import (
        load_labelled_csv,
        summarize_metrics,
        train_attribute_head,
    )

    check_analysis_options(args)
    uses_images = reference_column(args.labels) == "image"
    cache = args.cache if args.cache is not None else args.out / DEFAULT_CACHE
    built: list[FaceAnalyzer] = []  # made only when photos must be embedded

    def analyzer() -> FaceAnalyzer:
        built.append(build_analyzer(args, need_encoder=True))
        return built[-1]

    with folder_lock(args.out, "train attributes"):
        data = load_labelled_csv(
            args.labels,
            categorical=args.categorical,
            numeric=args.numeric,
            ignore=args.ignore,
            analyzer=analyzer if uses_images else None,
            embeddings=args.embeddings,
            cache=cache if uses_images else None,
        )
        print(f"{args.labels}: {data.rows_read} rows; attributes:")
        for line in data.decisions:
            print(f"  {line}")
        if uses_images:
            print(
                f"photos: {data.images}; {data.embedded} embedded now, {data.reused} taken from "
                f"the cache ({cache})"
            )
            if data.skipped:
                print(describe_skipped(data.skipped, data.images))
        print(
            f"{len(data.vectors)} rows used ({data.rows_dropped} dropped), "
            f"{data.vectors.shape[1]}-D vectors of {data.encoder_id}"
        )
        result = train_attribute_head(
            data.vectors,
            data.labels,
            data.specs,
            data.encoder_id,
            hidden=args.hidden,
            epochs=args.epochs,
            lr=args.lr,
            weight_decay=args.weight_decay,
            batch_size=args.batch_size,
            val_fraction=args.val_fraction,
            groups=data.identities,
            balanced=args.balanced,
            seed=args.seed,
            name=args.out.resolve().name or "attribute-head",
            data=str(args.labels),
            device=args.device,
            progress=None,
            record={
                "rows_read": data.rows_read,
                "rows_dropped": data.rows_dropped,
                "columns": data.decisions,
                "skipped_images": [[s.path, s.reason] for s in data.skipped],
                "analysis": analysis_provenance(args, built[-1]) if built else None,
            },
        )
        result.head.save(args.out)
    for line in summarize_metrics(result.metrics, data.specs):
        print(line)
    print(f"wrote {args.out} (config.json, model.safetensors)")
    return EXIT_OK
