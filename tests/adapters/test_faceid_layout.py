"""IP-Adapter-FaceID's published state-dict layout: key names and shapes, diffusers' converters,
the published modules written out, the model presets, and the real files when present."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facegen import ModelNotAvailableError
from facegen.adapters import ip_adapter_faceid as fid
from facegen.hub import get_preset

pytestmark = pytest.mark.usefixtures("quiet_diffusers")


def test_sd15_layout_is_the_published_one() -> None:
    """The real SD1.5 UNet (meta tensors): 32 processors, to_k_ip at odd 1..31, 768-wide."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        sd15 = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)
    layout = fid.faceid_layout(sd15)
    proj, ip = layout["image_proj"], layout["ip_adapter"]
    assert proj == {
        "proj.0.weight": (1024, 512),
        "proj.0.bias": (1024,),
        "proj.2.weight": (3072, 1024),
        "proj.2.bias": (3072,),
        "norm.weight": (768,),
        "norm.bias": (768,),
    }
    ip_idx = sorted(int(k.split(".")[0]) for k in ip if k.endswith("to_k_ip.weight"))
    assert ip_idx == list(range(1, 32, 2))
    # diffusers' processor order: down blocks (320, 640, 1280), up blocks (1280, 640, 320), mid
    assert ip["1.to_k_ip.weight"] == (320, 768)
    assert ip["13.to_v_ip.weight"] == (1280, 768)  # up_blocks.1
    assert ip["29.to_k_ip.weight"] == (320, 768)  # up_blocks.3
    assert ip["31.to_k_ip.weight"] == (1280, 768)  # mid_block
    assert ip["0.to_q_lora.down.weight"] == (128, 320)
    assert ip["1.to_k_lora.down.weight"] == (128, 768)
    assert ip["1.to_out_lora.up.weight"] == (320, 128)
    assert len(ip) == 32 * 8 + 16 * 2
    n_params = sum(math.prod(s) for part in layout.values() for s in part.values())
    # ≈ 48.4M parameters (≈ 97 MB in float16)
    assert 48.0e6 < n_params < 48.8e6

    plus = fid.faceid_layout(sd15, variant="plusv2")["image_proj"]
    assert plus["perceiver_resampler.proj_in.weight"] == (768, 1280)
    assert plus["perceiver_resampler.layers.3.0.to_kv.weight"] == (1536, 768)
    assert plus["perceiver_resampler.layers.0.1.1.weight"] == (3072, 768)
    assert plus["perceiver_resampler.layers.0.1.3.weight"] == (768, 3072)
    assert len(plus) == 6 + 6 + 4 * 11


@pytest.mark.parametrize("variant", ["faceid", "plusv2"])
def test_diffusers_conversion_consumes_every_key(unet, variant: str) -> None:
    """diffusers' converters load the image projection strictly and use every ip_adapter key."""
    from diffusers.models.embeddings import (
        IPAdapterFaceIDImageProjection,
        IPAdapterFaceIDPlusImageProjection,
    )

    sd = fid.faceid_state_dict_for(
        unet, seed=2, variant=variant, lora_rank=4, clip_embeddings_dim=48
    )
    proj = unet._convert_ip_adapter_image_proj_to_diffusers(
        sd["image_proj"], low_cpu_mem_usage=False
    )
    want = (
        IPAdapterFaceIDPlusImageProjection
        if variant == "plusv2"
        else IPAdapterFaceIDImageProjection
    )
    assert type(proj) is want
    used: set[str] = set()
    for i, name in enumerate(unet.attn_processors):
        if not name.endswith("attn1.processor"):
            used |= {f"{i}.to_k_ip.weight", f"{i}.to_v_ip.weight"}
    loras = unet._load_ip_adapter_loras([sd])
    names = list(unet.attn_processors)
    for key in loras[0]:
        name, proj_name, direction = key[len("unet.") :].rsplit(".", 3)[:3]
        used.add(f"{names.index(name)}.{proj_name}.{direction}.weight")
    assert used == set(sd["ip_adapter"])
    unet._convert_ip_adapter_attn_to_diffusers([sd], low_cpu_mem_usage=False)  # strict loads


def test_presets() -> None:
    for name, files in (
        ("ip-adapter-faceid-sd15", (fid.FACEID_SD15_WEIGHTS, fid.FACEID_SD15_LORA)),
        (
            "ip-adapter-faceid-plusv2-sd15",
            (fid.FACEID_PLUSV2_SD15_WEIGHTS, fid.FACEID_PLUSV2_SD15_LORA),
        ),
    ):
        p = get_preset(name)
        assert p.repo_id == "h94/IP-Adapter-FaceID" and p.files == files
        assert "non-commercial" in p.license and "insightface" in p.license
    enc = get_preset("ip-adapter-image-encoder-vit-h")
    assert (enc.repo_id, enc.subfolder) == ("h94/IP-Adapter", "models/image_encoder")


# --------------------------------------------------------------------------------------
# The published architecture, written out (tencent-ailab/IP-Adapter ip_adapter_faceid.py)
# --------------------------------------------------------------------------------------


class RefPerceiverAttention(torch.nn.Module):
    def __init__(self, dim: int, dim_head: int = 64) -> None:
        super().__init__()
        self.heads = dim // dim_head
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.to_q = torch.nn.Linear(dim, dim, bias=False)
        self.to_kv = torch.nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = torch.nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm1(x), self.norm2(latents)
        b, n, d = latents.shape
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, t.shape[1], self.heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.to_q(latents)), heads(k), heads(v))
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class RefProjPlus(torch.nn.Module):
    """ProjPlusModel: MLP on the ID vector → tokens, a 4-layer perceiver over CLIP features."""

    def __init__(self, c: int, clip_dim: int, num_tokens: int = 4) -> None:
        super().__init__()
        self.c, self.num_tokens = c, num_tokens
        self.proj = torch.nn.Sequential(
            torch.nn.Linear(512, 1024), torch.nn.GELU(), torch.nn.Linear(1024, c * num_tokens)
        )
        self.norm = torch.nn.LayerNorm(c)
        pr = torch.nn.Module()
        pr.proj_in, pr.proj_out = torch.nn.Linear(clip_dim, c), torch.nn.Linear(c, c)
        pr.norm_out = torch.nn.LayerNorm(c)
        pr.layers = torch.nn.ModuleList(
            torch.nn.ModuleList(
                [
                    RefPerceiverAttention(c),
                    torch.nn.Sequential(
                        torch.nn.LayerNorm(c),
                        torch.nn.Linear(c, 4 * c, bias=False),
                        torch.nn.GELU(),
                        torch.nn.Linear(4 * c, c, bias=False),
                    ),
                ]
            )
            for _ in range(4)
        )
        self.perceiver_resampler = pr

    def forward(self, ids: torch.Tensor, clip: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        x = self.norm(self.proj(ids).reshape(-1, self.num_tokens, self.c))
        pr = self.perceiver_resampler
        feats, latents = pr.proj_in(clip), x
        for attn, ff in pr.layers:
            latents = attn(feats, latents) + latents
            latents = ff(latents) + latents
        return x + scale * pr.norm_out(pr.proj_out(latents))  # PlusV2: shortcut=True


def test_layout_loads_strictly_into_the_published_modules(unet) -> None:
    c = unet.config.cross_attention_dim
    sd = fid.faceid_state_dict_for(unet, seed=3, variant="plusv2", clip_embeddings_dim=48)
    ref = RefProjPlus(c, 48)
    ref.load_state_dict(sd["image_proj"], strict=True)
    # …and diffusers' converted module computes the same tokens
    proj = unet._convert_ip_adapter_image_proj_to_diffusers(
        sd["image_proj"], low_cpu_mem_usage=False
    )
    ids, clip = torch.randn(3, 512), torch.randn(3, 9, 48)
    proj.clip_embeds, proj.shortcut, proj.shortcut_scale = clip[:, None], True, 0.7
    with torch.no_grad():
        torch.testing.assert_close(proj(ids), ref(ids, clip, 0.7), atol=1e-4, rtol=1e-4)
    faceid = fid.faceid_state_dict_for(unet, seed=3)["image_proj"]
    mlp = torch.nn.ModuleDict(
        {
            "proj": torch.nn.Sequential(
                torch.nn.Linear(512, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 4 * c)
            ),
            "norm": torch.nn.LayerNorm(c),
        }
    )
    mlp.load_state_dict(faceid, strict=True)  # MLPProjModel


# --------------------------------------------------------------------------------------
# The real published files, when present locally (deselected by default)
# --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("ckpt", fid.checkpoints(), ids=lambda c: c.variant)
def test_real_published_checkpoint(ckpt: fid.FaceIDCheckpoint) -> None:
    """The real files fit the layout built here for SD1.5, and the LoRA file has its keys."""
    from diffusers import UNet2DConditionModel
    from safetensors import safe_open

    from facegen.hub import resolve

    try:
        weights = resolve(ckpt.preset, ckpt.weight_name, download=False)
        lora = resolve(ckpt.preset, ckpt.lora_name, download=False)
    except ModelNotAvailableError as exc:
        pytest.skip(f"published weights not present locally: {exc.model}")
    with torch.device("meta"):
        sd15 = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)
    parts = fid.load_faceid_state_dict(weights)
    fid.check_faceid_state_dict(parts, sd15, ckpt.variant, source=str(weights))
    assert parts["ip_adapter"]["0.to_q_lora.down.weight"].shape == (128, 320)
    with safe_open(str(lora), framework="pt") as f:
        published = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    ours = {k: tuple(v.shape) for k, v in fid.faceid_lora_to_kohya(parts, sd15).items()}
    assert published == ours
