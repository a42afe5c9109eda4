"""Fixtures of the web app's API tests: dlib and an app launched in-process with tiny models
(one per test module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from gradio_client import Client
from web_testing import LIMITS, TINY_PRESETS, free_port, tiny_factory

from facegen.analyzer import FaceAnalyzer
from facegen.app.web.app import launch_app
from facegen.app.web.services import Services
from facegen.samples import sample_path


@pytest.fixture(scope="module")
def dlib() -> FaceAnalyzer:
    return FaceAnalyzer.from_names("dlib", "dlib68", "dlib")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, dlib: FaceAnalyzer) -> Iterator[SimpleNamespace]:
    """The app with the tiny presets (and ``arc2face``, whose weights are missing) and the
    small :data:`web_testing.LIMITS`; ``.client`` is a gradio_client on it."""
    root = tmp_path_factory.mktemp("webapp")
    services = Services(
        default_preset="tiny",
        presets=[*TINY_PRESETS, "arc2face"],
        pipeline_factory=tiny_factory(dlib),
        analyzer=dlib,
        limits=LIMITS,
        output_root=root / "outputs",
    )
    demo = launch_app(services, port=free_port(), block=False, quiet=True)
    try:
        yield SimpleNamespace(
            services=services,
            demo=demo,
            url=demo.local_url,
            client=Client(demo.local_url, verbose=False),
        )
    finally:
        demo.close()
        services.close()


@pytest.fixture(scope="session")
def astronaut_path() -> Path:
    return sample_path("astronaut")
