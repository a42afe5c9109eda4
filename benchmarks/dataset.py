"""Dataset machinery overhead: images/s of ``build_dataset`` with an injected generator.

The generator returns real 512×512 face photos (the six faces of insightface's ``t1.jpg`` and
scikit-image's astronaut, re-framed like generated portraits) and *sleeps* ``--gen-ms`` per
image to stand in for a diffusion model of that speed. Everything else is facegen's real
machinery: dlib detection + 68 landmarks + ResNet embedding of every image, the similarity
check, 112×112 alignment, atomic PNG writes, the fsync'ed journal. Verification runs in a
background thread while the next batch is generated.

Reported per generator speed: wall time, the generator's own time, and the overhead
``wall / generator − 1`` (the target is ≤ 10 %), plus the machinery's own cost per image with
an instant generator. Writer throughput per format: ``benchmarks/writers.py``; identity
sampling at 10K–1M: ``benchmarks/identities.py``; the full-size SD1.5 path on a GPU:
``benchmarks/generation_gpu.py``.

Usage: ``python benchmarks/dataset.py [--identities 6] [--images 16] [--gen-ms 0,250,1000]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np


def _portraits() -> tuple[list[np.ndarray], np.ndarray]:
    """512×512 portraits of six t1 people + the astronaut, and their dlib vectors."""
    from skimage import data

    from facegen.analyzer import FaceAnalyzer
    from facegen.image_io import load_image
    from facegen.samples import sample_path

    analyzer = FaceAnalyzer.from_names("dlib", None, "dlib")
    t1 = load_image(sample_path("t1"))
    out, vecs = [], []
    for f in analyzer.analyze(t1):
        x1, y1, x2, y2 = f.bbox
        cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * 1.1
        m = np.float32(
            [[256 / half, 0, 256 - cx * 256 / half], [0, 256 / half, 256 - cy * 256 / half]]
        )
        out.append(cv2.warpAffine(t1, m, (512, 512), borderMode=cv2.BORDER_REFLECT))
        vecs.append(f.embedding.vector)
    astro = np.ascontiguousarray(data.astronaut())
    out.append(astro)
    vecs.append(analyzer.embed(astro).vector)
    return out, np.stack(vecs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--identities", type=int, default=6)
    ap.add_argument("--images", type=int, default=16, help="images per identity")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--upsample", type=int, default=0, help="dlib HOG upsampling of the verifier")
    ap.add_argument("--gen-ms", default="0,250,1000", help="simulated generation ms per image")
    ap.add_argument(
        "--verifier",
        default="batched",
        choices=["batched", "per-image", "both"],
        help="batched: detection in parallel threads + one embedding call per batch (facegen's "
        "way); per-image: analyze() image by image (the previous way); both: compare in one run",
    )
    ap.add_argument("--verify-workers", type=int, default=0, help="detection threads (0: auto)")
    args = ap.parse_args()

    from facegen.analyzer import FaceAnalyzer
    from facegen.pipelines.dataset.build import DatasetSpec, build_dataset

    photos, vecs = _portraits()
    n = min(args.identities, len(photos))
    # generated portraits have large faces: HOG needs no 2× upsampling (4× less work)
    verifier = FaceAnalyzer.from_names(
        "dlib", None, "dlib", detector_options={"upsample": args.upsample}
    )
    spec = DatasetSpec(
        images_per_identity=args.images,
        min_similarity=0.5,
        max_similarity=1.0,
        batch_size=args.batch_size,
        verify_workers=args.verify_workers,
    )

    class PerImage:
        """The verifier without its batched entry: the builder asks image by image."""

        def __init__(self, analyzer: Any) -> None:
            self.analyze = analyzer.analyze

    modes = ["per-image", "batched"] if args.verifier == "both" else [args.verifier]
    rows = []
    for ms, mode in [(float(x), m) for x in args.gen_ms.split(",") for m in modes]:
        chosen = PerImage(verifier) if mode == "per-image" else verifier
        gen_time = 0.0

        def generate(vectors: np.ndarray, seeds: list[int], ms: float = ms) -> list[np.ndarray]:
            nonlocal gen_time
            t = time.perf_counter()
            time.sleep(ms / 1000 * len(seeds))
            who = np.argmax(vectors @ vecs.T, axis=1)
            imgs = [
                np.ascontiguousarray(np.roll(photos[w], s % 9 - 4, axis=1))
                for w, s in zip(who, seeds)
            ]
            gen_time += time.perf_counter() - t
            return imgs

        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            s = build_dataset(Path(d), vecs[:n], generate, chosen, spec)
            wall = time.perf_counter() - t0
        rows.append(
            {
                "verifier": mode,
                "gen_ms_per_image": ms,
                "images": s.images,
                "rejections": s.rejections,
                "wall_s": round(wall, 2),
                "generator_s": round(gen_time, 2),
                "images_per_s": round(s.images / wall, 2),
                "machinery_ms_per_image": round((wall - gen_time) / max(s.images, 1) * 1000, 1),
                "overhead": round(wall / gen_time - 1, 3) if ms > 0 else None,
            }
        )
        print(json.dumps(rows[-1]))
    print(
        "\n| verifier | simulated generation | images | wall | generator | img/s | facegen ms/img "
        "| overhead |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ov = "—" if r["overhead"] is None else f"{100 * r['overhead']:.1f} %"
        print(
            f"| {r['verifier']} | {r['gen_ms_per_image']:.0f} ms/img | {r['images']} | "
            f"{r['wall_s']} s | "
            f"{r['generator_s']} s | {r['images_per_s']} | {r['machinery_ms_per_image']} | {ov} |"
        )


if __name__ == "__main__":
    main()
