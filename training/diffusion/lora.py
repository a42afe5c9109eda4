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
``identities.safetensors``).

Output (``output_dir``): ``pytorch_lora_weights.safetensors`` in diffusers' LoRA format
(peft keys, the ``LoraConfig`` in the file's metadata), so ``pipe.load_lora_weights(output_dir)``
and :func:`facegen.adapters.lora.load_lora` read it; ``facegen_lora.json`` (base model,
conditioning, rank, alpha, target modules, trigger, steps, identity encoder, the training
config); ``identity.safetensors`` (the person's mean embedding, when the photos were embedded);
plus checkpoints, the face cache, validation images and logs (see
:mod:`facegen.training.diffusion.loop`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facegen.errors import InvalidArgumentError
from facegen.training.diffusion.face_cache import CacheDataset, FaceCache, sample_latents
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
from facegen.training.diffusion.objective import PromptTokens
from facegen.training.resume import holds_output_folder

__all__ = [
    "CONDITIONINGS",
    "LORA_METADATA_NAME",
    "LORA_WEIGHTS_NAME",
    "LoraTrainConfig",
    "train_lora",
]

logger = logging.getLogger(__name__)

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
LORA_METADATA_NAME = "facegen_lora.json"
IDENTITY_NAME = "identity.safetensors"
CLASS_IDENTITIES_NAME = "identities.safetensors"
CONDITIONINGS = ("prompt", "arc2face")
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
#: CLIP's attention projections, what diffusers' DreamBooth-LoRA script adapts.
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
#: Face analysis each conditioning needs (the encoder the model was trained on).
ANALYZERS: dict[str, tuple[tuple[str, dict[str, Any]], tuple[str, dict[str, Any]]]] = {
    "prompt": (("dlib", {}), ("dlib", {})),
    "arc2face": (
        ("insightface", {"preset": "antelopev2"}),
        ("arcface-onnx", {"preset": "arc2face-arcface"}),
    ),
}


def default_conditioning(base_model: str) -> str:
    """``"arc2face"`` for the Arc2Face base, ``"prompt"`` for everything else."""
    return "arc2face" if base_model == "arc2face" else "prompt"


@dataclass(kw_only=True)
class LoraTrainConfig(TrainConfig):
    """:class:`~facegen.training.diffusion.loop.TrainConfig` plus the LoRA's own settings.

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
    conditioning: str | None = None
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
        if self.conditioning is None:
            self.conditioning = default_conditioning(self.base_model)
        if self.conditioning not in CONDITIONINGS:
            raise InvalidArgumentError(
                f"`conditioning` must be one of {', '.join(CONDITIONINGS)}, got {self.conditioning!r}"
            )
        if self.identity not in ("mean", "per_image"):
            raise InvalidArgumentError(
                f"`identity` must be 'mean' or 'per_image', got {self.identity!r}"
            )
        for name in ("instance_prompt", "class_prompt"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip():
                raise InvalidArgumentError(f"`{name}` must be a non-empty string, got {v!r}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise InvalidArgumentError(f"`rank` must be a positive integer, got {self.rank!r}")
        if self.alpha is not None and (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, (int, float))
            or not self.alpha > 0
        ):
            raise InvalidArgumentError(f"`alpha` must be a number > 0 or None, got {self.alpha!r}")
        self.target_modules = tuple(self.target_modules)
        if not self.target_modules or not all(
            isinstance(t, str) and t for t in self.target_modules
        ):
            raise InvalidArgumentError(
                f"`target_modules` must be non-empty module names, got {self.target_modules!r}"
            )
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
        self.text_encoder_target_modules = tuple(self.text_encoder_target_modules)
        if not self.text_encoder_target_modules or not all(
            isinstance(t, str) and t for t in self.text_encoder_target_modules
        ):
            raise InvalidArgumentError(
                "`text_encoder_target_modules` must be non-empty module names, got "
                f"{self.text_encoder_target_modules!r}"
            )
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise InvalidArgumentError(
                f"`lora_dropout` must be in [0, 1), got {self.lora_dropout!r}"
            )
        if not float(self.prior_loss_weight) >= 0:
            raise InvalidArgumentError(
                f"`prior_loss_weight` must be >= 0, got {self.prior_loss_weight!r}"
            )
        if isinstance(self.num_class_images, bool) or not isinstance(self.num_class_images, int):
            raise InvalidArgumentError(
                f"`num_class_images` must be an integer, got {self.num_class_images!r}"
            )
        if self.with_prior_preservation and self.num_class_images < 1:
            raise InvalidArgumentError(
                f"`num_class_images` must be >= 1 with prior preservation, got {self.num_class_images}"
            )

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def template(self) -> str:
        if self.crop_template is not None:
            return self.crop_template
        return "arcface" if self.conditioning == "arc2face" else "ffhq"

    @property
    def class_path(self) -> Path:
        return Path(self.class_data_dir or Path(self.output_dir) / "class_images")


class _Paired:
    """Instance item ``i % n`` with class item ``i % m`` (keys ``class_*``), DreamBooth-style."""

    def __init__(self, instance: CacheDataset, klass: CacheDataset) -> None:
        self.instance, self.klass = instance, klass

    def __len__(self) -> int:
        return max(len(self.instance), len(self.klass))

    def __getitem__(self, i: int) -> dict[str, Any]:
        out = dict(self.instance[i % len(self.instance)])
        out.update({f"class_{k}": v for k, v in self.klass[i % len(self.klass)].items()})
        return out


def _text_model(unet: Any, text_encoder: Any) -> Any:
    """One module holding the UNet and the text encoder, so that Accelerate prepares,
    checkpoints and (multi-GPU) synchronises both; ``forward(noisy, t, input_ids)`` encodes
    the tokens with gradients and runs the UNet."""
    import torch

    class UNetWithTextEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = unet
            self.text_encoder = text_encoder

        def forward(self, noisy: Any, t: Any, input_ids: Any) -> Any:
            cond = self.text_encoder(input_ids)[0].to(noisy.dtype)
            return self.unet(noisy, t, cond)

    return UNetWithTextEncoder()


# --------------------------------------------------------------------------- class images


def _sd_pipeline(parts: dict[str, Any], conditioning: str) -> Any:
    from diffusers import StableDiffusionPipeline

    from facegen.pipelines.generation.id_to_face import IDToFacePipeline

    cls = IDToFacePipeline if conditioning == "arc2face" else StableDiffusionPipeline
    pipe = cls(
        **{k: parts[k] for k in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate_class_images(
    cfg: LoraTrainConfig, parts: dict[str, Any], folder: Path, precision: Callable[[], Any]
) -> None:
    """Top ``folder`` up to ``num_class_images`` images made by the base model (each call
    inside ``precision()``, a context manager)."""
    import torch

    from facegen.embedding_io import load_embeddings, save_embeddings
    from facegen.image_io import find_images
    from facegen.types import IdentityEmbedding

    folder.mkdir(parents=True, exist_ok=True)
    have = find_images([folder])
    todo = cfg.num_class_images - len(have)
    if todo <= 0:
        return
    arc = cfg.conditioning == "arc2face"
    if arc and have and not (folder / CLASS_IDENTITIES_NAME).is_file():
        raise InvalidArgumentError(
            f"{folder} holds class images without {CLASS_IDENTITIES_NAME}; for Arc2Face, "
            "generated class images need their identities: empty the folder or fill it yourself"
        )
    logger.info("generating %d class images in %s", todo, folder)
    pipe = _sd_pipeline(parts, cfg.conditioning or "prompt")
    embs: list[IdentityEmbedding] = []
    names: list[str] = []
    if arc and (folder / CLASS_IDENTITIES_NAME).is_file():
        embs, names = load_embeddings(folder / CLASS_IDENTITIES_NAME)
    rng = np.random.default_rng(cfg.seed + 1)
    start = len(have)
    for k in range(todo):
        i = start + k
        gen = torch.Generator().manual_seed(cfg.seed + 1000 + i)
        size = {"height": cfg.resolution, "width": cfg.resolution}
        steps = cfg.validation_inference_steps
        if arc:
            v = rng.standard_normal(512).astype(np.float32)
            emb = IdentityEmbedding(v / np.linalg.norm(v), "arcface-onnx/arc2face")
            with precision():
                out = pipe(id_embeds=[emb], generator=gen, num_inference_steps=steps, **size)
            embs.append(emb)
        else:
            with precision():
                out = pipe(cfg.class_prompt, generator=gen, num_inference_steps=steps, **size)
        image = out.images[0]
        name = f"class-{i:05d}.png"
        image.save(folder / name)
        names.append(name)
    if arc:
        save_embeddings(folder / CLASS_IDENTITIES_NAME, embs, names=names)


def _class_cache(
    cfg: LoraTrainConfig, parts: dict[str, Any], analyzer: Any, precision: Callable[[], Any]
) -> FaceCache:
    import torch

    from facegen.embedding_io import load_embeddings
    from facegen.training.diffusion.face_cache import (
        build_face_cache,
        build_image_cache,
        list_photos,
    )

    folder = cfg.class_path
    with torch.no_grad():
        _generate_class_images(cfg, parts, folder, precision)
    cache_dir = Path(cfg.output_dir) / "class_cache"
    if cfg.conditioning != "arc2face":
        return build_image_cache(folder, cache_dir, size=cfg.resolution, vae=parts["vae"])
    ids = folder / CLASS_IDENTITIES_NAME
    if not ids.is_file():  # class photos of real people: analyse them like the instance photos
        return build_face_cache(
            folder,
            cache_dir,
            analyzer=analyzer,
            size=cfg.resolution,
            template=cfg.template,  # type: ignore[arg-type]
            margin=cfg.crop_margin,
            vae=parts["vae"],
        )
    embs, names = load_embeddings(ids)
    by_name = dict(zip(names, embs))
    paths = list_photos(folder)
    missing = [p.name for p in paths if p.name not in by_name]
    if missing:
        raise InvalidArgumentError(
            f"{ids} must name every class image, got none for {', '.join(missing[:3])}"
        )
    return build_image_cache(
        paths,
        cache_dir,
        size=cfg.resolution,
        vae=parts["vae"],
        embeddings=[by_name[p.name] for p in paths],
    )


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


@holds_output_folder("lora")
def train_lora(
    config: LoraTrainConfig,
    *,
    components: dict[str, Any] | None = None,
    progress: bool | ProgressCallback | None = None,
) -> TrainResult:
    """Train a personalisation LoRA; see the module docstring for what is written.

    ``components``: ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler`` (and
    optionally ``analyzer``, a :class:`~facegen.analyzer.FaceAnalyzer`) to use instead of
    loading ``config.base_model``. They are changed in place (moved to the device, frozen, half
    precision under mixed precision, the trained modules added); pass copies to keep the
    originals. ``progress``: None/True = tqdm bar, False = quiet, or a ``progress(step, total,
    logs)`` callback. Returns a :class:`TrainResult` whose ``weights`` is the LoRA file and
    ``extras["identity"]`` the person's mean embedding.
    """
    import torch
    from diffusers import DDPMScheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    from facegen.adapters.arc2face import Arc2FaceIDEncoder
    from facegen.adapters.lora import save_lora
    from facegen.adapters.peft_compat import add_lora_adapter
    from facegen.embedding_io import save_embeddings

    cfg = config
    if not isinstance(cfg, LoraTrainConfig):
        raise InvalidArgumentError(f"`config` must be a LoraTrainConfig, got {type(cfg).__name__}")
    accelerator = make_accelerator(cfg)
    parts = (
        check_components(components)
        if components is not None
        else load_components(
            cfg.base_model, revision=cfg.revision, local_files_only=cfg.local_files_only
        )
    )
    unet, vae, text_encoder = parts["unet"], parts["vae"], parts["text_encoder"]
    device, dtype = accelerator.device, weight_dtype(accelerator)
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False)
        m.to(device)
    if dtype != torch.float32:  # frozen weights in half precision; the VAE only caches
        unet.to(dtype=dtype)
        text_encoder.to(dtype=dtype)
    analyzer = parts.get("analyzer")
    if analyzer is None:
        det, enc = ANALYZERS[cfg.conditioning or "prompt"]
        analyzer = build_analyzer(cfg, detector=det, encoder=enc)
    cache = prepare_face_cache(
        cfg, accelerator, analyzer=analyzer, vae=vae, template=cfg.template, flip=cfg.random_flip
    )
    identity = cache.mean_identity() if cache.has("embeddings") else None
    outliers = _identity_outliers(cache, getattr(analyzer.encoder, "same_person_threshold", None))
    arc = cfg.conditioning == "arc2face"
    # the conditioning of every example, computed once (the text encoder is frozen); Arc2Face
    # refuses embeddings of another encoder here, before any class image is made
    prompts = PromptEncoder(text_encoder, parts["tokenizer"])
    id_encoder = inst_embeds = cls_embeds = None
    if arc:
        cache.require("embeddings")
        id_encoder = Arc2FaceIDEncoder(text_encoder, parts["tokenizer"])
        ids = [identity] if cfg.identity == "mean" else cache.identity_embeddings()
        inst_embeds = id_encoder.encode(ids).clone()
    klass: FaceCache | None = None
    if cfg.with_prior_preservation:
        if accelerator.is_main_process:
            klass = _class_cache(
                cfg, parts, analyzer, lambda: inference_precision(accelerator, unet, text_encoder)
            )
        accelerator.wait_for_everyone()
        klass = FaceCache(Path(cfg.output_dir) / "class_cache")

    if id_encoder is not None and klass is not None:
        cls_embeds = id_encoder.encode(klass.identity_embeddings()).clone()

    unet.add_adapter(
        LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            init_lora_weights="gaussian",
            target_modules=list(cfg.target_modules),
        )
    )
    trained = [unet]
    if cfg.train_text_encoder:
        # peft's own API: transformers' add_adapter refuses some released peft versions
        add_lora_adapter(
            text_encoder,
            LoraConfig(
                r=cfg.rank,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                init_lora_weights="gaussian",
                target_modules=list(cfg.text_encoder_target_modules),
            ),
        )
        trained.append(text_encoder)
    if cfg.mixed_precision != "no":
        cast_training_params(trained, dtype=torch.float32)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()
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
    params += te_params
    tokens = PromptTokens(parts["tokenizer"])
    model = _text_model(unet, text_encoder) if cfg.train_text_encoder else unet
    noise_scheduler = DDPMScheduler.from_config(parts["scheduler"].config)
    fields = ("latents", "caption", "index")
    data: Any = CacheDataset(
        cache, fields, random_flip=cfg.random_flip, default_caption=cfg.instance_prompt
    )
    if klass is not None:
        data = _Paired(data, CacheDataset(klass, fields, default_caption=cfg.class_prompt))

    def condition(batch: dict[str, Any], prefix: str) -> Any:
        """``prompt_embeds`` (B, 77, C), or the prompts' ``input_ids`` (B, 77) when the
        text encoder trains (the model encodes them)."""
        n = len(batch[f"{prefix}index"])
        if arc:
            table = inst_embeds if not prefix else cls_embeds
            if table.shape[0] == 1:
                return table.expand(n, -1, -1).to(device, dtype)
            return table[torch.as_tensor(batch[f"{prefix}index"])].to(device, dtype)
        if prefix:
            texts = [cfg.class_prompt] * n
        elif cfg.use_captions:
            texts = list(batch["caption"])
        else:
            texts = [cfg.instance_prompt] * n
        if cfg.train_text_encoder:
            return tokens(texts, device)
        return prompts(texts, device, dtype)

    def loss_fn(model: Any, batch: dict[str, Any]) -> Any:
        latents = sample_latents(batch, random_flip=cfg.random_flip).to(device, dtype)
        cond = condition(batch, "")
        if klass is not None:
            klat = sample_latents({k[6:]: v for k, v in batch.items() if k.startswith("class_")})
            latents = torch.cat([latents, klat.to(device, dtype)])
            cond = torch.cat([cond, condition(batch, "class_")])
        noisy, t, target = noisy_latents(noise_scheduler, latents, cfg.noise_offset)
        pred = model(noisy, t, cond).sample
        per = diffusion_loss(pred, target, t, noise_scheduler, cfg.snr_gamma)
        if klass is None:
            return per.mean()
        half = per.shape[0] // 2
        return per[:half].mean() + cfg.prior_loss_weight * per[half:].mean()

    def validate(step: int) -> list[Any]:
        accelerator.unwrap_model(model).eval()
        pipe = _sd_pipeline(parts, cfg.conditioning or "prompt")
        seeds = [cfg.seed + i for i in range(cfg.num_validation_images)]
        size = {"height": cfg.resolution, "width": cfg.resolution}
        steps = cfg.validation_inference_steps
        with torch.no_grad(), inference_precision(accelerator, unet, text_encoder):
            if arc:
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

    outcome = run_training(
        cfg,
        accelerator,
        model=model,
        params=params,
        dataset=data,
        loss_fn=loss_fn,
        validate=validate,
        progress=progress,
        name="lora",
    )

    out = Path(cfg.output_dir)
    weights = out / LORA_WEIGHTS_NAME
    meta_path = out / "facegen_lora.json"
    if accelerator.is_main_process:
        save_lora(
            unet,
            out,
            weight_name=LORA_WEIGHTS_NAME,
            text_encoder=text_encoder if cfg.train_text_encoder else None,
        )
        if identity is not None:
            save_embeddings(out / IDENTITY_NAME, [identity], names=["instance"])
        write_json(
            meta_path,
            {
                "format": "facegen-lora",
                "weights": LORA_WEIGHTS_NAME,
                "base_model": cfg.base_model,
                "conditioning": cfg.conditioning,
                "rank": cfg.rank,
                "alpha": cfg.lora_alpha,
                "target_modules": list(cfg.target_modules),
                "text_encoder_target_modules": (
                    list(cfg.text_encoder_target_modules) if cfg.train_text_encoder else None
                ),
                "trigger": cfg.instance_prompt if not arc else None,
                "class_prompt": cfg.class_prompt if cfg.with_prior_preservation else None,
                "prior_preservation": cfg.with_prior_preservation,
                "steps": outcome.steps,
                "resolution": cfg.resolution,
                "crop_template": cfg.template,
                "num_faces": len(cache),
                "identity_encoder": {
                    "encoder_id": cache.encoder_id,
                    "dim": cache.dim,
                    "normalized": cache.normalized,
                },
                "identity": IDENTITY_NAME if identity is not None else None,
                "identity_outliers": outliers,
                "seed": cfg.seed,
                "training": cfg.to_dict(),
            },
        )
    accelerator.wait_for_everyone()
    return TrainResult(
        output_dir=out,
        weights=weights,
        metadata=meta_path,
        start_step=outcome.start_step,
        steps=outcome.steps,
        losses=outcome.losses,
        checkpoints=outcome.checkpoints,
        validation_images=outcome.validation_images,
        extras={"identity": identity},
    )
