"""Opening ONNX models with clear errors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from facegen.devices import ort_providers
from facegen.errors import InvalidModelError, ModelNotAvailableError

__all__ = ["open_session"]

logger = logging.getLogger(__name__)


def open_session(path: str | Path, device: str | None = "cpu", *, threads: int = 0) -> Any:
    """Open an ``onnxruntime.InferenceSession`` for ``path`` on ``device``.

    ``threads`` = 0 lets onnxruntime choose. A missing file raises
    :class:`ModelNotAvailableError`; an unreadable one :class:`InvalidModelError`.
    """
    import onnxruntime as ort

    p = Path(path)
    if not p.is_file():
        raise ModelNotAvailableError(str(p), searched=[p], reason="file not found")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(p), sess_options=opts, providers=ort_providers(device))
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise InvalidModelError(f"{p}: not a loadable ONNX model ({exc})") from exc
    logger.debug("opened %s with %s", p, session.get_providers())
    return session
