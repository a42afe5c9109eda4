"""Reading and writing images.

Every image facegen hands on is an RGB ``uint8`` ``(H, W, 3)`` numpy array. Conversion rules
for :func:`load_image`:

* EXIF orientation is applied; animated images (GIF/WebP/APNG/TIFF pages) give their first frame.
* ``L``/``1`` (grey) → the grey value in all three channels.
* ``LA``/``RGBA``/``PA`` and palette images with transparency → composited over ``background``
  (white by default), i.e. ``rgb·α + background·(1-α)``; the alpha channel is then dropped.
* ``P`` → its palette colours; ``CMYK``/``YCbCr``/``LAB``/``HSV`` → PIL's RGB conversion.
* High bit depths follow a fixed rule per mode, never the pixel values (so one odd pixel
  cannot change how a whole image is read): 16-bit ``I;16*`` and 32-bit integer ``I`` are
  taken as 16-bit, ``round(v / 257)`` clipped to [0, 255] (an ``I`` image holding 8-bit
  values therefore comes out dark); float ``F`` is taken as [0, 1], ``round(v · 255)``
  clipped to [0, 255], NaN → 0.

Zero-byte, truncated, non-image and unsupported inputs raise :class:`InvalidImageError` naming
the source. Images with more than ``max_pixels`` pixels (default 64 MP, overridable with the
``FACEGEN_MAX_PIXELS`` environment variable, a positive integer; see :func:`pixel_limit`) are
refused from the header alone, before any pixel is decoded.

Pillow has a decompression-bomb cap of its own, ``2 × PIL.Image.MAX_IMAGE_PIXELS`` (about
179 MP by default), which it applies when it opens a file or bytes. That cap wins over a
larger ``max_pixels``: such files stay refused whatever ``FACEGEN_MAX_PIXELS`` says (raise
``PIL.Image.MAX_IMAGE_PIXELS`` in your program if you really mean to read them). Arrays and
already-open PIL images are not subject to it.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import stat
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from facegen.errors import InvalidImageError, OutputError
from facegen.fileio import atomic_write
from facegen.locks import is_lock_file
from facegen.validate import check_int

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageScan",
    "ImageSource",
    "SkippedEntry",
    "find_images",
    "load_image",
    "pixel_limit",
    "read_metadata",
    "save_image",
    "scan_images",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 64_000_000
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".pgm", ".ppm", ".pnm"}
)
METADATA_KEY = "facegen"
#: Largest width/height each lossy format can store (PNG has no practical limit).
_MAX_SIDE = {"WEBP": 16383, "JPEG": 65500}
_EXIF_IMAGE_DESCRIPTION = 0x010E

ImageSource = (
    str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray
)


def pixel_limit(max_pixels: int | None = None) -> int:
    """The most pixels :func:`load_image` accepts: ``max_pixels`` when given, else the
    ``FACEGEN_MAX_PIXELS`` environment variable when set, else :data:`DEFAULT_MAX_PIXELS`.

    A ``max_pixels`` that is not a positive integer raises ``ValueError``; so does a
    ``FACEGEN_MAX_PIXELS`` that is not one (as :class:`InvalidImageError`, naming it).
    Files are also subject to Pillow's own cap (see the module doc).
    """
    if max_pixels is not None:
        return check_int(max_pixels, "max_pixels", minimum=1)
    env = os.environ.get("FACEGEN_MAX_PIXELS", "").strip()
    if not env:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(env)
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidImageError(
            f"FACEGEN_MAX_PIXELS must be a positive integer (pixels), got {env!r}"
        )
    return value


def _pillow_cap() -> int | None:
    """Pixels above which ``PIL.Image.open`` raises ``DecompressionBombError`` (None: no cap)."""
    limit = Image.MAX_IMAGE_PIXELS
    return None if limit is None else 2 * int(limit)


def _describe(src: Any, name: str | None) -> str:
    if name:
        return name
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return getattr(src, "name", None) or f"<{type(src).__name__}>"


def _flatten_alpha(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    rgba = img.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def _to_rgb(img: Image.Image, background: tuple[int, int, int], where: str) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        return np.asarray(_flatten_alpha(img, background), dtype=np.uint8)
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(img).astype(np.float64)
        # fixed per mode (see the module doc): F is [0, 1]; I and I;16* are 16-bit
        scaled = np.nan_to_num(a, nan=0.0) * 255.0 if mode == "F" else a / 257.0
        g = np.round(np.clip(scaled, 0, 255)).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    try:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as exc:
        raise InvalidImageError(f"unsupported image mode {mode!r} ({exc})", source=where) from exc


def _from_array(
    arr: np.ndarray, where: str, limit: int, background: tuple[int, int, int]
) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise InvalidImageError(
            f"array images must be uint8 RGB (H, W, 3), got dtype {arr.dtype}", source=where
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise InvalidImageError(
            f"array images must have shape (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}",
            source=where,
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidImageError(f"image is empty (shape {arr.shape})", source=where)
    if arr.shape[0] * arr.shape[1] > limit:
        raise InvalidImageError(
            f"image has {arr.shape[1]}×{arr.shape[0]} pixels, more than the limit of {limit}",
            source=where,
        )
    if arr.shape[2] == 4:
        return _to_rgb(Image.fromarray(arr, "RGBA"), background, where)
    return np.ascontiguousarray(arr)


def load_image(
    src: ImageSource,
    *,
    max_pixels: int | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
    name: str | None = None,
) -> np.ndarray:
    """Load ``src`` (path, bytes, binary file object, PIL image or numpy array) as RGB uint8.

    Returns a C-contiguous ``(H, W, 3)`` ``uint8`` array. See the module doc for the
    conversion rules. Raises :class:`InvalidImageError` for anything unreadable.
    """
    where = _describe(src, name)
    limit = pixel_limit(max_pixels)
    if isinstance(src, np.ndarray):
        return _from_array(src, where, limit, background)
    opened_here = False
    if isinstance(src, Image.Image):
        img = src
    else:
        if isinstance(src, (str, os.PathLike)):
            path = Path(src)
            if not path.exists():
                raise InvalidImageError("file not found", source=where)
            if path.is_dir():
                raise InvalidImageError("is a folder, not an image file", source=where)
            if path.stat().st_size == 0:
                raise InvalidImageError("empty file (0 bytes)", source=where)
            fp: Any = str(path)
        elif isinstance(src, (bytes, bytearray, memoryview)):
            if len(src) == 0:
                raise InvalidImageError("empty image data (0 bytes)", source=where)
            fp = io.BytesIO(bytes(src))
        elif hasattr(src, "read"):
            fp = src
        else:
            raise InvalidImageError(
                f"cannot read an image from {type(src).__name__}; pass a path, bytes, a file "
                "object, a PIL image or a numpy array",
                source=where,
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(fp)
        except Image.DecompressionBombError as exc:
            raise InvalidImageError(
                f"image is larger than Pillow's decompression-bomb limit of {_pillow_cap()} "
                f"pixels; FACEGEN_MAX_PIXELS cannot raise it (Pillow: {exc})",
                source=where,
            ) from exc
        except UnidentifiedImageError as exc:
            raise InvalidImageError(
                "not an image, or a format PIL cannot read", source=where
            ) from exc
        except (OSError, ValueError, SyntaxError) as exc:
            raise InvalidImageError(f"cannot open image ({exc})", source=where) from exc
        opened_here = True
    try:
        w, h = img.size
        if w <= 0 or h <= 0:
            raise InvalidImageError(f"image is empty ({w}×{h})", source=where)
        if w * h > limit:
            raise InvalidImageError(
                f"image is {w}×{h} = {w * h} pixels, more than the limit of {limit} "
                "(raise it with max_pixels= or FACEGEN_MAX_PIXELS)",
                source=where,
            )
        try:
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return np.ascontiguousarray(_to_rgb(img, background, where))
        except InvalidImageError:
            raise
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
            raise InvalidImageError(f"corrupt or truncated image ({exc})", source=where) from exc
    finally:
        if opened_here:
            img.close()


def _json_meta(metadata: Mapping[str, Any]) -> str:
    return json.dumps(metadata, sort_keys=True, default=str)


def save_image(
    image: np.ndarray | Image.Image,
    path: str | os.PathLike[str],
    *,
    metadata: Mapping[str, Any] | None = None,
    quality: int = 95,
) -> Path:
    """Write ``image`` (RGB uint8 array or PIL image) to ``path`` atomically.

    The format follows the suffix (``.png``, ``.jpg``/``.jpeg``, ``.webp``). ``metadata`` is
    stored as JSON: a PNG text chunk named ``facegen`` (plus one chunk per top-level string
    value), or the EXIF ImageDescription of JPEG/WebP. :func:`read_metadata` reads it back.
    WebP holds at most 16383 and JPEG 65500 pixels per side; larger images raise
    :class:`OutputError` (use PNG).
    """
    p = Path(path)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(p.suffix.lower())
    if fmt is None:
        raise OutputError(f"`path` must end in .png, .jpg, .jpeg or .webp, got {p.name!r}")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"`image` must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        pil = Image.fromarray(image, "RGB")
    else:
        pil = image.convert("RGB") if image.mode not in ("RGB", "L") else image
    side = _MAX_SIDE.get(fmt)
    if side is not None and max(pil.size) > side:
        raise OutputError(
            f"cannot write {p}: {fmt} images must be at most {side} pixels wide and high, got "
            f"{pil.size[0]}×{pil.size[1]}; save as .png instead"
        )
    kwargs: dict[str, Any] = {}
    if metadata:
        text = _json_meta(metadata)
        if fmt == "PNG":
            info = PngInfo()
            info.add_text(METADATA_KEY, text)
            for k, v in metadata.items():
                if isinstance(v, str) and k != METADATA_KEY:
                    info.add_text(str(k), v)
            kwargs["pnginfo"] = info
        else:
            exif = Image.Exif()
            exif[_EXIF_IMAGE_DESCRIPTION] = text
            kwargs["exif"] = exif.tobytes()
    if fmt in ("JPEG", "WEBP"):
        kwargs["quality"] = quality
    with atomic_write(p) as tmp:
        pil.save(tmp, format=fmt, **kwargs)
    return p


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The facegen metadata stored by :func:`save_image` (``{}`` when there is none).

    A missing, unreadable or non-image file raises :class:`InvalidImageError` naming it.
    """
    where = str(path)
    p = Path(path)
    if not p.exists():
        raise InvalidImageError("file not found", source=where)
    if p.is_dir():
        raise InvalidImageError("is a folder, not an image file", source=where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                text = img.info.get(METADATA_KEY) if img.format == "PNG" else None
                if text is None:
                    text = img.getexif().get(_EXIF_IMAGE_DESCRIPTION)
    except UnidentifiedImageError as exc:
        raise InvalidImageError("not an image, or a format PIL cannot read", source=where) from exc
    except Image.DecompressionBombError as exc:
        raise InvalidImageError(
            f"image is larger than Pillow's decompression-bomb limit of {_pillow_cap()} pixels "
            f"(Pillow: {exc})",
            source=where,
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImageError(f"cannot read the image's metadata ({exc})", source=where) from exc
    if not text:
        return {}
    try:
        out = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


@dataclass(frozen=True)
class SkippedEntry:
    """An entry of a folder that :func:`scan_images` could not look into.

    ``reason``: ``"symlink_loop"`` (a link, or a chain of links, leading back to a folder it
    lies in) or ``"unreadable"`` (a folder that cannot be listed, a file that cannot be
    opened, a link to nothing); ``detail``: what the system said.
    """

    path: Path
    reason: str
    detail: str


@dataclass(frozen=True)
class ImageScan:
    """What :func:`scan_images` found: readable image ``files`` (sorted) and the entries it
    had to ``skip`` (sorted by path), each with its reason."""

    files: list[Path]
    skipped: list[SkippedEntry]


def _readable(path: Path) -> OSError | None:
    """Why ``path`` cannot be opened for reading, or ``None`` when it can."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        return exc
    os.close(fd)
    return None


def _walk(
    root: Path,
    recursive: bool,
    excluded: Callable[[str], bool],
    files: list[Path],
    skipped: list[SkippedEntry],
    keep_unreadable: bool = False,
) -> None:
    """Add the image files under ``root`` to ``files`` and what cannot be read to ``skipped``
    (image files that cannot be opened to ``files`` too, with ``keep_unreadable``).

    Links to folders are followed; a folder reached again inside itself (its device and
    inode are one of its ancestors', the root's real parents included) is a
    ``symlink_loop`` and is not entered, so the walk ends on any tree and never climbs out
    of the root through a link to one of its parents.
    """
    # the root's real ancestors count too: a link to one of them (``up -> ..``, ``/``)
    # would walk out of the input folder and back into it
    real = Path(os.path.realpath(root))
    above: set[tuple[int, int]] = set()
    for folder in (real, *real.parents):
        try:
            st = os.stat(folder)
        except OSError:
            continue
        above.add((st.st_dev, st.st_ino))
    stack: list[tuple[Path, frozenset[tuple[int, int]]]] = [(root, frozenset(above))]
    while stack:
        folder, ancestors = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            skipped.append(SkippedEntry(folder, "unreadable", exc.strerror or str(exc)))
            continue
        for entry in entries:
            path = folder / entry.name
            if is_lock_file(entry.name):
                continue
            suffix = path.suffix.lower()
            try:
                target = os.stat(path)  # follows links
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    skipped.append(SkippedEntry(path, "symlink_loop", exc.strerror or str(exc)))
                elif suffix in IMAGE_EXTENSIONS or not suffix:  # may have been an image or folder
                    why = "a link to nothing" if entry.is_symlink() else exc.strerror or str(exc)
                    skipped.append(SkippedEntry(path, "unreadable", why))
                continue
            if stat.S_ISDIR(target.st_mode):
                if not recursive or excluded(os.path.realpath(path)):
                    continue
                key = (target.st_dev, target.st_ino)
                if key in ancestors:
                    skipped.append(
                        SkippedEntry(path, "symlink_loop", "leads back to a folder it lies in")
                    )
                    continue
                stack.append((path, ancestors | {key}))
            elif stat.S_ISREG(target.st_mode) and suffix in IMAGE_EXTENSIONS:
                if excluded(os.path.realpath(path)):
                    continue
                err = None if keep_unreadable else _readable(path)
                if err is None:
                    files.append(path)
                else:
                    skipped.append(SkippedEntry(path, "unreadable", err.strerror or str(err)))


def _scan(
    paths: Iterable[str | os.PathLike[str]],
    recursive: bool,
    exclude: Iterable[str | os.PathLike[str]],
    keep_unreadable: bool,
) -> ImageScan:
    skip = [os.path.realpath(e) for e in exclude]

    def excluded(real: str) -> bool:
        return any(real == s or real.startswith(s.rstrip(os.sep) + os.sep) for s in skip)

    seen: dict[Path, None] = {}
    skipped: dict[Path, SkippedEntry] = {}
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found: list[Path] = []
            problems: list[SkippedEntry] = []
            _walk(p, recursive, excluded, found, problems, keep_unreadable)
            for f in sorted(found):
                seen.setdefault(f, None)
            for entry in problems:
                skipped.setdefault(entry.path, entry)
        elif p.exists():
            seen.setdefault(p, None)
        else:
            raise InvalidImageError("file or folder not found", source=str(p))
    return ImageScan(list(seen), sorted(skipped.values(), key=lambda e: e.path))


def scan_images(
    paths: Iterable[str | os.PathLike[str]],
    *,
    recursive: bool = True,
    exclude: Iterable[str | os.PathLike[str]] = (),
) -> ImageScan:
    """Expand files and folders into the image files they hold, and the entries that could
    not be read.

    Files given explicitly are kept whatever their suffix (so loading reports a bad one);
    folders contribute the files with a known image suffix (:data:`IMAGE_EXTENSIONS`) that can
    be opened, except files inside any of the ``exclude`` folders (compared after resolving,
    e.g. an output folder inside the input folder) and facegen's lock files. Links to folders
    are followed. Inside folders, these are not files but :attr:`ImageScan.skipped` entries:
    links that loop (``"symlink_loop"``), folders that cannot be listed, image files that
    cannot be opened and links to nothing (``"unreadable"``; a dangling link with a
    non-image suffix is not listed at all). A missing path raises :class:`InvalidImageError`.
    """
    return _scan(paths, recursive, exclude, keep_unreadable=False)


def find_images(
    paths: Iterable[str | os.PathLike[str]],
    *,
    recursive: bool = True,
    exclude: Iterable[str | os.PathLike[str]] = (),
) -> list[Path]:
    """Expand files and folders into a sorted, de-duplicated list of image files.

    As :func:`scan_images`, for callers that load each file and report the ones that fail:
    image files that cannot be opened are listed (so loading them reports them), and the
    folders and links that cannot be walked are logged as warnings. A missing path raises
    :class:`InvalidImageError`.
    """
    scan = _scan(paths, recursive, exclude, keep_unreadable=True)
    for entry in scan.skipped:
        logger.warning(
            "skipped %s: %s (%s)", entry.path, entry.reason.replace("_", " "), entry.detail
        )
    return scan.files
