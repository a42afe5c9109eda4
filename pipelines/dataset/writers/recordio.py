"""insightface / mxnet RecordIO writer (``train.rec``, ``train.idx``, ``property``), without mxnet."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facegen.pipelines.dataset.writers.base import (
    JPEG_QUALITY,
    DatasetSample,
    DatasetWriter,
    encode_image,
)
from facegen.validate import check_int

__all__ = ["REC_MAGIC", "RecWriter"]

REC_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", REC_MAGIC)
_IR_FORMAT = "<IfQQ"  # IRHeader(flag, label, id, id2), 24 bytes
_LEN_MASK = (1 << 29) - 1


def _rec_chunks(payload: bytes) -> bytes:
    """One dmlc RecordIO record: ``payload`` framed (and split at aligned magic words)."""
    out, start, n = [], 0, len(payload)
    # The writer splits the payload wherever the magic number sits at a 4-aligned offset;
    # the reader re-inserts it (cflag 1 = first part, 2 = middle, 3 = last, 0 = whole).
    pos = payload.find(_MAGIC_BYTES)
    while pos != -1 and pos + 4 <= (n >> 2) << 2:
        if pos % 4 == 0:
            out.append(
                _MAGIC_BYTES + struct.pack("<I", ((1 if start == 0 else 2) << 29) | (pos - start))
            )
            out.append(payload[start:pos])
            start = pos + 4
        pos = payload.find(_MAGIC_BYTES, pos + 1)
    length = n - start
    if length > _LEN_MASK:
        raise ValueError(f"a RecordIO record must be shorter than 2**29 bytes, got {length}")
    out.append(_MAGIC_BYTES + struct.pack("<I", ((3 if start else 0) << 29) | length))
    out.append(payload[start:])
    out.append(b"\0" * (-n % 4))
    return b"".join(out)


def _ir_pack(flag: int, label: float | Sequence[float], rec_id: int, body: bytes = b"") -> bytes:
    """``mxnet.recordio.pack``: IRHeader, then the float32 label array when ``flag > 0``."""
    if isinstance(label, int | float):
        return struct.pack(_IR_FORMAT, 0, float(label), rec_id, 0) + body
    arr = np.asarray(label, "<f4")
    return struct.pack(_IR_FORMAT, arr.size, 0.0, rec_id, 0) + arr.tobytes() + body


class RecWriter(DatasetWriter):
    """insightface RecordIO: ``train.rec``, ``train.idx``, ``property``.

    Byte format (dmlc-core ``RecordIOWriter``): each record is the magic ``0xced7230a``
    (uint32 LE), a uint32 LE word ``cflag << 29 | length``, the payload, zero padding to 4
    bytes. ``train.idx`` holds text lines ``key\\toffset``. Payloads are
    ``mxnet.recordio.pack``: ``struct "IfQQ"`` (flag, label, id, id2), then ``flag`` float32
    labels when ``flag > 0``, then the JPEG.

    Layout (as insightface's ``face2rec`` writes it and ``MXFaceDataset`` reads it): key 0 is
    a header with label ``(N + 1, N + 1 + C)``; keys ``1..N`` are the images sorted by
    (identity, index), label = identity; keys ``N + 1 .. N + C`` are one record per identity
    with label ``(first key, end key)`` of its images. ``property`` = ``"C,H,W"``. Samples may
    arrive in any order: encoded records are staged and sorted on :meth:`close`.
    """

    name = "rec"

    def __init__(self, out_dir: str | Path, *, quality: int = JPEG_QUALITY) -> None:
        check_int(quality, "quality", minimum=1, maximum=100)
        super().__init__(out_dir)
        self.quality = quality
        self._blob = open(self._staging / "images.bin", "wb")  # noqa: SIM115 - closed in _finish
        self._entries: list[tuple[int, int, int, int]] = []  # identity, index, offset, size
        self._offset = 0
        self._size: tuple[int, int] | None = None

    def _write(self, sample: DatasetSample) -> None:
        h, w = sample.image.shape[:2]
        if self._size is None:
            self._size = (h, w)
        elif self._size != (h, w):
            raise ValueError(
                f"`image` must be {self._size[0]}x{self._size[1]} like the first sample, got {h}x{w}"
            )
        jpg = encode_image(sample.image, "jpg", self.quality)
        self._blob.write(jpg)
        self._entries.append((int(sample.identity), int(sample.index), self._offset, len(jpg)))
        self._offset += len(jpg)

    def _finish(self) -> list[tuple[Path, Path]]:
        self._blob.close()
        entries = sorted(self._entries)
        n = len(entries)
        num_classes = entries[-1][0] + 1 if entries else 0
        rec_path, idx_path = self._staging / "train.rec", self._staging / "train.idx"
        ranges = [[0, 0] for _ in range(num_classes)]
        with (
            open(self._staging / "images.bin", "rb") as blob,
            open(rec_path, "wb") as rec,
            open(idx_path, "w", encoding="ascii") as idx,
        ):

            def put(key: int, payload: bytes) -> None:
                idx.write(f"{key}\t{rec.tell()}\n")
                rec.write(_rec_chunks(payload))

            put(0, _ir_pack(2, [n + 1, n + 1 + num_classes], 0))
            for key, (ident, _index, off, size) in enumerate(entries, start=1):
                blob.seek(off)
                put(key, _ir_pack(0, float(ident), key, blob.read(size)))
                if ranges[ident][1] == 0:
                    ranges[ident][0] = key
                ranges[ident][1] = key + 1
            for c, (a, b) in enumerate(ranges):
                key = n + 1 + c
                put(key, _ir_pack(2, [a, b], key))  # a == b == 0: identity without images
        prop = self._staging / "property"
        h, w = self._size or (112, 112)
        prop.write_text(f"{num_classes},{h},{w}\n", encoding="ascii")
        return [
            (rec_path, self.out_dir / "train.rec"),
            (idx_path, self.out_dir / "train.idx"),
            (prop, self.out_dir / "property"),
        ]

    def _abort(self) -> None:
        self._blob.close()
