"""Helpers shared by the web app's tests: services with tiny models, the API tests' limits
and error check, and a stand-in for the Arc2Face ArcFace encoder (so photos give identities offline)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from facegen.align import align_face
from facegen.analyzer import FaceAnalyzer
from facegen.app.web.services import AppLimits
from facegen.base import IdentityEncoder
from facegen.types import AlignedFace, Face

TINY_PRESETS = ["tiny", "tiny-controlnet"]
#: The limits of the app the API tests launch (``conftest.app``): small, so they are reached.
LIMITS = AppLimits(
    max_upload_mb=2,
    max_pixels=2_000_000,
    max_images=4,
    max_steps=10,
    max_dataset_identities=3,
    max_dataset_images=2,
    max_train_steps=5,
    max_video_frames=10,
)
#: Denoising steps of the API tests' generations.
STEPS = 2


class ProjectionEncoder(IdentityEncoder):
    """Test double for Arc2Face's ArcFace: a fixed random projection of the 112 ArcFace crop
    (its vectors carry the tiny pipeline's encoder id, so photos become identities)."""

    encoder_id = "arcface-onnx/arc2face"
    dim = 512
    input_size = 112

    def __init__(self) -> None:
        super().__init__()
        self.w = np.random.default_rng(0).normal(size=(28 * 28 * 3, 512)).astype(np.float32)

    def align(self, image: np.ndarray, face: Face) -> AlignedFace:
        return align_face(image, face, size=112)

    def _forward(self, crops: np.ndarray) -> np.ndarray:
        small = crops.reshape(len(crops), 28, 4, 28, 4, 3).mean((2, 4)) / 255.0 - 0.5
        return small.reshape(len(crops), -1).astype(np.float32) @ self.w


def tiny_factory(dlib: FaceAnalyzer) -> Any:
    """Builds the tiny presets offline, with the projection encoder as their identity
    analyzer; any other preset is built for real, offline (so it reports missing weights)."""
    from facegen.pipelines.generation.presets import from_preset

    conditioning = FaceAnalyzer(dlib.detector, dlib.landmarker, ProjectionEncoder())

    def factory(preset: str, device: str, dtype: str) -> Any:
        if not preset.startswith("tiny"):
            return from_preset(preset, device=device, dtype=dtype, local_files_only=True)
        pipe = from_preset(preset, device=device, dtype=dtype)
        pipe.identity_analyzer = conditioning
        return pipe

    return factory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_noise_png(path: Path, size: int = 96, seed: int = 0) -> Path:
    """A valid image without any face."""
    from facegen.image_io import save_image

    rng = np.random.default_rng(seed)
    save_image(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), path)
    return path


def app_error(client: Client, *args: Any, api_name: str) -> str:
    """The message of the error the endpoint raises for ``args``; it must read as a
    sentence, without a traceback."""
    with pytest.raises(AppError) as ei:
        client.predict(*args, api_name=api_name)
    message = str(ei.value)
    assert "Traceback" not in message and 'File "' not in message
    return message
