"""``facegen train adapter``: an IP-Adapter-FaceID-style identity adapter for any encoder.

What is trained (the UNet, VAE and text encoder stay frozen) is exactly what diffusers'
``load_ip_adapter`` builds from an IP-Adapter-FaceID checkpoint, so the trained weights behave
the same when loaded back:

* the projection (``IPAdapterFaceIDImageProjection``, the published ``MLPProjModel``): an
  identity vector ``(D,)`` → ``Linear(D, 2D)`` → GELU → ``Linear(2D, K·C)`` → ``K`` tokens of
  width ``C`` (the UNet's cross-attention size), LayerNorm'd;
* decoupled cross-attention: ``to_k_ip`` / ``to_v_ip`` ``(hidden, C)`` in every
  cross-attention layer (initialised from the layer's own ``to_k`` / ``to_v``, as the
  IP-Adapter authors do), whose output is added to the text attention's;
* optionally (``lora_rank``) a LoRA on every attention projection, as FaceID ships one.

The identity vectors come from any registered encoder (:data:`facegen.backends.ENCODERS`;
the offline default is dlib's 128-D ResNet). Conditioning is dropped at random
(``id_drop_prob``: a zero identity, FaceID's negative; ``text_drop_prob``: the empty prompt)
so classifier-free guidance works at inference.

Output (``output_dir``): ``ip-adapter-faceid_<encoder>.safetensors`` with ``image_proj.*`` and
``ip_adapter.*`` keys in IP-Adapter-FaceID's published layout (diffusers:
``pipe.load_ip_adapter(output_dir, subfolder=None, weight_name=..., image_encoder_folder=None)``),
and facegen's adapter ``config.json`` (encoder id, dimension, normalisation, tokens, LoRA,
base model, training config), so
``IPAdapterFaceID.from_pretrained(output_dir, pipe)`` loads it with the right identity checks
and :class:`~facegen.pipelines.generation.id_text_to_face.IDTextToFacePipeline` generates from that
encoder's embeddings. Plus checkpoints, the face cache, validation images and logs.
"""

from __future__ import annotations

import logging
import re
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
)
from facegen.training.resume import holds_output_folder

__all__ = [
    "AdapterTrainConfig",
    "export_faceid_state_dict",
    "init_faceid_state_dict",
    "train_adapter",
]

logger = logging.getLogger(__name__)

#: PEFT name diffusers gives the LoRA inside a FaceID checkpoint (``faceid_<i>``).
_LORA_NAME = "faceid_0"
_LORA_PROJ = ("to_q", "to_k", "to_v", "to_out")


@dataclass(kw_only=True)
class AdapterTrainConfig(TrainConfig):
    """:class:`~facegen.training.diffusion.loop.TrainConfig` plus the adapter's own settings.

    ``encoder`` (default ``"dlib"``) / ``encoder_options``: the identity encoder the adapter
    is for. ``num_tokens`` (``K``, FaceID: 4), ``lora_rank`` (None = no LoRA; FaceID: 128).
    ``prompt``: the text for photos without a caption (``use_captions`` uses captions when
    present). ``id_drop_prob`` / ``text_drop_prob``: conditioning dropout.
    ``validation_prompt``, ``random_flip``; ``weight_name`` (None =
    ``ip-adapter-faceid_<encoder id>.safetensors``).
    """

    base_model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    num_tokens: int = 4
    lora_rank: int | None = None
    prompt: str = "a photo of a person"
    use_captions: bool = True
    id_drop_prob: float = 0.05
    text_drop_prob: float = 0.05
    random_flip: bool = False
    validation_prompt: str = "a photo of a person"
    weight_name: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.num_tokens, bool) or not isinstance(self.num_tokens, int):
            raise InvalidArgumentError(f"`num_tokens` must be an integer, got {self.num_tokens!r}")
        if self.num_tokens < 1:
            raise InvalidArgumentError(f"`num_tokens` must be >= 1, got {self.num_tokens}")
        if self.lora_rank is not None and (
            isinstance(self.lora_rank, bool)
            or not isinstance(self.lora_rank, int)
            or self.lora_rank < 1
        ):
            raise InvalidArgumentError(
                f"`lora_rank` must be a positive integer or None, got {self.lora_rank!r}"
            )
        for name in ("id_drop_prob", "text_drop_prob"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise InvalidArgumentError(f"`{name}` must be in [0, 1), got {v!r}")
        if self.weight_name is not None and (
            Path(self.weight_name).name != self.weight_name
            or not self.weight_name.endswith(".safetensors")
        ):
            raise InvalidArgumentError(
                f"`weight_name` must be a file name ending in .safetensors, got {self.weight_name!r}"
            )

    @property
    def template(self) -> str:
        return self.crop_template or "ffhq"


def _slug(encoder_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", encoder_id).strip("-").lower() or "encoder"


def _module_of(unet: Any, processor_name: str) -> Any:
    return unet.get_submodule(processor_name.removesuffix(".processor"))


def init_faceid_state_dict(
    unet: Any, id_dim: int, *, num_tokens: int = 4, lora_rank: int | None = None
) -> dict[str, dict[str, Any]]:
    """A fresh FaceID checkpoint for ``unet`` in the published layout (float32, CPU).

    Projection: PyTorch's default ``nn.Linear`` init, LayerNorm (1, 0). ``to_k_ip`` /
    ``to_v_ip``: copies of each cross-attention layer's ``to_k`` / ``to_v`` (the IP-Adapter
    authors' init). LoRA: ``down`` ~ N(0, 1/rank), ``up`` = 0, so it starts as a no-op.
    Uses the global torch RNG (seed it first).
    """
    import torch
    from torch import nn

    from facegen.adapters.faceid_format import attention_layers, faceid_layout

    c = int(unet.config.cross_attention_dim)
    lin0, lin2 = nn.Linear(id_dim, 2 * id_dim), nn.Linear(2 * id_dim, num_tokens * c)
    proj = {
        "proj.0.weight": lin0.weight.data,
        "proj.0.bias": lin0.bias.data,
        "proj.2.weight": lin2.weight.data,
        "proj.2.bias": lin2.bias.data,
        "norm.weight": torch.ones(c),
        "norm.bias": torch.zeros(c),
    }
    ip: dict[str, Any] = {}
    layout = faceid_layout(unet, num_tokens=num_tokens, lora_rank=lora_rank, id_dim=id_dim)
    for layer in attention_layers(unet):
        attn = _module_of(unet, layer.name)
        i = layer.index
        if layer.is_cross:
            ip[f"{i}.to_k_ip.weight"] = attn.to_k.weight.detach().float().cpu().clone()
            ip[f"{i}.to_v_ip.weight"] = attn.to_v.weight.detach().float().cpu().clone()
        if lora_rank is not None:
            for p in _LORA_PROJ:
                down = layout["ip_adapter"][f"{i}.{p}_lora.down.weight"]
                up = layout["ip_adapter"][f"{i}.{p}_lora.up.weight"]
                ip[f"{i}.{p}_lora.down.weight"] = torch.randn(down) / lora_rank
                ip[f"{i}.{p}_lora.up.weight"] = torch.zeros(up)
    return {"image_proj": {k: v.clone().contiguous() for k, v in proj.items()}, "ip_adapter": ip}


def _projection(unet: Any) -> Any:
    from diffusers.models.embeddings import IPAdapterFaceIDImageProjection

    proj = getattr(unet, "encoder_hid_proj", None)
    layers = getattr(proj, "image_projection_layers", None)
    if not layers or not isinstance(layers[0], IPAdapterFaceIDImageProjection):
        raise InvalidArgumentError("`unet` must have a FaceID adapter loaded (load_ip_adapter)")
    return layers[0]


def _trainable(unet: Any) -> list[tuple[str, Any]]:
    """(name, parameter) of the adapter inside ``unet``: projection, to_k_ip/to_v_ip, LoRA."""
    names = {id(p) for p in _projection(unet).parameters()}
    for proc in unet.attn_processors.values():
        for mod in (getattr(proc, "to_k_ip", None), getattr(proc, "to_v_ip", None)):
            if mod is not None:
                names.update(id(p) for p in mod.parameters())
    return [
        (n, p)
        for n, p in unet.named_parameters()
        if id(p) in names or (f".{_LORA_NAME}." in n and ".lora_" in n)
    ]


def export_faceid_state_dict(unet: Any) -> dict[str, dict[str, Any]]:
    """The adapter inside ``unet`` in IP-Adapter-FaceID's published layout (float32, CPU).

    The inverse of diffusers' conversion: ``ff.net.0.proj`` → ``proj.0``, ``ff.net.2`` →
    ``proj.2``; processor ``i``'s ``to_k_ip[0]`` → ``{i}.to_k_ip.weight``; the ``faceid_0``
    LoRA's ``lora_A`` / ``lora_B`` (times its scale) → ``{i}.to_*_lora.down`` / ``up``.
    """
    from facegen.adapters.faceid_format import attention_layers

    def t(x: Any) -> Any:
        return x.detach().float().cpu().contiguous().clone()

    proj: dict[str, Any] = {}
    for k, v in _projection(unet).state_dict().items():
        key = k.replace("ff.net.0.proj.", "proj.0.").replace("ff.net.2.", "proj.2.")
        proj[key] = t(v)
    processors = unet.attn_processors
    ip: dict[str, Any] = {}
    for layer in attention_layers(unet):
        i, proc = layer.index, processors[layer.name]
        if layer.is_cross:
            ip[f"{i}.to_k_ip.weight"] = t(proc.to_k_ip[0].weight)
            ip[f"{i}.to_v_ip.weight"] = t(proc.to_v_ip[0].weight)
        attn = _module_of(unet, layer.name)
        mods = {"to_q": attn.to_q, "to_k": attn.to_k, "to_v": attn.to_v, "to_out": attn.to_out[0]}
        for p, mod in mods.items():
            lora_a = getattr(mod, "lora_A", None)
            if lora_a is None or _LORA_NAME not in lora_a:
                continue
            scale = float(mod.scaling[_LORA_NAME])
            ip[f"{i}.{p}_lora.down.weight"] = t(lora_a[_LORA_NAME].weight)
            ip[f"{i}.{p}_lora.up.weight"] = t(mod.lora_B[_LORA_NAME].weight * scale)
    return {"image_proj": proj, "ip_adapter": ip}


@holds_output_folder("adapter")
def train_adapter(
    config: AdapterTrainConfig,
    *,
    components: dict[str, Any] | None = None,
    progress: bool | ProgressCallback | None = None,
) -> TrainResult:
    """Train an identity adapter for ``config.encoder``; see the module docstring.

    ``components``: ``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler`` (and
    optionally ``analyzer``) instead of loading ``config.base_model``. They are changed in place
    (moved to the device, frozen, half precision under mixed precision, the trained modules
    added); pass copies to keep the originals. ``progress``: as in
    :func:`facegen.training.diffusion.loop.run_training`. ``weights`` of the result is the
    ``.safetensors`` file; ``metadata`` the adapter's ``config.json``.
    """
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from facegen.adapters.base import write_adapter_config
    from facegen.adapters.faceid_format import save_faceid_weights
    from facegen.adapters.ip_adapter_faceid import IPAdapterFaceID

    cfg = config
    if not isinstance(cfg, AdapterTrainConfig):
        raise InvalidArgumentError(
            f"`config` must be an AdapterTrainConfig, got {type(cfg).__name__}"
        )
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
    analyzer = parts.get("analyzer") or build_analyzer(
        cfg, detector=("dlib", {}), encoder=("dlib", {})
    )
    cache = prepare_face_cache(
        cfg, accelerator, analyzer=analyzer, vae=vae, template=cfg.template, flip=cfg.random_flip
    )
    cache.require("embeddings")
    encoder_id, dim = str(cache.encoder_id), int(cache.dim or 0)
    if dtype != torch.float32:
        unet.to(dtype=dtype)
        text_encoder.to(dtype=dtype)

    # the adapter, installed by diffusers' own loader (same modules as at inference)
    state = init_faceid_state_dict(unet, dim, num_tokens=cfg.num_tokens, lora_rank=cfg.lora_rank)
    holder = StableDiffusionPipeline(
        **{k: parts[k] for k in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    holder.load_ip_adapter(state, subfolder=None, weight_name=None, image_encoder_folder=None)
    unet.requires_grad_(False)
    named = _trainable(unet)
    for _, p in named:
        p.data = p.data.float()
        p.requires_grad_(True)
    params = [p for _, p in named]
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()

    noise_scheduler = DDPMScheduler.from_config(parts["scheduler"].config)
    prompts = PromptEncoder(text_encoder, parts["tokenizer"])
    data = CacheDataset(
        cache,
        ("latents", "embedding", "caption"),
        random_flip=cfg.random_flip,
        default_caption=cfg.prompt,
    )

    def loss_fn(model: Any, batch: dict[str, Any]) -> Any:
        latents = sample_latents(batch, random_flip=cfg.random_flip).to(device, dtype)
        ids = batch["embedding"].to(device, torch.float32)
        n = ids.shape[0]
        keep_id = (torch.rand(n) >= cfg.id_drop_prob).to(device)
        ids = ids * keep_id[:, None]
        texts = list(batch["caption"]) if cfg.use_captions else [cfg.prompt] * n
        drop_text = (torch.rand(n) < cfg.text_drop_prob).tolist()
        texts = ["" if d else s for s, d in zip(texts, drop_text)]
        cond = prompts(texts, device, dtype)
        noisy, t, target = noisy_latents(noise_scheduler, latents, cfg.noise_offset)
        pred = model(
            noisy, t, cond, added_cond_kwargs={"image_embeds": [ids[:, None].to(dtype)]}
        ).sample
        return diffusion_loss(pred, target, t, noise_scheduler, cfg.snr_gamma).mean()

    def adapter_object() -> Any:
        return IPAdapterFaceID(
            encoder_ids=(encoder_id,),
            identity_dim=dim,
            normalized=cache.normalized,
            device=device,
            dtype=dtype,
        )

    def validate(step: int) -> list[Any]:
        from facegen.pipelines.generation.id_text_to_face import IDTextToFacePipeline

        model = accelerator.unwrap_model(unet)
        model.eval()
        pipe = IDTextToFacePipeline(**{**holder.components, "unet": model})
        pipe.set_progress_bar_config(disable=True)
        pipe.faceid = adapter_object()
        ids = cache.identity_embeddings()[: cfg.num_validation_images]
        with torch.no_grad(), inference_precision(accelerator, unet, text_encoder):
            return pipe(
                ids,
                prompt=cfg.validation_prompt,
                seeds=[cfg.seed + i for i in range(len(ids))],
                num_inference_steps=cfg.validation_inference_steps,
                height=cfg.resolution,
                width=cfg.resolution,
            ).images

    outcome = run_training(
        cfg,
        accelerator,
        model=unet,
        params=params,
        dataset=data,
        loss_fn=loss_fn,
        validate=validate,
        progress=progress,
        name="adapter",
    )

    out = Path(cfg.output_dir)
    weight_name = cfg.weight_name or f"ip-adapter-faceid_{_slug(encoder_id)}.safetensors"
    weights = out / weight_name
    meta_path = out / "config.json"
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(unet)
        save_faceid_weights(export_faceid_state_dict(final), weights)
        write_adapter_config(
            out,
            adapter_object(),
            variant="faceid",
            weights=weight_name,
            num_tokens=cfg.num_tokens,
            lora=cfg.lora_rank is not None,
            lora_rank=cfg.lora_rank,
            base_model=cfg.base_model,
            encoder={
                "name": cfg.encoder or "dlib",
                "options": cfg.encoder_options,
                "encoder_id": encoder_id,
            },
            crop_template=cfg.template,
            resolution=cfg.resolution,
            steps=outcome.steps,
            training=cfg.to_dict(),
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
        extras={"encoder_id": encoder_id, "identity_dim": dim},
    )
