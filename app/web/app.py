"""The Gradio web app: ``build_app(services)`` lays out the tabs and wires them to the
handlers in ``web_generate``, ``web_edit`` and ``web_dataset``; ``launch_app`` serves it.

Every event that does real work has an ``api_name`` (so ``gradio_client`` can call it), runs
in the queue (model work in one concurrency group, ``gpu``, limited to ``gpu_concurrency``
at a time) and reports progress. Errors reach the page as short ``gr.Error`` messages
(``show_error`` stays off, so nothing unexpected is ever shown in detail); outputs are files
saved with facegen's provenance record and invisible watermark.
"""

from __future__ import annotations

import atexit
import logging
import threading
from typing import Any

from .services import Services, SessionState

__all__ = ["build_app", "launch_app"]

logger = logging.getLogger(__name__)

GPU = "gpu"

NOTICE = (
    "Everything this app makes is **synthetic** and says so: each output file carries "
    "facegen's provenance record (IPTC digital source type, XMP) and an invisible watermark. "
    "Use photos only with the consent of the people in them; do not use the results to "
    "deceive or impersonate."
)


def _table(rows: list[list[Any]], headers: list[str]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows, columns=headers)


def build_app(
    services: Services, *, gpu_concurrency: int = 1, max_queue: int = 16, title: str = "facegen"
) -> Any:
    """The app's ``gr.Blocks`` for ``services`` (created once; tests pass tiny models)."""
    import gradio as gr

    from .dataset import (
        HUB_HEADERS,
        PRESET_HEADERS,
        hub_rows,
        preset_rows,
        preview_identities,
        run_dataset,
    )
    from .edit import ANONYMIZE_HEADERS, SWAP_HEADERS, anonymize_files, swap_faces
    from .files import human_errors
    from .generate import TABLE_HEADERS, control_preview, detect_faces, generate_images
    from .layout import generation_settings, identity_inputs, result_outputs
    from .train import train_bases, train_lora_job

    lim = services.limits
    track = gr.Progress(track_tqdm=True)  # every long action reports progress (tqdm too)
    gpu = {"concurrency_id": GPU, "concurrency_limit": gpu_concurrency}
    ui_only: dict[str, Any] = {"queue": False, "api_visibility": "private"}
    swap_ok = services.swap_status()
    train_ok = services.train_status()

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(1800, 3600)) as demo:

        def drop_session(value: Any) -> None:
            # a plain function: Gradio deep-copies component state, and a bound method would
            # drag the whole Services object (and its models) into every copy
            services.drop_session(value)

        state = gr.State(
            SessionState(), time_to_live=services.session_ttl_s, delete_callback=drop_session
        )

        def end_session(request: gr.Request) -> None:
            # the browser tab closed: delete the session's files after a short grace (Gradio
            # itself would keep them an hour); a job still running defers it further
            app = getattr(demo, "server_app", None)
            holder = getattr(app, "state_holder", None)
            if holder is None or request is None or not request.session_hash:
                return
            timer = threading.Timer(
                services.unload_grace_s, holder.delete_state, args=(request.session_hash,)
            )
            timer.daemon = True
            timer.start()

        # Gradio finds the request parameter by its annotation; with postponed annotations
        # older Gradio releases evaluate it in this module, where `gr` is a local name
        end_session.__annotations__["request"] = gr.Request
        demo.unload(end_session)
        gr.Markdown(f"# facegen\n{NOTICE}")

        # ---------------------------------------------------------------- Generate
        with gr.Tab("Generate", id="generate"), gr.Row():
            with gr.Column():
                gi = identity_inputs("gen")
                gs = generation_settings(
                    lim, services.generate_presets, services.default_for("generate"), "gen"
                )
                gen_btn = gr.Button("Generate", variant="primary", elem_id="gen-run")
            with gr.Column():
                go = result_outputs("gen")

        # ---------------------------------------------------------------- Control
        with gr.Tab("Control", id="control"):
            gr.Markdown(
                "The pose and expression come from a reference photo: its 68 landmarks are "
                "moved into the output frame and drawn as the ControlNet's landmark map."
            )
            with gr.Row():
                with gr.Column():
                    ci = identity_inputs("ctl")
                    ref = gr.File(
                        label="Reference photo (pose and expression)",
                        file_types=["image"],
                        elem_id="ctl-reference",
                    )
                    with gr.Row():
                        overlay = gr.Image(
                            label="Reference landmarks", interactive=False, height=220
                        )
                        cmap = gr.Image(label="Landmark map", interactive=False, height=220)
                    cs = generation_settings(
                        lim, services.control_presets, services.default_for("control"), "ctl"
                    )
                    ctl_btn = gr.Button(
                        "Generate with this pose", variant="primary", elem_id="ctl-run"
                    )
                with gr.Column():
                    co = result_outputs("ctl")

        # ---------------------------------------------------------------- Swap
        with gr.Tab("Swap", id="swap"):
            if not swap_ok.available:
                gr.Markdown(f"**Not available:** {swap_ok.message}")
            with gr.Row():
                with gr.Column():
                    sw_src = gr.File(
                        label="Source photo (the identity)",
                        file_types=["image"],
                        elem_id="swap-source",
                    )
                    sw_tgt = gr.File(
                        label="Target photo (faces to replace)",
                        file_types=["image"],
                        elem_id="swap-target",
                    )
                    sw_faces = gr.Dropdown(
                        ["all", "largest", "best"], value="all", allow_custom_value=True,
                        label="Which target faces (all, largest, best or a face number)",
                    )  # fmt: skip
                    sw_info = gr.Markdown()
                    sw_preset = gr.Dropdown(
                        services.edit_presets, value=services.default_for("edit"), label="Preset"
                    )
                    with gr.Row():
                        sw_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                        sw_steps = gr.Slider(
                            0, lim.max_steps, value=0, step=1, label="Steps (0 = default)"
                        )
                        sw_strength = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Strength")
                    sw_btn = gr.Button(
                        "Swap", variant="primary", interactive=swap_ok.available, elem_id="swap-run"
                    )
                with gr.Column():
                    with gr.Row():
                        sw_before = gr.Image(label="Target (faces numbered)", interactive=False)
                        sw_after = gr.Image(label="Result", interactive=False, type="filepath")
                    sw_table = gr.Dataframe(
                        headers=SWAP_HEADERS, label="Per face", interactive=False
                    )
                    sw_file = gr.File(label="Download", interactive=False)
                    sw_notice = gr.Markdown()

        # ---------------------------------------------------------------- Anonymize
        with gr.Tab("Anonymize", id="anonymize"), gr.Row():
            with gr.Column():
                an_files = gr.File(
                    label="Photos",
                    file_count="multiple",
                    file_types=["image"],
                    elem_id="anon-files",
                )
                modes = ["blur", "pixelate", "mask"] + (["generate"] if swap_ok.available else [])
                an_mode = gr.Radio(modes, value="blur", label="Mode", elem_id="anon-mode")
                an_faces = gr.Dropdown(
                    ["all", "largest", "best"], value="all", allow_custom_value=True,
                    label="Which faces (all, largest, best or a face number)",
                )  # fmt: skip
                with gr.Accordion("Settings", open=False):
                    an_sigma = gr.Slider(
                        0.05,
                        1.0,
                        value=0.25,
                        step=0.05,
                        label="Blur strength (σ, fraction of the face)",
                    )
                    an_blocks = gr.Slider(
                        2, 32, value=8, step=1, label="Pixelate: blocks across a face"
                    )
                    an_shape = gr.Radio(
                        ["hull", "ellipse", "box"], value="hull", label="Mask shape"
                    )
                    an_preset = gr.Dropdown(
                        services.edit_presets,
                        value=services.default_for("edit"),
                        label="Generate mode: preset",
                    )
                    an_seed = gr.Number(0, label="Generate mode: seed", precision=0, minimum=0)
                    an_steps = gr.Slider(
                        0,
                        lim.max_steps,
                        value=0,
                        step=1,
                        label="Generate mode: steps (0 = default)",
                    )
                an_btn = gr.Button("Anonymize", variant="primary", elem_id="anon-run")
            with gr.Column():
                an_gallery = gr.Gallery(
                    label="Anonymized",
                    columns=2,
                    elem_id="anon-gallery",
                    buttons=["download", "fullscreen"],
                )
                an_table = gr.Dataframe(
                    headers=ANONYMIZE_HEADERS, label="Per face", interactive=False
                )
                an_zip = gr.File(label="Download all (zip with manifest.json)", interactive=False)
                an_notice = gr.Markdown(elem_id="anon-provenance")

        # ---------------------------------------------------------------- Dataset
        with gr.Tab("Dataset", id="dataset"):
            gr.Markdown("### Identity sampling preview")
            with gr.Row():
                dp_n = gr.Number(1000, label="Identities", precision=0, minimum=2)
                dp_sep = gr.Slider(
                    -0.2,
                    0.9,
                    value=0.3,
                    step=0.01,
                    label="Separation (max similarity between identities)",
                )
                dp_sampler = gr.Radio(["uniform", "spread"], value="uniform", label="Sampler")
                dp_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
            dp_btn = gr.Button("Preview")
            with gr.Row():
                dp_summary = gr.JSON(label="Sampled identities")
                dp_plot = gr.BarPlot(
                    x="similarity",
                    y="pairs",
                    title="Pairwise similarities",
                    x_title="cosine similarity",
                )
            gr.Markdown("### Small dataset job (generated, verified, measured)")
            with gr.Row():
                dj_preset = gr.Dropdown(
                    services.generate_presets,
                    value=services.default_for("generate"),
                    label="Preset",
                )
                dj_n = gr.Slider(
                    1,
                    lim.max_dataset_identities,
                    value=min(4, lim.max_dataset_identities),
                    step=1,
                    label="Identities",
                )
                dj_m = gr.Slider(
                    1,
                    lim.max_dataset_images,
                    value=min(4, lim.max_dataset_images),
                    step=1,
                    label="Images per identity",
                )
            with gr.Row():
                dj_sep = gr.Slider(-0.2, 0.9, value=0.3, step=0.01, label="Separation")
                dj_min = gr.Slider(
                    -1, 1, value=0.5, step=0.01, label="Keep images with similarity ≥"
                )
                dj_max = gr.Slider(
                    -1, 1, value=0.98, step=0.01, label="… and ≤ (near-copies above)"
                )
                dj_attempts = gr.Slider(1, 10, value=3, step=1, label="Attempts per image")
            with gr.Row():
                dj_steps = gr.Slider(
                    0, lim.max_steps, value=0, step=1, label="Steps (0 = preset default)"
                )
                dj_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                dj_prompt = gr.Textbox(label="Prompt (text presets only)")
            dj_btn = gr.Button("Build dataset", variant="primary")
            with gr.Row():
                dj_summary = gr.JSON(label="Job")
                dj_report = gr.JSON(label="Quality report (independent dlib encoder)")
            dj_sheet = gr.Image(label="Contact sheet", interactive=False, type="filepath")
            dj_zip = gr.File(
                label="Download dataset (images, journal, identities, report)", interactive=False
            )

        # ---------------------------------------------------------------- Train
        with gr.Tab("Train", id="train"):
            if not train_ok.available:
                gr.Markdown(f"**Not available yet:** {train_ok.message}")
            tr_photos = gr.File(
                label="Photos of one person", file_count="multiple", file_types=["image"]
            )
            with gr.Row():
                bases = train_bases(services.generate_presets)
                tr_base = gr.Dropdown(bases, value=bases[0] if bases else None, label="Base model")
                tr_steps = gr.Number(500, label="Steps", precision=0, minimum=1)
                tr_rank = gr.Number(8, label="LoRA rank", precision=0, minimum=1)
                tr_lr = gr.Number(1e-4, label="Learning rate")
                tr_seed = gr.Number(0, label="Seed", precision=0, minimum=0)
                tr_te = gr.Checkbox(
                    False, label="Also train the text encoder (prompt-conditioned bases)"
                )
            tr_btn = gr.Button("Train", variant="primary", interactive=train_ok.available)
            tr_file = gr.File(label="Trained LoRA", interactive=False)
            tr_info = gr.Markdown()

        # ---------------------------------------------------------------- Models
        with gr.Tab("Models", id="models") as models_tab:
            gr.Markdown(
                f"Device **{services.device}** ({services.dtype}). Uploads up to "
                f"{lim.max_upload_mb:g} MB and {lim.max_pixels / 1e6:g} MP. Invisible "
                "watermark: **on** for every output large enough to carry it (≥ 64 px)."
            )
            md_hub = gr.Dataframe(
                _table(hub_rows(), HUB_HEADERS), label="Model files", interactive=False, wrap=True
            )
            md_presets = gr.Dataframe(
                _table(preset_rows(services), PRESET_HEADERS),
                label="Generation presets",
                interactive=False,
                wrap=True,
            )
            md_btn = gr.Button("Refresh")

        # ================================================================ wiring
        def faces_event(what: str) -> Any:
            @human_errors("Face detection")
            def run(path: str | None) -> tuple[Any, Any, str]:
                if not path:
                    return None, gr.Dropdown(choices=[("largest", "largest")], value="largest"), ""
                p = detect_faces(services, path, what=what)
                return p.image, gr.Dropdown(choices=p.choices, value=p.value), p.summary

            return run

        for ids, api in ((gi, "detect_faces"), (ci, "control_detect_faces")):
            ids["photo"].upload(
                faces_event("a photo of the person"), ids["photo"],
                [ids["preview"], ids["face"], ids["info"]], api_name=api, concurrency_limit=4,
            )  # fmt: skip

        def gen_event(control: bool) -> Any:
            @human_errors("Generation")
            def run(
                source: str, photo: str | None, face: Any, emb: str | None, emb_index: Any,
                reference: str | None, preset: str, n: Any, seed: Any, rand: bool, steps: Any,
                guidance: Any, prompt: str, st: SessionState,
                progress: Any = track,
            ) -> tuple[Any, ...]:  # fmt: skip
                res = generate_images(
                    services, st, preset=preset, source=source, photo=photo, face=face,
                    embedding_file=emb, embedding_index=emb_index, num_images=n, seed=seed,
                    randomize_seed=rand, steps=steps, guidance=guidance, prompt=prompt,
                    reference=reference if control else None, progress=progress, warn=gr.Warning,
                )  # fmt: skip
                gallery = [(str(s.path), c) for s, c in zip(res.saved, res.captions)]
                files = [str(s.path) for s in res.saved]
                common = (gallery, _table(res.rows, TABLE_HEADERS), files, str(res.zip_path))
                extra = (res.overlay, res.control) if control else ()
                return (*common, res.notice, res.seed, *extra, st)

            return run

        def gen_inputs(ids: dict[str, Any], ref_in: Any, s: dict[str, Any]) -> list[Any]:
            return [ids["source"], ids["photo"], ids["face"], ids["emb"], ids["emb_index"], ref_in,
                    s["preset"], s["n"], s["seed"], s["rand"], s["steps"], s["guidance"],
                    s["prompt"], state]  # fmt: skip

        def gen_outputs(o: dict[str, Any], s: dict[str, Any], extra: list[Any]) -> list[Any]:
            return [
                o["gallery"],
                o["table"],
                o["files"],
                o["zip"],
                o["notice"],
                s["seed"],
                *extra,
                state,
            ]

        gen_ref = gr.State(None)  # the Generate tab has no reference photo
        gen_btn.click(
            gen_event(False), gen_inputs(gi, gen_ref, gs), gen_outputs(go, gs, []),
            api_name="generate", **gpu,
        )  # fmt: skip
        ctl_btn.click(
            gen_event(True), gen_inputs(ci, ref, cs), gen_outputs(co, cs, [overlay, cmap]),
            api_name="control_generate", **gpu,
        )  # fmt: skip

        @human_errors("Landmark detection")
        def on_reference(path: str | None) -> tuple[Any, Any]:
            if not path:
                return None, None
            return control_preview(services, path)

        ref.upload(
            on_reference, ref, [overlay, cmap], api_name="control_landmarks", concurrency_limit=4
        )

        @human_errors("Face detection")
        def on_target(path: str | None) -> tuple[Any, Any, str]:
            policies = [(p, p) for p in ("all", "largest", "best")]
            if not path:
                return None, gr.Dropdown(choices=policies, value="all"), ""
            p = detect_faces(services, path, what="a target photo")
            return p.image, gr.Dropdown(choices=policies + p.choices, value="all"), p.summary

        sw_tgt.upload(
            on_target,
            sw_tgt,
            [sw_before, sw_faces, sw_info],
            api_name="swap_detect_faces",
            concurrency_limit=4,
        )

        @human_errors("Swap")
        def on_swap(
            source: str | None, target: str | None, faces: Any, preset: str, seed: Any, steps: Any,
            strength: Any, st: SessionState, progress: Any = track,
        ) -> tuple[Any, ...]:  # fmt: skip
            res = swap_faces(
                services, st, source=source, target=target, faces=faces, preset=preset, seed=seed,
                steps=steps, strength=strength, progress=progress,
            )  # fmt: skip
            path = str(res.saved.path)
            return res.target_preview, path, _table(res.rows, SWAP_HEADERS), path, res.notice, st

        sw_btn.click(
            on_swap, [sw_src, sw_tgt, sw_faces, sw_preset, sw_seed, sw_steps, sw_strength, state],
            [sw_before, sw_after, sw_table, sw_file, sw_notice, state], api_name="swap", **gpu,
        )  # fmt: skip

        @human_errors("Anonymization")
        def on_anonymize(
            files: list[str] | None, mode: str, faces: Any, sigma: Any, blocks: Any, shape: str,
            preset: str, seed: Any, steps: Any, st: SessionState,
            progress: Any = track,
        ) -> tuple[Any, ...]:  # fmt: skip
            res = anonymize_files(
                services, st, files=files, mode=mode, faces=faces, blur_sigma=sigma,
                pixel_blocks=blocks, shape=shape, preset=preset, seed=seed, steps=steps,
                progress=progress, warn=gr.Warning,
            )  # fmt: skip
            gallery = [(str(s.path), c) for s, c in zip(res.saved, res.captions)]
            table = _table(res.rows, ANONYMIZE_HEADERS)
            return gallery, table, str(res.zip_path), res.notice, st

        an_btn.click(
            on_anonymize,
            [an_files, an_mode, an_faces, an_sigma, an_blocks, an_shape, an_preset, an_seed,
             an_steps, state],
            [an_gallery, an_table, an_zip, an_notice, state],
            api_name="anonymize", concurrency_id="cpu", concurrency_limit=2,
        )  # fmt: skip

        @human_errors("Identity sampling")
        def on_preview(
            n: Any, sep: Any, sampler: str, seed: Any, progress: Any = track
        ) -> tuple[Any, Any]:
            res = preview_identities(
                services, identities=n, separation=sep, sampler=sampler, seed=seed,
                progress=progress,
            )  # fmt: skip
            return res.summary, _table([list(r) for r in res.histogram], ["similarity", "pairs"])

        dp_btn.click(
            on_preview, [dp_n, dp_sep, dp_sampler, dp_seed], [dp_summary, dp_plot],
            api_name="dataset_preview", concurrency_id="cpu", concurrency_limit=2,
        )  # fmt: skip

        @human_errors("Dataset job")
        def on_dataset(
            preset: str, n: Any, m: Any, sep: Any, lo: Any, hi: Any, attempts: Any, steps: Any,
            seed: Any, prompt: str, st: SessionState, progress: Any = track,
        ) -> tuple[Any, ...]:  # fmt: skip
            job = run_dataset(
                services, st, preset=preset, identities=n, images_per_identity=m, separation=sep,
                min_similarity=lo, max_similarity=hi, attempts=attempts, steps=steps, seed=seed,
                prompt=prompt, progress=progress,
            )  # fmt: skip
            sheet = str(job.contact_sheet) if job.contact_sheet else None
            return job.summary, job.report, sheet, str(job.zip_path), st

        dj_btn.click(
            on_dataset,
            [dj_preset, dj_n, dj_m, dj_sep, dj_min, dj_max, dj_attempts, dj_steps, dj_seed,
             dj_prompt, state],
            [dj_summary, dj_report, dj_sheet, dj_zip, state], api_name="dataset_run", **gpu,
        )  # fmt: skip

        @human_errors("Training")
        def on_train(
            photos: list[str] | None, base: str, steps: Any, rank: Any, lr: Any, seed: Any,
            text_encoder: bool, st: SessionState, progress: Any = track,
        ) -> tuple[Any, ...]:  # fmt: skip
            path, summary = train_lora_job(
                services, st, photos=photos, base_model=base, steps=steps, rank=rank,
                learning_rate=lr, seed=seed, train_text_encoder=bool(text_encoder),
                progress=progress,
            )  # fmt: skip
            return str(path), summary, st

        tr_btn.click(
            on_train, [tr_photos, tr_base, tr_steps, tr_rank, tr_lr, tr_seed, tr_te, state],
            [tr_file, tr_info, state], api_name="train_lora", **gpu,
        )  # fmt: skip

        @human_errors("Model status")
        def on_models() -> tuple[Any, Any]:
            return _table(hub_rows(), HUB_HEADERS), _table(preset_rows(services), PRESET_HEADERS)

        md_btn.click(
            on_models, None, [md_hub, md_presets], api_name="models_status", concurrency_limit=4
        )
        models_tab.select(on_models, None, [md_hub, md_presets], **ui_only)

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
) -> Any:
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
