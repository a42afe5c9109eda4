"""The Anonymize tab: the faces of several photos blurred, pixelated, masked or (where face
swap is installed) replaced by generated ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import gradio as gr

from facegen.masks import MASK_SHAPES
from facegen.pipelines.editing.options import ANONYMIZE_MODES, FACE_POLICIES

from ..edit import ANONYMIZE_HEADERS, anonymize_files
from ..files import FieldValue, human_errors
from ..services import Services, SessionState
from ..video import anonymize_video_upload
from .common import CPU_QUEUE, TRACK, AppContext, bind, gallery, table

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["AnonymizeTab", "on_anonymize", "on_anonymize_video", "render", "wire"]


@dataclass(frozen=True)
class AnonymizeTab:
    files: gr.File
    mode: gr.Radio
    faces: gr.Dropdown
    sigma: gr.Slider
    blocks: gr.Slider
    shape: gr.Radio
    preset: gr.Dropdown
    seed: gr.Number
    steps: gr.Slider
    run: gr.Button
    gallery: gr.Gallery
    table: gr.Dataframe
    zip: gr.File
    notice: gr.Markdown
    video: gr.Video
    detect_every: gr.Slider
    run_video: gr.Button
    video_out: gr.Video
    video_report: gr.JSON
    video_summary: gr.Markdown


def _settings(
    services: Services,
) -> tuple[gr.Slider, gr.Slider, gr.Radio, gr.Dropdown, gr.Number, gr.Slider]:
    """The settings of each mode: blur strength, pixel blocks, mask shape, and the preset, seed
    and steps of generated faces."""
    with gr.Accordion("Settings", open=False):
        sigma = gr.Slider(
            0.05, 1.0, value=0.25, step=0.05, label="Blur strength (σ, fraction of the face)"
        )
        blocks = gr.Slider(2, 32, value=8, step=1, label="Pixelate: blocks across a face")
        shape = gr.Radio(list(MASK_SHAPES), value=MASK_SHAPES[0], label="Mask shape")
        preset = gr.Dropdown(
            services.edit_presets, value=services.default_for("edit"), label="Generate mode: preset"
        )
        seed = gr.Number(0, label="Generate mode: seed", precision=0, minimum=0)
        steps = gr.Slider(
            0,
            services.limits.max_steps,
            value=0,
            step=1,
            label="Generate mode: steps (0 = default)",
        )
    return sigma, blocks, shape, preset, seed, steps


def render(services: Services) -> AnonymizeTab:
    generative = services.swap_status().available
    with gr.Tab("Anonymize", id="anonymize"), gr.Row():
        with gr.Column():
            files = gr.File(
                label="Photos", file_count="multiple", file_types=["image"], elem_id="anon-files"
            )
            modes = [m for m in ANONYMIZE_MODES if m != "generate" or generative]
            mode = gr.Radio(modes, value="blur", label="Mode", elem_id="anon-mode")
            faces = gr.Dropdown(
                list(FACE_POLICIES),
                value="all",
                allow_custom_value=True,
                label="Which faces (all, largest, best or a face number)",
            )
            sigma, blocks, shape, preset, seed, steps = _settings(services)
            run = gr.Button("Anonymize", variant="primary", elem_id="anon-run")
        with gr.Column():
            shown = gr.Gallery(
                label="Anonymized",
                columns=2,
                elem_id="anon-gallery",
                buttons=["download", "fullscreen"],
            )
            rows = gr.Dataframe(headers=ANONYMIZE_HEADERS, label="Per face", interactive=False)
            zipf = gr.File(label="Download all (zip with manifest.json)", interactive=False)
            notice = gr.Markdown(elem_id="anon-provenance")
    with gr.Tab("Video", id="anonymize-video"), gr.Row():
        with gr.Column():
            video = gr.Video(label="Video", sources=["upload"], elem_id="anon-video")
            gr.Markdown(
                "Mode, blur strength, pixel blocks and mask shape come from the Anonymize tab. "
                f"At most {services.limits.max_video_frames} frames and "
                f"{services.limits.max_upload_mb:g} MB. Faces are tracked between detections and "
                "covered on every frame; the audio is kept."
            )
            detect_every = gr.Slider(
                1, 10, value=1, step=1, label="Detect faces on every k-th frame (track between)"
            )
            run_video = gr.Button("Anonymize video", variant="primary", elem_id="anon-video-run")
            gr.Markdown("To put a photo's identity on a video's faces, use the Swap tab.")
        with gr.Column():
            video_out = gr.Video(label="Anonymized", interactive=False, elem_id="anon-video-out")
            video_summary = gr.Markdown(elem_id="anon-video-summary")
            video_report = gr.JSON(label="Report")
    return AnonymizeTab(
        files=files,
        mode=mode,
        faces=faces,
        sigma=sigma,
        blocks=blocks,
        shape=shape,
        preset=preset,
        seed=seed,
        steps=steps,
        run=run,
        gallery=shown,
        table=rows,
        zip=zipf,
        notice=notice,
        video=video,
        detect_every=detect_every,
        run_video=run_video,
        video_out=video_out,
        video_report=video_report,
        video_summary=video_summary,
    )


@human_errors("Anonymization")
def on_anonymize(
    services: Services,
    files: list[str] | None,
    mode: str,
    faces: str | None,
    sigma: FieldValue,
    blocks: FieldValue,
    shape: str,
    preset: str,
    seed: FieldValue,
    steps: FieldValue,
    st: SessionState,
    progress: gr.Progress = TRACK,
) -> tuple[list[tuple[str, str]], pd.DataFrame, str, str, SessionState]:
    """The photos with their faces blurred, pixelated, masked or generated anew: the results,
    a per-face table, a zip with a manifest and the provenance line."""
    res = anonymize_files(
        services,
        st,
        files=files,
        mode=mode,
        faces=faces,
        blur_sigma=sigma,
        pixel_blocks=blocks,
        shape=shape,
        preset=preset,
        seed=seed,
        steps=steps,
        progress=progress,
        warn=gr.Warning,
    )
    rows = table(res.rows, ANONYMIZE_HEADERS)
    return gallery(res.saved, res.captions), rows, str(res.zip_path), res.notice, st


@human_errors("Video anonymization")
def on_anonymize_video(
    services: Services,
    video: str | None,
    mode: str,
    sigma: FieldValue,
    blocks: FieldValue,
    shape: str,
    detect_every: FieldValue,
    st: SessionState,
    progress: gr.Progress = TRACK,
) -> tuple[str, dict, str, SessionState]:
    """The video with every face covered on every frame, its report and a summary line."""
    res = anonymize_video_upload(
        services,
        st,
        video=video,
        mode=mode,
        blur_sigma=sigma,
        pixel_blocks=blocks,
        shape=shape,
        detect_every=detect_every,
        progress=progress,
    )
    return str(res.path), res.report, res.summary, st


def wire(tab: AnonymizeTab, ctx: AppContext) -> None:
    settings = [tab.sigma, tab.blocks, tab.shape, tab.preset, tab.seed, tab.steps]
    tab.run.click(
        bind(on_anonymize, ctx.services),
        [tab.files, tab.mode, tab.faces, *settings, ctx.state],
        [tab.gallery, tab.table, tab.zip, tab.notice, ctx.state],
        api_name="anonymize",
        **CPU_QUEUE,
    )
    tab.run_video.click(
        bind(on_anonymize_video, ctx.services),
        [tab.video, tab.mode, tab.sigma, tab.blocks, tab.shape, tab.detect_every, ctx.state],
        [tab.video_out, tab.video_report, tab.video_summary, ctx.state],
        api_name="anonymize_video",
        **CPU_QUEUE,
    )
