"""LoRA helpers for Stable-Diffusion-1.5-style diffusers pipelines.

Everything here goes through diffusers' own LoRA hooks on pipelines that mix in
:class:`~diffusers.loaders.StableDiffusionLoraLoaderMixin` (``load_lora_weights``,
``set_adapters``, ``fuse_lora``, ``unfuse_lora``, ``delete_adapters``,
``unload_lora_weights``, ``save_lora_weights``) and peft's LoRA layers; no LoRA maths is
re-implemented. What this module adds:

* sources: a local ``.safetensors`` file or folder, or a facegen model preset resolved by
  :mod:`facegen.hub` (so missing weights raise :class:`~facegen.errors.ModelNotAvailableError`
  naming the repository and file, and offline mode is honoured). Pickled ``.bin`` LoRAs are
  refused rather than unpickled;
* checked names: every adapter has an explicit, unique name, and an unknown name lists the
  loaded ones;
* scales that stay put: diffusers activates only the newest adapter after a load and
  ``fuse_lora(lora_scale=…)`` leaves the scale multiplied after ``unfuse_lora``; here every
  adapter keeps the scale :func:`list_loras` reports until it is changed on purpose;
* LCM-LoRA (:func:`enable_lcm` / :func:`disable_lcm`), which also swaps the scheduler;
* :func:`save_lora` (from :mod:`facegen.adapters.lora_save`): the diffusers/peft safetensors
  layout that ``load_lora_weights`` reads back, with the adapter's ``LoraConfig`` stored in
  the file's metadata so rank and alpha survive the round trip.

Diffusers also reads kohya-ss / A1111 LoRAs (``lora_unet_…lora_down.weight`` keys with an
optional ``.alpha``; IP-Adapter-FaceID's ``ip-adapter-faceid_sd15_lora.safetensors`` uses
these key names) and converts them when loading; :func:`load_lora` accepts them as they are.

A scale is a multiplier on the LoRA's own ``alpha / rank``: ``0`` leaves the base model,
``1`` is the LoRA as trained. Scales apply to the UNet and the text encoder alike.
"""

from __future__ import annotations

import logging
import math
import os
import re
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facegen import hub
from facegen.adapters.lora_save import DEFAULT_LORA_WEIGHT_NAME, save_lora
from facegen.adapters.peft_compat import text_encoder_loads_through_peft
from facegen.errors import InvalidModelError, ModelNotAvailableError, UnknownNameError
from facegen.validate import check_int, check_number, check_safetensors

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline, SchedulerMixin

__all__ = [
    "DEFAULT_LORA_WEIGHT_NAME",
    "LCM_GUIDANCE_RANGE",
    "LCM_PRESET",
    "LCM_STEPS_RANGE",
    "LoraSource",
    "disable_lcm",
    "enable_lcm",
    "fuse_loras",
    "is_lcm_enabled",
    "list_loras",
    "load_lora",
    "lora_presets",
    "save_lora",
    "set_lora_scales",
    "unfuse_loras",
    "unload_loras",
]

logger = logging.getLogger(__name__)

#: facegen preset of ``latent-consistency/lcm-lora-sdv1-5``.
LCM_PRESET = "lcm-lora-sdv1-5"
#: Step counts LCM-LoRA is made for ("only between 2 - 8 steps", its model card).
LCM_STEPS_RANGE = (2, 8)
#: Guidance LCM-LoRA's model card allows: "either disable guidance_scale or use values between
#: 1.0 and 2.0" (diffusers' SD pipelines disable classifier-free guidance at ``<= 1``).
LCM_GUIDANCE_RANGE = (0.0, 2.0)

#: A LoRA to load: a local ``.safetensors`` file or a folder holding one, or a preset name.
LoraSource = str | os.PathLike[str]

_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")


@dataclass
class _LcmState:
    scheduler: SchedulerMixin
    adapter_name: str


# Per-pipeline state, held weakly so that a dropped pipeline takes its entries with it.
_LCM: weakref.WeakKeyDictionary[DiffusionPipeline, _LcmState] = weakref.WeakKeyDictionary()
_SCALES_BEFORE_FUSE: weakref.WeakKeyDictionary[DiffusionPipeline, dict[str, float]] = (
    weakref.WeakKeyDictionary()
)


# --------------------------------------------------------------------------- checks


def _check_pipe(pipe: DiffusionPipeline) -> None:
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    if not isinstance(pipe, StableDiffusionLoraLoaderMixin):
        raise TypeError(
            "`pipe` must be a diffusers pipeline with StableDiffusionLoraLoaderMixin "
            f"(an SD1.5-style pipeline), got {type(pipe).__name__}"
        )


def _check_adapter_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"`adapter_name` must be a non-empty name of letters, digits, '_' or '-', got {name!r}"
        )
    return name


def _check_names(names: str | Iterable[str], loaded: Iterable[str], what: str) -> list[str]:
    if isinstance(names, str):
        names = [names]
    out = list(names)
    if not out:
        raise ValueError(f"`{what}` must name at least one loaded LoRA, got an empty list")
    valid = list(loaded)
    for n in out:
        if n not in valid:
            raise UnknownNameError("LoRA adapter", n, valid)
    if len(set(out)) != len(out):
        raise ValueError(f"`{what}` must not repeat a name, got {out}")
    return out


def _check_not_fused(pipe: DiffusionPipeline, action: str) -> None:
    fused = sorted(_fused(pipe))
    if fused:
        raise ValueError(
            f"cannot {action} while LoRAs are fused into the weights ({', '.join(fused)}); "
            "call unfuse_loras(pipe) first"
        )


# --------------------------------------------------------------------------- state


def _loaded(pipe: DiffusionPipeline) -> list[str]:
    """Adapter names in load order, across the UNet and the text encoder."""
    out: list[str] = []
    for names in pipe.get_list_adapters().values():
        out.extend(n for n in names if n not in out)
    return out


def _lora_components(pipe: DiffusionPipeline) -> list[str]:
    return list(pipe.get_list_adapters())


def _scale_of(pipe: DiffusionPipeline, name: str) -> float:
    """The scale of adapter ``name`` as peft holds it (0 when inactive)."""
    from peft.tuners.lora import LoraLayer

    for component in _lora_components(pipe):
        model = getattr(pipe, component)
        for module in model.modules():
            if not isinstance(module, LoraLayer) or name not in module.scaling:
                continue
            if name not in module.active_adapters:
                return 0.0
            rank = module.r[name]
            alpha = module.lora_alpha[name]
            unit = alpha / math.sqrt(rank) if module.use_rslora.get(name, False) else alpha / rank
            return round(module.scaling[name] / unit, 9) if unit else 0.0
    return 0.0


def _fused(pipe: DiffusionPipeline) -> set[str]:
    """Adapters merged into the weights, read from peft's layers.

    (diffusers' ``pipe.fused_loras`` still lists adapters after ``unload_lora_weights`` has
    baked them in and removed them.)
    """
    from peft.tuners.lora import LoraLayer

    out: set[str] = set()
    for component in _lora_components(pipe):
        for module in getattr(pipe, component).modules():
            if isinstance(module, LoraLayer):
                out.update(module.merged_adapters)
    return out


def _apply_scales(pipe: DiffusionPipeline, scales: Mapping[str, float]) -> None:
    if scales:
        pipe.set_adapters(list(scales), [float(s) for s in scales.values()])


def list_loras(pipe: DiffusionPipeline) -> dict[str, float]:
    """Loaded LoRA adapters and their scales, in load order.

    An adapter that diffusers has deactivated (``pipe.set_adapters`` without it) reports
    ``0.0``. Per-block scales set through diffusers directly report the first LoRA layer's.
    Scales are read back from peft's layers and rounded to 9 decimals.
    While LoRAs are fused, a fused adapter reports the scale it was fused at.
    """
    _check_pipe(pipe)
    return {name: _scale_of(pipe, name) for name in _loaded(pipe)}


def lora_presets() -> list[str]:
    """Names of the facegen model presets that hold a LoRA (a ``"lora"`` role)."""
    return sorted(p.name for p in hub.presets() if "lora" in p.roles)


# --------------------------------------------------------------------------- loading


def _pick_in_folder(folder: Path, weight_name: str | None) -> Path:
    if weight_name is not None:
        if Path(weight_name).name != weight_name:
            raise ValueError(f"`weight_name` must be a plain file name, got {weight_name!r}")
        cand = folder / weight_name
        if not cand.is_file():
            raise ModelNotAvailableError(
                str(cand), searched=[cand], hint="`weight_name` is not a file in that folder."
            )
        return cand
    default = folder / DEFAULT_LORA_WEIGHT_NAME
    if default.is_file():
        return default
    found = sorted(p for p in folder.iterdir() if p.suffix == ".safetensors" and p.is_file())
    if len(found) == 1:
        return found[0]
    names = ", ".join(p.name for p in found) or "none"
    raise ValueError(
        f"`weight_name` must be given when {folder} does not hold exactly one .safetensors "
        f"file or a {DEFAULT_LORA_WEIGHT_NAME}, got None (found: {names})"
    )


def _resolve_source(
    source: LoraSource, weight_name: str | None, local_files_only: bool | None
) -> Path:
    if not isinstance(source, (str, os.PathLike)) or not str(source):
        raise TypeError(
            "`source` must be a path to a LoRA .safetensors file or folder, or a LoRA preset "
            f"name, got {source!r}"
        )
    path = Path(source).expanduser()
    if path.is_dir():
        found = _pick_in_folder(path, weight_name)
    elif path.is_file():
        if weight_name is not None and weight_name != path.name:
            raise ValueError(
                f"`weight_name` must be None or {path.name!r} when `source` is a file, "
                f"got {weight_name!r}"
            )
        found = path
    elif isinstance(source, str) and source in {p.name for p in hub.presets()}:
        preset = hub.get_preset(source)
        filename = weight_name or preset.roles.get("lora")
        if filename is None and len(preset.files) == 1:
            filename = preset.files[0]
        if filename is None or filename not in preset.files:
            raise ValueError(
                f"`weight_name` must be one of {', '.join(preset.files)} for preset "
                f"{preset.name!r}, got {filename!r}"
            )
        found = hub.resolve(preset, filename, offline=True if local_files_only else None)
    else:
        raise ModelNotAvailableError(
            str(source),
            searched=[path],
            hint=(
                "`source` must be an existing .safetensors file, a folder holding one, or a "
                f"LoRA preset name ({', '.join(lora_presets()) or 'none registered'})."
            ),
        )
    if found.suffix.lower() != ".safetensors":
        raise InvalidModelError(
            f"{found}: LoRA files must be .safetensors; pickled checkpoints are not loaded "
            "(convert it with safetensors.torch.save_file first)"
        )
    return found


def load_lora(
    pipe: DiffusionPipeline,
    source: LoraSource,
    *,
    adapter_name: str,
    weight_name: str | None = None,
    scale: float = 1.0,
    local_files_only: bool | None = None,
) -> Path:
    """Load a LoRA into ``pipe`` as ``adapter_name`` at ``scale``; return the file it read.

    ``source`` is a ``.safetensors`` file, a folder (``weight_name`` picks the file; by
    default ``pytorch_lora_weights.safetensors`` or the folder's only ``.safetensors``), or a
    facegen preset name (see :func:`lora_presets`; an existing path of the same name wins)
    found or downloaded by :func:`facegen.hub.resolve`, which uses the preset's ``"lora"``
    file unless ``weight_name`` says otherwise. ``local_files_only=True`` forbids the
    download, as do ``HF_HUB_OFFLINE=1`` / ``FACEGEN_OFFLINE=1``. Both the diffusers/peft
    layout and the kohya-ss/A1111 layout load. Adapters loaded earlier keep their scales.

    Raises ``ValueError`` when the name is already loaded (the message lists the loaded
    names), :class:`~facegen.errors.ModelNotAvailableError` when the file cannot be found,
    and :class:`~facegen.errors.InvalidModelError` when diffusers cannot load it or none of
    its keys matches a layer of ``pipe``.
    """
    _check_pipe(pipe)
    _check_adapter_name(adapter_name)
    scale = check_number(scale, "scale")
    loaded = _loaded(pipe)
    if adapter_name in loaded:
        raise ValueError(
            f"`adapter_name` must be unique, got {adapter_name!r} which is already loaded "
            f"(loaded: {', '.join(loaded)}); unload it first or choose another name"
        )
    _check_not_fused(pipe, "load a LoRA")
    path = check_safetensors(_resolve_source(source, weight_name, local_files_only), "LoRA file")
    before = list_loras(pipe)
    try:
        with text_encoder_loads_through_peft(pipe):
            pipe.load_lora_weights(
                str(path.parent),
                weight_name=path.name,
                adapter_name=adapter_name,
                local_files_only=True,
                use_safetensors=True,
            )
    except (ValueError, LookupError, RuntimeError, TypeError, OSError) as exc:
        raise InvalidModelError(f"{path}: diffusers could not load this LoRA: {exc}") from exc
    if adapter_name not in _loaded(pipe):
        raise InvalidModelError(
            f"{path}: none of its keys matches a layer of this pipeline's UNet or text "
            "encoder; is it a LoRA for another base model?"
        )
    _apply_scales(pipe, {**before, adapter_name: scale})
    logger.info("loaded LoRA %r from %s at scale %g", adapter_name, path, scale)
    return path


def set_lora_scales(pipe: DiffusionPipeline, scales: Mapping[str, float]) -> dict[str, float]:
    """Set the scales of some loaded adapters (others keep theirs); return all scales."""
    _check_pipe(pipe)
    if not isinstance(scales, Mapping) or not scales:
        raise ValueError(f"`scales` must be a non-empty mapping of name to scale, got {scales!r}")
    current = list_loras(pipe)
    _check_names(list(scales), current, "scales")
    new = {n: check_number(s, f"scales[{n!r}]") for n, s in scales.items()}
    _check_not_fused(pipe, "change LoRA scales")
    _apply_scales(pipe, {**current, **new})
    return list_loras(pipe)


# --------------------------------------------------------------------------- fuse / unload


def fuse_loras(
    pipe: DiffusionPipeline, names: str | Iterable[str] | None = None, *, scale: float = 1.0
) -> list[str]:
    """Fuse adapters into the base weights (faster inference); return the fused names.

    ``names`` defaults to every adapter with a non-zero scale, and must include all of them:
    peft runs a layer that holds fused weights as a plain layer, so an unfused adapter
    there would silently stop acting. Each adapter is fused at its current scale times
    ``scale``. :func:`unfuse_loras` subtracts the same amounts and restores the scales;
    float32 rounding leaves the weights a few ulps off the originals, not bit-identical.
    """
    _check_pipe(pipe)
    scale = check_number(scale, "scale")
    _check_not_fused(pipe, "fuse again")
    current = list_loras(pipe)
    if not current:
        raise ValueError("`pipe` must have a LoRA loaded to fuse, got none; use load_lora first")
    acting = [n for n, s in current.items() if s != 0.0]
    if names is None:
        if not acting:
            raise ValueError("every loaded LoRA has scale 0; there is nothing to fuse")
        chosen = acting
    else:
        chosen = _check_names(names, current, "names")
        left_out = [n for n in acting if n not in chosen]
        if left_out:
            raise ValueError(
                f"`names` must include every LoRA with a non-zero scale, got {chosen} without "
                f"{', '.join(left_out)}: layers holding fused weights skip unfused adapters. "
                "Set their scale to 0 with set_lora_scales or unload them first."
            )
    # Make every adapter active at the scale list_loras reports, so that what is fused (and
    # later subtracted) is exactly what list_loras showed.
    _apply_scales(pipe, current)
    pipe.fuse_lora(components=_lora_components(pipe), lora_scale=scale, adapter_names=chosen)
    _SCALES_BEFORE_FUSE[pipe] = current
    fused = _fused(pipe)
    return [n for n in chosen if n in fused]


def unfuse_loras(pipe: DiffusionPipeline) -> None:
    """Undo :func:`fuse_loras` (or diffusers' ``fuse_lora``); a no-op when nothing is fused.

    The adapters stay loaded and get back the scales they had before fusing.
    """
    _check_pipe(pipe)
    components = _lora_components(pipe)
    if components:
        pipe.unfuse_lora(components=components)
    before = _SCALES_BEFORE_FUSE.pop(pipe, None)
    if before is not None:
        _apply_scales(pipe, {n: before[n] for n in _loaded(pipe) if n in before})


def unload_loras(pipe: DiffusionPipeline, names: str | Iterable[str] | None = None) -> None:
    """Remove adapters: ``names``, or all of them (``None``) with ``unload_lora_weights``.

    Removing all of them while some are fused keeps the fused weights in the model: that is
    diffusers' way to bake a LoRA in (``fuse_lora`` then ``unload_lora_weights``). Call
    :func:`unfuse_loras` first to get the base model back. Removing named adapters that are
    fused is refused. The remaining adapters keep their scales.
    """
    _check_pipe(pipe)
    if names is None:
        fused = _fused(pipe)
        if fused:
            logger.info("unloading LoRAs with %s fused: their weights stay baked in", fused)
        pipe.unload_lora_weights()
        _SCALES_BEFORE_FUSE.pop(pipe, None)
        return
    before = list_loras(pipe)
    chosen = _check_names(names, before, "names")
    fused = sorted(set(chosen) & _fused(pipe))
    if fused:
        raise ValueError(
            f"`names` must not include fused LoRAs, got {', '.join(fused)}; "
            "call unfuse_loras(pipe) first"
        )
    pipe.delete_adapters(chosen)
    _apply_scales(pipe, {n: s for n, s in before.items() if n not in chosen})


# --------------------------------------------------------------------------- LCM-LoRA


def enable_lcm(
    pipe: DiffusionPipeline,
    *,
    source: LoraSource = LCM_PRESET,
    adapter_name: str = "lcm",
    weight_name: str | None = None,
    scale: float = 1.0,
    num_inference_steps: int = 4,
    guidance_scale: float = 1.0,
    local_files_only: bool | None = None,
) -> dict[str, Any]:
    """Load LCM-LoRA and switch to :class:`~diffusers.LCMScheduler`; return call kwargs.

    The returned ``{"num_inference_steps": …, "guidance_scale": …}`` go to ``pipe(...)``.
    LCM-LoRA's model card asks for 2–8 steps and guidance disabled (``<= 1``) or between 1.0
    and 2.0, which is what is accepted here. The previous scheduler object is kept for
    :func:`disable_lcm`. The LoRA is loaded first, so when that fails nothing has changed.
    """
    from diffusers import LCMScheduler

    _check_pipe(pipe)
    lo, hi = LCM_STEPS_RANGE
    steps = check_int(num_inference_steps, "num_inference_steps", minimum=lo, maximum=hi)
    glo, ghi = LCM_GUIDANCE_RANGE
    guidance = check_number(guidance_scale, "guidance_scale", minimum=glo, maximum=ghi)
    if pipe in _LCM:
        raise ValueError(
            f"LCM is already enabled on this pipeline (adapter {_LCM[pipe].adapter_name!r}); "
            "call disable_lcm(pipe) first"
        )
    previous = getattr(pipe, "scheduler", None)
    if previous is None:
        raise TypeError(f"`pipe` must have a scheduler, got {type(pipe).__name__} without one")
    load_lora(
        pipe,
        source,
        adapter_name=adapter_name,
        weight_name=weight_name,
        scale=scale,
        local_files_only=local_files_only,
    )
    pipe.scheduler = LCMScheduler.from_config(previous.config)
    _LCM[pipe] = _LcmState(scheduler=previous, adapter_name=adapter_name)
    return {"num_inference_steps": steps, "guidance_scale": guidance}


def is_lcm_enabled(pipe: DiffusionPipeline) -> bool:
    """Whether :func:`enable_lcm` is in effect on ``pipe``."""
    _check_pipe(pipe)
    return pipe in _LCM


def disable_lcm(pipe: DiffusionPipeline) -> None:
    """Put back the scheduler :func:`enable_lcm` replaced and unload the LCM adapter."""
    _check_pipe(pipe)
    state = _LCM.get(pipe)
    if state is None:
        raise ValueError("`pipe` must have LCM enabled by enable_lcm to disable it, got none")
    if state.adapter_name in _fused(pipe):
        raise ValueError(
            f"LCM adapter {state.adapter_name!r} is fused; call unfuse_loras(pipe) before "
            "disable_lcm(pipe)"
        )
    pipe.scheduler = state.scheduler
    if state.adapter_name in _loaded(pipe):
        unload_loras(pipe, [state.adapter_name])
    else:
        logger.info("LCM adapter %r was already unloaded", state.adapter_name)
    del _LCM[pipe]
