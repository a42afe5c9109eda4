"""What a ``generate`` job is asked for: :class:`GenerateRequest` and its parts (where the
identities come from, the control input), checked when made, before any model loads.

The rules every surface gets from here: :func:`check_prompt` (identity-only presets take no
prompt, text presets need one) and :func:`check_control` (ControlNet presets need a pose
reference or a control image, the others take none); seeds ``seed … seed + n - 1`` all
valid. :mod:`facegen.pipelines.generation.job` runs a request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from facegen.errors import InvalidArgumentError
from facegen.pipelines.generation.presets import PresetInfo, preset_info, preset_names
from facegen.types import IdentityEmbedding
from facegen.validate import check_int, check_number

__all__ = [
    "MAX_PROMPT",
    "MAX_SEED",
    "ControlImage",
    "EmbeddingIdentities",
    "GenerateRequest",
    "IdentitySource",
    "PhotoIdentities",
    "PhotoIdentity",
    "PoseReference",
    "RandomIdentities",
    "check_control",
    "check_prompt",
]

MAX_SEED = 2**31 - 1
#: The longest prompt accepted (CLIP reads only its first 77 tokens).
MAX_PROMPT = 1000


@dataclass(frozen=True)
class RandomIdentities:
    """``count`` random identities, seeded with the request's seed (see the module doc)."""

    count: int
    kind: ClassVar[str] = "random"

    def __post_init__(self) -> None:
        check_int(self.count, "count", minimum=1)


@dataclass(frozen=True)
class EmbeddingIdentities:
    """Identities from an embeddings file (``facegen embed``): ``embeddings`` as loaded,
    ``name`` the file's name (for messages and records), ``indices`` the ones to use (all,
    in order, when ``None``)."""

    embeddings: tuple[IdentityEmbedding, ...]
    name: str
    indices: tuple[int, ...] | None = None
    kind: ClassVar[str] = "embedding"

    def __post_init__(self) -> None:
        n = len(self.embeddings)
        if n == 0:
            raise InvalidArgumentError(f"{self.name} must hold at least one embedding, got 0")
        for k in self.indices or ():
            if not 0 <= check_int(k, "indices") < n:
                raise InvalidArgumentError(
                    f"{self.name} holds {n} embedding(s) (numbers 0–{n - 1}); got number {k}."
                )

    @property
    def count(self) -> int:
        return len(self.chosen)

    @property
    def chosen(self) -> list[tuple[int, IdentityEmbedding]]:
        """``(number in the file, embedding)`` of each identity used."""
        ks = range(len(self.embeddings)) if self.indices is None else self.indices
        return [(k, self.embeddings[k]) for k in ks]


@dataclass(frozen=True)
class PhotoIdentity:
    """A person's face in a photo: ``image`` RGB uint8 ``(H, W, 3)``; ``name`` for messages
    and records. ``box`` (xyxy pixels): the face to use, matched to the conditioning
    encoder's detections by overlap; ``None``: the photo's only face (several are refused).
    ``face``: the number the user picked it by, recorded."""

    image: np.ndarray
    name: str
    box: tuple[float, float, float, float] | None = None
    face: int | None = None


@dataclass(frozen=True)
class PhotoIdentities:
    """One identity per photo."""

    photos: tuple[PhotoIdentity, ...]
    kind: ClassVar[str] = "photo"

    def __post_init__(self) -> None:
        if not self.photos:
            raise InvalidArgumentError("`photos` must hold at least one photo, got 0")

    @property
    def count(self) -> int:
        return len(self.photos)


IdentitySource = RandomIdentities | EmbeddingIdentities | PhotoIdentities


@dataclass(frozen=True)
class PoseReference:
    """A photo whose face's pose and expression the images take (its 68 landmarks, moved
    into the output frame and drawn as facegen's landmark map): RGB uint8 ``(H, W, 3)``."""

    image: np.ndarray
    name: str
    kind: ClassVar[str] = "pose_from"


@dataclass(frozen=True)
class ControlImage:
    """A ready conditioning image (e.g. an EMOCA render), resized to the output size."""

    image: np.ndarray
    name: str
    kind: ClassVar[str] = "control_image"


def check_prompt(info: PresetInfo, prompt: str | None) -> None:
    """The prompt rule: identity-only presets take no prompt, text presets need one."""
    if prompt is not None and not info.takes_prompt:
        raise InvalidArgumentError(
            f"`prompt` must not be given: preset {info.name!r} is identity-only (no text "
            f"steers it), got {prompt!r}"
        )
    if info.takes_prompt and (prompt is None or not prompt.strip()):
        raise InvalidArgumentError(
            f"`prompt` must be a non-empty text: preset {info.name!r} is steered by identity "
            f"and text, got {prompt!r}"
        )
    if prompt is not None and len(prompt) > MAX_PROMPT:
        raise InvalidArgumentError(
            f"`prompt` must be at most {MAX_PROMPT} characters, got {len(prompt)}"
        )


def check_control(info: PresetInfo, control: PoseReference | ControlImage | None) -> None:
    """ControlNet presets need a pose reference or a control image; the others take none."""
    if (control is not None) != info.needs_control_image:
        given = "without one" if control is None else f"with a {control.kind} input"
        raise InvalidArgumentError(
            "a pose reference or a control image need a ControlNet preset "
            f"({', '.join(preset_names(controlnet='built-in'))}), and those presets need one "
            f"of them; got preset {info.name!r} {given}"
        )


@dataclass(frozen=True)
class GenerateRequest:
    """What to generate: ``num_images`` images of each identity of ``identities`` with
    preset ``preset``, image ``k`` (identity-major) with seed ``seed + k``.

    ``steps`` / ``guidance``: ``None`` for the preset's defaults. ``control``: ControlNet
    presets only. ``batch_size``: images per denoising batch (all at once when ``None``).
    ``watermark``: the invisible watermark besides the metadata (where the image is large
    enough). ``measure_identity``: each image's similarity to its identity in its record.
    Checked when made (the prompt and control rules, counts, seeds) before any model loads.
    """

    preset: str
    identities: IdentitySource
    num_images: int = 1
    seed: int = 0
    prompt: str | None = None
    steps: int | None = None
    guidance: float | None = None
    control: PoseReference | ControlImage | None = None
    batch_size: int | None = None
    watermark: bool = True
    measure_identity: bool = True

    def __post_init__(self) -> None:
        info = preset_info(self.preset)  # an unknown name lists the presets
        check_int(self.num_images, "num_images", minimum=1)
        check_prompt(info, self.prompt)
        check_control(info, self.control)
        if self.steps is not None:
            check_int(self.steps, "steps", minimum=1)
        if self.guidance is not None:
            check_number(self.guidance, "guidance", minimum=0)
        if self.batch_size is not None:
            check_int(self.batch_size, "batch_size", minimum=1)
        # every image's seed (seed + k) must be a valid seed
        check_int(self.seed, "seed", minimum=0, maximum=MAX_SEED - self.total + 1)

    @property
    def info(self) -> PresetInfo:
        return preset_info(self.preset)

    @property
    def total(self) -> int:
        """The number of images: identities × ``num_images``."""
        return self.identities.count * self.num_images

    @property
    def seeds(self) -> list[int]:
        return [self.seed + k for k in range(self.total)]

    @property
    def operation(self) -> str:
        """``control`` with a control input, else ``generate`` (the provenance operation)."""
        return "generate" if self.control is None else "control"

    def source_record(self) -> dict[str, Any]:
        """Where the identities (and the control input) came from, for the manifest."""
        src = self.identities
        out: dict[str, Any] = {"identities": src.kind}
        if isinstance(src, RandomIdentities):
            out.update(random_identities=src.count, seed=self.seed)
        elif isinstance(src, EmbeddingIdentities):
            out.update(id_embedding=src.name, indices=[k for k, _ in src.chosen])
        else:
            out["id_image"] = [p.name for p in src.photos]
        if self.control is not None:
            out[self.control.kind] = self.control.name
        return out
