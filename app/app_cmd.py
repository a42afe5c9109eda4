"""``facegen app``: serve the Gradio web app (local only unless asked otherwise)."""

from __future__ import annotations

import argparse
from typing import Any

from facegen.errors import FacegenError

__all__ = ["add_app_options", "add_app_parser", "cmd_app"]

_DTYPES = ("float32", "float16", "bfloat16")


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"must be in [1, 65535], got {v}")
    return v


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return v

    return parse


def add_app_options(p: argparse.ArgumentParser) -> None:
    """The app's own options (shared by ``facegen app`` and ``python -m facegen.app``)."""
    from facegen.pipelines.presets import PRESETS

    g = p.add_argument_group("web app")
    g.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (127.0.0.1: this machine only; 0.0.0.0 exposes it to the "
        "network)",
    )
    g.add_argument("--port", type=_port, default=7860, help="(7860)")
    g.add_argument(
        "--preset",
        default="arc2face",
        choices=PRESETS.names(),
        help="generation preset selected first (arc2face); 'tiny' runs offline with random "
        "models (a demo of the plumbing)",
    )
    g.add_argument("--dtype", default="float32", choices=_DTYPES, help="(float32)")
    g.add_argument(
        "--share",
        action="store_true",
        help="also publish a public link through Gradio's relay (off by default)",
    )
    g.add_argument(
        "--max-upload-mb", type=_positive(float), default=25.0, help="largest upload (25)"
    )
    g.add_argument(
        "--max-megapixels",
        type=_positive(float),
        default=40.0,
        help="largest image accepted, checked before decoding (40)",
    )
    g.add_argument(
        "--concurrency",
        type=_positive(int),
        default=1,
        help="model jobs run at the same time (1)",
    )
    g.add_argument(
        "--max-queue", type=_positive(int), default=16, help="requests waiting at most (16)"
    )


def add_app_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``facegen app`` on the CLI's sub-command parser."""
    a = sub.add_parser(
        "app",
        parents=[common],
        help="serve the web app (Generate, Control, Swap, Anonymize, Dataset, Train, Models)",
        description="Starts the Gradio web app on http://HOST:PORT. Models load on first use. "
        "Outputs carry facegen's provenance record and invisible watermark, live in a "
        "temporary folder and are deleted when the session ends or the app stops.",
    )
    add_app_options(a)
    a.set_defaults(func=cmd_app)


def cmd_app(args: argparse.Namespace) -> int:
    """Run the app until interrupted."""
    import functools

    from facegen.app.web import launch_app
    from facegen.app.web_services import AppLimits, Services, default_pipeline_factory

    offline = True if getattr(args, "offline", False) else None
    dtype = getattr(args, "dtype", "float32")
    device = getattr(args, "device", "cpu")
    if dtype == "float16" and str(device).startswith("cpu"):
        raise FacegenError(
            "`--dtype float16` needs a GPU (`--device cuda`); use float32 on the CPU"
        )
    limits = AppLimits(max_upload_mb=args.max_upload_mb, max_pixels=int(args.max_megapixels * 1e6))
    services = Services(
        device=device,
        dtype=dtype,
        default_preset=args.preset,
        limits=limits,
        pipeline_factory=functools.partial(default_pipeline_factory, offline=offline),
        offline=offline,
    )
    try:
        print(f"facegen app on http://{args.host}:{args.port} (Ctrl+C to stop)")
        launch_app(
            services,
            host=args.host,
            port=args.port,
            share=args.share,
            gpu_concurrency=args.concurrency,
            max_queue=args.max_queue,
            quiet=True,
        )
    finally:
        services.close()
    return 0
