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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facegen.errors import InvalidArgumentError
from facegen.training.diffusion.components import TrainingRun, check_config, prepare_run
from facegen.training.diffusion.config import ProgressCallback, TrainConfig, TrainResult
from facegen.training.diffusion.face_cache import CacheDataset, sample_latents
from facegen.training.diffusion.objective import diffusion_loss, noisy_latents
from facegen.training.resume import holds_output_folder
from facegen.validate import check_int, check_number

if TYPE_CHECKING:
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import Attention
    from diffusers.models.embeddings import IPAdapterFaceIDImageProjection
    from PIL import Image

    from facegen.adapters.ip_adapter_faceid import IPAdapterFaceID
    from facegen.training.diffusion.loop import LoopOutcome

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
    """:class:`~facegen.training.diffusion.config.TrainConfig` plus the adapter's own settings.

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
        check_int(self.num_tokens, "num_tokens", minimum=1)
        if self.lora_rank is not None:
            check_int(self.lora_rank, "lora_rank", minimum=1)
        for name in ("id_drop_prob", "text_drop_prob"):
            check_number(getattr(self, name), name, minimum=0, maximum=1, max_open=True)
        if self.weight_name is not None and (
            Path(self.weight_name).name != self.weight_name
            or not self.weight_name.endswith(".safetensors")
        ):
            raise InvalidArgumentError(
                f"`weight_name` must be a file name ending in .safetensors, got {self.weight_name!r}"
            )


def _slug(encoder_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", encoder_id).strip("-").lower() or "encoder"


def _module_of(unet: UNet2DConditionModel, processor_name: str) -> Attention:
    return unet.get_submodule(processor_name.removesuffix(".processor"))


def init_faceid_state_dict(
    unet: UNet2DConditionModel, id_dim: int, *, num_tokens: int = 4, lora_rank: int | None = None
) -> dict[str, dict[str, torch.Tensor]]:
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
    ip: dict[str, torch.Tensor] = {}
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


def _projection(unet: UNet2DConditionModel) -> IPAdapterFaceIDImageProjection:
    from diffusers.models.embeddings import IPAdapterFaceIDImageProjection

    proj = getattr(unet, "encoder_hid_proj", None)
    layers = getattr(proj, "image_projection_layers", None)
    if not layers or not isinstance(layers[0], IPAdapterFaceIDImageProjection):
        raise InvalidArgumentError("`unet` must have a FaceID adapter loaded (load_ip_adapter)")
    return layers[0]


def _trainable(unet: UNet2DConditionModel) -> list[tuple[str, torch.nn.Parameter]]:
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


def export_faceid_state_dict(unet: UNet2DConditionModel) -> dict[str, dict[str, torch.Tensor]]:
    """The adapter inside ``unet`` in IP-Adapter-FaceID's published layout (float32, CPU).

    The inverse of diffusers' conversion: ``ff.net.0.proj`` → ``proj.0``, ``ff.net.2`` →
    ``proj.2``; processor ``i``'s ``to_k_ip[0]`` → ``{i}.to_k_ip.weight``; the ``faceid_0``
    LoRA's ``lora_A`` / ``lora_B`` (times its scale) → ``{i}.to_*_lora.down`` / ``up``.
    """
    from facegen.adapters.faceid_format import attention_layers

    def t(x: torch.Tensor) -> torch.Tensor:
        return x.detach().float().cpu().contiguous().clone()

    proj: dict[str, torch.Tensor] = {}
    for k, v in _projection(unet).state_dict().items():
        key = k.replace("ff.net.0.proj.", "proj.0.").replace("ff.net.2.", "proj.2.")
        proj[key] = t(v)
    processors = unet.attn_processors
    ip: dict[str, torch.Tensor] = {}
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


def _adapter_object(run: TrainingRun[AdapterTrainConfig]) -> IPAdapterFaceID:
    """The adapter as facegen loads it: for the cache's encoder, dimension and normalisation."""
    from facegen.adapters.ip_adapter_faceid import IPAdapterFaceID

    cache = run.cache
    return IPAdapterFaceID(
        encoder_ids=(str(cache.encoder_id),),
        identity_dim=int(cache.dim or 0),
        normalized=cache.normalized,
        device=run.device,
        dtype=run.dtype,
    )


def _install_adapter(run: TrainingRun[AdapterTrainConfig]) -> list[torch.nn.Parameter]:
    """A fresh adapter installed in the UNet by diffusers' own loader (the same modules as at
    inference); its parameters, float32 and the only ones that train."""
    cfg, unet = run.cfg, run.unet
    state = init_faceid_state_dict(
        unet, int(run.cache.dim or 0), num_tokens=cfg.num_tokens, lora_rank=cfg.lora_rank
    )
    run.pipeline().load_ip_adapter(
        state, subfolder=None, weight_name=None, image_encoder_folder=None
    )
    unet.requires_grad_(False)
    named = _trainable(unet)
    for _, p in named:
        p.data = p.data.float()
        p.requires_grad_(True)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return [p for _, p in named]


def _loss_fn(
    run: TrainingRun[AdapterTrainConfig],
) -> Callable[[torch.nn.Module, dict[str, Any]], torch.Tensor]:
    """The denoising loss with the identity (dropped to zero with ``id_drop_prob``) as the
    adapter's input and the caption or prompt (empty with ``text_drop_prob``) as the text."""
    import torch

    cfg, device, dtype = run.cfg, run.device, run.dtype

    def loss_fn(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        latents = sample_latents(batch, random_flip=cfg.random_flip).to(device, dtype)
        ids = batch["embedding"].to(device, torch.float32)
        n = ids.shape[0]
        keep_id = (torch.rand(n) >= cfg.id_drop_prob).to(device)
        ids = ids * keep_id[:, None]
        texts = list(batch["caption"]) if cfg.use_captions else [cfg.prompt] * n
        drop_text = (torch.rand(n) < cfg.text_drop_prob).tolist()
        texts = ["" if d else s for s, d in zip(texts, drop_text)]
        cond = run.prompts(texts, device, dtype)
        scheduler = run.noise_scheduler
        noisy, t, target = noisy_latents(scheduler, latents, cfg.noise_offset)
        pred = model(
            noisy, t, cond, added_cond_kwargs={"image_embeds": [ids[:, None].to(dtype)]}
        ).sample
        return diffusion_loss(pred, target, t, scheduler, cfg.snr_gamma).mean()

    return loss_fn


def _validator(run: TrainingRun[AdapterTrainConfig]) -> Callable[[int], list[Image.Image]]:
    """``validate(step)``: the first photos' identities with ``validation_prompt``."""
    cfg = run.cfg

    def validate(step: int) -> list[Image.Image]:
        import torch

        from facegen.pipelines.generation.id_text_to_face import IDTextToFacePipeline

        model = run.accelerator.unwrap_model(run.unet)
        model.eval()
        pipe = run.pipeline(IDTextToFacePipeline, unet=model)
        pipe.faceid = _adapter_object(run)
        ids = run.cache.identity_embeddings()[: cfg.num_validation_images]
        with torch.no_grad(), run.precision():
            return pipe(
                ids,
                prompt=cfg.validation_prompt,
                seeds=[cfg.seed + i for i in range(len(ids))],
                num_inference_steps=cfg.validation_inference_steps,
                height=cfg.resolution,
                width=cfg.resolution,
            ).images

    return validate


def _finish(run: TrainingRun[AdapterTrainConfig], outcome: LoopOutcome) -> TrainResult:
    """Write the weights in FaceID's layout and facegen's adapter ``config.json``."""
    from facegen.adapters.base import ADAPTER_CONFIG_NAME, write_adapter_config
    from facegen.adapters.faceid_format import save_faceid_weights

    cfg, out, cache = run.cfg, run.output_dir, run.cache
    encoder_id = str(cache.encoder_id)
    weight_name = cfg.weight_name or f"ip-adapter-faceid_{_slug(encoder_id)}.safetensors"
    weights = out / weight_name

    def save() -> None:
        final = run.accelerator.unwrap_model(run.unet)
        save_faceid_weights(export_faceid_state_dict(final), weights)
        write_adapter_config(
            out,
            _adapter_object(run),
            variant="faceid",
            weights=weight_name,
            num_tokens=cfg.num_tokens,
            lora=cfg.lora_rank is not None,
            lora_rank=cfg.lora_rank,
            encoder={
                "name": cfg.encoder or "dlib",
                "options": cfg.encoder_options,
                "encoder_id": encoder_id,
            },
            **run.record(outcome.steps),
        )

    return run.finish(
        outcome,
        weights=weights,
        metadata=out / ADAPTER_CONFIG_NAME,
        save=save,
        extras={"encoder_id": encoder_id, "identity_dim": int(cache.dim or 0)},
    )


@holds_output_folder("adapter")
def train_adapter(
    config: AdapterTrainConfig,
    *,
    components: dict[str, Any] | None = None,
    progress: bool | ProgressCallback | None = None,
) -> TrainResult:
    """Train an identity adapter for ``config.encoder``; see the module docstring.

    ``components`` (injected base-model components, changed in place: pass copies to keep
    the originals) and ``progress``: see :func:`.components.prepare_run` and
    :func:`.loop.run_training`. ``weights`` of the result is the ``.safetensors`` file;
    ``metadata`` the adapter's ``config.json``.
    """
    cfg = check_config(config, AdapterTrainConfig)
    run = prepare_run(cfg, components, flip=cfg.random_flip, require=("embeddings",))
    params = _install_adapter(run)
    data = CacheDataset(
        run.cache,
        ("latents", "embedding", "caption"),
        random_flip=cfg.random_flip,
        default_caption=cfg.prompt,
    )
    outcome = run.train(
        "adapter",
        model=run.unet,
        params=params,
        dataset=data,
        loss_fn=_loss_fn(run),
        validate=_validator(run),
        progress=progress,
    )
    return _finish(run, outcome)
