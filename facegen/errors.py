"""The facegen exception hierarchy.

Every failure that facegen raises on purpose derives from :class:`FacegenError`, so
callers (and the CLI) can catch one type. Messages follow the house rule
"`x` must be …, got …" and say what to do next where there is something to do.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "AmbiguousFaceError",
    "DeviceNotAvailableError",
    "FaceIndexError",
    "FacegenError",
    "FolderLockedError",
    "IncompatibleEmbeddingError",
    "InvalidArgumentError",
    "InvalidImageError",
    "InvalidModelError",
    "InvalidVideoError",
    "MissingDependencyError",
    "ModelNotAvailableError",
    "NoFaceDetectedError",
    "OutputError",
    "UnknownNameError",
]


class FacegenError(Exception):
    """Root of every error facegen raises deliberately."""


class InvalidImageError(FacegenError, ValueError):
    """An image could not be read or is not acceptable (empty, corrupt, too large, …)."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class InvalidVideoError(InvalidImageError):
    """A video could not be read or is not acceptable (missing, empty, truncated, no video
    stream, a still image, no frames, a codec this FFmpeg build cannot decode, …).

    A subclass of :class:`InvalidImageError` so that code skipping unreadable media catches
    one type. ``frames_read``: how many frames were decoded before reading stopped, when the
    error was raised mid-way (a truncated or corrupt file); otherwise ``None``.
    """

    def __init__(
        self, message: str, *, source: str | None = None, frames_read: int | None = None
    ) -> None:
        self.frames_read = frames_read
        super().__init__(message, source=source)


class NoFaceDetectedError(FacegenError):
    """No face passed the detector's threshold."""

    def __init__(
        self,
        *,
        source: str | None = None,
        num_candidates: int = 0,
        threshold: float | None = None,
        detector: str | None = None,
    ) -> None:
        self.source = source
        self.num_candidates = num_candidates
        self.threshold = threshold
        self.detector = detector
        where = f"{source}: " if source else ""
        parts = [f"{where}no face detected"]
        if detector:
            parts.append(f"by detector {detector!r}")
        if threshold is not None:
            parts.append(f"at score threshold {threshold:g}")
        msg = " ".join(parts) + f" (found {num_candidates} face(s))."
        msg += " Try a larger or better-lit photo, a lower threshold, or another detector."
        super().__init__(msg)


class AmbiguousFaceError(FacegenError):
    """Exactly one face was required but several were found."""

    def __init__(self, *, num_faces: int, source: str | None = None) -> None:
        self.num_faces = num_faces
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(
            f"{where}exactly one face is required, got {num_faces}. "
            "Choose one with a selection policy (largest, best, index=N, or closest to a reference)."
        )


class FaceIndexError(FacegenError, IndexError):
    """A face was selected by an index that the image's detected faces do not have."""

    def __init__(self, *, index: int, num_faces: int, source: str | None = None) -> None:
        self.index = index
        self.num_faces = num_faces
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(
            f"{where}face index must be in [{-num_faces}, {num_faces - 1}], got {index} "
            f"({num_faces} face(s) found)"
        )


class ModelNotAvailableError(FacegenError):
    """A model file is not on disk and could not (or may not) be downloaded."""

    def __init__(
        self,
        model: str,
        *,
        searched: Sequence[str | Path] = (),
        hint: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.model = model
        self.searched = [str(s) for s in searched]
        self.hint = hint
        lines = [f"model {model!r} is not available" + (f": {reason}" if reason else ".")]
        if self.searched:
            lines.append("Looked in:")
            lines.extend(f"  - {s}" for s in self.searched)
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


class InvalidModelError(FacegenError):
    """A model file exists but is not what it should be (corrupt, wrong signature, …)."""


class IncompatibleEmbeddingError(FacegenError, ValueError):
    """Identity embeddings from different encoders (or of the wrong shape) were mixed."""


class UnknownNameError(FacegenError, KeyError):
    """A name was looked up in a registry that does not know it."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)
        super().__init__(
            f"unknown {kind} {name!r}; valid names: {', '.join(self.valid) or '(none)'}"
        )

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0])


class MissingDependencyError(FacegenError, ImportError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, *, extra: str | None = None, purpose: str = "") -> None:
        self.package = package
        self.extra = extra
        how = f"pip install 'facegen[{extra}]'" if extra else f"pip install {package}"
        what = f" (needed for {purpose})" if purpose else ""
        super().__init__(f"{package} is not installed{what}; install it with: {how}")


class DeviceNotAvailableError(FacegenError, ValueError):
    """A device was requested that this machine or runtime cannot use."""


class InvalidArgumentError(FacegenError, ValueError):
    """An argument is out of range or of the wrong type."""


class OutputError(FacegenError, OSError):
    """An output could not be written (unwritable path, disk full, name escaping its folder, …)."""


class FolderLockedError(FacegenError):
    """An output folder is in use by another facegen run (see :mod:`facegen.locks`).

    ``holder``: the lock file's record (``pid``, ``host``, ``started``, ``what``), or ``None``
    when it could not be read; ``lock_file``: the lock file's path.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        holder: Mapping[str, Any] | None,
        lock_file: str | os.PathLike[str],
        hint: str | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.holder = dict(holder) if holder is not None else None
        self.lock_file = Path(lock_file)
        self.hint = hint
        # the record comes from a file: keep the message on one line whatever it holds
        h = {k: " ".join(str(v).split()) for k, v in (self.holder or {}).items() if v is not None}
        parts = [str(h["what"])] if h.get("what") else []
        if h.get("pid"):
            parts.append(f"PID {h['pid']}" + (f" on host {h['host']}" if h.get("host") else ""))
        if h.get("started"):
            parts.append(f"since {h['started']}")
        who = ", ".join(parts) or "holder unknown"
        shown = str(self.folder).rstrip("/\\") + os.sep
        msg = f"`{shown}` is in use by another facegen run ({who}); wait for it or stop it"
        super().__init__(msg + (f" ({hint})" if hint else ""))

    def __reduce__(self) -> tuple[Any, ...]:  # keyword-only arguments: pickle (Ray, spawn) them
        rebuild = functools.partial(
            FolderLockedError, holder=self.holder, lock_file=self.lock_file, hint=self.hint
        )
        return (rebuild, (self.folder,))
