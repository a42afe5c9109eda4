"""Reading videos one frame at a time, with PyAV (FFmpeg).

Frames cross this module as RGB ``uint8`` ``(H, W, 3)`` numpy arrays, like every image in
facegen. Nothing holds a whole video in memory: :class:`VideoReader` decodes frame by frame
and :class:`VideoWriter` encodes frame by frame, so a video is read, changed and written in
one pass (the shape of video anonymization and face swap).

Rules (each a choice, kept the same everywhere):

* **Rotation.** Phones store a portrait video as landscape frames plus a display matrix.
  :attr:`VideoInfo.rotation` is FFmpeg's reading of it: the degrees (0, 90, 180, 270) the
  stored picture must be turned *counterclockwise* to be upright (an iPhone portrait clip,
  shown by ffprobe as "rotation of -90", has 270). :class:`VideoReader` applies it, so frames
  come out upright (``auto_rotate=False`` gives the stored picture). A rotation that is not a
  multiple of 90° is refused when it would be applied; flips in the matrix are ignored.
  :class:`VideoWriter` writes frames as they are given (upright) and no rotation metadata.
* **Frame index** is the frame's rank in presentation order, counted from 0.
  ``VideoReader(start=, end=)`` reads ``[start, end)``. In MP4/MOV and Matroska/WebM it finds
  frame ``start``'s timestamp from packet headers alone (no decoding), seeks to the keyframe
  before it and decodes from there, dropping the frames before ``start``; if the seek lands
  after the frame, and in other containers, it decodes from the beginning. Either way the
  same frames come out. Other containers (AVI, raw streams) carry no reliable presentation
  timestamps: their frames are timed ``index / fps``.
* **Truncated or corrupt files.** Frames decoded before the damage are yielded; then
  :class:`~facegen.errors.InvalidVideoError` is raised with ``frames_read`` set (how many
  came out). ``allow_truncated=True`` logs a warning and stops instead, with
  ``reader.truncated`` set. Damage is known from a cut-short packet, a decoder or demuxer
  error, or a file that ends before the last frame its own index lists (MP4/MOV whose index
  is at the start). A file whose index is at the end (a plain MP4 cut short) cannot be
  opened at all and says so.
* **Refused inputs** (each an :class:`~facegen.errors.InvalidVideoError` naming the file):
  a missing file, a folder, a zero-byte file, bytes FFmpeg cannot open, a file with no video
  stream (audio only; cover art does not count), a still image (PNG, JPEG, … even renamed
  ``.mp4``: it has no frame rate; read it with :func:`facegen.image_io.load_image`), a video
  with no frames, a video codec this FFmpeg build cannot decode.
* **Writing** lives in :mod:`facegen.video_write` (:class:`~facegen.video_write.VideoWriter`,
  :func:`~facegen.video_write.concat_videos`).

Needs the ``video`` extra (``av``); a missing one raises
:class:`~facegen.errors.MissingDependencyError`.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

import numpy as np

from facegen.errors import (
    InvalidArgumentError,
    InvalidVideoError,
    MissingDependencyError,
)
from facegen.validate import check_int, check_number

__all__ = [
    "DecodedFrame",
    "VideoInfo",
    "VideoReader",
    "probe_video",
]

logger = logging.getLogger(__name__)

#: Containers whose packets carry real presentation timestamps. Others (AVI, raw streams)
#: are read from the start, and their frames are timed ``index / fps`` (AVI is constant
#: frame rate by design; with B-frames its decoded timestamps come out of order).
_PTS_FORMATS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"})


def _import_av() -> ModuleType:
    try:
        import av
    except ImportError as exc:
        raise MissingDependencyError(
            "av", extra="video", purpose="reading and writing videos"
        ) from exc
    return av


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc)


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` learns about a video's first video stream.

    ``width``/``height``: the stored frame size in pixels (before rotation; see
    :attr:`upright_shape`). ``fps``: average frame rate, ``None`` when unknown.
    ``time_base``: the stream's timestamp unit in seconds. ``frame_count``: from the container,
    ``None`` when it does not say (Matroska, WebM, …). ``duration``/``start_time``: seconds,
    ``None`` when unknown. ``rotation``: degrees counterclockwise to turn the stored picture
    upright, in [0, 360). ``sample_aspect_ratio``: pixel shape, ``None`` when unset (square).
    ``is_variable_frame_rate``: from the container's full sample index (MP4/MOV), ``None``
    when there is none. ``metadata``: container tags (title, comment, …).
    """

    path: str
    width: int
    height: int
    fps: Fraction | None
    time_base: Fraction
    frame_count: int | None
    duration: float | None
    start_time: float | None
    codec: str
    format_name: str
    rotation: int
    sample_aspect_ratio: Fraction | None
    has_audio: bool
    is_variable_frame_rate: bool | None
    metadata: Mapping[str, str]

    @property
    def upright_shape(self) -> tuple[int, int, int]:
        """``(H, W, 3)`` of the frames :class:`VideoReader` yields with ``auto_rotate=True``."""
        if self.rotation % 180 == 90:
            return (self.width, self.height, 3)
        return (self.height, self.width, 3)


@dataclass(frozen=True, eq=False)
class DecodedFrame:
    """One decoded frame: ``image`` RGB ``uint8`` ``(H, W, 3)``; ``index`` its rank in
    presentation order from 0; ``pts`` its timestamp in ``time_base`` ticks and ``time`` the
    same in seconds on the source's timeline (``None`` when the stream has none)."""

    index: int
    image: np.ndarray
    pts: int | None
    time: float | None


# --------------------------------------------------------------------------- reading


@contextlib.contextmanager
def _open_video(av: ModuleType, path: str | os.PathLike[str]) -> Iterator[tuple[Any, Any]]:
    """The open input container and its first real video stream; every refusal is an
    :class:`InvalidVideoError` naming ``path``."""
    container = _open_input(av, path)
    where = str(path)
    try:
        fmt = container.format.name
        if fmt == "image2" or fmt.endswith("_pipe"):
            kind = fmt.removesuffix("_pipe").upper()
            raise InvalidVideoError(
                f"is a still image ({kind}), not a video; read it with facegen.image_io.load_image",
                source=where,
            )
        cover = av.stream.Disposition.attached_pic
        streams = [s for s in container.streams.video if not s.disposition & cover]
        if not streams:
            kinds = sorted({s.type for s in container.streams})
            if container.streams.video:
                kinds.append("cover art")
            unknown = any(s.codec_context is None for s in container.streams)
            raise InvalidVideoError(
                f"has no video stream (streams: {', '.join(kinds) or 'none'})"
                + ("; truncated or corrupt?" if unknown else ""),
                source=where,
            )
        if streams[0].codec_context is None:
            raise InvalidVideoError(
                f"its video codec cannot be decoded by this FFmpeg build (PyAV {av.__version__})",
                source=where,
            )
        yield container, streams[0]
    finally:
        container.close()


def _open_input(av: ModuleType, path: str | os.PathLike[str]) -> Any:
    p, where = Path(path), str(path)
    if not p.exists():
        raise InvalidVideoError("file not found", source=where)
    if p.is_dir():
        raise InvalidVideoError("is a folder, not a video file", source=where)
    if p.stat().st_size == 0:
        raise InvalidVideoError("empty file (0 bytes)", source=where)
    try:
        return av.open(str(p), "r")
    except av.FFmpegError as exc:
        raise InvalidVideoError(
            f"FFmpeg cannot open it: not a video, or truncated or corrupt ({_reason(exc)})",
            source=where,
        ) from exc


def _first_frame(av: ModuleType, container: Any, stream: Any, where: str) -> Any:
    packets = 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            packets += 1
            if packet.is_corrupt:
                break
            for frame in stream.decode(packet):
                return frame
        for frame in stream.decode(None):
            return frame
    except av.FFmpegError as exc:
        raise InvalidVideoError(
            f"cannot decode its first frame: truncated or corrupt ({_reason(exc)})",
            source=where,
            frames_read=0,
        ) from exc
    if packets == 0:
        raise InvalidVideoError("has no frames (its video stream is empty)", source=where)
    raise InvalidVideoError(
        "cannot decode its first frame: truncated or corrupt", source=where, frames_read=0
    )


def _is_vfr(stream: Any) -> bool | None:
    """Whether sample durations differ by more than one tick, from a full sample index."""
    entries = stream.index_entries
    if stream.frames < 3 or len(entries) != stream.frames:
        return None
    steps = np.diff(np.sort(np.array([e.timestamp for e in entries], dtype=np.int64)))
    return bool(steps.max() - steps.min() > 1)


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Describe the video at ``path`` (see :class:`VideoInfo`).

    Reads the container header and decodes the first frame (that is where FFmpeg reports
    the rotation, and it proves the video has a decodable frame). Raises
    :class:`InvalidVideoError` for every input the module doc lists as refused.
    """
    av = _import_av()
    with _open_video(av, path) as (container, vs):
        first = _first_frame(av, container, vs, str(path))
        tb = vs.time_base or Fraction(1, 1)
        fps = vs.average_rate or vs.guessed_rate or None
        if vs.duration is not None:
            duration: float | None = float(vs.duration * tb)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = None
        return VideoInfo(
            path=str(path),
            width=vs.codec_context.width,
            height=vs.codec_context.height,
            fps=Fraction(fps) if fps else None,
            time_base=Fraction(tb),
            frame_count=vs.frames or None,
            duration=duration,
            start_time=float(vs.start_time * tb) if vs.start_time is not None else None,
            codec=vs.codec_context.name,
            format_name=container.format.name,
            rotation=int(first.rotation) % 360,
            sample_aspect_ratio=vs.sample_aspect_ratio or None,
            has_audio=bool(container.streams.audio),
            is_variable_frame_rate=_is_vfr(vs),
            metadata=MappingProxyType(dict(container.metadata)),
        )


class _SeekMissed(Exception):
    """The seek landed after the wanted frame: decode from the start instead."""


class _Damage:
    problem: str | None = None


class VideoReader:
    """Decoded frames of a video, one at a time, as :class:`DecodedFrame`.

    ``start``/``end``: frame indices, ``[start, end)``; ``end=None`` reads to the last frame.
    ``auto_rotate``: turn frames upright (see the module doc). ``threads``: decoder threads,
    0 lets FFmpeg choose. ``allow_truncated``: stop quietly (a warning, ``truncated`` set)
    instead of raising at damage. :attr:`info` is the :func:`probe_video` result; opening
    refuses bad files at once. Each iteration reads the range anew;
    :attr:`frames_read` counts the last one's frames.

    >>> with VideoReader("in.mp4", start=30, end=90) as reader:  # doctest: +SKIP
    ...     for frame in reader:
    ...         process(frame.index, frame.image)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        start: int = 0,
        end: int | None = None,
        auto_rotate: bool = True,
        threads: int = 0,
        allow_truncated: bool = False,
    ) -> None:
        self._av = _import_av()
        self.path = Path(path)
        self._start = check_int(start, "start", minimum=0)
        self._end = None if end is None else check_int(end, "end", minimum=self._start + 1)
        self._threads = check_int(threads, "threads", minimum=0, maximum=256)
        self._auto_rotate = bool(auto_rotate)
        self._allow_truncated = bool(allow_truncated)
        self.info = probe_video(path)
        count = self.info.frame_count
        if count is not None and self._start >= count:
            raise InvalidArgumentError(f"`start` must be < the frame count {count}, got {start}")
        if count is not None and self._end is not None and self._end > count:
            raise InvalidArgumentError(f"`end` must be <= the frame count {count}, got {end}")
        if self._auto_rotate and self.info.rotation % 90:
            raise InvalidVideoError(
                f"rotation must be a multiple of 90° to be applied, got {self.info.rotation}°; "
                "pass auto_rotate=False to read the stored frames",
                source=str(path),
            )
        self.frames_read = 0
        self.truncated = False
        self._iterators: list[Generator[DecodedFrame, None, None]] = []

    @property
    def num_frames(self) -> int | None:
        """How many frames the range holds, when the container says how many it has."""
        count = self.info.frame_count if self._end is None else self._end
        return None if count is None else count - self._start

    def __iter__(self) -> Generator[DecodedFrame, None, None]:
        it = self._iterate()
        self._iterators.append(it)
        return it

    def close(self) -> None:
        """Stop any iteration in progress and release its file."""
        for it in self._iterators:
            it.close()
        self._iterators.clear()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _iterate(self) -> Generator[DecodedFrame, None, None]:
        av = self._av
        self.frames_read, self.truncated = 0, False
        target = None
        if self._start > 0 and self.info.format_name in _PTS_FORMATS:
            with _open_video(av, self.path) as (container, vs):
                target = _pts_of_frame(av, container, vs, self._start)
        if target is not None:
            with _open_video(av, self.path) as (container, vs):
                self._set_threads(vs)
                try:
                    container.seek(target, stream=vs, backward=True, any_frame=False)
                    seeked = True
                except av.FFmpegError:
                    seeked = False
                if seeked:
                    try:
                        yield from self._read(container, vs, target)  # raises _SeekMissed
                        return  # only before its first frame
                    except _SeekMissed:
                        pass
            logger.debug(
                "%s: seek missed frame %d; decoding from the start", self.path, self._start
            )
        with _open_video(av, self.path) as (container, vs):
            self._set_threads(vs)
            yield from self._read(container, vs, None)

    def _set_threads(self, stream: Any) -> None:
        stream.codec_context.thread_count = self._threads
        stream.codec_context.thread_type = "AUTO" if self._threads != 1 else "NONE"

    def _read(self, container: Any, vs: Any, target: int | None) -> Iterator[DecodedFrame]:
        damage = _Damage()
        index = 0 if target is None else None  # after a seek: unknown until frame `start`
        quarter_turns = (self.info.rotation // 90) % 4 if self._auto_rotate else 0
        frames = _decode(self._av, container, vs, damage)
        with contextlib.closing(frames):
            for frame in frames:
                if index is None:
                    if frame.pts is None or frame.pts > target:  # type: ignore[operator]
                        raise _SeekMissed
                    if frame.pts < target:  # type: ignore[operator]
                        continue
                    index = self._start
                if index < self._start:
                    index += 1
                    continue
                if self._end is not None and index >= self._end:
                    return
                image = frame.to_ndarray(format="rgb24")
                if quarter_turns:  # np.rot90 turns counterclockwise, as the rotation means
                    image = np.ascontiguousarray(np.rot90(image, k=quarter_turns))
                pts, time = frame.pts, frame.time
                if self.info.format_name not in _PTS_FORMATS and self.info.fps:
                    tb = self.info.time_base
                    pts = round(index / self.info.fps / tb) + (vs.start_time or 0)
                    time = float(pts * tb)
                yield DecodedFrame(index=index, image=image, pts=pts, time=time)
                index += 1
                self.frames_read += 1
        if index is None:
            raise _SeekMissed
        if damage.problem is not None:
            msg = f"reading stopped after {self.frames_read} frame(s): {damage.problem}"
            if not self._allow_truncated:
                raise InvalidVideoError(msg, source=str(self.path), frames_read=self.frames_read)
            logger.warning("%s: %s", self.path, msg)
            self.truncated = True
        elif self.frames_read == 0:
            raise InvalidArgumentError(
                f"`start` must be < the number of frames ({index}), got {self._start}"
            )
        elif self._end is not None and index < self._end:
            raise InvalidArgumentError(
                f"`end` must be <= the number of frames ({index}), got {self._end} "
                f"(the first {self.frames_read} frame(s) of the range were read)"
            )


def _decode(av: ModuleType, container: Any, vs: Any, damage: _Damage) -> Iterator[Any]:
    """Decoded ``av.VideoFrame`` objects; at damage, drains the decoder and records why."""
    demux = container.demux(vs)
    last_pos = -1
    while True:
        try:
            packet = next(demux)
        except StopIteration:
            break
        except av.FFmpegError as exc:
            damage.problem = f"the demuxer failed ({_reason(exc)})"
            break
        if packet.pos is not None and packet.pos > last_pos:
            last_pos = packet.pos
        if packet.is_corrupt:
            damage.problem = "a packet is cut short or corrupt (truncated file?)"
            break
        try:
            frames = vs.decode(packet)
        except av.FFmpegError as exc:
            damage.problem = f"the decoder failed ({_reason(exc)})"
            break
        yield from frames
    if damage.problem is None:
        positions = [e.pos for e in vs.index_entries if e.pos is not None and e.pos >= 0]
        if positions and max(positions) > last_pos:
            damage.problem = "the file ends before the last frame its index lists (truncated)"
        return
    with contextlib.suppress(av.FFmpegError):
        yield from vs.decode(None)


def _pts_of_frame(av: ModuleType, container: Any, vs: Any, k: int) -> int | None:
    """Timestamp of frame ``k`` (presentation order) from packet headers, without decoding.

    Keeps the ``k + 1`` smallest timestamps seen; once a packet's ``dts`` passes the largest
    of them, no later packet can come before it (``pts >= dts``, and ``dts`` only grows).
    ``None`` when it cannot tell (no timestamps, damage, fewer frames): decode instead.
    """
    smallest: list[int] = []  # negated: a max-heap of the k + 1 smallest pts
    try:
        for packet in container.demux(vs):
            if packet.size == 0 or packet.is_discard:
                continue
            if packet.pts is None or packet.is_corrupt:
                return None
            heapq.heappush(smallest, -packet.pts)
            if len(smallest) > k + 1:
                heapq.heappop(smallest)
            if len(smallest) == k + 1 and packet.dts is not None and packet.dts > -smallest[0]:
                return -smallest[0]
    except av.FFmpegError:
        return None
    return -smallest[0] if len(smallest) == k + 1 else None


# --------------------------------------------------------------------------- writing


def _as_fraction(value: object, name: str) -> Fraction:
    """A positive number as a ``Fraction`` (exact for ints and fractions)."""
    number = check_number(value, name, minimum=0, min_open=True)
    if isinstance(value, (Fraction, int, np.integer)):
        return Fraction(int(value)) if isinstance(value, np.integer) else Fraction(value)
    return Fraction(number).limit_denominator(1_000_000)
