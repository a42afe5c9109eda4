"""``facegen app``: serve the Gradio web app (local only unless asked otherwise)."""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from facegen.app.cli.options import subcommand_parents
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
    from facegen.pipelines.generation.presets import PRESETS

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
        default=None,
        choices=PRESETS.names(),
        help="generation preset selected first (arc2face when its weights are on this "
        "machine, else demo-orl: the small generator facegen ships, faces offline); 'tiny' "
        "runs random models (a demo of the plumbing)",
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
    g.add_argument(
        "--keep-outputs",
        type=Path,
        metavar="DIR",
        help="write the outputs under DIR and keep them after sessions end and the app stops "
        "(default: a temporary folder, deleted with each session)",
    )
    g.add_argument(
        "--session-ttl",
        type=_positive(float),
        default=60.0,
        metavar="MINUTES",
        help="an idle session (e.g. an API client) ends after this long, and its files are "
        "deleted; a closed browser tab ends its session at once (60)",
    )


def add_app_parser(sub: Any) -> None:
    """Register ``facegen app`` on the CLI's sub-command parser."""
    a = sub.add_parser(
        "app",
        parents=subcommand_parents(),
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

    from facegen.app.web.app import launch_app
    from facegen.app.web.services import AppLimits, Services, default_pipeline_factory

    offline = True if getattr(args, "offline", False) else None
    dtype = getattr(args, "dtype", "float32")
    device = getattr(args, "device", "cpu")
    if dtype == "float16" and str(device).startswith("cpu"):
        raise FacegenError(
            "`--dtype float16` needs a GPU (`--device cuda`); use float32 on the CPU"
        )
    _check_port_free(args.host, args.port)
    keep = getattr(args, "keep_outputs", None)
    if keep is not None:
        # a new folder of this run inside DIR: the app serves its output folder, and must
        # never serve the rest of DIR (which may be a home or project folder)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        try:
            keep.mkdir(parents=True, exist_ok=True)
            keep = Path(tempfile.mkdtemp(prefix=f"facegen-app-{stamp}-", dir=keep))
        except OSError as exc:
            raise FacegenError(
                f"--keep-outputs {keep}: cannot create a folder there ({exc.strerror})"
            ) from None
    limits = AppLimits(max_upload_mb=args.max_upload_mb, max_pixels=int(args.max_megapixels * 1e6))
    services = Services(
        device=device,
        dtype=dtype,
        default_preset=args.preset,
        limits=limits,
        pipeline_factory=functools.partial(default_pipeline_factory, offline=offline),
        offline=offline,
        output_root=keep,
        keep_outputs=keep is not None,
        session_ttl_s=60.0 * getattr(args, "session_ttl", 60.0),
    )
    previous = _stop_on_signals()
    try:
        demo = launch_app(
            services,
            host=args.host,
            port=args.port,
            share=args.share,
            gpu_concurrency=args.concurrency,
            max_queue=args.max_queue,
            quiet=True,
            block=False,
        )
        # printed only once the server is listening
        print(f"facegen app on http://{args.host}:{args.port} (Ctrl+C to stop)", flush=True)
        if keep is not None:
            print(f"outputs are kept in {keep}", flush=True)
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        services.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port another program listens on, before anything is printed or loaded."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise FacegenError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); is another app "
                "running there? Choose another with --port"
            ) from None


def _stop_on_signals() -> dict[Any, Any]:
    """SIGTERM and SIGHUP (docker stop, systemd, kill, a closed terminal) stop the app like
    Ctrl+C, so that its cleanup runs. Returns the handlers replaced."""
    import threading

    previous: dict[Any, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return previous

    def stop(signum: int, _frame: Any) -> None:
        # the first signal stops the app; later ones must not cut its cleanup short
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}")

    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            previous[sig] = signal.signal(sig, stop)
    return previous
