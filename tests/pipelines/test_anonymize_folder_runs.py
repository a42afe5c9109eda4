"""Folder anonymization runs: the output folder's lock, outputs checked by hash on rerun,
one report line per input, and inputs that cannot be read."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import facegen.image_io as image_io
from facegen.errors import FolderLockedError
from facegen.image_io import save_image
from facegen.locks import LOCK_NAME, read_holder
from facegen.pipelines.editing.anonymize_folder import REPORT_NAME, anonymize_folder
from facegen.types import Face


class StubAnalyzer:
    """Returns fixed faces (the astronaut's, found once by dlib) for every image."""

    class detector:  # mirrors FaceAnalyzer.detector
        name = "stub"
        score_threshold = 0.0

    def __init__(self, faces: list[Face], error: BaseException | None = None) -> None:
        self.faces = faces
        self.error = error

    def detect(self, image: np.ndarray) -> list[Face]:
        if self.error is not None:
            raise self.error
        return list(self.faces)


@pytest.fixture(scope="module")
def stub(dlib_analyzer: Any, astronaut: np.ndarray) -> StubAnalyzer:
    faces = dlib_analyzer.analyze(astronaut)
    assert len(faces) == 1
    return StubAnalyzer(faces)


@pytest.fixture
def tree(tmp_path: Path, astronaut: np.ndarray) -> Path:
    root = tmp_path / "in"
    for rel in ("a.png", "b.png", "c.png", "sub/d.png"):
        save_image(astronaut, root / rel)
    return root


def _lines(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / REPORT_NAME).read_text().splitlines()]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------ lock

_HOLDER = """
import sys, time
from facegen.pipelines.editing.anonymize_folder import anonymize_folder

class Slow:
    class detector:
        name = "slow"
        score_threshold = 0.0

    def detect(self, image):
        print("holding", flush=True)
        time.sleep(120)
        return []

anonymize_folder(sys.argv[1], sys.argv[2], Slow(), watermark=False)
"""


def test_a_second_run_into_the_folder_fails_at_once_until_the_first_is_killed(
    tree: Path, tmp_path: Path, stub: StubAnalyzer
) -> None:
    script = tmp_path / "holder.py"
    script.write_text(textwrap.dedent(_HOLDER))
    out = tmp_path / "out"
    p = subprocess.Popen(
        [sys.executable, str(script), str(tree), str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "holding"
        with pytest.raises(FolderLockedError) as ei:
            anonymize_folder(tree, out, stub, watermark=False)
        msg = str(ei.value)
        assert "\n" not in msg
        assert msg.startswith(f"`{out}{os.sep}` is in use by another facegen run (anonymize run, ")
        assert f"PID {p.pid} on host " in msg and msg.endswith("; wait for it or stop it")
        assert not (out / REPORT_NAME).exists() or _lines(out) == []  # nothing was touched
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    assert read_holder(out)["pid"] == p.pid  # type: ignore[index]  # left by the killed run
    rep = anonymize_folder(tree, out, stub, watermark=False)  # the stale lock is taken over
    assert (rep.total, rep.done) == (4, 4)
    assert not (out / LOCK_NAME).exists()


def test_the_lock_is_released_after_an_exception(
    tree: Path, tmp_path: Path, stub: StubAnalyzer
) -> None:
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        anonymize_folder(tree, out, StubAnalyzer([], error=KeyboardInterrupt()))
    assert not (out / LOCK_NAME).exists()
    assert anonymize_folder(tree, out, stub, watermark=False).done == 4


def test_a_lock_file_in_the_input_is_not_an_input(
    tree: Path, tmp_path: Path, stub: StubAnalyzer
) -> None:
    # a killed run's lock file, in a folder that is now someone's input
    (tree / LOCK_NAME).write_text('{"pid": 1, "what": "anonymize run"}')
    (tree / f"{LOCK_NAME}.png").write_text("{}")
    rep = anonymize_folder(tree, tree / "anon", stub, watermark=False)
    assert sorted(r["input"] for r in rep.records) == ["a.png", "b.png", "c.png", "sub/d.png"]
    assert rep.errors == 0


# ------------------------------------------------------------------------ reruns and report


def test_rerun_redoes_changed_and_missing_outputs_and_keeps_one_line_per_input(
    tree: Path, tmp_path: Path, stub: StubAnalyzer
) -> None:
    out = tmp_path / "out"
    first = anonymize_folder(tree, out, stub, watermark=False)
    assert first.done == 4
    for rec in first.records:
        assert rec["output_sha256"] == _sha(out / rec["output"])
    corrupt, deleted = out / "b.png", out / "sub" / "d.png"
    kept = [out / "a.png", out / "c.png"]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept}
    good = corrupt.read_bytes()
    corrupt.write_bytes(b"\x00" * 16 + good[16:])  # same size, other bytes
    deleted.unlink()
    again = anonymize_folder(tree, out, stub, watermark=False)
    assert (again.done, again.skipped, again.errors) == (2, 2, 0)
    assert sorted(r["input"] for r in again.records) == ["b.png", "sub/d.png"]
    assert corrupt.read_bytes() == good and deleted.is_file()
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept} == before  # not rewritten
    lines = _lines(out)
    assert sorted(r["input"] for r in lines) == ["a.png", "b.png", "c.png", "sub/d.png"]
    assert all(
        r["status"] == "done" and r["output_sha256"] == _sha(out / r["output"]) for r in lines
    )
    # a third run finds everything finished and leaves the report as it is
    report = (out / REPORT_NAME).read_bytes()
    assert anonymize_folder(tree, out, stub, watermark=False).skipped == 4
    assert (out / REPORT_NAME).read_bytes() == report


def test_a_record_without_a_hash_is_not_trusted(
    tree: Path, tmp_path: Path, stub: StubAnalyzer
) -> None:
    out = tmp_path / "out"
    anonymize_folder(tree, out, stub, watermark=False)
    old = []
    for rec in _lines(out):  # as an earlier facegen wrote it
        del rec["output_sha256"]
        old.append(json.dumps(rec) + "\n")
    (out / REPORT_NAME).write_text("".join(old + old[:2]))  # and a crash left duplicates
    rep = anonymize_folder(tree, out, stub, watermark=False)
    assert (rep.done, rep.skipped) == (4, 0)
    assert len(_lines(out)) == 4


# ------------------------------------------------------------------- entries that can't be read


def test_link_loops_and_unreadable_entries_are_reported(
    tree: Path, tmp_path: Path, stub: StubAnalyzer, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tree / "sub" / "up").symlink_to("..", target_is_directory=True)  # sub/up -> in/
    (tree / "gone.png").symlink_to(tree / "nowhere.png")
    locked = tree / "locked"
    locked.mkdir()
    shutil.copy(tree / "a.png", locked / "e.png")
    # tests run as root, where chmod 000 does not stop reading: simulate the refusals
    real_scandir, real_open = os.scandir, os.open

    def scandir(path):  # type: ignore[no-untyped-def]
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    def open_(path, flags, *args):  # type: ignore[no-untyped-def]
        if Path(path) == tree / "c.png":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(image_io.os, "scandir", scandir)
    monkeypatch.setattr(image_io.os, "open", open_)
    out = tmp_path / "out"
    for _ in range(2):  # and again: reported again, one line each
        rep = anonymize_folder(tree, out, stub, watermark=False)
        recs = {r["input"]: r for r in _lines(out)}
        assert sorted(recs) == [
            "a.png",
            "b.png",
            "c.png",
            "gone.png",
            "locked",
            "sub/d.png",
            "sub/up",
        ]
        reasons = {k: r["reason"] for k, r in recs.items() if r["reason"]}
        assert reasons == {
            "c.png": "unreadable",
            "gone.png": "unreadable",
            "locked": "unreadable",
            "sub/up": "symlink_loop",
        }
        for k in reasons:
            assert recs[k]["status"] == "error" and recs[k]["output"] is None
            assert recs[k]["error"].startswith(f"{k}: ")
        assert "Permission denied" in recs["locked"]["error"]
        assert rep.total == 7 and rep.errors == 4
    assert (rep.done, rep.skipped) == (0, 3)
