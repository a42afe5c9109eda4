"""`facegen doctor`, a quiet start (no torchvision warnings), and the peft/transformers check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from facegen.doctor import STACK, format_report, known_problems


def _facegen(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    code = "import sys; from facegen.app.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_doctor_json_names_every_component() -> None:
    run = _facegen("doctor", "--json")
    assert run.returncode in (0, 1), run.stderr
    report = json.loads(run.stdout)
    assert set(report) >= {
        "facegen",
        "python",
        "platform",
        "packages",
        "torch",
        "onnxruntime",
        "caches",
        "offline",
        "presets",
        "hub_repos",
        "problems",
    }
    assert set(report["packages"]) == set(STACK)
    assert report["packages"]["torch"] and report["packages"]["diffusers"]
    t = report["torch"]
    assert t["importable"] and {"cuda_available", "cuda_devices", "mps_available"} <= set(t)
    assert "CPUExecutionProvider" in report["onnxruntime"]["providers"]
    dlib = next(p for p in report["presets"] if p["name"] == "dlib")
    assert dlib["present"] == dlib["files"] == 4  # shipped on PyPI: found in site-packages
    assert all(Path(w).is_file() for w in dlib["where"].values())
    assert any(r["repo"] == "FoivosPar/Arc2Face" for r in report["hub_repos"])
    assert {"facegen_home", "hf_hub_cache", "insightface_home"} <= set(report["caches"])
    assert isinstance(report["offline"]["offline"], bool)
    # exit code 1 exactly when an error-level problem was found
    errors = [p for p in report["problems"] if p["level"] == "error"]
    assert run.returncode == (1 if errors else 0), errors


def test_doctor_screen_is_one_screen_of_text() -> None:
    run = _facegen("doctor", "--no-presets")
    assert run.returncode in (0, 1), run.stderr
    text = run.stdout
    assert text.startswith("facegen ") and "torch " in text and "onnxruntime " in text
    assert "problems:" in text and "Traceback" not in run.stderr
    assert len(text.splitlines()) < 40


def test_known_problems_flag_versions_outside_the_ranges() -> None:
    torch_ok = {"importable": True, "cuda_available": False}
    ort = {"importable": True, "providers": ["CPUExecutionProvider"]}
    found = known_problems({"gradio": "5.0.0", "numpy": "1.0"}, torch_ok, ort)
    what = [f["what"] for f in found if f["level"] == "error"]
    assert any(w.startswith("gradio 5.0.0 is outside the range") for w in what), what
    assert any(w.startswith("numpy 1.0 is outside the range") for w in what), what
    broken = known_problems({}, {"importable": False, "error": "ImportError: x"}, ort)
    assert any("torch does not import" in f["what"] for f in broken)
    cv = known_problems(
        {"opencv-python": "4.9.0", "opencv-python-headless": "5.1.0"}, torch_ok, ort
    )
    assert any("both install the cv2 module" in f["what"] for f in cv)
    cuda = known_problems({}, {"importable": True, "cuda_available": True}, ort)
    assert any("no CUDA provider" in f["what"] for f in cuda)


def test_doctor_reports_transformers_refusing_the_installed_peft(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from transformers.integrations import peft as integration

    torch_ok = {"importable": True, "cuda_available": False}
    ort = {"importable": True, "providers": ["CPUExecutionProvider"]}
    monkeypatch.setattr(integration, "MIN_PEFT_VERSION", "999.0.0")
    notes = [f for f in known_problems({}, torch_ok, ort) if "peft >= 999.0.0" in f["what"]]
    assert len(notes) == 1 and notes[0]["level"] == "note"
    monkeypatch.setattr(integration, "MIN_PEFT_VERSION", "0.0.1")
    assert not [f for f in known_problems({}, torch_ok, ort) if "adapter integration" in f["what"]]


def test_format_report_shows_problems_with_their_fix() -> None:
    from facegen.doctor import collect

    report = collect(presets=False)
    report["problems"] = [{"level": "error", "what": "something broke", "fix": "do this"}]
    text = format_report(report)
    assert "[error] something broke" in text and "fix: do this" in text


def test_commands_print_no_torchvision_warning(tmp_path: Path) -> None:
    """diffusers imports transformers' torchvision-backed image processors; without
    torchvision, facegen's commands bind their PIL twins so nothing is printed."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: transformers has nothing to warn about")
    helped = _facegen("--help")
    assert helped.returncode == 0 and "torchvision" not in helped.stderr
    out = tmp_path / "gen"
    run = _facegen(
        "generate", "--random-identities", "1", "--num-images", "1", "--preset", "tiny",
        "--steps", "1", "--out", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "wrote 1 image(s)" in run.stdout
    assert "torchvision" not in run.stderr, run.stderr
    # without facegen's binding, the same imports do warn: the test can fail
    plain = subprocess.run(
        [sys.executable, "-c", "from diffusers import StableDiffusionPipeline"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "requires torchvision" in plain.stderr


def test_pil_binding_gives_transformers_own_fallback_classes() -> None:
    code = (
        "from facegen.compat import use_pil_image_processors as u; u(); "
        "from diffusers import StableDiffusionPipeline; import transformers as t; "
        "print(t.CLIPImageProcessor.__name__, t.SiglipImageProcessor.__name__)"
    )
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: nothing is bound")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["CLIPImageProcessorPil", "SiglipImageProcessorPil"]
    assert "torchvision" not in run.stderr
