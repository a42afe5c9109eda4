"""What every facegen training loop does around its own step, the generative loops
(:mod:`facegen.training.diffusion.loop`) and face recognition (:mod:`facegen.training.fr.train`)
alike:

* :func:`make_accelerator`: an ``accelerate.Accelerator`` (mixed precision, gradient
  accumulation, a seedable sampler, TensorBoard under ``logs/`` when it is installed), with
  every random generator seeded;
* :func:`shuffled_loader`: the data in a seeded order that a resumed run repeats;
* :func:`run_steps`: the optimizer steps over epochs, resumable in the middle of an epoch
  (the batches already seen are skipped), with gradient accumulation;
* :class:`MetricsLog`: ``metrics.jsonl`` (main process), the log and the trackers.

Where a run resumes from and the checkpoints it leaves are
:class:`facegen.training.resume.CheckpointSeries`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader, Dataset

__all__ = [
    "MetricsLog",
    "flat_config",
    "make_accelerator",
    "run_steps",
    "shuffled_loader",
    "steps_per_epoch",
]

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"


# --------------------------------------------------------------------------- the Accelerator


def _trackers(tensorboard: bool) -> list[str] | None:
    if tensorboard and (
        importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
    ):
        return ["tensorboard"]
    if tensorboard:
        logger.info("tensorboard is not installed; logging to %s only", METRICS_NAME)
    return None


def _allow_new_precision(mixed_precision: str, cpu: bool) -> None:
    """Let a second run in the same process (an app, a notebook) use another precision.

    Accelerate keeps one process-wide state and refuses an ``Accelerator`` whose
    ``mixed_precision`` or ``cpu`` differs from the first one's; the launch-level part
    (processes, devices) is kept, only the per-run part is reset.
    """
    from accelerate.state import AcceleratorState

    if not AcceleratorState._shared_state:
        return
    state = AcceleratorState()
    wants_cpu = cpu and state.device.type != "cpu"
    if str(state.mixed_precision) != mixed_precision or wants_cpu:
        AcceleratorState._reset_state(reset_partial_state=False)


def make_accelerator(
    output_dir: str | Path,
    *,
    mixed_precision: str,
    grad_accum_steps: int,
    cpu: bool,
    seed: int,
    tensorboard: bool,
    step_scheduler_with_optimizer: bool = True,
) -> Accelerator:
    """An ``accelerate.Accelerator`` writing into ``output_dir`` (created; TensorBoard under
    ``logs/``), its data loaders' samplers seeded with ``seed``, and Python's, numpy's and
    torch's generators seeded with it too (``accelerate.utils.set_seed``).

    ``step_scheduler_with_optimizer``: Accelerate steps a prepared LR scheduler with the
    optimizer (False: the loop steps its own, unprepared, once per optimizer step).
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _allow_new_precision(mixed_precision, cpu)
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=grad_accum_steps,
        cpu=cpu,
        log_with=_trackers(tensorboard),
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed),
        step_scheduler_with_optimizer=step_scheduler_with_optimizer,
    )
    set_seed(seed)
    return accelerator


# --------------------------------------------------------------------------- the steps


def shuffled_loader(
    dataset: Dataset[Any],
    *,
    batch_size: int,
    num_workers: int,
    seed: int,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader[Any]:
    """A shuffling, ``drop_last`` data loader with its own generator, seeded with ``seed``.

    Making an iterator (a resumed run makes one more than an unbroken one) then draws from
    that generator, not from the global RNG, so a resumed run draws the same noise, dropout
    and augmentation as an unbroken one (checkpoints save the generator). Workers are not
    persistent, so they see the ``dataset.set_epoch`` of every epoch.
    """
    import torch
    from torch.utils.data import DataLoader

    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collate_fn,
        num_workers=num_workers,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
    )


def steps_per_epoch(loader: DataLoader[Any], grad_accum_steps: int) -> int:
    """Optimizer steps in one pass over ``loader`` (at least 1)."""
    return max(1, math.ceil(len(loader) / grad_accum_steps))


def run_steps(
    accelerator: Accelerator,
    loader: DataLoader[Any],
    models: Sequence[torch.nn.Module],
    *,
    start: int,
    total: int,
    grad_accum_steps: int,
    micro_step: Callable[[Any], float],
    on_step: Callable[[int, int, float], None],
    on_epoch: Callable[[int], None] | None = None,
) -> tuple[int, int]:
    """Optimizer steps ``start + 1`` … ``total`` over the (prepared) ``loader``.

    ``micro_step(batch)`` runs inside ``accelerator.accumulate(*models)``: forward, backward
    and the optimizer's step (Accelerate makes it a no-op until the gradients are
    accumulated); it returns the batch's loss. ``on_step(step, epoch, loss)`` follows every
    optimizer step with the mean loss of its micro-batches; ``on_epoch(epoch)`` precedes every
    pass over the data. A run resumed at ``start`` begins in the epoch it stopped in and skips
    the batches that epoch already used, so it sees the data an unbroken run sees.
    Returns ``(step, epoch)`` where it stopped.
    """
    per_epoch = steps_per_epoch(loader, grad_accum_steps)
    step, epoch = start, start // per_epoch
    skip = (start % per_epoch) * grad_accum_steps
    micro: list[float] = []
    while step < total:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)  # the shuffling order of this epoch
        if on_epoch is not None:
            on_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        skip = 0
        for batch in batches:
            with accelerator.accumulate(*models):
                micro.append(micro_step(batch))
            if not accelerator.sync_gradients:
                continue
            step += 1
            loss, micro = sum(micro) / len(micro), []
            on_step(step, epoch, loss)
            if step >= total:
                break
        epoch += 1
    return step, epoch


# --------------------------------------------------------------------------- metrics


def flat_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with every value a tracker takes as a hyperparameter (numbers, strings and
    booleans as they are, anything else as its JSON text)."""
    return {
        k: v if isinstance(v, int | float | str | bool) else json.dumps(v, default=str)
        for k, v in config.items()
    }


class MetricsLog:
    """One run's metrics: appended to ``output_dir/metrics.jsonl`` (main process), logged at
    INFO, and sent to the Accelerator's trackers (TensorBoard) when it has any.

    Use as a context manager: leaving it closes the file and ends the trackers.
    :meth:`add_loss` / :meth:`take_window` average the loss over the steps between two log
    lines.
    """

    def __init__(
        self, accelerator: Accelerator, output_dir: str | Path, name: str, config: Mapping[str, Any]
    ) -> None:
        self.accelerator = accelerator
        self.tracked = bool(getattr(accelerator, "log_with", None))
        if self.tracked:
            accelerator.init_trackers(name, config=flat_config(config))
        self._file: IO[str] | None = None
        if accelerator.is_main_process:
            self._file = open(Path(output_dir) / METRICS_NAME, "a", encoding="utf-8")  # noqa: SIM115
        self._window: list[float] = []
        self._t0 = time.perf_counter()

    def add_loss(self, loss: float) -> None:
        """Count one optimizer step's loss into the current window."""
        self._window.append(loss)

    def take_window(self) -> tuple[float, float]:
        """``(mean loss, optimizer steps per second)`` since the last call; starts a new window."""
        n = len(self._window)
        mean = sum(self._window) / n if n else math.nan
        rate = n / max(1e-9, time.perf_counter() - self._t0)
        self._window, self._t0 = [], time.perf_counter()
        return mean, rate

    def log(self, record: Mapping[str, Any]) -> None:
        """Write ``record`` (``step`` and numbers) everywhere this log writes."""
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        logger.info(
            "%s",
            " ".join(
                f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
            ),
        )
        if self.tracked:
            self.accelerator.log(
                {k: v for k, v in record.items() if k != "step"}, step=record["step"]
            )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.tracked:
            self.tracked = False
            self.accelerator.end_training()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
