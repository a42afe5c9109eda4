"""The Swap tab: the identity of a source photo on chosen faces of a target photo."""

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
from .common import QUICK_CONCURRENCY, TRACK, AppContext, bind, table

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SwapTab", "on_swap", "on_target", "render", "wire"]


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
    run: gr.Button
    before: gr.Image
    after: gr.Image
    table: gr.Dataframe
    file: gr.File
    notice: gr.Markdown


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
    return SwapTab(
        source=source,
        target=target,
        faces=faces,
        info=info,
        preset=preset,
        seed=seed,
        steps=steps,
        strength=strength,
        run=run,
        before=before,
        after=after,
        table=rows,
        file=file,
        notice=notice,
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
        progress=progress,
    )
    path = str(res.saved.path)
    return res.target_preview, path, table(res.rows, SWAP_HEADERS), path, res.notice, st


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
        ],
        [tab.before, tab.after, tab.table, tab.file, tab.notice, ctx.state],
        api_name="swap",
        **ctx.gpu,
    )
