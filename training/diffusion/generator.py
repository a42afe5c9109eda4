"""``facegen train generator``: an identity-conditioned generator trained with Arc2Face's recipe.

The model is Arc2Face's: the identity vector (from any registered encoder; dlib's 128-D
offline by default), zero-padded to the text encoder's width, replaces the token embedding of
``id`` in ``"photo of a id person"``; the CLIP text encoder turns that into ``prompt_embeds``
for the UNet (:class:`~facegen.adapters.arc2face.Arc2FaceIDEncoder`). The recipe:

* the **text encoder and the UNet are trained jointly** with the diffusion loss (each photo's
  own identity vector as its condition), with their own learning rates
  (``unet_learning_rate`` / ``text_encoder_learning_rate``; None = ``learning_rate``);
* **classifier-free guidance** by condition dropout: with probability ``id_drop_prob`` a
  photo's identity is the null identity (the zero vector in the same prompt, so at inference
  the negative is ``unconditional="zero-identity"``);
* optionally **IDiff-Face's contextual partial dropout** (Boutros et al., ICCV 2023):
  ``id_partial_drop_prob`` zeroes each entry of the identity vector independently with that
  probability (not rescaled), so the model cannot rely on every dimension of the identity
  context and also learns from the image itself (IDiff-Face reports it trades some identity
  consistency for more variation);
* **EMA** of the weights (``diffusers.training_utils.EMAModel``, ``ema_decay``; its warm-up
  ``(1 + n) / (10 + n)`` caps the decay early on), saved as the result (``use_ema=False``:
  the last weights).

Starting points (``base_model``): ``"scratch"``, a small UNet + small CLIP text encoder on
facegen's space-to-depth latents (:class:`~facegen.pipelines.generation.space_to_depth.SpaceToDepthLatent`,
no VAE to train; 64×64 by default, trainable on a few CPU cores; sizes in the ``scratch_*``
settings); or fine-tuning ``"arc2face"``, an SD1.5 diffusers folder / hub id, or ``"tiny"``
(random, plumbing only), loaded as the other loops load their bases.

Output (``output_dir``): a generator folder (diffusers layout + ``facegen_generator.json``,
see :mod:`facegen.pipelines.generation.generator_folder`), which ``from_preset(output_dir)``
and ``facegen generate --preset OUTPUT_DIR`` load; plus checkpoints (the trained weights and
the EMA weights, ``ema.safetensors``), the face cache, validation images and logs
(:mod:`facegen.training.diffusion.loop`). :data:`GENERATOR_RESULT_FILES` names what a user
keeps.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facegen.adapters.arc2face import ARC2FACE_PROMPT
from facegen.compat import enable_checkpointing
from facegen.errors import InvalidArgumentError
from facegen.training.diffusion.components import (
    TrainingRun,
    build_analyzer,
    check_config,
    load_components,
    prepare_run,
)
from facegen.training.diffusion.config import (
    ANALYZERS,
    NamedOptions,
    ProgressCallback,
    TrainConfig,
    TrainResult,
)
from facegen.training.diffusion.face_cache import CacheDataset, sample_latents
from facegen.training.diffusion.objective import diffusion_loss, noisy_latents
from facegen.training.resume import holds_output_folder
from facegen.validate import check_choice, check_int, check_number

if TYPE_CHECKING:
    import torch
    from diffusers import UNet2DConditionModel
    from PIL import Image
    from transformers import CLIPTextModel

    from facegen.adapters.arc2face import Arc2FaceIDEncoder
    from facegen.pipelines.generation.generator_folder import GeneratorInfo

__all__ = [
    "GENERATOR_RESULT_FILES",
    "GeneratorTrainConfig",
    "scratch_components",
    "train_generator",
]

logger = logging.getLogger(__name__)

#: What a user keeps of an output folder: the generator (the rest is checkpoints, the face
#: cache, validation images and logs).
GENERATOR_RESULT_FILES = (
    "model_index.json",
    "unet",
    "text_encoder",
    "tokenizer",
    "scheduler",
    "vae",
    "identity_bank.safetensors",
    "facegen_generator.json",
)


@dataclass(kw_only=True)
class GeneratorTrainConfig(TrainConfig):
    """:class:`~facegen.training.diffusion.config.TrainConfig` plus the generator's settings.

    ``base_model``: ``"scratch"`` (default), ``"arc2face"``, ``"tiny"`` or an SD1.5 folder /
    hub id. ``encoder`` (default: dlib's 128-D, or Arc2Face's ArcFace for ``"arc2face"``):
    the identity encoder. ``prompt`` / ``id_token``: the prompt whose ``id_token`` carries the
    identity. ``id_drop_prob``: condition dropout (the null identity) for classifier-free
    guidance; ``id_partial_drop_prob``: IDiff-Face's contextual partial dropout (0 = off).
    ``unet_learning_rate`` / ``text_encoder_learning_rate``: per part (None =
    ``learning_rate``; for the text encoder of the ``"scratch"`` model, that times
    :data:`SCRATCH_TEXT_ENCODER_LR_FACTOR`). ``use_ema`` / ``ema_decay``. ``random_flip``: mirrored crops half the
    time. ``validation_guidance``: the guidance of validation images and the generator's
    default. ``scratch_unet_channels`` (one UNet level each; cross-attention on all but the
    deepest), ``scratch_layers_per_block``, ``scratch_text_width`` (None: the identity
    dimension rounded up to a multiple of 64, at least 256), ``scratch_text_layers``,
    ``latent_factor`` (the space-to-depth factor): the ``"scratch"`` model's sizes.
    ``prediction_type``: what the ``"scratch"`` UNet predicts, ``"v_prediction"`` (default) or
    ``"epsilon"`` (a fine-tuned model keeps its base model's).
    ``center_identities``: subtract the training identities' mean from every identity before
    it is normalised and written into the token (None: for the ``"scratch"`` model only; see
    :meth:`~facegen.adapters.arc2face.Arc2FaceIDEncoder.centered`; the mean is saved with the
    generator). ``save_dtype``: ``"float32"`` or ``"float16"`` (the saved generator's weights).
    ``identity_morphs``: add this many morphs of the training people as extra identities, each
    a blend of ``morph_parents`` people's photos with its own measured identity vector (made
    once into :attr:`morphs_dir`, left out of the identity bank; :mod:`.morphs`). A few dozen
    people leave the space between them empty; morphs fill it (0 = none).
    ``model_description`` / ``model_license``: written into ``facegen_generator.json`` (what
    ``facegen models list`` and the preset's record show).
    """

    base_model: str = "scratch"
    prompt: str = ARC2FACE_PROMPT
    id_token: str = "id"
    id_drop_prob: float = 0.1
    id_partial_drop_prob: float = 0.0
    unet_learning_rate: float | None = None
    text_encoder_learning_rate: float | None = None
    use_ema: bool = True
    ema_decay: float = 0.9999
    random_flip: bool = False
    validation_guidance: float = 3.0
    scratch_unet_channels: tuple[int, ...] = (64, 128, 256)
    scratch_layers_per_block: int = 1
    scratch_text_width: int | None = None
    scratch_text_layers: int = 4
    latent_factor: int = 4
    prediction_type: str = "v_prediction"
    center_identities: bool | None = None
    save_dtype: str = "float32"
    identity_morphs: int = 0
    morph_parents: int = 3
    model_description: str | None = None
    model_license: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("id_drop_prob", "id_partial_drop_prob"):
            check_number(getattr(self, name), name, minimum=0, maximum=1, max_open=True)
        for name in ("unet_learning_rate", "text_encoder_learning_rate"):
            if getattr(self, name) is not None:
                check_number(getattr(self, name), name, minimum=0, min_open=True)
        check_number(self.ema_decay, "ema_decay", minimum=0, maximum=1)
        check_number(self.validation_guidance, "validation_guidance", minimum=0)
        self.scratch_unet_channels = tuple(self.scratch_unet_channels)
        if not self.scratch_unet_channels or len(self.scratch_unet_channels) > 4:
            raise InvalidArgumentError(
                f"`scratch_unet_channels` must have 1 to 4 entries, got {self.scratch_unet_channels}"
            )
        for c in self.scratch_unet_channels:
            if check_int(c, "scratch_unet_channels", minimum=32) % 32:
                raise InvalidArgumentError(
                    f"`scratch_unet_channels` must be multiples of 32, got {self.scratch_unet_channels}"
                )
        check_int(self.scratch_layers_per_block, "scratch_layers_per_block", minimum=1)
        if self.scratch_text_width is not None and (
            check_int(self.scratch_text_width, "scratch_text_width", minimum=64) % 64
        ):
            raise InvalidArgumentError(
                f"`scratch_text_width` must be a multiple of 64, got {self.scratch_text_width}"
            )
        check_int(self.scratch_text_layers, "scratch_text_layers", minimum=1)
        check_int(self.identity_morphs, "identity_morphs", minimum=0)
        check_int(self.morph_parents, "morph_parents", minimum=2)
        check_choice(self.save_dtype, "save_dtype", ("float32", "float16"))
        check_choice(self.prediction_type, "prediction_type", ("v_prediction", "epsilon"))
        factor = check_int(self.latent_factor, "latent_factor", minimum=1)
        if factor & (factor - 1):
            raise InvalidArgumentError(f"`latent_factor` must be a power of two, got {factor}")
        if self.base_model == "scratch":
            step = factor * 2 ** (len(self.scratch_unet_channels) - 1)
            if int(self.resolution or 0) % step:
                raise InvalidArgumentError(
                    f"`resolution` must be a multiple of {step} (latent_factor × 2^(levels-1)) "
                    f"for the scratch model, got {self.resolution}"
                )

    @property
    def template(self) -> str:
        """The crop template: ``crop_template``, else ``"arcface"`` (Arc2Face's alignment)."""
        return self.crop_template or "arcface"

    @property
    def analyzer_defaults(self) -> tuple[NamedOptions, NamedOptions]:
        """Arc2Face's own detector and ArcFace for ``"arc2face"``; dlib's (offline) else."""
        return ANALYZERS["arc2face" if self.base_model == "arc2face" else "prompt"]

    @property
    def morphs_dir(self) -> Path:
        """Where ``identity_morphs`` are written: ``output_dir/morphs``."""
        return Path(self.output_dir) / "morphs"

    def prepare_photo_inputs(self) -> list[str]:
        """``data_dir``, plus ``identity_morphs`` morphs of its people (made once, reused
        on resume; see :mod:`.morphs`)."""
        if not self.identity_morphs:
            return [self.data_dir]
        from facegen.training.diffusion.morphs import ensure_identity_morphs

        ensure_identity_morphs(
            self.data_dir,
            self.morphs_dir,
            count=self.identity_morphs,
            parents=self.morph_parents,
            seed=self.seed,
        )
        return [self.data_dir, str(self.morphs_dir)]


# --------------------------------------------------------------------------- the model


def scratch_components(
    cfg: GeneratorTrainConfig, identity_dim: int, *, seed: int | None = None
) -> dict[str, Any]:
    """The ``"scratch"`` starting point for ``identity_dim``-D identities at
    ``cfg.resolution``: a randomly initialised UNet over ``3·f²`` latent channels (the
    context in cross-attention and, attention-pooled, in the timestep embedding), a small
    CLIP text encoder (width ``cfg.scratch_text_width``), facegen's small CLIP tokenizer (its
    ``"id"`` is one token; sequences as long as the prompt, so the cross-attention context is
    the prompt's tokens without padding), the space-to-depth latent (factor ``f = cfg.latent_factor``) and
    DPM-Solver++ over a linear DDPM schedule (1000 steps; linear suits image-like latents),
    predicting ``cfg.prediction_type``. v-prediction is the default because the identity
    decides the image at high noise, where an ε target carries almost none of the image
    (at t = 999 the clean latent is 0.6 % of it) and a v target is nearly all of it: an
    ε-trained scratch model learned faces but ignored the identity (BENCHMARKS.md). Seeded with ``seed`` (default ``cfg.seed``)."""
    import torch
    from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from facegen.pipelines.generation.space_to_depth import SpaceToDepthLatent
    from facegen.pipelines.generation.tiny import tiny_tokenizer

    dim = check_int(identity_dim, "identity_dim", minimum=1)
    width = cfg.scratch_text_width or max(256, -(-dim // 64) * 64)
    if width < dim:
        raise InvalidArgumentError(
            f"`scratch_text_width` must be >= the identity dimension ({dim}), got {width}"
        )
    f = cfg.latent_factor
    res = int(cfg.resolution or 0)
    vae = SpaceToDepthLatent(factor=f, sample_size=res)
    channels = int(vae.config.latent_channels)
    levels = len(cfg.scratch_unet_channels)
    down = ("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1)
    if levels == 1:
        down, up = ("CrossAttnDownBlock2D",), ("CrossAttnUpBlock2D",)
    # the UNet attends to the prompt's own tokens only (no padding to 77): a model trained
    # from nothing learns to read the identity far sooner from 7 tokens, 3 of which carry
    # it, than from 77 mostly identical pads
    length = len(tiny_tokenizer()(cfg.prompt).input_ids)
    tokenizer = tiny_tokenizer(model_max_length=length)
    torch.manual_seed(cfg.seed if seed is None else seed)
    unet = UNet2DConditionModel(
        sample_size=res // f,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=cfg.scratch_unet_channels,
        layers_per_block=cfg.scratch_layers_per_block,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=width,
        attention_head_dim=8,
        norm_num_groups=32,
        # the context also reaches every ResNet block through the timestep embedding
        # (attention-pooled, diffusers' "text" addition embedding), the pathway class-
        # conditional models learn fastest: cross-attention alone left a model trained from
        # nothing ignoring the identity for thousands of steps (BENCHMARKS.md)
        addition_embed_type="text",
        addition_embed_type_num_heads=8,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=cfg.scratch_text_layers,
            num_attention_heads=width // 64,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DPMSolverMultistepScheduler(
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        num_train_timesteps=1000,
        algorithm_type="dpmsolver++",
        solver_order=2,
        steps_offset=1,
        prediction_type=cfg.prediction_type,
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


def _pair(unet: UNet2DConditionModel, text_encoder: CLIPTextModel) -> torch.nn.Module:
    """A module holding the two trained parts (parameters: the UNet's, then the encoder's)."""
    from torch import nn

    pair = nn.Module()
    pair.unet = unet
    pair.text_encoder = text_encoder
    return pair


def _generator_module(encoder: Arc2FaceIDEncoder, unet: UNet2DConditionModel) -> torch.nn.Module:
    """The trained model: ``model(noisy, t, identity)`` → the UNet's prediction, the identity
    ``(B, D)`` through Arc2Face's encoding (its text encoder trained with the UNet)."""
    from torch import nn

    class Generator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = unet
            self.text_encoder = encoder.text_encoder

        def forward(
            self, noisy: torch.Tensor, t: torch.Tensor, identity: torch.Tensor
        ) -> torch.Tensor:
            return self.unet(noisy, t, encoder.prompt_embeds(identity)).sample

    return Generator()


# --------------------------------------------------------------------------- the run


def _components(cfg: GeneratorTrainConfig) -> dict[str, Any]:
    """The base model's components and the face analyzer (built first: the scratch model's
    text encoder is sized for its encoder's identity dimension)."""
    det, enc = cfg.analyzer_defaults
    analyzer = build_analyzer(cfg, detector=det, encoder=enc)
    if cfg.base_model == "scratch":
        dim = int(getattr(analyzer.encoder, "dim", 0) or 0)
        parts = scratch_components(cfg, dim)
    else:
        parts = load_components(
            cfg.base_model, revision=cfg.revision, local_files_only=cfg.local_files_only
        )
    return {**parts, "analyzer": analyzer}


def _id_encoder(run: TrainingRun[GeneratorTrainConfig]) -> Arc2FaceIDEncoder:
    from facegen.adapters.arc2face import Arc2FaceIDEncoder

    cfg, cache = run.cfg, run.cache
    center = cfg.center_identities
    if center is None:
        center = cfg.base_model == "scratch"
    try:
        return Arc2FaceIDEncoder(
            run.text_encoder,
            run.tokenizer,
            prompt=cfg.prompt,
            id_token=cfg.id_token,
            encoder_ids=(str(cache.encoder_id),),
            identity_dim=int(cache.dim or 0),
            normalized=cache.normalized,
            identity_center=_identity_mean(cache) if center else None,
        )
    except ValueError as exc:
        raise InvalidArgumentError(f"the base model cannot take these identities: {exc}") from None


#: The scratch model's text encoder learns this much slower than its UNet by default: trained
#: from nothing at the UNet's rate it learned to wash the identity out of the context within
#: a thousand steps (the UNet then learns faces without identity; BENCHMARKS.md).
SCRATCH_TEXT_ENCODER_LR_FACTOR = 0.02


def _text_encoder_lr(cfg: GeneratorTrainConfig) -> float:
    """``text_encoder_learning_rate``; unset: ``learning_rate``, times
    :data:`SCRATCH_TEXT_ENCODER_LR_FACTOR` for the ``"scratch"`` model."""
    if cfg.text_encoder_learning_rate is not None:
        return float(cfg.text_encoder_learning_rate)
    factor = SCRATCH_TEXT_ENCODER_LR_FACTOR if cfg.base_model == "scratch" else 1.0
    return float(cfg.learning_rate) * factor


def _identity_mean(cache: Any) -> list[float]:
    """The mean of the cache's L2-normalised identity vectors."""
    import numpy as np

    vecs = np.stack([e.normalize().vector for e in cache.identity_embeddings()])
    return [float(v) for v in vecs.mean(axis=0)]


def _info(
    run: TrainingRun[GeneratorTrainConfig], enc: Arc2FaceIDEncoder, steps: int
) -> GeneratorInfo:
    from facegen.pipelines.generation.generator_folder import GeneratorInfo
    from facegen.pipelines.generation.space_to_depth import SpaceToDepthLatent

    cfg = run.cfg
    (det, det_opts), (enc_name, enc_opts) = cfg.analyzer_defaults
    detector = {
        "name": cfg.detector or det,
        "options": cfg.detector_options if cfg.detector else det_opts,
    }
    if cfg.landmarker:
        detector["landmarker"] = cfg.landmarker
    encoder = {
        "name": cfg.encoder or enc_name,
        "options": cfg.encoder_options if cfg.encoder else enc_opts,
    }
    family = {"scratch": "scratch", "arc2face": "arc2face", "tiny": "tiny"}.get(
        cfg.base_model, "sd15"
    )
    return GeneratorInfo(
        identity=enc.identity,
        encoder=encoder,
        detector=detector,
        prompt=cfg.prompt,
        id_token=cfg.id_token,
        unconditional="zero-identity",
        resolution=int(cfg.resolution or 0),
        default_steps=int(cfg.validation_inference_steps or 25),
        default_guidance=float(cfg.validation_guidance),
        vae="space-to-depth" if isinstance(run.vae, SpaceToDepthLatent) else "autoencoder-kl",
        family=family,
        dataset_defaults=dataset_defaults(run.analyzer.encoder),
        license=cfg.model_license,
        description=cfg.model_description,
        identity_center=enc.identity_center,
        training={
            **run.record(steps),
            "recipe": "arc2face (text encoder + UNet, identity in the id token's embedding)",
            "weights": "ema" if cfg.use_ema else "last",
            "encoder_id": str(run.cache.encoder_id),
        },
    )


def dataset_defaults(encoder: object) -> dict[str, float]:
    """Dataset settings for a generator conditioned on ``encoder``'s vectors, from its
    same-person cosine threshold ``τ`` (the global defaults are ArcFace's): an image must
    match its identity as the verifier matches one person (``min_similarity = τ``); a
    sampled identity must not match any training photo (``leakage_threshold = τ``) nor
    another sampled identity (``identity_separation = τ``: real different people lie below
    it, e.g. 99 % of ORL's pairs under dlib); a near-copy lies within a fifteenth of the
    margin ``1 − τ`` of its target (``max_similarity = max(0.98, 1 − (1 − τ)/15)``). Empty
    without a threshold."""
    tau = getattr(encoder, "same_person_threshold", None)
    if tau is None:
        return {}
    tau = float(tau)
    return {
        "min_similarity": round(tau, 4),
        "leakage_threshold": round(tau, 4),
        "identity_separation": round(tau, 4),
        "max_similarity": round(max(0.98, 1 - (1 - tau) / 15), 4),
    }


def _bank(run: TrainingRun[GeneratorTrainConfig]) -> tuple[list[Any], list[str]]:
    """The training photos' identity vectors and their people (the cache's label of each
    photo, else the name of its folder), for the generator's identity bank; identity morphs
    are left out (they are no one, and the leakage check is against real people)."""
    from facegen.training.diffusion.morphs import is_morph_label

    cache = run.cache
    labels = cache.index.get("labels") or [None] * len(cache.items)
    names = [
        str(label if label is not None else Path(item.source).parent.name)
        for item, label in zip(cache.items, labels)
    ]
    keep = [i for i, n in enumerate(names) if not is_morph_label(n)]
    vectors = cache.identity_embeddings()
    return [vectors[i] for i in keep], [names[i] for i in keep]


def _loss_fn(
    run: TrainingRun[GeneratorTrainConfig],
) -> Callable[[torch.nn.Module, dict[str, Any]], torch.Tensor]:
    """The denoising loss conditioned on each photo's identity: dropped to the null (zero)
    identity with ``id_drop_prob``, entries zeroed with ``id_partial_drop_prob``."""
    import torch

    cfg, device = run.cfg, run.device

    def loss_fn(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        latents = sample_latents(batch, random_flip=cfg.random_flip).to(device, torch.float32)
        ids = batch["embedding"].to(device, torch.float32)
        keep = (torch.rand(ids.shape[0]) >= cfg.id_drop_prob).to(device, ids.dtype)
        ids = ids * keep[:, None]
        if cfg.id_partial_drop_prob > 0:
            ids = ids * (torch.rand(ids.shape) >= cfg.id_partial_drop_prob).to(device, ids.dtype)
        scheduler = run.noise_scheduler
        noisy, t, target = noisy_latents(scheduler, latents, cfg.noise_offset)
        pred = model(noisy, t, ids)
        return diffusion_loss(pred.float(), target, t, scheduler, cfg.snr_gamma).mean()

    return loss_fn


def _validator(
    run: TrainingRun[GeneratorTrainConfig],
    result: Callable[[], torch.nn.Module],
    info: Callable[[], GeneratorInfo],
) -> Callable[[int], list[Image.Image]]:
    """``validate(step)``: the first photos' identities through the result so far."""
    cfg = run.cfg

    def validate(step: int) -> list[Image.Image]:
        import torch

        from facegen.pipelines.generation.generator_folder import configure_pipeline
        from facegen.pipelines.generation.id_to_face import IDToFacePipeline

        model = result()
        model.eval()
        pipe = run.pipeline(IDToFacePipeline, unet=model.unet, text_encoder=model.text_encoder)
        configure_pipeline(pipe, info())
        ids = run.cache.identity_embeddings()[: cfg.num_validation_images]
        with torch.no_grad(), run.precision():
            return pipe(
                ids,
                seeds=[cfg.seed + i for i in range(len(ids))],
                num_inference_steps=cfg.validation_inference_steps,
                guidance_scale=cfg.validation_guidance,
                height=cfg.resolution,
                width=cfg.resolution,
            ).images

    return validate


@holds_output_folder("generator")
def train_generator(
    config: GeneratorTrainConfig,
    *,
    components: dict[str, Any] | None = None,
    progress: bool | ProgressCallback | None = None,
) -> TrainResult:
    """Train an identity-conditioned generator; see the module docstring.

    ``components`` (injected base-model components, changed in place: pass copies to keep
    the originals) and ``progress``: see :func:`.components.prepare_run` and
    :func:`.loop.run_training`. ``weights`` of the result is the generator folder
    (``output_dir``); ``metadata`` its ``facegen_generator.json``.
    """
    from facegen.pipelines.generation.generator_folder import GENERATOR_CONFIG_NAME, save_generator

    cfg = check_config(config, GeneratorTrainConfig)
    if components is None:
        components = _components(cfg)
    run = prepare_run(
        cfg, components, flip=cfg.random_flip, require=("embeddings",), cast_frozen=False
    )
    enc = _id_encoder(run)
    unet, te = run.unet, run.text_encoder
    for part in (unet, te):
        part.requires_grad_(True)
        part.train()
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        enable_checkpointing(te)
    model = _generator_module(enc, unet)
    groups = [
        {"params": list(unet.parameters()), "lr": cfg.unet_learning_rate or cfg.learning_rate},
        {"params": list(te.parameters()), "lr": _text_encoder_lr(cfg)},
    ]
    averaged: torch.nn.Module | None = None
    on_step = None
    if cfg.use_ema:
        from diffusers.training_utils import EMAModel

        # the EMA copy is a module of its own: checkpointed (ema.safetensors) and restored
        # in place; its parameters "require grad" only so that checkpoints hold them
        averaged = _pair(copy.deepcopy(unet), copy.deepcopy(te))
        averaged.requires_grad_(True)
        ema = EMAModel(list(averaged.parameters()), decay=cfg.ema_decay)
        ema.shadow_params = list(averaged.parameters())  # update the copy itself

        def on_step(step: int) -> None:
            live = run.accelerator.unwrap_model(model)
            ema.optimization_step = step - 1  # the decay's warm-up, right after a resume too
            ema.step([*live.unet.parameters(), *live.text_encoder.parameters()])

    def result() -> torch.nn.Module:
        return averaged if averaged is not None else run.accelerator.unwrap_model(model)

    data = CacheDataset(run.cache, ("latents", "embedding"), random_flip=cfg.random_flip)
    outcome = run.train(
        "generator",
        model=model,
        params=groups,
        dataset=data,
        loss_fn=_loss_fn(run),
        validate=_validator(run, result, lambda: _info(run, enc, 0)),
        progress=progress,
        on_step=on_step,
        extra_models={"ema": averaged} if averaged is not None else None,
    )
    out = run.output_dir
    info = _info(run, enc, outcome.steps)

    def save() -> None:
        final = result()
        final.eval()
        parts = {**run.parts, "unet": final.unet, "text_encoder": final.text_encoder}
        parts.pop("analyzer", None)
        save_generator(out, parts, info, identity_bank=_bank(run), dtype=cfg.save_dtype)

    return run.finish(
        outcome,
        weights=out,
        metadata=out / GENERATOR_CONFIG_NAME,
        save=save,
        extras={"encoder_id": str(run.cache.encoder_id), "identity_dim": int(run.cache.dim or 0)},
    )
