"""Face-recognition training on real faces: held-out ORL verification, untrained vs trained.

ORL (``../shared/data/orl_faces``: 39 people × 10 grey 92×112 photos) is split by identity
with a fixed seed: 30 people train, the other 9 are never seen in training. Every photo is
upscaled ×2, detected with facegen's dlib analyzer (HOG + 68 landmarks → 5 keypoints) and
aligned to the 112×112 ArcFace template; where no face is found the photo is centre-cropped
to a square and resized instead (counted and reported).

The 300 training crops are written with facegen's ``ImageFolderWriter`` and trained on with
:func:`facegen.training.fr.train.train_fr` (a narrow IResNet-18, CosFace by default, SGD +
poly schedule, flip augmentation) for a CPU time budget. The held-out verification set is
all genuine pairs of the 9 people (9 × 45) plus as many impostor pairs, interleaved, written
as an insightface ``.bin`` and evaluated with the insightface protocol
(:func:`facegen.training.fr.eval.evaluate_bin`: flip-sum, 10-fold accuracy, TAR@FAR=1e-3,
AUC, EER) for the same network before and after training. Prints a Markdown table.

Usage: ``python benchmarks/fr_orl.py [--budget-s 300] [--width 32] [--input-size 56]
[--head cosface] [--threads 1] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ORL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "orl_faces"


def _people() -> list[Path]:
    dirs = [d for d in ORL.iterdir() if d.is_dir() and d.name.startswith("s")]
    return sorted(dirs, key=lambda d: int(d.name[1:]))


def _align_all(people: list[Path]) -> tuple[dict[str, list[np.ndarray]], int, int]:
    """Per person: ten aligned 112×112 RGB crops; also (detected, fallback) counts."""
    from facegen.align import align_face
    from facegen.analyzer import FaceAnalyzer
    from facegen.image_io import load_image

    analyzer = FaceAnalyzer.from_names("dlib", None, None)
    crops: dict[str, list[np.ndarray]] = {}
    detected = fallback = 0
    for d in people:
        out = []
        for k in range(1, 11):
            img = load_image(d / f"{k}.pgm")
            big = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
            faces = analyzer.detect(big)
            if faces:
                face = max(faces, key=lambda f: f.area)
                out.append(align_face(big, face, size=112, template="arcface").image)
                detected += 1
            else:
                h, w = img.shape[:2]
                s = min(h, w)
                top = (h - s) // 2
                sq = img[top : top + s, (w - s) // 2 : (w - s) // 2 + s]
                out.append(cv2.resize(sq, (112, 112), interpolation=cv2.INTER_AREA))
                fallback += 1
        crops[d.name] = out
    return crops, detected, fallback


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=300.0, help="wall time for the steps")
    ap.add_argument("--train-people", type=int, default=30)
    ap.add_argument("--arch", default="iresnet18")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--input-size", type=int, default=56)
    ap.add_argument("--embedding-size", type=int, default=128)
    ap.add_argument("--head", default="cosface")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1 is fastest on a busy 2-core box)",
    )
    ap.add_argument("--json", default=None)
    ap.add_argument("--out", default=None, help="keep the trained model here (default: temp)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    from facegen.pipelines.dataset.writers import (
        DatasetSample,
        ImageFolderWriter,
        write_verification_bin,
    )
    from facegen.training.fr.eval import evaluate_bin, make_verification_pairs
    from facegen.training.fr.models import build_backbone
    from facegen.training.fr.train import FRTrainConfig, train_fr

    if not ORL.is_dir():
        raise SystemExit(f"ORL faces not found at {ORL}")
    t0 = time.perf_counter()
    people = _people()
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(people))
    train_p = [people[i] for i in sorted(order[: args.train_people])]
    held_p = [people[i] for i in sorted(order[args.train_people :])]
    crops, detected, fallback = _align_all(people)
    t_align = time.perf_counter() - t0

    tmp = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="fr_orl_"))
    with ImageFolderWriter(tmp / "train") as w:
        for c, d in enumerate(train_p):
            for j, im in enumerate(crops[d.name]):
                w.write(DatasetSample(identity=c, index=j, image=im))
    held_imgs = [im for d in held_p for im in crops[d.name]]
    held_lab = [c for c, d in enumerate(held_p) for _ in crops[d.name]]
    pairs = make_verification_pairs(held_lab, seed=args.seed)
    write_verification_bin(
        tmp / "orl_heldout.bin",
        [(held_imgs[i], held_imgs[j]) for i, j, _ in pairs],
        [s for *_, s in pairs],
        fmt="png",
    )

    def backbone() -> torch.nn.Module:
        torch.manual_seed(args.seed)
        return build_backbone(
            args.arch,
            width=args.width,
            input_size=args.input_size,
            num_features=args.embedding_size,
        )

    untrained = evaluate_bin(backbone(), tmp / "orl_heldout.bin")

    # throughput probe: a few optimizer steps, to fit the epochs into the budget
    steps_per_epoch = (10 * len(train_p)) // args.batch_size
    common = dict(
        data=str(tmp / "train"),
        backbone=args.arch,
        width=args.width,
        input_size=args.input_size,
        embedding_size=args.embedding_size,
        head=args.head,
        lr=args.lr,
        batch_size=args.batch_size,
        num_workers=0,
        flip_prob=0.5,
        tensorboard=False,
        seed=args.seed,
        cpu=True,
        log_every=steps_per_epoch,
    )
    tp = time.perf_counter()
    train_fr(
        FRTrainConfig(output_dir=str(tmp / "probe"), max_steps=3, export_onnx=False, **common),
        progress=False,
    )
    per_step = (time.perf_counter() - tp) / 3
    epochs = int(max(1, min(args.max_epochs, args.budget_s / (per_step * steps_per_epoch))))
    steps = epochs * steps_per_epoch

    tt = time.perf_counter()
    res = train_fr(
        FRTrainConfig(
            output_dir=str(tmp / "model"),
            max_steps=steps,
            warmup_steps=steps_per_epoch,
            val_sets=(str(tmp / "orl_heldout.bin"),),
            eval_every=max(1, steps // 3),
            **common,
        ),
        progress=True,
    )
    t_train = time.perf_counter() - tt
    trained = res.final_validation[0]

    def row(name: str, r) -> str:
        return (
            f"| {name} | {100 * r.accuracy:.2f} ± {100 * r.accuracy_std:.2f} | "
            f"{100 * r.tar_at_far:.2f} | {r.auc:.4f} | {100 * r.eer:.2f} | "
            f"{r.cosine_threshold:.3f} |"
        )

    print()
    print(
        f"ORL held-out verification: {len(held_p)} unseen people, {len(pairs)} pairs "
        f"({sum(s for *_, s in pairs)} genuine); trained on {len(train_p)} people × 10 photos"
    )
    print(
        f"alignment: {detected} photos detected + aligned, {fallback} centre-resized "
        f"(no face found) of {detected + fallback}; {t_align:.1f} s"
    )
    print(
        f"network: {args.arch} width {args.width}, input {args.input_size}, "
        f"{args.embedding_size}-D, head {args.head}; {epochs} epochs = {res.steps} steps of "
        f"{args.batch_size} in {t_train:.0f} s CPU ({torch.get_num_threads()} threads); "
        f"loss {np.mean(res.losses[:steps_per_epoch]):.2f} → {np.mean(res.losses[-steps_per_epoch:]):.2f}"
    )
    print()
    print("| network | accuracy % (10-fold) | TAR@FAR=1e-3 % | AUC | EER % | threshold (cos) |")
    print("|---|---|---|---|---|---|")
    print(row("untrained (same init)", untrained))
    for step, rs in res.validation[:-1]:
        print(row(f"trained, step {step}", rs[0]))
    print(row(f"trained, {res.steps} steps", trained))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "untrained": untrained.to_dict(),
                    "trained": trained.to_dict(),
                    "history": [(s, rs[0].to_dict()) for s, rs in res.validation],
                    "detected": detected,
                    "fallback": fallback,
                    "epochs": epochs,
                    "steps": res.steps,
                    "train_s": t_train,
                    "losses": res.losses,
                    "threads": torch.get_num_threads(),
                    "cpu_count": os.cpu_count(),
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
