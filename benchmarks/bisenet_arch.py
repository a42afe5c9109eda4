"""BiSeNet face parsing (zllrunning/face-parsing.PyTorch, ``79999_iter.pth``; FaceFusion's
``bisenet_resnet_18.onnx`` / ``bisenet_resnet_34.onnx`` from yakhyo/face-parsing, which keeps
the same network and adds a ResNet-34 backbone), random weights, for timing only.

As ``model.py`` and ``resnet.py`` of zllrunning/face-parsing.PyTorch (commit d2e684c) and
``models/bisenet.py`` of yakhyo/face-parsing build it, 512×512 input, 19 classes:

- context path: a ResNet (BasicBlocks, [2, 2, 2, 2] for 18, [3, 4, 6, 3] for 34; no fc) gives
  features at 1/8 (128 ch), 1/16 (256 ch) and 1/32 (512 ch); the 1/32 feature goes through an
  attention refinement module (3×3 conv-BN-ReLU to 128, then channel attention: global
  average → 1×1 conv → BN → sigmoid) plus a global-average context (1×1 conv-BN-ReLU), is
  upsampled (nearest) to 1/16 and refined by a 3×3 conv-BN-ReLU; the same again from 1/16
  (plus that) to 1/8;
- no separate spatial path: the repository replaced it by the ResNet's 1/8 feature;
- feature fusion module: concatenation (128 + 128) → 1×1 conv-BN-ReLU to 256 → channel
  attention (global average, 1×1 to 64, ReLU, 1×1 to 256, sigmoid), ``feat · att + feat``;
- three heads (3×3 conv-BN-ReLU, 1×1 conv to 19): on the fused 1/8 feature (mid 256) and on
  the two context features (mid 64), each upsampled bilinearly (align_corners) to 512×512.

The exported file returns all three heads (the first, ``output``, is the one used), so this
module does too. Parameters: 13.3 M for ResNet-18, 23.4 M for ResNet-34 (batch-norm
statistics not counted; exported, BN folds into the convs). Published files: ``79999_iter.pth``
53 MB, ``bisenet_resnet_18.onnx`` 51 MiB and ``bisenet_resnet_34.onnx`` 89 MiB, i.e. about
13.4 M and 23.3 M fp32 values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CLASSES = 19
LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def _gap(x):
    return x.mean(dim=(2, 3), keepdim=True)


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
        )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    def __init__(self, depth: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )  # fmt: skip
        stages, cin = [], 64
        for i, n in enumerate(LAYERS[depth]):
            cout = 64 << i
            blocks = [BasicBlock(cin, cout, 1 if i == 0 else 2)]
            blocks += [BasicBlock(cout, cout) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        x = self.stages[0](self.stem(x))
        f8 = self.stages[1](x)
        f16 = self.stages[2](f8)
        return f8, f16, self.stages[3](f16)


class ARM(nn.Module):
    """Attention refinement module."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.att = nn.Sequential(nn.Conv2d(cout, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        feat = self.conv(x)
        return feat * torch.sigmoid(self.att(_gap(feat)))


class ContextPath(nn.Module):
    def __init__(self, depth: int) -> None:
        super().__init__()
        self.backbone = ResNet(depth)
        self.arm16 = ARM(256, 128)
        self.arm32 = ARM(512, 128)
        self.head32 = ConvBNReLU(128, 128)
        self.head16 = ConvBNReLU(128, 128)
        self.avg = ConvBNReLU(512, 128, k=1)

    def forward(self, x):
        f8, f16, f32 = self.backbone(x)
        up32 = self.arm32(f32) + self.avg(_gap(f32))
        up32 = self.head32(F.interpolate(up32, size=f16.shape[2:], mode="nearest"))
        up16 = self.arm16(f16) + up32
        up16 = self.head16(F.interpolate(up16, size=f8.shape[2:], mode="nearest"))
        return f8, up16, up32


class FFM(nn.Module):
    """Feature fusion module."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, k=1)
        self.att = nn.Sequential(
            nn.Conv2d(cout, cout // 4, 1, bias=False), nn.ReLU(),
            nn.Conv2d(cout // 4, cout, 1, bias=False), nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, fsp, fcp):
        feat = self.conv(torch.cat([fsp, fcp], dim=1))
        return feat * self.att(_gap(feat)) + feat


class Head(nn.Sequential):
    def __init__(self, cin: int, mid: int) -> None:
        super().__init__(ConvBNReLU(cin, mid), nn.Conv2d(mid, CLASSES, 1, bias=False))


class BiSeNetArch(nn.Module):
    def __init__(self, depth: int = 18) -> None:
        super().__init__()
        self.cp = ContextPath(depth)
        self.ffm = FFM(256, 256)
        self.out = Head(256, 256)
        self.out16 = Head(128, 64)
        self.out32 = Head(128, 64)

    def forward(self, x):
        size = x.shape[2:]
        f8, cp8, cp16 = self.cp(x)
        outs = (self.out(self.ffm(f8, cp8)), self.out16(cp8), self.out32(cp16))
        return tuple(F.interpolate(o, size=size, mode="bilinear", align_corners=True) for o in outs)


def build_bisenet(depth: int = 18) -> nn.Module:
    """BiSeNet in the published signature: ``input`` N×3×512×512 in, three N×19×512×512 logit
    maps out (the first is the parsing)."""
    return BiSeNetArch(depth).eval()
