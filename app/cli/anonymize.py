"""``facegen anonymize`` and ``facegen provenance``: privacy edits and synthetic-media labels."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facegen.app.cli.options import (
    add_generation_options,
    add_video_options,
    face_selection,
    positive_int,
    resumed_note,
    subcommand_parents,
    video_detector,
    video_pass_options,
)
from facegen.errors import FacegenError

if TYPE_CHECKING:
    from facegen.analyzer import FaceAnalyzer
    from facegen.pipelines.editing.anonymize import AnonymizeOptions, ReplaceFaceFn

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
    from facegen.pipelines.editing.options import ANONYMIZE_MODES, CLASSICAL_MODES, OUTPUT_FORMATS

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
    # every AnonymizeOptions field has an option of its name (dest): see _anonymize_options
    a.add_argument("input", type=Path, metavar="INPUT")
    a.add_argument("--out", type=Path, required=True, help="output folder")
    a.add_argument("--mode", choices=ANONYMIZE_MODES, default="blur")
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
    a.add_argument(
        "--blocks",
        dest="pixel_blocks",
        type=int,
        default=8,
        help="pixelate: blocks across a face (8)",
    )
    a.add_argument("--fill", type=_rgb, default=(0, 0, 0), metavar="R,G,B", help="mask colour")
    a.add_argument("--format", dest="output_format", choices=OUTPUT_FORMATS, help="output format")
    a.add_argument("--json", action="store_true", help="print the per-file report as JSON")
    v = a.add_argument_group(
        "video",
        "INPUT may be a video (.mp4 .m4v .mov .mkv .webm .avi; needs facegen[video]): --out is "
        "then the output .mp4 (or a folder for it), faces are tracked across frames and covered "
        "on every frame, also where the detector missed them between detections; the audio is "
        "copied; a JSON report lands beside the video (OUT.json)",
    )
    add_video_options(v)
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
        "--fallback", dest="fallback_mode", choices=CLASSICAL_MODES, default="blur", help="(blur)"
    )
    g.add_argument(
        "--restore", choices=["gfpgan", "codeformer"],
        help="restore each generated face after it passed verification (GFPGAN v1.4 or "
        "CodeFormer ONNX; models from the hub)",
    )  # fmt: skip
    g.add_argument("--restore-blend", type=float, default=0.8, help="restored weight, 0-1 (0.8)")
    g.add_argument("--fidelity", type=float, default=0.5, help="CodeFormer's w (0.5)")
    add_generation_options(g)
    a.set_defaults(func=cmd_anonymize)

    p = sub.add_parser("provenance", parents=subcommand_parents(), help="synthetic-media labels")
    psub = p.add_subparsers(dest="provenance_command", metavar="ACTION", required=True)
    c = psub.add_parser(
        "check",
        parents=subcommand_parents(),
        help="report facegen's metadata and the invisible watermark per image or video",
    )
    c.add_argument("images", nargs="+", type=Path, metavar="FILE", help="images, videos or folders")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_provenance_check)


def _anonymize_options(args: argparse.Namespace) -> AnonymizeOptions:
    """The options of ``facegen anonymize``: each field from the option of its name."""
    from dataclasses import fields

    from facegen.pipelines.editing.anonymize import AnonymizeOptions

    return AnonymizeOptions(**{f.name: getattr(args, f.name) for f in fields(AnonymizeOptions)})


def _replacement(args: argparse.Namespace) -> ReplaceFaceFn | None:
    """The ``generate`` mode's hook (pipeline and verifier loaded), else None."""
    if args.mode != "generate":
        return None
    import os

    from facegen.app.cli.swap import edit_options, load_edit_pipeline
    from facegen.image_io import find_images
    from facegen.pipelines.editing.jobs import face_replacement

    options = edit_options(args)
    pipe, verifier = load_edit_pipeline(args)
    secret = args.secret or os.environ.get("FACEGEN_SECRET")
    images = find_images([args.input]) if secret else []
    hooks = face_replacement(
        pipe, verifier, options, attempts=args.attempts, secret=secret, images=images
    )
    return _with_restoration(args, hooks)


def _with_restoration(args: argparse.Namespace, hooks: Any) -> Any:
    """The generate hooks with --restore applied to every accepted face."""
    if not getattr(args, "restore", None):
        return hooks
    from facegen.pipelines.editing.oneshot_jobs import load_restorer, restore_generated

    restorer = load_restorer(
        args.restore, fidelity=args.fidelity, device=args.device, offline=args.offline
    )
    return restore_generated(hooks, restorer, args.restore_blend)


def cmd_anonymize(args: argparse.Namespace) -> int:
    from facegen.pipelines.editing.jobs import edit_analyzer

    if not args.input.exists():
        raise FacegenError(f"{args.input} does not exist")
    options = _anonymize_options(args)
    from facegen.pipelines.editing.video_anonymize import is_video_path

    if args.input.is_file() and is_video_path(args.input):
        return _anonymize_video(args, options)
    videos: list[Path] = []
    if args.input.is_dir():
        from facegen.image_io import find_images
        from facegen.pipelines.editing.video_anonymize import find_videos

        videos = find_videos(args.input, exclude=args.out)
        if videos and not find_images([args.input], exclude=[args.out]):
            return _anonymize_video_folder(args, options)
    # 68 landmarks: the mask follows the jaw and brows instead of the box
    analyzer = edit_analyzer(encoder=False)
    replace_face = _replacement(args)
    if args.input.is_file():
        return _anonymize_file(args, analyzer, options, replace_face)
    rc = _anonymize_folder(args, analyzer, options, replace_face)
    return max(rc, _anonymize_video_folder(args, options)) if videos else rc


def _anonymize_folder(
    args: argparse.Namespace,
    analyzer: FaceAnalyzer,
    options: AnonymizeOptions,
    replace_face: ReplaceFaceFn | None,
) -> int:
    from tqdm.auto import tqdm

    from facegen.pipelines.editing.anonymize_folder import anonymize_folder

    bar = tqdm(total=None, desc="anonymize", unit="img", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        rep = anonymize_folder(
            args.input, args.out, analyzer, options, replace_face=replace_face,
            output_format=args.output_format, watermark=not args.no_watermark, progress=progress,
        )  # fmt: skip
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


def _anonymize_file(
    args: argparse.Namespace,
    analyzer: FaceAnalyzer,
    options: AnonymizeOptions,
    replace_face: ReplaceFaceFn | None,
) -> int:
    from facegen.pipelines.editing.jobs import anonymize_file, output_name

    job = anonymize_file(
        args.input, args.out / output_name(args.input.name, args.output_format), analyzer,
        options, replace_face=replace_face, watermark=not args.no_watermark,
    )  # fmt: skip
    faces = job.record["faces"]
    if args.json:
        print(json.dumps({"input": str(args.input), "output": str(job.path), "faces": faces}))
        return 0
    for f in faces:
        note = f" (fallback: {f['fallback_reason']})" if f.get("fallback") else ""
        sim = f" similarity {f['similarity']:.3f}" if f.get("similarity") is not None else ""
        print(f"face {f['index']}: {f['mode']}{sim} bbox {[round(v) for v in f['bbox']]}{note}")
    print(f"{len(faces)} of {job.result.num_detected} detected face(s) anonymized → {job.path}")
    return 0


def _track_replacement(
    args: argparse.Namespace, detector: Any, videos: list[Path], names: list[str]
) -> Any:
    """Mode ``generate`` on video: one synthetic identity per track, or with --secret one per
    real person across ``videos`` (read once first to cluster their tracks; pipeline and
    verifier loaded); None for the classical modes."""
    if args.mode != "generate":
        return None
    import os

    from facegen.app.cli.swap import edit_options, load_edit_pipeline
    from facegen.pipelines.editing.jobs import track_replacement

    pipe, verifier = load_edit_pipeline(args)
    secret = args.secret or os.environ.get("FACEGEN_SECRET")
    if not secret:
        hooks = track_replacement(pipe, verifier, edit_options(args), attempts=args.attempts)
        return _with_restoration(args, hooks)
    from facegen.pipelines.editing.video_pseudonyms import fit_video_pseudonyms, resume_token

    def on_video(path: Path, k: int, total: int) -> None:
        print(f"finding who is who: [{k + 1}/{total}] {path.name}", file=sys.stderr)

    spec = pipe.identity_spec
    pseudonyms = fit_video_pseudonyms(
        videos, detector, verifier, secret, encoder_id=spec.encoder_ids[0], dim=spec.dim,
        names=names, detect_every=args.detect_every, start=args.start, end=args.end,
        on_video=on_video,
    )  # fmt: skip
    print(
        f"{pseudonyms.num_people} person(s) across {len(videos)} video(s), one pseudonym each",
        file=sys.stderr,
    )
    hooks = track_replacement(
        pipe, verifier, edit_options(args), attempts=args.attempts, pseudonyms=pseudonyms,
        secret_token=resume_token(secret),
    )  # fmt: skip
    return _with_restoration(args, hooks)


def _anonymize_video(args: argparse.Namespace, options: AnonymizeOptions) -> int:
    from tqdm.auto import tqdm

    from facegen.fileio import write_json
    from facegen.pipelines.editing.video_anonymize import anonymize_video

    out = args.out
    if out.suffix.lower() not in (".mp4", ".m4v"):
        out = out / (args.input.stem + ".mp4")
    if out.resolve() == args.input.resolve():
        raise FacegenError(f"--out {out} is the input itself: choose another file")
    detector = video_detector(args.video_detector)
    hooks = _track_replacement(args, detector, [args.input], [args.input.name])
    if hooks is not None:
        hooks = hooks.for_video(args.input.name)
    bar = tqdm(total=None, desc=args.input.name, unit="frame", file=sys.stderr)

    def progress(done: int, total: int | None) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        report = anonymize_video(
            args.input, out, detector, options, replace_face_for_track=hooks, progress=progress,
            **video_pass_options(args),
        )  # fmt: skip
    finally:
        bar.close()
    data = report.to_dict()
    report_path = write_json(out.with_suffix(".json"), data)
    if args.json:
        print(json.dumps(data, indent=2))
    print(
        f"{report.frames} frames ({report.frames_detected} through {data['settings']['detector']}"
        f"), {len(report.tracks)} face track(s), {report.faces_covered} faces covered "
        f"({report.faces_filled} filled in between detections), "
        f"{report.frames_per_second:.1f} frames/s → {out} (report: {report_path})"
        f"{resumed_note(report)}"
    )
    if report.faces_detected == 0:
        print(f"warning: no face was detected in {args.input}", file=sys.stderr)
        return 1
    return 0


def _anonymize_video_folder(args: argparse.Namespace, options: AnonymizeOptions) -> int:
    """The videos of a folder, into the mirrored tree under --out (resumable per video)."""
    from tqdm.auto import tqdm

    from facegen.pipelines.editing.video_anonymize import anonymize_video_folder, find_videos

    detector = video_detector(args.video_detector)
    videos = find_videos(args.input, exclude=args.out)
    names = [str(v.relative_to(args.input)) for v in videos]
    hooks = _track_replacement(args, detector, videos, names)
    bars: list[Any] = []

    def on_video(path: Path, k: int, total: int) -> Any:
        for bar in bars:
            bar.close()
        bar = tqdm(total=None, desc=f"[{k + 1}/{total}] {path.name}", unit="frame",
                   file=sys.stderr)  # fmt: skip
        bars[:] = [bar]

        def progress(done: int, count: int | None) -> None:
            bar.total, bar.n = count, done
            bar.refresh()

        return progress

    try:
        rep = anonymize_video_folder(
            args.input, args.out, detector, options, on_video=on_video,
            replace_face_for_track=hooks, **video_pass_options(args),
        )  # fmt: skip
    finally:
        for bar in bars:
            bar.close()
    for name, data in rep.done.items():
        print(f"done     {name}  frames: {data['frames']}  faces covered: {data['faces_covered']}")
    for name in rep.skipped:
        print(f"skipped  {name}  (already done with these settings)")
    for name, why in rep.failed.items():
        print(f"failed   {name}  {why}")
    print(
        f"{len(rep.done)} video(s) anonymized, {len(rep.skipped)} already done, "
        f"{len(rep.no_face)} without a detected face, {len(rep.failed)} failed → {args.out}"
    )
    return 0 if not rep.failed and not rep.no_face else 1


def cmd_provenance_check(args: argparse.Namespace) -> int:
    from facegen.image_io import find_images
    from facegen.pipelines.editing.video_anonymize import find_videos, is_video_path
    from facegen.provenance import check, check_video

    videos = [p for p in args.images if p.is_file() and is_video_path(p)]
    videos += [v for p in args.images if p.is_dir() for v in find_videos(p)]
    others = [p for p in args.images if not (p.is_file() and is_video_path(p))]
    files = (find_images(others) if others else []) + videos
    if not files:
        raise FacegenError("no images or videos found")
    reports = []
    for f in files:
        try:
            rep = check_video(f) if is_video_path(f) else check(f)
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
