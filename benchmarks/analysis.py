"""Face-analysis throughput on this machine.

Measures, in one run (compare ratios, not absolute times, on a noisy machine):

1. end to end, one ~1024-px photo with one face: load → detect (dlib HOG) → 68 landmarks →
   align → embed (dlib ResNet, through the encoder's default backend: PyTorch);
2. each stage separately;
3. identity embedding of aligned crops: one at a time vs batched (faces/s);
4. batched embedding through both backends of the dlib encoder, ``torch`` and ``dlib`` (same
   vectors; ``dlib`` is timed once after a warm-up, it takes seconds per batch);
5. the ONNX path (SCRFD + ArcFace) end to end when the antelopev2 files are available
   locally (``facegen models download antelopev2``), otherwise reported as skipped;
6. ArcFace ONNX embedding (single vs batched) with a random-weight IResNet-50, the
   architecture of buffalo_l's ``w600k_r50.onnx``: true timings, no quality.

Usage: ``python benchmarks/analysis.py [--repeats 10] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import cv2

from facegen import ModelNotAvailableError
from facegen.analyzer import FaceAnalyzer
from facegen.backends.dlib_backend import ENCODER_BACKENDS, DlibEncoder
from facegen.image_io import load_image, save_image
from facegen.samples import sample_path


def _time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--crops", type=int, default=64, help="aligned crops for the embedding test")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    res: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores"}

    astro = load_image(sample_path("astronaut"))
    photo = cv2.resize(astro, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_image(photo, os.path.join(tmp, "photo.jpg"))
        an = FaceAnalyzer.from_names("dlib", None, "dlib")
        t_e2e, faces = _time(lambda: an.analyze(load_image(path)), args.repeats)
        t_load, _ = _time(lambda: load_image(path), args.repeats)
    assert len(faces) == 1, f"expected one face, got {len(faces)}"
    res["end_to_end_1024px_one_face_s"] = t_e2e

    t_det, dets = _time(lambda: an.detector.detect(photo), args.repeats)
    enc = an.encoder
    assert enc is not None
    t_align, crop = _time(lambda: enc.align(photo, dets[0]), args.repeats)
    t_embed1, _ = _time(lambda: enc.embed_crops([crop]), args.repeats)
    res.update(
        load_jpeg_s=t_load,
        detect_plus_68_landmarks_s=t_det,
        align_s=t_align,
        embed_one_s=t_embed1,
    )

    # crops from the six people of the group photo, repeated
    group = load_image(sample_path("t1"))
    gfaces = an.detector.detect(group)
    crops = [enc.align(group, f) for f in gfaces]
    crops = (crops * (args.crops // len(crops) + 1))[: args.crops]
    reps = max(2, args.repeats // 3)
    t_single, _ = _time(lambda: [enc.embed_crops([c]) for c in crops], reps)
    t_batch, _ = _time(lambda: enc.embed_crops(crops), reps)
    res["embed_single_faces_per_s"] = len(crops) / t_single
    res["embed_batched_faces_per_s"] = len(crops) / t_batch
    res["batched_over_single"] = t_single / t_batch
    for backend in ENCODER_BACKENDS:
        be = DlibEncoder(backend=backend)
        t_be, _ = _time(lambda be=be: be.embed_crops(crops), reps if backend == "torch" else 1)
        res[f"embed_batched_faces_per_s_{backend}_backend"] = len(crops) / t_be

    try:
        onnx = FaceAnalyzer.from_names("insightface", None, "arcface-onnx", offline=True)
    except ModelNotAvailableError as exc:
        res["onnx_real_models"] = f"skipped: {str(exc).splitlines()[0]}"
    else:
        t_onnx, f2 = _time(lambda: onnx.analyze(photo), args.repeats)
        res["onnx_end_to_end_1024px_s"] = t_onnx
        res["onnx_faces"] = len(f2)

    # ArcFace ONNX embedding throughput with a random-weight IResNet-50 (w600k_r50's
    # architecture): true timings of the ONNX path, no quality whatsoever.
    from iresnet_onnx import export

    from facegen.backends.arcface_onnx import ArcFaceOnnxEncoder

    with tempfile.TemporaryDirectory() as tmp:
        r50 = ArcFaceOnnxEncoder(model_path=export(os.path.join(tmp, "r50.onnx"), "r50"))
        arc_crops = [r50.align(group, f) for f in gfaces]
        arc_crops = (arc_crops * (args.crops // len(arc_crops) + 1))[: args.crops]
        t1, _ = _time(lambda: [r50.embed_crops([c]) for c in arc_crops], reps)
        tb, _ = _time(lambda: r50.embed_crops(arc_crops), reps)
    res["onnx_r50_random_single_faces_per_s"] = len(arc_crops) / t1
    res["onnx_r50_random_batched_faces_per_s"] = len(arc_crops) / tb

    width = max(len(k) for k in res)
    for k, v in res.items():
        print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
