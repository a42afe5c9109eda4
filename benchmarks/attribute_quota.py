"""Attribute-targeted identity sampling: what quotas cost, and how close the result is.

A simulated attribute model on 512-D identity vectors (``tests/pipelines/simulated_attributes.py``:
gender from the sign of one projection, age ``40 + 15·z`` years from another, so the age
bands <30 / 30-49 / 50-64 / 65+ hold about 25 / 50 / 20 / 5 % of uniform candidates) labels
every candidate. For each target, reported: candidates drawn per identity kept, the
wall-clock time against plain sampling of the same number of identities in the same run,
and the largest gap between a group's achieved and target share (the sampler's guarantee:
at most 1/N). A target whose rarest group needs more than the budget shows the error.

Usage: ``python benchmarks/attribute_quota.py [--n 10000]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "pipelines"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    args = ap.parse_args()

    from simulated_attributes import SimulatedAttributes

    from facegen.attributes import Grouping
    from facegen.pipelines.attribute_quota import (
        GroupTargets,
        achieved_table,
        sample_identities_by_group,
    )
    from facegen.pipelines.identities import SeparationError, sample_identities

    dim, enc, n = 512, "sim/512", args.n
    grouping = Grouping(("gender", "age"), {"age": (30, 50, 65)})
    est = SimulatedAttributes(dim, enc)
    t0 = time.perf_counter()
    sample_identities(n, dim=dim, encoder_id=enc, seed=0, max_similarity=0.3)
    plain = time.perf_counter() - t0
    print(f"plain sampling of {n} identities: {plain:.2f} s\n")
    cases = {
        "balanced (8 groups)": {},
        "women 50 %, each age band equal": {
            f"gender={g}|age={a}": 1.0 for g in ("female", "male") for a in ("<30", "30-49")
        },
        "65+ at 50 %": {
            "gender=female|age=65+": 1,
            "gender=male|age=65+": 1,
            "gender=female|age=30-49": 2,
        },
    }
    print("| target | drawn per kept identity | time vs plain | max share gap | 1/N |")
    print("|---|---|---|---|---|")
    for name, props in cases.items():
        t0 = time.perf_counter()
        try:
            ids, sel = sample_identities_by_group(
                n,
                GroupTargets(grouping, props),
                est,
                dim=dim,
                encoder_id=enc,
                seed=0,
                max_similarity=0.3,
                max_candidates=20 * n,
            )
        except SeparationError as e:
            print(f"| {name} | budget 20·N ran out | — | — | — |\n\n  {e}\n")
            continue
        dt = time.perf_counter() - t0
        rows = achieved_table(sel.groups, ids.stats["quotas"], props)
        gap = max(abs(r["achieved_proportion"] - r["target"]) for r in rows)
        print(
            f"| {name} | {ids.stats['drawn'] / n:.1f} | {dt / plain:.2f}× | {gap:.5f} | "
            f"{1 / n:.5f} |"
        )


if __name__ == "__main__":
    main()
