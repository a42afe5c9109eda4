"""Dataset runs lock their shard of the output folder: a second run of the same shard fails at
once, shards of one run do not exclude each other, a killed run's lock is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from facegen.errors import FolderLockedError
from facegen.image_io import save_image
from facegen.locks import LOCK_NAME, read_holder
from facegen.pipelines.dataset.build import (
    DatasetSpec,
    build_dataset,
    committed_identities,
    shard_lock,
)
from facegen.pipelines.dataset.export import export
from facegen.pipelines.dataset.run import DatasetConfig, Worker, merge, run_shard

SPEC = DatasetSpec(images_per_identity=1, max_attempts=1, batch_size=1)
IDS = np.eye(4, dtype=np.float32)


class Reached(Exception):
    """Raised by the test generator: the run got past its lock into generating."""


def _reached(out: Path, shard: tuple[int, int], seen: list[dict]) -> object:
    """A generator that records who holds the shard's lock, then stops the run."""

    def generate(vectors: np.ndarray, seeds: list[int], conds: object = None) -> list:
        seen.append(read_holder(out, f"shard-{shard[0]}-of-{shard[1]}") or {})
        raise Reached

    return generate


_HOLDER = """
import sys, time
import numpy as np
from facegen.pipelines.dataset.build import DatasetSpec, build_dataset

def generate(vectors, seeds, conds=None):
    print("generating", flush=True)
    time.sleep(120)

spec = DatasetSpec(images_per_identity=1, max_attempts=1, batch_size=1)
build_dataset(sys.argv[1], np.eye(4, dtype=np.float32), generate, None, spec, shard=(0, 2))
"""


@pytest.fixture
def running(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """A separate process in the middle of a dataset run of shard 0/2 into ``tmp_path/out``."""
    script = tmp_path / "holder.py"
    script.write_text(textwrap.dedent(_HOLDER))
    p = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "out")], stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "generating"
    yield p
    if p.poll() is None:
        p.kill()
    p.wait(timeout=30)


def test_a_second_run_of_a_shard_fails_at_once_until_the_first_is_killed(
    tmp_path: Path, running: subprocess.Popen
) -> None:
    out = tmp_path / "out"
    worker = Worker(_reached(out, (0, 2), []), None, "test-encoder", 4)
    cfg = DatasetConfig(identities=4, images_per_identity=1, attempts=1)
    for attempt in (
        lambda: build_dataset(out, IDS, worker.generate, None, SPEC, shard=(0, 2)),
        lambda: run_shard(out, cfg, (0, 2), worker),
    ):
        with pytest.raises(FolderLockedError) as ei:
            attempt()
        msg = str(ei.value)
        assert "\n" not in msg
        assert msg.startswith(
            f"`{out}{os.sep}` is in use by another facegen run (dataset run, shard 0 of 2, "
        )
        assert f"PID {running.pid} on host " in msg and msg.endswith("wait for it or stop it")
    assert not (out / "config.json").exists()  # refused before touching the folder
    # the other shard of the same run goes on beside it
    seen: list[dict] = []
    with pytest.raises(Reached):
        build_dataset(out, IDS, _reached(out, (1, 2), seen), None, SPEC, shard=(1, 2))
    assert seen[0]["pid"] == os.getpid()
    running.send_signal(signal.SIGKILL)
    running.wait(timeout=30)
    assert read_holder(out, "shard-0-of-2")["pid"] == running.pid  # type: ignore[index]
    seen.clear()
    with pytest.raises(Reached):  # the dead run's lock is taken over
        run_shard(out, cfg, (0, 2), Worker(_reached(out, (0, 2), seen), None, "test-encoder", 4))
    assert seen[0]["pid"] == os.getpid() and seen[0]["what"] == "dataset run, shard 0 of 2"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_a_run_holds_its_shard_and_releases_it_on_an_exception(tmp_path: Path) -> None:
    out = tmp_path / "out"
    inside: list[BaseException | None] = []

    def generate(vectors: np.ndarray, seeds: list[int]) -> list:
        for shard in ((0, 1), (0, 2)):
            try:
                with shard_lock(out, shard):
                    inside.append(None)
            except FolderLockedError as exc:
                inside.append(exc)
        raise Reached

    with pytest.raises(Reached):
        build_dataset(out, IDS, generate, None, SPEC)
    assert isinstance(inside[0], FolderLockedError)  # its own shard: taken
    assert "(dataset run, PID" in str(inside[0])
    assert inside[1] is None  # another shard count: not excluded (same files, same bytes)
    assert not (out / f"{LOCK_NAME}.shard-0-of-1").exists()
    with shard_lock(out, (0, 1)):
        pass


def test_lock_files_are_not_read_as_data(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    cfg = DatasetConfig(identities=2, images_per_identity=1, attempts=1)
    out.mkdir()
    (out / "config.json").write_text(json.dumps(cfg.to_dict()))
    journal = out / "journal" / "shard-0-of-1.jsonl"
    journal.parent.mkdir()
    with open(journal, "w") as f:
        for i in range(2):
            save_image(
                np.full((112, 112, 3), 40 * i, np.uint8), out / "images" / f"{i:06d}" / "0000.png"
            )
            rec = {"identity": i, "status": "done", "rejections": [], "images": [{"index": 0}]}
            f.write(json.dumps(rec) + "\n")
    # a killed run's lock files, one of every kind, beside the data
    for name in ("", ".shard-0-of-1", ".prepare", ".export", ".png"):
        (out / f"{LOCK_NAME}{name}").write_text('{"pid": 1, "what": "dataset run"}')
    (out / "images" / LOCK_NAME).write_text("{}")
    assert [r["identity"] for r in committed_identities(out)] == [0, 1]
    files = export(out, ["imagefolder"])
    assert files and not [p for p in (out / "export").rglob("*") if "lock" in p.name]
    merged = merge(tmp_path / "merged", [out])
    assert merged["complete"] and merged["images"] == 2
    assert not [p for p in (tmp_path / "merged").rglob("*") if "lock" in p.name]
