"""inswapper_128's generator (insightface), random weights, for timing only.

insightface has published no code or paper for inswapper; its architecture is known only from
the ONNX graph of ``inswapper_128.onnx``. This rebuild follows what people have read off that
graph and confirmed by loading its weights into PyTorch:

- the initializer list (printed in ``weight_transfer.ipynb`` of somanchiu/ReSwapper, which maps
  every weight of the ONNX file onto its ``StyleTransferModel_128``): four encoder convs
  (7×7 3→128, 3×3 128→256, 3×3 stride 2 256→512, 3×3 stride 2 512→1024), six style blocks
  ``styles.0``–``styles.5``, each with two 3×3 1024→1024 convs behind a reflection pad and two
  ``Linear(512, 2048)`` that turn the source vector into an AdaIN scale and shift, then three
  3×3 decoder convs (1024→512, 512→256, 256→128) and a 7×7 128→3 conv behind a reflection pad,
  plus two unused 512×512 matrices (``emap``/``buff2fs``: the source-embedding projection that
  the caller applies);
- the order of operations (an independent reimplementation that loads the file with onnx2torch
  and names the graph nodes: ``Conv_40``–``Conv_46`` encoder, ``Conv_62``…``Conv_557`` with
  ``Gemm_73``…``Gemm_568`` for the six blocks, ``Conv_590``–``Conv_612`` decoder): LeakyReLU
  0.2 after each encoder conv; in each block conv → instance norm → AdaIN → ReLU → conv →
  instance norm → AdaIN, plus the block's input; ×2 bilinear upsampling before the first and
  the second decoder conv; LeakyReLU 0.2 after the first three decoder convs; ``(tanh + 1) / 2``.

insightface's own table (deepinsight/inswapper-512-live README) gives INSwapper_128 as
**138.3 M parameters and 174.7 GFLOPs**. This rebuild has 138.3 M parameters (the two unused
512×512 matrices left out) and 174.6 G multiply-adds at 128×128, so both the widths and the
resolutions at which they run match; that is as sure as it gets without the file. Details that
do not change the cost may differ (e.g. whether AdaIN scales by ``s`` or ``1 + s``, or how the
graph spells instance norm: here one ``InstanceNormalization`` node).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AdaIN(nn.Module):
    def __init__(self, channels: int, latent: int = 512) -> None:
        super().__init__()
        self.linear = nn.Linear(latent, 2 * channels)
        self.norm = nn.InstanceNorm2d(channels)

    def forward(self, x, source):
        scale, shift = self.linear(source)[..., None, None].chunk(2, dim=1)
        return self.norm(x) * scale + shift


class StyleBlock(nn.Module):
    def __init__(self, channels: int = 1024) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.style1 = AdaIN(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect")
        self.style2 = AdaIN(channels)

    def forward(self, x, source):
        y = F.relu(self.style1(self.conv1(x), source))
        return x + self.style2(self.conv2(y), source)


class InswapperArch(nn.Module):
    def __init__(self, blocks: int = 6) -> None:
        super().__init__()
        self.down = nn.ModuleList(
            [
                nn.Conv2d(3, 128, 7, padding=3, padding_mode="reflect"),
                nn.Conv2d(128, 256, 3, padding=1),
                nn.Conv2d(256, 512, 3, stride=2, padding=1),
                nn.Conv2d(512, 1024, 3, stride=2, padding=1),
            ]
        )
        self.styles = nn.ModuleList(StyleBlock() for _ in range(blocks))
        self.up1 = nn.Conv2d(1024, 512, 3, padding=1)
        self.up2 = nn.Conv2d(512, 256, 3, padding=1)
        self.up3 = nn.Conv2d(256, 128, 3, padding=1)
        self.out = nn.Conv2d(128, 3, 7, padding=3, padding_mode="reflect")

    def forward(self, target, source):
        x = target
        for conv in self.down:
            x = F.leaky_relu(conv(x), 0.2)
        for block in self.styles:
            x = block(x, source)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = F.leaky_relu(self.up1(x), 0.2)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = F.leaky_relu(self.up2(x), 0.2)
        x = F.leaky_relu(self.up3(x), 0.2)
        return (torch.tanh(self.out(x)) + 1) / 2


def build_inswapper() -> nn.Module:
    """inswapper_128 in the published signature: ``target`` N×3×128×128 and ``source`` N×512
    in, N×3×128×128 in [0, 1] out."""
    return InswapperArch().eval()
