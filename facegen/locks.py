"""Exclusive locks on output folders: one facegen run writes into a folder at a time.

:func:`folder_lock` takes the lock for the length of a ``with`` block. The lock is a file
inside the folder, ``.facegen.lock`` (or ``.facegen.lock.<part>`` for a lock on one part of
the folder, e.g. one dataset shard), holding one JSON object that names its holder::

    {"host": "gpu-07", "pid": 1234, "started": "2026-12-03T11:02:03Z", "what": "dataset run"}

(``started`` is UTC, ISO 8601). A second run that asks for the same lock fails at once with
:class:`~facegen.errors.FolderLockedError`, one line naming the holder, unless it was told to
wait (``timeout``).

On POSIX the lock itself is a kernel lock (``fcntl.flock``) on that file, held through a
descriptor kept open for the lock's life: the kernel drops it when its process ends however
it ends (``kill -9``, a crash, a power cut), so a lock left by a dead run is taken over at
once and safely, whatever the file still says. The holder removes the file when it releases
the lock. ``flock`` works across machines on local file systems and on NFS (Linux emulates it
with NFS byte-range locks); on a file system without working locks the run fails with an
:class:`~facegen.errors.OutputError` that says so.

Where there is no ``fcntl`` (Windows) the file is created with ``O_EXCL`` instead; a lock
file whose holder ran on this host under a PID that no longer exists is stale and is taken
over. A holder on another host cannot be checked: the message then says which file to delete
once that run is known to be gone.

Lock files never look like data: their names start with a dot and end in no image suffix,
and :func:`is_lock_file` tells folder walkers to skip them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import socket
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from facegen.errors import FolderLockedError, OutputError
from facegen.validate import check_number

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "folder_lock", "is_lock_file", "lock_path", "read_holder"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".facegen.lock"
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: A lock file without a readable holder (its creator died between creating and writing it)
#: is treated as stale after this many seconds, where no kernel lock says otherwise.
_UNREADABLE_STALE_S = 10.0


def lock_path(folder: str | os.PathLike[str], part: str | None = None) -> Path:
    """The lock file of ``folder`` (``.facegen.lock``) or of one ``part`` of it
    (``.facegen.lock.<part>``; ``part``: letters, digits, ``.``, ``_``, ``-``)."""
    if part is None:
        return Path(folder) / LOCK_NAME
    if not isinstance(part, str) or not _PART.fullmatch(part):
        raise ValueError(
            "`part` must be letters, digits, '.', '_' or '-' (not starting with a "
            f"punctuation mark), got {part!r}"
        )
    return Path(folder) / f"{LOCK_NAME}.{part}"


def is_lock_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a facegen lock file (which is never data)."""
    name = os.path.basename(os.fspath(path))
    return name == LOCK_NAME or name.startswith(LOCK_NAME + ".")


def read_holder(folder: str | os.PathLike[str], part: str | None = None) -> dict[str, Any] | None:
    """What the lock file of ``folder`` (or its ``part``) says about its holder, or ``None``
    when there is no such file or it holds no readable record. A record in the file does not
    mean the lock is held (see the module doc): only :func:`folder_lock` can tell."""
    return _read_holder(lock_path(folder, part))


def _read_holder(path: Path, tries: int = 1) -> dict[str, Any] | None:
    """The holder record in ``path``; with ``tries`` > 1, a file that is still empty (its
    holder is between creating and writing it) is read again a few times."""
    for n in range(tries):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            data = None  # empty or half written: its holder may be writing it right now
        if isinstance(data, dict):
            return data
        if n + 1 < tries:
            time.sleep(0.02)
    return None


def _holder_record(what: str) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "what": what,
    }


def _locked(folder: Path, path: Path, hint: str | None = None) -> FolderLockedError:
    return FolderLockedError(folder, holder=_read_holder(path, tries=10), lock_file=path, hint=hint)


def _no_locks(path: Path, exc: OSError) -> OutputError:
    return OutputError(
        f"cannot lock {path}: {exc.strerror or exc}; the file system of this folder does not "
        "support file locks (use a local folder, or an NFS mount with locking enabled)"
    )


# ----------------------------------------------------------------------------- flock (POSIX)


def _try_flock(path: Path) -> int | None:
    """Open ``path`` (created when missing) and lock it; the descriptor, or ``None`` when
    another open file holds the lock."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        # the holder removes the file before it lets go: a lock won on a removed file is
        # no lock at all, so check that the path still names the file that was locked
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _release_flock(path: Path, fd: int) -> None:
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still locked: nobody can win the lock on this file now
    finally:
        os.close(fd)  # drops the kernel lock


# ------------------------------------------------------------------- O_EXCL (no fcntl)


def _pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host (without signalling it)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # pragma: no cover - Windows
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return bool(kernel32.GetLastError() == 5)  # ERROR_ACCESS_DENIED: it exists
        try:
            code = ctypes.c_ulong()
            if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
                return True
            return code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists but belongs to someone else
        return True
    return True


def _stale(path: Path, holder: Mapping[str, Any] | None) -> bool:
    """Whether the ``O_EXCL`` lock file ``path`` was left by a run that is gone."""
    if holder is None:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return True
        return age > _UNREADABLE_STALE_S
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False  # another machine's run cannot be checked from here
    return not _pid_alive(pid)


def _try_excl(path: Path, record: Mapping[str, Any]) -> bool:
    """Create ``path`` exclusively with ``record`` in it, taking over a stale one; whether
    the lock was won."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC
    for _ in range(3):
        try:
            fd = os.open(path, flags, 0o666)
        except FileExistsError:
            if not _stale(path, _read_holder(path, tries=10)):
                return False
            # a dead run's file: remove it and try again (another taker may win the race)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            continue
        try:
            os.write(fd, json.dumps(record, sort_keys=True).encode("utf-8"))
        finally:
            os.close(fd)
        return True
    return False


def _release_excl(path: Path, record: Mapping[str, Any]) -> None:
    """Remove the lock file if it still holds ``record`` (not a later taker's)."""
    if _read_holder(path) == dict(record):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# -------------------------------------------------------------------------------- public


@contextlib.contextmanager
def folder_lock(
    folder: str | os.PathLike[str],
    what: str = "facegen run",
    *,
    part: str | None = None,
    timeout: float | None = 0.0,
) -> Iterator[Path]:
    """Hold the exclusive lock on ``folder`` (or on one ``part`` of it) inside the block.

    ``folder`` is created when missing. ``what`` says what holds the lock (``"dataset run"``);
    it is written to the lock file and shown to whoever finds the folder taken. ``part`` locks
    one part of the folder instead of all of it (file ``.facegen.lock.<part>``): runs that
    write different parts of one folder do not exclude each other. ``timeout``: ``0`` fails
    at once when another run holds the lock, ``None`` waits as long as it takes, a number
    waits at most that many seconds. Yields the lock file's path. The lock is released when
    the block ends, also by an exception; it is not re-entrant (the same lock taken again
    inside the block, even by the same process, is refused like any other run's).

    Raises :class:`~facegen.errors.FolderLockedError` when the lock is held elsewhere, naming
    the holder ("`out/` is in use by another facegen run (dataset run, PID 1234 on host x,
    since 2026-12-03T11:02:03Z); wait for it or stop it"), and
    :class:`~facegen.errors.OutputError` when the folder cannot be created or locked.
    """
    if timeout is not None and timeout != math.inf:  # inf waits as long as None does
        timeout = check_number(timeout, "timeout", minimum=0)
    if not isinstance(what, str) or not what.strip() or "\n" in what:
        raise ValueError(f"`what` must be a non-empty one-line string, got {what!r}")
    root = Path(folder)
    path = lock_path(root, part)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {root}: {exc.strerror or exc}") from exc
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.05
    fd: int | None = None
    while True:
        record = _holder_record(what)  # "started": when the lock was won
        try:
            if fcntl is not None:
                fd = _try_flock(path)
                won = fd is not None
            else:
                won = _try_excl(path, record)
        except OSError as exc:
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise _no_locks(path, exc) from exc
            raise OutputError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        if won:
            break
        if deadline is not None and time.monotonic() >= deadline:
            hint = None
            if fcntl is None:
                hint = f"if that run is gone, delete {path}"
            raise _locked(root, path, hint)
        if delay == 0.05:  # the first wait
            logger.info("waiting for %s: %s", path, _locked(root, path))
        time.sleep(delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic())))
        delay = min(delay * 2, 1.0)
    try:
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps(record, sort_keys=True).encode("utf-8"))
            except OSError as exc:
                raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
        yield path
    finally:
        if fd is not None:
            _release_flock(path, fd)
        else:
            _release_excl(path, record)
