"""Novel identities vs leakage: does a trained generator make new people, or its training people?

Identities: ``--identities`` N are sampled exactly as ``facegen dataset`` samples them for this
generator — ``prepare_run`` (into a temporary run folder) with ``DatasetConfig(identities=N,
images_per_identity=M, preset=MODEL_DIR, seed=--seed)``, the folder's identity bank and its
``dataset_defaults``: sampler ``auto`` = a Gaussian fitted to the bank, every identity kept
below ``leakage_threshold`` (0.925 for dlib) to each bank vector and each person's mean, and below
``identity_separation`` to each other. The sampling counts (candidates drawn, rejected for
leakage / for being too close to another identity) are those ``sample_identities`` stored
in the run's ``identities.safetensors``. It draws candidates 4096 at a time and stops early
inside a batch once N are kept, so for a small N ``drawn`` is a whole batch: the leakage
count covers all of it, the too-close count only the candidates examined.

Images: ``--per-id`` M per identity, as a dataset run's first attempt makes them (the raw
vector, seed ``image_seed(seed, i, j, 0)``, the preset's steps and guidance unless
``--steps`` / ``--guidance`` say otherwise). Each is scored as the dataset verifier sees it
(enlarged to ≥ 160 px, largest face, the folder's dlib analyzer; see ``generator_orl.py``):

* ``cos own``: cosine to its own target identity;
* ``nearest person``: the highest cosine to a training person (the L2-normalised mean of
  that person's bank vectors, grouped by the bank's names: 30 for ORL ``s2``–``s31``);
* ``nearest photo``: the highest cosine to a single training photo (a bank vector);
* ``closer to training``: the fraction whose nearest training person is closer than their own
  target; ``leak (person)`` / ``leak (photo)``: the fraction at or above the same-person
  threshold (``leakage_threshold``) to some training person / photo — these three over
  images with a face;
* ``accepted``: over all images, the dataset rule — a face, and ``cos own`` in
  [min_similarity, max_similarity].

Values are "mean (p5 / p50 / p95)". Calibration rows, same statistics without generation:
REAL unseen people, ORL ``s32``–``s40`` (never trained on), every photo embedded with the
analyzer the training cache used (``FaceAnalyzer.from_names("dlib", None, "dlib")``: HOG at
upsample 1, i.e. detected on the photo enlarged 2×; on the raw file, which reproduces the
bank's vectors exactly), against their own person's mean (the photo included, and left out)
and the training people; and the sampled identity vectors themselves (their ``cos own`` is 1).

A second table asks what a verifier that checks consistency instead of the target (DCFace's
criterion: the images of one identity agree with each other) would see: whether the images
of one identity show one person, and whether that person is a training person
(:func:`consistency`), next to the same statistics for the real unseen people.

Usage: ``python benchmarks/generator_novel.py MODEL_DIR [--identities 30] [--per-id 4]
[--seed 0] [--steps N] [--guidance G] [--threads 0] [--json OUT]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from generator_orl import ORL, dataset_bounds, embed_as_verifier, person_means, to_uint8, unit

UNSEEN_PEOPLE = range(32, 41)
CHUNK = 40  # images per pipeline call


def sampling_stats(run: Path) -> dict:
    """The sampling counts ``prepare_run`` stored with the identities (every
    ``identities.safetensors`` facegen writes carries them in its metadata)."""
    from safetensors import safe_open

    path = run / "identities.safetensors"
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
    if "stats" not in meta:
        raise SystemExit(f"{path} has no sampling counts (`stats` metadata): not facegen's")
    return {**json.loads(meta["stats"]), "source": "identities.safetensors"}


def generate(
    pipe: Any,
    vectors: np.ndarray,
    per_id: int,
    seed: int,
    steps: int | None,
    guidance: float | None,
) -> list[np.ndarray]:
    """``per_id`` images per identity (identity-major) with a dataset run's first-attempt
    seeds, in chunks."""
    from facegen.pipelines.dataset.build import image_seed

    call: dict[str, Any] = {"output_type": "np"}
    if steps is not None:
        call["num_inference_steps"] = steps
    if guidance is not None:
        call["guidance_scale"] = guidance
    out: list[np.ndarray] = []
    step = max(1, CHUNK // per_id)
    for start in range(0, len(vectors), step):
        idx = range(start, min(start + step, len(vectors)))
        seeds = [image_seed(seed, i, j, 0) for i in idx for j in range(per_id)]
        res = pipe(
            vectors[idx.start : idx.stop], num_images_per_identity=per_id, seeds=seeds, **call
        )
        out += to_uint8(res.images)
    return out


def measure(
    vecs: Sequence[np.ndarray | None],
    targets: np.ndarray,
    persons: np.ndarray,
    photos: np.ndarray,
    threshold: float,
    bounds: tuple[float, float],
) -> dict[str, Any]:
    """Statistics of unit vectors (``None``: no face) against their targets (unit ``(n, D)``,
    one per vector), the training people's means and the training photos."""
    n = len(vecs)
    found = [k for k, v in enumerate(vecs) if v is not None]
    if not found:
        return {"n": n, "no_face": 1.0, "faces": 0, "accepted": 0.0}
    v = np.stack([vecs[k] for k in found])
    own = np.einsum("nd,nd->n", v, targets[found])
    sims_person = v @ persons.T
    near_person = sims_person.max(1)
    near_photo = (v @ photos.T).max(1)

    def dist(x: np.ndarray) -> dict[str, float]:
        p5, p50, p95 = np.percentile(x, [5, 50, 95])
        return {"mean": float(x.mean()), "p5": float(p5), "p50": float(p50), "p95": float(p95)}

    accepted = int(((own >= bounds[0]) & (own <= bounds[1])).sum())
    return {
        "n": n,
        "faces": len(found),
        "no_face": 1 - len(found) / n,
        "cos_own": dist(own),
        "nearest_person": dist(near_person),
        "nearest_photo": dist(near_photo),
        "closer_to_training": float((near_person > own).mean()),
        "leak_person": float((near_person >= threshold).mean()),
        "leak_photo": float((near_photo >= threshold).mean()),
        "accepted": accepted / n,
        # how often each training person (in person_means order) is the nearest one
        "nearest_person_counts": np.bincount(
            sims_person.argmax(1), minlength=len(persons)
        ).tolist(),
    }


def consistency(
    vecs: Sequence[np.ndarray | None], owner: Sequence[int], persons: np.ndarray, threshold: float
) -> dict[str, Any]:
    """Whether images of one identity show one person, and whom: over identities with ≥ 2
    faces, the cosine between two images of the same identity (``intra``) and of different
    identities (``inter``), and where each identity's centroid (the normalised mean of its
    images) lies among the training people — how near the nearest one is, how many centroids
    are at the same-person threshold to one (``centroid_leak``), and how many distinct
    training people are nearest (fewer than identities: several identities render as one)."""
    groups: dict[int, list[np.ndarray]] = {}
    for v, o in zip(vecs, owner):
        if v is not None:
            groups.setdefault(int(o), []).append(v)
    groups = {o: g for o, g in groups.items() if len(g) >= 2}
    if len(groups) < 2:
        return {"identities": len(groups)}
    keys = sorted(groups)
    stacked = np.concatenate([np.stack(groups[o]) for o in keys])
    label = np.concatenate([[o] * len(groups[o]) for o in keys])
    sims = stacked @ stacked.T
    upper = np.triu(np.ones_like(sims, dtype=bool), 1)
    same = label[:, None] == label[None, :]
    intra, inter = sims[upper & same], sims[upper & ~same]
    centroids = unit(np.stack([np.mean(groups[o], axis=0) for o in keys]))
    near = centroids @ persons.T
    p5, p50 = np.percentile(intra, [5, 50])
    return {
        "identities": len(keys),
        "intra": {"mean": float(intra.mean()), "p5": float(p5), "p50": float(p50)},
        "intra_at_threshold": float((intra >= threshold).mean()),
        "inter": {"mean": float(inter.mean()), "p95": float(np.percentile(inter, 95))},
        "inter_at_threshold": float((inter >= threshold).mean()),
        "centroid_nearest_person": {
            "mean": float(near.max(1).mean()),
            "min": float(near.max(1).min()),
            "max": float(near.max(1).max()),
        },
        "centroid_leak": float((near.max(1) >= threshold).mean()),
        "distinct_nearest_people": len(set(near.argmax(1).tolist())),
    }


def consistency_table(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """The Markdown table of ``(name, consistency(...))`` rows."""
    lines = [
        "| row | identities | intra cos (p5 / p50) | intra ≥ thr | inter cos (p95) | inter ≥ thr "
        "| centroid → nearest training person (min / max) | centroid leak | distinct nearest |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        if "intra" not in r:
            lines.append(f"| {name} | {r['identities']} | — | — | — | — | — | — | — |")
            continue
        a, e, c = r["intra"], r["inter"], r["centroid_nearest_person"]
        lines.append(
            f"| {name} | {r['identities']} | {a['mean']:.3f} ({a['p5']:.3f} / {a['p50']:.3f}) "
            f"| {100 * r['intra_at_threshold']:.1f} % | {e['mean']:.3f} ({e['p95']:.3f}) "
            f"| {100 * r['inter_at_threshold']:.1f} % | {c['mean']:.3f} ({c['min']:.3f} / "
            f"{c['max']:.3f}) | {100 * r['centroid_leak']:.1f} % "
            f"| {r['distinct_nearest_people']} |"
        )
    return "\n".join(lines)


def unseen_people(analyzer: Any, workers: int) -> tuple[list[np.ndarray], list[int], int]:
    """Unit dlib vectors of the photos of ORL's held-out people (raw files, as the bank was
    made), their person index (0 = ``s32``), and how many photos had no face."""
    from facegen.image_io import load_image

    paths = [p for n in UNSEEN_PEOPLE for p in sorted((ORL / f"s{n}").glob("*.pgm"))]
    if not paths:
        raise SystemExit(f"no ORL photos of s32–s40 under {ORL}")
    faces = analyzer.largest_faces([load_image(p) for p in paths], workers=workers)
    vecs, owner = [], []
    for p, f in zip(paths, faces):
        if f is not None:
            vecs.append(unit(f.embedding.vector))
            owner.append(int(p.parent.name[1:]) - UNSEEN_PEOPLE.start)
    return vecs, owner, len(paths) - len(vecs)


def real_rows(
    vecs: list[np.ndarray], owner: list[int], args: tuple[Any, ...]
) -> list[tuple[str, dict[str, Any]]]:
    """Calibration rows of real unseen photos: own mean with the photo, and without it."""
    v, who = np.stack(vecs), np.asarray(owner)
    sums = {p: v[who == p].sum(0) for p in set(owner)}
    with_self = np.stack([unit(sums[p]) for p in owner])
    loo = [(k, sums[p] - v[k]) for k, p in enumerate(owner) if (who == p).sum() > 1]
    keep = [k for k, _ in loo]
    without = np.stack([unit(s) for _, s in loo])
    return [
        ("real unseen photos (s32–s40) vs own mean", measure(vecs, with_self, *args)),
        (
            "real unseen photos vs own mean without the photo",
            measure([vecs[k] for k in keep], without, *args),
        ),
    ]


def table(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """The Markdown table of ``(name, measure(...))`` rows."""

    def pct(x: float | None) -> str:
        return "—" if x is None else f"{100 * x:.1f} %"

    def dist(d: dict[str, float] | None) -> str:
        if d is None:
            return "—"
        return f"{d['mean']:.3f} ({d['p5']:.3f} / {d['p50']:.3f} / {d['p95']:.3f})"

    def ms(x: float | None) -> str:
        return "—" if x is None else f"{1000 * x:.0f}"

    lines = [
        "| row | n | no face | cos own | nearest training person | nearest training photo "
        "| closer to training | leak (person) | leak (photo) | accepted | gen ms/img |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['n']} | {pct(r['no_face'])} | {dist(r.get('cos_own'))} "
            f"| {dist(r.get('nearest_person'))} | {dist(r.get('nearest_photo'))} "
            f"| {pct(r.get('closer_to_training'))} | {pct(r.get('leak_person'))} "
            f"| {pct(r.get('leak_photo'))} | {pct(r.get('accepted'))} | {ms(r.get('gen_s'))} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="output folder of `facegen train generator`")
    ap.add_argument("--identities", type=int, default=30, help="novel identities to sample")
    ap.add_argument("--per-id", type=int, default=4, help="images per identity")
    ap.add_argument("--seed", type=int, default=0, help="the dataset run's seed")
    ap.add_argument("--steps", type=int, help="sampling steps (default: the preset's)")
    ap.add_argument("--guidance", type=float, help="guidance scale (default: the preset's)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.identities < 1 or args.per_id < 1:
        ap.error(f"--identities and --per-id must be >= 1, got {args.identities}, {args.per_id}")

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    workers = max(1, min(4, torch.get_num_threads()))

    from facegen.pipelines.dataset.config import DatasetConfig
    from facegen.pipelines.dataset.run import prepare_run
    from facegen.pipelines.generation.presets import from_preset
    from facegen.pipelines.identities import with_person_means

    pipe = from_preset(str(args.model))
    pipe.set_progress_bar_config(disable=True)
    if pipe.identity_bank is None or pipe.identity_analyzer is None:
        raise SystemExit(
            f"{args.model}: needs a generator folder with an identity bank and analyzer"
        )
    bank, names = pipe.identity_bank
    photos = unit(bank)
    people, persons = person_means(bank, names)
    info = pipe.preset_info
    defaults = dict(info.dataset_defaults) if info is not None else None
    spec = pipe.identity_spec
    cfg = DatasetConfig(
        identities=args.identities,
        images_per_identity=args.per_id,
        preset=str(args.model),
        seed=args.seed,
    )
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="generator_novel_") as tmp:
        vectors, _ = prepare_run(
            tmp,
            cfg,
            encoder_id=spec.encoder_ids[0],
            dim=spec.dim,
            identity_bank=with_person_means(bank, names),  # as a dataset run's worker does
            defaults=defaults,
        )
        resolved = DatasetConfig.from_dict(json.loads((Path(tmp) / "config.json").read_text()))
        stats = sampling_stats(Path(tmp))
    sample_s = time.perf_counter() - t
    vectors = unit(vectors)
    threshold = resolved.setting("leakage_threshold")
    bounds = dataset_bounds(defaults, str(args.model))
    scoring = (persons, photos, threshold, bounds)

    t = time.perf_counter()
    images = generate(pipe, vectors, args.per_id, args.seed, args.steps, args.guidance)
    gen_s = (time.perf_counter() - t) / len(images)
    t = time.perf_counter()
    found = embed_as_verifier(pipe.identity_analyzer, images, workers)
    verify_s = (time.perf_counter() - t) / len(images)
    targets = np.repeat(vectors, args.per_id, axis=0)
    generated = measure(found, targets, *scoring)
    generated.update(gen_s=gen_s, verify_s=verify_s)
    real, owner, real_missed = unseen_people(pipe.identity_analyzer, workers)
    rows = [
        (f"generated, novel identities ({args.identities} × {args.per_id})", generated),
        *real_rows(real, owner, scoring),
        ("sampled identity vectors (no image)", measure(list(vectors), vectors, *scoring)),
    ]
    rows[-1][1]["accepted"] = None  # a vector is its own target: nothing to accept
    owners = np.repeat(np.arange(len(vectors)), args.per_id)
    people_rows = [
        (
            f"generated, novel identities ({args.identities} × {args.per_id})",
            consistency(found, owners, persons, threshold),
        ),
        ("real unseen people (s32–s40)", consistency(real, owner, persons, threshold)),
    ]

    steps = args.steps or pipe.default_steps
    guidance = pipe.default_guidance if args.guidance is None else args.guidance
    print(
        f"{args.model}: {args.identities} identities sampled as `facegen dataset` does "
        f"(sampler {resolved.sampler}, seed {args.seed}, leakage threshold {threshold:g}, "
        f"separation {resolved.setting('identity_separation'):g}; {sample_s:.1f} s): "
        f"{stats['drawn']} candidates drawn, {stats['rejected_leakage']} rejected for leakage "
        f"({100 * stats['rejected_leakage'] / max(stats['drawn'], 1):.1f} %), "
        f"{stats['rejected_too_close']} as too close to another identity. "
        f"{args.per_id} images each, {steps} steps, guidance {guidance:g}; accepted = face with "
        f"cosine to target in [{bounds[0]:g}, {bounds[1]:g}]; training people: {len(people)} "
        f"(means), photos: {len(photos)}; verify {1000 * verify_s:.0f} ms/img; "
        f"real unseen photos without a face: {real_missed}; "
        f"{torch.get_num_threads()} torch threads\n"
    )
    print(table(rows))
    print("\nDo the images of one identity show one person, and whom?\n")
    print(consistency_table(people_rows))
    if args.json:
        result = {
            "model": str(args.model),
            "identities": args.identities,
            "per_id": args.per_id,
            "seed": args.seed,
            "steps": steps,
            "guidance": guidance,
            "config": resolved.to_dict(),
            "sampling_stats": stats,
            "sampling_seconds": sample_s,
            "accept_bounds": list(bounds),
            "leakage_threshold": threshold,
            "training_people": people,
            "real_unseen_without_face": real_missed,
            "threads": torch.get_num_threads(),
            "rows": {name: r for name, r in rows},
            "consistency": {name: r for name, r in people_rows},
        }
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
