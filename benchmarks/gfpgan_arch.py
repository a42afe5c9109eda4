"""GFPGAN v1.4's network as its paper and configuration describe it (GFPGANv1Clean: a U-Net
that removes degradation and predicts 16 style codes, and a StyleGAN2 decoder whose features
are modulated by spatial feature transforms from the U-Net, channel multiplier 2, 512×512),
random weights, for timing only."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64}
UNET = {k: v // 2 for k, v in CHANNELS.items()}  # the U-Net is half as wide ("narrow" 0.5)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, mode: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, 3, 1, 1)
        self.conv2 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False)
        self.scale = 0.5 if mode == "down" else 2.0

    def forward(self, x):
        out = F.leaky_relu(self.conv1(x), 0.2)
        out = F.interpolate(out, scale_factor=self.scale, mode="bilinear", align_corners=False)
        out = F.leaky_relu(self.conv2(out), 0.2)
        x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return out + self.skip(x)


class ModConv(nn.Module):
    """StyleGAN2's modulated convolution, in its unfused form (scale the input channels by
    the style, convolve with the shared weight, scale the output channels by the
    demodulation): the same result as one weight per sample, and exportable to ONNX."""

    def __init__(self, cin: int, cout: int, k: int, demodulate: bool = True, up: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k) / math.sqrt(cin * k * k))
        self.modulation = nn.Linear(512, cin)
        self.demodulate, self.up, self.k = demodulate, up, k

    def forward(self, x, style):
        s = self.modulation(style)  # (N, cin)
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        out = F.conv2d(x * s[:, :, None, None], self.weight, padding=self.k // 2)
        if self.demodulate:
            wsq = self.weight.pow(2).sum([2, 3])  # (cout, cin)
            d = torch.rsqrt(s.pow(2) @ wsq.t() + 1e-8)  # (N, cout)
            out = out * d[:, :, None, None]
        return out


class StyleConv(nn.Module):
    def __init__(self, cin: int, cout: int, up: bool = False) -> None:
        super().__init__()
        self.conv = ModConv(cin, cout, 3, up=up)
        self.noise_weight = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(1, cout, 1, 1))

    def forward(self, x, style):
        out = self.conv(x, style)
        out = out + self.noise_weight * torch.randn_like(out[:, :1])
        return F.leaky_relu(out + self.bias, 0.2) * math.sqrt(2)


class ToRGB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.conv = ModConv(cin, 3, 1, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, style, skip=None):
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False)
        return out


class GFPGANArch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        sizes = [2**i for i in range(2, 10)]  # 4 … 512
        self.first = nn.Conv2d(3, UNET[512], 1)
        self.down = nn.ModuleList(ResBlock(UNET[s], UNET[s // 2], "down") for s in sizes[:0:-1])
        self.final_conv = nn.Conv2d(UNET[4], UNET[4], 3, 1, 1)
        self.up = nn.ModuleList(ResBlock(UNET[s], UNET[s * 2], "up") for s in sizes[:-1])
        self.final_linear = nn.Linear(UNET[4] * 16, 512 * 16)
        self.cond_scale = nn.ModuleList()
        self.cond_shift = nn.ModuleList()
        for s in sizes[1:]:
            c = UNET[s]  # = half the decoder's channels: the SFT modulates half of them
            for lst in (self.cond_scale, self.cond_shift):
                lst.append(
                    nn.Sequential(
                        nn.Conv2d(c, c, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(c, c, 3, 1, 1)
                    )
                )
        self.const = nn.Parameter(torch.randn(1, 512, 4, 4))
        self.conv1 = StyleConv(512, 512)
        self.to_rgb1 = ToRGB(512)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for s in sizes[1:]:
            cin, cout = CHANNELS[s // 2], CHANNELS[s]
            self.convs.append(StyleConv(cin, cout, up=True))
            self.convs.append(StyleConv(cout, cout))
            self.to_rgbs.append(ToRGB(cout))

    def forward(self, x):
        feat = F.leaky_relu(self.first(x), 0.2)
        skips = []
        for block in self.down:
            feat = block(feat)
            skips.insert(0, feat)
        feat = F.leaky_relu(self.final_conv(feat), 0.2)
        styles = self.final_linear(feat.flatten(1)).view(-1, 16, 512)
        conditions = []
        for i, block in enumerate(self.up):
            feat = block(feat + skips[i])
            conditions.append((self.cond_scale[i](feat), self.cond_shift[i](feat)))
        out = self.conv1(self.const.expand(x.shape[0], -1, -1, -1), styles[:, 0])
        skip = self.to_rgb1(out, styles[:, 1])
        k = 1
        for i, rgb in enumerate(self.to_rgbs):
            out = self.convs[2 * i](out, styles[:, k])
            scale, shift = conditions[i]
            half = out.shape[1] // 2
            out = torch.cat([out[:, :half], out[:, half:] * scale + shift], dim=1)  # SFT, half
            out = self.convs[2 * i + 1](out, styles[:, k + 1])
            skip = rgb(out, styles[:, k + 2], skip)
            k += 2
        return skip
