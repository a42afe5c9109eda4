"""Photo sources of the face cache: files, WebDataset shards, facegen dataset folders.

Photos are ORL faces (92×112 grey), written into tar shards built here with :mod:`tarfile`,
by facegen's own :class:`WebDatasetWriter`, and into a dataset folder laid out as
``facegen dataset generate`` lays it out. The face-cache test runs the real dlib analyzer on
five of them, upscaled ×2 for its detector.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facegen.errors import InvalidArgumentError, InvalidImageError
from facegen.image_io import load_image
from facegen.training.diffusion.photo_sources import (
    DatasetFolder,
    FilePhotos,
    TarPhoto,
    TarShard,
    UnreadablePhoto,
    expand_braces,
    photo_sources,
)


def _orl(orl_dir: Path, person: int, i: int, scale: int = 1) -> Image.Image:
    img = Image.open(orl_dir / f"s{person}" / f"{i}.pgm").convert("RGB")
    return img.resize((92 * scale, 112 * scale), Image.BICUBIC) if scale > 1 else img


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _write_tar(path: Path, members: list[tuple[str, bytes | None]]) -> Path:
    """A tar of ``(name, data)`` members; ``data=None`` adds a folder."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _items(images: object) -> list:
    return [item for source in photo_sources(images) for item in source]  # type: ignore[arg-type]


# --------------------------------------------------------------------------- brace patterns


def test_brace_patterns_expand_ranges_and_lists() -> None:
    assert expand_braces("/d/shards-{000000..000002}.tar") == [
        "/d/shards-000000.tar",
        "/d/shards-000001.tar",
        "/d/shards-000002.tar",
    ]
    assert expand_braces("s{8..10}") == ["s8", "s9", "s10"]  # no leading zero: no padding
    assert expand_braces("s{08..10}") == ["s08", "s09", "s10"]
    assert expand_braces("s{3..1}") == ["s3", "s2", "s1"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("x{,y{1,2}}") == ["x", "xy1", "xy2"]
    assert expand_braces("{x}{1,2}") == ["{x}1", "{x}2"]  # a group of one stays as it is
    assert expand_braces("a{b{1..2}") == ["a{b1", "a{b2"]  # an unmatched brace stays
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(InvalidArgumentError, match="at most"):
        expand_braces("s{0..99999999}.tar")


# --------------------------------------------------------------------------- tar shards


def test_tar_shard_gives_images_labels_and_captions(orl_dir: Path, tmp_path: Path) -> None:
    png = _encode(_orl(orl_dir, 10, 1), "PNG")
    jpg = _encode(_orl(orl_dir, 11, 1), "JPEG")
    members: list[tuple[str, bytes | None]] = [
        ("a.png", png),
        ("a.cls", b" 3\n"),
        ("a.txt", b"a photo of a man with glasses\n"),
        ("people", None),  # a folder member: passed over
        ("people/b.jpg", jpg),
        ("people/b.json", json.dumps({"identity": "bob", "label": 9}).encode()),
        ("c.png", png),  # .jpeg is preferred over .png whatever the order in the tar
        ("c.jpeg", jpg),
        ("c.json", json.dumps({"class": 7}).encode()),
        ("meta.json", b"{}"),  # no image: not a photo
        ("d.seg.png", png),  # extension "seg.png": not an image of sample "d"
        ("e.npy", b"\x93NUMPY"),
        ("e.pgm", (orl_dir / "s12" / "1.pgm").read_bytes()),
    ]
    shard = _write_tar(tmp_path / "shard.tar", members)
    (source,) = photo_sources(shard)
    assert isinstance(source, TarShard) and source.count() is None
    items = list(source)
    assert all(isinstance(it, TarPhoto) for it in items)
    assert [it.source for it in items] == [
        f"{shard}#a.png",
        f"{shard}#people/b.jpg",
        f"{shard}#c.jpeg",
        f"{shard}#e.pgm",
    ]
    assert [it.label for it in items] == ["3", "bob", "7", None]
    assert [it.caption for it in items] == ["a photo of a man with glasses", None, None, None]
    assert items[1].names == (f"{shard}#people/b.jpg", "people/b.jpg", "b.jpg", "people/b", "b")
    st = shard.stat()
    assert items[0].key() == [str(shard.resolve()), st.st_size, st.st_mtime_ns, "a.png"]
    assert source.file_keys() == [[str(shard.resolve()), st.st_size, st.st_mtime_ns]]
    # the same pixels as the files: PNG and PGM exactly, JPEG as PIL decodes it
    ref = load_image(orl_dir / "s10" / "1.pgm")
    np.testing.assert_array_equal(items[0].load(), ref)
    np.testing.assert_array_equal(items[3].load(), load_image(orl_dir / "s12" / "1.pgm"))
    np.testing.assert_array_equal(items[1].load(), load_image(jpg))
    assert items[2].load().shape == (112, 92, 3)
    assert not any(tmp_path.glob("people*")) and sorted(os.listdir(tmp_path)) == ["shard.tar"]


def test_brace_pattern_folder_of_shards_and_mixed_lists(orl_dir: Path, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    for s in range(3):
        members: list[tuple[str, bytes | None]] = []
        for i in range(2):
            members += [
                (f"{s}_{i}.png", _encode(_orl(orl_dir, 10 + s, i + 1), "PNG")),
                (f"{s}_{i}.cls", str(s).encode()),
            ]
        _write_tar(shards / f"shards-{s:06d}.tar", members)
    (shards / "notes.txt").write_text("not a shard")
    expected = [f"{s}_{i}.png" for s in range(3) for i in range(2)]

    by_pattern = photo_sources(str(shards / "shards-{000000..000002}.tar"))
    assert [type(s) for s in by_pattern] == [TarShard] * 3
    assert [it.source.split("#")[1] for s in by_pattern for it in s] == expected
    assert [it.label for s in by_pattern for it in s] == ["0", "0", "1", "1", "2", "2"]
    by_folder = _items(shards)  # sorted by name
    assert [it.source for it in by_folder] == [it.source for s in by_pattern for it in s]
    assert [
        it.source.split("#")[1] for it in _items(str(shards / "shards-{000002,000000}.tar"))
    ] == [
        "2_0.png",
        "2_1.png",
        "0_0.png",
        "0_1.png",
    ]
    with pytest.raises(InvalidArgumentError, match=r"1 missing.*shards-000003\.tar"):
        photo_sources(str(shards / "shards-{000001..000003}.tar"))

    # a list mixing a shard, a folder of photos and a photo; each input once
    person = tmp_path / "photos" / "alice"
    person.mkdir(parents=True)
    _orl(orl_dir, 20, 1).save(person / "1.png")
    _orl(orl_dir, 20, 2).save(person / "2.png")
    lone = tmp_path / "lone.png"
    _orl(orl_dir, 21, 1).save(lone)
    first = shards / "shards-000000.tar"
    sources = photo_sources([first, tmp_path / "photos", lone, str(first), person / "1.png"])
    assert [type(s) for s in sources] == [TarShard, FilePhotos, FilePhotos]
    items = [it for s in sources for it in s]
    assert [it.source for it in items] == [
        f"{first}#0_0.png",
        f"{first}#0_1.png",
        str(person / "1.png"),
        str(person / "2.png"),
        str(lone),
    ]
    assert [it.label for it in items] == ["0", "0", "alice", "alice", tmp_path.name]
    assert sources[1].count() == 2 and sources[1].file_keys()[0][0] == str(
        (person / "1.png").resolve()
    )


def test_facegen_webdataset_writer_round_trips(orl_dir: Path, tmp_path: Path) -> None:
    from facegen.pipelines.dataset.writers import DatasetSample, WebDatasetWriter

    out = tmp_path / "wds"
    originals = {}
    with WebDatasetWriter(out, max_samples=2) as writer:
        for identity in range(2):
            for index in range(3 - identity):
                img = load_image(_orl(orl_dir, 30 + identity, index + 1))
                originals[(identity, index)] = img
                sample = DatasetSample(
                    identity, index, img, np.ones(4, np.float32), {"seed": 7 + index}
                )
                writer.write(sample)
    assert sorted(p.name for p in out.glob("*.tar")) == [
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000002.tar",
    ]
    items = _items(out)
    keys = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert [it.source.rsplit("#", 1)[1] for it in items] == [
        f"{i:06d}_{j:04d}.jpg" for i, j in keys
    ]
    assert [it.label for it in items] == [str(i) for i, _ in keys]
    for it, k in zip(items, keys):
        diff = np.abs(it.load().astype(int) - originals[k].astype(int))
        assert diff.mean() < 2.0  # JPEG quality 95
    assert len({tuple(it.key()) for it in items}) == 5


def test_corrupt_member_and_bad_label_are_reported_the_rest_used(
    orl_dir: Path, tmp_path: Path
) -> None:
    png = _encode(_orl(orl_dir, 10, 2), "PNG")
    shard = _write_tar(
        tmp_path / "damaged.tar",
        [
            ("a.png", png),
            ("b.png", png[: len(png) // 2]),  # cut in the middle of the image data
            ("c.png", png),
            ("c.cls", b"three"),
            ("d.png", b"not an image at all"),
            ("e.png", png),
        ],
    )
    items = _items(shard)
    assert [it.source.split("#")[1] for it in items] == [
        "a.png",
        "b.png",
        "c.png",
        "d.png",
        "e.png",
    ]
    assert items[0].load().shape == (112, 92, 3) and items[4].load().shape == (112, 92, 3)
    for it in (items[1], items[3]):
        with pytest.raises(InvalidImageError, match=f"^{re.escape(it.source)}: "):
            it.load()
    assert isinstance(items[2], UnreadablePhoto)
    with pytest.raises(InvalidImageError, match=r"c\.cls` must hold an integer label"):
        items[2].load()


def test_truncated_or_corrupt_tar_keeps_the_samples_before_the_damage(
    orl_dir: Path, tmp_path: Path
) -> None:
    members: list[tuple[str, bytes | None]] = []
    for i in range(3):
        members += [(f"{i}.png", _encode(_orl(orl_dir, 15, i + 1), "PNG")), (f"{i}.cls", b"15")]
    whole = _write_tar(tmp_path / "whole.tar", members).read_bytes()
    with tarfile.open(tmp_path / "whole.tar") as tar:
        infos = tar.getmembers()
    last_png = next(m for m in infos if m.name == "2.png")

    # cut inside the last image's data: the first two samples are used
    cut = tmp_path / "cut_in_data.tar"
    cut.write_bytes(whole[: last_png.offset_data + 100])
    items = _items(cut)
    assert [type(it) for it in items] == [TarPhoto, TarPhoto, UnreadablePhoto]
    assert items[2].source == f"{cut}#2.png"
    with pytest.raises(InvalidImageError, match="truncated or corrupt tar"):
        items[2].load()
    assert items[1].load().shape == (112, 92, 3)

    # cut at a header (tarfile stops silently there): reported by the missing end block
    at_header = tmp_path / "cut_at_header.tar"
    at_header.write_bytes(whole[: last_png.offset])
    items = _items(at_header)
    assert [type(it) for it in items] == [TarPhoto, TarPhoto, UnreadablePhoto]
    assert items[2].source == str(at_header)
    with pytest.raises(InvalidImageError, match=r"ends at byte \d+ \(no end-of-archive block"):
        items[2].load()

    # a damaged header in the middle
    garbled = bytearray(whole)
    garbled[last_png.offset : last_png.offset + 100] = b"\xff" * 100
    bad = tmp_path / "bad_header.tar"
    bad.write_bytes(bytes(garbled))
    items = _items(bad)
    assert [it.source.split("#")[-1] for it in items[:2]] == ["0.png", "1.png"]
    assert isinstance(items[2], UnreadablePhoto) and len(items) == 3
    with pytest.raises(InvalidImageError, match="damaged header"):
        items[2].load()

    # not a tar at all
    fake = tmp_path / "fake.tar"
    fake.write_bytes(b"\x89PNG not a tar" * 100)
    (only,) = _items(fake)
    with pytest.raises(InvalidImageError, match="not a readable uncompressed tar"):
        only.load()

    # the complete tar: every sample, nothing reported
    assert [type(it) for it in _items(tmp_path / "whole.tar")] == [TarPhoto] * 3


# --------------------------------------------------------------------------- dataset folders


def _dataset_folder(orl_dir: Path, out: Path) -> None:
    """A folder laid out as ``facegen dataset generate`` leaves it: identities 0 and 1 done
    (identity 0 journaled by two shard counts), identity 2 failed."""
    from facegen.pipelines.dataset.build import crop_path

    (out / "journal").mkdir(parents=True)
    (out / "config.json").write_text(json.dumps({"crop_size": 112}))
    for ident, n in ((0, 2), (1, 1), (2, 1)):
        for j in range(n):
            path = crop_path(out, ident, j)
            path.parent.mkdir(parents=True, exist_ok=True)
            _orl(orl_dir, 35 + ident, j + 1).save(path)
    done0 = {
        "identity": 0,
        "status": "done",
        "images": [{"index": 0, "seed": 1, "prompt": "smiling"}, {"index": 1, "seed": 2}],
        "rejections": [],
    }
    done1 = {"identity": 1, "status": "done", "images": [{"index": 0, "seed": 3}], "rejections": []}
    failed2 = {"identity": 2, "status": "failed", "images": [{"index": 0}], "rejections": []}
    lines = {"shard-0-of-2.jsonl": [done0, failed2], "shard-1-of-2.jsonl": [done1, done0]}
    for name, recs in lines.items():
        (out / "journal" / name).write_text("".join(json.dumps(r) + "\n" for r in recs))
    (out / "full" / "000000").mkdir(parents=True)  # other images in the folder are not crops
    _orl(orl_dir, 39, 1).save(out / "full" / "000000" / "0000.jpg")


def _done(identity: int) -> dict:
    return {"identity": identity, "status": "done", "images": [], "rejections": []}


def test_dataset_folder_gives_committed_crops_with_identity_labels(
    orl_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ds"
    _dataset_folder(orl_dir, out)
    (source,) = photo_sources(out)
    assert isinstance(source, DatasetFolder) and source.count() == 3
    items = list(source)
    assert [it.source for it in items] == [
        str(out / "images" / "000000" / "0000.png"),
        str(out / "images" / "000000" / "0001.png"),
        str(out / "images" / "000001" / "0000.png"),
    ]
    assert [it.label for it in items] == ["0", "0", "1"]
    assert [it.caption for it in items] == ["smiling", None, None]
    np.testing.assert_array_equal(items[2].load(), load_image(_orl(orl_dir, 36, 1)))
    journal = out / "journal" / "shard-0-of-2.jsonl"
    assert [str(journal.resolve()), journal.stat().st_size] == source.file_keys()[0][:2]
    # a new identity committed: the keys change
    before = source.file_keys()
    with open(out / "journal" / "shard-0-of-2.jsonl", "a") as f:
        f.write(json.dumps(_done(3)) + "\n")
    assert DatasetFolder(out).file_keys() != before
    # records without the layout are refused with the folder's name
    (out / "journal" / "shard-9-of-9.jsonl").write_text('{"identity": 4, "status": "done"}\n')
    with pytest.raises(InvalidArgumentError, match="journal records must have"):
        photo_sources([out])


def test_paths_that_are_not_photos_are_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "shards.tar.gz").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgumentError, match=r"notes\.txt"):
        photo_sources(tmp_path / "notes.txt")
    with pytest.raises(InvalidArgumentError, match="compressed tars are not read"):
        photo_sources([tmp_path / "shards.tar.gz"])
    with pytest.raises(InvalidArgumentError, match="not found"):
        photo_sources(tmp_path / "missing.tar")
    with pytest.raises(InvalidArgumentError, match="at least one photo"):
        photo_sources(tmp_path / "empty")
    with pytest.raises(InvalidArgumentError, match="must be a path"):
        photo_sources(3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the face cache


def test_face_cache_from_a_shard_matches_the_same_photos_as_files(
    orl_dir: Path, dlib_analyzer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from facegen.training.diffusion.face_cache_build import build_face_cache

    photos = [(10, 1), (10, 2), (11, 1), (11, 2), (12, 1)]
    folder = tmp_path / "photos"
    members: list[tuple[str, bytes | None]] = []
    for person, i in photos:
        data = _encode(_orl(orl_dir, person, i, scale=2), "PNG")  # ×2: dlib's HOG needs it
        (folder / str(person)).mkdir(parents=True, exist_ok=True)
        (folder / str(person) / f"{i}.png").write_bytes(data)
        members += [(f"{person}_{i}.png", data), (f"{person}_{i}.cls", str(person).encode())]
        if (person, i) == (11, 2):  # a caption: a .txt member, a photo.txt beside the file
            members.append(("11_2.txt", b"a photo of a man"))
            (folder / "11" / "2.txt").write_text("a photo of a man")
    members.insert(2, ("broken.png", b"\x89PNG\r\n\x1a\n garbage"))
    shard = _write_tar(tmp_path / "shard.tar", members)

    kw = {"analyzer": dlib_analyzer, "size": 64, "template": "arcface", "progress": False}
    from_files = build_face_cache(folder, tmp_path / "c_files", **kw)
    with caplog.at_level(logging.WARNING):
        from_tar = build_face_cache(str(shard), tmp_path / "c_tar", **kw)
    assert len(from_files) == len(from_tar) == 5
    np.testing.assert_array_equal(from_tar.read("pixels"), from_files.read("pixels"))
    np.testing.assert_allclose(
        from_tar.read("embeddings"), from_files.read("embeddings"), rtol=0, atol=1e-6
    )
    assert from_tar.encoder_id == from_files.encoder_id == "dlib-resnet-v1"
    assert [it.source for it in from_tar.items] == [f"{shard}#{p}_{i}.png" for p, i in photos]
    labels = ["10", "10", "11", "11", "12"]
    assert from_tar.index["labels"] == from_files.index["labels"] == labels
    assert from_tar.captions == from_files.captions == [None, None, None, "a photo of a man", None]
    assert from_tar.index["skipped"] == [f"{shard}#broken.png"]
    assert any(f"{shard}#broken.png" in r.getMessage() for r in caplog.records)

    # reused while the shard is unchanged, rebuilt when it changes
    index = tmp_path / "c_tar" / "index.json"
    stamp = index.stat().st_mtime_ns
    build_face_cache(shard, tmp_path / "c_tar", **kw)
    assert index.stat().st_mtime_ns == stamp
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    rebuilt = build_face_cache(shard, tmp_path / "c_tar", **kw)
    assert rebuilt.index["fingerprint"] != from_tar.index["fingerprint"] and len(rebuilt) == 5

    # a truncated copy: the faces before the cut are cached, the rest is reported
    with tarfile.open(shard) as tar:
        cut_at = next(m for m in tar.getmembers() if m.name == "11_2.png").offset_data + 50
    cut = tmp_path / "cut.tar"
    cut.write_bytes(shard.read_bytes()[:cut_at])
    partial = build_face_cache(cut, tmp_path / "c_cut", **kw)
    assert [it.source for it in partial.items] == [
        f"{cut}#10_1.png",
        f"{cut}#10_2.png",
        f"{cut}#11_1.png",
    ]
    assert partial.index["skipped"] == [f"{cut}#broken.png", f"{cut}#11_2.png"]
    np.testing.assert_array_equal(partial.read("embeddings"), from_tar.read("embeddings")[:3])
