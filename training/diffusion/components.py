"""What every generative training loop sets up before
:func:`~facegen.training.diffusion.loop.run_training` and writes after it.

* :func:`prepare_run` → :class:`TrainingRun`: the Accelerator (seeded), the base model's
  components (loaded, or injected and checked), frozen on the device in the run's precision,
  the face analyzer and the face cache of the photos. A loop adds only what it trains.
* the pieces it is made of: :func:`accelerator_for`, :func:`load_components` /
  :func:`check_components`, :func:`weight_dtype`, :func:`build_analyzer`,
  :func:`prepare_face_cache`, :func:`inference_precision` (validation and generated class
  images).
* :meth:`TrainingRun.finish`: the trained weights and their metadata (written on the main
  process; :func:`write_metadata` adds facegen's version) and the :class:`TrainResult`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from facegen._version import __version__
from facegen.errors import InvalidArgumentError
from facegen.fileio import write_json
from facegen.training.diffusion.config import (
    NamedOptions,
    ProgressCallback,
    TrainConfig,
    TrainResult,
)
from facegen.training.diffusion.face_cache import FaceCache
from facegen.training.diffusion.face_cache_build import build_face_cache
from facegen.training.diffusion.objective import PromptEncoder

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, PreTrainedTokenizerBase

    from facegen.analyzer import FaceAnalyzer
    from facegen.training.diffusion.loop import LoopOutcome, LossFunction, Validation

__all__ = [
    "COMPONENT_NAMES",
    "DETECTORS_WITH_68",
    "NO_SAFETY_CHECKER",
    "TrainingRun",
    "accelerator_for",
    "build_analyzer",
    "check_components",
    "check_config",
    "inference_precision",
    "load_components",
    "prepare_face_cache",
    "prepare_run",
    "weight_dtype",
    "write_metadata",
]

logger = logging.getLogger(__name__)

#: The components a loop needs; ``components=`` may inject them (tests inject tiny ones).
COMPONENT_NAMES = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
#: What an SD1.5 pipeline built for training gets instead of a safety checker.
NO_SAFETY_CHECKER: dict[str, Any] = {
    "safety_checker": None,
    "feature_extractor": None,
    "requires_safety_checker": False,
}
#: Detectors that find iBUG 68-point landmarks themselves.
DETECTORS_WITH_68 = ("dlib", "dlib-cnn")

C = TypeVar("C", bound=TrainConfig)
C_co = TypeVar("C_co", bound=TrainConfig, covariant=True)
P = TypeVar("P", bound="StableDiffusionPipeline")


# --------------------------------------------------------------------------- the pieces


def accelerator_for(cfg: TrainConfig) -> Accelerator:
    """An ``accelerate.Accelerator`` for ``cfg`` (seeded; TensorBoard under ``logs/``)."""
    from facegen.training.run import make_accelerator

    return make_accelerator(
        cfg.output_dir,
        mixed_precision=cfg.mixed_precision,
        grad_accum_steps=cfg.grad_accum_steps,
        cpu=cfg.cpu,
        seed=cfg.seed,
        tensorboard=cfg.tensorboard,
    )


def weight_dtype(accelerator: Accelerator) -> torch.dtype:
    """The dtype of the frozen weights: half precision under mixed precision, else float32."""
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )


def generator_folder_of(base_model: str) -> Path | None:
    """The generator folder ``base_model`` names (``"demo-orl"``: the shipped one; a folder
    holding ``facegen_generator.json``), else None."""
    from facegen.pipelines.generation.generator_folder import is_generator_folder
    from facegen.pipelines.generation.preset_builders import DEMO_ORL_NAME, demo_orl_dir

    folder = demo_orl_dir() if base_model == DEMO_ORL_NAME else Path(base_model)
    return folder if is_generator_folder(folder) else None


def load_components(
    base_model: str, *, revision: str | None = None, local_files_only: bool | None = None
) -> dict[str, Any]:
    """``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler`` of ``base_model``.

    ``"tiny"``: facegen's tiny random components (seed 0, the ``tiny`` preset's);
    ``"arc2face"``: the Arc2Face preset's (``FoivosPar/Arc2Face`` + SD1.5's VAE); a generator
    folder (``facegen train generator``'s output) or ``"demo-orl"``: its own; anything else: an SD1.5-layout
    diffusers folder or hub id.
    """
    if base_model == "tiny":
        from facegen.pipelines.generation.tiny import tiny_components

        return tiny_components(0)
    if base_model == "arc2face":
        from facegen.pipelines.generation.presets import from_preset

        pipe = from_preset("arc2face", with_analyzer=False, local_files_only=local_files_only)
        return {k: pipe.components[k] for k in COMPONENT_NAMES}
    folder = generator_folder_of(base_model)
    if folder is not None:
        from facegen.pipelines.generation.generator_folder import load_generator

        pipe = load_generator(folder, with_analyzer=False)
        return {k: pipe.components[k] for k in COMPONENT_NAMES}
    from diffusers import StableDiffusionPipeline

    from facegen.hub import load_pretrained

    pipe = load_pretrained(
        StableDiffusionPipeline,
        base_model,
        None,
        revision=revision,
        local_files_only=local_files_only,
        **NO_SAFETY_CHECKER,
    )
    return {k: pipe.components[k] for k in COMPONENT_NAMES}


def check_components(components: Mapping[str, Any], extra: Sequence[str] = ()) -> dict[str, Any]:
    """The injected ``components`` with every name the loop needs (and nothing unknown)."""
    if not isinstance(components, Mapping):
        raise InvalidArgumentError(
            f"`components` must be a dict of {', '.join(COMPONENT_NAMES)}, got {type(components).__name__}"
        )
    missing = [k for k in COMPONENT_NAMES if components.get(k) is None]
    if missing:
        raise InvalidArgumentError(
            f"`components` must hold {', '.join(COMPONENT_NAMES)}, got it without {', '.join(missing)}"
        )
    allowed = {*COMPONENT_NAMES, "analyzer", *extra}
    unknown = sorted(set(components) - allowed)
    if unknown:
        raise InvalidArgumentError(
            f"`components` may hold {', '.join(sorted(allowed))}, got unknown {', '.join(unknown)}"
        )
    return dict(components)


def build_analyzer(
    cfg: TrainConfig,
    *,
    detector: NamedOptions,
    encoder: NamedOptions,
    need_landmarks: bool = False,
) -> FaceAnalyzer:
    """A FaceAnalyzer from ``cfg``'s names, falling back to the loop's defaults
    (``need_landmarks``: add ``"dlib68"`` when neither detector nor landmarker has 68 points)."""
    from facegen.analyzer import FaceAnalyzer

    det, det_opts = (cfg.detector, cfg.detector_options) if cfg.detector else detector
    enc, enc_opts = (cfg.encoder, cfg.encoder_options) if cfg.encoder else encoder
    landmarker = cfg.landmarker
    if landmarker is None and need_landmarks and det not in DETECTORS_WITH_68:
        landmarker = "dlib68"
    return FaceAnalyzer.from_names(
        det,
        landmarker,
        enc,
        offline=cfg.local_files_only,
        detector_options=det_opts,
        landmarker_options=cfg.landmarker_options,
        encoder_options=enc_opts,
    )


def prepare_face_cache(
    cfg: TrainConfig,
    accelerator: Accelerator,
    *,
    analyzer: FaceAnalyzer,
    vae: AutoencoderKL,
    template: str,
    flip: bool = False,
) -> FaceCache:
    """Build (on the main process) or reuse the face cache of ``cfg.data_dir`` at
    ``cfg.cache_path``; every process then opens it."""
    if accelerator.is_main_process:
        inputs = cfg.prepare_photo_inputs()
        build_face_cache(
            inputs[0] if len(inputs) == 1 else inputs,
            cfg.cache_path,
            analyzer=analyzer,
            size=int(cfg.resolution or 0),
            template=template,  # type: ignore[arg-type]
            margin=cfg.crop_margin,
            select=cfg.select,
            vae=vae,
            flip=flip,
            overwrite=cfg.rebuild_cache,
        )
    accelerator.wait_for_everyone()
    return FaceCache(cfg.cache_path)


@contextlib.contextmanager
def inference_precision(accelerator: Accelerator, *models: torch.nn.Module) -> Iterator[None]:
    """The precision validation pipelines run in.

    On a GPU, autocast (what diffusers' training scripts do). On the CPU with half-precision
    frozen weights, CPU autocast leaves some ops (group norm after an upsample) with mixed
    dtypes, so there the half-precision weights of ``models`` are float32 for the block and
    restored (the very same tensors) afterwards.
    """
    import torch

    if accelerator.device.type != "cpu" or accelerator.mixed_precision == "no":
        with accelerator.autocast():
            yield
        return
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    for m in models:
        for t in itertools.chain(m.parameters(), m.buffers()):
            if t.dtype in (torch.float16, torch.bfloat16):
                saved.append((t, t.data))
                t.data = t.data.float()
    try:
        yield
    finally:
        for t, data in saved:
            t.data = data


def write_metadata(path: Path, data: Mapping[str, Any]) -> Path:
    """Write the metadata of trained weights, ``data`` with ``facegen_version`` added, as
    indented JSON with sorted keys, atomically (:func:`facegen.fileio.write_json`)."""
    return write_json(path, {**data, "facegen_version": __version__}, sort_keys=True)


# --------------------------------------------------------------------------- the run


@dataclass
class TrainingRun(Generic[C_co]):
    """One generative training run as :func:`prepare_run` set it up: the validated config,
    the Accelerator, the base model's ``parts`` (frozen on the device), the face analyzer
    and the face cache."""

    cfg: C_co
    accelerator: Accelerator
    parts: dict[str, Any]
    analyzer: FaceAnalyzer
    cache: FaceCache

    @property
    def unet(self) -> UNet2DConditionModel:
        return self.parts["unet"]

    @property
    def vae(self) -> AutoencoderKL:
        return self.parts["vae"]

    @property
    def text_encoder(self) -> CLIPTextModel:
        return self.parts["text_encoder"]

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.parts["tokenizer"]

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def dtype(self) -> torch.dtype:
        """The frozen weights' dtype (:func:`weight_dtype`)."""
        return weight_dtype(self.accelerator)

    @property
    def output_dir(self) -> Path:
        return Path(self.cfg.output_dir)

    @cached_property
    def prompts(self) -> PromptEncoder:
        """Prompts → frozen CLIP ``prompt_embeds``, each prompt encoded once."""
        return PromptEncoder(self.text_encoder, self.tokenizer)

    @cached_property
    def noise_scheduler(self) -> DDPMScheduler:
        """The training noise schedule: DDPM with the base model's scheduler config."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(self.parts["scheduler"].config)

    def cast_frozen(self) -> None:
        """The frozen UNet and text encoder in the run's precision (the VAE only cached)."""
        import torch

        if self.dtype != torch.float32:
            self.unet.to(dtype=self.dtype)
            self.text_encoder.to(dtype=self.dtype)

    def precision(self) -> contextlib.AbstractContextManager[None]:
        """:func:`inference_precision` for the frozen UNet and text encoder."""
        return inference_precision(self.accelerator, self.unet, self.text_encoder)

    def pipeline(self, cls: type[P] | None = None, **modules: Any) -> P:
        """A ``cls`` pipeline (default: diffusers' ``StableDiffusionPipeline``) over this
        run's components, ``modules`` replacing or adding some (``controlnet=``), without a
        safety checker or progress bar."""
        from diffusers import StableDiffusionPipeline

        make: Any = cls or StableDiffusionPipeline
        parts = {**{k: self.parts[k] for k in COMPONENT_NAMES}, **modules}
        pipe = make(**parts, **NO_SAFETY_CHECKER)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def train(
        self,
        name: str,
        *,
        model: torch.nn.Module,
        params: Sequence[torch.nn.Parameter] | Sequence[dict[str, Any]],
        dataset: Any,
        loss_fn: LossFunction,
        validate: Validation | None,
        progress: bool | ProgressCallback | None,
        on_step: Callable[[int], None] | None = None,
        extra_models: Mapping[str, torch.nn.Module] | None = None,
    ) -> LoopOutcome:
        """:func:`~facegen.training.diffusion.loop.run_training` with this run's config."""
        from facegen.training.diffusion.loop import run_training

        return run_training(
            self.cfg,
            self.accelerator,
            model=model,
            params=params,
            dataset=dataset,
            loss_fn=loss_fn,
            validate=validate,
            progress=progress,
            name=name,
            on_step=on_step,
            extra_models=extra_models,
        )

    def record(self, steps: int) -> dict[str, Any]:
        """What every loop's metadata says about the run: base model, crop template and
        size, steps, and the whole training config."""
        return {
            "base_model": self.cfg.base_model,
            "crop_template": self.cfg.template,
            "resolution": self.cfg.resolution,
            "steps": steps,
            "training": self.cfg.to_dict(),
        }

    def finish(
        self,
        outcome: LoopOutcome,
        *,
        weights: Path,
        metadata: Path,
        save: Callable[[], object],
        extras: Mapping[str, Any] | None = None,
    ) -> TrainResult:
        """Run ``save()`` (writing ``weights`` and ``metadata``) on the main process, wait for
        every process, and describe the run."""
        if self.accelerator.is_main_process:
            save()
        self.accelerator.wait_for_everyone()
        return TrainResult(
            output_dir=self.output_dir,
            weights=weights,
            metadata=metadata,
            start_step=outcome.start_step,
            steps=outcome.steps,
            losses=outcome.losses,
            checkpoints=outcome.checkpoints,
            validation_images=outcome.validation_images,
            extras=dict(extras or {}),
        )


def check_config(config: object, config_type: type[C]) -> C:
    """``config`` when it is a ``config_type``; else :class:`InvalidArgumentError`."""
    if not isinstance(config, config_type):
        name = config_type.__name__
        article = "an" if name[:1] in "AEIOU" else "a"
        raise InvalidArgumentError(
            f"`config` must be {article} {name}, got {type(config).__name__}"
        )
    return config


def prepare_run(
    cfg: C,
    components: Mapping[str, Any] | None,
    *,
    need_landmarks: bool = False,
    extra_components: Sequence[str] = (),
    flip: bool = False,
    require: Sequence[str] = (),
    cast_frozen: bool = True,
) -> TrainingRun[C]:
    """Set up a run of ``cfg`` (a loop's config, see :func:`check_config`).

    ``components``: injected ``unet``, ``vae``, ``text_encoder``, ``tokenizer``,
    ``scheduler`` (and optionally ``analyzer``, a :class:`~facegen.analyzer.FaceAnalyzer`, and
    ``extra_components``), else the ``cfg.base_model``'s are loaded. They are changed in
    place: frozen and moved to the device, the UNet and text encoder in half precision under
    mixed precision (``cast_frozen=False``: later, by :meth:`TrainingRun.cast_frozen`, e.g.
    once a trained copy of the UNet is made), and the loop adds its trained modules.
    The face analyzer is the injected one, or built from the config's names (its
    ``analyzer_defaults`` where it names none); ``need_landmarks`` adds a 68-point
    landmarker when the detector has no such points. The face cache (``flip``: with the
    mirrored crops' latents) must hold the fields in ``require``.
    """
    accelerator = accelerator_for(cfg)
    parts = (
        check_components(components, extra=extra_components)
        if components is not None
        else load_components(
            cfg.base_model, revision=cfg.revision, local_files_only=cfg.local_files_only
        )
    )
    for k in ("unet", "vae", "text_encoder"):
        parts[k].requires_grad_(False)
        parts[k].to(accelerator.device)
    face_analyzer = parts.get("analyzer")
    if face_analyzer is None:
        det, enc = cfg.analyzer_defaults
        face_analyzer = build_analyzer(
            cfg, detector=det, encoder=enc, need_landmarks=need_landmarks
        )
    cache = prepare_face_cache(
        cfg, accelerator, analyzer=face_analyzer, vae=parts["vae"], template=cfg.template, flip=flip
    )
    for field in require:
        cache.require(field)
    run = TrainingRun(cfg, accelerator, parts, face_analyzer, cache)
    if cast_frozen:
        run.cast_frozen()
    return run
