"""A fixed, weightless "VAE" for small from-scratch generators: space-to-depth latents.

:class:`SpaceToDepthLatent` stands where an ``AutoencoderKL`` stands in a diffusers pipeline.
``encode`` is ``pixel_unshuffle`` by ``factor``: an RGB image ``(N, 3, H, W)`` in ``[-1, 1]``
becomes latents ``(N, 3·factor², H/factor, W/factor)`` (times ``scaling_factor``); ``decode``
is ``pixel_shuffle``, its exact inverse (both only move numbers, so a round trip is
bit-exact).

Why this and not pixel space, or a learned VAE: with ``factor=4`` a 64×64 RGB face is a
16×16×48 latent, so a small UNet works at 16×16 — cheap enough to train on a few CPU cores —
while no autoencoder has to be trained or downloaded and nothing is lost in the
"compression" (the latent *is* the image, rearranged). Pixel space at 64×64 costs the UNet 16×
more positions per layer; a learned VAE would need its own training and adds its
reconstruction error to every result. The price: the latents are as large as the image
(no compression of the information), which is why it suits small resolutions only.

What diffusers pipelines read from a VAE's config is there: ``scaling_factor``,
``shift_factor`` (None), ``latent_channels``, ``force_upcast`` (False) and
``block_out_channels`` with ``log2(factor) + 1`` entries, so that a pipeline's
``vae_scale_factor`` (``2 ** (len(block_out_channels) - 1)``) equals ``factor``.
The module has no weights: ``save_pretrained`` writes only ``config.json`` and
``from_pretrained`` reads it back (``SpaceToDepthLatent.from_pretrained(folder,
subfolder="vae")``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_utils import ModelMixin

from facegen.errors import InvalidArgumentError
from facegen.validate import check_int, check_number

__all__ = ["SpaceToDepthLatent"]


class SpaceToDepthLatent(ModelMixin, ConfigMixin):
    """``pixel_unshuffle`` / ``pixel_shuffle`` by ``factor`` (a power of two) as a diffusers VAE.

    ``encode(x)``: float ``(N, in_channels, H, W)`` (``H``, ``W`` multiples of ``factor``) →
    ``AutoencoderKLOutput`` whose ``latent_dist`` has ``mean`` = the unshuffled image, ``std``
    = 0 (``.sample()`` and ``.mode()`` both return it), ``(N, in_channels·factor², H/factor,
    W/factor)``. ``decode(z)``: the inverse → ``DecoderOutput(sample=(N, in_channels, H, W))``.
    ``scaling_factor`` is applied by the callers, as for ``AutoencoderKL``.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        factor: int = 4,
        in_channels: int = 3,
        scaling_factor: float = 1.0,
        sample_size: int = 64,
        latent_channels: int | None = None,
        block_out_channels: tuple[int, ...] | None = None,
        shift_factor: float | None = None,
        force_upcast: bool = False,
    ) -> None:
        super().__init__()
        factor = check_int(factor, "factor", minimum=1)
        if factor & (factor - 1):
            raise InvalidArgumentError(f"`factor` must be a power of two, got {factor}")
        check_int(in_channels, "in_channels", minimum=1)
        check_number(scaling_factor, "scaling_factor", minimum=0, min_open=True)
        if shift_factor is not None:
            raise InvalidArgumentError(f"`shift_factor` must be None, got {shift_factor!r}")
        channels = in_channels * factor * factor
        if latent_channels is not None and latent_channels != channels:
            raise InvalidArgumentError(
                f"`latent_channels` must be in_channels·factor² = {channels}, got {latent_channels}"
            )
        levels = factor.bit_length()  # log2(factor) + 1
        blocks = (
            tuple(block_out_channels) if block_out_channels is not None else (channels,) * levels
        )
        if len(blocks) != levels:
            raise InvalidArgumentError(
                f"`block_out_channels` must have log2(factor) + 1 = {levels} entries, got {blocks}"
            )
        self.register_to_config(latent_channels=channels, block_out_channels=blocks)
        # no weights; an empty buffer gives the module a device and dtype (ModelMixin.device)
        self.register_buffer("_probe", torch.zeros(0), persistent=False)

    def _check(self, x: torch.Tensor, channels: int, name: str, multiple: int) -> None:
        if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != channels:
            raise InvalidArgumentError(
                f"`{name}` must be a (N, {channels}, H, W) tensor, got "
                f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}"
            )
        if x.shape[2] % multiple or x.shape[3] % multiple:
            raise InvalidArgumentError(
                f"`{name}`'s height and width must be multiples of {multiple}, got {tuple(x.shape[2:])}"
            )

    def encode(
        self, x: torch.Tensor, return_dict: bool = True
    ) -> AutoencoderKLOutput | tuple[DiagonalGaussianDistribution]:
        """Space-to-depth latents of ``x`` as a zero-variance diagonal Gaussian."""
        f = int(self.config.factor)
        self._check(x, int(self.config.in_channels), "x", f)
        mean = torch.nn.functional.pixel_unshuffle(x, f)
        # logvar is irrelevant when deterministic: std and var are exactly 0
        dist = DiagonalGaussianDistribution(torch.cat([mean, torch.zeros_like(mean)], 1), True)
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(
        self, z: torch.Tensor, return_dict: bool = True, **_: Any
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """The image of latents ``z`` (``generator`` and other keywords are ignored)."""
        self._check(z, int(self.config.latent_channels), "z", 1)
        sample = torch.nn.functional.pixel_shuffle(z, int(self.config.factor))
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> Any:
        """Encode and decode (the identity on ``sample``)."""
        z = self.encode(sample).latent_dist.mode()
        return self.decode(z, return_dict=return_dict)

    def save_pretrained(self, save_directory: str | os.PathLike[str], **_: Any) -> None:  # type: ignore[override]
        """Write ``config.json`` (there are no weights)."""
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        self.save_config(save_directory)

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        subfolder: str | None = None,
        **_: Any,
    ) -> SpaceToDepthLatent:
        """Read a folder written by :meth:`save_pretrained` (``torch_dtype`` and the other
        loading keywords are accepted and ignored: there is nothing to load)."""
        folder = Path(pretrained_model_name_or_path)
        if subfolder:
            folder = folder / subfolder
        config = cls.load_config(folder)
        return cls.from_config(config)
