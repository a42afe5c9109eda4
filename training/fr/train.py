"""Face-recognition training (IResNet + ArcFace / CosFace / AdaFace) with Accelerate.

The recipe follows insightface ``arcface_torch``: SGD (lr 0.1, momentum 0.9, weight decay
5e-4) on backbone and head, cross-entropy on the head's margin logits (computed in float32),
backbone gradients clipped to norm 5, a polynomial (power 2) schedule with linear warm-up, or
step decay at epoch milestones; ``drop_last`` batches. Everything runs through
``accelerate`` (multi-GPU, mixed precision, gradient accumulation) and also on one CPU.

Output folder (``FRTrainConfig.output_dir``)::

    config.json          backbone architecture, training config, validation results,
                         same_person_threshold, encoder_id, facegen version
    model.safetensors    backbone weights, insightface key names
    model.onnx           ONNX export (input ``input.1`` N×3×S×S, dynamic N) for ArcFaceOnnxEncoder
    metrics.jsonl        one JSON line per logged step / validation
    checkpoints/step-XXXXXXXX/   the training state, only safetensors and JSON (see
                         :mod:`facegen.training.checkpoint`); resume with ``resume="latest"``
                         or a folder:
        backbone.safetensors, head.safetensors   their state dicts (BN statistics included)
        optimizer.safetensors/.json              SGD momentum buffers; parameter groups
        scheduler.json                           the LR schedule's state_dict
        scaler.json                              the fp16 gradient scaler's state (fp16 only)
        rng_<i>.safetensors/.json                process i's Python / numpy / torch / CUDA
                                                 random states
        state.json                               written last: step counter, file checksums
    logs/                TensorBoard events (when ``tensorboard`` is installed)

Load the result with :func:`facegen.training.fr.models.load_backbone` or as an identity
encoder with :func:`facegen.training.fr.encoder.load_trained_encoder`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from facegen.errors import InvalidArgumentError, UnknownNameError
from facegen.training import checkpoint
from facegen.training.fr.data import DATA_FORMATS, FRTransform, open_fr_dataset
from facegen.training.fr.eval import (
    VerificationResult,
    VerificationSet,
    evaluate_verification,
    load_verification_set,
)
from facegen.training.fr.models import ARCHITECTURES, HEADS, IResNet, build_backbone, build_head
from facegen.training.resume import holds_output_folder, resolve_resume

__all__ = ["SCHEDULES", "FRTrainConfig", "FRTrainResult", "latest_checkpoint", "train_fr"]

logger = logging.getLogger(__name__)

SCHEDULES = ("poly", "step")
PRECISIONS = ("no", "fp16", "bf16")
CHECKPOINT_PREFIX = "step-"


def _int(name: str, v: Any, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise InvalidArgumentError(f"`{name}` must be an int >= {lo}, got {v!r}")


@dataclass
class FRTrainConfig:
    """Everything a face-recognition training run needs (validated on creation).

    Data: ``data`` (a folder/file that :func:`~facegen.training.fr.data.open_fr_dataset`
    reads; ``data_format`` None = detect), ``flip_prob``/``erase_prob`` augmentation.
    Model: ``backbone`` (``ARCHITECTURES``), ``width`` / ``input_size`` (64 / 112 =
    insightface), ``embedding_size``, ``dropout``; ``head`` (``HEADS``), ``margin`` (None = the
    head's paper value), ``scale``. Optimisation: ``lr``, ``momentum``, ``weight_decay``,
    ``batch_size`` (per process), ``epochs`` or ``max_steps`` (optimizer steps; wins when set),
    ``schedule`` ``"poly"`` (power ``poly_power``) or ``"step"`` (× ``lr_gamma`` at each epoch
    in ``lr_milestones``), ``warmup_steps``, ``grad_accum_steps``, ``grad_clip`` (None = off),
    ``mixed_precision`` (``"no"``, ``"fp16"``, ``"bf16"``), ``seed``, ``num_workers``.
    Bookkeeping: ``output_dir``, ``save_every`` / ``eval_every`` (steps; 0 = only at the end),
    ``keep_checkpoints``, ``val_sets`` (``.bin`` files or pair lists), ``resume`` (a checkpoint
    folder or ``"latest"``), ``log_every``, ``tensorboard``, ``export_onnx``, ``name`` (the
    trained encoder's name, default the output folder's), ``cpu`` (force CPU).
    """

    data: str
    output_dir: str
    data_format: str | None = None
    backbone: str = "iresnet50"
    width: int = 64
    input_size: int = 112
    embedding_size: int = 512
    dropout: float = 0.0
    head: str = "arcface"
    margin: float | None = None
    scale: float = 64.0
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    epochs: int = 20
    max_steps: int | None = None
    schedule: str = "poly"
    poly_power: float = 2.0
    lr_milestones: tuple[float, ...] = ()
    lr_gamma: float = 0.1
    warmup_steps: int = 0
    grad_accum_steps: int = 1
    grad_clip: float | None = 5.0
    mixed_precision: str = "no"
    seed: int = 0
    num_workers: int = 4
    flip_prob: float = 0.5
    erase_prob: float = 0.0
    save_every: int = 0
    keep_checkpoints: int = 2
    eval_every: int = 0
    val_sets: tuple[str, ...] = ()
    val_batch_size: int = 64
    resume: str | None = None
    log_every: int = 10
    tensorboard: bool = True
    export_onnx: bool = True
    name: str | None = None
    cpu: bool = False

    def __post_init__(self) -> None:
        self.data, self.output_dir = str(self.data), str(self.output_dir)
        if self.data_format is not None and self.data_format not in DATA_FORMATS:
            raise UnknownNameError("training data format", self.data_format, DATA_FORMATS)
        if self.backbone not in ARCHITECTURES:
            raise UnknownNameError("backbone", self.backbone, ARCHITECTURES)
        if self.head not in HEADS:
            raise UnknownNameError("margin head", self.head, HEADS)
        if self.schedule not in SCHEDULES:
            raise InvalidArgumentError(
                f"`schedule` must be one of {SCHEDULES}, got {self.schedule!r}"
            )
        if self.mixed_precision not in PRECISIONS:
            raise InvalidArgumentError(
                f"`mixed_precision` must be one of {PRECISIONS}, got {self.mixed_precision!r}"
            )
        for name, lo in (
            ("width", 1),
            ("input_size", 16),
            ("embedding_size", 1),
            ("batch_size", 1),
            ("epochs", 1),
            ("warmup_steps", 0),
            ("grad_accum_steps", 1),
            ("num_workers", 0),
            ("save_every", 0),
            ("keep_checkpoints", 1),
            ("eval_every", 0),
            ("val_batch_size", 1),
            ("log_every", 1),
            ("seed", 0),
        ):
            _int(name, getattr(self, name), lo)
        if self.max_steps is not None:
            _int("max_steps", self.max_steps, 1)
        for name in ("lr", "scale", "poly_power"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise InvalidArgumentError(f"`{name}` must be a finite number > 0, got {v!r}")
        for name in ("momentum", "weight_decay"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0 <= v < 1):
                raise InvalidArgumentError(f"`{name}` must be in [0, 1), got {v!r}")
        if not 0 < self.lr_gamma <= 1:
            raise InvalidArgumentError(f"`lr_gamma` must be in (0, 1], got {self.lr_gamma}")
        self.lr_milestones = tuple(float(m) for m in self.lr_milestones)
        if self.schedule == "step" and not self.lr_milestones:
            raise InvalidArgumentError(
                "`lr_milestones` must list epochs for schedule 'step', got ()"
            )
        if list(self.lr_milestones) != sorted(self.lr_milestones) or any(
            m <= 0 for m in self.lr_milestones
        ):
            raise InvalidArgumentError(
                f"`lr_milestones` must be increasing epochs > 0, got {self.lr_milestones}"
            )
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise InvalidArgumentError(f"`grad_clip` must be > 0 or None, got {self.grad_clip}")
        if self.margin is not None and not 0 <= self.margin < math.pi / 2:
            raise InvalidArgumentError(f"`margin` must be in [0, π/2), got {self.margin}")
        self.val_sets = tuple(str(v) for v in self.val_sets)
        if self.resume is not None:
            self.resume = str(self.resume)
        # the augmentation config validates itself
        FRTransform(self.input_size, self.flip_prob, self.erase_prob)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        d["val_sets"] = list(self.val_sets)
        return d


@dataclass
class FRTrainResult:
    """``steps``: optimizer steps done in total; ``start_step``: where this call began (> 0
    after a resume); ``losses``: per-step mean loss of this call; ``validation``: ``(step,
    results)`` for every evaluation; ``model_dir``/``onnx_path``: the saved model."""

    output_dir: Path
    steps: int
    start_step: int
    epochs: int
    num_classes: int
    losses: list[float] = field(default_factory=list)
    validation: list[tuple[int, list[VerificationResult]]] = field(default_factory=list)
    onnx_path: Path | None = None

    @property
    def model_dir(self) -> Path:
        return self.output_dir

    @property
    def final_validation(self) -> list[VerificationResult]:
        return self.validation[-1][1] if self.validation else []


def _lr_lambda(cfg: FRTrainConfig, total: int, steps_per_epoch: int) -> Any:
    warm = min(cfg.warmup_steps, total)
    milestones = [round(m * steps_per_epoch) for m in cfg.lr_milestones]

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "poly":
            return max(0.0, 1.0 - (step - warm) / max(1, total - warm)) ** cfg.poly_power
        return cfg.lr_gamma ** sum(step >= m for m in milestones)

    return f


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete ``checkpoints/step-*`` folder under ``output_dir``, or None."""
    return checkpoint.latest_checkpoint(output_dir, CHECKPOINT_PREFIX)


def _trackers(cfg: FRTrainConfig) -> list[str] | None:
    if cfg.tensorboard and (
        importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
    ):
        return ["tensorboard"]
    if cfg.tensorboard:
        logger.info("tensorboard is not installed; logging to metrics.jsonl only")
    return None


@holds_output_folder("fr")
def train_fr(
    config: FRTrainConfig,
    *,
    dataset: Dataset | None = None,
    backbone: IResNet | None = None,
    val_sets: Sequence[VerificationSet] = (),
    progress: bool = True,
) -> FRTrainResult:
    """Train a face-recognition backbone; see the module docstring for what is written.

    ``dataset`` (with ``num_classes``) and ``backbone`` may be injected instead of being built
    from ``config``; ``val_sets`` adds preloaded verification sets to ``config.val_sets``.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    cfg = config
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    trackers = _trackers(cfg)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum_steps,
        cpu=cfg.cpu,
        log_with=trackers,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
        step_scheduler_with_optimizer=False,
    )
    set_seed(cfg.seed)
    main = accelerator.is_main_process

    if dataset is None:
        transform = FRTransform(cfg.input_size, cfg.flip_prob, cfg.erase_prob)
        dataset = open_fr_dataset(cfg.data, fmt=cfg.data_format, transform=transform, seed=cfg.seed)
    num_classes = int(getattr(dataset, "num_classes", 0))
    if num_classes < 2:
        raise InvalidArgumentError(f"the training set must have >= 2 classes, got {num_classes}")
    if len(dataset) < cfg.batch_size:  # type: ignore[arg-type]
        raise InvalidArgumentError(
            f"`batch_size` must be <= the number of training images ({len(dataset)}), "  # type: ignore[arg-type]
            f"got {cfg.batch_size} (batches are drop_last)"
        )
    if backbone is None:
        backbone = build_backbone(
            cfg.backbone,
            num_features=cfg.embedding_size,
            width=cfg.width,
            input_size=cfg.input_size,
            dropout=cfg.dropout,
        )
    head = build_head(cfg.head, backbone.num_features, num_classes, s=cfg.scale, m=cfg.margin)
    vsets = list(val_sets) + [load_verification_set(p) for p in cfg.val_sets]

    params = [p for p in backbone.parameters() if p.requires_grad]  # features.weight is frozen
    optimizer = torch.optim.SGD(
        [{"params": params}, {"params": head.parameters()}],
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=cfg.num_workers,
        persistent_workers=False,  # workers must see dataset.set_epoch
        # its own generator: making an iterator (a resume makes one more) must not draw from
        # the global RNG, or dropout after a mid-epoch resume would differ from an unbroken run
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    backbone, head, optimizer, loader = accelerator.prepare(backbone, head, optimizer, loader)
    steps_per_epoch = max(1, math.ceil(len(loader) / cfg.grad_accum_steps))
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer.optimizer, _lr_lambda(cfg, total, steps_per_epoch)
    )
    # what a checkpoint holds (no pickle: see facegen.training.checkpoint)
    parts = {
        "models": {"backbone": backbone, "head": head},
        "optimizer": optimizer,
        "scheduler": scheduler,
        "loaders": [loader],
    }
    global_step = 0

    ckpt = resolve_resume(
        cfg.resume,
        lambda: latest_checkpoint(cfg.output_dir),
        field="resume",
        output_dir=cfg.output_dir,
    )
    if ckpt is not None:
        global_step = checkpoint.load_checkpoint(ckpt, accelerator, loop="fr", **parts)[
            "global_step"
        ]
        # the schedule of *this* config (e.g. a longer max_steps) from the restored step on
        lr_at = _lr_lambda(cfg, total, steps_per_epoch)(global_step)
        for group, base in zip(optimizer.optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * lr_at
        scheduler._last_lr = [g["lr"] for g in optimizer.optimizer.param_groups]
        logger.info("resumed from %s at step %d", ckpt, global_step)
    start_step = global_step
    if trackers:
        accelerator.init_trackers("fr", config=_flat_config(cfg))

    result = FRTrainResult(out, start_step, start_step, 0, num_classes)
    metrics = open(out / "metrics.jsonl", "a", encoding="utf-8") if main else None  # noqa: SIM115
    bar = tqdm(total=total, initial=start_step, disable=not (progress and main), desc="FR training")
    epoch = global_step // steps_per_epoch
    skip = (global_step % steps_per_epoch) * cfg.grad_accum_steps
    window: list[float] = []
    step_losses: list[float] = []
    t0 = time.perf_counter()
    try:
        while global_step < total:
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)  # shuffling order of this epoch
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)  # augmentation draws of this epoch
            batches = accelerator.skip_first_batches(loader, skip) if skip else loader
            skip = 0
            for images, labels in batches:
                with accelerator.accumulate(backbone, head):
                    feats = backbone(images)
                    logits = head(feats.float(), labels)
                    loss = F.cross_entropy(logits, labels)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.grad_clip is not None:
                        accelerator.clip_grad_norm_(backbone.parameters(), cfg.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                step_losses.append(float(loss.detach()))
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                global_step += 1
                step = global_step
                result.losses.append(sum(step_losses) / len(step_losses))
                window.append(result.losses[-1])
                step_losses = []
                bar.update(1)
                bar.set_postfix(loss=f"{result.losses[-1]:.3f}", epoch=epoch)
                if step % cfg.log_every == 0 or step == total:
                    rec = {
                        "step": step,
                        "epoch": epoch,
                        "loss": sum(window) / len(window),
                        "lr": scheduler.get_last_lr()[0],
                        "samples_per_s": len(window)
                        * cfg.batch_size
                        * cfg.grad_accum_steps
                        * accelerator.num_processes
                        / max(1e-9, time.perf_counter() - t0),
                    }
                    window, t0 = [], time.perf_counter()
                    _log(accelerator, metrics, rec, trackers)
                if vsets and ((cfg.eval_every and step % cfg.eval_every == 0) or step == total):
                    res = _validate(accelerator, backbone, vsets, cfg)
                    if res:
                        result.validation.append((step, res))
                        rec = {"step": step}
                        for r in res:
                            rec |= {
                                f"val/{r.name}/accuracy": r.accuracy,
                                f"val/{r.name}/accuracy_std": r.accuracy_std,
                                f"val/{r.name}/tar_at_far": r.tar_at_far,
                                f"val/{r.name}/auc": r.auc,
                                f"val/{r.name}/eer": r.eer,
                            }
                        _log(accelerator, metrics, rec, trackers)
                if cfg.save_every and step % cfg.save_every == 0 and step < total:
                    _save_checkpoint(accelerator, out, step, cfg.keep_checkpoints, parts)
                if step >= total:
                    break
            epoch += 1
        if cfg.save_every and global_step > start_step:
            _save_checkpoint(accelerator, out, global_step, cfg.keep_checkpoints, parts)
        accelerator.wait_for_everyone()
        result.steps, result.epochs = global_step, epoch
        if main:
            result.onnx_path = _save_final(accelerator, backbone, cfg, out, num_classes, result)
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
        if trackers:
            accelerator.end_training()
    return result


def _flat_config(cfg: FRTrainConfig) -> dict[str, Any]:
    return {
        k: (v if isinstance(v, int | float | str | bool) else str(v))
        for k, v in cfg.to_dict().items()
    }


def _log(accelerator: Any, metrics: Any, rec: dict[str, Any], trackers: list[str] | None) -> None:
    if metrics is not None:
        metrics.write(json.dumps(rec) + "\n")
        metrics.flush()
    logger.info(
        "%s",
        " ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()),
    )
    if trackers:
        accelerator.log({k: v for k, v in rec.items() if k != "step"}, step=rec["step"])


def _validate(
    accelerator: Any, backbone: Any, vsets: Sequence[VerificationSet], cfg: FRTrainConfig
) -> list[VerificationResult]:
    accelerator.wait_for_everyone()
    res: list[VerificationResult] = []
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(backbone)
        res = [
            evaluate_verification(
                model, v, batch_size=cfg.val_batch_size, device=accelerator.device
            )
            for v in vsets
        ]
    accelerator.wait_for_everyone()
    return res


def _save_checkpoint(
    accelerator: Any, out: Path, step: int, keep: int, parts: dict[str, Any]
) -> None:
    path = out / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:08d}"
    checkpoint.save_checkpoint(
        path, accelerator, loop="fr", counters={"global_step": step}, **parts
    )
    if accelerator.is_main_process:
        checkpoint.prune_checkpoints(out, CHECKPOINT_PREFIX, keep)
    logger.info("saved checkpoint %s", path)


def _save_final(
    accelerator: Any,
    backbone: Any,
    cfg: FRTrainConfig,
    out: Path,
    num_classes: int,
    result: FRTrainResult,
) -> Path | None:
    from facegen import __version__
    from facegen.training.fr.encoder import ENCODER_PREFIX, ONNX_NAME, export_onnx
    from facegen.training.fr.models import save_backbone

    model = accelerator.unwrap_model(backbone)
    name = cfg.name or out.resolve().name
    final = result.final_validation
    extra: dict[str, Any] = {
        "name": name,
        "encoder_id": ENCODER_PREFIX + name,
        "input_normalization": {"mean": 127.5, "std": 127.5, "channels": "RGB"},
        "num_classes": num_classes,
        "steps": result.steps,
        "training": cfg.to_dict(),
        "validation": [r.to_dict() for r in final],
        "facegen_version": __version__,
    }
    if final:
        # the 10-fold best threshold on the first validation set, as a cosine similarity
        extra["same_person_threshold"] = final[0].cosine_threshold
    save_backbone(model, out, extra=extra)
    if not cfg.export_onnx:
        return None
    return export_onnx(model, out / ONNX_NAME)
