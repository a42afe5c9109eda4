"""The ``facegen`` command line.

Thin by design: it parses and validates options, calls ``facegen``'s layers and prints.
Errors print one line (``facegen: error: …``) and exit non-zero; ``--debug`` shows tracebacks.
Each command lives in its own module (``analyze``, ``generate``, ``dataset``, ``anonymize``,
``swap``, ``train``, ``serve``, ``doctor``, ``models``) with the option types of ``options``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence

from facegen._version import __version__
from facegen.app.cli.analyze import add_analyze_parsers
from facegen.app.cli.anonymize import add_edit_parsers
from facegen.app.cli.dataset import add_dataset_parser
from facegen.app.cli.doctor import add_doctor_parser
from facegen.app.cli.generate import add_generate_parser
from facegen.app.cli.models import add_models_parsers
from facegen.app.cli.options import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    common_options,
    print_error,
)
from facegen.app.cli.serve import add_app_parser
from facegen.app.cli.swap import add_swap_parsers
from facegen.app.cli.train import add_train_parsers
from facegen.compat import use_pil_image_processors
from facegen.errors import FacegenError

__all__ = ["build_parser", "main"]

logger = logging.getLogger("facegen.cli")


def build_parser() -> argparse.ArgumentParser:
    """The ``facegen`` parser: each command module adds its own sub-parsers."""
    parser = argparse.ArgumentParser(
        prog="facegen",
        description="facegen: face analysis, identity embeddings and identity-preserving generation.",
        parents=[common_options(top=True)],
    )
    parser.add_argument("--version", action="version", version=f"facegen {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (
        add_analyze_parsers,
        add_generate_parser,
        add_dataset_parser,
        add_edit_parsers,
        add_swap_parsers,
        add_train_parsers,
        add_app_parser,
        add_doctor_parser,
        add_models_parsers,
    ):
        add(sub)
    return parser


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
        print_error("interrupted")
        return EXIT_INTERRUPTED
    except (FacegenError, ValueError) as exc:
        # FacegenError and the ValueErrors of argument checks are the user's to fix:
        # one message, no traceback (multi-line ones, like a missing model, keep their detail)
        if args.debug:
            raise
        print_error(str(exc))
        return EXIT_ERROR
    except OSError as exc:
        if args.debug:
            raise
        print_error(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        return EXIT_ERROR
    except MemoryError:
        if args.debug:
            raise
        print_error("out of memory; ask for fewer or smaller images, or a smaller batch")
        return EXIT_ERROR
    except Exception as exc:  # a bug: still one line, with what to do about it
        if args.debug:
            raise
        logger.debug("internal error", exc_info=True)
        first = str(exc).splitlines()[0] if str(exc) else ""
        print_error(
            f"internal error ({type(exc).__name__}{': ' + first if first else ''}); please "
            "report it with the output of `facegen doctor` and of this command with --debug"
        )
        return EXIT_ERROR
    logger.debug("%s took %.2fs", args.command, time.perf_counter() - start)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
