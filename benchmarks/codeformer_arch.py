"""CodeFormer (sczhou/CodeFormer, ``codeformer.pth`` v0.1.0) as FaceFusion exports it, random
weights, for timing only.

The configuration is the one ``inference_codeformer.py`` and ``options/CodeFormer_stage3.yml``
build (``basicsr/archs/codeformer_arch.py`` and ``vqgan_arch.py``, read at commit b33cc7d):

- VQGAN encoder at 512×512: a 3×3 conv to nf = 64 channels, then six resolutions
  (512 … 16) with channel multipliers [1, 2, 2, 4, 4, 8], two residual blocks each
  (GroupNorm(32) → swish → 3×3 conv, twice, with a 1×1 skip when the width changes), a
  single-head self-attention block after each residual block at 16×16, a stride-2 3×3 conv
  between resolutions; then residual block, attention, residual block, GroupNorm and a 3×3
  conv to the 256-D latent (16×16 = 256 tokens);
- a transformer on the tokens: ``Linear(256, 512)`` plus a learnt 256×512 position embedding
  (added to queries and keys), nine pre-norm layers with 8-head attention and a GELU MLP of
  width 1024 (``dim_mlp = 2 × dim_embd``), LayerNorm and a bias-free ``Linear(512, 1024)`` to
  logits over the 1024-entry codebook;
- the top code of each token looked up in the 1024×256 codebook;
- the VQGAN generator (the encoder's mirror: 3×3 conv to 512, residual/attention/residual,
  then per resolution 16 … 512 two residual blocks, attention at 16, nearest ×2 upsampling and
  a 3×3 conv between resolutions, GroupNorm and a 3×3 conv to RGB);
- the controllable feature transformation (``connect_list`` 32, 64, 128, 256): after the first
  generator residual block at each of those resolutions, the encoder feature of the same size
  (after that resolution's second residual block) is concatenated with the decoder's, passed
  through a residual block back to the decoder width and two conv–LeakyReLU–conv branches
  (scale, shift), and the decoder feature becomes ``dec + w · (dec · scale + shift)``.

FaceFusion's ``codeformer.onnx`` takes ``input`` (N×3×512×512) and ``weight`` (the fidelity w,
float64) and returns the image; the fusion branches always run and w only scales them, as here.
Parameters: 94.1 M, the same count as the reference module built from the repository (and as
``codeformer.pth``: 377 MB of fp32 ``params_ema``). Of these, 74.1 M are the convolutional
encoder, generator and fusion layers; the transformer adds 19.7 M and the codebook 0.26 M.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NF = 64
CH_MULT = (1, 2, 2, 4, 4, 8)
LATENT = 256
CODEBOOK = 1024
D_MODEL = 512
CONNECT = (32, 64, 128, 256)


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6)


def _swish(x):
    return x * torch.sigmoid(x)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H·W positions, 1×1 convs for q, k, v and out."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = _norm(c)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj = nn.Conv2d(c, c, 1)
        self.scale = c**-0.5

    def forward(self, x):
        h = self.norm(x)
        q = self.q(h).flatten(2).transpose(1, 2)  # N, HW, C
        k = self.k(h).flatten(2)  # N, C, HW
        v = self.v(h).flatten(2)  # N, C, HW
        attn = torch.softmax(torch.bmm(q, k) * self.scale, dim=2)  # N, HW(query), HW(key)
        out = torch.bmm(v, attn.transpose(1, 2)).reshape(x.shape)
        return x + self.proj(out)


class Downsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution: two residual blocks (each followed by attention at 16×16)."""

    def __init__(self, cin: int, cout: int, attn: bool) -> None:
        super().__init__()
        self.res = nn.ModuleList([ResBlock(cin, cout), ResBlock(cout, cout)])
        self.attn = nn.ModuleList(AttnBlock(cout) for _ in range(2)) if attn else None

    def block(self, i: int, x):
        x = self.res[i](x)
        return self.attn[i](x) if self.attn is not None else x


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, NF, 3, padding=1)
        chans = [NF * m for m in CH_MULT]
        ins = [NF, *chans[:-1]]
        self.levels = nn.ModuleList(
            Level(i, o, attn=(512 >> k) == 16) for k, (i, o) in enumerate(zip(ins, chans))
        )
        self.down = nn.ModuleList(Downsample(c) for c in chans[:-1])
        c = chans[-1]
        self.mid = nn.ModuleList([ResBlock(c, c), AttnBlock(c), ResBlock(c, c)])
        self.norm_out = _norm(c)
        self.conv_out = nn.Conv2d(c, LATENT, 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        skips = {}
        for k, level in enumerate(self.levels):
            x = level.block(1, level.block(0, x))
            size = 512 >> k
            if size in CONNECT:
                skips[size] = x
            if k < len(self.down):
                x = self.down[k](x)
        for block in self.mid:
            x = block(x)
        return self.conv_out(self.norm_out(x)), skips


class Fuse(nn.Module):
    """Controllable feature transformation: ``dec + w · (dec · scale + shift)``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.encode = ResBlock(2 * c, c)
        self.scale = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(c, c, 3, padding=1)
        )
        self.shift = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(c, c, 3, padding=1)
        )

    def forward(self, enc, dec, w):
        h = self.encode(torch.cat([enc, dec], dim=1))
        return dec + w * (dec * self.scale(h) + self.shift(h))


class Generator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        chans = [NF * m for m in CH_MULT][::-1]  # 512, 256, 256, 128, 128, 64
        self.conv_in = nn.Conv2d(LATENT, chans[0], 3, padding=1)
        c = chans[0]
        self.mid = nn.ModuleList([ResBlock(c, c), AttnBlock(c), ResBlock(c, c)])
        ins = [chans[0], *chans[:-1]]
        self.levels = nn.ModuleList(
            Level(i, o, attn=(16 << k) == 16) for k, (i, o) in enumerate(zip(ins, chans))
        )
        self.up = nn.ModuleList(Upsample(c) for c in chans[:-1])
        sizes = [16 << k for k in range(len(chans))]  # 16 … 512
        self.fuse = nn.ModuleDict({str(s): Fuse(c) for s, c in zip(sizes, chans) if s in CONNECT})
        self.norm_out = _norm(chans[-1])
        self.conv_out = nn.Conv2d(chans[-1], 3, 3, padding=1)

    def forward(self, x, skips, w):
        x = self.conv_in(x)
        for block in self.mid:
            x = block(x)
        for k, level in enumerate(self.levels):
            size = 16 << k
            x = level.block(0, x)
            if size in CONNECT:
                x = self.fuse[str(size)](skips[size], x, w)
            x = level.block(1, x)
            if k < len(self.up):
                x = self.up[k](x)
        return self.conv_out(self.norm_out(x))


class TransformerLayer(nn.Module):
    def __init__(self, d: int = D_MODEL, heads: int = 8, mlp: int = 2 * D_MODEL) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, mlp), nn.GELU(), nn.Linear(mlp, d))

    def forward(self, x, pos):
        h = self.norm1(x)
        qk = h + pos
        x = x + self.attn(qk, qk, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class CodeFormerArch(nn.Module):
    def __init__(self, layers: int = 9) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.position_emb = nn.Parameter(torch.zeros(256, D_MODEL))
        self.feat_emb = nn.Linear(LATENT, D_MODEL)
        self.layers = nn.ModuleList(TransformerLayer() for _ in range(layers))
        self.logits = nn.Sequential(nn.LayerNorm(D_MODEL), nn.Linear(D_MODEL, CODEBOOK, bias=False))
        self.codebook = nn.Embedding(CODEBOOK, LATENT)
        self.generator = Generator()

    def forward(self, image, weight):
        w = weight.to(image.dtype).reshape(-1)[:1].reshape(1, 1, 1, 1)
        lq, skips = self.encoder(image)
        x = self.feat_emb(lq.flatten(2).transpose(1, 2))  # N, 256 tokens, 512
        for layer in self.layers:
            x = layer(x, self.position_emb)
        codes = self.logits(x).argmax(dim=2)  # N, 256
        quant = self.codebook(codes).transpose(1, 2).reshape(lq.shape)  # N, 256, 16, 16
        return self.generator(quant, skips, w)


def build_codeformer() -> nn.Module:
    """CodeFormer in FaceFusion's signature: ``input`` N×3×512×512 in [-1, 1] and ``weight``
    (fidelity w, float64, shape (1,)) in, N×3×512×512 out."""
    return CodeFormerArch().eval()
