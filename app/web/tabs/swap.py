"""The Swap tab: the identity of a source photo on chosen faces of a target photo or video."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import gradio as gr
import numpy as np

from facegen.pipelines.editing.options import FACE_POLICIES

from ..edit import SWAP_HEADERS, swap_faces
from ..files import FieldValue, human_errors
from ..generate import detect_faces
from ..services import Services, SessionState
from ..video import swap_video_upload
from .common import QUICK_CONCURRENCY, TRACK, AppContext, bind, table

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SwapTab", "on_swap", "on_swap_video", "on_target", "render", "wire"]


@dataclass(frozen=True)
class SwapTab:
    source: gr.File
    target: gr.File
    faces: gr.Dropdown
    info: gr.Markdown
    preset: gr.Dropdown
    seed: gr.Number
    steps: gr.Slider
    strength: gr.Slider
    method: gr.Dropdown
    restore: gr.Dropdown
    restore_blend: gr.Slider
    run: gr.Button
    before: gr.Image
    after: gr.Image
    table: gr.Dataframe
    file: gr.File
    notice: gr.Markdown
    video: gr.Video
    video_faces: gr.Radio
    detect_every: gr.Slider
    run_video: gr.Button
    video_out: gr.Video
    video_summary: gr.Markdown
    video_report: gr.JSON


def render(services: Services) -> SwapTab:
    status = services.swap_status()
    with gr.Tab("Swap", id="swap"):
        if not status.available:
            gr.Markdown(f"**Not available:** {status.message}")
        with gr.Row():
            with gr.Column():
                source = gr.File(
                    label="Source photo (the identity)", file_types=["image"], elem_id="swap-source"
                )
                target = gr.File(
                    label="Target photo (faces to replace)",
                    file_types=["image"],
                    elem_id="swap-target",
                )
                faces = gr.Dropdown(
                    list(FACE_POLICIES),
                    value="all",
                    allow_custom_value=True,
                    label="Which target faces (all, largest, best or a face number)",
                )
                info = gr.Markdown()
                preset = gr.Dropdown(
                    services.edit_presets, value=services.default_for("edit"), label="Preset"
                )
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                    steps = gr.Slider(
                        0, services.limits.max_steps, value=0, step=1, label="Steps (0 = default)"
                    )
                    strength = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Strength")
                with gr.Accordion("Method", open=False):
                    method = gr.Dropdown(
                        services.swap_methods, value="diffusion", label="Swap method",
                        info="diffusion regenerates each face (preset above); the others are "
                        "one-shot ONNX swappers (one pass per face, fast; their models load on "
                        "first use; inswapper is for non-commercial use)",
                        elem_id="swap-method",
                    )  # fmt: skip
                    with gr.Row():
                        restore = gr.Dropdown(
                            ["none", "gfpgan", "codeformer"], value="none",
                            label="Restore faces after a one-shot swap",
                        )  # fmt: skip
                        restore_blend = gr.Slider(0, 1, value=0.8, step=0.05, label="Restore blend")
                run = gr.Button(
                    "Swap", variant="primary", interactive=status.available, elem_id="swap-run"
                )
            with gr.Column():
                with gr.Row():
                    before = gr.Image(label="Target (faces numbered)", interactive=False)
                    after = gr.Image(label="Result", interactive=False, type="filepath")
                rows = gr.Dataframe(headers=SWAP_HEADERS, label="Per face", interactive=False)
                file = gr.File(label="Download", interactive=False)
                notice = gr.Markdown()
        with gr.Accordion("Target video", open=True), gr.Row():
            with gr.Column():
                video = gr.Video(label="Target video", sources=["upload"], elem_id="swap-video")
                gr.Markdown(
                    "The source photo, preset, seed, steps and method above apply. At most "
                    f"{services.limits.max_video_frames} frames and "
                    f"{services.limits.max_upload_mb:g} MB. Faces are tracked; each track keeps "
                    "its seed; the audio is kept."
                )
                video_faces = gr.Radio(["all", "largest"], value="all", label="Which faces")
                detect_every = gr.Slider(
                    1, 10, value=1, step=1, label="Detect faces on every k-th frame (track between)"
                )
                run_video = gr.Button(
                    "Swap in video", interactive=status.available, elem_id="swap-video-run"
                )
            with gr.Column():
                video_out = gr.Video(label="Swapped", interactive=False, elem_id="swap-video-out")
                video_summary = gr.Markdown(elem_id="swap-video-summary")
                video_report = gr.JSON(label="Report")
    return SwapTab(
        source=source,
        target=target,
        faces=faces,
        info=info,
        preset=preset,
        seed=seed,
        steps=steps,
        strength=strength,
        method=method,
        restore=restore,
        restore_blend=restore_blend,
        run=run,
        before=before,
        after=after,
        table=rows,
        file=file,
        notice=notice,
        video=video,
        video_faces=video_faces,
        detect_every=detect_every,
        run_video=run_video,
        video_out=video_out,
        video_summary=video_summary,
        video_report=video_report,
    )


@human_errors("Face detection")
def on_target(services: Services, path: str | None) -> tuple[np.ndarray | None, gr.Dropdown, str]:
    """The faces of a target photo, numbered, and the face picker (all, largest, best or a
    face number)."""
    policies = [(p, p) for p in FACE_POLICIES]
    if not path:
        return None, gr.Dropdown(choices=policies, value="all"), ""
    p = detect_faces(services, path, what="a target photo")
    return p.image, gr.Dropdown(choices=policies + p.choices, value="all"), p.summary


@human_errors("Swap")
def on_swap(
    services: Services,
    source: str | None,
    target: str | None,
    faces: str | None,
    preset: str,
    seed: FieldValue,
    steps: FieldValue,
    strength: FieldValue,
    st: SessionState,
    method: str | None = "diffusion",
    restore: str | None = "none",
    restore_blend: FieldValue = 0.8,
    progress: gr.Progress = TRACK,
) -> tuple[np.ndarray, str, pd.DataFrame, str, str, SessionState]:
    """The identity of the source photo on the chosen faces of the target photo: the numbered
    target, the result, a per-face table, the result file and its provenance line."""
    res = swap_faces(
        services,
        st,
        source=source,
        target=target,
        faces=faces,
        preset=preset,
        seed=seed,
        steps=steps,
        strength=strength,
        method=method,
        restore=restore,
        restore_blend=restore_blend,
        progress=progress,
    )
    path = str(res.saved.path)
    return res.target_preview, path, table(res.rows, SWAP_HEADERS), path, res.notice, st


@human_errors("Video swap")
def on_swap_video(
    services: Services,
    source: str | None,
    video: str | None,
    faces: str | None,
    preset: str,
    seed: FieldValue,
    steps: FieldValue,
    detect_every: FieldValue,
    st: SessionState,
    method: str | None = "diffusion",
    progress: gr.Progress = TRACK,
) -> tuple[str, dict, str, SessionState]:
    """The source photo's identity on the video's faces, its report and a summary line."""
    res = swap_video_upload(
        services,
        st,
        source=source,
        video=video,
        faces=faces,
        preset=preset,
        seed=seed,
        steps=steps,
        detect_every=detect_every,
        method=method,
        progress=progress,
    )
    return str(res.path), res.report, res.summary, st


def wire(tab: SwapTab, ctx: AppContext) -> None:
    tab.target.upload(
        bind(on_target, ctx.services),
        tab.target,
        [tab.before, tab.faces, tab.info],
        api_name="swap_detect_faces",
        concurrency_limit=QUICK_CONCURRENCY,
    )
    tab.run.click(
        bind(on_swap, ctx.services),
        [
            tab.source,
            tab.target,
            tab.faces,
            tab.preset,
            tab.seed,
            tab.steps,
            tab.strength,
            ctx.state,
            tab.method,
            tab.restore,
            tab.restore_blend,
        ],
        [tab.before, tab.after, tab.table, tab.file, tab.notice, ctx.state],
        api_name="swap",
        **ctx.gpu,
    )
    tab.run_video.click(
        bind(on_swap_video, ctx.services),
        [
            tab.source,
            tab.video,
            tab.video_faces,
            tab.preset,
            tab.seed,
            tab.steps,
            tab.detect_every,
            ctx.state,
            tab.method,
        ],
        [tab.video_out, tab.video_report, tab.video_summary, ctx.state],
        api_name="swap_video",
        **ctx.gpu,
    )
