"""Edit jobs: one photo in, one labelled file out. The ``facegen`` CLI and the web app run
these same functions for swap, reenact and anonymize (and
:func:`~facegen.pipelines.editing.anonymize_folder.anonymize_folder` runs
:func:`anonymize_file` for every file), so the same inputs, options and seed give the same
file with the same record whichever surface asked.

Each job runs its edit, writes the result atomically with facegen's provenance record (kind
``"edited"``, plus the invisible watermark unless ``watermark=False`` or the image is under
64 px a side; :func:`save_edited`) and returns a :class:`JobOutput`: the path written, the
edit's result and the record. Records (the ``params`` of
:func:`facegen.provenance.save_with_provenance`):

* ``anonymize``: ``software``, ``source`` (the input's name), ``detector``, ``anonymize``
  (:func:`~facegen.pipelines.editing.anonymize.anonymize_settings`), ``faces``
  (:meth:`~facegen.pipelines.editing.anonymize.FaceRecord.to_dict` each);
* ``swap``: ``software``, ``source``, ``target``, ``preset``, ``selection``, ``options``
  (:meth:`~facegen.pipelines.editing.options.EditOptions.to_dict`), ``faces``
  (:meth:`~facegen.pipelines.editing.swap.SwapFace.to_dict` each);
* ``reenact``: ``software``, ``source``, ``driving``, ``preset``, ``options``, ``faces``.

Names are file names, never the folders they came from. A provenance record holds at most
16 KB: when the per-face list would not fit it is written as its length (the returned
record keeps every face).

:func:`face_replacement` builds the anonymizer's ``"generate"`` hook (one pseudonym per real
person given a secret); :func:`load_edit_pipeline` and :func:`edit_analyzer` build the models
the surfaces use.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import numpy as np

from facegen._version import __version__
from facegen.analyzer import FaceAnalyzer
from facegen.errors import FacegenError
from facegen.image_io import ImageSource
from facegen.pipelines.editing.anonymize import (
    AnonymizeOptions,
    AnonymizeResult,
    FaceReplacement,
    GeneratedFace,
    ReplaceFaceFn,
    _detector_info,
    anonymize_image,
    anonymize_settings,
)
from facegen.pipelines.editing.options import OUTPUT_FORMATS, OUTPUT_SUFFIXES, EditOptions
from facegen.pipelines.editing.pseudonyms import Pseudonymizer
from facegen.provenance import can_watermark, save_with_provenance
from facegen.types import Face, IdentityEmbedding
from facegen.validate import check_choice, check_int

if TYPE_CHECKING:
    from facegen.pipelines.editing.face_edit import EditResult
    from facegen.pipelines.editing.swap import FaceSelection, SwapResult
    from facegen.pipelines.editing.video_pseudonyms import VideoPseudonyms
    from facegen.pipelines.generation.id_to_face import IDGenerationMixin

__all__ = [
    "OUTPUT_FORMATS",
    "JobOutput",
    "TrackReplacement",
    "anonymize_file",
    "check_output_format",
    "edit_analyzer",
    "face_replacement",
    "load_edit_pipeline",
    "output_name",
    "reenact_file",
    "reference_selection",
    "save_edited",
    "swap_file",
    "track_replacement",
]

R = TypeVar("R")

#: Suffixes :func:`facegen.image_io.save_image` writes as they are.
_WRITABLE = frozenset(s for suffixes in OUTPUT_SUFFIXES.values() for s in suffixes)
#: Provenance records hold at most 16 KB of JSON; a job keeps a margin.
_RECORD_BUDGET = 12_000


@dataclass(frozen=True, eq=False)
class JobOutput(Generic[R]):
    """What a job made: the file ``path``, the edit's ``result`` and the provenance
    ``record`` (complete, even where the file's copy had to be shortened)."""

    path: Path
    result: R
    record: dict[str, Any]


# ----------------------------------------------------------------------------- outputs


def check_output_format(output_format: str | None) -> str | None:
    """``output_format`` if it is ``None`` or one of :data:`OUTPUT_FORMATS`."""
    return check_choice(output_format, "output_format", (None, *OUTPUT_FORMATS))


def output_name(name: str, output_format: str | None = None) -> str:
    """The output name (or relative POSIX path) of input ``name``: kept when its format can
    be written (``.png``, ``.jpg``, ``.jpeg``, ``.webp``), else with ``.png``; with
    ``output_format`` (:data:`OUTPUT_FORMATS`), that format's suffix (a ``.jpeg`` input stays
    ``.jpeg`` under ``"jpg"``)."""
    path = PurePosixPath(name)
    keep = _WRITABLE if output_format is None else OUTPUT_SUFFIXES[output_format]
    if path.suffix.lower() in keep:
        return str(path)
    return str(path.with_suffix("." + (output_format or "png")))


def _fits(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """``record``, with its per-face list replaced by its length when it would not fit."""
    if len(json.dumps(record, default=str)) <= _RECORD_BUDGET:
        return record
    faces = record.get("faces")
    count = len(faces) if isinstance(faces, list) else 0
    return {**record, "faces": f"{count} faces; too many to list in the file's record"}


def save_edited(
    image: np.ndarray,
    path: str | os.PathLike[str],
    operation: str,
    record: Mapping[str, Any],
    *,
    watermark: bool = True,
) -> Path:
    """Write an edited RGB uint8 ``(H, W, 3)`` image with its provenance ``record`` (kind
    ``"edited"``; the watermark when asked and the image is large enough to carry it)."""
    mark = watermark and can_watermark(image)
    return save_with_provenance(
        image, path, operation, _fits(record), kind="edited", watermark=mark
    )


def _name(item: object, default: str) -> str:
    """A file name for the record (never the folder it came from)."""
    if isinstance(item, (str, os.PathLike)):
        return Path(item).name
    if isinstance(item, IdentityEmbedding):
        return f"embedding ({item.encoder_id})"
    return default


# ----------------------------------------------------------------------------- jobs


class _Edited(Protocol):
    """What every edit returns: the edited image and a record per face."""

    image: np.ndarray
    faces: Sequence[Any]


E = TypeVar("E", bound=_Edited)


def _write(
    operation: str,
    result: E,
    path: str | os.PathLike[str],
    settings: dict[str, Any],
    watermark: bool,
) -> JobOutput[E]:
    """Write ``result.image`` with the record ``software``, ``settings``, ``faces``."""
    faces = [f.to_dict() for f in result.faces]
    record = {"software": f"facegen {__version__}", **settings, "faces": faces}
    written = save_edited(result.image, path, operation, record, watermark=watermark)
    return JobOutput(written, result, record)


def anonymize_file(
    image: ImageSource,
    path: str | os.PathLike[str],
    analyzer: FaceAnalyzer,
    options: AnonymizeOptions | None = None,
    *,
    replace_face: ReplaceFaceFn | None = None,
    source: str | None = None,
    watermark: bool = True,
) -> JobOutput[AnonymizeResult]:
    """:func:`~facegen.pipelines.editing.anonymize.anonymize_image` written to ``path``.

    ``source``: the input's name in errors and in the record (default: the file name of
    ``image`` when it is a path). Raises as ``anonymize_image`` does (nothing is written).
    """
    opts = options or AnonymizeOptions()
    source = source or _name(image, "image")
    result = anonymize_image(image, analyzer, opts, replace_face=replace_face, source=source)
    record = {
        "source": source,
        "detector": _detector_info(analyzer)[0],
        "anonymize": anonymize_settings(opts, replace_face),
    }
    return _write("anonymize", result, path, record, watermark)


def _selection_record(faces: FaceSelection) -> object:
    if isinstance(faces, tuple):
        _, ref, threshold = faces
        return {"reference": getattr(ref, "encoder_id", None), "threshold": float(threshold)}
    return faces if isinstance(faces, str) else int(faces)


def swap_file(
    target: ImageSource,
    source: IdentityEmbedding | ImageSource,
    path: str | os.PathLike[str],
    pipe: IDGenerationMixin,
    analyzer: FaceAnalyzer,
    faces: FaceSelection = "all",
    options: EditOptions | None = None,
    *,
    target_name: str | None = None,
    source_name: str | None = None,
    watermark: bool = True,
) -> JobOutput[SwapResult]:
    """:func:`~facegen.pipelines.editing.swap.swap` of ``source`` into ``target``'s
    ``faces``, written to ``path``. ``analyzer`` (detection, 68 landmarks and an encoder
    independent of the conditioning one, e.g. :func:`edit_analyzer`) finds the faces and
    measures the result. Names default to the file names of path inputs."""
    from facegen.pipelines.editing.swap import swap

    opts = options or EditOptions()
    result = swap(target, source, pipe, analyzer, faces, opts, independent_analyzer=analyzer)
    record = {
        "source": source_name or _name(source, "source photo"),
        "target": target_name or _name(target, "target photo"),
        "preset": pipe.preset_name,
        "selection": _selection_record(faces),
        "options": opts.to_dict(),
    }
    return _write("swap", result, path, record, watermark)


def reenact_file(
    source: ImageSource,
    driving: ImageSource,
    path: str | os.PathLike[str],
    pipe: IDGenerationMixin,
    analyzer: FaceAnalyzer,
    options: EditOptions | None = None,
    *,
    source_identity: IdentityEmbedding | None = None,
    source_name: str | None = None,
    driving_name: str | None = None,
    watermark: bool = True,
) -> JobOutput[EditResult]:
    """:func:`~facegen.pipelines.editing.face_edit.reenact` written to ``path`` (the source
    photo's person with the driving photo's pose and expression)."""
    from facegen.pipelines.editing.face_edit import reenact

    opts = options or EditOptions()
    result = reenact(source, driving, pipe, analyzer, opts, source_identity=source_identity)
    record = {
        "source": source_name or _name(source, "source photo"),
        "driving": driving_name or _name(driving, "driving photo"),
        "preset": pipe.preset_name,
        "options": opts.to_dict(),
    }
    return _write("reenact", result, path, record, watermark)


# ----------------------------------------------------------------------------- models


def load_edit_pipeline(
    preset: str,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    offline: bool | None = None,
    controlnet: str | None = None,
) -> IDGenerationMixin:
    """The pipeline of ``preset`` for photo edits (``controlnet``: a landmark ControlNet's
    path or id; ``offline``: never download), its progress bars off."""
    from facegen.pipelines.generation.presets import from_preset

    extra = {"controlnet": controlnet} if controlnet else {}
    pipe = from_preset(
        preset, device=device, dtype=dtype, local_files_only=True if offline else None, **extra
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def edit_analyzer(*, encoder: bool = True) -> FaceAnalyzer:
    """dlib detection with 68 landmarks (masks follow the jaw and brows, and draw the landmark
    maps) and, with ``encoder``, dlib's identity encoder: independent of every conditioning
    encoder, so it verifies and measures edits. Offline."""
    return FaceAnalyzer.from_names("dlib", "dlib68", "dlib" if encoder else None)


def reference_selection(
    analyzer: FaceAnalyzer, photo: ImageSource
) -> tuple[str, IdentityEmbedding, float]:
    """The :func:`~facegen.pipelines.editing.swap.swap` selection of every target face that
    is the person of ``photo``'s largest face (``analyzer``'s encoder, at its same-person
    threshold)."""
    face = analyzer.analyze(photo, select="largest", source=_name(photo, "reference photo"))[0]
    if face.embedding is None or analyzer.encoder is None:
        raise FacegenError("a reference selection needs an analyzer with an identity encoder")
    return "reference", face.embedding, float(analyzer.encoder.same_person_threshold)


# ----------------------------------------------------------------------------- generate mode


def face_replacement(
    pipe: IDGenerationMixin,
    verifier: FaceAnalyzer,
    options: EditOptions | None = None,
    *,
    attempts: int = 3,
    secret: str | bytes | None = None,
    images: Sequence[ImageSource] = (),
) -> FaceReplacement:
    """The anonymizer's ``"generate"`` hook: every face becomes a synthetic person made with
    ``pipe`` as ``options`` say, verified by ``verifier`` (independent of the conditioning
    encoder; see :func:`~facegen.pipelines.editing.swap.make_replace_face`), tried
    ``attempts`` times, else the classical fallback.

    With a ``secret``, one synthetic identity per real person across ``images`` (clustered
    with ``verifier``'s encoder, keyed by the secret:
    :class:`~facegen.pipelines.editing.pseudonyms.Pseudonymizer`); without one, a fresh
    identity per face. The secret is never recorded.
    """
    from facegen.pipelines.editing.swap import embed_at, make_replace_face

    opts = options or EditOptions()
    check_int(attempts, "attempts", minimum=1)
    settings = {
        "preset": pipe.preset_name,
        "edit": opts.to_dict(),
        "attempts": attempts,
        "verifier": getattr(verifier.encoder, "encoder_id", None),
        "pseudonyms": "consistent" if secret else "per face",
    }
    if not secret:
        return FaceReplacement(
            make_replace_face(pipe, verifier, opts, max_tries=attempts), settings
        )
    pz = _fit_pseudonyms(pipe, verifier, images, secret)

    def hook(image: np.ndarray, face: Face, mask: np.ndarray) -> GeneratedFace:
        emb = embed_at(verifier, image, [face])[0].vector
        # the person's cluster; a face that fits none gets its own pseudonym
        own = hashlib.sha256(np.round(emb, 2).astype(np.float32).tobytes()).hexdigest()
        identity = pz.identity_for(f"face:{own}", emb)
        inner = make_replace_face(
            pipe, verifier, opts, max_tries=attempts, identity_fn=lambda original, seed: identity
        )
        return inner(image, face, mask)

    return FaceReplacement(hook, settings)


@dataclass(frozen=True, eq=False)
class TrackReplacement:
    """One ``replace_face`` hook per video track (``self(track_id)``), and how they are made
    (``settings``, recorded with the video). ``video``: the name of the video the hooks are
    for (part of a pseudonym's key); :meth:`for_video` gives the same hooks for another.
    ``resume_token``: changes with what ``settings`` do not show (the secret), so a video's
    parts made with another are not reused."""

    factory: Callable[[str, int], ReplaceFaceFn]
    settings: dict[str, Any]
    video: str = ""
    resume_token: str = ""

    def __call__(self, track_id: int) -> ReplaceFaceFn:
        return self.factory(self.video, track_id)

    def for_video(self, name: str) -> TrackReplacement:
        return TrackReplacement(self.factory, self.settings, str(name), self.resume_token)


def track_replacement(
    pipe: IDGenerationMixin,
    verifier: FaceAnalyzer,
    options: EditOptions | None = None,
    *,
    attempts: int = 3,
    pseudonyms: VideoPseudonyms | None = None,
    secret_token: str = "",
) -> TrackReplacement:
    """The video anonymizer's ``"generate"`` hooks: each track becomes one synthetic person
    for its whole length — an identity sampled once per track (seeded by ``options.seed`` and
    the track id, kept below cosine 0.3 to the track's first face), every frame's face made
    with ``pipe`` and verified as :func:`face_replacement` does, else the classical fallback
    on that frame.

    With ``pseudonyms`` (fitted to the run's videos by
    :func:`~facegen.pipelines.editing.video_pseudonyms.fit_video_pseudonyms` with a secret;
    ``secret_token`` from :func:`~facegen.pipelines.editing.video_pseudonyms.resume_token`),
    a track takes its real person's pseudonym instead, the same in every video of the run."""
    from facegen.pipelines.editing.swap import make_replace_face
    from facegen.pipelines.editing.video_pseudonyms import PseudonymTrack
    from facegen.pipelines.identities import sample_identities

    opts = options or EditOptions()
    check_int(attempts, "attempts", minimum=1)
    base = int(opts.seed or 0)
    settings = {
        "preset": pipe.preset_name,
        "edit": opts.to_dict(),
        "attempts": attempts,
        "verifier": getattr(verifier.encoder, "encoder_id", None),
        "pseudonyms": "per track" if pseudonyms is None else "consistent",
    }

    def replace(identity_fn: Any) -> ReplaceFaceFn:
        return make_replace_face(pipe, verifier, opts, max_tries=attempts, identity_fn=identity_fn)

    def factory(video: str, track_id: int) -> ReplaceFaceFn:
        if pseudonyms is not None:
            return PseudonymTrack(video, pseudonyms, verifier, replace)
        chosen: list[IdentityEmbedding] = []

        def identity_fn(original: IdentityEmbedding | None, seed: int) -> IdentityEmbedding:
            if not chosen:
                spec = pipe.identity_spec
                bank = None if original is None else original.normalize().vector[None]
                chosen.append(
                    sample_identities(
                        1,
                        dim=spec.dim,
                        seed=(base * 1_000_003 + track_id) % 2**32,
                        leakage_bank=bank,
                        leakage_threshold=0.3,
                        encoder_id=spec.encoder_ids[0],
                        batch_size=16,
                    ).embeddings()[0]
                )
            return chosen[0]

        return replace(identity_fn)

    return TrackReplacement(factory, settings, resume_token=secret_token)


def _fit_pseudonyms(
    pipe: IDGenerationMixin,
    verifier: FaceAnalyzer,
    images: Sequence[ImageSource],
    secret: str | bytes,
) -> Pseudonymizer:
    """A :class:`~facegen.pipelines.editing.pseudonyms.Pseudonymizer` in ``pipe``'s identity
    space, fitted to every face of ``images`` (their embeddings are never written; a face's
    key is ``"<image>#<face>"``, the image's path or its position)."""
    if verifier.encoder is None:
        raise FacegenError("consistent pseudonyms need a verifier with an identity encoder")
    spec = pipe.identity_spec
    pz = Pseudonymizer(
        secret, spec.encoder_ids[0], spec.dim, verifier.encoder.same_person_threshold
    )
    keys, vecs = [], []
    for n, image in enumerate(images):  # who is who across the set
        name = str(image) if isinstance(image, (str, os.PathLike)) else f"image {n}"
        try:
            for k, face in enumerate(verifier.analyze(image, source=name)):
                keys.append(f"{name}#{k}")
                vecs.append(face.embedding.vector)  # type: ignore[union-attr]
        except FacegenError:
            continue
    if keys:
        pz.fit(keys, np.stack(vecs))
    return pz
