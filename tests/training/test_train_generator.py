"""``facegen train generator`` on tiny models (test doubles for the plumbing, never results).

Photos: the six faces of insightface's ``t1.jpg`` (the ``photos`` fixture of
``test_train_generative``), analysed by the real dlib detector and 128-D encoder. Models: the
``"scratch"`` starting point shrunk to 32×32 (space-to-depth latents 48 × 8 × 8, a two-level
UNet, a one-layer CLIP encoder of width 128), and facegen's ``tiny`` base for the fine-tune
path. What is checked: a run trains the text encoder and the UNet, keeps an EMA that is what
it saves, and resumes exactly; each part has its learning rate; the folder loads in plain
diffusers and through ``from_preset(PATH)`` and generates; the CLI runs end to end.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train_generative import (  # photos and caches: tests/training/conftest.py
    _one_thread_and_quiet,  # noqa: F401 - an autouse fixture
    components,
)

from facegen.embedding_io import load_embeddings
from facegen.errors import IncompatibleEmbeddingError, InvalidArgumentError, InvalidModelError
from facegen.training.diffusion.face_cache import FaceCache
from facegen.training.diffusion.generator import GeneratorTrainConfig, train_generator
from facegen.types import IdentityEmbedding

SIZE = 32
ENCODER = "dlib-resnet-v1"
#: the scratch model, small enough for seconds per run
SMALL = {
    "resolution": SIZE,
    "scratch_unet_channels": (32, 64),
    "scratch_text_width": 128,
    "scratch_text_layers": 1,
}


def settings(out: Path, photos: Path, cache: Path, **kw: Any) -> dict[str, Any]:
    base = {
        "output_dir": str(out),
        "data_dir": str(photos),
        "cache_dir": str(cache),
        **SMALL,
        "batch_size": 2,
        "max_steps": 4,
        "learning_rate": 1e-3,
        "checkpointing_steps": 0,
        "num_validation_images": 0,
        "validation_inference_steps": 2,
        "log_every": 10,
        "tensorboard": False,
    }
    return {**base, **kw}


def one_photo(photos: Path) -> Path:
    return sorted(photos.glob("*.png"))[0]


def test_scratch_generator_trains_both_parts_saves_the_ema_and_loads_as_a_preset(
    photos: Path, dlib_analyzer, caches: Path, tmp_path: Path
) -> None:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from facegen.pipelines.generation.presets import from_preset

    out = tmp_path / "gen"
    cfg = GeneratorTrainConfig(
        **settings(
            out, photos, caches / "s2d", max_steps=6, checkpointing_steps=6, ema_decay=0.9,
            num_validation_images=1, id_partial_drop_prob=0.3,
        )
    )  # fmt: skip
    res = train_generator(
        cfg, components={"analyzer": dlib_analyzer, **_scratch(cfg)}, progress=False
    )
    assert res.steps == 6 and len(res.losses) == 6 and all(np.isfinite(res.losses))
    assert res.weights == out and res.metadata == out / "facegen_generator.json"
    assert res.extras == {"encoder_id": ENCODER, "identity_dim": 128}
    assert [p.name for p in res.validation_images] == ["00.png"]
    # the checkpoint holds the trained weights and the EMA; the folder holds the EMA
    ckpt = out / "checkpoints" / "checkpoint-6"
    last, ema = load_file(ckpt / "trainable.safetensors"), load_file(ckpt / "ema.safetensors")
    unet = UNet2DConditionModel.from_pretrained(out, subfolder="unet").state_dict()
    te = CLIPTextModel.from_pretrained(out, subfolder="text_encoder").state_dict()
    start = _scratch(cfg)
    for prefix, saved, init in (
        ("unet.", unet, start["unet"].state_dict()),
        ("text_encoder.", te, start["text_encoder"].state_dict()),
    ):
        k = next(k for k in saved if k.endswith("weight") and "norm" not in k)
        assert torch.equal(saved[k], ema[prefix + k])  # the result is the EMA
        assert not torch.equal(ema[prefix + k], last[prefix + k])  # which lags the weights
        assert not torch.equal(last[prefix + k], init[k])  # both parts trained
    # the cache's latents are the space-to-depth encoding of its crops, so they decode back
    # to them exactly (a strided array once reached the shard scrambled)
    from facegen.pipelines.generation.space_to_depth import SpaceToDepthLatent

    shards = sorted((caches / "s2d").rglob("shard-*.safetensors"))
    assert shards
    for shard in shards:
        stored = load_file(shard)
        pixels = stored["pixels"].permute(0, 3, 1, 2).float() / 127.5 - 1
        decoded = SpaceToDepthLatent(factor=4).decode(stored["latents_mean"]).sample
        assert torch.allclose(decoded, pixels, atol=1e-6)
    info = json.loads(res.metadata.read_text())
    assert info["identity"] == {"encoder_ids": [ENCODER], "dim": 128, "normalized": True}
    assert info["vae"] == "space-to-depth" and info["unconditional"] == "zero-identity"
    assert info["training"]["weights"] == "ema" and info["training"]["steps"] == 6
    assert info["encoder"]["name"] == "dlib" and info["family"] == "scratch"
    assert info["training"]["training"]["id_partial_drop_prob"] == 0.3
    # the identity bank: every cached photo's vector with its person (the photo's folder),
    # and the thresholds of the dlib space (same-person cosine 0.925)
    cache = FaceCache(caches / "s2d")
    assert info["identity_bank"] == "identity_bank.safetensors"
    bank, names = load_embeddings(out / "identity_bank.safetensors")
    assert len(bank) == len(cache) and names == [Path(i.source).parent.name for i in cache.items]
    assert np.allclose(
        np.stack([e.vector for e in bank]), [e.vector for e in cache.identity_embeddings()]
    )
    assert info["dataset_defaults"] == {
        "min_similarity": 0.925,
        "leakage_threshold": 0.925,
        "identity_separation": 0.925,
        "max_similarity": 0.995,
    }
    # the scratch model writes centred identities into its token (dlib's vectors share a
    # large common direction); the centre is the training identities' mean, saved with it
    vecs = np.stack([e.normalize().vector for e in cache.identity_embeddings()])
    assert np.allclose(info["identity_center"], vecs.mean(0), atol=1e-6)
    pipe = from_preset(str(out), with_analyzer=False)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.id_encoder.identity_center == pytest.approx(tuple(vecs.mean(0)), abs=1e-6)
    assert pipe.identity_bank[0].shape == (len(cache), 128)
    assert pipe.preset_info.dataset_defaults == info["dataset_defaults"]
    # a scratch model predicts v (its inference scheduler says so, and the training target
    # came from the same config)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    ids = cache.identity_embeddings()[:2]
    faces = pipe(ids, seeds=[0, 1])
    assert faces.images[0].size == (SIZE, SIZE)
    with pytest.raises(IncompatibleEmbeddingError, match=ENCODER):
        vec = np.ones(128, np.float32) / np.sqrt(128)
        pipe([IdentityEmbedding(vec, "arcface-onnx/buffalo_l", True)], seeds=[0])


def test_float16_generator_is_half_the_size_and_loads_in_float32(
    photos: Path, dlib_analyzer, caches: Path, tmp_path: Path
) -> None:
    """``save_dtype="float16"`` stores half-precision weights (what the shipped model uses);
    they load as float32 and generate what the float32 weights generate, within rounding."""
    from safetensors import safe_open

    from facegen.pipelines.generation.presets import from_preset

    outs = {}
    for dtype in ("float32", "float16"):
        cfg = GeneratorTrainConfig(
            **settings(tmp_path / dtype, photos, caches / "s2d", max_steps=2, save_dtype=dtype)
        )
        train_generator(
            cfg, components={"analyzer": dlib_analyzer, **_scratch(cfg)}, progress=False
        )
        outs[dtype] = tmp_path / dtype
    for sub in ("unet", "text_encoder"):
        f32, f16 = (next((outs[d] / sub).glob("*.safetensors")) for d in ("float32", "float16"))
        with safe_open(str(f16), "pt") as f:
            names = list(f.keys())
            assert {f.get_slice(k).get_dtype() for k in names} == {"F16"}
        assert f16.stat().st_size < 0.55 * f32.stat().st_size
    ids = FaceCache(caches / "s2d").identity_embeddings()[:1]
    images = {}
    for dtype, out in outs.items():
        pipe = from_preset(str(out), with_analyzer=False)
        assert pipe.unet.dtype == torch.float32
        pipe.set_progress_bar_config(disable=True)
        images[dtype] = pipe(ids, seeds=[3], num_inference_steps=3, output_type="np").images
    diff = np.abs(images["float32"] - images["float16"])
    assert diff.mean() < 0.01 and diff.max() < 0.15  # rounding, not another image
    # a bank of another space in a generator's folder is refused when it loads
    from facegen.embedding_io import save_embeddings

    vec = np.ones(512, np.float32) / np.sqrt(512)
    save_embeddings(
        outs["float16"] / "identity_bank.safetensors",
        [IdentityEmbedding(vec, "arcface-onnx/x", True)],
    )
    with pytest.raises(InvalidModelError, match="512-D arcface-onnx/x"):
        from_preset(str(outs["float16"]), with_analyzer=False)


def _load(path: Path) -> Any:
    from facegen.image_io import load_image

    return load_image(path)


def _scratch(cfg: GeneratorTrainConfig) -> dict[str, Any]:
    from facegen.training.diffusion.generator import scratch_components

    return scratch_components(cfg, 128)


def test_resume_ends_like_an_unbroken_run_ema_included(
    photos: Path, dlib_analyzer, caches: Path, tmp_path: Path
) -> None:
    def run(out: Path, steps: int, every: int, resume: str | None = None) -> Any:
        cfg = GeneratorTrainConfig(
            **settings(
                out, photos, caches / "s2d", max_steps=steps, checkpointing_steps=every,
                resume_from_checkpoint=resume, ema_decay=0.9, num_workers=1,
            )
        )  # fmt: skip
        parts = {"analyzer": dlib_analyzer, **_scratch(cfg)}
        return train_generator(cfg, components=parts, progress=False)

    whole = run(tmp_path / "whole", 4, 0)
    first = run(tmp_path / "split", 2, 2)
    files = {p.name for p in (tmp_path / "split" / "checkpoints" / "checkpoint-2").iterdir()}
    assert {"trainable.safetensors", "ema.safetensors", "state.json"} <= files
    rest = run(tmp_path / "split", 4, 2, "latest")
    assert (rest.start_step, rest.steps) == (2, 4)
    assert first.losses + rest.losses == pytest.approx(whole.losses, abs=1e-6)
    for sub in ("unet", "text_encoder"):
        a = load_file(next((tmp_path / "whole" / sub).glob("*.safetensors")))
        b = load_file(next((tmp_path / "split" / sub).glob("*.safetensors")))
        assert a.keys() == b.keys()
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def test_fine_tunes_a_base_with_a_learning_rate_per_part(
    photos: Path, dlib_analyzer, caches: Path, tmp_path: Path
) -> None:
    from facegen.pipelines.generation.presets import from_preset

    parts = components(dlib_analyzer)  # the "tiny" base: AutoencoderKL, text width 512
    te0 = {k: v.clone() for k, v in parts["text_encoder"].state_dict().items()}
    unet0 = {k: v.clone() for k, v in parts["unet"].state_dict().items()}
    cfg = GeneratorTrainConfig(
        **settings(
            tmp_path / "ft", photos, caches / "tiny", base_model="tiny", max_steps=3,
            use_ema=False, text_encoder_learning_rate=1e-12, unet_learning_rate=1e-3,
            gradient_checkpointing=True,
        )
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = train_generator(cfg, components=parts, progress=False)
    # both parts recompute activations, through the name this transformers release prefers
    assert parts["unet"].is_gradient_checkpointing
    assert parts["text_encoder"].is_gradient_checkpointing
    assert not [w for w in caught if "checkpointing_enable" in str(w.message)]
    te_moved = max(
        float((v - te0[k]).abs().max()) for k, v in parts["text_encoder"].state_dict().items()
    )
    unet_moved = max(
        float((v - unet0[k]).abs().max()) for k, v in parts["unet"].state_dict().items()
    )
    assert te_moved < 1e-8 < 1e-4 < unet_moved
    info = json.loads(res.metadata.read_text())
    assert (info["vae"], info["family"], info["training"]["weights"]) == (
        "autoencoder-kl",
        "tiny",
        "last",
    )
    assert info["identity_center"] is None  # fine-tunes keep the base's raw-vector recipe
    pipe = from_preset(str(tmp_path / "ft"), with_analyzer=False)
    pipe.set_progress_bar_config(disable=True)
    vec = np.ones(128, np.float32) / np.sqrt(128)  # 128-D dlib, zero-padded into 512
    img = pipe([IdentityEmbedding(vec, ENCODER, True)], seeds=[0], height=SIZE, width=SIZE)
    assert img.images[0].size == (SIZE, SIZE)


def test_cli_trains_a_generator_and_generates_from_its_folder(
    photos: Path, caches: Path, tmp_path: Path, capsys
) -> None:
    from facegen.app.cli.main import main

    out, gen = tmp_path / "g", tmp_path / "images"
    conf = tmp_path / "small.json"
    conf.write_text(json.dumps({**SMALL, "cache_dir": str(caches / "s2d"), "tensorboard": False}))
    args = ["train", "generator", str(photos), "--out", str(out), "--config", str(conf)]
    args += ["--max-steps", "2", "--batch-size", "2", "--partial-drop-prob", "0.2", "--no-ema"]
    assert main(args) == 0
    assert "2 steps (from step 0)" in capsys.readouterr().out
    cfg = json.loads((out / "facegen_generator.json").read_text())["training"]["training"]
    assert (cfg["id_partial_drop_prob"], cfg["use_ema"], cfg["max_steps"]) == (0.2, False, 2)
    args = ["generate", "--preset", str(out), "--id-image", str(one_photo(photos))]
    args += ["--num-images", "1", "--steps", "2", "--out", str(gen), "--no-watermark"]
    assert main(args) == 0, capsys.readouterr().err
    pngs = sorted(gen.rglob("*.png"))
    assert len(pngs) == 1 and _load(pngs[0]).shape == (SIZE, SIZE, 3)
    with pytest.raises(SystemExit) as ei:  # a folder without a generator is no preset
        main(["generate", "--preset", str(tmp_path), "--random-identities", "1"])
    assert ei.value.code == 2 and "or a generator folder" in capsys.readouterr().err


def test_generator_config_validates(tmp_path: Path) -> None:
    base = {"output_dir": str(tmp_path), "data_dir": str(tmp_path)}
    assert GeneratorTrainConfig(**base).resolution == 64  # scratch's default
    assert GeneratorTrainConfig(**base).template == "arcface"
    assert (
        GeneratorTrainConfig(**base, base_model="arc2face").analyzer_defaults[1][0]
        == "arcface-onnx"
    )
    for bad, match in (
        ({"id_partial_drop_prob": 1.0}, "id_partial_drop_prob"),
        ({"id_drop_prob": -0.1}, "id_drop_prob"),
        ({"resolution": 40}, "multiple of 16"),
        ({"latent_factor": 3}, "power of two"),
        ({"scratch_unet_channels": (48,)}, "multiples of 32"),
        ({"text_encoder_learning_rate": 0.0}, "text_encoder_learning_rate"),
        ({"scratch_text_width": 100}, "multiple of 64"),
        ({"prediction_type": "sample"}, "prediction_type"),
    ):
        with pytest.raises(InvalidArgumentError, match=match):
            GeneratorTrainConfig(**base, **bad)
    cfg = GeneratorTrainConfig(**base, scratch_text_width=64)
    with pytest.raises(InvalidArgumentError, match="identity dimension"):
        _scratch(cfg)
    # the scratch model's text encoder learns 50× slower unless told (it washed the identity
    # out of the context at the UNet's rate); fine-tunes use --lr for both parts
    from facegen.training.diffusion.generator import _text_encoder_lr

    assert _text_encoder_lr(GeneratorTrainConfig(**base, learning_rate=5e-4)) == pytest.approx(1e-5)
    tiny = GeneratorTrainConfig(**base, base_model="tiny", learning_rate=5e-4)
    assert _text_encoder_lr(tiny) == 5e-4
    assert _text_encoder_lr(GeneratorTrainConfig(**base, text_encoder_learning_rate=3e-4)) == 3e-4
    eps = _scratch(GeneratorTrainConfig(**base, **SMALL, prediction_type="epsilon"))
    assert eps["scheduler"].config.prediction_type == "epsilon"
    back = GeneratorTrainConfig.from_dict(GeneratorTrainConfig(**base, **SMALL).to_dict())
    assert back.scratch_unet_channels == (32, 64)


def test_scratch_generator_on_orl_photos(orl_dir: Path, dlib_analyzer, tmp_path: Path) -> None:
    """ORL's small grey photos (92×112) go through the default face analysis (dlib), with
    identity morphs of them."""
    from facegen.pipelines.generation.presets import preset_info

    photos = tmp_path / "orl"
    photos.mkdir()
    for person in ("s10", "s11", "s12"):
        (photos / person).mkdir()
        for k in (1, 2):
            (photos / person / f"{k}.pgm").write_bytes((orl_dir / person / f"{k}.pgm").read_bytes())
    out = tmp_path / "gen"
    cfg = GeneratorTrainConfig(
        **settings(out, photos, tmp_path / "cache", max_steps=2, identity_morphs=3)
    )
    res = train_generator(
        cfg, components={"analyzer": dlib_analyzer, **_scratch(cfg)}, progress=False
    )
    assert res.steps == 2 and all(np.isfinite(res.losses))
    cache = FaceCache(tmp_path / "cache")
    # the six photos and three morphs of them are trained on …
    assert len(cache.identity_embeddings()) == 9 and cache.encoder_id == ENCODER
    assert sum("morph-" in item.source for item in cache.items) == 3
    assert sorted(p.name for p in cfg.morphs_dir.glob("morph-*")) == [
        f"morph-{k:05d}" for k in range(3)
    ]
    # … but the identity bank (sampling, leakage) holds the real photos only
    bank = load_file(out / "identity_bank.safetensors")["embeddings"]
    assert bank.shape == (6, 128)
    assert preset_info(str(out)).identity.encoder_ids == (ENCODER,)
