"""``facegen anonymize`` and ``facegen provenance``: privacy edits and synthetic-media labels."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from facegen.app.cli.options import (
    add_generation_options,
    face_selection,
    positive_int,
    subcommand_parents,
)
from facegen.errors import FacegenError

__all__ = ["add_edit_parsers"]


def _length(text: str) -> float | str:
    """A fraction of the face size (``0.1``) or pixels (``12px``)."""
    if text.endswith("px"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a fraction of the face size (0.1) or pixels (12px), got {text!r}"
        ) from None


def _rgb(text: str) -> tuple[int, int, int]:
    try:
        r, g, b = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be R,G,B, got {text!r}") from None
    return r, g, b


def add_edit_parsers(sub: Any) -> None:

    a = sub.add_parser(
        "anonymize",
        parents=subcommand_parents(),
        help="cover every face: blur, pixelate, solid mask, or a synthetic identity",
        description="INPUT is an image or a folder (walked; the tree is mirrored under --out, "
        "finished files are skipped on rerun, and anonymize_report.jsonl says per file what "
        "was found and done). Images where no face is detected are reported, never copied. "
        "Outputs carry a provenance record and an invisible watermark (a few grey levels over "
        "the whole image); --no-watermark keeps every pixel outside the masks byte-identical "
        "(PNG).",
    )
    a.add_argument("input", type=Path, metavar="INPUT")
    a.add_argument("--out", type=Path, required=True, help="output folder")
    a.add_argument("--mode", choices=["blur", "pixelate", "mask", "generate"], default="blur")
    a.add_argument("--shape", choices=["hull", "ellipse", "box"], default="hull")
    a.add_argument(
        "--margin", type=_length, default=0.1, help="mask dilation: face fraction or Npx (0.1)"
    )
    a.add_argument("--feather", type=_length, default=0.05, help="outward falloff (0.05)")
    a.add_argument(
        "--forehead", type=float, default=0.3, help="mask extension above the brows (0.3)"
    )
    a.add_argument("--faces", type=face_selection, default="all", help="all|largest|best|INDEX")
    a.add_argument(
        "--blur-sigma", type=float, default=0.25, help="blur σ as a face fraction (0.25)"
    )
    a.add_argument("--blocks", type=int, default=8, help="pixelate: blocks across a face (8)")
    a.add_argument("--fill", type=_rgb, default=(0, 0, 0), metavar="R,G,B", help="mask colour")
    a.add_argument(
        "--format", dest="output_format", choices=["png", "jpg", "webp"], help="output format"
    )
    a.add_argument("--json", action="store_true", help="print the per-file report as JSON")
    g = a.add_argument_group(
        "generate mode",
        "each face becomes a synthetic person, verified with an encoder independent of the "
        "generator (dlib) to be below its same-person threshold to the original; else retried, "
        "then --fallback",
    )
    g.add_argument(
        "--secret",
        help="key of consistent pseudonyms: the same real person → the same synthetic person "
        "across the input (env FACEGEN_SECRET); without it every face gets a fresh identity",
    )
    g.add_argument("--attempts", type=positive_int, default=3, help="tries per face (3)")
    g.add_argument(
        "--fallback", choices=["blur", "pixelate", "mask"], default="blur", help="(blur)"
    )
    add_generation_options(g)
    a.set_defaults(func=cmd_anonymize)

    p = sub.add_parser("provenance", parents=subcommand_parents(), help="synthetic-media labels")
    psub = p.add_subparsers(dest="provenance_command", metavar="ACTION", required=True)
    c = psub.add_parser(
        "check",
        parents=subcommand_parents(),
        help="report facegen's metadata and the invisible watermark per image",
    )
    c.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="files or folders")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_provenance_check)


def _detector() -> Any:
    from facegen.analyzer import FaceAnalyzer

    # 68 landmarks: the mask follows the jaw and brows instead of the box
    return FaceAnalyzer.from_names("dlib", "dlib68", None)


def cmd_anonymize(args: argparse.Namespace) -> int:
    import os

    from tqdm.auto import tqdm

    from facegen.pipelines.editing.anonymize_folder import anonymize_folder

    if not args.input.exists():
        raise FacegenError(f"{args.input} does not exist")
    opts = dict(
        mode=args.mode,
        shape=args.shape,
        margin=args.margin,
        feather=args.feather,
        forehead=args.forehead,
        faces=args.faces,
        blur_sigma=args.blur_sigma,
        pixel_blocks=args.blocks,
        fill=args.fill,
        fallback_mode=args.fallback,
    )
    analyzer = _detector()
    if args.mode == "generate":
        from facegen.app.cli.swap import load_edit_pipeline, pseudonym_hook
        from facegen.image_io import find_images

        pipe, verifier = load_edit_pipeline(args)
        secret = args.secret or os.environ.get("FACEGEN_SECRET")
        opts["replace_face"] = pseudonym_hook(
            pipe, verifier, find_images([args.input]), secret, args
        )
    if args.input.is_file():
        return _anonymize_file(args, analyzer, opts)
    bar = tqdm(total=None, desc="anonymize", unit="img", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        rep = anonymize_folder(
            args.input,
            args.out,
            analyzer,
            output_format=args.output_format,
            watermark=not args.no_watermark,
            progress=progress,
            **opts,
        )
    finally:
        bar.close()
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2, default=str))
    else:
        for r in rep.records:
            faces = r.get("faces") or []
            note = r.get("error") or ""
            print(f"{r['status']:<8} {r['input']}  faces: {len(faces)}  {note}".rstrip())
    print(
        f"{rep.done} anonymized ({rep.faces} faces), {rep.skipped} already done, "
        f"{rep.no_face} without a detected face, {rep.errors} unreadable → {args.out}"
    )
    if rep.total == 0:
        raise FacegenError(f"{args.input}: no images found in this folder (or below it)")
    return 0 if rep.errors == 0 and rep.no_face == 0 else 1


def _anonymize_file(args: argparse.Namespace, analyzer: Any, opts: dict[str, Any]) -> int:
    from facegen.pipelines.editing.anonymize import anonymize_image
    from facegen.provenance import can_watermark, save_with_provenance

    result = anonymize_image(args.input, analyzer, source=args.input.name, **opts)
    settings = {k: str(v) if k == "margin" else v for k, v in opts.items() if k != "replace_face"}
    suffix = {"png": ".png", "jpg": ".jpg", "webp": ".webp"}.get(args.output_format or "")
    name = args.input.name
    if suffix:
        name = args.input.with_suffix(suffix).name
    elif args.input.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        name = args.input.with_suffix(".png").name
    faces = [f.to_dict() for f in result.faces]
    target = save_with_provenance(
        result.image,
        args.out / name,
        "anonymize",
        {"anonymize": settings, "faces": faces},
        kind="edited",
        watermark=not args.no_watermark and can_watermark(result.image),
    )
    if args.json:
        print(json.dumps({"input": str(args.input), "output": str(target), "faces": faces}))
    else:
        for f in faces:
            note = f" (fallback: {f['fallback_reason']})" if f.get("fallback") else ""
            sim = f" similarity {f['similarity']:.3f}" if f.get("similarity") is not None else ""
            print(f"face {f['index']}: {f['mode']}{sim} bbox {[round(v) for v in f['bbox']]}{note}")
        print(f"{len(faces)} of {result.num_detected} detected face(s) anonymized → {target}")
    return 0


def cmd_provenance_check(args: argparse.Namespace) -> int:
    from facegen.image_io import find_images
    from facegen.provenance import check

    files = find_images(args.images)
    if not files:
        raise FacegenError("no images found")
    reports = []
    for f in files:
        try:
            rep = check(f)
        except FacegenError as e:
            print(f"{f}: {e}", file=sys.stderr)
            continue
        reports.append(rep)
        if not args.json:
            print(rep.summary())
    if args.json:
        out = [
            {
                "source": str(r.source),
                "synthetic": r.synthetic,
                "metadata": r.info.to_record() if r.info is not None else None,
                "digital_source_type": r.digital_source_type,
                "watermark": None
                if r.watermark is None
                else {
                    "detected": r.watermark.detected,
                    "score": r.watermark.score,
                    "p_value": r.watermark.p_value,
                },
                "notes": list(r.notes),
            }
            for r in reports
        ]
        print(json.dumps(out, indent=2))
    labelled = sum(r.synthetic for r in reports)
    print(f"{labelled} of {len(reports)} image(s) labelled synthetic", file=sys.stderr)
    return 0 if len(reports) == len(files) else 1
