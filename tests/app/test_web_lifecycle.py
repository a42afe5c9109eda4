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

from facegen.app.web.services import Services, SessionState

CLI = "import sys; from facegen.app.cli.main import main; sys.exit(main(sys.argv[1:]))"


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
        [handle_file(str(photo))],
        "blur",
        "all",
        0.25,
        8,
        "hull",
        "tiny",
        0,
        2,
        api_name="/anonymize",
    )


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
    (run,) = keep.iterdir()  # one folder of this run: the app never serves the rest of DIR
    assert run.name.startswith("facegen-app-")
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


def test_ending_a_session_deletes_what_only_it_holds(tmp_path: Path) -> None:
    import hashlib

    from gradio.processing_utils import hash_file

    from facegen.app.web.files import human_errors

    services = Services(default_preset="tiny", presets=["tiny"])
    services.retry_drop_s = 0.05

    def upload(content: bytes, name: str = "me.jpg") -> Path:
        # where Gradio stores an upload: <cache>/<sha256 of the content>/<name>
        p = services.gradio_cache / hashlib.sha256(content).hexdigest() / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(content)
        return p

    @human_errors("Test")
    def handler(photo: str, prompt: str, state: SessionState) -> None:
        out = services.run_dir(state, "op") / "result.png"
        out.write_bytes(b"output of " + Path(photo).read_bytes())
        copy = services.gradio_cache / hash_file(out) / out.name  # what Gradio serves
        copy.parent.mkdir(exist_ok=True)
        copy.write_bytes(out.read_bytes())

    outside = tmp_path / "not-an-upload.txt"
    outside.write_text("x")
    shared, own = upload(b"the same photo"), upload(b"only mine")
    a, b = SessionState(), SessionState()
    handler(str(shared), str(outside), a)  # a prompt naming a file is not an upload
    handler(str(own), "", a)
    handler(str(shared), "", b)  # same bytes: same upload, same output, as Gradio stores them
    assert a.uploads == [str(shared.resolve()), str(own.resolve())]
    a_out = sorted(Path(a.workspace or "").rglob("*.png"))  # 0001-op, then 0002-op
    shared_copy = services.gradio_cache / hash_file(a_out[0])
    own_copy = services.gradio_cache / hash_file(a_out[1])

    services.drop_session(a)
    assert not Path(a.workspace or "").exists() and outside.exists()
    assert not own.exists() and not own_copy.exists()  # only a held these
    assert shared.exists() and shared_copy.exists()  # b holds the same upload and output
    b.busy = 1  # a job of b is running: its end waits for it
    services.drop_session(b)
    assert shared.exists() and Path(b.workspace or "").exists()
    b.busy = 0
    deadline = time.monotonic() + 10
    while Path(b.workspace or "").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the workspace goes last
    assert not shared.exists() and not shared_copy.exists()
    assert not Path(b.workspace or "").exists()
    services.close()
    assert not services.gradio_cache.exists() and not services.output_root.exists()

    kept = Services(
        default_preset="tiny", presets=["tiny"], output_root=tmp_path / "k", keep_outputs=True
    )
    services = kept
    c = SessionState()
    photo = upload(b"kept photo")
    handler(str(photo), "", c)
    (out,) = Path(c.workspace or "").rglob("*.png")
    kept.drop_session(c)
    assert not photo.exists() and not (kept.gradio_cache / hash_file(out)).exists()
    assert out.exists()
    kept.close()
    assert out.exists() and not kept.gradio_cache.exists()
