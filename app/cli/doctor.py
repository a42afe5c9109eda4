"""``facegen doctor``: what this installation is, for bug reports (see :mod:`facegen.doctor`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from facegen.app.cli.options import subcommand_parents

__all__ = ["add_doctor_parser", "cmd_doctor"]


def add_doctor_parser(sub: Any) -> None:
    """Register ``facegen doctor`` on the CLI's sub-command parser."""
    d = sub.add_parser(
        "doctor",
        parents=subcommand_parents(),
        help="versions, devices, model files, caches and known problems (for bug reports)",
        description="Prints facegen's and its stack's versions, Python, the torch build and "
        "the devices it sees, onnxruntime's providers, which model presets are present "
        "locally and where, the cache folders, offline mode, and known-bad version "
        "combinations. Paste the output into bug reports. Exit code 1 when an error-level "
        "problem was found. Touches no network.",
    )
    d.add_argument("--json", action="store_true", help="print the report as JSON")
    d.add_argument("--no-presets", action="store_true", help="skip looking for each preset's files")
    d.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace) -> int:
    from facegen.adapters.arc2face import ARC2FACE_REPO, SD15_REPO
    from facegen.adapters.faceid_format import FACEID_REPO
    from facegen.doctor import collect, format_report
    from facegen.pipelines.generation.presets import SD15_INPAINT_REPO

    repos = [
        (SD15_REPO, "unet/config.json"),
        (SD15_REPO, "vae/config.json"),
        (SD15_REPO, "text_encoder/config.json"),
        (ARC2FACE_REPO, "arc2face/config.json"),
        (ARC2FACE_REPO, "encoder/config.json"),
        (SD15_INPAINT_REPO, "unet/config.json"),
        (FACEID_REPO, "ip-adapter-faceid_sd15.bin"),
    ]
    report = collect(presets=not args.no_presets, repo_files=repos)
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(format_report(report))
    return 1 if any(p["level"] == "error" for p in report["problems"]) else 0
