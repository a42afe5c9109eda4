"""``facegen analyze``, ``embed`` and ``compare``: faces, landmarks and identity embeddings."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from facegen.app.cli.options import (
    EXIT_ERROR,
    EXIT_OK,
    analysis_options,
    analysis_provenance,
    build_analyzer,
    check_analysis_options,
    crop_size,
    face_selection,
    model_files,
    positive_float,
    print_error,
    progress,
    subcommand_parents,
    unit_float,
)
from facegen.errors import FacegenError

__all__ = [
    "add_analyze_parsers",
    "attribute_estimator",
    "build_attribute_estimator",
    "cmd_analyze",
    "cmd_compare",
    "cmd_embed",
]


def add_analyze_parsers(sub: Any) -> None:
    ana = analysis_options()
    a = sub.add_parser(
        "analyze",
        parents=[*subcommand_parents(), ana],
        help="detect faces, landmarks, aligned crops and embeddings",
        description="Per image: a JSON with faces/boxes/scores/kps5/landmarks, aligned crops, "
        "embeddings (safetensors) and an annotated preview PNG.",
    )
    a.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders (walked)")
    a.add_argument("--out", type=Path, help="output folder (required unless --json)")
    a.add_argument("--json", action="store_true", help="print machine-readable results on stdout")
    a.add_argument("--select", type=face_selection, default="all", help="all|largest|best|INDEX")
    a.add_argument(
        "--crop-size", type=crop_size, default=112, help="aligned crop size, 16…4096 (112)"
    )
    a.add_argument("--template", choices=["arcface", "ffhq"], default="arcface")
    a.add_argument(
        "--margin", type=positive_float, default=1.0, help="ffhq crop margin multiplier (1.0)"
    )
    a.add_argument("--no-preview", action="store_true", help="skip the annotated preview PNG")
    a.add_argument(
        "--attributes",
        nargs="?",
        const="genderage",
        type=attribute_estimator,
        metavar="NAME|JSON",
        help="estimate each face's attributes (stored under extras.attributes): a registered "
        "estimator (genderage when no value is given) or a classifier's .json description",
    )
    a.add_argument(
        "--attribute-model",
        metavar="PATH",
        help="explicit attribute model file (instead of the preset's or the JSON's `model`)",
    )
    a.set_defaults(func=cmd_analyze)

    e = sub.add_parser(
        "embed",
        parents=[*subcommand_parents(), ana],
        help="identity embeddings of one face per image → safetensors",
    )
    e.add_argument("images", nargs="+", metavar="IMAGE")
    e.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    e.add_argument("--select", type=face_selection, default="largest", help="largest|best|INDEX")
    e.set_defaults(func=cmd_embed)

    c = sub.add_parser(
        "compare",
        parents=[*subcommand_parents(), ana],
        help="same person? similarity of the largest face in two images",
    )
    c.add_argument("image_a", metavar="A")
    c.add_argument("image_b", metavar="B")
    c.add_argument(
        "--threshold",
        type=unit_float,
        help="cosine threshold (default: the encoder's measured one)",
    )
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_compare)


def attribute_estimator(text: str) -> str:
    """``--attributes`` value: a registered estimator name or a path ending in ``.json``."""
    from facegen.backends import ATTRIBUTE_ESTIMATORS

    if text.lower().endswith(".json") or (text in ATTRIBUTE_ESTIMATORS and text != "onnx-json"):
        return text
    names = [n for n in ATTRIBUTE_ESTIMATORS.names() if n != "onnx-json"]
    raise argparse.ArgumentTypeError(
        f"must be one of {', '.join(names)} or the path of a classifier's .json description, "
        f"got {text!r}"
    )


def build_attribute_estimator(args: argparse.Namespace) -> Any:
    """The ``--attributes`` estimator (``None`` when not asked for); loads its model now, so a
    missing file stops the run before any image is read."""
    from facegen.backends import ATTRIBUTE_ESTIMATORS

    if args.attributes is None:
        if args.attribute_model:
            raise FacegenError("`--attribute-model` applies with `--attributes` only")
        return None
    opts: dict[str, Any] = {"device": args.device, "offline": True if args.offline else None}
    if args.attribute_model:
        opts["model_path"] = args.attribute_model
    name = args.attributes
    if name.lower().endswith(".json"):
        name, opts["config"] = "onnx-json", args.attributes
    return ATTRIBUTE_ESTIMATORS.create(name, **opts)  # a missing file's error names the option


def cmd_analyze(args: argparse.Namespace) -> int:
    from facegen.analysis_writer import AnalysisWriter
    from facegen.image_io import find_images, load_image, pixel_limit

    check_analysis_options(args)
    pixel_limit()  # a bad FACEGEN_MAX_PIXELS is one error, not one per image

    if args.out is None and not args.json:
        raise FacegenError("`--out DIR` is required unless --json is given")
    # never walk into our own output folder (a re-run would analyse its crops and previews)
    files = find_images(args.images, exclude=[args.out] if args.out is not None else ())
    if not files:
        raise FacegenError("no image files found in the given paths")
    analyzer = build_analyzer(args, need_encoder=False)
    estimator = build_attribute_estimator(args)
    provenance: dict[str, Any] = {"command": "analyze", **analysis_provenance(args, analyzer)}
    if estimator is not None:
        provenance["attributes"] = {
            "estimator": estimator.name,
            "attributes": [a.to_dict() for a in estimator.attributes],
        }
    writer = (
        AnalysisWriter(
            args.out,
            crop_size=args.crop_size,
            template=args.template,
            margin=args.margin,
            preview=not args.no_preview,
            provenance=provenance,
        )
        if args.out is not None
        else None
    )
    results: list[dict[str, Any]] = []
    failures = 0
    try:
        for path in progress(files, "analyze"):
            try:
                image = load_image(path)
                faces = analyzer.analyze(image, select=args.select, source=str(path))
                if estimator is not None and faces:
                    estimates = estimator.estimate(image, faces)
                    faces = [
                        f.replace(extras={**f.extras, "attributes": e.to_dict()})
                        for f, e in zip(faces, estimates)
                    ]
            except FacegenError as exc:
                failures += 1
                print_error(str(exc))
                results.append({"source": str(path), "error": str(exc)})
                if writer is not None:
                    writer.add_failure(path, str(exc))
                continue
            if not faces:
                print(f"facegen: warning: {path}: no face found", file=sys.stderr)
            record = (
                writer.write(path, image, faces)
                if writer is not None
                else {
                    "source": str(path),
                    "width": image.shape[1],
                    "height": image.shape[0],
                    "faces": [f.to_dict() for f in faces],
                }
            )
            if args.json and writer is None:
                for fd, f in zip(record["faces"], faces):
                    if f.embedding is not None:
                        fd["embedding"]["vector"] = f.embedding.vector.tolist()
            results.append(record)
    finally:
        # the manifest records what was done even when the run stops early
        if writer is not None:
            files = model_files(analyzer)  # some load lazily
            if estimator is not None:
                files["attributes"] = estimator.model_files()
            writer.provenance["model_files"] = files
            writer.close()
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif writer is not None:
        n_faces = sum(len(r.get("faces", [])) for r in results)
        print(
            f"analyzed {len(files) - failures}/{len(files)} image(s), {n_faces} face(s) → {args.out}"
        )
    return EXIT_ERROR if failures else EXIT_OK


def cmd_embed(args: argparse.Namespace) -> int:
    from facegen.embedding_io import save_embeddings
    from facegen.image_io import find_images, pixel_limit

    check_analysis_options(args)
    pixel_limit()

    if args.select == "all":
        raise FacegenError("`--select` must pick one face per image (largest, best or INDEX)")
    files = find_images(args.images)
    analyzer = build_analyzer(args, need_encoder=True)
    embs, names, failures = [], [], 0
    for path in progress(files, "embed"):
        try:
            face = analyzer.analyze(path, select=args.select, source=str(path))[0]
        except FacegenError as exc:
            failures += 1
            print_error(str(exc))
            continue
        embs.append(face.embedding)
        names.append(str(path))
    if not embs:
        raise FacegenError("no embeddings were produced")
    save_embeddings(args.out, embs, names=names, extra=analysis_provenance(args, analyzer))
    print(f"wrote {len(embs)} {embs[0].dim}-D embedding(s) ({embs[0].encoder_id}) → {args.out}")
    return EXIT_ERROR if failures else EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    check_analysis_options(args)
    analyzer = build_analyzer(args, need_encoder=True)
    a = analyzer.embed(args.image_a, source=args.image_a)
    b = analyzer.embed(args.image_b, source=args.image_b)
    sim = a.similarity(b)
    thr = args.threshold if args.threshold is not None else analyzer.encoder.same_person_threshold
    same = sim >= thr
    if args.json:
        json.dump(
            {
                "a": args.image_a,
                "b": args.image_b,
                "similarity": round(sim, 6),
                "threshold": thr,
                "same_person": bool(same),
                "encoder_id": a.encoder_id,
            },
            sys.stdout,
        )
        sys.stdout.write("\n")
    else:
        verdict = "same person" if same else "different people"
        rel = "≥" if same else "<"
        print(f"similarity {sim:.4f} {rel} threshold {thr:.4f} ({a.encoder_id}): {verdict}")
    return EXIT_OK
