"""``facegen samples`` and ``facegen models``: sample photos and model weights."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from facegen.app.cli.options import EXIT_OK, progress, subcommand_parents

__all__ = ["add_models_parsers", "cmd_models", "cmd_samples"]


def add_models_parsers(sub: Any) -> None:
    s = sub.add_parser(
        "samples",
        parents=subcommand_parents(),
        help="print paths of sample face photos shipped by installed packages",
    )
    s.add_argument("names", nargs="*", metavar="NAME", help="t1, hanks, astronaut (default: all)")
    s.set_defaults(func=cmd_samples)

    m = sub.add_parser(
        "models", parents=subcommand_parents(), help="list, locate and download model weights"
    )
    msub = m.add_subparsers(dest="models_command", metavar="ACTION")
    ml = msub.add_parser("list", parents=subcommand_parents(), help="known model presets")
    ml.add_argument("--json", action="store_true")
    mw = msub.add_parser(
        "where", parents=subcommand_parents(), help="where each file of a preset is"
    )
    mw.add_argument("name")
    md = msub.add_parser("download", parents=subcommand_parents(), help="fetch a preset's files")
    md.add_argument("name", nargs="+", help="one or more preset names")
    m.set_defaults(func=cmd_models)


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
            width = max([18, *(len(r["name"]) for r in rows)])
            for r in rows:
                print(
                    f"{r['name']:<{width}} {r['files_present']}/{r['files']} local  {r['source']}"
                )
                print(f"{'':<{width}} {r['description']}")
                print(f"{'':<{width}} licence: {r['license']}")
        return EXIT_OK
    if action == "where":
        for f, where in hub.status(args.name).items():
            print(f"{f}: {where or 'MISSING'}")
        return EXIT_OK
    presets = [hub.get_preset(name) for name in args.name]  # unknown names fail first
    for preset in presets:
        for f in progress(list(preset.files), f"download {preset.name}"):
            path = hub.resolve(preset, f, offline=True if args.offline else None)
            print(f"{preset.name}/{f}: {path}")
    return EXIT_OK
