"""The builders of the generation presets, each registered with its :class:`PresetInfo`
(the table of what each builds is in :mod:`facegen.pipelines.generation.presets`).

Builders take ``device``, ``dtype`` and ``local_files_only`` (plus their own options) and
return the pipeline with its preset recorded (:func:`finish_preset`). Nothing here
downloads in a constructor: weights come through :func:`facegen.hub.load_pretrained`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facegen.adapters.arc2face import ARC2FACE_ENCODER_IDS, ARC2FACE_REPO, SD15_REPO
from facegen.adapters.base import IdentitySpec
from facegen.adapters.faceid_format import FACEID_ENCODER_IDS
from facegen.errors import InvalidArgumentError
from facegen.hub import is_offline, load_pretrained
from facegen.pipelines.generation.preset_registry import (
    PresetInfo,
    finish_preset,
    preset_info,
    refuse_controlnet,
    register_preset,
    resolve_dtype,
)

if TYPE_CHECKING:
    import torch

    from facegen.pipelines.generation.id_text_to_face import IDTextToFacePipeline
    from facegen.pipelines.generation.id_to_face import (
        IDToFaceControlNetPipeline,
        IDToFacePipeline,
    )
    from facegen.pipelines.generation.inpaint import FaceIDInpaintMixin

__all__ = [
    "DEMO_ORL_CONTROLNET_NAME",
    "DEMO_ORL_NAME",
    "SD15_INPAINT_REPO",
    "arc2face_present",
    "default_generate_preset",
    "demo_orl_controlnet_dir",
    "demo_orl_dir",
    "demo_orl_present",
]

#: Licence notes shown by `facegen models list` and the web app's Models panel.
_ARC2FACE_LICENSE = (
    "Arc2Face: research use (FoivosPar/Arc2Face model card); SD1.5 VAE: CreativeML OpenRAIL-M"
)
_FACEID_LICENSE = (
    "IP-Adapter-FaceID: non-commercial research use; SD1.5: CreativeML OpenRAIL-M; "
    "insightface buffalo_l: non-commercial"
)
_RANDOM_LICENSE = "none: random weights built locally"

#: What the identity-only (Arc2Face) and the identity + text (IP-Adapter-FaceID) presets share;
#: each preset below states only its name, description and what differs.
_IDENTITY_ONLY = PresetInfo(
    name="",
    description="",
    family="arc2face",
    takes_prompt=False,
    controlnet="none",
    inpainting=False,
    identity=IdentitySpec(ARC2FACE_ENCODER_IDS, dim=512, normalized=True),
    default_steps=25,
    default_guidance=3.0,
    license=_ARC2FACE_LICENSE,
)
_FACEID = replace(
    _IDENTITY_ONLY,
    family="sd15",
    takes_prompt=True,
    identity=IdentitySpec(FACEID_ENCODER_IDS, dim=512, normalized=True),
    default_steps=30,
    default_guidance=7.5,
    license=_FACEID_LICENSE,
)
#: randomly initialised stand-ins: plumbing and demos
_RANDOM = {"family": "tiny", "license": _RANDOM_LICENSE, "test_double": True}


#: The generator facegen trained itself and ships (``facegen/models/demo-orl``, model card
#: ``README.md`` there): the offline default where no published weights are present.
DEMO_ORL_NAME = "demo-orl"
_DEMO_ORL_LICENSE = (
    "facegen's own weights (Apache-2.0), trained on the ORL faces (AT&T Laboratories "
    "Cambridge; free for research and demonstration, credit the source): see the model card"
)


#: demo-orl with the landmark ControlNet facegen trained for it (``facegen/models/
#: demo-orl-controlnet``): pose and expression from a reference photo, offline.
DEMO_ORL_CONTROLNET_NAME = "demo-orl-controlnet"


def demo_orl_dir() -> Path:
    """The folder of the shipped ``demo-orl`` generator (inside the installed package)."""
    import facegen

    return Path(facegen.__file__).resolve().parent / "models" / DEMO_ORL_NAME


def demo_orl_controlnet_dir() -> Path:
    """The folder of the shipped ``demo-orl-controlnet`` ControlNet."""
    return demo_orl_dir().parent / DEMO_ORL_CONTROLNET_NAME


@register_preset(
    PresetInfo(
        name=DEMO_ORL_NAME,
        description="small generator facegen trained on ORL faces (64×64 grey, dlib "
        "identities): offline faces, a demo, not a research model",
        family="scratch",
        takes_prompt=False,
        controlnet="optional",
        inpainting=False,
        identity=IdentitySpec(("dlib-resnet-v1",), dim=128, normalized=True),
        default_steps=25,
        default_guidance=3.0,
        license=_DEMO_ORL_LICENSE,
        edits_photos=True,  # latent blending on its space-to-depth latents (swap)
        dataset_defaults={
            "min_similarity": 0.925,
            "leakage_threshold": 0.925,
            "identity_separation": 0.925,
            "max_similarity": 0.995,
            # its images of a sampled identity agree with each other, not with the vector
            # (BENCHMARKS.md): check them against the person it renders
            "verify_against": "anchor",
        },
    )
)
def _demo_orl(*, controlnet: object = None, **kwargs: Any) -> IDToFacePipeline:
    return _load_demo_orl(DEMO_ORL_NAME, controlnet, **kwargs)


def _load_demo_orl(
    name: str,
    controlnet: Any,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    with_analyzer: bool = True,
    local_files_only: bool | None = None,
    **_: Any,
) -> IDToFacePipeline:
    """The shipped generator as preset ``name``, with ``controlnet`` (a folder or model)."""
    from facegen.errors import ModelNotAvailableError
    from facegen.pipelines.generation.generator_folder import is_generator_folder, load_generator

    folder, cn_folder = demo_orl_dir(), demo_orl_controlnet_dir()
    with_cn = name == DEMO_ORL_CONTROLNET_NAME
    if not is_generator_folder(folder) or (with_cn and not (cn_folder / "config.json").is_file()):
        raise ModelNotAvailableError(
            name,
            searched=[folder, cn_folder] if with_cn else [folder],
            reason="its files are missing from this installation",
            hint="Reinstall facegen (pip install --force-reinstall facegen).",
        )
    pipe = load_generator(
        folder,
        name=name,
        device=device,
        dtype=resolve_dtype(dtype, device),
        local_files_only=local_files_only,
        with_analyzer=with_analyzer,
        controlnet=controlnet,
    )
    pipe.preset_info = preset_info(name)
    pipe.model_ids = {"generator": f"facegen/{DEMO_ORL_NAME}"}
    if controlnet is not None:
        pipe.model_ids["controlnet"] = (
            f"facegen/{DEMO_ORL_CONTROLNET_NAME}"
            if name == DEMO_ORL_CONTROLNET_NAME
            else str(controlnet)
        )
    return pipe


@register_preset(
    replace(
        preset_info(DEMO_ORL_NAME),
        name=DEMO_ORL_CONTROLNET_NAME,
        description="demo-orl with the landmark ControlNet facegen trained for it on the same "
        "ORL faces: pose and expression from a reference photo's 68 landmarks, offline",
        controlnet="built-in",
    )
)
def _demo_orl_controlnet(*, controlnet: object = None, **kwargs: Any) -> IDToFacePipeline:
    refuse_controlnet(
        DEMO_ORL_CONTROLNET_NAME,
        controlnet,
        "which ships its own (another one loads with preset demo-orl, controlnet=PATH)",
    )
    return _load_demo_orl(DEMO_ORL_CONTROLNET_NAME, demo_orl_controlnet_dir(), **kwargs)


def arc2face_present() -> bool:
    """Whether the ``arc2face`` preset's weights are on this machine (Hugging Face cache;
    no network): Arc2Face's UNet and encoder, SD1.5's VAE, and Arc2Face's ArcFace model."""
    from huggingface_hub import try_to_load_from_cache

    from facegen import hub

    files = [
        (ARC2FACE_REPO, "arc2face/config.json"),
        (ARC2FACE_REPO, "arc2face/diffusion_pytorch_model.safetensors"),
        (ARC2FACE_REPO, "encoder/config.json"),
        (SD15_REPO, "vae/config.json"),
    ]
    if not all(isinstance(try_to_load_from_cache(r, f), str) for r, f in files):
        return False
    return all(v is not None for v in hub.status("arc2face-arcface").values())


def default_generate_preset() -> str:
    """``arc2face`` when its weights are on this machine, else the shipped ``demo-orl`` (when
    this installation has it): what the web app selects first, so that it makes faces
    offline out of the box."""
    if arc2face_present() or not demo_orl_present():
        return "arc2face"
    return DEMO_ORL_NAME


def demo_orl_present() -> bool:
    """Whether this installation holds the ``demo-orl`` generator's files."""
    from facegen.pipelines.generation.generator_folder import is_generator_folder

    return is_generator_folder(demo_orl_dir())


#: The SD1.5 inpainting checkpoint (9-channel UNet) the inpainting preset builds on.
SD15_INPAINT_REPO = "stable-diffusion-v1-5/stable-diffusion-inpainting"


@register_preset(
    replace(
        _IDENTITY_ONLY,
        name="tiny",
        description="random tiny SD1.5-shaped components (plumbing, demos)",
        **_RANDOM,
    )
)
def _tiny(
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    seed: int = 0,
    controlnet: object = None,
    **_: Any,
) -> IDToFacePipeline:
    refuse_controlnet("tiny", controlnet, "which has none")
    from facegen.pipelines.generation.id_to_face import IDToFacePipeline
    from facegen.pipelines.generation.tiny import tiny_components

    pipe = IDToFacePipeline(
        **tiny_components(seed),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return finish_preset(
        pipe,
        "tiny",
        {"components": f"tiny-random-seed{seed}"},
        device,
        resolve_dtype(dtype, device),
    )


@register_preset(
    replace(
        _IDENTITY_ONLY,
        name="arc2face",
        description="Arc2Face (identity only), SD1.5 base",
    )
)
def _arc2face(
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    local_files_only: bool | None = None,
    with_analyzer: bool = True,
    **_: Any,
) -> IDToFacePipeline:
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
    return finish_preset(pipe, "arc2face", models, device, torch_dtype)


@register_preset(
    replace(
        _IDENTITY_ONLY,
        name="arc2face-lcm",
        description="Arc2Face + LCM-LoRA: 4 steps, guidance 1 (LCMScheduler)",
        default_steps=4,
        default_guidance=1.0,
        license=_ARC2FACE_LICENSE + "; LCM-LoRA: openrail++",
    )
)
def _arc2face_lcm(
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    local_files_only: bool | None = None,
    **kw: Any,
) -> IDToFacePipeline:
    from facegen.adapters.lora import enable_lcm

    pipe = _arc2face(device=device, dtype=dtype, local_files_only=local_files_only, **kw)
    call = enable_lcm(pipe, local_files_only=local_files_only)
    pipe.default_steps = call["num_inference_steps"]
    pipe.default_guidance = call["guidance_scale"]
    pipe.preset_name = "arc2face-lcm"
    pipe.preset_info = preset_info("arc2face-lcm")
    pipe.model_ids = {**pipe.model_ids, "lora": "latent-consistency/lcm-lora-sdv1-5"}
    return pipe.to(device)


@register_preset(
    replace(
        _IDENTITY_ONLY,
        name="tiny-controlnet",
        description="tiny preset + a random ControlNet (control plumbing, demos)",
        **_RANDOM,
        controlnet="built-in",
    )
)
def _tiny_controlnet(
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    seed: int = 0,
    controlnet: object = None,
    **_: Any,
) -> IDToFaceControlNetPipeline:
    refuse_controlnet(
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
    return finish_preset(pipe, "tiny-controlnet", models, device, resolve_dtype(dtype, device))


@register_preset(
    replace(
        _IDENTITY_ONLY,
        name="arc2face-controlnet",
        description="Arc2Face + its pose ControlNet (control images: EMOCA renders, or a facegen-trained landmark ControlNet via controlnet=PATH)",
        controlnet="built-in",
    )
)
def _arc2face_controlnet(
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    local_files_only: bool | None = None,
    controlnet: str | None = None,
    **kw: Any,
) -> IDToFaceControlNetPipeline:
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
    return finish_preset(pipe, "arc2face-controlnet", models, device, torch_dtype)


@register_preset(
    replace(
        _FACEID,
        name="ip-adapter-faceid-plusv2-sd15",
        description="IP-Adapter-FaceID PlusV2 on SD1.5: identity + face structure (CLIP ViT-H) + text",
        # its face-structure branch needs a crop of each identity's own photo
        edits_photos=False,
    )
)
def _faceid_plusv2_sd15(**kw: Any) -> IDTextToFacePipeline:
    return _faceid_sd15(variant="plusv2", **kw)


@register_preset(
    replace(
        _FACEID,
        name="ip-adapter-faceid-sd15",
        description="IP-Adapter-FaceID on SD1.5: identity + text prompt (buffalo_l identities)",
    )
)
def _faceid_sd15(
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    local_files_only: bool | None = None,
    base: str = SD15_REPO,
    with_analyzer: bool = True,
    variant: str = "faceid",
    image_encoder: Any = None,
    face_crop_channel_order: str | None = None,
    **_: Any,
) -> IDTextToFacePipeline:
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
    return finish_preset(pipe, name, models, device, torch_dtype)


@register_preset(
    replace(
        _FACEID,
        name="ip-adapter-faceid-inpaint-sd15",
        description="IP-Adapter-FaceID on the SD1.5 inpainting UNet: masked identity edits (swap, reenact, generative anonymization); controlnet=PATH adds a ControlNet",
        controlnet="optional",
        inpainting=True,
    )
)
def _faceid_inpaint_sd15(
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    local_files_only: bool | None = None,
    base: str = SD15_INPAINT_REPO,
    controlnet: str | None = None,
    **kw: Any,
) -> FaceIDInpaintMixin:
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
        pipe: FaceIDInpaintMixin = IDTextToFaceControlNetInpaintPipeline(**parts, controlnet=cn)
        models["controlnet"] = controlnet
    else:
        pipe = IDTextToFaceInpaintPipeline(**parts)
    pipe.scheduler = text.scheduler
    pipe.faceid = text.faceid
    pipe.identity_analyzer = text.identity_analyzer
    pipe.shortcut_scale = text.shortcut_scale
    return finish_preset(pipe, "ip-adapter-faceid-inpaint-sd15", models, device, torch_dtype)


@register_preset(
    replace(
        _FACEID,
        name="tiny-inpaint",
        description="random tiny components with a 9-channel inpainting UNet and a random FaceID adapter (controlnet=True: + a random ControlNet); plumbing only",
        **_RANDOM,
        controlnet="optional",
        inpainting=True,
    )
)
def _tiny_inpaint(
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    seed: int = 0,
    controlnet: bool = False,
    **_: Any,
) -> FaceIDInpaintMixin:
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
        pipe: FaceIDInpaintMixin = IDTextToFaceControlNetInpaintPipeline(
            **parts, controlnet=cn.eval(), **common
        )
        models["controlnet"] = "tiny-random"
    else:
        pipe = IDTextToFaceInpaintPipeline(**parts, **common)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / FACEID_SD15_WEIGHTS
        state = faceid_state_dict_for(pipe.unet, seed=seed + 5, lora_rank=None)
        save_faceid_weights(state, path)
        pipe.load_faceid(FACEID_SD15_WEIGHTS, path=path, lora=False)
    name = "tiny-inpaint"
    return finish_preset(pipe, name, models, device, resolve_dtype(dtype, device))
