"""Face tracking across video frames: per-frame detections → tracks → one box per face per frame.

Video anonymization and swap detect faces on some frames (every frame, or every k-th frame
to save time) and must still treat the face on *every* frame: for anonymization a frame
where a visible face is not covered is a leak. :class:`FaceTracker` turns the detector's
per-frame ``list[Face]`` (``None`` for a frame the detector did not run on) into tracks
with stable ids, and gives each frame the faces to treat, filled in where the detector
missed them. Pure NumPy.

Rules (each a choice, the same everywhere):

* **Association** (causal, frame by frame): a live track predicts its box at the new frame
  by moving its last detected box with its centre velocity (an average of the last
  steps, constant-velocity model). The cost of pairing a track with a detection is
  ``1 - IoU(predicted, detected)``; when both carry an identity embedding and
  ``embedding_weight`` w > 0 it is ``(1 - w)(1 - IoU) + w (1 - cos) / 2``. A pair is
  allowed only with ``IoU >= min_iou`` (and ``cos >= min_similarity`` when set and both
  have embeddings). Pairs are taken greedily, cheapest first (scipy's Hungarian solver is
  not a declared dependency of facegen; with a handful of faces per frame, gated by IoU
  after motion prediction, greedy and optimal agree in practice). A detection left over
  starts a new track. Embeddings of different encoders raise
  :class:`~facegen.errors.IncompatibleEmbeddingError` (never compared silently).
* **Gaps are counted in frames**, whether the detector ran and missed (``[]``) or did not
  run (``None``): a track survives ``max_gap`` frames without a detection; a detection
  ``max_gap + 1`` frames after its last one still continues it, a later one starts a new
  track (a new id). When detecting every k-th frame choose ``max_gap >= k - 1`` (a warning
  is logged once when runs of undetected frames outlast ``max_gap``).
* **Per-frame output** (:class:`TrackedFace`, ``source``): ``"detected"`` (the track has a
  detection on this frame); ``"interpolated"`` (between two detections of the track, linear
  in time); ``"extrapolated"`` (the ``max_gap`` frames after a track's last detection, where
  it was still alive and may have been there undetected: covered, moving at its last
  velocity); ``"margin"`` (the temporal safety margin: ``margin_before`` frames before the
  first detection, holding the first box, and frames after the last detection beyond
  ``max_gap`` up to ``margin_after``). So after its last detection a track is covered for
  ``max(max_gap, margin_after)`` frames. A ``cut`` (see :meth:`FaceTracker.push`) ends all
  tracks: nothing is extrapolated or margined across it.
* **Smoothing** (boxes and 5 keypoints): on detected frames, a local *linear* least-squares
  fit over the track's detections in the centred window ``[t - smooth_radius,
  t + smooth_radius]``, evaluated at ``t``. A centred linear fit has no lag on uniform
  motion (an exponential average with factor ``alpha`` trails a moving face by about
  ``speed * (1 - alpha) / alpha``), averages out jitter (a window of n detections divides the noise
  variance by n), and at a track's ends becomes a one-sided line fit instead of a
  lagging mean. On curved motion the fit cuts the curve by about ``a * r (r + 1) / 6`` px
  (``a``: acceleration in px/frame², ``r``: ``smooth_radius``); keep that below
  ``margin * face size / 2``. Filled frames interpolate their neighbours' smoothed boxes.
* **Spatial margin**: the cover box ``bbox`` is the smoothed box scaled about its centre by
  ``(1 + margin) * (1 + growth * k)``, k = frames to the nearest detection (0 on detected
  frames: uncertainty grows with distance from a detection), then widened to contain the
  unsmoothed box ``raw_bbox`` too: it is never smaller than what the detector saw. Boxes
  are in pixels and may extend past the image; clip where the image size is known.
* **Latency**: a frame's result is final once the detections of :attr:`TrackerConfig.latency`
  ``= max(max_gap, margin_before) + smooth_radius`` later frames are known (whether a gap
  ends in a re-detection, whether a track starts soon, the smoothing window).
  :meth:`FaceTracker.push` of frame t returns frame ``t - latency`` (and
  :meth:`FaceTracker.flush` the rest at the end), so a streaming caller keeps the last
  ``latency + 1`` images in a queue. :func:`track_faces` does the same on a whole sequence
  and gives identical results.

Example (streaming, detection every 3rd frame)::

    tracker = FaceTracker(TrackerConfig(max_gap=4))
    queue = collections.deque()
    for i, image in enumerate(reader):
        queue.append(image)
        faces = analyzer.detect(image) if i % 3 == 0 else None
        for frame in tracker.push(faces):
            treat(queue.popleft(), frame.faces)  # frame.index is the popped image's index
    for frame in tracker.flush():
        treat(queue.popleft(), frame.faces)
    report["tracks"] = [s.to_dict() for s in tracker.summaries()]
"""

from __future__ import annotations

import bisect
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from facegen.errors import FacegenError, InvalidArgumentError
from facegen.types import Face
from facegen.validate import check_int, check_number

__all__ = [
    "SOURCES",
    "FaceTracker",
    "TrackSummary",
    "TrackedFace",
    "TrackedFrame",
    "TrackerConfig",
    "TrackingResult",
    "track_faces",
]

logger = logging.getLogger(__name__)

Source = Literal["detected", "interpolated", "extrapolated", "margin"]
#: the values of :attr:`TrackedFace.source`, in the order reports list them
SOURCES: tuple[str, ...] = ("detected", "interpolated", "extrapolated", "margin")

_VELOCITY_BLEND = 0.5  # weight of the newest step in a track's velocity average
_MAX_FRAMES = 100_000  # bound on the frame counts in the config (absurd values are refused)


@dataclass(frozen=True)
class TrackerConfig:
    """Validated tracker settings (see the module doc for what each one does).

    ``max_gap``: frames a track survives without a detection, int in [0, 100000].
    ``min_iou``: least IoU between a track's predicted box and a detection, in (0, 1].
    ``embedding_weight``: share of identity cosine distance in the cost, in [0, 1] (used
    only for faces that carry embeddings). ``min_similarity``: cosine below which a track
    and a detection are never paired (both with embeddings), in [-1, 1], or None.
    ``smooth_radius``: half-width of the smoothing window in frames, int >= 0 (0 = off).
    ``margin``: spatial margin, the box is scaled by ``1 + margin``, in [0, 10].
    ``margin_before`` / ``margin_after``: temporal margin in frames, ints >= 0.
    ``growth``: extra scale per frame away from a detection on filled frames, in [0, 1].
    """

    max_gap: int = 5
    min_iou: float = 0.1
    embedding_weight: float = 0.0
    min_similarity: float | None = None
    smooth_radius: int = 2
    margin: float = 0.2
    margin_before: int = 2
    margin_after: int = 2
    growth: float = 0.03

    def __post_init__(self) -> None:
        for name in ("max_gap", "smooth_radius", "margin_before", "margin_after"):
            value = check_int(getattr(self, name), name, minimum=0, maximum=_MAX_FRAMES)
            object.__setattr__(self, name, value)
        limits = {
            "min_iou": (0.0, 1.0, True),
            "embedding_weight": (0.0, 1.0, False),
            "margin": (0.0, 10.0, False),
            "growth": (0.0, 1.0, False),
        }
        for name, (lo, hi, lo_open) in limits.items():
            value = check_number(
                getattr(self, name), name, minimum=lo, maximum=hi, min_open=lo_open
            )
            object.__setattr__(self, name, value)
        if self.min_similarity is not None:
            value = check_number(self.min_similarity, "min_similarity", minimum=-1.0, maximum=1.0)
            object.__setattr__(self, "min_similarity", value)

    @property
    def latency(self) -> int:
        """Frames of lookahead before a frame's result is final (see the module doc)."""
        return max(self.max_gap, self.margin_before) + self.smooth_radius

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings, with the resulting ``latency``."""
        return {**asdict(self), "latency": self.latency}


@dataclass(frozen=True, eq=False)
class TrackedFace:
    """One tracked face on one frame.

    ``bbox``: float32 ``(4,)`` xyxy in pixels, the box to treat (smoothed, spatial margin and
    growth applied, containing ``raw_bbox``). ``raw_bbox``: float32 ``(4,)``, the unsmoothed
    box without margin: the detector's box on ``"detected"`` frames, else interpolated or
    moved from the detector's boxes. ``kps5``: float32 ``(5, 2)`` smoothed keypoints in the
    ArcFace order. ``score``: the detection's score (filled frames: the lower of the two
    neighbours when interpolated, else the nearest detection's). ``source``: one of
    :data:`SOURCES`. ``face``: the detector's :class:`~facegen.types.Face` on ``"detected"``
    frames (its landmarks and embedding), else None.
    """

    track_id: int
    bbox: np.ndarray
    raw_bbox: np.ndarray
    kps5: np.ndarray
    score: float
    source: Source
    face: Face | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "track_id": self.track_id,
            "bbox": [round(float(v), 2) for v in self.bbox],
            "raw_bbox": [round(float(v), 2) for v in self.raw_bbox],
            "kps5": np.round(self.kps5.astype(np.float64), 2).tolist(),
            "score": round(self.score, 4),
            "source": self.source,
        }


@dataclass(frozen=True, eq=False)
class TrackedFrame:
    """The final faces of one frame: ``index`` (from 0, in push order), ``faces`` sorted by
    track id, ``detected`` (whether the detector ran on it, i.e. its input was not None)."""

    index: int
    faces: tuple[TrackedFace, ...]
    detected: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "detected": self.detected,
            "faces": [f.to_dict() for f in self.faces],
        }


@dataclass(frozen=True)
class TrackSummary:
    """One track for a report: its detections' first and last frame, the first and last frame
    it covers, and how many frames it covered by each source (``frames_filled`` = all but
    the detected ones)."""

    track_id: int
    first_detected: int
    last_detected: int
    first_frame: int | None
    last_frame: int | None
    frames_detected: int
    frames_interpolated: int
    frames_extrapolated: int
    frames_margin: int

    @property
    def frames_filled(self) -> int:
        return self.frames_interpolated + self.frames_extrapolated + self.frames_margin

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "frames_filled": self.frames_filled}


@dataclass(frozen=True, eq=False)
class TrackingResult:
    """What :func:`track_faces` returns: every frame's faces and every track's summary."""

    frames: list[TrackedFrame]
    tracks: list[TrackSummary]
    config: TrackerConfig

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report: settings, frame counts, faces per source, the tracks (no
        per-frame boxes; ``[f.to_dict() for f in result.frames]`` has them)."""
        per_source = dict.fromkeys(SOURCES, 0)
        for frame in self.frames:
            for face in frame.faces:
                per_source[face.source] += 1
        return {
            "config": self.config.to_dict(),
            "num_frames": len(self.frames),
            "frames_run_through_detector": sum(f.detected for f in self.frames),
            "frames_with_faces": sum(bool(f.faces) for f in self.frames),
            "faces_by_source": per_source,
            "tracks": [t.to_dict() for t in self.tracks],
        }


class _Track:
    """A track's detections (trimmed to what frames not yet emitted need) and counters."""

    def __init__(self, track_id: int, frame: int, face: Face, start_limit: int) -> None:
        self.id = track_id
        self.frames: list[int] = []
        self.values: list[np.ndarray] = []  # float64 (14,): bbox xyxy then kps5 flattened
        self.faces: list[Face] = []
        self.velocity = np.zeros(2)  # centre velocity, px per frame
        self.has_velocity = False
        self.first = frame
        self.last = frame
        self.start_limit = start_limit  # first frame it may cover (the scene's first)
        self.end_limit: int | None = None  # last frame it may cover (set by a cut)
        self.ended = False
        self.embedding = face.embedding
        self.counts = dict.fromkeys(SOURCES, 0)
        self.first_covered: int | None = None
        self.last_covered: int | None = None
        self.add(frame, face)

    def add(self, frame: int, face: Face) -> None:
        value = np.concatenate([face.bbox, face.kps5.reshape(-1)]).astype(np.float64)
        if self.frames:
            step = (_centre(value) - _centre(self.values[-1])) / (frame - self.frames[-1])
            blend = _VELOCITY_BLEND if self.has_velocity else 1.0
            self.velocity = (1 - blend) * self.velocity + blend * step
            self.has_velocity = True
        self.frames.append(frame)
        self.values.append(value)
        self.faces.append(face)
        self.last = frame
        if face.embedding is not None:
            self.embedding = face.embedding

    def predicted_box(self, frame: int) -> np.ndarray:
        box = self.values[-1][:4].copy()
        shift = self.velocity * (frame - self.last)
        box[[0, 2]] += shift[0]
        box[[1, 3]] += shift[1]
        return box

    def last_coverable(self, config: TrackerConfig) -> int:
        last = self.last + max(config.max_gap, config.margin_after)
        return last if self.end_limit is None else min(last, self.end_limit)


def _centre(value: np.ndarray) -> np.ndarray:
    return np.array([(value[0] + value[2]) / 2, (value[1] + value[3]) / 2])


def _shifted(value: np.ndarray, shift: np.ndarray) -> np.ndarray:
    out = value.copy()
    out[0::2] += shift[0]  # x of bbox corners and keypoints
    out[1::2] += shift[1]
    return out


def _iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes ``(A, 4)`` × ``(B, 4)`` → ``(A, B)`` in [0, 1]."""
    a, b = boxes_a[:, None, :], boxes_b[None, :, :]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def _greedy_assign(cost: np.ndarray) -> list[tuple[int, int]]:
    """Pairs ``(row, col)`` taken cheapest first; ``inf`` entries are never taken."""
    cost = cost.copy()
    pairs = []
    while cost.size and np.isfinite(cost).any():
        r, c = np.unravel_index(int(np.argmin(cost)), cost.shape)
        pairs.append((int(r), int(c)))
        cost[r, :] = np.inf
        cost[:, c] = np.inf
    return pairs


def _check_faces(faces: object) -> list[Face] | None:
    if faces is None:
        return None
    if isinstance(faces, (list, tuple)) and all(isinstance(f, Face) for f in faces):
        return list(faces)
    got = type(faces).__name__
    if isinstance(faces, (list, tuple)):
        got = "a list holding " + ", ".join(sorted({type(f).__name__ for f in faces}))
    raise InvalidArgumentError(
        f"`faces` must be a list of facegen Face objects (a detector's output) or None for a "
        f"frame the detector did not run on, got {got}"
    )


class FaceTracker:
    """Streaming tracker: :meth:`push` one frame's detections at a time, get the frames whose
    result is final (``config.latency`` frames behind), :meth:`flush` at the end.

    ``config``: a :class:`TrackerConfig` (default settings when None).
    """

    def __init__(self, config: TrackerConfig | None = None) -> None:
        if config is None:
            config = TrackerConfig()
        if not isinstance(config, TrackerConfig):
            raise InvalidArgumentError(
                f"`config` must be a TrackerConfig or None, got {type(config).__name__}"
            )
        self.config = config
        self._num_pushed = 0
        self._next = 0  # the next frame to emit
        self._detected: deque[bool] = deque()  # per frame not yet emitted
        self._live: list[_Track] = []  # tracks that can still be matched
        self._pending: list[_Track] = []  # tracks with frames not yet emitted
        self._all: list[_Track] = []
        self._scene_start = 0
        self._undetected_run = 0
        self._warned_gap = False
        self._flushed = False

    @property
    def latency(self) -> int:
        """Frames between pushing a frame and getting it back (see :attr:`TrackerConfig.latency`)."""
        return self.config.latency

    @property
    def frames_pushed(self) -> int:
        return self._num_pushed

    def push(self, faces: list[Face] | None, *, cut: bool = False) -> list[TrackedFrame]:
        """Add the next frame's detections; return the frames that became final (in order).

        ``faces``: the detector's faces on this frame (``[]`` when it found none), or None
        when the detector did not run on it. ``cut``: this frame starts a new shot (a scene
        cut known to the caller): every track ends on the frame before, nothing is filled
        across the cut. Without the hint a cut still starts new tracks (where the new faces
        do not overlap the old ones' predicted boxes), but the old tracks stay covered for
        ``max_gap`` frames into the new shot.
        """
        if self._flushed:
            raise FacegenError(
                "this FaceTracker was flushed (the video ended); use a new FaceTracker for "
                "another video"
            )
        faces = _check_faces(faces)
        if not isinstance(cut, bool):
            raise InvalidArgumentError(f"`cut` must be True or False, got {cut!r}")
        frame = self._num_pushed
        self._num_pushed += 1
        self._detected.append(faces is not None)
        if cut:
            for track in self._live:
                track.end_limit = frame - 1
                track.ended = True
            self._live = []
            self._scene_start = frame
        self._end_lost_tracks(frame, faces is None)
        if faces:
            self._associate(frame, faces)
        return self._emit_until(self._num_pushed - 1 - self.latency)

    def flush(self) -> list[TrackedFrame]:
        """The frames still held back (the video ended): call once, after the last push."""
        if self._flushed:
            return []
        self._flushed = True
        return self._emit_until(self._num_pushed - 1)

    def summaries(self) -> list[TrackSummary]:
        """Every track so far, by id; counts cover the frames emitted (all, after flush)."""
        return [
            TrackSummary(
                track_id=t.id,
                first_detected=t.first,
                last_detected=t.last,
                first_frame=t.first_covered,
                last_frame=t.last_covered,
                frames_detected=t.counts["detected"],
                frames_interpolated=t.counts["interpolated"],
                frames_extrapolated=t.counts["extrapolated"],
                frames_margin=t.counts["margin"],
            )
            for t in self._all
        ]

    # -- association ---------------------------------------------------------------------

    def _end_lost_tracks(self, frame: int, undetected: bool) -> None:
        max_gap = self.config.max_gap
        still = [t for t in self._live if frame - t.last <= max_gap + 1]
        for track in self._live:
            if frame - track.last > max_gap + 1:
                track.ended = True
        self._undetected_run = self._undetected_run + 1 if undetected else 0
        if self._undetected_run > max_gap and self._live and not self._warned_gap:
            self._warned_gap = True
            logger.warning(
                "%d frames in a row were not run through the detector, more than max_gap=%d: "
                "tracks end between detections; set max_gap to at least the detection "
                "interval minus 1",
                self._undetected_run,
                max_gap,
            )
        self._live = still

    def _associate(self, frame: int, faces: list[Face]) -> None:
        cfg = self.config
        matched: set[int] = set()
        if self._live:
            predicted = np.stack([t.predicted_box(frame) for t in self._live])
            detected = np.stack([f.bbox for f in faces]).astype(np.float64)
            iou = _iou(predicted, detected)
            cost = np.where(iou >= cfg.min_iou, 1.0 - iou, np.inf)
            for i, track in enumerate(self._live):
                for j, face in enumerate(faces):
                    if track.embedding is None or face.embedding is None:
                        continue
                    if cfg.embedding_weight == 0 and cfg.min_similarity is None:
                        continue
                    sim = track.embedding.similarity(face.embedding)
                    if cfg.min_similarity is not None and sim < cfg.min_similarity:
                        cost[i, j] = np.inf
                    elif np.isfinite(cost[i, j]):
                        w = cfg.embedding_weight
                        cost[i, j] = (1 - w) * cost[i, j] + w * (1 - sim) / 2
            for i, j in _greedy_assign(cost):
                self._live[i].add(frame, faces[j])
                matched.add(j)
        for j, face in enumerate(faces):
            if j not in matched:
                track = _Track(len(self._all), frame, face, self._scene_start)
                self._all.append(track)
                self._live.append(track)
                self._pending.append(track)

    # -- output --------------------------------------------------------------------------

    def _emit_until(self, last: int) -> list[TrackedFrame]:
        out = []
        while self._next <= last:
            frame = self._next
            faces = []
            for track in self._pending:
                face = self._cover(track, frame)
                if face is not None:
                    faces.append(face)
                    track.counts[face.source] += 1
                    if track.first_covered is None:
                        track.first_covered = frame
                    track.last_covered = frame
            out.append(TrackedFrame(frame, tuple(faces), self._detected.popleft()))
            self._next += 1
            self._forget(self._next)
        return out

    def _forget(self, next_frame: int) -> None:
        """Drop finished tracks and detections no frame from ``next_frame`` on needs."""
        keep = []
        for track in self._pending:
            if track.ended and next_frame > track.last_coverable(self.config):
                track.frames, track.values, track.faces = [], [], []  # keep only its counts
                continue
            keep.append(track)
            anchor = bisect.bisect_left(track.frames, next_frame) - 1
            if anchor > 0:
                lo = track.frames[anchor] - self.config.smooth_radius
                drop = bisect.bisect_left(track.frames, lo)
                if drop:
                    del track.frames[:drop], track.values[:drop], track.faces[:drop]
        self._pending = keep

    def _smoothed(self, track: _Track, index: int) -> np.ndarray:
        """The local linear fit at detection ``index`` over the centred window (see module doc)."""
        r = self.config.smooth_radius
        t0 = track.frames[index]
        if r == 0:
            return track.values[index]
        lo = bisect.bisect_left(track.frames, t0 - r)
        hi = bisect.bisect_right(track.frames, t0 + r)
        t = np.asarray(track.frames[lo:hi], dtype=np.float64) - t0
        y = np.stack(track.values[lo:hi])
        dt = t - t.mean()
        spread = float(dt @ dt)
        if spread == 0.0:
            return y.mean(axis=0)
        slope = dt @ (y - y.mean(axis=0)) / spread
        return y.mean(axis=0) - slope * t.mean()

    def _cover(self, track: _Track, frame: int) -> TrackedFace | None:
        cfg = self.config
        if frame < track.start_limit or frame > track.last_coverable(cfg):
            return None
        frames = track.frames
        i = bisect.bisect_left(frames, frame)
        face: Face | None = None
        if i < len(frames) and frames[i] == frame:
            source, k = "detected", 0
            smooth, raw = self._smoothed(track, i), track.values[i]
            face = track.faces[i]
            score = face.score
        elif frame < track.first:
            if track.first - frame > cfg.margin_before:
                return None
            source, k = "margin", track.first - frame
            smooth, raw = self._smoothed(track, 0), track.values[0]
            score = track.faces[0].score
        elif i < len(frames):  # between detections i - 1 and i
            a, b = frames[i - 1], frames[i]
            w = (frame - a) / (b - a)
            source, k = "interpolated", min(frame - a, b - frame)
            smooth = (1 - w) * self._smoothed(track, i - 1) + w * self._smoothed(track, i)
            raw = (1 - w) * track.values[i - 1] + w * track.values[i]
            score = min(track.faces[i - 1].score, track.faces[i].score)
        else:  # after the last detection
            k = frame - track.last
            source = "extrapolated" if k <= cfg.max_gap else "margin"
            shift = track.velocity * k
            smooth = _shifted(self._smoothed(track, len(frames) - 1), shift)
            raw = _shifted(track.values[-1], shift)
            score = track.faces[-1].score
        box = _fix_box(smooth[:4])
        scale = (1 + cfg.margin) * (1 + cfg.growth * k)
        centre, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2 * scale
        cover = np.concatenate([centre - half, centre + half])
        cover[:2] = np.minimum(cover[:2], raw[:2])
        cover[2:] = np.maximum(cover[2:], raw[2:4])
        return TrackedFace(
            track_id=track.id,
            bbox=_frozen(cover),
            raw_bbox=_frozen(raw[:4]),
            kps5=_frozen(smooth[4:].reshape(5, 2)),
            score=float(score),
            source=source,  # type: ignore[arg-type]
            face=face,
        )


def _fix_box(box: np.ndarray) -> np.ndarray:
    """xyxy with x1 <= x2 and y1 <= y2 (a fit through noisy tiny boxes could cross them)."""
    return np.array(
        [min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])]
    )


def _frozen(values: np.ndarray) -> np.ndarray:
    out = np.asarray(values, dtype=np.float32).copy()
    out.setflags(write=False)
    return out


def track_faces(
    detections: Iterable[list[Face] | None],
    config: TrackerConfig | None = None,
    *,
    cuts: Iterable[int] = (),
) -> TrackingResult:
    """Track a whole sequence: ``detections`` holds one entry per frame (a ``list[Face]``, or
    None for a frame the detector did not run on); ``cuts``: indices of frames that start a
    new shot (see :meth:`FaceTracker.push`). Same result as pushing frame by frame."""
    entries = list(detections)
    cut_frames = set()
    for c in cuts:
        cut_frames.add(check_int(c, "cuts", minimum=0, maximum=max(len(entries) - 1, 0)))
    tracker = FaceTracker(config)
    frames: list[TrackedFrame] = []
    for i, faces in enumerate(entries):
        frames.extend(tracker.push(faces, cut=i in cut_frames))
    frames.extend(tracker.flush())
    return TrackingResult(frames=frames, tracks=tracker.summaries(), config=tracker.config)
