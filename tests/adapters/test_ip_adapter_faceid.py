"""IP-Adapter-FaceID in its published layout, loaded by diffusers' own loader and by facegen's.

Checkpoints here are random (``faceid_state_dict_for``) with the real key names and shapes;
they prove the file format and the plumbing, never image quality.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facegen import IdentityEmbedding, IncompatibleEmbeddingError, ModelNotAvailableError
from facegen.adapters import ip_adapter_faceid as fid
from facegen.errors import InvalidModelError
from facegen.hub import get_preset
from facegen.pipelines.generation.tiny import TINY_IMAGE_SIZE, tiny_components

PROMPT = "a photo of a person"


@pytest.fixture(autouse=True)
def _quiet_diffusers() -> None:
    from diffusers.utils import logging as dlogging

    dlogging.set_verbosity_error()
    dlogging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


@functools.cache
def _components() -> dict:
    return tiny_components(0)


def make_pipe():
    """A fresh tiny SD1.5-shaped pipeline (deep copies of one seeded set of components)."""
    from diffusers import StableDiffusionPipeline

    c = copy.deepcopy(_components())
    pipe = StableDiffusionPipeline(
        **c, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@functools.cache
def _prompt_embeds() -> tuple[torch.Tensor, torch.Tensor]:
    """``PROMPT`` and the empty negative prompt, encoded once (the adapters leave the text
    encoder alone, so every pipeline here would compute the same)."""
    with torch.no_grad():
        return make_pipe().encode_prompt(PROMPT, "cpu", 1, True)


def run(pipe, embeds=None, *, seed: int = 0, **kw) -> np.ndarray:
    """2 steps at 64×64, seeded; ``embeds`` is ``ip_adapter_image_embeds``."""
    extra = {} if embeds is None else {"ip_adapter_image_embeds": embeds}
    prompt_embeds, negative_prompt_embeds = _prompt_embeds()
    return pipe(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_prompt_embeds,
        num_inference_steps=2,
        height=TINY_IMAGE_SIZE,
        width=TINY_IMAGE_SIZE,
        output_type="np",
        generator=torch.Generator().manual_seed(seed),
        **extra,
        **kw,
    ).images


def buffalo(seed: int = 0, n: int = 1) -> list[IdentityEmbedding]:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, 512)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return [IdentityEmbedding(v, "arcface-onnx/buffalo_l") for v in vecs]


@pytest.fixture(scope="module")
def unet():
    return copy.deepcopy(_components()["unet"])


@pytest.fixture(scope="module")
def base_image() -> np.ndarray:
    """The tiny pipeline without any adapter."""
    return run(make_pipe())


@pytest.fixture(scope="module")
def checkpoint(unet) -> dict:
    return fid.faceid_state_dict_for(unet, seed=1, lora_rank=4)


@pytest.fixture
def weights_dir(tmp_path: Path, checkpoint: dict) -> Path:
    fid.save_faceid_weights(checkpoint, tmp_path / fid.FACEID_SD15_WEIGHTS)
    return tmp_path


# --------------------------------------------------------------------------------------
# The layout
# --------------------------------------------------------------------------------------


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
# Loading: diffusers and facegen agree
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_diffusers_and_facegen_loaders_agree(
    tmp_path: Path, checkpoint: dict, base_image: np.ndarray, suffix: str
) -> None:
    name = Path(fid.FACEID_SD15_WEIGHTS).with_suffix(suffix).name
    fid.save_faceid_weights(checkpoint, tmp_path / name)

    theirs = make_pipe()
    theirs.load_ip_adapter(
        str(tmp_path), subfolder=None, weight_name=name, image_encoder_folder=None
    )
    assert fid.FACEID_LORA_ADAPTER in theirs.unet.peft_config  # the embedded LoRA, by diffusers
    ours = make_pipe()
    if suffix == ".bin":  # a path with the published name says which checkpoint it is
        adapter = fid.load_faceid(ours, tmp_path / name, local_files_only=True)
    else:
        adapter = fid.load_faceid(ours, path=tmp_path / name, local_files_only=True)

    # the same modules with the same weights: processors, projection, LoRA layers
    want, got = theirs.unet.state_dict(), ours.unet.state_dict()
    assert want.keys() == got.keys()
    assert any(".to_k_ip.0." in k for k in got) and any("lora_A.faceid_0" in k for k in got)
    for k in want:
        assert torch.equal(want[k], got[k]), k
    if suffix == ".safetensors":
        return
    # …and the same images for the same seed
    embedding = buffalo(5)[0]
    vec = torch.tensor(embedding.vector)
    ref_embeds = torch.stack([torch.zeros(1, 512), vec[None]])
    embeds = adapter.encode(embedding)
    torch.testing.assert_close(embeds[0], ref_embeds)
    b = run(ours, embeds)
    np.testing.assert_array_equal(run(theirs, [ref_embeds]), b)
    assert np.abs(base_image - b).max() > 1e-3  # the adapter does something


def test_identity_scale(weights_dir: Path, base_image: np.ndarray) -> None:
    pipe = make_pipe()
    adapter = fid.load_faceid(pipe, path=weights_dir, lora=False)
    assert not getattr(pipe.unet, "peft_config", None)
    embeds = adapter.encode(buffalo(1))
    fid.set_identity_scale(pipe, 0.0)
    np.testing.assert_array_equal(run(pipe, embeds), base_image)  # = no adapter at all
    fid.set_identity_scale(pipe, 1.0)
    full = run(pipe, embeds)
    assert np.abs(full - base_image).max() > 1e-3
    # another identity gives another image
    assert np.abs(run(pipe, adapter.encode(buffalo(2))) - full).max() > 1e-4
    with pytest.raises(ValueError, match="`scale` must be a finite number"):
        fid.set_identity_scale(pipe, float("nan"))
    with pytest.raises(ValueError, match="`lora_scale` needs the FaceID LoRA"):
        fid.set_identity_scale(pipe, 1.0, lora_scale=0.5)
    with pytest.raises(ValueError, match="IP-Adapter-FaceID loaded"):
        fid.set_identity_scale(make_pipe(), 1.0)


def test_lora_file_in_published_kohya_form(
    tmp_path: Path, unet, checkpoint: dict, base_image: np.ndarray
) -> None:
    # the published pair: an adapter and its LoRA converted to kohya keys (same weights)
    fid.save_faceid_weights(fid._strip_lora(checkpoint), tmp_path / fid.FACEID_SD15_WEIGHTS)
    lora_file = fid.save_faceid_lora(checkpoint, unet, tmp_path / fid.FACEID_SD15_LORA)
    from safetensors.torch import load_file

    keys = set(load_file(str(lora_file)))
    assert all(k.startswith("lora_unet_") for k in keys) and not any(".alpha" in k for k in keys)
    assert (
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_down.weight"
        in keys
    )
    assert len(keys) == 8 * len(unet.attn_processors)

    embeds = fid.IPAdapterFaceID().encode(buffalo(3))
    plain = make_pipe()
    fid.load_faceid(plain, path=tmp_path, lora=False)
    no_lora = run(plain, embeds)

    with_file = make_pipe()
    fid.load_faceid(with_file, path=tmp_path, lora=True)  # .bin has no LoRA: the file is used
    assert fid.FACEID_LORA_ADAPTER in with_file.unet.peft_config
    from_file = run(with_file, embeds)
    assert np.abs(from_file - no_lora).max() > 1e-3

    # the file's LoRA is the one embedded in the .bin: same weights in the UNet
    embedded_dir = tmp_path / "embedded"
    fid.save_faceid_weights(checkpoint, embedded_dir / fid.FACEID_SD15_WEIGHTS)
    embedded = make_pipe()
    fid.load_faceid(embedded, path=embedded_dir)
    want, got = embedded.unet.state_dict(), with_file.unet.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(want[k], got[k], rtol=0, atol=0, msg=k)

    # LoRA and identity both off = the base model
    fid.set_identity_scale(with_file, 0.0, lora_scale=0.0)
    np.testing.assert_allclose(run(with_file, embeds), base_image, atol=1e-6)
    # reloading without the LoRA removes it
    fid.load_faceid(with_file, path=tmp_path, lora=False)
    assert fid.FACEID_LORA_ADAPTER not in (getattr(with_file.unet, "peft_config", None) or {})
    np.testing.assert_allclose(run(with_file, embeds), no_lora, atol=1e-6)


def test_encode_matches_prepare_ip_adapter_image_embeds(weights_dir: Path) -> None:
    pipe = make_pipe()
    adapter = fid.load_faceid(pipe, path=weights_dir)
    emb = buffalo(4)[0]
    (one,) = adapter.encode(emb)
    assert one.shape == (2, 1, 512) and one.dtype == torch.float32
    assert torch.equal(one[0], torch.zeros(1, 512))
    torch.testing.assert_close(one[1, 0], torch.tensor(emb.vector))
    for n in (1, 3):
        (prepared,) = pipe.prepare_ip_adapter_image_embeds(None, [one], "cpu", n, True)
        torch.testing.assert_close(adapter.encode(emb, num_images_per_prompt=n)[0], prepared)
    (no_cfg,) = adapter.encode(emb, do_classifier_free_guidance=False)
    assert no_cfg.shape == (1, 1, 512)
    # raw vectors are normalised; several vectors are several references of one person
    raw = np.stack([emb.vector * 3.0, buffalo(6)[0].vector])
    (refs,) = adapter.encode(raw)
    assert refs.shape == (2, 2, 512)
    torch.testing.assert_close(refs[1, 0], torch.tensor(emb.vector))
    images = run(pipe, adapter.encode(emb), num_images_per_prompt=2)
    assert images.shape == (2, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3)
    np.testing.assert_allclose(images[0], run(pipe, adapter.encode(emb))[0], atol=1e-5)


def test_refuses_other_encoders_and_bad_vectors() -> None:
    adapter = fid.IPAdapterFaceID()
    dlib = IdentityEmbedding(np.eye(128, dtype=np.float32)[0], "dlib-resnet-v1")
    with pytest.raises(IncompatibleEmbeddingError, match="dlib-resnet-v1"):
        adapter.encode(dlib)
    antelope = IdentityEmbedding(np.eye(512, dtype=np.float32)[0], "arcface-onnx/antelopev2")
    with pytest.raises(IncompatibleEmbeddingError, match="arcface-onnx/buffalo_l"):
        adapter.encode([antelope])
    raw_dlib = np.ones((1, 128), np.float32)
    with pytest.raises(IncompatibleEmbeddingError, match=r"\(N, 512\)"):
        adapter.encode(raw_dlib)
    with pytest.raises(IncompatibleEmbeddingError, match="finite"):
        adapter.encode(np.full((1, 512), np.nan, np.float32))
    with pytest.raises(IncompatibleEmbeddingError, match="zero vector"):
        adapter.encode(np.zeros(512, np.float32))
    unnormed = IdentityEmbedding(np.full(512, 2.0, np.float32), "arcface-onnx/buffalo_l", False)
    with pytest.raises(IncompatibleEmbeddingError, match="normalize"):
        adapter.encode(unnormed)
    with pytest.raises(ValueError, match="`num_images_per_prompt` must be a positive integer"):
        adapter.encode(buffalo()[0], num_images_per_prompt=0)


# --------------------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------------------


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network, and empty facegen / Hugging Face caches."""
    import huggingface_hub.constants as hc

    monkeypatch.setenv("FACEGEN_HOME", str(tmp_path / "fg"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf"))


def test_missing_weights_offline(offline: None) -> None:
    for name in (fid.FACEID_SD15_WEIGHTS, fid.FACEID_PLUSV2_SD15_WEIGHTS):
        with pytest.raises(ModelNotAvailableError) as ei:
            fid.load_faceid(make_pipe(), name)
        msg = str(ei.value)
        assert "h94/IP-Adapter-FaceID" in msg and name in msg and "offline" in msg
    with pytest.raises(ModelNotAvailableError, match="h94/IP-Adapter") as ei:
        fid.load_image_encoder()
    assert "models/image_encoder" in str(ei.value)


def test_missing_lora_file(tmp_path: Path, checkpoint: dict, offline: None) -> None:
    bare = fid.save_faceid_weights(fid._strip_lora(checkpoint), tmp_path / "w" / "mine.bin")
    with pytest.raises(ModelNotAvailableError) as ei:
        fid.load_faceid(make_pipe(), path=bare)
    assert fid.FACEID_SD15_LORA in str(ei.value) and "h94/IP-Adapter-FaceID" in str(ei.value)
    # lora=False needs no LoRA file
    fid.load_faceid(make_pipe(), path=bare, lora=False)


def test_bad_checkpoints(tmp_path: Path, unet, checkpoint: dict) -> None:
    # weights for another cross-attention size (e.g. an SDXL or SD2 file into SD1.5)
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        other = UNet2DConditionModel(**{**unet.config, "cross_attention_dim": 256})
    wrong = fid.save_faceid_weights(
        fid.faceid_state_dict_for(other, lora_rank=4), tmp_path / "a.bin"
    )
    with pytest.raises(InvalidModelError, match="cross-attention size 256"):
        fid.load_faceid(make_pipe(), path=wrong)
    # a missing key is named
    broken = fid._strip_lora(checkpoint)
    del broken["ip_adapter"]["3.to_v_ip.weight"]
    path = fid.save_faceid_weights(broken, tmp_path / "b.bin")
    with pytest.raises(InvalidModelError, match=r"missing ip_adapter\.3\.to_v_ip\.weight"):
        fid.load_faceid(make_pipe(), path=path, lora=False)
    # a FaceID file under the PlusV2 name
    path = fid.save_faceid_weights(checkpoint, tmp_path / "c.bin")
    with pytest.raises(InvalidModelError, match="FaceID-Plus image_proj"):
        fid.load_faceid(make_pipe(), fid.FACEID_PLUSV2_SD15_WEIGHTS, path=path)
    # pickles are read with weights_only=True: arbitrary objects are refused
    torch.save({"image_proj": {}, "ip_adapter": {}, "extra": Path("x")}, tmp_path / "d.bin")
    with pytest.raises(InvalidModelError, match="weights_only=True"):
        fid.load_faceid(make_pipe(), path=tmp_path / "d.bin")
    with pytest.raises(KeyError, match=r"ip-adapter-faceid_sd15\.bin"):
        fid.load_faceid(make_pipe(), "ip-adapter-faceid_sdxl.bin")
    with pytest.raises(ValueError, match="`pipe` must be a diffusers pipeline"):
        fid.load_faceid(object(), path=tmp_path / "c.bin")


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
# PlusV2 with a tiny CLIP image encoder
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip():
    from facegen.pipelines.generation.tiny import tiny_image_encoder

    return tiny_image_encoder(seed=0)


def test_plusv2_end_to_end(tmp_path: Path, unet, tiny_clip, hanks_path: Path) -> None:
    from facegen.align import align_face
    from facegen.image_io import load_image

    sd = fid.faceid_state_dict_for(
        unet, seed=4, variant="plusv2", lora_rank=4, clip_embeddings_dim=48
    )
    fid.save_faceid_weights(sd, tmp_path / fid.FACEID_PLUSV2_SD15_WEIGHTS)
    photo = load_image(hanks_path)
    kps = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]])
    crop = align_face(photo, kps * photo.shape[1] / 112.0, size=fid.FACE_CROP_SIZE)
    emb = buffalo(7)[0]

    ours = make_pipe()
    adapter = fid.load_faceid(
        ours, fid.FACEID_PLUSV2_SD15_WEIGHTS, path=tmp_path, image_encoder=tiny_clip
    )
    clip = adapter.encode_face_crops(crop)
    assert clip.shape == (2, 1, 17, 48)
    adapter.set_clip_embeds(ours, clip)
    a = run(ours, adapter.encode(emb))

    # diffusers' documented FaceID-Plus procedure on the same file
    theirs = make_pipe()
    theirs.register_modules(image_encoder=tiny_clip)
    theirs.load_ip_adapter(
        str(tmp_path),
        subfolder=None,
        weight_name=fid.FACEID_PLUSV2_SD15_WEIGHTS,
        image_encoder_folder=None,
    )
    # the documented procedure hands CLIP insightface's BGR norm_crop
    bgr = np.ascontiguousarray(crop.image[..., ::-1])
    (their_clip,) = theirs.prepare_ip_adapter_image_embeds([[bgr]], None, "cpu", 1, True)
    torch.testing.assert_close(clip, their_clip)
    layer = theirs.unet.encoder_hid_proj.image_projection_layers[0]
    layer.clip_embeds, layer.shortcut = their_clip, True
    ref = torch.cat([torch.zeros(1, 1, 512), torch.tensor(emb.vector)[None, None]])
    np.testing.assert_allclose(run(theirs, [ref]), a, atol=1e-5)

    adapter.set_clip_embeds(ours, clip, shortcut_scale=0.2)
    assert np.abs(run(ours, adapter.encode(emb)) - a).max() > 1e-4
    # two images per prompt need clip features for both
    adapter.set_clip_embeds(ours, adapter.encode_face_crops([crop], num_images=2))
    assert run(ours, adapter.encode(emb), num_images_per_prompt=2).shape[0] == 2

    with pytest.raises(ValueError, match="`clip_embeds` must have hidden size 48"):
        adapter.set_clip_embeds(ours, torch.zeros(2, 1, 17, 32))
    with pytest.raises(ValueError, match="'plusv2' variant"):
        fid.IPAdapterFaceID().encode_face_crops(crop)
    with pytest.raises(ValueError, match="`image_encoder` must be a CLIPVisionModelWithProjection"):
        fid.IPAdapterFaceID(variant="plusv2").encode_face_crops(crop)
    from facegen.errors import InvalidImageError

    with pytest.raises(InvalidImageError, match="RGB uint8"):
        adapter.encode_face_crops(np.zeros((8, 8), np.uint8))


def test_plusv2_face_crop_channel_order(
    tmp_path: Path, unet, tiny_clip, astronaut: np.ndarray
) -> None:
    """BGR by default (the published PlusV2 usage), RGB on request (the previous behaviour):
    CLIP features and the projected identity tokens equal those of the channel-reversed crop."""
    from facegen.align import align_face

    sd = fid.faceid_state_dict_for(
        unet, seed=4, variant="plusv2", lora_rank=None, clip_embeddings_dim=48
    )
    fid.save_faceid_weights(sd, tmp_path / fid.FACEID_PLUSV2_SD15_WEIGHTS)
    # scikit-image's astronaut, a colour photo (the Hanks photo is grey: both orders agree)
    kps = np.array([[200.0, 110.0], [240.0, 108.0], [222.0, 135.0], [204.0, 158.0], [238.0, 156.0]])
    crop = align_face(astronaut, kps, size=fid.FACE_CROP_SIZE)
    rgb_crop = crop.image
    bgr_crop = np.ascontiguousarray(rgb_crop[..., ::-1])
    assert np.abs(rgb_crop.astype(int) - bgr_crop).mean() > 5  # a colour photo: orders differ
    emb = buffalo(5)[0]

    def load(order: str | None):
        pipe = make_pipe()
        kw = {} if order is None else {"face_crop_channel_order": order}
        adapter = fid.load_faceid(
            pipe,
            fid.FACEID_PLUSV2_SD15_WEIGHTS,
            path=tmp_path,
            lora=False,
            image_encoder=tiny_clip,
            **kw,
        )
        return pipe, adapter

    def tokens(pipe, adapter, crops) -> torch.Tensor:
        adapter.set_clip_embeds(pipe, adapter.encode_face_crops(crops))
        with torch.no_grad():
            return pipe.unet.encoder_hid_proj(adapter.encode(emb))[0]

    # the encoder's own view of each crop, computed directly (diffusers' image processing)
    plain = fid.IPAdapterFaceID(
        variant="plusv2", image_encoder=tiny_clip, face_crop_channel_order="rgb"
    )
    feats_of_bgr = plain.encode_face_crops(bgr_crop)
    feats_of_rgb = plain.encode_face_crops(rgb_crop)
    assert (feats_of_bgr - feats_of_rgb).abs().max() > 1e-3

    pipe, default = load(None)
    assert default.face_crop_channel_order == "bgr"
    torch.testing.assert_close(default.encode_face_crops(crop), feats_of_bgr)
    torch.testing.assert_close(default.encode_face_crops(rgb_crop), feats_of_bgr)
    pipe_rgb, rgb = load("rgb")
    torch.testing.assert_close(rgb.encode_face_crops(crop), feats_of_rgb)

    # identity tokens through the PlusV2 projection: default == RGB setting on the reversed crop
    ours = tokens(pipe, default, [crop])
    torch.testing.assert_close(ours, tokens(pipe_rgb, rgb, [bgr_crop]))
    assert (ours - tokens(pipe_rgb, rgb, [crop])).abs().max() > 1e-4

    # the setting travels through save_pretrained / from_pretrained
    folder = rgb.save_pretrained(tmp_path / "saved", sd)
    assert (
        fid.IPAdapterFaceID.from_pretrained(
            folder, make_pipe(), lora=False, image_encoder=tiny_clip
        ).face_crop_channel_order
        == "rgb"
    )
    assert (
        fid.IPAdapterFaceID.from_pretrained(
            folder, make_pipe(), lora=False, image_encoder=tiny_clip, face_crop_channel_order="bgr"
        ).face_crop_channel_order
        == "bgr"
    )
    with pytest.raises(ValueError, match="`face_crop_channel_order` must be one of bgr, rgb"):
        fid.IPAdapterFaceID(variant="plusv2", face_crop_channel_order="RGB")
    with pytest.raises(ValueError, match="`face_crop_channel_order` must be one of bgr, rgb"):
        load("bgra")
    assert {c.variant: c.face_crop_channel_order for c in fid.checkpoints()}["plusv2"] == "bgr"


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


def test_save_pretrained_roundtrip(tmp_path: Path, unet) -> None:
    """A saved FaceID adapter: config.json + published-layout safetensors, read by facegen and diffusers."""
    import json

    from facegen.errors import InvalidModelError

    sd = fid.faceid_state_dict_for(unet, seed=9, lora_rank=None)
    folder = fid.IPAdapterFaceID().save_pretrained(tmp_path / "mine", sd)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["adapter"] == "IPAdapterFaceID" and cfg["encoder_ids"] == ["arcface-onnx/buffalo_l"]
    assert cfg["output_form"] == "ip_adapter_image_embeds" and cfg["variant"] == "faceid"
    emb = buffalo(3)[0]
    ours = make_pipe()
    adapter = fid.IPAdapterFaceID.from_pretrained(folder, ours, lora=False)
    a = run(ours, adapter.encode(emb))
    theirs = make_pipe()
    theirs.load_ip_adapter(
        str(folder),
        subfolder=None,
        weight_name=fid.IPAdapterFaceID.WEIGHTS_NAME,
        image_encoder_folder=None,
    )
    np.testing.assert_allclose(run(theirs, adapter.encode(emb)), a, atol=1e-6)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"adapter": "Arc2FaceIDEncoder"}')
    with pytest.raises(InvalidModelError, match="must be 'IPAdapterFaceID'"):
        fid.IPAdapterFaceID.from_pretrained(tmp_path / "other", ours)
