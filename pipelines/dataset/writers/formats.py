"""Writers for ``imagefolder``, ``wds`` (WebDataset shards) and ``parquet`` (manifest)."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from facegen.errors import MissingDependencyError
from facegen.pipelines.dataset.writers.base import (
    JPEG_QUALITY,
    DatasetSample,
    DatasetWriter,
    _metadata_json,
    encode_image,
)
from facegen.validate import check_int

__all__ = ["ImageFolderWriter", "ParquetWriter", "WebDatasetWriter"]


class ImageFolderWriter(DatasetWriter):
    """``<out>/<identity:06d>/<index:04d>.jpg`` at JPEG ``quality`` (default 95)."""

    name = "imagefolder"

    def __init__(self, out_dir: str | Path, *, quality: int = JPEG_QUALITY) -> None:
        check_int(quality, "quality", minimum=1, maximum=100)
        super().__init__(out_dir)
        self.quality = quality
        self._staged: list[tuple[Path, Path]] = []

    @staticmethod
    def relative_path(identity: int, index: int) -> str:
        """The sample's path relative to ``out_dir`` (POSIX separators)."""
        return f"{identity:06d}/{index:04d}.jpg"

    def _write(self, sample: DatasetSample) -> None:
        rel = self.relative_path(sample.identity, sample.index)
        tmp = self._staging / rel.replace("/", "_")
        tmp.write_bytes(encode_image(sample.image, "jpg", self.quality))
        self._staged.append((tmp, self.out_dir / rel))

    def _finish(self) -> list[tuple[Path, Path]]:
        return self._staged


class WebDatasetWriter(DatasetWriter):
    """WebDataset tar shards ``shard-000000.tar`` … of at most ``max_samples`` samples each.

    Members per sample (key ``<identity:06d>_<index:04d>``): ``.jpg``, ``.cls`` (class index
    as ASCII digits), ``.json`` (metadata), ``.npy`` (float32 embedding, when given).
    """

    name = "wds"

    def __init__(
        self, out_dir: str | Path, *, max_samples: int = 10_000, quality: int = JPEG_QUALITY
    ) -> None:
        check_int(max_samples, "max_samples", minimum=1)
        check_int(quality, "quality", minimum=1, maximum=100)
        super().__init__(out_dir)
        self.max_samples = max_samples
        self.quality = quality
        self._tar: tarfile.TarFile | None = None
        self._count = 0
        self._shards: list[Path] = []

    @staticmethod
    def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = mtime
        info.mode = 0o444
        tar.addfile(info, io.BytesIO(data))

    def _write(self, sample: DatasetSample) -> None:
        meta = _metadata_json(sample)  # before anything is added: a bad sample adds nothing
        jpg = encode_image(sample.image, "jpg", self.quality)
        if self._tar is None or self._count >= self.max_samples:
            self._close_shard()
            path = self._staging / f"shard-{len(self._shards):06d}.tar"
            self._tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
            self._shards.append(path)
            self._count = 0
        tar, key, now = self._tar, sample.key, time.time()
        self._add(tar, f"{key}.jpg", jpg, now)
        self._add(tar, f"{key}.cls", str(int(sample.identity)).encode("ascii"), now)
        self._add(tar, f"{key}.json", meta, now)
        if sample.embedding is not None:
            buf = io.BytesIO()
            np.save(buf, np.asarray(sample.embedding, np.float32), allow_pickle=False)
            self._add(tar, f"{key}.npy", buf.getvalue(), now)
        self._count += 1

    def _close_shard(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def _finish(self) -> list[tuple[Path, Path]]:
        self._close_shard()
        return [(p, self.out_dir / p.name) for p in self._shards]

    def _abort(self) -> None:
        self._close_shard()


_SCALARS = (bool, int, float, str, np.bool_, np.integer, np.floating)


def _import_pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError(
            "pyarrow", extra="parquet", purpose="the 'parquet' dataset writer (manifest.parquet)"
        ) from None
    return pa, pq


class ParquetWriter(DatasetWriter):
    """``manifest.parquet``: one row per sample.

    Columns: ``identity``, ``index`` (int64), ``path`` (string: the imagefolder path relative
    to ``out_dir`` when ``image_paths=True``, else null), ``seed`` (int64), ``similarity``
    (float64), then every other metadata key whose values are scalars (bool/int/float/str),
    sorted by name; missing values are null. Needs ``pyarrow``.
    """

    name = "parquet"

    def __init__(self, out_dir: str | Path, *, image_paths: bool = False) -> None:
        self._pa, self._pq = _import_pyarrow()
        super().__init__(out_dir)
        self.image_paths = bool(image_paths)
        self._rows: list[dict[str, Any]] = []

    def _write(self, sample: DatasetSample) -> None:
        row: dict[str, Any] = {
            k: (v.item() if isinstance(v, np.generic) else v)
            for k, v in sample.metadata.items()
            if isinstance(v, _SCALARS) and k not in ("identity", "index", "path")
        }
        row["identity"], row["index"] = int(sample.identity), int(sample.index)
        if self.image_paths:
            row["path"] = ImageFolderWriter.relative_path(sample.identity, sample.index)
        self._rows.append(row)

    def _column(self, name: str) -> Any:
        pa = self._pa
        values = [r.get(name) for r in self._rows]
        typ = {"identity": pa.int64(), "index": pa.int64(), "path": pa.string()}.get(name)
        if name == "seed":
            typ = pa.int64()
        elif name == "similarity":
            typ = pa.float64()
        try:
            return pa.array(values, type=typ)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            return pa.array([None if v is None else str(v) for v in values], type=pa.string())

    def _finish(self) -> list[tuple[Path, Path]]:
        fixed = ["identity", "index", "path", "seed", "similarity"]
        extra = sorted({k for r in self._rows for k in r} - set(fixed))
        names = fixed + extra
        table = self._pa.table({n: self._column(n) for n in names})
        tmp = self._staging / "manifest.parquet"
        self._pq.write_table(table, tmp)
        return [(tmp, self.out_dir / "manifest.parquet")]
