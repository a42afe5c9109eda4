"""Writing videos one frame at a time, with PyAV (FFmpeg); joining finished parts into one.

Frames are RGB ``uint8`` ``(H, W, 3)`` numpy arrays (or RGB PIL images), as everywhere in
facegen; reading is :mod:`facegen.video_io`.

Rules:

* **Writing** is H.264 (libx264, ``yuv420p``) in MP4 with ``+faststart``. ``yuv420p`` needs
  an even width and height: an odd size is refused unless ``odd_size="pad"``, which repeats
  the last column/row. The file is written under a temporary name and renamed on
  :meth:`VideoWriter.close`; an exception inside the ``with`` block, or :meth:`~VideoWriter.abort`,
  removes it, so a failed write never leaves a half file under the final name.
* **Timing.** Frames written with ``time=`` (the source's times in seconds, e.g.
  :attr:`~facegen.video_io.DecodedFrame.time`) keep them, shifted so that the first frame is
  at 0, so a variable-frame-rate video keeps its timing;
  without ``time=`` frame ``n`` is at ``n / fps``. Audio copied from ``audio_from`` is
  remuxed packet for packet (never re-encoded) and shifted by the same amount, so it stays in
  sync.
* **Parts.** A long edit is written as parts (each a complete MP4 of consecutive frames,
  written with the same settings, starting at 0 like any file), so a killed run keeps the
  finished parts. :func:`concat_videos` joins them packet for packet (no re-encoding) into
  one MP4, each part shifted to its start time on the joined timeline, copying the audio
  then; it checks that the parts fit (same codec, size and encoder headers, timestamps
  increasing from part to part).

Needs the ``video`` extra (``av``); a missing one raises
:class:`~facegen.errors.MissingDependencyError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
from PIL import Image

from facegen.errors import (
    InvalidArgumentError,
    InvalidImageError,
    InvalidVideoError,
    MissingDependencyError,
    OutputError,
)
from facegen.fileio import atomic_write
from facegen.validate import check_choice, check_int, check_number
from facegen.video_io import _as_fraction, _import_av, _open_input, _reason

__all__ = ["METADATA_KEYS", "X264_PRESETS", "VideoWriter", "concat_videos"]

logger = logging.getLogger(__name__)

#: Container metadata keys the MP4 muxer stores (others would be dropped, so they are refused).
METADATA_KEYS = frozenset(
    {
        "title", "comment", "description", "synopsis", "artist", "album", "album_artist",
        "composer", "copyright", "date", "genre", "grouping", "keywords",
    }
)  # fmt: skip
X264_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"
)  # fmt: skip
VIDEO_EXTENSIONS = (".mp4", ".m4v")
_TIME_BASE = Fraction(1, 90000)  # timestamps given in seconds are stored in these ticks


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    tags = dict(metadata or {})
    for key, value in tags.items():
        if key not in METADATA_KEYS:
            raise InvalidArgumentError(
                f"`metadata` keys must be among {', '.join(sorted(METADATA_KEYS))}, got {key!r}"
            )
        if not isinstance(value, str) or "\0" in value:
            raise InvalidArgumentError(
                f"`metadata[{key!r}]` must be a string without NUL, got {value!r}"
            )
    return tags


def _check_mp4_path(path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    if out.suffix.lower() not in VIDEO_EXTENSIONS:
        raise InvalidArgumentError(
            f"`path` must end in {' or '.join(VIDEO_EXTENSIONS)}, got {str(path)!r}"
        )
    if out.is_dir():
        raise OutputError(f"cannot write {out}: it is a folder")
    return out


class _AudioCopier:
    """Copies the first audio stream of ``src`` into ``out`` packet for packet, interleaved
    with the video by :meth:`copy_until`; times shifted so that ``origin`` (seconds on the
    source's timeline) is at 0. ``span="frames"``: only packets starting at or after
    ``origin``."""

    def __init__(self, av: Any, src: str | os.PathLike[str], out: Any, span: str) -> None:
        self.src = _open_input(av, src)
        self.out, self.span = out, span
        self.stream: Any = None
        self.out_stream: Any = None
        self.pending: Any = None
        self.origin, self.shift = 0.0, 0
        audio = self.src.streams.audio
        if not audio:
            logger.info("%s has no audio stream; writing video only", src)
            return
        codec = audio[0].codec_context.name if audio[0].codec_context else "unknown"
        if codec not in out.supported_codecs:
            self.close()
            raise InvalidVideoError(
                f"its audio codec {codec!r} cannot be copied into MP4; pass audio_from=None "
                "or convert the audio first",
                source=str(src),
            )
        self.stream = audio[0]
        self.packets: Iterator[Any] = self.src.demux(self.stream)

    def start(self, origin: float) -> None:
        """Add the output stream (before the first video packet is muxed)."""
        if self.stream is None:
            return
        self.out_stream = self.out.add_stream_from_template(self.stream)
        self.origin = origin
        self.shift = round(Fraction(origin) / self.stream.time_base)

    def copy_until(self, before: float | None) -> None:
        """Copy the packets that start before source time ``before`` (all: None)."""
        if self.out_stream is None:
            return
        tb = self.stream.time_base
        while True:
            packet = self.pending if self.pending is not None else next(self.packets, None)
            self.pending = None
            if packet is None:
                return
            ts = packet.pts if packet.pts is not None else packet.dts
            if ts is None or packet.size == 0:
                continue
            start = float(ts * tb)
            if before is not None and start >= before:
                self.pending = packet
                return
            if self.span == "frames" and start < self.origin:
                continue
            if packet.pts is not None:
                packet.pts -= self.shift
            if packet.dts is not None:
                packet.dts -= self.shift
            packet.stream = self.out_stream
            self.out.mux(packet)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.src.close()


def _as_rgb(image: object) -> np.ndarray:
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            raise InvalidImageError(f"`image` must be an RGB PIL image, got mode {image.mode!r}")
        image = np.asarray(image)
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(
            f"`image` must be an RGB uint8 (H, W, 3) numpy array, got {type(image).__name__}"
        )
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise InvalidImageError(
            f"`image` must be an RGB uint8 (H, W, 3) array, got dtype {image.dtype} "
            f"shape {image.shape}"
        )
    return np.ascontiguousarray(image)


class VideoWriter:
    """Encode RGB frames to an H.264 MP4 file, atomically (see the module doc).

    ``fps``: the frame rate (``Fraction``, int or float; pass the source's
    :attr:`~facegen.video_io.VideoInfo.fps`). ``crf``: x264 quality, 0 (lossless) to 51, lower is better.
    ``preset``: one of :data:`X264_PRESETS`. ``time_base``: tick for frames written with
    ``time=`` (default 1/90000 s; pass the source's :attr:`~facegen.video_io.VideoInfo.time_base` to keep its
    ticks exactly). ``metadata``: container tags, keys from :data:`METADATA_KEYS` (e.g.
    ``title``, ``comment`` for provenance). ``sample_aspect_ratio``: pixel shape to record.
    ``audio_from``: a media file whose first audio stream is copied packet for packet (none
    copied when it has none); ``audio_span="all"`` copies all of it, ``"frames"`` only the
    packets starting within the written frames' span (from the first frame's time to the
    last one's plus ``1 / fps``; use it when a frame range was read). ``odd_size``:
    ``"error"`` or ``"pad"``. The frame size is taken from the first frame.

    >>> with VideoReader("in.mp4") as r, VideoWriter(  # doctest: +SKIP
    ...     "out.mp4", fps=r.info.fps, audio_from="in.mp4", metadata={"title": "anonymized"}
    ... ) as w:
    ...     for f in r:
    ...         w.write(change(f.image), time=f.time)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fps: Fraction | float,
        crf: float = 18,
        preset: str = "medium",
        time_base: Fraction | None = None,
        metadata: Mapping[str, str] | None = None,
        sample_aspect_ratio: Fraction | None = None,
        audio_from: str | os.PathLike[str] | None = None,
        audio_span: Literal["all", "frames"] = "all",
        odd_size: Literal["error", "pad"] = "error",
        threads: int = 0,
    ) -> None:
        av = self._av = _import_av()
        self.path = _check_mp4_path(path)
        self.fps = _as_fraction(fps, "fps")
        self._crf = check_number(crf, "crf", minimum=0, maximum=51)
        self._preset = check_choice(preset, "preset", X264_PRESETS)
        self._time_base = _TIME_BASE if time_base is None else _as_fraction(time_base, "time_base")
        self._sar = (
            None
            if sample_aspect_ratio is None
            else _as_fraction(sample_aspect_ratio, "sample_aspect_ratio")
        )
        self._audio_span = check_choice(audio_span, "audio_span", ("all", "frames"))
        self._odd_size = check_choice(odd_size, "odd_size", ("error", "pad"))
        self._threads = check_int(threads, "threads", minimum=0, maximum=256)
        self._metadata = _check_metadata(metadata)
        try:
            av.Codec("libx264", "w")
        except av.FFmpegError as exc:
            raise MissingDependencyError(
                "av (with libx264)", extra="video", purpose="writing H.264 videos"
            ) from exc
        self.frames_written = 0
        self._closed = False
        self._shape: tuple[int, ...] | None = None
        self._timed: bool | None = None
        self._vs: Any = None
        self._audio: _AudioCopier | None = None
        self._stack = contextlib.ExitStack()
        try:
            self._tmp = self._stack.enter_context(atomic_write(self.path))
            try:
                self._out = av.open(
                    str(self._tmp), "w", format="mp4", options={"movflags": "+faststart"}
                )
            except av.FFmpegError as exc:
                raise OutputError(f"cannot write {self.path}: {_reason(exc)}") from exc
            for key, value in self._metadata.items():
                self._out.metadata[key] = value
            if audio_from is not None:
                self._audio = _AudioCopier(av, audio_from, self._out, self._audio_span)
        except BaseException:
            self.abort()
            raise

    # -- frames

    def write(self, image: np.ndarray | Image.Image, *, time: float | None = None) -> None:
        """Encode one RGB ``uint8`` ``(H, W, 3)`` frame. ``time``: its time in seconds on the
        source's timeline; give it for every frame or for none, strictly increasing."""
        if self._closed:
            raise InvalidArgumentError("cannot write: the `VideoWriter` is closed")
        arr = _as_rgb(image)
        if self._timed is None:
            self._start(arr, time is not None, time)
        if arr.shape != self._shape:
            raise InvalidImageError(
                f"`image` must have the first frame's shape {self._shape}, got {arr.shape}"
            )
        if (time is not None) != self._timed:
            given = "with `time`" if self._timed else "without `time`"
            raise InvalidArgumentError(
                f"`time` must be given for every frame or none (the first was written {given}), "
                f"got {time!r}"
            )
        if time is None:
            pts, src_time = self.frames_written, self._t0 + self.frames_written / self.fps
        else:
            src_time = check_number(time, "time")
            pts = round((Fraction(src_time) - Fraction(self._t0)) / self._time_base)
            if pts <= self._last_pts:
                prev = float(self._t0 + self._last_pts * self._time_base)
                raise InvalidArgumentError(
                    f"`time` must be later than the previous frame's ({prev:.6f} s) by at least "
                    f"one tick ({self._time_base} s), got {time!r}"
                )
        if self._odd_size == "pad" and (arr.shape[0] % 2 or arr.shape[1] % 2):
            arr = np.pad(arr, ((0, arr.shape[0] % 2), (0, arr.shape[1] % 2), (0, 0)), mode="edge")
        frame = self._av.VideoFrame.from_ndarray(arr, format="rgb24")
        frame.pts, frame.time_base = pts, self._vs.codec_context.time_base
        frame.duration = self._frame_ticks
        try:
            if self._audio is not None:
                self._audio.copy_until(float(src_time))
            self._out.mux(self._vs.encode(frame))
        except self._av.FFmpegError as exc:
            self.abort()
            raise OutputError(f"cannot write {self.path}: {_reason(exc)}") from exc
        self._last_pts, self._last_time = pts, float(src_time)
        self.frames_written += 1

    def _start(self, arr: np.ndarray, timed: bool, time: float | None) -> None:
        h, w = arr.shape[:2]
        if (h % 2 or w % 2) and self._odd_size == "error":
            raise InvalidImageError(
                f"`image` width and height must be even for H.264 yuv420p, got {w}×{h}; "
                'pass odd_size="pad" to repeat the last column/row'
            )
        t0 = check_number(time, "time") if time is not None else 0.0
        self._t0 = t0
        self._last_pts, self._last_time = -1, self._t0
        tb = self._time_base if timed else 1 / self.fps
        self._frame_ticks = max(1, round(1 / self.fps / tb))
        vs = self._vs = self._out.add_stream("libx264", rate=self.fps)
        vs.width, vs.height, vs.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
        vs.codec_context.time_base = tb
        vs.codec_context.thread_count = self._threads
        vs.options = {"crf": f"{self._crf:g}", "preset": self._preset}
        if self._sar is not None:
            vs.codec_context.sample_aspect_ratio = self._sar
        if self._audio is not None:
            self._audio.start(self._t0)
        self._shape, self._timed = arr.shape, timed  # last: a failed start can be retried

    # -- finishing

    def close(self) -> Path:
        """Flush the encoder, copy the rest of the audio, and move the file into place;
        returns its path. Writing no frame at all is refused (nothing is left behind)."""
        if self._closed:
            return self.path
        if self.frames_written == 0:
            self.abort()
            raise InvalidArgumentError(
                f"cannot write {self.path}: no frame was written (an MP4 needs at least one)"
            )
        end = self._last_time + float(1 / self.fps) if self._audio_span == "frames" else None
        try:
            self._out.mux(self._vs.encode(None))
            if self._audio is not None:
                self._audio.copy_until(end)
            self._out.close()
            if self._audio is not None:
                self._audio.close()
        except self._av.FFmpegError as exc:
            self.abort()
            raise OutputError(f"cannot write {self.path}: {_reason(exc)}") from exc
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._stack.close()  # renames the temporary file to `path`
        return self.path

    def abort(self) -> None:
        """Give up: close everything and remove the temporary file. Safe to call twice."""
        self._closed = True
        out = getattr(self, "_out", None)
        if out is not None:
            with contextlib.suppress(Exception):
                out.close()
        if getattr(self, "_audio", None) is not None:
            self._audio.close()
        stack = getattr(self, "_stack", None)
        if stack is not None:
            exc = _Aborted()
            stack.__exit__(type(exc), exc, None)  # atomic_write removes the temporary file

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def concat_videos(
    parts: Sequence[str | os.PathLike[str]],
    path: str | os.PathLike[str],
    *,
    starts: Sequence[float] | None = None,
    metadata: Mapping[str, str] | None = None,
    audio_from: str | os.PathLike[str] | None = None,
    audio_span: Literal["all", "frames"] = "all",
    time_origin: float = 0.0,
    end_time: float | None = None,
) -> Path:
    """Join the MP4 ``parts`` (in order; each written by :class:`VideoWriter` with the same
    settings) into the MP4 ``path``, packet for packet, atomically.

    ``starts``: each part's start on the joined timeline in seconds (its first frame's time
    minus the first part's; e.g. the source times of the frames that begin each part); None
    puts each part right after the previous one (at its last frame's end). ``metadata``: the joined file's container tags. ``audio_from``: copy that file's audio
    (as :class:`VideoWriter` does), shifted by ``time_origin`` (the source time the parts'
    0 stands for); ``audio_span="frames"`` copies only the packets starting in
    ``[time_origin, end_time)``. Raises :class:`~facegen.errors.InvalidVideoError` when a
    part cannot be read or does not fit the first (codec, size, encoder headers, timestamps
    not after the previous part's), :class:`~facegen.errors.OutputError` when ``path``
    cannot be written; nothing is left under ``path`` then."""
    av = _import_av()
    out_path = _check_mp4_path(path)
    tags = _check_metadata(metadata)
    span = check_choice(audio_span, "audio_span", ("all", "frames"))
    origin = check_number(time_origin, "time_origin")
    if not parts:
        raise InvalidArgumentError("`parts` must name at least one video")
    if starts is not None:
        if len(starts) != len(parts):
            raise InvalidArgumentError(
                f"`starts` must give one time per part ({len(parts)}), got {len(starts)}"
            )
        starts = [check_number(t, "starts[]", minimum=0) for t in starts]
    with atomic_write(out_path) as tmp:
        try:
            out = av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"})
        except av.FFmpegError as exc:
            raise OutputError(f"cannot write {out_path}: {_reason(exc)}") from exc
        audio: _AudioCopier | None = None
        try:
            for key, value in tags.items():
                out.metadata[key] = value
            if audio_from is not None:
                audio = _AudioCopier(av, audio_from, out, span)
            _join(av, parts, starts, out, audio, origin)
            if audio is not None:
                audio.copy_until(end_time if span == "frames" else None)
            out.close()
        except av.FFmpegError as exc:
            raise OutputError(f"cannot write {out_path}: {_reason(exc)}") from exc
        finally:
            with contextlib.suppress(Exception):
                out.close()
            if audio is not None:
                audio.close()
    return out_path


def _join(
    av: Any,
    parts: Sequence[str | os.PathLike[str]],
    starts: Sequence[float] | None,
    out: Any,
    audio: Any,
    origin: float,
) -> None:
    """Mux every video packet of ``parts`` into ``out``, each part shifted to its start
    (audio interleaved by time)."""
    stream: Any = None
    first: tuple[Any, ...] = ()
    last_dts: Fraction | None = None
    end = Fraction(0)  # where the parts so far end (the next start when `starts` is None)
    for n, part in enumerate(parts):
        begin = Fraction(starts[n]) if starts is not None else end
        src = _open_input(av, part)
        try:
            if not src.streams.video:
                raise InvalidVideoError("has no video stream", source=str(part))
            vs = src.streams.video[0]
            cc = vs.codec_context
            shape = (cc.name, cc.width, cc.height, bytes(cc.extradata or b""))
            if stream is None:
                stream, first = out.add_stream_from_template(vs), shape
                if audio is not None:
                    audio.start(origin)
            elif shape != first:
                raise InvalidVideoError(
                    "does not fit the first part (codec, size or encoder settings differ)",
                    source=str(part),
                )
            shift: int | None = None
            for packet in src.demux(vs):
                if packet.size == 0 or packet.pts is None:
                    continue  # the demuxer's end-of-stream marker
                tb = packet.time_base
                if shift is None:
                    shift = round(begin / tb)
                packet.pts += shift
                if packet.dts is not None:
                    packet.dts += shift
                end = max(end, (packet.pts + (packet.duration or 0)) * tb)
                dts = Fraction(packet.dts if packet.dts is not None else packet.pts) * tb
                if last_dts is not None and dts <= last_dts:
                    raise InvalidVideoError(
                        f"its timestamps ({float(dts):.3f} s) do not follow the previous "
                        f"part's ({float(last_dts):.3f} s)",
                        source=str(part),
                    )
                last_dts = dts
                if audio is not None:
                    audio.copy_until(origin + float(packet.pts * tb))
                packet.stream = stream
                out.mux(packet)
        except av.FFmpegError as exc:
            raise InvalidVideoError(f"cannot be read: {_reason(exc)}", source=str(part)) from exc
        finally:
            src.close()


class _Aborted(Exception):
    """Thrown into :func:`atomic_write` to make it delete the temporary file."""
