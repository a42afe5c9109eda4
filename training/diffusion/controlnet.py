"""``facegen train controlnet``: a 68-point landmark ControlNet for a face model.

Trained on (photo, landmark map, identity) triples from the face cache: each photo's aligned
crop, facegen's 68-point map of the same face (:func:`facegen.control.render_landmarks68`,
the map :func:`facegen.control.transfer_landmarks` + ``render_landmarks68`` make at inference)
and the photo's conditioning. The ControlNet starts as a copy of the UNet's encoder
(``ControlNetModel.from_unet``, zero-initialised output convolutions, so it begins as a
no-op); the UNet, VAE and text encoder stay frozen. Conditionings:

``"arc2face"`` (base ``arc2face``)
    each photo's own ArcFace embedding through Arc2Face's ID encoder → ``prompt_embeds``
    (``proportion_empty_prompts`` of them replaced by the empty-prompt embedding, Arc2Face's
    unconditional);
``"prompt"`` (SD1.5 bases)
    the photo's caption, or ``prompt`` (``proportion_empty_prompts`` replaced by ``""``).

Output (``output_dir``): ``config.json`` + ``diffusion_pytorch_model.safetensors`` written by
``controlnet.save_pretrained``, so ``ControlNetModel.from_pretrained(output_dir)`` and facegen's
``arc2face-controlnet`` preset (``controlnet=output_dir``) load it; ``facegen_controlnet.json``
(the control map, crop template and size, conditioning, base model, encoder id, steps, the
training config). Plus checkpoints, the face cache, validation images and logs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facegen.errors import InvalidArgumentError
from facegen.training.diffusion.face_cache import CacheDataset, sample_latents
from facegen.training.diffusion.loop import (
    ProgressCallback,
    PromptEncoder,
    TrainConfig,
    TrainResult,
    build_analyzer,
    check_components,
    diffusion_loss,
    inference_precision,
    load_components,
    make_accelerator,
    noisy_latents,
    prepare_face_cache,
    run_training,
    weight_dtype,
    write_json,
)
from facegen.training.diffusion.lora import ANALYZERS, CONDITIONINGS, default_conditioning
from facegen.training.resume import holds_output_folder

__all__ = [
    "CONTROLNET_METADATA_NAME",
    "ControlNetTrainConfig",
    "conditioning_channels_for",
    "train_controlnet",
]

logger = logging.getLogger(__name__)

CONTROLNET_METADATA_NAME = "facegen_controlnet.json"
#: diffusers' default ControlNet conditioning embedding (8× downsampling, SD's VAE).
SD_CONDITIONING_CHANNELS = (16, 32, 96, 256)


def conditioning_channels_for(vae: Any) -> tuple[int, ...]:
    """ControlNet conditioning-embedding widths that downsample like ``vae`` does.

    SD's VAE (8×) → diffusers' default ``(16, 32, 96, 256)``; a 2× VAE → ``(16, 32)``.
    """
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    n = int(math.log2(factor)) + 1
    if n > len(SD_CONDITIONING_CHANNELS):
        raise InvalidArgumentError(
            f"the VAE downsamples by {factor}; pass `conditioning_channels` with {n} entries for it"
        )
    return SD_CONDITIONING_CHANNELS[:n]


@dataclass(kw_only=True)
class ControlNetTrainConfig(TrainConfig):
    """:class:`~facegen.training.diffusion.loop.TrainConfig` plus the ControlNet's own settings.

    ``conditioning``: ``"arc2face"`` or ``"prompt"`` (None: ``"arc2face"`` for
    ``base_model="arc2face"``, else ``"prompt"``). ``prompt`` / ``use_captions`` (prompt
    mode); ``proportion_empty_prompts``. ``conditioning_channels``: the ControlNet's
    conditioning-embedding widths (None = to match the VAE). ``controlnet_model``: start
    from this ControlNet (a folder or hub id) instead of a copy of the UNet.
    ``validation_prompt`` (prompt mode; None = ``prompt``).
    """

    base_model: str = "arc2face"
    conditioning: str | None = None
    prompt: str = "a photo of a person"
    use_captions: bool = True
    proportion_empty_prompts: float = 0.0
    conditioning_channels: tuple[int, ...] | None = None
    controlnet_model: str | None = None
    validation_prompt: str | None = None
    learning_rate: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.conditioning is None:
            self.conditioning = default_conditioning(self.base_model)
        if self.conditioning not in CONDITIONINGS:
            raise InvalidArgumentError(
                f"`conditioning` must be one of {', '.join(CONDITIONINGS)}, "
                f"got {self.conditioning!r}"
            )
        p = self.proportion_empty_prompts
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise InvalidArgumentError(f"`proportion_empty_prompts` must be in [0, 1], got {p!r}")
        if self.conditioning_channels is not None:
            self.conditioning_channels = tuple(self.conditioning_channels)
            if not self.conditioning_channels or not all(
                isinstance(c, int) and not isinstance(c, bool) and c > 0
                for c in self.conditioning_channels
            ):
                raise InvalidArgumentError(
                    "`conditioning_channels` must be positive integers, "
                    f"got {self.conditioning_channels!r}"
                )

    @property
    def template(self) -> str:
        if self.crop_template is not None:
            return self.crop_template
        return "arcface" if self.conditioning == "arc2face" else "ffhq"


def _build_controlnet(cfg: ControlNetTrainConfig, unet: Any, vae: Any) -> Any:
    from diffusers import ControlNetModel

    if cfg.controlnet_model:
        from facegen.hub import load_pretrained

        return load_pretrained(
            ControlNetModel,
            cfg.controlnet_model,
            None,
            revision=cfg.revision,
            local_files_only=cfg.local_files_only,
        )
    channels = cfg.conditioning_channels or conditioning_channels_for(vae)
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)


@holds_output_folder("controlnet")
def train_controlnet(
    config: ControlNetTrainConfig,
    *,
    components: dict[str, Any] | None = None,
    progress: bool | ProgressCallback | None = None,
) -> TrainResult:
    """Train a landmark ControlNet; see the module docstring for what is written.

    ``components``: ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler`` (and
    optionally ``analyzer`` and a starting ``controlnet``) instead of loading
    ``config.base_model``. They are changed in place (moved to the device, frozen, half
    precision under mixed precision, the trained modules added); pass copies to keep the
    originals. ``progress``: as in :func:`facegen.training.diffusion.loop.run_training`. ``weights`` of
    the result is the ControlNet folder (``output_dir``).
    """
    import torch
    from diffusers import DDPMScheduler

    from facegen.adapters.arc2face import Arc2FaceIDEncoder

    cfg = config
    if not isinstance(cfg, ControlNetTrainConfig):
        raise InvalidArgumentError(
            f"`config` must be a ControlNetTrainConfig, got {type(cfg).__name__}"
        )
    accelerator = make_accelerator(cfg)
    parts = (
        check_components(components, extra=("controlnet",))
        if components is not None
        else load_components(
            cfg.base_model, revision=cfg.revision, local_files_only=cfg.local_files_only
        )
    )
    unet, vae, text_encoder = parts["unet"], parts["vae"], parts["text_encoder"]
    device, dtype = accelerator.device, weight_dtype(accelerator)
    controlnet = parts.get("controlnet") or _build_controlnet(cfg, unet, vae)
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False)
        m.to(device)
    controlnet.to(device, dtype=torch.float32)
    controlnet.requires_grad_(True)
    controlnet.train()
    arc = cfg.conditioning == "arc2face"
    analyzer = parts.get("analyzer")
    if analyzer is None:
        det, enc = ANALYZERS[cfg.conditioning or "prompt"]
        analyzer = build_analyzer(cfg, detector=det, encoder=enc, need_landmarks=True)
    cache = prepare_face_cache(cfg, accelerator, analyzer=analyzer, vae=vae, template=cfg.template)
    cache.require("control")
    if dtype != torch.float32:
        unet.to(dtype=dtype)
        text_encoder.to(dtype=dtype)
    if cfg.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()

    fields: tuple[str, ...] = ("latents", "control", "caption", "index")
    id_embeds = uncond = None
    if arc:
        cache.require("embeddings")
        id_encoder = Arc2FaceIDEncoder(text_encoder, parts["tokenizer"])
        id_embeds = id_encoder.encode(cache.identity_embeddings()).clone()
        uncond = id_encoder.encode_unconditional(1).clone()
    prompts = PromptEncoder(text_encoder, parts["tokenizer"])
    noise_scheduler = DDPMScheduler.from_config(parts["scheduler"].config)
    data = CacheDataset(cache, fields, default_caption=cfg.prompt)

    def condition(batch: dict[str, Any]) -> Any:
        n = len(batch["index"])
        empty = (torch.rand(n) < cfg.proportion_empty_prompts).tolist()
        if arc:
            assert id_embeds is not None and uncond is not None
            rows = [uncond[0] if e else id_embeds[i] for i, e in zip(batch["index"], empty)]
            return torch.stack(rows).to(device, dtype)
        texts = list(batch["caption"]) if cfg.use_captions else [cfg.prompt] * n
        return prompts(["" if e else s for s, e in zip(texts, empty)], device, dtype)

    def loss_fn(model: Any, batch: dict[str, Any]) -> Any:
        latents = sample_latents(batch).to(device, dtype)
        cond = condition(batch)
        noisy, t, target = noisy_latents(noise_scheduler, latents, cfg.noise_offset)
        down, mid = model(
            noisy,
            t,
            encoder_hidden_states=cond,
            controlnet_cond=batch["control"].to(device, dtype),
            return_dict=False,
        )
        pred = unet(
            noisy,
            t,
            encoder_hidden_states=cond,
            down_block_additional_residuals=[r.to(dtype) for r in down],
            mid_block_additional_residual=mid.to(dtype),
        ).sample
        return diffusion_loss(pred, target, t, noise_scheduler, cfg.snr_gamma).mean()

    def validate(step: int) -> list[Any]:
        from PIL import Image

        n = min(cfg.num_validation_images, len(cache))
        model = accelerator.unwrap_model(controlnet)
        model.eval()
        comps = {k: parts[k] for k in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")}
        maps = [Image.fromarray(cache.row(i, ("control",))["control"]) for i in range(n)]
        seeds = [cfg.seed + i for i in range(n)]
        size = {"height": cfg.resolution, "width": cfg.resolution}
        steps = cfg.validation_inference_steps
        common = {"safety_checker": None, "feature_extractor": None}
        with torch.no_grad(), inference_precision(accelerator, unet, text_encoder):
            if arc:
                from facegen.pipelines.generation.id_to_face import IDToFaceControlNetPipeline

                pipe = IDToFaceControlNetPipeline(
                    **comps, controlnet=model, **common, requires_safety_checker=False
                )
                pipe.set_progress_bar_config(disable=True)
                return pipe(
                    cache.identity_embeddings()[:n],
                    control_image=maps,
                    seeds=seeds,
                    num_inference_steps=steps,
                    **size,
                ).images
            from diffusers import StableDiffusionControlNetPipeline

            pipe = StableDiffusionControlNetPipeline(
                **comps, controlnet=model, **common, requires_safety_checker=False
            )
            pipe.set_progress_bar_config(disable=True)
            prompt = cfg.validation_prompt or cfg.prompt
            return pipe(
                [prompt] * n,
                image=maps,
                generator=[torch.Generator().manual_seed(s) for s in seeds],
                num_inference_steps=steps,
                **size,
            ).images

    outcome = run_training(
        cfg,
        accelerator,
        model=controlnet,
        params=[p for p in controlnet.parameters() if p.requires_grad],
        dataset=data,
        loss_fn=loss_fn,
        validate=validate,
        progress=progress,
        name="controlnet",
    )

    out = Path(cfg.output_dir)
    meta_path = out / CONTROLNET_METADATA_NAME
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(controlnet)
        final.save_pretrained(out, safe_serialization=True)
        write_json(
            meta_path,
            {
                "format": "facegen-controlnet",
                "control": "landmarks68",
                "renderer": "facegen.control.render_landmarks68",
                "crop_template": cfg.template,
                "crop_margin": cfg.crop_margin,
                "resolution": cfg.resolution,
                "conditioning": cfg.conditioning,
                "base_model": cfg.base_model,
                "encoder_id": cache.encoder_id,
                "steps": outcome.steps,
                "num_faces": len(cache),
                "training": cfg.to_dict(),
            },
        )
    accelerator.wait_for_everyone()
    return TrainResult(
        output_dir=out,
        weights=out,
        metadata=meta_path,
        start_step=outcome.start_step,
        steps=outcome.steps,
        losses=outcome.losses,
        checkpoints=outcome.checkpoints,
        validation_images=outcome.validation_images,
    )
