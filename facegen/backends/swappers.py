"""One-shot face swappers as ONNX backends: inswapper_128, SimSwap 256/512, GHOST, HyperSwap.

A one-shot swapper takes the target face's aligned crop and a vector of the source identity
and returns the crop with the source's identity, in one forward pass (milliseconds on a GPU,
well under a second on a CPU: usable on video, unlike diffusion inpainting). Every model here
reads the source as an ArcFace w600k_r50 embedding (insightface buffalo_l's ``w600k_r50.onnx``,
encoder id ``arcface-onnx/buffalo_l``), brought into its own space:

* ``inswapper_128`` (insightface): 128×128 crop on the ArcFace template (insightface's
  ``norm_crop``: the 112 template shifted by 8 px, black border); the source is the unit
  embedding times ``emap`` — the last initializer of the ONNX graph, 512×512 — renormalised;
  pixels ``x / 255`` RGB; output RGB in [0, 1].
* ``simswap_256`` / ``simswap_512``: FaceFusion's exports of SimSwap and its unofficial 512
  model: ``arcface_112_v1`` template at 256/512 (edges replicated); the source goes through
  the ``crossface_simswap`` converter (w600k → SimSwap's own ArcFace space, ``input`` →
  ``output``, 1×512) and is L2-normalised; pixels ``(x / 255 - mean) / std`` with ImageNet's
  mean/std (256) or none (512); output RGB in [0, 1].
* ``ghost_256`` (GHOST 1, FaceFusion's export): ``arcface_112_v1`` at 256; the
  ``crossface_ghost`` converter's output as is; pixels and output in [-1, 1].
* ``hyperswap_256`` (FaceFusion's HyperSwap 1a): ``arcface_128`` at 256; the unit
  embedding as is; pixels and output in [-1, 1]; a second output (a mask) is not used.

Each declares its encoder, template, crop size and normalisation (:class:`SwapperSpec`);
an embedding of another encoder is refused. Inputs are found by name (``target``,
``source``), else by position (target first, as insightface does). Batches: a model whose
batch axis is symbolic runs all crops at once; one fixed at 1 runs them one by one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facegen.align import align_face
from facegen.backends.onnx_utils import check_rgb_image, load_session, run_feeds, static_dim
from facegen.errors import IncompatibleEmbeddingError, InvalidModelError, UnknownNameError
from facegen.types import AlignedFace, Face, IdentityEmbedding

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

__all__ = ["SWAPPER_SPECS", "OnnxFaceSwapper", "SwapperSpec"]

logger = logging.getLogger(__name__)

#: The embedding every swapper here reads its source from.
SOURCE_ENCODER = "arcface-onnx/buffalo_l"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SwapperSpec:
    """What a one-shot swapper model expects.

    ``template``/``size``: the crop (:data:`facegen.align.POINT_TEMPLATES` name, or
    ``"arcface"`` for insightface's ``norm_crop``); ``border``: outside the image,
    ``"constant"`` (black) or ``"replicate"``. ``mean``/``std``: pixels in [0, 1] are fed as
    ``(x - mean) / std``; ``denormalize``: the output is ``y * std + mean`` before it is
    clipped to [0, 1] (else it is already in [0, 1]). ``source``: how the w600k embedding
    becomes the model's source input — ``"emap"`` (unit vector × the graph's last
    initializer, renormalised), ``"unit"`` (the unit vector), ``"converter"`` /
    ``"converter_unit"`` (through ``converter`` — a hub preset whose ``converter`` file maps
    w600k vectors to the model's space — raw, or L2-normalised). ``preset``: the hub preset
    holding the model (its ``swapper`` file).
    """

    name: str
    preset: str
    template: str
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str
    denormalize: bool = False
    border: str = "replicate"
    converter: str | None = None
    encoder_id: str = SOURCE_ENCODER


SWAPPER_SPECS: dict[str, SwapperSpec] = {
    "inswapper_128": SwapperSpec(
        "inswapper_128", "inswapper_128", "arcface", 128, (0.0,) * 3, (1.0,) * 3, "emap",
        border="constant",
    ),
    "simswap_256": SwapperSpec(
        "simswap_256", "simswap_256", "arcface_112_v1", 256, _IMAGENET_MEAN, _IMAGENET_STD,
        "converter_unit", converter="crossface_simswap",
    ),
    "simswap_512": SwapperSpec(
        "simswap_512", "simswap_512", "arcface_112_v1", 512, (0.0,) * 3, (1.0,) * 3,
        "converter_unit", converter="crossface_simswap",
    ),
    "ghost_256": SwapperSpec(
        "ghost_256", "ghost_256", "arcface_112_v1", 256, (0.5,) * 3, (0.5,) * 3, "converter",
        denormalize=True, converter="crossface_ghost",
    ),
    "hyperswap_256": SwapperSpec(
        "hyperswap_256", "hyperswap_256", "arcface_128", 256, (0.5,) * 3, (0.5,) * 3, "unit",
        denormalize=True,
    ),
}  # fmt: skip


def last_initializer(model_path: str | Path) -> np.ndarray:
    """The last initializer of an ONNX graph (inswapper's ``emap``) as a float32 array."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValueError, …
        raise InvalidModelError(f"{model_path} cannot be read as an ONNX model: {exc}") from exc
    if not model.graph.initializer:
        raise InvalidModelError(f"{model_path} has no initializers (inswapper keeps emap there)")
    return np.asarray(numpy_helper.to_array(model.graph.initializer[-1]), np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm <= 0:
        raise IncompatibleEmbeddingError("the source embedding has no direction (zero or NaN)")
    return (v / norm).astype(np.float32)


class OnnxFaceSwapper:
    """A one-shot swapper (see the module doc) on ONNX Runtime.

    ``spec``: a :class:`SwapperSpec` or a name in :data:`SWAPPER_SPECS`. ``session`` /
    ``model_path``: the swapper (``model_path`` is needed for ``emap``); ``converter`` /
    ``converter_path``: the source converter session or file when the spec has one.
    """

    def __init__(
        self,
        spec: SwapperSpec | str,
        session: InferenceSession | None = None,
        *,
        model_path: str | Path | None = None,
        converter: InferenceSession | None = None,
        converter_path: str | Path | None = None,
        device: str | None = "cpu",
    ) -> None:
        if isinstance(spec, str):
            if spec not in SWAPPER_SPECS:
                raise UnknownNameError("face swapper", spec, SWAPPER_SPECS)
            spec = SWAPPER_SPECS[spec]
        self.spec = spec
        self.name = spec.name
        self.model_path = Path(model_path) if model_path is not None else None
        self.session = load_session(session, model_path, device)
        where = str(model_path or f"{spec.name} session")
        inputs = self.session.get_inputs()
        if len(inputs) != 2:
            raise InvalidModelError(
                f"{where}: a one-shot swapper has two inputs (target, source), got {len(inputs)}"
            )
        names = [i.name for i in inputs]
        if {"target", "source"} <= set(names):
            self._target, self._source = "target", "source"
        else:  # insightface's convention: target first
            self._target, self._source = names
        by_name = {i.name: i for i in inputs}
        shape = by_name[self._target].shape
        if len(shape) != 4 or static_dim(shape[1]) not in (3, None):
            raise InvalidModelError(f"{where}: the target input must be (N, 3, S, S), got {shape}")
        for axis in (2, 3):
            got = static_dim(shape[axis])
            if got is not None and got != spec.size:
                raise InvalidModelError(
                    f"{where}: {spec.name} takes {spec.size}×{spec.size} crops, the model's "
                    f"target input is {shape}"
                )
        src_shape = by_name[self._source].shape
        if static_dim(src_shape[-1]) not in (512, None):
            raise InvalidModelError(f"{where}: the source input must be (N, 512), got {src_shape}")
        self._fixed_batch_one = static_dim(shape[0]) == 1
        outputs = [o.name for o in self.session.get_outputs()]
        self._output = "output" if "output" in outputs else outputs[0]
        self.emap: np.ndarray | None = None
        if spec.source == "emap":
            if self.model_path is None:
                raise InvalidModelError(f"{spec.name} needs `model_path` to read emap from")
            self.emap = last_initializer(self.model_path)
            if self.emap.shape != (512, 512):
                raise InvalidModelError(
                    f"{where}: emap (the graph's last initializer) must be 512×512, got "
                    f"{self.emap.shape}"
                )
        self.converter: InferenceSession | None = None
        if spec.source.startswith("converter"):
            if converter is None and converter_path is None:
                raise InvalidModelError(
                    f"{spec.name} needs its source converter ({spec.converter})"
                )
            self.converter = load_session(converter, converter_path, device)

    # -- the source

    @property
    def encoder_id(self) -> str:
        return self.spec.encoder_id

    def prepare_source(self, embedding: IdentityEmbedding) -> np.ndarray:
        """The model's source input, float32 ``(1, 512)``, from a w600k_r50 embedding."""
        if not isinstance(embedding, IdentityEmbedding):
            raise IncompatibleEmbeddingError(
                f"the source must be an IdentityEmbedding, got {type(embedding).__name__}"
            )
        if embedding.encoder_id != self.spec.encoder_id:
            raise IncompatibleEmbeddingError(
                f"{self.name} reads {self.spec.encoder_id} embeddings (insightface buffalo_l's "
                f"w600k_r50), got {embedding.encoder_id}"
            )
        v = np.asarray(embedding.vector, np.float32).reshape(-1)
        if v.shape != (512,):
            raise IncompatibleEmbeddingError(f"{self.name} needs 512-D embeddings, got {v.shape}")
        if not np.isfinite(v).all():
            raise IncompatibleEmbeddingError("the source embedding holds NaN or infinity")
        kind = self.spec.source
        if kind == "emap":
            assert self.emap is not None
            return _unit(_unit(v) @ self.emap)[None]
        if kind == "unit":
            return _unit(v)[None]
        assert self.converter is not None
        name = self.converter.get_inputs()[0].name
        out = np.asarray(self.converter.run(None, {name: v[None]})[0], np.float32).reshape(1, -1)
        if out.shape != (1, 512) or not np.isfinite(out).all():
            raise InvalidModelError(
                f"{self.spec.converter} must map a 512-D vector to a finite 512-D vector, got "
                f"{out.shape}"
            )
        return _unit(out[0])[None] if kind == "converter_unit" else out

    # -- the target

    def align(self, image: np.ndarray, face: Face) -> AlignedFace:
        """The target face's crop on the model's template."""
        return align_face(
            check_rgb_image(image), face, size=self.spec.size, template=self.spec.template,
            border=self.spec.border,
        )  # fmt: skip

    def to_blob(self, crops: np.ndarray) -> np.ndarray:
        """RGB uint8 ``(N, S, S, 3)`` → the model's float32 ``(N, 3, S, S)``."""
        mean = np.asarray(self.spec.mean, np.float32)
        std = np.asarray(self.spec.std, np.float32)
        x = (crops.astype(np.float32) / 255.0 - mean) / std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def from_output(self, pred: np.ndarray) -> np.ndarray:
        """The model's ``(N, 3, S, S)`` output → RGB uint8 ``(N, S, S, 3)``."""
        y = np.asarray(pred, np.float32).transpose(0, 2, 3, 1)
        if self.spec.denormalize:
            y = y * np.asarray(self.spec.std, np.float32) + np.asarray(self.spec.mean, np.float32)
        return np.clip(255.0 * y, 0, 255).astype(np.uint8)  # truncated, as insightface does

    def swap_crops(self, crops: np.ndarray, source: np.ndarray) -> np.ndarray:
        """Swap ``source`` (from :meth:`prepare_source`) into aligned crops, RGB uint8
        ``(N, S, S, 3)`` → the same shape."""
        crops = np.asarray(crops)
        s = self.spec.size
        if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (s, s, 3):
            raise ValueError(
                f"`crops` must be uint8 (N, {s}, {s}, 3), got {crops.dtype} {crops.shape}"
            )
        if len(crops) == 0:
            return crops.copy()
        blob = self.to_blob(crops)
        src = np.asarray(source, np.float32).reshape(1, 512)
        feeds = {self._target: blob, self._source: np.repeat(src, len(blob), axis=0)}
        pred = run_feeds(self.session, self._output, feeds, fixed_batch_one=self._fixed_batch_one)
        if pred.shape != blob.shape:
            raise InvalidModelError(
                f"{self.name} must return crops of its input's shape {blob.shape}, got {pred.shape}"
            )
        return self.from_output(pred)

    def model_files(self) -> dict[str, str]:
        return {} if self.model_path is None else {"swapper": str(self.model_path.absolute())}

    @classmethod
    def from_pretrained(
        cls,
        name: str = "inswapper_128",
        model_path: str | Path | None = None,
        *,
        converter_path: str | Path | None = None,
        device: str | None = "cpu",
        offline: bool | None = None,
    ) -> OnnxFaceSwapper:
        """The named swapper's files through :func:`facegen.hub.resolve` (a local file, the
        facegen cache, the Hugging Face cache or a download)."""
        from facegen.hub import get_preset, resolve

        if name not in SWAPPER_SPECS:
            raise UnknownNameError("face swapper", name, SWAPPER_SPECS)
        spec = SWAPPER_SPECS[name]
        path = resolve(spec.preset, get_preset(spec.preset).file_for("swapper"), path=model_path,
                       offline=offline)  # fmt: skip
        conv = None
        if spec.converter is not None:
            conv = resolve(spec.converter, get_preset(spec.converter).file_for("converter"),
                           path=converter_path, offline=offline)  # fmt: skip
        return cls(spec, model_path=path, converter_path=conv, device=device)


def describe(swapper: Any) -> dict[str, Any]:
    """A JSON-ready record of a swapper's settings (for reports and provenance)."""
    spec: SwapperSpec = swapper.spec
    return {
        "swapper": spec.name,
        "template": spec.template,
        "size": spec.size,
        "source": spec.source,
        "encoder": spec.encoder_id,
    }
