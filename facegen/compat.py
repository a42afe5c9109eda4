"""Facts about, and quiet behaviour of, the libraries facegen builds on.

:func:`integration_refuses_peft` tells whether transformers' adapter integration refuses the
installed peft (see :mod:`facegen.adapters.peft_compat`). :func:`enable_checkpointing` turns on
a transformers model's activation checkpointing by the name its version has.

transformers 5 made ``CLIPImageProcessor`` / ``SiglipImageProcessor`` torchvision-backed; where
torchvision is not installed (the CPU build of torch on PyPI has no matching torchvision),
the first access to either name falls back to its ``…ImageProcessorPil`` twin and logs a
warning. diffusers' pipeline modules import both names at import time (its IP-Adapter
loader), so every facegen command that touches diffusers printed two warnings about a
package facegen never uses: its pipelines take no ``feature_extractor`` and IP-Adapter-FaceID
PlusV2 preprocesses with the PIL processor.

:func:`use_pil_image_processors` binds those names to the PIL classes when diffusers is first
imported, which is exactly what transformers' own fallback does on first access, minus the
warning. It does nothing where torchvision is installed or transformers has no PIL twin. The
CLI and the web app call it at start; library users keep transformers' behaviour untouched.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
from types import ModuleType
from typing import Any

__all__ = [
    "IMAGE_PROCESSORS",
    "enable_checkpointing",
    "integration_refuses_peft",
    "use_pil_image_processors",
]

logger = logging.getLogger(__name__)

#: The torchvision-backed processors diffusers imports at module level.
IMAGE_PROCESSORS = ("CLIPImageProcessor", "SiglipImageProcessor")


def _bind_pil_twins() -> list[str]:
    """Bind each name of :data:`IMAGE_PROCESSORS` on the imported transformers to its
    ``…Pil`` class; return those bound. (Loading a PIL class can make transformers run its
    ``__init__`` again and put a new module object in ``sys.modules``, so the binding goes
    onto the module object that is current after the class loaded.)"""
    import transformers  # noqa: F401  (imported here so that sys.modules holds it)

    bound = []
    for name in IMAGE_PROCESSORS:
        try:
            pil = getattr(sys.modules["transformers"], f"{name}Pil")
        except (AttributeError, ImportError, RuntimeError):  # a transformers without it
            continue
        module = sys.modules["transformers"]
        if name not in vars(module):  # not yet resolved (by transformers or by us)
            setattr(module, name, pil)
            bound.append(name)
    if bound:
        logger.debug("torchvision is not installed: %s use their PIL backends", ", ".join(bound))
    return bound


class _BeforeDiffusers(importlib.abc.MetaPathFinder):
    """On the import of ``diffusers`` (which imports the processors), first import
    transformers and bind the PIL twins, then let diffusers load as usual. (Binding inside
    transformers' own import does not last: its ``__init__`` can run twice.)"""

    def __init__(self) -> None:
        self._busy = False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "diffusers" or self._busy:
            return None
        self._busy = True  # find the real spec through the other finders
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy = False
        if spec is None or spec.loader is None:
            return None
        inner = spec.loader

        class Loader(importlib.abc.Loader):
            def create_module(self, s: Any) -> Any:
                return inner.create_module(s)

            def exec_module(self, module: ModuleType) -> None:
                _bind_pil_twins()
                inner.exec_module(module)

        spec.loader = Loader()
        return spec


def use_pil_image_processors() -> bool:
    """Where torchvision is missing, resolve transformers' torchvision-backed image processors
    to their PIL twins without the fallback warning (see the module docstring). Returns
    whether it acted (or will, when transformers is imported)."""
    if importlib.util.find_spec("torchvision") is not None:
        return False
    if importlib.util.find_spec("transformers") is None:
        return False
    if "diffusers" in sys.modules or "transformers" in sys.modules:
        return bool(_bind_pil_twins())
    if not any(isinstance(f, _BeforeDiffusers) for f in sys.meta_path):
        sys.meta_path.insert(0, _BeforeDiffusers())
    return True


def integration_refuses_peft() -> str | None:
    """The peft release transformers' adapter integration asks for when the installed peft is
    older (e.g. ``"0.22.0"``), else None."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    try:
        from transformers.integrations import peft as integration
    except ImportError:  # a transformers without the integration module
        return None
    need = getattr(integration, "MIN_PEFT_VERSION", None)
    try:
        have = version("peft")
    except PackageNotFoundError:
        return None
    if need is None or Version(have) >= Version(need):
        return None
    return str(need)


def enable_checkpointing(model: Any) -> None:
    """Turn on activation (gradient) checkpointing of a transformers model:
    ``activation_checkpointing_enable`` where transformers has it (newer releases deprecate
    ``gradient_checkpointing_enable`` for it), else ``gradient_checkpointing_enable``."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is None:
        enable = model.gradient_checkpointing_enable
    enable()
