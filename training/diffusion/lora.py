"""``facegen train lora``: DreamBooth-LoRA personalisation on photos of one person.

A LoRA (peft, ``unet.add_adapter(LoraConfig(...))``) on the UNet's attention projections
learns one person from a handful of photos; the UNet, VAE and text encoder stay frozen.
Two conditionings:

``"prompt"`` (SD1.5-style bases)
    DreamBooth: every photo is trained with ``instance_prompt`` (e.g. ``"a photo of sks
    person"``; ``use_captions`` takes a photo's caption instead when it has one). At
    inference, put the trigger in the prompt.
``"arc2face"`` (the Arc2Face base)
    the person's identity is the condition: the mean of the photos' ArcFace embeddings (or
    each photo's own, ``identity="per_image"``) through Arc2Face's ID encoder gives the
    ``prompt_embeds``. At inference pass the same identity (saved as ``identity.safetensors``)
    to :class:`~facegen.pipelines.generation.id_to_face.IDToFacePipeline`.

Prior preservation (``with_prior_preservation``) adds a class loss on other people: class
images from ``class_data_dir``, topped up to ``num_class_images`` by the base model itself
(``class_prompt``; for Arc2Face, random identities, stored with the images as
``identities.safetensors``; see :mod:`facegen.training.diffusion.class_images`).

Output (``output_dir``): ``pytorch_lora_weights.safetensors`` in diffusers' LoRA format
(peft keys, the ``LoraConfig`` in the file's metadata), so ``pipe.load_lora_weights(output_dir)``
and :func:`facegen.adapters.lora.load_lora` read it; ``facegen_lora.json`` (base model,
conditioning, rank, alpha, target modules, trigger, steps, identity encoder, the training
config); ``identity.safetensors`` (the person's mean embedding, when the photos were embedded);
plus checkpoints, the face cache, validation images and logs (see
:mod:`facegen.training.diffusion.loop`). :data:`LORA_RESULT_FILES` names the files a user
keeps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facegen.adapters.lora import DEFAULT_LORA_WEIGHT_NAME
from facegen.compat import enable_checkpointing
from facegen.errors import InvalidArgumentError
from facegen.training.diffusion.class_images import (
    ClassImages,
    PairedDataset,
    base_pipeline,
    class_image_cache,
)
from facegen.training.diffusion.components import (
    TrainingRun,
    check_config,
    prepare_run,
    write_metadata,
)
from facegen.training.diffusion.config import (
    CONDITIONINGS,
    ConditionedTrainConfig,
    ProgressCallback,
    TrainResult,
)
from facegen.training.diffusion.face_cache import CacheDataset, FaceCache, sample_latents
from facegen.training.diffusion.objective import PromptTokens, diffusion_loss, noisy_latents
from facegen.training.resume import holds_output_folder
from facegen.validate import check_choice, check_int, check_number

if TYPE_CHECKING:
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
    from PIL import Image
    from transformers import CLIPTextModel

    from facegen.training.diffusion.loop import LoopOutcome
    from facegen.types import IdentityEmbedding

__all__ = [
    "CONDITIONINGS",
    "LORA_METADATA_NAME",
    "LORA_RESULT_FILES",
    "LORA_WEIGHTS_NAME",
    "LoraTrainConfig",
    "train_lora",
]

logger = logging.getLogger(__name__)

#: The LoRA file, in diffusers' format (the name ``load_lora_weights`` looks for).
LORA_WEIGHTS_NAME = DEFAULT_LORA_WEIGHT_NAME
#: facegen's metadata next to it.
LORA_METADATA_NAME = "facegen_lora.json"
#: The person's mean identity embedding (when the photos were embedded).
IDENTITY_NAME = "identity.safetensors"
#: The files a LoRA run leaves for its users (the rest: checkpoints, caches, logs).
LORA_RESULT_FILES = (LORA_WEIGHTS_NAME, LORA_METADATA_NAME, IDENTITY_NAME)
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
#: CLIP's attention projections, what diffusers' DreamBooth-LoRA script adapts.
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _module_names(value: tuple[str, ...], name: str) -> tuple[str, ...]:
    names = tuple(value)
    if not names or not all(isinstance(t, str) and t for t in names):
        raise InvalidArgumentError(f"`{name}` must be non-empty module names, got {names!r}")
    return names


@dataclass(kw_only=True)
class LoraTrainConfig(ConditionedTrainConfig):
    """:class:`~facegen.training.diffusion.config.ConditionedTrainConfig` plus the LoRA's own
    settings.

    ``conditioning``: ``"prompt"`` or ``"arc2face"`` (None: ``"arc2face"`` for
    ``base_model="arc2face"``, else ``"prompt"``). ``instance_prompt`` (the trigger),
    ``use_captions``; ``identity`` (``"mean"`` or ``"per_image"``, Arc2Face). ``rank``,
    ``alpha`` (None = ``rank``, scale 1), ``target_modules``, ``lora_dropout``.
    Prior preservation: ``with_prior_preservation``, ``prior_loss_weight``, ``class_data_dir``
    (default ``output_dir/class_images``), ``class_prompt``, ``num_class_images``.
    ``random_flip`` mirrors photos at random; ``validation_prompt`` (None = the instance
    prompt). ``train_text_encoder`` also puts a LoRA (same rank and alpha) on the CLIP text
    encoder's attention projections (``text_encoder_target_modules``), as diffusers'
    DreamBooth-LoRA script does; prompt conditioning only. Both parts go into the one LoRA
    file, which ``load_lora_weights`` reads.
    """

    base_model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    instance_prompt: str = "a photo of sks person"
    use_captions: bool = False
    identity: str = "mean"
    rank: int = 4
    alpha: float | None = None
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    lora_dropout: float = 0.0
    with_prior_preservation: bool = False
    prior_loss_weight: float = 1.0
    class_data_dir: str | None = None
    class_prompt: str = "a photo of a person"
    num_class_images: int = 100
    random_flip: bool = False
    validation_prompt: str | None = None
    learning_rate: float = 1e-4
    train_text_encoder: bool = False
    text_encoder_target_modules: tuple[str, ...] = TEXT_ENCODER_TARGETS

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.identity, "identity", ("mean", "per_image"))
        for name in ("instance_prompt", "class_prompt"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip():
                raise InvalidArgumentError(f"`{name}` must be a non-empty string, got {v!r}")
        check_int(self.rank, "rank", minimum=1)
        if self.alpha is not None:
            check_number(self.alpha, "alpha", minimum=0, min_open=True)
        self.target_modules = _module_names(self.target_modules, "target_modules")
        if not isinstance(self.train_text_encoder, bool):
            raise InvalidArgumentError(
                f"`train_text_encoder` must be true or false, got {self.train_text_encoder!r}"
            )
        if self.train_text_encoder and self.conditioning != "prompt":
            raise InvalidArgumentError(
                "`train_text_encoder` must be false with conditioning "
                f"{self.conditioning!r}: only prompt conditioning runs the text encoder while "
                "training (Arc2Face's identity conditioning is computed once, frozen)"
            )
        self.text_encoder_target_modules = _module_names(
            self.text_encoder_target_modules, "text_encoder_target_modules"
        )
        check_number(self.lora_dropout, "lora_dropout", minimum=0, maximum=1, max_open=True)
        check_number(self.prior_loss_weight, "prior_loss_weight", minimum=0)
        check_int(self.num_class_images, "num_class_images")
        if self.with_prior_preservation and self.num_class_images < 1:
            raise InvalidArgumentError(
                "`num_class_images` must be >= 1 with prior preservation, "
                f"got {self.num_class_images}"
            )

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def class_path(self) -> Path:
        return Path(self.class_data_dir or Path(self.output_dir) / "class_images")


def _text_model(unet: UNet2DConditionModel, text_encoder: CLIPTextModel) -> torch.nn.Module:
    """One module holding the UNet and the text encoder, so that Accelerate prepares,
    checkpoints and (multi-GPU) synchronises both; ``forward(noisy, t, input_ids)`` encodes
    the tokens with gradients and runs the UNet."""
    import torch

    class UNetWithTextEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = unet
            self.text_encoder = text_encoder

        def forward(
            self, noisy: torch.Tensor, t: torch.Tensor, input_ids: torch.Tensor
        ) -> UNet2DConditionOutput:
            cond = self.text_encoder(input_ids)[0].to(noisy.dtype)
            return self.unet(noisy, t, cond)

    return UNetWithTextEncoder()


def _identity_outliers(cache: FaceCache, threshold: float | None) -> list[dict[str, Any]]:
    """Faces unlike the others: the median cosine to the other faces is below the encoder's
    same-person threshold. Logged as a warning (a wrong photo teaches a wrong face)."""
    if threshold is None or not cache.has("embeddings") or len(cache) < 2:
        return []
    vecs = np.stack([e.normalize().vector for e in cache.identity_embeddings()])
    sims = vecs @ vecs.T
    out = []
    for i, item in enumerate(cache.items):
        med = float(np.median(np.delete(sims[i], i)))
        if med < threshold:
            out.append(
                {"source": item.source, "face": item.face, "median_similarity": round(med, 4)}
            )
    if out:
        logger.warning(
            "%d of %d faces look like someone else than the other photos (median cosine to "
            "them < %.3g, the encoder's same-person threshold): %s",
            len(out),
            len(cache),
            threshold,
            ", ".join(o["source"] for o in out[:5]),
        )
    return out


# --------------------------------------------------------------------------- training


def _add_loras(
    run: TrainingRun[LoraTrainConfig],
) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
    """Put the LoRA on the UNet (and on the text encoder with ``train_text_encoder``); the
    model to train and its trainable parameters (float32 under mixed precision)."""
    import torch
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    from facegen.adapters.peft_compat import add_lora_adapter

    cfg, unet, text_encoder = run.cfg, run.unet, run.text_encoder

    def lora(targets: tuple[str, ...]) -> LoraConfig:
        return LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            init_lora_weights="gaussian",
            target_modules=list(targets),
        )

    unet.add_adapter(lora(cfg.target_modules))
    trained: list[torch.nn.Module] = [unet]
    if cfg.train_text_encoder:
        # peft's own API: transformers' add_adapter refuses some released peft versions
        add_lora_adapter(text_encoder, lora(cfg.text_encoder_target_modules))
        trained.append(text_encoder)
    if cfg.mixed_precision != "no":
        cast_training_params(trained, dtype=torch.float32)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            enable_checkpointing(text_encoder)
    params = [p for p in unet.parameters() if p.requires_grad]
    if not params:
        raise InvalidArgumentError(
            f"`target_modules` {list(cfg.target_modules)} matched no layer of the UNet"
        )
    te_params = [p for p in text_encoder.parameters() if p.requires_grad]
    if cfg.train_text_encoder and not te_params:
        raise InvalidArgumentError(
            f"`text_encoder_target_modules` {list(cfg.text_encoder_target_modules)} matched "
            "no layer of the text encoder"
        )
    model = _text_model(unet, text_encoder) if cfg.train_text_encoder else unet
    return model, params + te_params


class _Objective:
    """DreamBooth's loss on the photos, plus ``prior_loss_weight`` times the loss on the class
    images (:meth:`add_classes`).

    The UNet's condition: for Arc2Face, ``prompt_embeds`` computed once from the identities
    (the text encoder is frozen; this also refuses embeddings of another encoder before any
    class image is made); for prompts, their embeddings, or their ``input_ids`` when the
    text encoder trains (the model encodes them).
    """

    def __init__(
        self, run: TrainingRun[LoraTrainConfig], identity: IdentityEmbedding | None
    ) -> None:
        self.run, self.cfg = run, run.cfg
        self.device, self.dtype = run.device, run.dtype
        self.tokens = PromptTokens(run.tokenizer)
        self.tables: dict[str, torch.Tensor] = {}  # "" / "class_" → Arc2Face prompt_embeds
        self.with_classes = False
        self.id_encoder = None
        if self.cfg.arc2face:
            from facegen.adapters.arc2face import Arc2FaceIDEncoder

            run.cache.require("embeddings")
            self.id_encoder = Arc2FaceIDEncoder(run.text_encoder, run.tokenizer)
            ids = [identity] if self.cfg.identity == "mean" else run.cache.identity_embeddings()
            self.tables[""] = self.id_encoder.encode(ids).clone()

    def add_classes(self, klass: FaceCache) -> None:
        """Train on (photo, class image) pairs from now on."""
        self.with_classes = True
        if self.id_encoder is not None:
            self.tables["class_"] = self.id_encoder.encode(klass.identity_embeddings()).clone()

    def condition(self, batch: dict[str, Any], prefix: str) -> torch.Tensor:
        """``prompt_embeds`` (B, 77, C), or the prompts' ``input_ids`` (B, 77) when the
        text encoder trains; ``prefix`` ``"class_"`` for the class half of the batch."""
        import torch

        cfg = self.cfg
        n = len(batch[f"{prefix}index"])
        if cfg.arc2face:
            table = self.tables[prefix]
            if table.shape[0] == 1:
                return table.expand(n, -1, -1).to(self.device, self.dtype)
            return table[torch.as_tensor(batch[f"{prefix}index"])].to(self.device, self.dtype)
        if prefix:
            texts = [cfg.class_prompt] * n
        elif cfg.use_captions:
            texts = list(batch["caption"])
        else:
            texts = [cfg.instance_prompt] * n
        if cfg.train_text_encoder:
            return self.tokens(texts, self.device)
        return self.run.prompts(texts, self.device, self.dtype)

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        import torch

        cfg, scheduler = self.cfg, self.run.noise_scheduler
        latents = sample_latents(batch, random_flip=cfg.random_flip).to(self.device, self.dtype)
        cond = self.condition(batch, "")
        if self.with_classes:
            klat = sample_latents({k[6:]: v for k, v in batch.items() if k.startswith("class_")})
            latents = torch.cat([latents, klat.to(self.device, self.dtype)])
            cond = torch.cat([cond, self.condition(batch, "class_")])
        noisy, t, target = noisy_latents(scheduler, latents, cfg.noise_offset)
        pred = model(noisy, t, cond).sample
        per = diffusion_loss(pred, target, t, scheduler, cfg.snr_gamma)
        if not self.with_classes:
            return per.mean()
        half = per.shape[0] // 2
        return per[:half].mean() + cfg.prior_loss_weight * per[half:].mean()


def _validator(
    run: TrainingRun[LoraTrainConfig], model: torch.nn.Module, identity: IdentityEmbedding | None
) -> Callable[[int], list[Image.Image]]:
    """``validate(step)``: the person (Arc2Face) or the validation prompt, one seed each."""
    cfg = run.cfg

    def validate(step: int) -> list[Image.Image]:
        import torch

        run.accelerator.unwrap_model(model).eval()
        pipe = base_pipeline(run)
        seeds = [cfg.seed + i for i in range(cfg.num_validation_images)]
        size = {"height": cfg.resolution, "width": cfg.resolution}
        steps = cfg.validation_inference_steps
        with torch.no_grad(), run.precision():
            if cfg.arc2face:
                return pipe(
                    id_embeds=[identity],
                    num_images_per_identity=len(seeds),
                    seeds=seeds,
                    num_inference_steps=steps,
                    **size,
                ).images
            gens = [torch.Generator().manual_seed(s) for s in seeds]
            prompt = cfg.validation_prompt or cfg.instance_prompt
            return pipe(
                [prompt] * len(seeds), generator=gens, num_inference_steps=steps, **size
            ).images

    return validate


def _finish(
    run: TrainingRun[LoraTrainConfig],
    outcome: LoopOutcome,
    identity: IdentityEmbedding | None,
    outliers: list[dict[str, Any]],
) -> TrainResult:
    """Write the LoRA, the identity and the metadata (see the module docstring)."""
    from facegen.adapters.lora import save_lora
    from facegen.embedding_io import save_embeddings

    cfg, out, cache = run.cfg, run.output_dir, run.cache
    metadata = out / LORA_METADATA_NAME

    def save() -> None:
        text_encoder = run.text_encoder if cfg.train_text_encoder else None
        save_lora(run.unet, out, weight_name=LORA_WEIGHTS_NAME, text_encoder=text_encoder)
        if identity is not None:
            save_embeddings(out / IDENTITY_NAME, [identity], names=["instance"])
        write_metadata(
            metadata,
            {
                **run.record(outcome.steps),
                "format": "facegen-lora",
                "weights": LORA_WEIGHTS_NAME,
                "conditioning": cfg.conditioning,
                "rank": cfg.rank,
                "alpha": cfg.lora_alpha,
                "target_modules": list(cfg.target_modules),
                "text_encoder_target_modules": (
                    list(cfg.text_encoder_target_modules) if cfg.train_text_encoder else None
                ),
                "trigger": cfg.instance_prompt if not cfg.arc2face else None,
                "class_prompt": cfg.class_prompt if cfg.with_prior_preservation else None,
                "prior_preservation": cfg.with_prior_preservation,
                "num_faces": len(cache),
                "identity_encoder": {
                    "encoder_id": cache.encoder_id,
                    "dim": cache.dim,
                    "normalized": cache.normalized,
                },
                "identity": IDENTITY_NAME if identity is not None else None,
                "identity_outliers": outliers,
                "seed": cfg.seed,
            },
        )

    return run.finish(
        outcome,
        weights=out / LORA_WEIGHTS_NAME,
        metadata=metadata,
        save=save,
        extras={"identity": identity},
    )


@holds_output_folder("lora")
def train_lora(
    config: LoraTrainConfig,
    *,
    components: dict[str, Any] | None = None,
    progress: bool | ProgressCallback | None = None,
) -> TrainResult:
    """Train a personalisation LoRA; see the module docstring for what is written.

    ``components`` (injected base-model components, changed in place: pass copies to keep
    the originals) and ``progress``: see :func:`.components.prepare_run` and
    :func:`.loop.run_training`. Returns a :class:`TrainResult` whose ``weights`` is the LoRA
    file and ``extras["identity"]`` the person's mean embedding.
    """
    cfg = check_config(config, LoraTrainConfig)
    run = prepare_run(cfg, components, flip=cfg.random_flip)
    cache = run.cache
    identity = cache.mean_identity() if cache.has("embeddings") else None
    threshold = getattr(run.analyzer.encoder, "same_person_threshold", None)
    outliers = _identity_outliers(cache, threshold)
    objective = _Objective(run, identity)
    classes = ClassImages(cfg.class_path, cfg.num_class_images, cfg.class_prompt)
    klass = class_image_cache(run, classes) if cfg.with_prior_preservation else None
    if klass is not None:
        objective.add_classes(klass)
    model, params = _add_loras(run)
    fields = ("latents", "caption", "index")
    data: CacheDataset | PairedDataset = CacheDataset(
        cache, fields, random_flip=cfg.random_flip, default_caption=cfg.instance_prompt
    )
    if klass is not None:
        data = PairedDataset(data, CacheDataset(klass, fields, default_caption=cfg.class_prompt))
    outcome = run.train(
        "lora",
        model=model,
        params=params,
        dataset=data,
        loss_fn=objective.loss,
        validate=_validator(run, model, identity),
        progress=progress,
    )
    return _finish(run, outcome, identity, outliers)
