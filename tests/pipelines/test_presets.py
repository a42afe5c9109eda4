"""Presets declare what they can do; the declaration matches the pipeline they build."""

from __future__ import annotations

import pytest

from facegen.errors import UnknownNameError
from facegen.pipelines.generation.presets import (
    PRESETS,
    PresetInfo,
    preset_info,
    preset_names,
)


def test_every_registered_preset_declares_its_capabilities() -> None:
    for name in PRESETS.names():
        info = preset_info(name)
        assert isinstance(info, PresetInfo)
        assert info.name == name
        assert info.description == PRESETS.get(name).description
        assert info.license


def test_unknown_preset_lists_the_registered_names() -> None:
    with pytest.raises(UnknownNameError) as err:
        preset_info("arc2fase")
    for name in PRESETS.names():
        assert name in str(err.value)


def test_preset_names_filter_by_capability() -> None:
    control = preset_names(controlnet="built-in")
    assert control and all(preset_info(n).needs_control_image for n in control)
    assert set(preset_names(inpainting=True)).isdisjoint(preset_names(inpainting=False))
    assert set(preset_names(takes_prompt=True)) | set(preset_names(takes_prompt=False)) == set(
        PRESETS.names()
    )
    doubles = preset_names(test_double=True)
    assert doubles and all(preset_info(n).family == "tiny" for n in doubles)


def test_bad_declarations_are_refused() -> None:
    good = preset_info("tiny")
    with pytest.raises(ValueError, match="controlnet"):
        PresetInfo(**{**good.__dict__, "controlnet": "maybe"})
    with pytest.raises(ValueError, match="family"):
        PresetInfo(**{**good.__dict__, "family": "sdxl"})


@pytest.mark.parametrize("name", preset_names(test_double=True))
def test_built_pipeline_matches_its_declaration(name: str) -> None:
    from facegen.pipelines.generation.presets import from_preset

    pipe = from_preset(name)
    info = preset_info(name)
    assert pipe.preset_info is info
    assert pipe.takes_prompt is info.takes_prompt
    assert pipe.inpainting is info.inpainting
    assert pipe.identity_spec == info.identity
    assert pipe.default_steps == info.default_steps
    assert pipe.default_guidance == info.default_guidance
    has_controlnet = getattr(pipe, "controlnet", None) is not None
    assert has_controlnet == info.needs_control_image
