"""Embedding files, safe output names and the analysis writer."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from facegen import Face, IdentityEmbedding, IncompatibleEmbeddingError
from facegen.align import arcface_template
from facegen.analysis_writer import AnalysisWriter
from facegen.embedding_io import load_embeddings, save_embeddings
from facegen.errors import InvalidModelError, OutputError
from facegen.fileio import atomic_write, write_json
from facegen.image_io import load_image, read_metadata, save_image
from facegen.paths import safe_child, safe_name


def _emb(v: list[float], enc: str = "enc") -> IdentityEmbedding:
    a = np.array(v, np.float32)
    return IdentityEmbedding(a / np.linalg.norm(a), enc)


def test_embeddings_roundtrip(tmp_path: Path) -> None:
    embs = [_emb([1, 2, 3]), _emb([3, 2, 1])]
    p = save_embeddings(tmp_path / "e.safetensors", embs, names=["a.jpg", "b.jpg"], extra={"k": 1})
    back, names = load_embeddings(p)
    assert names == ["a.jpg", "b.jpg"] and back[0].encoder_id == "enc"
    np.testing.assert_allclose(back[1].vector, embs[1].vector)
    with pytest.raises(IncompatibleEmbeddingError):
        save_embeddings(tmp_path / "x.safetensors", [_emb([1, 0]), _emb([1, 0], "other")])
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(InvalidModelError, match="junk"):
        load_embeddings(tmp_path / "junk.safetensors")


@pytest.mark.parametrize("key", ["encoder_id", "names", "normalized", "facegen_version"])
def test_save_embeddings_refuses_reserved_extra_keys(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match=f"`extra` must not use the reserved key.*{key}"):
        save_embeddings(tmp_path / "e.safetensors", [_emb([1, 0])], extra={key: "x", "ok": 1})
    assert not (tmp_path / "e.safetensors").exists()


def _raw_embeddings_file(path: Path, rows: int = 2, **meta: str) -> Path:
    from safetensors.numpy import save_file

    vecs = np.tile(np.array([[0.6, 0.8]], np.float32), (rows, 1))
    save_file({"embeddings": vecs}, str(path), metadata={"encoder_id": "enc", **meta})
    return path


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"names": "[not json"}, "`names` metadata must be a JSON list of 2 strings"),
        ({"names": '{"a": 1}'}, "`names` metadata must be a JSON list of 2 strings"),
        ({"names": '["a", 2]'}, "`names` metadata must be a JSON list of 2 strings"),
        ({"names": '["only one"]'}, "`names` metadata must be a JSON list of 2 strings, got 1"),
        ({"normalized": "yes"}, "`normalized` metadata must be true or false, got 'yes'"),
        ({"normalized": "1"}, "`normalized` metadata must be true or false, got '1'"),
        ({"encoder_id": ""}, "encoder_id"),
    ],
)
def test_load_embeddings_refuses_bad_metadata(tmp_path: Path, meta: dict, match: str) -> None:
    path = _raw_embeddings_file(tmp_path / "bad.safetensors", **meta)
    with pytest.raises(InvalidModelError, match=match) as ei:
        load_embeddings(path)
    assert str(path) in str(ei.value)


def test_load_embeddings_reads_files_without_names(tmp_path: Path) -> None:
    embs, names = load_embeddings(_raw_embeddings_file(tmp_path / "e.safetensors"))
    assert len(embs) == 2 and names == [] and embs[0].normalized
    not_unit = tmp_path / "n.safetensors"
    from safetensors.numpy import save_file

    save_file({"embeddings": np.ones((1, 2), np.float32)}, str(not_unit), {"encoder_id": "e"})
    with pytest.raises(InvalidModelError, match="L2 norm"):
        load_embeddings(not_unit)


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("../../etc/passwd", "etc_passwd"),
        ("a b/c", "a_b_c"),
        ("..", "unnamed"),
        ("ok-1.x", "ok-1.x"),
    ],
)
def test_safe_name(raw: str, want: str) -> None:
    assert safe_name(raw) == want


def test_safe_child_refuses_escape(tmp_path: Path) -> None:
    assert safe_child(tmp_path, "x.png") == (tmp_path / "x.png").resolve()
    with pytest.raises(OutputError):
        safe_child(tmp_path, "../x.png")
    with pytest.raises(OutputError):
        safe_child(tmp_path, "sub/x.png")


def test_writer_layout_and_unique_names(tmp_path: Path) -> None:
    img = np.full((100, 100, 3), 90, np.uint8)
    kps = arcface_template(112) * 0.6 + 10
    emb = _emb([1, 1, 0, 0], "fake")
    face = Face(bbox=[10, 10, 80, 80], score=0.8, kps5=kps, embedding=emb)
    w = AnalysisWriter(tmp_path / "out", crop_size=64, provenance={"detector": "fake"})
    r1 = w.write(Path("a/photo.jpg"), img, [face])
    r2 = w.write(Path("b/photo.jpg"), img, [face, face])
    w.add_failure("bad.jpg", "corrupt")
    manifest = json.loads(w.close().read_text())
    out = tmp_path / "out"
    assert (
        r1["faces"][0]["crop"] == "photo_face0.png"
        and r2["faces"][1]["crop"] == "photo-2_face1.png"
    )
    assert load_image(out / "photo-2_face1.png").shape == (64, 64, 3)
    assert read_metadata(out / "photo_face0.png")["face_index"] == 0
    embs, names = load_embeddings(out / "photo-2.safetensors")
    assert len(embs) == 2 and names[1].endswith("#1")
    rec = json.loads((out / "photo.json").read_text())
    assert rec["faces"][0]["kps5"] and rec["preview"] == "photo_preview.png"
    assert manifest["detector"] == "fake" and manifest["facegen_version"]
    assert [i.get("error") for i in manifest["images"]] == [None, None, "corrupt"]


def test_writer_never_writes_over_the_manifest(tmp_path: Path) -> None:
    img = np.full((100, 100, 3), 90, np.uint8)
    face = Face(bbox=[10, 10, 80, 80], score=0.8, kps5=arcface_template(112) * 0.6 + 10)
    w = AnalysisWriter(tmp_path / "out", preview=False, provenance={"detector": "fake"})
    rec = w.write(Path("in/manifest.jpg"), img, [face])
    rec2 = w.write(Path("other/MANIFEST.png"), img, [face])  # one file on case-blind disks
    manifest = json.loads(w.close().read_text())
    assert manifest["detector"] == "fake"
    results = [i["result"] for i in manifest["images"]]
    assert results == ["manifest-2.json", "MANIFEST-3.json"]
    assert rec["faces"][0]["crop"] == "manifest-2_face0.png"
    assert rec2["faces"][0]["crop"] == "MANIFEST-3_face0.png"
    assert json.loads((tmp_path / "out" / "manifest-2.json").read_text())["source"].endswith(
        "manifest.jpg"
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"crop_size": 8}, r"`crop_size` must be an integer in \[16, 4096\], got 8"),
        ({"margin": float("nan")}, "`margin` must be a finite number > 0, got nan"),
        ({"template": "dlib"}, "`template` must be one of 'arcface', 'ffhq', .*got 'dlib'"),
    ],
)
def test_writer_checks_its_options(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AnalysisWriter(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_writer_refuses_unwritable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot create output folder"):
        AnalysisWriter(blocker / "out")


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    try:
        yield 0o644
    finally:
        os.umask(old)


def test_outputs_get_ordinary_file_permissions(tmp_path: Path, umask_022: int) -> None:
    img = np.zeros((4, 4, 3), np.uint8)
    files = [
        save_image(img, tmp_path / "a.png"),
        save_embeddings(tmp_path / "e.safetensors", [_emb([1, 0])]),
    ]
    write_json(tmp_path / "r.json", {"a": 1})
    files.append(tmp_path / "r.json")
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == umask_022, f.name


def test_failed_writes_leave_no_temporary_file(tmp_path: Path) -> None:
    circular: list[object] = []
    circular.append(circular)
    with pytest.raises(ValueError, match=r"[Cc]ircular"):
        write_json(tmp_path / "r.json", circular)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_errors_name_the_path(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    with pytest.raises(OutputError, match=r"cannot write .*x\.bin"), atomic_write(target) as tmp:
        tmp.write_bytes(b"data")
        tmp.unlink()  # the rename now fails
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with atomic_write(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and list(tmp_path.iterdir()) == [target]
