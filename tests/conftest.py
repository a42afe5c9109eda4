"""Shared fixtures: real photos that ship inside installed packages, and the ORL set."""

from __future__ import annotations

import importlib.util
import io
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ORL_DIR = REPO.parent / "shared" / "data" / "orl_faces"


class _LiveStderr(io.TextIOBase):
    """``sys.stderr`` as it is at each write: pytest swaps it for every test."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture(autouse=True)
def _library_log_handlers_follow_stderr() -> Iterator[None]:
    """diffusers and transformers create their log handler on first use, bound to the
    ``sys.stderr`` of that moment: inside a test, pytest's capture stream, which is closed
    later ("--- Logging error ---" tracebacks in a later test's output). Point such handlers
    at whatever stderr is current instead (diffusers also sets the handler's ``flush`` to that
    stream's ``flush``: it goes too)."""
    yield
    for name in ("diffusers", "transformers"):
        for handler in logging.getLogger(name).handlers:
            # exactly the library's own handler: pytest's capture handlers subclass it
            if type(handler) is logging.StreamHandler and not isinstance(
                handler.stream, _LiveStderr
            ):
                handler.stream = _LiveStderr()  # not setStream: it flushes the closed stream
                # diffusers also binds the handler's `flush` to that stream's own method
                vars(handler).pop("flush", None)


def _insightface_images() -> Path:
    spec = importlib.util.find_spec("insightface")
    assert spec is not None and spec.origin is not None, "insightface must be installed"
    return Path(spec.origin).parent / "data" / "images"


@pytest.fixture(scope="session")
def t1_path() -> Path:
    """insightface's group photo: six different people."""
    return _insightface_images() / "t1.jpg"


@pytest.fixture(scope="session")
def hanks_path() -> Path:
    """insightface's Tom Hanks photo (a 112×112 face crop)."""
    return _insightface_images() / "Tom_Hanks_54745.png"


@pytest.fixture(scope="session")
def t1_image(t1_path: Path) -> np.ndarray:
    from facegen.image_io import load_image

    return load_image(t1_path)


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """scikit-image's astronaut (one face, 512×512 RGB)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="session")
def orl_dir() -> Path:
    if not ORL_DIR.is_dir():
        pytest.skip(f"ORL faces not present at {ORL_DIR} (the shared data folder beside the repo)")
    return ORL_DIR


@pytest.fixture(scope="session")
def dlib_analyzer():
    """The out-of-the-box analyzer (dlib HOG + 68 points + dlib ResNet), built once."""
    from facegen.analyzer import FaceAnalyzer

    return FaceAnalyzer.from_names("dlib", None, "dlib")
