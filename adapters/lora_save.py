"""Writing a LoRA adapter as the safetensors file diffusers' ``load_lora_weights`` reads back.

:func:`save_lora` writes the diffusers/peft layout (keys ``unet.…to_q.lora_A.weight`` and
``text_encoder.…``) with the adapter's ``LoraConfig`` in the file's metadata, so rank and alpha
survive the round trip. Also importable from :mod:`facegen.adapters.lora`, which loads such
files (and kohya-ss / A1111 ones) into pipelines.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facegen.errors import OutputError, UnknownNameError

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline, ModelMixin
    from peft import LoraConfig

__all__ = ["DEFAULT_LORA_WEIGHT_NAME", "save_lora"]

logger = logging.getLogger(__name__)

#: The file name diffusers writes and looks for first in a LoRA folder.
DEFAULT_LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def _adapter_names_of(model: torch.nn.Module | None) -> list[str]:
    config = getattr(model, "peft_config", None)
    return list(config) if isinstance(config, Mapping) else []


def _save_supports_metadata() -> bool:
    """Whether this diffusers writes a LoRA's ``LoraConfig`` into the file (0.34 and later)."""
    import inspect

    from diffusers import StableDiffusionPipeline

    params = inspect.signature(StableDiffusionPipeline.save_lora_weights).parameters
    return "unet_lora_adapter_metadata" in params


def _inferable_without_metadata(config: LoraConfig) -> bool:
    """Whether diffusers rebuilds ``config`` from the weights alone (alpha = rank, plain LoRA)."""
    return (
        config.lora_alpha == config.r
        and not config.rank_pattern
        and not config.alpha_pattern
        and not getattr(config, "use_rslora", False)
        and not getattr(config, "use_dora", False)
    )


def _models_of(
    unet_or_pipe: ModelMixin | DiffusionPipeline, text_encoder: torch.nn.Module | None
) -> dict[str, torch.nn.Module | None]:
    """``{"unet": …, "text_encoder": …}`` of a pipeline, or of a UNet (+ ``text_encoder``)."""
    from diffusers import ModelMixin
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    if isinstance(unet_or_pipe, StableDiffusionLoraLoaderMixin):
        if text_encoder is not None:
            raise TypeError("`text_encoder` must be None when a pipeline is given")
        return {
            "unet": getattr(unet_or_pipe, "unet", None),
            "text_encoder": getattr(unet_or_pipe, "text_encoder", None),
        }
    if isinstance(unet_or_pipe, ModelMixin):
        return {"unet": unet_or_pipe, "text_encoder": text_encoder}
    raise TypeError(
        "`unet_or_pipe` must be a diffusers UNet with a peft adapter or an SD pipeline, "
        f"got {type(unet_or_pipe).__name__}"
    )


def _pick_adapter(models: Mapping[str, torch.nn.Module | None], adapter_name: str | None) -> str:
    """``adapter_name``, or the only adapter the models hold; it must be held by one of them."""
    available: list[str] = []
    for model in models.values():
        available.extend(n for n in _adapter_names_of(model) if n not in available)
    if not available:
        raise ValueError(
            "`unet_or_pipe` must hold a LoRA adapter to save, got none; add one with "
            "unet.add_adapter(LoraConfig(...)) or load_lora"
        )
    if adapter_name is None:
        if len(available) != 1:
            raise ValueError(
                f"`adapter_name` must be one of {', '.join(available)} when several adapters "
                "are loaded, got None"
            )
        return available[0]
    if adapter_name not in available:
        raise UnknownNameError("LoRA adapter", adapter_name, available)
    return adapter_name


def _target(path: str | os.PathLike[str], weight_name: str | None) -> tuple[Path, str]:
    """``(folder, file name)`` to write: ``path`` is a ``.safetensors`` file or a folder."""
    target = Path(path).expanduser()
    if target.suffix.lower() == ".safetensors":
        if weight_name is not None and weight_name != target.name:
            raise ValueError(
                f"`weight_name` must be None or {target.name!r} when `path` is a file, "
                f"got {weight_name!r}"
            )
        folder, weight_name = target.parent, target.name
    else:
        folder, weight_name = target, weight_name or DEFAULT_LORA_WEIGHT_NAME
    if Path(weight_name).name != weight_name or not weight_name.endswith(".safetensors"):
        raise ValueError(
            f"`weight_name` must be a plain file name ending in .safetensors, got {weight_name!r}"
        )
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"`path` must be a folder or a .safetensors file, got {folder}")
    return folder, weight_name


def _layers_to_save(
    models: Mapping[str, torch.nn.Module | None], adapter_name: str
) -> dict[str, Any]:
    """``save_lora_weights`` keyword arguments: each model's layers of the adapter, and its
    ``LoraConfig`` as metadata where this diffusers can store it."""
    from peft.utils import get_peft_model_state_dict

    with_metadata = _save_supports_metadata()
    layers: dict[str, Any] = {}
    for key, model in models.items():
        if model is None or adapter_name not in _adapter_names_of(model):
            continue
        config = model.peft_config[adapter_name]
        layers[f"{key}_lora_layers"] = get_peft_model_state_dict(model, adapter_name=adapter_name)
        if with_metadata:
            layers[f"{key}_lora_adapter_metadata"] = config.to_dict()
        elif not _inferable_without_metadata(config):
            import diffusers

            raise ValueError(
                f"LoRA {adapter_name!r} ({key}) has lora_alpha {config.lora_alpha} and rank "
                f"{config.r} (or per-layer patterns, rsLoRA, DoRA), which only the file's "
                "metadata can carry; saving it needs a diffusers whose save_lora_weights takes "
                f"unet_lora_adapter_metadata (0.34 and later), got {diffusers.__version__}"
            )
    return layers


def save_lora(
    unet_or_pipe: ModelMixin | DiffusionPipeline,
    path: str | os.PathLike[str],
    *,
    adapter_name: str | None = None,
    weight_name: str | None = None,
    text_encoder: torch.nn.Module | None = None,
) -> Path:
    """Write one LoRA adapter as safetensors that ``load_lora_weights`` reads back.

    ``unet_or_pipe`` is a UNet with a peft adapter (``unet.add_adapter(LoraConfig(...))``, as
    facegen's training does) or an SD pipeline, whose UNet and text-encoder layers of the
    adapter are both saved; with a UNet, ``text_encoder`` adds that model's layers of the
    adapter (a text encoder trained beside the UNet). ``adapter_name`` may be omitted when
    there is only one. ``path`` is a ``.safetensors`` file or a folder (then ``weight_name``,
    default ``pytorch_lora_weights.safetensors``). Keys are peft's (``unet.…to_q.lora_A.weight``),
    and the adapter's ``LoraConfig`` goes into the file's metadata so rank and alpha are
    restored exactly (diffusers 0.34 and later; older ones can only save LoRAs whose alpha
    equals their rank, which is what diffusers assumes without metadata). Returns the written
    file.
    """
    from diffusers import StableDiffusionPipeline

    models = _models_of(unet_or_pipe, text_encoder)
    adapter_name = _pick_adapter(models, adapter_name)
    folder, weight_name = _target(path, weight_name)
    layers = _layers_to_save(models, adapter_name)
    try:
        StableDiffusionPipeline.save_lora_weights(
            save_directory=folder, weight_name=weight_name, safe_serialization=True, **layers
        )
    except OSError as exc:
        raise OutputError(f"could not write LoRA {adapter_name!r} to {folder}: {exc}") from exc
    out = folder / weight_name
    if not out.is_file():
        raise OutputError(f"could not write LoRA {adapter_name!r} to {out}")
    logger.info("saved LoRA %r to %s", adapter_name, out)
    return out
