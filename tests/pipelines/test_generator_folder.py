"""The space-to-depth latent, Arc2Face's encoder for narrower identities, and generator folders
(tiny random components: test doubles for the plumbing, never results)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from facegen.adapters.arc2face import Arc2FaceIDEncoder
from facegen.adapters.base import IdentitySpec
from facegen.errors import IncompatibleEmbeddingError, InvalidArgumentError, InvalidModelError
from facegen.pipelines.generation.generator_folder import (
    GENERATOR_CONFIG_NAME,
    GeneratorInfo,
    is_generator_folder,
    read_generator_info,
    save_generator,
)
from facegen.pipelines.generation.space_to_depth import SpaceToDepthLatent
from facegen.pipelines.generation.tiny import tiny_components, tiny_tokenizer
from facegen.types import IdentityEmbedding

ENCODER = "dlib-resnet-v1"


def unit(dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


# --------------------------------------------------------------------------- space to depth


def test_space_to_depth_is_exactly_invertible_and_reads_like_a_vae(tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    vae = SpaceToDepthLatent(factor=4)
    x = torch.rand(2, 3, 64, 32) * 2 - 1
    dist = vae.encode(x).latent_dist
    z = dist.sample(generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, 48, 16, 8)
    assert torch.equal(z, dist.mode()) and float(dist.std.abs().max()) == 0.0
    assert torch.equal(vae.decode(z).sample, x)  # lossless, bit for bit
    assert torch.equal(z[:, :, 0, 0].reshape(2, 3, 4, 4), x[:, :, :4, :4])  # pixel_unshuffle
    cfg = vae.config
    assert (cfg.latent_channels, cfg.scaling_factor, cfg.shift_factor, cfg.force_upcast) == (
        48,
        1.0,
        None,
        False,
    )
    assert len(cfg.block_out_channels) == 3 and list(vae.parameters()) == []
    parts = tiny_components(0)
    pipe = StableDiffusionPipeline(
        **{**parts, "vae": vae},
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    assert pipe.vae_scale_factor == 4
    vae.save_pretrained(tmp_path / "vae")
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == ["config.json"]
    back = SpaceToDepthLatent.from_pretrained(tmp_path, subfolder="vae")
    assert back.config.factor == 4 and tuple(back.config.block_out_channels) == (48, 48, 48)
    assert torch.equal(back.decode(back.encode(x).latent_dist.mode()).sample, x)
    assert SpaceToDepthLatent(factor=2, in_channels=1).encode(x[:, :1]).latent_dist.mean.shape == (
        2,
        4,
        32,
        16,
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"factor": 3}, "power of two"),
        ({"latent_channels": 12}, "latent_channels"),
        ({"block_out_channels": (8, 8)}, "block_out_channels"),
        ({"shift_factor": 0.5}, "shift_factor"),
    ],
)
def test_space_to_depth_refuses_bad_settings(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        SpaceToDepthLatent(**kwargs)


def test_space_to_depth_refuses_sizes_it_cannot_fold() -> None:
    vae = SpaceToDepthLatent(factor=4)
    with pytest.raises(InvalidArgumentError, match="multiples of 4"):
        vae.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(InvalidArgumentError, match="48"):
        vae.decode(torch.zeros(1, 4, 8, 8))


# --------------------------------------------------------------------------- narrower identities


def test_arc2face_encoder_zero_pads_narrower_identities() -> None:
    parts = tiny_components(0)  # text encoder width 512
    te, tok = parts["text_encoder"], parts["tokenizer"]
    enc = Arc2FaceIDEncoder(te, tok, encoder_ids=(ENCODER,), identity_dim=128)
    assert enc.identity == IdentitySpec((ENCODER,), 128, True)
    v = unit(128, 0)
    got = enc.encode([IdentityEmbedding(v, ENCODER, True)])
    # the same as a 512-wide encoder given the vector zero-padded by hand
    wide = Arc2FaceIDEncoder(te, tok, encoder_ids=(ENCODER,))
    padded = np.concatenate([v, np.zeros(384, np.float32)])
    assert torch.allclose(got, wide.encode(torch.from_numpy(padded)[None]), atol=1e-6)
    assert got.shape == (1, 77, 512)
    with pytest.raises(IncompatibleEmbeddingError, match=r"\(N, 128\)"):
        enc.encode(torch.from_numpy(unit(512, 1))[None])
    with pytest.raises(IncompatibleEmbeddingError, match="arc2face"):
        enc.encode([IdentityEmbedding(unit(128, 1), "arcface-onnx/arc2face", True)])
    with pytest.raises(ValueError, match="hidden size must be >= 1024"):
        Arc2FaceIDEncoder(te, tok, identity_dim=1024)
    # 512-D ArcFace stays as it was: the default spec, and gradients only when asked
    assert Arc2FaceIDEncoder(te, tok).identity == IdentitySpec(
        ("arcface-onnx/arc2face",), 512, True
    )
    vec = torch.from_numpy(padded)[None].requires_grad_(True)
    assert wide.prompt_embeds(vec).requires_grad and not got.requires_grad


# --------------------------------------------------------------------------- generator folders


def small_generator(seed: int = 0) -> dict[str, Any]:
    """A random 32×32 generator on space-to-depth latents (factor 4: 48 × 8 × 8), 128-D ids."""
    from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=48,
        out_channels=48,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=128,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    scheduler = DPMSolverMultistepScheduler(beta_schedule="linear", steps_offset=1)
    return {
        "unet": unet.eval(),
        "vae": SpaceToDepthLatent(factor=4, sample_size=32),
        "text_encoder": te.eval(),
        "tokenizer": tok,
        "scheduler": scheduler,
    }


INFO = GeneratorInfo(
    identity=IdentitySpec((ENCODER,), 128, True),
    encoder={"name": "dlib", "options": {}},
    detector={"name": "dlib", "options": {}},
    resolution=32,
    default_steps=2,
    default_guidance=2.0,
    training={"base_model": "scratch", "steps": 0},
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("generator")
    save_generator(out, small_generator(), INFO)
    return out


def test_generator_folder_loads_component_by_component_in_plain_diffusers(folder: Path) -> None:
    from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    assert is_generator_folder(folder) and not is_generator_folder(folder / "unet")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["vae"] == ["facegen.pipelines.generation.space_to_depth", "SpaceToDepthLatent"]
    ref = small_generator()
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    te = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    tok = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    sched = DPMSolverMultistepScheduler.from_pretrained(folder, subfolder="scheduler")
    vae = SpaceToDepthLatent.from_pretrained(folder, subfolder="vae")
    for a, b in ((unet, ref["unet"]), (te, ref["text_encoder"])):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert tok.encode("id", add_special_tokens=False) == ref["tokenizer"].encode(
        "id", add_special_tokens=False
    )
    assert sched.config.beta_schedule == "linear" and vae.config.factor == 4
    assert all((folder / sub).is_dir() for sub in ("unet", "text_encoder", "vae", "scheduler"))
    assert list((folder / "unet").glob("*.safetensors"))
    info = json.loads((folder / GENERATOR_CONFIG_NAME).read_text())
    assert info["identity"] == {"encoder_ids": [ENCODER], "dim": 128, "normalized": True}
    assert info["format"] == "facegen-generator" and "facegen_version" in info
    assert read_generator_info(folder) == INFO


def test_from_preset_path_generates_and_refuses_other_encoders(folder: Path) -> None:
    from facegen.pipelines.generation.id_to_face import IDToFacePipeline
    from facegen.pipelines.generation.presets import from_preset, preset_info

    pipe = from_preset(str(folder), with_analyzer=False)
    assert isinstance(pipe, IDToFacePipeline)
    assert pipe.preset_name == str(folder) and pipe.preset_info == preset_info(str(folder))
    assert pipe.preset_info.identity == INFO.identity and pipe.identity_spec == INFO.identity
    assert not pipe.preset_info.takes_prompt and pipe.preset_info.family == "scratch"
    assert pipe.vae_scale_factor == 4 and pipe.default_unconditional == "zero-identity"
    pipe.set_progress_bar_config(disable=True)
    ids = [IdentityEmbedding(unit(128, 0), ENCODER, True)]
    out = pipe(ids, seeds=[3], output_type="np")
    again = pipe(ids, seeds=[3], output_type="np")
    assert out.images.shape == (1, 32, 32, 3) and np.array_equal(out.images, again.images)
    md = out.metadata[0]
    assert (md["steps"], md["guidance_scale"], md["unconditional"]) == (2, 2.0, "zero-identity")
    assert md["preset"] == str(folder)
    other = pipe(ids, seeds=[3], output_type="np", unconditional="empty-prompt")
    assert not np.array_equal(other.images, out.images)
    with pytest.raises(IncompatibleEmbeddingError, match="dlib-resnet-v1"):
        pipe([IdentityEmbedding(unit(128, 0), "arcface-onnx/arc2face", True)], seeds=[0])
    with pytest.raises(IncompatibleEmbeddingError, match=r"\(N, 128\)"):
        pipe(torch.from_numpy(unit(512, 0))[None], seeds=[0])


def test_generator_folders_refuse_what_they_cannot_read(tmp_path: Path) -> None:
    (tmp_path / GENERATOR_CONFIG_NAME).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(InvalidModelError, match="facegen-generator"):
        read_generator_info(tmp_path)
    data = {**INFO.to_dict(), "format_version": 99}
    (tmp_path / GENERATOR_CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(InvalidModelError, match="format_version"):
        read_generator_info(tmp_path)
    with pytest.raises(InvalidArgumentError, match="vae"):
        save_generator(
            tmp_path / "x", {**small_generator(), "vae": tiny_components(0)["vae"]}, INFO
        )
    with pytest.raises(InvalidArgumentError, match="prompt"):
        GeneratorInfo(identity=INFO.identity, prompt="a photo of a person")


def test_space_to_depth_generators_regenerate_masked_crops_by_latent_blending(
    folder: Path,
) -> None:
    """Swap and generative anonymization edit a face through latent blending: a generator on
    48-channel space-to-depth latents (demo-orl's kind) goes that way too, keeps the pixels
    outside the mask and regenerates the inside with the identity."""
    from facegen.pipelines.generation.inpaint import masked_generate
    from facegen.pipelines.generation.presets import from_preset

    pipe = from_preset(str(folder), with_analyzer=False)
    pipe.set_progress_bar_config(disable=True)
    crop = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), np.float32)
    mask[8:24, 8:24] = 1.0
    ids = [IdentityEmbedding(unit(128, 0), ENCODER, True)]
    out = masked_generate(pipe, crop, mask, ids, seeds=[1])
    assert out.metadata[0]["method"] == "repaint"
    assert out.images.shape == (1, 32, 32, 3)
    assert np.array_equal(out.images[0][mask == 0], crop[mask == 0])
    assert np.abs(out.images[0][mask == 1].astype(int) - crop[mask == 1]).mean() > 10
    other = masked_generate(
        pipe, crop, mask, [IdentityEmbedding(unit(128, 5), ENCODER, True)], seeds=[1]
    )
    assert not np.array_equal(other.raw[0], out.raw[0])  # the identity steers the inside
