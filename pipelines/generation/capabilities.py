"""What a generation preset can do (:class:`PresetInfo`), declared where it is registered.

Its own module so that the pipelines (which carry their preset's record) and the registry
(which builds the pipelines) both use it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from facegen.adapters.base import IdentitySpec
from facegen.validate import check_choice, check_int, check_number

__all__ = ["ControlNetSupport", "PresetInfo"]

#: ``none``: no ControlNet; ``built-in``: always one, so every call needs a control image;
#: ``optional``: ``controlnet=PATH`` adds one.
ControlNetSupport = Literal["none", "built-in", "optional"]
_CONTROLNET_SUPPORT = ("none", "built-in", "optional")
#: base model families, i.e. what a LoRA for the preset is trained on (``scratch``: a
#: generator facegen trained from scratch, loaded from its folder)
_FAMILIES = ("arc2face", "sd15", "tiny", "scratch")


@dataclass(frozen=True)
class PresetInfo:
    """What a generation preset can do, declared where it is registered.

    Callers (the CLI, the web app, the dataset generator) ask this record instead of
    reading a preset's kind from its name.
    """

    name: str
    description: str
    #: the base model family: ``arc2face``, ``sd15`` or ``tiny`` (what a LoRA trains on)
    family: str
    #: whether a text prompt steers the image (identity + text); identity-only otherwise
    takes_prompt: bool
    controlnet: ControlNetSupport
    #: a masked (inpainting) pipeline: the editing jobs (swap, reenact, anonymize) use these
    inpainting: bool
    #: the identity vectors the preset's adapter accepts
    identity: IdentitySpec
    default_steps: int
    default_guidance: float
    #: the terms of the weights it downloads (see ``facegen models list``)
    license: str
    #: randomly initialised components: plumbing and demos, never a result
    test_double: bool = False
    #: can regenerate faces inside a photo (swap, reenact, generative anonymization)
    edits_photos: bool = True

    def __post_init__(self) -> None:
        check_choice(self.controlnet, "controlnet", _CONTROLNET_SUPPORT)
        check_choice(self.family, "family", _FAMILIES)
        check_int(self.default_steps, "default_steps", minimum=1)
        check_number(self.default_guidance, "default_guidance", minimum=0)

    @property
    def needs_control_image(self) -> bool:
        """Every call needs a control image (the preset always has a ControlNet)."""
        return self.controlnet == "built-in"

    @property
    def generates_faces(self) -> bool:
        """Makes whole faces from an identity (not a masked edit of a photo)."""
        return not self.inpainting
