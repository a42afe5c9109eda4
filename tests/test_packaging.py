"""The distribution: layer rule, and a built wheel that installs and imports on its own."""

from __future__ import annotations

import ast
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


#: folder → the import name it installs as
PACKAGES = {
    "facegen": "facegen",
    "adapters": "facegen.adapters",
    "pipelines": "facegen.pipelines",
    "training": "facegen.training",
    "app": "facegen.app",
}


def imported_modules(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """Every module ``source`` (the code of ``module``) imports, relative imports resolved.

    ``from facegen import pipelines`` counts as importing ``facegen.pipelines`` (as well as
    ``facegen``), so the layer rule cannot be dodged by importing a subpackage by name.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append(target)
            found.extend(f"{target}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def _breaks(name: str, forbidden: list[str]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


def test_layer_checker_sees_every_import_form() -> None:
    forbidden = LAYERS["facegen"]
    sources = [
        "from facegen import pipelines",
        "from facegen import hub, app as application",
        "from facegen import (\n    types,\n    adapters,\n)",
        "import facegen.training.loop",
        "import facegen.pipelines as p",
        "from facegen.app.cli.main import main",
        "def f():\n    from .. import pipelines",
    ]
    for src in sources:
        names = imported_modules(src, "facegen.backends.x")
        assert any(_breaks(n, forbidden) for n in names), src
    assert imported_modules("from ..pipelines import x", "facegen.adapters.y") == [
        "facegen.pipelines",
        "facegen.pipelines.x",
    ]
    assert imported_modules("from . import z", "facegen.adapters", is_package=True) == [
        "facegen.adapters",
        "facegen.adapters.z",
    ]
    fine = "from facegen import hub, types\nimport facegen.align\nfrom facegen.apps import x"
    assert not any(_breaks(n, forbidden) for n in imported_modules(fine, "facegen.x"))


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_imports_only_go_down(folder: str) -> None:
    bad = []
    for p in sorted((REPO / folder).rglob("*.py")):
        rel = p.relative_to(REPO / folder).with_suffix("")
        parts = [PACKAGES[folder], *rel.parts]
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        for name in imported_modules(p.read_text(encoding="utf-8"), module, is_package=is_package):
            if _breaks(name, LAYERS[folder]):
                bad.append(f"{p.relative_to(REPO)}: imports {name}")
    assert not bad, "layer rule broken:\n" + "\n".join(bad)


#: inside a layer, sub-package → sub-packages it must not import (the same one-way rule)
SUBLAYERS = {
    "facegen.pipelines.identities": ["facegen.pipelines.generation", "facegen.pipelines.editing",
                                     "facegen.pipelines.dataset"],
    "facegen.pipelines.generation": ["facegen.pipelines.editing", "facegen.pipelines.dataset"],
    "facegen.pipelines.editing": ["facegen.pipelines.dataset"],
    "facegen.training.fr": ["facegen.training.diffusion"],
    "facegen.app.web": ["facegen.app.cli"],
}  # fmt: skip


def module_graph() -> dict[str, set[str]]:
    """Every facegen module → the facegen modules it imports (function-level imports too).

    Names are mapped to modules through the package mapping; ``from pkg import name``
    counts as an edge to ``pkg.name`` when that is a module, else to ``pkg``.
    """
    sources: dict[str, tuple[Path, bool]] = {}
    for folder, package in PACKAGES.items():
        for p in sorted((REPO / folder).rglob("*.py")):
            rel = p.relative_to(REPO / folder).with_suffix("")
            parts = [package, *rel.parts]
            is_package = parts[-1] == "__init__"
            sources[".".join(parts[:-1] if is_package else parts)] = (p, is_package)
    graph: dict[str, set[str]] = {}
    for module, (path, is_package) in sources.items():
        edges = graph.setdefault(module, set())
        for name in imported_modules(
            path.read_text(encoding="utf-8"), module, is_package=is_package
        ):
            while name and name not in sources:
                name = name.rpartition(".")[0]
            if name and name != module:
                edges.add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    found = cycles(module_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_sub_packages_import_one_way() -> None:
    bad = [
        f"{module} imports {name}"
        for module, edges in module_graph().items()
        for sub, forbidden in SUBLAYERS.items()
        if _breaks(module, [sub])
        for name in edges
        if _breaks(name, forbidden)
    ]
    assert not bad, "sub-package rule broken:\n" + "\n".join(bad)


def test_every_package_folder_is_listed_in_pyproject() -> None:
    import tomllib

    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = set()
    for folder, package in PACKAGES.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([package, *rel.parts]))
    assert found == listed


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
    for sub in ("facegen/adapters/__init__.py", "facegen/app/cli/main.py", "facegen/py.typed"):
        assert sub in names, f"{sub} missing from the wheel"
    assert not any(n.startswith("tests/") for n in names)
    # the shipped generator travels inside the wheel, every file its preset names
    demo = REPO / "facegen" / "models" / "demo-orl"
    if demo.is_dir():
        from facegen import hub

        for f in hub.get_preset("demo-orl").files:
            assert f"facegen/models/demo-orl/{f}" in names, f"demo-orl's {f} missing from the wheel"
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
    if demo.is_dir():
        code = (
            "from facegen import hub;"
            "from facegen.pipelines.generation.preset_builders import demo_orl_present;"
            "st = hub.status('demo-orl');"
            "print(demo_orl_present(), all(st.values()), sorted(set(st.values()) - {None}))"
        )
        found = subprocess.run(
            [str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True
        )
        assert found.stdout.startswith("True True") and str(venv) in found.stdout, found.stdout
    cli = subprocess.run(
        [str(venv / "bin" / "facegen"), "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert cli.returncode == 0 and "analyze" in cli.stdout
