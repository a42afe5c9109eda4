"""The generative training loops on tiny random components (test doubles for the plumbing).

Photos: the six faces of insightface's ``t1.jpg``, each cut out into its own photo, analysed
by the real dlib detector (68 points) and encoder (128-D). Models: facegen's tiny
SD1.5-shaped components at 32×32 (16×16 latents), one CPU thread. What is checked: every loop
runs and overfits a fixed tiny set (the mean loss of the last steps is well below the first
steps'); a resumed run continues the step count and ends exactly where an unbroken run ends;
the outputs load with diffusers' own loaders and facegen's, and change the pipeline's output;
the metadata is written. Arc2Face conditioning needs 512-D vectors labelled as Arc2Face's
ArcFace: a fixed random projection of dlib's vectors stands in for that encoder.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from facegen.analyzer import FaceAnalyzer
from facegen.base import IdentityEncoder
from facegen.errors import IncompatibleEmbeddingError, InvalidArgumentError, UnknownNameError
from facegen.pipelines.generation.tiny import tiny_components
from facegen.training.diffusion.adapter import AdapterTrainConfig, train_adapter
from facegen.training.diffusion.components import accelerator_for
from facegen.training.diffusion.controlnet import ControlNetTrainConfig, train_controlnet
from facegen.training.diffusion.face_cache import CacheDataset, FaceCache, sample_latents
from facegen.training.diffusion.face_cache_build import build_face_cache
from facegen.training.diffusion.loop import latest_checkpoint
from facegen.training.diffusion.lora import LoraTrainConfig, train_lora
from facegen.types import IdentityEmbedding

SIZE = 32  # training resolution: 16×16 latents with the tiny VAE
PROMPT = "a photo of a person"


@pytest.fixture(autouse=True, scope="module")
def _one_thread_and_quiet() -> Iterator[None]:
    from diffusers.utils import logging as dlogging

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead
    dlogging.set_verbosity_error()
    dlogging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    yield
    torch.set_num_threads(threads)


@functools.cache
def _components() -> dict[str, Any]:
    return tiny_components(0)


def components(analyzer: Any = None) -> dict[str, Any]:
    """Fresh copies of the tiny components (the loops change the UNet in place)."""
    out = copy.deepcopy(_components())
    if analyzer is not None:
        out["analyzer"] = analyzer
    return out


class StandInArc2FaceEncoder(IdentityEncoder):
    """A fixed random 128→512 projection of dlib's vectors, labelled as Arc2Face's ArcFace."""

    encoder_id = "arcface-onnx/arc2face"
    dim = 512

    def __init__(self, dlib_encoder: IdentityEncoder) -> None:
        super().__init__()
        self._dlib = dlib_encoder
        self.input_size = dlib_encoder.input_size
        self._proj = np.random.default_rng(0).standard_normal((128, 512)).astype(np.float32)

    def align(self, image: np.ndarray, face: Any) -> Any:
        return self._dlib.align(image, face)

    def _forward(self, crops: np.ndarray) -> np.ndarray:
        return self._dlib._forward(crops) @ self._proj


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, t1_image: np.ndarray, dlib_analyzer) -> Path:
    """Six photos of six people (t1's faces with context), one with a caption file."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    faces = dlib_analyzer.detect(t1_image)
    assert len(faces) == 6
    h, w = t1_image.shape[:2]
    for i, f in enumerate(faces):
        cx, cy = (f.bbox[:2] + f.bbox[2:]) / 2
        r = 0.9 * max(f.width, f.height)
        box = (max(0, cx - r), max(0, cy - r), min(w, cx + r), min(h, cy + r))
        Image.fromarray(t1_image).crop(tuple(int(v) for v in box)).save(folder / f"p{i}.png")
    (folder / "p0.txt").write_text("a photo of a smiling person\n")
    return folder


@pytest.fixture(scope="module")
def arc_analyzer(dlib_analyzer) -> FaceAnalyzer:
    return FaceAnalyzer(dlib_analyzer.detector, None, StandInArc2FaceEncoder(dlib_analyzer.encoder))


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the loops keep their face caches: built by the first test, reused after."""
    return tmp_path_factory.mktemp("caches")


def common(out: Path, photos: Path, cache: Path, **kw: Any) -> dict[str, Any]:
    base = {
        "output_dir": str(out),
        "data_dir": str(photos),
        "cache_dir": str(cache),
        "base_model": "tiny",
        "resolution": SIZE,
        "batch_size": 2,
        "max_steps": 30,
        "learning_rate": 2e-3,
        "checkpointing_steps": 0,
        "num_validation_images": 1,
        "validation_inference_steps": 2,
        "log_every": 10,
        "tensorboard": False,
    }
    return {**base, **kw}


def assert_overfits(losses: list[float]) -> None:
    assert len(losses) == 30 and all(np.isfinite(losses))
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.9 * first, (first, last)


def unet_forward(unet: Any, **kw: Any) -> torch.Tensor:
    """One UNet call on fixed inputs (same seed every time)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, SIZE // 2, SIZE // 2, generator=g)
    text = torch.randn(2, 77, 512, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10, 500]), text, **kw).sample


def sd_pipe(cls: Any = None, **extra: Any) -> Any:
    from diffusers import StableDiffusionPipeline

    cls = cls or StableDiffusionPipeline
    pipe = cls(
        **components(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        **extra,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --------------------------------------------------------------------------- the face cache


def test_face_cache_holds_aligned_faces_identities_maps_and_latents(
    photos: Path, dlib_analyzer, tmp_path: Path
) -> None:
    from PIL import Image

    from facegen.control import LANDMARKS68_PARTS, render_landmarks68, transfer_landmarks

    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted(photos.iterdir()):
        (folder / p.name).write_bytes(p.read_bytes())
    Image.new("RGB", (64, 64), (128, 128, 128)).save(folder / "no_face.png")
    vae = _components()["vae"]
    cache = build_face_cache(
        folder, tmp_path / "cache", analyzer=dlib_analyzer, size=SIZE, vae=vae, flip=True
    )
    assert len(cache) == 6 and cache.index["skipped"] == [str(folder / "no_face.png")]
    assert (cache.encoder_id, cache.dim, cache.normalized) == ("dlib-resnet-v1", 128, True)
    assert set(cache.fields) >= {"pixels", "embeddings", "landmarks", "control", "latents_mean"}
    assert cache.captions[0] == "a photo of a smiling person" and cache.captions[1] is None
    pixels, control = cache.read("pixels"), cache.read("control")
    assert pixels.dtype == np.uint8 and pixels.shape == (6, SIZE, SIZE, 3)
    lit = control.reshape(-1, 3)[control.reshape(-1, 3).any(1)]
    colours = {c for _, _, c in LANDMARKS68_PARTS.values()}
    assert len(lit) > 0 and {tuple(c) for c in lit} <= colours  # only the map's colours
    lm = cache.read("landmarks")
    assert lm.shape == (6, 68, 2) and (lm > 0).all() and (lm < SIZE).all()  # aligned: inside
    # the same embedding as the analyzer gives for that photo, and the same map as the one
    # made at inference for a reference face (transfer_landmarks + render_landmarks68)
    face = dlib_analyzer.analyze(folder / "p3.png", select="largest")[0]
    assert cache.identity_embeddings()[3].similarity(face.embedding) > 0.9999
    moved = transfer_landmarks(face, size=SIZE, template="ffhq")
    np.testing.assert_array_equal(control[3], render_landmarks68(moved, SIZE))
    assert abs(np.linalg.norm(cache.mean_identity().vector) - 1) < 1e-5
    assert cache.read("latents_mean").shape == (6, 4, SIZE // 2, SIZE // 2)
    assert (cache.read("latents_std") > 0).all()
    # a dataset item and the latent sample drawn from it in the training step
    ds = CacheDataset(cache, ("latents", "embedding", "control", "caption"), random_flip=True)
    item = ds[0]
    assert item["control"].shape == (3, SIZE, SIZE) and item["control"].min() >= 0
    assert item["control"].max() <= 1 and item["caption"] == "a photo of a smiling person"
    batch = {k: torch.stack([ds[i][k] for i in range(2)]) for k in item if k != "caption"}
    assert sample_latents(batch, random_flip=True).shape == (2, 4, SIZE // 2, SIZE // 2)
    # reused while nothing changes, rebuilt when a setting does
    stamp = (tmp_path / "cache" / "index.json").stat().st_mtime_ns
    again = build_face_cache(
        folder, tmp_path / "cache", analyzer=dlib_analyzer, size=SIZE, vae=vae, flip=True
    )
    assert (tmp_path / "cache" / "index.json").stat().st_mtime_ns == stamp and len(again) == 6
    other = build_face_cache(folder, tmp_path / "cache", analyzer=dlib_analyzer, size=40)
    assert other.size == 40 and not other.has("latents_mean")
    with pytest.raises(InvalidArgumentError, match="latents_mean"):
        CacheDataset(other, ("latents",))


# --------------------------------------------------------------------------- LoRA


def test_lora_prompt_overfits_saves_diffusers_format_and_loads(
    photos: Path, dlib_analyzer, caches: Path, tmp_path: Path
) -> None:
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "lora"
    parts = components(dlib_analyzer)
    calls: list[int] = []
    cfg = LoraTrainConfig(
        **common(out, photos, caches / "dlib"),
        rank=4,
        alpha=8.0,
        instance_prompt="a photo of sks person",
    )
    result = train_lora(cfg, components=parts, progress=lambda s, n, logs: calls.append(s))
    assert_overfits(result.losses)
    assert calls == list(range(1, 31))
    assert result.weights == out / "pytorch_lora_weights.safetensors" and result.weights.is_file()
    meta = json.loads((out / "facegen_lora.json").read_text())
    assert meta["rank"] == 4 and meta["alpha"] == 8.0 and meta["steps"] == 30
    assert meta["trigger"] == "a photo of sks person" and meta["conditioning"] == "prompt"
    assert meta["target_modules"] == ["to_q", "to_k", "to_v", "to_out.0"]
    assert meta["identity_encoder"]["encoder_id"] == "dlib-resnet-v1"
    assert (out / meta["identity"]).is_file() and len(result.validation_images) == 1
    # six different people: every photo is flagged as unlike the others
    assert len(meta["identity_outliers"]) == 6
    assert all(o["median_similarity"] < 0.925 for o in meta["identity_outliers"])

    # diffusers' own loader reads the folder; the reloaded UNet is the trained one
    pipe = sd_pipe(StableDiffusionPipeline)
    base = unet_forward(pipe.unet)
    pipe.load_lora_weights(out)
    loaded = unet_forward(pipe.unet)
    trained = unet_forward(parts["unet"])
    assert (loaded - base).abs().max() > 1e-3
    torch.testing.assert_close(loaded, trained, atol=1e-5, rtol=1e-5)  # alpha 8 ≠ rank kept
    kw = {"num_inference_steps": 2, "height": SIZE, "width": SIZE, "output_type": "np"}
    with_lora = pipe("a photo of sks person", generator=torch.Generator().manual_seed(0), **kw)
    pipe.unload_lora_weights()
    without = pipe("a photo of sks person", generator=torch.Generator().manual_seed(0), **kw)
    assert np.abs(with_lora.images - without.images).max() > 1e-3


@pytest.mark.parametrize("through", ["installed", "peft-only"])
def test_lora_with_text_encoder_trains_both_and_loads_with_facegen(
    photos: Path,
    dlib_analyzer,
    caches: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    through: str,
) -> None:
    """``train_text_encoder``: both parts train, land in one file, and load back through
    :func:`load_lora` whatever transformers' peft integration thinks of the installed peft."""
    from diffusers import StableDiffusionPipeline

    from facegen.adapters.lora import load_lora

    if through == "peft-only":
        from transformers.integrations import peft as integration

        monkeypatch.setattr(integration, "MIN_PEFT_VERSION", "999.0.0")
    out = tmp_path / "lora-te"
    parts = components(dlib_analyzer)
    te_before = copy.deepcopy(parts["text_encoder"].state_dict())
    cfg = LoraTrainConfig(
        **{**common(out, photos, caches / "dlib"), "max_steps": 4, "num_validation_images": 0},
        rank=4,
        train_text_encoder=True,
    )
    result = train_lora(cfg, components=parts, progress=False)
    assert len(result.losses) == 4 and all(np.isfinite(result.losses))
    from safetensors.torch import load_file

    keys = load_file(result.weights)
    assert any(k.startswith("text_encoder.") and "q_proj.lora_A" in k for k in keys)
    assert any(k.startswith("unet.") for k in keys)
    te_b = [v for k, v in keys.items() if k.startswith("text_encoder.") and "lora_B" in k]
    assert max(float(v.abs().max()) for v in te_b) > 0  # B starts at zero: it trained
    meta = json.loads((out / "facegen_lora.json").read_text())
    assert meta["text_encoder_target_modules"] == ["q_proj", "k_proj", "v_proj", "out_proj"]
    # the frozen base weights of the text encoder did not move
    after = {k.replace(".base_layer", ""): v for k, v in parts["text_encoder"].state_dict().items()}
    for k, v in te_before.items():
        torch.testing.assert_close(after[k], v)

    pipe = sd_pipe(StableDiffusionPipeline)
    tokens = parts["tokenizer"](
        PROMPT, padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        base = pipe.text_encoder(tokens)[0]
    load_lora(pipe, out, adapter_name="me")
    assert pipe.get_list_adapters() == {"unet": ["me"], "text_encoder": ["me"]}
    with torch.no_grad():
        loaded = pipe.text_encoder(tokens)[0]
        parts["text_encoder"].eval()
        trained = parts["text_encoder"](tokens)[0]
    assert (loaded - base).abs().max() > 1e-4
    torch.testing.assert_close(loaded, trained, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        unet_forward(pipe.unet), unet_forward(parts["unet"]), atol=1e-5, rtol=1e-5
    )


def test_lora_text_encoder_training_is_for_prompt_conditioning(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="train_text_encoder"):
        LoraTrainConfig(
            output_dir=str(tmp_path),
            data_dir=str(tmp_path),
            base_model="arc2face",
            train_text_encoder=True,
        )


def test_lora_flags_a_photo_of_someone_else(
    orl_dir: Path, photos: Path, dlib_analyzer, tmp_path: Path
) -> None:
    from PIL import Image

    from facegen.training.diffusion.lora import _identity_outliers

    folder = tmp_path / "one_person"
    folder.mkdir()
    for i in range(1, 6):  # ORL s10: one person, 92×112 grey, upscaled ×2 for the detector
        img = Image.open(orl_dir / "s10" / f"{i}.pgm").convert("RGB")
        img.resize((184, 224), Image.BICUBIC).save(folder / f"s10_{i}.png")
    cache = build_face_cache(folder, tmp_path / "c1", analyzer=dlib_analyzer, size=SIZE)
    assert len(cache) == 5 and _identity_outliers(cache, 0.925) == []
    (folder / "zz_other.png").write_bytes((photos / "p2.png").read_bytes())
    cache = build_face_cache(folder, tmp_path / "c2", analyzer=dlib_analyzer, size=SIZE)
    flagged = _identity_outliers(cache, 0.925)
    assert [Path(o["source"]).name for o in flagged] == ["zz_other.png"]


def test_lora_arc2face_identity_with_prior_preservation(
    photos: Path, arc_analyzer, caches: Path, tmp_path: Path
) -> None:
    from facegen.embedding_io import load_embeddings
    from facegen.pipelines.generation.id_to_face import IDToFacePipeline

    out = tmp_path / "arc_lora"
    cfg = LoraTrainConfig(
        **common(out, photos, caches / "arc", max_steps=4, num_validation_images=0),
        conditioning="arc2face",
        with_prior_preservation=True,
        num_class_images=2,
        rank=4,
    )
    assert cfg.template == "arcface"
    result = train_lora(cfg, components=components(arc_analyzer), progress=False)
    assert result.steps == 4 and all(np.isfinite(result.losses))
    classes = out / "class_images"
    assert sorted(p.name for p in classes.glob("*.png")) == ["class-00000.png", "class-00001.png"]
    ids, names = load_embeddings(classes / "identities.safetensors")
    assert names == ["class-00000.png", "class-00001.png"]
    assert ids[0].encoder_id == "arcface-onnx/arc2face"
    meta = json.loads((out / "facegen_lora.json").read_text())
    assert meta["conditioning"] == "arc2face" and meta["trigger"] is None
    assert meta["prior_preservation"] and meta["identity_encoder"]["dim"] == 512
    (identity,), _ = load_embeddings(out / "identity.safetensors")
    assert identity.encoder_id == "arcface-onnx/arc2face"

    pipe = sd_pipe(IDToFacePipeline)
    kw = {
        "seeds": [3],
        "num_inference_steps": 2,
        "height": SIZE,
        "width": SIZE,
        "output_type": "np",
    }
    before = pipe(id_embeds=[identity], **kw).images
    pipe.load_lora_weights(out)
    after = pipe(id_embeds=[identity], **kw).images
    assert np.abs(after - before).max() > 1e-4


# --------------------------------------------------------------------------- adapter


def test_adapter_for_dlib_overfits_and_loads_with_diffusers_and_facegen(
    photos: Path, dlib_analyzer, caches: Path, tmp_path: Path
) -> None:
    from safetensors import safe_open

    from facegen.adapters.ip_adapter_faceid import (
        FACEID_SD15_WEIGHTS,
        IPAdapterFaceID,
        load_faceid,
    )
    from facegen.pipelines.generation.id_text_to_face import IDTextToFacePipeline

    out = tmp_path / "adapter"
    parts = components(dlib_analyzer)
    cfg = AdapterTrainConfig(**common(out, photos, caches / "dlib"), lora_rank=4)
    result = train_adapter(cfg, components=parts, progress=False)
    assert_overfits(result.losses)
    assert result.weights == out / "ip-adapter-faceid_dlib-resnet-v1.safetensors"
    with safe_open(str(result.weights), "pt") as f:
        keys = set(f.keys())
        assert f.get_slice("image_proj.proj.0.weight").get_shape() == [256, 128]
        assert f.get_slice("image_proj.proj.2.weight").get_shape() == [4 * 512, 256]
    assert {"ip_adapter.1.to_k_ip.weight", "ip_adapter.1.to_q_lora.down.weight"} <= keys
    assert all(k.startswith(("image_proj.", "ip_adapter.")) for k in keys)
    cfg_json = json.loads((out / "config.json").read_text())
    assert cfg_json["adapter"] == "IPAdapterFaceID" and cfg_json["encoder_ids"] == [
        "dlib-resnet-v1"
    ]
    assert cfg_json["identity_dim"] == 128 and cfg_json["normalized"] is True
    assert cfg_json["lora"] is True and cfg_json["lora_rank"] == 4 and cfg_json["steps"] == 30

    ids = FaceCache(caches / "dlib").identity_embeddings()
    vecs = torch.from_numpy(np.stack([e.vector for e in ids[:2]]))[:, None]
    trained = unet_forward(parts["unet"], added_cond_kwargs={"image_embeds": [vecs]})
    # diffusers' own loader: the reloaded UNet (adapter + its LoRA) is the trained one
    pipe = sd_pipe()
    pipe.load_ip_adapter(
        out, subfolder=None, weight_name=result.weights.name, image_encoder_folder=None
    )
    loaded = unet_forward(pipe.unet, added_cond_kwargs={"image_embeds": [vecs]})
    torch.testing.assert_close(loaded, trained, atol=1e-5, rtol=1e-5)

    # facegen: the ID + text pipeline generates from dlib embeddings, refuses other encoders
    text = sd_pipe(IDTextToFacePipeline)
    text.faceid = IPAdapterFaceID.from_pretrained(out, text)
    assert (
        text.faceid.identity.encoder_ids == ("dlib-resnet-v1",) and text.faceid.identity.dim == 128
    )
    kw = {
        "prompt": PROMPT,
        "seeds": [1, 2],
        "num_inference_steps": 2,
        "height": SIZE,
        "width": SIZE,
    }
    a = text(ids[:2], output_type="np", **kw).images
    text.set_identity_scale(0.0)
    b = text(ids[:2], output_type="np", **kw).images
    assert a.shape == (2, SIZE, SIZE, 3) and np.abs(a - b).max() > 1e-3
    other = IdentityEmbedding(np.ones(512, np.float32) / np.sqrt(512), "arcface-onnx/buffalo_l")
    with pytest.raises(IncompatibleEmbeddingError, match="dlib-resnet-v1"):
        text([other], **kw)
    # load_faceid reads the file directly (its identity size from the weights)
    assert load_faceid(sd_pipe(), FACEID_SD15_WEIGHTS, path=result.weights).identity.dim == 128


def test_resume_continues_the_step_count_and_ends_like_an_unbroken_run(
    photos: Path, dlib_analyzer, caches: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from facegen.adapters.ip_adapter_faceid import IPAdapterFaceID
    from facegen.pipelines.generation.id_text_to_face import IDTextToFacePipeline

    def run(out: Path, steps: int, every: int, resume: str | None = None) -> Any:
        cfg = AdapterTrainConfig(
            **common(
                out,
                photos,
                caches / "dlib",
                max_steps=steps,
                checkpointing_steps=every,
                checkpoints_total_limit=2,
                resume_from_checkpoint=resume,
                num_validation_images=0,
                num_workers=1,
            )
        )
        return train_adapter(cfg, components=components(dlib_analyzer), progress=False)

    whole = run(tmp_path / "whole", 5, 0)
    first = run(tmp_path / "split", 3, 2)
    ckpts = tmp_path / "split" / "checkpoints"
    assert [p.name for p in first.checkpoints] == ["checkpoint-2", "checkpoint-3"]
    assert latest_checkpoint(tmp_path / "split") == ckpts / "checkpoint-3"
    files = {p.name for p in (ckpts / "checkpoint-3").iterdir()}
    assert files == {
        "trainable.safetensors",  # only the trainable parameters, not the frozen UNet
        "optimizer.safetensors",
        "optimizer.json",
        "scheduler.json",
        "rng_0.safetensors",
        "rng_0.json",
        "state.json",
    }
    assert json.loads((ckpts / "checkpoint-3" / "state.json").read_text())["counters"] == {
        "global_step": 3
    }
    rest = run(tmp_path / "split", 5, 2, "latest")
    assert (rest.start_step, rest.steps) == (3, 5) and len(rest.losses) == 2
    assert first.losses + rest.losses == pytest.approx(whole.losses, abs=1e-6)
    a, b = load_file(whole.weights), load_file(rest.weights)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-4", "checkpoint-5"]  # limit 2
    # an adapter without LoRA loads without one (its config says so)
    pipe = sd_pipe(IDTextToFacePipeline)
    pipe.faceid = IPAdapterFaceID.from_pretrained(tmp_path / "split", pipe)
    assert json.loads((tmp_path / "split" / "config.json").read_text())["lora"] is False
    assert not (getattr(pipe.unet, "peft_config", None) or {})
    done = run(tmp_path / "split", 5, 2, str(ckpts / "checkpoint-5"))  # nothing left to do
    assert (done.start_step, done.steps, done.losses) == (5, 5, [])
    with pytest.raises(InvalidArgumentError, match="resume_from_checkpoint"):
        run(tmp_path / "split", 6, 2, str(tmp_path / "nowhere"))


# --------------------------------------------------------------------------- ControlNet


def test_controlnet_arc2face_overfits_and_loads(
    photos: Path, arc_analyzer, caches: Path, tmp_path: Path
) -> None:
    from diffusers import ControlNetModel
    from PIL import Image

    from facegen.hub import load_pretrained
    from facegen.pipelines.generation.id_to_face import IDToFaceControlNetPipeline

    out = tmp_path / "controlnet"
    cfg = ControlNetTrainConfig(**common(out, photos, caches / "arc", learning_rate=1e-3))
    assert cfg.conditioning == "prompt"  # the tiny base: prompt unless told otherwise
    cfg = ControlNetTrainConfig.from_dict({**cfg.to_dict(), "conditioning": "arc2face"})
    assert cfg.template == "arcface"
    result = train_controlnet(cfg, components=components(arc_analyzer), progress=False)
    assert_overfits(result.losses)
    assert (out / "diffusion_pytorch_model.safetensors").is_file()
    meta = json.loads((out / "facegen_controlnet.json").read_text())
    assert meta["control"] == "landmarks68" and meta["crop_template"] == "arcface"
    assert meta["conditioning"] == "arc2face" and meta["encoder_id"] == "arcface-onnx/arc2face"
    assert meta["resolution"] == SIZE and meta["steps"] == 30

    trained = ControlNetModel.from_pretrained(out)
    as_preset = load_pretrained(
        ControlNetModel, str(out), None, local_files_only=True
    )  # the preset's call
    cache = FaceCache(caches / "arc")
    control = Image.fromarray(cache.row(0, ("control",))["control"])
    identity = cache.identity_embeddings()[:1]
    kw = {
        "control_image": control,
        "seeds": [0],
        "num_inference_steps": 2,
        "height": SIZE,
        "width": SIZE,
    }
    images = []
    for cn in (
        trained,
        as_preset,
        ControlNetModel.from_unet(
            _components()["unet"], conditioning_embedding_out_channels=(16, 32)
        ),
    ):
        pipe = sd_pipe(IDToFaceControlNetPipeline, controlnet=cn)
        images.append(pipe(identity, output_type="np", **kw).images)
    np.testing.assert_allclose(images[0], images[1], atol=1e-6)
    assert np.abs(images[0] - images[2]).max() > 1e-3  # a fresh ControlNet does nothing yet


# --------------------------------------------------------------------------- configs


def test_configs_validate_and_round_trip(tmp_path: Path) -> None:
    base = {"output_dir": str(tmp_path), "data_dir": str(tmp_path)}
    for cls in (LoraTrainConfig, AdapterTrainConfig, ControlNetTrainConfig):
        cfg = cls(**base)
        assert cls.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
        with pytest.raises(UnknownNameError, match="learning_rat"):
            cls.from_dict({**base, "learning_rat": 1e-4})
        with pytest.raises(InvalidArgumentError, match="`max_steps` must be an integer >= 1"):
            cls(**base, max_steps=0)
        with pytest.raises(InvalidArgumentError, match="`mixed_precision`"):
            cls(**base, mixed_precision="fp8")
        with pytest.raises(UnknownNameError, match="LR scheduler"):
            cls(**base, lr_scheduler="sometimes")
        with pytest.raises(InvalidArgumentError, match="`resolution` must be a multiple of 8"):
            cls(**base, resolution=100)
    assert LoraTrainConfig(**base).conditioning == "prompt"
    assert LoraTrainConfig(**base, base_model="arc2face").conditioning == "arc2face"
    assert ControlNetTrainConfig(**base).conditioning == "arc2face"
    lora = LoraTrainConfig.from_dict({**base, "target_modules": ["to_q", "to_v"], "rank": 8})
    assert lora.target_modules == ("to_q", "to_v") and lora.lora_alpha == 8.0
    with pytest.raises(InvalidArgumentError, match="`conditioning`"):
        LoraTrainConfig(**base, conditioning="text")
    with pytest.raises(InvalidArgumentError, match="`rank`"):
        LoraTrainConfig(**base, rank=0)
    with pytest.raises(InvalidArgumentError, match="`lora_rank`"):
        AdapterTrainConfig(**base, lora_rank=0)
    with pytest.raises(InvalidArgumentError, match="`weight_name`"):
        AdapterTrainConfig(**base, weight_name="../x.bin")
    with pytest.raises(InvalidArgumentError, match="`proportion_empty_prompts`"):
        ControlNetTrainConfig(**base, proportion_empty_prompts=2)
    with pytest.raises(InvalidArgumentError, match="`components` must hold"):
        train_adapter(AdapterTrainConfig(**base), components={"unet": None})


def test_runs_in_one_process_may_change_precision(tmp_path: Path) -> None:
    """An app or notebook trains several times: accelerate's process-wide state follows."""
    for mp in ("bf16", "no"):
        cfg = AdapterTrainConfig(
            output_dir=str(tmp_path), data_dir=str(tmp_path), mixed_precision=mp
        )
        assert accelerator_for(cfg).mixed_precision == mp


def test_tiny_base_gets_settings_that_fit_it(tmp_path: Path) -> None:
    """A random tiny base trains at 64 px with short validations unless told otherwise
    (at SD1.5's 512 px one tiny step takes ~60× longer on a CPU); real bases keep 512."""
    tiny = LoraTrainConfig(output_dir=str(tmp_path), data_dir=str(tmp_path), base_model="tiny")
    assert tiny.resolution == 64 and tiny.validation_inference_steps == 4
    real = LoraTrainConfig(output_dir=str(tmp_path), data_dir=str(tmp_path))
    assert real.resolution == 512 and real.validation_inference_steps == 25
    asked = LoraTrainConfig(
        output_dir=str(tmp_path), data_dir=str(tmp_path), base_model="tiny", resolution=128
    )
    assert asked.resolution == 128
    again = LoraTrainConfig.from_dict(tiny.to_dict())
    assert again.resolution == 64


def test_a_second_run_into_the_same_output_folder_is_refused(
    photos: Path, caches: Path, tmp_path: Path
) -> None:
    """Another process training into ``out`` holds its lock: this run fails at once, naming
    it; once that process is gone, the folder is free again."""
    import subprocess
    import sys

    from facegen.errors import FolderLockedError

    out = tmp_path / "shared"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from facegen.locks import folder_lock\n"
            f"with folder_lock({str(out)!r}, what='train lora'):\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        cfg = LoraTrainConfig(**{**common(out, photos, caches / "dlib"), "max_steps": 1})
        with pytest.raises(FolderLockedError) as info:
            train_lora(cfg, components=components(), progress=False)
        msg = str(info.value)
        assert f"PID {holder.pid}" in msg and "train lora" in msg and "\n" not in msg
    finally:
        holder.kill()
        holder.wait()
    cfg = LoraTrainConfig(
        **{**common(out, photos, caches / "dlib"), "max_steps": 1, "num_validation_images": 0}
    )
    assert train_lora(cfg, components=components(), progress=False).steps == 1
