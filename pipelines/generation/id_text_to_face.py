"""``IDTextToFacePipeline``: identity + text prompt with IP-Adapter-FaceID (SD1.5).

diffusers' ``StableDiffusionPipeline`` with the FaceID adapter loaded through its own
``load_ip_adapter`` (see :mod:`facegen.adapters.ip_adapter_faceid`); facegen passes each image
its own identity through ``ip_adapter_image_embeds`` (one row per image, the zero vector as
the negative), so N identities × M images run in one batch with one seed per image.

Identity vectors are buffalo_l ``w600k_r50`` L2-normalised embeddings
(``arcface-onnx/buffalo_l``); others are refused. The IP-Adapter-FaceID authors' demo uses
30 steps, guidance 7.5 and DDIM — the defaults here. The default negative prompt is the one
the official ``IPAdapterFaceID.generate()`` uses when given none,
``"monochrome, lowres, bad anatomy, worst quality, low quality"`` (the model card's examples
pass their own, with ``", blurry"`` appended).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from diffusers import StableDiffusionControlNetPipeline, StableDiffusionPipeline

from facegen.adapters.base import IdentityInput, IdentitySpec
from facegen.errors import FacegenError
from facegen.pipelines.generation.id_to_face import (
    CallExtras,
    GenerationContext,
    IDGenerationMixin,
)
from facegen.types import AlignedFace, IdentityEmbedding
from facegen.validate import check_int

if TYPE_CHECKING:
    from facegen.adapters.ip_adapter_faceid import IPAdapterFaceID

__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "FaceIDTextMixin",
    "IDTextToFaceControlNetPipeline",
    "IDTextToFacePipeline",
]

#: The official ``IPAdapterFaceID.generate()`` default (tencent-ailab/IP-Adapter).
DEFAULT_NEGATIVE_PROMPT = "monochrome, lowres, bad anatomy, worst quality, low quality"


class FaceIDTextMixin(IDGenerationMixin):
    """IP-Adapter-FaceID conditioning (identity + prompt) for a diffusers SD pipeline class."""

    id_encoder_ids = ("arcface-onnx/buffalo_l",)
    takes_prompt = True
    default_steps = 30
    default_guidance = 7.5
    #: The IPAdapterFaceID that turns identities into ``ip_adapter_image_embeds``.
    faceid: IPAdapterFaceID | None = None
    #: PlusV2 only: weight of the face-structure (CLIP) branch, the published ``s_scale``.
    shortcut_scale: float = 1.0

    def __call__(  # type: ignore[override]
        self, *args: Any, face_crops: Sequence[Any] | None = None, **kwargs: Any
    ) -> Any:
        """See :class:`IDGenerationMixin`. PlusV2 also needs a face crop per identity:
        ``face_crops`` (one crop, or a list of crops of that person, per identity: 224×224
        ArcFace-template crops, :func:`facegen.align.align_face` ``size=224``), made
        automatically when the identities come from photos (``images=``)."""
        extras = kwargs.pop("extras", None) or CallExtras()
        if face_crops is not None:
            extras = replace(extras, face_crops=list(face_crops))
        return super().__call__(*args, extras=extras, **kwargs)

    @property
    def needs_face_crops(self) -> bool:
        """PlusV2 (its face-structure branch) needs a face crop per identity."""
        return self.faceid is not None and self.faceid.variant == "plusv2"

    def identities_from_images(
        self, images: Sequence[Any], *, select: str | int = "largest", require_single: bool = True
    ) -> list[IdentityEmbedding]:
        """As :meth:`IDGenerationMixin.identities_from_images` (PlusV2 calls also take each
        photo's aligned 224 face crop for the structure branch, see :meth:`_call_identities`)."""
        return self._faces_from_images(images, select, require_single)[0]

    def _faces_from_images(
        self, images: Sequence[Any], select: str | int, require_single: bool
    ) -> tuple[list[IdentityEmbedding], list[AlignedFace] | None]:
        """Each photo's identity and, for PlusV2, its aligned 224 face crop."""
        if not self.needs_face_crops or self.identity_analyzer is None:
            embs = super().identities_from_images(
                images, select=select, require_single=require_single
            )
            return embs, None
        from facegen.align import align_face
        from facegen.image_io import load_image

        embs, crops = [], []
        single = require_single and not isinstance(select, int)
        for i, img in enumerate(images):
            arr = load_image(img)
            face = self.identity_analyzer.analyze(
                arr, select=select, require_single=single, source=f"identity image {i}"
            )[0]
            embs.append(face.embedding)
            crops.append(align_face(arr, face, size=224))
        return embs, crops

    def _call_identities(
        self, id_embeds: IdentityInput | None, images: Sequence[Any] | None, extras: CallExtras
    ) -> tuple[IdentityInput, CallExtras]:
        if images is None:
            return super()._call_identities(id_embeds, images, extras)
        embs, crops = self._faces_from_images(images, "largest", True)
        if crops is not None and extras.face_crops is None:
            extras = replace(extras, face_crops=crops)
        return embs, extras

    @property
    def identity_spec(self) -> IdentitySpec:
        """The identity vectors the loaded FaceID adapter accepts."""
        if self.faceid is None:
            raise FacegenError("no FaceID adapter is loaded; call `load_faceid` first")
        return self.faceid.identity

    def load_faceid(self, *args: Any, **kwargs: Any) -> IPAdapterFaceID:
        """:func:`facegen.adapters.ip_adapter_faceid.load_faceid` into this pipeline."""
        from facegen.adapters.ip_adapter_faceid import load_faceid

        self.faceid = load_faceid(self, *args, **kwargs)
        return self.faceid

    def set_identity_scale(self, scale: float, *, lora_scale: float | None = None) -> None:
        """Strength of the identity (and of the FaceID LoRA): 0 turns the adapter off."""
        from facegen.adapters.ip_adapter_faceid import set_identity_scale

        set_identity_scale(self, scale, lora_scale=lora_scale)

    def prepare_ip_adapter_image_embeds(
        self,
        ip_adapter_image: Any,
        ip_adapter_image_embeds: Any,
        device: Any,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
    ) -> Any:
        """Take ready embeddings that already have one row per image as they are.

        diffusers repeats ``ip_adapter_image_embeds`` for every image of the batch (one
        identity per call); with one row per image (``[negatives; positives]``) the repeat
        would give each image several identities. Anything else goes to diffusers unchanged.
        """
        rows = (2 if do_classifier_free_guidance else 1) * num_images_per_prompt
        if ip_adapter_image_embeds is not None and all(
            e.shape[0] == rows for e in ip_adapter_image_embeds
        ):
            return [e.to(device) for e in ip_adapter_image_embeds]
        return super().prepare_ip_adapter_image_embeds(
            ip_adapter_image,
            ip_adapter_image_embeds,
            device,
            num_images_per_prompt,
            do_classifier_free_guidance,
        )

    def _check_prompt(self, prompt: str | None, negative_prompt: str | None) -> None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"`prompt` must be a non-empty string, got {prompt!r}")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise ValueError(f"`negative_prompt` must be a string, got {negative_prompt!r}")
        if self.faceid is None:
            raise ValueError("no FaceID adapter is loaded: call `pipe.load_faceid(...)` first")

    def _encode_conditioning(self, ctx: GenerationContext) -> dict[str, Any]:
        import torch

        m = check_int(ctx.num_images_per_identity, "num_images_per_identity", minimum=1)
        if ctx.unconditional != "empty-prompt":
            raise ValueError("`unconditional` applies to Arc2Face; use `negative_prompt` here")
        assert self.faceid is not None  # checked by _check_prompt
        vecs = self.faceid.identity.prepare(ctx.identities, adapter="IP-Adapter-FaceID")
        pos = vecs.repeat_interleave(m, dim=0)[:, None]  # (T, 1, 512)
        neg = DEFAULT_NEGATIVE_PROMPT if ctx.negative_prompt is None else ctx.negative_prompt
        pe, ne = self.encode_prompt(ctx.prompt, self.device, 1, True, neg)
        total = pos.shape[0]
        out = {
            "prompt_embeds": pe.repeat(total, 1, 1),
            "negative_prompt_embeds": ne.repeat(total, 1, 1),
            "faceid": pos,
        }
        if self.needs_face_crops:
            crops = ctx.extras.face_crops
            if crops is None or len(crops) != len(vecs):
                raise ValueError(
                    "IP-Adapter-FaceID PlusV2 needs one face crop per identity: pass "
                    f"`face_crops` ({len(vecs)} entries) or the identity photos as `images`, "
                    f"got {None if crops is None else len(crops)}"
                )
            feats = [self.faceid.encode_face_crops(c, num_images=1) for c in crops]
            out["clip_neg"] = feats[0][:1].repeat_interleave(total, dim=0)
            out["clip_pos"] = torch.cat([f[1:] for f in feats]).repeat_interleave(m, dim=0)
        return out

    def _chunk_call_kwargs(
        self, ctx: GenerationContext, per_image: dict[str, Any], sl: slice
    ) -> dict[str, Any]:
        import torch

        dtype = self.unet.dtype
        guided = ctx.guidance_scale > 1
        pos = per_image["faceid"][sl].to(self.device, dtype)
        ip = torch.cat([torch.zeros_like(pos), pos]) if guided else pos
        if "clip_pos" in per_image:
            assert self.faceid is not None
            clip = per_image["clip_pos"][sl]
            if guided:
                clip = torch.cat([per_image["clip_neg"][sl], clip])
            # the structure branch's features ride on the attention processors for this chunk
            self.faceid.set_clip_embeds(self, clip, shortcut_scale=self.shortcut_scale)
        return {
            "prompt_embeds": per_image["prompt_embeds"][sl].to(self.device, dtype),
            "negative_prompt_embeds": per_image["negative_prompt_embeds"][sl].to(
                self.device, dtype
            ),
            "ip_adapter_image_embeds": [ip],
        }


class IDTextToFacePipeline(FaceIDTextMixin, StableDiffusionPipeline):
    """``pipe(id_embeds, prompt="a photo of a person in a garden", num_images_per_identity=4)``.

    Needs a FaceID adapter: :meth:`load_faceid` (or a preset) sets :attr:`faceid`.
    """


class IDTextToFaceControlNetPipeline(FaceIDTextMixin, StableDiffusionControlNetPipeline):
    """Identity + prompt + a ControlNet (landmarks / pose): ``pipe(ids, prompt=…, control_image=…)``."""
