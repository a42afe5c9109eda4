"""Provenance labels: metadata round trips, the invisible watermark on real photos, bad input."""

from __future__ import annotations

import hashlib
import io
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import facegen
from facegen.errors import FacegenError, InvalidImageError, OutputError
from facegen.image_io import load_image, read_metadata
from facegen.provenance import (
    DIGITAL_SOURCE_TYPES,
    InvalidArgumentError,
    ProvenanceInfo,
    check,
    provenance_metadata,
    read_provenance,
    save_with_provenance,
    stamp,
)
from facegen.watermark import (
    MIN_DETECT_SIDE,
    MIN_EMBED_SIDE,
    SCHEME,
    detect_watermark,
    embed_watermark,
)

IPTC_AI = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
XMP_NS = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
}
PARAMS = {"seed": np.int64(7), "guidance": np.float32(2.5), "model": "arc2face", "ids": (1, 2)}


def jpeg(img: np.ndarray, quality: int = 75) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def half(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    return np.asarray(Image.fromarray(img).resize((w // 2, h // 2), Image.Resampling.BICUBIC))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def upscale(img: np.ndarray, height: int = 256) -> np.ndarray:
    h, w = img.shape[:2]
    size = (round(w * height / h), height)
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BICUBIC))


@pytest.fixture(scope="module")
def photos(t1_path: Path, hanks_path: Path, astronaut: np.ndarray) -> dict[str, np.ndarray]:
    """Real photos of several sizes: 1280×886, 512×512, 112×112 and a face crop."""
    t1 = load_image(t1_path)
    return {
        "t1": t1,
        "astronaut": astronaut,
        "hanks": load_image(hanks_path),
        "t1_face_crop": np.ascontiguousarray(t1[230:430, 400:600]),
    }


@pytest.fixture(scope="module")
def orl_photos(orl_dir: Path) -> dict[str, np.ndarray]:
    """Ten ORL photos of different people, upscaled from 92×112 to 210×256."""
    return {f"s{k}": upscale(load_image(orl_dir / f"s{k}" / "1.pgm")) for k in range(10, 20)}


@pytest.fixture(scope="module")
def marked(photos: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: embed_watermark(img) for name, img in photos.items()}


# --------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_metadata_round_trip(tmp_path: Path, astronaut: np.ndarray, suffix: str) -> None:
    path = save_with_provenance(astronaut, tmp_path / f"out{suffix}", "swap", PARAMS, kind="edited")
    info = read_provenance(path)
    assert info == ProvenanceInfo(
        operation="swap",
        params={"seed": 7, "guidance": 2.5, "model": "arc2face", "ids": [1, 2]},
        kind="edited",
        watermark=SCHEME,
        version=facegen.__version__,
    )
    # The generic facegen metadata reader sees the same record.
    record = read_metadata(path)
    assert record["synthetic"] is True
    assert record["version"] == facegen.__version__
    assert record["digital_source_type"] == DIGITAL_SOURCE_TYPES["edited"]
    report = check(path)
    assert report.info == info and report.synthetic and report.watermark_detected
    assert report.digital_source_type == DIGITAL_SOURCE_TYPES["edited"]
    assert not list(tmp_path.glob(".*.part"))  # the atomic write left no temporary file


def test_png_carries_text_chunks_and_well_formed_xmp(tmp_path: Path, astronaut: np.ndarray) -> None:
    path = save_with_provenance(astronaut, tmp_path / "gen.png", "generate", {"seed": 1})
    with Image.open(path) as img:
        info = dict(img.info)
    assert info["Software"] == f"facegen {facegen.__version__}"
    assert "generate" in info["Description"]
    xmp = info["XML:com.adobe.xmp"]
    desc = ET.fromstring(xmp.split("?>", 1)[1].rsplit("<?xpacket", 1)[0]).find(
        ".//rdf:Description", XMP_NS
    )
    assert desc is not None
    assert desc.get(f"{{{XMP_NS['Iptc4xmpExt']}}}DigitalSourceType") == IPTC_AI
    assert desc.get(f"{{{XMP_NS['xmp']}}}CreatorTool") == f"facegen {facegen.__version__}"


def test_jpeg_carries_exif_and_xmp(tmp_path: Path, astronaut: np.ndarray) -> None:
    path = save_with_provenance(astronaut, tmp_path / "gen.jpg", "generate", {"seed": 1})
    with Image.open(path) as img:
        exif = img.getexif()
        xmp = img.info["xmp"].decode()
    assert exif[0x0131] == f"facegen {facegen.__version__}"  # Software
    assert exif.get_ifd(0x8769)[0x9286].startswith(b"ASCII\0\0\0Synthetic image")  # UserComment
    assert IPTC_AI in xmp


def test_xmp_alone_is_enough(tmp_path: Path, astronaut: np.ndarray) -> None:
    """A tool that drops EXIF but keeps XMP still leaves the record readable."""
    src = save_with_provenance(astronaut, tmp_path / "a.jpg", "anonymize", {"blur": 3})
    with Image.open(src) as img:
        xmp = img.info["xmp"]
        pixels = np.asarray(img.convert("RGB"))
    stripped = tmp_path / "b.jpg"
    Image.fromarray(pixels).save(stripped, quality=95, xmp=xmp)
    info = read_provenance(stripped)
    assert info is not None and info.operation == "anonymize" and info.params == {"blur": 3}


def test_provenance_metadata_fields() -> None:
    fields = provenance_metadata("generate", {"seed": 3}, watermarked=False)
    assert set(fields) == {"facegen", "Software", "Description", "XML:com.adobe.xmp"}
    assert '"watermark": null' in fields["facegen"]
    assert IPTC_AI in fields["XML:com.adobe.xmp"]


def test_stripped_metadata_leaves_the_watermark(tmp_path: Path, astronaut: np.ndarray) -> None:
    path = save_with_provenance(astronaut, tmp_path / "a.png", "generate")
    copy = tmp_path / "copy.jpg"
    Image.fromarray(load_image(path)).save(copy, quality=80)  # no metadata
    report = check(copy)
    assert report.info is None and report.digital_source_type is None
    assert report.watermark_detected and report.synthetic


def test_unmarked_photo_file_has_no_label(t1_path: Path) -> None:
    report = check(t1_path)
    assert report.info is None
    assert report.watermark is not None and not report.watermark.detected
    assert not report.synthetic
    assert "no provenance label" in report.summary()


# --------------------------------------------------------------------------- watermark


def test_watermark_quality(
    photos: dict[str, np.ndarray],
    marked: dict[str, np.ndarray],
    orl_photos: dict[str, np.ndarray],
) -> None:
    for name, img in photos.items():
        assert psnr(marked[name], img) >= 38.0, name
    for name, img in orl_photos.items():
        assert psnr(embed_watermark(img), img) >= 38.0, name


def test_watermark_detected_on_marked_photos(
    photos: dict[str, np.ndarray], marked: dict[str, np.ndarray]
) -> None:
    for name, img in marked.items():
        result = detect_watermark(img)
        assert result.detected, (name, result)
        assert result.p_value <= 1e-4 and result.score > 4


@pytest.mark.parametrize(
    "attack", [jpeg, half, lambda x: jpeg(half(x))], ids=["jpeg75", "half", "half+jpeg75"]
)
def test_watermark_survives(
    marked: dict[str, np.ndarray], orl_photos: dict[str, np.ndarray], attack
) -> None:
    images = {k: v for k, v in marked.items() if k != "hanks"}
    images.update({k: embed_watermark(v) for k, v in list(orl_photos.items())[:4]})
    missed = [name for name, img in images.items() if not detect_watermark(attack(img)).detected]
    assert not missed


def test_watermark_survives_jpeg_on_a_112px_face(marked: dict[str, np.ndarray]) -> None:
    assert detect_watermark(jpeg(marked["hanks"])).detected


def test_no_watermark_on_unmarked_photos(
    photos: dict[str, np.ndarray], orl_photos: dict[str, np.ndarray]
) -> None:
    scores = []
    for img in [*photos.values(), *orl_photos.values()]:
        for variant in (img, jpeg(img), half(img)):
            result = detect_watermark(variant)
            assert not result.detected
            scores.append(result.score)
    assert max(scores) < 4.0


def test_other_key_does_not_detect(astronaut: np.ndarray, marked: dict[str, np.ndarray]) -> None:
    assert not detect_watermark(marked["astronaut"], key="someone else").detected
    private = embed_watermark(astronaut, key=b"private")
    assert detect_watermark(private, key=b"private").detected
    assert not detect_watermark(private).detected


def test_grey_stays_grey_and_result_is_deterministic(orl_photos: dict[str, np.ndarray]) -> None:
    grey = next(iter(orl_photos.values()))
    out = embed_watermark(grey)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert np.array_equal(out, embed_watermark(grey))


def test_opt_out_leaves_pixels_unchanged(tmp_path: Path, astronaut: np.ndarray) -> None:
    stamped = stamp(astronaut, "generate", {"seed": 1}, watermark=False)
    assert np.array_equal(stamped.image, astronaut)
    assert stamped.image is not astronaut
    assert stamped.info.watermark is None
    path = stamped.save(tmp_path / "plain.png")
    assert np.array_equal(load_image(path), astronaut)
    report = check(path)
    assert report.info is not None and report.info.watermark is None
    assert not report.watermark_detected and report.synthetic  # the metadata still says so


def test_stamp_is_idempotent(astronaut: np.ndarray) -> None:
    once = stamp(astronaut, "generate").image
    assert not np.array_equal(once, astronaut)
    twice = stamp(once, "swap", kind="edited").image
    assert np.array_equal(once, twice)


def test_stamp_accepts_pil_images(astronaut: np.ndarray) -> None:
    out = stamp(Image.fromarray(astronaut).convert("RGBA"), "generate")
    assert out.image.dtype == np.uint8 and out.image.shape == astronaut.shape
    assert detect_watermark(out.image).detected


# --------------------------------------------------------------------------- bad input


def test_too_small_to_mark(tmp_path: Path) -> None:
    tiny = np.full((MIN_EMBED_SIDE - 1, 200, 3), 128, np.uint8)
    with pytest.raises(InvalidImageError, match=r"at least 64×64 .* got 200×63"):
        embed_watermark(tiny)
    with pytest.raises(InvalidImageError, match="watermark=False"):
        stamp(tiny, "generate")
    # Opting out works at any size, and check() reports what it could not test.
    path = save_with_provenance(tiny[:20, :20], tmp_path / "t.png", "generate", watermark=False)
    report = check(path)
    assert report.watermark is None and report.info is not None
    assert any("at least 32×32" in note for note in report.notes)
    with pytest.raises(InvalidImageError, match="at least 32×32"):
        detect_watermark(tiny[: MIN_DETECT_SIDE - 1])


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((100, 100), np.uint8),
        np.zeros((100, 100, 4), np.uint8),
        np.zeros((100, 100, 3), np.float32),
        [[0, 1], [2, 3]],
    ],
    ids=["grey2d", "rgba", "float", "list"],
)
def test_wrong_arrays(image: object) -> None:
    with pytest.raises(InvalidImageError, match="`image` must be"):
        embed_watermark(image)  # type: ignore[arg-type]
    with pytest.raises(InvalidImageError, match="`image` must be"):
        stamp(image, "generate")  # type: ignore[arg-type]


def test_corrupt_and_missing_files(tmp_path: Path, t1_path: Path) -> None:
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(t1_path.read_bytes()[:2000])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for bad in (truncated, text, empty, tmp_path / "missing.png"):
        with pytest.raises(InvalidImageError):
            check(bad)
    for bad in (text, tmp_path / "missing.png"):
        with pytest.raises(InvalidImageError):
            read_provenance(bad)
    assert read_provenance(t1_path) is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"operation": ""}, "`operation` must be"),
        ({"operation": "swap faces"}, "`operation` must be"),
        ({"params": [1, 2]}, "`params` must be a mapping"),
        ({"params": {1: "x"}}, "`params` keys must be str"),
        ({"params": {"big": "x" * 20000}}, "at most 16384 bytes"),
        ({"kind": "real"}, "`kind` must be one of"),
        ({"strength": 0}, "`strength` must be"),
        ({"strength": True}, "`strength` must be"),
        ({"key": ""}, "`key` must be"),
    ],
)
def test_bad_arguments(astronaut: np.ndarray, kwargs: dict, match: str) -> None:
    args = {"operation": "generate", **kwargs}
    with pytest.raises(InvalidArgumentError, match=match) as info:
        stamp(astronaut, **args)
    assert isinstance(info.value, FacegenError) and isinstance(info.value, ValueError)


def test_bad_output_path_and_quality(tmp_path: Path, astronaut: np.ndarray) -> None:
    with pytest.raises(OutputError, match=r"\.png, \.jpg"):
        save_with_provenance(astronaut, tmp_path / "out.gif", "generate")
    with pytest.raises(InvalidArgumentError, match="`quality` must be"):
        save_with_provenance(astronaut, tmp_path / "out.jpg", "generate", quality=0)
    with pytest.raises(InvalidArgumentError, match="`false_positive_rate` must be"):
        detect_watermark(astronaut, false_positive_rate=0.7)
    assert not list(tmp_path.iterdir())


def test_check_reads_bytes_file_objects_and_pil_images(
    tmp_path: Path, astronaut: np.ndarray
) -> None:
    path = save_with_provenance(astronaut, tmp_path / "a.webp", "generate", {"seed": 2})
    data = path.read_bytes()
    with path.open("rb") as fh, Image.open(path) as pil:
        for src in (data, fh, pil):
            report = check(src)
            assert report.info is not None and report.info.params == {"seed": 2}
            assert report.watermark_detected
    array_report = check(load_image(path))
    assert array_report.info is None and array_report.watermark_detected
    with pytest.raises(InvalidImageError, match="cannot read an image from int"):
        check(42)  # type: ignore[arg-type]


def test_public_pattern_never_changes() -> None:
    """Images marked by earlier releases must stay detectable: the v1 pattern is frozen."""
    from facegen.watermark import _pattern

    digest = hashlib.sha256(_pattern(b"facegen").tobytes()).hexdigest()
    assert digest == "bb88a7c97e6cbe9577480b99299a7256dbf992a8b9ac604803fcc33d83b2b09a"
