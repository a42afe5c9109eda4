"""``python -m facegen.app``: serve the web app (the same options as ``facegen app``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from facegen.errors import FacegenError

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    from facegen.app.cli.serve import add_app_options, cmd_app

    parser = argparse.ArgumentParser(
        prog="python -m facegen.app", description="Serve facegen's Gradio web app."
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda[:N], … (default: cpu)")
    parser.add_argument(
        "--offline", action="store_true", help="never download; use only local model files"
    )
    add_app_options(parser)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return cmd_app(args)
    except FacegenError as exc:
        print(f"facegen: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
