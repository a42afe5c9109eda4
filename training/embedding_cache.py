"""Identity vectors of image files, computed once and reused across runs.

:class:`ImageEmbeddingCache` embeds the largest face of each image with a
:class:`~facegen.analyzer.FaceAnalyzer` and remembers the result per file, keyed by the
file's resolved path, size and modification time (ns): a file that did not change is never
embedded again, a changed one is, and files can be added or dropped freely (unlike the
all-or-nothing face cache of the diffusion loops, which also stores crops and latents).

On disk it is a facegen embeddings file (:func:`facegen.embedding_io.save_embeddings`:
float32 ``(N, D)`` ``embeddings``, ``encoder_id``, ``names`` = the resolved paths) whose
metadata entry ``image_cache`` (JSON) holds ``format``, the analyzer ``settings`` (detector,
its threshold and face limit, landmarker, encoder, flip, model files), ``keys`` (``[size,
mtime_ns]`` per row) and ``no_face`` (``[path, size, mtime_ns]`` of images where no face was
found, so they are not searched again). A cache made with other settings is ignored and
replaced. Unreadable files are not remembered (they are tried again next time).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facegen.errors import (
    InvalidArgumentError,
    InvalidImageError,
    InvalidModelError,
    NoFaceDetectedError,
)
from facegen.types import IdentityEmbedding

if TYPE_CHECKING:
    from facegen.analyzer import FaceAnalyzer

__all__ = ["CACHE_FORMAT", "ImageEmbeddingCache", "SkippedImage", "analyzer_settings"]

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
_META_KEY = "image_cache"
_SAVE_EVERY = 500  # new vectors between intermediate saves (a killed run keeps its work)


@dataclass(frozen=True)
class SkippedImage:
    """An image without a usable face: ``reason`` is ``"no face"`` or ``"unreadable"``
    (missing, empty, corrupt, not an image); ``detail`` is the error's message."""

    path: str
    reason: str
    detail: str = ""


def analyzer_settings(analyzer: FaceAnalyzer) -> dict[str, Any]:
    """What decides an analyzer's vectors (cache invalidation): detector name, threshold and
    face limit, landmarker, encoder id, flip averaging and the model files each loaded."""
    det, lm, enc = analyzer.detector, analyzer.landmarker, analyzer.encoder

    def files(c: Any) -> dict[str, str]:
        try:
            return {str(k): str(v) for k, v in (c.model_files() if c is not None else {}).items()}
        except (AttributeError, NotImplementedError):
            return {}

    return {
        "detector": getattr(det, "name", type(det).__name__),
        "score_threshold": getattr(det, "score_threshold", None),
        "max_faces": getattr(det, "max_faces", None),
        "landmarker": getattr(lm, "name", None) if lm is not None else None,
        "encoder_id": getattr(enc, "encoder_id", None),
        "flip": getattr(enc, "flip", None),
        "select": "largest",
        "model_files": {"detector": files(det), "landmarker": files(lm), "encoder": files(enc)},
    }


def _json_norm(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples → lists, numbers → JSON numbers)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


class ImageEmbeddingCache:
    """The identity vectors of image files (the largest face of each), cached in ``path``.

    ``path``: the cache file (``None``: nothing is read or written). ``analyzer``: a
    :class:`~facegen.analyzer.FaceAnalyzer` with an identity encoder. Use :meth:`embed`;
    ``embedded`` / ``reused`` count the images embedded now / taken from the cache.
    """

    def __init__(self, path: str | os.PathLike[str] | None, analyzer: FaceAnalyzer) -> None:
        if getattr(analyzer, "encoder", None) is None:
            raise InvalidArgumentError(
                "`analyzer` must have an identity encoder to embed images, got none"
            )
        self.path = Path(path) if path is not None else None
        self.analyzer = analyzer
        self.settings = _json_norm(analyzer_settings(analyzer))
        self.encoder_id: str | None = None
        # resolved path → (size, mtime_ns, vector or None for "no face")
        self._entries: dict[str, tuple[int, int, IdentityEmbedding | None]] = {}
        self._dirty = 0
        self.embedded = 0
        self.reused = 0
        self._read()

    def __len__(self) -> int:
        return len(self._entries)

    def _read(self) -> None:
        if self.path is None or not self.path.is_file():
            return
        from safetensors import safe_open

        from facegen.embedding_io import load_embeddings

        try:
            embs, names = load_embeddings(self.path)
            with safe_open(str(self.path), framework="numpy") as f:
                meta = json.loads((f.metadata() or {}).get(_META_KEY, "null"))
            ok = isinstance(meta, dict) and meta.get("format") == CACHE_FORMAT
            keys, no_face = (meta["keys"], meta["no_face"]) if ok else ([], [])
            ok = ok and len(keys) == len(embs) == len(names)
        except (InvalidModelError, ValueError, KeyError, TypeError, OSError) as exc:
            logger.warning(
                "%s: not a usable embedding cache (%s); starting a new one", self.path, exc
            )
            return
        if not ok:
            logger.warning("%s: not an image embedding cache; it will be replaced", self.path)
            return
        if meta.get("settings") != self.settings:
            logger.info("%s was made with other analyzer settings; it will be replaced", self.path)
            return
        for name, (size, mtime), emb in zip(names, keys, embs, strict=True):
            self._entries[name] = (int(size), int(mtime), emb)
        for name, size, mtime in no_face:
            self._entries[str(name)] = (int(size), int(mtime), None)
        self.encoder_id = embs[0].encoder_id if embs else None

    def save(self) -> None:
        """Write the cache (atomically) when something was added since the last save."""
        if self.path is None or not self._dirty:
            return
        from facegen.embedding_io import save_embeddings

        rows = [(k, s, m, e) for k, (s, m, e) in self._entries.items() if e is not None]
        if not rows:  # an embeddings file needs one vector; nothing worth keeping yet
            return
        meta = {
            "format": CACHE_FORMAT,
            "settings": self.settings,
            "keys": [[s, m] for _, s, m, _ in rows],
            "no_face": [[k, s, m] for k, (s, m, e) in self._entries.items() if e is None],
        }
        save_embeddings(
            self.path, [e for *_, e in rows], names=[k for k, *_ in rows], extra={_META_KEY: meta}
        )
        self._dirty = 0

    def embed(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        names: Sequence[str] | None = None,
        progress: bool | None = None,
    ) -> list[IdentityEmbedding | SkippedImage]:
        """Per path, the embedding of the image's largest face, or a :class:`SkippedImage`
        (no face, unreadable). ``names``: how each path is shown in reports (default: the
        path). The cache is saved as the work goes and at the end, also when interrupted."""
        from tqdm.auto import tqdm

        shown = [str(p) for p in paths] if names is None else [str(n) for n in names]
        if len(shown) != len(paths):
            raise InvalidArgumentError(f"`names` must have {len(paths)} entries, got {len(shown)}")
        results: list[IdentityEmbedding | SkippedImage | None] = [None] * len(paths)
        todo: list[tuple[int, Path, str, int, int]] = []
        for i, (p, name) in enumerate(zip(paths, shown, strict=True)):
            path = Path(p)
            try:
                st = path.stat()
                key = str(path.resolve())
            except OSError as exc:
                results[i] = SkippedImage(name, "unreadable", exc.strerror or str(exc))
                continue
            hit = self._entries.get(key)
            if hit is not None and hit[:2] == (st.st_size, st.st_mtime_ns):
                self.reused += 1
                emb = hit[2]
                results[i] = emb if emb is not None else SkippedImage(name, "no face", "(cached)")
                continue
            todo.append((i, path, key, st.st_size, st.st_mtime_ns))
        try:
            disable = None if progress is None else not progress
            for i, path, key, size, mtime in tqdm(todo, desc="embedding faces", disable=disable):
                results[i] = self._embed_one(path, shown[i], key, size, mtime)
                if self._dirty >= _SAVE_EVERY:
                    self.save()
        finally:
            self.save()
        return [r for r in results if r is not None]

    def _embed_one(
        self, path: Path, name: str, key: str, size: int, mtime: int
    ) -> IdentityEmbedding | SkippedImage:
        try:
            faces = self.analyzer.analyze(path, select="largest", source=name)
        except InvalidImageError as exc:
            return SkippedImage(name, "unreadable", str(exc))
        except NoFaceDetectedError as exc:
            self._entries[key] = (size, mtime, None)
            self._dirty += 1
            return SkippedImage(name, "no face", str(exc))
        emb = faces[0].embedding
        if emb is None:
            raise InvalidArgumentError(f"{name}: the analyzer returned a face without embedding")
        if self.encoder_id is not None and emb.encoder_id != self.encoder_id:
            raise InvalidModelError(
                f"{self.path}: the cache holds {self.encoder_id!r} vectors, the analyzer gave "
                f"{emb.encoder_id!r}; delete the cache file"
            )
        self.encoder_id = emb.encoder_id
        self._entries[key] = (size, mtime, emb)
        self._dirty += 1
        self.embedded += 1
        return emb
