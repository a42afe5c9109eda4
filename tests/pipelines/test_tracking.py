"""Face tracking across frames, on synthetic trajectories (boxes and keypoints, no images)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from facegen.errors import FacegenError, InvalidArgumentError
from facegen.pipelines.editing.tracking import (
    FaceTracker,
    TrackedFrame,
    TrackerConfig,
    track_faces,
)
from facegen.types import Face, IdentityEmbedding

SIZE = 80.0


def face_at(cx: float, cy: float, size: float = SIZE, *, embedding=None, noise=None) -> Face:
    """A face centred at ``(cx, cy)`` with keypoints placed like a frontal face."""
    half = size / 2
    bbox = np.array([cx - half, cy - half, cx + half, cy + half])
    kps = np.array([[-0.3, -0.15], [0.3, -0.15], [0.0, 0.1], [-0.25, 0.3], [0.25, 0.3]])
    kps = kps * size + [cx, cy]
    if noise is not None:
        bbox = bbox + noise[:4]
        kps = kps + noise[4:].reshape(5, 2)
    return Face(bbox=bbox, score=0.9, kps5=kps, embedding=embedding)


def true_box(cx: float, cy: float, size: float = SIZE) -> np.ndarray:
    return np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])


def contains(outer: np.ndarray, inner: np.ndarray, tol: float = 1e-3) -> bool:
    return bool(
        outer[0] <= inner[0] + tol
        and outer[1] <= inner[1] + tol
        and outer[2] >= inner[2] - tol
        and outer[3] >= inner[3] - tol
    )


def by_track(frames: list[TrackedFrame]) -> dict[int, dict[int, object]]:
    """track id → {frame index → TrackedFace}."""
    out: dict[int, dict[int, object]] = {}
    for frame in frames:
        for f in frame.faces:
            out.setdefault(f.track_id, {})[frame.index] = f
    return out


def test_two_crossing_faces_keep_their_ids() -> None:
    rng = np.random.default_rng(0)
    n = 41
    a_faces, b_faces, detections = [], [], []
    for t in range(n):
        # they pass nearly on top of each other: at frame 20 each face is closer to where
        # the other was on frame 19; only motion prediction keeps the ids apart
        a, b = face_at(100 + 20 * t, 200), face_at(880 - 20 * t, 206)
        a_faces.append(a)
        b_faces.append(b)
        pair = [a, b]
        rng.shuffle(pair)  # the detector's order says nothing about who is who
        detections.append(pair)
    result = track_faces(detections, TrackerConfig())
    ids_a = {f.track_id for fr in result.frames for f in fr.faces if f.face in a_faces}
    ids_b = {f.track_id for fr in result.frames for f in fr.faces if f.face in b_faces}
    assert len(ids_a) == 1 and len(ids_b) == 1 and ids_a != ids_b
    assert len(result.tracks) == 2
    assert all(t.frames_detected == n for t in result.tracks)


def test_missed_frames_are_interpolated_between_neighbours() -> None:
    missing = {8, 9, 10}
    detections = [[] if t in missing else [face_at(100 + 6 * t, 200 + 2 * t)] for t in range(20)]
    result = track_faces(detections, TrackerConfig(max_gap=5))
    tracks = by_track(result.frames)
    assert list(tracks) == [0]
    track = tracks[0]
    before, after = track[7].raw_bbox, track[11].raw_bbox
    lo, hi = np.minimum(before, after), np.maximum(before, after)
    for t in sorted(missing):
        f = track[t]
        assert f.source == "interpolated" and f.face is None
        assert np.all(f.raw_bbox >= lo) and np.all(f.raw_bbox <= hi)
        assert contains(f.bbox, true_box(100 + 6 * t, 200 + 2 * t))
    # strictly ordered in time between the neighbours
    xs = [track[t].raw_bbox[0] for t in range(7, 12)]
    assert xs == sorted(xs) and len(set(xs)) == 5
    summary = result.tracks[0]
    assert (summary.frames_detected, summary.frames_interpolated) == (17, 3)
    assert summary.frames_filled == 3 + summary.frames_extrapolated + summary.frames_margin


def test_reentry_after_more_than_max_gap_gets_a_new_id() -> None:
    gone = range(10, 17)  # 7 frames > max_gap
    detections = [[] if t in gone else [face_at(300, 200)] for t in range(30)]
    cfg = TrackerConfig(max_gap=5, margin_before=2, margin_after=2)
    result = track_faces(detections, cfg)
    assert [(s.first_detected, s.last_detected) for s in result.tracks] == [(0, 9), (17, 29)]
    tracks = by_track(result.frames)
    assert [tracks[0][t].source for t in range(10, 15)] == ["extrapolated"] * 5
    assert 15 not in tracks[0]
    assert [tracks[1][t].source for t in (15, 16)] == ["margin", "margin"]
    # erring towards covering: here every frame is covered by one track or the other
    assert all(frame.faces for frame in result.frames)


def test_a_gap_of_exactly_max_gap_frames_keeps_the_id() -> None:
    detections = [[] if 10 <= t < 15 else [face_at(300, 200)] for t in range(25)]
    result = track_faces(detections, TrackerConfig(max_gap=5))
    assert len(result.tracks) == 1 and result.tracks[0].frames_interpolated == 5


def test_detecting_every_kth_frame_gives_a_box_on_every_frame() -> None:
    k, n = 4, 43
    detections = [[face_at(100 + 7 * t, 300 - 3 * t)] if t % k == 0 else None for t in range(n)]
    result = track_faces(detections, TrackerConfig(max_gap=k - 1))
    assert [f.detected for f in result.frames] == [t % k == 0 for t in range(n)]
    assert len(result.tracks) == 1
    for frame in result.frames:
        assert len(frame.faces) == 1
        f = frame.faces[0]
        t = frame.index
        expected = "detected" if t % k == 0 else "interpolated" if t < 40 else "extrapolated"
        assert f.source == expected
        assert contains(f.bbox, true_box(100 + 7 * t, 300 - 3 * t))
        assert f.kps5.shape == (5, 2) and f.bbox.dtype == np.float32


def test_detection_interval_longer_than_max_gap_warns(caplog) -> None:
    detections = [[face_at(300, 200)] if t % 8 == 0 else None for t in range(30)]
    with caplog.at_level(logging.WARNING, logger="facegen.pipelines.editing.tracking"):
        result = track_faces(detections, TrackerConfig(max_gap=3))
    assert "max_gap" in caplog.text
    assert len(result.tracks) == 4  # each detection starts a track again


def test_temporal_margin_covers_frames_before_and_after() -> None:
    present = range(10, 20)
    detections = [[face_at(300, 200)] if t in present else [] for t in range(40)]
    cfg = TrackerConfig(max_gap=2, margin_before=3, margin_after=6)
    result = track_faces(detections, cfg)
    sources = {fr.index: fr.faces[0].source for fr in result.frames if fr.faces}
    assert sources == {
        **{t: "margin" for t in (7, 8, 9)},
        **{t: "detected" for t in present},
        **{t: "extrapolated" for t in (20, 21)},
        **{t: "margin" for t in (22, 23, 24, 25)},
    }
    s = result.tracks[0]
    assert (s.first_frame, s.last_frame, s.frames_margin) == (7, 25, 7)
    first = result.frames[10].faces[0]
    assert np.allclose(result.frames[8].faces[0].raw_bbox, first.raw_bbox)  # holds the box


def _noisy_straight_path(radius: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = 60
    detections = [[face_at(100 + 3 * t, 200 + 1 * t, noise=rng.normal(0, 3, 14))] for t in range(n)]
    cfg = TrackerConfig(smooth_radius=radius, margin=0.0)
    result = track_faces(detections, cfg)
    centres = np.array([(f.faces[0].bbox[:2] + f.faces[0].bbox[2:]) / 2 for f in result.frames])
    truth = np.array([[100 + 3 * t, 200 + 1 * t] for t in range(n)])
    return centres - truth


def test_smoothing_reduces_jitter_without_bias() -> None:
    raw, smooth = _noisy_straight_path(0), _noisy_straight_path(3)
    inner = slice(3, -3)  # the centred window is one-sided at the ends
    assert smooth[inner].std() < 0.6 * raw[inner].std()
    assert np.abs(smooth.mean(axis=0)).max() < 1.0  # no lag on uniform motion


def test_smoothed_box_with_margin_contains_the_face_on_a_fast_path() -> None:
    rng = np.random.default_rng(2)
    n = 80
    # up to 50 px per frame (more than a third of the face size), turning back and forth
    path = [(400 + 300 * np.sin(t / 6), 250 + 60 * np.cos(t / 4)) for t in range(n)]
    velocity = np.array([(50 * np.cos(t / 6), -15 * np.sin(t / 4)) for t in range(n)])
    detections = [[face_at(x, y, 120, noise=rng.normal(0, 1.5, 14))] for x, y in path]
    result = track_faces(detections, TrackerConfig(smooth_radius=2, margin=0.2))
    errors = []
    for frame, (x, y) in zip(result.frames, path):
        f = frame.faces[0]
        assert contains(f.bbox, true_box(x, y, 120)), frame.index
        errors.append((f.bbox[:2] + f.bbox[2:]) / 2 - [x, y])
    # no trailing behind the motion: the error along the direction of motion averages ~0
    # (an exponential average with a = 0.5 trails this path by about 30 px)
    along = (np.array(errors) * velocity).sum(axis=1) / np.linalg.norm(velocity, axis=1)
    assert abs(along.mean()) < 1.5


def test_a_cut_starts_new_tracks() -> None:
    def scene(t: int) -> list[Face]:
        if t < 20:
            return [face_at(100 + 2 * t, 100), face_at(400, 300 - t)]
        return [face_at(600, 500), face_at(150, 420)]

    detections = [scene(t) for t in range(40)]
    plain = track_faces(detections)
    assert [s.first_detected for s in plain.tracks] == [0, 0, 20, 20]
    assert [s.last_detected for s in plain.tracks] == [19, 19, 39, 39]
    # without a hint the old faces stay covered into the new shot (max_gap frames)
    assert plain.tracks[0].last_frame == 19 + 5 and plain.tracks[2].first_frame == 18
    hinted = track_faces(detections, cuts=[20])
    assert [s.last_frame for s in hinted.tracks[:2]] == [19, 19]
    assert [s.first_frame for s in hinted.tracks[2:]] == [20, 20]
    assert all(len(f.faces) == 2 for f in hinted.frames)


def test_embeddings_keep_ids_when_two_faces_swap_places() -> None:
    ea = IdentityEmbedding(np.array([1.0, 0.0, 0.0]), "enc")
    eb = IdentityEmbedding(np.array([0.0, 1.0, 0.0]), "enc")
    # two heavily overlapping faces; at frame 5 they trade positions
    detections = []
    for t in range(10):
        pa, pb = ((300, 200), (330, 200)) if t < 5 else ((330, 200), (300, 200))
        detections.append([face_at(*pa, embedding=ea), face_at(*pb, embedding=eb)])

    def ids_of(result, emb) -> set[int]:
        return {
            f.track_id
            for fr in result.frames
            for f in fr.faces
            if f.face and f.face.embedding is emb
        }

    by_box = track_faces(detections, TrackerConfig(smooth_radius=0))
    assert len(ids_of(by_box, ea)) == 2  # IoU alone follows the positions
    by_id = track_faces(detections, TrackerConfig(smooth_radius=0, embedding_weight=0.7))
    assert len(ids_of(by_id, ea)) == 1 and len(ids_of(by_id, eb)) == 1
    gated = track_faces(detections, TrackerConfig(smooth_radius=0, min_similarity=0.5))
    assert len(ids_of(gated, ea)) == 1


def test_embeddings_of_different_encoders_are_refused() -> None:
    ea = IdentityEmbedding(np.array([1.0, 0.0]), "enc-a")
    eb = IdentityEmbedding(np.array([1.0, 0.0, 0.0]), "enc-b")
    detections = [[face_at(300, 200, embedding=ea)], [face_at(301, 200, embedding=eb)]]
    with pytest.raises(FacegenError, match="same encoder"):
        track_faces(detections, TrackerConfig(embedding_weight=0.5))


def _scenario() -> list[list[Face] | None]:
    rng = np.random.default_rng(5)
    out: list[list[Face] | None] = []
    for t in range(70):
        if t % 3 == 1:
            out.append(None)
            continue
        faces = [face_at(100 + 5 * t, 150, noise=rng.normal(0, 1, 14))]
        if 10 <= t < 40 and t not in (20, 21, 22):
            faces.append(face_at(500, 300 + 2 * t, 100))
        if t >= 55:
            faces.append(face_at(700 - 4 * t, 450))
        out.append(faces)
    return out


def test_streaming_matches_whole_sequence_with_bounded_latency() -> None:
    detections = _scenario()
    cfg = TrackerConfig(max_gap=4, margin_before=3, margin_after=6, smooth_radius=2)
    assert cfg.latency == 6
    tracker = FaceTracker(cfg)
    streamed: list[TrackedFrame] = []
    for i, faces in enumerate(detections):
        released = tracker.push(faces)
        # exactly one frame comes out per push once the lookahead is filled
        assert [f.index for f in released] == ([i - cfg.latency] if i >= cfg.latency else [])
        streamed.extend(released)
    rest = tracker.flush()
    assert [f.index for f in rest] == list(range(len(detections) - 6, len(detections)))
    streamed.extend(rest)
    whole = track_faces(detections, cfg)
    assert [f.to_dict() for f in streamed] == [f.to_dict() for f in whole.frames]
    assert tracker.summaries() == whole.tracks
    assert len(whole.tracks) >= 3
    report = json.loads(json.dumps(whole.to_dict()))
    assert report["num_frames"] == 70 and report["config"]["latency"] == 6
    assert sum(report["faces_by_source"].values()) == sum(len(f.faces) for f in whole.frames)
    with pytest.raises(FacegenError, match="flushed"):
        tracker.push([])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_gap": -1}, r"`max_gap` must be an integer in \[0, 100000\], got -1"),
        ({"max_gap": 2.0}, "`max_gap` must be an integer"),
        ({"smooth_radius": True}, "`smooth_radius` must be an integer"),
        ({"margin_before": -2}, "`margin_before` must be"),
        ({"min_iou": 0}, r"`min_iou` must be a finite number in \(0.0, 1.0\]"),
        ({"min_iou": 1.5}, "`min_iou` must be"),
        ({"embedding_weight": -0.1}, "`embedding_weight` must be"),
        ({"min_similarity": 2}, "`min_similarity` must be"),
        ({"margin": float("nan")}, "`margin` must be a finite number"),
        ({"growth": "0.1"}, "`growth` must be a number"),
    ],
)
def test_bad_configs_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        TrackerConfig(**changes)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="`config` must be a TrackerConfig"):
        FaceTracker({"max_gap": 3})  # type: ignore[arg-type]
    tracker = FaceTracker()
    with pytest.raises(InvalidArgumentError, match="a list holding ndarray"):
        tracker.push([np.zeros(4)])  # type: ignore[list-item]
    with pytest.raises(InvalidArgumentError, match="got Face"):
        tracker.push(face_at(1, 1))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="`cuts` must be an integer"):
        track_faces([[], []], cuts=[5])
