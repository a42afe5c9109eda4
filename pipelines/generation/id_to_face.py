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
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from diffusers import StableDiffusionControlNetPipeline, StableDiffusionPipeline
from diffusers.utils import BaseOutput

from facegen._version import __version__
from facegen.adapters.arc2face import Arc2FaceIDEncoder, Unconditional
from facegen.adapters.base import IdentityInput, IdentitySpec
from facegen.errors import FacegenError
from facegen.types import IdentityEmbedding
from facegen.validate import check_int, check_number

if TYPE_CHECKING:
    from facegen.analyzer import FaceAnalyzer
    from facegen.pipelines.generation.capabilities import PresetInfo

__all__ = [
    "CallExtras",
    "FaceGenerationOutput",
    "GenerationContext",
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


@dataclass(frozen=True)
class CallExtras:
    """Inputs a pipeline variant adds to one call, handed to the hooks inside the call's
    :class:`GenerationContext` (never kept on the pipeline, so calls cannot leak into each
    other).

    ``face_crops``: IP-Adapter-FaceID PlusV2, one 224 ArcFace-template crop (or a list of
    crops of that person) per identity. ``inpaint_image`` / ``inpaint_mask``: the inpainting
    pipelines' crops and masks, one for all images or one per image (identity-major).
    """

    face_crops: list[Any] | None = None
    inpaint_image: Any = None
    inpaint_mask: Any = None


@dataclass(frozen=True)
class GenerationContext:
    """One call as the conditioning and chunk hooks see it (passed to them explicitly).

    ``identities``: the call's identities (a list of :class:`IdentityEmbedding`, or raw
    float ``(N, D)`` vectors), ``num_images_per_identity`` images each.
    """

    identities: IdentityInput
    num_images_per_identity: int
    unconditional: Unconditional
    prompt: str | None
    negative_prompt: str | None
    guidance_scale: float
    extras: CallExtras = field(default_factory=CallExtras)

    @property
    def encoder_ids(self) -> list[str] | None:
        """The encoders of the identities (sorted), ``None`` for raw vectors."""
        ids = self.identities
        if isinstance(ids, IdentityEmbedding):
            return [ids.encoder_id]
        if isinstance(ids, list) and ids and isinstance(ids[0], IdentityEmbedding):
            return sorted({e.encoder_id for e in ids})
        return None


class IDGenerationMixin:
    """Identity handling shared by the Arc2Face pipelines (placed before the diffusers
    pipeline class in the bases, so ``super().__call__`` is diffusers' own loop).

    Variants extend it through hooks that get the call's :class:`GenerationContext`:
    :meth:`_call_identities`, :meth:`_encode_conditioning` and :meth:`_chunk_call_kwargs`.
    """

    #: Recorded in metadata; set by presets (with the preset's declared capabilities).
    preset_name: str | None = None
    preset_info: PresetInfo | None = None
    #: What the pipeline class can do (presets declare the same in their PresetInfo).
    takes_prompt: ClassVar[bool] = False
    inpainting: ClassVar[bool] = False
    model_ids: dict[str, str] = {}  # noqa: RUF012 - replaced per instance by presets
    #: A FaceAnalyzer whose encoder produces the vectors this pipeline expects.
    identity_analyzer: FaceAnalyzer | None = None
    id_encoder_ids: tuple[str, ...] = ("arcface-onnx/arc2face",)
    #: Used when a call does not give them (the authors' values; LCM presets change them).
    default_steps: int = 25
    default_guidance: float = 3.0
    #: The negative embeddings used when a call gives no ``unconditional`` (the authors' empty
    #: prompt; a generator trained with a dropped identity says ``"zero-identity"``).
    default_unconditional: Unconditional = "empty-prompt"
    #: More keywords of :class:`Arc2FaceIDEncoder` (``prompt``, ``id_token``,
    #: ``identity_dim``, ``normalized``), set by generator folders.
    id_encoder_options: dict[str, Any] = {}  # noqa: RUF012 - replaced per instance

    @property
    def needs_face_crops(self) -> bool:
        """Whether every call needs a face crop per identity (``face_crops``, or photos)."""
        return False

    @property
    def identity_spec(self) -> IdentitySpec:
        """The identity vectors this pipeline accepts (encoder ids, dimension, normalisation)."""
        return self.id_encoder.identity

    @property
    def id_encoder(self) -> Arc2FaceIDEncoder:
        enc = getattr(self, "_id_encoder", None)
        if enc is None or enc.text_encoder is not self.text_encoder:
            enc = Arc2FaceIDEncoder(
                self.text_encoder,
                self.tokenizer,
                encoder_ids=self.id_encoder_ids,
                **self.id_encoder_options,
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
        pairs: list[tuple[FaceAnalyzer, list[IdentityEmbedding]]] = []
        if targets is not None and self.identity_analyzer is not None:
            pairs.append((self.identity_analyzer, list(targets)))
        if references is not None:
            ind = self.independent_analyzer
            ref_embs: dict[int, IdentityEmbedding] = {}
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
    def independent_analyzer(self) -> FaceAnalyzer:
        """An identity analyzer independent of the conditioning one (dlib, offline)."""
        ana = getattr(self, "_independent_analyzer", None)
        if ana is None:
            from facegen.analyzer import FaceAnalyzer

            ana = FaceAnalyzer.from_names("dlib", None, "dlib")
            self._independent_analyzer = ana
        return ana

    # -- hooks (overridden by the ID + text and inpainting pipelines) -------------------------
    def _check_prompt(self, prompt: str | None, negative_prompt: str | None) -> None:
        if prompt is not None or negative_prompt is not None:
            raise ValueError("Arc2Face is identity-only: `prompt`/`negative_prompt` are not taken")

    def _call_identities(
        self, id_embeds: IdentityInput | None, images: Sequence[Any] | None, extras: CallExtras
    ) -> tuple[IdentityInput, CallExtras]:
        """The call's identities (photos analysed, a tuple or one embedding made a list) and
        its extras (the FaceID pipeline adds the photos' face crops for PlusV2)."""
        identities = self.identities_from_images(images) if images is not None else id_embeds
        if isinstance(identities, IdentityEmbedding):
            identities = [identities]
        elif isinstance(identities, tuple):
            identities = list(identities)
        return identities, extras

    def _encode_conditioning(self, ctx: GenerationContext) -> dict[str, Any]:
        """Per-image tensors (batch = identities × m, identity-major) for the denoising calls."""
        m = check_int(ctx.num_images_per_identity, "num_images_per_identity", minimum=1)
        cond = self.id_encoder.encode(ctx.identities).repeat_interleave(m, dim=0)
        uncond = self.id_encoder.encode_unconditional(int(cond.shape[0]), ctx.unconditional)
        return {"prompt_embeds": cond, "negative_prompt_embeds": uncond}

    def _chunk_call_kwargs(
        self, ctx: GenerationContext, per_image: dict[str, Any], sl: slice
    ) -> dict[str, Any]:
        """The diffusers call arguments of the images ``sl`` (one chunk of the batch)."""
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
        """The counts and settings of a call (``seeds``: one per image, in [0, 2³¹-1])."""
        total = n_identities * num_images_per_identity
        check_int(num_images_per_identity, "num_images_per_identity", minimum=1)
        check_int(num_inference_steps, "num_inference_steps", minimum=1)
        check_number(guidance_scale, "guidance_scale", minimum=0)
        for name, v in (("height", height), ("width", width)):
            if check_int(v, name) < 8 or v % 8:
                raise ValueError(f"`{name}` must be a positive multiple of 8, got {v}")
        if batch_size is not None:
            check_int(batch_size, "batch_size", minimum=1)
        if seeds is not None:
            if generator is not None:
                raise ValueError("pass either `seeds` or `generator`, not both")
            if len(seeds) != total:
                raise ValueError(
                    f"`seeds` must have one seed per image ({n_identities} identities × "
                    f"{num_images_per_identity} images = {total}), got {len(seeds)}"
                )
            for s in seeds:
                check_int(s, "seeds", minimum=0, maximum=MAX_SEED)
        if isinstance(generator, list) and len(generator) != total:
            raise ValueError(f"`generator` list must have {total} generators, got {len(generator)}")

    def _check_call(
        self,
        id_embeds: IdentityInput | None,
        images: Sequence[Any] | None,
        prompt: str | None,
        negative_prompt: str | None,
        control_image: Any,
        measure_identity: bool,
        kwargs: dict[str, Any],
    ) -> None:
        """Step 1 of a call: which inputs may be combined."""
        if (id_embeds is None) == (images is None):
            raise ValueError("pass exactly one of `id_embeds` or `images`")
        if "prompt_embeds" in kwargs or "ip_adapter_image_embeds" in kwargs:
            raise ValueError(
                "`prompt_embeds`/`ip_adapter_image_embeds` are made from the identities here; "
                "use a plain diffusers pipeline to pass them yourself"
            )
        self._check_prompt(prompt, negative_prompt)
        if self._has_controlnet and control_image is None:
            raise ValueError("`control_image` is required by the ControlNet pipeline")
        if not self._has_controlnet and control_image is not None:
            raise ValueError(
                "`control_image` needs the ControlNet pipeline (IDToFaceControlNetPipeline)"
            )
        if measure_identity and images is None and not _has_embeddings(id_embeds):
            raise ValueError(
                "`measure_identity` needs IdentityEmbedding targets or the identity photos (`images`)"
            )

    @property
    def _has_controlnet(self) -> bool:
        return getattr(self, "controlnet", None) is not None

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
        unconditional: Unconditional | None = None,
        measure_identity: bool = False,
        batch_size: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        control_image: Any = None,
        prompt: str | None = None,
        negative_prompt: str | None = None,
        extras: CallExtras | None = None,
        **kwargs: Any,
    ) -> FaceGenerationOutput | tuple[Any, list[dict[str, Any]]]:
        """Generate ``num_images_per_identity`` images for each identity.

        Steps: 1 check inputs → 2 encode identities → 3 per-image inputs (control maps,
        latents, one generator per image) → 4 denoise and decode (diffusers' loop, in chunks
        of ``batch_size`` images) → 5 output + metadata.
        Other keyword arguments go to the diffusers pipeline's ``__call__`` (``eta``,
        ``guidance_rescale``, ``latents``, ``timesteps``, ``controlnet_conditioning_scale``, …).
        ``control_image`` (ControlNet variant only): one conditioning image for all images, one
        per identity, or one per image (identity-major). ``measure_identity`` adds to each
        image's metadata the cosine similarity of its face to the target identity, see
        :meth:`measure_identity_similarity`. ``extras``: what a pipeline variant adds to the
        call (its own ``__call__`` fills it from its keyword arguments).
        """
        # 1. check inputs (steps/guidance default to the preset's, e.g. 4 and 1.0 with LCM)
        steps = self.default_steps if num_inference_steps is None else num_inference_steps
        guidance = self.default_guidance if guidance_scale is None else guidance_scale
        if unconditional is None:
            unconditional = self.default_unconditional
        self._check_call(
            id_embeds, images, prompt, negative_prompt, control_image, measure_identity, kwargs
        )
        side = self.unet.config.sample_size * self.vae_scale_factor
        height, width = height or side, width or side
        # 2. encode identities (validates encoder, shape, NaN/zero) → per-image conditioning
        identities, extra = self._call_identities(id_embeds, images, extras or CallExtras())
        ctx = GenerationContext(
            identities, num_images_per_identity, unconditional, prompt, negative_prompt, guidance,
            extra,
        )  # fmt: skip
        per_image = self._encode_conditioning(ctx)
        total = next(iter(per_image.values())).shape[0]
        n = total // num_images_per_identity
        self.check_face_inputs(
            n, num_images_per_identity, seeds, generator, steps, guidance, height, width,
            batch_size,
        )  # fmt: skip
        # 3. per-image inputs: control maps, given latents, one generator per image
        chunk_inputs = {
            "image": _per_image(control_image, n, num_images_per_identity)
            if self._has_controlnet
            else None,
            "latents": _check_latents(kwargs.pop("latents", None), total),
        }
        generators, seeds = _generators(seeds, generator, total, self.device)
        # 4. denoise + decode (diffusers' own loop), in chunks of `batch_size` images
        settings = {
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "height": height,
            "width": width,
            "output_type": output_type,
            "return_dict": True,
            "callback_on_step_end": callback_on_step_end,
            "callback_on_step_end_tensor_inputs": list(callback_on_step_end_tensor_inputs),
            **kwargs,
        }
        images_out = self._denoise(
            ctx, per_image, batch_size or total, generators, chunk_inputs, settings
        )
        # 5. output: per-image metadata (and identity similarity)
        metadata = self._metadata(ctx, seeds, total, steps, height, width)
        if measure_identity:
            self._add_identity_similarity(images_out, metadata, ctx, images, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images_out, metadata
        return FaceGenerationOutput(images=images_out, metadata=metadata)

    def _denoise(
        self,
        ctx: GenerationContext,
        per_image: dict[str, Any],
        step: int,
        generators: Any,
        chunk_inputs: dict[str, Any],
        settings: dict[str, Any],
    ) -> Any:
        """Step 4: diffusers' loop over chunks of ``step`` images; the outputs concatenated
        (a list of PIL images, or one array / tensor, as ``output_type`` asks)."""
        import torch

        total = next(iter(per_image.values())).shape[0]
        chunks = []
        for start in range(0, total, step):
            sl = slice(start, start + step)
            per_chunk = {k: v[sl] for k, v in chunk_inputs.items() if v is not None}
            out = super().__call__(  # type: ignore[misc]
                **self._chunk_call_kwargs(ctx, per_image, sl),
                **per_chunk,
                generator=generators[sl] if isinstance(generators, list) else generators,
                **settings,
            )
            chunks.append(out.images)
        if settings["output_type"] == "pil":
            return [im for c in chunks for im in c]
        if settings["output_type"] == "latent" or not isinstance(chunks[0], np.ndarray):
            return torch.cat(chunks)
        return np.concatenate(chunks)

    def _metadata(
        self,
        ctx: GenerationContext,
        seeds: Sequence[int] | None,
        total: int,
        steps: int,
        height: int,
        width: int,
    ) -> list[dict[str, Any]]:
        """Step 5: one record per image (identity-major)."""
        base = {
            "pipeline": type(self).__name__,
            "preset": self.preset_name,
            "models": dict(self.model_ids),
            "scheduler": type(self.scheduler).__name__,
            "steps": steps,
            "guidance_scale": ctx.guidance_scale,
            "height": height,
            "width": width,
            "unconditional": ctx.unconditional,
            "prompt": ctx.prompt,
            "negative_prompt": ctx.negative_prompt,
            "identity_encoder": ctx.encoder_ids,
            "dtype": str(self.unet.dtype).replace("torch.", ""),
            "facegen_version": __version__,
        }
        m = ctx.num_images_per_identity
        return [
            {
                **base,
                "identity_index": i // m,
                "image_index": i % m,
                "seed": int(seeds[i]) if seeds is not None else None,
            }
            for i in range(total)
        ]

    def _add_identity_similarity(
        self,
        images_out: Any,
        metadata: list[dict[str, Any]],
        ctx: GenerationContext,
        photos: Sequence[Any] | None,
        output_type: str,
    ) -> None:
        """``measure_identity``: each image's similarity to its identity, into its record."""
        if output_type not in ("pil", "np"):
            raise ValueError("`measure_identity` needs output_type 'pil' or 'np'")
        m = ctx.num_images_per_identity
        total = len(metadata)
        targets = (
            [ctx.identities[i // m] for i in range(total)]
            if ctx.encoder_ids is not None and isinstance(ctx.identities, list)
            else None
        )
        refs = [photos[i // m] for i in range(total)] if photos is not None else None
        sims = self.measure_identity_similarity(images_out, targets, refs)
        for md, sim in zip(metadata, sims):
            md["identity_similarity"] = sim


def _check_latents(latents: Any, total: int) -> Any:
    """Given ``latents``: a tensor with one row per image, or ``None``."""
    import torch

    if latents is not None and (not torch.is_tensor(latents) or latents.shape[0] != total):
        raise ValueError(
            f"`latents` must be a tensor with one row per image ({total}), got "
            f"{getattr(latents, 'shape', type(latents).__name__)}"
        )
    return latents


def _generators(
    seeds: Sequence[int] | None, generator: Any, total: int, device: Any
) -> tuple[Any, Sequence[int] | None]:
    """One ``torch.Generator`` per image (seeded with its seed, random seeds when none are
    given), or the caller's generator(s); and the seeds to record (``None`` for one shared
    generator: its images depend on their batch)."""
    import torch

    if generator is None:
        if seeds is None:
            seeds = [secrets.randbelow(MAX_SEED + 1) for _ in range(total)]
        gen_device = "cpu" if device.type == "mps" else device
        generator = [torch.Generator(gen_device).manual_seed(int(s)) for s in seeds]
    if not isinstance(generator, list):
        seeds = None
    return generator, seeds


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
