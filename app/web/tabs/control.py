"""The Control tab: the Generate tab's identity and settings, plus a reference photo whose
pose and expression the images take (its 68 landmarks, drawn as the ControlNet's map)."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import numpy as np

from ..files import human_errors
from ..generate import control_preview
from ..layout import (
    GenerationSettings,
    IdentityInputs,
    ResultOutputs,
    generation_settings,
    identity_inputs,
    result_outputs,
)
from ..services import Services
from .common import QUICK_CONCURRENCY, AppContext, bind
from .generate import generation_inputs, generation_outputs, on_generate, wire_identity

__all__ = ["ControlTab", "on_reference", "render", "wire"]


@dataclass(frozen=True)
class ControlTab:
    identity: IdentityInputs
    reference: gr.File
    overlay: gr.Image
    landmark_map: gr.Image
    settings: GenerationSettings
    run: gr.Button
    results: ResultOutputs


def render(services: Services) -> ControlTab:
    with gr.Tab("Control", id="control"):
        gr.Markdown(
            "The pose and expression come from a reference photo: its 68 landmarks are "
            "moved into the output frame and drawn as the ControlNet's landmark map."
        )
        with gr.Row():
            with gr.Column():
                identity = identity_inputs("ctl")
                reference = gr.File(
                    label="Reference photo (pose and expression)",
                    file_types=["image"],
                    elem_id="ctl-reference",
                )
                with gr.Row():
                    overlay = gr.Image(
                        label="Reference landmarks",
                        interactive=False,
                        height=220,
                        elem_id="ctl-overlay",
                    )
                    landmark_map = gr.Image(
                        label="Landmark map", interactive=False, height=220, elem_id="ctl-map"
                    )
                settings = generation_settings(
                    services.limits,
                    services.control_presets,
                    services.default_for("control"),
                    "ctl",
                )
                run = gr.Button("Generate with this pose", variant="primary", elem_id="ctl-run")
            with gr.Column():
                results = result_outputs("ctl")
    return ControlTab(identity, reference, overlay, landmark_map, settings, run, results)


@human_errors("Landmark detection")
def on_reference(
    services: Services, path: str | None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A reference photo with its 68 landmarks drawn, and the landmark map the ControlNet
    gets."""
    if not path:
        return None, None
    return control_preview(services, path)


def wire(tab: ControlTab, ctx: AppContext) -> None:
    wire_identity(tab.identity, ctx.services, "control_detect_faces")
    tab.run.click(
        bind(on_generate, ctx.services, True),
        generation_inputs(tab.identity, tab.reference, tab.settings, ctx.state),
        generation_outputs(tab.results, tab.settings, [tab.overlay, tab.landmark_map], ctx.state),
        api_name="control_generate",
        **ctx.gpu,
    )
    tab.reference.upload(
        bind(on_reference, ctx.services),
        tab.reference,
        [tab.overlay, tab.landmark_map],
        api_name="control_landmarks",
        concurrency_limit=QUICK_CONCURRENCY,
    )
