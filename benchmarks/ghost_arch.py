"""GHOST's generator (ai-forever/ghost, formerly sber-swap: the AEI-Net of FaceShifter with a
U-Net attribute encoder), as FaceFusion's ``ghost_{1,2,3}_256.onnx`` export it from
``G_unet_{1block,2blocks,3blocks}.pth``, random weights, for timing only.

As ``network/AEI_Net.py`` and ``network/AADLayer.py`` (commit ea23cce) build
``AEI_Net("unet", num_blocks, c_id=512)`` at 256×256:

- attribute encoder: seven 4×4 stride-2 conv-BN-LeakyReLU(0.1) (3→32→64→128→256→512→1024→1024,
  down to 2×2), then six 4×4 stride-2 transposed conv-BN-LeakyReLU(0.1) back up to 128×128,
  each concatenated with the encoder feature of its size (U-Net), and a ×2 bilinear upsampling:
  eight attribute maps, 1024 ch at 2×2, 2048 at 4×4, 1024 at 8×8, 512 at 16, 256 at 32, 128 at
  64, 64 at 128 and 64 at 256;
- generator: a 2×2 transposed conv lifts the 512-D source vector to 1024×2×2, then at each of
  the eight sizes an AAD residual block followed by ×2 bilinear upsampling (none after the
  last), then tanh. Channels 1024, 1024, 1024, 512, 256, 128, 64 into the blocks at 2 … 128,
  and 64→3 at 256. An AAD block is ``num_blocks`` × (AAD layer → ReLU → 3×3 conv, no bias),
  the last conv changing the width, plus a shortcut that is one more such triple when the
  width changes. An AAD layer instance-normalises h and mixes
  ``(1 − M) · (γ_attr · h + β_attr) + M · (γ_id · h + β_id)``, where γ_attr, β_attr are 1×1
  convs of the attribute map, γ_id, β_id linear maps of the source vector and M = sigmoid of
  a 1×1 conv of h.

Parameters (without batch-norm statistics): 128.5 M for 1 block, 184.3 M for 2 and 240.2 M
for 3; the attribute encoder is 67.1 M of each. The same counts as the reference module built
from the repository. The ONNX outputs the swapped face only (not the attribute maps), in
[-1, 1].
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

ENC = (3, 32, 64, 128, 256, 512, 1024, 1024)


def _up(x):
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)


class Down(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1)
        )


class Up(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout),
            nn.LeakyReLU(0.1),
        )  # fmt: skip


class AttrEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down = nn.ModuleList(Down(i, o) for i, o in itertools.pairwise(ENC))
        skips = ENC[-2:0:-1]  # 1024, 512, 256, 128, 64, 32: the skip widths, 4×4 … 128×128
        ins = [ENC[-1]] + [2 * c for c in skips[:-1]]
        self.up = nn.ModuleList(Up(i, o) for i, o in zip(ins, skips))

    def forward(self, x):
        feats = []
        for block in self.down:
            x = block(x)
            feats.append(x)
        attrs = [x]
        for block, skip in zip(self.up, feats[-2::-1]):
            x = torch.cat([block(x), skip], dim=1)
            attrs.append(x)
        attrs.append(_up(x))
        return attrs


class AADLayer(nn.Module):
    def __init__(self, c: int, c_attr: int, c_id: int = 512) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(c)
        self.gamma_attr = nn.Conv2d(c_attr, c, 1)
        self.beta_attr = nn.Conv2d(c_attr, c, 1)
        self.gamma_id = nn.Linear(c_id, c)
        self.beta_id = nn.Linear(c_id, c)
        self.mask = nn.Conv2d(c, 1, 1)

    def forward(self, h, attr, source):
        h = self.norm(h)
        a = self.gamma_attr(attr) * h + self.beta_attr(attr)
        i = self.gamma_id(source)[..., None, None] * h + self.beta_id(source)[..., None, None]
        m = torch.sigmoid(self.mask(h))
        return (1 - m) * a + m * i


class AADConv(nn.Module):
    """AAD layer → ReLU → 3×3 conv."""

    def __init__(self, cin: int, cout: int, c_attr: int) -> None:
        super().__init__()
        self.aad = AADLayer(cin, c_attr)
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)

    def forward(self, h, attr, source):
        return self.conv(F.relu(self.aad(h, attr, source)))


class AADResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, c_attr: int, blocks: int) -> None:
        super().__init__()
        outs = [cin] * (blocks - 1) + [cout]
        self.body = nn.ModuleList(AADConv(cin, o, c_attr) for o in outs)
        self.shortcut = AADConv(cin, cout, c_attr) if cin != cout else None

    def forward(self, h, attr, source):
        x = h
        for layer in self.body:
            x = layer(x, attr, source)
        return x + (h if self.shortcut is None else self.shortcut(h, attr, source))


class GhostArch(nn.Module):
    def __init__(self, blocks: int = 3) -> None:
        super().__init__()
        self.encoder = AttrEncoder()
        self.lift = nn.ConvTranspose2d(512, 1024, 2)
        cins = (1024, 1024, 1024, 1024, 512, 256, 128, 64)
        couts = (*cins[1:], 3)
        attrs = (1024, 2048, 1024, 512, 256, 128, 64, 64)
        self.blocks = nn.ModuleList(
            AADResBlock(i, o, a, blocks) for i, o, a in zip(cins, couts, attrs)
        )

    def forward(self, target, source):
        attrs = self.encoder(target)
        x = self.lift(source[..., None, None])
        for k, (block, attr) in enumerate(zip(self.blocks, attrs)):
            x = block(x, attr, source)
            if k < len(self.blocks) - 1:
                x = _up(x)
        return torch.tanh(x)


def build_ghost(blocks: int = 3) -> nn.Module:
    """GHOST ``G_unet_{blocks}block(s)`` in FaceFusion's signature: ``target`` N×3×256×256 in
    [-1, 1] and ``source`` N×512 in, N×3×256×256 in [-1, 1] out."""
    return GhostArch(blocks).eval()
