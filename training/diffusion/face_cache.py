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

A cache is built by :mod:`facegen.training.diffusion.face_cache_build`: rebuilt when its
fingerprint changes (other photos, sizes or modification times, settings, analyzer or VAE) and
reused otherwise.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from facegen.errors import InvalidArgumentError, InvalidModelError
from facegen.types import IdentityEmbedding

if TYPE_CHECKING:
    import torch

__all__ = [
    "CACHE_INDEX",
    "SELECTIONS",
    "TEMPLATES",
    "CacheDataset",
    "CacheItem",
    "FaceCache",
    "sample_latents",
]

logger = logging.getLogger(__name__)

CACHE_INDEX = "index.json"
#: 2: shards hold C-contiguous arrays (format 1 could hold strided latents scrambled; rebuilt)
CACHE_FORMAT = 2
TEMPLATES = ("ffhq", "arcface")
SELECTIONS = ("largest", "best", "all")
SHARD_NAME = "shard-{:05d}.safetensors"

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
    """A cache folder written by :func:`.face_cache_build.build_face_cache` or
    :func:`.face_cache_build.build_image_cache`."""

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
                str(self.folder / SHARD_NAME.format(i)), framework="numpy", device="cpu"
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


def sample_latents(batch: Mapping[str, Any], *, random_flip: bool = False) -> torch.Tensor:
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
