"""Text-encoder LoRAs through peft itself when transformers' adapter integration refuses peft.

diffusers' ``load_lora_weights`` puts the text-encoder part of a LoRA into the CLIP text
encoder with transformers' ``PreTrainedModel.load_adapter``, and facegen's own training adds
text-encoder LoRAs the same way peft does. transformers guards its adapter integration with a
minimum peft release (``transformers.integrations.peft.MIN_PEFT_VERSION``); transformers 5.24
raised it to peft 0.22.0 before any peft 0.22 was published, so with the newest releases of
both (transformers 5.24/5.25, peft 0.21.2) every text-encoder LoRA load fails with "The version
of PEFT you are using is not compatible, please use a version >= 0.22.0".

The work itself only needs peft's public ``inject_adapter_in_model`` (what transformers calls
for a CLIP text encoder) and a plain ``load_state_dict`` of the LoRA weights into the injected
layers. So, only while transformers refuses the installed peft,
:func:`text_encoder_loads_through_peft` gives the pipeline's text encoders a ``load_adapter``
that does those two steps for the arguments diffusers passes (a ready state dict and a
``LoraConfig``), and puts the original back afterwards. With a peft that transformers accepts
nothing is changed. This stand-in knows plain LoRA layers (``lora_A``/``lora_B``, DoRA's
``lora_magnitude_vector.weight``); other adapter kinds in a text encoder are refused with a
clear error until transformers accepts the installed peft again.
"""

from __future__ import annotations

import logging
import re
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from facegen.compat import integration_refuses_peft

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline
    from peft import LoraConfig

_ModelT = TypeVar("_ModelT", bound="torch.nn.Module")

__all__ = ["add_lora_adapter", "integration_refuses_peft", "text_encoder_loads_through_peft"]

logger = logging.getLogger(__name__)

_TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


def add_lora_adapter(model: _ModelT, config: LoraConfig, adapter_name: str = "default") -> _ModelT:
    """Inject a fresh LoRA ``config`` (a peft ``LoraConfig``) named ``adapter_name`` into
    ``model`` (a transformers text encoder or a diffusers model) with peft's own API.

    Works with every peft facegen allows, whatever minimum transformers' integration asks
    for. Refuses a name that is already loaded. Returns ``model``.
    """
    from peft import inject_adapter_in_model

    loaded = getattr(model, "peft_config", None) or {}
    if adapter_name in loaded:
        raise ValueError(
            f"`adapter_name` must be new, got {adapter_name!r} which is already loaded "
            f"(loaded: {', '.join(loaded)})"
        )
    inject_adapter_in_model(config, model, adapter_name=adapter_name)
    if hasattr(type(model), "_hf_peft_config_loaded"):
        model._hf_peft_config_loaded = True  # what transformers' own add_adapter records
    return model


def _load_adapter_with_peft(
    self: torch.nn.Module,
    peft_model_id: str | None = None,
    adapter_name: str | None = None,
    peft_config: LoraConfig | None = None,
    adapter_state_dict: dict[str, torch.Tensor] | None = None,
    **_: Any,
) -> None:
    """``PreTrainedModel.load_adapter`` for what diffusers passes: a ready state dict of peft
    keys (``….q_proj.lora_A.weight``) and a ``LoraConfig``. The weights go straight into the
    injected layers (``….q_proj.lora_A.<name>.weight``); a key that matches no layer, or a
    layer the file leaves empty, is refused."""
    if adapter_state_dict is None or peft_config is None:
        raise ValueError(
            "loading a text-encoder LoRA without transformers' peft integration needs "
            f"`adapter_state_dict` and `peft_config`, got peft_model_id={peft_model_id!r}"
        )
    name = adapter_name or "default"
    add_lora_adapter(self, peft_config, name)
    state = {
        _LORA_PART.sub(rf".\1.{name}.", k, count=1): v
        for k, v in _match_module_names(self, adapter_state_dict).items()
    }
    result = self.load_state_dict(state, strict=False)
    unexpected = list(result.unexpected_keys)
    if unexpected:
        raise ValueError(
            f"the LoRA's text-encoder keys must match this text encoder, got {len(unexpected)} "
            f"that do not (first: {unexpected[0]})"
        )
    empty = [k for k in result.missing_keys if f".{name}." in k and ".lora_" in k]
    if empty:
        raise ValueError(
            f"the LoRA must hold every layer its config names, got none for {len(empty)} "
            f"(first: {empty[0]})"
        )


_LORA_PART = re.compile(r"\.(lora_A|lora_B|lora_magnitude_vector)\.")
_NESTED = "text_model."


def _match_module_names(
    model: torch.nn.Module, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Keys renamed to ``model``'s module names where they differ only by CLIP's
    ``text_model.`` level (transformers releases differ in whether ``CLIPTextModel`` nests
    its layers under ``text_model``; diffusers and transformers map between the two layouts
    with the model's conversion mapping, which this stand-in does not have)."""
    modules = {n for n, _ in model.named_modules()}

    def rename(key: str) -> str:
        module = key.split(".lora_", 1)[0]
        if module in modules:
            return key
        if _NESTED + module in modules:
            return _NESTED + key
        if module.startswith(_NESTED) and module[len(_NESTED) :] in modules:
            return key[len(_NESTED) :]
        return key

    return {rename(k): v for k, v in state.items()}


@contextmanager
def text_encoder_loads_through_peft(pipe: DiffusionPipeline) -> Iterator[bool]:
    """While active, ``pipe``'s text encoders load LoRAs with peft directly if transformers'
    integration refuses the installed peft (see the module docstring). Yields whether it
    stepped in."""
    need = integration_refuses_peft()
    models = [getattr(pipe, n, None) for n in _TEXT_ENCODERS]
    models = [m for m in models if m is not None and hasattr(m, "load_adapter")]
    if need is None or not models:
        yield False
        return
    logger.debug("transformers asks for peft >= %s: text-encoder LoRAs load through peft", need)
    for m in models:
        m.load_adapter = types.MethodType(_load_adapter_with_peft, m)
    try:
        yield True
    finally:
        for m in models:
            m.__dict__.pop("load_adapter", None)
