"""Does a landmark ControlNet trained for a facegen generator move its faces into the pose
asked for? Measured on ORL, with poses the model never saw.

Poses: every photo of the held-out people ``s32``–``s40`` (never used in training) in which
dlib finds a face with 68 landmarks. Each one's landmarks are moved into the generator's
aligned output frame (``transfer_landmarks``, ArcFace template, 5-point fit) and drawn as
facegen's landmark map (``render_landmarks68``): the control image, as the Control tab and
``facegen generate --pose-from`` make it. Identities: the training people's mean identity
vectors from the generator's bank, cycled over the poses; image ``k`` has seed ``k`` in
every row, so the rows share their noise and identities.

Rows:

* **ControlNet**: the generator with the ControlNet, control image of pose ``k``;
* **ControlNet, another pose's map**: the same images scored against a different pose
  (pose ``k + P/2``): the error of a face in *some* pose, the chance level of the metric;
* **no ControlNet**: the generator alone (its memorised poses), scored against pose ``k``;
* **real photos of the poses, aligned**: each reference photo warped into the output frame as
  its landmarks were (its face sits exactly on the requested points): the metric's floor.

Measuring an image's pose: the image enlarged ×4, dlib's 68-point shape predictor run in a
fixed box (the face box of the template's mean face, the same for every image, so nothing of
the requested pose leaks into the measurement); the points brought back to output pixels.
``NME``: mean point-to-point distance to the requested 68 points over the requested
inter-ocular distance (outer eye corners), in %. ``yaw r``: Pearson correlation between the
requested and the measured yaw proxy (the nose tip's horizontal offset from the eyes' centre
over the inter-ocular distance; ORL's people turn their heads by up to about ±30°).
``cos own`` / ``accepted``: identity as the dataset verifier measures it (dlib, largest face,
enlarged to ≥ 160 px), cosine to the target and the share within the generator's
``[min_similarity, max_similarity]``; ``no face``: images where it finds none.

Usage: ``python benchmarks/controlnet_pose.py [--generator facegen/models/demo-orl]
[--controlnet facegen/models/demo-orl-controlnet] [--limit 90] [--threads 0] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from generator_orl import dataset_bounds, embed_as_verifier, person_means, to_uint8

ROOT = Path(__file__).resolve().parents[1]
ORL = ROOT.parent / "shared" / "data" / "orl_faces"
HELD_OUT = range(32, 41)
SCALE = 4  # images are measured enlarged ×4 (64 px → 256 px)
OUTER_EYES = (36, 45)
NOSE_TIP = 30


def pose_references(analyzer: Any, limit: int) -> list[tuple[np.ndarray, Any]]:
    """(photo, face with 68 landmarks) of the held-out people's photos, in file order."""
    from facegen.errors import NoFaceDetectedError
    from facegen.image_io import load_image

    faces = []
    for person in HELD_OUT:
        for photo in sorted((ORL / f"s{person}").glob("*.pgm"), key=lambda p: int(p.stem)):
            image = load_image(photo)
            try:
                face = analyzer.analyze(image, select="largest", embed=False)[0]
            except NoFaceDetectedError:
                continue
            if face.landmarks is not None and len(face.landmarks) == 68:
                faces.append((image, face))
    return faces[:limit]


def template_box(size: int) -> np.ndarray:
    """The fixed measuring box: the template's 5 points' extent, widened like a detector's
    face box (xyxy, in ``size`` pixels)."""
    from facegen.align import arcface_template

    kps = np.asarray(arcface_template(size), np.float32)
    (x0, y0), (x1, y1) = kps.min(0), kps.max(0)
    w = x1 - x0
    return np.array([x0 - 0.45 * w, y0 - 0.55 * w, x1 + 0.45 * w, y1 + 0.75 * w], np.float32)


def measure(landmarker: Any, images: list[np.ndarray], box: np.ndarray) -> list[np.ndarray]:
    """68 points of each image (RGB uint8, output pixels), predicted in the fixed ``box``."""
    import cv2

    from facegen.types import Face

    out = []
    for img in images:
        big = cv2.resize(img, None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_CUBIC)
        face = Face(bbox=box * SCALE, score=1.0, kps5=np.zeros((5, 2), np.float32))
        pts = landmarker.annotate(big, [face])[0].landmarks[:, :2] / SCALE
        out.append(np.asarray(pts, np.float32))
    return out


def nme(found: list[np.ndarray], wanted: list[np.ndarray]) -> float:
    errs = []
    for f, w in zip(found, wanted, strict=True):
        iod = np.linalg.norm(w[OUTER_EYES[0]] - w[OUTER_EYES[1]])
        errs.append(np.linalg.norm(f - w, axis=1).mean() / iod)
    return 100 * float(np.mean(errs))


def yaw(points: np.ndarray) -> float:
    eyes = (points[OUTER_EYES[0]] + points[OUTER_EYES[1]]) / 2
    iod = np.linalg.norm(points[OUTER_EYES[0]] - points[OUTER_EYES[1]])
    return float((points[NOSE_TIP, 0] - eyes[0]) / iod)


def yaw_r(found: list[np.ndarray], wanted: list[np.ndarray]) -> float:
    a, b = [yaw(p) for p in found], [yaw(p) for p in wanted]
    return float(np.corrcoef(a, b)[0, 1])


def identity_scores(
    analyzer: Any, images: list[np.ndarray], targets: np.ndarray, bounds: tuple[float, float]
) -> dict[str, float]:
    vecs = embed_as_verifier(analyzer, images, workers=1)
    cos = [float(v @ t) for v, t in zip(vecs, targets, strict=True) if v is not None]
    ok = [v is not None and bounds[0] <= float(v @ t) <= bounds[1] for v, t in zip(vecs, targets)]
    return {
        "no_face": 1 - len(cos) / len(images),
        "cos_own": float(np.mean(cos)) if cos else float("nan"),
        "accepted": float(np.mean(ok)),
    }


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def main() -> None:
    import torch
    from PIL import Image

    from facegen.align import align_face
    from facegen.backends import LANDMARKERS
    from facegen.control import render_landmarks68, transfer_landmarks
    from facegen.pipelines.generation.generator_folder import (
        load_identity_bank,
        read_generator_info,
    )
    from facegen.pipelines.generation.presets import from_preset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", type=Path, default=ROOT / "facegen" / "models" / "demo-orl")
    ap.add_argument(
        "--controlnet", type=Path, default=ROOT / "facegen" / "models" / "demo-orl-controlnet"
    )
    ap.add_argument("--limit", type=int, default=90, help="pose references at most")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--batch", type=int, default=30)
    ap.add_argument("--save", type=Path, help="write a grid of the first images here (.png)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    info = read_generator_info(args.generator)
    size = info.resolution
    plain = from_preset(str(args.generator))
    control = from_preset(str(args.generator), controlnet=str(args.controlnet), with_analyzer=False)
    for p in (plain, control):
        p.set_progress_bar_config(disable=True)
    analyzer = plain.identity_analyzer
    refs = pose_references(analyzer, args.limit)
    wanted = [transfer_landmarks(f, size=size)[:, :2] for _, f in refs]
    maps = [Image.fromarray(np.asarray(render_landmarks68(w, size))) for w in wanted]
    bank = load_identity_bank(args.generator, info)
    assert bank is not None, "the generator has no identity bank"
    _, means = person_means(*bank)
    targets = means[np.arange(len(refs)) % len(means)]
    ids = torch.from_numpy(targets)
    seeds = list(range(len(refs)))
    landmarker = LANDMARKERS.create("dlib68")
    box = template_box(size)
    bounds = dataset_bounds(info.dataset_defaults, str(args.generator))

    # the metric's floor: the reference photos themselves, aligned into the output frame
    # (their faces sit exactly at the requested points)
    real = [align_face(img, f, size=size).image for img, f in refs]
    found = measure(landmarker, real, box)
    rows: dict[str, Any] = {
        "real photos of the poses, aligned (floor)": {
            "nme": nme(found, wanted),
            "yaw_r": yaw_r(found, wanted),
        }
    }
    outputs: dict[str, list[np.ndarray]] = {}
    for name, pipe in (("ControlNet", control), ("no ControlNet", plain)):
        images, t0 = [], time.perf_counter()
        for i in range(0, len(refs), args.batch):
            kw = {"control_image": maps[i : i + args.batch]} if pipe is control else {}
            out = pipe(
                ids[i : i + args.batch], seeds=seeds[i : i + args.batch], output_type="np", **kw
            )
            images += to_uint8(out.images)
        seconds = (time.perf_counter() - t0) / len(refs)
        outputs[name] = images
        found = measure(landmarker, images, box)
        rows[name] = {
            "nme": nme(found, wanted),
            "yaw_r": yaw_r(found, wanted),
            "ms_per_image": 1000 * seconds,
            **identity_scores(analyzer, images, targets, bounds),
        }
        if pipe is control:
            half = len(refs) // 2
            shifted = [wanted[(k + half) % len(refs)] for k in range(len(refs))]
            rows["ControlNet, another pose's map"] = {
                "nme": nme(found, shifted),
                "yaw_r": yaw_r(found, shifted),
            }
    print(f"{len(refs)} pose references (held-out people s32–s40), {size}×{size}")
    print("| row | NME % | yaw r | no face | cos own | accepted | ms/image |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        cells = [
            fmt(r.get("nme"), ".1f"),
            fmt(r.get("yaw_r"), ".2f"),
            fmt(r.get("no_face"), ".1%"),
            fmt(r.get("cos_own"), ".3f"),
            fmt(r.get("accepted"), ".1%"),
            fmt(r.get("ms_per_image"), ".0f"),
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.save:
        n = min(10, len(refs))
        rows_img = [
            np.concatenate([np.asarray(m) for m in maps[:n]], axis=1),
            np.concatenate(outputs["ControlNet"][:n], axis=1),
            np.concatenate(outputs["no ControlNet"][:n], axis=1),
        ]
        Image.fromarray(np.concatenate(rows_img, axis=0)).save(args.save)
    if args.json:
        args.json.write_text(json.dumps({"references": len(refs), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
