"""The CLI and the web app run the same generate job: one seed and preset give the same
people, the same pixels, the same file names and the same records on both surfaces."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from web_testing import TINY_PRESETS, free_port, tiny_factory

from facegen.analyzer import FaceAnalyzer
from facegen.app.cli.main import main
from facegen.app.web.app import launch_app
from facegen.app.web.services import Services
from facegen.image_io import load_image
from facegen.provenance import read_provenance
from facegen.samples import sample_path

SEED = 1234
STEPS = 2


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Any:
    dlib = FaceAnalyzer.from_names("dlib", "dlib68", "dlib")
    services = Services(
        default_preset="tiny",
        presets=TINY_PRESETS,
        pipeline_factory=tiny_factory(dlib),
        analyzer=dlib,
        output_root=tmp_path_factory.mktemp("same-seed") / "outputs",
    )
    demo = launch_app(services, port=free_port(), block=False, quiet=True)
    try:
        yield SimpleNamespace(client=Client(demo.local_url, verbose=False))
    finally:
        demo.close()
        services.close()


def _web(client: Client, api: str, *, n: int, preset: str, prompt: str = "", **extra: Any) -> Any:
    """The Generate (or Control) tab with a random identity, seed SEED."""
    args = ["random", None, "largest", None, 0, preset, n, SEED, False, STEPS, None, prompt]
    if "reference" in extra:
        args.insert(5, extra["reference"])
    return client.predict(*args, api_name=api)


def _cli(out: Path, *, n: int, preset: str, extra: tuple[str, ...] = ()) -> list[Path]:
    code = main(
        ["generate", "--random-identities", "1", "--num-images", str(n), "--preset", preset,
         "--seed", str(SEED), "--steps", str(STEPS), *extra, "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    records = json.loads((out / "manifest.json").read_text())["images"]
    return [out / r["file"] for r in records]


def _same_outputs(cli_files: list[Path], web_files: list[str]) -> None:
    assert [Path(f).name for f in web_files] == [p.name for p in cli_files]
    assert cli_files[0].name == f"id0000_img000_seed{SEED}.png"
    for ours, theirs in zip(cli_files, web_files):
        np.testing.assert_array_equal(load_image(ours), load_image(theirs))
        a, b = read_provenance(ours), read_provenance(theirs)
        assert a is not None and b is not None and a.operation == b.operation
        # the same record, except what each surface's analyzers measured afterwards and
        # the pose photo's name (the CLI records its path, the web app the upload's name)
        drop = ("identity_similarity", "pose_reference")
        assert Path(a.params.get("pose_reference", "")).name == b.params.get("pose_reference", "")
        assert {k: v for k, v in a.params.items() if k not in drop} == {
            k: v for k, v in b.params.items() if k not in drop
        }


def test_random_identity_gives_the_same_images_in_the_cli_and_the_web_app(
    web: Any, tmp_path: Path
) -> None:
    cli = _cli(tmp_path / "cli", n=2, preset="tiny")
    _, _, files, *_ = _web(web.client, "/generate", n=2, preset="tiny")
    _same_outputs(cli, files)
    assert not np.array_equal(load_image(cli[0]), load_image(cli[1]))  # seeds SEED, SEED + 1
    params = read_provenance(cli[0]).params
    assert params["identity"] == {"random_identity_seed": SEED, "random_identity_index": 0}
    assert params["identity_source"] == "random" and params["seed"] == SEED


def test_pose_reference_gives_the_same_images_in_the_cli_and_the_web_app(
    web: Any, tmp_path: Path
) -> None:
    astronaut = sample_path("astronaut")
    cli = _cli(
        tmp_path / "cli", n=1, preset="tiny-controlnet", extra=("--pose-from", str(astronaut))
    )
    res = _web(
        web.client, "/control_generate", n=1, preset="tiny-controlnet",
        reference=handle_file(str(astronaut)),
    )  # fmt: skip
    _same_outputs(cli, res[2])
    with zipfile.ZipFile(res[3]) as zf:  # the page shows the map re-encoded; the zip has it
        web_control = load_image(zf.read("control.png"))
    np.testing.assert_array_equal(web_control, load_image(tmp_path / "cli" / "control.png"))
    assert read_provenance(cli[0]).operation == "control"


def test_a_prompt_on_an_identity_only_preset_is_refused_by_both(
    web: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message = "`prompt` must not be given: preset 'tiny' is identity-only"
    assert main(
        ["generate", "--random-identities", "1", "--preset", "tiny", "--prompt", "a cat",
         "--out", str(tmp_path / "o")]
    ) == 1  # fmt: skip
    assert message in capsys.readouterr().err
    with pytest.raises(AppError, match=message):
        _web(web.client, "/generate", n=1, preset="tiny", prompt="a cat")
