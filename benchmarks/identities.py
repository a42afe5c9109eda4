"""Identity sampling at dataset scale: time and peak memory for N identities, plus verification.

One case: ``python benchmarks/identities.py --n 100000 [--index exact|faiss] [--verify exact]``
samples N identities and verifies their separation — ``exact`` counts every pair at cosine
>= the threshold (``O(N²)``), ``--verify 20000`` estimates the count from all pairs of 20000
random rows, ``--verify none`` skips it. Peak RSS is the whole process's (``getrusage``).

Sweep: ``python benchmarks/identities.py --sweep [--sizes 10000,100000,1000000]`` runs every
case in a fresh process (so each peak RSS is its own) and prints a Markdown table: exact
sampling + exact verification up to ``--exact-max`` (default 100K), the faiss index at every
size, verified exactly up to 100K and by a 10K-row sample above.

Target on a 2-core machine: 100K sampled and verified in ≤ 2 minutes within 4 GB; 1M feasible.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from facegen.pipelines.identities import sample_identities, verify_separation


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _one(args: argparse.Namespace) -> dict:
    t = time.perf_counter()
    ids = sample_identities(
        args.n,
        dim=args.dim,
        sampler=args.sampler,
        max_similarity=args.max_similarity,
        index=args.index,
        nprobe=args.nprobe,
    )
    sample_s = time.perf_counter() - t
    row = {
        "n": len(ids),
        "index": args.index,
        "index_params": ids.index_params,
        "stats": ids.stats,
        "sample_s": sample_s,
        "sample_peak_mib": _peak_mib(),
    }
    if args.verify != "none":
        t = time.perf_counter()
        sample = None if args.verify == "exact" else int(args.verify)
        rep = verify_separation(ids.vectors, args.max_similarity, sample=sample)
        row.update(
            verify=args.verify,
            verify_s=time.perf_counter() - t,
            violations=rep.violations,
            estimated_violations=rep.estimated_violations,
            upper_bound=rep.upper_bound,
            max_observed=rep.max_observed,
            report=str(rep),
        )
    row["peak_mib"] = _peak_mib()
    return row


def _cases(args: argparse.Namespace) -> list[list[str]]:
    sizes = [int(s) for s in args.sizes.split(",")]
    cases = []
    for n in sizes:
        verify = "exact" if n <= args.exact_verify_max else str(args.verify_sample)
        if n <= args.exact_max:
            cases.append(["--n", str(n), "--index", "exact", "--verify", verify])
        cases.append(["--n", str(n), "--index", "faiss", "--verify", verify])
    return cases


def _table(rows: list[dict]) -> str:
    lines = [
        "| N | index | sampling | verification | pairs ≥ threshold | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        params = r["index_params"]
        index = r["index"] + (
            f" (nlist {params['nlist']}, nprobe {params['nprobe']})" if params else ""
        )
        if r.get("verify") == "exact":
            ver, found = f"{r['verify_s']:.1f} s (exact)", f"{r['violations']}"
        elif r.get("verify"):
            ver = f"{r['verify_s']:.1f} s ({int(r['verify']):,}-row sample)"
            found = f"{r['violations']} seen; ≈{r['estimated_violations']:.0f}, ≤ {r['upper_bound']:.0f} (95%)"
        else:
            ver = found = "—"
        lines.append(
            f"| {r['n']:,} | {index} | {r['sample_s']:.1f} s | {ver} | {found} "
            f"| {r['peak_mib']:,.0f} MiB |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--max-similarity", type=float, default=0.3)
    ap.add_argument("--sampler", default="uniform")
    ap.add_argument("--index", default="exact", choices=["exact", "faiss"])
    ap.add_argument("--nprobe", type=int, default=None, help="faiss: cells searched per candidate")
    ap.add_argument("--verify", default="exact", help="exact, none, or a row-sample size")
    ap.add_argument("--json", action="store_true", help="print one JSON line (used by --sweep)")
    ap.add_argument("--sweep", action="store_true", help="run the standard cases, print a table")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--exact-max", type=int, default=100_000, help="largest N sampled exactly")
    ap.add_argument("--exact-verify-max", type=int, default=100_000)
    ap.add_argument("--verify-sample", type=int, default=10_000)
    args = ap.parse_args()
    if args.sweep:
        common = ["--dim", str(args.dim), "--max-similarity", str(args.max_similarity)]
        common += ["--sampler", args.sampler, "--json"]
        if args.nprobe is not None:
            common += ["--nprobe", str(args.nprobe)]
        rows = []
        for case in _cases(args):
            out = subprocess.run(
                [sys.executable, __file__, *case, *common],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        print(
            f"{args.dim}-D, {args.sampler} sampler, max similarity {args.max_similarity}\n\n"
            + _table(rows)
        )
        return
    row = _one(args)
    if args.json:
        print(json.dumps(row))
        return
    print(
        f"{row['n']} identities ({args.dim}-D, {args.sampler}, max similarity "
        f"{args.max_similarity}, index {args.index} {row['index_params'] or ''})"
    )
    print(
        f"sampling {row['sample_s']:.1f} s   peak RSS {row['sample_peak_mib']:.0f} MiB   {row['stats']}"
    )
    if "verify_s" in row:
        print(f"verification {row['verify_s']:.1f} s   {row['report']}")
    print(f"peak RSS {row['peak_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
