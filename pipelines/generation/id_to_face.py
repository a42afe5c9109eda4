"""``IDToFacePipeline``: identity → face images with Arc2Face (identity only, no text).

It is diffusers' ``StableDiffusionPipeline`` (same registered modules, same denoising loop)
driven through its public ``prompt_embeds`` hook: facegen adds the identity encoding, the
N identities × M images batching with one seed per image, input checks and per-image
metadata. The authors' defaults: DPM-Solver++ multistep, 25 steps, guidance 3.0, 512×512.

Reproducibility: every image has its own ``torch.Generator`` seeded with its seed, so an
image depends only on (identity, seed, settings) — not on which batch it was generated in.
Batched and one-by-one runs agree to float32 round-off of batched matrix products (the
tests see ≤ 2e-3 on [0, 1] pixels with the tiny model; on a GPU, batch-size-dependent kernels
can differ slightly more).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from diffusers import StableDiffusionControlNetPipeline, StableDiffusionPipeline
from diffusers.utils import BaseOutput

from facegen._version import __version__
from facegen.adapters.arc2face import Arc2FaceIDEncoder, Unconditional
from facegen.adapters.base import IdentityInput, IdentitySpec
from facegen.errors import FacegenError
from facegen.types import IdentityEmbedding

__all__ = [
    "FaceGenerationOutput",
    "IDGenerationMixin",
    "IDToFaceControlNetPipeline",
    "IDToFacePipeline",
]

logger = logging.getLogger(__name__)

MAX_SEED = 2**31 - 1


@dataclass
class FaceGenerationOutput(BaseOutput):
    """``images``: PIL images, or an ``(N·M, H, W, 3)`` float array in [0, 1] for
    ``output_type="np"``, identity-major (identity 0's M images first). ``metadata``: one
    dict per image (identity index, seed, preset, models, steps, guidance, size, …)."""

    images: Any
    metadata: list[dict[str, Any]] = field(default_factory=list)


class IDGenerationMixin:
    """Identity handling shared by the Arc2Face pipelines (placed before the diffusers
    pipeline class in the bases, so ``super().__call__`` is diffusers' own loop)."""

    #: Recorded in metadata; set by presets (with the preset's declared capabilities).
    preset_name: str | None = None
    preset_info: Any = None
    #: What the pipeline class can do (presets declare the same in their PresetInfo).
    takes_prompt: ClassVar[bool] = False
    inpainting: ClassVar[bool] = False
    model_ids: dict[str, str] = {}  # noqa: RUF012 - replaced per instance by presets
    #: A FaceAnalyzer whose encoder produces the vectors this pipeline expects.
    identity_analyzer: Any = None
    id_encoder_ids: tuple[str, ...] = ("arcface-onnx/arc2face",)
    #: Used when a call does not give them (the authors' values; LCM presets change them).
    default_steps: int = 25
    default_guidance: float = 3.0

    @property
    def identity_spec(self) -> IdentitySpec:
        """The identity vectors this pipeline accepts (encoder ids, dimension, normalisation)."""
        return self.id_encoder.identity

    @property
    def id_encoder(self) -> Arc2FaceIDEncoder:
        enc = getattr(self, "_id_encoder", None)
        if enc is None or enc.text_encoder is not self.text_encoder:
            enc = Arc2FaceIDEncoder(
                self.text_encoder, self.tokenizer, encoder_ids=self.id_encoder_ids
            )
            self._id_encoder = enc
        return enc

    # -- identities from photos ---------------------------------------------------------------
    def identities_from_images(
        self, images: Sequence[Any], *, select: str | int = "largest", require_single: bool = True
    ) -> list[IdentityEmbedding]:
        """One identity per photo, analysed with :attr:`identity_analyzer`.

        ``require_single`` (default) refuses photos with several faces unless ``select`` is
        an index; a photo without a face raises :class:`NoFaceDetectedError`.
        """
        if self.identity_analyzer is None:
            raise FacegenError(
                "this pipeline has no identity analyzer; pass `id_embeds`, or build it with "
                "a preset that sets one (the Arc2Face ArcFace encoder needs the antelopev2 "
                "detector and arcface.onnx: `facegen models download antelopev2 arc2face-arcface`)"
            )
        single = require_single and not isinstance(select, int)
        out = []
        for i, img in enumerate(images):
            faces = self.identity_analyzer.analyze(
                img, select=select, require_single=single, source=f"identity image {i}"
            )
            out.append(faces[0].embedding)
        return out

    def measure_identity_similarity(
        self,
        generated: Sequence[Any],
        targets: Sequence[IdentityEmbedding] | None,
        references: Sequence[Any] | None,
    ) -> list[dict[str, float | None]]:
        """Per generated image: ``{encoder_id: cosine similarity}`` of its largest face.

        With the conditioning encoder (:attr:`identity_analyzer`) against ``targets`` and with an
        independent encoder (:attr:`independent_analyzer`, dlib by default) against the
        reference photos, when given. ``None`` where no face was found.
        """
        from facegen.errors import NoFaceDetectedError

        if targets is None and references is None:
            raise ValueError(
                "`measure_identity` needs IdentityEmbedding targets or reference photos"
            )
        pairs: list[tuple[Any, list[Any]]] = []
        if targets is not None and self.identity_analyzer is not None:
            pairs.append((self.identity_analyzer, list(targets)))
        if references is not None:
            ind = self.independent_analyzer
            ref_embs: dict[int, Any] = {}
            for r in references:
                if id(r) not in ref_embs:
                    ref_embs[id(r)] = ind.embed(r)
            pairs.append((ind, [ref_embs[id(r)] for r in references]))
        if not pairs:
            raise FacegenError("`measure_identity` needs an identity analyzer or reference photos")
        out: list[dict[str, float | None]] = [{} for _ in generated]
        for analyzer, refs in pairs:
            enc_id = analyzer.encoder.encoder_id
            for k, (img, ref) in enumerate(zip(generated, refs)):
                arr = np.asarray(img)
                if arr.dtype != np.uint8:
                    arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
                try:
                    emb = analyzer.embed(arr, select="largest")
                except NoFaceDetectedError:
                    out[k][enc_id] = None
                    continue
                out[k][enc_id] = round(float(emb.similarity(ref)), 6)
        return out

    @property
    def independent_analyzer(self) -> Any:
        """An identity analyzer independent of the conditioning one (dlib, offline)."""
        ana = getattr(self, "_independent_analyzer", None)
        if ana is None:
            from facegen.analyzer import FaceAnalyzer

            ana = FaceAnalyzer.from_names("dlib", None, "dlib")
            self._independent_analyzer = ana
        return ana

    # -- conditioning (overridden by the ID + text pipeline) -----------------------------------
    def _check_prompt(self, prompt: str | None, negative_prompt: str | None) -> None:
        if prompt is not None or negative_prompt is not None:
            raise ValueError("Arc2Face is identity-only: `prompt`/`negative_prompt` are not taken")

    def _encode_conditioning(
        self,
        identities: IdentityInput,
        m: int,
        unconditional: Unconditional,
        prompt: str | None,
        negative_prompt: str | None,
    ) -> dict[str, Any]:
        """Per-image tensors (batch = identities × m, identity-major) for the denoising calls."""
        if m < 1:
            raise ValueError(f"`num_images_per_identity` must be >= 1, got {m}")
        cond = self.id_encoder.encode(identities).repeat_interleave(m, dim=0)
        uncond = self.id_encoder.encode_unconditional(int(cond.shape[0]), unconditional)
        return {"prompt_embeds": cond, "negative_prompt_embeds": uncond}

    def _chunk_call_kwargs(
        self, per_image: dict[str, Any], sl: slice, guidance_scale: float
    ) -> dict[str, Any]:
        dtype = self.unet.dtype
        return {k: v[sl].to(self.device, dtype) for k, v in per_image.items()}

    # -- checks -------------------------------------------------------------------------------
    def check_face_inputs(
        self,
        n_identities: int,
        num_images_per_identity: int,
        seeds: Sequence[int] | None,
        generator: Any,
        num_inference_steps: int,
        guidance_scale: float,
        height: int,
        width: int,
        batch_size: int | None,
    ) -> None:
        total = n_identities * num_images_per_identity
        if num_images_per_identity < 1:
            raise ValueError(
                f"`num_images_per_identity` must be >= 1, got {num_images_per_identity}"
            )
        if num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be >= 1, got {num_inference_steps}")
        if not np.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be a finite number >= 0, got {guidance_scale}")
        for name, v in (("height", height), ("width", width)):
            if v < 8 or v % 8:
                raise ValueError(f"`{name}` must be a positive multiple of 8, got {v}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}")
        if seeds is not None:
            if generator is not None:
                raise ValueError("pass either `seeds` or `generator`, not both")
            if len(seeds) != total:
                raise ValueError(
                    f"`seeds` must have one seed per image ({n_identities} identities × "
                    f"{num_images_per_identity} images = {total}), got {len(seeds)}"
                )
            bad = [
                s for s in seeds if not isinstance(s, (int, np.integer)) or not 0 <= s <= MAX_SEED
            ]
            if bad:
                raise ValueError(f"`seeds` must be integers in [0, {MAX_SEED}], got {bad[:3]}")
        if isinstance(generator, list) and len(generator) != total:
            raise ValueError(f"`generator` list must have {total} generators, got {len(generator)}")

    # -- call ---------------------------------------------------------------------------------
    def __call__(  # type: ignore[override]
        self,
        id_embeds: IdentityInput | None = None,
        *,
        images: Sequence[Any] | None = None,
        num_images_per_identity: int = 1,
        seeds: Sequence[int] | None = None,
        generator: Any = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        unconditional: Unconditional = "empty-prompt",
        measure_identity: bool = False,
        batch_size: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        control_image: Any = None,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        **kwargs: Any,
    ) -> FaceGenerationOutput | tuple[Any, list[dict[str, Any]]]:
        """Generate ``num_images_per_identity`` images for each identity.

        Steps: 1 check inputs → 2 encode identities → 3 per-image generators → 4 denoise and
        decode (diffusers' loop, in chunks of ``batch_size`` images) → 5 output + metadata.
        Other keyword arguments go to the diffusers pipeline's ``__call__`` (``eta``,
        ``guidance_rescale``, ``latents``, ``timesteps``, ``controlnet_conditioning_scale``, …).
        ``control_image`` (ControlNet variant only): one conditioning image for all images, one
        per identity, or one per image (identity-major). ``measure_identity`` adds to each
        image's metadata the cosine similarity of its face to the target identity, see
        :meth:`measure_identity_similarity`.
        """
        import torch

        # 1. check inputs (steps/guidance default to the preset's, e.g. 4 and 1.0 with LCM)
        if num_inference_steps is None:
            num_inference_steps = self.default_steps
        guidance_scale = self.default_guidance if guidance_scale is None else guidance_scale
        if (id_embeds is None) == (images is None):
            raise ValueError("pass exactly one of `id_embeds` or `images`")
        if "prompt_embeds" in kwargs or "ip_adapter_image_embeds" in kwargs:
            raise ValueError(
                "`prompt_embeds`/`ip_adapter_image_embeds` are made from the identities here; "
                "use a plain diffusers pipeline to pass them yourself"
            )
        self._check_prompt(prompt, negative_prompt)
        has_controlnet = getattr(self, "controlnet", None) is not None
        if has_controlnet and control_image is None:
            raise ValueError("`control_image` is required by the ControlNet pipeline")
        if not has_controlnet and control_image is not None:
            raise ValueError(
                "`control_image` needs the ControlNet pipeline (IDToFaceControlNetPipeline)"
            )
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        if measure_identity and images is None and not _has_embeddings(id_embeds):
            raise ValueError(
                "`measure_identity` needs IdentityEmbedding targets or the identity photos (`images`)"
            )
        identities = self.identities_from_images(images) if images is not None else id_embeds
        if isinstance(identities, IdentityEmbedding):
            identities = [identities]
        elif isinstance(identities, tuple):
            identities = list(identities)
        # 2. encode identities (validates encoder, shape, NaN/zero) → per-image conditioning
        per_image = self._encode_conditioning(
            identities, num_images_per_identity, unconditional, prompt, negative_prompt
        )
        total = next(iter(per_image.values())).shape[0]
        n = total // num_images_per_identity
        self.check_face_inputs(
            n,
            num_images_per_identity,
            seeds,
            generator,
            num_inference_steps,
            guidance_scale,
            height,
            width,
            batch_size,
        )
        controls = _per_image(control_image, n, num_images_per_identity) if has_controlnet else None
        latents = kwargs.pop("latents", None)
        if latents is not None and (not torch.is_tensor(latents) or latents.shape[0] != total):
            raise ValueError(
                f"`latents` must be a tensor with one row per image ({total}), got "
                f"{getattr(latents, 'shape', type(latents).__name__)}"
            )
        # 3. one generator per image
        if generator is None:
            if seeds is None:
                seeds = [secrets.randbelow(MAX_SEED + 1) for _ in range(total)]
            gen_device = "cpu" if self.device.type == "mps" else self.device
            generator = [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds]
        gens = generator if isinstance(generator, list) else [generator] * total
        if not isinstance(generator, list):
            seeds = None  # a shared generator: images depend on their batch
        # 4. denoise + decode, chunked
        step = batch_size or total
        chunks = []
        for start in range(0, total, step):
            sl = slice(start, start + step)
            if controls is not None:
                kwargs["image"] = controls[sl]
            if latents is not None:
                kwargs["latents"] = latents[sl]
            out = super().__call__(  # type: ignore[misc]
                **self._chunk_call_kwargs(per_image, sl, guidance_scale),
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                height=height,
                width=width,
                generator=gens[sl] if isinstance(generator, list) else generator,
                output_type=output_type,
                return_dict=True,
                callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=list(callback_on_step_end_tensor_inputs),
                **kwargs,
            )
            chunks.append(out.images)
        images_out: Any
        if output_type == "pil":
            images_out = [im for c in chunks for im in c]
        elif output_type == "latent":
            images_out = torch.cat(chunks)
        else:
            images_out = (
                np.concatenate(chunks) if isinstance(chunks[0], np.ndarray) else torch.cat(chunks)
            )
        # 5. metadata
        enc_ids = (
            sorted({e.encoder_id for e in identities})
            if isinstance(identities, list)
            and identities
            and isinstance(identities[0], IdentityEmbedding)
            else ([identities.encoder_id] if isinstance(identities, IdentityEmbedding) else None)
        )
        base = {
            "pipeline": type(self).__name__,
            "preset": self.preset_name,
            "models": dict(self.model_ids),
            "scheduler": type(self.scheduler).__name__,
            "steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "height": height,
            "width": width,
            "unconditional": unconditional,
            "prompt": prompt,
            "negative_prompt": negative_prompt,
            "identity_encoder": enc_ids,
            "dtype": str(self.unet.dtype).replace("torch.", ""),
            "facegen_version": __version__,
        }
        metadata = [
            {
                **base,
                "identity_index": i // num_images_per_identity,
                "image_index": i % num_images_per_identity,
                "seed": int(seeds[i]) if seeds is not None else None,
            }
            for i in range(total)
        ]
        if measure_identity:
            if output_type not in ("pil", "np"):
                raise ValueError("`measure_identity` needs output_type 'pil' or 'np'")
            targets = (
                [identities[i // num_images_per_identity] for i in range(total)]
                if (enc_ids is not None and isinstance(identities, list))
                else None
            )
            refs = (
                [images[i // num_images_per_identity] for i in range(total)]
                if images is not None
                else None
            )
            sims = self.measure_identity_similarity(images_out, targets, refs)
            for md, sim in zip(metadata, sims):
                md["identity_similarity"] = sim
        self.maybe_free_model_hooks()
        if not return_dict:
            return images_out, metadata
        return FaceGenerationOutput(images=images_out, metadata=metadata)


def _per_image(control_image: Any, n: int, m: int) -> list[Any]:
    """One control image per generated image (identity-major)."""
    if not isinstance(control_image, (list, tuple)):
        return [control_image] * (n * m)
    if len(control_image) == n * m:
        return list(control_image)
    if len(control_image) == n:
        return [c for c in control_image for _ in range(m)]
    if len(control_image) == 1:
        return list(control_image) * (n * m)
    raise ValueError(
        f"`control_image` must be one image, one per identity ({n}) or one per image "
        f"({n * m}), got {len(control_image)}"
    )


class IDToFacePipeline(IDGenerationMixin, StableDiffusionPipeline):
    """Arc2Face: ``pipe(id_embeds, num_images_per_identity=4, seeds=[...])``.

    Build it with :func:`facegen.pipelines.generation.presets.from_preset` (``"arc2face"``, ``"tiny"``)
    or from components like any ``StableDiffusionPipeline`` (``safety_checker=None``).
    ``id_embeds`` are Arc2Face ArcFace vectors (``arcface-onnx/arc2face``) or raw ``(N, 512)``
    vectors; a photo goes through :attr:`identity_analyzer` (see :meth:`identities_from_images`).
    """


class IDToFaceControlNetPipeline(IDGenerationMixin, StableDiffusionControlNetPipeline):
    """Arc2Face with a ControlNet (landmarks / pose): ``pipe(id_embeds, control_image=…)``.

    Control images come from :mod:`facegen.control` (e.g. ``render_landmarks68`` of a
    reference face moved into the output frame with ``transfer_landmarks``), as PIL images.
    """


def _has_embeddings(id_embeds: Any) -> bool:
    if isinstance(id_embeds, IdentityEmbedding):
        return True
    return (
        isinstance(id_embeds, (list, tuple))
        and bool(id_embeds)
        and all(isinstance(e, IdentityEmbedding) for e in id_embeds)
    )
