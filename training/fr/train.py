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

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset

from facegen.errors import InvalidArgumentError, UnknownNameError
from facegen.training import checkpoint
from facegen.training.checkpoint import TrainingState
from facegen.training.fr.data import DATA_FORMATS, FRTransform, open_fr_dataset
from facegen.training.fr.eval import (
    VerificationResult,
    VerificationSet,
    evaluate_verification,
    load_verification_set,
)
from facegen.training.fr.models import ARCHITECTURES, HEADS, IResNet, build_backbone, build_head
from facegen.training.resume import CheckpointSeries, holds_output_folder
from facegen.training.run import (
    MetricsLog,
    make_accelerator,
    run_steps,
    shuffled_loader,
    steps_per_epoch,
)
from facegen.validate import check_choice, check_int, check_number

if TYPE_CHECKING:
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer
    from tqdm import tqdm

__all__ = ["SCHEDULES", "FRTrainConfig", "FRTrainResult", "latest_checkpoint", "train_fr"]

logger = logging.getLogger(__name__)

SCHEDULES = ("poly", "step")
PRECISIONS = ("no", "fp16", "bf16")
CHECKPOINT_PREFIX = "step-"


#: The integer settings and their smallest values.
_INT_MINIMUMS = (
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
)


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
        check_choice(self.schedule, "schedule", SCHEDULES)
        check_choice(self.mixed_precision, "mixed_precision", PRECISIONS)
        for name, lo in _INT_MINIMUMS:
            check_int(getattr(self, name), name, minimum=lo)
        if self.max_steps is not None:
            check_int(self.max_steps, "max_steps", minimum=1)
        for name in ("lr", "scale", "poly_power"):
            check_number(getattr(self, name), name, minimum=0, min_open=True)
        for name in ("momentum", "weight_decay"):
            check_number(getattr(self, name), name, minimum=0, maximum=1, max_open=True)
        check_number(self.lr_gamma, "lr_gamma", minimum=0, maximum=1, min_open=True)
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
        if self.grad_clip is not None:
            check_number(self.grad_clip, "grad_clip", minimum=0, min_open=True)
        if self.margin is not None and not 0 <= check_number(self.margin, "margin") < math.pi / 2:
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


def _lr_lambda(cfg: FRTrainConfig, total: int, steps_per_epoch: int) -> Callable[[int], float]:
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


def _training_set(cfg: FRTrainConfig, dataset: Dataset[Any] | None) -> tuple[Dataset[Any], int]:
    """The injected or configured training set and its number of classes (checked)."""
    if dataset is None:
        transform = FRTransform(cfg.input_size, cfg.flip_prob, cfg.erase_prob)
        dataset = open_fr_dataset(cfg.data, fmt=cfg.data_format, transform=transform, seed=cfg.seed)
    num_classes = int(getattr(dataset, "num_classes", 0))
    if num_classes < 2:
        raise InvalidArgumentError(f"the training set must have >= 2 classes, got {num_classes}")
    size = len(dataset)  # type: ignore[arg-type]
    if size < cfg.batch_size:
        raise InvalidArgumentError(
            f"`batch_size` must be <= the number of training images ({size}), "
            f"got {cfg.batch_size} (batches are drop_last)"
        )
    return dataset, num_classes


def _models(
    cfg: FRTrainConfig, backbone: IResNet | None, num_classes: int
) -> tuple[IResNet, torch.nn.Module]:
    """The injected or configured backbone, and a fresh margin head for ``num_classes``."""
    if backbone is None:
        backbone = build_backbone(
            cfg.backbone,
            num_features=cfg.embedding_size,
            width=cfg.width,
            input_size=cfg.input_size,
            dropout=cfg.dropout,
        )
    head = build_head(cfg.head, backbone.num_features, num_classes, s=cfg.scale, m=cfg.margin)
    return backbone, head


def _optimization(
    cfg: FRTrainConfig, backbone: IResNet, head: torch.nn.Module, dataset: Dataset[Any]
) -> tuple[torch.optim.Optimizer, DataLoader[Any]]:
    """SGD over backbone and head, and the shuffling ``drop_last`` data loader."""
    params = [p for p in backbone.parameters() if p.requires_grad]  # features.weight is frozen
    optimizer = torch.optim.SGD(
        [{"params": params}, {"params": head.parameters()}],
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    loader = shuffled_loader(
        dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers, seed=cfg.seed
    )
    return optimizer, loader


def _continue_schedule(optimizer: AcceleratedOptimizer, scheduler: LambdaLR, factor: float) -> None:
    """After a resume: the learning rate of *this* config's schedule (e.g. a longer
    ``max_steps``) at the restored step, ``factor`` times the base rate."""
    for group, base in zip(optimizer.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * factor
    scheduler._last_lr = [g["lr"] for g in optimizer.optimizer.param_groups]


@dataclass
class _Steps:
    """One :func:`train_fr` call's work per micro-batch and per optimizer step."""

    cfg: FRTrainConfig
    accelerator: Accelerator
    backbone: torch.nn.Module
    head: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    vsets: list[VerificationSet]
    total: int
    result: FRTrainResult
    metrics: MetricsLog
    checkpoints: CheckpointSeries
    bar: tqdm[Any]

    def micro_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        """Margin-head cross-entropy (float32 logits), backward, backbone gradients clipped,
        the optimizer's step; the batch's loss on this process."""
        acc, cfg = self.accelerator, self.cfg
        images, labels = batch
        feats = self.backbone(images)
        logits = self.head(feats.float(), labels)
        loss = F.cross_entropy(logits, labels)
        acc.backward(loss)
        if acc.sync_gradients and cfg.grad_clip is not None:
            acc.clip_grad_norm_(self.backbone.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def after_step(self, step: int, epoch: int, loss: float) -> None:
        """The LR schedule's step; record, log, evaluate and checkpoint step ``step``."""
        cfg = self.cfg
        self.scheduler.step()
        self.result.losses.append(loss)
        self.metrics.add_loss(loss)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.3f}", epoch=epoch)
        if step % cfg.log_every == 0 or step == self.total:
            mean, rate = self.metrics.take_window()
            batch = cfg.batch_size * cfg.grad_accum_steps * self.accelerator.num_processes
            rec = {
                "step": step,
                "epoch": epoch,
                "loss": mean,
                "lr": self.scheduler.get_last_lr()[0],
                "samples_per_s": rate * batch,
            }
            self.metrics.log(rec)
        if self.vsets and ((cfg.eval_every and step % cfg.eval_every == 0) or step == self.total):
            self._evaluate(step)
        self.checkpoints.after_step(step)

    def _evaluate(self, step: int) -> None:
        res = _validate(self.accelerator, self.backbone, self.vsets, self.cfg)
        if not res:
            return
        self.result.validation.append((step, res))
        rec: dict[str, Any] = {"step": step}
        for r in res:
            rec |= {
                f"val/{r.name}/accuracy": r.accuracy,
                f"val/{r.name}/accuracy_std": r.accuracy_std,
                f"val/{r.name}/tar_at_far": r.tar_at_far,
                f"val/{r.name}/auc": r.auc,
                f"val/{r.name}/eer": r.eer,
            }
        self.metrics.log(rec)


@holds_output_folder("fr")
def train_fr(
    config: FRTrainConfig,
    *,
    dataset: Dataset[Any] | None = None,
    backbone: IResNet | None = None,
    val_sets: Sequence[VerificationSet] = (),
    progress: bool = True,
) -> FRTrainResult:
    """Train a face-recognition backbone; see the module docstring for what is written.

    ``dataset`` (with ``num_classes``) and ``backbone`` may be injected instead of being built
    from ``config``; ``val_sets`` adds preloaded verification sets to ``config.val_sets``.
    """
    from tqdm.auto import tqdm

    cfg = config
    out = Path(cfg.output_dir)
    accelerator = make_accelerator(
        out,
        mixed_precision=cfg.mixed_precision,
        grad_accum_steps=cfg.grad_accum_steps,
        cpu=cfg.cpu,
        seed=cfg.seed,
        tensorboard=cfg.tensorboard,
        step_scheduler_with_optimizer=False,
    )
    dataset, num_classes = _training_set(cfg, dataset)
    backbone, head = _models(cfg, backbone, num_classes)
    vsets = list(val_sets) + [load_verification_set(p) for p in cfg.val_sets]
    backbone, head, optimizer, loader = accelerator.prepare(
        backbone, head, *_optimization(cfg, backbone, head, dataset)
    )
    per_epoch = steps_per_epoch(loader, cfg.grad_accum_steps)
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * per_epoch
    lr_at = _lr_lambda(cfg, total, per_epoch)
    scheduler = LambdaLR(optimizer.optimizer, lr_at)
    # what a checkpoint holds (no pickle: see facegen.training.checkpoint)
    state = TrainingState({"backbone": backbone, "head": head}, optimizer, scheduler, [loader])
    checkpoints = CheckpointSeries(
        accelerator,
        out,
        state,
        loop="fr",
        prefix=CHECKPOINT_PREFIX,
        every=cfg.save_every,
        keep=cfg.keep_checkpoints,
        digits=8,
    )
    start = checkpoints.resume(cfg.resume, field="resume")
    if start:
        _continue_schedule(optimizer, scheduler, lr_at(start))
    result = FRTrainResult(out, start, start, 0, num_classes)
    show = progress and accelerator.is_main_process
    with (
        MetricsLog(accelerator, out, "fr", cfg.to_dict()) as metrics,
        tqdm(total=total, initial=start, disable=not show, desc="FR training") as bar,
    ):
        steps = _Steps(
            cfg=cfg,
            accelerator=accelerator,
            backbone=backbone,
            head=head,
            optimizer=optimizer,
            scheduler=scheduler,
            vsets=vsets,
            total=total,
            result=result,
            metrics=metrics,
            checkpoints=checkpoints,
            bar=bar,
        )
        result.steps, result.epochs = run_steps(
            accelerator,
            loader,
            [backbone, head],
            start=start,
            total=total,
            grad_accum_steps=cfg.grad_accum_steps,
            micro_step=steps.micro_step,
            on_step=steps.after_step,
            on_epoch=getattr(dataset, "set_epoch", None),  # augmentation draws of the epoch
        )
        checkpoints.finish(result.steps)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            result.onnx_path = _save_final(accelerator, backbone, cfg, out, num_classes, result)
    return result


def _validate(
    accelerator: Accelerator,
    backbone: torch.nn.Module,
    vsets: Sequence[VerificationSet],
    cfg: FRTrainConfig,
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


def _save_final(
    accelerator: Accelerator,
    backbone: torch.nn.Module,
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
