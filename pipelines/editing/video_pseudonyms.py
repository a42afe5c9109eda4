"""Consistent pseudonyms in videos: the same real person becomes the same synthetic person in
every video of a run (``facegen anonymize VIDEO|FOLDER --mode generate --secret S``).

Two passes, as for a folder of photos
(:class:`~facegen.pipelines.editing.pseudonyms.Pseudonymizer`):

1. :func:`fit_video_pseudonyms` reads every video once (decode, detect every
   ``detect_every``-th frame, track — the anonymizing pass's settings), embeds up to
   ``samples`` detected faces of each track with the verifier's encoder (dlib's by default:
   independent of the conditioning encoder) and clusters the tracks' mean embeddings across
   all the videos. Nothing is written; no embedding is kept after the run.
2. In the anonymizing pass each track's hook (:class:`PseudonymTrack`) waits for the track's
   first *detected* face. The first pass saw the same detection (same detector, frames and
   tracker): the track takes that track's cluster. Where it did not (another setting, a
   detector that is not deterministic) the face is embedded and takes the nearest cluster at
   or above the encoder's same-person threshold; a track that fits none gets a pseudonym of
   its own, seeded by the secret, the video and the track. Frames of a track before that
   detection (the tracker's safety margin in time) are covered by the fallback mode.

The pseudonym vectors come from ``HMAC-SHA256(secret, cluster)``: the same videos and secret
give the same pseudonyms on every run, and nobody without the secret can tell which
pseudonym stands for whom.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facegen.errors import FacegenError, InvalidArgumentError
from facegen.pipelines.editing.pseudonyms import Pseudonymizer
from facegen.pipelines.editing.tracking import TrackedFrame, TrackerConfig
from facegen.types import Face, IdentityEmbedding
from facegen.validate import check_int

__all__ = ["PseudonymTrack", "VideoPseudonyms", "fit_video_pseudonyms", "resume_token"]


def resume_token(secret: str | bytes) -> str:
    """A digest that changes with the secret (for the resume key of a video's parts: parts
    made with another secret are not reused); the secret cannot be read back from it."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, b"facegen video parts", hashlib.sha256).hexdigest()[:32]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


class VideoPseudonyms:
    """What :func:`fit_video_pseudonyms` learnt: the fitted
    :class:`~facegen.pipelines.editing.pseudonyms.Pseudonymizer` and, per video and frame,
    the detections of the first pass with their track (to find a track again)."""

    def __init__(self, pseudonyms: Pseudonymizer) -> None:
        self.pseudonyms = pseudonyms
        self._seen: dict[tuple[str, int], list[tuple[np.ndarray, str]]] = {}

    @property
    def num_people(self) -> int:
        return self.pseudonyms.num_people

    def _add(self, video: str, frame: int, bbox: np.ndarray, key: str) -> None:
        self._seen.setdefault((video, frame), []).append((np.asarray(bbox, np.float32), key))

    def identity_for(
        self, video: str, frame: int | None, face: Face, embedding: np.ndarray | None
    ) -> IdentityEmbedding:
        """The pseudonym of the track whose detection ``face`` is on ``frame`` of ``video``:
        the first pass's track there (same box), else by ``embedding``."""
        if frame is not None:
            for bbox, key in self._seen.get((video, frame), []):
                if _iou(bbox, face.bbox) > 0.9 and self.pseudonyms.cluster_of(key) is not None:
                    return self.pseudonyms.identity_for(key)
        return self.pseudonyms.identity_for(f"{video}#{frame}#pass", embedding)


class _Collect:
    """A pass's treatment that changes nothing, records each detection's box and track, and
    embeds up to ``samples`` detected faces per track."""

    def __init__(self, verifier: Any, samples: int) -> None:
        self.verifier, self.samples = verifier, samples
        self.vectors: dict[int, list[np.ndarray]] = {}
        self.boxes: list[tuple[int, np.ndarray, int]] = []  # frame, box, track

    def __call__(self, image: np.ndarray, frame: TrackedFrame) -> np.ndarray:
        for tracked in frame.faces:
            got = self.vectors.setdefault(tracked.track_id, [])
            if tracked.source == "detected" and tracked.face is not None:
                self.boxes.append((frame.index, tracked.face.bbox, tracked.track_id))
            if tracked.source != "detected" or tracked.face is None or len(got) >= self.samples:
                continue
            emb = self.verifier.encoder.embed(image, [tracked.face])[0]
            if np.isfinite(emb.vector).all():
                got.append(np.asarray(emb.vector, np.float32))
        return image


def fit_video_pseudonyms(
    videos: Sequence[str | os.PathLike[str]],
    detector: Any,
    verifier: Any,
    secret: str | bytes,
    *,
    encoder_id: str,
    dim: int,
    names: Sequence[str] | None = None,
    tracker: TrackerConfig | None = None,
    detect_every: int = 1,
    start: int = 0,
    end: int | None = None,
    samples: int = 3,
    on_video: Callable[[Path, int, int], Any] | None = None,
) -> VideoPseudonyms:
    """The first pass (see the module doc): a :class:`Pseudonymizer` in the conditioning
    space (``encoder_id``, ``dim``) fitted to the tracks of every video in ``videos``.

    ``verifier``: an analyzer with an identity encoder (its ``same_person_threshold`` is the
    clustering threshold). ``names``: each video's name in the keys (default: its path).
    ``tracker``/``detect_every``/``start``/``end``: as the anonymizing pass will use them.
    A video that cannot be read is left out (the anonymizing pass reports it).
    ``on_video(path, k, total)``: called before each video (e.g. for a progress line).
    """
    from facegen.pipelines.editing.video_pass import VideoAnonymizeReport, _Pass
    from facegen.video_io import probe_video

    if getattr(verifier, "encoder", None) is None:
        raise InvalidArgumentError("consistent pseudonyms need a verifier with an identity encoder")
    samples = check_int(samples, "samples", minimum=1, maximum=100)
    every = check_int(detect_every, "detect_every", minimum=1, maximum=10_000)
    config = tracker or TrackerConfig(max_gap=max(5, 2 * (every - 1)))
    keys = list(names) if names is not None else [str(v) for v in videos]
    if len(keys) != len(videos):
        raise InvalidArgumentError(f"`names` must name each of the {len(videos)} videos")
    pz = Pseudonymizer(secret, encoder_id, dim, verifier.encoder.same_person_threshold)
    found = VideoPseudonyms(pz)
    track_keys: list[str] = []
    vectors: list[np.ndarray] = []
    for k, (video, name) in enumerate(zip(videos, keys, strict=True)):
        if on_video is not None:
            on_video(Path(video), k, len(videos))
        collect = _Collect(verifier, samples)
        try:
            info = probe_video(video)
            report = VideoAnonymizeReport(str(video), "", None, 0, 0)
            run = _Pass(
                video, detector, collect, config, every, start, end, None, report, None,
                float(info.fps or 25),
            )  # fmt: skip
            for _ in run.frames(0, False):
                pass
        except FacegenError:
            continue
        for track_id, got in sorted(collect.vectors.items()):
            if got:
                track_keys.append(f"{name}#{track_id}")
                vectors.append(np.mean(np.stack(got), axis=0))
        for index, bbox, track_id in collect.boxes:
            found._add(name, index, bbox, f"{name}#{track_id}")
    if track_keys:
        pz.fit(track_keys, np.stack(vectors))
    return found


class PseudonymTrack:
    """The ``generate`` hook of one track of ``video`` under a secret (see the module doc):
    call :meth:`observe` with the track's detected faces; until the first one, every frame
    falls back to the classical mode. ``make_replace(identity_fn)`` builds the verified generation
    hook (e.g. :func:`~facegen.pipelines.editing.swap.make_replace_face` bound to a pipeline)."""

    def __init__(
        self,
        video: str,
        pseudonyms: VideoPseudonyms,
        verifier: Any,
        make_replace: Callable[[Callable[..., IdentityEmbedding]], Any],
    ) -> None:
        self.video, self.pseudonyms, self.verifier = video, pseudonyms, verifier
        self.identity: IdentityEmbedding | None = None
        self._replace = make_replace(lambda original, seed: self._identity())

    def _identity(self) -> IdentityEmbedding:
        assert self.identity is not None  # __call__ checks it first
        return self.identity

    def observe(self, image: np.ndarray, face: Face, frame: int | None = None) -> None:
        """A detected face of this track (on ``frame``, counted from the range's start): the
        first one fixes the track's pseudonym."""
        if self.identity is not None:
            return
        emb = self.verifier.encoder.embed(image, [face])[0].vector
        if np.isfinite(emb).all():
            self.identity = self.pseudonyms.identity_for(self.video, frame, face, emb)

    def __call__(self, image: np.ndarray, face: Face, mask: np.ndarray) -> Any:
        if self.identity is None:
            raise FacegenError(
                "this face track's person is not identified yet (a frame before its first "
                "detection): covered by the fallback mode"
            )
        return self._replace(image, face, mask)
