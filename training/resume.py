"""Where a training run resumes from (``"latest"``, a checkpoint folder, or nowhere), and the
run's hold on its output folder (:func:`holds_output_folder`)."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from facegen.errors import InvalidArgumentError

__all__ = ["holds_output_folder", "resolve_resume"]

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
