"""Atomic file writes and append-only journals: one place for every output facegen writes.

A file is written under a temporary name (``.NAME.XXXX.part``) in the target folder and
renamed over ``NAME`` only when the write succeeded, so a reader never sees half a file and
a failed write leaves nothing behind. The file gets the permissions of an ordinary new file
(``0o666 & ~umask``), not ``mkstemp``'s private ``0o600``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from facegen.errors import OutputError

__all__ = ["append_json_line", "atomic_write", "drop_torn_tail", "write_json"]

_ATTEMPTS = 16


def _create_temp(target: Path) -> tuple[Path, int]:
    """Create an empty, exclusive temporary file next to ``target``; returns it and its mode.

    Created with ``os.open(..., 0o666)`` so the kernel applies the umask (and any default
    ACL) exactly as for a file opened with ``open(path, "w")``; that mode is returned so it
    can be restored should a writer replace the file with a private one.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(_ATTEMPTS):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        return tmp, mode
    raise FileExistsError(f"no free temporary name next to {target}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Context manager yielding a temporary path to write; renamed to ``path`` on success.

    The parent folder is created when missing. On any exception inside the block the
    temporary file is removed and the exception propagates; ``OSError`` (unwritable folder,
    disk full, …) is raised as :class:`OutputError` naming ``path``.

    >>> with atomic_write("out/data.json") as tmp:
    ...     _ = tmp.write_text("{}")
    """
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp, mode = _create_temp(p)
    except OSError as exc:
        raise OutputError(f"cannot write {p}: {exc.strerror or exc}") from exc
    done = False
    try:
        yield tmp
        os.chmod(tmp, mode)  # some writers (safetensors) recreate the file with mode 0o600
        os.replace(tmp, p)
        done = True
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write {p}: {exc.strerror or exc}") from exc
    finally:
        if not done:
            with contextlib.suppress(OSError):
                tmp.unlink()


def drop_torn_tail(path: str | os.PathLike[str]) -> bool:
    """Cut an append-only journal's last line if it has no newline (a crash while it was
    being written); returns whether something was cut."""
    p = Path(path)
    if not p.exists():
        return False
    data = p.read_bytes()
    if not data or data.endswith(b"\n"):
        return False
    with open(p, "r+b") as f:
        f.truncate(data.rfind(b"\n") + 1)
    return True


def append_json_line(f: IO[str], record: Any) -> None:
    """Append ``record`` as one JSON line to the open journal ``f`` and make it durable
    (flush + fsync): after this returns, a crash cannot lose or tear it."""
    f.write(json.dumps(record, sort_keys=True) + "\n")
    f.flush()
    os.fsync(f.fileno())


def write_json(path: str | os.PathLike[str], data: Any, *, sort_keys: bool = False) -> Path:
    """Atomically write ``data`` as indented UTF-8 JSON (see :func:`atomic_write`); returns the path.

    Values JSON cannot encode are written as ``str(value)``; a circular structure raises
    ``ValueError`` and leaves no file behind.
    """
    text = json.dumps(data, indent=2, sort_keys=sort_keys, default=str)
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
