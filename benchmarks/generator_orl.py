"""Does a generator trained by ``facegen train generator`` carry identity? Rank-k on ORL.

Conditions and gallery: for each person of ORL's training split (``s2``–``s31``; ``s32``–``s40``
are never seen by a model), the mean of that person's vectors in the folder's identity bank
(``identity_bank.safetensors``: dlib 128-D of every training photo, grouped by the bank's
names), L2-normalised. A folder without a bank (older runs) gets the same means by analysing
the ORL photos with dlib (the analyzer the training cache used, which finds the same vectors).

Rows, each ``--per-id`` images per person, image ``k`` of person ``i`` with seed
``i·per_id + k`` in every row, so the rows share their initial noise:

* **trained**: ``IDToFacePipeline`` with the person's mean, ``--steps`` DPM-Solver++ steps,
  classifier-free guidance ``--guidance`` (negative: the zero identity, as trained);
* **condition dropped**: the same weights given the null identity they were trained with for
  classifier-free guidance (``prompt_embeds`` of the zero vector in the same prompt, from the
  pipeline's own Arc2Face ID encoder: ``pipe.id_encoder.encode_unconditional(n,
  "zero-identity")``), sampled without guidance (scale 1) through a plain diffusers
  ``StableDiffusionPipeline`` over the same components (``IDToFacePipeline`` refuses ready
  ``prompt_embeds`` and zero identities). Every image is the unconditional model's, so the
  person it is scored against is only a label: chance;
* **untrained**: the same architecture (the folder's ``unet`` and ``text_encoder`` configs)
  with random weights (``torch.manual_seed(--control-seed)``), the rest of the folder (tokenizer,
  scheduler, space-to-depth VAE, prompt) unchanged, sampled like the trained row;
* **real training photos** (reference, no generation): each bank vector scored against the
  same means. Each photo is part of its own mean, so this is an optimistic ceiling.

Scoring, as the dataset builder's verifier (``facegen.pipelines.dataset.build``) sees an image:
enlarged by ``enlarged_for_detection`` (to ≥ 160 px; a 64 px image ×3), the largest face
detected and embedded by the folder's analyzer (``pipe.identity_analyzer.largest_faces``,
dlib HOG at upsample 1 + dlib ResNet). Rank-1 / rank-5: is the person's own mean among the 1 /
5 nearest (cosine) of the 30? Images without a face count as misses (chance: 1/30 and 5/30).
``cos own``: mean cosine to the person's mean over images with a face; ``cos others``: mean
cosine to the other 29 means. ``accepted``: the dataset rule with the folder's
``dataset_defaults`` — a face, and cosine to the target in [min_similarity, max_similarity]
(for dlib 0.925 = its same-person threshold, and 0.995). Times: generation and scoring per
image (wall clock).

Usage: ``python benchmarks/generator_orl.py MODEL_DIR [--per-id 4] [--steps 25] [--guidance 3]
[--threads 0] [--json OUT]`` (``MODEL_DIR``: the output folder of ``facegen train generator``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ORL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "orl_faces"
TRAIN_PEOPLE = range(2, 32)
CHUNK = 40  # images per pipeline call


def unit(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (float, ``(N, D)`` or ``(D,)``) scaled to unit L2 norm, as float32."""
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def identity_bank(analyzer: Any) -> tuple[list[int], np.ndarray, int]:
    """(people, (P, 128) mean embeddings, photos without a face), from the ORL photos."""
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
            people.append(person)
            means.append(unit(np.mean(vecs, axis=0)))
    return people, np.stack(means).astype(np.float32), missed


def person_means(vectors: np.ndarray, names: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The people of a bank (sorted by their number, ``s2`` before ``s10``) and the
    L2-normalised mean of each one's unit vectors: float32 ``(P, D)``."""

    def key(name: str) -> tuple[int, str]:
        digits = "".join(c for c in name if c.isdigit())
        return (int(digits) if digits else -1, name)

    people = sorted(set(names), key=key)
    vecs = unit(vectors)
    names_arr = np.asarray(names)
    means = np.stack([unit(vecs[names_arr == p].mean(0)) for p in people])
    return people, means


def embed_as_verifier(analyzer: Any, images: Sequence[np.ndarray], workers: int) -> list[Any]:
    """Unit dlib vectors of generated RGB uint8 ``(H, W, 3)`` images as the dataset verifier
    finds them (enlarged to ≥ 160 px, largest face), ``None`` where no face is found."""
    from facegen.pipelines.dataset.build import enlarged_for_detection

    arrays = [enlarged_for_detection(np.asarray(im)) for im in images]
    faces = analyzer.largest_faces(arrays, workers=workers)
    return [None if f is None else unit(f.embedding.vector) for f in faces]


def to_uint8(images: Any) -> list[np.ndarray]:
    """Float ``(N, H, W, 3)`` images in [0, 1] → a list of RGB uint8 arrays."""
    arr = (np.clip(np.asarray(images), 0, 1) * 255).round().astype(np.uint8)
    return list(arr)


def dataset_bounds(defaults: Mapping[str, float] | None, preset: str) -> tuple[float, float]:
    """``(min_similarity, max_similarity)`` a dataset run on this preset uses."""
    from facegen.pipelines.dataset.config import DatasetConfig

    cfg = DatasetConfig(identities=1, images_per_identity=1, preset=preset)
    return cfg.setting("min_similarity", defaults), cfg.setting("max_similarity", defaults)


def score(
    vecs: Sequence[np.ndarray | None],
    targets: Sequence[int],
    gallery: np.ndarray,
    bounds: tuple[float, float],
) -> dict[str, Any]:
    """Identification and acceptance of unit vectors (``None``: no face) whose true person is
    ``targets[k]``, a row of ``gallery`` (unit ``(P, D)``)."""
    n = len(vecs)
    rank1 = rank5 = no_face = accepted = 0
    own, others = [], []
    for vec, target in zip(vecs, targets):
        if vec is None:
            no_face += 1
            continue
        sims = gallery @ vec
        order = np.argsort(-sims)
        rank1 += int(order[0] == target)
        rank5 += int(target in order[:5])
        own.append(float(sims[target]))
        others.append(float(np.delete(sims, target).mean()))
        accepted += int(bounds[0] <= sims[target] <= bounds[1])
    return {
        "images": n,
        "no_face": no_face / n,
        "rank1": rank1 / n,
        "rank5": rank5 / n,
        "cos_own": float(np.mean(own)) if own else None,
        "cos_others": float(np.mean(others)) if others else None,
        "accepted": accepted / n,
    }


def timed_rows(
    make: Callable[[], list[np.ndarray]], analyzer: Any, workers: int
) -> tuple[list[np.ndarray], list[Any], float, float]:
    """``make()``'s images, their verifier vectors, and seconds per image for each."""
    t = time.perf_counter()
    images = make()
    gen_s = (time.perf_counter() - t) / len(images)
    t = time.perf_counter()
    vecs = embed_as_verifier(analyzer, images, workers)
    return images, vecs, gen_s, (time.perf_counter() - t) / len(images)


def generate_conditioned(
    pipe: Any,
    ids: Sequence[Any],
    per_id: int,
    seeds: Sequence[int],
    steps: int,
    guidance: float,
) -> list[np.ndarray]:
    """``per_id`` images per identity (identity-major), one seed each, in chunks."""
    out: list[np.ndarray] = []
    step = max(1, CHUNK // per_id)
    for start in range(0, len(ids), step):
        chunk = list(ids[start : start + step])
        res = pipe(
            chunk,
            num_images_per_identity=per_id,
            seeds=list(seeds[start * per_id : (start + len(chunk)) * per_id]),
            num_inference_steps=steps,
            guidance_scale=guidance,
            output_type="np",
        )
        out += to_uint8(res.images)
    return out


def generate_dropped(pipe: Any, seeds: Sequence[int], steps: int) -> list[np.ndarray]:
    """One image per seed from the null identity (the zero vector in the prompt, as dropped in
    training), without guidance, through a plain diffusers pipeline over ``pipe``'s parts."""
    import torch
    from diffusers import StableDiffusionPipeline

    parts = {k: v for k, v in pipe.components.items() if k != "image_encoder"}
    plain = StableDiffusionPipeline(**parts, requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)
    out: list[np.ndarray] = []
    for start in range(0, len(seeds), CHUNK):
        chunk = seeds[start : start + CHUNK]
        embeds = pipe.id_encoder.encode_unconditional(len(chunk), "zero-identity")
        res = plain(
            prompt_embeds=embeds.to(pipe.device, pipe.unet.dtype),
            guidance_scale=1.0,
            num_inference_steps=steps,
            generator=[torch.Generator("cpu").manual_seed(int(s)) for s in chunk],
            output_type="np",
        )
        out += to_uint8(res.images)
    return out


def untrained_pipeline(pipe: Any, folder: Path, seed: int) -> Any:
    """``pipe`` with its UNet and text encoder replaced by randomly initialised ones of the
    folder's configs (``torch.manual_seed(seed)``); everything else shared."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from facegen.pipelines.generation.generator_folder import (
        configure_pipeline,
        read_generator_info,
    )
    from facegen.pipelines.generation.id_to_face import IDToFacePipeline

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
    text = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    dtype = pipe.unet.dtype
    if dtype != torch.float32:  # built in float32; cast only for a half-precision pipeline
        unet, text = unet.to(dtype), text.to(dtype)
    parts = {**pipe.components, "unet": unet.eval(), "text_encoder": text}
    control = IDToFacePipeline(**parts, requires_safety_checker=False)
    control.text_encoder.eval()
    configure_pipeline(control, read_generator_info(folder))
    control.identity_analyzer = pipe.identity_analyzer
    control.set_progress_bar_config(disable=True)
    return control


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The Markdown table of the rows."""

    def pct(v: float | None) -> str:
        return "—" if v is None else f"{100 * v:.1f} %"

    def cos(v: float | None) -> str:
        return "—" if v is None else f"{v:.3f}"

    def ms(v: float | None) -> str:
        return "—" if v is None else f"{1000 * v:.0f}"

    lines = [
        "| images | n | no face | rank-1 | rank-5 | cos own | cos others | accepted "
        "| gen ms/img | verify ms/img |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['row']} | {r['images']} | {pct(r['no_face'])} | {pct(r['rank1'])} "
            f"| {pct(r['rank5'])} | {cos(r['cos_own'])} | {cos(r['cos_others'])} "
            f"| {pct(r['accepted'])} | {ms(r.get('gen_s'))} | {ms(r.get('verify_s'))} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="output folder of `facegen train generator`")
    ap.add_argument("--per-id", type=int, default=4, help="images per person and row")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--control-seed", type=int, default=0, help="seed of the untrained weights")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.per_id < 1 or args.steps < 1:
        ap.error(f"--per-id and --steps must be >= 1, got {args.per_id} and {args.steps}")

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    workers = max(1, min(4, torch.get_num_threads()))

    from facegen.pipelines.generation.presets import from_preset
    from facegen.types import IdentityEmbedding

    t_load = time.perf_counter()
    pipe = from_preset(str(args.model))
    pipe.set_progress_bar_config(disable=True)
    analyzer = pipe.identity_analyzer
    if analyzer is None:
        from facegen.analyzer import FaceAnalyzer

        analyzer = FaceAnalyzer.from_names("dlib", None, "dlib")
    encoder_id = pipe.identity_spec.encoder_ids[0]
    bank = pipe.identity_bank
    if bank is not None:
        people, gallery = person_means(*bank)
        missed = None
    else:
        numbers, gallery, missed = identity_bank(analyzer)
        people = [f"s{p}" for p in numbers]
    info = pipe.preset_info
    defaults = dict(info.dataset_defaults) if info is not None else None
    bounds = dataset_bounds(defaults, str(args.model))
    load_s = time.perf_counter() - t_load

    ids = [IdentityEmbedding(v, encoder_id, normalized=True) for v in gallery]
    per_id = args.per_id
    seeds = list(range(len(ids) * per_id))
    targets = [k // per_id for k in range(len(seeds))]
    makers: list[tuple[str, Callable[[], list[np.ndarray]]]] = [
        (
            f"trained (guidance {args.guidance:g})",
            lambda: generate_conditioned(pipe, ids, per_id, seeds, args.steps, args.guidance),
        ),
        (
            "trained, condition dropped (zero identity, guidance 1)",
            lambda: generate_dropped(pipe, seeds, args.steps),
        ),
        (
            f"untrained, random init (seed {args.control_seed}, guidance {args.guidance:g})",
            lambda: generate_conditioned(
                untrained_pipeline(pipe, args.model, args.control_seed),
                ids,
                per_id,
                seeds,
                args.steps,
                args.guidance,
            ),
        ),
    ]
    rows = []
    for name, make in makers:
        _, vecs, gen_s, verify_s = timed_rows(make, analyzer, workers)
        rows.append({"row": name, **score(vecs, targets, gallery, bounds)})
        rows[-1].update(gen_s=gen_s, verify_s=verify_s)
    if bank is not None:
        index = {p: i for i, p in enumerate(people)}
        real = score(list(unit(bank[0])), [index[n] for n in bank[1]], gallery, bounds)
        rows.append({"row": "real training photos (bank; in their own mean)", **real})

    print(
        f"{args.model}: {len(people)} people × {per_id} images per row; {args.steps} steps; "
        f"chance rank-1 {100 / len(people):.1f} %, rank-5 {500 / len(people):.1f} %; "
        f"accepted = face with cosine to target in [{bounds[0]:g}, {bounds[1]:g}]; "
        f"{torch.get_num_threads()} torch threads; loading {load_s:.1f} s\n"
    )
    print(table(rows))
    if args.json:
        result = {
            "model": str(args.model),
            "people": people,
            "per_id": per_id,
            "steps": args.steps,
            "guidance": args.guidance,
            "control_seed": args.control_seed,
            "chance_rank1": 1 / len(people),
            "chance_rank5": 5 / len(people),
            "accept_bounds": list(bounds),
            "dataset_defaults": defaults,
            "real_photos_without_face": missed,
            "threads": torch.get_num_threads(),
            "rows": rows,
        }
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
