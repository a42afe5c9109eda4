"""The face preprocessing cache: detect and align once, train for many epochs.

A cache folder holds what the training loops read every step, computed once with facegen's
own :class:`~facegen.analyzer.FaceAnalyzer` (the same detector, landmarker and identity
encoder as at inference):

``index.json``
    format version, the settings and inputs' fingerprint, the encoder id / dimension /
    normalisation, the crop template and size, and one record per face (source photo, face
    number in that photo, caption, shard and row).
``shard-00000.safetensors`` …
    up to ``shard_size`` rows each, same row order as the index:

    ==========================  =========  =====================================================
    ``pixels``                  uint8      ``(n, S, S, 3)`` RGB aligned crops
    ``embeddings``              float32    ``(n, D)`` identity vectors (L2-normalised when the
                                           index says ``normalized``)
    ``landmarks``               float32    ``(n, 68, 2)`` iBUG points in crop pixels
    ``control``                 uint8      ``(n, S, S, 3)`` RGB 68-point maps
                                           (:func:`facegen.control.render_landmarks68`)
    ``latents_mean``/``_std``   float32    ``(n, C, S/f, S/f)`` VAE posterior, already times the
                                           VAE's ``scaling_factor`` (minus ``shift_factor``)
    ``latents_flip_mean``/…     float32    the same for the horizontally flipped crop
    ==========================  =========  =====================================================

Only the fields that were computed are present (no encoder → no ``embeddings``, no dense
landmarks → no ``landmarks``/``control``, no VAE → no latents). Latents are stored as the
posterior's mean and standard deviation, so every epoch draws a fresh sample exactly as
``vae.encode(x).latent_dist.sample()`` would, without running the VAE.

A cache is rebuilt when its fingerprint changes (other photos, sizes or modification times,
settings, analyzer or VAE) and reused otherwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from facegen._version import __version__
from facegen.errors import (
    InvalidArgumentError,
    InvalidImageError,
    InvalidModelError,
    NoFaceDetectedError,
)
from facegen.fileio import atomic_write
from facegen.types import IdentityEmbedding

__all__ = [
    "CACHE_INDEX",
    "CacheDataset",
    "CacheItem",
    "FaceCache",
    "build_face_cache",
    "build_image_cache",
    "list_photos",
    "sample_latents",
    "vae_fingerprint",
]

logger = logging.getLogger(__name__)

CACHE_INDEX = "index.json"
CACHE_FORMAT = 1
TEMPLATES = ("ffhq", "arcface")
SELECTIONS = ("largest", "best", "all")
_SHARD = "shard-{:05d}.safetensors"

Template = Literal["ffhq", "arcface"]


@dataclass(frozen=True)
class CacheItem:
    """One cached face: its photo, the face's number there (``-1``: whole image), caption."""

    source: str
    face: int
    caption: str | None
    shard: int
    row: int


# --------------------------------------------------------------------------- reading


class FaceCache:
    """A cache folder written by :func:`build_face_cache` / :func:`build_image_cache`."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        path = self.folder / CACHE_INDEX
        try:
            index = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidModelError(f"{path}: not a readable face cache index ({exc})") from exc
        if not isinstance(index, dict) or index.get("format") != CACHE_FORMAT:
            got = index.get("format") if isinstance(index, dict) else type(index).__name__
            raise InvalidModelError(f"{path}: `format` must be {CACHE_FORMAT}, got {got!r}")
        self.index: dict[str, Any] = index
        self.items = [CacheItem(**r) for r in index["items"]]
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.items)

    def __getstate__(self) -> dict[str, Any]:  # safetensors handles do not pickle (workers)
        return {**self.__dict__, "_handles": {}}

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.index["fields"])

    def has(self, field: str) -> bool:
        return field in self.index["fields"]

    @property
    def size(self) -> int:
        """Side ``S`` of the square crops, in pixels."""
        return int(self.index["size"])

    @property
    def encoder_id(self) -> str | None:
        return self.index.get("encoder_id")

    @property
    def normalized(self) -> bool:
        return bool(self.index.get("normalized", True))

    @property
    def dim(self) -> int | None:
        d = self.index.get("dim")
        return None if d is None else int(d)

    @property
    def captions(self) -> list[str | None]:
        return [it.caption for it in self.items]

    def _shard(self, i: int) -> Any:
        from safetensors import safe_open

        if os.getpid() != self._pid:  # a DataLoader worker: open its own handles
            self._handles, self._pid = {}, os.getpid()
        if i not in self._handles:
            self._handles[i] = safe_open(
                str(self.folder / _SHARD.format(i)), framework="numpy", device="cpu"
            )
        return self._handles[i]

    def read(self, field: str) -> np.ndarray:
        """Every row of ``field`` (see the module table), in index order."""
        self.require(field)
        shards = sorted({it.shard for it in self.items})
        return np.concatenate([self._shard(s).get_tensor(field) for s in shards])

    def row(self, i: int, fields: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Row ``i`` of each of ``fields`` (default: all), without the leading axis."""
        it = self.items[i]
        handle = self._shard(it.shard)
        out: dict[str, np.ndarray] = {}
        for f in fields if fields is not None else self.fields:
            self.require(f)
            out[f] = handle.get_slice(f)[it.row : it.row + 1][0]
        return out

    def require(self, field: str) -> None:
        """Raise :class:`InvalidArgumentError` (saying how to get it) unless ``field`` is cached."""
        if not self.has(field):
            raise InvalidArgumentError(
                f"the face cache at {self.folder} must hold `{field}` for this use, got only "
                f"{', '.join(self.fields)} (rebuild it with the component that makes it: an "
                "identity encoder for embeddings, a 68-point landmarker for control maps, a VAE "
                "for latents)"
            )

    def identity_embeddings(self) -> list[IdentityEmbedding]:
        """The ``embeddings`` rows as :class:`IdentityEmbedding` objects of the cache's encoder."""
        if self.encoder_id is None:
            self.require("embeddings")
        vecs = self.read("embeddings")
        return [IdentityEmbedding(v, str(self.encoder_id), self.normalized) for v in vecs]

    def mean_identity(self) -> IdentityEmbedding:
        """The mean of all (normalised) embeddings, normalised: one person's identity."""
        embs = [e.normalize() for e in self.identity_embeddings()]
        mean = np.mean([e.vector for e in embs], axis=0)
        norm = float(np.linalg.norm(mean))
        if norm < 1e-6:
            raise InvalidArgumentError("the cached embeddings average to zero; no identity left")
        return IdentityEmbedding(mean / norm, embs[0].encoder_id, True)


# --------------------------------------------------------------------------- dataset


class CacheDataset:
    """A torch map-style dataset over a :class:`FaceCache`.

    Each item is a dict with what ``fields`` asks for:

    * ``"latents"``: the cached posterior as ``"latents_mean"`` and ``"latents_std"``, float32
      ``(C, h, w)`` (with ``random_flip`` also ``"latents_flip_mean"`` / ``"latents_flip_std"``
      of the mirrored crop). :func:`sample_latents` draws the sample in the training step, so
      the only random draws happen there (which keeps resumed runs exact);
    * ``"embedding"``: float32 ``(D,)``;
    * ``"control"``: float32 ``(3, S, S)`` in [0, 1] (diffusers' ControlNet input range);
    * ``"pixel_values"``: float32 ``(3, S, S)`` in [-1, 1];
    * ``"caption"``: ``str`` (``default_caption`` when the photo has none);
    * ``"index"``: ``int``, the row.
    """

    def __init__(
        self,
        cache: FaceCache,
        fields: Sequence[str] = ("latents", "embedding", "caption"),
        *,
        random_flip: bool = False,
        default_caption: str = "",
    ) -> None:
        known = ("latents", "embedding", "control", "pixel_values", "caption", "index")
        bad = [f for f in fields if f not in known]
        if bad:
            raise InvalidArgumentError(f"`fields` must be among {', '.join(known)}, got {bad}")
        need = {"latents": "latents_mean", "embedding": "embeddings", "control": "control"}
        for f in fields:
            if f in need:
                cache.require(need[f])
        if random_flip and "latents" in fields:
            cache.require("latents_flip_mean")
        self.cache = cache
        self.fields = tuple(fields)
        self.random_flip = random_flip
        self.default_caption = default_caption

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        c = self.cache
        out: dict[str, Any] = {}
        if "latents" in self.fields:
            names = ["latents_mean", "latents_std"]
            if self.random_flip:
                names += ["latents_flip_mean", "latents_flip_std"]
            for k, v in c.row(i, names).items():
                out[k] = torch.from_numpy(v.astype(np.float32))
        if "embedding" in self.fields:
            out["embedding"] = torch.from_numpy(c.row(i, ("embeddings",))["embeddings"].copy())
        if "control" in self.fields:
            img = c.row(i, ("control",))["control"]
            out["control"] = torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)
        if "pixel_values" in self.fields:
            img = c.row(i, ("pixels",))["pixels"]
            px = torch.from_numpy(img.astype(np.float32) / 127.5 - 1.0)
            out["pixel_values"] = px.permute(2, 0, 1)
        if "caption" in self.fields:
            cap = c.items[i].caption
            out["caption"] = cap if cap else self.default_caption
        if "index" in self.fields:
            out["index"] = i
        return out


def sample_latents(batch: Mapping[str, Any], *, random_flip: bool = False) -> Any:
    """A latent sample ``mean + std·ε`` per row of a collated :class:`CacheDataset` batch,
    float32 ``(B, C, h, w)``; with ``random_flip`` each row uses the mirrored crop's posterior
    with probability 0.5. Uses the global torch RNG."""
    import torch

    mean, std = batch["latents_mean"], batch["latents_std"]
    if random_flip:
        flip = (torch.rand(mean.shape[0]) < 0.5).view(-1, 1, 1, 1)
        mean = torch.where(flip, batch["latents_flip_mean"], mean)
        std = torch.where(flip, batch["latents_flip_std"], std)
    return mean + std * torch.randn_like(mean)


# --------------------------------------------------------------------------- writing


def list_photos(images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """A folder (searched recursively) or a list of files/folders → sorted image paths."""
    from facegen.image_io import find_images

    items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    paths = find_images(items)
    if not paths:
        raise InvalidArgumentError(f"`images` must name at least one photo, got none in {items}")
    return paths


def _file_key(p: Path) -> list[Any]:
    st = p.stat()
    return [str(p.resolve()), st.st_size, st.st_mtime_ns]


def vae_fingerprint(vae: Any) -> str | None:
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


def _check_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise InvalidArgumentError(f"`size` must be an integer >= 16, got {size!r}")
    if size % 8:
        raise InvalidArgumentError(f"`size` must be a multiple of 8, got {size}")
    return int(size)


class _Writer:
    """Collects rows and writes them shard by shard, then the index."""

    def __init__(self, folder: Path, shard_size: int, vae: Any, flip: bool, batch: int) -> None:
        self.folder, self.shard_size, self.batch = folder, shard_size, batch
        self.vae, self.flip = vae, flip
        self.rows: list[dict[str, np.ndarray]] = []
        self.records: list[dict[str, Any]] = []
        self.fields: set[str] | None = None
        self.stored_fields: list[str] = []
        self.dim: int | None = None
        self.shard = 0

    def add(self, record: dict[str, Any], row: dict[str, np.ndarray]) -> None:
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
        if len(self.rows) == self.shard_size:
            self.flush()

    def _latents(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        vae = self.vae
        scale = float(vae.config.scaling_factor)
        shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
        dtype = next(vae.parameters()).dtype
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
        with atomic_write(self.folder / _SHARD.format(self.shard)) as tmp:
            save_file(tensors, str(tmp))
        self.stored_fields = sorted(tensors)
        self.rows = []
        self.shard += 1

    def finish(self, meta: dict[str, Any]) -> FaceCache:
        self.flush()
        if not self.records:
            raise NoFaceDetectedError(source=f"every photo ({', '.join(meta['inputs'])}, …)")
        index = {
            "format": CACHE_FORMAT,
            "facegen_version": __version__,
            **meta,
            "fields": self.stored_fields,
            "items": self.records,
        }
        with atomic_write(self.folder / CACHE_INDEX) as tmp:
            tmp.write_text(json.dumps(index, indent=1))
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


def _progress_bar(total: int, desc: str, progress: bool | None) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=None if progress is None else not progress)


def build_face_cache(
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    cache_dir: str | os.PathLike[str],
    *,
    analyzer: Any,
    size: int,
    template: Template = "ffhq",
    margin: float = 1.0,
    select: str = "largest",
    captions: Mapping[str, str] | None = None,
    vae: Any = None,
    flip: bool = False,
    on_no_face: Literal["skip", "error"] = "skip",
    shard_size: int = 256,
    vae_batch_size: int = 8,
    overwrite: bool = False,
    progress: bool | None = None,
) -> FaceCache:
    """Detect, align and embed the faces of ``images``; cache them in ``cache_dir``.

    ``analyzer``: a :class:`~facegen.analyzer.FaceAnalyzer` (its encoder makes the
    embeddings, its detector or landmarker the 68 points for the control maps). Faces are
    warped to ``size``×``size`` with ``template`` (``"ffhq"``: the FFHQ square, ``margin``
    times larger; ``"arcface"``: the 5-point ArcFace template, see :mod:`facegen.align`).
    ``select``: ``"largest"`` / ``"best"`` face per photo, or ``"all"`` of them. Captions come
    from ``captions`` (keyed by path, file name or stem) or a ``photo.txt`` beside each photo.
    With ``vae`` the latents are cached too (``flip``: also of the mirrored crop). Photos
    without a face are skipped with a warning (``on_no_face="skip"``) or raise
    :class:`NoFaceDetectedError`; no face at all always raises.
    """
    from facegen.align import align_face
    from facegen.control import render_landmarks68
    from facegen.image_io import load_image
    from facegen.landmarks import IBUG68

    size = _check_size(size)
    if template not in TEMPLATES:
        raise InvalidArgumentError(
            f"`template` must be one of {', '.join(TEMPLATES)}, got {template!r}"
        )
    if select not in SELECTIONS:
        raise InvalidArgumentError(
            f"`select` must be one of {', '.join(SELECTIONS)}, got {select!r}"
        )
    if on_no_face not in ("skip", "error"):
        raise InvalidArgumentError(f"`on_no_face` must be 'skip' or 'error', got {on_no_face!r}")
    if not (isinstance(margin, (int, float)) and 0 < margin < 10):
        raise InvalidArgumentError(f"`margin` must be a number in (0, 10), got {margin!r}")
    paths = list_photos(images)
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
    fingerprint = _fingerprint(settings, paths, captions)
    folder = Path(cache_dir)
    cached = _open_or_reset(folder, fingerprint, overwrite)
    if cached is not None:
        return cached

    from facegen.errors import AmbiguousFaceError

    writer = _Writer(
        folder, _positive(shard_size, "shard_size"), vae, settings["flip"], vae_batch_size
    )
    skipped: list[str] = []
    control_ok = normalized = True
    bar = _progress_bar(len(paths), "caching faces", progress)
    try:
        for path in paths:
            bar.update(1)
            try:
                arr = load_image(path)
            except InvalidImageError as e:  # an unreadable file: reported, the rest is used
                if on_no_face == "error":
                    raise
                logger.warning("%s skipped: %s", path, e)
                skipped.append(str(path))
                continue
            try:
                faces = analyzer.analyze(arr, select=select, source=str(path))
            except (NoFaceDetectedError, AmbiguousFaceError):
                if on_no_face == "error":
                    raise
                skipped.append(str(path))
                continue
            if not faces:
                skipped.append(str(path))
                continue
            caption = _caption_for(path, captions)
            for k, face in enumerate(faces):
                aligned = align_face(arr, face, size=size, template=template, margin=margin)
                row: dict[str, np.ndarray] = {"pixels": aligned.image}
                if encoder is not None:
                    if face.embedding is None:
                        raise InvalidArgumentError(f"{path}: the analyzer returned no embedding")
                    row["embeddings"] = face.embedding.vector.astype(np.float32)
                    normalized = normalized and face.embedding.normalized
                lm = face.landmarks
                if lm is not None and face.landmark_scheme == IBUG68 and control_ok:
                    pts = aligned.to_crop(lm[:, :2])
                    row["landmarks"] = pts.astype(np.float32)
                    row["control"] = np.asarray(render_landmarks68(pts, size))
                elif control_ok and writer.records:
                    raise InvalidArgumentError(
                        f"{path}: face {k} has no 68-point landmarks but earlier faces do; use a "
                        "68-point landmarker (e.g. 'dlib68') so every face gets a control map"
                    )
                else:
                    control_ok = False
                writer.add({"source": str(path), "face": k, "caption": caption}, row)
    finally:
        bar.close()
    if skipped:
        logger.warning(
            "no face found in %d of %d photos (skipped): %s",
            len(skipped),
            len(paths),
            ", ".join(skipped[:5]) + (" …" if len(skipped) > 5 else ""),
        )
    meta = {
        **settings,
        "fingerprint": fingerprint,
        "inputs": [str(p) for p in paths[:3]],
        "skipped": skipped,
        "normalized": normalized,
        "dim": writer.dim,
    }
    return writer.finish(meta)


def build_image_cache(
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    cache_dir: str | os.PathLike[str],
    *,
    size: int,
    embeddings: Sequence[IdentityEmbedding] | None = None,
    captions: Mapping[str, str] | None = None,
    vae: Any = None,
    flip: bool = False,
    shard_size: int = 256,
    vae_batch_size: int = 8,
    overwrite: bool = False,
    progress: bool | None = None,
) -> FaceCache:
    """Cache whole images (resized so the short side is ``size``, centre-cropped square).

    For images that need no face detection: prior-preservation class images, generated
    images. ``embeddings`` (one per image, in :func:`list_photos` order) are stored as the
    identity of each image.
    """
    from PIL import Image

    from facegen.image_io import load_image

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
    fingerprint = _fingerprint(settings, paths, captions)
    folder = Path(cache_dir)
    cached = _open_or_reset(folder, fingerprint, overwrite)
    if cached is not None:
        return cached
    writer = _Writer(
        folder, _positive(shard_size, "shard_size"), vae, settings["flip"], vae_batch_size
    )
    bar = _progress_bar(len(paths), "caching images", progress)
    try:
        for i, path in enumerate(paths):
            bar.update(1)
            img = Image.fromarray(load_image(path))
            w, h = img.size
            s = size / min(w, h)
            img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
            left, top = (img.width - size) // 2, (img.height - size) // 2
            row = {"pixels": np.asarray(img.crop((left, top, left + size, top + size)))}
            if embeddings is not None:
                row["embeddings"] = embeddings[i].vector.astype(np.float32)
            writer.add(
                {"source": str(path), "face": -1, "caption": _caption_for(path, captions)}, row
            )
    finally:
        bar.close()
    meta = {
        **settings,
        "fingerprint": fingerprint,
        "inputs": [str(p) for p in paths[:3]],
        "normalized": bool(embeddings[0].normalized) if embeddings else True,
        "dim": writer.dim,
    }
    return writer.finish(meta)


def _positive(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise InvalidArgumentError(f"`{name}` must be a positive integer, got {v!r}")
    return int(v)


def _fingerprint(
    settings: Mapping[str, Any], paths: Sequence[Path], captions: Mapping[str, str] | None
) -> str:
    payload = {
        "format": CACHE_FORMAT,
        "settings": dict(settings),
        "files": [_file_key(p) for p in paths],
        "sidecars": [
            _file_key(p.with_suffix(".txt")) for p in paths if p.with_suffix(".txt").is_file()
        ],
        "captions": dict(captions) if captions is not None else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
