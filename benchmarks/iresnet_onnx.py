"""A randomly initialised IResNet (ArcFace's backbone) exported to ONNX, for timing only.

The published ``w600k_r50.onnx`` (buffalo_l) and ``glintr100.onnx`` (antelopev2) are
IResNet-50 / IResNet-100 with a 112×112 RGB input and a 512-D output. Random weights give
the same operations, hence true timings of the ONNX path when the real files are absent.
Never use this model for anything but speed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

LAYERS = {"r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.short(x)


class IResNet(nn.Module):
    def __init__(self, layers: tuple[int, ...], dim: int = 512) -> None:
        super().__init__()
        stem = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)]
        blocks: list[nn.Module] = []
        cin = 64
        for n, cout in zip(layers, (64, 128, 256, 512)):
            for i in range(n):
                blocks.append(_Block(cin, cout, 2 if i == 0 else 1))
                cin = cout
        self.features = nn.Sequential(*stem, *blocks, nn.BatchNorm2d(512))
        self.fc = nn.Linear(512 * 7 * 7, dim)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(torch.flatten(self.features(x), 1)))


def export(path: str | Path, arch: str = "r50", seed: int = 0) -> Path:
    """Write a random IResNet ``arch`` as ONNX (input ``input.1`` N×3×112×112 → N×512)."""
    torch.manual_seed(seed)
    model = IResNet(LAYERS[arch]).eval()
    p = Path(path)
    torch.onnx.export(
        model,
        torch.zeros(1, 3, 112, 112),
        str(p),
        input_names=["input.1"],
        output_names=["embedding"],
        dynamic_axes={"input.1": {0: "N"}, "embedding": {0: "N"}},
        dynamo=False,
    )
    return p
