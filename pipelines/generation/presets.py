"""Generation presets by name: ``from_preset("arc2face", device="cuda", dtype="float16")``.

The registry and :class:`PresetInfo` live in :mod:`~facegen.pipelines.generation.preset_registry`,
the builders in :mod:`~facegen.pipelines.generation.preset_builders`; import them from here.

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

``from_preset(PATH)`` also loads a generator folder written by ``facegen train generator``
(:mod:`~facegen.pipelines.generation.generator_folder`): an identity-only
``IDToFacePipeline`` for the identity encoder it was trained on.
"""

from __future__ import annotations

# importing the builders registers the presets
from facegen.pipelines.generation.preset_builders import (
    DEMO_ORL_CONTROLNET_NAME,
    DEMO_ORL_NAME,
    SD15_INPAINT_REPO,
    default_generate_preset,
)
from facegen.pipelines.generation.preset_registry import (
    PRESETS,
    ControlNetSupport,
    PresetInfo,
    from_preset,
    preset_info,
    preset_names,
    register_preset,
    resolve_dtype,
)

__all__ = [
    "DEMO_ORL_CONTROLNET_NAME",
    "DEMO_ORL_NAME",
    "PRESETS",
    "SD15_INPAINT_REPO",
    "ControlNetSupport",
    "PresetInfo",
    "default_generate_preset",
    "from_preset",
    "preset_info",
    "preset_names",
    "register_preset",
    "resolve_dtype",
]
