"""Helpers shared by the ONNX backends (SCRFD, insightface landmarks, ArcFace).

* opening a session (with clear errors) from an injected object or a file,
* reading static sizes from ``session.get_inputs()/get_outputs()`` metadata,
* deciding an insightface-format model's input normalisation from its graph,
* turning RGB ``uint8`` images into normalised NCHW ``float32`` blobs,
* running a single-output model over a batch even when its batch axis is fixed at 1.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facegen.devices import ort_providers
from facegen.errors import (
    InvalidImageError,
    InvalidModelError,
    MissingDependencyError,
    ModelNotAvailableError,
)

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

__all__ = [
    "check_rgb_image",
    "graph_normalises_input",
    "input_normalisation",
    "load_session",
    "open_session",
    "run_batched",
    "static_dim",
    "to_blob",
]

logger = logging.getLogger(__name__)

#: insightface looks at this many leading graph nodes for its ``Sub``/``Mul`` test.
_NODES_CHECKED = 8


def open_session(
    path: str | Path, device: str | None = "cpu", *, threads: int = 0
) -> InferenceSession:
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


def load_session(
    session: InferenceSession | None, model_path: str | Path | None, device: str | None
) -> InferenceSession:
    """Return ``session`` when given, else open ``model_path`` on ``device``.

    Exactly one of the two must be given (a session plus the path it was opened from is
    also accepted: the path is then only used to inspect the graph).
    """
    if session is not None:
        return session
    if model_path is None:
        raise ValueError("`session` or `model_path` must be given, got neither")
    return open_session(model_path, device)


def static_dim(value: Any) -> int | None:
    """An ONNX Runtime shape entry as a positive ``int``, or ``None`` when it is symbolic."""
    if isinstance(value, (int, np.integer)) and int(value) > 0:
        return int(value)
    return None


def square_image_input(session: Any, where: str, kind: str) -> tuple[str, int, bool]:
    """The single ``(N, 3, S, S)`` image input of an insightface-style model: its name, ``S``
    and whether the batch is fixed at 1. Raises :class:`InvalidModelError` naming ``where``
    and the model ``kind`` ("an ArcFace model", …) for any other input layout."""
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise InvalidModelError(
            f"{where}: {kind} must have one NCHW input, got {[(i.name, i.shape) for i in inputs]}"
        )
    shape = inputs[0].shape
    in_h, in_w = static_dim(shape[2]), static_dim(shape[3])
    if in_h is None or in_w is None or in_h != in_w or static_dim(shape[1]) not in (3, None):
        raise InvalidModelError(
            f"{where}: {kind} must take (N, 3, S, S) with a fixed S, got {list(shape)}"
        )
    return inputs[0].name, in_w, static_dim(shape[0]) == 1


def graph_normalises_input(model_path: str | Path, *, check_bn_data: bool) -> bool:
    """Whether an insightface-format graph normalises its own input.

    insightface's rule (``model_zoo/arcface_onnx.py``, ``landmark.py``): among the first 8
    graph nodes, one whose name starts with ``Sub`` or ``_minus`` *and* one whose name
    starts with ``Mul`` or ``_mul`` mark an mxnet-converted model that takes raw pixel
    values (mean 0, std 1). The landmark models also accept a node named ``bn_data``
    among the first 3 (``check_bn_data=True``). Needs the ``onnx`` package.
    """
    try:
        import onnx
    except ImportError as exc:
        raise MissingDependencyError(
            "onnx",
            extra="onnx",
            purpose="reading a model's input normalisation from its graph "
            "(or pass `input_mean` and `input_std` explicitly)",
        ) from exc
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, older onnx other types
        raise InvalidModelError(f"{model_path}: not a readable ONNX graph ({exc})") from exc
    find_sub = find_mul = False
    for index, node in enumerate(model.graph.node[:_NODES_CHECKED]):
        name = node.name
        if name.startswith(("Sub", "_minus")):
            find_sub = True
        if name.startswith(("Mul", "_mul")):
            find_mul = True
        if check_bn_data and index < 3 and name == "bn_data":
            find_sub = find_mul = True
    return find_sub and find_mul


def input_normalisation(
    *,
    model_path: str | Path | None,
    input_mean: float | None,
    input_std: float | None,
    default: tuple[float, float],
    check_bn_data: bool,
    what: str,
) -> tuple[float, float]:
    """Pick ``(mean, std)`` for ``(pixel - mean) / std``.

    Explicit ``input_mean`` and ``input_std`` win (both or neither). Otherwise the graph at
    ``model_path`` decides: ``(0, 1)`` when it normalises its own input (see
    :func:`graph_normalises_input`), else ``default``. Without a path there is nothing to
    inspect, so the values must be given.
    """
    if (input_mean is None) != (input_std is None):
        raise ValueError(
            f"`input_mean` and `input_std` must be given together, got {input_mean!r} and "
            f"{input_std!r}"
        )
    if input_mean is not None and input_std is not None:
        if not input_std > 0:
            raise ValueError(f"`input_std` must be > 0, got {input_std}")
        return float(input_mean), float(input_std)
    if model_path is None:
        raise ValueError(
            f"{what}: `input_mean` and `input_std` must be given when the model is injected as a "
            "session without `model_path` (the graph cannot be inspected), got neither"
        )
    if graph_normalises_input(model_path, check_bn_data=check_bn_data):
        logger.debug("%s: graph normalises its own input; feeding raw pixels", model_path)
        return 0.0, 1.0
    return default


def check_rgb_image(image: Any, *, what: str = "image") -> np.ndarray:
    """Return ``image`` as a C-contiguous RGB ``uint8`` ``(H, W, 3)`` array or raise."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise InvalidImageError(
            f"`{what}` must be an RGB uint8 (H, W, 3) array, got {arr.dtype} {arr.shape}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidImageError(f"`{what}` must not be empty, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def to_blob(images: np.ndarray, mean: float, std: float) -> np.ndarray:
    """RGB ``uint8`` ``(N, H, W, 3)`` → float32 ``(N, 3, H, W)`` holding ``(x - mean) / std``.

    Channel order stays RGB: insightface feeds BGR through ``blobFromImage(swapRB=True)``,
    so its networks consume RGB.
    """
    x = images.astype(np.float32)
    x -= np.float32(mean)
    x /= np.float32(std)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def run_batched(
    session: InferenceSession,
    input_name: str,
    output_names: Sequence[str],
    blob: np.ndarray,
    *,
    fixed_batch_one: bool,
) -> list[np.ndarray]:
    """Run ``session`` on ``blob`` ``(N, …)``; loop one sample at a time if the batch is fixed at 1.

    Returns the outputs, each concatenated back to a leading axis of ``N``.
    """
    if not fixed_batch_one or blob.shape[0] == 1:
        return list(session.run(list(output_names), {input_name: blob}))
    parts = [
        session.run(list(output_names), {input_name: blob[i : i + 1]}) for i in range(len(blob))
    ]
    return [np.concatenate([p[k] for p in parts], axis=0) for k in range(len(output_names))]


def run_feeds(
    session: InferenceSession,
    output: str,
    batched: dict[str, np.ndarray],
    *,
    fixed_batch_one: bool,
    shared: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Run ``session`` for ``output`` on inputs whose first axis is the batch (``batched``,
    all of the same length N) plus inputs fed as they are (``shared``, e.g. CodeFormer's
    weight); one sample at a time when the model's batch is fixed at 1."""
    extra = dict(shared or {})
    n = len(next(iter(batched.values())))
    if not fixed_batch_one or n == 1:
        return np.asarray(session.run([output], {**batched, **extra})[0])
    parts = [
        session.run([output], {**{k: v[i : i + 1] for k, v in batched.items()}, **extra})[0]
        for i in range(n)
    ]
    return np.concatenate(parts, axis=0)
