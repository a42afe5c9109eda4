"""The pass every video edit makes: decode, detect, track, treat each frame, write in parts.

:func:`run_video_pass` streams a video (never the whole video in memory):
:class:`~facegen.video_io.VideoReader` decodes a frame, the detector runs on it (every
frame, or every ``detect_every``-th), the
:class:`~facegen.pipelines.editing.tracking.FaceTracker` turns detections into tracks and
gives each frame its faces — detected, interpolated between detections, extrapolated through
short misses, or in the temporal safety margin — and ``treat`` changes the frame (blur,
generate, swap …). The tracker needs :attr:`~facegen.pipelines.editing.tracking.TrackerConfig.latency`
frames of lookahead, so that many decoded frames wait in a queue.

**Parts and resume.** Frames are encoded (H.264, with the source's times) into parts of
``chunk_frames`` frames under a hidden folder beside the output (``.OUT.mp4.parts/``); each
part is written atomically and then recorded in the folder's ``manifest.json`` together with
the report so far. When the source has been read to its end the parts are joined packet for
packet (:func:`~facegen.video_write.concat_videos`, no re-encoding) into the output with
the source's audio and the provenance record, and the folder is removed. A run that is killed
or interrupted keeps its finished parts: run the same command again and it starts from the
first missing part (the key in the manifest — the source's size and modification time, every
setting — must match, else the parts are discarded and the video starts over). Nothing is
lost or written twice: the resumed run seeks to a little before the part boundary and replays
``2 × latency + detect_every`` frames through the detector and tracker without writing them,
so the faces near the boundary are tracked as in one uninterrupted run; tracks that cross the
boundary are counted as two in the report (new ids), and with per-track synthetic identities
(``generate`` without a secret) such a track gets a new identity after the boundary.
``chunk_frames=None`` writes one piece directly (no resume). A damaged source or a refused
setting removes the parts (running again would fail the same way).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from facegen import __version__
from facegen.errors import InvalidArgumentError, InvalidVideoError
from facegen.pipelines.editing.tracking import SOURCES, FaceTracker, TrackedFrame, TrackerConfig
from facegen.types import Face
from facegen.validate import check_int

__all__ = [
    "ProgressFn", "TreatFn", "VideoAnonymizeReport", "by_position", "parts_folder", "run_video_pass",
]  # fmt: skip

logger = logging.getLogger(__name__)

#: ``(frames done, frames in total or None)``, called after each written frame.
ProgressFn = Callable[[int, "int | None"], None]

#: ``(image, frame) -> image``: what a video pass does to one frame's tracked faces. It may
#: carry ``counts`` (a ``dict[str, int]`` it keeps up to date): they are saved with each part
#: and restored on resume.
TreatFn = Callable[[np.ndarray, TrackedFrame], np.ndarray]

_MANIFEST = "manifest.json"
_FORMAT = 1


class _Detects(Protocol):
    def detect(self, image: np.ndarray) -> list[Face]: ...


@dataclass
class VideoAnonymizeReport:
    """What a video pass did (anonymize or swap).

    ``frames``: frames written. ``frames_detected``: frames the detector ran on.
    ``faces_detected``: detections. ``faces_covered``: faces treated over all frames, of
    which ``faces_filled`` were covered on a frame without their own detection (interpolated,
    extrapolated or in the temporal margin: the tracker's safety net, each one a face the
    detector alone would have left visible, or a margin frame where there may be none).
    ``frames_with_faces``: frames where at least one face was covered. ``tracks``: one
    summary per track (first/last frame covered and detected, frames per source; frames are
    counted from the range's first). ``resumed_at``: the frames already written by an earlier,
    interrupted run (0: none). ``seconds``: wall time of this run.
    """

    source: str
    output: str
    fps: float | None
    width: int
    height: int
    frames: int = 0
    frames_detected: int = 0
    faces_detected: int = 0
    faces_covered: int = 0
    faces_filled: int = 0
    frames_with_faces: int = 0
    faces_by_source: dict[str, int] = field(default_factory=dict)
    tracks: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    audio_copied: bool = False
    seconds: float = 0.0
    faces_generated: int | None = None
    faces_fallback: int | None = None
    resumed_at: int = 0

    @property
    def frames_per_second(self) -> float:
        return (self.frames - self.resumed_at) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "software": f"facegen {__version__}",
            "source": self.source,
            "output": self.output,
            "fps": self.fps,
            "size": [self.width, self.height],
            "frames": self.frames,
            "frames_detected": self.frames_detected,
            "faces_detected": self.faces_detected,
            "faces_covered": self.faces_covered,
            "faces_filled": self.faces_filled,
            "frames_with_faces": self.frames_with_faces,
            "faces_by_source": dict(self.faces_by_source),
            "tracks": list(self.tracks),
            "settings": dict(self.settings),
            "audio_copied": self.audio_copied,
            "faces_generated": self.faces_generated,
            "faces_fallback": self.faces_fallback,
            "resumed_at": self.resumed_at,
            "seconds": round(self.seconds, 3),
            "frames_per_second": round(self.frames_per_second, 2),
        }


_COUNTERS = (
    "frames", "frames_detected", "faces_detected", "faces_covered", "frames_with_faces"
)  # fmt: skip


def _upright_sar(info: Any) -> Any:
    """The pixel aspect of the upright frames: a stored portrait video turned by 90° has its
    pixels turned too."""
    sar = info.sample_aspect_ratio
    if sar is None or info.rotation % 180 != 90 or sar == 0:
        return sar
    return 1 / sar


def by_position(faces: Any) -> list[Any]:
    """Tracked faces left to right, then top to bottom: the order to treat them in, so that
    where covers overlap the result does not depend on track numbering (which a resumed run
    does not share with the first)."""
    return sorted(faces, key=lambda f: (float(f.bbox[0]), float(f.bbox[1]), f.track_id))


def parts_folder(out: str | os.PathLike[str]) -> Path:
    """Where the parts of ``out`` wait until it is finished: ``.NAME.parts`` beside it."""
    path = Path(out)
    return path.with_name(f".{path.name}.parts")


class _Tracks:
    """Per-track summaries accumulated from the frames written (so frames replayed on resume
    are not counted twice); ids are offset so a resumed run's tracks stay distinct."""

    def __init__(self, saved: list[dict[str, Any]]) -> None:
        self.rows = {row["track_id"]: dict(row) for row in saved}
        self.offset = max(self.rows, default=-1) + 1

    def add(self, index: int, frame: TrackedFrame) -> None:
        for face in frame.faces:
            tid = face.track_id + self.offset
            row = self.rows.get(tid)
            if row is None:
                row = self.rows[tid] = {
                    "track_id": tid, "first_frame": index, "last_frame": index,
                    "first_detected": None, "last_detected": None,
                    **{f"frames_{s}": 0 for s in SOURCES},
                }  # fmt: skip
            row["last_frame"] = index
            row[f"frames_{face.source}"] += 1
            if face.source == "detected":
                if row["first_detected"] is None:
                    row["first_detected"] = index
                row["last_detected"] = index

    def summaries(self) -> list[dict[str, Any]]:
        out = []
        for tid in sorted(self.rows):
            row = dict(self.rows[tid])
            row["frames_filled"] = sum(row[f"frames_{s}"] for s in SOURCES if s != "detected")
            out.append(row)
        return out


class _Parts:
    """The parts folder of one output: its manifest, the finished parts, the next one."""

    def __init__(self, out: Path, key: str, chunk: int, resume: bool) -> None:
        self.dir = parts_folder(out)
        self.key, self.chunk = key, chunk
        self.done: list[dict[str, Any]] = []
        self.state: dict[str, Any] = {}
        manifest = self._read() if resume else None
        if manifest is not None and manifest.get("key") == key:
            parts = [p for p in manifest.get("parts", []) if (self.dir / p["file"]).is_file()]
            if len(parts) == len(manifest.get("parts", [])):
                self.done, self.state = parts, manifest.get("state", {})
        if not self.done and self.dir.exists():
            logger.info("%s: discarding parts of an earlier run with other settings", out)
            self.discard()

    def _read(self) -> dict[str, Any] | None:
        try:
            data = json.loads((self.dir / _MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("format") == _FORMAT else None

    @property
    def frames_done(self) -> int:
        return sum(int(p["frames"]) for p in self.done)

    def next_path(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        return self.dir / f"part-{len(self.done):05d}.mp4"

    def record(self, path: Path, frames: int, start: float, state: dict[str, Any]) -> None:
        from facegen.fileio import write_json

        self.done.append({"file": path.name, "frames": frames, "start_time": start})
        self.state = state
        manifest = {"format": _FORMAT, "key": self.key, "chunk_frames": self.chunk}
        write_json(self.dir / _MANIFEST, {**manifest, "parts": self.done, "state": state})

    def paths(self) -> list[Path]:
        return [self.dir / p["file"] for p in self.done]

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _resume_key(src: str | os.PathLike[str], record: dict[str, Any]) -> str:
    st = Path(src).stat()
    blob = json.dumps(
        {"size": st.st_size, "mtime_ns": st.st_mtime_ns, **record}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def run_video_pass(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    detector: _Detects,
    treat: TreatFn,
    *,
    operation: str,
    settings: dict[str, Any],
    tracker: TrackerConfig | None = None,
    detect_every: int = 1,
    start: int = 0,
    end: int | None = None,
    audio: bool = True,
    crf: float = 18,
    preset: str = "medium",
    watermark: bool = True,
    max_frames: int | None = None,
    progress: ProgressFn | None = None,
    chunk_frames: int | None = 300,
    resume: bool = True,
    resume_extra: str = "",
) -> VideoAnonymizeReport:
    """Decode ``src``, detect every ``detect_every``-th frame, track, ``treat`` each frame with
    its tracked faces, watermark, and encode into the MP4 ``out`` with the source's times and
    audio, recording ``operation`` with ``settings`` (plus the detector and tracker) in the
    container and the report (see the module doc for parts and resume).

    ``chunk_frames``: frames per part (None: one piece, no resume). ``resume``: continue from
    the finished parts of an earlier run with the same key (False: start over).
    ``resume_extra``: text added to the key for inputs ``settings`` do not show (e.g. a hash
    of a swap's identity vector).
    """
    from facegen.provenance import provenance_metadata
    from facegen.video_io import probe_video
    from facegen.watermark import MIN_EMBED_SIDE

    every = check_int(detect_every, "detect_every", minimum=1, maximum=10_000)
    config = tracker or TrackerConfig(max_gap=max(5, 2 * (every - 1)))
    if not isinstance(config, TrackerConfig):
        raise InvalidArgumentError(f"`tracker` must be TrackerConfig, got {type(config).__name__}")
    if config.max_gap < every - 1:
        raise InvalidArgumentError(
            f"`tracker.max_gap` ({config.max_gap}) must be at least detect_every - 1 "
            f"({every - 1}): faces would be left uncovered between detections"
        )
    if not callable(getattr(detector, "detect", None)):
        raise InvalidArgumentError("`detector` must have a detect(image) method")
    if max_frames is not None:
        max_frames = check_int(max_frames, "max_frames", minimum=1)
    if chunk_frames is not None:
        chunk_frames = check_int(chunk_frames, "chunk_frames", minimum=1)
    start = check_int(start, "start", minimum=0)
    t0 = time.perf_counter()
    info = probe_video(src)
    det_name = getattr(getattr(detector, "detector", detector), "name", type(detector).__name__)
    settings = {
        "detector": det_name,
        "detect_every": every,
        "tracker": config.to_dict(),
        **settings,
        "range": [start, end],
    }
    record = {"software": f"facegen {__version__}", "source": Path(src).name, **settings}
    h, w = info.upright_shape[:2]
    mark = bool(watermark) and min(h, w) >= MIN_EMBED_SIDE
    meta = provenance_metadata(operation, record, kind="edited", watermarked=mark)
    settings["watermark"] = mark
    report = VideoAnonymizeReport(
        source=str(src),
        output=str(out),
        fps=float(info.fps) if info.fps else None,
        width=w,
        height=h,
        settings=settings,
    )
    writer_options = {
        "fps": info.fps or 25, "crf": crf, "preset": preset,
        "sample_aspect_ratio": _upright_sar(info), "odd_size": "pad",
    }  # fmt: skip
    tags = {"comment": meta["facegen"], "description": meta["Description"]}
    audio_from = src if audio and info.has_audio else None
    ranged = start > 0 or end is not None
    run = _Pass(
        src, detector, treat, config, every, start, end, max_frames, report, progress,
        float(info.fps or 25),
    )  # fmt: skip
    if chunk_frames is None:
        run.write_whole(out, writer_options, tags, audio_from, ranged, mark)
    else:
        key_record = {
            "record": record, "crf": crf, "preset": preset, "audio": bool(audio),
            "watermark": mark, "max_frames": max_frames, "extra": resume_extra,
        }  # fmt: skip
        parts = _Parts(Path(out), _resume_key(src, key_record), chunk_frames, resume)
        run.write_parts(Path(out), parts, writer_options, tags, audio_from, ranged, mark)
    report.audio_copied = audio_from is not None
    report.faces_filled = report.faces_covered - report.faces_by_source.get("detected", 0)
    report.tracks = run.tracks.summaries()
    report.seconds = time.perf_counter() - t0
    if report.faces_detected == 0:
        logger.warning("%s: no face detected in %d frames", src, report.frames)
    return report


class _Pass:
    """One streaming pass over ``[first, end)`` of the source (see :func:`run_video_pass`)."""

    def __init__(
        self,
        src: str | os.PathLike[str],
        detector: _Detects,
        treat: TreatFn,
        config: TrackerConfig,
        every: int,
        start: int,
        end: int | None,
        max_frames: int | None,
        report: VideoAnonymizeReport,
        progress: ProgressFn | None,
        fps: float,
    ) -> None:
        self.fps = fps
        self.src, self.detector, self.treat, self.config = src, detector, treat, config
        self.every, self.start, self.end, self.max_frames = every, start, end, max_frames
        self.report, self.progress = report, progress
        self.tracks = _Tracks([])
        self.total: int | None = None
        self.last_time: float | None = None

    # -- state saved with each part

    def state(self) -> dict[str, Any]:
        r = self.report
        return {
            **{name: getattr(r, name) for name in _COUNTERS},
            "faces_by_source": dict(r.faces_by_source),
            "tracks": self.tracks.summaries(),
            "treat_counts": dict(getattr(self.treat, "counts", None) or {}),
            "last_time": self.last_time,
        }

    def restore(self, state: dict[str, Any]) -> None:
        r = self.report
        for name in _COUNTERS:
            setattr(r, name, int(state.get(name, 0)))
        r.faces_by_source = dict(state.get("faces_by_source", {}))
        self.tracks = _Tracks(state.get("tracks", []))
        counts = getattr(self.treat, "counts", None)
        if isinstance(counts, dict):
            counts.update(state.get("treat_counts", {}))
        self.last_time = state.get("last_time")
        r.resumed_at = r.frames

    # -- the frames

    def frames(self, skip: int, mark: bool) -> Any:
        """Yield ``(image, time)`` of every frame from ``start + skip`` on, treated and
        watermarked; frames before it are replayed through the detector and tracker only."""
        from facegen.video_io import VideoReader
        from facegen.watermark import embed_watermark

        warm = min(skip, 2 * self.config.latency + self.every)
        first = skip - warm  # frames from the range's start where decoding begins
        reader = VideoReader(self.src, start=self.start + first, end=self.end)
        self.total = reader.num_frames + first if reader.num_frames is not None else None
        track = FaceTracker(self.config)
        # decoded frames waiting for the tracker: image, time, detections (None: not run)
        queue: deque[tuple[np.ndarray, float, int | None]] = deque()
        r = self.report
        with reader:

            def emit(done: list[TrackedFrame]) -> Any:
                for frame in done:
                    image, when, found = queue.popleft()
                    index = first + frame.index
                    if index < skip:
                        continue  # replayed for the tracker's sake, written by an earlier run
                    if found is not None:
                        r.frames_detected += 1
                        r.faces_detected += found
                    # the treatment sees frames numbered from the range's start, whatever run
                    image = self.treat(image, dataclasses.replace(frame, index=index))
                    if mark:
                        image = embed_watermark(image)
                    r.frames += 1
                    r.faces_covered += len(frame.faces)
                    r.frames_with_faces += bool(frame.faces)
                    for face in frame.faces:
                        r.faces_by_source[face.source] = r.faces_by_source.get(face.source, 0) + 1
                    self.tracks.add(index, frame)
                    yield image, when

            for k, decoded in enumerate(reader, start=first):
                if self.max_frames is not None and k >= self.max_frames:
                    raise InvalidVideoError(
                        f"holds more than {self.max_frames} frames, the most this run takes",
                        source=str(self.src),
                    )
                when = decoded.time if decoded.time is not None else (self.start + k) / self.fps
                faces = self.detector.detect(decoded.image) if k % self.every == 0 else None
                queue.append((decoded.image, when, None if faces is None else len(faces)))
                yield from emit(track.push(faces))
            yield from emit(track.flush())

    def _written(self, when: float | None) -> None:
        self.last_time = when
        if self.progress is not None:
            self.progress(self.report.frames, self.total)

    # -- writing

    def write_whole(
        self, out: Any, options: dict[str, Any], tags: dict[str, str], audio_from: Any,
        ranged: bool, mark: bool,
    ) -> None:  # fmt: skip
        from facegen.video_write import VideoWriter

        with VideoWriter(
            out, metadata=tags, audio_from=audio_from,
            audio_span="frames" if ranged else "all", **options,
        ) as writer:  # fmt: skip
            for image, when in self.frames(0, mark):
                writer.write(image, time=when)
                self._written(when)

    def write_parts(
        self, out: Path, parts: _Parts, options: dict[str, Any], tags: dict[str, str],
        audio_from: Any, ranged: bool, mark: bool,
    ) -> None:  # fmt: skip
        from facegen.video_write import VideoWriter, concat_videos

        skip = parts.frames_done
        if skip:
            self.restore(parts.state)
            logger.info("%s: resuming after %d frames written by an earlier run", out, skip)
        writer: VideoWriter | None = None
        begin = 0.0  # the source time of the open part's first frame
        try:
            for image, when in self.frames(skip, mark):
                if writer is None:
                    writer, begin = VideoWriter(parts.next_path(), **options), when
                writer.write(image, time=when)
                self._written(when)
                if writer.frames_written >= parts.chunk:
                    parts.record(writer.close(), writer.frames_written, begin, self.state())
                    writer = None
            if writer is not None:
                parts.record(writer.close(), writer.frames_written, begin, self.state())
                writer = None
        except (InvalidVideoError, InvalidArgumentError):
            parts.discard()  # a damaged source or a refused setting: a rerun fails the same way
            raise
        finally:
            if writer is not None:
                writer.abort()
        if not parts.done:
            raise InvalidVideoError("has no frames in the range read", source=str(self.src))
        origin = float(parts.done[0]["start_time"])
        end_time = None if self.last_time is None else self.last_time + 1 / self.fps
        concat_videos(
            parts.paths(), out, starts=[float(p["start_time"]) - origin for p in parts.done],
            metadata=tags, audio_from=audio_from, audio_span="frames" if ranged else "all",
            time_origin=origin, end_time=end_time,
        )  # fmt: skip
        parts.discard()
