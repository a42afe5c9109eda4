"""Synthetic-to-real face recognition: does FR trained on facegen's data verify real people?

Five networks of one architecture are compared on REAL people that none of them saw:

* **floor**: the untrained network (``accelerate``'s ``set_seed(seed)``, then the backbone
  built exactly as ``facegen train fr`` builds it, so it is the trained arms' starting point);
* **(a) real**: ORL photos of people s2–s31 (30 classes × 10 photos);
* **(b) synthetic, same people**: a facegen dataset of those 30 people made by the generator
  at ``MODEL_DIR``. Each identity is the L2-normalised mean of that person's dlib vectors in
  the generator's identity bank (``identity_bank.safetensors``, one vector per training
  photo), written as the run's ``identities.safetensors`` before ``facegen dataset generate``
  runs, which then uses them instead of sampling;
* **(c) synthetic, novel people**: 30 identities sampled as ``facegen dataset generate
  --preset MODEL_DIR`` samples them by default (sampler ``auto``: a Gaussian fitted to the
  bank, leakage check against it), verified as the model's preset recommends
  (``dataset_defaults.verify_against``; ``demo-orl``: against anchors, and (b) against the
  people's vectors);
* **(d) real + synthetic**: (a) and (c) together (60 classes).

Datasets are made with the CLI, as a user would: ``facegen dataset generate --preset MODEL_DIR
--identities 30 --images-per-identity M --seed SEED --out DIR`` and ``facegen dataset export
DIR --format imagefolder``, with the preset's calibrated thresholds. An identity with any image
still rejected after its attempts is dropped whole (the dataset machinery's rule), so a
dataset may end with fewer identities; their counts and acceptance rates (from the journals)
are printed. An arm whose data is missing or smaller than one batch is reported, not trained.

Every arm trains with ``facegen train fr DATA --out OUT --config fr.json --backbone iresnet18
--max-steps S --batch-size B --seed SEED``, the same settings for all (``fr.json``: width 32,
56×56 input, 128-D embedding, CosFace, SGD lr 0.1 with a poly schedule, 10 warm-up steps,
flip augmentation, no data-loader workers, no ONNX export). The step budget, not epochs, is
shared, so (d) sees each of its images about half as often as (a).

Evaluation: the 9 ORL people s32–s40 (never seen in training nor by the generator's bank),
every photo aligned like ``benchmarks/fr_orl.py`` does (×2 upscale, dlib HOG + 68 landmarks,
ArcFace 112×112 template; a centre crop where no face is found, counted). The verification
set is all 405 genuine pairs plus as many impostor pairs (seeded), interleaved, written as an
insightface ``.bin`` and scored with ``facegen eval fr OUT --bin eval.bin --json``
(insightface protocol: flip-sum, 10 contiguous folds): accuracy ± std, TAR@FAR=1e-3, AUC,
EER. With ~40 impostors per fold, FAR=1e-3 means no false accept at all: a noisy column.

Everything made goes under ``--work`` (datasets, crops, models, results); a rerun skips the
finished parts (a model folder is keyed by steps, batch size and seed; one work folder serves
one MODEL_DIR). A dataset that ended without images is cached too: delete its
``datasets/<arm>_*`` entries to make it again. Each CLI command is printed before it runs.
Generation and FR training use the environment's torch threads (``--threads N`` sets
``OMP_NUM_THREADS`` for the commands).

Usage::

    python benchmarks/synthetic_to_real.py MODEL_DIR [--steps 300] [--batch-size 32]
        [--images-per-identity 10] [--seed 0] [--work DIR] [--arms floor,a,b,c,d]
        [--threads N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ARMS = ("floor", "a", "b", "c", "d")
TRAIN_PEOPLE = [f"s{k}" for k in range(2, 32)]  # s2–s31
EVAL_PEOPLE = [f"s{k}" for k in range(32, 41)]  # s32–s40
ENCODER_ID = "dlib-resnet-v1"
#: ``facegen train fr --config`` settings shared by every arm (fr_orl.py's CPU recipe).
FR_SETTINGS: dict[str, Any] = {
    "width": 32,
    "input_size": 56,
    "embedding_size": 128,
    "head": "cosface",
    "lr": 0.1,
    "warmup_steps": 10,
    "flip_prob": 0.5,
    "num_workers": 0,
    "tensorboard": False,
    "export_onnx": False,
    "log_every": 25,
}
BACKBONE = "iresnet18"
DESCRIPTIONS = {
    "floor": "untrained network (same init)",
    "a": "(a) real ORL s2–s31",
    "b": "(b) synthetic, same 30 people",
    "c": "(c) synthetic, 30 novel people",
    "d": "(d) real (a) + synthetic (c)",
}


# ----------------------------------------------------------------------------- helpers


def _facegen() -> list[str]:
    """The ``facegen`` console script of this interpreter's environment."""
    exe = Path(sys.executable).with_name("facegen")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("facegen")
    if found is None:
        raise SystemExit("the `facegen` command was not found (is the package installed?)")
    return [found]


def _run(args: list[str], env: dict[str, str], *, capture: bool = False) -> tuple[int, str]:
    """Run a facegen command (printed first); stdout returned when ``capture``."""
    cmd = _facegen() + args
    print("$ " + shlex.join(["facegen", *args]), flush=True)
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE if capture else None, text=True)
    return proc.returncode, proc.stdout or ""


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _count_images(folder: Path) -> tuple[int, int]:
    """(classes, images) of an ImageFolder (symlinked class folders included)."""
    classes = [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]
    return len(classes), sum(1 for d in classes for f in d.iterdir() if f.is_file())


# ------------------------------------------------------------------------- real ORL data


def _real_data(work: Path, seed: int) -> dict[str, Any]:
    """Aligned ORL crops: ``real/train`` (ImageFolder, s2–s31) and ``real/eval.bin`` (s32–s40)."""
    info_path = work / "real" / "info.json"
    info = _read_json(info_path)
    if info is not None:
        return info
    from fr_orl import ORL, _align_all  # benchmarks/fr_orl.py, beside this script

    from facegen.pipelines.dataset.writers import (
        DatasetSample,
        ImageFolderWriter,
        write_verification_bin,
    )
    from facegen.training.fr.eval import make_verification_pairs

    if not ORL.is_dir():
        raise SystemExit(f"ORL faces not found at {ORL}")
    t0 = time.perf_counter()
    # _align_all reports only totals; align the two groups apart to count each
    train_crops, train_det, train_fb = _align_all([ORL / n for n in TRAIN_PEOPLE])
    eval_crops, eval_det, eval_fb = _align_all([ORL / n for n in EVAL_PEOPLE])
    crops = {**train_crops, **eval_crops}
    root = work / "real"
    if (root / "train").exists():
        shutil.rmtree(root / "train")
    with ImageFolderWriter(root / "train") as w:
        for c, name in enumerate(TRAIN_PEOPLE):
            for j, im in enumerate(crops[name]):
                w.write(DatasetSample(identity=c, index=j, image=im))
    imgs = [im for n in EVAL_PEOPLE for im in crops[n]]
    labels = [c for c, n in enumerate(EVAL_PEOPLE) for _ in crops[n]]
    pairs = make_verification_pairs(labels, seed=seed)
    write_verification_bin(
        root / "eval.bin",
        [(imgs[i], imgs[j]) for i, j, _ in pairs],
        [s for *_, s in pairs],
        fmt="png",
    )
    info = {
        "train_detected": train_det,
        "train_fallback": train_fb,
        "eval_detected": eval_det,
        "eval_fallback": eval_fb,
        "eval_pairs": len(pairs),
        "eval_genuine": int(sum(s for *_, s in pairs)),
        "align_s": time.perf_counter() - t0,
    }
    _write_json(info_path, info)
    return info


# ------------------------------------------------------------------------ synthetic data


def _known_identities(model_dir: Path) -> tuple[np.ndarray, list[int]]:
    """(30, D) unit means of the bank's vectors of s2–s31, and each person's photo count."""
    from facegen.pipelines.generation.generator_folder import load_identity_bank

    loaded = load_identity_bank(model_dir)
    if loaded is None:
        raise SystemExit(f"{model_dir}: the generator names no identity bank; arm (b) needs one")
    vectors, names = loaded
    names_arr = np.asarray(names)
    missing = [p for p in TRAIN_PEOPLE if not (names_arr == p).any()]
    if missing:
        raise SystemExit(
            f"{model_dir}: the identity bank has no vectors of {missing}; arm (b) needs the "
            f"generator to be trained on ORL {TRAIN_PEOPLE[0]}–{TRAIN_PEOPLE[-1]}"
        )
    means, counts = [], []
    for p in TRAIN_PEOPLE:
        v = vectors[names_arr == p]
        m = v.mean(0)
        means.append(m / np.linalg.norm(m))
        counts.append(len(v))
    return np.stack(means).astype(np.float32), counts


def _write_known_identities(out: Path, model_dir: Path) -> None:
    from facegen.embedding_io import save_embeddings
    from facegen.types import IdentityEmbedding

    ids_file = out / "identities.safetensors"
    if ids_file.exists():
        return
    means, counts = _known_identities(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_embeddings(
        ids_file,
        [IdentityEmbedding(v, ENCODER_ID, True) for v in means],
        names=TRAIN_PEOPLE,
        extra={"source": "mean of the identity bank's vectors per person", "photos": counts},
    )


def _journal_stats(out: Path) -> dict[str, Any]:
    """Counts from the dataset's journals (the first record of each identity) and anchors."""
    from facegen.pipelines.dataset.anchors import read_anchors
    from facegen.pipelines.dataset.build import read_journal

    records: dict[int, dict[str, Any]] = {}
    for f in sorted((out / "journal").glob("*.jsonl")):
        for r in read_journal(f):
            records.setdefault(int(r["identity"]), r)
    done = [r for r in records.values() if r["status"] == "done"]
    failed = [r for r in records.values() if r["status"] != "done"]
    accepted = sum(len(r["images"]) for r in records.values())
    rejected = Counter(x["reason"] for r in records.values() for x in r["rejections"])
    # accepted anchors are renders too (rejected ones are in the journals' rejections)
    anchors_kept = sum(a["status"] == "done" for a in read_anchors(out))
    candidates = accepted + anchors_kept + sum(rejected.values())
    return {
        "anchors_kept": anchors_kept,
        "identities_recorded": len(records),
        "identities_kept": len(done),
        "identities_failed": len(failed),
        "images_kept": sum(len(r["images"]) for r in done),
        "images_accepted_in_failed": sum(len(r["images"]) for r in failed),
        "candidates": candidates,
        "acceptance_rate": accepted / candidates if candidates else None,
        "rejections": dict(rejected),
        "mean_similarity_kept": float(
            np.mean([im["similarity"] for r in done for im in r["images"]])
        )
        if done
        else None,
    }


def _recommended_verification(model_dir: Path) -> str:
    """What the generator folder's dataset defaults verify images against (``target`` when
    they say nothing)."""
    from facegen.pipelines.generation.generator_folder import read_generator_info

    return str(read_generator_info(model_dir).dataset_defaults.get("verify_against", "target"))


def _synthetic(
    arm: str, args: argparse.Namespace, work: Path, env: dict[str, str]
) -> dict[str, Any]:
    """Make (b) or (c) with the CLI, export it as an ImageFolder; returns its statistics."""
    # (b)'s identities are the people themselves: their images are checked against them;
    # (c) is checked as the model's preset recommends (demo-orl: against anchors)
    verify = "target" if arm == "b" else _recommended_verification(args.model_dir)
    out = work / "datasets" / f"{arm}_{verify}_m{args.images_per_identity}_seed{args.seed}"
    stats_path = out.parent / f"{out.name}.stats.json"
    stats = _read_json(stats_path)
    if stats is not None:
        print(f"[{arm}] dataset cached: {out}", flush=True)
        return stats
    if arm == "b":
        _write_known_identities(out, args.model_dir)
    t0 = time.perf_counter()
    rc, _ = _run(
        [
            "dataset",
            "generate",
            "--preset",
            str(args.model_dir),
            "--identities",
            "30",
            "--images-per-identity",
            str(args.images_per_identity),
            "--seed",
            str(args.seed),
            "--verify-against",
            verify,
            "--out",
            str(out),
        ],
        env,
    )
    gen_s = time.perf_counter() - t0
    summary = _read_json(out / "dataset.json")
    if rc != 0 or summary is None or not summary.get("complete"):
        return {"error": f"`facegen dataset generate` ended with rc {rc}", "generate_s": gen_s}
    stats = {**_journal_stats(out), "generate_s": gen_s, "dir": str(out)}
    if stats["identities_kept"]:
        rc, _ = _run(["dataset", "export", str(out), "--format", "imagefolder"], env)
        if rc != 0:
            stats["error"] = f"`facegen dataset export` ended with rc {rc}"
        else:
            stats["imagefolder"] = str(out / "export")
    else:
        stats["error"] = "no identity kept (nothing to export)"
    rc, text = _run(["dataset", "report", str(out)], env, capture=True)
    print(text, end="", flush=True)
    report = _read_json(out / "report" / "report.json")
    if rc == 0 and report is not None:
        stats["report"] = report
    _write_json(stats_path, stats)
    return stats


def _combined(work: Path, real: Path, synthetic: Path) -> Path:
    """(d): an ImageFolder of symlinks to (a)'s and (c)'s class folders."""
    out = work / "data_d"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for prefix, src in (("real_", real), ("syn_", synthetic)):
        for d in sorted(p for p in src.iterdir() if p.is_dir()):
            (out / f"{prefix}{d.name}").symlink_to(d.resolve(), target_is_directory=True)
    return out


# ------------------------------------------------------------------------ train / evaluate


def _floor_model(out: Path, seed: int) -> None:
    """The untrained backbone, initialised as ``train_fr`` initialises it (seeded first)."""
    if (out / "model.safetensors").is_file():
        return
    from accelerate.utils import set_seed

    from facegen.training.fr.models import build_backbone, save_backbone

    set_seed(seed)
    model = build_backbone(
        BACKBONE,
        num_features=FR_SETTINGS["embedding_size"],
        width=FR_SETTINGS["width"],
        input_size=FR_SETTINGS["input_size"],
    )
    save_backbone(model, out, extra={"name": "untrained", "steps": 0})


def _train(
    data: Path, out: Path, config: Path, args: argparse.Namespace, env: dict[str, str]
) -> float | None:
    """``facegen train fr``; returns the wall time, or None when the command failed."""
    if out.exists():
        shutil.rmtree(out)  # an unfinished earlier run of this script
    t0 = time.perf_counter()
    rc, _ = _run(
        [
            "train",
            "fr",
            str(data),
            "--out",
            str(out),
            "--config",
            str(config),
            "--backbone",
            BACKBONE,
            "--max-steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
            "--seed",
            str(args.seed),
        ],
        env,
    )
    return time.perf_counter() - t0 if rc == 0 else None


def _evaluate(model: Path, bin_path: Path, env: dict[str, str]) -> dict[str, Any] | None:
    rc, text = _run(["eval", "fr", str(model), "--bin", str(bin_path), "--json"], env, capture=True)
    if rc != 0 or "[" not in text:
        return None
    return json.loads(text[text.index("[") :])[0]


def _arm(
    arm: str,
    data: Path | None,
    why_not: str | None,
    args: argparse.Namespace,
    work: Path,
    bin_path: Path,
    env: dict[str, str],
) -> dict[str, Any]:
    """Train (unless floor) and evaluate one arm; cached in its model folder's result.json."""
    tag = "floor" if arm == "floor" else f"{arm}_s{args.steps}_b{args.batch_size}"
    out = work / "models" / f"{tag}_seed{args.seed}"
    cached = _read_json(out / "result.json")
    if cached is not None:
        print(f"[{arm}] result cached: {out}", flush=True)
        return cached
    row: dict[str, Any] = {"arm": arm, "model": str(out)}
    if arm == "floor":
        _floor_model(out, args.seed)
        row["train_s"] = 0.0
    else:
        if data is None:
            return {**row, "error": why_not}
        classes, images = _count_images(data)
        row.update(classes=classes, images=images)
        if images < args.batch_size:
            return {**row, "error": f"{images} images < batch size {args.batch_size}"}
        train_s = _train(data, out, work / "fr.json", args, env)
        if train_s is None:
            return {**row, "error": "`facegen train fr` failed"}
        row["train_s"] = train_s
    result = _evaluate(out, bin_path, env)
    if result is None:
        return {**row, "error": "`facegen eval fr` failed"}
    row["eval"] = result
    _write_json(out / "result.json", row)
    return row


# -------------------------------------------------------------------------------- report


def _fmt_row(row: dict[str, Any]) -> str:
    name = DESCRIPTIONS[row["arm"]]
    data = (
        f"{row['classes']} / {row['images']}"
        if "classes" in row
        else ("—" if row["arm"] == "floor" else "")
    )
    if "eval" not in row:
        return f"| {name} | {data} | — | not run: {row.get('error')} | | | |"
    r = row["eval"]
    return (
        f"| {name} | {data} | {row['train_s']:.0f} | "
        f"{100 * r['accuracy']:.2f} ± {100 * r['accuracy_std']:.2f} | "
        f"{100 * r['tar_at_far']:.2f} | {r['auc']:.4f} | {100 * r['eer']:.2f} |"
    )


def _dataset_line(arm: str, s: dict[str, Any], asked: int) -> str:
    if "identities_kept" not in s:
        return f"| {arm} | {asked} | — | — | — | — | — | {s.get('error')} |"
    rate = s["acceptance_rate"]
    rej = ", ".join(f"{k} {v}" for k, v in sorted(s["rejections"].items())) or "none"
    sim = s["mean_similarity_kept"]
    return (
        f"| {arm} | {asked} | {s['identities_kept']} ({s['identities_failed']} failed) | "
        f"{s['images_kept']} (+{s['images_accepted_in_failed']} in failed ids) | "
        f"{s['candidates']} | {'—' if rate is None else f'{100 * rate:.1f} %'} | "
        f"{'—' if sim is None else f'{sim:.3f}'} | {rej}; {s['generate_s']:.0f} s |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", type=Path, help="a `facegen train generator` output folder")
    ap.add_argument("--steps", type=int, default=300, help="FR optimizer steps, every arm")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--images-per-identity", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0, help="dataset, pairs and FR seed")
    ap.add_argument("--work", type=Path, default=Path("synthetic_to_real_work"))
    ap.add_argument("--arms", default=",".join(ARMS), help="subset of floor,a,b,c,d")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for commands")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = sorted(set(arms) - set(ARMS))
    if bad:
        raise SystemExit(f"--arms must be among {','.join(ARMS)}, got {bad}")
    if not (args.model_dir / "facegen_generator.json").is_file() and {"b", "c", "d"} & set(arms):
        raise SystemExit(f"{args.model_dir} is not a generator folder (no facegen_generator.json)")
    env = dict(os.environ)
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    owner = _read_json(work / "work.json")
    model_dir = str(args.model_dir.resolve())
    if owner is not None and owner.get("model_dir") != model_dir:
        raise SystemExit(
            f"--work {work} holds results of the generator {owner.get('model_dir')}; "
            f"give another --work for {model_dir}"
        )
    _write_json(work / "work.json", {"model_dir": model_dir})
    (work / "models").mkdir(exist_ok=True)
    (work / "datasets").mkdir(exist_ok=True)
    _write_json(work / "fr.json", FR_SETTINGS)
    t_all = time.perf_counter()

    real = _real_data(work, args.seed)
    bin_path = work / "real" / "eval.bin"
    datasets: dict[str, dict[str, Any]] = {}
    for arm in ("b", "c"):
        if arm in arms or (arm == "c" and "d" in arms):
            datasets[arm] = _synthetic(arm, args, work, env)

    def syn(arm: str) -> tuple[Path | None, str | None]:
        s = datasets[arm]
        if "imagefolder" in s:
            return Path(s["imagefolder"]), None
        return None, f"dataset ({arm}): {s.get('error')}"

    rows = []
    for arm in arms:
        if arm in ("floor", "a"):
            data, why = work / "real" / "train", None
        elif arm in ("b", "c"):
            data, why = syn(arm)
        else:
            data, why = syn("c")
            if data is not None:
                data = _combined(work, work / "real" / "train", data)
        rows.append(_arm(arm, data, why, args, work, bin_path, env))

    print()
    print(
        f"Synthetic → real face recognition, generator {args.model_dir}. Evaluation: ORL "
        f"{EVAL_PEOPLE[0]}–{EVAL_PEOPLE[-1]} (unseen), {real['eval_pairs']} pairs "
        f"({real['eval_genuine']} genuine); {real['eval_detected']} photos aligned, "
        f"{real['eval_fallback']} centre-cropped. Real training photos: "
        f"{real['train_detected']} aligned, {real['train_fallback']} centre-cropped."
    )
    print(
        f"FR: {BACKBONE} width {FR_SETTINGS['width']}, input {FR_SETTINGS['input_size']}, "
        f"{FR_SETTINGS['embedding_size']}-D, {FR_SETTINGS['head']}; {args.steps} steps × "
        f"batch {args.batch_size}, seed {args.seed}; OMP_NUM_THREADS="
        f"{env.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs."
    )
    if datasets:
        print()
        print(
            "| dataset | identities asked | identities kept | images kept | candidates "
            "generated | acceptance | mean cos kept | rejections; generate wall |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for arm, s in datasets.items():
            print(_dataset_line(arm, s, 30))
    print()
    print(
        "| training data | classes / images | train wall s | accuracy % (10-fold) | "
        "TAR@FAR=1e-3 % | AUC | EER % |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(_fmt_row(row))
    total = time.perf_counter() - t_all
    print(f"\ntotal wall {total:.0f} s (cached parts not re-timed)")
    if args.json:
        _write_json(
            args.json,
            {
                "model_dir": str(args.model_dir),
                "steps": args.steps,
                "batch_size": args.batch_size,
                "images_per_identity": args.images_per_identity,
                "seed": args.seed,
                "fr_settings": {"backbone": BACKBONE, **FR_SETTINGS},
                "threads": env.get("OMP_NUM_THREADS"),
                "real": real,
                "datasets": datasets,
                "arms": rows,
                "wall_s": total,
            },
        )


if __name__ == "__main__":
    main()
