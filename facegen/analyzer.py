"""FaceAnalyzer: detect → landmarks → align → embed, for one image or many."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from facegen.align import align_face
from facegen.base import FaceDetector, IdentityEncoder, Landmarker
from facegen.errors import (
    AmbiguousFaceError,
    FaceIndexError,
    IncompatibleEmbeddingError,
    NoFaceDetectedError,
)
from facegen.image_io import ImageSource, load_image
from facegen.types import AlignedFace, Face, IdentityEmbedding
from facegen.validate import check_int

__all__ = ["FaceAnalyzer", "Selection", "select_faces"]

logger = logging.getLogger(__name__)

#: ``"all"``, ``"largest"``, ``"best"``, an index, or a reference embedding (closest face).
Selection = str | int | IdentityEmbedding
SELECTION_NAMES = ("all", "largest", "best")


def select_faces(
    faces: Sequence[Face],
    select: Selection = "all",
    *,
    require_single: bool = False,
    source: str | None = None,
    threshold: float | None = None,
    detector: str | None = None,
) -> list[Face]:
    """Apply a selection policy to detected faces.

    ``"all"`` keeps every face (in detector order); ``"largest"`` / ``"best"`` keep the one
    with the largest box / highest score; an ``int`` keeps that index (detector order,
    negative counts from the end); an :class:`IdentityEmbedding` keeps the face whose
    embedding is most similar (faces must carry embeddings of the same encoder).
    Single-face policies raise :class:`NoFaceDetectedError` when there is no face, an index
    outside the faces found raises :class:`FaceIndexError`; ``require_single=True`` raises
    :class:`AmbiguousFaceError` when more than one was found. ``source`` names the image in
    these errors.
    """
    faces = list(faces)
    if require_single and len(faces) > 1:
        raise AmbiguousFaceError(num_faces=len(faces), source=source)
    if isinstance(select, str):
        if select not in SELECTION_NAMES:
            raise ValueError(
                f"`select` must be one of {', '.join(SELECTION_NAMES)}, an index or an "
                f"IdentityEmbedding, got {select!r}"
            )
        if select == "all":
            if require_single and not faces:
                raise NoFaceDetectedError(source=source, threshold=threshold, detector=detector)
            return faces
    if not faces:
        raise NoFaceDetectedError(source=source, threshold=threshold, detector=detector)
    if select == "largest":
        return [max(faces, key=lambda f: f.area)]
    if select == "best":
        return [max(faces, key=lambda f: f.score)]
    if isinstance(select, (int, np.integer)) and not isinstance(select, bool):
        if not -len(faces) <= int(select) < len(faces):
            raise FaceIndexError(index=int(select), num_faces=len(faces), source=source)
        return [faces[int(select)]]
    if isinstance(select, IdentityEmbedding):
        if any(f.embedding is None for f in faces):
            raise IncompatibleEmbeddingError(
                "selecting by reference embedding needs faces with embeddings (use an encoder)"
            )
        sims = [select.similarity(f.embedding) for f in faces]  # type: ignore[arg-type]
        return [faces[int(np.argmax(sims))]]
    raise ValueError(f"`select` has an unsupported type {type(select).__name__}")


def _is_all(select: Selection) -> bool:
    return isinstance(select, str) and select == "all"


def _path_name(image: ImageSource) -> str | None:
    """The path an image is read from (for error messages), or ``None``."""
    return str(image) if isinstance(image, (str, os.PathLike)) else None


@dataclass
class FaceAnalyzer:
    """Detect faces, add landmarks, align and embed them.

    Components are injected (tests pass tiny ones); :meth:`from_names` builds them from the
    backend registries. ``landmarker`` and ``encoder`` are optional.
    """

    detector: FaceDetector
    landmarker: Landmarker | None = None
    encoder: IdentityEncoder | None = None

    @classmethod
    def from_names(
        cls,
        detector: str = "dlib",
        landmarker: str | None = None,
        encoder: str | None = "dlib",
        *,
        device: str = "cpu",
        offline: bool | None = None,
        detector_options: dict[str, Any] | None = None,
        landmarker_options: dict[str, Any] | None = None,
        encoder_options: dict[str, Any] | None = None,
    ) -> FaceAnalyzer:
        """Build an analyzer from registry names (see ``facegen.backends``)."""
        from facegen.backends import DETECTORS, ENCODERS, LANDMARKERS

        common = {"device": device, "offline": offline}
        det = DETECTORS.create(detector, **common, **(detector_options or {}))
        lm = (
            LANDMARKERS.create(landmarker, **common, **(landmarker_options or {}))
            if landmarker
            else None
        )
        enc = ENCODERS.create(encoder, **common, **(encoder_options or {})) if encoder else None
        return cls(det, lm, enc)

    # -- single image -------------------------------------------------------------------------
    def detect(self, image: np.ndarray) -> list[Face]:
        """Detect (and, with a landmarker, annotate) faces in an RGB uint8 image."""
        faces = self.detector.detect(image)
        if self.landmarker is not None and faces:
            faces = self.landmarker.annotate(image, faces)
        return faces

    def analyze(
        self,
        image: ImageSource,
        *,
        select: Selection = "all",
        require_single: bool = False,
        embed: bool = True,
        source: str | None = None,
    ) -> list[Face]:
        """Faces of one image, selected by ``select`` and embedded when an encoder is set."""
        return self.analyze_many(
            [image],
            select=select,
            require_single=require_single,
            embed=embed,
            sources=[source],
        )[0]

    # -- many images --------------------------------------------------------------------------
    def analyze_many(
        self,
        images: Sequence[ImageSource],
        *,
        select: Selection = "all",
        require_single: bool = False,
        embed: bool = True,
        sources: Sequence[str | None] | None = None,
    ) -> list[list[Face]]:
        """Analyze several images; the embedding runs in batches across all their faces.

        ``sources`` (one per image, or ``None``) name the images in errors; a missing name
        defaults to the path an image was read from. Selection by reference embedding
        happens after embedding; other policies before, so unselected faces are never
        embedded.
        """
        images = list(images)
        if sources is not None and len(sources) != len(images):
            raise ValueError(f"`sources` must have {len(images)} entries, got {len(sources)}")
        names = [
            src if src is not None else _path_name(im)
            for im, src in zip(images, sources if sources is not None else [None] * len(images))
        ]
        arrays = [load_image(im, name=n) for im, n in zip(images, names)]
        per_image: list[list[Face]] = []
        for arr, name in zip(arrays, names):
            faces = self.detect(arr)
            if not isinstance(select, IdentityEmbedding):
                faces = select_faces(
                    faces,
                    select,
                    require_single=require_single,
                    source=name,
                    threshold=self.detector.score_threshold,
                    detector=self.detector.name,
                )
            per_image.append(faces)
        if embed and self.encoder is not None:
            per_image = self._embed_all(arrays, per_image)
        if isinstance(select, IdentityEmbedding):
            per_image = [
                select_faces(
                    f,
                    select,
                    require_single=require_single,
                    source=n,
                    threshold=self.detector.score_threshold,
                    detector=self.detector.name,
                )
                for f, n in zip(per_image, names)
            ]
        return per_image

    def largest_faces(self, images: Sequence[np.ndarray], *, workers: int = 1) -> list[Face | None]:
        """The largest face of each RGB uint8 ``(H, W, 3)`` image, or ``None`` where none is
        found, embedded in one batch (when an encoder is set).

        Made for verifying many generated images: a missing face is a result, not an error,
        and ``workers`` threads detect in parallel when the detector and landmarker declare
        ``thread_safe`` (dlib and ONNX Runtime release the GIL while they work). Equal to
        ``analyze(image, select="largest")`` per image.
        """
        workers = check_int(workers, "workers", minimum=1)
        arrays = [load_image(im) for im in images]

        def largest(arr: np.ndarray) -> list[Face]:
            faces = self.detect(arr)
            return [max(faces, key=lambda f: f.area)] if faces else []

        parallel = getattr(self.detector, "thread_safe", False) and (
            self.landmarker is None or getattr(self.landmarker, "thread_safe", False)
        )
        if workers > 1 and len(arrays) > 1 and parallel:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(workers, len(arrays))) as pool:
                per_image = list(pool.map(largest, arrays))
        else:
            per_image = [largest(a) for a in arrays]
        if self.encoder is not None:
            per_image = self._embed_all(arrays, per_image)
        return [faces[0] if faces else None for faces in per_image]

    def _embed_all(
        self, arrays: Sequence[np.ndarray], per_image: list[list[Face]]
    ) -> list[list[Face]]:
        assert self.encoder is not None
        crops = [self.encoder.align(arr, f) for arr, faces in zip(arrays, per_image) for f in faces]
        if not crops:
            return per_image
        embs = iter(self.encoder.wrap(self.encoder.embed_crops(crops)))
        return [[f.replace(embedding=next(embs)) for f in faces] for faces in per_image]

    def embed(
        self, image: ImageSource, *, select: Selection = "largest", source: str | None = None
    ) -> IdentityEmbedding:
        """The identity embedding of one face (the largest by default).

        ``select="all"`` requires the image to hold exactly one face. Raises
        :class:`NoFaceDetectedError` when there is none, :class:`AmbiguousFaceError` when
        ``"all"`` finds several; ``source`` (default: the path ``image`` was read from)
        names the image in these errors.
        """
        if self.encoder is None:
            raise ValueError("this FaceAnalyzer has no encoder; pass one to embed faces")
        faces = self.analyze(image, select=select, require_single=_is_all(select), source=source)
        if len(faces) != 1:  # every selection policy returns one face or raises
            raise AmbiguousFaceError(num_faces=len(faces), source=source or _path_name(image))
        emb = faces[0].embedding
        assert emb is not None
        return emb

    @staticmethod
    def align(
        image: np.ndarray,
        face: Face,
        *,
        size: int = 112,
        template: str = "arcface",
        margin: float = 1.0,
    ) -> AlignedFace:
        """Align ``face`` (see :func:`facegen.align.align_face`)."""
        return align_face(image, face, size=size, template=template, margin=margin)
