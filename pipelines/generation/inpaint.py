"""Masked generation on an aligned face crop: regenerate the pixels under a mask, keep the rest.

Two ways, chosen by the pipeline's UNet (:func:`masked_generate` picks):

* **Latent blending** (RePaint-style; any identity pipeline whose UNet takes its VAE's latents:
  Arc2Face's ``IDToFacePipeline`` / ``IDToFaceControlNetPipeline``, IP-Adapter-FaceID's
  ``IDTextToFacePipeline`` / ``…ControlNetPipeline``, facegen's own generators on a
  space-to-depth latent such as ``demo-orl``). The crop is encoded with the VAE
  (mean of its latent distribution × ``scaling_factor``); the run starts from the seed's noise
  (what the plain pipeline would draw with that seed). After every denoising step,
  :class:`RePaintBlend` — a ``callback_on_step_end`` — replaces the latents outside the mask by
  the original's latents noised to the level the loop has reached
  (``scheduler.add_noise(original, noise, t_next)`` with that same noise; after the last step
  the clean original), so the model denoises the masked part in the context of the original.
  diffusers' loop runs unmodified. ``strength < 1`` starts from the original noised to the
  ``strength`` point of the schedule (its tail passed as ``timesteps``; schedulers whose
  ``set_timesteps`` takes custom ``timesteps`` only, e.g. DPM-Solver, LCM, Euler).
* **Inpainting UNet** (9 input channels: latents, mask, masked-image latents;
  ``stable-diffusion-v1-5/stable-diffusion-inpainting``): :class:`IDTextToFaceInpaintPipeline`
  / :class:`IDTextToFaceControlNetInpaintPipeline` are diffusers' ``StableDiffusionInpaintPipeline``
  / ``StableDiffusionControlNetInpaintPipeline`` with IP-Adapter-FaceID identities
  (:class:`~facegen.pipelines.generation.id_text_to_face.FaceIDTextMixin`), one crop, mask, identity
  and seed per image.

Masks: float ``(S, S)`` in [0, 1], 1 = regenerate. In latent space a cell is regenerated when
any pixel of its ``f×f`` block (``f`` = the VAE's scale factor: 8 for SD1.5, 4 for
facegen's space-to-depth latents) has mask > 0, so every
pixel the mask touches gets generated content; the inpainting UNet gets the same region
(``mask > 0``). The returned ``images`` are then composited with the original through the
feathered pixel mask (:func:`facegen.masks.blend`: mask 0 keeps the original's bytes).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from diffusers import StableDiffusionControlNetInpaintPipeline, StableDiffusionInpaintPipeline

from facegen.adapters.base import IdentityInput
from facegen.masks import blend
from facegen.pipelines.generation.id_text_to_face import FaceIDTextMixin
from facegen.pipelines.generation.id_to_face import (
    MAX_SEED,
    CallExtras,
    GenerationContext,
    IDGenerationMixin,
)
from facegen.validate import check_int, check_number

__all__ = [
    "FaceIDInpaintMixin",
    "IDTextToFaceControlNetInpaintPipeline",
    "IDTextToFaceInpaintPipeline",
    "MaskedGenerationOutput",
    "RePaintBlend",
    "latent_mask",
    "masked_generate",
]

if TYPE_CHECKING:
    import torch
    from diffusers import SchedulerMixin

logger = logging.getLogger(__name__)

StepCallback = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]


# ------------------------------------------------------------------------ latent blending


class RePaintBlend:
    """``callback_on_step_end`` keeping the latents outside a mask on the original's path.

    ``image_latents``: the originals' clean latents, float ``(B, C, h, w)``. ``noise``: the
    noise the run started from, same shape. ``mask``: bool or {0, 1} ``(B, 1, h, w)``, true
    where the model generates. After step ``i`` the loop's latents are at the next timestep
    ``t[i+1]``; outside the mask they become ``scheduler.add_noise(image_latents, noise,
    t[i+1])`` (after the last step: ``image_latents``), exactly (``torch.where``), inside they
    stay the model's. ``then``: another callback run afterwards on the blended latents.
    """

    tensor_inputs = ("latents",)

    def __init__(
        self,
        image_latents: torch.Tensor,
        noise: torch.Tensor,
        mask: torch.Tensor,
        *,
        then: StepCallback | None = None,
    ) -> None:
        if image_latents.shape != noise.shape:
            raise ValueError(
                f"`noise` must have the shape of `image_latents` {tuple(image_latents.shape)}, "
                f"got {tuple(noise.shape)}"
            )
        b, _, h, w = image_latents.shape
        if tuple(mask.shape) != (b, 1, h, w):
            raise ValueError(f"`mask` must have shape {(b, 1, h, w)}, got {tuple(mask.shape)}")
        if then is not None and not callable(then):
            raise ValueError(f"`then` must be callable, got {type(then).__name__}")
        self.image_latents = image_latents
        self.noise = noise
        self.mask = mask.bool()
        self.then = then

    @staticmethod
    def loop_timesteps(pipe: IDGenerationMixin) -> torch.Tensor:
        """The timesteps of the running loop (the tail of ``scheduler.timesteps``)."""
        ts = pipe.scheduler.timesteps
        n = getattr(pipe, "_num_timesteps", None) or len(ts)
        return ts[len(ts) - n :]

    def known(self, pipe: IDGenerationMixin, i: int) -> torch.Tensor:
        """The original's latents at the noise level the loop reaches after step ``i``."""
        ts = self.loop_timesteps(pipe)
        if i + 1 >= len(ts):
            return self.image_latents
        t_next = ts[i + 1 : i + 2].repeat(self.image_latents.shape[0])
        return pipe.scheduler.add_noise(self.image_latents, self.noise, t_next)

    def __call__(
        self, pipe: IDGenerationMixin, i: int, t: torch.Tensor, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        import torch

        latents = kwargs["latents"]
        if latents.shape != self.image_latents.shape:
            raise ValueError(
                f"RePaintBlend holds latents {tuple(self.image_latents.shape)} but the loop runs "
                f"{tuple(latents.shape)}; run the whole batch in one call (no `batch_size`)"
            )
        known = self.known(pipe, i).to(latents.device, latents.dtype)
        kwargs["latents"] = torch.where(self.mask.to(latents.device), latents, known)
        if self.then is not None:
            kwargs = self.then(pipe, i, t, kwargs)
        return kwargs


def latent_mask(mask: np.ndarray, factor: int) -> torch.Tensor:
    """Pixel masks float ``(B, S, S)`` in [0, 1] → bool ``(B, 1, S/f, S/f)`` latent masks.

    A latent cell is true when any pixel of its ``factor×factor`` block has mask > 0.
    """
    import torch

    m = torch.as_tensor(np.asarray(mask, np.float32))[:, None]
    return torch.nn.functional.max_pool2d((m > 0).float(), factor) > 0


# ------------------------------------------------------------------------ inpainting UNet


class _DiffusersInpaintArgs:
    """Sits between facegen's mixins and diffusers' inpainting pipeline in the bases.

    :class:`~facegen.pipelines.generation.id_to_face.IDGenerationMixin` hands each chunk its control
    maps as ``image`` (the name in diffusers' text-to-image ControlNet pipeline); the
    inpainting pipelines call the crops ``image`` and the maps ``control_image``. This maps
    facegen's per-chunk ``inpaint_image`` / ``inpaint_mask`` and the maps onto those names.
    """

    def __call__(
        self, *args: Any, inpaint_image: Any = None, inpaint_mask: Any = None, **kwargs: Any
    ) -> Any:
        if getattr(self, "controlnet", None) is not None:
            kwargs["control_image"] = kwargs.pop("image")
        return super().__call__(  # type: ignore[misc]
            *args, image=inpaint_image, mask_image=inpaint_mask, **kwargs
        )


def _rows(value: Any, total: int, name: str) -> list[Any]:
    """One item per image: a list of ``total`` items, or one item for all."""
    if isinstance(value, (list, tuple)):
        if len(value) == total:
            return list(value)
        if len(value) == 1:
            return list(value) * total
        raise ValueError(f"`{name}` must be one image or one per image ({total}), got {len(value)}")
    if isinstance(value, np.ndarray) and value.ndim == 4:
        if value.shape[0] not in (1, total):
            raise ValueError(
                f"`{name}` must be one image or one per image ({total}), got {value.shape[0]}"
            )
        return [value[k if value.shape[0] == total else 0] for k in range(total)]
    return [value] * total


class FaceIDInpaintMixin(FaceIDTextMixin, _DiffusersInpaintArgs):
    """IP-Adapter-FaceID identities for diffusers' inpainting pipelines.

    ``pipe(id_embeds, prompt=…, image=crops, mask_image=masks, seeds=[…], strength=1.0)``:
    ``image`` / ``mask_image`` are one for all images or one per image (identity-major),
    as diffusers takes them (PIL, or numpy floats in [0, 1]; white = repaint).
    """

    inpainting = True

    def __call__(  # type: ignore[override]
        self, *args: Any, image: Any = None, mask_image: Any = None, **kwargs: Any
    ) -> Any:
        """See :class:`~facegen.pipelines.generation.id_to_face.IDGenerationMixin`; also ``image`` and
        ``mask_image`` (required) and diffusers' ``strength``, ``padding_mask_crop``, …"""
        if image is None or mask_image is None:
            raise ValueError(
                "`image` and `mask_image` must be given to an inpainting pipeline, got "
                f"image={type(image).__name__}, mask_image={type(mask_image).__name__}"
            )
        extras = kwargs.pop("extras", None) or CallExtras()
        extras = replace(extras, inpaint_image=image, inpaint_mask=mask_image)
        return super().__call__(*args, extras=extras, **kwargs)

    def _chunk_call_kwargs(
        self, ctx: GenerationContext, per_image: dict[str, Any], sl: slice
    ) -> dict[str, Any]:
        out = super()._chunk_call_kwargs(ctx, per_image, sl)
        total = int(per_image["prompt_embeds"].shape[0])
        out["inpaint_image"] = _rows(ctx.extras.inpaint_image, total, "image")[sl]
        out["inpaint_mask"] = _rows(ctx.extras.inpaint_mask, total, "mask_image")[sl]
        return out


class IDTextToFaceInpaintPipeline(FaceIDInpaintMixin, StableDiffusionInpaintPipeline):
    """Identity + prompt inpainting: ``pipe(ids, prompt=…, image=crop, mask_image=mask)``.

    diffusers' ``StableDiffusionInpaintPipeline`` (9-channel inpainting UNet, e.g.
    ``stable-diffusion-v1-5/stable-diffusion-inpainting``; a 4-channel UNet gets diffusers'
    own latent blending) with IP-Adapter-FaceID: :meth:`load_faceid` or the
    ``ip-adapter-faceid-inpaint-sd15`` preset.
    """


class IDTextToFaceControlNetInpaintPipeline(
    FaceIDInpaintMixin, StableDiffusionControlNetInpaintPipeline
):
    """As :class:`IDTextToFaceInpaintPipeline` plus a ControlNet: ``control_image=…`` (e.g. a
    :func:`facegen.control.render_landmarks68` map of the face in the crop). The ControlNet
    sees the 4 latent channels only, so any SD1.5 ControlNet fits."""


# ------------------------------------------------------------------------ the driver


@dataclass
class MaskedGenerationOutput:
    """Result of :func:`masked_generate` for ``B`` crops of size ``S``.

    ``images``: uint8 ``(B, S, S, 3)``, the generation composited with the originals through
    the pixel masks (mask 0 = the original's bytes). ``raw``: uint8 ``(B, S, S, 3)``, the
    decoded generation before compositing. ``metadata``: one dict per crop (the pipeline's,
    plus ``strength``, ``method`` ``"repaint"`` or ``"inpaint"``). Latent blending also keeps
    ``image_latents`` / ``noise`` (float ``(B, C, S/f, S/f)``: 4 and 8 for SD1.5's VAE) and
    ``latent_mask`` (bool ``(B, 1, S/f, S/f)``); ``None`` for the inpainting UNet.
    """

    images: np.ndarray
    raw: np.ndarray
    metadata: list[dict[str, Any]] = field(default_factory=list)
    image_latents: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    latent_mask: torch.Tensor | None = None


def _check_crops(image: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    crops = np.array(image)  # a writable copy (aligned crops are read-only)
    if crops.ndim == 3:
        crops = crops[None]
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[3] != 3:
        raise ValueError(
            f"`image` must be RGB uint8 (S, S, 3) or (B, S, S, 3), got {crops.dtype} {crops.shape}"
        )
    b, s = crops.shape[0], crops.shape[1]
    if crops.shape[2] != s or s % 8 or s < 16:
        raise ValueError(f"`image` crops must be square with a side multiple of 8, got {s}")
    masks = np.asarray(mask, np.float32)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.shape != (b, s, s):
        raise ValueError(f"`mask` must have shape {(b, s, s)} (one per crop), got {masks.shape}")
    if not (np.all(np.isfinite(masks)) and masks.min() >= 0 and masks.max() <= 1):
        raise ValueError("`mask` must hold finite values in [0, 1]")
    return crops, masks


def _check_seeds(seeds: Sequence[int] | None, b: int) -> list[int]:
    if seeds is None:
        return [secrets.randbelow(MAX_SEED + 1) for _ in range(b)]
    seeds = list(seeds)
    if len(seeds) != b:
        raise ValueError(f"`seeds` must have one seed per crop ({b}), got {len(seeds)}")
    return [check_int(s, "seeds", minimum=0, maximum=MAX_SEED) for s in seeds]


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)


def _strength_timesteps(
    scheduler: SchedulerMixin, steps: int, strength: float, device: torch.device
) -> list[int]:
    """The tail of ``steps`` timesteps that a ``strength`` run denoises (diffusers' img2img rule)."""
    import inspect

    if "timesteps" not in inspect.signature(scheduler.set_timesteps).parameters:
        raise ValueError(
            f"`strength` < 1 needs a scheduler that takes custom timesteps (DPM-Solver, LCM, "
            f"Euler, …), got {type(scheduler).__name__}; use strength=1.0 or another scheduler"
        )
    scheduler.set_timesteps(steps, device=device)
    init = min(int(steps * strength), steps)
    if init < 1:
        raise ValueError(
            f"`strength` × `num_inference_steps` must leave at least one step, got "
            f"{strength} × {steps}"
        )
    start = (steps - init) * getattr(scheduler, "order", 1)
    return [int(t) for t in scheduler.timesteps[start:]]


def masked_generate(
    pipe: IDGenerationMixin,
    image: Any,
    mask: Any,
    identities: IdentityInput,
    *,
    seeds: Sequence[int] | None = None,
    strength: float = 1.0,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    control_image: Any = None,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    callback_on_step_end: StepCallback | None = None,
    callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    **kwargs: Any,
) -> MaskedGenerationOutput:
    """Regenerate the masked part of ``B`` aligned crops, one identity and seed per crop.

    ``image``: RGB uint8 ``(S, S, 3)`` or ``(B, S, S, 3)``, ``S`` a multiple of 8 (the
    pipeline's size for best results). ``mask``: float ``(S, S)`` / ``(B, S, S)`` in [0, 1],
    1 = regenerate. ``identities``: ``B`` identities for ``pipe`` (its encoder's embeddings).
    ``seeds``: one per crop (random when ``None``; recorded in the metadata). ``strength`` in
    (0, 1]: 1 regenerates the masked part from noise. ``control_image``: ControlNet pipelines
    (one map per crop or one for all). ``prompt``: text pipelines only. ``callback_on_step_end``
    runs after the blending. Other keyword arguments go to the pipeline. See the module doc.
    """
    # 1. check inputs
    if not isinstance(pipe, IDGenerationMixin):
        raise ValueError(
            f"`pipe` must be a facegen identity pipeline (IDToFacePipeline, "
            f"IDTextToFaceInpaintPipeline, …), got {type(pipe).__name__}"
        )
    crops, masks = _check_crops(image, mask)
    strength = check_number(strength, "strength", minimum=0, maximum=1, min_open=True)
    steps = pipe.default_steps if num_inference_steps is None else num_inference_steps
    steps = check_int(steps, "num_inference_steps", minimum=1)
    if "latents" in kwargs or "timesteps" in kwargs:
        raise ValueError("`latents`/`timesteps` are set by masked generation; do not pass them")
    call: dict[str, Any] = {
        "seeds": _check_seeds(seeds, crops.shape[0]),
        "num_inference_steps": steps,
        "guidance_scale": guidance_scale,
        "height": crops.shape[1],
        "width": crops.shape[1],
        "output_type": "np",
        **kwargs,
    }
    if control_image is not None:
        call["control_image"] = control_image
    if prompt is not None or negative_prompt is not None:
        call.update(prompt=prompt, negative_prompt=negative_prompt)
    # 2. generate: the inpainting UNet takes the crops and masks, a 4-channel one blends latents
    in_channels = pipe.unet.config.in_channels
    inputs = tuple(callback_on_step_end_tensor_inputs)
    if in_channels == 9:
        out = _inpaint(pipe, crops, masks, identities, strength, call, callback_on_step_end, inputs)
        method, extra = "inpaint", {}
    elif in_channels == _latent_channels(pipe):
        out, extra = _repaint(
            pipe, crops, masks, identities, strength, call, callback_on_step_end, inputs
        )
        method = "repaint"
    else:
        raise ValueError(
            f"`pipe.unet` must take the VAE's {_latent_channels(pipe)} latent channels (latent "
            f"blending) or 9 (inpainting) input channels, got {in_channels}"
        )
    # 3. composite with the originals through the pixel masks
    raw = _to_uint8(out.images)
    if raw.shape != crops.shape:
        raise ValueError(
            f"`identities` must give one image per crop ({len(crops)}), got {raw.shape[0]} images"
        )
    images = np.stack([blend(c, r, m) for c, r, m in zip(crops, raw, masks)])
    metadata = [{**md, "strength": strength, "method": method} for md in out.metadata]
    return MaskedGenerationOutput(images, raw, metadata, **extra)


def _latent_channels(pipe: IDGenerationMixin) -> int:
    """The width of the pipeline's latents: 4 for SD1.5's VAE, ``3·f²`` for a space-to-depth
    latent (facegen's scratch generators)."""
    return int(getattr(pipe.vae.config, "latent_channels", 4) or 4)


def _inpaint(
    pipe: IDGenerationMixin,
    crops: np.ndarray,
    masks: np.ndarray,
    identities: IdentityInput,
    strength: float,
    call: dict[str, Any],
    callback: StepCallback | None,
    tensor_inputs: tuple[str, ...],
) -> Any:
    """The inpainting UNet: the crops and their masks (``mask > 0``) go to diffusers."""
    from PIL import Image

    if not pipe.inpainting:
        raise ValueError(
            f"`pipe` has a 9-channel inpainting UNet but is a {type(pipe).__name__}; use "
            f"IDTextToFaceInpaintPipeline (or its ControlNet variant)"
        )
    return pipe(
        identities,
        image=[Image.fromarray(c) for c in crops],
        mask_image=[Image.fromarray(((m > 0) * 255).astype(np.uint8)) for m in masks],
        strength=strength,
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=tensor_inputs,
        **call,
    )


def _repaint(
    pipe: IDGenerationMixin,
    crops: np.ndarray,
    masks: np.ndarray,
    identities: IdentityInput,
    strength: float,
    call: dict[str, Any],
    callback: StepCallback | None,
    tensor_inputs: tuple[str, ...],
) -> tuple[Any, dict[str, Any]]:
    """Latent blending (see the module doc): encode the crops, start from the seeds' noise
    (or the originals noised to ``strength``), and keep the unmasked latents on the
    original's path after every step. Returns the pipeline output and the latents used."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    device, vae, b = pipe._execution_device, pipe.vae, len(crops)
    with torch.no_grad():
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        dist = vae.encode(x.to(device, vae.dtype)).latent_dist
        image_latents = (dist.mode() * vae.config.scaling_factor).to(pipe.unet.dtype)
    gen_device = "cpu" if device.type == "mps" else device
    gens = [torch.Generator(gen_device).manual_seed(sd) for sd in call["seeds"]]
    noise = randn_tensor(
        tuple(image_latents.shape), generator=gens, device=device, dtype=pipe.unet.dtype
    )
    sched, steps = pipe.scheduler, call["num_inference_steps"]
    if strength < 1:
        tail = _strength_timesteps(sched, steps, strength, device)
        sched.set_timesteps(timesteps=tail, device=device)
        start = sched.add_noise(image_latents, noise, torch.tensor(tail[:1] * b, device=device))
        call = {**call, "timesteps": tail}
    else:
        sched.set_timesteps(steps, device=device)
        start = noise * sched.init_noise_sigma
    # the pipeline multiplies given latents by init_noise_sigma
    call = {**call, "latents": start / sched.init_noise_sigma}
    lmask = latent_mask(masks, pipe.vae_scale_factor).to(device)
    blend_cb = RePaintBlend(image_latents, noise, lmask, then=callback)
    out = pipe(
        identities,
        callback_on_step_end=blend_cb,
        callback_on_step_end_tensor_inputs=(
            "latents",
            *(k for k in tensor_inputs if k != "latents"),
        ),
        **call,
    )
    return out, {"image_latents": image_latents, "noise": noise, "latent_mask": lmask}
