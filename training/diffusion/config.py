"""The configuration and result types shared by facegen's generative training loops.

:class:`TrainConfig` holds the fields every loop has; each loop's config
(:class:`~facegen.training.diffusion.lora.LoraTrainConfig`,
:class:`~facegen.training.diffusion.adapter.AdapterTrainConfig`,
:class:`~facegen.training.diffusion.controlnet.ControlNetTrainConfig`) adds its own. Configs are
validated on creation (errors name the field, what it must be and what it got) and convert
to and from plain dicts (``from_dict`` / ``to_dict``) for the CLI, config files and the
metadata written next to trained weights.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facegen.errors import InvalidArgumentError, UnknownNameError
from facegen.training.diffusion.face_cache import TEMPLATES

__all__ = [
    "LR_SCHEDULERS",
    "MIXED_PRECISIONS",
    "ProgressCallback",
    "TrainConfig",
    "TrainResult",
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
#: ``progress(step, total_steps, logs)`` after every optimizer step (e.g. a GUI progress bar).
ProgressCallback = Callable[[int, int, Mapping[str, float]], None]


def _check_int(name: str, v: Any, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise InvalidArgumentError(f"`{name}` must be an integer >= {lo}, got {v!r}")


def _check_float(
    name: str, v: Any, lo: float, hi: float = math.inf, *, lo_open: bool = False
) -> None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or v < lo or v > hi or (lo_open and v == lo):
        bound = f"> {lo:g}" if lo_open else f">= {lo:g}"
        rng = f"{bound}" if hi == math.inf else f"in [{lo:g}, {hi:g}]"
        raise InvalidArgumentError(f"`{name}` must be a finite number {rng}, got {v!r}")


#: Defaults of the settings that depend on the base model (``None``: every real base, SD1.5
#: and Arc2Face).
BASE_DEFAULTS: dict[str | None, dict[str, int]] = {
    None: {"resolution": 512, "validation_inference_steps": 25},
    "tiny": {"resolution": 64, "validation_inference_steps": 4},
}


@dataclass(kw_only=True)
class TrainConfig:
    """Fields shared by the generative training loops (each loop's config adds its own).

    Data: ``data_dir`` (a folder of photos, searched recursively; a ``photo.txt`` beside a
    photo is its caption), ``cache_dir`` (default ``output_dir/face_cache``; reused while photos
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
        if self.crop_template is not None and self.crop_template not in TEMPLATES:
            raise InvalidArgumentError(
                f"`crop_template` must be one of {', '.join(TEMPLATES)}, got {self.crop_template!r}"
            )
        if self.select not in ("largest", "best", "all"):
            raise InvalidArgumentError(
                f"`select` must be 'largest', 'best' or 'all', got {self.select!r}"
            )
        _check_int("resolution", self.resolution, 16)
        if self.resolution % 8:
            raise InvalidArgumentError(
                f"`resolution` must be a multiple of 8, got {self.resolution}"
            )
        for name, lo in (
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
        ):
            _check_int(name, getattr(self, name), lo)
        if self.checkpoints_total_limit is not None:
            _check_int("checkpoints_total_limit", self.checkpoints_total_limit, 1)
        _check_float("learning_rate", self.learning_rate, 0.0, lo_open=True)
        _check_float("crop_margin", self.crop_margin, 0.0, 10.0, lo_open=True)
        _check_float("adam_beta1", self.adam_beta1, 0.0, 1.0)
        _check_float("adam_beta2", self.adam_beta2, 0.0, 1.0)
        _check_float("adam_weight_decay", self.adam_weight_decay, 0.0)
        _check_float("adam_epsilon", self.adam_epsilon, 0.0, lo_open=True)
        _check_float("noise_offset", self.noise_offset, 0.0, 1.0)
        if self.max_grad_norm is not None:
            _check_float("max_grad_norm", self.max_grad_norm, 0.0, lo_open=True)
        if self.snr_gamma is not None:
            _check_float("snr_gamma", self.snr_gamma, 0.0, lo_open=True)
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise UnknownNameError("LR scheduler", self.lr_scheduler, LR_SCHEDULERS)
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise InvalidArgumentError(
                f"`mixed_precision` must be one of {', '.join(MIXED_PRECISIONS)}, "
                f"got {self.mixed_precision!r}"
            )
        for name in ("detector_options", "landmarker_options", "encoder_options"):
            if not isinstance(getattr(self, name), dict):
                raise InvalidArgumentError(f"`{name}` must be a dict, got {getattr(self, name)!r}")

    # -- (de)serialisation -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
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
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.output_dir) / "face_cache"


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
