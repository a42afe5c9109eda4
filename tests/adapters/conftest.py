"""Fixtures of the IP-Adapter-FaceID tests (helpers: ``faceid_testing.py``)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest
from faceid_testing import components, make_pipe, run

from facegen.adapters import ip_adapter_faceid as fid


@pytest.fixture
def quiet_diffusers() -> None:
    """diffusers' and transformers' warnings and progress bars off (FaceID tests opt in)."""
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    dlogging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def unet():
    """The tiny pipeline's UNet (a copy per test module)."""
    return copy.deepcopy(components()["unet"])


@pytest.fixture(scope="module")
def base_image() -> np.ndarray:
    """The tiny pipeline without any adapter."""
    return run(make_pipe())


@pytest.fixture(scope="module")
def checkpoint(unet) -> dict:
    return fid.faceid_state_dict_for(unet, seed=1, lora_rank=4)


@pytest.fixture
def weights_dir(tmp_path: Path, checkpoint: dict) -> Path:
    fid.save_faceid_weights(checkpoint, tmp_path / fid.FACEID_SD15_WEIGHTS)
    return tmp_path
