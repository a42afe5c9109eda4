"""What facegen's generative training loops share.

* :class:`TrainConfig` (from :mod:`facegen.training.diffusion.config`): the fields every loop has
  (data, base model, face analysis and crop, optimisation, checkpoints, validation,
  logging), validated on creation, with ``from_dict`` / ``to_dict``;
* model loading (:func:`load_components`), the analyzer and the face cache
  (:func:`prepare_face_cache`, see :mod:`facegen.training.diffusion.face_cache`);
* the loop itself (:func:`run_training`): Accelerate (mixed precision, gradient
  accumulation, seeding, multi-GPU), AdamW + a diffusers LR schedule, ``checkpoint-N``
  folders written by :mod:`facegen.training.checkpoint` (safetensors + JSON, no pickle)
  holding only the trainable parameters of the model, resume from the latest (or a named)
  checkpoint exactly where it stopped, tqdm or a callback for progress, ``metrics.jsonl``
  and TensorBoard (when installed), validation images every ``validation_steps``;
* the denoising objective, re-exported from :mod:`facegen.training.diffusion.objective`
  (:func:`noisy_latents`, :func:`diffusion_loss`: ε / v-prediction, noise offset,
  min-SNR-γ weighting).

Output layout of every loop (``output_dir``)::

    <the trained weights and their metadata, see each loop>
    checkpoints/checkpoint-N/    the training state, only safetensors and JSON:
        trainable.safetensors          the trainable parameters (not the frozen base model)
        optimizer.safetensors/.json    AdamW's moments and step per parameter; its groups
        scheduler.json                 the LR schedule's state_dict
        scaler.json                    the fp16 gradient scaler's state (fp16 only)
        rng_<i>.safetensors/.json      process i's Python / numpy / torch / CUDA random
                                       states and the data loader's generator
        state.json                     written last: step counter, file sizes and SHA-256
    face_cache/                  the preprocessed photos (unless ``cache_dir`` says elsewhere)
    validation/step-N/*.png      validation images
    metrics.jsonl, logs/         loss and learning rate per logged step (logs/: TensorBoard)
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facegen._version import __version__
from facegen.errors import FacegenError, InvalidArgumentError
from facegen.fileio import atomic_write
from facegen.training.diffusion.config import (
    LR_SCHEDULERS,
    MIXED_PRECISIONS,
    ProgressCallback,
    TrainConfig,
    TrainResult,
)
from facegen.training.diffusion.face_cache import FaceCache, build_face_cache
from facegen.training.diffusion.objective import PromptEncoder, diffusion_loss, noisy_latents
from facegen.training.resume import resolve_resume

__all__ = [
    "CHECKPOINT_PREFIX",
    "LR_SCHEDULERS",
    "MIXED_PRECISIONS",
    "ProgressCallback",
    "PromptEncoder",
    "TrainConfig",
    "TrainResult",
    "build_analyzer",
    "diffusion_loss",
    "inference_precision",
    "latest_checkpoint",
    "load_components",
    "make_accelerator",
    "noisy_latents",
    "prepare_face_cache",
    "run_training",
    "weight_dtype",
    "write_json",
]

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
#: The components a loop needs; ``components=`` may inject them (tests inject tiny ones).
COMPONENT_NAMES = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


# --------------------------------------------------------------------------- setup


def _trackers(cfg: TrainConfig) -> list[str] | None:
    if cfg.tensorboard and (
        importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
    ):
        return ["tensorboard"]
    if cfg.tensorboard:
        logger.info("tensorboard is not installed; logging to metrics.jsonl only")
    return None


def make_accelerator(cfg: TrainConfig) -> Any:
    """An ``accelerate.Accelerator`` for ``cfg`` (seeded; TensorBoard under ``logs/``)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _allow_new_precision(cfg)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum_steps,
        cpu=cfg.cpu,
        log_with=_trackers(cfg),
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
    )
    set_seed(cfg.seed)
    return accelerator


def _allow_new_precision(cfg: TrainConfig) -> None:
    """Let a second run in the same process (an app, a notebook) use another precision.

    Accelerate keeps one process-wide state and refuses an ``Accelerator`` whose
    ``mixed_precision`` or ``cpu`` differs from the first one's; the launch-level part
    (processes, devices) is kept, only the per-run part is reset.
    """
    from accelerate.state import AcceleratorState

    if not AcceleratorState._shared_state:
        return
    state = AcceleratorState()
    wants_cpu = cfg.cpu and state.device.type != "cpu"
    if str(state.mixed_precision) != cfg.mixed_precision or wants_cpu:
        AcceleratorState._reset_state(reset_partial_state=False)


def weight_dtype(accelerator: Any) -> Any:
    """The dtype of the frozen weights: half precision under mixed precision, else float32."""
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )


def load_components(
    base_model: str, *, revision: str | None = None, local_files_only: bool | None = None
) -> dict[str, Any]:
    """``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler`` of ``base_model``.

    ``"tiny"``: facegen's tiny random components (seed 0, the ``tiny`` preset's);
    ``"arc2face"``: the Arc2Face preset's (``FoivosPar/Arc2Face`` + SD1.5's VAE);
    anything else: an SD1.5-layout diffusers folder or hub id.
    """
    if base_model == "tiny":
        from facegen.pipelines.generation.tiny import tiny_components

        return tiny_components(0)
    if base_model == "arc2face":
        from facegen.pipelines.generation.presets import from_preset

        pipe = from_preset("arc2face", with_analyzer=False, local_files_only=local_files_only)
        return {k: pipe.components[k] for k in COMPONENT_NAMES}
    from diffusers import StableDiffusionPipeline

    from facegen.hub import load_pretrained

    pipe = load_pretrained(
        StableDiffusionPipeline,
        base_model,
        None,
        revision=revision,
        local_files_only=local_files_only,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
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


#: Detectors that find iBUG 68-point landmarks themselves.
DETECTORS_WITH_68 = ("dlib", "dlib-cnn")


def build_analyzer(
    cfg: TrainConfig,
    *,
    detector: tuple[str, dict[str, Any]],
    encoder: tuple[str, dict[str, Any]],
    need_landmarks: bool = False,
) -> Any:
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
    accelerator: Any,
    *,
    analyzer: Any,
    vae: Any,
    template: str,
    flip: bool = False,
) -> FaceCache:
    """Build (on the main process) or reuse the face cache of ``cfg.data_dir`` at
    ``cfg.cache_path``; every process then opens it."""
    if accelerator.is_main_process:
        build_face_cache(
            cfg.data_dir,
            cfg.cache_path,
            analyzer=analyzer,
            size=cfg.resolution,
            template=template,  # type: ignore[arg-type]
            margin=cfg.crop_margin,
            select=cfg.select,
            vae=vae,
            flip=flip,
            overwrite=cfg.rebuild_cache,
        )
    accelerator.wait_for_everyone()
    return FaceCache(cfg.cache_path)


# --------------------------------------------------------------------------- checkpoints


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete ``checkpoint-N`` folder with the largest ``N``, or None."""
    from facegen.training import checkpoint

    return checkpoint.latest_checkpoint(output_dir, CHECKPOINT_PREFIX)


def _save_checkpoint(
    accelerator: Any, cfg: TrainConfig, step: int, name: str, **parts: Any
) -> Path:
    from facegen.training import checkpoint

    path = Path(cfg.output_dir) / "checkpoints" / f"{CHECKPOINT_PREFIX}{step}"
    checkpoint.save_checkpoint(
        path,
        accelerator,
        loop=name,
        counters={"global_step": step},
        trainable_only=True,
        **parts,
    )
    if accelerator.is_main_process:
        checkpoint.prune_checkpoints(cfg.output_dir, CHECKPOINT_PREFIX, cfg.checkpoints_total_limit)
    logger.info("saved checkpoint %s", path)
    return path


# --------------------------------------------------------------------------- the loop


@dataclass
class LoopOutcome:
    start_step: int
    steps: int
    losses: list[float]
    checkpoints: list[Path]
    validation_images: list[Path]


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = torch.stack(vals) if torch.is_tensor(vals[0]) else vals
    return out


def run_training(
    cfg: TrainConfig,
    accelerator: Any,
    *,
    model: Any,
    params: Sequence[Any],
    dataset: Any,
    loss_fn: Callable[[Any, dict[str, Any]], Any],
    validate: Callable[[int], list[Any]] | None = None,
    progress: bool | ProgressCallback | None = None,
    name: str = "training",
) -> LoopOutcome:
    """Optimise ``params`` (inside ``model``) on ``dataset`` for ``cfg.max_steps`` steps.

    ``loss_fn(prepared_model, batch)`` returns the scalar loss of a collated batch.
    ``validate(step)`` returns PIL images (saved under ``validation/step-N``, logged to
    TensorBoard). ``progress``: None/True = a tqdm bar, False = none, a callable =
    :data:`ProgressCallback`. Resumes from ``cfg.resume_from_checkpoint``.
    """
    import torch
    from diffusers.optimization import get_scheduler
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from facegen.training import checkpoint

    params = list(params)
    if not params:
        raise InvalidArgumentError("there is nothing to train: no parameter requires grad")
    if len(dataset) < cfg.batch_size:
        raise InvalidArgumentError(
            f"`batch_size` must be <= the number of training examples ({len(dataset)}), "
            f"got {cfg.batch_size}"
        )
    out = Path(cfg.output_dir)
    main = accelerator.is_main_process
    optimizer = torch.optim.AdamW(
        params,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay,
        eps=cfg.adam_epsilon,
    )
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=_collate,
        num_workers=cfg.num_workers,
        # its own generator: making an iterator must not draw from the global RNG, or a
        # resumed run (which makes one more) would draw other noise than an unbroken one
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    n = accelerator.num_processes
    scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=cfg.lr_warmup_steps * n,
        num_training_steps=cfg.max_steps * n,
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    # what a checkpoint holds: the trainable parameters of ``model`` (a LoRA, an adapter, a
    # ControlNet; not the frozen UNet they may live in), the optimizer, the LR schedule and
    # the random states, including the loader's own generator
    parts = {
        "models": {"trainable": model},
        "optimizer": optimizer,
        "scheduler": scheduler,
        "loaders": [loader],
    }
    global_step = 0
    resume = resolve_resume(
        cfg.resume_from_checkpoint,
        lambda: latest_checkpoint(cfg.output_dir),
        field="resume_from_checkpoint",
        output_dir=cfg.output_dir,
    )
    if resume is not None:
        counters = checkpoint.load_checkpoint(
            resume, accelerator, loop=name, trainable_only=True, **parts
        )
        global_step = counters["global_step"]
        logger.info("resumed from %s at step %d", resume, global_step)
    start = global_step
    tracked = bool(getattr(accelerator, "log_with", None))
    if tracked:
        accelerator.init_trackers(name, config=_flat(cfg.to_dict()))

    steps_per_epoch = max(1, math.ceil(len(loader) / cfg.grad_accum_steps))
    outcome = LoopOutcome(start, start, [], [], [])
    callback = progress if callable(progress) else None
    quiet = not main or callback is not None or progress is False
    # disable=None: tqdm shows the bar only on a terminal
    bar = tqdm(total=cfg.max_steps, initial=start, desc=name, disable=True if quiet else None)
    metrics = open(out / "metrics.jsonl", "a", encoding="utf-8") if main else None  # noqa: SIM115
    window: list[float] = []
    micro: list[float] = []
    t0 = time.perf_counter()
    epoch = start // steps_per_epoch
    skip = (start % steps_per_epoch) * cfg.grad_accum_steps
    try:
        while global_step < cfg.max_steps:
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            batches = accelerator.skip_first_batches(loader, skip) if skip else loader
            skip = 0
            model.train()
            for batch in batches:
                with accelerator.accumulate(model):
                    loss = loss_fn(model, batch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm is not None:
                        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                micro.append(float(accelerator.gather(loss.detach()).mean()))
                if not accelerator.sync_gradients:
                    continue
                global_step += 1
                step = global_step
                value = sum(micro) / len(micro)
                if not math.isfinite(value):
                    raise FacegenError(
                        f"the loss must stay finite, got {value} at step {step}; lower "
                        "`learning_rate`, or use bf16 instead of fp16 mixed precision"
                    )
                micro = []
                outcome.losses.append(value)
                window.append(value)
                logs = {"loss": value, "lr": float(scheduler.get_last_lr()[0])}
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
                if callback is not None:
                    callback(step, cfg.max_steps, logs)
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    rec = {
                        "step": step,
                        "loss": sum(window) / len(window),
                        "lr": logs["lr"],
                        "steps_per_s": len(window) / max(1e-9, time.perf_counter() - t0),
                    }
                    window, t0 = [], time.perf_counter()
                    _log(accelerator, metrics, rec, tracked)
                if cfg.checkpointing_steps and step % cfg.checkpointing_steps == 0:
                    outcome.checkpoints.append(
                        _save_checkpoint(accelerator, cfg, step, name, **parts)
                    )
                final = step == cfg.max_steps
                if (
                    validate is not None
                    and cfg.num_validation_images
                    and (final or (cfg.validation_steps and step % cfg.validation_steps == 0))
                ):
                    # validation can take longer than many steps: say so on the bar
                    bar.set_description(
                        f"{name}: {cfg.num_validation_images} validation image(s), "
                        f"{cfg.validation_inference_steps} steps each"
                    )
                    bar.refresh()
                    outcome.validation_images += _validate(accelerator, cfg, validate, step)
                    bar.set_description(name)
                    model.train()
                if final:
                    break
            epoch += 1
        if (
            cfg.checkpointing_steps
            and global_step > start
            and global_step % cfg.checkpointing_steps
        ):
            outcome.checkpoints.append(
                _save_checkpoint(accelerator, cfg, global_step, name, **parts)
            )
        accelerator.wait_for_everyone()
        outcome.steps = global_step
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
        if tracked:
            accelerator.end_training()
    return outcome


def _flat(d: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v, default=str)
        for k, v in d.items()
    }


def _log(accelerator: Any, metrics: Any, rec: dict[str, Any], tracked: bool) -> None:
    if metrics is not None:
        metrics.write(json.dumps(rec) + "\n")
        metrics.flush()
    logger.info(
        "%s",
        " ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()),
    )
    if tracked:
        accelerator.log({k: v for k, v in rec.items() if k != "step"}, step=rec["step"])


def _validate(
    accelerator: Any, cfg: TrainConfig, validate: Callable[[int], list[Any]], step: int
) -> list[Path]:
    import numpy as np

    accelerator.wait_for_everyone()
    paths: list[Path] = []
    if accelerator.is_main_process:
        images = validate(step)
        folder = Path(cfg.output_dir) / "validation" / f"step-{step}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            p = folder / f"{i:02d}.png"
            img.save(p)
            paths.append(p)
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard" and images:
                stack = np.stack([np.asarray(im.convert("RGB")) for im in images])
                tracker.writer.add_images("validation", stack, step, dataformats="NHWC")
    accelerator.wait_for_everyone()
    return paths


@contextlib.contextmanager
def inference_precision(accelerator: Any, *models: Any) -> Iterator[None]:
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
    saved: list[tuple[Any, Any]] = []
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


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as indented JSON atomically, with facegen's version added."""
    payload = {**data, "facegen_version": __version__}
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    return path
