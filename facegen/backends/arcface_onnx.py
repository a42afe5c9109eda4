"""ArcFace identity encoders in insightface's ONNX format (glintr100, w600k_r50, Arc2Face's).

The network takes ArcFace-aligned RGB crops (usually 112×112, read from the model's input
shape) as NCHW float32 ``(x - 127.5) / 127.5``, except mxnet-converted graphs whose first
nodes are ``Sub`` and ``Mul``: those normalise inside and take raw pixel values (insightface's
rule, ``model_zoo/arcface_onnx.py``). The output is an unnormalised ``(N, D)`` feature
(D = 512 for the published models); :class:`~facegen.base.IdentityEncoder` L2-normalises it.

Weights, not architecture, identify an embedding space: vectors from antelopev2's glintr100,
buffalo_l's w600k_r50 and Arc2Face's arcface.onnx are not comparable, so each gets its own
``encoder_id``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facegen.align import align_face
from facegen.backends.onnx_utils import (
    check_rgb_image,
    input_normalisation,
    load_session,
    run_batched,
    square_image_input,
    static_dim,
    to_blob,
)
from facegen.base import IdentityEncoder
from facegen.errors import InvalidModelError, UnknownNameError
from facegen.types import AlignedFace, Face

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

__all__ = ["ArcFaceOnnxEncoder", "encoder_id_for_file"]

logger = logging.getLogger(__name__)

#: published weight files → encoder ids (the file names are distinctive)
_FILE_IDS: dict[str, str] = {
    "glintr100.onnx": "arcface-onnx/antelopev2",
    "w600k_r50.onnx": "arcface-onnx/buffalo_l",
}
#: model presets → encoder ids, used when the preset's own recognition file is loaded
_PRESET_IDS: dict[str, str] = {
    "antelopev2": "arcface-onnx/antelopev2",
    "buffalo_l": "arcface-onnx/buffalo_l",
    "arc2face-arcface": "arcface-onnx/arc2face",
}
_DEFAULT_NORMALISATION = (127.5, 127.5)


def encoder_id_for_file(path: str | Path) -> str:
    """``encoder_id`` for a weight file: known published names map to their pack
    (``glintr100.onnx`` → ``arcface-onnx/antelopev2``, ``w600k_r50.onnx`` →
    ``arcface-onnx/buffalo_l``), anything else to ``arcface-onnx/<file stem>``.

    Arc2Face's file is called plainly ``arcface.onnx``, so it is recognised through its
    preset (``from_pretrained(preset="arc2face-arcface")``), not its name.
    """
    p = Path(path)
    return _FILE_IDS.get(p.name, f"arcface-onnx/{p.stem}")


class ArcFaceOnnxEncoder(IdentityEncoder):
    """ArcFace ONNX identity encoder.

    Parameters
    ----------
    session:
        An ``onnxruntime.InferenceSession`` (or equivalent). When omitted, ``model_path``
        is opened on ``device``.
    model_path:
        The ``.onnx`` file; also read to decide the input normalisation and the default
        ``encoder_id``.
    encoder_id:
        Names the embedding space; defaults to :func:`encoder_id_for_file`. Required when
        only a session is given.
    input_mean, input_std:
        Pixel normalisation ``(x - mean) / std``; by default decided from the graph
        (mean 0 / std 1 for ``Sub``+``Mul`` graphs, else 127.5 / 127.5). Required when only
        a session is given.
    flip, batch_size:
        See :class:`~facegen.base.IdentityEncoder`.
    """

    #: Cosine similarity above which two faces count as the same person. Taken from
    #: deepface's published ArcFace verification threshold (cosine *distance* 0.68, i.e.
    #: similarity 0.32, tuned on LFW-style pairs; its euclidean_l2 threshold 1.13 gives 0.36).
    #: insightface R100/R50 models land in the same 0.3–0.4 band on LFW/IJB-style pairs. It
    #: could not be measured here without the published weights; re-tune per encoder on a
    #: verification set before relying on it.
    same_person_threshold: float = 0.32

    def __init__(
        self,
        session: InferenceSession | None = None,
        *,
        model_path: str | Path | None = None,
        device: str | None = "cpu",
        encoder_id: str | None = None,
        input_mean: float | None = None,
        input_std: float | None = None,
        flip: bool = False,
        batch_size: int = 32,
    ) -> None:
        super().__init__(flip=flip, batch_size=batch_size)
        self.session = load_session(session, model_path, device)
        self.model_path = Path(model_path) if model_path is not None else None
        where = str(model_path) if model_path is not None else "ArcFace session"
        if encoder_id is None:
            if model_path is None:
                raise ValueError(
                    "`encoder_id` must be given when the encoder is built from a session without "
                    "`model_path` (it names the embedding space), got None"
                )
            encoder_id = encoder_id_for_file(model_path)
        if not isinstance(encoder_id, str) or not encoder_id:
            raise ValueError(f"`encoder_id` must be a non-empty string, got {encoder_id!r}")
        self.encoder_id = encoder_id

        self.input_name, self.input_size, self._fixed_batch_one = square_image_input(
            self.session, where, "an ArcFace model"
        )
        outputs = self.session.get_outputs()
        if len(outputs) != 1:
            raise InvalidModelError(
                f"{where}: an ArcFace model must have exactly one output, got {len(outputs)}"
            )
        self.output_name: str = outputs[0].name
        self.input_mean, self.input_std = input_normalisation(
            model_path=model_path,
            input_mean=input_mean,
            input_std=input_std,
            default=_DEFAULT_NORMALISATION,
            check_bn_data=False,
            what=where,
        )
        dim = static_dim(outputs[0].shape[-1]) if len(outputs[0].shape) == 2 else None
        if dim is None:
            # symbolic feature size: one forward pass on a black crop reveals it
            probe = np.zeros((1, self.input_size, self.input_size, 3), np.uint8)
            dim = int(self._run(probe).shape[1])
            logger.debug("%s: feature size %d read from a probe pass", where, dim)
        self.dim = dim
        logger.debug(
            "%s: encoder_id %s, input %d, dim %d, mean %g, std %g",
            where,
            self.encoder_id,
            self.input_size,
            self.dim,
            self.input_mean,
            self.input_std,
        )

    @classmethod
    def from_pretrained(
        cls,
        preset: str = "antelopev2",
        model_path: str | Path | None = None,
        *,
        device: str | None = "cpu",
        offline: bool | None = None,
        flip: bool = False,
        batch_size: int = 32,
        encoder_id: str | None = None,
        **kwargs: Any,
    ) -> ArcFaceOnnxEncoder:
        """Open the preset's ``recognition`` file (see :func:`facegen.hub.resolve`).

        When the file is the preset's own, ``encoder_id`` defaults to the preset's
        (``arcface-onnx/antelopev2``, ``arcface-onnx/buffalo_l``, ``arcface-onnx/arc2face``);
        a differently named file given through ``model_path`` is named after itself.
        """
        from facegen.backends.packs import ARCFACE_PRESETS
        from facegen.hub import get_preset, resolve

        if preset not in ARCFACE_PRESETS:
            raise UnknownNameError("ArcFace ONNX preset", preset, ARCFACE_PRESETS)
        filename = get_preset(preset).file_for("recognition")
        path = resolve(preset, filename, path=model_path, offline=offline)
        if encoder_id is None and path.name == filename:
            encoder_id = _PRESET_IDS.get(preset, f"arcface-onnx/{preset}")
        return cls(
            model_path=path,
            device=device,
            encoder_id=encoder_id,
            flip=flip,
            batch_size=batch_size,
            **kwargs,
        )

    def model_files(self) -> dict[str, str]:
        return {} if self.model_path is None else {"recognition": str(self.model_path.absolute())}

    def align(self, image: np.ndarray, face: Face) -> AlignedFace:
        """ArcFace 5-point alignment to ``input_size``×``input_size`` (insightface's ``norm_crop``)."""
        return align_face(check_rgb_image(image), face, size=self.input_size, template="arcface")

    def _run(self, crops: np.ndarray) -> np.ndarray:
        blob = to_blob(crops, self.input_mean, self.input_std)
        out = run_batched(
            self.session,
            self.input_name,
            [self.output_name],
            blob,
            fixed_batch_one=self._fixed_batch_one,
        )[0]
        return np.asarray(out, np.float32).reshape(len(crops), -1)

    def _forward(self, crops: np.ndarray) -> np.ndarray:
        """``crops``: RGB uint8 ``(N, S, S, 3)`` → raw float32 ``(N, dim)`` features."""
        feats = self._run(crops)
        if feats.shape[1] != self.dim:
            raise InvalidModelError(
                f"encoder {self.encoder_id!r} must output {self.dim} features, got {feats.shape[1]}"
            )
        return feats
