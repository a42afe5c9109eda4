"""Which published model packs each ONNX backend can load (names of :mod:`facegen.hub` presets).

Kept apart from the registries in :mod:`facegen.backends` so that the backends can read
these tables without importing the package that imports them.
"""

from __future__ import annotations

__all__ = ["ARCFACE_PRESETS", "SCRFD_PRESETS"]

#: Model presets whose detector file the ``insightface`` (SCRFD) detector can load.
SCRFD_PRESETS: tuple[str, ...] = ("antelopev2", "buffalo_l")
#: Model presets whose recognition file the ``arcface-onnx`` encoder can load.
ARCFACE_PRESETS: tuple[str, ...] = ("antelopev2", "buffalo_l", "arc2face-arcface")
