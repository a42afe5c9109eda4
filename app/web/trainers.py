"""The app's LoRA trainers: what a training job is given (:class:`TrainRequest`), what a
trainer is (:data:`TrainFn`), and the default one, :func:`lora_trainer`, which runs
:func:`facegen.training.diffusion.lora.train_lora`.

This module imports nothing else of the web app: :mod:`~facegen.app.web.services` picks the
default trainer from here, and the Train tab's handler (:mod:`~facegen.app.web.train`)
builds requests for it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facegen.adapters.arc2face import SD15_REPO
from facegen.image_io import save_image
from facegen.pipelines.generation.presets import preset_info
from facegen.validate import check_int, check_number

__all__ = ["SD15", "TrainFn", "TrainRequest", "lora_trainer", "train_bases"]

#: The SD1.5 base of the IP-Adapter-FaceID presets (a trigger word in the prompt).
SD15 = SD15_REPO


@dataclass(frozen=True)
class TrainRequest:
    """A LoRA personalization job: ``photos`` are RGB uint8 ``(H, W, 3)`` arrays of one
    person; ``base_model`` is ``"tiny"``, ``"arc2face"`` or an SD1.5 model id; the trainer
    writes its result under ``output_dir``."""

    photos: list[np.ndarray]
    output_dir: Path
    base_model: str
    steps: int
    rank: int
    learning_rate: float
    seed: int
    device: str = "cpu"
    offline: bool | None = None
    train_text_encoder: bool = False

    def __post_init__(self) -> None:
        check_int(self.steps, "steps", minimum=1)
        check_int(self.rank, "rank", minimum=1)
        check_int(self.seed, "seed", minimum=0)
        check_number(self.learning_rate, "learning_rate", minimum=0, min_open=True)


#: ``(request, progress(done, total)) -> result path`` (a file or a folder under
#: ``request.output_dir``).
TrainFn = Callable[[TrainRequest, Callable[[int, int], None]], Path]


def train_bases(presets: Sequence[str]) -> list[str]:
    """The base models a LoRA can be trained on, from the generation presets offered:
    ``tiny`` (random, plumbing only), ``arc2face`` (identity-conditioned) and SD1.5 (the
    base of the IP-Adapter-FaceID presets; a trigger word in the prompt)."""
    out: list[str] = []
    for p in presets:
        family = preset_info(p).family
        base = SD15 if family == "sd15" else family
        if base not in out:
            out.append(base)
    return out


def lora_trainer(request: TrainRequest, progress: Callable[[int, int], None]) -> Path:
    """Train with :mod:`facegen.training.diffusion.lora` on the request's photos; returns a
    folder holding the LoRA weights, facegen's metadata and (Arc2Face) the person's identity
    (the face cache, checkpoints and logs of the run stay behind)."""
    from facegen.training.diffusion.lora import LORA_RESULT_FILES, LoraTrainConfig, train_lora

    data = request.output_dir / "photos"
    data.mkdir(parents=True, exist_ok=True)
    for k, photo in enumerate(request.photos):
        save_image(photo, data / f"photo{k:03d}.png")
    run = request.output_dir / "run"
    config = LoraTrainConfig(
        output_dir=str(run),
        data_dir=str(data),
        base_model=request.base_model,
        resolution=64 if request.base_model == "tiny" else 512,
        rank=request.rank,
        train_text_encoder=request.train_text_encoder,
        max_steps=request.steps,
        learning_rate=request.learning_rate,
        seed=request.seed,
        checkpointing_steps=0,
        num_validation_images=0,
        tensorboard=False,
        cpu=request.device == "cpu",
        local_files_only=request.offline,
    )
    result = train_lora(config, progress=lambda step, total, _logs: progress(step, total))
    out = request.output_dir / "lora"
    out.mkdir()
    for name in LORA_RESULT_FILES:
        src = Path(result.output_dir) / name
        if src.is_file():
            shutil.copy2(src, out / name)
    return out
