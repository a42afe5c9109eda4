"""Arc2Face's ID encoder against a step-by-step implementation of the published procedure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facegen import IdentityEmbedding, IncompatibleEmbeddingError, ModelNotAvailableError
from facegen.adapters.arc2face import ARC2FACE_PROMPT, Arc2FaceIDEncoder
from facegen.pipelines.generation.tiny import tiny_tokenizer


def _clip(hidden: int, layers: int, heads: int, inter: int, vocab: int, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return CLIPTextModel(cfg).eval(), tok


@pytest.fixture(scope="module")
def tiny():
    return _clip(512, 2, 8, 1024, len(tiny_tokenizer()))


@pytest.fixture(scope="module")
def vit_l():
    """The real SD1.5 / ViT-L/14 text-encoder configuration, random weights."""
    return _clip(768, 12, 12, 3072, 49408)


def published_procedure(text_encoder, tokenizer, vecs: torch.Tensor) -> torch.Tensor:
    """Arc2Face as written: token embeddings, swap `id`, + positions, causal encoder, final norm."""
    ids = tokenizer(
        ARC2FACE_PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids.repeat(len(vecs), 1)
    id_token = tokenizer.encode("id", add_special_tokens=False)[0]
    hidden = text_encoder.config.hidden_size
    vecs = vecs / vecs.norm(dim=1, keepdim=True)
    text_encoder = getattr(text_encoder, "text_model", text_encoder)  # transformers < 5.x nests it
    with torch.no_grad():
        tok = text_encoder.embeddings.token_embedding(ids).clone()
        tok[ids == id_token] = F.pad(vecs, (0, hidden - vecs.shape[1]))
        h = text_encoder.embeddings(inputs_embeds=tok)
        causal = torch.full((77, 77), float("-inf")).triu(1)[None, None]
        out = text_encoder.encoder(inputs_embeds=h, attention_mask=causal).last_hidden_state
        return text_encoder.final_layer_norm(out)


@pytest.mark.parametrize("which", ["tiny", "vit_l"])
def test_matches_the_published_procedure(which: str, request: pytest.FixtureRequest) -> None:
    te, tok = request.getfixturevalue(which)
    enc = Arc2FaceIDEncoder(te, tok, encoder_ids=("test",))
    rng = np.random.default_rng(0)
    vecs = torch.from_numpy(rng.normal(size=(3, 512)).astype(np.float32))
    ours = enc.encode(vecs)
    ref = published_procedure(te, tok, vecs)
    assert ours.shape == (3, 77, te.config.hidden_size)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)
    # the identity matters: another vector changes the embedding after the `id` position
    other = enc.encode(vecs.flip(0))
    assert not torch.allclose(ours[0], other[0], atol=1e-3)
    # …and the causal mask keeps positions before it untouched
    pos = enc._id_position
    torch.testing.assert_close(ours[0, :pos], other[0, :pos])
    # the hook is removed afterwards: the plain encoder is unchanged
    plain = te(input_ids=enc._input_ids)[0]
    assert not torch.allclose(plain[0], ours[0], atol=1e-3)


def test_batch_equals_one_by_one(tiny) -> None:
    te, tok = tiny
    enc = Arc2FaceIDEncoder(te, tok, encoder_ids=("test",))
    vecs = torch.randn(4, 512, generator=torch.Generator().manual_seed(1))
    batch = enc.encode(vecs)
    single = torch.cat([enc.encode(v[None]) for v in vecs])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)


def test_unconditional_embeddings(tiny) -> None:
    te, tok = tiny
    enc = Arc2FaceIDEncoder(te, tok, encoder_ids=("test",))
    empty = enc.encode_unconditional(2)
    ids = tok("", padding="max_length", max_length=77, return_tensors="pt").input_ids
    torch.testing.assert_close(empty[0], te(input_ids=ids)[0][0].detach())
    assert torch.equal(empty[0], empty[1])
    zero = enc.encode_unconditional(1, "zero-identity")
    ids = enc._input_ids
    tok_emb = te.embeddings.token_embedding(ids).detach().clone()
    tok_emb[0, enc._id_position] = 0
    with torch.no_grad():
        h = te.embeddings(inputs_embeds=tok_emb)
        causal = torch.full((77, 77), float("-inf")).triu(1)[None, None]
        ref = te.final_layer_norm(
            te.encoder(inputs_embeds=h, attention_mask=causal).last_hidden_state
        )
    torch.testing.assert_close(zero, ref, atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="`kind` must be"):
        enc.encode_unconditional(1, "nothing")  # type: ignore[arg-type]


def test_identity_checks(tiny) -> None:
    te, tok = tiny
    enc = Arc2FaceIDEncoder(te, tok)
    good = IdentityEmbedding(np.eye(512, dtype=np.float32)[0], "arcface-onnx/arc2face")
    assert enc.encode(good).shape == (1, 77, 512)
    wrong = IdentityEmbedding(np.eye(512, dtype=np.float32)[0], "arcface-onnx/buffalo_l")
    with pytest.raises(IncompatibleEmbeddingError, match="arcface-onnx/arc2face"):
        enc.encode([wrong])
    dlib = IdentityEmbedding(np.eye(128, dtype=np.float32)[0], "dlib-resnet-v1")
    with pytest.raises(IncompatibleEmbeddingError, match="dlib-resnet-v1"):
        enc.encode(dlib)
    with pytest.raises(IncompatibleEmbeddingError, match=r"\(N, 512\)"):
        enc.encode(np.ones((2, 128), np.float32))
    with pytest.raises(IncompatibleEmbeddingError, match="finite"):
        enc.encode(np.full((1, 512), np.nan, np.float32))
    with pytest.raises(IncompatibleEmbeddingError, match="zero vector"):
        enc.encode(np.zeros((1, 512), np.float32))


def test_constructor_checks(tiny) -> None:
    te, tok = tiny
    with pytest.raises(ValueError, match="exactly once"):
        Arc2FaceIDEncoder(te, tok, prompt="photo of a person")
    small, _ = _clip(64, 1, 4, 128, len(tok))
    with pytest.raises(ValueError, match="hidden size must be >= 512"):
        Arc2FaceIDEncoder(small, tok)


def test_published_checkpoint_layout_loads(tmp_path: Path, tiny, monkeypatch) -> None:
    """`encoder/` as published: config.json + pytorch_model.bin with `text_model.` keys."""
    te, tok = tiny
    repo = tmp_path / "Arc2Face"
    (repo / "encoder").mkdir(parents=True)
    torch.save(
        {f"text_model.{k}": v for k, v in te.state_dict().items()},
        repo / "encoder" / "pytorch_model.bin",
    )
    cfg = te.config.to_dict()
    cfg["architectures"] = ["CLIPTextModelWrapper"]
    (repo / "encoder" / "config.json").write_text(json.dumps(cfg))
    sd = tmp_path / "sd15"
    tok.save_pretrained(sd / "tokenizer")
    enc = Arc2FaceIDEncoder.from_pretrained(
        str(repo), tokenizer_repo=str(sd), local_files_only=True
    )
    enc.identity = Arc2FaceIDEncoder(te, tok, encoder_ids=("test",)).identity
    vecs = torch.randn(2, 512, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(
        enc.encode(vecs), published_procedure(te, tok, vecs), atol=2e-5, rtol=1e-5
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelNotAvailableError, match="FoivosPar/Arc2Face") as ei:
        Arc2FaceIDEncoder.from_pretrained()
    assert "subfolder encoder" in str(ei.value) and "HF_HOME" in str(ei.value)


def test_save_pretrained_roundtrip(tmp_path: Path, tiny) -> None:
    te, tok = tiny
    enc = Arc2FaceIDEncoder(te, tok, encoder_ids=("test-encoder",))
    folder = enc.save_pretrained(tmp_path / "arc2face-id")
    assert (folder / "encoder" / "model.safetensors").is_file()
    back = Arc2FaceIDEncoder.from_pretrained(str(folder))
    assert back.identity.encoder_ids == ("test-encoder",) and back.prompt == ARC2FACE_PROMPT
    vecs = torch.randn(2, 512, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(back.encode(vecs), enc.encode(vecs))


def test_identity_center_writes_what_tells_people_apart(tmp_path: Path, tiny) -> None:
    """A center (a generator trained on dlib's vectors records their mean) is subtracted
    from each identity, which is normalised again; the null identity stays zero; the published
    procedure is what runs on the centered vectors; save/load keeps the center."""
    te, tok = tiny
    rng = np.random.default_rng(0)
    common = rng.standard_normal(128)
    common /= np.linalg.norm(common)
    people = common + 0.3 * rng.standard_normal((3, 128)) / np.sqrt(128)  # cosine ~0.9
    people /= np.linalg.norm(people, axis=1, keepdims=True)
    center = people.mean(0)
    enc = Arc2FaceIDEncoder(
        te, tok, encoder_ids=("dlib-resnet-v1",), identity_dim=128, identity_center=center
    )
    x = torch.tensor(np.vstack([people, np.zeros((1, 128))]), dtype=torch.float32)
    c = enc.centered(x)
    assert torch.allclose(c[:3].norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(c[3], torch.zeros(128))  # the null identity of guidance stays zero
    raw_cos = float(x[0] @ x[1])
    assert raw_cos > 0.8 and float(c[0] @ c[1]) < raw_cos - 0.5  # people now far apart
    expected = published_procedure(te, tok, c[:3])
    torch.testing.assert_close(enc.prompt_embeds(x[:3]), expected, atol=1e-5, rtol=1e-4)
    assert torch.equal(enc.prompt_embeds(x[3:]), enc.encode_unconditional(1, "zero-identity"))
    back = Arc2FaceIDEncoder.from_pretrained(str(enc.save_pretrained(tmp_path / "c")))
    assert back.identity_center == pytest.approx(tuple(center))
    with pytest.raises(ValueError, match="identity_center"):
        Arc2FaceIDEncoder(te, tok, identity_dim=128, identity_center=[0.0] * 5)
