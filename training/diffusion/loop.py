"""The loop every generative training run goes through (set up by
:mod:`facegen.training.diffusion.components`).

:func:`run_training`: AdamW + a diffusers LR schedule under Accelerate (mixed precision,
gradient accumulation, seeding, multi-GPU); ``checkpoint-N`` folders written by
:mod:`facegen.training.checkpoint` (safetensors + JSON, no pickle) holding only the trainable
parameters of the model; resume from the latest (or a named) checkpoint exactly where it
stopped; tqdm or a callback for progress; ``metrics.jsonl`` and TensorBoard (when installed);
validation images every ``validation_steps``. The mechanics it shares with face-recognition
training are in :mod:`facegen.training.run` and :mod:`facegen.training.resume`.

Output layout of every loop (``output_dir``)::

    <the trained weights and their metadata, see each loop>
    checkpoints/checkpoint-N/    the training state, only safetensors and JSON:
        trainable.safetensors          the trainable parameters (not the frozen base model)
        <name>.safetensors             a loop's ``extra_models`` (the generator's ``ema``)
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

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facegen.errors import FacegenError, InvalidArgumentError
from facegen.training.diffusion.config import ProgressCallback, TrainConfig
from facegen.training.resume import CheckpointSeries
from facegen.training.run import MetricsLog, run_steps, shuffled_loader

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from accelerate.scheduler import AcceleratedScheduler
    from PIL import Image
    from torch.optim.lr_scheduler import LRScheduler
    from torch.utils.data import DataLoader
    from tqdm import tqdm

__all__ = ["CHECKPOINT_PREFIX", "LoopOutcome", "latest_checkpoint", "run_training"]

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
#: ``loss_fn(prepared_model, batch)``: the scalar loss of a collated batch.
LossFunction = Callable[[Any, dict[str, Any]], "torch.Tensor"]
#: ``validate(step)``: validation images (PIL) made with the model as trained so far.
Validation = Callable[[int], list["Image.Image"]]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete ``checkpoint-N`` folder with the largest ``N``, or None."""
    from facegen.training import checkpoint

    return checkpoint.latest_checkpoint(output_dir, CHECKPOINT_PREFIX)


@dataclass
class LoopOutcome:
    """What :func:`run_training` did: from ``start_step`` to ``steps``, one loss per
    optimizer step of this call, the checkpoints and validation images it wrote."""

    start_step: int
    steps: int
    losses: list[float] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    validation_images: list[Path] = field(default_factory=list)


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = torch.stack(vals) if torch.is_tensor(vals[0]) else vals
    return out


def _optimization(
    cfg: TrainConfig, accelerator: Accelerator, params: list[Any], dataset: Any
) -> tuple[torch.optim.Optimizer, DataLoader[Any], LRScheduler]:
    """AdamW over ``params`` (parameters, or torch parameter groups with their own ``lr``),
    the shuffling data loader and the LR schedule of ``cfg``."""
    import torch
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW(
        params,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.adam_weight_decay,
        eps=cfg.adam_epsilon,
    )
    loader = shuffled_loader(
        dataset,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        seed=cfg.seed,
        collate_fn=_collate,
    )
    n = accelerator.num_processes  # a prepared schedule steps once per process
    scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=cfg.lr_warmup_steps * n,
        num_training_steps=cfg.max_steps * n,
    )
    return optimizer, loader, scheduler


def _save_validation(
    accelerator: Accelerator, cfg: TrainConfig, validate: Validation, step: int
) -> list[Path]:
    """Run ``validate(step)`` on the main process; its images go to ``validation/step-N``
    and TensorBoard."""
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


@dataclass
class _Steps:
    """One :func:`run_training` call's work per micro-batch and per optimizer step."""

    cfg: TrainConfig
    accelerator: Accelerator
    model: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: AcceleratedScheduler
    loss_fn: LossFunction
    validate: Validation | None
    callback: ProgressCallback | None
    on_step: Callable[[int], None] | None
    outcome: LoopOutcome
    metrics: MetricsLog
    checkpoints: CheckpointSeries
    bar: tqdm[Any]
    name: str

    def micro_step(self, batch: dict[str, Any]) -> float:
        """Forward, backward and (once the gradients are accumulated) the optimizer step;
        the batch's loss averaged over the processes."""
        acc, cfg = self.accelerator, self.cfg
        loss = self.loss_fn(self.model, batch)
        acc.backward(loss)
        if acc.sync_gradients and cfg.max_grad_norm is not None:
            acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(acc.gather(loss.detach()).mean())

    def after_step(self, step: int, epoch: int, loss: float) -> None:
        """Record, report, log, checkpoint and validate after optimizer step ``step``."""
        cfg = self.cfg
        if not math.isfinite(loss):
            raise FacegenError(
                f"the loss must stay finite, got {loss} at step {step}; lower "
                "`learning_rate`, or use bf16 instead of fp16 mixed precision"
            )
        if self.on_step is not None:
            self.on_step(step)
        self.outcome.losses.append(loss)
        self.metrics.add_loss(loss)
        logs = {"loss": loss, "lr": float(self.scheduler.get_last_lr()[0])}
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}")
        if self.callback is not None:
            self.callback(step, cfg.max_steps, logs)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            mean, rate = self.metrics.take_window()
            self.metrics.log({"step": step, "loss": mean, "lr": logs["lr"], "steps_per_s": rate})
        self.checkpoints.after_step(step)
        final = step == cfg.max_steps
        if (
            self.validate is not None
            and cfg.num_validation_images
            and (final or (cfg.validation_steps and step % cfg.validation_steps == 0))
        ):
            # validation can take longer than many steps: say so on the bar
            self.bar.set_description(
                f"{self.name}: {cfg.num_validation_images} validation image(s), "
                f"{cfg.validation_inference_steps} steps each"
            )
            self.bar.refresh()
            images = _save_validation(self.accelerator, cfg, self.validate, step)
            self.outcome.validation_images += images
            self.bar.set_description(self.name)
            self.model.train()


def _check_trainable(
    cfg: TrainConfig,
    params: Sequence[torch.nn.Parameter] | Sequence[dict[str, Any]],
    dataset: Any,
) -> tuple[list[Any], list[torch.nn.Parameter]]:
    """``params`` as a list (parameters or parameter groups) and as flat parameters; refuses
    nothing to train and a dataset smaller than one batch."""
    groups = list(params)
    flat = (
        [p for g in groups for p in g["params"]]
        if groups and isinstance(groups[0], dict)
        else groups
    )
    if not flat:
        raise InvalidArgumentError("there is nothing to train: no parameter requires grad")
    if len(dataset) < cfg.batch_size:
        raise InvalidArgumentError(
            f"`batch_size` must be <= the number of training examples ({len(dataset)}), "
            f"got {cfg.batch_size}"
        )
    return groups, flat


def run_training(
    cfg: TrainConfig,
    accelerator: Accelerator,
    *,
    model: torch.nn.Module,
    params: Sequence[torch.nn.Parameter] | Sequence[dict[str, Any]],
    dataset: Any,
    loss_fn: LossFunction,
    validate: Validation | None = None,
    progress: bool | ProgressCallback | None = None,
    name: str = "training",
    on_step: Callable[[int], None] | None = None,
    extra_models: Mapping[str, torch.nn.Module] | None = None,
) -> LoopOutcome:
    """Optimise ``params`` (inside ``model``) on ``dataset`` for ``cfg.max_steps`` steps.

    ``loss_fn(prepared_model, batch)`` returns the scalar loss of a collated batch.
    ``validate(step)`` returns PIL images (saved under ``validation/step-N``, logged to
    TensorBoard). ``progress``: None/True = a tqdm bar, False = none, a callable =
    :data:`ProgressCallback`. Resumes from ``cfg.resume_from_checkpoint``.

    ``params`` may also be torch parameter groups (dicts with ``params`` and their own
    ``lr``), e.g. one learning rate per part. ``on_step(step)`` runs after each optimizer
    step, before that step's checkpoint (e.g. an EMA update). ``extra_models``: more modules
    saved in (and restored from) every checkpoint by name, their parameters that require
    grad (e.g. ``{"ema": averaged_copy}``; not optimised unless also in ``params``).
    """
    from tqdm.auto import tqdm

    from facegen.training.checkpoint import TrainingState

    groups, flat = _check_trainable(cfg, params, dataset)
    model, optimizer, loader, scheduler = accelerator.prepare(
        model, *_optimization(cfg, accelerator, groups, dataset)
    )
    # what a checkpoint holds: the trainable parameters of ``model`` (a LoRA, an adapter, a
    # ControlNet; not the frozen UNet they may live in), the optimizer, the LR schedule and
    # the random states, including the loader's own generator
    state = TrainingState(
        {"trainable": model, **(extra_models or {})}, optimizer, scheduler, [loader]
    )
    checkpoints = CheckpointSeries(
        accelerator,
        cfg.output_dir,
        state,
        loop=name,
        prefix=CHECKPOINT_PREFIX,
        every=cfg.checkpointing_steps,
        keep=cfg.checkpoints_total_limit,
        trainable_only=True,
    )
    start = checkpoints.resume(cfg.resume_from_checkpoint, field="resume_from_checkpoint")
    outcome = LoopOutcome(start, start, checkpoints=checkpoints.saved)
    callback = progress if callable(progress) else None
    quiet = not accelerator.is_main_process or callback is not None or progress is False
    with (
        MetricsLog(accelerator, cfg.output_dir, name, cfg.to_dict()) as metrics,
        # disable=None: tqdm shows the bar only on a terminal
        tqdm(total=cfg.max_steps, initial=start, desc=name, disable=True if quiet else None) as bar,
    ):
        steps = _Steps(
            cfg=cfg,
            accelerator=accelerator,
            model=model,
            params=flat,
            optimizer=optimizer,
            scheduler=scheduler,
            loss_fn=loss_fn,
            validate=validate,
            callback=callback,
            on_step=on_step,
            outcome=outcome,
            metrics=metrics,
            checkpoints=checkpoints,
            bar=bar,
            name=name,
        )
        done, _ = run_steps(
            accelerator,
            loader,
            [model],
            start=start,
            total=cfg.max_steps,
            grad_accum_steps=cfg.grad_accum_steps,
            micro_step=steps.micro_step,
            on_step=steps.after_step,
            on_epoch=lambda _: model.train(),
        )
        checkpoints.finish(done)
        accelerator.wait_for_everyone()
        outcome.steps = done
    return outcome
