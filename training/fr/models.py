"""Face-recognition networks: IResNet backbones and margin-softmax heads.

Backbones follow insightface ``arcface_torch``'s ``backbones/iresnet.py`` layer for layer, with
the same module names, so the published ``backbone.pth`` state dicts load unchanged
(:func:`load_insightface_backbone`) and our checkpoints load into their code:

* stem ``conv1`` (3×3, stride 1) → ``bn1`` → ``prelu``;
* ``layer1..layer4`` of ``IBasicBlock`` (``bn1 → conv1 → bn2 → prelu → conv2 → bn3`` plus the
  residual; the first block of every stage has stride 2 on ``conv2`` and a ``downsample``
  = 1×1 conv + BN);
* ``bn2`` → flatten → ``dropout`` → ``fc`` (``512·7·7 → num_features``) → ``features``
  (BatchNorm1d whose weight is frozen at 1).

Input: float32 ``(N, 3, S, S)`` RGB normalised as ``(x / 255 - 0.5) / 0.5`` (range [-1, 1]),
``S = 112`` for the standard models. Output: float32 ``(N, num_features)`` unnormalised
features. ``width`` (channels of the first stage, 64 in insightface) and ``input_size`` make
small variants for CPU tests; any other value than 64 / 112 is no longer insightface-loadable.

Heads (:class:`ArcFaceHead`, :class:`CosFaceHead`, :class:`AdaFaceHead`) hold the class
centres ``weight`` ``(num_classes, embedding_size)`` (``arcface_torch``'s PartialFC layout)
and turn features + labels into scaled logits for cross-entropy.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from facegen.errors import InvalidArgumentError, InvalidModelError, UnknownNameError
from facegen.fileio import write_json
from facegen.validate import check_int, check_number

__all__ = [
    "ARCHITECTURES",
    "HEADS",
    "AdaFaceHead",
    "ArcFaceHead",
    "CosFaceHead",
    "IBasicBlock",
    "IResNet",
    "IResNetConfig",
    "MarginHead",
    "arcface_logits",
    "build_backbone",
    "build_head",
    "cosface_logits",
    "load_backbone",
    "load_insightface_backbone",
    "read_config",
    "save_backbone",
]

logger = logging.getLogger(__name__)

#: Blocks per stage of insightface's IResNets.
ARCHITECTURES: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """insightface's pre-activation basic block: BN-conv-BN-PReLU-conv(stride)-BN + residual."""

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


@dataclass(frozen=True)
class IResNetConfig:
    """Architecture of an :class:`IResNet` (what ``config.json`` stores under ``"backbone"``).

    ``layers``: blocks per stage; ``num_features``: embedding size; ``width``: channels of the
    first stage (stages have ``width · (1, 2, 4, 8)``; 64 = insightface); ``input_size``:
    square input side in pixels (112 = insightface); ``dropout``: before ``fc``.
    """

    layers: tuple[int, int, int, int] = ARCHITECTURES["iresnet50"]
    num_features: int = 512
    width: int = 64
    input_size: int = 112
    dropout: float = 0.0
    arch: str = "iresnet50"

    def __post_init__(self) -> None:
        layers = tuple(int(n) for n in self.layers)
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise InvalidArgumentError(f"`layers` must be 4 block counts >= 1, got {self.layers!r}")
        object.__setattr__(self, "layers", layers)
        for name in ("num_features", "width"):
            check_int(getattr(self, name), name, minimum=1)
        check_int(self.input_size, "input_size", minimum=16)
        check_number(self.dropout, "dropout", minimum=0, maximum=1, max_open=True)

    @property
    def feature_map_size(self) -> int:
        """Side of ``layer4``'s output: four stride-2 3×3 convs (112 → 7, 56 → 4)."""
        s = self.input_size
        for _ in range(4):
            s = (s - 1) // 2 + 1
        return s

    @property
    def insightface_compatible(self) -> bool:
        return self.width == 64 and self.input_size == 112

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IResNetConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise InvalidModelError(f"backbone config has unknown keys: {sorted(unknown)}")
        kw = dict(d)
        if "layers" in kw:
            kw["layers"] = tuple(kw["layers"])
        return cls(**kw)


class IResNet(nn.Module):
    """insightface IResNet (see the module docstring).

    ``forward``: float32 ``(N, 3, S, S)`` in [-1, 1] → float32 ``(N, num_features)``.
    Initialisation matches insightface: conv weights ``N(0, 0.1)``, BN weight 1 / bias 0,
    ``features.weight`` fixed at 1 (not trained).
    """

    def __init__(self, config: IResNetConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = IResNetConfig(**kwargs)
        elif kwargs:
            raise TypeError("give either `config` or keyword arguments, not both")
        self.config = config
        w = config.width
        self.inplanes = w
        self.conv1 = nn.Conv2d(3, w, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w, eps=1e-05)
        self.prelu = nn.PReLU(w)
        self.layer1 = self._make_layer(w, config.layers[0])
        self.layer2 = self._make_layer(2 * w, config.layers[1])
        self.layer3 = self._make_layer(4 * w, config.layers[2])
        self.layer4 = self._make_layer(8 * w, config.layers[3])
        self.bn2 = nn.BatchNorm2d(8 * w, eps=1e-05)
        self.dropout = nn.Dropout(p=config.dropout, inplace=True)
        self.fc = nn.Linear(8 * w * config.feature_map_size**2, config.num_features)
        self.features = nn.BatchNorm1d(config.num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=1e-05),
        )
        layers = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    @property
    def input_size(self) -> int:
        return self.config.input_size

    @property
    def num_features(self) -> int:
        return self.config.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def build_backbone(
    arch: str = "iresnet50",
    *,
    num_features: int = 512,
    width: int = 64,
    input_size: int = 112,
    dropout: float = 0.0,
) -> IResNet:
    """An IResNet by name (``ARCHITECTURES``); defaults give insightface's exact network."""
    if arch not in ARCHITECTURES:
        raise UnknownNameError("backbone", arch, ARCHITECTURES)
    return IResNet(
        IResNetConfig(
            layers=ARCHITECTURES[arch],
            num_features=num_features,
            width=width,
            input_size=input_size,
            dropout=dropout,
            arch=arch,
        )
    )


def load_insightface_backbone(path: str | Path, arch: str = "iresnet50", **kwargs: Any) -> IResNet:
    """Load a published arcface_torch ``backbone.pth`` (a plain state dict) into an IResNet.

    Read with ``torch.load(weights_only=True)`` (no pickled code runs); keys and shapes must
    match exactly (a ``module.`` prefix from DataParallel checkpoints is stripped).
    ``kwargs`` go to :func:`build_backbone` (e.g. ``num_features`` for a non-512 model).
    Returns the model in eval mode.
    """
    p = Path(path)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise InvalidModelError(f"{p}: not a loadable weights-only torch file ({exc})") from exc
    if not isinstance(state, Mapping):
        raise InvalidModelError(f"{p} must hold a state dict, got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = build_backbone(arch, **kwargs)
    _load_state(model, state, str(p))
    return model.eval()


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise InvalidModelError(
            f"{where}: state dict does not fit the backbone; missing {missing[:5]}"
            f"{' …' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' …' if len(unexpected) > 5 else ''}"
        )
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise InvalidModelError(
            f"{where}: `{k}` must have shape {tuple(own[k].shape)}, got {tuple(state[k].shape)}"
        )
    model.load_state_dict(dict(state))


def save_backbone(
    model: IResNet, folder: str | Path, *, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write ``config.json`` (``{"backbone": IResNetConfig, **extra}``) and ``model.safetensors``.

    The weights keep insightface's key names. Returns the folder.
    """
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    cfg = {"backbone": model.config.to_dict(), **(extra or {})}
    write_json(out / CONFIG_NAME, cfg, sort_keys=True)
    return out


def read_config(folder: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a saved backbone folder."""
    p = Path(folder) / CONFIG_NAME
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidModelError(f"`folder` must hold {CONFIG_NAME}, got {str(folder)!r}") from None
    except (OSError, ValueError) as exc:
        raise InvalidModelError(f"{p}: unreadable config ({exc})") from exc
    if not isinstance(cfg, dict) or not isinstance(cfg.get("backbone"), dict):
        raise InvalidModelError(f"{p} must hold a 'backbone' object")
    return cfg


def load_backbone(folder: str | Path, *, device: str | torch.device = "cpu") -> IResNet:
    """Load a folder written by :func:`save_backbone`; returns the model in eval mode."""
    from safetensors.torch import load_file

    cfg = read_config(folder)
    model = IResNet(IResNetConfig.from_dict(cfg["backbone"]))
    w = Path(folder) / WEIGHTS_NAME
    if not w.is_file():
        raise InvalidModelError(f"`folder` must hold {WEIGHTS_NAME}, got {str(folder)!r}")
    _load_state(model, load_file(str(w)), str(w))
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# margin heads


def _targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with a label (``!= -1``, arcface_torch's "not on this rank") and their classes."""
    rows = torch.nonzero(labels != -1, as_tuple=False).squeeze(1)
    return rows, labels[rows].long()


def arcface_logits(
    cosine: torch.Tensor,
    labels: torch.Tensor,
    *,
    s: float = 64.0,
    m: float = 0.5,
    easy_margin: bool = False,
) -> torch.Tensor:
    """Additive angular margin: target logit ``cos θ → cos(θ + m)``, all logits × ``s``.

    ``cosine``: float ``(B, C)`` in [-1, 1]; ``labels``: int64 ``(B,)`` (``-1`` = no target).
    As arcface_torch's ``CombinedMarginLoss`` (m1 = 1, m3 = 0): ``cos(θ + m)`` is computed as
    ``cos θ cos m − sin θ sin m``; where ``θ + m`` would pass π (``cos θ <= cos(π − m)``) the
    target becomes ``cos θ − m sin m`` instead, keeping the logit monotonic in θ;
    ``easy_margin`` applies the margin only where ``cos θ > 0``.
    """
    rows, cls = _targets(labels)
    t = cosine[rows, cls]
    sin_t = (1.0 - t * t).clamp_min(1e-12).sqrt()  # finite gradient at |cos| = 1
    cos_tm = t * math.cos(m) - sin_t * math.sin(m)
    if easy_margin:
        final = torch.where(t > 0, cos_tm, t)
    else:
        final = torch.where(t > math.cos(math.pi - m), cos_tm, t - math.sin(math.pi - m) * m)
    return cosine.index_put((rows, cls), final.to(cosine.dtype)) * s


def cosface_logits(
    cosine: torch.Tensor, labels: torch.Tensor, *, s: float = 64.0, m: float = 0.4
) -> torch.Tensor:
    """Additive cosine margin: target logit ``cos θ − m``, all logits × ``s`` (shapes as above)."""
    rows, cls = _targets(labels)
    return cosine.index_put((rows, cls), cosine[rows, cls] - m) * s


class MarginHead(nn.Module):
    """Normalised-softmax classifier over ``num_classes`` class centres.

    ``weight``: float32 ``(num_classes, embedding_size)``, initialised ``N(0, 0.01)`` like
    arcface_torch's PartialFC. ``forward(features (B, D), labels (B,) int64)`` → scaled
    logits ``(B, C)`` with the margin on each row's target; feed them to cross-entropy.
    Features may be unnormalised: heads normalise them (AdaFace also uses their norms).
    """

    def __init__(self, embedding_size: int, num_classes: int, *, s: float, m: float) -> None:
        super().__init__()
        check_int(embedding_size, "embedding_size", minimum=1)
        check_int(num_classes, "num_classes", minimum=1)
        check_number(s, "s", minimum=0, min_open=True)
        if not 0 <= check_number(m, "m") < math.pi / 2:
            raise InvalidArgumentError(f"`m` must be in [0, π/2), got {m}")
        self.embedding_size, self.num_classes, self.s, self.m = embedding_size, num_classes, s, m
        self.weight = nn.Parameter(torch.normal(0, 0.01, (num_classes, embedding_size)))

    def cosine(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` cosine similarities between features and class centres, clamped to [-1, 1]."""
        cos = F.linear(F.normalize(features.float()), F.normalize(self.weight.float()))
        return cos.clamp(-1.0, 1.0)

    def margin(
        self, cosine: torch.Tensor, labels: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2 or features.shape[1] != self.embedding_size:
            raise InvalidArgumentError(
                f"`features` must be (B, {self.embedding_size}), got {tuple(features.shape)}"
            )
        if labels.shape != features.shape[:1]:
            raise InvalidArgumentError(
                f"`labels` must be ({features.shape[0]},), got {tuple(labels.shape)}"
            )
        # margins need float32 (cos near ±1, s = 64): never run them under autocast
        with torch.autocast(device_type=features.device.type, enabled=False):
            return self.margin(self.cosine(features), labels, features)

    def extra_repr(self) -> str:
        return f"{self.embedding_size} → {self.num_classes}, s={self.s}, m={self.m}"


class ArcFaceHead(MarginHead):
    """ArcFace (Deng et al. 2019): s = 64, m = 0.5 rad (see :func:`arcface_logits`)."""

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        *,
        s: float = 64.0,
        m: float = 0.5,
        easy_margin: bool = False,
    ) -> None:
        super().__init__(embedding_size, num_classes, s=s, m=m)
        self.easy_margin = easy_margin

    def margin(
        self, cosine: torch.Tensor, labels: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        return arcface_logits(cosine, labels, s=self.s, m=self.m, easy_margin=self.easy_margin)


class CosFaceHead(MarginHead):
    """CosFace (Wang et al. 2018): s = 64, m = 0.4 (see :func:`cosface_logits`)."""

    def __init__(
        self, embedding_size: int, num_classes: int, *, s: float = 64.0, m: float = 0.4
    ) -> None:
        super().__init__(embedding_size, num_classes, s=s, m=m)

    def margin(
        self, cosine: torch.Tensor, labels: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        return cosface_logits(cosine, labels, s=self.s, m=self.m)


class AdaFaceHead(MarginHead):
    """AdaFace (Kim et al. 2022): a margin adapted to image quality via the feature norm.

    Per sample, ``ẑ = clip(h · (‖f‖ − μ) / (σ + ε), −1, 1)`` where μ, σ are an EMA
    (``t_alpha`` = 0.01, the paper's α) of the batch mean / std of the (detached, clipped to
    [0.001, 100]) feature norms, kept as buffers ``batch_mean`` (init 20) and ``batch_std``
    (init 100), updated in training mode only. The target logit becomes
    ``cos(clip(θ − m·ẑ, ε, π − ε)) − (m + m·ẑ)``; all logits × ``s``. ``ε = 1e-3``; cosines
    are clamped to ``[−1 + ε, 1 − ε]`` first, as in the reference implementation.
    """

    eps = 1e-3

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        *,
        s: float = 64.0,
        m: float = 0.4,
        h: float = 0.333,
        t_alpha: float = 0.01,
    ) -> None:
        super().__init__(embedding_size, num_classes, s=s, m=m)
        check_number(t_alpha, "t_alpha", minimum=0, maximum=1, min_open=True)
        check_number(h, "h", minimum=0, min_open=True)
        self.h, self.t_alpha = h, t_alpha
        self.register_buffer("batch_mean", torch.full((1,), 20.0))
        self.register_buffer("batch_std", torch.full((1,), 100.0))

    def margin(
        self, cosine: torch.Tensor, labels: torch.Tensor, features: torch.Tensor
    ) -> torch.Tensor:
        cosine = cosine.clamp(-1 + self.eps, 1 - self.eps)
        norms = features.detach().float().norm(dim=1).clamp(0.001, 100)
        if self.training:
            with torch.no_grad():
                a = self.t_alpha
                std = norms.std() if norms.numel() > 1 else torch.zeros_like(norms[0])
                self.batch_mean.mul_(1 - a).add_(a * norms.mean())
                self.batch_std.mul_(1 - a).add_(a * std)
        scaler = ((norms - self.batch_mean) / (self.batch_std + self.eps) * self.h).clamp(-1, 1)
        rows, cls = _targets(labels)
        z = scaler[rows]
        theta = cosine[rows, cls].acos()
        target = (theta - self.m * z).clamp(self.eps, math.pi - self.eps).cos() - (
            self.m + self.m * z
        )
        return cosine.index_put((rows, cls), target) * self.s


#: Head names → (class, default margin).
HEADS: dict[str, tuple[type[MarginHead], float]] = {
    "arcface": (ArcFaceHead, 0.5),
    "cosface": (CosFaceHead, 0.4),
    "adaface": (AdaFaceHead, 0.4),
}


def build_head(
    name: str,
    embedding_size: int,
    num_classes: int,
    *,
    s: float = 64.0,
    m: float | None = None,
    **kwargs: Any,
) -> MarginHead:
    """A margin head by name (``HEADS``); ``m=None`` takes the paper's margin."""
    if name not in HEADS:
        raise UnknownNameError("margin head", name, HEADS)
    cls, default_m = HEADS[name]
    return cls(embedding_size, num_classes, s=s, m=default_m if m is None else m, **kwargs)
