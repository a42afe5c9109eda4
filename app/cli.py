"""The ``facegen`` command line.

Thin by design: it parses and validates options, calls ``facegen``'s layers and prints.
Errors print one line (``facegen: error: …``) and exit non-zero; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from facegen._version import __version__
from facegen.compat import use_pil_image_processors
from facegen.errors import FacegenError

__all__ = ["build_parser", "main"]

logger = logging.getLogger("facegen.cli")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


# ---------------------------------------------------------------------------------------------
# option parsing
# ---------------------------------------------------------------------------------------------
def _int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if maximum is not None and not minimum <= v <= maximum:
            raise argparse.ArgumentTypeError(f"must be in [{minimum}, {maximum}], got {v}")
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        return v

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)
_crop_size = _int_at_least(16, 4096)  # the sizes facegen.align.align_face accepts


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def _unit_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not -1.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [-1, 1], got {v}")
    return v


def _selection(text: str) -> str | int:
    if text in ("all", "largest", "best"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be all, largest, best or a face index, got {text!r}"
        ) from None


def _common(*, top: bool) -> argparse.ArgumentParser:
    # Sub-commands repeat the common options with SUPPRESS defaults, so that
    # `facegen --device cuda analyze …` is not overwritten by the sub-parser's default.
    def d(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("--device", default=d("cpu"), help="cpu, cuda[:N], … (default: cpu)")
    g.add_argument(
        "--offline",
        action="store_true",
        default=d(False),
        help="never download; use only local files (also: HF_HUB_OFFLINE=1 or FACEGEN_OFFLINE=1)",
    )
    g.add_argument(
        "--debug", action="store_true", default=d(False), help="verbose logs and full tracebacks"
    )
    return p


def _analysis_options() -> argparse.ArgumentParser:
    from facegen.backends import (
        ARCFACE_PRESETS,
        DETECTORS,
        ENCODERS,
        LANDMARKERS,
        SCRFD_PRESETS,
    )

    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("face analysis")
    g.add_argument("--detector", default="dlib", choices=DETECTORS.names(), help="(default: dlib)")
    g.add_argument("--detector-model", metavar="PATH", help="explicit detector model file")
    g.add_argument(
        "--detector-preset",
        choices=SCRFD_PRESETS,
        help="model preset of --detector insightface (default: antelopev2)",
    )
    g.add_argument(
        "--det-threshold",
        type=float,
        metavar="T",
        help="detector score threshold (backend default)",
    )
    g.add_argument("--max-faces", type=_non_negative_int, default=0, help="0 = all (default)")
    g.add_argument(
        "--landmarker",
        default=None,
        choices=LANDMARKERS.names(),
        help="extra dense landmarks (dlib already gives 68 points)",
    )
    g.add_argument(
        "--encoder", default="dlib", choices=[*ENCODERS.names(), "none"], help="(default: dlib)"
    )
    g.add_argument("--encoder-model", metavar="PATH", help="explicit identity encoder model file")
    g.add_argument(
        "--encoder-preset",
        choices=ARCFACE_PRESETS,
        help="model preset of --encoder arcface-onnx (default: antelopev2)",
    )
    g.add_argument("--flip", action="store_true", help="average embeddings with the mirrored face")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _common(top=False)
    ana = _analysis_options()
    parser = argparse.ArgumentParser(
        prog="facegen",
        description="facegen: face analysis, identity embeddings and identity-preserving generation.",
        parents=[_common(top=True)],
    )
    parser.add_argument("--version", action="version", version=f"facegen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    a = sub.add_parser(
        "analyze",
        parents=[common, ana],
        help="detect faces, landmarks, aligned crops and embeddings",
        description="Per image: a JSON with faces/boxes/scores/kps5/landmarks, aligned crops, "
        "embeddings (safetensors) and an annotated preview PNG.",
    )
    a.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders (walked)")
    a.add_argument("--out", type=Path, help="output folder (required unless --json)")
    a.add_argument("--json", action="store_true", help="print machine-readable results on stdout")
    a.add_argument("--select", type=_selection, default="all", help="all|largest|best|INDEX")
    a.add_argument(
        "--crop-size", type=_crop_size, default=112, help="aligned crop size, 16…4096 (112)"
    )
    a.add_argument("--template", choices=["arcface", "ffhq"], default="arcface")
    a.add_argument(
        "--margin", type=_positive_float, default=1.0, help="ffhq crop margin multiplier (1.0)"
    )
    a.add_argument("--no-preview", action="store_true", help="skip the annotated preview PNG")
    a.set_defaults(func=cmd_analyze)

    e = sub.add_parser(
        "embed",
        parents=[common, ana],
        help="identity embeddings of one face per image → safetensors",
    )
    e.add_argument("images", nargs="+", metavar="IMAGE")
    e.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    e.add_argument("--select", type=_selection, default="largest", help="largest|best|INDEX")
    e.set_defaults(func=cmd_embed)

    c = sub.add_parser(
        "compare",
        parents=[common, ana],
        help="same person? similarity of the largest face in two images",
    )
    c.add_argument("image_a", metavar="A")
    c.add_argument("image_b", metavar="B")
    c.add_argument(
        "--threshold",
        type=_unit_float,
        help="cosine threshold (default: the encoder's measured one)",
    )
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_compare)

    from facegen.app.generate_cmd import add_generate_parser

    add_generate_parser(sub, common, _positive_int)
    from facegen.app.dataset_cmd import add_dataset_parser

    add_dataset_parser(sub, common, _positive_int)
    from facegen.app.edit_cmd import add_edit_parsers

    add_edit_parsers(sub, common, _positive_int)
    from facegen.app.swap_cmd import add_swap_parsers

    add_swap_parsers(sub, common, _positive_int)
    from facegen.app.train_cmd import add_train_parsers

    add_train_parsers(sub, common, _positive_int)
    from facegen.app.app_cmd import add_app_parser

    add_app_parser(sub, common)
    from facegen.app.doctor_cmd import add_doctor_parser

    add_doctor_parser(sub, common)

    s = sub.add_parser(
        "samples",
        parents=[common],
        help="print paths of sample face photos shipped by installed packages",
    )
    s.add_argument("names", nargs="*", metavar="NAME", help="t1, hanks, astronaut (default: all)")
    s.set_defaults(func=cmd_samples)

    m = sub.add_parser("models", parents=[common], help="list, locate and download model weights")
    msub = m.add_subparsers(dest="models_command", metavar="ACTION")
    ml = msub.add_parser("list", parents=[common], help="known model presets")
    ml.add_argument("--json", action="store_true")
    mw = msub.add_parser("where", parents=[common], help="where each file of a preset is")
    mw.add_argument("name")
    md = msub.add_parser("download", parents=[common], help="fetch a preset's files")
    md.add_argument("name", nargs="+", help="one or more preset names")
    m.set_defaults(func=cmd_models)
    return parser


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _check_analysis_options(args: argparse.Namespace) -> None:
    """Option combinations argparse cannot check; run before any file is touched."""
    if args.detector_preset and args.detector != "insightface":
        raise FacegenError("`--detector-preset` applies to `--detector insightface` only")
    if args.encoder_preset and args.encoder != "arcface-onnx":
        raise FacegenError("`--encoder-preset` applies to `--encoder arcface-onnx` only")


def _analyzer(args: argparse.Namespace, *, need_encoder: bool) -> Any:
    from facegen.analyzer import FaceAnalyzer

    det_opts: dict[str, Any] = {"max_faces": args.max_faces}
    if args.det_threshold is not None:
        det_opts["score_threshold"] = args.det_threshold
    if args.detector_model:
        det_opts["model_path"] = args.detector_model
    if args.detector_preset:
        det_opts["preset"] = args.detector_preset
    enc_opts: dict[str, Any] = {"flip": args.flip}
    if args.encoder_model:
        enc_opts["model_path"] = args.encoder_model
    if args.encoder_preset:
        enc_opts["preset"] = args.encoder_preset
    encoder = None if args.encoder == "none" else args.encoder
    if need_encoder and encoder is None:
        raise FacegenError(
            "this command needs an identity encoder; `--encoder none` is not allowed"
        )
    return FaceAnalyzer.from_names(
        args.detector,
        args.landmarker,
        encoder,
        device=args.device,
        offline=True if args.offline else None,
        detector_options=det_opts,
        encoder_options=enc_opts,
    )


def _model_files(analyzer: Any) -> dict[str, dict[str, str]]:
    """The weight files each component loaded (as far as the backend knows them)."""
    parts = {
        "detector": analyzer.detector,
        "landmarker": analyzer.landmarker,
        "encoder": analyzer.encoder,
    }
    return {k: (c.model_files() if c is not None else {}) for k, c in parts.items()}


def _provenance(args: argparse.Namespace, analyzer: Any) -> dict[str, Any]:
    """How faces were found and embedded: components, the options in effect, model files."""
    det, enc = analyzer.detector, analyzer.encoder
    return {
        "detector": det.name,
        "landmarker": getattr(analyzer.landmarker, "name", None),
        "encoder": getattr(enc, "encoder_id", None),
        "device": args.device,
        "options": {
            "select": args.select,
            "det_threshold": det.score_threshold,  # the backend's default when not given
            "max_faces": det.max_faces,
            "flip": enc.flip if enc is not None else None,
            "detector_preset": args.detector_preset,
            "encoder_preset": args.encoder_preset,
        },
        "model_files": _model_files(analyzer),
    }


def _progress(items: Sequence[Any], desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="img", disable=len(items) < 2 or None, file=sys.stderr)


def _err(msg: str) -> None:
    print(f"facegen: error: {msg}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------
def cmd_analyze(args: argparse.Namespace) -> int:
    from facegen.analysis_writer import AnalysisWriter
    from facegen.image_io import find_images, load_image, pixel_limit

    _check_analysis_options(args)
    pixel_limit()  # a bad FACEGEN_MAX_PIXELS is one error, not one per image

    if args.out is None and not args.json:
        raise FacegenError("`--out DIR` is required unless --json is given")
    # never walk into our own output folder (a re-run would analyse its crops and previews)
    files = find_images(args.images, exclude=[args.out] if args.out is not None else ())
    if not files:
        raise FacegenError("no image files found in the given paths")
    analyzer = _analyzer(args, need_encoder=False)
    writer = (
        AnalysisWriter(
            args.out,
            crop_size=args.crop_size,
            template=args.template,
            margin=args.margin,
            preview=not args.no_preview,
            provenance={"command": "analyze", **_provenance(args, analyzer)},
        )
        if args.out is not None
        else None
    )
    results: list[dict[str, Any]] = []
    failures = 0
    try:
        for path in _progress(files, "analyze"):
            try:
                image = load_image(path)
                faces = analyzer.analyze(image, select=args.select, source=str(path))
            except FacegenError as exc:
                failures += 1
                _err(str(exc))
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
            writer.provenance["model_files"] = _model_files(analyzer)  # some load lazily
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

    _check_analysis_options(args)
    pixel_limit()

    if args.select == "all":
        raise FacegenError("`--select` must pick one face per image (largest, best or INDEX)")
    files = find_images(args.images)
    analyzer = _analyzer(args, need_encoder=True)
    embs, names, failures = [], [], 0
    for path in _progress(files, "embed"):
        try:
            face = analyzer.analyze(path, select=args.select, source=str(path))[0]
        except FacegenError as exc:
            failures += 1
            _err(str(exc))
            continue
        embs.append(face.embedding)
        names.append(str(path))
    if not embs:
        raise FacegenError("no embeddings were produced")
    save_embeddings(args.out, embs, names=names, extra=_provenance(args, analyzer))
    print(f"wrote {len(embs)} {embs[0].dim}-D embedding(s) ({embs[0].encoder_id}) → {args.out}")
    return EXIT_ERROR if failures else EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    _check_analysis_options(args)
    analyzer = _analyzer(args, need_encoder=True)
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


def cmd_samples(args: argparse.Namespace) -> int:
    from facegen.samples import SAMPLES, sample_path

    for name in args.names or list(SAMPLES):
        print(sample_path(name))
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from facegen import hub

    action = getattr(args, "models_command", None)
    if action is None or action == "list":
        rows = []
        for p in hub.presets():
            st = hub.status(p)
            rows.append(
                {
                    "name": p.name,
                    "source": p.source,
                    "files_present": sum(v is not None for v in st.values()),
                    "files": len(p.files),
                    "description": p.description,
                    "license": p.license,
                }
            )
        if getattr(args, "json", False):
            json.dump(rows, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            for r in rows:
                print(f"{r['name']:<18} {r['files_present']}/{r['files']} local  {r['source']}")
                print(f"{'':<18} {r['description']}")
                print(f"{'':<18} licence: {r['license']}")
        return EXIT_OK
    if action == "where":
        for f, where in hub.status(args.name).items():
            print(f"{f}: {where or 'MISSING'}")
        return EXIT_OK
    presets = [hub.get_preset(name) for name in args.name]  # unknown names fail first
    for preset in presets:
        for f in _progress(list(preset.files), f"download {preset.name}"):
            path = hub.resolve(preset, f, offline=True if args.offline else None)
            print(f"{preset.name}/{f}: {path}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
def _setup_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("facegen")
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if debug else logging.WARNING)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (AttributeError, OSError, ValueError):  # stdout without a file descriptor
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``facegen`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    _setup_logging(args.debug)
    use_pil_image_processors()  # no torchvision warnings from diffusers' imports
    start = time.perf_counter()
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
    except BrokenPipeError:
        # the reader went away (`facegen … | head`): nothing to say, and nowhere to say it
        _silence_stdout()
        return EXIT_ERROR
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except (FacegenError, ValueError) as exc:
        # FacegenError and the ValueErrors of argument checks are the user's to fix:
        # one message, no traceback (multi-line ones, like a missing model, keep their detail)
        if args.debug:
            raise
        _err(str(exc))
        return EXIT_ERROR
    except OSError as exc:
        if args.debug:
            raise
        _err(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        return EXIT_ERROR
    except MemoryError:
        if args.debug:
            raise
        _err("out of memory; ask for fewer or smaller images, or a smaller batch")
        return EXIT_ERROR
    except Exception as exc:  # a bug: still one line, with what to do about it
        if args.debug:
            raise
        logger.debug("internal error", exc_info=True)
        first = str(exc).splitlines()[0] if str(exc) else ""
        _err(
            f"internal error ({type(exc).__name__}{': ' + first if first else ''}); please "
            "report it with the output of `facegen doctor` and of this command with --debug"
        )
        return EXIT_ERROR
    logger.debug("%s took %.2fs", args.command, time.perf_counter() - start)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
