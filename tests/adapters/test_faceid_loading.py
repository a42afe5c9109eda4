"""IP-Adapter-FaceID loaded into a tiny pipeline: facegen's loader agrees with diffusers' own,
identity and LoRA scales, the kohya LoRA file, ``encode``, and save/load of adapter folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from faceid_testing import TINY_IMAGE_SIZE, buffalo, make_pipe, run

from facegen import IdentityEmbedding, IncompatibleEmbeddingError
from facegen.adapters import ip_adapter_faceid as fid

pytestmark = pytest.mark.usefixtures("quiet_diffusers")


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
    with pytest.raises(ValueError, match="`num_images_per_prompt` must be an integer >= 1, got 0"):
        adapter.encode(buffalo()[0], num_images_per_prompt=0)


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
