"""Where a training run resumes from: ``"latest"``, a checkpoint folder, or nowhere."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from facegen.errors import InvalidArgumentError

__all__ = ["resolve_resume"]

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
