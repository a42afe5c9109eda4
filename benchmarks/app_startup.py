"""Web app startup time with tiny models: from starting ``python -m facegen.app --preset tiny``
to the page answering HTTP 200 (target: 10 s or less on a 2-core CPU machine).

Each run starts a fresh process (cold imports, building the interface, starting the server)
and polls ``GET /`` every 50 ms; the CPU time the process used until then is reported too
(a measure that does not depend on what else the machine is doing). Models load lazily, on first use, so they are not part of
startup; ``--first-request`` also times the first generation through the API afterwards (the
tiny model's load + 2 denoising steps), and ``--breakdown`` times the phases in-process
(importing gradio, building the interface, launching).

Usage: ``python benchmarks/app_startup.py [--runs 3] [--first-request] [--breakdown] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import httpx

_BREAKDOWN = r"""
import json, time
t0 = time.perf_counter()
import gradio
t1 = time.perf_counter()
from facegen.app.web.app import build_app
from facegen.app.web.services import Services
services = Services(default_preset="tiny")
demo = build_app(services)
t2 = time.perf_counter()
demo.launch(prevent_thread_lock=True, server_port={port}, quiet=True)
t3 = time.perf_counter()
demo.close(); services.close()
print(json.dumps({{"import_gradio_s": t1 - t0, "build_app_s": t2 - t1, "launch_s": t3 - t2}}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) the process has used so far: a load-independent measure of
    the work startup takes (Linux; ``None`` elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return round((int(fields[11]) + int(fields[12])) / ticks, 2)
    except (OSError, ValueError, IndexError):
        return None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _first_request(url: str) -> float:
    from gradio_client import Client

    client = Client(url, verbose=False)
    t = time.perf_counter()
    client.predict(
        "random", None, "largest", None, 0, "tiny", 1, 0, False, 2, None, "", api_name="/generate"
    )
    return time.perf_counter() - t


def one_run(timeout: float, first_request: bool) -> dict[str, Any]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = [sys.executable, "-m", "facegen.app", "--preset", "tiny", "--port", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            elapsed = time.perf_counter() - t0
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"the app exited with code {proc.returncode}:\n{err[-2000:]}")
            if elapsed > timeout:
                raise RuntimeError(f"the page did not answer within {timeout} s")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        out: dict[str, Any] = {
            "page_200_s": round(time.perf_counter() - t0, 3),
            "cpu_s_until_200": _cpu_seconds(proc.pid),
        }
        if first_request:
            out["first_generation_s"] = round(_first_request(url), 3)
        return out
    finally:
        _stop(proc)


def breakdown() -> dict[str, float]:
    code = _BREAKDOWN.format(port=_free_port())
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    data = json.loads(res.stdout.strip().splitlines()[-1])
    return {k: round(v, 3) for k, v in data.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--first-request", action="store_true")
    ap.add_argument("--breakdown", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    runs = [one_run(args.timeout, args.first_request) for _ in range(args.runs)]
    starts = [r["page_200_s"] for r in runs]
    cpu = [r["cpu_s_until_200"] for r in runs if r["cpu_s_until_200"] is not None]
    res: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "runs": runs,
        "page_200_median_s": round(statistics.median(starts), 3),
        "page_200_min_s": round(min(starts), 3),
        "page_200_max_s": round(max(starts), 3),
        "cpu_s_until_200_median": round(statistics.median(cpu), 2) if cpu else None,
        "target_s": 10.0,
    }
    if args.breakdown:
        res["breakdown"] = breakdown()
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
