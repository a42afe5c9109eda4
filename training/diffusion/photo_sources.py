"""Where training photos come from: image files, WebDataset shards, facegen dataset folders.

:func:`photo_sources` turns what a user names as ``images`` into :class:`PhotoSource` objects;
iterating a source gives :class:`PhotoItem` objects one at a time, each able to :meth:`load
<PhotoItem.load>` its image as RGB ``uint8`` ``(H, W, 3)`` through
:func:`facegen.image_io.load_image` (same conversions and checks for every kind of input).
Nothing is extracted to disk and no source holds more than one sample's bytes at a time.

``images`` may be (or be a list mixing):

* an image file (a suffix of :data:`facegen.image_io.IMAGE_EXTENSIONS`);
* a folder: its image files (searched recursively, as :func:`facegen.image_io.find_images`
  lists them) followed by the ``.tar`` files directly inside it (sorted by name);
* an uncompressed ``.tar`` file holding WebDataset samples (:class:`TarShard`);
* a brace pattern such as ``/data/shards-{000000..000099}.tar`` or ``/data/{a,b}.tar``
  (:func:`expand_braces`), each name it expands to being one of the above;
* a facegen dataset folder (``facegen dataset generate``: ``config.json`` and
  ``journal/*.jsonl``): the stored crops of its committed identities (:class:`DatasetFolder`).

An item's ``source``, ``label`` and ``caption``: for a file, its path, its parent folder's
name and the ``photo.txt`` beside it; for a tar sample, ``<tar path>#<member name>``, its
``.cls`` (an integer as text) or else its ``.json``'s ``identity`` / ``label`` / ``class``, and
its ``.txt`` member; for a dataset crop, the crop's path, the identity index and the prompt
the image was made with (if any).

Tar shards are read in one sequential pass. A member that cannot be read, a sample whose label
or caption cannot be parsed, and a tar that is truncated or corrupt come out as an
:class:`UnreadablePhoto` whose :meth:`~UnreadablePhoto.load` raises
:class:`~facegen.errors.InvalidImageError` naming the source, so a caller reports and skips it
exactly as an unreadable file; the samples before the damage are used. Member names are only
used as text (``source``, caption keys), never to create files.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import tarfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from facegen.errors import InvalidArgumentError, InvalidImageError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "TAR_IMAGE_EXTENSIONS",
    "DatasetFolder",
    "FilePhoto",
    "FilePhotos",
    "Images",
    "PhotoItem",
    "PhotoSource",
    "TarPhoto",
    "TarShard",
    "UnreadablePhoto",
    "expand_braces",
    "is_dataset_folder",
    "photo_sources",
]

logger = logging.getLogger(__name__)

#: What names the photos: a file, a folder, a ``.tar`` shard, a brace pattern, a facegen
#: dataset folder, or a list of them.
Images = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]

#: WebDataset image members, in the order of preference when a sample has several.
TAR_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm")
#: Largest image member read into memory (bytes); larger ones are reported and skipped.
MAX_IMAGE_MEMBER_BYTES = 256 * 2**20
#: Largest ``.cls`` / ``.json`` / ``.txt`` member read (bytes).
MAX_TEXT_MEMBER_BYTES = 2**20
#: Most names one ``{a..b}`` range may expand to.
MAX_BRACE_NAMES = 1_000_000

_TEXT_EXTENSIONS = ("cls", "json", "txt")
_LABEL_KEYS = ("identity", "label", "class")
_COMPRESSED_TARS = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst")
_BLOCK = tarfile.BLOCKSIZE
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")


# --------------------------------------------------------------------------- items


class PhotoItem(Protocol):
    """One photo of an input.

    ``source``: a stable name (a path, ``<tar path>#<member name>``, a crop path), recorded
    with everything made from the photo. ``label``: the person's label as text, or None.
    ``caption``: the photo's own caption, or None. ``names``: the keys under which a
    ``captions`` mapping may name this photo (source first). :meth:`key`: a JSON-able list
    that identifies the photo and its current content (path, size, modification time).
    :meth:`load`: the image, RGB ``uint8`` ``(H, W, 3)``; raises
    :class:`~facegen.errors.InvalidImageError` naming ``source`` when it cannot be read.
    """

    @property
    def source(self) -> str: ...

    @property
    def label(self) -> str | None: ...

    @property
    def caption(self) -> str | None: ...

    @property
    def names(self) -> tuple[str, ...]: ...

    def key(self) -> list[str | int | None]: ...

    def load(self) -> np.ndarray: ...


def _file_key(path: Path) -> list[str | int | None]:
    """``[resolved path, size, mtime_ns]``; size and time None for a file that is gone."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return [str(path.resolve()), None, None]
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".txt")


@dataclass(frozen=True)
class FilePhoto:
    """An image file. ``label``: as given (the parent folder's name for plain folders, the
    identity for dataset crops). The caption is ``text`` when given, else the stripped
    content of ``photo.txt`` beside the file (None when absent or empty)."""

    path: Path
    label: str | None
    text: str | None = None

    @property
    def source(self) -> str:
        return str(self.path)

    @property
    def caption(self) -> str | None:
        if self.text is not None:
            return self.text
        side = _sidecar(self.path)
        if side.is_file():
            return side.read_text(encoding="utf-8").strip() or None
        return None

    @property
    def names(self) -> tuple[str, ...]:
        return (str(self.path), self.path.name, self.path.stem)

    def key(self) -> list[str | int | None]:
        return _file_key(self.path)

    def load(self) -> np.ndarray:
        from facegen.image_io import load_image

        return load_image(self.path)


@dataclass(frozen=True)
class TarPhoto:
    """A WebDataset sample's image: the member's bytes (held by the item, so it stays valid
    after the shard has moved on), decoded on :meth:`load`."""

    tar: Path
    member: str
    sample: str
    data: bytes = field(repr=False)
    label: str | None
    caption: str | None
    tar_key: tuple[str, int, int]

    @property
    def source(self) -> str:
        return f"{self.tar}#{self.member}"

    @property
    def names(self) -> tuple[str, ...]:
        parts = (
            self.source,
            self.member,
            posixpath.basename(self.member),
            self.sample,
            posixpath.basename(self.sample),
        )
        return tuple(dict.fromkeys(parts))

    def key(self) -> list[str | int | None]:
        """The tar's resolved path, size and mtime (stat once per shard) and the member name."""
        return [*self.tar_key, self.member]

    def load(self) -> np.ndarray:
        from facegen.image_io import load_image

        return load_image(self.data, name=self.source)


@dataclass(frozen=True)
class UnreadablePhoto:
    """A photo that could not be read out of its input (a damaged member, a truncated or
    corrupt tar, a sample whose label cannot be parsed): :meth:`load` raises
    :class:`~facegen.errors.InvalidImageError` with ``reason``, naming ``source``."""

    source: str
    reason: str
    item_key: tuple[str | int | None, ...] = ()
    label: str | None = None
    caption: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.source,)

    def key(self) -> list[str | int | None]:
        return list(self.item_key) or [self.source]

    def load(self) -> np.ndarray:
        raise InvalidImageError(self.reason, source=self.source)


# --------------------------------------------------------------------------- sources


class PhotoSource(ABC):
    """One input: iterating it gives its :class:`PhotoItem` objects in a fixed order."""

    @abstractmethod
    def __iter__(self) -> Iterator[PhotoItem]: ...

    @abstractmethod
    def count(self) -> int | None:
        """How many items iterating gives, when known without reading the input (else None)."""

    @abstractmethod
    def file_keys(self) -> list[list[str | int | None]]:
        """What identifies the input's current content (for a cache fingerprint): one
        ``[resolved path, size, mtime_ns, …]`` entry per file it reads."""

    def sidecar_keys(self) -> list[list[str | int | None]]:
        """The keys of caption files beside its photos (``photo.txt``)."""
        return []

    @abstractmethod
    def describe(self) -> list[str]:
        """The names of what it reads, for messages (paths)."""


class FilePhotos(PhotoSource):
    """Image files; each item's label is its parent folder's name (None at a root)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __iter__(self) -> Iterator[FilePhoto]:
        for p in self.paths:
            yield FilePhoto(p, p.parent.name or None)

    def count(self) -> int:
        return len(self.paths)

    def file_keys(self) -> list[list[str | int | None]]:
        return [_file_key(p) for p in self.paths]

    def sidecar_keys(self) -> list[list[str | int | None]]:
        return [_file_key(_sidecar(p)) for p in self.paths if _sidecar(p).is_file()]

    def describe(self) -> list[str]:
        return [str(p) for p in self.paths]


def _wds_split(name: str) -> tuple[str, str]:
    """WebDataset's split of a member name: key = the name up to the first dot after the last
    slash, extension = the rest (lower case; "" without a dot)."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), (ext.lower() if dot else "")


class _Sample:
    """The members of one WebDataset sample collected while the tar streams past."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.image: tuple[int, str, bytes] | None = None  # preference rank, member, bytes
        self.text: dict[str, tuple[str, bytes]] = {}  # extension → (member, bytes)
        self.problem: tuple[str, str] | None = None  # (member, reason)

    def wants(self, ext: str) -> bool:
        if ext in TAR_IMAGE_EXTENSIONS:
            rank = TAR_IMAGE_EXTENSIONS.index(ext)
            return self.image is None or rank < self.image[0]
        return ext in _TEXT_EXTENSIONS and ext not in self.text

    def add(self, ext: str, member: str, data: bytes) -> None:
        if ext in TAR_IMAGE_EXTENSIONS:
            self.image = (TAR_IMAGE_EXTENSIONS.index(ext), member, data)
        else:
            self.text[ext] = (member, data)

    def _label(self) -> str | None:
        if "cls" in self.text:
            member, raw = self.text["cls"]
            try:
                return str(int(raw.decode("ascii").strip()))
            except (UnicodeDecodeError, ValueError):
                raise ValueError(
                    f"`{member}` must hold an integer label, got {raw[:20]!r}"
                ) from None
        if "json" in self.text:
            member, raw = self.text["json"]
            try:
                meta = json.loads(raw)
            except (UnicodeDecodeError, ValueError) as exc:
                raise ValueError(f"`{member}` must be JSON ({exc})") from None
            if isinstance(meta, dict):
                for k in _LABEL_KEYS:
                    if meta.get(k) is not None:
                        return str(meta[k])
        return None

    def _caption(self) -> str | None:
        if "txt" not in self.text:
            return None
        member, raw = self.text["txt"]
        try:
            return raw.decode("utf-8").strip() or None
        except UnicodeDecodeError:
            raise ValueError(f"`{member}` must be UTF-8 text") from None

    def item(self, tar: Path, tar_key: tuple[str, int, int]) -> PhotoItem | None:
        """The sample's photo; None when it has no image member (metadata only)."""
        if self.problem is not None:
            member, reason = self.problem
            return UnreadablePhoto(f"{tar}#{member}", reason, (*tar_key, member))
        if self.image is None:
            logger.debug("%s: sample %r has no image member; ignored", tar, self.key)
            return None
        _, member, data = self.image
        try:
            label, caption = self._label(), self._caption()
        except ValueError as exc:
            return UnreadablePhoto(f"{tar}#{member}", str(exc), (*tar_key, member))
        return TarPhoto(tar, member, self.key, data, label, caption, tar_key)


class TarShard(PhotoSource):
    """An uncompressed WebDataset ``.tar`` shard, read in one sequential pass per iteration.

    Samples are runs of consecutive regular-file members sharing a key (the member name up to
    the first dot after the last slash). A sample's image is its first member with an
    extension of :data:`TAR_IMAGE_EXTENSIONS` in that order of preference; samples without
    one are ignored. Only the members a sample needs are read (images up to
    :data:`MAX_IMAGE_MEMBER_BYTES`, ``.cls`` / ``.json`` / ``.txt`` up to
    :data:`MAX_TEXT_MEMBER_BYTES`); links, folders and other members are passed over.
    Damage (see the module doc) comes out as :class:`UnreadablePhoto` items.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        st = self.path.stat()
        self.tar_key: tuple[str, int, int] = (str(self.path.resolve()), st.st_size, st.st_mtime_ns)

    def count(self) -> None:
        return None

    def file_keys(self) -> list[list[str | int | None]]:
        return [list(self.tar_key)]

    def describe(self) -> list[str]:
        return [str(self.path)]

    def _broken(self, member: str | None, reason: str) -> UnreadablePhoto:
        source = f"{self.path}#{member}" if member else str(self.path)
        return UnreadablePhoto(source, reason, (*self.tar_key, member or ""))

    def __iter__(self) -> Iterator[PhotoItem]:
        try:
            tar = tarfile.open(self.path, "r:")  # noqa: SIM115 - closed below
        except (OSError, tarfile.TarError) as exc:
            yield self._broken(None, f"not a readable uncompressed tar file ({exc})")
            return
        with tar:
            yield from self._samples(tar)

    def _samples(self, tar: tarfile.TarFile) -> Iterator[PhotoItem]:
        members = iter(tar)
        sample: _Sample | None = None
        last = ""
        while True:
            try:
                m = next(members, None)
            except (OSError, EOFError, tarfile.TarError) as exc:
                # the pending sample's members were read whole: it is used
                if sample is not None and (item := sample.item(self.path, self.tar_key)):
                    yield item
                after = f" after `{last}`" if last else ""
                yield self._broken(None, f"truncated or corrupt tar{after} ({exc})")
                return
            if m is None:
                break
            last = m.name
            if not m.isfile():
                continue
            key, ext = _wds_split(m.name)
            if sample is None or key != sample.key:
                if sample is not None and (item := sample.item(self.path, self.tar_key)):
                    yield item
                sample = _Sample(key)
            if sample.problem is not None or not sample.wants(ext):
                continue
            cap = MAX_IMAGE_MEMBER_BYTES if ext in TAR_IMAGE_EXTENSIONS else MAX_TEXT_MEMBER_BYTES
            if m.size > cap:
                sample.problem = (m.name, f"member is {m.size} bytes, more than {cap}")
                continue
            try:
                f = tar.extractfile(m)
                data = f.read() if f is not None else b""
            except (OSError, EOFError, tarfile.TarError) as exc:
                reason = f"truncated or corrupt tar ({exc}); the rest of {self.path} is lost"
                yield self._broken(m.name, reason)
                return
            sample.add(ext, m.name, data)
        if sample is not None and (item := sample.item(self.path, self.tar_key)):
            yield item
        end = self._end_problem(tar)
        if end is not None:
            yield self._broken(None, end)

    def _end_problem(self, tar: tarfile.TarFile) -> str | None:
        """Why the archive did not end with its end-of-archive block (tarfile stops silently
        at a missing or damaged header after the first one), or None."""
        assert tar.fileobj is not None  # opened from a path
        try:
            tar.fileobj.seek(tar.offset)
            block = tar.fileobj.read(_BLOCK)
        except OSError as exc:
            return f"cannot read past byte {tar.offset} ({exc})"
        if len(block) == _BLOCK and block.count(0) == _BLOCK:
            return None
        what = "ends" if len(block) < _BLOCK else "has a damaged header"
        return f"truncated or corrupt tar: it {what} at byte {tar.offset} (no end-of-archive block)"


class DatasetFolder(PhotoSource):
    """A facegen dataset folder (``facegen dataset generate``): the stored crops of its
    committed identities, in identity then image order, as
    :func:`facegen.pipelines.dataset.export.export` reads them (failed identities are left
    out). Labels are the identity
    indices; the caption is the image's ``prompt`` when the run had prompts. The journals
    are read once, when the source is made."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        from facegen.pipelines.dataset.build import committed_identities, crop_path

        self.folder = Path(folder)
        self.journals = sorted((self.folder / "journal").glob("*.jsonl"))
        self.items: list[FilePhoto] = []
        for rec in committed_identities(self.folder):
            try:
                ident = int(rec["identity"])
                for im in rec["images"]:
                    prompt = im.get("prompt")
                    self.items.append(
                        FilePhoto(
                            crop_path(self.folder, ident, int(im["index"])),
                            str(ident),
                            prompt if isinstance(prompt, str) and prompt else None,
                        )
                    )
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise InvalidArgumentError(
                    f"{self.folder}: journal records must have `identity` and `images` with an "
                    f"`index` each, got {str(rec)[:120]!r} ({exc!r})"
                ) from None

    def __iter__(self) -> Iterator[FilePhoto]:
        return iter(self.items)

    def count(self) -> int:
        return len(self.items)

    def file_keys(self) -> list[list[str | int | None]]:
        return [_file_key(j) for j in self.journals] + [it.key() for it in self.items]

    def sidecar_keys(self) -> list[list[str | int | None]]:
        return [_file_key(_sidecar(i.path)) for i in self.items if _sidecar(i.path).is_file()]

    def describe(self) -> list[str]:
        return [str(self.folder)]


# --------------------------------------------------------------------------- resolving


def _range(lo: str, hi: str, pattern: str) -> list[str]:
    a, b = int(lo), int(hi)
    if abs(b - a) + 1 > MAX_BRACE_NAMES:
        raise InvalidArgumentError(
            f"a brace range must expand to at most {MAX_BRACE_NAMES} names, got "
            f"{{{lo}..{hi}}} in {pattern!r}"
        )
    padded = any(len(s.lstrip("-")) > 1 and s.lstrip("-").startswith("0") for s in (lo, hi))
    width = max(len(lo), len(hi)) if padded else 0
    step = 1 if b >= a else -1
    return [f"{i:0{width}d}" for i in range(a, b + step, step)]


def expand_braces(pattern: str) -> list[str]:
    """The names a shell-style brace ``pattern`` stands for, in order.

    ``{a..b}``: the integers from ``a`` to ``b`` (either direction), zero-padded to the wider
    bound's width when a bound has a leading zero (``{008..010}`` → ``008 009 010``);
    ``{x,y,…}``: each alternative (they may hold braces themselves). Several groups multiply
    out left to right. A brace group that is neither (``{x}``, ``{}``, unmatched) stays as
    it is. A range of more than :data:`MAX_BRACE_NAMES` names raises
    :class:`InvalidArgumentError`.
    """
    start = pattern.find("{")
    while start != -1:
        depth, parts, last, end = 0, [], start + 1, -1
        for i in range(start, len(pattern)):
            c = pattern[i]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    end = i
                    break
            elif c == "," and depth == 1:
                parts.append(pattern[last:i])
                last = i + 1
        if end == -1:  # unmatched: a later group may still close
            start = pattern.find("{", start + 1)
            continue
        parts.append(pattern[last:end])
        head, tail = pattern[:start], pattern[end + 1 :]
        options: list[str] | None = None
        if len(parts) > 1:
            options = parts
        elif (m := _RANGE.fullmatch(parts[0])) is not None:
            options = _range(m.group(1), m.group(2), pattern)
        if options is not None:  # ``head`` holds literal braces only: expand the rest
            return [head + name for opt in options for name in expand_braces(opt + tail)]
        start = pattern.find("{", start + 1)
    return [pattern]


def is_dataset_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a facegen dataset folder: ``config.json`` and a ``journal`` folder."""
    p = Path(path)
    return (p / "config.json").is_file() and (p / "journal").is_dir()


def _names(images: Images) -> list[str | os.PathLike[str]]:
    if isinstance(images, (str, os.PathLike)):
        return [images]
    if isinstance(images, Sequence) and all(isinstance(x, (str, os.PathLike)) for x in images):
        return list(images)
    raise InvalidArgumentError(
        f"`images` must be a path, a brace pattern or a list of them, got {type(images).__name__}"
    )


def _expanded(entry: str | os.PathLike[str]) -> list[Path]:
    """``entry`` as paths: a brace pattern expanded unless a file of that very name exists."""
    text = os.fspath(entry)
    if "{" in text and not os.path.lexists(text):
        names = expand_braces(text)
        missing = [n for n in names if not os.path.exists(n)]
        if missing:
            raise InvalidArgumentError(
                f"`images` must name existing files, got {len(missing)} missing of the "
                f"{len(names)} that {text!r} expands to (first: {missing[0]!r})"
            )
        return [Path(n) for n in names]
    if not os.path.exists(text):
        raise InvalidArgumentError(
            f"`images` must name existing files or folders, got {text!r} (not found)"
        )
    return [Path(text)]


def photo_sources(images: Images) -> list[PhotoSource]:
    """The sources ``images`` names (see the module doc for the forms), in the given order.

    Image files are listed as :func:`facegen.image_io.find_images` lists them (sorted within
    a folder, each file once); ``.tar`` shards and dataset folders each once. Raises
    :class:`InvalidArgumentError` for a path that does not exist, a brace pattern naming a
    missing file, a file that is neither an image nor an uncompressed ``.tar``, and when
    nothing is found at all.
    """
    from facegen.image_io import IMAGE_EXTENSIONS, find_images

    entries = _names(images)
    sources: list[PhotoSource] = []
    seen: set[Path] = set()

    def add_files(found: Sequence[Path]) -> None:
        new = [p for p in found if p not in seen]
        seen.update(new)
        if new:
            sources.append(FilePhotos(new))

    def add_once(p: Path, kind: type[TarShard] | type[DatasetFolder]) -> None:
        if p not in seen:
            seen.add(p)
            sources.append(kind(p))

    for entry in entries:
        for p in _expanded(entry):
            if p.is_dir():
                if is_dataset_folder(p):
                    add_once(p, DatasetFolder)
                    continue
                add_files(find_images([p]))
                for t in sorted(p.glob("*.tar")):
                    if t.is_file() and not t.name.startswith("."):
                        add_once(t, TarShard)
            elif not p.is_file():
                raise InvalidArgumentError(
                    f"`images` must name files or folders, got {str(p)!r} (neither)"
                )
            elif p.suffix.lower() == ".tar":
                add_once(p, TarShard)
            elif p.suffix.lower() in IMAGE_EXTENSIONS:
                add_files([p])
            else:
                compressed = p.name.lower().endswith(_COMPRESSED_TARS)
                hint = (
                    " (compressed tars are not read: decompress it to .tar)" if compressed else ""
                )
                raise InvalidArgumentError(
                    "`images` must name image files, uncompressed .tar shards, folders or facegen "
                    f"dataset folders, got {str(p)!r}{hint}"
                )
    counts = [s.count() for s in sources]
    if not sources or (None not in counts and sum(c or 0 for c in counts) == 0):
        raise InvalidArgumentError(
            f"`images` must name at least one photo, got none in {[os.fspath(e) for e in entries]}"
        )
    return sources
