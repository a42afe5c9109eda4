"""IP-Adapter-FaceID PlusV2 with a tiny CLIP image encoder: the same features and images as
diffusers' documented procedure, and the face crop's channel order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from faceid_testing import buffalo, make_pipe, run

from facegen.adapters import ip_adapter_faceid as fid

pytestmark = pytest.mark.usefixtures("quiet_diffusers")


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
    with pytest.raises(
        ValueError, match="`face_crop_channel_order` must be one of 'bgr', 'rgb', got"
    ):
        fid.IPAdapterFaceID(variant="plusv2", face_crop_channel_order="RGB")
    with pytest.raises(
        ValueError, match="`face_crop_channel_order` must be one of 'bgr', 'rgb', got"
    ):
        load("bgra")
    assert {c.variant: c.face_crop_channel_order for c in fid.checkpoints()}["plusv2"] == "bgr"
