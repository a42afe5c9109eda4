"""Dataset writers: export a synthetic face-recognition dataset in the formats FR trainers read.

Every writer takes :class:`DatasetSample` objects one at a time and, on :meth:`close`,
finalises atomically: everything is written under a hidden staging folder
``<out_dir>/.facegen-tmp-<random>/`` and only renamed to its final name at the end, so a
crashed run leaves no half-written dataset behind (:meth:`DatasetWriter.abort`, or leaving a
``with`` block by an exception, removes the staging folder).

Formats (``WRITERS`` registry names):

* ``imagefolder``: ``<out>/<identity:06d>/<index:04d>.jpg`` (JPEG quality 95), the layout of
  torchvision's ``ImageFolder`` and most FR trainers' folder datasets.
* ``wds``: WebDataset tar shards ``<out>/shard-000000.tar``; sample key
  ``<identity:06d>_<index:04d>`` with members ``.jpg``, ``.cls`` (class index, ASCII),
  ``.json`` (metadata) and ``.npy`` (float32 embedding, when given).
* ``rec``: insightface RecordIO ``train.rec`` + ``train.idx`` + ``property`` as
  ``arcface_torch``'s ``MXFaceDataset`` reads them through ``mxnet.recordio`` (written
  without mxnet; the byte format is documented at :class:`RecWriter`).
* ``parquet``: ``manifest.parquet`` with one row per sample (needs ``pyarrow``).

:func:`write_verification_bin` writes insightface's verification ``.bin`` (pickled
``(bins, issame_list)``); :func:`read_verification_bin` reads such files back with an
unpickler that cannot construct anything but lists, tuples, bytes and bools.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from facegen.pipelines.dataset.writers.base import (
    JPEG_QUALITY,
    CloseOrAbort,
    DatasetSample,
    DatasetWriter,
    InvalidDatasetFileError,
    encode_image,
)
from facegen.pipelines.dataset.writers.formats import (
    ImageFolderWriter,
    ParquetWriter,
    WebDatasetWriter,
)
from facegen.pipelines.dataset.writers.recordio import RecWriter
from facegen.pipelines.dataset.writers.verification import (
    VerificationBin,
    read_verification_bin,
    write_verification_bin,
)
from facegen.registry import Registry

__all__ = [
    "JPEG_QUALITY",
    "WRITERS",
    "DatasetSample",
    "DatasetWriter",
    "ImageFolderWriter",
    "InvalidDatasetFileError",
    "MultiWriter",
    "ParquetWriter",
    "RecWriter",
    "VerificationBin",
    "WebDatasetWriter",
    "create_writers",
    "encode_image",
    "read_verification_bin",
    "write_verification_bin",
]


WRITERS: Registry[DatasetWriter] = Registry("dataset writer")
WRITERS.register("imagefolder", ImageFolderWriter, description="<id>/<index>.jpg folders")
WRITERS.register("wds", WebDatasetWriter, description="WebDataset tar shards")
WRITERS.register("rec", RecWriter, description="insightface RecordIO (train.rec/.idx)")
WRITERS.register("parquet", ParquetWriter, description="manifest.parquet (needs pyarrow)")


class MultiWriter(CloseOrAbort):
    """Fan one stream of samples out to several writers; :meth:`close` closes them all."""

    def __init__(self, writers: Sequence[DatasetWriter]) -> None:
        self.writers = list(writers)

    def write(self, sample: DatasetSample) -> None:
        for w in self.writers:
            w.write(sample)

    def close(self) -> list[Path]:
        files: list[Path] = []
        for w in self.writers:
            files += w.close()
        return files

    def abort(self) -> None:
        for w in self.writers:
            w.abort()


def create_writers(
    names: Iterable[str], out_dir: str | Path, options: dict[str, dict[str, Any]] | None = None
) -> MultiWriter:
    """Writers ``names`` (``WRITERS`` keys) into one ``out_dir``.

    ``options`` maps a writer name to its keyword options. With both ``imagefolder`` and
    ``parquet`` the manifest's ``path`` column points at the JPEGs (``image_paths=True``).
    """
    names = list(names)
    for n in names:
        WRITERS.get(n)  # unknown name → UnknownNameError listing valid ones
    opts = {k: dict(v) for k, v in (options or {}).items()}
    if "imagefolder" in names and "parquet" in names:
        opts.setdefault("parquet", {}).setdefault("image_paths", True)
    made: list[DatasetWriter] = []
    try:
        for n in names:
            made.append(WRITERS.create(n, out_dir=out_dir, **opts.get(n, {})))
    except BaseException:
        for w in made:
            w.abort()
        raise
    return MultiWriter(made)
