"""Identity-conditioned generators as folders: what ``facegen train generator`` writes and
``from_preset(PATH)`` / ``facegen generate --preset PATH`` load.

Layout (diffusers' own, so each part loads in plain diffusers / transformers)::

    model_index.json          a StableDiffusionPipeline (no safety checker)
    unet/                     UNet2DConditionModel (config.json + safetensors)
    text_encoder/             CLIPTextModel (the identity encoder's text half, trained)
    tokenizer/                CLIPTokenizer
    scheduler/                the inference scheduler (DPM-Solver++)
    vae/                      AutoencoderKL, or facegen's SpaceToDepthLatent (config only:
                              load it with SpaceToDepthLatent.from_pretrained(folder, subfolder="vae"))
    facegen_generator.json    facegen's description (:class:`GeneratorInfo`)

``facegen_generator.json``: ``format`` (``"facegen-generator"``) and ``format_version``;
``identity`` (``encoder_ids``, ``dim``, ``normalized``: the vectors it accepts, refused
otherwise by :class:`~facegen.adapters.base.IdentitySpec`); ``encoder`` / ``detector``
(registry names and options of the face analysis that makes those vectors from photos);
``prompt`` and ``id_token`` (Arc2Face's recipe: the identity vector, zero-padded to the text
encoder's width, replaces the token embedding of ``id_token`` in ``prompt``);
``unconditional`` (the negative for classifier-free guidance: ``"zero-identity"`` when the
identity was dropped to zeros in training); ``resolution``, ``default_steps``,
``default_guidance``; ``vae`` (``"space-to-depth"`` or ``"autoencoder-kl"``); ``family``;
``training`` (base model, steps, the training config) and ``facegen_version``. Optional:
``identity_bank`` (the file, ``identity_bank.safetensors``, holding the identity vectors of
the photos it was trained on with their people's names: the ``gaussian`` identity sampler is
fitted to it and sampled identities are kept away from it, see
:func:`load_identity_bank`); ``dataset_defaults`` (dataset settings calibrated for its
identity space, :data:`~facegen.pipelines.generation.capabilities.DATASET_DEFAULT_KEYS`);
``license`` and ``description``; ``identity_center`` (a vector subtracted from every
identity before it is normalised and written into the token: see
:meth:`~facegen.adapters.arc2face.Arc2FaceIDEncoder.centered`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facegen.adapters.arc2face import ARC2FACE_PROMPT, UNCONDITIONAL_KINDS
from facegen.adapters.base import IdentitySpec
from facegen.errors import InvalidArgumentError, InvalidModelError
from facegen.pipelines.generation.capabilities import PresetInfo, check_dataset_defaults
from facegen.validate import check_choice, check_int, check_number

if TYPE_CHECKING:
    import torch

    from facegen.pipelines.generation.id_to_face import IDToFacePipeline
    from facegen.types import IdentityEmbedding

__all__ = [
    "GENERATOR_CONFIG_NAME",
    "GENERATOR_FORMAT",
    "IDENTITY_BANK_NAME",
    "GeneratorInfo",
    "configure_pipeline",
    "is_generator_folder",
    "load_generator",
    "load_identity_bank",
    "read_generator_info",
    "save_generator",
]

GENERATOR_CONFIG_NAME = "facegen_generator.json"
IDENTITY_BANK_NAME = "identity_bank.safetensors"
GENERATOR_FORMAT = "facegen-generator"
_FORMAT_VERSION = 1
_VAES = ("space-to-depth", "autoencoder-kl")
_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass(frozen=True)
class GeneratorInfo:
    """What ``facegen_generator.json`` says about a generator folder (see the module)."""

    identity: IdentitySpec
    encoder: dict[str, Any] | None = None
    detector: dict[str, Any] | None = None
    prompt: str = ARC2FACE_PROMPT
    id_token: str = "id"
    unconditional: str = "zero-identity"
    resolution: int = 64
    default_steps: int = 25
    default_guidance: float = 3.0
    vae: str = "space-to-depth"
    family: str = "scratch"
    training: dict[str, Any] = field(default_factory=dict)
    identity_bank: str | None = None
    dataset_defaults: dict[str, float | str] = field(default_factory=dict)
    license: str | None = None
    description: str | None = None
    identity_center: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.identity, IdentitySpec) or not self.identity.encoder_ids:
            raise InvalidArgumentError(
                f"`identity` must be an IdentitySpec naming its encoder, got {self.identity!r}"
            )
        check_int(self.identity.dim, "identity.dim", minimum=1)
        check_choice(self.unconditional, "unconditional", UNCONDITIONAL_KINDS)
        check_choice(self.vae, "vae", _VAES)
        check_int(self.resolution, "resolution", minimum=8)
        check_int(self.default_steps, "default_steps", minimum=1)
        check_number(self.default_guidance, "default_guidance", minimum=0)
        if not isinstance(self.prompt, str) or self.id_token not in self.prompt.split():
            raise InvalidArgumentError(
                f"`prompt` must contain the word {self.id_token!r}, got {self.prompt!r}"
            )
        if self.identity_bank is not None and self.identity_bank != IDENTITY_BANK_NAME:
            raise InvalidArgumentError(
                f"`identity_bank` must be {IDENTITY_BANK_NAME!r} or null, got {self.identity_bank!r}"
            )
        check_dataset_defaults(self.dataset_defaults)
        if self.identity_center is not None:
            center = tuple(float(v) for v in self.identity_center)
            if len(center) != self.identity.dim:
                raise InvalidArgumentError(
                    f"`identity_center` must have {self.identity.dim} entries, got {len(center)}"
                )
            object.__setattr__(self, "identity_center", center)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``facegen_generator.json`` (without ``facegen_version``)."""
        return {
            "format": GENERATOR_FORMAT,
            "format_version": _FORMAT_VERSION,
            "identity": {
                "encoder_ids": list(self.identity.encoder_ids),
                "dim": self.identity.dim,
                "normalized": self.identity.normalized,
            },
            "encoder": self.encoder,
            "detector": self.detector,
            "prompt": self.prompt,
            "id_token": self.id_token,
            "unconditional": self.unconditional,
            "resolution": self.resolution,
            "default_steps": self.default_steps,
            "default_guidance": self.default_guidance,
            "vae": self.vae,
            "family": self.family,
            "training": self.training,
            "identity_bank": self.identity_bank,
            "dataset_defaults": dict(self.dataset_defaults),
            "license": self.license,
            "description": self.description,
            "identity_center": None
            if self.identity_center is None
            else [float(v) for v in self.identity_center],
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "generator config") -> GeneratorInfo:
        """Read :meth:`to_dict`'s object; anything else is an :class:`InvalidModelError`."""
        if not isinstance(data, dict) or data.get("format") != GENERATOR_FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise InvalidModelError(f"{source}: `format` must be {GENERATOR_FORMAT!r}, got {got!r}")
        if data.get("format_version") != _FORMAT_VERSION:
            raise InvalidModelError(
                f"{source}: `format_version` must be {_FORMAT_VERSION}, got "
                f"{data.get('format_version')!r} (a newer facegen wrote it?)"
            )
        try:
            ident = data["identity"]
            spec = IdentitySpec(
                tuple(ident["encoder_ids"]), int(ident["dim"]), bool(ident["normalized"])
            )
            keys = [f.name for f in fields(cls) if f.name != "identity"]
            return cls(identity=spec, **{k: data[k] for k in keys if k in data})
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidModelError(
                f"{source}: not a valid generator description ({exc})"
            ) from None

    def preset_info(self, name: str) -> PresetInfo:
        """The capabilities of the generator as a preset named ``name`` (its path)."""
        how = self.training.get("base_model", "unknown base")
        return PresetInfo(
            name=name,
            description=self.description
            or f"facegen-trained generator (identity only, from {how})",
            family=self.family,
            takes_prompt=False,
            controlnet="optional",  # one trained for it: load_generator(controlnet=PATH)
            inpainting=False,
            identity=self.identity,
            default_steps=self.default_steps,
            default_guidance=self.default_guidance,
            license=self.license
            or "as the data and base model it was trained on (see facegen_generator.json)",
            edits_photos=True,  # latent blending works on any latent width (swap)
            dataset_defaults=dict(self.dataset_defaults),
        )


def is_generator_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding ``facegen_generator.json``."""
    try:
        return (Path(path) / GENERATOR_CONFIG_NAME).is_file()
    except (OSError, ValueError):
        return False


def read_generator_info(folder: str | os.PathLike[str]) -> GeneratorInfo:
    """The :class:`GeneratorInfo` of a generator folder."""
    path = Path(folder) / GENERATOR_CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidModelError(f"{path}: not a readable generator config ({exc})") from None
    return GeneratorInfo.from_dict(data, source=str(path))


def save_generator(
    folder: str | os.PathLike[str],
    components: dict[str, Any],
    info: GeneratorInfo,
    *,
    identity_bank: tuple[Sequence[IdentityEmbedding], Sequence[str]] | None = None,
    dtype: str = "float32",
) -> Path:
    """Write ``components`` (``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``)
    in diffusers' layout (safetensors) and ``info`` as ``facegen_generator.json`` into
    ``folder``; returns the config's path (written last, so a folder with it is complete).

    ``identity_bank``: the training photos' identity vectors (of ``info``'s encoder) and their
    people's names, written as ``identity_bank.safetensors`` and named in the config.
    ``dtype``: ``"float32"`` or ``"float16"`` (half the size; :func:`load_generator` loads
    either in the dtype asked for). The given modules are not changed."""
    import copy

    import torch
    from diffusers import StableDiffusionPipeline

    from facegen.embedding_io import save_embeddings
    from facegen.fileio import write_json
    from facegen.pipelines.generation.space_to_depth import SpaceToDepthLatent

    check_choice(dtype, "dtype", ("float32", "float16"))
    missing = [k for k in _COMPONENTS if components.get(k) is None]
    if missing:
        raise InvalidArgumentError(
            f"`components` must hold {', '.join(_COMPONENTS)}, got it without {', '.join(missing)}"
        )
    is_s2d = isinstance(components["vae"], SpaceToDepthLatent)
    if is_s2d != (info.vae == "space-to-depth"):
        raise InvalidArgumentError(
            f"`info.vae` must describe the VAE given ({type(components['vae']).__name__}), "
            f"got {info.vae!r}"
        )
    out = Path(folder)
    parts = {k: components[k] for k in _COMPONENTS}
    if dtype != "float32":
        for k in ("unet", "text_encoder", "vae"):
            if isinstance(parts[k], torch.nn.Module) and any(True for _ in parts[k].parameters()):
                parts[k] = copy.deepcopy(parts[k]).to(getattr(torch, dtype))
    pipe = StableDiffusionPipeline(
        **parts,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    if identity_bank is not None:
        embeddings, names = identity_bank
        ids = {e.encoder_id for e in embeddings}
        if not ids <= set(info.identity.encoder_ids):
            raise InvalidArgumentError(
                f"`identity_bank` must hold {info.identity.encoder_ids[0]} vectors, got {sorted(ids)}"
            )
        save_embeddings(out / IDENTITY_BANK_NAME, embeddings, names=list(names))
        info = replace(info, identity_bank=IDENTITY_BANK_NAME)
    elif info.identity_bank is not None and not (out / info.identity_bank).is_file():
        raise InvalidArgumentError(
            f"`info.identity_bank` names {info.identity_bank}, but no `identity_bank` was given"
        )
    from facegen._version import __version__

    return write_json(
        out / GENERATOR_CONFIG_NAME,
        {**info.to_dict(), "facegen_version": __version__},
        sort_keys=True,
    )


def load_identity_bank(
    folder: str | os.PathLike[str], info: GeneratorInfo | None = None
) -> tuple[np.ndarray, list[str]] | None:
    """The identity vectors the generator in ``folder`` was trained on (float32 ``(N, D)``, one
    row per photo) and their people's names, or None when its config names no bank. A bank
    of another encoder or dimension than the generator's is an :class:`InvalidModelError`."""
    from facegen.embedding_io import load_embeddings

    info = info or read_generator_info(folder)
    if info.identity_bank is None:
        return None
    path = Path(folder) / info.identity_bank
    try:
        embeddings, names = load_embeddings(path)
    except (OSError, ValueError) as exc:
        raise InvalidModelError(
            f"{path}: the generator's identity bank did not load ({exc})"
        ) from None
    vectors = np.stack([e.vector for e in embeddings]).astype(np.float32)
    if (
        embeddings[0].encoder_id not in info.identity.encoder_ids
        or vectors.shape[1] != info.identity.dim
    ):
        raise InvalidModelError(
            f"{path}: holds {vectors.shape[1]}-D {embeddings[0].encoder_id} vectors; the "
            f"generator takes {info.identity.dim}-D {info.identity.encoder_ids[0]} vectors"
        )
    return vectors, list(names) if names else [""] * len(vectors)


def _load_scheduler(folder: Path) -> Any:
    """The inference scheduler saved in ``folder/scheduler`` (any diffusers scheduler class
    its config names: DPM-Solver++ by default; a stochastic sampler where a small model
    samples better with one)."""
    import diffusers

    config = folder / "scheduler" / "scheduler_config.json"
    try:
        name = json.loads(config.read_text()).get("_class_name", "DPMSolverMultistepScheduler")
    except (OSError, ValueError, AttributeError) as exc:
        raise InvalidModelError(f"{config}: not a readable scheduler config ({exc})") from None
    cls = getattr(diffusers, str(name), None) if str(name).endswith("Scheduler") else None
    if cls is None or not issubclass(cls, diffusers.SchedulerMixin):
        raise InvalidModelError(f"{config}: `_class_name` {name!r} is not a diffusers scheduler")
    return cls.from_pretrained(folder, subfolder="scheduler")


def _load_vae(folder: Path, info: GeneratorInfo, torch_dtype: torch.dtype) -> Any:
    if info.vae == "space-to-depth":
        from facegen.pipelines.generation.space_to_depth import SpaceToDepthLatent

        # weightless: it keeps float32 (pixel_shuffle returns the latents' own dtype)
        return SpaceToDepthLatent.from_pretrained(folder, subfolder="vae")
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch_dtype)


def load_generator(
    folder: str | os.PathLike[str],
    *,
    name: str | None = None,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
    with_analyzer: bool = True,
    controlnet: str | os.PathLike[str] | Any = None,
    **_: Any,
) -> IDToFacePipeline:
    """An :class:`~facegen.pipelines.generation.id_to_face.IDToFacePipeline` of the generator
    in ``folder``, recorded as preset ``name`` (default: the folder as given) with
    :meth:`GeneratorInfo.preset_info`; identity vectors of another encoder are refused.
    ``with_analyzer``: build the face analysis named in its config (for photos as identities)
    when it names one. ``dtype``: a torch dtype (default float32); ``from_preset`` takes
    names ("float16") and checks them. ``controlnet``: a landmark ControlNet trained for this
    generator (``facegen train controlnet --base-model FOLDER``: its output folder, or a
    ``ControlNetModel``) makes it an
    :class:`~facegen.pipelines.generation.id_to_face.IDToFaceControlNetPipeline`."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from facegen.pipelines.generation.id_to_face import (
        IDToFaceControlNetPipeline,
        IDToFacePipeline,
    )

    path = Path(folder)
    info = read_generator_info(path)
    torch_dtype = torch.float32 if dtype is None else dtype
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=torch_dtype)
        text_encoder = CLIPTextModel.from_pretrained(
            path, subfolder="text_encoder", torch_dtype=torch_dtype
        )
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        scheduler = _load_scheduler(path)
        vae = _load_vae(path, info, torch_dtype)
    except (OSError, ValueError) as exc:
        raise InvalidModelError(
            f"{path}: the generator's components did not load ({exc})"
        ) from None
    parts: dict[str, Any] = {}
    if controlnet is not None:
        parts["controlnet"] = _load_controlnet(controlnet, unet, torch_dtype)
    pipe = (IDToFaceControlNetPipeline if parts else IDToFacePipeline)(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        **parts,
    )
    configure_pipeline(pipe, info)
    if with_analyzer and info.encoder and info.detector:
        from facegen.analyzer import FaceAnalyzer
        from facegen.hub import is_offline

        pipe.identity_analyzer = FaceAnalyzer.from_names(
            info.detector["name"],
            info.detector.get("landmarker"),
            info.encoder["name"],
            device=device,
            offline=is_offline(local_files_only),
            detector_options=info.detector.get("options") or {},
            encoder_options=info.encoder.get("options") or {},
        )
    pipe.identity_bank = load_identity_bank(path, info)
    pipe.preset_name = name or str(folder)
    pipe.preset_info = info.preset_info(pipe.preset_name)
    pipe.model_ids = {"generator": str(path.resolve())}
    if parts:
        pipe.preset_info = replace(pipe.preset_info, controlnet="built-in")
        where = controlnet if isinstance(controlnet, (str, os.PathLike)) else "given"
        pipe.model_ids["controlnet"] = str(where)
    pipe.set_progress_bar_config(leave=False)
    if pipe.unet.dtype != torch_dtype:
        pipe = pipe.to(device, torch_dtype)
    return pipe.to(device)


def _load_controlnet(source: Any, unet: Any, torch_dtype: torch.dtype) -> Any:
    """``source`` (a ``ControlNetModel`` or its folder) checked against the generator's UNet:
    the same latent channels and encoder widths, or a clear error."""
    from diffusers import ControlNetModel

    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not (folder / "config.json").is_file():
            raise InvalidModelError(
                f"{folder}: not a ControlNet folder (no config.json; `facegen train controlnet` "
                "writes one)"
            )
        try:
            model = ControlNetModel.from_pretrained(folder, torch_dtype=torch_dtype)
        except (OSError, ValueError) as exc:
            raise InvalidModelError(f"{folder}: the ControlNet did not load ({exc})") from None
    elif isinstance(source, ControlNetModel):
        model = source.to(dtype=torch_dtype)
    else:
        raise InvalidArgumentError(
            f"`controlnet` must be a ControlNet folder or a ControlNetModel, got {type(source).__name__}"
        )
    for key in ("in_channels", "block_out_channels", "cross_attention_dim"):
        mine, theirs = model.config.get(key), unet.config.get(key)
        if list(np.atleast_1d(mine)) != list(np.atleast_1d(theirs)):
            raise InvalidModelError(
                f"the ControlNet was not trained for this generator: its {key} is {mine}, the "
                f"generator's UNet has {theirs} (train one with `facegen train controlnet "
                "--base-model` this generator's folder)"
            )
    return model.eval()


def configure_pipeline(pipe: Any, info: GeneratorInfo) -> Any:
    """Make an ID→face pipeline use ``info``'s identity spec, prompt, negative and defaults."""
    pipe.id_encoder_ids = tuple(info.identity.encoder_ids)
    pipe.id_encoder_options = {
        "prompt": info.prompt,
        "id_token": info.id_token,
        "identity_dim": info.identity.dim,
        "normalized": info.identity.normalized,
        "identity_center": info.identity_center,
    }
    pipe.default_unconditional = info.unconditional
    pipe.default_steps = info.default_steps
    pipe.default_guidance = info.default_guidance
    pipe._id_encoder = None  # rebuilt with these settings on first use
    return pipe
