"""The distribution: layer rule, and a built wheel that installs and imports on its own."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = {  # folder → import names it must NOT use (imports only go down the stack)
    "facegen": ["facegen.adapters", "facegen.pipelines", "facegen.training", "facegen.app"],
    "adapters": ["facegen.pipelines", "facegen.training", "facegen.app"],
    "pipelines": ["facegen.training", "facegen.app"],
    "training": ["facegen.app"],
}
SUBPACKAGES = [
    "facegen",
    "facegen.adapters",
    "facegen.pipelines",
    "facegen.training",
    "facegen.app",
]


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_imports_only_go_down(folder: str) -> None:
    pattern = re.compile(
        r"^\s*(?:from|import)\s+(" + "|".join(re.escape(m) for m in LAYERS[folder]) + r")\b", re.M
    )
    bad = [
        f"{p.relative_to(REPO)}: {m.group(0).strip()}"
        for p in (REPO / folder).rglob("*.py")
        for m in pattern.finditer(p.read_text(encoding="utf-8"))
    ]
    assert not bad, "layer rule broken:\n" + "\n".join(bad)


def test_core_import_is_light() -> None:
    """Importing facegen must not pull in torch, dlib, onnxruntime or gradio."""
    code = (
        "import sys, facegen, facegen.backends, facegen.hub, facegen.analyzer;"
        "heavy = [m for m in ('torch', 'dlib', 'onnxruntime', 'gradio', 'diffusers') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_wheel_installs_and_imports_in_a_fresh_venv(tmp_path: Path) -> None:
    # build from a copy of the sources so that no build/ folder lands in the checkout
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for folder in ("facegen", "adapters", "pipelines", "training", "app"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(dist),
            str(src),
        ],
        cwd=src,
        check=True,
        capture_output=True,
        text=True,
    )
    wheels = list(dist.glob("facegen-*.whl"))
    assert len(wheels) == 1
    import zipfile

    names = zipfile.ZipFile(wheels[0]).namelist()
    for sub in ("facegen/adapters/__init__.py", "facegen/app/cli.py", "facegen/py.typed"):
        assert sub in names, f"{sub} missing from the wheel"
    assert not any(n.startswith("tests/") for n in names)
    venv = tmp_path / "venv"
    # dependencies come from this environment; the wheel itself must carry every subpackage
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
        cwd=tmp_path,
        check=True,
    )
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheels[0])],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    code = (
        "import importlib, facegen;"
        f"[importlib.import_module(m) for m in {SUBPACKAGES!r}];"
        "print(facegen.__file__)"
    )
    out = subprocess.run(
        [str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert str(venv) in out.stdout, f"imported the wrong facegen: {out.stdout}"
    cli = subprocess.run(
        [str(venv / "bin" / "facegen"), "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert cli.returncode == 0 and "analyze" in cli.stdout
