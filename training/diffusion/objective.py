"""The denoising objective shared by facegen's generative training loops.

* :class:`PromptEncoder`: prompts → frozen CLIP ``prompt_embeds``, each prompt encoded once;
* :func:`noisy_latents`: a forward-diffusion sample and its training target (ε, v or x₀,
  as the scheduler's ``prediction_type`` says), with optional noise offset;
* :func:`diffusion_loss`: per-sample MSE, min-SNR-γ weighted when asked (Hang et al. 2023,
  diffusers' ``compute_snr``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from facegen.errors import InvalidArgumentError

if TYPE_CHECKING:
    import torch
    from diffusers import DDPMScheduler
    from transformers import CLIPTextModel, PreTrainedTokenizerBase

__all__ = ["PromptEncoder", "PromptTokens", "diffusion_loss", "noisy_latents"]


class PromptTokens:
    """Prompts → CLIP ``input_ids`` ``(B, 77)`` (int64), each prompt tokenised once."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(
        self, prompts: Sequence[str], device: torch.device | str | None = None
    ) -> torch.Tensor:
        import torch

        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            ids = self.tokenizer(
                missing,
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            self._cache.update(zip(missing, ids))
        return torch.stack([self._cache[p] for p in prompts]).to(device)


class PromptEncoder:
    """Prompts → frozen CLIP ``prompt_embeds`` ``(B, 77, C)``, each prompt encoded once."""

    def __init__(self, text_encoder: CLIPTextModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self._tokens = PromptTokens(tokenizer)
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(
        self, prompts: Sequence[str], device: torch.device | str, dtype: torch.dtype
    ) -> torch.Tensor:
        import torch

        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            ids = self._tokens(missing, self.text_encoder.device)
            with torch.no_grad():
                states = self.text_encoder(ids)[0]
            for p, s in zip(missing, states):
                self._cache[p] = s.detach()
        return torch.stack([self._cache[p] for p in prompts]).to(device, dtype)


def noisy_latents(
    noise_scheduler: DDPMScheduler, latents: torch.Tensor, noise_offset: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(noisy, timesteps, target)`` for a batch of clean ``latents`` ``(B, C, h, w)``.

    Timesteps uniform over the scheduler's training steps; ``target`` is the noise
    (``epsilon``), the velocity (``v_prediction``) or the clean latents (``sample``).
    """
    import torch

    noise = torch.randn_like(latents)
    if noise_offset:
        noise = noise + noise_offset * torch.randn(
            latents.shape[0], latents.shape[1], 1, 1, device=latents.device, dtype=latents.dtype
        )
    bsz = latents.shape[0]
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, t)
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, t)
    elif kind == "sample":
        target = latents
    else:
        raise InvalidArgumentError(
            "the scheduler's `prediction_type` must be epsilon, v_prediction or sample, "
            f"got {kind!r}"
        )
    return noisy, t, target


def diffusion_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    timesteps: torch.Tensor,
    noise_scheduler: DDPMScheduler,
    snr_gamma: float | None,
) -> torch.Tensor:
    """Per-sample MSE ``(B,)`` in float32, min-SNR-γ weighted when ``snr_gamma`` is set."""
    import torch
    import torch.nn.functional as F

    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma is None:
        return loss
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    weight = torch.minimum(snr, torch.full_like(snr, snr_gamma))
    if noise_scheduler.config.prediction_type == "epsilon":
        weight = weight / snr
    elif noise_scheduler.config.prediction_type == "v_prediction":
        weight = weight / (snr + 1)
    return loss * weight
