"""Embedding files, safe output names and the analysis writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facegen import Face, IdentityEmbedding, IncompatibleEmbeddingError
from facegen.align import arcface_template
from facegen.analysis_writer import AnalysisWriter
from facegen.embedding_io import load_embeddings, save_embeddings
from facegen.errors import InvalidModelError, OutputError
from facegen.image_io import load_image, read_metadata
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


def test_writer_refuses_unwritable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot create output folder"):
        AnalysisWriter(blocker / "out")
