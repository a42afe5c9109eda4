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
from typing import Any

import numpy as np

from facegen.analyzer import select_faces
from facegen.errors import FacegenError, NoFaceDetectedError
from facegen.image_io import ImageSource, load_image
from facegen.masks import MaskSpec
from facegen.pipelines.editing.anonymize import GeneratedFace, ReplaceFaceFn
from facegen.pipelines.editing.face_edit import EditResult, FaceEdit, edit_faces
from facegen.pipelines.generation.id_to_face import MAX_SEED, IDGenerationMixin
from facegen.types import Face, IdentityEmbedding

__all__ = [
    "EDIT_OPTIONS",
    "SwapFace",
    "SwapResult",
    "embed_at",
    "make_replace_face",
    "swap",
]

logger = logging.getLogger(__name__)

#: The :func:`~facegen.pipelines.editing.face_edit.edit_faces` options :func:`make_replace_face` passes on.
EDIT_OPTIONS = (
    "crop_size",
    "template",
    "margin",
    "control",
    "strength",
    "num_inference_steps",
    "guidance_scale",
    "prompt",
    "negative_prompt",
    "color_match",
)


@dataclass(frozen=True, eq=False)
class SwapFace:
    """One swapped face: its :class:`~facegen.pipelines.editing.face_edit.FaceEdit`, and cosine
    similarities of the result, by encoder id, to the source identity (``None`` where the
    source has no embedding from that encoder) and to the original face it replaced."""

    edit: FaceEdit
    source_similarity: dict[str, float | None] = field(default_factory=dict)
    target_similarity: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.edit.to_dict(),
            "source_similarity": self.source_similarity,
            "target_similarity": self.target_similarity,
        }


@dataclass(frozen=True, eq=False)
class SwapResult:
    """``image``: RGB uint8 ``(H, W, 3)``. ``mask``: float32 ``(H, W)``, the union of the
    applied masks (0 = the target's bytes). ``faces``: one :class:`SwapFace` per swapped face.
    ``num_detected``: faces found in the target before selection."""

    image: np.ndarray
    mask: np.ndarray
    faces: list[SwapFace]
    num_detected: int


def embed_at(analyzer: Any, image: np.ndarray, faces: Sequence[Face]) -> list[IdentityEmbedding]:
    """``analyzer``'s encoder's embeddings of ``image`` at the given faces' places (no
    detection: the encoder's own alignment of each face's keypoints/landmarks)."""
    enc = getattr(analyzer, "encoder", None)
    if enc is None:
        raise ValueError(f"`analyzer` must have an identity encoder, got {analyzer!r}")
    return enc.embed(image, list(faces))


def _encoder_id(analyzer: Any) -> str | None:
    enc = getattr(analyzer, "encoder", None)
    return None if enc is None else str(enc.encoder_id)


def _sim(a: IdentityEmbedding, b: IdentityEmbedding | None) -> float | None:
    if b is None or a.encoder_id != b.encoder_id or a.dim != b.dim:
        return None
    return round(float(a.similarity(b)), 6)


# ----------------------------------------------------------------------------- swap


def _select_targets(
    found: list[Face], faces: Any, image: np.ndarray, analyzers: Sequence[Any]
) -> list[Face]:
    if isinstance(faces, tuple) and len(faces) == 3 and faces[0] == "reference":
        _, ref, threshold = faces
        if not isinstance(ref, IdentityEmbedding):
            raise ValueError(
                f"`faces` ('reference', embedding, threshold) needs an IdentityEmbedding, got "
                f"{type(ref).__name__}"
            )
        if isinstance(threshold, bool) or not (
            isinstance(threshold, (int, float)) and -1 <= threshold <= 1
        ):
            raise ValueError(
                f"the reference threshold must be a number in [-1, 1], got {threshold!r}"
            )
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
    pipe: Any,
    analyzer: Any,
    faces: str | int | tuple[str, IdentityEmbedding, float] = "all",
    *,
    independent_analyzer: Any = None,
    source_select: str | int = "largest",
    mask_spec: MaskSpec | None = None,
    control: str | None = "auto",
    strength: float = 1.0,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    seeds: int | Sequence[int] | None = None,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    color_match: bool = True,
    crop_size: int | None = None,
    template: str | None = None,
    margin: float = 1.0,
) -> SwapResult:
    """Swap ``source_identity`` into the selected faces of ``target_image``.

    ``source_identity``: an :class:`~facegen.types.IdentityEmbedding` for ``pipe`` (its
    encoder's), or a photo whose ``source_select`` face is embedded with
    ``pipe.identity_analyzer``. ``analyzer`` detects the target's faces (68 landmarks for the
    control map and masks). ``faces``: ``"all"``, ``"largest"``, ``"best"``, an index
    (detector order), or ``("reference", embedding, threshold)``: every face whose similarity
    to ``embedding`` is >= ``threshold`` (embedded with whichever of ``analyzer``,
    ``pipe.identity_analyzer`` and ``independent_analyzer`` has that embedding's encoder).

    Similarities (:class:`SwapFace`) are measured with ``pipe.identity_analyzer`` (to the
    source identity and to the original face) and, when given, ``independent_analyzer`` (to
    the original face, and to the source photo's face when the source is a photo).
    Other options: see :func:`~facegen.pipelines.editing.face_edit.edit_faces`.
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
    result: EditResult = edit_faces(
        target,
        chosen,
        [identity],
        pipe,
        crop_size=crop_size,
        template=template,
        margin=margin,
        mask_spec=mask_spec,
        control=control,
        strength=strength,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        seeds=seeds,
        prompt=prompt,
        negative_prompt=negative_prompt,
        color_match=color_match,
    )
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
    swapped = [SwapFace(e, s, t) for e, s, t in zip(result.faces, src_sims, tgt_sims)]
    return SwapResult(result.image, result.mask, swapped, len(found))


# ----------------------------------------------------------------------------- anonymization


def _derive_seed(*parts: Any) -> int:
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


def _identity_spec(pipe: Any) -> Any:
    return pipe.identity_spec


def _face_present(detector: Any, image: np.ndarray, face: Face, min_iou: float = 0.3) -> bool:
    """Whether ``detector`` finds a face overlapping ``face``'s box (IoU >= ``min_iou``) in a
    window of twice the box around it."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in face.bbox)
    pw, ph = (x2 - x1) / 2, (y2 - y1) / 2
    wx1, wy1 = max(int(x1 - pw), 0), max(int(y1 - ph), 0)
    wx2, wy2 = min(int(np.ceil(x2 + pw)), w), min(int(np.ceil(y2 + ph)), h)
    if wx2 <= wx1 or wy2 <= wy1:
        return False
    window = np.ascontiguousarray(image[wy1:wy2, wx1:wx2])
    area = max(x2 - x1, 1e-6) * max(y2 - y1, 1e-6)
    for f in detector.detect(window):
        bx1, by1, bx2, by2 = (float(v) for v in f.bbox)
        bx1, bx2, by1, by2 = bx1 + wx1, bx2 + wx1, by1 + wy1, by2 + wy1
        iw = max(0.0, min(x2, bx2) - max(x1, bx1))
        ih = max(0.0, min(y2, by2) - max(y1, by1))
        inter = iw * ih
        union = area + (bx2 - bx1) * (by2 - by1) - inter
        if union > 0 and inter / union >= min_iou:
            return True
    return False


def make_replace_face(
    pipe: Any,
    verifier: Any,
    *,
    threshold: float | None = None,
    max_tries: int = 3,
    seed: int = 0,
    identity_fn: Callable[[IdentityEmbedding | None, int], IdentityEmbedding] | None = None,
    identity_threshold: float = 0.3,
    sampler: str = "uniform",
    check_face: bool = True,
    min_coverage: float = 0.9,
    **edit_options: Any,
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
       ``mask`` with that identity and seed (``edit_options``: any of :data:`EDIT_OPTIONS`);
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
    mask). Seeds derive from ``seed``, the face's box and its pixels, so a face gets the
    same replacement whatever order or batch it is processed in.
    """
    if not isinstance(pipe, IDGenerationMixin):
        raise ValueError(f"`pipe` must be a facegen identity pipeline, got {type(pipe).__name__}")
    ver_id = _encoder_id(verifier)
    if ver_id is None or getattr(verifier, "detector", None) is None:
        raise ValueError(
            f"`verifier` must be a FaceAnalyzer with a detector and an encoder, got {verifier!r}"
        )
    spec = _identity_spec(pipe)
    conditioning = pipe.identity_analyzer
    cond_ids = {*spec.encoder_ids, *([_encoder_id(conditioning)] if conditioning else [])}
    if verifier is conditioning or ver_id in cond_ids:
        raise ValueError(
            "`verifier` must use an encoder independent of the conditioning one "
            f"({', '.join(sorted(i for i in cond_ids if i))}), got {ver_id!r}"
        )
    thr = float(verifier.encoder.same_person_threshold) if threshold is None else threshold
    if isinstance(thr, bool) or not (isinstance(thr, (int, float)) and -1 < thr <= 1):
        raise ValueError(f"`threshold` must be a number in (-1, 1], got {threshold!r}")
    for name, v in (("identity_threshold", identity_threshold), ("min_coverage", min_coverage)):
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and 0 <= v <= 1):
            raise ValueError(f"`{name}` must be a number in [0, 1], got {v!r}")
    if isinstance(max_tries, bool) or not isinstance(max_tries, int) or max_tries < 1:
        raise ValueError(f"`max_tries` must be an integer >= 1, got {max_tries!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an integer, got {seed!r}")
    if identity_fn is not None and not callable(identity_fn):
        raise ValueError(f"`identity_fn` must be callable, got {type(identity_fn).__name__}")
    unknown = sorted(set(edit_options) - set(EDIT_OPTIONS))
    if unknown:
        raise ValueError(f"`edit_options` must be among {', '.join(EDIT_OPTIONS)}, got {unknown}")
    cond_ok = conditioning is not None and _encoder_id(conditioning) in spec.encoder_ids

    def new_identity(original: IdentityEmbedding | None, s: int) -> IdentityEmbedding:
        if identity_fn is not None:
            ident = identity_fn(original, s)
            if not isinstance(ident, IdentityEmbedding):
                raise ValueError(
                    f"`identity_fn` must return an IdentityEmbedding, got {type(ident).__name__}"
                )
            return ident
        from facegen.pipelines.identities import sample_identities

        bank = None if original is None else original.normalize().vector[None]
        return sample_identities(
            1,
            dim=spec.dim,
            sampler=sampler,
            seed=s,
            leakage_bank=bank,
            leakage_threshold=identity_threshold,
            encoder_id=spec.encoder_ids[0],
            batch_size=16,
        ).embeddings()[0]

    def replace_face(image: np.ndarray, face: Face, mask: np.ndarray) -> GeneratedFace:
        key = _derive_seed(seed, _face_key(image, face))
        original = embed_at(conditioning, image, [face])[0] if cond_ok else None
        before = embed_at(verifier, image, [face])[0]
        reasons: list[str] = []
        best: tuple[float, np.ndarray] | None = None
        for k in range(max_tries):
            s = _derive_seed(key, k)
            ident = new_identity(original, s)
            sim_id = _sim(ident, original)
            if sim_id is not None and sim_id >= identity_threshold:
                reasons.append(
                    f"try {k + 1} (seed {s}): the new identity's similarity {sim_id:.3f} to the "
                    f"original is not below {identity_threshold}"
                )
                continue
            edit = edit_faces(image, [face], [ident], pipe, masks=[mask], seeds=[s], **edit_options)
            record = edit.faces[0]
            if record.skipped or record.coverage < min_coverage:
                return GeneratedFace(
                    image,
                    False,
                    None,
                    ver_id,
                    reason=f"the generation crop covers {record.coverage:.0%} of the face's mask "
                    f"(< {min_coverage:.0%}); uncovered pixels would keep the original",
                )
            sim = float(embed_at(verifier, edit.image, [face])[0].similarity(before))
            if best is None or sim < best[0]:
                best = (sim, edit.image)
            if check_face and not _face_present(verifier.detector, edit.image, face):
                reasons.append(f"try {k + 1} (seed {s}): no face detected in the result")
                continue
            if sim < thr:
                logger.debug("replacement accepted at try %d (similarity %.3f)", k + 1, sim)
                return GeneratedFace(edit.image, True, sim, ver_id)
            reasons.append(
                f"try {k + 1} (seed {s}): similarity {sim:.3f} to the original under "
                f"{ver_id} is not below {thr:g}"
            )
        reason = f"no replacement passed in {max_tries} tries: " + "; ".join(reasons)
        if best is None:
            return GeneratedFace(image, False, None, ver_id, reason=reason)
        return GeneratedFace(best[1], False, round(best[0], 6), ver_id, reason=reason)

    return replace_face
