"""Settings of the photo edits, as values: :class:`EditOptions` and the choices they allow.

:class:`EditOptions` is how every generative edit regenerates a face (crop, mask, control,
denoising): :func:`~facegen.pipelines.editing.face_edit.edit_faces`,
:func:`~facegen.pipelines.editing.face_edit.reenact`,
:func:`~facegen.pipelines.editing.swap.swap` and
:func:`~facegen.pipelines.editing.swap.make_replace_face` take one such value instead of a
tail of keyword arguments, and the CLI and the web app each build it once. The anonymizer's
own settings are :class:`~facegen.pipelines.editing.anonymize.AnonymizeOptions`.

This module is light (no NumPy, OpenCV or torch at import), so argument parsers can read
the choices below.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from facegen.errors import InvalidArgumentError
from facegen.validate import check_choice, check_int, check_number

if TYPE_CHECKING:
    from facegen.masks import MaskSpec

__all__ = [
    "ANONYMIZE_MODES",
    "CLASSICAL_MODES",
    "CONTROLS",
    "FACE_POLICIES",
    "OUTPUT_FORMATS",
    "OUTPUT_SUFFIXES",
    "TEMPLATES",
    "EditOptions",
]

#: Anonymization effects that need no model; ``"generate"`` replaces the face with a
#: synthetic identity (a generation pipeline, through a ``replace_face`` hook).
CLASSICAL_MODES = ("blur", "pixelate", "mask")
ANONYMIZE_MODES = (*CLASSICAL_MODES, "generate")
#: Which detected faces an edit changes, besides a face index (detector order).
FACE_POLICIES = ("all", "largest", "best")
#: Crop templates: ``None`` picks ``"arcface"`` for Arc2Face pipelines, ``"ffhq"`` for
#: IP-Adapter-FaceID ones.
TEMPLATES = (None, "arcface", "ffhq")
#: The control map: ``"auto"`` = landmarks when the pipeline has a ControlNet.
CONTROLS = ("auto", "landmarks", None)
#: The edit jobs' output formats, each with the input suffixes that keep their name.
OUTPUT_SUFFIXES = {"png": (".png",), "jpg": (".jpg", ".jpeg"), "webp": (".webp",)}
OUTPUT_FORMATS = tuple(OUTPUT_SUFFIXES)


@dataclass(frozen=True)
class EditOptions:
    """How a generative edit regenerates each face (validated on construction).

    ``strength``: how much to regenerate, in (0, 1]. ``num_inference_steps`` /
    ``guidance_scale``: ``None`` = the preset's. ``seed``: face ``k`` of one call uses
    ``seed + k`` (:func:`~facegen.pipelines.editing.swap.make_replace_face` derives its
    per-face seeds from it, ``None`` meaning 0); ``None`` elsewhere draws the seeds (they are
    recorded). ``prompt`` / ``negative_prompt``: text pipelines only (IP-Adapter-FaceID;
    Arc2Face refuses a prompt). ``crop_size``: the aligned crop in pixels, a multiple of 8
    >= 16 (``None`` = the pipeline's size). ``template`` / ``margin``: the crop's framing (see
    :data:`TEMPLATES`; ``margin`` > 0 scales the FFHQ crop). ``mask_spec``: the face mask
    (``None`` = :data:`facegen.pipelines.editing.face_edit.DEFAULT_MASK`). ``control``: one of
    :data:`CONTROLS`. ``color_match``: match the generated crop's colours to the original's
    inside the mask.
    """

    strength: float = 1.0
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    crop_size: int | None = None
    template: str | None = None
    margin: float = 1.0
    mask_spec: MaskSpec | None = None
    control: str | None = "auto"
    color_match: bool = True

    def __post_init__(self) -> None:
        check_number(self.strength, "strength", minimum=0, maximum=1, min_open=True)
        if self.num_inference_steps is not None:
            check_int(self.num_inference_steps, "num_inference_steps", minimum=1)
        if self.guidance_scale is not None:
            check_number(self.guidance_scale, "guidance_scale", minimum=0)
        if self.seed is not None:
            check_int(self.seed, "seed", minimum=0)
        for name in ("prompt", "negative_prompt"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidArgumentError(f"`{name}` must be a string or None, got {value!r}")
        if self.crop_size is not None:
            size = check_int(self.crop_size, "crop_size", minimum=16)
            if size % 8:
                raise InvalidArgumentError(
                    f"`crop_size` must be a multiple of 8, >= 16, got {self.crop_size!r}"
                )
        check_choice(self.template, "template", TEMPLATES)
        check_number(self.margin, "margin", minimum=0, min_open=True)
        if self.mask_spec is not None:
            from facegen.masks import MaskSpec

            if not isinstance(self.mask_spec, MaskSpec):
                raise InvalidArgumentError(
                    f"`mask_spec` must be a MaskSpec or None, got {type(self.mask_spec).__name__}"
                )
        check_choice(self.control, "control", CONTROLS)
        if not isinstance(self.color_match, bool):
            raise InvalidArgumentError(
                f"`color_match` must be True or False, got {self.color_match!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (what an output's provenance record holds)."""
        d = asdict(self)
        d["mask_spec"] = None if self.mask_spec is None else self.mask_spec.to_dict()
        for k in ("strength", "margin", "guidance_scale"):
            d[k] = None if d[k] is None else float(d[k])
        for k in ("num_inference_steps", "seed", "crop_size"):
            d[k] = None if d[k] is None else int(d[k])
        return d
