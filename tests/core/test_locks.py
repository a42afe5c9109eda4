"""Exclusive output-folder locks: held by another process, stale after kill -9, released."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import facegen.locks as locks
from facegen.errors import FacegenError, FolderLockedError
from facegen.image_io import find_images, save_image, scan_images
from facegen.locks import LOCK_NAME, folder_lock, is_lock_file, lock_path, read_holder

_HOLDER = """
import sys, time
import facegen.locks as locks
if sys.argv[3] == "excl":
    locks.fcntl = None  # the O_EXCL way, as on systems without fcntl
part = sys.argv[2] or None
with locks.folder_lock(sys.argv[1], "test holder", part=part):
    print("holding", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator:
    """Start a separate process that holds a lock until it is killed."""
    script = tmp_path / "holder.py"
    script.write_text(textwrap.dedent(_HOLDER))
    procs: list[subprocess.Popen] = []

    def start(folder: Path, part: str | None = None, how: str = "flock") -> subprocess.Popen:
        p = subprocess.Popen(
            [sys.executable, str(script), str(folder), part or "", how],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "holding"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)


def _take(folder: Path, what: str = "facegen run", **kw) -> None:
    """Take and release a lock."""
    with folder_lock(folder, what, **kw):
        pass


def _kill(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)  # reaped: its PID no longer exists


def test_a_second_process_is_refused_then_a_killed_holder_is_taken_over(
    tmp_path: Path, holder
) -> None:
    out = tmp_path / "out"
    p = holder(out)
    with pytest.raises(FolderLockedError) as ei, folder_lock(out, "dataset run"):
        pytest.fail("the lock was taken while another process held it")
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(f"`{out}{os.sep}` is in use by another facegen run (test holder, ")
    assert f"PID {p.pid} on host {socket.gethostname()}, since " in msg
    assert msg.endswith("); wait for it or stop it")
    assert re.search(r"since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)", msg)
    assert ei.value.holder is not None and ei.value.holder["pid"] == p.pid
    assert ei.value.lock_file == out / LOCK_NAME
    assert isinstance(ei.value, FacegenError)
    again = pickle.loads(pickle.dumps(ei.value))  # crosses process boundaries (Ray, spawn)
    assert str(again) == msg and again.holder == ei.value.holder
    _kill(p)
    # the dead run's file is still there, naming it; its kernel lock died with it
    assert read_holder(out)["pid"] == p.pid  # type: ignore[index]
    with folder_lock(out, "dataset run") as path:
        rec = json.loads(path.read_text())
        assert rec["pid"] == os.getpid() and rec["what"] == "dataset run"
        assert rec["host"] == socket.gethostname()
        assert sorted(rec) == ["host", "pid", "started", "what"]
    assert not path.exists()  # removed on release


def test_released_after_an_exception_and_not_reentrant(tmp_path: Path) -> None:
    path = lock_path(tmp_path)
    with pytest.raises(RuntimeError, match="boom"), folder_lock(tmp_path, "anonymize run"):
        assert path.is_file()
        raise RuntimeError("boom")
    assert not path.exists()
    with folder_lock(tmp_path, "anonymize run"):
        # the same lock again, even from this process, is another run's
        with pytest.raises(FolderLockedError, match=rf"anonymize run, PID {os.getpid()} "):
            _take(tmp_path, "anonymize run")
        # other parts of the folder are other locks
        with folder_lock(tmp_path, "dataset run", part="shard-1-of-2") as part:
            assert part.name == ".facegen.lock.shard-1-of-2"
    assert not list(tmp_path.iterdir())


def test_waiting_for_a_lock(tmp_path: Path) -> None:
    held = threading.Event()

    def hold(seconds: float) -> None:
        with folder_lock(tmp_path, "holder"):
            held.set()
            time.sleep(seconds)

    t = threading.Thread(target=hold, args=(0.5,))
    t.start()
    held.wait(10)
    with pytest.raises(FolderLockedError), folder_lock(tmp_path, timeout=0.1):
        pass
    with folder_lock(tmp_path, "waiter", timeout=30) as path:  # waits for the release
        assert json.loads(path.read_text())["what"] == "waiter"
    t.join()


def test_without_fcntl_a_live_holder_is_refused_and_a_dead_one_taken_over(
    tmp_path: Path, holder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(locks, "fcntl", None)
    out = tmp_path / "out"
    p = holder(out, "shard-0-of-1", "excl")
    with pytest.raises(FolderLockedError, match=rf"test holder, PID {p.pid} on host "):
        _take(out, part="shard-0-of-1")
    _kill(p)
    with folder_lock(out, "after", part="shard-0-of-1") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()
    # a holder on another machine cannot be checked: refused, saying which file to delete
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x", "what": "run"}))
    with (
        pytest.raises(
            FolderLockedError, match=rf"if that run is gone, delete {re.escape(str(path))}"
        ),
        folder_lock(out, part="shard-0-of-1"),
    ):
        pass


def test_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"`part` must be letters, digits.*got '\.\./x'"):
        lock_path(tmp_path, "../x")
    with pytest.raises(ValueError, match="`timeout` must be a finite number >= 0, got -1"):
        _take(tmp_path, timeout=-1)
    with pytest.raises(ValueError, match="`what` must be a non-empty one-line string"):
        _take(tmp_path, "two\nlines")
    assert not list(tmp_path.iterdir())


def test_lock_files_are_not_data(tmp_path: Path) -> None:
    import numpy as np

    save_image(np.zeros((8, 8, 3), np.uint8), tmp_path / "a.png")
    # a killed run's file, and one whose part looks like an image suffix
    (tmp_path / LOCK_NAME).write_text('{"pid": 1}')
    (tmp_path / f"{LOCK_NAME}.png").write_text('{"pid": 1}')
    with folder_lock(tmp_path, part="shard-0-of-1"):
        assert [p.name for p in find_images([tmp_path])] == ["a.png"]
        scan = scan_images([tmp_path])
        assert [p.name for p in scan.files] == ["a.png"] and scan.skipped == []
    assert is_lock_file(tmp_path / LOCK_NAME) and is_lock_file(".facegen.lock.shard-0-of-2")
    assert not is_lock_file("facegen.lock") and not is_lock_file(".facegen.locks")
