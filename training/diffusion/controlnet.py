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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from facegen.errors import InvalidArgumentError
from facegen.training.diffusion.components import (
    TrainingRun,
    check_config,
    prepare_run,
    write_metadata,
)
from facegen.training.diffusion.config import (
    ConditionedTrainConfig,
    ProgressCallback,
    TrainResult,
)
from facegen.training.diffusion.face_cache import CacheDataset, sample_latents
from facegen.training.diffusion.objective import diffusion_loss, noisy_latents
from facegen.training.resume import holds_output_folder
from facegen.validate import check_int, check_number

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, ControlNetModel
    from PIL import Image

    from facegen.training.diffusion.loop import LoopOutcome

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


def conditioning_channels_for(vae: AutoencoderKL) -> tuple[int, ...]:
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
class ControlNetTrainConfig(ConditionedTrainConfig):
    """:class:`~facegen.training.diffusion.config.ConditionedTrainConfig` plus the ControlNet's
    own settings.

    ``conditioning``: ``"arc2face"`` or ``"prompt"`` (None: ``"arc2face"`` for
    ``base_model="arc2face"``, else ``"prompt"``). ``prompt`` / ``use_captions`` (prompt
    mode); ``proportion_empty_prompts``. ``conditioning_channels``: the ControlNet's
    conditioning-embedding widths (None = to match the VAE). ``controlnet_model``: start
    from this ControlNet (a folder or hub id) instead of a copy of the UNet.
    ``validation_prompt`` (prompt mode; None = ``prompt``).
    """

    base_model: str = "arc2face"
    prompt: str = "a photo of a person"
    use_captions: bool = True
    proportion_empty_prompts: float = 0.0
    conditioning_channels: tuple[int, ...] | None = None
    controlnet_model: str | None = None
    validation_prompt: str | None = None
    learning_rate: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(
            self.proportion_empty_prompts, "proportion_empty_prompts", minimum=0, maximum=1
        )
        if self.conditioning_channels is not None:
            self.conditioning_channels = tuple(self.conditioning_channels)
            if not self.conditioning_channels:
                raise InvalidArgumentError(
                    "`conditioning_channels` must be positive integers, got ()"
                )
            for i, c in enumerate(self.conditioning_channels):
                check_int(c, f"conditioning_channels[{i}]", minimum=1)


def _build_controlnet(run: TrainingRun[ControlNetTrainConfig]) -> ControlNetModel:
    """The injected ControlNet, ``controlnet_model``, or a copy of the (float32) UNet's
    encoder; float32 on the device, in training mode."""
    import torch
    from diffusers import ControlNetModel

    cfg = run.cfg
    controlnet = run.parts.get("controlnet")
    if controlnet is None and cfg.controlnet_model:
        from facegen.hub import load_pretrained

        controlnet = load_pretrained(
            ControlNetModel,
            cfg.controlnet_model,
            None,
            revision=cfg.revision,
            local_files_only=cfg.local_files_only,
        )
    if controlnet is None:
        channels = cfg.conditioning_channels or conditioning_channels_for(run.vae)
        controlnet = ControlNetModel.from_unet(
            run.unet, conditioning_embedding_out_channels=channels
        )
    controlnet.to(run.device, dtype=torch.float32)
    controlnet.requires_grad_(True)
    controlnet.train()
    if cfg.gradient_checkpointing:
        controlnet.enable_gradient_checkpointing()
    return controlnet


def _loss_fn(
    run: TrainingRun[ControlNetTrainConfig],
) -> Callable[[torch.nn.Module, dict[str, Any]], torch.Tensor]:
    """The denoising loss of the frozen UNet given the ControlNet's residuals for the
    landmark maps; ``proportion_empty_prompts`` of the conditions are the unconditional one.

    For Arc2Face the conditions are computed once here: each photo's identity through
    Arc2Face's ID encoder, and the empty-prompt embedding.
    """
    import torch

    cfg, unet, device, dtype = run.cfg, run.unet, run.device, run.dtype
    id_embeds = uncond = None
    if cfg.arc2face:
        from facegen.adapters.arc2face import Arc2FaceIDEncoder

        run.cache.require("embeddings")
        id_encoder = Arc2FaceIDEncoder(run.text_encoder, run.tokenizer)
        id_embeds = id_encoder.encode(run.cache.identity_embeddings()).clone()
        uncond = id_encoder.encode_unconditional(1).clone()

    def condition(batch: dict[str, Any]) -> torch.Tensor:
        n = len(batch["index"])
        empty = (torch.rand(n) < cfg.proportion_empty_prompts).tolist()
        if id_embeds is not None and uncond is not None:
            rows = [uncond[0] if e else id_embeds[i] for i, e in zip(batch["index"], empty)]
            return torch.stack(rows).to(device, dtype)
        texts = list(batch["caption"]) if cfg.use_captions else [cfg.prompt] * n
        return run.prompts(["" if e else s for s, e in zip(texts, empty)], device, dtype)

    def loss_fn(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        scheduler = run.noise_scheduler
        latents = sample_latents(batch).to(device, dtype)
        cond = condition(batch)
        noisy, t, target = noisy_latents(scheduler, latents, cfg.noise_offset)
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
        return diffusion_loss(pred, target, t, scheduler, cfg.snr_gamma).mean()

    return loss_fn


def _validator(
    run: TrainingRun[ControlNetTrainConfig], controlnet: ControlNetModel
) -> Callable[[int], list[Image.Image]]:
    """``validate(step)``: the first photos' landmark maps, with their identities (Arc2Face)
    or ``validation_prompt``."""
    cfg, cache = run.cfg, run.cache

    def validate(step: int) -> list[Image.Image]:
        import torch
        from PIL import Image

        n = min(cfg.num_validation_images, len(cache))
        model = run.accelerator.unwrap_model(controlnet)
        model.eval()
        maps = [Image.fromarray(cache.row(i, ("control",))["control"]) for i in range(n)]
        seeds = [cfg.seed + i for i in range(n)]
        size = {"height": cfg.resolution, "width": cfg.resolution}
        steps = cfg.validation_inference_steps
        with torch.no_grad(), run.precision():
            if cfg.arc2face:
                from facegen.pipelines.generation.id_to_face import IDToFaceControlNetPipeline

                pipe = run.pipeline(IDToFaceControlNetPipeline, controlnet=model)
                return pipe(
                    cache.identity_embeddings()[:n],
                    control_image=maps,
                    seeds=seeds,
                    num_inference_steps=steps,
                    **size,
                ).images
            from diffusers import StableDiffusionControlNetPipeline

            pipe = run.pipeline(StableDiffusionControlNetPipeline, controlnet=model)
            prompt = cfg.validation_prompt or cfg.prompt
            return pipe(
                [prompt] * n,
                image=maps,
                generator=[torch.Generator().manual_seed(s) for s in seeds],
                num_inference_steps=steps,
                **size,
            ).images

    return validate


def _finish(
    run: TrainingRun[ControlNetTrainConfig], controlnet: ControlNetModel, outcome: LoopOutcome
) -> TrainResult:
    """Write the ControlNet (``save_pretrained``) and its metadata."""
    cfg, out = run.cfg, run.output_dir
    metadata = out / CONTROLNET_METADATA_NAME

    def save() -> None:
        run.accelerator.unwrap_model(controlnet).save_pretrained(out, safe_serialization=True)
        write_metadata(
            metadata,
            {
                **run.record(outcome.steps),
                "format": "facegen-controlnet",
                "control": "landmarks68",
                "renderer": "facegen.control.render_landmarks68",
                "crop_margin": cfg.crop_margin,
                "conditioning": cfg.conditioning,
                "encoder_id": run.cache.encoder_id,
                "num_faces": len(run.cache),
            },
        )

    return run.finish(outcome, weights=out, metadata=metadata, save=save)


@holds_output_folder("controlnet")
def train_controlnet(
    config: ControlNetTrainConfig,
    *,
    components: dict[str, Any] | None = None,
    progress: bool | ProgressCallback | None = None,
) -> TrainResult:
    """Train a landmark ControlNet; see the module docstring for what is written.

    ``components`` (injected base-model components, changed in place: pass copies to keep
    the originals; may hold a starting ``controlnet``) and ``progress``: see
    :func:`.components.prepare_run` and :func:`.loop.run_training`. ``weights`` of the
    result is the ControlNet folder (``output_dir``).
    """
    cfg = check_config(config, ControlNetTrainConfig)
    run = prepare_run(
        cfg,
        components,
        need_landmarks=True,
        extra_components=("controlnet",),
        require=("control",),
        cast_frozen=False,  # the ControlNet starts as a float32 copy of the UNet
    )
    controlnet = _build_controlnet(run)
    run.cast_frozen()
    data = CacheDataset(
        run.cache, ("latents", "control", "caption", "index"), default_caption=cfg.prompt
    )
    outcome = run.train(
        "controlnet",
        model=controlnet,
        params=[p for p in controlnet.parameters() if p.requires_grad],
        dataset=data,
        loss_fn=_loss_fn(run),
        validate=_validator(run, controlnet),
        progress=progress,
    )
    return _finish(run, controlnet, outcome)
