"""Identity sampling at dataset scale: time and peak memory for N identities, exact separation.

Usage: ``python benchmarks/identities.py [--n 100000] [--max-similarity 0.3]``
(target on a 2-core machine: 100K in ≤ 2 minutes within 4 GB).
"""

from __future__ import annotations

import argparse
import resource
import time

from facegen.pipelines.identities import sample_identities


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--max-similarity", type=float, default=0.3)
    ap.add_argument("--sampler", default="uniform")
    args = ap.parse_args()
    t = time.perf_counter()
    ids = sample_identities(
        args.n, dim=args.dim, sampler=args.sampler, max_similarity=args.max_similarity
    )
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{len(ids)} identities ({args.dim}-D, {args.sampler}, max similarity {args.max_similarity})"
    )
    print(f"time {dt:.1f} s   peak RSS {peak:.0f} MiB   {ids.stats}")


if __name__ == "__main__":
    main()
