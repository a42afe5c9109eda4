"""``facegen.pipelines`` exports its public names lazily, each from the module defining it."""

from __future__ import annotations

import subprocess
import sys

import pytest

import facegen.pipelines as pipelines


@pytest.mark.parametrize("name", pipelines.__all__)
def test_every_exported_name_resolves_to_its_definition(name: str) -> None:
    import importlib

    value = getattr(pipelines, name)
    module = importlib.import_module(pipelines._EXPORTS[name])
    assert value is getattr(module, name)
    assert name in dir(pipelines)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'from_presett'"):
        pipelines.from_presett  # noqa: B018


def test_importing_the_package_loads_no_torch() -> None:
    code = (
        "import sys, facegen.pipelines;"
        "print(','.join(m for m in ('torch', 'diffusers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_all_lists_exactly_the_exported_names() -> None:
    assert sorted(pipelines.__all__) == sorted(pipelines._EXPORTS)
    assert len(set(pipelines.__all__)) == len(pipelines.__all__)
