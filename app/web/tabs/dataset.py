"""The Dataset tab: a preview of identity sampling (how separated the identities are), and
small dataset jobs (generated, verified and measured) to download."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..dataset import preset_thresholds, preview_identities, run_dataset
from ..files import FieldValue, human_errors
from ..services import Services, SessionState
from .common import CPU_QUEUE, TRACK, AppContext, bind, table

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DatasetTab", "JobForm", "PreviewForm", "on_dataset", "on_preview", "render", "wire"]


@dataclass(frozen=True)
class PreviewForm:
    """Identity sampling: how many, how separated, which sampler and seed; the result."""

    n: gr.Number
    separation: gr.Slider
    sampler: gr.Radio
    seed: gr.Number
    run: gr.Button
    summary: gr.JSON
    plot: gr.BarPlot


@dataclass(frozen=True)
class JobForm:
    """A small dataset job's settings and results."""

    preset: gr.Dropdown
    n: gr.Slider
    m: gr.Slider
    separation: gr.Slider
    min_similarity: gr.Slider
    max_similarity: gr.Slider
    attempts: gr.Slider
    steps: gr.Slider
    seed: gr.Number
    prompt: gr.Textbox
    run: gr.Button
    summary: gr.JSON
    report: gr.JSON
    sheet: gr.Image
    zip: gr.File


@dataclass(frozen=True)
class DatasetTab:
    preview: PreviewForm
    job: JobForm


def _preview_form() -> PreviewForm:
    gr.Markdown("### Identity sampling preview")
    with gr.Row():
        n = gr.Number(1000, label="Identities", precision=0, minimum=2)
        separation = gr.Slider(
            -0.2,
            0.9,
            value=0.3,
            step=0.01,
            label="Separation (max similarity between identities)",
        )
        sampler = gr.Radio(["uniform", "spread"], value="uniform", label="Sampler")
        seed = gr.Number(0, label="Seed", precision=0, minimum=0)
    run = gr.Button("Preview")
    with gr.Row():
        summary = gr.JSON(label="Sampled identities")
        plot = gr.BarPlot(
            x="similarity", y="pairs", title="Pairwise similarities", x_title="cosine similarity"
        )
    return PreviewForm(n, separation, sampler, seed, run, summary, plot)


def _job_form(services: Services) -> JobForm:
    lim = services.limits
    gr.Markdown("### Small dataset job (generated, verified, measured)")
    with gr.Row():
        preset = gr.Dropdown(
            services.generate_presets, value=services.default_for("generate"), label="Preset"
        )
        n = gr.Slider(
            1,
            lim.max_dataset_identities,
            value=min(4, lim.max_dataset_identities),
            step=1,
            label="Identities",
        )
        m = gr.Slider(
            1,
            lim.max_dataset_images,
            value=min(4, lim.max_dataset_images),
            step=1,
            label="Images per identity",
        )
    sep0, lo0, hi0 = preset_thresholds(preset.value)
    with gr.Row():  # the preset's calibration for its identity space; see preset_thresholds
        separation = gr.Slider(-0.2, 0.99, value=sep0, step=0.005, label="Separation")
        lo = gr.Slider(-1, 1, value=lo0, step=0.005, label="Keep images with similarity ≥")
        hi = gr.Slider(-1, 1, value=hi0, step=0.005, label="… and ≤ (near-copies above)")
        attempts = gr.Slider(1, 10, value=3, step=1, label="Attempts per image")
    with gr.Row():
        steps = gr.Slider(0, lim.max_steps, value=0, step=1, label="Steps (0 = preset default)")
        seed = gr.Number(0, label="Seed", precision=0, minimum=0)
        prompt = gr.Textbox(label="Prompt (text presets only)")
    run = gr.Button("Build dataset", variant="primary")
    with gr.Row():
        summary = gr.JSON(label="Job")
        report = gr.JSON(label="Quality report (independent dlib encoder)")
    sheet = gr.Image(label="Contact sheet", interactive=False, type="filepath")
    zipf = gr.File(
        label="Download dataset (images, journal, identities, report)", interactive=False
    )
    return JobForm(
        preset=preset,
        n=n,
        m=m,
        separation=separation,
        min_similarity=lo,
        max_similarity=hi,
        attempts=attempts,
        steps=steps,
        seed=seed,
        prompt=prompt,
        run=run,
        summary=summary,
        report=report,
        sheet=sheet,
        zip=zipf,
    )


def render(services: Services) -> DatasetTab:
    with gr.Tab("Dataset", id="dataset"):
        preview = _preview_form()
        job = _job_form(services)
    return DatasetTab(preview, job)


@human_errors("Identity sampling")
def on_preview(
    services: Services,
    n: FieldValue,
    sep: FieldValue,
    sampler: str,
    seed: FieldValue,
    progress: gr.Progress = TRACK,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Sample identities no two of which are more similar than the separation: a summary and
    the histogram of their pairwise similarities."""
    res = preview_identities(
        services, identities=n, separation=sep, sampler=sampler, seed=seed, progress=progress
    )
    return res.summary, table([list(r) for r in res.histogram], ["similarity", "pairs"])


@human_errors("Dataset job")
def on_dataset(
    services: Services,
    preset: str,
    n: FieldValue,
    m: FieldValue,
    sep: FieldValue,
    lo: FieldValue,
    hi: FieldValue,
    attempts: FieldValue,
    steps: FieldValue,
    seed: FieldValue,
    prompt: str,
    st: SessionState,
    progress: gr.Progress = TRACK,
) -> tuple[dict[str, Any], dict[str, Any], str | None, str, SessionState]:
    """A small dataset (identities sampled, images generated and verified, the result
    measured with an independent encoder): the job's summary, the quality report, a contact
    sheet and a zip of the run."""
    job = run_dataset(
        services,
        st,
        preset=preset,
        identities=n,
        images_per_identity=m,
        separation=sep,
        min_similarity=lo,
        max_similarity=hi,
        attempts=attempts,
        steps=steps,
        seed=seed,
        prompt=prompt,
        progress=progress,
    )
    sheet = str(job.contact_sheet) if job.contact_sheet else None
    return job.summary, job.report, sheet, str(job.zip_path), st


def wire(tab: DatasetTab, ctx: AppContext) -> None:
    p, j = tab.preview, tab.job
    p.run.click(
        bind(on_preview, ctx.services),
        [p.n, p.separation, p.sampler, p.seed],
        [p.summary, p.plot],
        api_name="dataset_preview",
        **CPU_QUEUE,
    )
    similarity = [j.separation, j.min_similarity, j.max_similarity]
    # each preset's identity space has its own thresholds (dlib's same-person cosine is 0.925,
    # ArcFace's 0.5): the sliders follow the preset chosen
    j.preset.change(lambda name: list(preset_thresholds(name)), [j.preset], similarity, queue=False)
    j.run.click(
        bind(on_dataset, ctx.services),
        [j.preset, j.n, j.m, *similarity, j.attempts, j.steps, j.seed, j.prompt, ctx.state],
        [j.summary, j.report, j.sheet, j.zip, ctx.state],
        api_name="dataset_run",
        **ctx.gpu,
    )
