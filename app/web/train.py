"""The Train tab: LoRA personalization from photos of one person.

:func:`lora_trainer` connects the app to :func:`facegen.training.diffusion.lora.train_lora` (the
default :data:`~facegen.app.web.services.TrainFn` when that module is installed);
:func:`train_lora_job` is the tab's handler.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from facegen.image_io import save_image
from facegen.pipelines.generation.presets import preset_info

from .files import float_input, image_upload, int_input, user_error, zip_folder
from .services import Services, SessionState, TrainRequest

__all__ = ["SD15", "lora_trainer", "train_bases", "train_lora_job"]

Progress = Callable[..., Any]

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: The files a LoRA run leaves for its users (the face cache, checkpoints and logs stay).
_RESULT_FILES = ("pytorch_lora_weights.safetensors", "facegen_lora.json", "identity.safetensors")


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
    """Train with :mod:`facegen.training.diffusion.lora` on the request's photos; returns a folder
    holding the LoRA weights, facegen's metadata and (Arc2Face) the person's identity."""
    from facegen.training.diffusion.lora import LoraTrainConfig, train_lora

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
    for name in _RESULT_FILES:
        src = Path(result.output_dir) / name
        if src.is_file():
            shutil.copy2(src, out / name)
    return out


def _safe_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem)[:40] or "lora"


def train_lora_job(
    services: Services,
    state: SessionState,
    *,
    photos: Sequence[str] | None,
    base_model: str,
    steps: Any,
    rank: Any,
    learning_rate: Any,
    seed: Any,
    train_text_encoder: bool = False,
    progress: Progress | None = None,
) -> tuple[Path, str]:
    """LoRA personalization from photos of one person: the downloadable result (a zip of
    the LoRA folder, or the trainer's file) and a summary line. Raises a readable error where
    this installation has no trainer."""
    status = services.train_status()
    trainer = services.trainer
    if not status.available or trainer is None:
        raise user_error(status.message, "Not available yet")
    lim = services.limits
    bases = train_bases(services.generate_presets)
    if base_model not in bases:
        raise user_error(f"The base model must be one of {', '.join(bases)}, got {base_model!r}.")
    paths = [str(p) for p in (photos or []) if p]
    if not paths:
        raise user_error("Please upload photos of the person (one face each).", "Missing input")
    if len(paths) > lim.max_train_photos:
        raise user_error(f"At most {lim.max_train_photos} photos, got {len(paths)}.")
    n_steps = int_input(steps, "Steps", 1, lim.max_train_steps)
    r = int_input(rank, "The LoRA rank", 1, 256)
    lr = float_input(learning_rate, "The learning rate", 1e-7, 1e-1)
    s = int_input(seed, "The seed", 0, 2**31 - 1)
    if train_text_encoder and base_model == "arc2face":
        raise user_error(
            "The text encoder can be trained only with a prompt-conditioned base model "
            "(Arc2Face's identity conditioning stays frozen); untick it or pick another base."
        )
    images = [
        image_upload(p, what="a photo", max_bytes=lim.max_upload_bytes, max_pixels=lim.max_pixels)
        for p in paths
    ]
    request = TrainRequest(
        photos=[im for im, _ in images],
        output_dir=services.run_dir(state, "train"),
        base_model=base_model,
        steps=n_steps,
        rank=r,
        learning_rate=lr,
        seed=s,
        train_text_encoder=bool(train_text_encoder),
        device=services.device,
        offline=services.offline,
    )

    def on_step(done: int, total: int) -> None:
        if progress is not None:
            progress((done, total), desc="training", unit="steps")

    if progress is not None:
        progress(0, desc="preparing the photos (faces, crops, latents)")
    with services.using_training():
        result = Path(trainer(request, on_step))
    out_dir = request.output_dir.resolve()
    if not result.exists() or not result.resolve().is_relative_to(out_dir):
        raise user_error("The trainer did not leave its result where the app expects it.")
    if result.is_dir():
        result = zip_folder(out_dir / f"facegen-lora-{_safe_stem(images[0][1])}.zip", result)
    parts = "UNet and text encoder" if train_text_encoder else "UNet"
    summary = (
        f"Trained a rank-{r} LoRA ({parts}) on {len(paths)} photo(s) for {n_steps} steps "
        f"(base {base_model}, seed {s}): {result.name}."
    )
    return result, summary
