"""Face swap in a video: the source identity on the chosen face tracks, frame by frame.

The pass is :func:`~facegen.pipelines.editing.video_pass.run_video_pass` (decode, detect
every ``detect_every``-th frame, track, write with the source's times, audio and the
provenance record). Each frame's chosen faces are regenerated with the source identity by
:func:`~facegen.pipelines.editing.face_edit.edit_faces` at the tracked box and keypoints,
with one generation seed per track (``options.seed`` + track id), so a track keeps its seed
from frame to frame. Frames are generated independently: expect some flicker.

Which faces (``faces``):

* ``"all"``: every tracked face on every frame;
* ``"largest"``: on each frame, the face with the largest tracked box;
* ``("reference", embedding, threshold)``: the tracks whose face, on the first frame where
  the detector found it, has similarity >= ``threshold`` to ``embedding`` under
  ``reference_analyzer`` (an analyzer with that embedding's encoder). A track is decided
  once and kept; before its first detection (the tracker's safety margin) it is left as it is.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from facegen.analyzer import FaceAnalyzer
from facegen.errors import InvalidArgumentError
from facegen.pipelines.editing.options import EditOptions
from facegen.pipelines.editing.tracking import TrackedFace, TrackedFrame
from facegen.pipelines.editing.video_pass import (
    VideoAnonymizeReport,
    by_position,
    run_video_pass,
)
from facegen.types import Face, IdentityEmbedding

__all__ = ["VideoFaces", "swap_video"]

#: ``"all"``, ``"largest"`` or ``("reference", IdentityEmbedding, threshold)``.
VideoFaces = str | tuple[str, IdentityEmbedding, float]


def _check_faces(faces: object, reference_analyzer: FaceAnalyzer | None) -> None:
    if faces in ("all", "largest"):
        return
    if isinstance(faces, tuple) and len(faces) == 3 and faces[0] == "reference":
        if not isinstance(faces[1], IdentityEmbedding):
            raise InvalidArgumentError("a reference selection needs an IdentityEmbedding")
        enc = getattr(getattr(reference_analyzer, "encoder", None), "encoder_id", None)
        if enc != faces[1].encoder_id:
            raise InvalidArgumentError(
                f"`reference_analyzer` must embed with the reference's encoder "
                f"{faces[1].encoder_id!r}, got {enc!r}"
            )
        return
    raise InvalidArgumentError(
        "a video's faces must be 'all', 'largest' or ('reference', embedding, threshold), "
        f"got {faces!r}"
    )


class _Swapper:
    """Treats each frame: the chosen faces regenerated with the source identity."""

    def __init__(
        self,
        pipe: Any,
        identity: IdentityEmbedding,
        options: EditOptions,
        faces: VideoFaces,
        reference_analyzer: FaceAnalyzer | None,
    ) -> None:
        self.pipe, self.identity, self.options = pipe, identity, options
        self.faces, self.reference_analyzer = faces, reference_analyzer
        self.decided: dict[int, bool] = {}
        self._latent: np.ndarray | None = None  # a one-shot swapper's source, computed once
        self.counts = {"faces_generated": 0, "faces_fallback": 0}  # saved with each part

    def _chosen(self, image: np.ndarray, frame: TrackedFrame) -> list[TrackedFace]:
        if self.faces == "all":
            return list(frame.faces)
        if self.faces == "largest":
            area = [(f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]) for f in frame.faces]
            return [frame.faces[int(np.argmax(area))]] if frame.faces else []
        from facegen.pipelines.editing.swap import embed_at

        _, ref, threshold = self.faces  # type: ignore[misc]
        chosen = []
        for f in frame.faces:
            if f.track_id not in self.decided and f.source == "detected":
                assert self.reference_analyzer is not None
                emb = embed_at(self.reference_analyzer, image, [_face(f)])[0]
                self.decided[f.track_id] = float(emb.similarity(ref)) >= float(threshold)
            if self.decided.get(f.track_id, False):
                chosen.append(f)
        return chosen

    def __call__(self, image: np.ndarray, frame: TrackedFrame) -> np.ndarray:
        from facegen.pipelines.editing.face_edit import edit_faces
        from facegen.pipelines.editing.oneshot import OneShotSwap

        chosen = by_position(self._chosen(image, frame))
        if not chosen:
            return image
        if isinstance(self.pipe, OneShotSwap):  # one forward pass for the frame's faces
            if self._latent is None:
                self._latent = self.pipe.prepare_source(self.identity)
            result = self.pipe.swap(image, [_face(f) for f in chosen], self._latent)
            self.counts["faces_generated"] += len(chosen)
            return result.image
        base = int(self.options.seed or 0)
        seeds = [base + f.track_id for f in chosen]
        result = edit_faces(
            image, [_face(f) for f in chosen], [self.identity], self.pipe, self.options,
            seeds=seeds,
        )  # fmt: skip
        done = sum(not r.skipped for r in result.faces)
        self.counts["faces_generated"] += done
        self.counts["faces_fallback"] += len(chosen) - done
        return result.image


def _face(tracked: TrackedFace) -> Face:
    return Face(bbox=tracked.bbox, score=max(tracked.score, 0.0), kps5=tracked.kps5)


def swap_video(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    detector: Any,
    identity: IdentityEmbedding,
    pipe: Any,
    options: EditOptions | None = None,
    *,
    faces: VideoFaces = "all",
    reference_analyzer: FaceAnalyzer | None = None,
    source_name: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    **pass_options: Any,
) -> VideoAnonymizeReport:
    """Put ``identity`` (in ``pipe``'s identity space) on the chosen faces of the video
    ``src``, written to the MP4 ``out`` (see the module doc). ``pipe``: a facegen identity
    pipeline (diffusion, per face and frame) or a
    :class:`~facegen.pipelines.editing.oneshot.OneShotSwap` (one forward pass per frame's
    faces; ``identity`` is then buffalo_l's embedding, prepared once; ``options`` unused). ``pass_options``: the pass's
    ``tracker``, ``detect_every``, ``start``/``end``, ``audio``, ``crf``, ``preset``,
    ``watermark``, ``max_frames``, ``chunk_frames``, ``resume``. The report counts ``faces_generated`` (swapped) and
    ``faces_fallback`` (chosen faces the edit skipped, left as they were)."""
    from facegen.pipelines.editing.oneshot import OneShotSwap
    from facegen.pipelines.generation.id_to_face import IDGenerationMixin

    oneshot = isinstance(pipe, OneShotSwap)
    if not oneshot and not isinstance(pipe, IDGenerationMixin):
        raise InvalidArgumentError(
            f"`pipe` must be a facegen identity pipeline or a OneShotSwap, got {type(pipe).__name__}"
        )
    if not isinstance(identity, IdentityEmbedding):
        raise InvalidArgumentError(
            f"`identity` must be an IdentityEmbedding, got {type(identity).__name__}"
        )
    if oneshot:
        pipe.prepare_source(identity)  # refuses another encoder's vector before any frame
    else:
        pipe.identity_spec.prepare([identity], adapter=getattr(pipe, "preset_name", None) or "pipe")
    _check_faces(faces, reference_analyzer)
    opts = options or EditOptions()
    swapper = _Swapper(pipe, identity, opts, faces, reference_analyzer)
    method = pipe.settings() if oneshot else {"preset": pipe.preset_name, "edit": opts.to_dict()}
    settings = {
        "swap": {
            "source": source_name,
            "faces": faces if isinstance(faces, str) else "reference",
            **method,
        }
    }
    digest = hashlib.sha256(np.asarray(identity.vector, np.float32).tobytes()).hexdigest()
    report = run_video_pass(
        src, out, detector, swapper, operation="swap", settings=settings, progress=progress,
        resume_extra=digest, **pass_options,
    )  # fmt: skip
    report.faces_generated = swapper.counts["faces_generated"]
    report.faces_fallback = swapper.counts["faces_fallback"]
    return report
