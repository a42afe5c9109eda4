"""Trained face-recognition backbones as facegen identity encoders, and their ONNX export.

A trained model folder (written by :func:`facegen.training.fr.train.train_fr`) holds
``config.json``, ``model.safetensors`` and ``model.onnx``. It can be used:

* through ONNX Runtime with facegen's existing ``arcface-onnx`` encoder
  (:func:`load_trained_encoder`, ``backend="onnx"``): the export takes insightface's input
  convention (one NCHW input ``input.1``, fixed 112×112 side, dynamic batch, RGB
  ``(x - 127.5) / 127.5``), so :class:`~facegen.backends.arcface_onnx.ArcFaceOnnxEncoder`
  reads it like ``w600k_r50.onnx``;
* directly in torch (:class:`TorchFREncoder`, ``backend="torch"``);
* by name, after :func:`register_trained_encoder` adds it to ``facegen.backends.ENCODERS``
  (e.g. ``FaceAnalyzer.from_names("dlib", None, "my-fr")``).

Both backends give the same ``encoder_id`` (``facegen-fr/<name>``): it names the embedding
space, which is the trained weights'. ``same_person_threshold`` is the cosine threshold found
on the validation set during training when one was run (``config.json``
``"same_person_threshold"``), otherwise the class default.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facegen.align import align_face
from facegen.base import IdentityEncoder
from facegen.errors import InvalidArgumentError, InvalidModelError
from facegen.training.fr.models import IResNet, load_backbone, read_config
from facegen.types import AlignedFace, Face
from facegen.validate import check_choice

__all__ = [
    "ONNX_NAME",
    "TorchFREncoder",
    "export_onnx",
    "load_trained_encoder",
    "register_trained_encoder",
]

logger = logging.getLogger(__name__)

ONNX_NAME = "model.onnx"
ENCODER_PREFIX = "facegen-fr/"


def export_onnx(
    model: torch.nn.Module,
    path: str | os.PathLike[str],
    *,
    input_size: int | None = None,
    opset: int = 17,
) -> Path:
    """Export ``model`` (float32 ``(N, 3, S, S)`` in [-1, 1] → ``(N, D)``) to ONNX.

    Input ``input.1`` (insightface's name) with a dynamic batch axis ``N`` and fixed ``S``
    (``input_size``, default the model's); output ``embedding`` ``(N, D)``. The model is
    exported in eval mode on CPU (a copy; the caller's module is left as it was).
    """
    import copy

    size = int(input_size or getattr(model, "input_size", 112))
    m = copy.deepcopy(model).float().cpu().eval()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # legacy exporter notice
        warnings.filterwarnings("ignore", category=UserWarning)
        torch.onnx.export(
            m,
            (torch.zeros(1, 3, size, size),),
            str(out),
            input_names=["input.1"],
            output_names=["embedding"],
            dynamic_axes={"input.1": {0: "N"}, "embedding": {0: "N"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return out


class TorchFREncoder(IdentityEncoder):
    """An identity encoder around a torch backbone (e.g. :class:`IResNet`).

    ``align``: ArcFace 5-point template at ``input_size`` (insightface's ``norm_crop`` at 112).
    ``_forward``: RGB uint8 ``(N, S, S, 3)`` → ``(x - 127.5) / 127.5`` → float32 ``(N, D)``.
    """

    same_person_threshold: float = 0.32  # ArcFace-family default; trained folders override

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        encoder_id: str,
        device: str | torch.device = "cpu",
        input_size: int | None = None,
        flip: bool = False,
        batch_size: int = 32,
        same_person_threshold: float | None = None,
    ) -> None:
        super().__init__(flip=flip, batch_size=batch_size)
        if not isinstance(encoder_id, str) or not encoder_id:
            raise InvalidArgumentError(
                f"`encoder_id` must be a non-empty string, got {encoder_id!r}"
            )
        self.encoder_id = encoder_id
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.input_size = int(input_size or getattr(model, "input_size", 112))
        with torch.no_grad():
            probe = torch.zeros(1, 3, self.input_size, self.input_size, device=self.device)
            self.dim = int(self.model(probe).shape[1])
        if same_person_threshold is not None:
            self.same_person_threshold = float(same_person_threshold)

    def align(self, image: np.ndarray, face: Face) -> AlignedFace:
        return align_face(image, face, size=self.input_size, template="arcface")

    @torch.no_grad()
    def _forward(self, crops: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device)
        x = (x.permute(0, 3, 1, 2).float() - 127.5) / 127.5
        return self.model(x).float().cpu().numpy()


def load_trained_encoder(
    folder: str | os.PathLike[str],
    *,
    name: str | None = None,
    backend: str = "onnx",
    device: str | None = "cpu",
    flip: bool = False,
    batch_size: int = 32,
    **_: Any,
) -> IdentityEncoder:
    """An identity encoder for a trained model folder (see the module docstring).

    ``name``: the ``encoder_id`` suffix (default: the folder's name). ``backend``: ``"onnx"``
    (facegen's ``ArcFaceOnnxEncoder`` on ``model.onnx``) or ``"torch"`` (``model.safetensors``).
    Extra keyword arguments (``offline``, …, passed by ``FaceAnalyzer.from_names``) are ignored.
    """
    check_choice(backend, "backend", ("onnx", "torch"))
    p = Path(folder)
    cfg = read_config(p)
    encoder_id = ENCODER_PREFIX + (name or cfg.get("name") or p.resolve().name)
    thr = cfg.get("same_person_threshold")
    if backend == "onnx":
        from facegen.backends.arcface_onnx import ArcFaceOnnxEncoder

        onnx_path = p / ONNX_NAME
        if not onnx_path.is_file():
            raise InvalidModelError(
                f"`folder` must hold {ONNX_NAME} for backend 'onnx', got {str(p)!r} "
                "(export it with facegen.training.fr.encoder.export_onnx, or use backend='torch')"
            )
        enc: IdentityEncoder = ArcFaceOnnxEncoder(
            model_path=onnx_path,
            device=device,
            encoder_id=encoder_id,
            input_mean=127.5,
            input_std=127.5,
            flip=flip,
            batch_size=batch_size,
        )
        if thr is not None:
            enc.same_person_threshold = float(thr)
        return enc
    model: IResNet = load_backbone(p)
    return TorchFREncoder(
        model,
        encoder_id=encoder_id,
        device=device or "cpu",
        flip=flip,
        batch_size=batch_size,
        same_person_threshold=thr,
    )


def register_trained_encoder(
    folder: str | os.PathLike[str],
    name: str,
    *,
    backend: str = "onnx",
    description: str | None = None,
) -> str:
    """Register a trained model folder in ``facegen.backends.ENCODERS`` as ``name``.

    After this, ``ENCODERS.create(name, device=...)`` and ``FaceAnalyzer.from_names(...,
    encoder=name)`` build :func:`load_trained_encoder` ``(folder, name=name, backend=...)``.
    The folder is checked now (``config.json`` must be readable); a taken name raises
    ``ValueError``. Returns ``name``.
    """
    from facegen.backends import ENCODERS

    p = Path(folder).resolve()
    read_config(p)
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"`name` must be a non-empty string, got {name!r}")

    def factory(**kw: Any) -> IdentityEncoder:
        kw.setdefault("backend", backend)
        return load_trained_encoder(p, name=name, **kw)

    ENCODERS.register(name, factory, description=description or f"trained FR model at {p}")
    return name
