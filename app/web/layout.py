"""Input and output groups the Generate and Control tabs share (layout only; their events
are wired in :mod:`facegen.app.web.tabs.generate`)."""

from __future__ import annotations

from dataclasses import dataclass

# at module level, not under TYPE_CHECKING: gradio (6.0) evaluates the annotations of event
# functions such as show_source, which name gr
import gradio as gr

from .services import AppLimits

__all__ = [
    "GenerationSettings",
    "IdentityInputs",
    "ResultOutputs",
    "generation_settings",
    "identity_inputs",
    "result_outputs",
    "show_source",
]


@dataclass(frozen=True)
class IdentityInputs:
    """Where the identity comes from (:data:`~facegen.app.web.generate.IDENTITY_SOURCES`)."""

    source: gr.Radio
    photo: gr.File
    preview: gr.Image
    face: gr.Dropdown
    info: gr.Markdown
    emb: gr.File
    emb_index: gr.Number


@dataclass(frozen=True)
class GenerationSettings:
    preset: gr.Dropdown
    n: gr.Slider
    seed: gr.Number
    rand: gr.Checkbox
    steps: gr.Slider
    guidance: gr.Number
    prompt: gr.Textbox


@dataclass(frozen=True)
class ResultOutputs:
    gallery: gr.Gallery
    table: gr.Dataframe
    files: gr.File
    zip: gr.File
    notice: gr.Markdown


def show_source(value: str) -> tuple[gr.Group, gr.Group]:
    """Show the photo inputs or the embedding inputs, as the identity source says."""
    import gradio as gr

    return gr.Group(visible=value == "photo"), gr.Group(visible=value == "embedding")


def identity_inputs(prefix: str) -> IdentityInputs:
    """Where the identity comes from: a photo (with a face picker), an embedding file or a
    random identity; only the chosen source's inputs are shown."""
    import gradio as gr

    src = gr.Radio(
        [("Photo", "photo"), ("Embedding file", "embedding"), ("Random identity", "random")],
        value="photo",
        label="Identity from",
        elem_id=f"{prefix}-source",
    )
    with gr.Group(visible=True) as photo_box:
        photo = gr.File(
            label="Photo of the person", file_types=["image"], elem_id=f"{prefix}-photo"
        )
        preview = gr.Image(label="Faces found", interactive=False, height=260)
        face = gr.Dropdown(
            [("largest", "largest")],
            value="largest",
            label="Face to use",
            allow_custom_value=True,
        )
        info = gr.Markdown()
    with gr.Group(visible=False) as emb_box:
        emb = gr.File(
            label="Embedding file (.safetensors from `facegen embed`)",
            file_types=[".safetensors"],
        )
        emb_index = gr.Number(0, label="Embedding number in the file", precision=0, minimum=0)
    src.change(show_source, src, [photo_box, emb_box], queue=False, api_visibility="private")
    return IdentityInputs(src, photo, preview, face, info, emb, emb_index)


def generation_settings(
    lim: AppLimits, presets: list[str], default: str | None, prefix: str
) -> GenerationSettings:
    """Preset, number of images, seed (shown and reusable), steps, guidance and prompt."""
    import gradio as gr

    preset = gr.Dropdown(presets, value=default, label="Preset", elem_id=f"{prefix}-preset")
    n = gr.Slider(1, lim.max_images, value=min(4, lim.max_images), step=1, label="Images")
    with gr.Row():
        seed = gr.Number(0, label="Seed (image k uses seed + k)", precision=0, minimum=0)
        rand = gr.Checkbox(False, label="New random seed each time")
    with gr.Accordion("Advanced", open=False):
        steps = gr.Slider(0, lim.max_steps, value=0, step=1, label="Steps (0 = preset default)")
        guidance = gr.Number(None, label="Guidance (empty = preset default)")
        prompt = gr.Textbox(label="Prompt (text presets only, e.g. ip-adapter-faceid-*)")
    return GenerationSettings(preset, n, seed, rand, steps, guidance, prompt)


def result_outputs(prefix: str) -> ResultOutputs:
    """Gallery, per-image table, downloads (single files and a zip) and the provenance line."""
    import gradio as gr

    from .generate import TABLE_HEADERS

    gallery = gr.Gallery(
        label="Results",
        columns=4,
        elem_id=f"{prefix}-gallery",
        buttons=["download", "fullscreen"],
    )
    table = gr.Dataframe(headers=TABLE_HEADERS, label="Per image", interactive=False)
    files = gr.File(label="Download images", file_count="multiple", interactive=False)
    zipf = gr.File(label="Download all (zip with manifest.json)", interactive=False)
    notice = gr.Markdown(elem_id=f"{prefix}-provenance")
    return ResultOutputs(gallery, table, files, zipf, notice)
