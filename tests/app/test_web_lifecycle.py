"""The web app's files: nothing of a user's stays on disk after a session ends or the app
is stopped (SIGTERM like docker stop / systemd / kill), unless ``--keep-outputs`` asks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from facegen.app.web_services import Services, SessionState

CLI = "import sys; from facegen.app.cli import main; sys.exit(main(sys.argv[1:]))"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


def _start(tmp_root: Path, port: int, *extra: str) -> tuple[subprocess.Popen[str], list[str]]:
    env = {**os.environ, "TMPDIR": str(tmp_root), "HF_HUB_OFFLINE": "1"}
    env.pop("GRADIO_TEMP_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, "app", "--preset", "tiny", "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 180
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "facegen app on http" in line:
            return proc, lines
    proc.kill()
    raise AssertionError("the app did not start:\n" + "".join(lines))


def _anonymize(port: int, photo: Path) -> Any:
    from gradio_client import Client, handle_file

    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    return client.predict(
        [handle_file(str(photo))], "blur", "all", 0.25, 8, "hull", "tiny", 0, 2,
        api_name="/anonymize",
    )  # fmt: skip


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_stopping_with_a_signal_deletes_every_user_file(
    tmp_path: Path, hanks_path: Path, sig: str
) -> None:
    root = tmp_path / "tmp"
    root.mkdir()
    port = _free_port()
    proc, lines = _start(root, port)
    try:
        gallery, *_ = _anonymize(port, hanks_path)
        assert len(gallery) == 1
        during = _files(root)
        # the upload, Gradio's cached copies and the outputs are on disk while it runs
        assert any(p.name == hanks_path.name for p in during), during
        assert any(p.suffix == ".zip" for p in during), during
        proc.send_signal(getattr(signal, sig))
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(lines) + (proc.stdout.read() if proc.stdout else "")
    assert _files(root) == []


def test_keep_outputs_keeps_the_outputs_only(tmp_path: Path, hanks_path: Path) -> None:
    root, keep = tmp_path / "tmp", tmp_path / "kept"
    root.mkdir()
    port = _free_port()
    proc, _ = _start(root, port, "--keep-outputs", str(keep))
    try:
        _anonymize(port, hanks_path)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _files(root) == []  # uploads and Gradio's copies are gone
    kept = _files(keep)
    assert any(p.suffix == ".zip" for p in kept) and any(p.suffix == ".png" for p in kept)
    assert not any(p.name == hanks_path.name for p in kept)  # not the upload itself


def test_a_busy_port_is_one_line_and_no_url(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-c", CLI, "app", "--preset", "tiny", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 1
    assert "http://" not in run.stdout
    err = run.stderr.strip().splitlines()
    assert len(err) == 1 and f"cannot listen on 127.0.0.1:{port}" in err[0], run.stderr


def test_ending_a_session_deletes_its_uploads_cached_copies_and_outputs(tmp_path: Path) -> None:
    from gradio.processing_utils import hash_file

    def session(services: Services, tag: str) -> tuple[SessionState, list[Path]]:
        state = SessionState()
        upload = services.gradio_cache / f"upload-{tag}" / "me.jpg"
        upload.parent.mkdir()
        upload.write_bytes(b"a photo " + tag.encode())
        state.uploads.append(str(upload))
        out = services.run_dir(state, "swap") / "result.png"
        out.write_bytes(b"an output " + tag.encode())
        copy = services.gradio_cache / hash_file(out) / out.name  # what Gradio serves
        copy.parent.mkdir()
        copy.write_bytes(out.read_bytes())
        return state, [upload, out, copy]

    services = Services(default_preset="tiny", presets=["tiny"])
    other_state, other = session(services, "other")
    state, mine = session(services, "mine")
    outside = tmp_path / "not-ours.txt"
    outside.write_text("x")
    state.uploads.append(str(outside))  # never deleted: not inside the app's folders
    services.drop_session(state)
    assert not any(p.exists() for p in mine) and outside.exists()
    assert not Path(state.workspace or "").exists()
    assert all(p.exists() for p in other)  # another session's files stay
    services.close()
    assert not services.gradio_cache.exists() and not services.output_root.exists()
    del other_state

    kept = Services(
        default_preset="tiny", presets=["tiny"], output_root=tmp_path / "k", keep_outputs=True
    )
    state, (upload, out, copy) = session(kept, "kept")
    kept.drop_session(state)
    assert not upload.exists() and not copy.exists() and out.exists()
    kept.close()
    assert out.exists() and not kept.gradio_cache.exists()
