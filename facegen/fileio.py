"""Atomic file writes: one helper for every output facegen writes.

A file is written under a temporary name (``.NAME.XXXX.part``) in the target folder and
renamed over ``NAME`` only when the write succeeded, so a reader never sees half a file and
a failed write leaves nothing behind. The file gets the permissions of an ordinary new file
(``0o666 & ~umask``), not ``mkstemp``'s private ``0o600``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from facegen.errors import OutputError

__all__ = ["atomic_write"]

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
