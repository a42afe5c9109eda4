"""Dataset writers: every format round-trips labels and images; finalisation is atomic."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facegen.errors import MissingDependencyError, OutputError, UnknownNameError
from facegen.image_io import load_image
from facegen.pipelines.dataset.writers import (
    WRITERS,
    DatasetSample,
    InvalidDatasetFileError,
    create_writers,
    read_verification_bin,
    write_verification_bin,
)
from facegen.pipelines.dataset.writers.recordio import _rec_chunks as rec_chunks

JPEG_TOL = 4.0  # mean absolute error of a quality-95 JPEG of a face crop, in 0..255 units


@pytest.fixture(scope="module")
def samples(hanks_path: Path) -> list[DatasetSample]:
    """3 identities x 3 images from insightface's 112x112 Tom Hanks crop (shifted, tinted)."""
    face = load_image(hanks_path)
    assert face.shape == (112, 112, 3)
    out = []
    rng = np.random.default_rng(0)
    # Written out of order on purpose: the rec writer must sort by (identity, index).
    for ident, index in [(1, 0), (0, 0), (2, 1), (0, 1), (1, 1), (2, 0), (0, 2), (1, 2), (2, 2)]:
        img = np.roll(face, shift=(ident * 3, index * 2), axis=(0, 1)).astype(np.int16)
        img = np.clip(img + (ident - 1) * 20, 0, 255).astype(np.uint8)
        emb = rng.standard_normal(8).astype(np.float32)
        meta = {"seed": 100 * ident + index, "similarity": 0.5 + ident / 10, "model": "tiny"}
        out.append(DatasetSample(ident, index, img, emb, meta))
    return out


def _by_key(samples: list[DatasetSample]) -> dict[tuple[int, int], DatasetSample]:
    return {(s.identity, s.index): s for s in samples}


def _close_to(decoded: np.ndarray, original: np.ndarray) -> bool:
    return decoded.shape == original.shape and (
        np.abs(decoded.astype(np.float64) - original).mean() < JPEG_TOL
    )


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _write_all(name: str, out: Path, samples: list[DatasetSample], **opts) -> list[Path]:
    w = WRITERS.create(name, out_dir=out, **opts)
    for s in samples:
        w.write(s)
    return w.close()


# --- imagefolder ------------------------------------------------------------------------------


def test_imagefolder_round_trip(tmp_path: Path, samples: list[DatasetSample]) -> None:
    files = _write_all("imagefolder", tmp_path, samples)
    assert len(files) == len(samples)
    for s in samples:
        p = tmp_path / f"{s.identity:06d}" / f"{s.index:04d}.jpg"
        assert p in files
        assert _close_to(load_image(p), s.image)
    assert sorted(os.listdir(tmp_path)) == ["000000", "000001", "000002"]


# --- WebDataset -------------------------------------------------------------------------------


def test_wds_round_trip_with_tarfile(tmp_path: Path, samples: list[DatasetSample]) -> None:
    files = _write_all("wds", tmp_path, samples, max_samples=4)
    assert [f.name for f in files] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    got: dict[str, dict[str, bytes]] = {}
    for f in files:
        with tarfile.open(f) as tar:
            names = tar.getnames()
            assert len(names) == len(set(names))
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                data = tar.extractfile(m)
                assert data is not None
                got.setdefault(key, {})[ext] = data.read()
        # WebDataset groups consecutive members by key: members of one sample are adjacent.
        keys = [n.split(".", 1)[0] for n in names]
        runs = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
        assert len(runs) == len(set(keys))
    ref = {s.key: s for s in samples}
    assert set(got) == set(ref)
    for key, members in got.items():
        s = ref[key]
        assert set(members) == {"jpg", "cls", "json", "npy"}
        assert members["cls"] == str(s.identity).encode("ascii")
        assert json.loads(members["json"]) == s.metadata
        np.testing.assert_array_equal(np.load(io.BytesIO(members["npy"])), s.embedding)
        assert _close_to(_decode(members["jpg"]), s.image)


def test_wds_readable_by_webdataset_if_installed(tmp_path: Path, samples: list[DatasetSample]):
    import webdataset as wds  # a test dependency (facegen[test])

    files = _write_all("wds", tmp_path, samples)
    ds = wds.WebDataset([str(f) for f in files], shardshuffle=False)
    rows = list(ds)
    assert {r["__key__"] for r in rows} == {s.key for s in samples}
    assert {int(r["cls"]) for r in rows} == {0, 1, 2}


def test_wds_without_embedding_has_no_npy(tmp_path: Path, samples: list[DatasetSample]) -> None:
    s = samples[0]
    files = _write_all("wds", tmp_path, [DatasetSample(s.identity, s.index, s.image)])
    with tarfile.open(files[0]) as tar:
        assert sorted(tar.getnames()) == [f"{s.key}.cls", f"{s.key}.jpg", f"{s.key}.json"]


# --- RecordIO: an independent reader written from the mxnet / dmlc-core spec ----------------


def _read_record(f, offset: int) -> bytes:
    f.seek(offset)
    out = b""
    while True:
        magic, lrec = struct.unpack("<II", f.read(8))
        assert magic == 0xCED7230A
        cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
        out += f.read((length + 3) // 4 * 4)[:length]
        if cflag in (0, 3):
            return out
        out += struct.pack("<I", 0xCED7230A)


def _unpack(payload: bytes) -> tuple[int, float | np.ndarray, int, bytes]:
    flag, label, rec_id, _id2 = struct.unpack("IfQQ", payload[:24])
    body = payload[24:]
    if flag > 0:
        label = np.frombuffer(body[: 4 * flag], np.float32)
        body = body[4 * flag :]
    return flag, label, rec_id, body


def _read_rec(folder: Path) -> dict:
    idx = {}
    for line in (folder / "train.idx").read_text().splitlines():
        k, off = line.strip().split("\t")
        idx[int(k)] = int(off)
    with open(folder / "train.rec", "rb") as f:
        recs = {k: _unpack(_read_record(f, off)) for k, off in idx.items()}
    return {"idx": idx, "recs": recs}


def test_rec_round_trip_matches_arcface_torch_layout(
    tmp_path: Path, samples: list[DatasetSample]
) -> None:
    files = _write_all("rec", tmp_path, samples)
    assert sorted(f.name for f in files) == ["property", "train.idx", "train.rec"]
    assert (tmp_path / "property").read_text().strip() == "3,112,112"
    rec = _read_rec(tmp_path)
    flag, label, _, _ = rec["recs"][0]
    n, c = len(samples), 3
    assert flag == 2 and tuple(label) == (n + 1, n + 1 + c)
    # arcface_torch's MXFaceDataset: imgidx = range(1, int(header.label[0])).
    ordered = sorted(samples, key=lambda s: (s.identity, s.index))
    for key, s in zip(range(1, int(label[0])), ordered, strict=True):
        flag, lab, rec_id, body = rec["recs"][key]
        assert flag == 0 and lab == float(s.identity) and rec_id == key
        assert _close_to(_decode(body), s.image)
    # Identity records (older insightface iterators): label = (first key, end key).
    for ident in range(c):
        flag, lab, _, _ = rec["recs"][n + 1 + ident]
        a, b = (int(v) for v in lab)
        assert flag == 2 and b - a == 3
        assert all(rec["recs"][k][1] == float(ident) for k in range(a, b))
    assert sorted(rec["idx"]) == list(range(n + 1 + c))


@pytest.mark.parametrize("magic_at", [0, 8, 13, 20])
def test_rec_record_framing_escapes_aligned_magic(magic_at: int) -> None:
    payload = bytearray(os.urandom(29))
    payload[magic_at : magic_at + 4] = struct.pack("<I", 0xCED7230A)
    framed = rec_chunks(bytes(payload))
    assert len(framed) % 4 == 0
    parts = framed.count(struct.pack("<I", 0xCED7230A))
    # Aligned: split into two frames (the magic is dropped from the data and re-inserted by
    # the reader); unaligned: one frame whose data still holds the magic. Either way 2 magics.
    assert parts == 2 and _read_record(io.BytesIO(framed), 0) == payload
    first_flag = struct.unpack("<I", framed[4:8])[0] >> 29
    assert first_flag == (1 if magic_at % 4 == 0 else 0)


def test_rec_rejects_mixed_image_sizes(tmp_path: Path, samples: list[DatasetSample]) -> None:
    w = WRITERS.create("rec", out_dir=tmp_path)
    w.write(samples[0])
    with pytest.raises(ValueError, match="112x112"):
        w.write(DatasetSample(5, 0, np.zeros((64, 64, 3), np.uint8)))
    w.abort()


# --- parquet ----------------------------------------------------------------------------------


def test_parquet_manifest_with_imagefolder_paths(
    tmp_path: Path, samples: list[DatasetSample]
) -> None:
    import pyarrow.parquet as pq  # a test dependency (facegen[test])

    with create_writers(["imagefolder", "parquet"], tmp_path) as w:
        for s in samples:
            w.write(s)
    table = pq.read_table(tmp_path / "manifest.parquet").to_pylist()
    assert len(table) == len(samples)
    ref = _by_key(samples)
    for row in table:
        s = ref[(row["identity"], row["index"])]
        assert row["seed"] == s.metadata["seed"] and row["model"] == "tiny"
        assert row["similarity"] == pytest.approx(s.metadata["similarity"])
        assert _close_to(load_image(tmp_path / row["path"]), s.image)


def test_parquet_path_is_null_without_imagefolder(
    tmp_path: Path, samples: list[DatasetSample]
) -> None:
    import pyarrow.parquet as pq  # a test dependency (facegen[test])

    _write_all("parquet", tmp_path, samples[:2])
    rows = pq.read_table(tmp_path / "manifest.parquet").to_pylist()
    assert [r["path"] for r in rows] == [None, None]


def test_parquet_without_pyarrow_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingDependencyError, match="pyarrow"):
        WRITERS.create("parquet", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- atomicity and errors ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["imagefolder", "wds", "rec"])
def test_close_is_atomic(tmp_path: Path, samples: list[DatasetSample], name: str) -> None:
    w = WRITERS.create(name, out_dir=tmp_path)
    for s in samples:
        w.write(s)
    # Before close: only the hidden staging folder exists.
    entries = os.listdir(tmp_path)
    assert len(entries) == 1 and entries[0].startswith(".facegen-tmp-")
    files = w.close()
    assert files and all(f.is_file() for f in files)
    assert not any(e.startswith(".facegen-tmp-") for e in os.listdir(tmp_path))
    assert w.close() == files  # idempotent
    with pytest.raises(ValueError, match="closed"):
        w.write(samples[0])


def test_exception_in_with_block_leaves_nothing(
    tmp_path: Path, samples: list[DatasetSample]
) -> None:
    with pytest.raises(RuntimeError), create_writers(["imagefolder", "wds", "rec"], tmp_path) as w:
        w.write(samples[0])
        raise RuntimeError("generation failed")
    assert os.listdir(tmp_path) == []


def test_unwritable_out_dir_raises_output_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for name in ["imagefolder", "wds", "rec"]:
        with pytest.raises(OutputError, match="out_dir"):
            WRITERS.create(name, out_dir=blocker / "sub")


def test_unknown_writer_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError) as exc:
        WRITERS.create("tfrecord", out_dir=tmp_path)
    for n in ["imagefolder", "parquet", "rec", "wds"]:
        assert n in str(exc.value)
    with pytest.raises(UnknownNameError, match="imagefolder"):
        create_writers(["imagefolder", "lmdb"], tmp_path)
    assert os.listdir(tmp_path) == []


def test_duplicate_and_invalid_samples_are_refused(
    tmp_path: Path, samples: list[DatasetSample]
) -> None:
    w = WRITERS.create("imagefolder", out_dir=tmp_path)
    w.write(samples[0])
    with pytest.raises(ValueError, match="already written"):
        w.write(samples[0])
    w.abort()
    with pytest.raises(ValueError, match="uint8"):
        DatasetSample(0, 0, np.zeros((112, 112, 3), np.float32))
    with pytest.raises(ValueError, match="identity"):
        DatasetSample(-1, 0, np.zeros((112, 112, 3), np.uint8))
    bad = DatasetSample(0, 0, np.zeros((8, 8, 3), np.uint8), metadata={"x": object()})
    w = WRITERS.create("wds", out_dir=tmp_path / "wds")
    with pytest.raises(ValueError, match="JSON"):
        w.write(bad)
    w.abort()


# --- verification .bin ------------------------------------------------------------------------


def test_verification_bin_round_trip(tmp_path: Path, samples: list[DatasetSample]) -> None:
    pairs = [(samples[0].image, samples[1].image), (samples[2].image, samples[3].image)]
    path = write_verification_bin(tmp_path / "synth.bin", pairs, [True, False])
    # insightface's load_bin: pickle.load(f, encoding="bytes") → (bins, issame_list)
    with open(path, "rb") as f:
        bins, issame = pickle.load(f, encoding="bytes")
    assert issame == [True, False] and len(bins) == 4 and all(isinstance(b, bytes) for b in bins)
    vb = read_verification_bin(path)
    assert vb.issame == [True, False] and vb.bins == bins
    decoded = vb.pairs()
    for (a, b), (ra, rb) in zip(decoded, pairs, strict=True):
        assert _close_to(a, ra) and _close_to(b, rb)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize(
    "payload",
    [
        ([_Evil()], [True]),  # code execution on load
        ([np.zeros(3)], []),  # arbitrary (harmless) class: still refused
    ],
)
def test_verification_bin_refuses_malicious_pickle(tmp_path: Path, payload) -> None:
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(InvalidDatasetFileError, match="refusing"):
        read_verification_bin(path)


@pytest.mark.parametrize(
    "payload", [([b"a", b"b"], [1]), ([b"a"], [True]), ("bins", []), ([b"a", b"b"], [True], 1)]
)
def test_verification_bin_refuses_wrong_structure(tmp_path: Path, payload) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(InvalidDatasetFileError):
        read_verification_bin(path)


def test_verification_bin_validates_inputs(tmp_path: Path) -> None:
    img = np.zeros((112, 112, 3), np.uint8)
    with pytest.raises(ValueError, match="issame"):
        write_verification_bin(tmp_path / "x.bin", [(img, img)], [True, False])
    assert not (tmp_path / "x.bin").exists()
