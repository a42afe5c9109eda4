"""The Train tab: a LoRA personalized on photos of one person, to download."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ..files import FieldValue, human_errors
from ..services import Services, SessionState
from ..train import train_lora_job
from ..trainers import train_bases
from .common import TRACK, AppContext, bind

__all__ = ["TrainTab", "on_train", "render", "wire"]


@dataclass(frozen=True)
class TrainTab:
    photos: gr.File
    base: gr.Dropdown
    steps: gr.Number
    rank: gr.Number
    learning_rate: gr.Number
    seed: gr.Number
    text_encoder: gr.Checkbox
    run: gr.Button
    result: gr.File
    info: gr.Markdown


def render(services: Services) -> TrainTab:
    status = services.train_status()
    with gr.Tab("Train", id="train"):
        if not status.available:
            gr.Markdown(f"**Not available yet:** {status.message}")
        photos = gr.File(label="Photos of one person", file_count="multiple", file_types=["image"])
        with gr.Row():
            bases = train_bases(services.generate_presets)
            base = gr.Dropdown(bases, value=bases[0] if bases else None, label="Base model")
            steps = gr.Number(500, label="Steps", precision=0, minimum=1)
            rank = gr.Number(8, label="LoRA rank", precision=0, minimum=1)
            lr = gr.Number(1e-4, label="Learning rate")
            seed = gr.Number(0, label="Seed", precision=0, minimum=0)
            text_encoder = gr.Checkbox(
                False, label="Also train the text encoder (prompt-conditioned bases)"
            )
        run = gr.Button("Train", variant="primary", interactive=status.available)
        result = gr.File(label="Trained LoRA", interactive=False)
        info = gr.Markdown()
    return TrainTab(photos, base, steps, rank, lr, seed, text_encoder, run, result, info)


@human_errors("Training")
def on_train(
    services: Services,
    photos: list[str] | None,
    base: str,
    steps: FieldValue,
    rank: FieldValue,
    lr: FieldValue,
    seed: FieldValue,
    text_encoder: bool,
    st: SessionState,
    progress: gr.Progress = TRACK,
) -> tuple[str, str, SessionState]:
    """A LoRA personalized on photos of one person: the file to download and a summary."""
    path, summary = train_lora_job(
        services,
        st,
        photos=photos,
        base_model=base,
        steps=steps,
        rank=rank,
        learning_rate=lr,
        seed=seed,
        train_text_encoder=bool(text_encoder),
        progress=progress,
    )
    return str(path), summary, st


def wire(tab: TrainTab, ctx: AppContext) -> None:
    settings = [tab.base, tab.steps, tab.rank, tab.learning_rate, tab.seed, tab.text_encoder]
    tab.run.click(
        bind(on_train, ctx.services),
        [tab.photos, *settings, ctx.state],
        [tab.result, tab.info, ctx.state],
        api_name="train_lora",
        **ctx.gpu,
    )
