"""Face-recognition training data: the formats facegen's dataset writers produce.

* :class:`ImageFolderDataset`: ``<root>/<class>/<image>`` (any of facegen's image suffixes);
  classes are the sub-folder names in sorted order (torchvision's rule; facegen's
  zero-padded ``000000`` … names sort as their numbers).
* :class:`WebDatasetShards`: WebDataset ``.tar`` shards whose samples hold an image
  (``.jpg``/``.jpeg``/``.png``/…) and a ``.cls`` (class index as ASCII digits). The shards are
  indexed once with :mod:`tarfile` and read by offset, which gives a map-style dataset
  (exact epochs, shuffling, resumable) without the ``webdataset`` package; plain
  (uncompressed) tar only.
* :class:`RecordIODataset`: insightface's ``train.rec`` + ``train.idx`` read in pure Python
  (:class:`RecordIOReader`), samples chosen as arcface_torch's ``MXFaceDataset`` does.

Every dataset returns ``(image, label)``: ``image`` float32 ``(3, S, S)`` RGB normalised as
``(x / 255 - 0.5) / 0.5`` (range [-1, 1]) by :class:`FRTransform` (grey images become three
equal channels, other sizes are resized to ``S``×``S``, then optional random horizontal flip
and random erasing), ``label`` an int64 class index in ``[0, num_classes)``.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import tarfile
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from facegen.errors import FacegenError, InvalidArgumentError, UnknownNameError
from facegen.image_io import IMAGE_EXTENSIONS, load_image
from facegen.validate import check_int, check_number

__all__ = [
    "DATA_FORMATS",
    "FRDataset",
    "FRTransform",
    "IRHeader",
    "ImageFolderDataset",
    "InvalidTrainingDataError",
    "RecordIODataset",
    "RecordIOReader",
    "WebDatasetShards",
    "detect_format",
    "open_fr_dataset",
    "resize_square",
    "to_input_tensor",
]

logger = logging.getLogger(__name__)

DATA_FORMATS = ("imagefolder", "wds", "rec")


class InvalidTrainingDataError(FacegenError, ValueError):
    """A training dataset is missing, empty or not in the format it claims."""


# --------------------------------------------------------------------------------------------
# transforms


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` → ``(size, size, 3)`` (bilinear; unchanged when already that size)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def to_input_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    """RGB uint8 ``(H, W, 3)`` → float32 ``(3, size, size)`` in [-1, 1] (bilinear resize if needed)."""
    image = resize_square(image, size)
    x = torch.from_numpy(np.array(image, np.float32)).permute(2, 0, 1)
    return (x / 255.0 - 0.5) / 0.5


@dataclass(frozen=True)
class FRTransform:
    """Decode → resize to ``image_size`` → normalise → augment.

    ``flip_prob``: probability of a horizontal flip. ``erase_prob``: probability of erasing
    one random rectangle (area ``erase_scale`` of the image, aspect ``erase_ratio``, filled
    with 0 = mid-grey after normalisation), as torchvision's ``RandomErasing``. Random draws come from
    the ``generator`` passed in (datasets pass one seeded per sample and epoch), else from
    torch's global generator.
    """

    image_size: int = 112
    flip_prob: float = 0.5
    erase_prob: float = 0.0
    erase_scale: tuple[float, float] = (0.02, 0.33)
    erase_ratio: tuple[float, float] = (0.3, 3.3)

    def __post_init__(self) -> None:
        check_int(self.image_size, "image_size", minimum=16)
        for name in ("flip_prob", "erase_prob"):
            check_number(getattr(self, name), name, minimum=0, maximum=1)
        lo, hi = self.erase_scale
        if not 0 < lo <= hi < 1:
            raise InvalidArgumentError(
                f"`erase_scale` must be (lo, hi) with 0 < lo <= hi < 1, got {(lo, hi)}"
            )
        lo, hi = self.erase_ratio
        if not 0 < lo <= hi:
            raise InvalidArgumentError(
                f"`erase_ratio` must be (lo, hi) with 0 < lo <= hi, got {(lo, hi)}"
            )

    @classmethod
    def eval(cls, image_size: int = 112) -> FRTransform:
        """No augmentation."""
        return cls(image_size=image_size, flip_prob=0.0, erase_prob=0.0)

    def __call__(self, image: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        """RGB uint8 ``(H, W, 3)`` → float32 ``(3, S, S)``; random draws from ``generator``."""
        x = to_input_tensor(image, self.image_size)
        g = generator
        if self.flip_prob > 0 and torch.rand((), generator=g) < self.flip_prob:
            x = torch.flip(x, dims=[2])
        if self.erase_prob > 0 and torch.rand((), generator=g) < self.erase_prob:
            x = self._erase(x, g)
        return x

    def _erase(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        _, h, w = x.shape
        area = h * w
        log_lo, log_hi = math.log(self.erase_ratio[0]), math.log(self.erase_ratio[1])
        lo, hi = self.erase_scale
        for _ in range(10):
            target = area * (lo + (hi - lo) * float(torch.rand((), generator=g)))
            aspect = math.exp(log_lo + (log_hi - log_lo) * float(torch.rand((), generator=g)))
            eh = round(math.sqrt(target * aspect))
            ew = round(math.sqrt(target / aspect))
            if 0 < eh < h and 0 < ew < w:
                i = int(torch.randint(0, h - eh + 1, (), generator=g))
                j = int(torch.randint(0, w - ew + 1, (), generator=g))
                x = x.clone()
                x[:, i : i + eh, j : j + ew] = 0.0
                return x
        return x


# --------------------------------------------------------------------------------------------
# datasets


class FRDataset(Dataset):
    """Base: ``len``, ``num_classes``, ``__getitem__(i) → (float32 (3, S, S), int64 label)``.

    Subclasses implement :meth:`read` (the sample's encoded image bytes or RGB array and its
    label). ``transform`` defaults to :class:`FRTransform` ``()`` (112×112, flip 0.5).

    Augmentation is reproducible: sample ``i`` in epoch ``e`` draws from a generator seeded
    with ``(seed, e, i)`` (:meth:`set_epoch`), so it does not depend on the number of
    DataLoader workers, and a resumed run sees the same augmented images as an
    uninterrupted one. ``seed=None`` uses torch's global generator instead.
    """

    num_classes: int

    def __init__(self, transform: FRTransform | None = None, *, seed: int | None = 0) -> None:
        self.transform = transform if transform is not None else FRTransform()
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call before iterating an epoch)."""
        self.epoch = int(epoch)

    def _generator(self, index: int) -> torch.Generator | None:
        if self.seed is None:
            return None
        key = ((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index) % (2**63 - 1)
        return torch.Generator().manual_seed(key)

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def read(self, index: int) -> tuple[bytes | np.ndarray, int]:
        """The encoded image (or RGB uint8 array) of sample ``index`` and its label."""

    def image(self, index: int) -> np.ndarray:
        """Sample ``index`` decoded as RGB uint8 ``(H, W, 3)`` (grey → three channels)."""
        data, _ = self.read(index)
        return load_image(data, name=f"{type(self).__name__}[{index}]")

    def label(self, index: int) -> int:
        return self.read(index)[1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index must be in [0, {len(self)}), got {index}")
        index = index % len(self)
        data, label = self.read(index)
        img = load_image(data, name=f"{type(self).__name__}[{index}]")
        return self.transform(img, self._generator(index)), torch.tensor(label, dtype=torch.long)


class ImageFolderDataset(FRDataset):
    """``<root>/<class>/<image>``: one sub-folder per class (sorted names → 0, 1, …)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: FRTransform | None = None,
        *,
        seed: int | None = 0,
    ) -> None:
        super().__init__(transform, seed=seed)
        self.root = Path(root)
        if not self.root.is_dir():
            raise InvalidTrainingDataError(f"`root` must be a folder, got {str(root)!r}")
        self.classes = sorted(
            d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        self.samples: list[tuple[Path, int]] = []
        for c, name in enumerate(self.classes):
            for f in sorted((self.root / name).iterdir()):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                    self.samples.append((f, c))
        if not self.samples:
            raise InvalidTrainingDataError(
                f"`root` must hold <class>/<image> files, got none under {str(root)!r}"
            )
        self.num_classes = len(self.classes)
        self.labels = np.array([c for _, c in self.samples], np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> tuple[bytes | np.ndarray, int]:
        path, label = self.samples[index]
        return path.read_bytes(), label


class _FileHandles:
    """Lazily opened read handles, re-opened in a forked DataLoader worker, dropped on pickle."""

    def __init__(self) -> None:
        self._files: dict[Path, BinaryIO] = {}
        self._pid = os.getpid()

    def get(self, path: Path) -> BinaryIO:
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = open(path, "rb")  # noqa: SIM115 - kept open for reuse
        return f

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]


def _wds_key(member_name: str) -> tuple[str, str]:
    """WebDataset's split: key = path up to the first dot of the file name, ext = the rest."""
    head, _, base = member_name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), (ext.lower() if dot else "")


_WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm")


class WebDatasetShards(FRDataset):
    """WebDataset tar shards (``shards``: tar files, or a folder of ``*.tar``).

    Each sample needs an image member and a ``.cls`` member; samples without a ``.cls`` raise.
    ``num_classes`` is ``max(label) + 1``.
    """

    def __init__(
        self,
        shards: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        transform: FRTransform | None = None,
        *,
        seed: int | None = 0,
    ) -> None:
        super().__init__(transform, seed=seed)
        if isinstance(shards, str | os.PathLike) and Path(shards).is_dir():
            paths = sorted(Path(shards).glob("*.tar"))
        elif isinstance(shards, str | os.PathLike):
            paths = [Path(shards)]
        else:
            paths = [Path(p) for p in shards]
        if not paths:
            raise InvalidTrainingDataError(f"`shards` must name .tar files, got none in {shards!r}")
        self.shards = paths
        self._entries: list[tuple[int, int, int]] = []  # shard, offset, size
        labels: list[int] = []
        for si, path in enumerate(paths):
            self._index_shard(si, path, labels)
        if not self._entries:
            raise InvalidTrainingDataError(f"`shards` must hold samples, got none in {shards!r}")
        self.labels = np.array(labels, np.int64)
        self.num_classes = int(self.labels.max()) + 1
        self._handles = _FileHandles()

    def _index_shard(self, si: int, path: Path, labels: list[int]) -> None:
        try:
            tar = tarfile.open(path, "r:")  # noqa: SIM115 - closed below
        except (OSError, tarfile.TarError) as exc:
            raise InvalidTrainingDataError(
                f"`shards` must be uncompressed .tar files, got {str(path)!r}: {exc}"
            ) from exc
        samples: dict[str, dict[str, Any]] = {}
        order: list[str] = []
        with tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, ext = _wds_key(m.name)
                if key not in samples:
                    samples[key] = {}
                    order.append(key)
                if ext == "cls":
                    f = tar.extractfile(m)
                    raw = f.read() if f is not None else b""
                    try:
                        samples[key]["cls"] = int(raw.decode("ascii").strip())
                    except ValueError:
                        raise InvalidTrainingDataError(
                            f"{path}: `{m.name}` must hold a class index, got {raw[:20]!r}"
                        ) from None
                elif ext in _WDS_IMAGE_EXTS and "img" not in samples[key]:
                    samples[key]["img"] = (m.offset_data, m.size)
        for key in order:
            s = samples[key]
            if "img" not in s:
                continue  # e.g. a metadata-only entry
            if "cls" not in s:
                raise InvalidTrainingDataError(f"{path}: sample `{key}` must have a .cls member")
            if s["cls"] < 0:
                raise InvalidTrainingDataError(f"{path}: `{key}.cls` must be >= 0, got {s['cls']}")
            self._entries.append((si, *s["img"]))
            labels.append(s["cls"])

    def __len__(self) -> int:
        return len(self._entries)

    def read(self, index: int) -> tuple[bytes | np.ndarray, int]:
        si, offset, size = self._entries[index]
        f = self._handles.get(self.shards[si])
        f.seek(offset)
        return f.read(size), int(self.labels[index])


# --------------------------------------------------------------------------------------------
# RecordIO

_REC_MAGIC = 0xCED7230A
_LEN_MASK = (1 << 29) - 1
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)


class IRHeader(NamedTuple):
    """mxnet's image-record header; ``label`` is a float, or a float32 array when ``flag > 0``."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


class RecordIOReader:
    """Pure-Python reader of dmlc/mxnet indexed RecordIO (``.rec`` + ``.idx``).

    Record framing (dmlc-core ``RecordIOWriter``): uint32 LE magic ``0xced7230a``, uint32 LE
    ``cflag << 29 | length``, ``length`` payload bytes, zero padding to a multiple of 4. A
    payload that contained the magic at an aligned offset is split into parts (cflag 1 =
    first, 2 = middle, 3 = last; 0 = whole) and re-joined here with the magic between them.
    The ``.idx`` file holds ``key<TAB>offset`` lines.
    """

    def __init__(self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str]) -> None:
        self.rec_path, self.idx_path = Path(rec_path), Path(idx_path)
        for p, what in ((self.rec_path, "rec_path"), (self.idx_path, "idx_path")):
            if not p.is_file():
                raise InvalidTrainingDataError(f"`{what}` must be an existing file, got {str(p)!r}")
        self.offsets: dict[int, int] = {}
        for n, line in enumerate(self.idx_path.read_text(encoding="ascii").splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            try:
                self.offsets[int(parts[0])] = int(parts[1])
            except (ValueError, IndexError):
                raise InvalidTrainingDataError(
                    f"{self.idx_path}:{n}: lines must be 'key<TAB>offset', got {line[:40]!r}"
                ) from None
        self.keys = list(self.offsets)
        self._handles = _FileHandles()

    def read_idx(self, key: int) -> bytes:
        """The payload of record ``key``."""
        try:
            offset = self.offsets[key]
        except KeyError:
            raise KeyError(f"record key {key} is not in {self.idx_path}") from None
        f = self._handles.get(self.rec_path)
        f.seek(offset)
        parts: list[bytes] = []
        while True:
            head = f.read(8)
            if len(head) < 8:
                raise InvalidTrainingDataError(f"{self.rec_path}: truncated record at key {key}")
            magic, lrec = struct.unpack("<II", head)
            if magic != _REC_MAGIC:
                raise InvalidTrainingDataError(
                    f"{self.rec_path}: record {key} must start with magic 0xced7230a, "
                    f"got {magic:#x} at offset {f.tell() - 8}"
                )
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            data = f.read(length)
            if len(data) < length:
                raise InvalidTrainingDataError(f"{self.rec_path}: truncated record at key {key}")
            f.seek((-length) % 4, os.SEEK_CUR)
            parts.append(data)
            if cflag in (0, 3):
                break
            if cflag not in (1, 2):
                raise InvalidTrainingDataError(f"{self.rec_path}: bad cflag {cflag} at key {key}")
        return struct.pack("<I", _REC_MAGIC).join(parts)

    @staticmethod
    def unpack(payload: bytes) -> tuple[IRHeader, bytes]:
        """``mxnet.recordio.unpack``: the header (label array when ``flag > 0``) and the body."""
        if len(payload) < _IR_SIZE:
            raise InvalidTrainingDataError(
                f"a record payload must hold a {_IR_SIZE}-byte header, got {len(payload)} bytes"
            )
        flag, label, id1, id2 = struct.unpack(_IR_FORMAT, payload[:_IR_SIZE])
        body = payload[_IR_SIZE:]
        if flag > 0:
            arr = np.frombuffer(body, "<f4", flag).copy()
            return IRHeader(flag, arr, id1, id2), body[4 * flag :]
        return IRHeader(flag, label, id1, id2), body

    def close(self) -> None:
        self._handles.close()


class RecordIODataset(FRDataset):
    """insightface RecordIO (``path``: a folder with ``train.rec``/``train.idx``, or the ``.rec``).

    As arcface_torch's ``MXFaceDataset``: when record 0 is a header (``flag > 0``), the images
    are keys ``1 .. label[0] - 1``; otherwise every key of the index. A sample's label is its
    header label (the first entry when it is an array). ``num_classes`` comes from the
    ``property`` file (``C,H,W``) when present, else from the header's identity range, else
    from the labels.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        transform: FRTransform | None = None,
        *,
        seed: int | None = 0,
    ) -> None:
        super().__init__(transform, seed=seed)
        p = Path(path)
        rec = p / "train.rec" if p.is_dir() else p
        if rec.suffix != ".rec" or not rec.is_file():
            raise InvalidTrainingDataError(
                f"`path` must be a .rec file or a folder holding train.rec, got {str(path)!r}"
            )
        self.reader = RecordIOReader(rec, rec.with_suffix(".idx"))
        header0 = (
            self.reader.unpack(self.reader.read_idx(0))[0] if 0 in self.reader.offsets else None
        )
        self.header0: tuple[int, int] | None = None
        if header0 is not None and header0.flag > 0:
            lab = np.asarray(header0.label)
            self.header0 = (int(lab[0]), int(lab[1]))
            self.keys = np.arange(1, self.header0[0], dtype=np.int64)
        else:
            self.keys = np.array(self.reader.keys, np.int64)
        if len(self.keys) == 0:
            raise InvalidTrainingDataError(f"`path` must hold image records, got none in {rec}")
        self._labels: np.ndarray | None = None
        self.num_classes = self._num_classes(rec.parent / "property")

    def _num_classes(self, prop: Path) -> int:
        if prop.is_file():
            try:
                return int(prop.read_text(encoding="ascii").split(",")[0])
            except ValueError:
                logger.warning("%s: unreadable property file; counting classes instead", prop)
        if self.header0 is not None and self.header0[1] > self.header0[0]:
            return self.header0[1] - self.header0[0]
        return int(self.labels.max()) + 1

    @property
    def labels(self) -> np.ndarray:
        """int64 ``(N,)`` labels of all samples (read from every record header once)."""
        if self._labels is None:
            self._labels = np.array([self.label(i) for i in range(len(self))], np.int64)
        return self._labels

    def __len__(self) -> int:
        return len(self.keys)

    def read(self, index: int) -> tuple[bytes | np.ndarray, int]:
        header, body = self.reader.unpack(self.reader.read_idx(int(self.keys[index])))
        label = header.label
        if isinstance(label, np.ndarray):
            label = label[0]
        return body, int(label)


# --------------------------------------------------------------------------------------------
# format detection


def detect_format(path: str | os.PathLike[str]) -> str:
    """``"rec"``, ``"wds"`` or ``"imagefolder"`` for a dataset path (see :func:`open_fr_dataset`)."""
    p = Path(path)
    if p.is_file():
        if p.suffix == ".rec":
            return "rec"
        if p.suffix == ".tar":
            return "wds"
    elif p.is_dir():
        if (p / "train.rec").is_file():
            return "rec"
        if any(p.glob("*.tar")):
            return "wds"
        if any(d.is_dir() and not d.name.startswith(".") for d in p.iterdir()):
            return "imagefolder"
    raise InvalidTrainingDataError(
        f"`path` must be a RecordIO folder (train.rec/.idx), WebDataset shards (*.tar) or an "
        f"image folder (<class>/<image>), got {str(path)!r}"
    )


def open_fr_dataset(
    path: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    transform: FRTransform | None = None,
    seed: int | None = 0,
) -> FRDataset:
    """Open a training set written by facegen (``fmt`` in ``DATA_FORMATS``; ``None`` = detect).

    ``seed`` seeds the per-sample augmentation draws (see :class:`FRDataset`).
    """
    fmt = detect_format(path) if fmt is None else fmt
    if fmt == "imagefolder":
        return ImageFolderDataset(path, transform, seed=seed)
    if fmt == "wds":
        return WebDatasetShards(path, transform, seed=seed)
    if fmt == "rec":
        return RecordIODataset(path, transform, seed=seed)
    raise UnknownNameError("training data format", fmt, DATA_FORMATS)
