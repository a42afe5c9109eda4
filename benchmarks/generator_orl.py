"""Does a generator trained by ``facegen train generator`` carry identity? Rank-k on ORL.

For each person of ORL's training split (``s2``–``s31``; ``s32``–``s40`` are never seen by a
model), the condition is the mean of dlib's 128-D embeddings of their photos (L2-normalised);
these 30 vectors are also the gallery. The generator makes ``--per-id`` images per person
with fixed seeds; each image is upscaled to 160 px, padded by replication, detected and
embedded with dlib (images where dlib finds no face are counted and scored as misses).
Rank-1 / rank-5: is the person's own vector among the 1 / 5 nearest (cosine) of the 30?
Chance: 1/30 and 5/30.

Usage: ``python benchmarks/generator_orl.py MODEL_DIR [--per-id 2] [--steps 25] [--guidance 3]``
(``MODEL_DIR``: the output folder of ``facegen train generator``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

ORL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "orl_faces"
TRAIN_PEOPLE = range(2, 32)
EVAL_SIZE, EVAL_PAD = 160, 40


def identity_bank(analyzer) -> tuple[list[int], np.ndarray, int]:
    """(people, (P, 128) mean embeddings, photos without a face)."""
    from facegen.errors import NoFaceDetectedError
    from facegen.image_io import load_image

    people, means, missed = [], [], 0
    for person in TRAIN_PEOPLE:
        vecs = []
        for photo in sorted((ORL / f"s{person}").glob("*.pgm")):
            try:
                faces = analyzer.analyze(load_image(photo), select="largest")
            except NoFaceDetectedError:
                missed += 1
                continue
            vecs.append(faces[0].embedding.vector)
        if vecs:
            m = np.mean(vecs, axis=0)
            people.append(person)
            means.append(m / np.linalg.norm(m))
    return people, np.stack(means).astype(np.float32), missed


def embed_generated(analyzer, image: np.ndarray) -> np.ndarray | None:
    """dlib's embedding of a generated RGB uint8 image, or None where no face is found."""
    big = cv2.resize(image, (EVAL_SIZE, EVAL_SIZE), interpolation=cv2.INTER_CUBIC)
    big = cv2.copyMakeBorder(big, *([EVAL_PAD] * 4), cv2.BORDER_REPLICATE)
    from facegen.errors import NoFaceDetectedError

    try:
        return analyzer.analyze(big, select="largest")[0].embedding.vector
    except NoFaceDetectedError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--per-id", type=int, default=2)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=3.0)
    args = ap.parse_args()

    from facegen.analyzer import FaceAnalyzer
    from facegen.pipelines import from_preset
    from facegen.types import IdentityEmbedding

    analyzer = FaceAnalyzer.from_names("dlib", None, "dlib")
    people, bank, missed = identity_bank(analyzer)
    pipe = from_preset(str(args.model))
    encoder_id = pipe.identity_spec.encoder_ids[0]
    ids = [IdentityEmbedding(v, encoder_id, normalized=True) for v in bank]
    start = time.perf_counter()
    seeds = list(range(len(ids) * args.per_id))
    out = pipe(
        ids,
        num_images_per_identity=args.per_id,
        seeds=seeds,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        output_type="np",
    )
    seconds = time.perf_counter() - start
    images = (np.clip(np.asarray(out.images), 0, 1) * 255).round().astype(np.uint8)
    rank1 = rank5 = no_face = 0
    sims = []
    for k, image in enumerate(images):
        target = k // args.per_id
        vec = embed_generated(analyzer, image)
        if vec is None:
            no_face += 1
            continue
        scores = bank @ (vec / np.linalg.norm(vec))
        order = np.argsort(-scores)
        rank1 += int(order[0] == target)
        rank5 += int(target in order[:5])
        sims.append(float(scores[target]))
    n = len(images)
    result = {
        "model": str(args.model),
        "people": len(people),
        "images": n,
        "no_face": no_face,
        "rank1": rank1 / n,
        "rank5": rank5 / n,
        "chance_rank1": 1 / len(people),
        "chance_rank5": 5 / len(people),
        "mean_similarity_to_target": float(np.mean(sims)) if sims else None,
        "real_photos_without_face": missed,
        "sampling_seconds": round(seconds, 1),
        "steps": args.steps,
        "guidance": args.guidance,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
