"""The generation-preset registry: names, their declared capabilities (:class:`PresetInfo`,
defined in :mod:`~facegen.pipelines.generation.capabilities`) and :func:`from_preset`.

The builders register themselves in :mod:`facegen.pipelines.generation.preset_builders`;
import :mod:`facegen.pipelines.generation.presets` (which loads both) rather than this module.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from facegen.errors import InvalidArgumentError
from facegen.pipelines.generation.capabilities import ControlNetSupport, PresetInfo
from facegen.registry import Registry
from facegen.validate import check_choice

if TYPE_CHECKING:
    import torch

    from facegen.pipelines.generation.id_to_face import IDGenerationMixin

__all__ = [
    "PRESETS",
    "ControlNetSupport",
    "PresetInfo",
    "finish_preset",
    "from_preset",
    "preset_info",
    "preset_names",
    "refuse_controlnet",
    "register_preset",
    "resolve_dtype",
]

#: a builder's own pipeline class
Pipe = TypeVar("Pipe", bound="IDGenerationMixin")

PRESETS: Registry[Callable[..., Any]] = Registry("generation preset")

_INFO: dict[str, PresetInfo] = {}


def register_preset(info: PresetInfo) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a preset builder with its :class:`PresetInfo` (a decorator)."""

    def add(builder: Callable[..., Any]) -> Callable[..., Any]:
        PRESETS.register(info.name, builder, description=info.description)
        _INFO[info.name] = info
        return builder

    return add


def _generator_folder(name: object) -> bool:
    """Whether ``name`` is not a registered preset but a generator folder's path."""
    from facegen.pipelines.generation.generator_folder import is_generator_folder

    return (
        isinstance(name, str | os.PathLike) and str(name) not in _INFO and is_generator_folder(name)
    )


def preset_info(name: str) -> PresetInfo:
    """The capabilities of preset ``name`` (or of the generator folder at that path, see
    :mod:`~facegen.pipelines.generation.generator_folder`); an unknown name lists the
    registered ones."""
    if _generator_folder(name):
        from facegen.pipelines.generation.generator_folder import read_generator_info

        return read_generator_info(name).preset_info(str(name))
    PRESETS.get(name)  # raises UnknownNameError with the valid names
    return _INFO[name]


def preset_names(
    *,
    takes_prompt: bool | None = None,
    controlnet: ControlNetSupport | None = None,
    inpainting: bool | None = None,
    test_double: bool | None = None,
    edits_photos: bool | None = None,
) -> list[str]:
    """Registered preset names (sorted), narrowed by the capabilities given."""
    wanted = {
        "takes_prompt": takes_prompt,
        "controlnet": controlnet,
        "inpainting": inpainting,
        "test_double": test_double,
        "edits_photos": edits_photos,
    }
    return [
        n
        for n in PRESETS.names()
        if all(v is None or getattr(_INFO[n], k) == v for k, v in wanted.items())
    ]


_DTYPES = ("float32", "float16", "bfloat16")


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    """``"float16"`` etc. → ``torch.float16``; half precision on the CPU is refused."""
    import torch

    name = str(dtype).replace("torch.", "") if isinstance(dtype, torch.dtype) else str(dtype)
    check_choice(name, "dtype", _DTYPES)
    if name == "float16" and str(device).startswith("cpu"):
        raise ValueError("`dtype` float16 needs a GPU; use float32 (or bfloat16) on the CPU")
    return getattr(torch, name)


def finish_preset(
    pipe: Pipe, name: str, models: dict[str, str], device: str, dtype: torch.dtype
) -> Pipe:
    """Record the preset (name, capabilities, model ids) on a built pipeline; move it to
    ``device``/``dtype``."""
    pipe.preset_name = name
    pipe.preset_info = _INFO[name]
    pipe.model_ids = models
    pipe.set_progress_bar_config(leave=False)
    if pipe.unet.dtype != dtype:
        pipe = pipe.to(device, dtype)
    return pipe.to(device)


def refuse_controlnet(preset: str, controlnet: object, why: str) -> None:
    """A preset without a loadable ControlNet refuses one rather than ignore it."""
    if controlnet is not None:
        raise InvalidArgumentError(
            f"`controlnet` must not be given for preset {preset!r}, {why}, got {controlnet!r}"
        )


def from_preset(
    name: str,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    local_files_only: bool | None = None,
    **kwargs: Any,
) -> IDGenerationMixin:
    """Build the pipeline of preset ``name`` on ``device``/``dtype`` (the presets are listed
    in :mod:`facegen.pipelines.generation.presets`; an unknown name lists them). ``name`` may
    also be the path of a generator folder (``facegen train generator``'s output), loaded by
    :func:`~facegen.pipelines.generation.generator_folder.load_generator`."""
    if _generator_folder(name):
        from facegen.pipelines.generation.generator_folder import load_generator

        return load_generator(
            name,
            name=str(name),
            device=device,
            dtype=resolve_dtype(dtype, device),
            local_files_only=local_files_only,
            **kwargs,
        )
    return PRESETS.create(
        name, device=device, dtype=dtype, local_files_only=local_files_only, **kwargs
    )
