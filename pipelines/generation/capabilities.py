"""What a generation preset can do (:class:`PresetInfo`), declared where it is registered.

Its own module so that the pipelines (which carry their preset's record) and the registry
(which builds the pipelines) both use it without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from facegen.adapters.base import IdentitySpec
from facegen.validate import check_choice, check_int, check_number

__all__ = [
    "DATASET_DEFAULT_CHOICES",
    "DATASET_DEFAULT_KEYS",
    "ControlNetSupport",
    "PresetInfo",
    "check_dataset_defaults",
]

#: What a preset may calibrate for dataset runs in its identity space: the separation between
#: sampled identities, the verifier's similarity window, and the leakage threshold (the
#: largest cosine a sampled identity may have to any identity the model was trained on).
DATASET_DEFAULT_KEYS = (
    "identity_separation",
    "min_similarity",
    "max_similarity",
    "leakage_threshold",
    "verify_against",
)

#: The settings of :data:`DATASET_DEFAULT_KEYS` that name a choice rather than a cosine:
#: ``verify_against`` (what a dataset run checks images against: the sampled identity
#: vector, or the identity as the generator renders it; see
#: :mod:`facegen.pipelines.dataset.anchors`).
DATASET_DEFAULT_CHOICES: dict[str, tuple[str, ...]] = {"verify_against": ("target", "anchor")}


def check_dataset_defaults(defaults: Mapping[str, float | str]) -> None:
    """Raise :class:`~facegen.errors.InvalidArgumentError` unless every key of ``defaults``
    is one of :data:`DATASET_DEFAULT_KEYS` with a valid value (a cosine in [-1, 1], or one of
    :data:`DATASET_DEFAULT_CHOICES`)."""
    for key, value in defaults.items():
        check_choice(key, "dataset_defaults", DATASET_DEFAULT_KEYS)
        if key in DATASET_DEFAULT_CHOICES:
            check_choice(value, f"dataset_defaults.{key}", DATASET_DEFAULT_CHOICES[key])
        else:
            check_number(value, f"dataset_defaults.{key}", minimum=-1, maximum=1)


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
    #: dataset settings calibrated for the preset's identity space, used where a dataset run
    #: leaves them unset (keys of :data:`DATASET_DEFAULT_KEYS`); ArcFace-space values otherwise
    dataset_defaults: Mapping[str, float | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice(self.controlnet, "controlnet", _CONTROLNET_SUPPORT)
        check_choice(self.family, "family", _FAMILIES)
        check_int(self.default_steps, "default_steps", minimum=1)
        check_number(self.default_guidance, "default_guidance", minimum=0)
        check_dataset_defaults(self.dataset_defaults)

    @property
    def needs_control_image(self) -> bool:
        """Every call needs a control image (the preset always has a ControlNet)."""
        return self.controlnet == "built-in"

    @property
    def generates_faces(self) -> bool:
        """Makes whole faces from an identity (not a masked edit of a photo)."""
        return not self.inpainting
