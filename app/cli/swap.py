"""``facegen swap`` and ``facegen reenact``: generative identity edits on real photos.

Both parse their options into :class:`~facegen.pipelines.editing.options.EditOptions` and run
the library's jobs (:mod:`facegen.pipelines.editing.jobs`), as the web app does.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facegen.app.cli.options import (
    add_generation_options,
    add_video_options,
    resumed_note,
    subcommand_parents,
    video_detector,
    video_pass_options,
)
from facegen.errors import FacegenError

if TYPE_CHECKING:
    from facegen.analyzer import FaceAnalyzer
    from facegen.pipelines.editing.options import EditOptions
    from facegen.pipelines.generation.id_to_face import IDGenerationMixin
    from facegen.types import IdentityEmbedding

__all__ = ["add_swap_parsers", "edit_options", "load_edit_pipeline"]


def _faces(text: str) -> str | int:
    if text in ("all", "largest", "best", "reference"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be all, largest, best, reference or a face index, got {text!r}"
        ) from None


def add_swap_parsers(sub: Any) -> None:
    s = sub.add_parser(
        "swap",
        parents=subcommand_parents(),
        help="put the source identity on the target face(s), keeping pose and lighting",
        description="Per target face: align, mask from its landmarks, regenerate with the "
        "source identity (its own landmark map keeps pose and expression), colour-match and "
        "paste back; pixels outside the masks are kept. Reports, per face, the similarity to "
        "the source and to the original person with the conditioning encoder and an "
        "independent one (dlib).",
    )
    s.add_argument("--source", type=Path, required=True, help="photo or .safetensors embedding")
    s.add_argument("--target", type=Path, required=True, help="photo, folder or video")
    s.add_argument("--faces", type=_faces, default="all", help="all|largest|best|reference|INDEX")
    s.add_argument("--reference", type=Path, help="with --faces reference: whose faces to swap")
    s.add_argument("--out", type=Path, required=True, help="folder (a video: OUT.mp4 or folder)")
    add_generation_options(s)
    add_oneshot_options(s)
    v = s.add_argument_group(
        "video",
        "TARGET may be a video (needs facegen[video]): faces are tracked and the chosen ones "
        "(all, largest per frame, or the tracks of --reference's person) are regenerated on "
        "every frame, one seed per track; audio copied; a JSON report beside the video",
    )
    add_video_options(v)
    s.set_defaults(func=cmd_swap)
    add_restore_parser(sub)
    r = sub.add_parser(
        "reenact",
        parents=subcommand_parents(),
        help="the source person with the driving photo's pose and expression",
        description="Needs a preset with a landmark ControlNet (--controlnet PATH, or "
        "tiny-controlnet for plumbing).",
    )
    r.add_argument("--source", type=Path, required=True, help="photo of the person")
    r.add_argument("--driving", type=Path, required=True, help="photo with the pose/expression")
    r.add_argument(
        "--identity",
        type=Path,
        help="the source's identity as a .safetensors embedding (default: from its photo)",
    )
    r.add_argument("--out", type=Path, required=True)
    add_generation_options(r)
    r.set_defaults(func=cmd_reenact)


def add_oneshot_options(parser: Any) -> None:
    """The one-shot swap options (``--method`` and what goes with it)."""
    o = parser.add_argument_group(
        "one-shot swap",
        "--method inswapper|simswap|simswap_512|ghost|hyperswap swaps with an ONNX model in one "
        "forward pass per face (fast enough for video) instead of diffusion; the source is "
        "embedded with buffalo_l's ArcFace (w600k_r50). Models come from the Hugging Face hub "
        "(facefusion/models-*) or --swapper-model; `facegen models list` shows each licence "
        "(inswapper: non-commercial)",
    )
    o.add_argument(
        "--method",
        default="diffusion",
        help="diffusion (default), inswapper, simswap, simswap_512, ghost, hyperswap, or a full "
        "swapper name (inswapper_128, simswap_256, ghost_256, hyperswap_256)",
    )
    o.add_argument("--swapper-model", type=Path, help="the swapper's .onnx file (else the hub)")
    o.add_argument(
        "--restore", choices=["gfpgan", "codeformer"], help="restore each swapped face (GFPGAN "
        "v1.4 or CodeFormer, 512 FFHQ crop)",
    )  # fmt: skip
    o.add_argument(
        "--restore-blend", type=float, default=0.8, help="restored face's weight, 0-1 (0.8)"
    )
    o.add_argument(
        "--fidelity", type=float, default=0.5, help="CodeFormer's w: 0 quality, 1 fidelity (0.5)"
    )
    o.add_argument(
        "--mask",
        default="box",
        help="box (default: the crop's square, faded), hull (facegen's landmark mask) or "
        "parsing[:CLASSES] (BiSeNet classes, e.g. parsing:face,-glasses or parsing:skin,nose)",
    )
    o.add_argument(
        "--occlusion", action="store_true", help="keep what covers the face (XSeg occluder)"
    )


def load_oneshot_swap(args: argparse.Namespace) -> Any:
    """The one-shot swapper, restorer and masks the options ask for."""
    from facegen.pipelines.editing.oneshot_jobs import load_oneshot

    return load_oneshot(
        args.method, restore=args.restore, restore_blend=args.restore_blend,
        fidelity=args.fidelity, mask=args.mask, occlusion=args.occlusion, device=args.device,
        offline=args.offline, model_path=args.swapper_model,
    )  # fmt: skip


def edit_options(args: argparse.Namespace) -> EditOptions:
    """The :class:`EditOptions` of the generation options (``add_generation_options``)."""
    from facegen.pipelines.editing.options import EditOptions

    return EditOptions(
        strength=args.strength,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
        prompt=args.prompt or None,
    )


def load_edit_pipeline(args: argparse.Namespace) -> tuple[IDGenerationMixin, FaceAnalyzer]:
    """The preset's pipeline, and the detection analyzer (dlib + 68 landmarks + dlib encoder,
    independent of every conditioning encoder)."""
    from facegen.pipelines.editing import jobs

    pipe = jobs.load_edit_pipeline(
        args.preset,
        device=args.device,
        dtype=args.dtype,
        offline=args.offline,
        controlnet=args.controlnet,
    )
    return pipe, jobs.edit_analyzer()


def _embedding(path: Path) -> IdentityEmbedding:
    from facegen.embedding_io import load_embeddings

    embs, _ = load_embeddings(path)
    if len(embs) != 1:
        raise FacegenError(f"{path} holds {len(embs)} embeddings; give a file with one")
    return embs[0]


def _source_identity(path: Path) -> IdentityEmbedding | Path:
    if path.suffix == ".safetensors":
        return _embedding(path)
    if not path.is_file():
        raise FacegenError(f"source {path} does not exist")
    return path


def _fmt(sims: dict[str, float | None]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in sims.items() if v is not None) or "n/a"


def cmd_swap(args: argparse.Namespace) -> int:

    from facegen.image_io import find_images
    from facegen.pipelines.editing.jobs import output_name, reference_selection, swap_file
    from facegen.pipelines.editing.oneshot_jobs import oneshot_method
    from facegen.pipelines.editing.video_anonymize import is_video_path

    source = _source_identity(args.source)
    oneshot = oneshot_method(args.method) is not None
    if args.target.is_file() and is_video_path(args.target):
        return _swap_video(args, source)
    targets = find_images([args.target]) if args.target.exists() else []
    if not targets:
        raise FacegenError(f"no target images at {args.target}")
    if (args.faces == "reference") != (args.reference is not None):
        raise FacegenError("--faces reference and --reference REF go together")
    if oneshot:
        return _swap_oneshot(args, source, targets)
    options = edit_options(args)
    pipe, analyzer = load_edit_pipeline(args)
    faces = reference_selection(analyzer, args.reference) if args.reference else args.faces

    def swap_one(path: Path) -> dict[str, Any]:
        job = swap_file(
            path, source, args.out / output_name(path.name), pipe, analyzer, faces, options,
            source_name=args.source.name, watermark=not args.no_watermark,
        )  # fmt: skip
        for f in job.result.faces:
            print(
                f"{path.name} face {f.detector_index}: to source {_fmt(f.source_similarity)}; "
                f"to original {_fmt(f.target_similarity)}"
            )
        return {"output": str(job.path), "faces": job.record["faces"]}

    return _swap_each(args, targets, swap_one)


def _swap_each(
    args: argparse.Namespace,
    targets: list[Path],
    swap_one: Callable[[Path], dict[str, Any]],
    *,
    settings: dict[str, Any] | None = None,
    using: str = "",
) -> int:
    """``swap_one`` on each target photo (returning its report entry): a photo that fails is
    reported and the rest go on; writes ``swap_report.json`` and prints the tally."""
    from tqdm.auto import tqdm

    from facegen.fileio import write_json

    report: list[dict[str, Any]] = []
    for path in tqdm(targets, desc="swap", unit="img", file=sys.stderr, disable=len(targets) < 2):
        try:
            report.append({"target": str(path), **swap_one(path)})
        except FacegenError as e:
            print(f"{path.name}: {e}", file=sys.stderr)
            report.append({"target": str(path), "error": str(e)})
    args.out.mkdir(parents=True, exist_ok=True)
    head = {"settings": settings} if settings is not None else {}
    write_json(args.out / "swap_report.json", {**head, "images": report})
    failed = sum("error" in r for r in report)
    print(f"{len(targets) - failed} of {len(targets)} image(s) swapped{using} → {args.out}")
    return 0 if failed == 0 else 1


def _swap_video(args: argparse.Namespace, source: IdentityEmbedding | Path) -> int:
    from tqdm.auto import tqdm

    from facegen.fileio import write_json
    from facegen.pipelines.editing.jobs import reference_selection
    from facegen.pipelines.editing.video_swap import swap_video

    if args.faces not in ("all", "largest", "reference"):
        raise FacegenError(
            f"--faces {args.faces} is for photos; in a video: all, largest or reference"
        )
    if (args.faces == "reference") != (args.reference is not None):
        raise FacegenError("--faces reference and --reference REF go together")
    out = args.out
    if out.suffix.lower() not in (".mp4", ".m4v"):
        out = out / (args.target.stem + ".mp4")
    if out.resolve() == args.target.resolve():
        raise FacegenError(f"--out {out} is the target itself: choose another file")
    pipe, analyzer, source = _video_method(args, source)
    faces: Any = reference_selection(analyzer, args.reference) if args.reference else args.faces
    bar = tqdm(total=None, desc=args.target.name, unit="frame", file=sys.stderr)

    def progress(done: int, total: int | None) -> None:
        bar.total, bar.n = total, done
        bar.refresh()

    try:
        report = swap_video(
            args.target, out, video_detector(args.video_detector), source, pipe,
            edit_options(args), faces=faces, reference_analyzer=analyzer,
            source_name=args.source.name, progress=progress, **video_pass_options(args),
        )  # fmt: skip
    finally:
        bar.close()
    data = report.to_dict()
    report_path = write_json(out.with_suffix(".json"), data)
    print(
        f"{report.frames} frames, {len(report.tracks)} face track(s), {report.faces_generated} "
        f"faces swapped ({report.faces_fallback} skipped by the edit) → {out} "
        f"(report: {report_path}){resumed_note(report)}"
    )
    if report.faces_detected == 0:
        print(f"warning: no face was detected in {args.target}", file=sys.stderr)
        return 1
    return 0


def _video_method(
    args: argparse.Namespace, source: IdentityEmbedding | Path
) -> tuple[Any, FaceAnalyzer, IdentityEmbedding]:
    """The video swap's editor (diffusion pipeline or one-shot swap), the analyzer for
    reference selection, and the source identity in the editor's space."""
    from facegen.pipelines.editing.oneshot_jobs import oneshot_method

    if oneshot_method(args.method) is not None:
        from facegen.pipelines.editing.jobs import edit_analyzer
        from facegen.pipelines.editing.oneshot_jobs import oneshot_source, source_analyzer

        oneshot = load_oneshot_swap(args)
        src_analyzer = source_analyzer(device=args.device, offline=args.offline)
        identity = oneshot_source(source, src_analyzer, name=args.source.name)
        return oneshot, edit_analyzer(), identity
    pipe, analyzer = load_edit_pipeline(args)
    if isinstance(source, Path):
        from facegen.image_io import load_image

        source = pipe.identities_from_images(
            [load_image(source, name=source.name)], select="largest", require_single=False
        )[0]
    return pipe, analyzer, source


def _swap_oneshot(
    args: argparse.Namespace, source: IdentityEmbedding | Path, targets: list[Path]
) -> int:
    """Photos with a one-shot swapper (see ``add_oneshot_options``)."""

    from facegen.pipelines.editing.jobs import edit_analyzer, output_name, reference_selection
    from facegen.pipelines.editing.oneshot_jobs import (
        oneshot_source,
        oneshot_swap_file,
        source_analyzer,
    )

    swap = load_oneshot_swap(args)
    identity = oneshot_source(
        source, source_analyzer(device=args.device, offline=args.offline), name=args.source.name
    )
    analyzer = edit_analyzer()
    faces = reference_selection(analyzer, args.reference) if args.reference else args.faces

    def swap_one(path: Path) -> dict[str, Any]:
        written, record = oneshot_swap_file(
            path, identity, swap, analyzer, args.out / output_name(path.name), faces=faces,
            source_name=args.source.name, watermark=not args.no_watermark,
        )  # fmt: skip
        return {"output": str(written), "faces": record["faces"]}

    return _swap_each(
        args, targets, swap_one, settings=swap.settings(), using=f" with {swap.swapper.name}"
    )


def add_restore_parser(sub: Any) -> None:
    r = sub.add_parser(
        "restore",
        parents=subcommand_parents(),
        help="restore the faces of photos (GFPGAN v1.4 or CodeFormer, ONNX)",
        description="Every face found (dlib) is restored on its 512×512 FFHQ crop and pasted "
        "back, blended with the photo by --blend. Models come from the Hugging Face hub "
        "(facefusion/models-3.0.0) or --model-path.",
    )
    r.add_argument("images", nargs="+", type=Path, help="photos or folders")
    r.add_argument("--out", type=Path, required=True, help="output folder")
    r.add_argument(
        "--model",
        dest="restorer",
        choices=["gfpgan", "codeformer"],
        default="gfpgan",
        help="the restorer (gfpgan)",
    )
    r.add_argument("--model-path", type=Path, help="the restorer's .onnx file (else the hub)")
    r.add_argument("--blend", type=float, default=0.8, help="restored face's weight, 0-1 (0.8)")
    r.add_argument("--fidelity", type=float, default=0.5, help="CodeFormer's w (0.5)")
    r.add_argument("--no-watermark", action="store_true", help="metadata label only")
    r.set_defaults(func=cmd_restore)


def cmd_restore(args: argparse.Namespace) -> int:
    from facegen.image_io import find_images
    from facegen.pipelines.editing.jobs import edit_analyzer, output_name
    from facegen.pipelines.editing.oneshot_jobs import load_restorer, restore_file

    files = find_images(args.images)
    if not files:
        raise FacegenError("no images found")
    restorer = load_restorer(
        args.restorer, fidelity=args.fidelity, device=args.device, offline=args.offline,
        model_path=args.model_path,
    )  # fmt: skip
    analyzer = edit_analyzer(encoder=False)
    failed = 0
    for path in files:
        try:
            written, record = restore_file(
                path, restorer, analyzer, args.out / output_name(path.name), blend=args.blend,
                watermark=not args.no_watermark,
            )  # fmt: skip
        except FacegenError as e:
            print(f"{path.name}: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{path.name}: {len(record['faces'])} face(s) restored → {written}")
    return 0 if failed == 0 else 1


def cmd_reenact(args: argparse.Namespace) -> int:
    from facegen.pipelines.editing.jobs import output_name, reenact_file

    for p in (args.source, args.driving):
        if not p.is_file():
            raise FacegenError(f"{p} does not exist")
    identity = _embedding(args.identity) if args.identity is not None else None
    options = edit_options(args)
    pipe, analyzer = load_edit_pipeline(args)
    job = reenact_file(
        args.source, args.driving, args.out / output_name(args.source.name), pipe, analyzer,
        options, source_identity=identity, watermark=not args.no_watermark,
    )  # fmt: skip
    print(json.dumps({"output": str(job.path), "faces": len(job.result.faces)}))
    return 0
