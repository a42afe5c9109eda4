"""IP-Adapter-FaceID checkpoints: file names, the published state-dict layout, reading/writing.

Layout facts (checked against diffusers' converters, ``diffusers/loaders/unet.py``): the
``.bin`` holds ``{"image_proj": {...}, "ip_adapter": {...}}``; ``ip_adapter`` numbers the
UNet's attention processors (down blocks, up blocks, then the mid block) with odd keys for
``to_k_ip``/``to_v_ip`` and may embed a LoRA ``{i}.to_{q,k,v,out}_lora.{down,up}.weight``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from facegen.errors import InvalidModelError
from facegen.registry import Registry
from facegen.validate import check_choice, check_int

if TYPE_CHECKING:
    import torch
    from diffusers import UNet2DConditionModel

    #: ``{"image_proj": {key: tensor}, "ip_adapter": {key: tensor}}``, the published layout.
    FaceIDParts = Mapping[str, Mapping[str, torch.Tensor]]

__all__ = [
    "FACEID_ENCODER_IDS",
    "FACEID_LORA_ADAPTER",
    "FACEID_PLUSV2_SD15_LORA",
    "FACEID_PLUSV2_SD15_WEIGHTS",
    "FACEID_REPO",
    "FACEID_SD15_LORA",
    "FACEID_SD15_WEIGHTS",
    "FACE_CROP_CHANNEL_ORDERS",
    "FACE_CROP_SIZE",
    "IMAGE_ENCODER_REPO",
    "IMAGE_ENCODER_SUBFOLDER",
    "VARIANTS",
    "AttentionLayer",
    "FaceCropChannelOrder",
    "FaceIDCheckpoint",
    "attention_layers",
    "check_faceid_state_dict",
    "checkpoints",
    "faceid_identity_dim",
    "faceid_layout",
    "faceid_lora_to_kohya",
    "faceid_state_dict_for",
    "load_faceid_state_dict",
    "save_faceid_lora",
    "save_faceid_weights",
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

FaceCropChannelOrder = Literal["bgr", "rgb"]
#: Channel orders a face crop can reach the CLIP image encoder in. The published PlusV2 usage
#: feeds it **BGR**: the official example (tencent-ailab/IP-Adapter README and the
#: ``h94/IP-Adapter-FaceID`` model card) reads the photo with ``cv2.imread`` and crops it with
#: insightface's ``face_align.norm_crop``, both BGR, and ``IPAdapterFaceIDPlus`` hands that
#: array to ``CLIPImageProcessor`` unchanged (which takes it as RGB); diffusers' IP-Adapter
#: guide does the same (``cv2.cvtColor(np.asarray(image), cv2.COLOR_BGR2RGB)`` on an RGB PIL
#: image, i.e. a swap to BGR, then ``norm_crop`` and ``prepare_ip_adapter_image_embeds``).
#: The training-time order is not published; facegen follows the published inference usage.
FACE_CROP_CHANNEL_ORDERS: tuple[str, ...] = ("bgr", "rgb")

Variant = Literal["faceid", "plusv2"]
#: The checkpoint kinds: plain FaceID (an MLP on the ID vector) and PlusV2 (+ CLIP features).
VARIANTS: tuple[str, ...] = ("faceid", "plusv2")
_LORA_PROJ = ("to_q", "to_k", "to_v", "to_out")
_PERCEIVER_DEPTH = 4
_PERCEIVER_HEAD_DIM = 64
_PERCEIVER_FF_MULT = 4


@dataclass(frozen=True)
class FaceIDCheckpoint:
    """One published IP-Adapter-FaceID checkpoint: its file, preset, kind and LoRA file.

    ``face_crop_channel_order``: the order its face crops reach the CLIP image encoder in
    by default (PlusV2 only; see :data:`FACE_CROP_CHANNEL_ORDERS`).
    """

    weight_name: str
    preset: str
    variant: Variant
    lora_name: str
    face_crop_channel_order: FaceCropChannelOrder = "bgr"


_CHECKPOINTS: Registry[FaceIDCheckpoint] = Registry("IP-Adapter-FaceID checkpoint")
for _c in (
    FaceIDCheckpoint(FACEID_SD15_WEIGHTS, "ip-adapter-faceid-sd15", "faceid", FACEID_SD15_LORA),
    FaceIDCheckpoint(
        FACEID_PLUSV2_SD15_WEIGHTS,
        "ip-adapter-faceid-plusv2-sd15",
        "plusv2",
        FACEID_PLUSV2_SD15_LORA,
        face_crop_channel_order="bgr",  # as the published example feeds it
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


def attention_layers(unet: UNet2DConditionModel) -> list[AttentionLayer]:
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


def faceid_layout(
    unet: UNet2DConditionModel,
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
    check_choice(variant, "variant", VARIANTS)
    num_tokens = check_int(num_tokens, "num_tokens", minimum=1)
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
                    check_int(clip_embeddings_dim, "clip_embeddings_dim", minimum=1),
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
    rank = None if lora_rank is None else check_int(lora_rank, "lora_rank", minimum=1)
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
    unet: UNet2DConditionModel,
    seed: int = 0,
    num_tokens: int = 4,
    *,
    variant: Variant = "faceid",
    lora_rank: int | None = 128,
    clip_embeddings_dim: int = 1280,
    dtype: torch.dtype | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
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
    out: dict[str, dict[str, torch.Tensor]] = {}
    for part, shapes in layout.items():
        tensors: dict[str, torch.Tensor] = {}
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


def _split_parts(state_dict: Mapping[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    if not isinstance(state_dict, Mapping) or not {"image_proj", "ip_adapter"} <= set(state_dict):
        keys = list(state_dict)[:6] if isinstance(state_dict, Mapping) else type(state_dict)
        raise InvalidModelError(
            f"an IP-Adapter checkpoint must hold 'image_proj' and 'ip_adapter', got {keys}"
        )
    return {
        "image_proj": dict(state_dict["image_proj"]),
        "ip_adapter": dict(state_dict["ip_adapter"]),
    }


def save_faceid_weights(state_dict: FaceIDParts, path: str | os.PathLike[str]) -> Path:
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


def load_faceid_state_dict(path: str | os.PathLike[str]) -> dict[str, dict[str, torch.Tensor]]:
    """Read a FaceID checkpoint (``.bin`` with ``weights_only=True``, or ``.safetensors``)."""
    import torch

    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        parts: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
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


def faceid_lora_to_kohya(
    state_dict: FaceIDParts, unet: UNet2DConditionModel
) -> dict[str, torch.Tensor]:
    """The LoRA inside a FaceID checkpoint in the ``*_lora.safetensors`` (kohya) form.

    ``{i}.to_q_lora.down.weight`` → ``lora_unet_<processor module, "." → "_">_to_q.lora_down
    .weight`` (``to_out`` → ``to_out_0``); no ``.alpha`` keys, as in the published file.
    """
    names = [layer.name for layer in attention_layers(unet)]
    out: dict[str, torch.Tensor] = {}
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
    state_dict: FaceIDParts, unet: UNet2DConditionModel, path: str | os.PathLike[str]
) -> Path:
    """Write the checkpoint's LoRA as a kohya ``.safetensors`` (the published ``*_lora`` form)."""
    from safetensors.torch import save_file

    out = Path(path)
    if out.suffix != ".safetensors":
        raise ValueError(f"`path` must end with .safetensors, got {str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(faceid_lora_to_kohya(state_dict, unet), str(out))
    return out


def _has_lora(parts: FaceIDParts) -> bool:
    return any(_lora_key_parts(k) is not None for k in parts["ip_adapter"])


def _strip_lora(parts: FaceIDParts) -> dict[str, dict[str, torch.Tensor]]:
    return {
        "image_proj": dict(parts["image_proj"]),
        "ip_adapter": {k: v for k, v in parts["ip_adapter"].items() if _lora_key_parts(k) is None},
    }


def faceid_identity_dim(parts: FaceIDParts) -> int:
    """The identity dimension a checkpoint projects (``proj.0.weight``'s input width).

    512 for the published FaceID (ArcFace); checkpoints trained by facegen for another
    encoder (e.g. dlib's 128-D) have that encoder's dimension.
    """
    w = parts["image_proj"].get("proj.0.weight")
    if w is None or len(w.shape) != 2:
        raise InvalidModelError("image_proj must contain a 2-D 'proj.0.weight'")
    return int(w.shape[1])


def check_faceid_state_dict(
    parts: FaceIDParts, unet: UNet2DConditionModel, variant: Variant, *, source: str = ""
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
        id_dim=faceid_identity_dim(parts),
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
