"""The Generate tab: an identity (a photo's face, an embedding file or a random one) → new
images. Its face detection and generation handlers serve the Control tab too."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import numpy as np

from ..files import FieldValue, human_errors
from ..generate import TABLE_HEADERS, detect_faces, generate_images
from ..layout import (
    GenerationSettings,
    IdentityInputs,
    ResultOutputs,
    generation_settings,
    identity_inputs,
    result_outputs,
)
from ..services import Services, SessionState
from .common import QUICK_CONCURRENCY, TRACK, AppContext, bind, gallery, table

__all__ = [
    "GenerateTab",
    "generation_inputs",
    "generation_outputs",
    "on_generate",
    "on_photo",
    "render",
    "wire",
    "wire_identity",
]

#: What the generation handler returns: gallery, table, image files, zip, provenance line,
#: the seed used, (Control) the reference's landmarks and the landmark map, the session.
GenerationOutputs = tuple[object, ...]


@dataclass(frozen=True)
class GenerateTab:
    identity: IdentityInputs
    settings: GenerationSettings
    run: gr.Button
    results: ResultOutputs


def render(services: Services) -> GenerateTab:
    with gr.Tab("Generate", id="generate"), gr.Row():
        with gr.Column():
            identity = identity_inputs("gen")
            settings = generation_settings(
                services.limits, services.generate_presets, services.default_for("generate"), "gen"
            )
            run = gr.Button("Generate", variant="primary", elem_id="gen-run")
        with gr.Column():
            results = result_outputs("gen")
    return GenerateTab(identity, settings, run, results)


@human_errors("Face detection")
def on_photo(services: Services, path: str | None) -> tuple[np.ndarray | None, gr.Dropdown, str]:
    """The faces found in a photo, numbered, and the face picker listing them."""
    if not path:
        return None, gr.Dropdown(choices=[("largest", "largest")], value="largest"), ""
    p = detect_faces(services, path, what="a photo of the person")
    return p.image, gr.Dropdown(choices=p.choices, value=p.value), p.summary


@human_errors("Generation")
def on_generate(
    services: Services,
    control: bool,
    source: str,
    photo: str | None,
    face: str | None,
    emb: str | None,
    emb_index: FieldValue,
    reference: str | None,
    preset: str,
    n: FieldValue,
    seed: FieldValue,
    rand: bool,
    steps: FieldValue,
    guidance: FieldValue,
    prompt: str,
    st: SessionState,
    progress: gr.Progress = TRACK,
) -> GenerationOutputs:
    """New images of an identity (a photo's face, an embedding file or a random identity;
    with a reference photo, in its pose and expression): the images, a table of their seeds
    and identity similarities, the files, a zip with a manifest, the provenance line and the
    seed used."""
    res = generate_images(
        services,
        st,
        preset=preset,
        source=source,
        photo=photo,
        face=face,
        embedding_file=emb,
        embedding_index=emb_index,
        num_images=n,
        seed=seed,
        randomize_seed=rand,
        steps=steps,
        guidance=guidance,
        prompt=prompt,
        reference=reference if control else None,
        progress=progress,
        warn=gr.Warning,
    )
    files = [str(s.path) for s in res.saved]
    common = (
        gallery(res.saved, res.captions),
        table(res.rows, TABLE_HEADERS),
        files,
        str(res.zip_path),
    )
    extra = (res.overlay, res.control) if control else ()
    return (*common, res.notice, res.seed, *extra, st)


def generation_inputs(
    identity: IdentityInputs,
    reference: gr.File | gr.State,
    settings: GenerationSettings,
    state: gr.State,
) -> list[gr.components.Component]:
    """The inputs of :func:`on_generate`, in its order."""
    ids, s = identity, settings
    return [
        *(ids.source, ids.photo, ids.face, ids.emb, ids.emb_index, reference),
        *(s.preset, s.n, s.seed, s.rand, s.steps, s.guidance, s.prompt, state),
    ]


def generation_outputs(
    results: ResultOutputs,
    settings: GenerationSettings,
    extra: list[gr.components.Component],
    state: gr.State,
) -> list[gr.components.Component]:
    """The outputs of :func:`on_generate`, in its order (``extra``: Control's images)."""
    r = results
    return [r.gallery, r.table, r.files, r.zip, r.notice, settings.seed, *extra, state]


def wire_identity(identity: IdentityInputs, services: Services, api_name: str) -> None:
    """A photo upload lists its faces in the face picker."""
    identity.photo.upload(
        bind(on_photo, services),
        identity.photo,
        [identity.preview, identity.face, identity.info],
        api_name=api_name,
        concurrency_limit=QUICK_CONCURRENCY,
    )


def wire(tab: GenerateTab, ctx: AppContext) -> None:
    wire_identity(tab.identity, ctx.services, "detect_faces")
    no_reference = gr.State(None)  # the Generate tab has no reference photo
    tab.run.click(
        bind(on_generate, ctx.services, False),
        generation_inputs(tab.identity, no_reference, tab.settings, ctx.state),
        generation_outputs(tab.results, tab.settings, [], ctx.state),
        api_name="generate",
        **ctx.gpu,
    )
