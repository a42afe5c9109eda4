"""The Train tab's handler: LoRA personalization from photos of one person.

:func:`train_lora_job` checks the form, reads the photos and runs the app's trainer (see
:mod:`facegen.app.web.trainers`) one job at a time; the result is offered as a zip.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from facegen.paths import safe_name

from .files import FieldValue, float_input, image_upload, int_input, user_error, zip_folder
from .services import Services, SessionState
from .trainers import TrainRequest, train_bases

__all__ = ["train_lora_job"]

Progress = Callable[..., Any]

MAX_RANK = 256
MAX_SEED = 2**31 - 1


def _zip_name(photo_name: str) -> str:
    """``facegen-lora-<first photo's stem>.zip`` (file-name-safe, at most 40 characters)."""
    return f"facegen-lora-{safe_name(Path(photo_name).stem, max_len=40)}.zip"


def train_lora_job(
    services: Services,
    state: SessionState,
    *,
    photos: Sequence[str] | None,
    base_model: str,
    steps: FieldValue,
    rank: FieldValue,
    learning_rate: FieldValue,
    seed: FieldValue,
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
    r = int_input(rank, "The LoRA rank", 1, MAX_RANK)
    lr = float_input(learning_rate, "The learning rate", 1e-7, 1e-1)
    s = int_input(seed, "The seed", 0, MAX_SEED)
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
        result = zip_folder(out_dir / _zip_name(images[0][1]), result)
    parts = "UNet and text encoder" if train_text_encoder else "UNet"
    summary = (
        f"Trained a rank-{r} LoRA ({parts}) on {len(paths)} photo(s) for {n_steps} steps "
        f"(base {base_model}, seed {s}): {result.name}."
    )
    return result, summary
