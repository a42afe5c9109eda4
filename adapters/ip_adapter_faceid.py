"""IP-Adapter-FaceID for SD1.5 in its published format, loaded through diffusers' own hooks.

IP-Adapter-FaceID (Ye et al., tencent-ailab/IP-Adapter; weights ``h94/IP-Adapter-FaceID``)
projects an insightface ``buffalo_l`` ArcFace vector (``w600k_r50``, L2-normalised, 512-D) to
4 image tokens that a second key/value pair in every cross-attention layer attends to, and
ships a rank-128 LoRA on all attention projections that improves identity consistency.
PlusV2 adds CLIP ViT-H/14 features of the 224×224 ArcFace-aligned face crop, resampled by a
perceiver into the same 4 tokens and added to the ID tokens (``shortcut``, ``s_scale``).
The crop reaches the image encoder in BGR channel order by default, as in the published
PlusV2 example and diffusers' guide (``cv2.imread`` + insightface ``norm_crop``, never
converted; see :data:`~facegen.adapters.faceid_format.FACE_CROP_CHANNEL_ORDERS`);
``face_crop_channel_order="rgb"`` feeds it as RGB.

Published files (``h94/IP-Adapter-FaceID``):

* ``ip-adapter-faceid_sd15.bin`` / ``ip-adapter-faceid-plusv2_sd15.bin``: a torch pickle
  ``{"image_proj": {...}, "ip_adapter": {...}}`` (read here with ``weights_only=True``);
* ``ip-adapter-faceid_sd15_lora.safetensors`` / ``…-plusv2_sd15_lora.safetensors``: the same
  LoRA as the one inside the ``.bin`` (the maintainers converted it, tencent-ailab/IP-Adapter
  issue #326), in kohya form ``lora_unet_<module>_{to_q,to_k,to_v,to_out_0}.lora_{down,up}
  .weight`` without ``.alpha`` (scale 1, like the training-time ``LoRALinearLayer``).

The state-dict layout, checked against diffusers' conversion code
(``UNet2DConditionLoadersMixin._convert_ip_adapter_image_proj_to_diffusers`` /
``_convert_ip_adapter_attn_to_diffusers`` / ``_load_ip_adapter_loras`` in
``diffusers/loaders/unet.py``), for a UNet with cross-attention size ``C`` (768 for SD1.5):

``image_proj`` (FaceID, ``MLPProjModel``; diffusers ``IPAdapterFaceIDImageProjection``)
    ``proj.0.weight (1024, 512)``, ``proj.0.bias (1024,)``, ``proj.2.weight (4·C, 1024)``,
    ``proj.2.bias (4·C,)``, ``norm.weight (C,)``, ``norm.bias (C,)``.
``image_proj`` (PlusV2, ``ProjPlusModel``; diffusers ``IPAdapterFaceIDPlusImageProjection``)
    the six keys above plus ``perceiver_resampler.{proj_in (C, 1280) +bias, proj_out (C, C)
    +bias, norm_out (C,) +bias}`` and for ``l`` in 0..3 ``perceiver_resampler.layers.l.0.
    {norm1, norm2 (C,) +bias, to_q (C, C), to_kv (2·C, C), to_out (C, C)}`` and
    ``layers.l.1.{0 (C,) +bias, 1 (4·C, C), 3 (C, 4·C)}`` (heads = C / 64).
``ip_adapter``
    keys ``"{i}.<name>"`` where ``i`` numbers *every* attention processor in the order of
    ``unet.attn_processors`` (diffusers' order: down blocks, up blocks, then the mid block —
    the order the original code saved them in). Self-attention (``attn1``) sits at even
    ``i``, cross-attention (``attn2``) at odd ``i``. Cross-attention processors hold
    ``to_k_ip.weight`` and ``to_v_ip.weight`` ``(hidden_i, C)``; every processor holds the
    LoRA ``to_{q,k,v,out}_lora.{down (r, in), up (hidden_i, r)}.weight`` with ``r = 128``
    (``in`` = ``C`` for ``to_k``/``to_v`` of cross-attention, else ``hidden_i``). For SD1.5
    that is 32 processors, ``1.to_k_ip.weight (320, 768)`` … ``31.to_k_ip.weight (1280, 768)``.

Usage::

    adapter = load_faceid(pipe)                      # FaceID + its LoRA, through diffusers
    set_identity_scale(pipe, 0.7)
    images = pipe(prompt, ip_adapter_image_embeds=adapter.encode(embedding)).images

Licence: the FaceID weights are for non-commercial research only (insightface's models).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from PIL import Image

from facegen.adapters.base import (
    IdentityAdapter,
    IdentityInput,
    IdentitySpec,
    read_adapter_config,
    write_adapter_config,
)
from facegen.adapters.faceid_format import (
    _CHECKPOINTS,
    FACE_CROP_CHANNEL_ORDERS,
    FACE_CROP_SIZE,
    FACEID_ENCODER_IDS,
    FACEID_LORA_ADAPTER,
    FACEID_PLUSV2_SD15_LORA,
    FACEID_PLUSV2_SD15_WEIGHTS,
    FACEID_REPO,
    FACEID_SD15_LORA,
    FACEID_SD15_WEIGHTS,
    IMAGE_ENCODER_REPO,
    IMAGE_ENCODER_SUBFOLDER,
    VARIANTS,
    AttentionLayer,
    FaceCropChannelOrder,
    FaceIDCheckpoint,
    Variant,
    _has_lora,
    _strip_lora,
    attention_layers,
    check_faceid_state_dict,
    checkpoints,
    faceid_identity_dim,
    faceid_layout,
    faceid_lora_to_kohya,
    faceid_state_dict_for,
    load_faceid_state_dict,
    save_faceid_lora,
    save_faceid_weights,
)
from facegen.errors import InvalidImageError, MissingDependencyError
from facegen.types import AlignedFace
from facegen.validate import check_choice, check_int, check_number

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from facegen.adapters.faceid_format import FaceIDParts

#: A face crop for PlusV2: an ArcFace-aligned crop, or its RGB uint8 ``(H, W, 3)`` pixels.
FaceCrop = AlignedFace | np.ndarray | Image.Image

__all__ = [
    "FACEID_ENCODER_IDS",
    "FACEID_LORA_ADAPTER",
    "FACEID_PLUSV2_SD15_LORA",
    "FACEID_PLUSV2_SD15_WEIGHTS",
    "FACEID_REPO",
    "FACEID_SD15_LORA",
    "FACEID_SD15_WEIGHTS",
    "FACE_CROP_CHANNEL_ORDERS",
    "FACE_CROP_SIZE",
    "IMAGE_ENCODER_REPO",
    "IMAGE_ENCODER_SUBFOLDER",
    "AttentionLayer",
    "FaceCropChannelOrder",
    "FaceIDCheckpoint",
    "IPAdapterFaceID",
    "attention_layers",
    "check_faceid_state_dict",
    "checkpoints",
    "faceid_identity_dim",
    "faceid_layout",
    "faceid_lora_to_kohya",
    "faceid_state_dict_for",
    "load_faceid",
    "load_faceid_state_dict",
    "load_image_encoder",
    "save_faceid_lora",
    "save_faceid_weights",
    "set_identity_scale",
]


def _unet(pipe: DiffusionPipeline) -> UNet2DConditionModel:
    if not hasattr(pipe, "load_ip_adapter") or getattr(pipe, "unet", None) is None:
        raise ValueError(
            "`pipe` must be a diffusers pipeline with a UNet and IP-Adapter support "
            f"(IPAdapterMixin, e.g. StableDiffusionPipeline), got {type(pipe).__name__}"
        )
    return pipe.unet


def _delete_faceid_lora(pipe: DiffusionPipeline) -> None:
    if FACEID_LORA_ADAPTER in (getattr(pipe.unet, "peft_config", None) or {}):
        pipe.delete_adapters(FACEID_LORA_ADAPTER)


def load_image_encoder(
    repo_id: str = IMAGE_ENCODER_REPO,
    subfolder: str | None = IMAGE_ENCODER_SUBFOLDER,
    *,
    local_files_only: bool | None = None,
    torch_dtype: torch.dtype | None = None,
) -> CLIPVisionModelWithProjection:
    """CLIP ViT-H/14 (``CLIPVisionModelWithProjection``) for PlusV2, with facegen's offline rules.

    ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (``subfolder=None``) holds the same weights.
    """
    from transformers import CLIPVisionModelWithProjection

    from facegen.hub import load_pretrained

    kwargs = {"dtype": torch_dtype} if torch_dtype is not None else {}
    return load_pretrained(
        CLIPVisionModelWithProjection,
        repo_id,
        subfolder,
        local_files_only=local_files_only,
        **kwargs,
    ).eval()


def load_faceid(
    pipe: DiffusionPipeline,
    weight_name: str | os.PathLike[str] = FACEID_SD15_WEIGHTS,
    *,
    path: str | os.PathLike[str] | None = None,
    lora: bool = True,
    lora_path: str | os.PathLike[str] | None = None,
    image_encoder: CLIPVisionModelWithProjection | None = None,
    face_crop_channel_order: FaceCropChannelOrder | None = None,
    local_files_only: bool | None = None,
) -> IPAdapterFaceID:
    """Load a FaceID checkpoint into ``pipe`` with ``pipe.load_ip_adapter`` (and its LoRA).

    ``weight_name`` picks the published checkpoint (:func:`checkpoints`); the file is found
    by :func:`facegen.hub.resolve` (``path``: a file or a folder that overrides the lookup),
    read with ``weights_only=True``, checked against the UNet, then handed to diffusers'
    ``load_ip_adapter`` with ``image_encoder_folder=None``. A path to a file with a published
    name may be given as ``weight_name`` itself; a file of another name needs both
    (``weight_name`` says which kind it is).

    ``lora=True``: the LoRA inside the checkpoint is applied by diffusers itself (PEFT
    adapter ``"faceid_0"``); when the checkpoint has none, or ``lora_path`` is given, the
    ``*_lora.safetensors`` file is loaded with ``pipe.load_lora_weights`` under that name
    instead (never both: they are the same LoRA). ``lora=False`` loads the adapter alone.

    PlusV2 needs CLIP ViT-H/14 features of the aligned face: pass ``image_encoder`` (e.g.
    :func:`load_image_encoder`) to use :meth:`IPAdapterFaceID.encode_face_crops`.
    ``face_crop_channel_order`` (``"bgr"`` / ``"rgb"``): the order the crops reach that
    encoder in; ``None`` takes the checkpoint's published usage (``"bgr"`` for PlusV2).

    Returns an :class:`IPAdapterFaceID` that makes ``ip_adapter_image_embeds`` for ``pipe``.
    """
    unet = _unet(pipe)
    name = os.fspath(weight_name)
    if path is None and ("/" in name or os.sep in name or Path(name).is_file()):
        path, name = name, Path(name).name
    ckpt = _CHECKPOINTS.create(name)
    if not isinstance(lora, bool):
        raise ValueError(f"`lora` must be True or False, got {lora!r}")
    if face_crop_channel_order is None:
        face_crop_channel_order = ckpt.face_crop_channel_order
    check_choice(face_crop_channel_order, "face_crop_channel_order", FACE_CROP_CHANNEL_ORDERS)
    from facegen.hub import resolve

    weights = resolve(ckpt.preset, ckpt.weight_name, path=path, offline=local_files_only)
    parts = load_faceid_state_dict(weights)
    check_faceid_state_dict(parts, unet, ckpt.variant, source=str(weights))

    embedded = _has_lora(parts)
    lora_file: Path | None = None
    if lora and (lora_path is not None or not embedded):
        if lora_path is None and path is not None:
            folder = Path(path) if Path(path).is_dir() else Path(path).parent
            if (folder / ckpt.lora_name).is_file():
                lora_path = folder  # the LoRA file beside the weights
        lora_file = resolve(ckpt.preset, ckpt.lora_name, path=lora_path, offline=local_files_only)
    if lora:
        from diffusers.utils import USE_PEFT_BACKEND

        if not USE_PEFT_BACKEND:
            raise MissingDependencyError("peft", purpose="the IP-Adapter-FaceID LoRA")
    if not lora or lora_file is not None:
        parts = _strip_lora(parts)

    _delete_faceid_lora(pipe)
    pipe.load_ip_adapter(parts, subfolder=None, weight_name=None, image_encoder_folder=None)
    if lora_file is not None:
        pipe.load_lora_weights(
            str(lora_file.parent), weight_name=lora_file.name, adapter_name=FACEID_LORA_ADAPTER
        )
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    if ckpt.variant == "plusv2":
        projection.shortcut = True  # PlusV2 = Plus + shortcut (model card: shortcut=v2)
        projection.shortcut_scale = 1.0
    return IPAdapterFaceID(
        variant=ckpt.variant,
        image_encoder=image_encoder,
        face_crop_channel_order=face_crop_channel_order,
        identity_dim=faceid_identity_dim(parts),
        device=unet.device,
        dtype=unet.dtype,
    )


def _faceid_projection(pipe: DiffusionPipeline) -> torch.nn.Module:
    from diffusers.models.embeddings import (
        IPAdapterFaceIDImageProjection,
        IPAdapterFaceIDPlusImageProjection,
    )

    proj = getattr(_unet(pipe), "encoder_hid_proj", None)
    layers = getattr(proj, "image_projection_layers", None)
    if not layers or not isinstance(
        layers[0], (IPAdapterFaceIDImageProjection, IPAdapterFaceIDPlusImageProjection)
    ):
        raise ValueError("`pipe` must have an IP-Adapter-FaceID loaded (call load_faceid first)")
    return layers[0]


def set_identity_scale(
    pipe: DiffusionPipeline, scale: float, *, lora_scale: float | None = None
) -> None:
    """Set the identity strength: the IP-Adapter attention scale (``set_ip_adapter_scale``).

    ``0`` switches the identity tokens off (diffusers skips them), ``1`` is the trained
    strength. ``lora_scale`` (optional) scales the FaceID LoRA alone, leaving other LoRAs as
    they are; ``scale=0, lora_scale=0`` gives the base model's output.
    """
    _faceid_projection(pipe)
    pipe.set_ip_adapter_scale(check_number(scale, "scale"))
    if lora_scale is None:
        return
    weight = check_number(lora_scale, "lora_scale")
    if FACEID_LORA_ADAPTER not in (getattr(pipe.unet, "peft_config", None) or {}):
        raise ValueError(
            "`lora_scale` needs the FaceID LoRA, got a pipeline without it "
            "(load it with load_faceid(..., lora=True))"
        )
    from peft.tuners.lora import LoraLayer

    for module in pipe.unet.modules():
        if isinstance(module, LoraLayer):
            module.set_scale(FACEID_LORA_ADAPTER, weight)


# --------------------------------------------------------------------------------------
# The adapter: identity → ip_adapter_image_embeds
# --------------------------------------------------------------------------------------


class IPAdapterFaceID(IdentityAdapter):
    """Makes the ``ip_adapter_image_embeds`` diffusers' FaceID path expects.

    ``encode(id_embeds)`` takes buffalo_l ArcFace embeddings (``arcface-onnx/buffalo_l``,
    normalised, 512-D) or raw ``(R, 512)`` vectors (normalised here) and returns a one-item
    list (one IP-Adapter) of float ``(2·n, R, 512)`` tensors: the zero (unconditional) half
    first, then the identity, as ``prepare_ip_adapter_image_embeds`` builds them. ``R`` > 1
    vectors are several reference photos of *one* person (each adds 4 tokens, diffusers'
    multi-image FaceID usage); generate different people with separate calls.

    Adapters trained by facegen for another encoder (``facegen.training.diffusion.adapter``) declare
    its id, dimension ``D`` and normalisation in their ``config.json``; 512 above is then ``D``.

    PlusV2 also needs :meth:`encode_face_crops` + :meth:`set_clip_embeds` before each call.
    (:class:`~facegen.pipelines.generation.id_text_to_face.IDTextToFacePipeline` does both, and gives
    each image of a batch its own identity.) ``face_crop_channel_order``: ``"bgr"`` (default,
    the published PlusV2 usage: the RGB crop is channel-reversed before the CLIP image
    processor) or ``"rgb"`` (the crop as it is).

    Saved adapters (:meth:`save_pretrained`) are a folder with ``config.json`` and
    ``ip-adapter-faceid.safetensors`` in the published key layout, which diffusers'
    ``load_ip_adapter`` also reads.
    """

    WEIGHTS_NAME = "ip-adapter-faceid.safetensors"

    output_form = "ip_adapter_image_embeds"

    def __init__(
        self,
        *,
        variant: Variant = "faceid",
        image_encoder: CLIPVisionModelWithProjection | None = None,
        image_processor: CLIPImageProcessor | None = None,
        face_crop_channel_order: FaceCropChannelOrder = "bgr",
        encoder_ids: tuple[str, ...] = FACEID_ENCODER_IDS,
        identity_dim: int = 512,
        normalized: bool = True,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> None:
        import torch

        self.variant: Variant = cast(Variant, check_choice(variant, "variant", VARIANTS))
        self.identity = IdentitySpec(
            tuple(encoder_ids),
            dim=check_int(identity_dim, "identity_dim", minimum=1),
            normalized=bool(normalized),
        )
        self.image_encoder = image_encoder
        self._image_processor = image_processor
        self.face_crop_channel_order = cast(
            FaceCropChannelOrder,
            check_choice(
                face_crop_channel_order, "face_crop_channel_order", FACE_CROP_CHANNEL_ORDERS
            ),
        )
        self.device = torch.device(device)
        self.dtype = dtype if dtype is not None else torch.float32

    def save_pretrained(self, folder: str | os.PathLike[str], state_dict: FaceIDParts) -> Path:
        """Write ``state_dict`` (``{"image_proj", "ip_adapter"}``, published layout) and
        ``config.json`` to ``folder``; returns the folder."""
        out = Path(folder)
        save_faceid_weights(state_dict, out / self.WEIGHTS_NAME)
        write_adapter_config(
            out,
            self,
            variant=self.variant,
            weights=self.WEIGHTS_NAME,
            face_crop_channel_order=self.face_crop_channel_order,
        )
        return out

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike[str],
        pipe: DiffusionPipeline,
        *,
        lora: bool = True,
        image_encoder: CLIPVisionModelWithProjection | None = None,
        face_crop_channel_order: FaceCropChannelOrder | None = None,
    ) -> IPAdapterFaceID:
        """Load a folder written by :meth:`save_pretrained` into ``pipe`` (via :func:`load_faceid`).

        A folder whose config says ``"lora": false`` (an adapter trained without LoRA) is
        loaded without one whatever ``lora`` says. ``face_crop_channel_order=None`` takes the
        config's (``"bgr"`` when it has none)."""
        cfg = read_adapter_config(folder, cls.__name__)
        variant = check_choice(cfg.get("variant", "faceid"), "variant", VARIANTS)
        kind = FACEID_PLUSV2_SD15_WEIGHTS if variant == "plusv2" else FACEID_SD15_WEIGHTS
        adapter = load_faceid(
            pipe,
            kind,
            path=Path(folder) / cfg.get("weights", cls.WEIGHTS_NAME),
            lora=lora and bool(cfg.get("lora", True)),
            image_encoder=image_encoder,
            face_crop_channel_order=(
                cfg.get("face_crop_channel_order", "bgr")
                if face_crop_channel_order is None
                else face_crop_channel_order
            ),
        )
        adapter.identity = IdentitySpec(
            tuple(cfg["encoder_ids"]),
            dim=int(cfg.get("identity_dim", adapter.identity.dim)),
            normalized=bool(cfg.get("normalized", True)),
        )
        return adapter

    def encode(
        self,
        id_embeds: IdentityInput,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        **_: Any,
    ) -> list[torch.Tensor]:
        """``[tensor (2·n, R, 512)]`` (``(n, R, 512)`` without CFG), negative (zeros) first.

        Pass the default ``num_images_per_prompt=1`` result as the pipeline's
        ``ip_adapter_image_embeds`` and give the pipeline its own ``num_images_per_prompt``
        (it repeats the embeddings itself). ``n > 1`` returns the already-expanded form that
        ``prepare_ip_adapter_image_embeds`` hands the UNet, for custom denoising loops.
        """
        import torch

        n = check_int(num_images_per_prompt, "num_images_per_prompt", minimum=1)
        if not isinstance(do_classifier_free_guidance, bool):
            raise ValueError(
                f"`do_classifier_free_guidance` must be True or False, got {do_classifier_free_guidance!r}"
            )
        vecs = self.identity.prepare(id_embeds, adapter="IP-Adapter-FaceID")
        pos = vecs[None].repeat(n, 1, 1)
        out = torch.cat([torch.zeros_like(pos), pos]) if do_classifier_free_guidance else pos
        return [out.to(self.device, self.dtype)]

    @property
    def image_processor(self) -> CLIPImageProcessor:
        if self._image_processor is None:
            from transformers import CLIPImageProcessor

            size = int(self._require_encoder().config.image_size)
            self._image_processor = CLIPImageProcessor(size=size, crop_size=size)
        return self._image_processor

    def _require_encoder(self) -> CLIPVisionModelWithProjection:
        if self.variant != "plusv2":
            raise ValueError(f"face crops are used by the 'plusv2' variant, got {self.variant!r}")
        if self.image_encoder is None:
            raise ValueError(
                "`image_encoder` must be a CLIPVisionModelWithProjection (CLIP ViT-H/14, see "
                "load_image_encoder) for PlusV2, got None"
            )
        return self.image_encoder

    def encode_face_crops(
        self,
        face_crops: FaceCrop | Sequence[FaceCrop],
        num_images: int = 1,
        do_classifier_free_guidance: bool = True,
    ) -> torch.Tensor:
        """CLIP features of aligned face crops: float ``(2·num_images, R, T, hidden)``.

        ``face_crops``: ``R`` crops of one person, each an :class:`AlignedFace` with the
        ``arcface`` template (``align_face(image, face, size=224)``, insightface's
        ``norm_crop(..., image_size=224)``) or an RGB uint8 ``(H, W, 3)`` array / PIL image
        of such a crop. The penultimate hidden states of the image encoder (``T`` = 257 for
        ViT-H/14) for the crops, and for an all-zero pixel tensor as the negative half, as
        diffusers' ``encode_image(..., output_hidden_states=True)`` computes them.
        ``num_images``: images per pipeline call (prompts × ``num_images_per_prompt``).

        With ``face_crop_channel_order="bgr"`` (default) each RGB crop is channel-reversed
        before the image processor, so the encoder sees what the published PlusV2 example
        gives it (insightface's BGR ``norm_crop`` of a ``cv2.imread`` photo); ``"rgb"`` passes
        the crop as it is.
        """
        import torch

        encoder = self._require_encoder()
        n = check_int(num_images, "num_images", minimum=1)
        crops = _face_crop_list(face_crops)
        if self.face_crop_channel_order == "bgr":
            crops = [np.ascontiguousarray(c[..., ::-1]) for c in crops]
        pixels = self.image_processor(images=crops, return_tensors="pt").pixel_values
        dtype = next(encoder.parameters()).dtype
        pixels = pixels.to(encoder.device, dtype)
        with torch.inference_mode():
            pos = encoder(pixels, output_hidden_states=True).hidden_states[-2]
            neg = encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        pos = pos[None].repeat(n, 1, 1, 1)
        neg = neg[None].repeat(n, 1, 1, 1)
        out = torch.cat([neg, pos]) if do_classifier_free_guidance else pos
        return out.to(self.device, self.dtype)

    def set_clip_embeds(
        self, pipe: DiffusionPipeline, clip_embeds: torch.Tensor, *, shortcut_scale: float = 1.0
    ) -> None:
        """Hand PlusV2's face-structure features to ``pipe`` for its next calls.

        ``clip_embeds``: :meth:`encode_face_crops` output, sized for the pipeline call's batch.
        ``shortcut_scale`` is the published ``s_scale`` (weight of the CLIP branch, 1.0).
        """
        from diffusers.models.embeddings import IPAdapterFaceIDPlusImageProjection

        proj = _faceid_projection(pipe)
        if not isinstance(proj, IPAdapterFaceIDPlusImageProjection):
            raise ValueError("`pipe` must have a FaceID-PlusV2 checkpoint loaded, got plain FaceID")
        if getattr(clip_embeds, "ndim", None) != 4:
            raise ValueError(
                "`clip_embeds` must be a (batch, R, tokens, hidden) tensor from encode_face_crops, "
                f"got {getattr(clip_embeds, 'shape', type(clip_embeds))}"
            )
        width = proj.proj_in.in_features
        if clip_embeds.shape[-1] != width:
            raise ValueError(
                f"`clip_embeds` must have hidden size {width} (the checkpoint's CLIP width), "
                f"got {clip_embeds.shape[-1]}"
            )
        proj.clip_embeds = clip_embeds.to(pipe.unet.device, pipe.unet.dtype)
        proj.shortcut = True
        proj.shortcut_scale = check_number(shortcut_scale, "shortcut_scale")


def _face_crop_list(face_crops: FaceCrop | Sequence[FaceCrop]) -> list[np.ndarray]:
    items: Sequence[object] = (
        list(face_crops) if isinstance(face_crops, (list, tuple)) else [face_crops]
    )
    if not items:
        raise InvalidImageError("`face_crops` must hold at least one aligned face crop, got none")
    out: list[np.ndarray] = []
    for i, item in enumerate(items):
        if isinstance(item, AlignedFace):
            if item.template != "arcface":
                raise InvalidImageError(
                    f"`face_crops[{i}]` must be aligned with the 'arcface' template (as "
                    f"insightface's norm_crop), got {item.template!r}"
                )
            item = item.image
        if isinstance(item, Image.Image):
            item = np.asarray(item.convert("RGB"))
        arr = np.asarray(item)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise InvalidImageError(
                f"`face_crops[{i}]` must be an RGB uint8 (H, W, 3) crop, got {arr.dtype} {arr.shape}"
            )
        out.append(arr)
    return out
