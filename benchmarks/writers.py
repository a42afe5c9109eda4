"""Dataset-writer throughput: images/s per format for aligned 112×112 face crops.

The crops are real: insightface's ``t1.jpg`` (six people) → dlib HOG detector (68-point
landmarks → 5 keypoints) → ArcFace alignment at 112 px, repeated with small keypoint jitter
(±1.5 px) to reach ``--images`` distinct crops (identity = face in the photo). Every writer
gets the same samples with a 512-d float32 embedding and a small metadata dict; the time
covers ``write`` for every sample plus ``close`` (JPEG encoding included, files on local disk).
``parquet`` is reported as skipped when pyarrow is not installed.

Usage: ``python benchmarks/writers.py [--images 2000] [--repeats 3] [--threads 2]``
(``--threads`` caps the CPU threads OpenCV/BLAS may use, to match the 2-core target).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np


def _crops(n: int, seed: int = 0) -> list[tuple[int, np.ndarray]]:
    from facegen.align import align_face
    from facegen.backends.dlib_backend import DlibDetector
    from facegen.image_io import load_image
    from facegen.samples import sample_path

    photo = load_image(sample_path("t1"))
    faces = DlibDetector().detect(photo)
    if not faces:
        raise SystemExit("no face found in t1.jpg")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ident = i % len(faces)
        kps = faces[ident].kps5 + rng.uniform(-1.5, 1.5, (5, 2))
        out.append((ident, align_face(photo, kps, size=112).image))
    return out


def _run(name: str, samples: list, opts: dict) -> float:
    from facegen.pipelines.dataset.writers import WRITERS

    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        w = WRITERS.create(name, out_dir=d, **opts)
        for s in samples:
            w.write(s)
        w.close()
        return len(samples) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import cv2

    cv2.setNumThreads(args.threads)
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[: args.threads]
        os.sched_setaffinity(0, cpus)

    from facegen.pipelines.dataset.writers import DatasetSample
    from facegen.pipelines.dataset.writers.formats import _import_pyarrow

    t = time.perf_counter()
    crops = _crops(args.images)
    prep_s = time.perf_counter() - t
    rng = np.random.default_rng(1)
    counters: dict[int, int] = {}
    samples = []
    for ident, img in crops:
        index = counters[ident] = counters.get(ident, -1) + 1
        emb = rng.standard_normal(512).astype(np.float32)
        meta = {"seed": len(samples), "similarity": float(rng.uniform(0.5, 0.9)), "model": "t1"}
        samples.append(DatasetSample(ident, index, img, emb, meta))

    res: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, pinned to {args.threads}",
        "images": len(samples),
        "identities": len(counters),
        "crop_preparation_s": round(prep_s, 2),
        "images_per_s": {},
    }
    formats = {"imagefolder": {}, "wds": {"max_samples": 1000}, "rec": {}, "parquet": {}}
    for name, opts in formats.items():
        if name == "parquet":
            try:
                _import_pyarrow()
            except ImportError as exc:
                res["images_per_s"][name] = f"skipped: {exc}"
                continue
        rates = [_run(name, samples, opts) for _ in range(args.repeats)]
        res["images_per_s"][name] = round(statistics.median(rates), 1)
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
