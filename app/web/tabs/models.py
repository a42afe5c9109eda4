"""The Models tab: the device, the upload limits, which model files this machine has (and
how to get the rest) and the state of each generation preset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import gradio as gr

from ..dataset import HUB_HEADERS, PRESET_HEADERS, hub_rows, preset_rows
from ..files import human_errors
from ..services import Services
from .common import QUICK_CONCURRENCY, UI_ONLY, AppContext, bind, table

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ModelsTab", "on_models", "render", "wire"]


@dataclass(frozen=True)
class ModelsTab:
    tab: gr.Tab
    hub: gr.Dataframe
    presets: gr.Dataframe
    refresh: gr.Button


def _tables(services: Services) -> tuple[pd.DataFrame, pd.DataFrame]:
    return table(hub_rows(), HUB_HEADERS), table(preset_rows(services), PRESET_HEADERS)


def render(services: Services) -> ModelsTab:
    lim = services.limits
    hub_now, presets_now = _tables(services)
    with gr.Tab("Models", id="models") as tab:
        gr.Markdown(
            f"Device **{services.device}** ({services.dtype}). Uploads up to "
            f"{lim.max_upload_mb:g} MB and {lim.max_pixels / 1e6:g} MP. Invisible "
            "watermark: **on** for every output large enough to carry it (≥ 64 px)."
        )
        hub = gr.Dataframe(hub_now, label="Model files", interactive=False, wrap=True)
        presets = gr.Dataframe(
            presets_now, label="Generation presets", interactive=False, wrap=True
        )
        refresh = gr.Button("Refresh")
    return ModelsTab(tab, hub, presets, refresh)


@human_errors("Model status")
def on_models(services: Services) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Which model files this machine has (and how to get the rest), and the state of each
    generation preset."""
    return _tables(services)


def wire(tab: ModelsTab, ctx: AppContext) -> None:
    refresh = bind(on_models, ctx.services)  # one function: one concurrency group
    outputs = [tab.hub, tab.presets]
    tab.refresh.click(
        refresh, None, outputs, api_name="models_status", concurrency_limit=QUICK_CONCURRENCY
    )
    tab.tab.select(refresh, None, outputs, **UI_ONLY)
