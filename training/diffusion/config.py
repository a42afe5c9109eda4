"""The configuration and result types shared by facegen's generative training loops.

:class:`TrainConfig` holds the fields every loop has; each loop's config
(:class:`~facegen.training.diffusion.lora.LoraTrainConfig`,
:class:`~facegen.training.diffusion.adapter.AdapterTrainConfig`,
:class:`~facegen.training.diffusion.controlnet.ControlNetTrainConfig`,
:class:`~facegen.training.diffusion.generator.GeneratorTrainConfig`) adds its own;
:class:`ConditionedTrainConfig` adds the conditioning (prompts or Arc2Face identities) the
LoRA and ControlNet loops share. Configs are
validated on creation (errors name the field, what it must be and what it got) and convert
to and from plain dicts (``from_dict`` / ``to_dict``) for the CLI, config files and the
metadata written next to trained weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from facegen.errors import InvalidArgumentError, UnknownNameError
from facegen.training.diffusion.face_cache import SELECTIONS, TEMPLATES
from facegen.validate import check_choice, check_int, check_number

__all__ = [
    "ANALYZERS",
    "CONDITIONINGS",
    "LR_SCHEDULERS",
    "MIXED_PRECISIONS",
    "ConditionedTrainConfig",
    "ProgressCallback",
    "TrainConfig",
    "TrainResult",
    "default_conditioning",
]

MIXED_PRECISIONS = ("no", "fp16", "bf16")
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
C = TypeVar("C", bound="TrainConfig")
#: ``progress(step, total_steps, logs)`` after every optimizer step (e.g. a GUI progress bar).
ProgressCallback = Callable[[int, int, Mapping[str, float]], None]


#: A registry name and its options (a detector's, an identity encoder's).
NamedOptions = tuple[str, dict[str, Any]]
#: How the LoRA and ControlNet loops condition the UNet: on text prompts (SD1.5-style bases)
#: or on Arc2Face identities (the person's ArcFace embedding through Arc2Face's ID encoder).
CONDITIONINGS = ("prompt", "arc2face")
#: The face analysis each conditioning needs by default, ``(detector, identity encoder)``:
#: Arc2Face's own ArcFace for ``"arc2face"`` (the encoder the model was trained on).
ANALYZERS: dict[str, tuple[NamedOptions, NamedOptions]] = {
    "prompt": (("dlib", {}), ("dlib", {})),
    "arc2face": (
        ("insightface", {"preset": "antelopev2"}),
        ("arcface-onnx", {"preset": "arc2face-arcface"}),
    ),
}


#: The integer settings and their smallest values.
_INT_MINIMUMS = (
    ("batch_size", 1),
    ("max_steps", 1),
    ("lr_warmup_steps", 0),
    ("grad_accum_steps", 1),
    ("seed", 0),
    ("checkpointing_steps", 0),
    ("validation_steps", 0),
    ("num_validation_images", 0),
    ("validation_inference_steps", 1),
    ("log_every", 1),
    ("num_workers", 0),
)
#: The number settings and their bounds (:func:`facegen.validate.check_number`'s keywords).
_NUMBER_BOUNDS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("learning_rate", {"minimum": 0, "min_open": True}),
    ("crop_margin", {"minimum": 0, "maximum": 10, "min_open": True}),
    ("adam_beta1", {"minimum": 0, "maximum": 1}),
    ("adam_beta2", {"minimum": 0, "maximum": 1}),
    ("adam_weight_decay", {"minimum": 0}),
    ("adam_epsilon", {"minimum": 0, "min_open": True}),
    ("noise_offset", {"minimum": 0, "maximum": 1}),
    ("max_grad_norm", {"minimum": 0, "min_open": True}),
    ("snr_gamma", {"minimum": 0, "min_open": True}),
)
#: The number settings that may be None (off).
_OPTIONAL = ("max_grad_norm", "snr_gamma")

#: Defaults of the settings that depend on the base model (``None``: every real base, SD1.5
#: and Arc2Face; ``"scratch"``: a generator trained from scratch, 64×64).
BASE_DEFAULTS: dict[str | None, dict[str, int]] = {
    None: {"resolution": 512, "validation_inference_steps": 25},
    "tiny": {"resolution": 64, "validation_inference_steps": 4},
    "scratch": {"resolution": 64, "validation_inference_steps": 25},
}


@dataclass(kw_only=True)
class TrainConfig:
    """Fields shared by the generative training loops (each loop's config adds its own).

    Data: ``data_dir`` (a folder of photos, searched recursively; a ``photo.txt`` beside a
    photo is its caption; or WebDataset shards — a ``.tar``, a brace pattern such as
    ``shards-{000..099}.tar``, a folder of them — or a ``facegen dataset generate`` folder,
    streamed, see :mod:`.photo_sources`), ``cache_dir`` (default ``output_dir/face_cache``; reused while photos
    and settings are unchanged, ``rebuild_cache`` forces a rebuild). Faces:
    ``detector`` / ``landmarker`` / ``encoder`` registry names with ``*_options``
    (:mod:`facegen.backends`; None = the loop's default; ``landmarker=None`` uses the
    detector's own 68 points — dlib's detectors have them — and adds ``"dlib68"`` only where
    the loop needs landmarks and the detector has none), ``select`` (``"largest"``,
    ``"best"`` or ``"all"`` faces per photo), ``crop_template`` (``"ffhq"`` or ``"arcface"``;
    None = the loop's default) and ``crop_margin`` (FFHQ only) at ``resolution`` pixels
    (None: the base model's default, :data:`BASE_DEFAULTS`: 512, or 64 for ``"tiny"``).
    Model: ``base_model`` (``"tiny"``, ``"arc2face"``, or an SD1.5 diffusers folder / hub id),
    ``revision``, ``local_files_only``. Optimisation: ``batch_size`` (per device),
    ``max_steps`` (optimizer steps), ``learning_rate``, ``lr_scheduler`` (diffusers'
    names), ``lr_warmup_steps``, AdamW's ``adam_*``, ``max_grad_norm`` (None = no clipping),
    ``grad_accum_steps``, ``mixed_precision`` (``"no"``, ``"fp16"`` (GPU), ``"bf16"``),
    ``gradient_checkpointing``, ``seed``, ``noise_offset``, ``snr_gamma`` (min-SNR-γ, None =
    plain MSE). Bookkeeping: ``checkpointing_steps`` (0 = none; otherwise the last step is
    checkpointed too, so a run can be extended), ``checkpoints_total_limit``,
    ``resume_from_checkpoint`` (``"latest"`` or a ``checkpoint-N`` folder),
    ``validation_steps`` (0 = only at the end), ``num_validation_images`` (0 = never),
    ``validation_inference_steps`` (None: 25, or 4 for ``"tiny"``), ``log_every``, ``tensorboard``, ``num_workers``,
    ``cpu`` (force the CPU).
    """

    output_dir: str
    data_dir: str
    cache_dir: str | None = None
    rebuild_cache: bool = False
    base_model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    revision: str | None = None
    local_files_only: bool | None = None
    resolution: int | None = None
    crop_template: str | None = None
    crop_margin: float = 1.0
    select: str = "largest"
    detector: str | None = None
    detector_options: dict[str, Any] = field(default_factory=dict)
    landmarker: str | None = None
    landmarker_options: dict[str, Any] = field(default_factory=dict)
    encoder: str | None = None
    encoder_options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 1
    max_steps: int = 500
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = 1.0
    grad_accum_steps: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    seed: int = 0
    noise_offset: float = 0.0
    snr_gamma: float | None = None
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None
    validation_steps: int = 0
    num_validation_images: int = 2
    validation_inference_steps: int | None = None
    log_every: int = 10
    tensorboard: bool = True
    num_workers: int = 0
    cpu: bool = False

    def __post_init__(self) -> None:
        self.output_dir, self.data_dir = str(self.output_dir), str(self.data_dir)
        # settings left unset take the base model's defaults (the random "tiny" base is
        # trained small: at 512 px a tiny run takes minutes per step on a CPU)
        defaults = BASE_DEFAULTS.get(self.base_model, BASE_DEFAULTS[None])
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.crop_template is not None:
            check_choice(self.crop_template, "crop_template", TEMPLATES)
        check_choice(self.select, "select", SELECTIONS)
        resolution = check_int(self.resolution, "resolution", minimum=16)
        if resolution % 8:
            raise InvalidArgumentError(f"`resolution` must be a multiple of 8, got {resolution}")
        for name, lo in _INT_MINIMUMS:
            check_int(getattr(self, name), name, minimum=lo)
        if self.checkpoints_total_limit is not None:
            check_int(self.checkpoints_total_limit, "checkpoints_total_limit", minimum=1)
        for name, bounds in _NUMBER_BOUNDS:
            if name not in _OPTIONAL or getattr(self, name) is not None:
                check_number(getattr(self, name), name, **bounds)
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise UnknownNameError("LR scheduler", self.lr_scheduler, LR_SCHEDULERS)
        check_choice(self.mixed_precision, "mixed_precision", MIXED_PRECISIONS)
        for name in ("detector_options", "landmarker_options", "encoder_options"):
            if not isinstance(getattr(self, name), dict):
                raise InvalidArgumentError(f"`{name}` must be a dict, got {getattr(self, name)!r}")

    # -- (de)serialisation -------------------------------------------------------------------
    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Build from a mapping (JSON/YAML); unknown keys are refused, lists become tuples."""
        if not isinstance(data, Mapping):
            raise InvalidArgumentError(
                f"a training config must be a mapping, got {type(data).__name__}"
            )
        fields_ = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields_))
        if unknown:
            raise UnknownNameError(f"{cls.__name__} field", unknown[0], fields_)
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists) that :meth:`from_dict` reads back."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @property
    def template(self) -> str:
        """The crop template: ``crop_template``, else the loop's default (here ``"ffhq"``)."""
        return self.crop_template or "ffhq"

    @property
    def analyzer_defaults(self) -> tuple[NamedOptions, NamedOptions]:
        """The ``(detector, encoder)`` used where ``detector`` / ``encoder`` are None
        (here dlib's: offline, and with 68 landmarks)."""
        return ANALYZERS["prompt"]

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.output_dir) / "face_cache"

    def prepare_photo_inputs(self) -> list[str]:
        """What the face cache reads: ``data_dir`` (a loop that derives more photos from it
        makes them here; called on the main process only, before the cache is built)."""
        return [self.data_dir]


def default_conditioning(base_model: str) -> str:
    """``"arc2face"`` for the Arc2Face base, ``"prompt"`` for everything else."""
    return "arc2face" if base_model == "arc2face" else "prompt"


@dataclass(kw_only=True)
class ConditionedTrainConfig(TrainConfig):
    """:class:`TrainConfig` of a loop conditioned on prompts or on Arc2Face identities.

    ``conditioning``: one of :data:`CONDITIONINGS` (None: ``"arc2face"`` for
    ``base_model="arc2face"``, else ``"prompt"``); it picks the default crop template
    (:attr:`template`) and face analysis (:attr:`analyzer_defaults`).
    """

    conditioning: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.conditioning is None:
            self.conditioning = default_conditioning(self.base_model)
        check_choice(self.conditioning, "conditioning", CONDITIONINGS)

    @property
    def arc2face(self) -> bool:
        """Whether the UNet is conditioned on Arc2Face identities."""
        return self.conditioning == "arc2face"

    @property
    def template(self) -> str:
        """The crop template: ``crop_template``, else ``"arcface"`` for Arc2Face (the
        alignment it was trained on), ``"ffhq"`` for prompts."""
        if self.crop_template is not None:
            return self.crop_template
        return "arcface" if self.arc2face else "ffhq"

    @property
    def analyzer_defaults(self) -> tuple[NamedOptions, NamedOptions]:
        """The ``(detector, encoder)`` used where ``detector`` / ``encoder`` are None."""
        return ANALYZERS[self.conditioning or "prompt"]


@dataclass
class TrainResult:
    """What a training run produced. ``weights``: the file (or folder) a loader reads;
    ``metadata``: facegen's JSON next to it; ``losses``: one per optimizer step of this run."""

    output_dir: Path
    weights: Path
    metadata: Path
    start_step: int
    steps: int
    losses: list[float] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    validation_images: list[Path] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
