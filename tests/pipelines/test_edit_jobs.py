"""The edit jobs the CLI and the web app share: output names, records that fit, and one job
making the same file and record whichever surface asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from facegen.app.cli.main import main
from facegen.image_io import load_image, save_image
from facegen.pipelines.editing.anonymize import AnonymizeOptions, FaceReplacement
from facegen.pipelines.editing.anonymize_folder import anonymize_folder
from facegen.pipelines.editing.jobs import (
    anonymize_file,
    edit_analyzer,
    load_edit_pipeline,
    output_name,
    save_edited,
    swap_file,
)
from facegen.pipelines.editing.options import EditOptions
from facegen.provenance import read_provenance


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


@pytest.mark.parametrize(
    ("name", "fmt", "expected"),
    [
        ("a.jpg", None, "a.jpg"),
        ("a.JPEG", None, "a.JPEG"),
        ("sub/a.bmp", None, "sub/a.png"),
        ("a.jpeg", "jpg", "a.jpeg"),
        ("a.jpg", "png", "a.png"),
        ("a.png", "webp", "a.webp"),
    ],
)
def test_output_names(name: str, fmt: str | None, expected: str) -> None:
    assert output_name(name, fmt) == expected


def test_a_record_too_large_for_the_file_keeps_its_settings(tmp_path: Path) -> None:
    image = np.full((80, 80, 3), 128, np.uint8)
    record = {"settings": "kept", "faces": [{"index": k, "pad": "x" * 200} for k in range(100)]}
    path = save_edited(image, tmp_path / "big.png", "test", record, watermark=False)
    params = read_provenance(path).params
    assert params["settings"] == "kept" and params["faces"].startswith("100 faces")


def test_a_file_and_a_folder_record_the_same_anonymization(
    tmp_path: Path, astronaut: np.ndarray, dlib_analyzer: Any
) -> None:
    options = AnonymizeOptions(mode="pixelate", pixel_blocks=6)
    folder = tmp_path / "in"
    save_image(astronaut, folder / "astro.png")
    job = anonymize_file(
        folder / "astro.png", tmp_path / "one" / "astro.png", dlib_analyzer, options,
        watermark=False,
    )  # fmt: skip
    anonymize_folder(folder, tmp_path / "all", dlib_analyzer, options, watermark=False)
    one, many = (
        read_provenance(p / "astro.png").params for p in (tmp_path / "one", tmp_path / "all")
    )
    assert one == many == _json(job.record)
    assert one["anonymize"] == options.to_dict() and one["source"] == "astro.png"
    assert np.array_equal(load_image(job.path), load_image(tmp_path / "all" / "astro.png"))


def test_a_replacement_hook_is_recorded_with_its_settings(
    t1_image: np.ndarray, dlib_analyzer: Any, tmp_path: Path
) -> None:
    def invert(image: np.ndarray, face: Any, mask: np.ndarray) -> Any:
        from facegen.pipelines.editing.anonymize import GeneratedFace

        return GeneratedFace(255 - image, True, 0.1, "test")

    hook = FaceReplacement(invert, {"preset": "test-double"})
    generate = AnonymizeOptions(mode="generate", faces="largest")
    job = anonymize_file(
        t1_image, tmp_path / "t1.png", dlib_analyzer, generate, replace_face=hook, source="t1"
    )
    assert job.record["anonymize"]["generator"] == {"preset": "test-double"}
    assert job.record["faces"][0]["mode"] == "generate"
    blur = anonymize_file(
        t1_image, tmp_path / "b.png", dlib_analyzer, AnonymizeOptions(), replace_face=hook
    )
    assert "generator" not in blur.record["anonymize"]  # the hook was not used


def test_the_cli_writes_what_the_library_job_writes(tmp_path: Path, t1_path: Path) -> None:
    from facegen.pipelines.identities import sample_identities

    ids = sample_identities(1, seed=1)
    ids.save(tmp_path / "src.safetensors")
    out = tmp_path / "cli"
    args = ["swap", "--source", str(tmp_path / "src.safetensors"), "--target", str(t1_path)]
    args += ["--preset", "tiny", "--steps", "2", "--faces", "1", "--seed", "3", "--out", str(out)]
    assert main(args) == 0
    job = swap_file(
        t1_path, ids.embeddings()[0], tmp_path / "lib" / "t1.jpg", load_edit_pipeline("tiny"),
        edit_analyzer(), 1, EditOptions(seed=3, num_inference_steps=2),
        source_name="src.safetensors",
    )  # fmt: skip
    record = read_provenance(out / "t1.jpg").params
    assert record == _json(job.record)
    assert record["target"] == "t1.jpg" and record["preset"] == "tiny"
    assert record["options"]["seed"] == 3 and record["selection"] == 1
    assert record["faces"][0]["face"] == 1 and record["faces"][0]["seed"] == 3
    assert np.array_equal(load_image(out / "t1.jpg"), load_image(job.path))
    report = json.loads((out / "swap_report.json").read_text())
    assert report["images"][0]["faces"] == record["faces"]
