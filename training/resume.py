"""Where a training run resumes from (``"latest"``, a checkpoint folder, or nowhere), the
checkpoints it leaves on its way (:class:`CheckpointSeries`), and the run's hold on its output
folder (:func:`holds_output_folder`)."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from facegen.errors import InvalidArgumentError

if TYPE_CHECKING:
    from accelerate import Accelerator

    from facegen.training.checkpoint import TrainingState

__all__ = ["CheckpointSeries", "holds_output_folder", "resolve_resume"]

F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger(__name__)


def resolve_resume(
    value: str | None, latest: Callable[[], Path | None], *, field: str, output_dir: str | Path
) -> Path | None:
    """The checkpoint folder to resume from. ``value``: ``None`` (start fresh), ``"latest"``
    (``latest()``, the loop's newest checkpoint; fresh when there is none yet) or a folder.
    ``field`` names the setting in errors."""
    if value is None:
        return None
    if value == "latest":
        path = latest()
        if path is None:
            logger.info("no checkpoint in %s yet; starting from step 0", output_dir)
        return path
    path = Path(value)
    if not path.is_dir():
        raise InvalidArgumentError(
            f"`{field}` must be 'latest' or a checkpoint folder, got {value!r} (not a folder)"
        )
    return path


class CheckpointSeries:
    """The ``output_dir/checkpoints/<prefix>N`` folders of one run of loop ``loop``.

    ``state``: what a checkpoint holds (models, optimizer, LR schedule, data loaders), all
    prepared by ``accelerator``. A checkpoint is written every ``every`` optimizer steps (0:
    never) and at the run's last step; only the newest ``keep`` stay (None: all).
    ``digits`` zero-pads ``N``; ``trainable_only`` saves only the parameters that require
    grad (a LoRA inside a frozen UNet).
    """

    def __init__(
        self,
        accelerator: Accelerator,
        output_dir: str | Path,
        state: TrainingState,
        *,
        loop: str,
        prefix: str,
        every: int,
        keep: int | None,
        digits: int = 0,
        trainable_only: bool = False,
    ) -> None:
        self.accelerator = accelerator
        self.output_dir = Path(output_dir)
        self.state = state
        self.loop, self.prefix, self.every, self.keep = loop, prefix, every, keep
        self.digits, self.trainable_only = digits, trainable_only
        self.saved: list[Path] = []
        self._last_saved = -1

    def latest(self) -> Path | None:
        """The newest complete checkpoint of this series, or None."""
        from facegen.training import checkpoint

        return checkpoint.latest_checkpoint(self.output_dir, self.prefix)

    def resume(self, value: str | None, *, field: str) -> int:
        """Restore the checkpoint ``value`` names (see :func:`resolve_resume`; ``field`` is
        the setting's name in errors) into the run's state; returns its step (0: none)."""
        from facegen.training import checkpoint

        path = resolve_resume(value, self.latest, field=field, output_dir=self.output_dir)
        if path is None:
            return 0
        counters = checkpoint.load_checkpoint(
            path, self.accelerator, self.state, loop=self.loop, trainable_only=self.trainable_only
        )
        step = counters["global_step"]
        logger.info("resumed from %s at step %d", path, step)
        self._last_saved = step
        return step

    def save(self, step: int) -> Path:
        """Write the checkpoint of ``step`` (every process calls it), then drop the oldest."""
        from facegen.training import checkpoint

        path = self.output_dir / "checkpoints" / f"{self.prefix}{step:0{self.digits}d}"
        checkpoint.save_checkpoint(
            path,
            self.accelerator,
            self.state,
            loop=self.loop,
            counters={"global_step": step},
            trainable_only=self.trainable_only,
        )
        if self.accelerator.is_main_process:
            checkpoint.prune_checkpoints(self.output_dir, self.prefix, self.keep)
        logger.info("saved checkpoint %s", path)
        self.saved.append(path)
        self._last_saved = step
        return path

    def after_step(self, step: int) -> None:
        """Save when ``step`` is a multiple of ``every``."""
        if self.every and step % self.every == 0:
            self.save(step)

    def finish(self, step: int) -> None:
        """After the last step: save it unless it is saved already (or checkpoints are off)."""
        if self.every and step != self._last_saved:
            self.save(step)


def holds_output_folder(kind: str) -> Callable[[F], F]:
    """Decorate a ``train_<kind>(config, ...)`` function: while it runs, it holds the lock on
    ``config.output_dir`` (:func:`facegen.locks.folder_lock`), so a second run into the same
    folder fails at once with one line naming the first (PID, host, start time), and a lock
    left by a killed run is taken over. In a multi-process run (``accelerate launch``,
    ``torchrun``: ``RANK`` is set) only the first process takes it; the others write into the
    folder of the same run."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(config: Any, *args: Any, **kwargs: Any) -> Any:
            out = getattr(config, "output_dir", None)
            first = os.environ.get("RANK", "0") in ("", "0")
            if out is None or not first:
                return fn(config, *args, **kwargs)
            from facegen.locks import folder_lock

            with folder_lock(out, what=f"train {kind}"):
                return fn(config, *args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap
