"""Generation presets by name: ``from_preset("arc2face", device="cuda", dtype="float16")``.

| preset | what | weights |
|---|---|---|
| ``arc2face`` | identity only, Arc2Face UNet + fine-tuned CLIP encoder; DPM-Solver++, 25 steps, guidance 3 | ``FoivosPar/Arc2Face`` (``arc2face``, ``encoder``) + SD1.5 VAE/tokenizer/scheduler |
| ``arc2face-lcm`` | Arc2Face + LCM-LoRA, ``LCMScheduler``, 4 steps, guidance 1 | as ``arc2face`` + ``latent-consistency/lcm-lora-sdv1-5`` |
| ``arc2face-controlnet`` | Arc2Face + its pose ControlNet (conditioned on EMOCA 3-D renders, which facegen cannot compute offline: pass them as ``control_image``), or ``controlnet=PATH`` for a facegen-trained landmark ControlNet | ``FoivosPar/Arc2Face`` ``controlnet`` |
| ``ip-adapter-faceid-sd15`` | identity + text prompt (IP-Adapter-FaceID with its LoRA), DDIM, 30 steps, guidance 7.5 | ``h94/IP-Adapter-FaceID`` + SD1.5 (``base=`` for another SD1.5 model) + buffalo_l |
| ``ip-adapter-faceid-plusv2-sd15`` | as above + face structure from CLIP ViT-H/14 features of a 224 face crop (made from the identity photo, or ``face_crops=``), fed to CLIP in BGR order as the published PlusV2 example does (``face_crop_channel_order="rgb"`` to feed RGB) | ``h94/IP-Adapter-FaceID`` PlusV2 + ``h94/IP-Adapter`` ``models/image_encoder`` |
| ``tiny`` | randomly initialised SD1.5-shaped components, 64×64 | none (built locally) — plumbing only |
| ``tiny-controlnet`` | ``tiny`` + a random ControlNet | none |
| ``ip-adapter-faceid-inpaint-sd15`` | identity + text inpainting (masked face editing) with the SD1.5 inpainting UNet (9 channels) + IP-Adapter-FaceID and its LoRA, DDIM, 30 steps, guidance 7.5; ``controlnet=PATH`` adds a ControlNet (e.g. a facegen-trained landmark one) | ``stable-diffusion-v1-5/stable-diffusion-inpainting`` + ``h94/IP-Adapter-FaceID`` + buffalo_l |
| ``tiny-inpaint`` | tiny components with a 9-channel inpainting UNet + a random FaceID adapter (``controlnet=True``: + a random ControlNet) | none |
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from facegen.adapters.arc2face import ARC2FACE_ENCODER_IDS, ARC2FACE_REPO, SD15_REPO
from facegen.adapters.base import IdentitySpec
from facegen.adapters.faceid_format import FACEID_ENCODER_IDS
from facegen.errors import InvalidArgumentError
from facegen.hub import is_offline, load_pretrained
from facegen.registry import Registry

__all__ = [
    "PRESETS",
    "PresetInfo",
    "from_preset",
    "preset_info",
    "preset_names",
    "register_preset",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)

PRESETS: Registry[Callable[..., Any]] = Registry("generation preset")

#: ``none``: no ControlNet; ``built-in``: always one, so every call needs a control image;
#: ``optional``: ``controlnet=PATH`` adds one.
ControlNetSupport = Literal["none", "built-in", "optional"]
_CONTROLNET_SUPPORT = ("none", "built-in", "optional")
#: base model families, i.e. what a LoRA for the preset is trained on
_FAMILIES = ("arc2face", "sd15", "tiny")


@dataclass(frozen=True)
class PresetInfo:
    """What a generation preset can do, declared where it is registered.

    Callers (the CLI, the web app, the dataset generator) ask this record instead of
    reading a preset's kind from its name.
    """

    name: str
    description: str
    #: the base model family: ``arc2face``, ``sd15`` or ``tiny`` (what a LoRA trains on)
    family: str
    #: whether a text prompt steers the image (identity + text); identity-only otherwise
    takes_prompt: bool
    controlnet: ControlNetSupport
    #: a masked (inpainting) pipeline: the editing jobs (swap, reenact, anonymize) use these
    inpainting: bool
    #: the identity vectors the preset's adapter accepts
    identity: IdentitySpec
    default_steps: int
    default_guidance: float
    #: the terms of the weights it downloads (see ``facegen models list``)
    license: str
    #: randomly initialised components: plumbing and demos, never a result
    test_double: bool = False
    #: can regenerate faces inside a photo (swap, reenact, generative anonymization)
    edits_photos: bool = True

    def __post_init__(self) -> None:
        if self.controlnet not in _CONTROLNET_SUPPORT:
            raise ValueError(
                f"`controlnet` must be one of {', '.join(_CONTROLNET_SUPPORT)}, "
                f"got {self.controlnet!r}"
            )
        if self.family not in _FAMILIES:
            raise ValueError(f"`family` must be one of {', '.join(_FAMILIES)}, got {self.family!r}")
        if self.default_steps < 1 or not self.default_guidance >= 0:
            raise ValueError(
                "`default_steps` must be >= 1 and `default_guidance` >= 0, got "
                f"{self.default_steps} and {self.default_guidance}"
            )

    @property
    def needs_control_image(self) -> bool:
        """Every call needs a control image (the preset always has a ControlNet)."""
        return self.controlnet == "built-in"

    @property
    def generates_faces(self) -> bool:
        """Makes whole faces from an identity (not a masked edit of a photo)."""
        return not self.inpainting


_INFO: dict[str, PresetInfo] = {}


def register_preset(info: PresetInfo) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a preset builder with its :class:`PresetInfo` (a decorator)."""

    def add(builder: Callable[..., Any]) -> Callable[..., Any]:
        PRESETS.register(info.name, builder, description=info.description)
        _INFO[info.name] = info
        return builder

    return add


def preset_info(name: str) -> PresetInfo:
    """The capabilities of preset ``name``; an unknown name lists the registered ones."""
    PRESETS.get(name)  # raises UnknownNameError with the valid names
    return _INFO[name]


def preset_names(
    *,
    takes_prompt: bool | None = None,
    controlnet: ControlNetSupport | None = None,
    inpainting: bool | None = None,
    test_double: bool | None = None,
    edits_photos: bool | None = None,
) -> list[str]:
    """Registered preset names (sorted), narrowed by the capabilities given."""
    wanted = {
        "takes_prompt": takes_prompt,
        "controlnet": controlnet,
        "inpainting": inpainting,
        "test_double": test_double,
        "edits_photos": edits_photos,
    }
    return [
        n
        for n in PRESETS.names()
        if all(v is None or getattr(_INFO[n], k) == v for k, v in wanted.items())
    ]


_DTYPES = ("float32", "float16", "bfloat16")


def resolve_dtype(dtype: Any, device: str) -> Any:
    """``"float16"`` etc. → ``torch.float16``; half precision on the CPU is refused."""
    import torch

    name = str(dtype).replace("torch.", "") if isinstance(dtype, torch.dtype) else str(dtype)
    if name not in _DTYPES:
        raise ValueError(f"`dtype` must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    if name == "float16" and str(device).startswith("cpu"):
        raise ValueError("`dtype` float16 needs a GPU; use float32 (or bfloat16) on the CPU")
    return getattr(torch, name)


def _finish(pipe: Any, name: str, models: dict[str, str], device: str, dtype: Any) -> Any:
    pipe.preset_name = name
    pipe.preset_info = _INFO[name]
    pipe.model_ids = models
    pipe.set_progress_bar_config(leave=False)
    if pipe.unet.dtype != dtype:
        pipe = pipe.to(device, dtype)
    return pipe.to(device)


def _refuse_controlnet(preset: str, controlnet: object, why: str) -> None:
    """A preset without a loadable ControlNet refuses one rather than ignore it."""
    if controlnet is not None:
        raise InvalidArgumentError(
            f"`controlnet` must not be given for preset {preset!r}, {why}, got {controlnet!r}"
        )


@register_preset(
    PresetInfo(
        name="tiny",
        description="random tiny SD1.5-shaped components (plumbing, demos)",
        family="tiny",
        takes_prompt=False,
        controlnet="none",
        inpainting=False,
        identity=IdentitySpec(ARC2FACE_ENCODER_IDS, dim=512, normalized=True),
        default_steps=25,
        default_guidance=3.0,
        license="none: random weights built locally",
        test_double=True,
    )
)
def _tiny(
    *,
    device: str = "cpu",
    dtype: Any = "float32",
    seed: int = 0,
    controlnet: object = None,
    **_: Any,
) -> Any:
    _refuse_controlnet("tiny", controlnet, "which has none")
    from facegen.pipelines.generation.id_to_face import IDToFacePipeline
    from facegen.pipelines.generation.tiny import tiny_components

    pipe = IDToFacePipeline(
        **tiny_components(seed),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return _finish(
        pipe,
        "tiny",
        {"components": f"tiny-random-seed{seed}"},
        device,
        resolve_dtype(dtype, device),
    )


@register_preset(
    PresetInfo(
        name="arc2face",
        description="Arc2Face (identity only), SD1.5 base",
        family="arc2face",
        takes_prompt=False,
        controlnet="none",
        inpainting=False,
        identity=IdentitySpec(ARC2FACE_ENCODER_IDS, dim=512, normalized=True),
        default_steps=25,
        default_guidance=3.0,
        license="Arc2Face: research use (FoivosPar/Arc2Face model card); SD1.5 VAE: CreativeML OpenRAIL-M",
    )
)
def _arc2face(
    *,
    device: str = "cpu",
    dtype: Any = "float32",
    local_files_only: bool | None = None,
    with_analyzer: bool = True,
    **_: Any,
) -> Any:
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from facegen.pipelines.generation.id_to_face import IDToFacePipeline

    torch_dtype = resolve_dtype(dtype, device)
    off = is_offline(local_files_only)
    common = {"local_files_only": off}
    unet = load_pretrained(
        UNet2DConditionModel, ARC2FACE_REPO, "arc2face", torch_dtype=torch_dtype, **common
    )
    text_encoder = load_pretrained(
        CLIPTextModel, ARC2FACE_REPO, "encoder", torch_dtype=torch_dtype, **common
    )
    vae = load_pretrained(AutoencoderKL, SD15_REPO, "vae", torch_dtype=torch_dtype, **common)
    tokenizer = load_pretrained(CLIPTokenizer, SD15_REPO, "tokenizer", **common)
    scheduler = load_pretrained(DPMSolverMultistepScheduler, SD15_REPO, "scheduler", **common)
    pipe = IDToFacePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if with_analyzer:
        from facegen.analyzer import FaceAnalyzer

        pipe.identity_analyzer = FaceAnalyzer.from_names(
            "insightface",
            None,
            "arcface-onnx",
            device=device,
            offline=off,
            encoder_options={"preset": "arc2face-arcface"},
        )
    models = {
        "unet": f"{ARC2FACE_REPO}/arc2face",
        "text_encoder": f"{ARC2FACE_REPO}/encoder",
        "vae": f"{SD15_REPO}/vae",
        "identity": "arc2face-arcface",
    }
    return _finish(pipe, "arc2face", models, device, torch_dtype)


@register_preset(
    PresetInfo(
        name="arc2face-lcm",
        description="Arc2Face + LCM-LoRA: 4 steps, guidance 1 (LCMScheduler)",
        family="arc2face",
        takes_prompt=False,
        controlnet="none",
        inpainting=False,
        identity=IdentitySpec(ARC2FACE_ENCODER_IDS, dim=512, normalized=True),
        default_steps=4,
        default_guidance=1.0,
        license="Arc2Face: research use (FoivosPar/Arc2Face model card); SD1.5 VAE: CreativeML OpenRAIL-M; LCM-LoRA: openrail++",
    )
)
def _arc2face_lcm(
    *, device: str = "cpu", dtype: Any = "float32", local_files_only: bool | None = None, **kw: Any
) -> Any:
    from facegen.adapters.lora import enable_lcm

    pipe = _arc2face(device=device, dtype=dtype, local_files_only=local_files_only, **kw)
    call = enable_lcm(pipe, local_files_only=local_files_only)
    pipe.default_steps = call["num_inference_steps"]
    pipe.default_guidance = call["guidance_scale"]
    pipe.preset_name = "arc2face-lcm"
    pipe.preset_info = _INFO["arc2face-lcm"]
    pipe.model_ids = {**pipe.model_ids, "lora": "latent-consistency/lcm-lora-sdv1-5"}
    return pipe.to(device)


@register_preset(
    PresetInfo(
        name="tiny-controlnet",
        description="tiny preset + a random ControlNet (control plumbing, demos)",
        family="tiny",
        takes_prompt=False,
        controlnet="built-in",
        inpainting=False,
        identity=IdentitySpec(ARC2FACE_ENCODER_IDS, dim=512, normalized=True),
        default_steps=25,
        default_guidance=3.0,
        license="none: random weights built locally",
        test_double=True,
    )
)
def _tiny_controlnet(
    *,
    device: str = "cpu",
    dtype: Any = "float32",
    seed: int = 0,
    controlnet: object = None,
    **_: Any,
) -> Any:
    _refuse_controlnet(
        "tiny-controlnet",
        controlnet,
        "which builds a random ControlNet (a trained one loads with arc2face-controlnet)",
    )
    import torch
    from diffusers import ControlNetModel

    from facegen.pipelines.generation.id_to_face import IDToFaceControlNetPipeline
    from facegen.pipelines.generation.tiny import tiny_components

    parts = tiny_components(seed)
    torch.manual_seed(seed + 3)
    controlnet = ControlNetModel.from_unet(
        parts["unet"], conditioning_embedding_out_channels=(16, 32)
    )
    pipe = IDToFaceControlNetPipeline(
        **parts,
        controlnet=controlnet.eval(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    models = {"components": f"tiny-random-seed{seed}", "controlnet": "tiny-random"}
    return _finish(pipe, "tiny-controlnet", models, device, resolve_dtype(dtype, device))


@register_preset(
    PresetInfo(
        name="arc2face-controlnet",
        description="Arc2Face + its pose ControlNet (control images: EMOCA renders, or a facegen-trained landmark ControlNet via controlnet=PATH)",
        family="arc2face",
        takes_prompt=False,
        controlnet="built-in",
        inpainting=False,
        identity=IdentitySpec(ARC2FACE_ENCODER_IDS, dim=512, normalized=True),
        default_steps=25,
        default_guidance=3.0,
        license="Arc2Face: research use (FoivosPar/Arc2Face model card); SD1.5 VAE: CreativeML OpenRAIL-M",
    )
)
def _arc2face_controlnet(
    *,
    device: str = "cpu",
    dtype: Any = "float32",
    local_files_only: bool | None = None,
    controlnet: str | None = None,
    **kw: Any,
) -> Any:
    from diffusers import ControlNetModel

    from facegen.pipelines.generation.id_to_face import IDToFaceControlNetPipeline

    base = _arc2face(device=device, dtype=dtype, local_files_only=local_files_only, **kw)
    torch_dtype = resolve_dtype(dtype, device)
    src, sub = (controlnet, None) if controlnet else (ARC2FACE_REPO, "controlnet")
    cn = load_pretrained(
        ControlNetModel,
        src,
        sub,
        torch_dtype=torch_dtype,
        local_files_only=is_offline(local_files_only),
    )
    pipe = IDToFaceControlNetPipeline(**base.components, controlnet=cn)
    pipe.identity_analyzer = base.identity_analyzer
    models = {**base.model_ids, "controlnet": controlnet or f"{ARC2FACE_REPO}/controlnet"}
    return _finish(pipe, "arc2face-controlnet", models, device, torch_dtype)


@register_preset(
    PresetInfo(
        name="ip-adapter-faceid-plusv2-sd15",
        description="IP-Adapter-FaceID PlusV2 on SD1.5: identity + face structure (CLIP ViT-H) + text",
        family="sd15",
        takes_prompt=True,
        controlnet="none",
        inpainting=False,
        identity=IdentitySpec(FACEID_ENCODER_IDS, dim=512, normalized=True),
        default_steps=30,
        default_guidance=7.5,
        license="IP-Adapter-FaceID: non-commercial research use; SD1.5: CreativeML OpenRAIL-M; insightface buffalo_l: non-commercial",
        # its face-structure branch needs a crop of the identity's own photo per image
        edits_photos=False,
    )
)
def _faceid_plusv2_sd15(**kw: Any) -> Any:
    return _faceid_sd15(variant="plusv2", **kw)


@register_preset(
    PresetInfo(
        name="ip-adapter-faceid-sd15",
        description="IP-Adapter-FaceID on SD1.5: identity + text prompt (buffalo_l identities)",
        family="sd15",
        takes_prompt=True,
        controlnet="none",
        inpainting=False,
        identity=IdentitySpec(FACEID_ENCODER_IDS, dim=512, normalized=True),
        default_steps=30,
        default_guidance=7.5,
        license="IP-Adapter-FaceID: non-commercial research use; SD1.5: CreativeML OpenRAIL-M; insightface buffalo_l: non-commercial",
    )
)
def _faceid_sd15(
    *,
    device: str = "cpu",
    dtype: Any = "float32",
    local_files_only: bool | None = None,
    base: str = SD15_REPO,
    with_analyzer: bool = True,
    variant: str = "faceid",
    image_encoder: Any = None,
    face_crop_channel_order: str | None = None,
    **_: Any,
) -> Any:
    """IP-Adapter-FaceID (``variant="plusv2"``: PlusV2) on an SD1.5 ``base``.

    ``face_crop_channel_order`` (PlusV2): ``"bgr"`` / ``"rgb"``, the channel order the face
    crop reaches the CLIP image encoder in; ``None`` keeps the published usage (``"bgr"``,
    see :data:`facegen.adapters.faceid_format.FACE_CROP_CHANNEL_ORDERS`).
    """
    from diffusers import DDIMScheduler

    from facegen.adapters.ip_adapter_faceid import (
        FACE_CROP_CHANNEL_ORDERS,
        FACEID_PLUSV2_SD15_WEIGHTS,
        FACEID_REPO,
        FACEID_SD15_WEIGHTS,
        load_image_encoder,
    )
    from facegen.pipelines.generation.id_text_to_face import IDTextToFacePipeline

    if face_crop_channel_order is not None and face_crop_channel_order not in (
        FACE_CROP_CHANNEL_ORDERS
    ):
        raise ValueError(
            "`face_crop_channel_order` must be one of "
            f"{', '.join(FACE_CROP_CHANNEL_ORDERS)} (or None), got {face_crop_channel_order!r}"
        )
    torch_dtype = resolve_dtype(dtype, device)
    off = is_offline(local_files_only)
    pipe = load_pretrained(
        IDTextToFacePipeline,
        base,
        None,
        torch_dtype=torch_dtype,
        local_files_only=off,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    # the authors' scheduler settings (DDIM, scaled-linear betas, no clipping)
    pipe.scheduler = DDIMScheduler.from_config(
        pipe.scheduler.config, clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    weights = FACEID_PLUSV2_SD15_WEIGHTS if variant == "plusv2" else FACEID_SD15_WEIGHTS
    if variant == "plusv2" and image_encoder is None:
        image_encoder = load_image_encoder(local_files_only=off, torch_dtype=torch_dtype)
    pipe.load_faceid(
        weights,
        local_files_only=off,
        image_encoder=image_encoder,
        face_crop_channel_order=face_crop_channel_order,
    )
    if with_analyzer:
        from facegen.analyzer import FaceAnalyzer

        pipe.identity_analyzer = FaceAnalyzer.from_names(
            "insightface",
            None,
            "arcface-onnx",
            device=device,
            offline=off,
            detector_options={"preset": "buffalo_l"},
            encoder_options={"preset": "buffalo_l"},
        )
    models = {
        "base": base,
        "ip_adapter": f"{FACEID_REPO}/{weights}",
        "identity": "buffalo_l",
    }
    name = "ip-adapter-faceid-plusv2-sd15" if variant == "plusv2" else "ip-adapter-faceid-sd15"
    return _finish(pipe, name, models, device, torch_dtype)


def from_preset(
    name: str,
    *,
    device: str = "cpu",
    dtype: Any = "float32",
    local_files_only: bool | None = None,
    **kwargs: Any,
) -> Any:
    """Build the pipeline of preset ``name`` (see the module table) on ``device``/``dtype``."""
    return PRESETS.create(
        name, device=device, dtype=dtype, local_files_only=local_files_only, **kwargs
    )


#: The SD1.5 inpainting checkpoint (9-channel UNet) the inpainting preset builds on.
SD15_INPAINT_REPO = "stable-diffusion-v1-5/stable-diffusion-inpainting"


@register_preset(
    PresetInfo(
        name="ip-adapter-faceid-inpaint-sd15",
        description="IP-Adapter-FaceID on the SD1.5 inpainting UNet: masked identity edits (swap, reenact, generative anonymization); controlnet=PATH adds a ControlNet",
        family="sd15",
        takes_prompt=True,
        controlnet="optional",
        inpainting=True,
        identity=IdentitySpec(FACEID_ENCODER_IDS, dim=512, normalized=True),
        default_steps=30,
        default_guidance=7.5,
        license="IP-Adapter-FaceID: non-commercial research use; SD1.5: CreativeML OpenRAIL-M; insightface buffalo_l: non-commercial",
    )
)
def _faceid_inpaint_sd15(
    *,
    device: str = "cpu",
    dtype: Any = "float32",
    local_files_only: bool | None = None,
    base: str = SD15_INPAINT_REPO,
    controlnet: str | None = None,
    **kw: Any,
) -> Any:
    from diffusers import ControlNetModel

    from facegen.pipelines.generation.inpaint import (
        IDTextToFaceControlNetInpaintPipeline,
        IDTextToFaceInpaintPipeline,
    )

    # the FaceID text pipeline on the inpainting weights, then diffusers' own switch of
    # pipeline class over the same components (the adapter and its LoRA stay in the UNet)
    text = _faceid_sd15(
        device=device, dtype=dtype, local_files_only=local_files_only, base=base, **kw
    )
    torch_dtype = resolve_dtype(dtype, device)
    parts = {**text.components, "requires_safety_checker": False}
    models = {**text.model_ids}
    if controlnet:
        cn = load_pretrained(
            ControlNetModel,
            controlnet,
            None,
            torch_dtype=torch_dtype,
            local_files_only=is_offline(local_files_only),
        )
        pipe: Any = IDTextToFaceControlNetInpaintPipeline(**parts, controlnet=cn)
        models["controlnet"] = controlnet
    else:
        pipe = IDTextToFaceInpaintPipeline(**parts)
    pipe.scheduler = text.scheduler
    pipe.faceid = text.faceid
    pipe.identity_analyzer = text.identity_analyzer
    pipe.shortcut_scale = text.shortcut_scale
    return _finish(pipe, "ip-adapter-faceid-inpaint-sd15", models, device, torch_dtype)


@register_preset(
    PresetInfo(
        name="tiny-inpaint",
        description="random tiny components with a 9-channel inpainting UNet and a random FaceID adapter (controlnet=True: + a random ControlNet); plumbing only",
        family="tiny",
        takes_prompt=True,
        controlnet="optional",
        inpainting=True,
        identity=IdentitySpec(FACEID_ENCODER_IDS, dim=512, normalized=True),
        default_steps=30,
        default_guidance=7.5,
        license="none: random weights built locally",
        test_double=True,
    )
)
def _tiny_inpaint(
    *,
    device: str = "cpu",
    dtype: Any = "float32",
    seed: int = 0,
    controlnet: bool = False,
    **_: Any,
) -> Any:
    if not isinstance(controlnet, bool):
        raise InvalidArgumentError(
            "`controlnet` must be true or false for preset 'tiny-inpaint' (true adds a random "
            "ControlNet; a trained one loads with ip-adapter-faceid-inpaint-sd15), got "
            f"{controlnet!r}"
        )
    import tempfile
    from pathlib import Path

    import torch
    from diffusers import ControlNetModel

    from facegen.adapters.ip_adapter_faceid import (
        FACEID_SD15_WEIGHTS,
        faceid_state_dict_for,
        save_faceid_weights,
    )
    from facegen.pipelines.generation.inpaint import (
        IDTextToFaceControlNetInpaintPipeline,
        IDTextToFaceInpaintPipeline,
    )
    from facegen.pipelines.generation.tiny import tiny_components, tiny_inpaint_components

    parts = tiny_inpaint_components(seed)
    common = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    models = {"components": f"tiny-inpaint-random-seed{seed}", "ip_adapter": "tiny-random"}
    if controlnet:
        torch.manual_seed(seed + 3)
        # the ControlNet sees the 4 latent channels only: built from a 4-channel tiny UNet
        cn = ControlNetModel.from_unet(
            tiny_components(seed)["unet"], conditioning_embedding_out_channels=(16, 32)
        )
        pipe: Any = IDTextToFaceControlNetInpaintPipeline(**parts, controlnet=cn.eval(), **common)
        models["controlnet"] = "tiny-random"
    else:
        pipe = IDTextToFaceInpaintPipeline(**parts, **common)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / FACEID_SD15_WEIGHTS
        state = faceid_state_dict_for(pipe.unet, seed=seed + 5, lora_rank=None)
        save_faceid_weights(state, path)
        pipe.load_faceid(FACEID_SD15_WEIGHTS, path=path, lora=False)
    name = "tiny-inpaint"
    return _finish(pipe, name, models, device, resolve_dtype(dtype, device))
