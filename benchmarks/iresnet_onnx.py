"""A randomly initialised IResNet (ArcFace's backbone) exported to ONNX, for timing only.

The published ``w600k_r50.onnx`` (buffalo_l) and ``glintr100.onnx`` (antelopev2) are
IResNet-50 / IResNet-100 with a 112×112 RGB input and a 512-D output. Random weights give
the same operations, hence true timings of the ONNX path when the real files are absent.
Never use this model for anything but speed. The network is insightface's exact IResNet
(:mod:`facegen.training.fr.models`), exported the way trained models are
(:func:`facegen.training.fr.encoder.export_onnx`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from facegen.training.fr.encoder import export_onnx
from facegen.training.fr.models import build_backbone

ARCHS = {"r18": "iresnet18", "r34": "iresnet34", "r50": "iresnet50", "r100": "iresnet100"}


def export(path: str | Path, arch: str = "r50", seed: int = 0) -> Path:
    """Write a random IResNet ``arch`` as ONNX (input ``input.1`` N×3×112×112 → N×512).

    insightface's initialisation (conv weights N(0, 0.1)) with fresh BatchNorm statistics
    overflows float32 in eval mode for deep nets, so the BN statistics are first set from one
    random batch: the features stay finite, which ``IdentityEncoder`` requires.
    """
    torch.manual_seed(seed)
    model = build_backbone(ARCHS[arch])
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # running stats = this batch's
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 112, 112))
    return export_onnx(model.eval(), path)
