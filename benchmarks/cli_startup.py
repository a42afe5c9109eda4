"""Wall time of light CLI commands (`facegen --help`, `facegen models list`, `facegen doctor`).

Each command runs ``--repeat`` times in a fresh interpreter (the console script of this
environment); the median and the fastest run are printed, with ``python -c pass`` as the
interpreter's own start-up for reference. Run: ``python benchmarks/cli_startup.py``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _time(cmd: list[str], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    exe = shutil.which("facegen") or str(Path(sys.executable).parent / "facegen")
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "facegen --help": [exe, "--help"],
        "facegen models list": [exe, "models", "list"],
        "facegen doctor --no-presets": [exe, "doctor", "--no-presets"],
    }
    _time(cases["facegen --help"], 1)  # warm the file cache
    print(f"{'command':<30} {'median s':>9} {'min s':>7}  ({args.repeat} runs)")
    for name, cmd in cases.items():
        ts = _time(cmd, args.repeat)
        print(f"{name:<30} {statistics.median(ts):9.3f} {min(ts):7.3f}")


if __name__ == "__main__":
    main()
