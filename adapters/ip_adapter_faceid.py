"""IP-Adapter-FaceID for SD1.5 in its published format, loaded through diffusers' own hooks.

IP-Adapter-FaceID (Ye et al., tencent-ailab/IP-Adapter; weights ``h94/IP-Adapter-FaceID``)
projects an insightface ``buffalo_l`` ArcFace vector (``w600k_r50``, L2-normalised, 512-D) to
4 image tokens that a second key/value pair in every cross-attention layer attends to, and
ships a rank-128 LoRA on all attention projections that improves identity consistency.
PlusV2 adds CLIP ViT-H/14 features of the 224×224 ArcFace-aligned face crop, resampled by a
perceiver into the same 4 tokens and added to the ID tokens (``shortcut``, ``s_scale``).

Published files (``h94/IP-Adapter-FaceID``):

* ``ip-adapter-faceid_sd15.bin`` / ``ip-adapter-faceid-plusv2_sd15.bin``: a torch pickle
  ``{"image_proj": {...}, "ip_adapter": {...}}`` (read here with ``weights_only=True``);
* ``ip-adapter-faceid_sd15_lora.safetensors`` / ``…-plusv2_sd15_lora.safetensors``: the same
  LoRA as the one inside the ``.bin`` (the maintainers converted it, tencent-ailab/IP-Adapter
  issue #326), in kohya form ``lora_unet_<module>_{to_q,to_k,to_v,to_out_0}.lora_{down,up}
  .weight`` without ``.alpha`` (scale 1, like the training-time ``LoRALinearLayer``).

The state-dict layout, checked against diffusers' conversion code
(``UNet2DConditionLoadersMixin._convert_ip_adapter_image_proj_to_diffusers`` /
``_convert_ip_adapter_attn_to_diffusers`` / ``_load_ip_adapter_loras`` in
``diffusers/loaders/unet.py``), for a UNet with cross-attention size ``C`` (768 for SD1.5):

``image_proj`` (FaceID, ``MLPProjModel``; diffusers ``IPAdapterFaceIDImageProjection``)
    ``proj.0.weight (1024, 512)``, ``proj.0.bias (1024,)``, ``proj.2.weight (4·C, 1024)``,
    ``proj.2.bias (4·C,)``, ``norm.weight (C,)``, ``norm.bias (C,)``.
``image_proj`` (PlusV2, ``ProjPlusModel``; diffusers ``IPAdapterFaceIDPlusImageProjection``)
    the six keys above plus ``perceiver_resampler.{proj_in (C, 1280) +bias, proj_out (C, C)
    +bias, norm_out (C,) +bias}`` and for ``l`` in 0..3 ``perceiver_resampler.layers.l.0.
    {norm1, norm2 (C,) +bias, to_q (C, C), to_kv (2·C, C), to_out (C, C)}`` and
    ``layers.l.1.{0 (C,) +bias, 1 (4·C, C), 3 (C, 4·C)}`` (heads = C / 64).
``ip_adapter``
    keys ``"{i}.<name>"`` where ``i`` numbers *every* attention processor in the order of
    ``unet.attn_processors`` (diffusers' order: down blocks, up blocks, then the mid block —
    the order the original code saved them in). Self-attention (``attn1``) sits at even
    ``i``, cross-attention (``attn2``) at odd ``i``. Cross-attention processors hold
    ``to_k_ip.weight`` and ``to_v_ip.weight`` ``(hidden_i, C)``; every processor holds the
    LoRA ``to_{q,k,v,out}_lora.{down (r, in), up (hidden_i, r)}.weight`` with ``r = 128``
    (``in`` = ``C`` for ``to_k``/``to_v`` of cross-attention, else ``hidden_i``). For SD1.5
    that is 32 processors, ``1.to_k_ip.weight (320, 768)`` … ``31.to_k_ip.weight (1280, 768)``.

Usage::

    adapter = load_faceid(pipe)                      # FaceID + its LoRA, through diffusers
    set_identity_scale(pipe, 0.7)
    images = pipe(prompt, ip_adapter_image_embeds=adapter.encode(embedding)).images

Licence: the FaceID weights are for non-commercial research only (insightface's models).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from facegen.adapters.base import IdentityAdapter, IdentityInput, IdentitySpec
from facegen.errors import InvalidImageError, InvalidModelError, MissingDependencyError
from facegen.registry import Registry
from facegen.types import AlignedFace

__all__ = [
    "FACEID_ENCODER_IDS",
    "FACEID_LORA_ADAPTER",
    "FACEID_PLUSV2_SD15_LORA",
    "FACEID_PLUSV2_SD15_WEIGHTS",
    "FACEID_REPO",
    "FACEID_SD15_LORA",
    "FACEID_SD15_WEIGHTS",
    "FACE_CROP_SIZE",
    "IMAGE_ENCODER_REPO",
    "IMAGE_ENCODER_SUBFOLDER",
    "AttentionLayer",
    "FaceIDCheckpoint",
    "IPAdapterFaceID",
    "attention_layers",
    "check_faceid_state_dict",
    "checkpoints",
    "faceid_layout",
    "faceid_lora_to_kohya",
    "faceid_state_dict_for",
    "load_faceid",
    "load_faceid_state_dict",
    "load_image_encoder",
    "save_faceid_lora",
    "save_faceid_weights",
    "set_identity_scale",
]

FACEID_REPO = "h94/IP-Adapter-FaceID"
FACEID_SD15_WEIGHTS = "ip-adapter-faceid_sd15.bin"
FACEID_SD15_LORA = "ip-adapter-faceid_sd15_lora.safetensors"
FACEID_PLUSV2_SD15_WEIGHTS = "ip-adapter-faceid-plusv2_sd15.bin"
FACEID_PLUSV2_SD15_LORA = "ip-adapter-faceid-plusv2_sd15_lora.safetensors"
#: Where IP-Adapter ships CLIP ViT-H/14 (``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` is the same).
IMAGE_ENCODER_REPO = "h94/IP-Adapter"
IMAGE_ENCODER_SUBFOLDER = "models/image_encoder"
#: The embedding space FaceID was trained on: insightface buffalo_l (w600k_r50), normed.
FACEID_ENCODER_IDS = ("arcface-onnx/buffalo_l",)
#: The PEFT adapter name of the FaceID LoRA (the name diffusers' ``load_ip_adapter`` uses).
FACEID_LORA_ADAPTER = "faceid_0"
#: PlusV2's face crop: insightface ``norm_crop(..., image_size=224)`` = ArcFace template at 224.
FACE_CROP_SIZE = 224

Variant = Literal["faceid", "plusv2"]
_VARIANTS = ("faceid", "plusv2")
_LORA_PROJ = ("to_q", "to_k", "to_v", "to_out")
_PERCEIVER_DEPTH = 4
_PERCEIVER_HEAD_DIM = 64
_PERCEIVER_FF_MULT = 4


@dataclass(frozen=True)
class FaceIDCheckpoint:
    """One published IP-Adapter-FaceID checkpoint: its file, preset, kind and LoRA file."""

    weight_name: str
    preset: str
    variant: Variant
    lora_name: str


_CHECKPOINTS: Registry[FaceIDCheckpoint] = Registry("IP-Adapter-FaceID checkpoint")
for _c in (
    FaceIDCheckpoint(FACEID_SD15_WEIGHTS, "ip-adapter-faceid-sd15", "faceid", FACEID_SD15_LORA),
    FaceIDCheckpoint(
        FACEID_PLUSV2_SD15_WEIGHTS,
        "ip-adapter-faceid-plusv2-sd15",
        "plusv2",
        FACEID_PLUSV2_SD15_LORA,
    ),
):
    _CHECKPOINTS.register(_c.weight_name, lambda c=_c: c, description=_c.preset)


def checkpoints() -> list[FaceIDCheckpoint]:
    """The published checkpoints facegen knows, by weight file name."""
    return [e.factory() for e in _CHECKPOINTS]


# --------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionLayer:
    """One attention processor of a UNet as IP-Adapter numbers it."""

    index: int
    name: str
    hidden_size: int
    is_cross: bool


def attention_layers(unet: Any) -> list[AttentionLayer]:
    """Every attention processor of ``unet`` in ``unet.attn_processors`` order.

    ``index`` is the number used in the ``ip_adapter`` keys; ``hidden_size`` follows the rule
    of diffusers' ``_convert_ip_adapter_attn_to_diffusers`` (the block's output channels).
    """
    cfg = unet.config
    out: list[AttentionLayer] = []
    for i, name in enumerate(unet.attn_processors.keys()):
        if name.startswith("mid_block"):
            hidden = cfg.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(cfg.block_out_channels))[int(name.split(".")[1])]
        elif name.startswith("down_blocks"):
            hidden = cfg.block_out_channels[int(name.split(".")[1])]
        else:
            raise InvalidModelError(
                f"`unet` must be a UNet2DConditionModel-style UNet, got attention processor {name!r}"
            )
        is_cross = not name.endswith("attn1.processor") and "motion_modules" not in name
        out.append(AttentionLayer(i, name, int(hidden), is_cross))
    return out


def _check_variant(variant: str) -> Variant:
    if variant not in _VARIANTS:
        raise ValueError(f"`variant` must be one of {', '.join(_VARIANTS)}, got {variant!r}")
    return variant  # type: ignore[return-value]


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    return int(value)


def faceid_layout(
    unet: Any,
    *,
    variant: Variant = "faceid",
    num_tokens: int = 4,
    lora_rank: int | None = 128,
    clip_embeddings_dim: int = 1280,
    id_dim: int = 512,
) -> dict[str, dict[str, tuple[int, ...]]]:
    """Key → shape of a FaceID checkpoint for ``unet`` (see the module docstring).

    ``lora_rank=None`` leaves the LoRA out of ``ip_adapter`` (the published ``.bin`` has it).
    ``clip_embeddings_dim`` is the CLIP image encoder's hidden size (1280 for ViT-H/14; PlusV2).
    """
    variant = _check_variant(variant)
    num_tokens = _positive_int(num_tokens, "num_tokens")
    c = int(unet.config.cross_attention_dim)
    proj: dict[str, tuple[int, ...]] = {
        "proj.0.weight": (2 * id_dim, id_dim),
        "proj.0.bias": (2 * id_dim,),
        "proj.2.weight": (num_tokens * c, 2 * id_dim),
        "proj.2.bias": (num_tokens * c,),
        "norm.weight": (c,),
        "norm.bias": (c,),
    }
    if variant == "plusv2":
        if c % _PERCEIVER_HEAD_DIM:
            raise ValueError(
                f"PlusV2 needs a cross-attention size divisible by {_PERCEIVER_HEAD_DIM}, got {c}"
            )
        pr = "perceiver_resampler."
        ff = _PERCEIVER_FF_MULT * c
        proj.update(
            {
                f"{pr}proj_in.weight": (
                    c,
                    _positive_int(clip_embeddings_dim, "clip_embeddings_dim"),
                ),
                f"{pr}proj_in.bias": (c,),
                f"{pr}proj_out.weight": (c, c),
                f"{pr}proj_out.bias": (c,),
                f"{pr}norm_out.weight": (c,),
                f"{pr}norm_out.bias": (c,),
            }
        )
        for layer in range(_PERCEIVER_DEPTH):
            a, f = f"{pr}layers.{layer}.0.", f"{pr}layers.{layer}.1."
            proj.update(
                {
                    f"{a}norm1.weight": (c,),
                    f"{a}norm1.bias": (c,),
                    f"{a}norm2.weight": (c,),
                    f"{a}norm2.bias": (c,),
                    f"{a}to_q.weight": (c, c),
                    f"{a}to_kv.weight": (2 * c, c),
                    f"{a}to_out.weight": (c, c),
                    f"{f}0.weight": (c,),
                    f"{f}0.bias": (c,),
                    f"{f}1.weight": (ff, c),
                    f"{f}3.weight": (c, ff),
                }
            )
    ip: dict[str, tuple[int, ...]] = {}
    rank = None if lora_rank is None else _positive_int(lora_rank, "lora_rank")
    for layer in attention_layers(unet):
        h, i = layer.hidden_size, layer.index
        if rank is not None:
            kv_in = c if layer.is_cross else h
            for p in _LORA_PROJ:
                fan_in = kv_in if p in ("to_k", "to_v") else h
                ip[f"{i}.{p}_lora.down.weight"] = (rank, fan_in)
                ip[f"{i}.{p}_lora.up.weight"] = (h, rank)
        if layer.is_cross:
            ip[f"{i}.to_k_ip.weight"] = (h, c)
            ip[f"{i}.to_v_ip.weight"] = (h, c)
    return {"image_proj": proj, "ip_adapter": ip}


def faceid_state_dict_for(
    unet: Any,
    seed: int = 0,
    num_tokens: int = 4,
    *,
    variant: Variant = "faceid",
    lora_rank: int | None = 128,
    clip_embeddings_dim: int = 1280,
    dtype: Any = None,
) -> dict[str, dict[str, Any]]:
    """A randomly initialised checkpoint with the published key names and shapes for ``unet``.

    For tests and demos of the plumbing only (random weights carry no identity). Linear
    weights are ``N(0, 1/fan_in)``, biases ``N(0, 0.01)``, LayerNorm weights ``1 + N(0, 0.01)``;
    float32 unless ``dtype`` says otherwise (the published files are float16).
    """
    import torch

    layout = faceid_layout(
        unet,
        variant=variant,
        num_tokens=num_tokens,
        lora_rank=lora_rank,
        clip_embeddings_dim=clip_embeddings_dim,
    )
    gen = torch.Generator().manual_seed(int(seed))
    out: dict[str, dict[str, Any]] = {}
    for part, shapes in layout.items():
        tensors: dict[str, Any] = {}
        for key, shape in shapes.items():
            t = torch.randn(shape, generator=gen)
            if len(shape) == 2:
                t = t / math.sqrt(shape[1])
            elif _is_norm_key(key) and key.endswith(".weight"):
                t = 1.0 + 0.1 * t
            else:
                t = 0.1 * t
            tensors[key] = t.to(dtype) if dtype is not None else t
        out[part] = tensors
    return out


def _is_norm_key(key: str) -> bool:
    return key.startswith(("norm.", "perceiver_resampler.norm_out.")) or any(
        s in key for s in (".norm1.", ".norm2.", ".1.0.")
    )


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------


def _split_parts(state_dict: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    if not isinstance(state_dict, Mapping) or not {"image_proj", "ip_adapter"} <= set(state_dict):
        keys = list(state_dict)[:6] if isinstance(state_dict, Mapping) else type(state_dict)
        raise InvalidModelError(
            f"an IP-Adapter checkpoint must hold 'image_proj' and 'ip_adapter', got {keys}"
        )
    return {
        "image_proj": dict(state_dict["image_proj"]),
        "ip_adapter": dict(state_dict["ip_adapter"]),
    }


def save_faceid_weights(state_dict: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``{"image_proj", "ip_adapter"}`` as the published ``.bin`` or as ``.safetensors``.

    ``.bin``: ``torch.save`` of the nested dict (the published form). ``.safetensors``: flat
    keys ``image_proj.<k>`` / ``ip_adapter.<k>``, the form diffusers' ``load_ip_adapter`` reads.
    """
    import torch

    parts = _split_parts(state_dict)
    out = Path(path)
    if out.suffix not in (".bin", ".safetensors"):
        raise ValueError(f"`path` must end with .bin or .safetensors, got {str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".bin":
        torch.save({k: {n: t.contiguous() for n, t in v.items()} for k, v in parts.items()}, out)
    else:
        from safetensors.torch import save_file

        flat = {f"{part}.{k}": t.contiguous() for part, d in parts.items() for k, t in d.items()}
        save_file(flat, str(out))
    return out


def load_faceid_state_dict(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Read a FaceID checkpoint (``.bin`` with ``weights_only=True``, or ``.safetensors``)."""
    import torch

    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        parts: dict[str, dict[str, Any]] = {"image_proj": {}, "ip_adapter": {}}
        try:
            with safe_open(str(p), framework="pt", device="cpu") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open handles have no __iter__
                    part, _, name = key.partition(".")
                    if part in parts:
                        parts[part][name] = f.get_tensor(key)
        except Exception as exc:
            raise InvalidModelError(f"{p}: not a readable safetensors file ({exc})") from exc
        return parts
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidModelError(
            f"{p}: not a weights-only torch checkpoint; facegen loads .bin files with "
            f"weights_only=True and does not unpickle arbitrary objects ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    return _split_parts(obj)


def _lora_key_parts(key: str) -> tuple[int, str, str] | None:
    """``"5.to_out_lora.up.weight"`` → ``(5, "to_out", "up")``; ``None`` for other keys."""
    idx, _, rest = key.partition(".")
    for p in _LORA_PROJ:
        for d in ("down", "up"):
            if rest == f"{p}_lora.{d}.weight" and idx.isdigit():
                return int(idx), p, d
    return None


def faceid_lora_to_kohya(state_dict: Mapping[str, Any], unet: Any) -> dict[str, Any]:
    """The LoRA inside a FaceID checkpoint in the ``*_lora.safetensors`` (kohya) form.

    ``{i}.to_q_lora.down.weight`` → ``lora_unet_<processor module, "." → "_">_to_q.lora_down
    .weight`` (``to_out`` → ``to_out_0``); no ``.alpha`` keys, as in the published file.
    """
    names = [layer.name for layer in attention_layers(unet)]
    out: dict[str, Any] = {}
    for key, t in _split_parts(state_dict)["ip_adapter"].items():
        parsed = _lora_key_parts(key)
        if parsed is None:
            continue
        i, proj, direction = parsed
        if i >= len(names):
            raise InvalidModelError(
                f"LoRA key {key!r} must index one of the UNet's {len(names)} attention "
                f"processors, got index {i}"
            )
        module = names[i].removesuffix(".processor").replace(".", "_")
        target = "to_out_0" if proj == "to_out" else proj
        out[f"lora_unet_{module}_{target}.lora_{direction}.weight"] = t.contiguous()
    if not out:
        raise InvalidModelError("the checkpoint holds no LoRA keys (`{i}.to_q_lora.down.weight`…)")
    return out


def save_faceid_lora(
    state_dict: Mapping[str, Any], unet: Any, path: str | os.PathLike[str]
) -> Path:
    """Write the checkpoint's LoRA as a kohya ``.safetensors`` (the published ``*_lora`` form)."""
    from safetensors.torch import save_file

    out = Path(path)
    if out.suffix != ".safetensors":
        raise ValueError(f"`path` must end with .safetensors, got {str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(faceid_lora_to_kohya(state_dict, unet), str(out))
    return out


def _has_lora(parts: Mapping[str, Mapping[str, Any]]) -> bool:
    return any(_lora_key_parts(k) is not None for k in parts["ip_adapter"])


def _strip_lora(parts: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        "image_proj": dict(parts["image_proj"]),
        "ip_adapter": {k: v for k, v in parts["ip_adapter"].items() if _lora_key_parts(k) is None},
    }


def check_faceid_state_dict(
    parts: Mapping[str, Mapping[str, Any]], unet: Any, variant: Variant, *, source: str = ""
) -> None:
    """Raise :class:`InvalidModelError` unless ``parts`` has exactly the layout for ``unet``.

    Free hyperparameters (number of tokens, LoRA rank, CLIP width) are read from the file;
    everything else must match key for key and shape for shape.
    """
    where = f"{source}: " if source else ""
    proj, ip = parts["image_proj"], parts["ip_adapter"]
    c = int(unet.config.cross_attention_dim)
    is_plus = "perceiver_resampler.proj_in.weight" in proj
    if is_plus != (variant == "plusv2"):
        kind = "FaceID-Plus (perceiver_resampler.*)" if is_plus else "FaceID (MLP only)"
        raise InvalidModelError(
            f"{where}a {variant!r} checkpoint must hold a "
            f"{'FaceID-Plus' if variant == 'plusv2' else 'FaceID'} image_proj, got a {kind} one"
        )
    for key in ("proj.2.weight", "norm.weight"):
        if key not in proj:
            raise InvalidModelError(
                f"{where}image_proj must contain {key!r}, got {sorted(proj)[:8]}"
            )
    file_c = int(proj["norm.weight"].shape[0])
    if file_c != c:
        raise InvalidModelError(
            f"{where}the checkpoint was trained for cross-attention size {file_c} (SD1.5: 768), "
            f"the UNet's `cross_attention_dim` must match, got {c}"
        )
    rank = None
    for k, t in ip.items():
        if _lora_key_parts(k) is not None and k.endswith("down.weight"):
            rank = int(t.shape[0])
            break
    expected = faceid_layout(
        unet,
        variant=variant,
        num_tokens=max(1, int(proj["proj.2.weight"].shape[0]) // c),
        lora_rank=rank,
        clip_embeddings_dim=int(proj["perceiver_resampler.proj_in.weight"].shape[1])
        if is_plus
        else 1280,
    )
    problems: list[str] = []
    for part, got in (("image_proj", proj), ("ip_adapter", ip)):
        want = expected[part]
        problems += [f"missing {part}.{k} {want[k]}" for k in want if k not in got]
        problems += [f"unexpected {part}.{k}" for k in got if k not in want]
        problems += [
            f"{part}.{k} must be {want[k]}, got {tuple(got[k].shape)}"
            for k in want
            if k in got and tuple(got[k].shape) != want[k]
        ]
    if problems:
        more = f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""
        raise InvalidModelError(
            f"{where}the checkpoint does not match this UNet's IP-Adapter-FaceID layout: "
            + "; ".join(problems[:6])
            + more
        )


# --------------------------------------------------------------------------------------
# Loading into a diffusers pipeline
# --------------------------------------------------------------------------------------


def _unet(pipe: Any) -> Any:
    if not hasattr(pipe, "load_ip_adapter") or getattr(pipe, "unet", None) is None:
        raise ValueError(
            "`pipe` must be a diffusers pipeline with a UNet and IP-Adapter support "
            f"(IPAdapterMixin, e.g. StableDiffusionPipeline), got {type(pipe).__name__}"
        )
    return pipe.unet


def _delete_faceid_lora(pipe: Any) -> None:
    if FACEID_LORA_ADAPTER in (getattr(pipe.unet, "peft_config", None) or {}):
        pipe.delete_adapters(FACEID_LORA_ADAPTER)


def load_image_encoder(
    repo_id: str = IMAGE_ENCODER_REPO,
    subfolder: str | None = IMAGE_ENCODER_SUBFOLDER,
    *,
    local_files_only: bool | None = None,
    torch_dtype: Any = None,
) -> Any:
    """CLIP ViT-H/14 (``CLIPVisionModelWithProjection``) for PlusV2, with facegen's offline rules.

    ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (``subfolder=None``) holds the same weights.
    """
    from transformers import CLIPVisionModelWithProjection

    from facegen.hub import load_pretrained

    kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
    return load_pretrained(
        CLIPVisionModelWithProjection,
        repo_id,
        subfolder,
        local_files_only=local_files_only,
        **kwargs,
    ).eval()


def load_faceid(
    pipe: Any,
    weight_name: str | os.PathLike[str] = FACEID_SD15_WEIGHTS,
    *,
    path: str | os.PathLike[str] | None = None,
    lora: bool = True,
    lora_path: str | os.PathLike[str] | None = None,
    image_encoder: Any = None,
    local_files_only: bool | None = None,
) -> IPAdapterFaceID:
    """Load a FaceID checkpoint into ``pipe`` with ``pipe.load_ip_adapter`` (and its LoRA).

    ``weight_name`` picks the published checkpoint (:func:`checkpoints`); the file is found
    by :func:`facegen.hub.resolve` (``path``: a file or a folder that overrides the lookup),
    read with ``weights_only=True``, checked against the UNet, then handed to diffusers'
    ``load_ip_adapter`` with ``image_encoder_folder=None``. A path to a file with a published
    name may be given as ``weight_name`` itself; a file of another name needs both
    (``weight_name`` says which kind it is).

    ``lora=True``: the LoRA inside the checkpoint is applied by diffusers itself (PEFT
    adapter ``"faceid_0"``); when the checkpoint has none, or ``lora_path`` is given, the
    ``*_lora.safetensors`` file is loaded with ``pipe.load_lora_weights`` under that name
    instead (never both: they are the same LoRA). ``lora=False`` loads the adapter alone.

    PlusV2 needs CLIP ViT-H/14 features of the aligned face: pass ``image_encoder`` (e.g.
    :func:`load_image_encoder`) to use :meth:`IPAdapterFaceID.encode_face_crops`.

    Returns an :class:`IPAdapterFaceID` that makes ``ip_adapter_image_embeds`` for ``pipe``.
    """
    unet = _unet(pipe)
    name = os.fspath(weight_name)
    if path is None and ("/" in name or os.sep in name or Path(name).is_file()):
        path, name = name, Path(name).name
    ckpt = _CHECKPOINTS.create(name)
    if not isinstance(lora, bool):
        raise ValueError(f"`lora` must be True or False, got {lora!r}")
    from facegen.hub import resolve

    weights = resolve(ckpt.preset, ckpt.weight_name, path=path, offline=local_files_only)
    parts = load_faceid_state_dict(weights)
    check_faceid_state_dict(parts, unet, ckpt.variant, source=str(weights))

    embedded = _has_lora(parts)
    lora_file: Path | None = None
    if lora and (lora_path is not None or not embedded):
        if lora_path is None and path is not None:
            folder = Path(path) if Path(path).is_dir() else Path(path).parent
            if (folder / ckpt.lora_name).is_file():
                lora_path = folder  # the LoRA file beside the weights
        lora_file = resolve(ckpt.preset, ckpt.lora_name, path=lora_path, offline=local_files_only)
    if lora:
        from diffusers.utils import USE_PEFT_BACKEND

        if not USE_PEFT_BACKEND:
            raise MissingDependencyError("peft", purpose="the IP-Adapter-FaceID LoRA")
    if not lora or lora_file is not None:
        parts = _strip_lora(parts)

    _delete_faceid_lora(pipe)
    pipe.load_ip_adapter(parts, subfolder=None, weight_name=None, image_encoder_folder=None)
    if lora_file is not None:
        pipe.load_lora_weights(
            str(lora_file.parent), weight_name=lora_file.name, adapter_name=FACEID_LORA_ADAPTER
        )
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    if ckpt.variant == "plusv2":
        projection.shortcut = True  # PlusV2 = Plus + shortcut (model card: shortcut=v2)
        projection.shortcut_scale = 1.0
    return IPAdapterFaceID(
        variant=ckpt.variant,
        image_encoder=image_encoder,
        device=unet.device,
        dtype=unet.dtype,
    )


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    return float(value)


def _faceid_projection(pipe: Any) -> Any:
    from diffusers.models.embeddings import (
        IPAdapterFaceIDImageProjection,
        IPAdapterFaceIDPlusImageProjection,
    )

    proj = getattr(_unet(pipe), "encoder_hid_proj", None)
    layers = getattr(proj, "image_projection_layers", None)
    if not layers or not isinstance(
        layers[0], (IPAdapterFaceIDImageProjection, IPAdapterFaceIDPlusImageProjection)
    ):
        raise ValueError("`pipe` must have an IP-Adapter-FaceID loaded (call load_faceid first)")
    return layers[0]


def set_identity_scale(pipe: Any, scale: float, *, lora_scale: float | None = None) -> None:
    """Set the identity strength: the IP-Adapter attention scale (``set_ip_adapter_scale``).

    ``0`` switches the identity tokens off (diffusers skips them), ``1`` is the trained
    strength. ``lora_scale`` (optional) scales the FaceID LoRA alone, leaving other LoRAs as
    they are; ``scale=0, lora_scale=0`` gives the base model's output.
    """
    _faceid_projection(pipe)
    pipe.set_ip_adapter_scale(_finite(scale, "scale"))
    if lora_scale is None:
        return
    weight = _finite(lora_scale, "lora_scale")
    if FACEID_LORA_ADAPTER not in (getattr(pipe.unet, "peft_config", None) or {}):
        raise ValueError(
            "`lora_scale` needs the FaceID LoRA, got a pipeline without it "
            "(load it with load_faceid(..., lora=True))"
        )
    from peft.tuners.lora import LoraLayer

    for module in pipe.unet.modules():
        if isinstance(module, LoraLayer):
            module.set_scale(FACEID_LORA_ADAPTER, weight)


# --------------------------------------------------------------------------------------
# The adapter: identity → ip_adapter_image_embeds
# --------------------------------------------------------------------------------------


class IPAdapterFaceID(IdentityAdapter):
    """Makes the ``ip_adapter_image_embeds`` diffusers' FaceID path expects.

    ``encode(id_embeds)`` takes buffalo_l ArcFace embeddings (``arcface-onnx/buffalo_l``,
    normalised, 512-D) or raw ``(R, 512)`` vectors (normalised here) and returns a one-item
    list (one IP-Adapter) of float ``(2·n, R, 512)`` tensors: the zero (unconditional) half
    first, then the identity, as ``prepare_ip_adapter_image_embeds`` builds them. ``R`` > 1
    vectors are several reference photos of *one* person (each adds 4 tokens, diffusers'
    multi-image FaceID usage); generate different people with separate calls.

    PlusV2 also needs :meth:`encode_face_crops` + :meth:`set_clip_embeds` before each call.
    """

    output_form = "ip_adapter_image_embeds"

    def __init__(
        self,
        *,
        variant: Variant = "faceid",
        image_encoder: Any = None,
        image_processor: Any = None,
        encoder_ids: tuple[str, ...] = FACEID_ENCODER_IDS,
        device: Any = "cpu",
        dtype: Any = None,
    ) -> None:
        import torch

        self.variant = _check_variant(variant)
        self.identity = IdentitySpec(tuple(encoder_ids), dim=512, normalized=True)
        self.image_encoder = image_encoder
        self._image_processor = image_processor
        self.device = torch.device(device)
        self.dtype = dtype if dtype is not None else torch.float32

    def encode(
        self,
        id_embeds: IdentityInput,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        **_: Any,
    ) -> list[Any]:
        """``[tensor (2·n, R, 512)]`` (``(n, R, 512)`` without CFG), negative (zeros) first.

        Pass the default ``num_images_per_prompt=1`` result as the pipeline's
        ``ip_adapter_image_embeds`` and give the pipeline its own ``num_images_per_prompt``
        (it repeats the embeddings itself). ``n > 1`` returns the already-expanded form that
        ``prepare_ip_adapter_image_embeds`` hands the UNet, for custom denoising loops.
        """
        import torch

        n = _positive_int(num_images_per_prompt, "num_images_per_prompt")
        if not isinstance(do_classifier_free_guidance, bool):
            raise ValueError(
                f"`do_classifier_free_guidance` must be True or False, got {do_classifier_free_guidance!r}"
            )
        vecs = self.identity.prepare(id_embeds, adapter="IP-Adapter-FaceID")
        pos = vecs[None].repeat(n, 1, 1)
        out = torch.cat([torch.zeros_like(pos), pos]) if do_classifier_free_guidance else pos
        return [out.to(self.device, self.dtype)]

    @property
    def image_processor(self) -> Any:
        if self._image_processor is None:
            from transformers import CLIPImageProcessor

            size = int(self._require_encoder().config.image_size)
            self._image_processor = CLIPImageProcessor(size=size, crop_size=size)
        return self._image_processor

    def _require_encoder(self) -> Any:
        if self.variant != "plusv2":
            raise ValueError(f"face crops are used by the 'plusv2' variant, got {self.variant!r}")
        if self.image_encoder is None:
            raise ValueError(
                "`image_encoder` must be a CLIPVisionModelWithProjection (CLIP ViT-H/14, see "
                "load_image_encoder) for PlusV2, got None"
            )
        return self.image_encoder

    def encode_face_crops(
        self,
        face_crops: Any,
        num_images: int = 1,
        do_classifier_free_guidance: bool = True,
    ) -> Any:
        """CLIP features of aligned face crops: float ``(2·num_images, R, T, hidden)``.

        ``face_crops``: ``R`` crops of one person, each an :class:`AlignedFace` with the
        ``arcface`` template (``align_face(image, face, size=224)``, insightface's
        ``norm_crop(..., image_size=224)``) or an RGB uint8 ``(H, W, 3)`` array / PIL image
        of such a crop. The penultimate hidden states of the image encoder (``T`` = 257 for
        ViT-H/14) for the crops, and for an all-zero pixel tensor as the negative half, as
        diffusers' ``encode_image(..., output_hidden_states=True)`` computes them.
        ``num_images``: images per pipeline call (prompts × ``num_images_per_prompt``).
        """
        import torch

        encoder = self._require_encoder()
        n = _positive_int(num_images, "num_images")
        crops = _face_crop_list(face_crops)
        pixels = self.image_processor(images=crops, return_tensors="pt").pixel_values
        dtype = next(encoder.parameters()).dtype
        pixels = pixels.to(encoder.device, dtype)
        with torch.inference_mode():
            pos = encoder(pixels, output_hidden_states=True).hidden_states[-2]
            neg = encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        pos = pos[None].repeat(n, 1, 1, 1)
        neg = neg[None].repeat(n, 1, 1, 1)
        out = torch.cat([neg, pos]) if do_classifier_free_guidance else pos
        return out.to(self.device, self.dtype)

    def set_clip_embeds(self, pipe: Any, clip_embeds: Any, *, shortcut_scale: float = 1.0) -> None:
        """Hand PlusV2's face-structure features to ``pipe`` for its next calls.

        ``clip_embeds``: :meth:`encode_face_crops` output, sized for the pipeline call's batch.
        ``shortcut_scale`` is the published ``s_scale`` (weight of the CLIP branch, 1.0).
        """
        from diffusers.models.embeddings import IPAdapterFaceIDPlusImageProjection

        proj = _faceid_projection(pipe)
        if not isinstance(proj, IPAdapterFaceIDPlusImageProjection):
            raise ValueError("`pipe` must have a FaceID-PlusV2 checkpoint loaded, got plain FaceID")
        if getattr(clip_embeds, "ndim", None) != 4:
            raise ValueError(
                "`clip_embeds` must be a (batch, R, tokens, hidden) tensor from encode_face_crops, "
                f"got {getattr(clip_embeds, 'shape', type(clip_embeds))}"
            )
        width = proj.proj_in.in_features
        if clip_embeds.shape[-1] != width:
            raise ValueError(
                f"`clip_embeds` must have hidden size {width} (the checkpoint's CLIP width), "
                f"got {clip_embeds.shape[-1]}"
            )
        proj.clip_embeds = clip_embeds.to(pipe.unet.device, pipe.unet.dtype)
        proj.shortcut = True
        proj.shortcut_scale = _finite(shortcut_scale, "shortcut_scale")


def _face_crop_list(face_crops: Any) -> list[Any]:
    from PIL import Image

    items: Sequence[Any] = (
        list(face_crops) if isinstance(face_crops, (list, tuple)) else [face_crops]
    )
    if not items:
        raise InvalidImageError("`face_crops` must hold at least one aligned face crop, got none")
    out: list[Any] = []
    for i, item in enumerate(items):
        if isinstance(item, AlignedFace):
            if item.template != "arcface":
                raise InvalidImageError(
                    f"`face_crops[{i}]` must be aligned with the 'arcface' template (as "
                    f"insightface's norm_crop), got {item.template!r}"
                )
            item = item.image
        if isinstance(item, Image.Image):
            item = np.asarray(item.convert("RGB"))
        arr = np.asarray(item)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise InvalidImageError(
                f"`face_crops[{i}]` must be an RGB uint8 (H, W, 3) crop, got {arr.dtype} {arr.shape}"
            )
        out.append(arr)
    return out
