"""IP-Adapter-FaceID failures: missing weights offline, a missing LoRA file, checkpoints that do
not fit the UNet, pickles, unknown names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from faceid_testing import make_pipe

from facegen import ModelNotAvailableError
from facegen.adapters import ip_adapter_faceid as fid
from facegen.errors import InvalidModelError

pytestmark = pytest.mark.usefixtures("quiet_diffusers")


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
