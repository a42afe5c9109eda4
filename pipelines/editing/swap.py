"""Face swap and generative anonymization on top of :func:`facegen.pipelines.editing.face_edit.edit_faces`.

* :func:`swap`: put a source identity (an embedding, or the face of a photo) into selected
  faces of a target photo, keeping their pose and expression (landmark control) and
  everything outside their masks, and report how much each result looks like the source and
  like the person it replaced.
* :func:`make_replace_face`: the ``replace_face`` hook of
  :func:`facegen.pipelines.editing.anonymize.anonymize_image` (``mode="generate"``): each face gets a
  seeded synthetic identity far from the original, and the result is accepted only when an
  independent encoder agrees that it no longer looks like the original.

Identity similarities are measured at the face's own place: the edited image is embedded
with each encoder's alignment of the *original* face's keypoints (the edit keeps the face
where it was: the crop is aligned on those keypoints and the control map draws its
landmarks), so a result is always measured, even when a detector would miss it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from facegen.analyzer import FaceAnalyzer, select_faces
from facegen.errors import FacegenError, NoFaceDetectedError
from facegen.image_io import ImageSource, load_image
from facegen.pipelines.editing.anonymize import GeneratedFace, ReplaceFaceFn
from facegen.pipelines.editing.face_edit import EditResult, FaceEdit, edit_faces
from facegen.pipelines.editing.options import EditOptions
from facegen.pipelines.generation.id_to_face import MAX_SEED, IDGenerationMixin
from facegen.types import Face, IdentityEmbedding
from facegen.validate import check_int, check_number

if TYPE_CHECKING:
    from facegen.base import IdentityEncoder

__all__ = [
    "FaceSelection",
    "IdentityFn",
    "SwapFace",
    "SwapResult",
    "embed_at",
    "make_replace_face",
    "swap",
]

logger = logging.getLogger(__name__)

#: Which faces of the target to swap: ``"all"``, ``"largest"``, ``"best"``, an index in
#: detector order, or ``("reference", embedding, threshold)`` (see :func:`swap`).
FaceSelection = str | int | tuple[str, IdentityEmbedding, float]
#: ``(original, seed) -> identity`` (see :func:`make_replace_face`).
IdentityFn = Callable[[IdentityEmbedding | None, int], IdentityEmbedding]


@dataclass(frozen=True, eq=False)
class SwapFace:
    """One swapped face: its :class:`~facegen.pipelines.editing.face_edit.FaceEdit`, and cosine
    similarities of the result, by encoder id, to the source identity (``None`` where the
    source has no embedding from that encoder) and to the original face it replaced.
    ``detector_index``: the face's number among the target's detected faces."""

    edit: FaceEdit
    source_similarity: dict[str, float | None] = field(default_factory=dict)
    target_similarity: dict[str, float | None] = field(default_factory=dict)
    detector_index: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.edit.to_dict(),
            "face": self.detector_index,
            "source_similarity": self.source_similarity,
            "target_similarity": self.target_similarity,
        }


@dataclass(frozen=True, eq=False)
class SwapResult:
    """``image``: RGB uint8 ``(H, W, 3)``. ``mask``: float32 ``(H, W)``, the union of the
    applied masks (0 = the target's bytes). ``faces``: one :class:`SwapFace` per swapped face.
    ``num_detected``: faces found in the target before selection; ``detected``: those faces
    (detector order)."""

    image: np.ndarray
    mask: np.ndarray
    faces: list[SwapFace]
    num_detected: int
    detected: list[Face] = field(default_factory=list)


def embed_at(
    analyzer: FaceAnalyzer, image: np.ndarray, faces: Sequence[Face]
) -> list[IdentityEmbedding]:
    """``analyzer``'s encoder's embeddings of ``image`` at the given faces' places (no
    detection: the encoder's own alignment of each face's keypoints/landmarks)."""
    enc: IdentityEncoder | None = getattr(analyzer, "encoder", None)
    if enc is None:
        raise ValueError(f"`analyzer` must have an identity encoder, got {analyzer!r}")
    return enc.embed(image, list(faces))


def _encoder_id(analyzer: FaceAnalyzer | None) -> str | None:
    enc = getattr(analyzer, "encoder", None)
    return None if enc is None else str(enc.encoder_id)


def _sim(a: IdentityEmbedding, b: IdentityEmbedding | None) -> float | None:
    if b is None or a.encoder_id != b.encoder_id or a.dim != b.dim:
        return None
    return round(float(a.similarity(b)), 6)


# ----------------------------------------------------------------------------- swap


def _select_targets(
    found: list[Face], faces: FaceSelection, image: np.ndarray, analyzers: Sequence[FaceAnalyzer]
) -> list[Face]:
    if isinstance(faces, tuple) and len(faces) == 3 and faces[0] == "reference":
        _, ref, threshold = faces
        if not isinstance(ref, IdentityEmbedding):
            raise ValueError(
                f"`faces` ('reference', embedding, threshold) needs an IdentityEmbedding, got "
                f"{type(ref).__name__}"
            )
        threshold = check_number(threshold, "threshold", minimum=-1, maximum=1)
        match = next((a for a in analyzers if _encoder_id(a) == ref.encoder_id), None)
        if match is None:
            have = [i for i in (_encoder_id(a) for a in analyzers) if i]
            raise ValueError(
                f"the reference embedding's encoder {ref.encoder_id!r} must be one of the "
                f"analyzers' encoders {have}, got none matching"
            )
        sims = [e.similarity(ref) for e in embed_at(match, image, found)]
        chosen = [f for f, s in zip(found, sims) if s >= threshold]
        if not chosen:
            raise FacegenError(
                f"no face of the target matches the reference at similarity >= {threshold} "
                f"(best {max(sims):.3f} among {len(found)} faces, {ref.encoder_id})"
            )
        return chosen
    if isinstance(faces, tuple):
        raise ValueError(
            "`faces` must be 'all', 'largest', 'best', an index, or ('reference', embedding, "
            f"threshold), got {faces!r}"
        )
    return select_faces(found, faces, source="target image")


def swap(
    target_image: ImageSource,
    source_identity: IdentityEmbedding | ImageSource,
    pipe: IDGenerationMixin,
    analyzer: FaceAnalyzer,
    faces: FaceSelection = "all",
    options: EditOptions | None = None,
    *,
    independent_analyzer: FaceAnalyzer | None = None,
    source_select: str | int = "largest",
) -> SwapResult:
    """Swap ``source_identity`` into the selected faces of ``target_image``.

    ``source_identity``: an :class:`~facegen.types.IdentityEmbedding` for ``pipe`` (its
    encoder's), or a photo whose ``source_select`` face is embedded with
    ``pipe.identity_analyzer``. ``analyzer`` detects the target's faces (68 landmarks for the
    control map and masks). ``faces``: ``"all"``, ``"largest"``, ``"best"``, an index
    (detector order), or ``("reference", embedding, threshold)``: every face whose similarity
    to ``embedding`` is >= ``threshold`` (embedded with whichever of ``analyzer``,
    ``pipe.identity_analyzer`` and ``independent_analyzer`` has that embedding's encoder).
    ``options``: how the faces are regenerated (see
    :func:`~facegen.pipelines.editing.face_edit.edit_faces`).

    Similarities (:class:`SwapFace`) are measured with ``pipe.identity_analyzer`` (to the
    source identity and to the original face) and, when given, ``independent_analyzer`` (to
    the original face, and to the source photo's face when the source is a photo).
    Raises :class:`~facegen.errors.NoFaceDetectedError` when the target has no face.
    """
    if not isinstance(pipe, IDGenerationMixin):
        raise ValueError(f"`pipe` must be a facegen identity pipeline, got {type(pipe).__name__}")
    target = load_image(target_image, name="target image")
    source_photo = None
    if isinstance(source_identity, IdentityEmbedding):
        identity = source_identity
    else:
        source_photo = load_image(source_identity, name="source photo")
        identity = pipe.identities_from_images(
            [source_photo], select=source_select, require_single=False
        )[0]
    found = analyzer.detect(target)
    if not found:
        det = getattr(analyzer, "detector", None)
        raise NoFaceDetectedError(
            source="target image",
            threshold=getattr(det, "score_threshold", None),
            detector=getattr(det, "name", None),
        )
    meters = [a for a in (pipe.identity_analyzer, independent_analyzer) if _encoder_id(a)]
    chosen = _select_targets(found, faces, target, [analyzer, *meters])
    result = edit_faces(target, chosen, [identity], pipe, options)
    src_sims, tgt_sims = _similarities(meters, pipe, identity, source_photo, target, result, chosen)
    numbers = [next(i for i, f in enumerate(found) if f is c) for c in chosen]
    swapped = [SwapFace(*parts) for parts in zip(result.faces, src_sims, tgt_sims, numbers)]
    return SwapResult(result.image, result.mask, swapped, len(found), found)


def _similarities(
    meters: Sequence[FaceAnalyzer],
    pipe: IDGenerationMixin,
    identity: IdentityEmbedding,
    source_photo: np.ndarray | None,
    target: np.ndarray,
    result: EditResult,
    chosen: Sequence[Face],
) -> tuple[list[dict[str, float | None]], list[dict[str, float | None]]]:
    """Per swapped face, ``{encoder id: similarity}`` of the result to the source and to the
    face it replaced, measured at the face's place (see the module doc)."""
    src_sims: list[dict[str, float | None]] = [{} for _ in chosen]
    tgt_sims: list[dict[str, float | None]] = [{} for _ in chosen]
    for meter in meters:
        enc_id = _encoder_id(meter)
        assert enc_id is not None
        if meter is pipe.identity_analyzer:
            ref: IdentityEmbedding | None = identity
        else:
            ref = meter.embed(source_photo) if source_photo is not None else None
        before = embed_at(meter, target, chosen)
        after = embed_at(meter, result.image, chosen)
        for k, (b, a) in enumerate(zip(before, after)):
            src_sims[k][enc_id] = _sim(a, ref)
            tgt_sims[k][enc_id] = _sim(a, b)
    return src_sims, tgt_sims


# ----------------------------------------------------------------------------- anonymization


def _derive_seed(*parts: object) -> int:
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(p if isinstance(p, bytes) else repr(p).encode())
    return int.from_bytes(h.digest(), "little") % (MAX_SEED + 1)


def _face_key(image: np.ndarray, face: Face) -> bytes:
    """Bytes that identify this face in this image (its box and the pixels inside it)."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (round(float(v)) for v in face.bbox)
    x1, x2 = min(max(x1, 0), w), min(max(x2, 0), w)
    y1, y2 = min(max(y1, 0), h), min(max(y2, 0), h)
    box = np.array([x1, y1, x2, y2], np.int64).tobytes()
    return box + hashlib.blake2b(np.ascontiguousarray(image[y1:y2, x1:x2]).tobytes()).digest()


def _face_present(
    analyzer: FaceAnalyzer, image: np.ndarray, face: Face, min_iou: float = 0.3
) -> bool:
    """Whether ``analyzer``'s detector finds a face overlapping ``face``'s box (IoU >=
    ``min_iou``) in a window of twice the box around it."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in face.bbox)
    pw, ph = (x2 - x1) / 2, (y2 - y1) / 2
    wx1, wy1 = max(int(x1 - pw), 0), max(int(y1 - ph), 0)
    wx2, wy2 = min(int(np.ceil(x2 + pw)), w), min(int(np.ceil(y2 + ph)), h)
    if wx2 <= wx1 or wy2 <= wy1:
        return False
    window = np.ascontiguousarray(image[wy1:wy2, wx1:wx2])
    area = max(x2 - x1, 1e-6) * max(y2 - y1, 1e-6)
    for f in analyzer.detector.detect(window):
        bx1, by1, bx2, by2 = (float(v) for v in f.bbox)
        bx1, bx2, by1, by2 = bx1 + wx1, bx2 + wx1, by1 + wy1, by2 + wy1
        iw = max(0.0, min(x2, bx2) - max(x1, bx1))
        ih = max(0.0, min(y2, by2) - max(y1, by1))
        inter = iw * ih
        union = area + (bx2 - bx1) * (by2 - by1) - inter
        if union > 0 and inter / union >= min_iou:
            return True
    return False


@dataclass(frozen=True, eq=False)
class _FaceReplacer:
    """The hook :func:`make_replace_face` returns (its arguments, checked)."""

    pipe: IDGenerationMixin
    verifier: FaceAnalyzer
    options: EditOptions
    threshold: float
    max_tries: int
    identity_fn: IdentityFn | None
    identity_threshold: float
    sampler: str
    check_face: bool
    min_coverage: float

    @property
    def verifier_id(self) -> str:
        return str(_encoder_id(self.verifier))

    def _original(self, image: np.ndarray, face: Face) -> IdentityEmbedding | None:
        """The face's embedding under the conditioning encoder (None without one)."""
        cond = self.pipe.identity_analyzer
        if cond is None or _encoder_id(cond) not in self.pipe.identity_spec.encoder_ids:
            return None
        return embed_at(cond, image, [face])[0]

    def new_identity(self, original: IdentityEmbedding | None, seed: int) -> IdentityEmbedding:
        if self.identity_fn is not None:
            ident = self.identity_fn(original, seed)
            if not isinstance(ident, IdentityEmbedding):
                raise ValueError(
                    f"`identity_fn` must return an IdentityEmbedding, got {type(ident).__name__}"
                )
            return ident
        from facegen.pipelines.identities import sample_identities

        spec = self.pipe.identity_spec
        bank = None if original is None else original.normalize().vector[None]
        return sample_identities(
            1,
            dim=spec.dim,
            sampler=self.sampler,
            seed=seed,
            leakage_bank=bank,
            leakage_threshold=self.identity_threshold,
            encoder_id=spec.encoder_ids[0],
            batch_size=16,
        ).embeddings()[0]

    def __call__(self, image: np.ndarray, face: Face, mask: np.ndarray) -> GeneratedFace:
        key = _derive_seed(self.options.seed or 0, _face_key(image, face))
        original = self._original(image, face)
        before = embed_at(self.verifier, image, [face])[0]
        reasons: list[str] = []
        best: tuple[float, np.ndarray] | None = None
        for k in range(self.max_tries):
            s = _derive_seed(key, k)
            ident = self.new_identity(original, s)
            sim_id = _sim(ident, original)
            if sim_id is not None and sim_id >= self.identity_threshold:
                reasons.append(
                    f"try {k + 1} (seed {s}): the new identity's similarity {sim_id:.3f} to the "
                    f"original is not below {self.identity_threshold}"
                )
                continue
            edit = edit_faces(
                image, [face], [ident], self.pipe, options=self.options, masks=[mask], seeds=[s]
            )
            record = edit.faces[0]
            if record.skipped or record.coverage < self.min_coverage:
                reason = (
                    f"the generation crop covers {record.coverage:.0%} of the face's mask "
                    f"(< {self.min_coverage:.0%}); uncovered pixels would keep the original"
                )
                return GeneratedFace(image, False, None, self.verifier_id, reason=reason)
            sim = float(embed_at(self.verifier, edit.image, [face])[0].similarity(before))
            if best is None or sim < best[0]:
                best = (sim, edit.image)
            verdict = self._verdict(edit.image, face, sim)
            if verdict is None:
                logger.debug("replacement accepted at try %d (similarity %.3f)", k + 1, sim)
                return GeneratedFace(edit.image, True, sim, self.verifier_id)
            reasons.append(f"try {k + 1} (seed {s}): {verdict}")
        reason = f"no replacement passed in {self.max_tries} tries: " + "; ".join(reasons)
        if best is None:
            return GeneratedFace(image, False, None, self.verifier_id, reason=reason)
        return GeneratedFace(best[1], False, round(best[0], 6), self.verifier_id, reason=reason)

    def _verdict(self, result: np.ndarray, face: Face, sim: float) -> str | None:
        """Why the verifier refuses ``result`` (``sim``: its similarity to the original), or
        None when it passes."""
        if self.check_face and not _face_present(self.verifier, result, face):
            return "no face detected in the result"
        if sim >= self.threshold:
            return (
                f"similarity {sim:.3f} to the original under {self.verifier_id} is not below "
                f"{self.threshold:g}"
            )
        return None


def make_replace_face(
    pipe: IDGenerationMixin,
    verifier: FaceAnalyzer,
    options: EditOptions | None = None,
    *,
    threshold: float | None = None,
    max_tries: int = 3,
    identity_fn: IdentityFn | None = None,
    identity_threshold: float = 0.3,
    sampler: str = "uniform",
    check_face: bool = True,
    min_coverage: float = 0.9,
) -> ReplaceFaceFn:
    """A ``replace_face`` hook for :func:`facegen.pipelines.editing.anonymize.anonymize_image`.

    For each face (``(image, face, mask)`` from the anonymizer), up to ``max_tries`` times:

    1. a synthetic identity: ``identity_fn(original, seed)`` when given (a pseudonym
       function; ``original`` is the face's embedding under ``pipe.identity_analyzer``, or
       ``None`` without one; it may return the same identity on every try — a consistent
       pseudonym, e.g. :meth:`facegen.pipelines.editing.pseudonyms.Pseudonymizer.identity_for` —
       and the tries then differ by generation seed only), else
       :func:`facegen.pipelines.identities.sample_identities` (``sampler``, seeded) drawn
       with the original as its leakage bank. When the original's
       embedding is known, an identity with cosine >= ``identity_threshold`` to it is refused;
    2. :func:`~facegen.pipelines.editing.face_edit.edit_faces` of the face under the anonymizer's
       ``mask`` with that identity and seed, regenerated as ``options`` say;
    3. verification with ``verifier`` — a FaceAnalyzer whose encoder is independent of the
       conditioning one (refused otherwise): the result's embedding at the face's place must
       have cosine < ``threshold`` (default: the verifier encoder's
       ``same_person_threshold``) to the original's, and, with ``check_face``, the verifier's
       detector must find a face there.

    The first candidate that passes is returned with ``accepted=True``; otherwise the one
    least similar to the original with ``accepted=False`` and a ``reason`` listing every try
    (the anonymizer then falls back to a classical mode). A face whose mask the crop covers
    less than ``min_coverage`` is refused at once (uncovered mask pixels would keep the
    original; Arc2Face's ArcFace-template crop holds about 0.9–1 of the anonymizer's default
    mask). Seeds derive from ``options.seed`` (0 when None), the face's box and its pixels,
    so a face gets the same replacement whatever order or batch it is processed in.
    """
    if not isinstance(pipe, IDGenerationMixin):
        raise ValueError(f"`pipe` must be a facegen identity pipeline, got {type(pipe).__name__}")
    ver_id = _encoder_id(verifier)
    if ver_id is None or getattr(verifier, "detector", None) is None:
        raise ValueError(
            f"`verifier` must be a FaceAnalyzer with a detector and an encoder, got {verifier!r}"
        )
    conditioning = pipe.identity_analyzer
    cond_ids = {*pipe.identity_spec.encoder_ids, _encoder_id(conditioning)} - {None}
    if verifier is conditioning or ver_id in cond_ids:
        raise ValueError(
            "`verifier` must use an encoder independent of the conditioning one "
            f"({', '.join(sorted(i for i in cond_ids if i))}), got {ver_id!r}"
        )
    if threshold is None:
        threshold = float(verifier.encoder.same_person_threshold)  # type: ignore[union-attr]
    if identity_fn is not None and not callable(identity_fn):
        raise ValueError(f"`identity_fn` must be callable, got {type(identity_fn).__name__}")
    return _FaceReplacer(
        pipe,
        verifier,
        options or EditOptions(),
        threshold=check_number(threshold, "threshold", minimum=-1, maximum=1, min_open=True),
        max_tries=check_int(max_tries, "max_tries", minimum=1),
        identity_fn=identity_fn,
        identity_threshold=check_number(
            identity_threshold, "identity_threshold", minimum=0, maximum=1
        ),
        sampler=sampler,
        check_face=bool(check_face),
        min_coverage=check_number(min_coverage, "min_coverage", minimum=0, maximum=1),
    )
