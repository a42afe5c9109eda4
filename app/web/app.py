"""The Gradio web app: ``build_app(services)`` composes the page from the tabs in
:mod:`facegen.app.web.tabs` (each lays itself out and wires its events to the handlers in
:mod:`~facegen.app.web.generate`, :mod:`~facegen.app.web.edit`,
:mod:`~facegen.app.web.dataset` and :mod:`~facegen.app.web.train`); ``launch_app`` serves it.

Every event that does real work has an ``api_name`` (so ``gradio_client`` can call it), runs
in the queue (model work in one concurrency group, ``gpu``, limited to ``gpu_concurrency``
at a time) and reports progress. Errors reach the page as short ``gr.Error`` messages
(``show_error`` stays off, so nothing unexpected is ever shown in detail); outputs are files
saved with facegen's provenance record and invisible watermark.
"""

from __future__ import annotations

import atexit
import logging
from typing import TYPE_CHECKING

from .services import Services

if TYPE_CHECKING:
    import gradio as gr

__all__ = ["build_app", "launch_app"]

logger = logging.getLogger(__name__)

NOTICE = (
    "Everything this app makes is **synthetic** and says so: each output file carries "
    "facegen's provenance record (IPTC digital source type, XMP) and an invisible watermark. "
    "Use photos only with the consent of the people in them; do not use the results to "
    "deceive or impersonate."
)


def build_app(
    services: Services, *, gpu_concurrency: int = 1, max_queue: int = 16, title: str = "facegen"
) -> gr.Blocks:
    """The app's ``gr.Blocks`` for ``services`` (created once; tests pass tiny models): the
    tabs of :mod:`facegen.app.web.tabs`, laid out in order, then wired to their handlers."""
    import gradio as gr

    from .tabs import anonymize, control, dataset, generate, models, swap, train
    from .tabs.common import AppContext, session_state

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        state = session_state(demo, services)
        gr.Markdown(f"# facegen\n{NOTICE}")
        generate_tab = generate.render(services)
        control_tab = control.render(services)
        swap_tab = swap.render(services)
        anonymize_tab = anonymize.render(services)
        dataset_tab = dataset.render(services)
        train_tab = train.render(services)
        models_tab = models.render(services)

        ctx = AppContext(services, state, gpu_concurrency)
        generate.wire(generate_tab, ctx)
        control.wire(control_tab, ctx)
        swap.wire(swap_tab, ctx)
        anonymize.wire(anonymize_tab, ctx)
        dataset.wire(dataset_tab, ctx)
        train.wire(train_tab, ctx)
        models.wire(models_tab, ctx)

    demo.queue(max_size=max_queue, default_concurrency_limit=2)
    return demo


def launch_app(
    services: Services,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    share: bool = False,
    block: bool = True,
    gpu_concurrency: int = 1,
    max_queue: int = 16,
    quiet: bool = False,
) -> gr.Blocks:
    """Build and serve the app. Only the app's own output folder is served besides Gradio's
    upload cache; uploads are capped at ``services.limits.max_upload_mb``; the outputs are
    removed at exit. Returns the running ``gr.Blocks`` when ``block`` is false."""
    atexit.register(services.close)
    if share:
        logger.warning("--share makes this app reachable from the internet through Gradio's relay")
    demo = build_app(services, gpu_concurrency=gpu_concurrency, max_queue=max_queue)
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        prevent_thread_lock=True,
        show_error=False,
        max_file_size=services.limits.max_upload_bytes,
        allowed_paths=[str(services.output_root)],
        quiet=quiet,
        footer_links=["api"],
    )
    if block:
        demo.block_thread()
    return demo
