"""Provenance: every image facegen generates or edits says so, in its metadata and its pixels.

Two independent labels, so that losing one (a metadata stripper, a screenshot) leaves
the other:

1. **Metadata** — a JSON record (tool, version, operation, parameters, kind, watermark
   scheme; see :class:`ProvenanceInfo`) stored where :func:`facegen.image_io.read_metadata`
   reads it (the PNG text chunk ``facegen``; the EXIF ImageDescription of JPEG/WebP), plus
   the standard places other tools read:

   * an XMP packet (PNG ``iTXt`` ``XML:com.adobe.xmp``; JPEG/WebP XMP) with the IPTC
     digital source type — ``trainedAlgorithmicMedia`` for generated images,
     ``compositeWithTrainedAlgorithmicMedia`` for edits of a real photo — which is how
     Adobe, Google, Meta and the C2PA ecosystem label AI media, ``xmp:CreatorTool``, a
     ``dc:description``, and the same JSON record as ``facegen:Record``;
   * PNG ``Software``/``Description`` text; EXIF ``Software`` and ``UserComment``.

2. **An invisible watermark** (:mod:`facegen.watermark`), on by default; ``watermark=False``
   opts out explicitly and the record then says ``"watermark": null``.

Use :func:`stamp` (pixels + metadata in memory), :func:`save_with_provenance` (stamp and
write PNG/JPEG/WebP atomically), :func:`read_provenance` (the record of a file) and
:func:`check` (everything that can be found: record, XMP source type, watermark).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Literal, cast
from xml.sax.saxutils import escape, unescape

import numpy as np
import PIL
from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from facegen._version import __version__
from facegen.errors import InvalidArgumentError, InvalidImageError, OutputError
from facegen.fileio import atomic_write
from facegen.image_io import load_image
from facegen.validate import check_int
from facegen.watermark import (
    DEFAULT_FALSE_POSITIVE_RATE,
    MIN_DETECT_SIDE,
    MIN_EMBED_SIDE,
    SCHEME,
    WatermarkResult,
    check_strength,
    detect_watermark,
    embed_watermark,
)

__all__ = [
    "DIGITAL_SOURCE_TYPES",
    "InvalidArgumentError",
    "Kind",
    "ProvenanceInfo",
    "ProvenanceReport",
    "Stamped",
    "can_watermark",
    "check",
    "check_video",
    "provenance_metadata",
    "read_provenance",
    "save_with_provenance",
    "stamp",
]

logger = logging.getLogger(__name__)

Kind = Literal["generated", "edited"]
_IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
#: IPTC digital source type for each kind of output.
DIGITAL_SOURCE_TYPES: dict[str, str] = {
    "generated": _IPTC + "trainedAlgorithmicMedia",
    "edited": _IPTC + "compositeWithTrainedAlgorithmicMedia",
}
#: IPTC source types that mean "made or changed by a generative model / algorithm".
_SYNTHETIC_TYPES = frozenset(
    _IPTC + t
    for t in (
        "trainedAlgorithmicMedia",
        "compositeWithTrainedAlgorithmicMedia",
        "algorithmicMedia",
        "compositeSynthetic",
    )
)
_RECORD_KEY = "facegen"  # the same key facegen.image_io.save_image/read_metadata use
_XMP_KEY = "XML:com.adobe.xmp"
_XMP_NS = "https://github.com/facegen/facegen/ns/provenance/1.0/"
_EXIF_IMAGE_DESCRIPTION = 0x010E
_EXIF_SOFTWARE = 0x0131
_EXIF_IFD = 0x8769
_EXIF_USER_COMMENT = 0x9286
_MAX_RECORD_BYTES = 16384
_OPERATION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}")
_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
_MAX_SIDE = {"WEBP": 16383, "JPEG": 65500}
_PIL_WRITES_XMP = int(PIL.__version__.split(".")[0]) >= 11


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)  # a stable order, so equal inputs give equal files
    if isinstance(value, tuple):
        return list(value)
    return str(value)


@dataclass(frozen=True)
class ProvenanceInfo:
    """How an image was made: the record facegen stores in every output.

    ``operation`` is a short name (``"generate"``, ``"swap"``, ``"anonymize"``, …);
    ``params`` the JSON-serialisable settings (seed, model ids, strengths, …; numpy values
    become plain numbers/lists, anything else its ``str``); ``kind`` is ``"generated"``
    (entirely synthetic) or ``"edited"`` (a real photo changed by a model); ``watermark``
    the watermark scheme embedded in the pixels, or ``None`` when it was opted out.
    """

    operation: str
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)
    kind: Kind = "generated"
    watermark: str | None = SCHEME
    version: str = __version__
    generator: str = "facegen"

    @property
    def digital_source_type(self) -> str:
        """The IPTC digital source type URI for :attr:`kind`."""
        return DIGITAL_SOURCE_TYPES[self.kind]

    def to_record(self) -> dict[str, Any]:
        """The JSON-ready record (the dict :func:`facegen.image_io.read_metadata` returns)."""
        return {
            "generator": self.generator,
            "version": self.version,
            "synthetic": True,
            "operation": self.operation,
            "kind": self.kind,
            "digital_source_type": self.digital_source_type,
            "watermark": self.watermark,
            "params": dict(self.params),
        }

    def to_json(self) -> str:
        """:meth:`to_record` as key-sorted ASCII JSON."""
        return json.dumps(self.to_record(), sort_keys=True, default=_json_default)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ProvenanceInfo | None:
        """Parse a stored record; ``None`` when it is not a facegen provenance record."""
        if record.get("generator") != "facegen" or not isinstance(record.get("operation"), str):
            return None
        params = record.get("params", {})
        kind = record.get("kind", "generated")
        watermark = record.get("watermark")
        return cls(
            operation=record["operation"],
            params=params if isinstance(params, dict) else {},
            kind=kind if kind in DIGITAL_SOURCE_TYPES else "generated",
            watermark=watermark if isinstance(watermark, str) else None,
            version=str(record.get("version", "")),
        )


def _make_info(operation: str, params: Mapping[str, Any] | None, kind: str) -> ProvenanceInfo:
    """Validate the public arguments and build the record."""
    if not isinstance(operation, str) or not _OPERATION_RE.fullmatch(operation):
        raise InvalidArgumentError(
            "`operation` must be a name of 1–64 letters, digits or _.:/- starting with a "
            f"letter or digit (e.g. 'swap'), got {operation!r}"
        )
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise InvalidArgumentError(
            f"`params` must be a mapping (dict) or None, got {type(params).__name__}"
        )
    bad = [k for k in params if not isinstance(k, str)]
    if bad:
        raise InvalidArgumentError(f"`params` keys must be str, got {bad[0]!r}")
    if kind not in DIGITAL_SOURCE_TYPES:
        raise InvalidArgumentError(
            f"`kind` must be one of {sorted(DIGITAL_SOURCE_TYPES)}, got {kind!r}"
        )
    # Round-trip through JSON so the record holds exactly what will be stored.
    plain = json.loads(json.dumps(dict(params), default=_json_default))
    info = ProvenanceInfo(operation=operation, params=plain, kind=cast(Kind, kind))
    size = len(info.to_json())
    if size > _MAX_RECORD_BYTES:
        raise InvalidArgumentError(
            f"`params` must serialise to at most {_MAX_RECORD_BYTES} bytes of JSON, got {size}; "
            "keep large data (embeddings, masks) in a side file and store its name"
        )
    return info


def _description(info: ProvenanceInfo) -> str:
    verb = "generated" if info.kind == "generated" else "edited"
    mark = f"; invisible watermark {info.watermark}" if info.watermark else ""
    return (
        f"Synthetic image {verb} by AI with {info.generator} {info.version} "
        f"(operation: {info.operation}{mark})"
    )


def _xmp_packet(info: ProvenanceInfo) -> str:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        '    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
        '    xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
        f'    xmlns:facegen="{_XMP_NS}"\n'
        f'    Iptc4xmpExt:DigitalSourceType="{info.digital_source_type}"\n'
        f'    xmp:CreatorTool="{escape(f"{info.generator} {info.version}")}">\n'
        "   <dc:description><rdf:Alt>"
        f'<rdf:li xml:lang="x-default">{escape(_description(info))}</rdf:li>'
        "</rdf:Alt></dc:description>\n"
        f"   <facegen:Record>{escape(info.to_json())}</facegen:Record>\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>'
    )


def provenance_metadata(
    operation: str,
    params: Mapping[str, Any] | None = None,
    *,
    kind: Kind = "generated",
    watermarked: bool = True,
) -> dict[str, str]:
    """The provenance text fields for an output, keyed as PNG text chunks.

    Keys: ``"facegen"`` (the JSON record), ``"Software"``, ``"Description"`` and
    ``"XML:com.adobe.xmp"`` (the XMP packet). :func:`save_with_provenance` writes them
    (mapped to EXIF/XMP for JPEG and WebP); pipelines can pass them on with their images.
    Raises :class:`InvalidArgumentError` for a bad ``operation``, ``params`` or ``kind``.
    """
    info = _make_info(operation, params, kind)
    if not watermarked:
        info = replace(info, watermark=None)
    return _text_fields(info)


def _text_fields(info: ProvenanceInfo) -> dict[str, str]:
    return {
        _RECORD_KEY: info.to_json(),
        "Software": f"{info.generator} {info.version}",
        "Description": _description(info),
        _XMP_KEY: _xmp_packet(info),
    }


@dataclass(frozen=True, eq=False)
class Stamped:
    """An output image with its provenance: what :func:`stamp` returns.

    ``image`` is RGB ``uint8`` ``(H, W, 3)`` (watermarked unless opted out); ``info`` the
    record; :attr:`metadata` the text fields of :func:`provenance_metadata`.
    """

    image: np.ndarray
    info: ProvenanceInfo

    @property
    def metadata(self) -> dict[str, str]:
        """The text fields to store with the image (see :func:`provenance_metadata`)."""
        return _text_fields(self.info)

    def save(self, path: str | os.PathLike[str], *, quality: int = 95) -> Path:
        """Write to ``path`` (``.png``, ``.jpg``/``.jpeg`` or ``.webp``) with the metadata,
        atomically; ``quality`` (1–100) applies to JPEG and WebP. Raises
        :class:`OutputError` for another suffix, a side too long for the format, or a
        failed write."""
        return _write(self.image, self.info, Path(path), quality)


def _as_rgb(image: np.ndarray | Image.Image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return load_image(image)
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(
            "`image` must be an RGB uint8 numpy array (H, W, 3) or a PIL image, "
            f"got {type(image).__name__}"
        )
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidImageError(
            f"`image` must be an RGB uint8 array (H, W, 3), got {image.dtype} {image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidImageError(f"`image` must not be empty, got shape {image.shape}")
    return image


def stamp(
    image: np.ndarray | Image.Image,
    operation: str,
    params: Mapping[str, Any] | None = None,
    *,
    kind: Kind = "generated",
    watermark: bool = True,
    strength: float = 1.0,
    key: str | bytes | None = None,
) -> Stamped:
    """Label an output of ``operation``: embed the invisible watermark and build its record.

    ``image``: RGB ``uint8`` ``(H, W, 3)`` array or PIL image (converted by
    :func:`facegen.image_io.load_image`'s rules). With ``watermark=True`` (the default) the
    returned pixels carry the mark (PSNR ≈ 39 dB at ``strength=1``; see
    :func:`facegen.watermark.embed_watermark`); an image that already carries it is not
    marked twice, so stamping is idempotent. ``watermark=False`` leaves the pixels
    untouched (a copy) and records ``"watermark": null``. Raises
    :class:`InvalidImageError` for a bad image or one with a side under 64 pixels when
    watermarking, and :class:`InvalidArgumentError` for bad arguments.
    """
    info = _make_info(operation, params, kind)
    if not isinstance(watermark, bool):
        raise InvalidArgumentError(f"`watermark` must be True or False, got {watermark!r}")
    rgb = _as_rgb(image)
    if watermark:
        check_strength(strength)
    else:
        logger.debug("invisible watermark disabled for %r", operation)
        return Stamped(rgb.copy(), replace(info, watermark=None))
    try:
        already = min(rgb.shape[:2]) >= MIN_DETECT_SIDE and detect_watermark(rgb, key=key).detected
        marked = rgb.copy() if already else embed_watermark(rgb, strength=strength, key=key)
    except InvalidImageError as exc:
        raise InvalidImageError(
            f"{exc}; pass watermark=False to label it with metadata only"
        ) from exc
    if already:
        logger.debug("image already carries the %s watermark; not embedding again", SCHEME)
    return Stamped(marked, info)


def can_watermark(image: np.ndarray | Image.Image) -> bool:
    """Whether ``image`` is large enough to carry the watermark (both sides >= 64 px)."""
    h, w = (image.height, image.width) if isinstance(image, Image.Image) else image.shape[:2]
    return min(h, w) >= MIN_EMBED_SIDE


def save_with_provenance(
    image: np.ndarray | Image.Image,
    path: str | os.PathLike[str],
    operation: str,
    params: Mapping[str, Any] | None = None,
    *,
    kind: Kind = "generated",
    watermark: bool = True,
    strength: float = 1.0,
    key: str | bytes | None = None,
    quality: int = 95,
) -> Path:
    """:func:`stamp` ``image`` and write it to ``path`` with its metadata, atomically.

    The format follows the suffix: ``.png`` (text chunks + XMP), ``.jpg``/``.jpeg`` and
    ``.webp`` (EXIF + XMP; ``quality`` 1–100). Returns the path written. Raises as
    :func:`stamp` does, and :class:`OutputError` for another suffix, a side too long for
    the format, or a failed write (nothing is left behind).
    """
    stamped = stamp(
        image, operation, params, kind=kind, watermark=watermark, strength=strength, key=key
    )
    return stamped.save(path, quality=quality)


def _write(image: np.ndarray, info: ProvenanceInfo, path: Path, quality: int) -> Path:
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise OutputError(f"`path` must end in .png, .jpg, .jpeg or .webp, got {path.name!r}")
    quality = check_int(quality, "quality", minimum=1, maximum=100)
    side = _MAX_SIDE.get(fmt)
    h, w = image.shape[:2]
    if side is not None and max(h, w) > side:
        raise OutputError(
            f"cannot write {path}: {fmt} images must be at most {side} pixels wide and high, "
            f"got {w}×{h}; save as .png instead"
        )
    fields = _text_fields(info)
    kwargs: dict[str, Any] = {}
    if fmt == "PNG":
        png = PngInfo()
        png.add_text(_RECORD_KEY, fields[_RECORD_KEY])
        png.add_text("Software", fields["Software"])
        png.add_itxt("Description", fields["Description"])
        png.add_itxt(_XMP_KEY, fields[_XMP_KEY])
        kwargs["pnginfo"] = png
    else:
        exif = Image.Exif()
        exif[_EXIF_IMAGE_DESCRIPTION] = fields[_RECORD_KEY]
        exif[_EXIF_SOFTWARE] = fields["Software"]
        exif.get_ifd(_EXIF_IFD)[_EXIF_USER_COMMENT] = b"ASCII\0\0\0" + fields["Description"].encode(
            "ascii", "replace"
        )
        kwargs.update(exif=exif.tobytes(), quality=quality, xmp=fields[_XMP_KEY].encode("utf-8"))
        if not _PIL_WRITES_XMP:
            logger.warning(
                "Pillow %s cannot write XMP to %s; upgrade to Pillow 11+", PIL.__version__, fmt
            )
    with atomic_write(path) as tmp:
        Image.fromarray(image, "RGB").save(tmp, format=fmt, **kwargs)
    return path


# --------------------------------------------------------------------------- reading

_DST_RE = re.compile(
    r"DigitalSourceType(?:\s*=\s*[\"']([^\"']*)[\"']|\s*>\s*([^<\s]*)\s*<)", re.IGNORECASE
)
_RECORD_RE = re.compile(r"<facegen:Record>([^<]*)</facegen:Record>")


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _parse_record(text: str | None) -> ProvenanceInfo | None:
    if not text:
        return None
    try:
        record = json.loads(text)
    except (TypeError, ValueError):
        return None
    return ProvenanceInfo.from_record(record) if isinstance(record, dict) else None


def _metadata_of(img: Image.Image) -> tuple[ProvenanceInfo | None, str | None]:
    """The facegen record and the XMP digital source type of an opened PIL image."""
    xmp = _text(img.info.get(_XMP_KEY)) or _text(img.info.get("xmp"))
    info = _parse_record(_text(img.info.get(_RECORD_KEY)))
    if info is None:
        try:
            exif = img.getexif()
        except (OSError, ValueError, SyntaxError):  # a malformed EXIF block: ignore it
            exif = Image.Exif()
        info = _parse_record(_text(exif.get(_EXIF_IMAGE_DESCRIPTION)))
    if info is None and xmp:
        m = _RECORD_RE.search(xmp)
        info = _parse_record(unescape(m.group(1)) if m else None)
    source_type = None
    if xmp:
        m = _DST_RE.search(xmp)
        if m:
            source_type = unescape(m.group(1) or m.group(2) or "") or None
    return info, source_type


def _open_metadata(path: Path) -> tuple[ProvenanceInfo | None, str | None]:
    where = str(path)
    if not path.is_file():
        raise InvalidImageError(
            "file not found" if not path.exists() else "not a file", source=where
        )
    try:
        with Image.open(path) as img:
            return _metadata_of(img)
    except UnidentifiedImageError as exc:
        raise InvalidImageError("not an image, or a format PIL cannot read", source=where) from exc
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise InvalidImageError(f"cannot read the image's metadata ({exc})", source=where) from exc


def read_provenance(path: str | os.PathLike[str]) -> ProvenanceInfo | None:
    """The facegen provenance record stored in the image file ``path``, or ``None``.

    Looks in the PNG text chunk, the EXIF ImageDescription, then the XMP packet. A
    missing, unreadable or non-image file raises :class:`InvalidImageError`.
    """
    return _open_metadata(Path(path))[0]


@dataclass(frozen=True)
class ProvenanceReport:
    """Everything :func:`check` found about an image's origin.

    ``info``: facegen's record (``None`` when absent or stripped); ``digital_source_type``:
    the IPTC source type URI in the XMP, whichever tool wrote it; ``watermark``: the
    detector's result, or ``None`` when the image is too small to test (see ``notes``).
    """

    source: str
    info: ProvenanceInfo | None
    digital_source_type: str | None
    watermark: WatermarkResult | None
    notes: tuple[str, ...] = ()

    @property
    def has_metadata(self) -> bool:
        return self.info is not None

    @property
    def watermark_detected(self) -> bool:
        return self.watermark is not None and self.watermark.detected

    @property
    def synthetic(self) -> bool:
        """True when any label says the image is AI-made or AI-edited."""
        return (
            self.info is not None
            or self.digital_source_type in _SYNTHETIC_TYPES
            or self.watermark_detected
        )

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [f"{self.source}: {'synthetic' if self.synthetic else 'no provenance label'}"]
        if self.info is not None:
            lines.append(
                f"  metadata: {self.info.generator} {self.info.version}, operation "
                f"{self.info.operation!r} ({self.info.kind}), watermark {self.info.watermark}"
            )
        else:
            lines.append("  metadata: none")
        if self.digital_source_type:
            lines.append(f"  IPTC digital source type: {self.digital_source_type}")
        if self.watermark is not None:
            wm = self.watermark
            lines.append(
                f"  watermark: {'detected' if wm.detected else 'not detected'} "
                f"(score {wm.score:.1f}, p = {wm.p_value:.2g})"
            )
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _read_source(
    src: str | os.PathLike[str] | bytes | IO[bytes] | Image.Image | np.ndarray,
) -> tuple[np.ndarray, str, ProvenanceInfo | None, str | None]:
    """Pixels (RGB uint8), a name for messages, the facegen record and the XMP source type."""
    if isinstance(src, np.ndarray):
        return load_image(src, name="<array>"), "<array>", None, None
    if isinstance(src, Image.Image):
        source = getattr(src, "filename", "") or "<PIL image>"
        return load_image(src, name=source), source, *_metadata_of(src)
    if isinstance(src, (str, os.PathLike)):
        pixels = load_image(src)
        return pixels, str(src), *_open_metadata(Path(src))
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, source = bytes(src), "<bytes>"
    elif hasattr(src, "read"):
        data, source = src.read(), str(getattr(src, "name", "") or "<file object>")
    else:
        raise InvalidImageError(
            f"cannot read an image from {type(src).__name__}; pass a path, bytes, a file "
            "object, a PIL image or a numpy array"
        )
    pixels = load_image(data, name=source)
    with Image.open(io.BytesIO(data)) as img:
        return pixels, source, *_metadata_of(img)


def check(
    src: str | os.PathLike[str] | bytes | IO[bytes] | Image.Image | np.ndarray,
    *,
    key: str | bytes | None = None,
    false_positive_rate: float = DEFAULT_FALSE_POSITIVE_RATE,
) -> ProvenanceReport:
    """Look for every provenance label on ``src`` (a file path, bytes, file object, PIL image
    or RGB ``uint8`` array): facegen's record, the XMP source type, and the watermark.

    Arrays carry no metadata, so only the watermark is tested. Images with a side under
    :data:`facegen.watermark.MIN_DETECT_SIDE` (32) pixels are reported with
    ``watermark=None`` and a note. Unreadable input raises :class:`InvalidImageError`.
    """
    pixels, source, info, source_type = _read_source(src)
    notes: list[str] = []
    result: WatermarkResult | None = None
    h, w = pixels.shape[:2]
    if min(h, w) >= MIN_DETECT_SIDE:
        result = detect_watermark(pixels, key=key, false_positive_rate=false_positive_rate)
    else:
        notes.append(
            f"image is {w}×{h}; the watermark can only be tested on images at least "
            f"{MIN_DETECT_SIDE}×{MIN_DETECT_SIDE} pixels"
        )
    if info is not None and info.watermark and result is not None and not result.detected:
        notes.append("the metadata says a watermark was embedded, but none was detected")
    return ProvenanceReport(source, info, source_type, result, tuple(notes))


def check_video(
    path: str | os.PathLike[str],
    *,
    frames: int = 5,
    key: str | bytes | None = None,
    false_positive_rate: float = DEFAULT_FALSE_POSITIVE_RATE,
) -> ProvenanceReport:
    """:func:`check` for a video: facegen's record from the container's ``comment`` tag
    (where :func:`facegen.pipelines.editing.video_anonymize.anonymize_video` writes it) and
    the watermark tested on ``frames`` frames spread over the video. The watermark counts as
    detected when it is found on most of them; the result kept is the strongest frame's, and
    a note says on how many it was found. Raises
    :class:`~facegen.errors.InvalidVideoError` for an unreadable video."""
    from facegen.validate import check_int
    from facegen.video_io import VideoReader

    check_int(frames, "frames", minimum=1, maximum=1000)
    reader = VideoReader(path, allow_truncated=True)
    info: ProvenanceInfo | None = None
    comment = reader.info.metadata.get("comment")
    if comment:
        try:
            record = json.loads(comment)
        except ValueError:
            record = None
        if isinstance(record, dict):
            info = ProvenanceInfo.from_record(record)
    count = reader.info.frame_count
    wanted: set[int] | None = None
    if count:
        wanted = {round(i * (count - 1) / max(frames - 1, 1)) for i in range(frames)}
    results: list[WatermarkResult] = []
    notes: list[str] = []
    with reader:
        for frame in reader:
            if wanted is not None and frame.index not in wanted:
                continue
            if min(frame.image.shape[:2]) < MIN_DETECT_SIDE:
                notes.append("frames too small to test the watermark")
                break
            results.append(
                detect_watermark(frame.image, key=key, false_positive_rate=false_positive_rate)
            )
            if wanted is None and len(results) == frames:
                break
    best: WatermarkResult | None = None
    if results:
        found = sum(r.detected for r in results)
        best = min(results, key=lambda r: r.p_value)
        if found * 2 <= len(results):
            best = replace(best, detected=False)
        notes.append(f"watermark found on {found} of {len(results)} frames tested")
    if info is not None and info.watermark and best is not None and not best.detected:
        notes.append("the metadata says a watermark was embedded, but it was not detected")
    source_type = info.digital_source_type if info is not None else None
    return ProvenanceReport(str(path), info, source_type, best, tuple(notes))
