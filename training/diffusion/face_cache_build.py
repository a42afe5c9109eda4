"""Building the face cache (its layout: :mod:`facegen.training.diffusion.face_cache`).

:func:`build_face_cache` detects, aligns and embeds the faces of photos with facegen's own
:class:`~facegen.analyzer.FaceAnalyzer`; the photos may be image files, folders, WebDataset
``.tar`` shards (brace patterns too) or facegen dataset folders, read one at a time
(:mod:`facegen.training.diffusion.photo_sources`). :func:`build_image_cache` caches whole
images (class images, generated images) from files and folders. Both draw the VAE's posterior
once per crop, write shards of ``shard_size`` rows, and reuse a cache whose fingerprint
(photos or shards, their sizes and modification times, settings, analyzer, VAE) is unchanged.

Besides the layout that :class:`~facegen.training.diffusion.face_cache.FaceCache` reads, a
face cache's ``index.json`` has ``labels``: the person label (text or null) of each entry of
``items``, in the same order (see :mod:`~facegen.training.diffusion.photo_sources` for where
labels come from). Caches built before labels were recorded have no ``labels``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

from facegen._version import __version__
from facegen.errors import (
    InvalidArgumentError,
    InvalidImageError,
    InvalidModelError,
    NoFaceDetectedError,
)
from facegen.fileio import atomic_write, write_json
from facegen.training.diffusion.face_cache import (
    CACHE_FORMAT,
    CACHE_INDEX,
    SELECTIONS,
    SHARD_NAME,
    TEMPLATES,
    FaceCache,
    Template,
)
from facegen.training.diffusion.photo_sources import Images, PhotoItem, photo_sources
from facegen.types import IdentityEmbedding
from facegen.validate import check_choice, check_int, check_number

if TYPE_CHECKING:
    from diffusers import AutoencoderKL
    from tqdm import tqdm

    from facegen.analyzer import FaceAnalyzer
    from facegen.base import IdentityEncoder
    from facegen.types import Face

__all__ = ["build_face_cache", "build_image_cache", "list_photos", "vae_fingerprint"]

logger = logging.getLogger(__name__)


def list_photos(images: Images) -> list[Path]:
    """A folder (searched recursively) or a list of files/folders → sorted image paths.

    Image files only (no ``.tar`` shards, brace patterns or dataset folders: those are read
    by :func:`facegen.training.diffusion.photo_sources.photo_sources`)."""
    from facegen.image_io import find_images

    items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    paths = find_images(items)
    if not paths:
        raise InvalidArgumentError(f"`images` must name at least one photo, got none in {items}")
    return paths


def _file_key(p: Path) -> list[str | int | None]:
    st = p.stat()
    return [str(p.resolve()), st.st_size, st.st_mtime_ns]


def vae_fingerprint(vae: AutoencoderKL | None) -> str | None:
    """A short hash of a VAE's config and a sample of its weights (cache invalidation)."""
    if vae is None:
        return None
    h = hashlib.sha256(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    for i, p in enumerate(vae.parameters()):
        if i % 16 == 0:
            h.update(p.detach().float().cpu().numpy().tobytes()[:4096])
    return h.hexdigest()[:16]


def _caption_for(path: Path, captions: Mapping[str, str] | None) -> str | None:
    if captions is not None:
        for key in (str(path), path.name, path.stem):
            if key in captions:
                return str(captions[key])
    side = path.with_suffix(".txt")
    if side.is_file():
        return side.read_text(encoding="utf-8").strip() or None
    return None


def _item_caption(item: PhotoItem, captions: Mapping[str, str] | None) -> str | None:
    """``captions``' entry for one of the item's names, else the item's own caption."""
    if captions is not None:
        for key in item.names:
            if key in captions:
                return str(captions[key])
    return item.caption


def _check_size(size: object) -> int:
    size = check_int(size, "size", minimum=16)
    if size % 8:
        raise InvalidArgumentError(f"`size` must be a multiple of 8, got {size}")
    return size


def _fingerprint(
    settings: Mapping[str, Any],
    files: Sequence[Sequence[str | int | None]],
    sidecars: Sequence[Sequence[str | int | None]],
    captions: Mapping[str, str] | None,
) -> str:
    """The hash of the settings, the input files' keys (``[resolved path, size, mtime_ns]``,
    a tar shard once), the caption files' keys and the ``captions`` mapping."""
    payload = {
        "format": CACHE_FORMAT,
        "settings": dict(settings),
        "files": [list(k) for k in files],
        "sidecars": [list(k) for k in sidecars],
        "captions": dict(captions) if captions is not None else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _path_keys(paths: Sequence[Path]) -> tuple[list[Any], list[Any]]:
    """The files' and their caption files' keys (for :func:`_fingerprint`)."""
    sides = [p.with_suffix(".txt") for p in paths]
    return [_file_key(p) for p in paths], [_file_key(s) for s in sides if s.is_file()]


class _Storage(NamedTuple):
    """How a build stores its rows: ``shard_size`` rows per shard, the ``vae`` (if any)
    encoding ``vae_batch_size`` crops at a time; ``overwrite``: never reuse the old cache."""

    vae: AutoencoderKL | None
    shard_size: int
    vae_batch_size: int
    overwrite: bool


class _Writer:
    """Collects rows and writes them shard by shard, then the index (with ``labels``: one
    label per record in the index, when made with ``labels=True``)."""

    def __init__(
        self, folder: Path, meta: dict[str, Any], storage: _Storage, *, labels: bool = False
    ) -> None:
        self.folder, self.meta, self.batch = folder, meta, storage.vae_batch_size
        self.labels: list[str | None] | None = [] if labels else None
        self.shard_size = check_int(storage.shard_size, "shard_size", minimum=1)
        self.vae, self.flip = storage.vae, bool(meta["flip"])
        self.rows: list[dict[str, np.ndarray]] = []
        self.records: list[dict[str, Any]] = []
        self.fields: set[str] | None = None
        self.stored_fields: list[str] = []
        self.dim: int | None = None
        self.shard = 0

    def add(
        self, record: dict[str, Any], row: dict[str, np.ndarray], label: str | None = None
    ) -> None:
        keys = set(row)
        if self.fields is None:
            self.fields = keys
        elif keys != self.fields:
            raise InvalidArgumentError(
                f"every cached face must have the same fields, got {sorted(keys)} after "
                f"{sorted(self.fields)} ({record['source']})"
            )
        if self.dim is None and "embeddings" in row:
            self.dim = int(row["embeddings"].shape[0])
        self.rows.append(row)
        self.records.append(record)
        if self.labels is not None:
            self.labels.append(label)
        if len(self.rows) == self.shard_size:
            self.flush()

    def _latents(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        vae = self.vae
        assert vae is not None  # only called with a VAE
        scale = float(vae.config.scaling_factor)
        shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
        dtype = vae.dtype  # ModelMixin's: also for a VAE without weights (space-to-depth)
        means, stds = [], []
        with torch.no_grad():
            for s in range(0, len(pixels), self.batch):
                x = torch.from_numpy(pixels[s : s + self.batch].astype(np.float32) / 127.5 - 1.0)
                x = x.permute(0, 3, 1, 2).to(vae.device, dtype)
                dist = vae.encode(x).latent_dist
                means.append(((dist.mean.float() - shift) * scale).cpu().numpy())
                stds.append((dist.std.float() * scale).cpu().numpy())
        return np.concatenate(means), np.concatenate(stds)

    def flush(self) -> None:
        from safetensors.numpy import save_file

        if not self.rows:
            return
        tensors = {
            k: np.ascontiguousarray(np.stack([r[k] for r in self.rows])) for k in self.rows[0]
        }
        if self.vae is not None:
            px = tensors["pixels"]
            tensors["latents_mean"], tensors["latents_std"] = self._latents(px)
            if self.flip:
                flipped = np.ascontiguousarray(px[:, :, ::-1])
                tensors["latents_flip_mean"], tensors["latents_flip_std"] = self._latents(flipped)
        first = len(self.records) - len(self.rows)
        for row, rec in enumerate(self.records[first:]):
            rec.update(shard=self.shard, row=row)
        # safetensors writes an array's buffer as it lies in memory: a strided one (latents
        # of a channels-last batch) would be stored scrambled
        tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
        with atomic_write(self.folder / SHARD_NAME.format(self.shard)) as tmp:
            save_file(tensors, str(tmp))
        self.stored_fields = sorted(tensors)
        self.rows = []
        self.shard += 1

    def finish(self, **meta: Any) -> FaceCache:
        """Write the last shard and the index (the build's settings, ``meta`` and the
        identity dimension); the cache, opened."""
        self.flush()
        if not self.records:
            raise NoFaceDetectedError(source=f"every photo ({', '.join(self.meta['inputs'])}, …)")
        index = {
            "format": CACHE_FORMAT,
            "facegen_version": __version__,
            **self.meta,
            **meta,
            "dim": self.dim,
            "fields": self.stored_fields,
            "items": self.records,
        }
        if self.labels is not None:
            index["labels"] = self.labels
        write_json(self.folder / CACHE_INDEX, index)
        return FaceCache(self.folder)


def _open_or_reset(folder: Path, fingerprint: str, overwrite: bool) -> FaceCache | None:
    """The existing cache when its fingerprint matches; otherwise clear the folder's shards."""
    if (folder / CACHE_INDEX).is_file() and not overwrite:
        try:
            cache = FaceCache(folder)
        except InvalidModelError:
            cache = None
        if cache is not None and cache.index.get("fingerprint") == fingerprint:
            logger.info("reusing the face cache at %s (%d faces)", folder, len(cache))
            return cache
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("shard-*.safetensors"), folder / CACHE_INDEX]:
        if old.is_file():
            old.unlink()
    return None


def _start(
    cache_dir: str | os.PathLike[str],
    settings: dict[str, Any],
    fingerprint: str,
    inputs: Sequence[str],
    storage: _Storage,
    *,
    labels: bool = False,
) -> FaceCache | _Writer:
    """The cache in ``cache_dir`` when its fingerprint is ``fingerprint``; else a writer for a
    new one (the folder's old shards removed) that names the first ``inputs``."""
    folder = Path(cache_dir)
    cached = _open_or_reset(folder, fingerprint, storage.overwrite)
    if cached is not None:
        return cached
    meta = {**settings, "fingerprint": fingerprint, "inputs": list(inputs[:3])}
    return _Writer(folder, meta, storage, labels=labels)


@contextmanager
def _progress_bar(total: int | None, desc: str, progress: bool | None) -> Iterator[tqdm[Any]]:
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, disable=None if progress is None else not progress) as bar:
        yield bar


def _faces_of(
    analyzer: FaceAnalyzer, item: PhotoItem, select: str, on_no_face: str
) -> tuple[np.ndarray, list[Face]] | None:
    """The photo (RGB uint8 ``(H, W, 3)``) and its selected faces; None when it is skipped
    (unreadable: logged; no face), unless ``on_no_face="error"``."""
    from facegen.errors import AmbiguousFaceError

    try:
        image = item.load()
    except InvalidImageError as e:  # an unreadable file or member: reported, the rest is used
        if on_no_face == "error":
            raise
        logger.warning("%s skipped: %s", item.source, e)
        return None
    try:
        faces = analyzer.analyze(image, select=select, source=item.source)
    except (NoFaceDetectedError, AmbiguousFaceError):
        if on_no_face == "error":
            raise
        return None
    return (image, faces) if faces else None


class _FaceRows:
    """Turns analysed faces into cache rows: the aligned crop, the identity vector (when the
    analyzer has an encoder), the 68 points and their map (while every face has them)."""

    def __init__(
        self,
        writer: _Writer,
        *,
        size: int,
        template: Template,
        margin: float,
        encoder: IdentityEncoder | None,
    ) -> None:
        self.writer, self.size, self.template, self.margin = writer, size, template, margin
        self.encoder = encoder
        self.control_ok = True
        self.normalized = True

    def add(
        self,
        item: PhotoItem,
        image: np.ndarray,
        faces: Sequence[Face],
        caption: str | None,
    ) -> None:
        from facegen.align import align_face
        from facegen.control import render_landmarks68
        from facegen.landmarks import IBUG68

        for k, face in enumerate(faces):
            aligned = align_face(
                image, face, size=self.size, template=self.template, margin=self.margin
            )
            row: dict[str, np.ndarray] = {"pixels": aligned.image}
            if self.encoder is not None:
                if face.embedding is None:
                    raise InvalidArgumentError(f"{item.source}: the analyzer returned no embedding")
                row["embeddings"] = face.embedding.vector.astype(np.float32)
                self.normalized = self.normalized and face.embedding.normalized
            lm = face.landmarks
            if lm is not None and face.landmark_scheme == IBUG68 and self.control_ok:
                pts = aligned.to_crop(lm[:, :2])
                row["landmarks"] = pts.astype(np.float32)
                row["control"] = np.asarray(render_landmarks68(pts, self.size))
            elif self.control_ok and self.writer.records:
                raise InvalidArgumentError(
                    f"{item.source}: face {k} has no 68-point landmarks but earlier faces do; "
                    "use a 68-point landmarker (e.g. 'dlib68') so every face gets a control map"
                )
            else:
                self.control_ok = False
            record = {"source": item.source, "face": k, "caption": caption}
            self.writer.add(record, row, item.label)


def build_face_cache(
    images: Images,
    cache_dir: str | os.PathLike[str],
    *,
    analyzer: FaceAnalyzer,
    size: int,
    template: Template = "ffhq",
    margin: float = 1.0,
    select: str = "largest",
    captions: Mapping[str, str] | None = None,
    vae: AutoencoderKL | None = None,
    flip: bool = False,
    on_no_face: Literal["skip", "error"] = "skip",
    shard_size: int = 256,
    vae_batch_size: int = 8,
    overwrite: bool = False,
    progress: bool | None = None,
) -> FaceCache:
    """Detect, align and embed the faces of ``images``; cache them in ``cache_dir``.

    ``images``: image files, folders (images searched recursively, ``.tar`` files directly
    inside), uncompressed WebDataset ``.tar`` shards, brace patterns of them
    (``shards-{000000..000099}.tar``), facegen dataset folders, or a list mixing these (see
    :func:`~facegen.training.diffusion.photo_sources.photo_sources`). Each cached face
    records its photo's ``source`` (a path, or ``<tar>#<member>``) and, in the index's
    ``labels``, its person label (parent folder name, ``.cls``/``.json`` label, identity).
    ``analyzer``: a :class:`~facegen.analyzer.FaceAnalyzer` (its encoder makes the
    embeddings, its detector or landmarker the 68 points for the control maps). Faces are
    warped to ``size``×``size`` with ``template`` (``"ffhq"``: the FFHQ square, ``margin``
    times larger; ``"arcface"``: the 5-point ArcFace template, see :mod:`facegen.align`).
    ``select``: ``"largest"`` / ``"best"`` face per photo, or ``"all"`` of them. Captions come
    from ``captions`` (keyed by path, file name or stem; for a tar member by ``<tar>#<member>``,
    member name or sample key) or else a ``photo.txt`` beside each photo, a sample's ``.txt``
    member, a dataset image's prompt.
    With ``vae`` the latents are cached too (``flip``: also of the mirrored crop). Photos
    without a face are skipped (``on_no_face="skip"``) or raise :class:`NoFaceDetectedError`;
    unreadable ones (a file, a tar member, the rest of a truncated tar) are skipped with a
    warning or raise :class:`InvalidImageError`; the index lists them all under
    ``skipped``. No face at all always raises. Shards are read as a stream, so while there
    are shards to read the progress bar shows no total.
    """
    size = _check_size(size)
    check_choice(template, "template", TEMPLATES)
    check_choice(select, "select", SELECTIONS)
    check_choice(on_no_face, "on_no_face", ("skip", "error"))
    check_number(margin, "margin", minimum=0, maximum=10, min_open=True, max_open=True)
    sources = photo_sources(images)
    encoder = getattr(analyzer, "encoder", None)
    settings = {
        "kind": "faces",
        "size": size,
        "template": template,
        "margin": float(margin),
        "select": select,
        "flip": bool(flip and vae is not None),
        "detector": getattr(analyzer.detector, "name", type(analyzer.detector).__name__),
        "landmarker": getattr(analyzer.landmarker, "name", None),
        "encoder_id": getattr(encoder, "encoder_id", None),
        "vae": vae_fingerprint(vae),
    }
    storage = _Storage(vae, shard_size, vae_batch_size, overwrite)
    fingerprint = _fingerprint(
        settings,
        [k for s in sources for k in s.file_keys()],
        [k for s in sources for k in s.sidecar_keys()],
        captions,
    )
    inputs = [name for s in sources[:3] for name in s.describe()[:3]]
    writer = _start(cache_dir, settings, fingerprint, inputs, storage, labels=True)
    if isinstance(writer, FaceCache):
        return writer
    rows = _FaceRows(writer, size=size, template=template, margin=margin, encoder=encoder)
    counts = [s.count() for s in sources]
    total = None if None in counts else sum(c or 0 for c in counts)
    skipped: list[str] = []
    seen = 0
    with _progress_bar(total, "caching faces", progress) as bar:
        for source in sources:
            for item in source:
                seen += 1
                bar.update(1)
                found = _faces_of(analyzer, item, select, on_no_face)
                if found is None:
                    skipped.append(item.source)
                    continue
                rows.add(item, *found, _item_caption(item, captions))
    if seen == 0:  # shards without a single image sample
        raise InvalidArgumentError(f"`images` must name at least one photo, got none in {inputs}")
    if skipped:
        logger.warning(
            "no face found in, or could not read, %d of %d photos (skipped): %s",
            len(skipped),
            seen,
            ", ".join(skipped[:5]) + (" …" if len(skipped) > 5 else ""),
        )
    return writer.finish(skipped=skipped, normalized=rows.normalized)


def _square(path: Path, size: int) -> np.ndarray:
    """The image at ``path`` resized so its short side is ``size``, centre-cropped square
    (RGB uint8 ``(size, size, 3)``)."""
    from PIL import Image

    from facegen.image_io import load_image

    img = Image.fromarray(load_image(path))
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def build_image_cache(
    images: Images,
    cache_dir: str | os.PathLike[str],
    *,
    size: int,
    embeddings: Sequence[IdentityEmbedding] | None = None,
    captions: Mapping[str, str] | None = None,
    vae: AutoencoderKL | None = None,
    flip: bool = False,
    shard_size: int = 256,
    vae_batch_size: int = 8,
    overwrite: bool = False,
    progress: bool | None = None,
) -> FaceCache:
    """Cache whole images (resized so the short side is ``size``, centre-cropped square).

    For images that need no face detection: prior-preservation class images, generated
    images. ``images``: image files and folders only (:func:`list_photos`; no tar shards or
    dataset folders). ``embeddings`` (one per image, in :func:`list_photos` order) are stored
    as the identity of each image.
    """
    size = _check_size(size)
    paths = list_photos(images)
    if embeddings is not None:
        embeddings = list(embeddings)
        if len(embeddings) != len(paths):
            raise InvalidArgumentError(
                f"`embeddings` must have one entry per image ({len(paths)}), got {len(embeddings)}"
            )
        for e in embeddings[1:]:
            embeddings[0].check_compatible(e)
    settings = {
        "kind": "images",
        "size": size,
        "flip": bool(flip and vae is not None),
        "vae": vae_fingerprint(vae),
        "encoder_id": embeddings[0].encoder_id if embeddings else None,
        "embeddings": hashlib.sha256(
            b"".join(e.vector.tobytes() for e in embeddings or [])
        ).hexdigest()[:16],
    }
    storage = _Storage(vae, shard_size, vae_batch_size, overwrite)
    fingerprint = _fingerprint(settings, *_path_keys(paths), captions)
    writer = _start(cache_dir, settings, fingerprint, [str(p) for p in paths], storage)
    if isinstance(writer, FaceCache):
        return writer
    with _progress_bar(len(paths), "caching images", progress) as bar:
        for i, path in enumerate(paths):
            bar.update(1)
            row = {"pixels": _square(path, size)}
            if embeddings is not None:
                row["embeddings"] = embeddings[i].vector.astype(np.float32)
            record = {"source": str(path), "face": -1, "caption": _caption_for(path, captions)}
            writer.add(record, row)
    return writer.finish(normalized=bool(embeddings[0].normalized) if embeddings else True)
