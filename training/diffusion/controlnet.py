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
    the photo's caption, or ``prompt`` (``proportion_empty_prompts`` replaced by ``""``);
``"arc2face"`` with a generator folder as the base (``facegen train generator``'s output, or
``"demo-orl"`` for the shipped one)
    the same recipe with the generator's own identity encoding (its encoder, prompt, token,
    centre and null identity from ``facegen_generator.json``); its face analysis, crop
    template and resolution are the defaults, and the conditioning embedding downsamples by
    its latent's factor.

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
    NamedOptions,
    ProgressCallback,
    TrainResult,
)
from facegen.training.diffusion.face_cache import CacheDataset, sample_latents
from facegen.training.diffusion.objective import diffusion_loss, noisy_latents
from facegen.training.resume import holds_output_folder
from facegen.validate import check_choice, check_int, check_number

if TYPE_CHECKING:
    import torch
    from diffusers import AutoencoderKL, ControlNetModel
    from PIL import Image

    from facegen.pipelines.generation.generator_folder import GeneratorInfo
    from facegen.training.diffusion.loop import LoopOutcome

__all__ = [
    "CONTROLNET_METADATA_NAME",
    "ControlNetTrainConfig",
    "conditioning_channels_for",
    "random_similarities",
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
    ``validation_prompt`` (prompt mode; None = ``prompt``). ``save_dtype``: ``"float32"`` or
    ``"float16"`` (the saved weights). ``random_affine``: warp each
    crop and its landmark map together by a random similarity each step (0 = off; 1 = up to
    ±15° rotation, ±10 % scale and ±8 % shift; the crop is re-encoded by the VAE, so with
    SD's VAE each step encodes the batch): a base model that learned its training photos by
    heart renders them in their own poses without help, so the ControlNet learns little
    from them; moved faces it cannot render unaided make the control map carry the geometry.
    """

    base_model: str = "arc2face"
    prompt: str = "a photo of a person"
    use_captions: bool = True
    proportion_empty_prompts: float = 0.0
    conditioning_channels: tuple[int, ...] | None = None
    controlnet_model: str | None = None
    validation_prompt: str | None = None
    learning_rate: float = 1e-5
    random_affine: float = 0.0
    save_dtype: str = "float32"

    def __post_init__(self) -> None:
        info = self.generator_info
        if info is not None:
            # the generator's own size and sampling steps, unless given
            if self.resolution is None:
                self.resolution = info.resolution
            if self.validation_inference_steps is None:
                self.validation_inference_steps = info.default_steps
            if self.conditioning is None:
                self.conditioning = "arc2face"
            if self.conditioning != "arc2face":
                raise InvalidArgumentError(
                    f"a generator folder ({self.base_model}) is conditioned on identities: "
                    f"`conditioning` must be 'arc2face' (its recipe), got {self.conditioning!r}"
                )
        super().__post_init__()
        check_number(
            self.proportion_empty_prompts, "proportion_empty_prompts", minimum=0, maximum=1
        )
        check_number(self.random_affine, "random_affine", minimum=0, maximum=2)
        check_choice(self.save_dtype, "save_dtype", ("float32", "float16"))
        if self.conditioning_channels is not None:
            self.conditioning_channels = tuple(self.conditioning_channels)
            if not self.conditioning_channels:
                raise InvalidArgumentError(
                    "`conditioning_channels` must be positive integers, got ()"
                )
            for i, c in enumerate(self.conditioning_channels):
                check_int(c, f"conditioning_channels[{i}]", minimum=1)

    @property
    def generator_info(self) -> GeneratorInfo | None:
        """``base_model``'s ``facegen_generator.json`` when it is a generator folder, else
        None."""
        from facegen.pipelines.generation.generator_folder import read_generator_info
        from facegen.training.diffusion.components import generator_folder_of

        folder = generator_folder_of(self.base_model)
        return None if folder is None else read_generator_info(folder)

    @property
    def template(self) -> str:
        """``crop_template``, else a generator base's own (the crops it was trained on), else
        the conditioning's default."""
        info = self.generator_info
        if self.crop_template is None and info is not None:
            return str(info.training.get("crop_template") or "arcface")
        return super().template

    @property
    def analyzer_defaults(self) -> tuple[NamedOptions, NamedOptions]:
        """A generator base's own detector and identity encoder (the vectors it takes), else
        the conditioning's defaults."""
        info = self.generator_info
        if info is not None and info.detector and info.encoder:
            return (
                (info.detector["name"], dict(info.detector.get("options") or {})),
                (info.encoder["name"], dict(info.encoder.get("options") or {})),
            )
        return super().analyzer_defaults


def _identity_encoder(run: TrainingRun[ControlNetTrainConfig]) -> tuple[Any, str]:
    """The run's Arc2Face-style identity encoder and its null identity: Arc2Face's own, or a
    generator folder's (its prompt, token, dimension and centre)."""
    from facegen.adapters.arc2face import Arc2FaceIDEncoder

    info = run.cfg.generator_info
    if info is None:
        return Arc2FaceIDEncoder(run.text_encoder, run.tokenizer), "empty-prompt"
    encoder = Arc2FaceIDEncoder(
        run.text_encoder,
        run.tokenizer,
        prompt=info.prompt,
        id_token=info.id_token,
        encoder_ids=tuple(info.identity.encoder_ids),
        identity_dim=info.identity.dim,
        normalized=info.identity.normalized,
        identity_center=info.identity_center,
    )
    return encoder, info.unconditional


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
        run.cache.require("embeddings")
        id_encoder, null = _identity_encoder(run)
        id_embeds = id_encoder.encode(run.cache.identity_embeddings()).clone()
        uncond = id_encoder.encode_unconditional(1, null).clone()  # type: ignore[arg-type]

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
        if cfg.random_affine > 0:
            latents, control = _moved(run, batch, cfg.random_affine)
        else:
            latents, control = sample_latents(batch), batch["control"]
        latents = latents.to(device, dtype)
        cond = condition(batch)
        noisy, t, target = noisy_latents(scheduler, latents, cfg.noise_offset)
        down, mid = model(
            noisy,
            t,
            encoder_hidden_states=cond,
            controlnet_cond=control.to(device, dtype),
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


def random_similarities(n: int, strength: float) -> torch.Tensor:
    """``(n, 2, 3)`` ``affine_grid`` matrices (output → input, normalised coordinates) of
    random similarities: rotation up to ±15°, scale up to ±10 % and shift up to ±8 % of the
    side, each times ``strength``, uniform. Uses the global torch RNG."""
    import torch

    u = torch.rand(n, 4) * 2 - 1
    angle = u[:, 0] * math.radians(15) * strength
    scale = 1 + u[:, 1] * 0.10 * strength
    shift = u[:, 2:] * 0.16 * strength  # normalised coordinates span 2: ±8 % of the side
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack(
        [
            torch.stack([cos, -sin, shift[:, 0]], dim=1),
            torch.stack([sin, cos, shift[:, 1]], dim=1),
        ],
        dim=1,
    )


def _moved(
    run: TrainingRun[ControlNetTrainConfig], batch: dict[str, Any], strength: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's crops and landmark maps warped by the same random similarity (crops with
    their edge pixels repeated, maps with black), the crops encoded by the run's VAE: float32
    ``(latents, control)``."""
    import torch
    import torch.nn.functional as F

    pixels = batch["pixel_values"].float()
    control = batch["control"].float()
    theta = random_similarities(len(pixels), strength)
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    pixels = F.grid_sample(pixels, grid, padding_mode="border", align_corners=False)
    control = F.grid_sample(control, grid, padding_mode="zeros", align_corners=False)
    vae = run.vae
    scale = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    with torch.no_grad():
        dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        mean, std = (dist.mean.float() - shift) * scale, dist.std.float() * scale
    return mean + std * torch.randn_like(mean), control


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
                info = cfg.generator_info
                if info is not None:
                    from facegen.pipelines.generation.generator_folder import configure_pipeline

                    configure_pipeline(pipe, info)
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
        model = run.accelerator.unwrap_model(controlnet)
        if cfg.save_dtype == "float16":
            import copy

            import torch

            model = copy.deepcopy(model).to(torch.float16)
        model.save_pretrained(out, safe_serialization=True)
        write_metadata(
            metadata,
            {
                **run.record(outcome.steps),
                "format": "facegen-controlnet",
                "control": "landmarks68",
                "renderer": "facegen.control.render_landmarks68",
                "crop_margin": cfg.crop_margin,
                "conditioning": cfg.conditioning,
                "base_generator": cfg.generator_info is not None,
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
    fields = ["latents", "control", "caption", "index"]
    if cfg.random_affine > 0:
        run.cache.require("pixels")
        fields.append("pixel_values")
    data = CacheDataset(run.cache, tuple(fields), default_caption=cfg.prompt)
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
