from __future__ import annotations

import pytest

from facegen.devices import ort_providers, parse_device
from facegen.errors import DeviceNotAvailableError


def test_parse_device() -> None:
    assert parse_device(None) == ("cpu", 0)
    assert parse_device("CUDA:2") == ("cuda", 2)
    with pytest.raises(DeviceNotAvailableError, match="`device` must be one of"):
        parse_device("gpu0")


def test_ort_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    assert ort_providers("cpu") == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(DeviceNotAvailableError, match="onnxruntime-gpu"):
        ort_providers("cuda")
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert ort_providers("cuda:1") == [
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
