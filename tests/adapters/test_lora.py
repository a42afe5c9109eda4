"""LoRA helpers on a tiny, random SD1.5-shaped pipeline (a test double for the plumbing).

Every comparison runs the same prompt, 64×64, 2 steps (4 with LCM), guidance 1, with a fixed
generator, so two outputs are equal exactly when the UNet and text encoder compute the same
function.
Tolerances: a LoRA written and read back must give the in-memory result to 1e-5; fusing
adds ``scale·B·A`` into float32 weights and unfusing subtracts it again, which leaves
rounding differences, hence 1e-4 there; unloading swaps the original layers back, so
the base output comes back bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from facegen import hub
from facegen.adapters.lora import (
    disable_lcm,
    enable_lcm,
    fuse_loras,
    is_lcm_enabled,
    list_loras,
    load_lora,
    lora_presets,
    save_lora,
    set_lora_scales,
    unfuse_loras,
    unload_loras,
)
from facegen.errors import InvalidModelError, ModelNotAvailableError, UnknownNameError
from facegen.pipelines.generation.tiny import TINY_IMAGE_SIZE, tiny_components

PROMPT = "photo of a person"
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def make_pipe() -> Any:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        **tiny_components(seed=0),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe: Any, **kwargs: Any) -> np.ndarray:
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("guidance_scale", 1.0)  # no classifier-free guidance: half the compute
    out = pipe(
        PROMPT,
        height=TINY_IMAGE_SIZE,
        width=TINY_IMAGE_SIZE,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
    return np.asarray(out.images)


def add_random_lora(model: Any, name: str, *, seed: int, rank: int = 4, alpha: int = 8) -> None:
    """A peft LoRA with random A and B (``init_lora_weights=False``), so it changes outputs."""
    from peft import LoraConfig

    torch.manual_seed(seed)
    model.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights=False),
        adapter_name=name,
    )


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for these tiny models, restored afterwards.

    They are overhead-bound: a 2-step run takes ~0.2 s of CPU on one thread, but several
    times that on two when other processes share the cores (OpenMP workers spin and wait).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base_out() -> np.ndarray:
    return run(make_pipe())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A LoRA 'trained' in memory (rank 4, alpha 8), saved by save_lora, and its output."""
    pipe = make_pipe()
    add_random_lora(pipe.unet, "trained", seed=1)
    out = run(pipe)
    path = save_lora(pipe.unet, tmp_path_factory.mktemp("lora") / "trained.safetensors")
    return path, out


@pytest.fixture(scope="module")
def half_out(trained: tuple[Path, np.ndarray]) -> np.ndarray:
    """Output with the trained LoRA at scale 0.5."""
    pipe = make_pipe()
    load_lora(pipe, trained[0], adapter_name="trained", scale=0.5)
    return run(pipe)


@pytest.fixture(scope="module")
def other_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pipe = make_pipe()
    add_random_lora(pipe.unet, "other", seed=2, rank=2, alpha=2)
    return save_lora(pipe, tmp_path_factory.mktemp("other"))


@pytest.fixture()
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty facegen home and Hugging Face cache, offline."""
    import huggingface_hub.constants as c

    monkeypatch.setenv("FACEGEN_HOME", str(tmp_path / "fg"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def test_saved_lora_reads_back_with_rank_alpha_and_output(
    trained: tuple[Path, np.ndarray], base_out: np.ndarray
) -> None:
    from safetensors import safe_open

    path, in_memory = trained
    assert np.abs(in_memory - base_out).max() > 1e-2  # the random LoRA does change the image
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    assert keys and all(k.startswith("unet.") and ".lora_" in k for k in keys)
    assert '"unet.lora_alpha": 8' in meta["lora_adapter_metadata"]
    pipe = make_pipe()
    assert load_lora(pipe, path, adapter_name="trained") == path
    assert list_loras(pipe) == {"trained": 1.0}
    np.testing.assert_allclose(run(pipe), in_memory, atol=1e-5, rtol=0)


def force_peft_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make transformers' adapter integration ask for a peft that does not exist, as
    transformers 5.24 does with peft 0.21 (its ``MIN_PEFT_VERSION`` is 0.22.0)."""
    from transformers.integrations import peft as integration

    monkeypatch.setattr(integration, "MIN_PEFT_VERSION", "999.0.0")


@pytest.mark.parametrize("through", ["installed", "peft-only"])
def test_text_encoder_adapter_is_saved_and_loaded_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, through: str
) -> None:
    """``load_lora_weights`` with text-encoder keys works with every peft facegen allows:
    with the installed transformers as it is, and when its integration refuses the peft."""
    from peft import LoraConfig

    from facegen.adapters.peft_compat import add_lora_adapter, integration_refuses_peft

    if through == "peft-only":
        force_peft_only(monkeypatch)
        assert integration_refuses_peft() == "999.0.0"
    pipe = make_pipe()
    add_random_lora(pipe.unet, "both", seed=3)
    torch.manual_seed(4)
    config = LoraConfig(
        r=2, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]
    )
    config.init_lora_weights = False
    add_lora_adapter(pipe.text_encoder, config, "both")
    in_memory = run(pipe)
    path = save_lora(pipe, tmp_path)  # a folder: pytorch_lora_weights.safetensors
    assert path == tmp_path / "pytorch_lora_weights.safetensors"
    fresh = make_pipe()
    load_lora(fresh, tmp_path, adapter_name="both")
    assert "load_adapter" not in vars(fresh.text_encoder)  # the stand-in is gone again
    assert fresh.get_list_adapters() == {"unet": ["both"], "text_encoder": ["both"]}
    np.testing.assert_allclose(run(fresh), in_memory, atol=1e-5, rtol=0)
    # scales, a second adapter and unloading keep working on the text encoder
    assert set_lora_scales(fresh, {"both": 0.0}) == {"both": 0.0}
    np.testing.assert_array_equal(run(fresh), run(make_pipe()))
    unload_loras(fresh)
    assert list_loras(fresh) == {}
    load_lora(fresh, tmp_path, adapter_name="again", scale=1.0)
    np.testing.assert_allclose(run(fresh), in_memory, atol=1e-5, rtol=0)


def test_text_encoder_keys_that_match_nothing_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file, save_file

    from facegen.adapters.peft_compat import add_lora_adapter

    force_peft_only(monkeypatch)
    from peft import LoraConfig

    pipe = make_pipe()
    add_random_lora(pipe.unet, "x", seed=1)
    add_lora_adapter(pipe.text_encoder, LoraConfig(r=2, target_modules=["q_proj"]), "x")
    path = save_lora(pipe, tmp_path)
    sd = load_file(path)
    wider = {
        k: (
            torch.zeros(v.shape[0], v.shape[1] + 3)
            if k.startswith("text_encoder") and "lora_A" in k
            else v
        )
        for k, v in sd.items()
    }
    save_file(wider, path)
    with pytest.raises(InvalidModelError, match="could not load this LoRA"):
        load_lora(make_pipe(), path, adapter_name="x")


def test_scale_zero_is_the_base_and_unload_restores_it_exactly(
    trained: tuple[Path, np.ndarray], half_out: np.ndarray, base_out: np.ndarray
) -> None:
    path, full = trained
    assert np.abs(half_out - base_out).max() > 1e-3 and np.abs(half_out - full).max() > 1e-3
    pipe = make_pipe()
    load_lora(pipe, path, adapter_name="trained", scale=0.0)
    assert list_loras(pipe) == {"trained": 0.0}
    np.testing.assert_array_equal(run(pipe), base_out)
    assert set_lora_scales(pipe, {"trained": 0.5}) == {"trained": 0.5}
    unload_loras(pipe)
    assert list_loras(pipe) == {}
    np.testing.assert_array_equal(run(pipe), base_out)


def test_fuse_then_unfuse_restores_the_weights(
    trained: tuple[Path, np.ndarray], half_out: np.ndarray, base_out: np.ndarray
) -> None:
    path, full = trained
    pipe = make_pipe()
    original = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    load_lora(pipe, path, adapter_name="trained", scale=0.5)
    assert fuse_loras(pipe, scale=2.0) == ["trained"]
    assert pipe.fused_loras == {"trained"}
    assert list_loras(pipe) == {"trained": 1.0}  # fused at 0.5 × 2
    np.testing.assert_allclose(run(pipe), full, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="unfuse_loras"):
        set_lora_scales(pipe, {"trained": 1.0})
    with pytest.raises(ValueError, match="unfuse_loras"):
        load_lora(pipe, path, adapter_name="late")
    with pytest.raises(ValueError, match="fused"):
        unload_loras(pipe, "trained")

    unfuse_loras(pipe)
    assert pipe.fused_loras == set()
    assert list_loras(pipe) == {"trained": 0.5}  # diffusers alone would leave 1.0 here
    np.testing.assert_allclose(run(pipe), half_out, atol=1e-4, rtol=0)
    now = {k.replace(".base_layer", ""): v for k, v in pipe.unet.state_dict().items()}
    drift = max((now[k] - v).abs().max().item() for k, v in original.items())
    assert drift < 1e-5
    unload_loras(pipe)
    np.testing.assert_allclose(run(pipe), base_out, atol=1e-4, rtol=0)


def test_fuse_then_unload_bakes_the_lora_in(trained: tuple[Path, np.ndarray]) -> None:
    path, full = trained
    pipe = make_pipe()
    load_lora(pipe, path, adapter_name="trained")
    fuse_loras(pipe)
    unload_loras(pipe)
    assert list_loras(pipe) == {}
    np.testing.assert_allclose(run(pipe), full, atol=1e-4, rtol=0)
    load_lora(pipe, path, adapter_name="again", scale=0.0)  # nothing counts as fused any more
    assert list_loras(pipe) == {"again": 0.0}


def test_two_adapters_keep_their_own_scales(
    trained: tuple[Path, np.ndarray], other_lora: Path, base_out: np.ndarray
) -> None:
    path, full = trained
    only_other = make_pipe()
    load_lora(only_other, other_lora, adapter_name="other", scale=0.5)
    ref_other = run(only_other)

    pipe = make_pipe()
    load_lora(pipe, path, adapter_name="trained")
    load_lora(pipe, other_lora, adapter_name="other", scale=0.5)
    # diffusers activates only the newest adapter after a load; both must act here
    assert pipe.get_active_adapters() == ["trained", "other"]
    assert list_loras(pipe) == {"trained": 1.0, "other": 0.5}
    both = run(pipe)
    assert np.abs(both - full).max() > 1e-3 and np.abs(both - ref_other).max() > 1e-3

    assert set_lora_scales(pipe, {"trained": 0.0}) == {"trained": 0.0, "other": 0.5}
    np.testing.assert_allclose(run(pipe), ref_other, atol=1e-5, rtol=0)
    set_lora_scales(pipe, {"trained": 0.0, "other": 0.0})
    np.testing.assert_array_equal(run(pipe), base_out)

    set_lora_scales(pipe, {"trained": 1.0, "other": 0.5})
    with pytest.raises(ValueError, match="must include every LoRA with a non-zero scale"):
        fuse_loras(pipe, ["trained"])
    unload_loras(pipe, ["trained"])
    assert list_loras(pipe) == {"other": 0.5}
    np.testing.assert_allclose(run(pipe), ref_other, atol=1e-5, rtol=0)


def test_names_are_checked(trained: tuple[Path, np.ndarray], other_lora: Path) -> None:
    path, _ = trained
    pipe = make_pipe()
    load_lora(pipe, path, adapter_name="trained")
    load_lora(pipe, other_lora, adapter_name="other")
    with pytest.raises(ValueError, match=r"must be unique.*loaded: trained, other"):
        load_lora(pipe, path, adapter_name="other")
    with pytest.raises(UnknownNameError, match=r"'nope'; valid names: other, trained"):
        set_lora_scales(pipe, {"nope": 1.0})
    with pytest.raises(UnknownNameError, match="other, trained"):
        unload_loras(pipe, "nope")
    with pytest.raises(UnknownNameError, match="other, trained"):
        fuse_loras(pipe, ["trained", "other", "nope"])
    for bad in ("", "a.b", "x y", None):
        with pytest.raises(ValueError, match="`adapter_name` must be"):
            load_lora(pipe, path, adapter_name=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`scale` must be a finite number"):
        load_lora(pipe, path, adapter_name="new", scale=float("nan"))
    with pytest.raises(ValueError, match="`scales` must be a non-empty mapping"):
        set_lora_scales(pipe, {})
    assert list_loras(pipe) == {"trained": 1.0, "other": 1.0}  # nothing half-done
    with pytest.raises(TypeError, match="StableDiffusionLoraLoaderMixin"):
        list_loras(pipe.unet)


def test_sources_are_checked(trained: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = trained
    pipe = make_pipe()
    (tmp_path / "a.safetensors").write_bytes(path.read_bytes())
    (tmp_path / "b.safetensors").write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match=r"`weight_name` must be given.*a\.safetensors"):
        load_lora(pipe, tmp_path, adapter_name="x")
    assert load_lora(pipe, tmp_path, adapter_name="x", weight_name="b.safetensors").name == (
        "b.safetensors"
    )
    pickled = tmp_path / "lora.bin"
    pickled.write_bytes(b"not unpickled")
    with pytest.raises(InvalidModelError, match=r"must be \.safetensors"):
        load_lora(pipe, pickled, adapter_name="y")
    with pytest.raises(ModelNotAvailableError, match="lcm-lora-sdv1-5"):
        load_lora(pipe, tmp_path / "missing.safetensors", adapter_name="y")
    from safetensors.torch import save_file

    a, b = torch.zeros(4, 8), torch.zeros(8, 4)
    foreign = tmp_path / "foreign.safetensors"  # keys for a module this UNet does not have
    save_file({"unet.nowhere.lora_A.weight": a, "unet.nowhere.lora_B.weight": b}, str(foreign))
    with pytest.raises(InvalidModelError, match="could not load"):
        load_lora(pipe, foreign, adapter_name="y")
    other = tmp_path / "other.safetensors"  # keys for neither the UNet nor the text encoder
    save_file(
        {"transformer.to_q.lora_A.weight": a, "transformer.to_q.lora_B.weight": b}, str(other)
    )
    with pytest.raises(InvalidModelError, match="none of its keys matches"):
        load_lora(pipe, other, adapter_name="y")
    assert list_loras(pipe) == {"x": 1.0}


def _kohya(path: Path, out: Path, *, alpha: float | None) -> Path:
    """Rewrite a peft LoRA file with kohya-ss/A1111 key names (``lora_unet_…``)."""
    from safetensors.torch import load_file, save_file

    kohya: dict[str, torch.Tensor] = {}
    for key, value in load_file(str(path)).items():
        module, kind = key.removeprefix("unet.").split(".lora_")
        name = "lora_unet_" + module.replace(".", "_")
        kohya[f"{name}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value
        if alpha is not None:
            kohya[f"{name}.alpha"] = torch.tensor(alpha)
    assert any("_attn2_to_out_0.lora_up" in k for k in kohya)
    save_file(kohya, str(out))
    return out


def test_kohya_a1111_format_loads_like_the_peft_one(
    trained: tuple[Path, np.ndarray], base_out: np.ndarray, tmp_path: Path
) -> None:
    path, full = trained
    outputs: dict[str, np.ndarray] = {}
    for label, alpha in (("alpha8", 8.0), ("alpha4", 4.0), ("no_alpha", None)):
        pipe = make_pipe()
        load_lora(
            pipe, _kohya(path, tmp_path / f"{label}.safetensors", alpha=alpha), adapter_name=label
        )
        outputs[label] = run(pipe)
    # alpha 8 / rank 4 is what the peft adapter was trained with
    np.testing.assert_allclose(outputs["alpha8"], full, atol=1e-5, rtol=0)
    # no alpha key (like IP-Adapter-FaceID's SD1.5 LoRA): diffusers takes alpha = rank
    np.testing.assert_allclose(outputs["no_alpha"], outputs["alpha4"], atol=1e-6, rtol=0)
    assert np.abs(outputs["alpha4"] - full).max() > 1e-3
    assert np.abs(outputs["alpha4"] - base_out).max() > 1e-3


def _install_fake_lcm(home: Path, source: Path) -> Path:
    dest = home / "models" / "lcm-lora-sdv1-5" / "pytorch_lora_weights.safetensors"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(source.read_bytes())
    return dest


def test_lcm_preset_is_registered() -> None:
    p = hub.get_preset("lcm-lora-sdv1-5")
    assert p.repo_id == "latent-consistency/lcm-lora-sdv1-5"
    assert p.files == ("pytorch_lora_weights.safetensors",)
    assert "lcm-lora-sdv1-5" in lora_presets()


def test_enable_and_disable_lcm(isolated: Path, other_lora: Path, base_out: np.ndarray) -> None:
    from diffusers import DPMSolverMultistepScheduler, LCMScheduler

    # The real LCM-LoRA is not available offline: a random LoRA stands in for it, installed
    # where the preset looks ($FACEGEN_HOME/models/lcm-lora-sdv1-5/).
    dest = _install_fake_lcm(isolated / "fg", other_lora)
    pipe = make_pipe()
    original = pipe.scheduler
    for bad in (1, 9, 4.0, True):
        with pytest.raises(
            ValueError, match=r"`num_inference_steps` must be an integer in \[2, 8\]"
        ):
            enable_lcm(pipe, num_inference_steps=bad)  # type: ignore[arg-type]
    with pytest.raises(
        ValueError, match=r"`guidance_scale` must be a finite number in \[0.0, 2.0\], got 3.0"
    ):
        enable_lcm(pipe, guidance_scale=3.0)
    assert list_loras(pipe) == {} and pipe.scheduler is original

    kwargs = enable_lcm(pipe)
    assert kwargs == {"num_inference_steps": 4, "guidance_scale": 1.0}
    assert isinstance(pipe.scheduler, LCMScheduler) and is_lcm_enabled(pipe)
    assert list_loras(pipe) == {"lcm": 1.0}
    fast = run(pipe, **kwargs)
    assert fast.shape == base_out.shape and np.isfinite(fast).all()
    assert np.abs(fast - base_out).max() > 1e-3
    with pytest.raises(ValueError, match="already enabled"):
        enable_lcm(pipe, source=dest)

    disable_lcm(pipe)
    assert pipe.scheduler is original and isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert list_loras(pipe) == {} and not is_lcm_enabled(pipe)
    np.testing.assert_array_equal(run(pipe), base_out)
    with pytest.raises(ValueError, match="LCM enabled"):
        disable_lcm(pipe)


def test_missing_lcm_weights_say_where_to_get_them(isolated: Path) -> None:
    pipe = make_pipe()
    original = pipe.scheduler
    with pytest.raises(ModelNotAvailableError) as ei:
        enable_lcm(pipe)
    msg = str(ei.value)
    assert "latent-consistency/lcm-lora-sdv1-5" in msg
    assert "pytorch_lora_weights.safetensors" in msg and "offline" in msg
    assert str(isolated / "fg" / "models" / "lcm-lora-sdv1-5") in msg
    assert pipe.scheduler is original and list_loras(pipe) == {} and not is_lcm_enabled(pipe)
    with pytest.raises(ModelNotAvailableError, match="latent-consistency/lcm-lora-sdv1-5"):
        load_lora(pipe, "lcm-lora-sdv1-5", adapter_name="lcm", local_files_only=True)


def test_save_lora_checks_its_inputs(tmp_path: Path) -> None:
    pipe = make_pipe()
    with pytest.raises(ValueError, match="must hold a LoRA adapter"):
        save_lora(pipe, tmp_path)
    add_random_lora(pipe.unet, "one", seed=5)
    add_random_lora(pipe.unet, "two", seed=6)
    with pytest.raises(ValueError, match="`adapter_name` must be one of one, two"):
        save_lora(pipe.unet, tmp_path)
    with pytest.raises(UnknownNameError, match="one, two"):
        save_lora(pipe.unet, tmp_path, adapter_name="three")
    with pytest.raises(ValueError, match=r"ending in \.safetensors"):
        save_lora(pipe.unet, tmp_path, adapter_name="one", weight_name="x.bin")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="must be a folder"):
        save_lora(pipe.unet, blocker, adapter_name="one")
    with pytest.raises(TypeError, match="`unet_or_pipe` must be"):
        save_lora(object(), tmp_path)
    assert save_lora(pipe.unet, tmp_path / "two.safetensors", adapter_name="two").is_file()


def test_save_lora_without_metadata_support_refuses_what_would_load_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """diffusers < 0.34 cannot store the LoraConfig; it then assumes alpha = rank."""
    from safetensors import safe_open

    import facegen.adapters.lora_save as lora_save

    monkeypatch.setattr(lora_save, "_save_supports_metadata", lambda: False)
    pipe = make_pipe()
    add_random_lora(pipe.unet, "scaled", seed=7, rank=4, alpha=8)
    add_random_lora(pipe.unet, "plain", seed=8, rank=4, alpha=4)
    with pytest.raises(ValueError, match="lora_alpha 8 and rank 4"):
        save_lora(pipe.unet, tmp_path, adapter_name="scaled")
    path = save_lora(pipe.unet, tmp_path, adapter_name="plain")
    with safe_open(str(path), "pt") as f:
        assert "lora_adapter_metadata" not in (f.metadata() or {})
    fresh = make_pipe()
    load_lora(fresh, path, adapter_name="plain")
    layer = fresh.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    assert (layer.r["plain"], layer.lora_alpha["plain"]) == (4, 4)
