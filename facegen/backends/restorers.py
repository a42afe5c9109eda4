"""Face restoration as ONNX backends: GFPGAN v1.4 and CodeFormer.

Both restore a 512×512 face crop on the FFHQ 5-point template (``ffhq_512``: facexlib's
512 face template, the crop GFPGAN and CodeFormer were trained on; edges replicated outside
the image), fed RGB as ``(x / 255 - 0.5) / 0.5`` (``[-1, 1]``, NCHW float32 ``input``); the
output is clipped to ``[-1, 1]`` and mapped back to ``round((y + 1) / 2 · 255)``. CodeFormer
takes a second input, ``weight`` (or ``w`` in other exports, whose image input is ``x``):
float64 ``(1,)``, its fidelity ``w`` — 0 favours quality (the codebook's face), 1 favours
fidelity to the input.

The restored crop is pasted back under a mask and blended with the frame by ``blend``
(see :func:`facegen.pipelines.editing.oneshot.restore_faces`): 1 = the restored face only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facegen.align import align_face
from facegen.backends.onnx_utils import check_rgb_image, load_session, run_feeds, static_dim
from facegen.errors import InvalidArgumentError, InvalidModelError, UnknownNameError
from facegen.types import AlignedFace, Face

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

__all__ = ["RESTORER_SPECS", "OnnxFaceRestorer", "RestorerSpec"]


@dataclass(frozen=True)
class RestorerSpec:
    """A restoration model: its hub ``preset`` (file role ``restorer``), crop ``template``
    and ``size``, and whether it takes CodeFormer's ``weight`` input (``fidelity``)."""

    name: str
    preset: str
    template: str = "ffhq_512"
    size: int = 512
    fidelity: bool = False


RESTORER_SPECS: dict[str, RestorerSpec] = {
    "gfpgan": RestorerSpec("gfpgan", "gfpgan_1.4"),
    "codeformer": RestorerSpec("codeformer", "codeformer", fidelity=True),
}


def check_fidelity(value: float) -> float:
    """CodeFormer's ``w`` as a float in [0, 1], or :class:`InvalidArgumentError`."""
    w = float(value)
    if not 0.0 <= w <= 1.0:
        raise InvalidArgumentError(f"`fidelity` must be in [0, 1], got {value!r}")
    return w


class OnnxFaceRestorer:
    """A face restorer (see the module doc) on ONNX Runtime. ``fidelity``: CodeFormer's
    ``w`` in [0, 1] (ignored by GFPGAN)."""

    def __init__(
        self,
        spec: RestorerSpec | str,
        session: InferenceSession | None = None,
        *,
        model_path: str | Path | None = None,
        device: str | None = "cpu",
        fidelity: float = 0.5,
    ) -> None:
        if isinstance(spec, str):
            if spec not in RESTORER_SPECS:
                raise UnknownNameError("face restorer", spec, RESTORER_SPECS)
            spec = RESTORER_SPECS[spec]
        self.spec, self.name = spec, spec.name
        self.model_path = Path(model_path) if model_path is not None else None
        self.session = load_session(session, model_path, device)
        where = str(model_path or f"{spec.name} session")
        inputs = {i.name: i for i in self.session.get_inputs()}
        # FaceFusion's exports name them input/weight, others x/w
        self._input = next((n for n in ("input", "x") if n in inputs), next(iter(inputs)))
        shape = inputs[self._input].shape
        if len(shape) != 4 or any(static_dim(shape[a]) not in (None, spec.size) for a in (2, 3)):
            raise InvalidModelError(
                f"{where}: {spec.name} takes (N, 3, {spec.size}, {spec.size}) crops, got {shape}"
            )
        others = [n for n in inputs if n != self._input]
        if spec.fidelity and others not in (["weight"], ["w"]):
            raise InvalidModelError(
                f"{where}: CodeFormer has a fidelity input (`weight` or `w`), got {others}"
            )
        self._weight = others[0] if spec.fidelity else None
        if not spec.fidelity and others:
            raise InvalidModelError(f"{where}: {spec.name} has one input, got also {others}")
        self._fixed_batch_one = static_dim(shape[0]) == 1
        self.fidelity = fidelity
        self._output = self.session.get_outputs()[0].name

    @property
    def fidelity(self) -> float:
        return self._fidelity

    @fidelity.setter
    def fidelity(self, value: float) -> None:
        self._fidelity = check_fidelity(value)

    def align(self, image: np.ndarray, face: Face) -> AlignedFace:
        return align_face(
            check_rgb_image(image), face, size=self.spec.size, template=self.spec.template,
            border="replicate",
        )  # fmt: skip

    @staticmethod
    def to_blob(crops: np.ndarray) -> np.ndarray:
        """RGB uint8 ``(N, S, S, 3)`` → float32 ``(N, 3, S, S)`` in ``[-1, 1]``."""
        x = (crops.astype(np.float32) / 255.0 - 0.5) / 0.5
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    @staticmethod
    def from_output(pred: np.ndarray) -> np.ndarray:
        """``(N, 3, S, S)`` in ``[-1, 1]`` → RGB uint8 ``(N, S, S, 3)``."""
        y = (np.clip(np.asarray(pred, np.float32), -1, 1) + 1) / 2
        return np.round(y.transpose(0, 2, 3, 1) * 255).astype(np.uint8)

    def restore_crops(self, crops: np.ndarray) -> np.ndarray:
        """Restore aligned crops, RGB uint8 ``(N, S, S, 3)`` → the same shape."""
        crops = np.asarray(crops)
        s = self.spec.size
        if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[1:] != (s, s, 3):
            raise ValueError(
                f"`crops` must be uint8 (N, {s}, {s}, 3), got {crops.dtype} {crops.shape}"
            )
        if len(crops) == 0:
            return crops.copy()
        blob = self.to_blob(crops)
        extra = {self._weight: np.array([self.fidelity], np.float64)} if self._weight else {}
        pred = run_feeds(
            self.session, self._output, {self._input: blob}, shared=extra,
            fixed_batch_one=self._fixed_batch_one,
        )  # fmt: skip
        if pred.shape != blob.shape:
            raise InvalidModelError(
                f"{self.name} must return crops of its input's shape {blob.shape}, got {pred.shape}"
            )
        return self.from_output(pred)

    def model_files(self) -> dict[str, str]:
        return {} if self.model_path is None else {"restorer": str(self.model_path.absolute())}

    @classmethod
    def from_pretrained(
        cls,
        name: str = "gfpgan",
        model_path: str | Path | None = None,
        *,
        device: str | None = "cpu",
        offline: bool | None = None,
        fidelity: float = 0.5,
    ) -> OnnxFaceRestorer:
        from facegen.hub import get_preset, resolve

        if name not in RESTORER_SPECS:
            raise UnknownNameError("face restorer", name, RESTORER_SPECS)
        spec = RESTORER_SPECS[name]
        path = resolve(spec.preset, get_preset(spec.preset).file_for("restorer"), path=model_path,
                       offline=offline)  # fmt: skip
        return cls(spec, model_path=path, device=device, fidelity=fidelity)
