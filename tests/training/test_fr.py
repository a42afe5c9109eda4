"""Face-recognition training and verification: models, heads, readers, loop, export, protocol.

Tiny randomly initialised networks throughout: they test plumbing and arithmetic, never
recognition quality (that is ``benchmarks/fr_orl.py``).
"""

from __future__ import annotations

import math
import struct
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from facegen.errors import InvalidModelError, UnknownNameError
from facegen.pipelines.dataset.writers import (
    DatasetSample,
    ImageFolderWriter,
    RecWriter,
    WebDatasetWriter,
    write_verification_bin,
)
from facegen.training.fr.data import (
    FRTransform,
    ImageFolderDataset,
    RecordIODataset,
    RecordIOReader,
    WebDatasetShards,
    detect_format,
    open_fr_dataset,
)
from facegen.training.fr.eval import (
    ACC_THRESHOLDS,
    VAL_THRESHOLDS,
    VerificationSet,
    _slinear,
    embed_flip_sum,
    evaluate_bin,
    evaluate_pairs,
    evaluate_verification,
    kfold_indices,
    make_verification_pairs,
    verification_metrics,
)
from facegen.training.fr.models import (
    AdaFaceHead,
    ArcFaceHead,
    CosFaceHead,
    IResNet,
    arcface_logits,
    build_backbone,
    build_head,
    cosface_logits,
    load_backbone,
    load_insightface_backbone,
    save_backbone,
)

TINY = {"width": 8, "input_size": 32, "num_features": 16}


def tiny_backbone(seed: int = 0, arch: str = "iresnet18") -> IResNet:
    torch.manual_seed(seed)
    return build_backbone(arch, **TINY)


# ------------------------------------------------------------------------------- backbones

# Key and parameter counts of insightface arcface_torch's iresnet.py (measured on its code).
INSIGHTFACE_COUNTS = {
    "iresnet18": (187, 24_025_600),
    "iresnet34": (331, 34_139_328),
    "iresnet50": (475, 43_590_848),
    "iresnet100": (925, 65_156_160),
}


@pytest.mark.parametrize("arch", sorted(INSIGHTFACE_COUNTS))
def test_iresnet_matches_insightface_layout(arch: str) -> None:
    with torch.device("meta"):
        model = build_backbone(arch)
    sd = model.state_dict()
    keys, params = INSIGHTFACE_COUNTS[arch]
    assert len(sd) == keys
    assert sum(p.numel() for p in model.parameters()) == params
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["conv1.weight"] == (64, 3, 3, 3)
    assert shapes["layer1.0.bn1.weight"] == (64,)
    assert shapes["layer1.0.conv2.weight"] == (64, 64, 3, 3)
    assert shapes["layer1.0.downsample.0.weight"] == (64, 64, 1, 1)
    assert shapes["layer2.0.downsample.1.running_var"] == (128,)
    assert shapes["layer4.0.prelu.weight"] == (512,)
    assert shapes["bn2.weight"] == (512,)
    assert shapes["fc.weight"] == (512, 512 * 7 * 7)
    assert shapes["features.weight"] == (512,)
    assert "features.running_mean" in sd and "layer1.1.downsample.0.weight" not in sd
    assert not model.features.weight.requires_grad


def test_iresnet_forward_shapes_and_stride() -> None:
    torch.manual_seed(0)
    full = build_backbone("iresnet18").eval()
    with torch.no_grad():
        assert full(torch.zeros(2, 3, 112, 112)).shape == (2, 512)
    small = build_backbone("iresnet18", width=8, input_size=56, num_features=32)
    assert small.config.feature_map_size == 4 and small.fc.in_features == 64 * 16
    assert small(torch.randn(3, 3, 56, 56)).shape == (3, 32)
    # stride 2 sits on conv2 of each stage's first block, as in insightface
    assert full.layer1[0].conv2.stride == (2, 2) and full.layer1[0].conv1.stride == (1, 1)
    assert full.layer1[1].downsample is None
    with pytest.raises(UnknownNameError, match="iresnet50"):
        build_backbone("resnet50")
    with pytest.raises(ValueError, match="`width` must be"):
        build_backbone("iresnet18", width=0)


def test_insightface_state_dict_loads_and_roundtrips(tmp_path: Path) -> None:
    src = tiny_backbone(1)
    with torch.no_grad():
        for m in src.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.9, 1.1)
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}  # DataParallel prefix
    torch.save(sd, tmp_path / "backbone.pth")
    loaded = load_insightface_backbone(tmp_path / "backbone.pth", "iresnet18", **TINY)
    x = torch.randn(2, 3, 32, 32)
    src.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), src(x))
    # safetensors folder round trip
    save_backbone(loaded, tmp_path / "m", extra={"name": "x"})
    again = load_backbone(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(again(x), src(x))
    # a state dict of another architecture is refused by name
    torch.save(build_backbone("iresnet34", **TINY).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(InvalidModelError, match=r"missing|unexpected"):
        load_insightface_backbone(tmp_path / "r34.pth", "iresnet18", **TINY)


# ------------------------------------------------------------------------------------ heads


def test_arcface_margin_on_known_logits() -> None:
    theta = torch.tensor([1.0, 3.0, 1.0, 2.0], dtype=torch.float64)
    cos = torch.stack([theta.cos(), torch.full((4,), 0.3, dtype=torch.float64)], 1)
    labels = torch.tensor([0, 0, -1, 0])
    out = arcface_logits(cos, labels, s=64.0, m=0.5)
    assert out[0, 0].item() == pytest.approx(64 * math.cos(1.5))
    # θ + m > π: the fallback cos θ − m·sin m keeps the logit decreasing in θ
    assert out[1, 0].item() == pytest.approx(64 * (math.cos(3.0) - 0.5 * math.sin(0.5)))
    assert out[2, 0].item() == pytest.approx(64 * math.cos(1.0))  # label -1: no margin
    assert out[:, 1].tolist() == pytest.approx([64 * 0.3] * 4)  # non-targets only scaled
    easy = arcface_logits(cos, labels, s=1.0, m=0.5, easy_margin=True)
    assert easy[3, 0].item() == pytest.approx(math.cos(2.0))  # cos θ < 0: unchanged
    assert easy[0, 0].item() == pytest.approx(math.cos(1.5))
    cf = cosface_logits(cos, labels, s=64.0, m=0.4)
    assert cf[0, 0].item() == pytest.approx(64 * (math.cos(1.0) - 0.4))
    assert cf[2, 0].item() == pytest.approx(64 * math.cos(1.0))


def test_heads_forward_and_gradients_finite_at_cos_one() -> None:
    torch.manual_seed(0)
    head = ArcFaceHead(4, 3)
    feats = head.weight.detach()[[0, 1]].clone().requires_grad_(True)  # cos = 1 to its class
    logits = head(feats, torch.tensor([0, 1]))
    assert logits.shape == (2, 3)
    assert logits[0, 0].item() == pytest.approx(64 * math.cos(0.5), abs=1e-3)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert torch.isfinite(feats.grad).all() and torch.isfinite(head.weight.grad).all()
    assert (
        isinstance(build_head("cosface", 4, 3), CosFaceHead)
        and build_head("cosface", 4, 3).m == 0.4
    )
    with pytest.raises(UnknownNameError, match="adaface"):
        build_head("sphereface", 4, 3)


def test_adaface_margin_follows_feature_norm() -> None:
    head = AdaFaceHead(2, 2, s=1.0, m=0.4, h=0.333).eval()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    theta = 1.0
    f = torch.tensor([[math.cos(theta), math.sin(theta)]])
    lab = torch.tensor([0])
    # norm == batch_mean → ẑ = 0 → CosFace-like margin: cos θ − m
    out = head(f * 20.0, lab)
    assert out[0, 0].item() == pytest.approx(math.cos(theta) - 0.4, abs=1e-5)
    assert out[0, 1].item() == pytest.approx(math.sin(theta), abs=1e-5)
    # a high-norm (good) image: ẑ = clip(0.333·(80−20)/100) = 0.1998
    z = 0.333 * 60 / (100 + 1e-3)
    out = head(f * 80.0, lab)
    assert out[0, 0].item() == pytest.approx(math.cos(theta - 0.4 * z) - 0.4 * (1 + z), abs=1e-5)
    assert head.batch_mean.item() == 20.0  # eval: statistics frozen
    head.train()
    head(torch.cat([f * 10.0, f * 30.0]), torch.tensor([0, 0]))
    assert head.batch_mean.item() == pytest.approx(0.99 * 20 + 0.01 * 20)
    std = float(torch.tensor([10.0, 30.0]).std())
    assert head.batch_std.item() == pytest.approx(0.99 * 100 + 0.01 * std)


# ---------------------------------------------------------------------------------- readers


def _samples(n_id: int = 3, n_img: int = 4, size: int = 24) -> list[DatasetSample]:
    """Flat-colour images whose value encodes (identity, index): JPEG keeps them within ±2."""
    out = []
    for i in range(n_id):
        for j in range(n_img):
            img = np.full((size, size, 3), 30 + 60 * i + 10 * j, np.uint8)
            out.append(DatasetSample(identity=i, index=j, image=img))
    return out


def _check_dataset(ds, samples: list[DatasetSample]) -> None:
    assert len(ds) == len(samples) and ds.num_classes == 3
    seen = set()
    for k in range(len(ds)):
        x, y = ds[k]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
        value = (float(x.mean()) * 0.5 + 0.5) * 255
        ident, index = divmod(round((value - 30) / 10), 6)
        assert abs(value - (30 + 60 * ident + 10 * index)) < 2.5
        assert int(y) == ident
        seen.add((ident, index))
    assert seen == {(s.identity, s.index) for s in samples}


@pytest.mark.parametrize("writer", ["imagefolder", "wds", "rec"])
def test_readers_read_facegen_writers(tmp_path: Path, writer: str) -> None:
    samples = _samples()
    cls = {"imagefolder": ImageFolderWriter, "wds": WebDatasetWriter, "rec": RecWriter}[writer]
    kw = {"max_samples": 5} if writer == "wds" else {}
    with cls(tmp_path, **kw) as w:
        for s in samples[::-1]:  # any order
            w.write(s)
    assert detect_format(tmp_path) == writer
    ds = open_fr_dataset(tmp_path, transform=FRTransform.eval(32))
    expected = {"imagefolder": ImageFolderDataset, "wds": WebDatasetShards, "rec": RecordIODataset}
    assert isinstance(ds, expected[writer])
    _check_dataset(ds, samples)
    if writer == "wds":
        assert len(ds.shards) == 3
    if writer == "rec":
        assert ds.header0 == (13, 16) and sorted(ds.labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4


def test_webdataset_package_agrees(tmp_path: Path) -> None:
    wds = pytest.importorskip("webdataset")
    with WebDatasetWriter(tmp_path, max_samples=5) as w:
        for s in _samples():
            w.write(s)
    ours = WebDatasetShards(tmp_path)
    shards = [str(p) for p in sorted(tmp_path.glob("*.tar"))]
    theirs = [int(s["cls"]) for s in wds.WebDataset(shards, shardshuffle=False)]
    assert theirs == ours.labels.tolist()


def test_recordio_reader_rejoins_split_records(tmp_path: Path) -> None:
    from facegen.pipelines.dataset.writers.recordio import _ir_pack, _rec_chunks

    magic = struct.pack("<I", 0xCED7230A)
    bodies = [b"abcd" + magic + b"efgh" + magic + b"ij", b"xyz", magic * 3]
    with open(tmp_path / "a.rec", "wb") as rec, open(tmp_path / "a.idx", "w") as idx:
        for k, body in enumerate(bodies):
            idx.write(f"{k}\t{rec.tell()}\n")
            rec.write(_rec_chunks(_ir_pack(0, float(k + 7), k, body)))
    r = RecordIOReader(tmp_path / "a.rec", tmp_path / "a.idx")
    for k, body in enumerate(bodies):
        header, got = r.unpack(r.read_idx(k))
        assert got == body and header.label == k + 7 and header.flag == 0


def test_grey_resize_flip_and_erasing(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    grey = np.tile(np.arange(92, dtype=np.uint8), (112, 1))  # ORL-sized ramp
    Image.fromarray(grey, "L").save(tmp_path / "a" / "1.pgm")
    Image.fromarray(grey, "L").save(tmp_path / "b" / "1.pgm")
    ds = ImageFolderDataset(tmp_path, FRTransform.eval(112))
    x, y = ds[1]
    assert x.shape == (3, 112, 112) and int(y) == 1 and ds.classes == ["a", "b"]
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert x[0, 0, 0] < x[0, 0, -1]  # ramp rises to the right
    flipped = ImageFolderDataset(tmp_path, FRTransform(112, flip_prob=1.0))[0][0]
    assert torch.equal(flipped, torch.flip(x, dims=[2]))
    torch.manual_seed(0)
    erased = ImageFolderDataset(tmp_path, FRTransform(112, flip_prob=0.0, erase_prob=1.0))[0][0]
    hole = (erased == 0).all(0) & (x != 0).all(0)
    assert 0.02 * 112 * 112 * 0.5 <= int(hole.sum()) <= 0.33 * 112 * 112
    with pytest.raises(ValueError, match="`erase_prob` must be a finite number in"):
        FRTransform(erase_prob=2.0)


# --------------------------------------------------------------------------- training loop


def _write_train_set(root: Path, n_id: int = 4, n_img: int = 8) -> None:
    rng = np.random.default_rng(0)
    protos = rng.integers(0, 256, (n_id, 8, 8, 3))
    with ImageFolderWriter(root) as w:
        for i in range(n_id):
            for j in range(n_img):
                base = np.kron(protos[i], np.ones((4, 4, 1)))
                img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
                w.write(DatasetSample(identity=i, index=j, image=img))


def _config(tmp_path: Path, out: str, **kw):
    from facegen.training.fr.train import FRTrainConfig

    base = dict(
        data=str(tmp_path / "data"),
        output_dir=str(tmp_path / out),
        backbone="iresnet18",
        width=8,
        input_size=32,
        embedding_size=16,
        head="cosface",
        scale=16.0,
        lr=0.05,
        batch_size=8,
        num_workers=0,
        warmup_steps=0,
        tensorboard=False,
        export_onnx=False,
        log_every=2,
        seed=0,
        cpu=True,
    )
    base.update(kw)
    return FRTrainConfig(**base)


def test_train_loop_reduces_loss_and_saves(tmp_path: Path) -> None:
    from facegen.training.fr.train import train_fr

    _write_train_set(tmp_path / "data")
    # a verification set from the training images: pairs within / across identities
    ds = ImageFolderDataset(tmp_path / "data", FRTransform.eval(32))
    pairs = make_verification_pairs(ds.labels, num_impostor=20, seed=0)[:40]
    imgs = np.stack([ds.image(k) for i, j, _ in pairs for k in (i, j)])
    vset = VerificationSet("train-pairs", imgs, np.array([s for *_, s in pairs]))
    cfg = _config(tmp_path, "run", max_steps=12, eval_every=6, flip_prob=0.0, export_onnx=True)
    res = train_fr(cfg, val_sets=[vset], progress=False)
    assert res.steps == 12 and res.start_step == 0 and len(res.losses) == 12
    assert np.mean(res.losses[-3:]) < 0.7 * np.mean(res.losses[:3])
    assert [s for s, _ in res.validation] == [6, 12]
    out = tmp_path / "run"
    for f in ("model.safetensors", "config.json", "model.onnx", "metrics.jsonl"):
        assert (out / f).is_file(), f
    import json

    cfg_json = json.loads((out / "config.json").read_text())
    assert cfg_json["backbone"]["width"] == 8 and cfg_json["num_classes"] == 4
    assert cfg_json["encoder_id"] == "facegen-fr/run"
    assert cfg_json["same_person_threshold"] == pytest.approx(
        res.final_validation[0].cosine_threshold
    )
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert any('"loss"' in line for line in lines) and any(
        "val/train-pairs" in line for line in lines
    )


def test_resume_continues_step_count_and_matches_uninterrupted_run(tmp_path: Path) -> None:
    from facegen.training.fr.train import latest_checkpoint, train_fr

    _write_train_set(tmp_path / "data")
    const = {"schedule": "step", "lr_milestones": (100,)}  # same LR whatever max_steps is
    straight = train_fr(_config(tmp_path, "a", max_steps=6, **const), progress=False)
    first = train_fr(_config(tmp_path, "b", max_steps=5, save_every=5, **const), progress=False)
    assert first.steps == 5 and latest_checkpoint(tmp_path / "b").name == "step-00000005"
    resumed = train_fr(
        _config(tmp_path, "b", max_steps=6, resume="latest", **const), progress=False
    )
    # 4 batches per epoch: step 6 is batch 2 of epoch 1 (shuffle order and augmentation
    # draws of epoch 1, one batch skipped) with the restored optimizer state
    assert resumed.start_step == 5 and resumed.steps == 6 and len(resumed.losses) == 1
    np.testing.assert_allclose(resumed.losses, straight.losses[5:], rtol=1e-4)
    a, b = load_backbone(tmp_path / "a"), load_backbone(tmp_path / "b")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, msg=k)


def test_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="`lr_milestones` must list epochs"):
        _config(tmp_path, "x", schedule="step")
    with pytest.raises(ValueError, match="`batch_size` must be an integer >= 1"):
        _config(tmp_path, "x", batch_size=0)
    with pytest.raises(UnknownNameError, match="arcface"):
        _config(tmp_path, "x", head="softmax")


# ------------------------------------------------------------------------------- ONNX export


def test_onnx_export_matches_torch_and_loads_as_encoder(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from facegen.backends import ENCODERS
    from facegen.backends.arcface_onnx import ArcFaceOnnxEncoder
    from facegen.training.fr.encoder import (
        export_onnx,
        load_trained_encoder,
        register_trained_encoder,
    )

    model = tiny_backbone(3).eval()
    save_backbone(model, tmp_path, extra={"same_person_threshold": 0.41})
    path = export_onnx(model, tmp_path / "model.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == "input.1"
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        ref = model(x).numpy()
    got = sess.run(None, {"input.1": x.numpy()})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    # facegen's ArcFace ONNX encoder reads the export as is (127.5/127.5 decided from the graph)
    plain = ArcFaceOnnxEncoder(model_path=path)
    assert (plain.input_size, plain.dim, plain.input_mean, plain.input_std) == (
        32,
        16,
        127.5,
        127.5,
    )
    crops = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    onnx_enc = load_trained_encoder(tmp_path, name="t")
    torch_enc = load_trained_encoder(tmp_path, name="t", backend="torch")
    assert onnx_enc.encoder_id == torch_enc.encoder_id == "facegen-fr/t"
    assert onnx_enc.same_person_threshold == torch_enc.same_person_threshold == 0.41
    np.testing.assert_allclose(onnx_enc.embed_crops(crops), torch_enc.embed_crops(crops), atol=1e-4)
    name = f"test-fr-{uuid.uuid4().hex[:8]}"
    register_trained_encoder(tmp_path, name)
    enc = ENCODERS.create(name, device="cpu", offline=True)
    assert enc.encoder_id == f"facegen-fr/{name}" and enc.dim == 16
    with pytest.raises(ValueError, match="already registered"):
        register_trained_encoder(tmp_path, name)


# ------------------------------------------------------------------------ verification protocol


def _pair_embeddings(dists: np.ndarray) -> np.ndarray:
    """Unit 2-D vectors: pair k at squared distance ``dists[k]`` (d = 2 − 2 cos φ)."""
    phi = np.arccos(1 - np.asarray(dists) / 2)
    rows = []
    for k, p in enumerate(phi):
        a = 0.37 * k
        rows += [[math.cos(a), math.sin(a)], [math.cos(a + p), math.sin(a + p)]]
    return np.array(rows)


def test_perfect_separation_and_known_threshold() -> None:
    same = np.array([True, False] * 50)
    res = verification_metrics(_pair_embeddings(np.where(same, 0.0, 2.0)), same)
    assert res.accuracy == 1.0 and res.accuracy_std == 0.0
    assert res.tar_at_far == 1.0 and res.far == 0.0 and res.auc == 1.0 and res.eer == 0.0
    assert res.threshold == pytest.approx(0.01)  # first of the tied best thresholds
    res = verification_metrics(_pair_embeddings(np.where(same, 0.5, 1.5)), same)
    assert res.fold_thresholds == pytest.approx((0.51,) * 10)  # smallest t with 0.5 < t
    assert res.cosine_threshold == pytest.approx(1 - 0.51 / 2)
    # one swapped pair in fold 0 (pairs 0–9): that fold scores 9/10, the others 10/10
    flipped = same.copy()
    flipped[0] = False
    res = verification_metrics(_pair_embeddings(np.where(same, 0.5, 1.5)), flipped)
    assert res.fold_accuracies[0] == pytest.approx(0.9) and res.accuracy == pytest.approx(0.99)
    assert res.accuracy_std == pytest.approx(np.std([0.9] + [1.0] * 9))


def _loop_reference(emb: np.ndarray, same: np.ndarray, nfolds: int = 10):
    """The protocol written out with plain loops (as insightface's verification.py reads)."""
    from scipy.interpolate import BSpline

    d = np.sum((emb[0::2] - emb[1::2]) ** 2, 1)

    def acc(t, dd, ss):
        p = dd < t
        return (np.sum(p & ss) + np.sum(~p & ~ss)) / dd.size

    def val_far(t, dd, ss):
        p = dd < t
        return np.sum(p & ss) / np.sum(ss), np.sum(p & ~ss) / np.sum(~ss)

    accs, vals = [], []
    for train, test in kfold_indices(len(same), nfolds):
        best = int(np.argmax([acc(t, d[train], same[train]) for t in ACC_THRESHOLDS]))
        accs.append(acc(ACC_THRESHOLDS[best], d[test], same[test]))
        far = np.array([val_far(t, d[train], same[train])[1] for t in VAL_THRESHOLDS])
        if far.max() >= 1e-3:
            thr = float(BSpline(np.r_[far[0], far, far[-1]], VAL_THRESHOLDS, 1)(1e-3))
        else:
            thr = 0.0
        vals.append(val_far(thr, d[test], same[test])[0])
    return np.mean(accs), np.std(accs), np.mean(vals), np.std(vals)


def test_metrics_match_loop_reference_on_noisy_pairs() -> None:
    pytest.importorskip("scipy")
    rng = np.random.default_rng(1)
    n = 503  # uneven folds: 3 of 51 pairs, 7 of 50
    same = rng.random(n) < 0.5
    emb = rng.normal(size=(2 * n, 8))
    emb[1::2][same] = emb[0::2][same] + rng.normal(0, 0.6, (same.sum(), 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    res = verification_metrics(emb, same)
    acc, acc_std, val, val_std = _loop_reference(emb, same)
    assert (res.accuracy, res.accuracy_std) == pytest.approx((acc, acc_std), abs=1e-12)
    assert (res.tar_at_far, res.tar_at_far_std) == pytest.approx((val, val_std), abs=1e-12)
    assert 0.5 < res.accuracy < 1.0 and 0.5 < res.auc < 1.0


def test_slinear_interpolation_matches_scipy() -> None:
    interpolate = pytest.importorskip("scipy.interpolate")
    x = np.array([0.0, 0.1, 0.25, 0.5, 1.0])
    y = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    f = interpolate.interp1d(x, y, kind="slinear")
    for x0 in (0.0, 0.05, 0.1, 0.2, 0.7, 1.0):
        assert _slinear(x, y, x0) == pytest.approx(float(f(x0)))
    xd = np.array([0.0, 0.0, 0.0, 0.1, 0.1, 0.3, 1.0, 1.0])  # repeated FARs, as always
    yd = np.arange(8.0)
    spline = interpolate.BSpline(np.r_[xd[0], xd, xd[-1]], yd, 1)
    for x0 in (0.0, 0.001, 0.05, 0.1, 0.2, 0.5):
        assert _slinear(xd, yd, x0) == pytest.approx(float(spline(x0)))


def test_kfold_and_pair_helpers() -> None:
    sizes = [len(test) for _, test in kfold_indices(23, 10)]
    assert sizes == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]  # sklearn KFold(shuffle=False)
    assert np.array_equal(np.concatenate([t for _, t in kfold_indices(23, 10)]), np.arange(23))
    labels = np.repeat(np.arange(4), 5)
    pairs = make_verification_pairs(labels, seed=0)
    same = [s for *_, s in pairs]
    assert sum(same) == 4 * 10 and len(pairs) == 80 and same[:4] == [True, False, True, False]
    assert all((labels[i] == labels[j]) == s for i, j, s in pairs)
    with pytest.raises(ValueError, match="contiguous folds"):
        verification_metrics(_pair_embeddings(np.zeros(20)), np.array([True] * 10 + [False] * 10))


def test_evaluate_bin_pairs_and_encoder_agree(tmp_path: Path) -> None:
    from facegen.image_io import save_image
    from facegen.training.fr.encoder import TorchFREncoder

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    same = np.array([True, False] * 10)
    imgs[1::2][same] = np.clip(imgs[0::2][same] + rng.integers(-8, 8, (10, 32, 32, 3)), 0, 255)
    write_verification_bin(
        tmp_path / "v.bin", list(zip(imgs[0::2], imgs[1::2])), same.tolist(), fmt="png"
    )
    lines = []
    for k in range(20):
        for side in (0, 1):
            save_image(imgs[2 * k + side], tmp_path / f"{k}_{side}.png")
        lines.append(f"{k}_0.png {k}_1.png {int(same[k])}")
    (tmp_path / "pairs.txt").write_text("# a comment\n" + "\n".join(lines) + "\n")
    model = tiny_backbone(2).train()
    r_bin = evaluate_bin(model, tmp_path / "v.bin", nfolds=5)
    assert model.training  # mode restored
    r_txt = evaluate_pairs(model, tmp_path / "pairs.txt", nfolds=5)
    assert r_bin.name == "v" and r_bin.num_pairs == 20 and np.isfinite(r_bin.xnorm)
    assert (r_bin.accuracy, r_bin.tar_at_far, r_bin.auc) == (
        r_txt.accuracy,
        r_txt.tar_at_far,
        r_txt.auc,
    )
    enc = TorchFREncoder(model, encoder_id="facegen-fr/t")
    vset = VerificationSet("v", imgs, same)
    r_enc = evaluate_verification(enc, vset, nfolds=5)
    assert r_enc.auc == pytest.approx(r_bin.auc) and r_enc.accuracy == pytest.approx(r_bin.accuracy)
    raw, _ = embed_flip_sum(model, imgs[:2])
    x = torch.from_numpy(imgs[:2]).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        model.eval()
        expect = (model(x) + model(torch.flip(x, dims=[3]))).numpy()
    np.testing.assert_allclose(raw, expect, rtol=1e-5, atol=1e-5)
