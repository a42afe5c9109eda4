"""Image loading: formats, conversions and a corpus of bad inputs built here."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facegen.errors import InvalidImageError, OutputError
from facegen.image_io import (
    DEFAULT_MAX_PIXELS,
    find_images,
    load_image,
    pixel_limit,
    read_metadata,
    save_image,
)


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w×h pixels, with one tiny IDAT: a decompression-bomb header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


@pytest.fixture()
def corpus(tmp_path: Path, t1_path: Path) -> dict[str, Path]:
    c: dict[str, Path] = {}
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200
    c["empty"] = tmp_path / "empty.jpg"
    c["empty"].write_bytes(b"")
    good = t1_path.read_bytes()
    c["truncated"] = tmp_path / "truncated.jpg"
    c["truncated"].write_bytes(good[: len(good) // 3])
    c["text"] = tmp_path / "notes.jpg"
    c["text"].write_text("this is not an image\n")
    c["tiny"] = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1), (1, 2, 3)).save(c["tiny"])
    c["huge"] = tmp_path / "huge.png"
    c["huge"].write_bytes(_png_header_only(100_000, 100_000))
    c["cmyk"] = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(c["cmyk"])
    c["png16"] = tmp_path / "grey16.png"
    Image.fromarray(np.full((8, 9), 65535 // 2, np.uint16)).save(c["png16"])
    c["palette_alpha"] = tmp_path / "pal.png"
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.info["transparency"] = 0
    pal.save(c["palette_alpha"], transparency=0)
    c["rotated"] = tmp_path / "rotated.jpg"
    img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° CW on display
    img.save(c["rotated"], exif=exif.tobytes())
    c["gif"] = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (6, 5), col) for col in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(c["gif"], save_all=True, append_images=frames[1:], duration=50)
    return c


def test_real_photo_loads_as_rgb_uint8(t1_path: Path) -> None:
    a = load_image(t1_path)
    assert a.dtype == np.uint8 and a.shape == (886, 1280, 3) and a.flags.c_contiguous
    # same pixels from bytes, a file object and PIL
    b = load_image(t1_path.read_bytes())
    with open(t1_path, "rb") as f:
        c = load_image(f)
    d = load_image(Image.open(t1_path))
    assert np.array_equal(a, b) and np.array_equal(a, c) and np.array_equal(a, d)


@pytest.mark.parametrize(
    ("key", "match"),
    [
        ("empty", "0 bytes"),
        ("truncated", "truncated"),
        ("text", "not an image"),
        ("huge", "limit"),
    ],
)
def test_bad_files_raise_invalid_image_naming_the_file(
    corpus: dict[str, Path], key: str, match: str
) -> None:
    with pytest.raises(InvalidImageError, match=match) as ei:
        load_image(corpus[key])
    assert str(corpus[key]) in str(ei.value)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match="not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(InvalidImageError, match="folder"):
        load_image(tmp_path)
    with pytest.raises(InvalidImageError, match="cannot read an image"):
        load_image(12345)  # type: ignore[arg-type]


def test_conversions(corpus: dict[str, Path]) -> None:
    tiny = load_image(corpus["tiny"])
    assert tiny.shape == (1, 1, 3) and tiny[0, 0].tolist() == [1, 2, 3]
    cmyk = load_image(corpus["cmyk"])
    assert cmyk.shape == (20, 30, 3) and abs(int(cmyk[..., 0].mean()) - 200) <= 3
    g16 = load_image(corpus["png16"])
    assert g16.shape == (8, 9, 3) and int(g16[0, 0, 0]) == round((65535 // 2) / 257)
    pal = load_image(corpus["palette_alpha"])
    assert pal[1, 1].tolist() == [255, 255, 255]  # transparent → white background
    assert pal[0, 0].tolist() == [0, 0, 255]
    pal_black = load_image(corpus["palette_alpha"], background=(0, 0, 0))
    assert pal_black[1, 1].tolist() == [0, 0, 0]
    rot = load_image(corpus["rotated"])
    assert rot.shape == (20, 10, 3)  # EXIF orientation applied
    gif = load_image(corpus["gif"])
    assert gif.shape == (5, 6, 3) and gif[0, 0, 0] > 200 and gif[0, 0, 1] < 50  # first frame


def test_high_bit_depth_rules_do_not_depend_on_the_data() -> None:
    # float "F": [0, 1] scaled by 255 and clipped; one pixel over 1 changes nothing else
    f = np.array([[0.0, 0.5, 1.0, 1.001, -0.2, 7.0]], np.float32)
    got = load_image(Image.fromarray(f, "F"))[..., 0]
    assert got.tolist() == [[0, 128, 255, 255, 0, 255]]
    assert load_image(Image.fromarray(f[:, :3], "F"))[..., 0].tolist() == [[0, 128, 255]]
    # 32-bit integer "I" is read as 16-bit like "I;16": value / 257, clipped to [0, 255]
    i = np.array([[0, 200, 257 * 100, 65535, 70000, -5]], np.int32)
    got = load_image(Image.fromarray(i, "I"))[..., 0]
    assert got.tolist() == [[0, 1, 100, 255, 255, 0]]
    assert load_image(Image.fromarray(i[:, :2], "I"))[..., 0].tolist() == [[0, 1]]
    i16 = Image.fromarray(np.array([[0, 200, 65535]], np.uint16))
    assert i16.mode.startswith("I;16") and load_image(i16)[0, :, 0].tolist() == [0, 1, 255]


def test_rgba_composited_over_background() -> None:
    arr = np.zeros((2, 2, 4), np.uint8)
    arr[..., 0] = 255
    arr[0, 0, 3] = 255  # opaque red
    arr[0, 1, 3] = 128  # half
    out = load_image(arr)
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[1, 1].tolist() == [255, 255, 255]
    assert 120 < out[0, 1, 1] < 135


def test_array_inputs_are_checked() -> None:
    assert load_image(np.zeros((3, 4), np.uint8)).shape == (3, 4, 3)
    with pytest.raises(InvalidImageError, match="uint8"):
        load_image(np.zeros((3, 4, 3), np.float32))
    with pytest.raises(InvalidImageError, match="empty"):
        load_image(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(InvalidImageError, match="limit"):
        load_image(np.zeros((100, 100, 3), np.uint8), max_pixels=50)


def test_pixel_limit_from_environment(monkeypatch: pytest.MonkeyPatch, t1_path: Path) -> None:
    monkeypatch.setenv("FACEGEN_MAX_PIXELS", "1000")
    with pytest.raises(InvalidImageError, match=r"limit of 1000 .*FACEGEN_MAX_PIXELS"):
        load_image(t1_path)
    assert pixel_limit() == 1000 and pixel_limit(5) == 5
    monkeypatch.setenv("FACEGEN_MAX_PIXELS", "")
    assert pixel_limit() == DEFAULT_MAX_PIXELS


@pytest.mark.parametrize("value", ["lots", "1.5e6", "0", "-5"])
def test_bad_pixel_limit_in_environment(
    monkeypatch: pytest.MonkeyPatch, t1_path: Path, value: str
) -> None:
    monkeypatch.setenv("FACEGEN_MAX_PIXELS", value)
    want = f"FACEGEN_MAX_PIXELS must be a positive integer \\(pixels\\), got '{value}'"
    with pytest.raises(InvalidImageError, match=want):
        load_image(t1_path)
    with pytest.raises(InvalidImageError, match=want):
        pixel_limit()


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_bad_max_pixels_argument(value: object) -> None:
    with pytest.raises(ValueError, match="`max_pixels` must be an integer >= 1, got"):
        load_image(np.zeros((2, 2, 3), np.uint8), max_pixels=value)  # type: ignore[arg-type]


def test_pillow_cap_is_not_blamed_on_facegen_max_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    # 200 MP: above Pillow's own decompression-bomb cap (2 x Image.MAX_IMAGE_PIXELS ≈ 179 MP)
    monkeypatch.setenv("FACEGEN_MAX_PIXELS", str(10**9))
    with pytest.raises(InvalidImageError) as ei:
        load_image(_png_header_only(20_000, 10_000))
    msg = str(ei.value)
    assert f"Pillow's decompression-bomb limit of {2 * Image.MAX_IMAGE_PIXELS}" in msg
    assert "FACEGEN_MAX_PIXELS cannot raise it" in msg and "raise it with" not in msg
    # below Pillow's cap, facegen's own limit is the one to raise
    monkeypatch.delenv("FACEGEN_MAX_PIXELS")
    with pytest.raises(InvalidImageError, match="raise it with max_pixels= or FACEGEN_MAX"):
        load_image(_png_header_only(12_000, 10_000))


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_save_roundtrip_with_metadata(tmp_path: Path, suffix: str) -> None:
    img = (np.arange(16 * 16 * 3) % 251).astype(np.uint8).reshape(16, 16, 3)
    meta = {"seed": 7, "model": "x/y", "nested": {"a": [1, 2]}}
    p = save_image(img, tmp_path / f"sub/out{suffix}", metadata=meta)
    assert read_metadata(p) == meta
    back = load_image(p)
    assert back.shape == img.shape
    if suffix == ".png":
        assert np.array_equal(back, img)
    assert not list(p.parent.glob(".*.part"))


def test_save_errors(tmp_path: Path) -> None:
    img = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(OutputError, match=r"\.png"):
        save_image(img, tmp_path / "x.gif")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        save_image(img, blocker / "x.png")


def test_read_metadata_errors_are_invalid_image_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    for path, match in [
        (junk, "not an image"),
        (tmp_path / "missing.png", "not found"),
        (tmp_path, "folder"),
    ]:
        with pytest.raises(InvalidImageError, match=match) as ei:
            read_metadata(path)
        assert str(path) in str(ei.value)
    plain = tmp_path / "plain.png"
    Image.new("RGB", (2, 2)).save(plain)
    assert read_metadata(plain) == {}


@pytest.mark.parametrize(("suffix", "limit"), [(".webp", 16383), (".jpg", 65500)])
def test_save_refuses_sizes_the_format_cannot_hold(tmp_path: Path, suffix: str, limit: int) -> None:
    img = np.zeros((1, limit + 1, 3), np.uint8)
    with pytest.raises(OutputError, match=f"at most {limit} pixels wide and high") as ei:
        save_image(img, tmp_path / f"wide{suffix}")
    assert f"wide{suffix}" in str(ei.value) and ".png" in str(ei.value)
    assert list(tmp_path.iterdir()) == []


def test_find_images_walks_folders(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for p in ("a/1.jpg", "a/b/2.PNG", "a/readme.txt"):
        (tmp_path / p).write_bytes(b"x")
    got = find_images([tmp_path / "a", tmp_path / "a" / "1.jpg"])
    assert [p.name for p in got] == ["1.jpg", "2.PNG"]
    # an excluded folder is not walked (however it is spelled); explicit files stay
    excl = find_images([tmp_path / "a"], exclude=[tmp_path / "a" / "x" / ".." / "b"])
    assert [p.name for p in excl] == ["1.jpg"]
    assert find_images([tmp_path / "a" / "b" / "2.PNG"], exclude=[tmp_path / "a"])
    with pytest.raises(InvalidImageError, match="not found"):
        find_images([tmp_path / "missing"])


def test_truncated_bytes_do_not_hang() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="PNG")
    with pytest.raises(InvalidImageError):
        load_image(buf.getvalue()[:40])
