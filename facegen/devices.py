"""Device handling: one place maps a device string to torch devices and ONNX Runtime providers."""

from __future__ import annotations

import re
from typing import Any

from facegen.errors import DeviceNotAvailableError

__all__ = ["ort_providers", "parse_device"]

_DEVICE_RE = re.compile(r"^(cpu|cuda|mps|coreml|directml)(?::(\d+))?$")


def parse_device(device: str | None) -> tuple[str, int]:
    """Split ``"cuda:1"`` into ``("cuda", 1)``; ``None`` means ``"cpu"``."""
    if device is None:
        return "cpu", 0
    m = _DEVICE_RE.match(str(device).strip().lower())
    if not m:
        raise DeviceNotAvailableError(
            f"`device` must be one of cpu, cuda[:N], mps, coreml, directml, got {device!r}"
        )
    return m.group(1), int(m.group(2) or 0)


_ORT_NAMES = {
    "cuda": "CUDAExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "mps": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
}


def ort_providers(device: str | None = "cpu") -> list[Any]:
    """ONNX Runtime providers for ``device``, ending with the CPU provider.

    Raises :class:`DeviceNotAvailableError` when the installed onnxruntime lacks the
    provider the device needs (e.g. ``cuda`` with the CPU-only ``onnxruntime`` wheel).
    """
    import onnxruntime as ort

    kind, index = parse_device(device)
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    name = _ORT_NAMES[kind]
    available = ort.get_available_providers()
    if name not in available:
        raise DeviceNotAvailableError(
            f"device {device!r} needs onnxruntime's {name}, but this onnxruntime only has "
            f"{', '.join(available)}. Install a matching build (e.g. onnxruntime-gpu for CUDA) "
            "or use --device cpu."
        )
    if kind == "cuda":
        return [(name, {"device_id": index}), "CPUExecutionProvider"]
    return [name, "CPUExecutionProvider"]
