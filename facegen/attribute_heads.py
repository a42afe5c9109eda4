"""Attribute heads: face attributes estimated from an identity vector alone.

An :class:`AttributeHead` is a small torch model on the unit-norm identity vectors of ONE
encoder (``encoder_id``, width ``dim``): a shared body (nothing for ``kind="linear"``, one
hidden layer of ``hidden`` GELU units for ``kind="mlp"``) and, per attribute, a softmax over
its labels (categorical) or one regression output (numeric). It knows a synthetic identity's
attributes before any image of it is generated. Heads are trained by
:func:`facegen.training.attributes.train_attribute_head` (``facegen train attributes``).

A head folder holds

``config.json``
    ``format`` (``"facegen-attribute-head"``), ``format_version``, ``kind``, ``name``,
    ``encoder_id``, ``dim``, ``hidden``, ``attributes`` (:meth:`AttributeSpec.to_dict`),
    ``numeric_targets`` (per numeric attribute the ``mean``/``std`` its output is scaled back
    with), ``training`` (data file, counts per label, validation metrics, settings) and
    ``facegen_version``;
``model.safetensors``
    float32 weights: ``body.0.weight`` ``(hidden, dim)`` / ``body.0.bias`` (``mlp`` only) and
    ``heads.<attribute>.weight`` ``(K, width)`` / ``.bias`` ``(K,)`` with ``K`` the number of
    labels (categorical) or 1 (numeric).

The model reads ``x · sqrt(dim)`` (a fixed scale: the entries of a unit vector are about
``1/sqrt(dim)``), so one learning rate suits every width.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facegen._version import __version__
from facegen.attributes import AttributeEstimate, AttributeSpec, VectorAttributeEstimator
from facegen.devices import parse_device
from facegen.errors import (
    DeviceNotAvailableError,
    IncompatibleEmbeddingError,
    InvalidArgumentError,
    InvalidModelError,
    ModelNotAvailableError,
    UnknownNameError,
)
from facegen.fileio import atomic_write, write_json
from facegen.registry import Registry
from facegen.types import IdentityEmbedding
from facegen.validate import check_int, check_safetensors

__all__ = [
    "CONFIG_NAME",
    "HEAD_FORMAT",
    "HEAD_KINDS",
    "WEIGHTS_NAME",
    "AttributeHead",
    "AttributeHeadConfig",
    "AttributeHeadNet",
    "torch_device",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: the ``format`` of a head's ``config.json``
HEAD_FORMAT = "facegen-attribute-head"
FORMAT_VERSION = 1
#: tolerance on the L2 norm of the vectors a head accepts (as :class:`IdentityEmbedding`)
NORM_TOLERANCE = 1e-3
_HINT = "Train one with `facegen train attributes LABELS.csv --out FOLDER`."


class AttributeHeadNet(torch.nn.Module):
    """Body + one output layer per attribute.

    ``forward(x)``: float32 ``(N, dim)`` unit rows → ``{attribute: (N, K)}``: logits over the
    labels (categorical) or the standardised value in column 0 (numeric, ``K = 1``).
    ``hidden = 0``: no body (linear heads on the vector).
    """

    def __init__(self, dim: int, hidden: int, outputs: Mapping[str, int]) -> None:
        super().__init__()
        self.scale = math.sqrt(dim)
        if hidden:
            self.body: torch.nn.Module = torch.nn.Sequential(
                torch.nn.Linear(dim, hidden), torch.nn.GELU()
            )
        else:
            self.body = torch.nn.Identity()
        width = hidden or dim
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(width, n) for k, n in outputs.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x * self.scale)
        return {name: head(h) for name, head in self.heads.items()}


#: architectures by the ``kind`` a config names; factories take ``(dim, hidden, outputs)``
HEAD_KINDS: Registry[torch.nn.Module] = Registry("attribute head kind")
HEAD_KINDS.register(
    "linear",
    lambda dim, hidden, outputs: AttributeHeadNet(dim, 0, outputs),
    description="one linear layer per attribute on the vector (hidden must be 0)",
)
HEAD_KINDS.register(
    "mlp",
    lambda dim, hidden, outputs: AttributeHeadNet(dim, hidden, outputs),
    description="one hidden GELU layer shared by the attributes, then one layer per attribute",
)


def torch_device(device: str | torch.device) -> torch.device:
    """``device`` (``"cpu"``, ``"cuda[:N]"``) as a torch device that exists here, else
    :class:`DeviceNotAvailableError`."""
    if isinstance(device, torch.device):
        device = str(device)
    kind, index = parse_device(device)
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda" and torch.cuda.is_available() and index < torch.cuda.device_count():
        return torch.device(f"cuda:{index}")
    raise DeviceNotAvailableError(
        f"`device` must be 'cpu' or an available 'cuda[:N]' ({torch.cuda.device_count()} CUDA "
        f"device(s) here), got {device!r}"
    )


def _output_widths(attributes: Sequence[AttributeSpec]) -> dict[str, int]:
    return {a.name: len(a.labels) if a.kind == "categorical" else 1 for a in attributes}


@dataclass(frozen=True)
class AttributeHeadConfig:
    """What a head is: its input space, architecture, outputs and how it was trained.

    ``numeric_targets``: for each numeric attribute, ``(mean, std)`` of its training values;
    the model outputs ``(value - mean) / std``. ``training``: a free-form record (JSON-able).
    """

    encoder_id: str
    dim: int
    attributes: tuple[AttributeSpec, ...]
    kind: str = "mlp"
    hidden: int = 256
    numeric_targets: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    name: str = "attribute-head"
    training: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.encoder_id, str) or not self.encoder_id:
            raise InvalidArgumentError(
                f"`encoder_id` must be a non-empty string, got {self.encoder_id!r}"
            )
        check_int(self.dim, "dim", minimum=1)
        check_int(self.hidden, "hidden", minimum=0)
        HEAD_KINDS.get(self.kind)  # UnknownNameError listing the valid kinds
        if self.kind == "mlp" and self.hidden < 1:
            raise InvalidArgumentError(f"`hidden` must be >= 1 for kind 'mlp', got {self.hidden}")
        if self.kind == "linear" and self.hidden != 0:
            raise InvalidArgumentError(f"`hidden` must be 0 for kind 'linear', got {self.hidden}")
        attrs = tuple(self.attributes)
        if not attrs or not all(isinstance(a, AttributeSpec) for a in attrs):
            raise InvalidArgumentError(
                f"`attributes` must be one or more AttributeSpec, got {list(attrs)!r}"
            )
        names = [a.name for a in attrs]
        if len(set(names)) != len(names):
            raise InvalidArgumentError(f"`attributes` must name each attribute once, got {names}")
        numeric = {a.name for a in attrs if a.kind == "numeric"}
        targets = {str(k): tuple(float(x) for x in v) for k, v in self.numeric_targets.items()}
        if set(targets) != numeric:
            raise InvalidArgumentError(
                f"`numeric_targets` must give (mean, std) for exactly the numeric attributes "
                f"{sorted(numeric)}, got {sorted(targets)}"
            )
        for k, v in targets.items():
            if len(v) != 2 or not all(math.isfinite(x) for x in v) or v[1] <= 0:
                raise InvalidArgumentError(
                    f"`numeric_targets[{k!r}]` must be (mean, std) with a finite std > 0, got {v}"
                )
        object.__setattr__(self, "attributes", attrs)
        object.__setattr__(self, "numeric_targets", targets)
        object.__setattr__(self, "training", dict(self.training))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": HEAD_FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "name": self.name,
            "encoder_id": self.encoder_id,
            "dim": self.dim,
            "normalized": True,
            "hidden": self.hidden,
            "attributes": [a.to_dict() for a in self.attributes],
            "numeric_targets": {
                k: {"mean": m, "std": s} for k, (m, s) in self.numeric_targets.items()
            },
            "training": dict(self.training),
            "facegen_version": __version__,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttributeHeadConfig:
        """Read :meth:`to_dict`'s output; a missing or ill-typed entry raises
        :class:`InvalidArgumentError` (``UnknownNameError`` for an unknown ``kind``)."""
        try:
            targets = {
                str(k): (float(v["mean"]), float(v["std"]))
                for k, v in dict(d.get("numeric_targets", {})).items()
            }
            return cls(
                encoder_id=d["encoder_id"],
                dim=d["dim"],
                attributes=tuple(AttributeSpec.from_dict(a) for a in d["attributes"]),
                kind=d.get("kind", "mlp"),
                hidden=d.get("hidden", 256),
                numeric_targets=targets,
                name=str(d.get("name", "attribute-head")),
                training=dict(d.get("training", {})),
            )
        except KeyError as exc:
            raise InvalidArgumentError(f"the config must have the entry {exc.args[0]!r}") from None
        except (TypeError, AttributeError) as exc:
            raise InvalidArgumentError(
                f"the config has an entry of the wrong type ({exc})"
            ) from None

    def build_model(self) -> torch.nn.Module:
        """A freshly initialised model of this config (torch's global RNG)."""
        return HEAD_KINDS.create(
            self.kind, dim=self.dim, hidden=self.hidden, outputs=_output_widths(self.attributes)
        )


class AttributeHead(VectorAttributeEstimator):
    """A trained head (see the module doc); :meth:`load` reads a head folder.

    ``model`` (injected; default: a new one from ``config``) maps float32 ``(N, dim)`` to
    ``{attribute: (N, K)}`` as :class:`AttributeHeadNet` does. ``device``: where it runs
    (``"cpu"`` default). ``batch_size``: rows per forward pass in :meth:`predict`.
    """

    def __init__(
        self,
        config: AttributeHeadConfig,
        model: torch.nn.Module | None = None,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 4096,
    ) -> None:
        if not isinstance(config, AttributeHeadConfig):
            raise InvalidArgumentError(
                f"`config` must be an AttributeHeadConfig, got {type(config).__name__}"
            )
        if model is not None and not isinstance(model, torch.nn.Module):
            raise InvalidArgumentError(
                f"`model` must be a torch.nn.Module, got {type(model).__name__}"
            )
        self.config = config
        self.name = config.name
        self.encoder_id = config.encoder_id
        self.attributes = config.attributes
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.device = torch_device(device)
        self.model = (model if model is not None else config.build_model()).to(self.device)
        self.model.eval()
        self.path: Path | None = None

    @property
    def dim(self) -> int:
        return self.config.dim

    # -- inference ----------------------------------------------------------------------------
    def check_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """``vectors`` as C-contiguous float32 ``(N, dim)``, or an error: another width
        (:class:`IncompatibleEmbeddingError`, naming the encoder and width the head expects),
        a row that is not finite (:class:`InvalidArgumentError`) or not of unit L2 norm
        (:class:`IncompatibleEmbeddingError`; normalise the vectors first)."""
        v = np.asarray(vectors)
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise IncompatibleEmbeddingError(
                f"`vectors` must be (N, {self.dim}) identity vectors of encoder "
                f"{self.encoder_id!r} (the head {self.name!r} was trained on them), got shape "
                f"{v.shape}"
            )
        if not np.issubdtype(v.dtype, np.floating):
            raise InvalidArgumentError(f"`vectors` must be a float array, got dtype {v.dtype}")
        v = np.ascontiguousarray(v, dtype=np.float32)
        bad = np.flatnonzero(~np.isfinite(v).all(axis=1))
        if bad.size:
            raise InvalidArgumentError(
                f"`vectors` must be finite, got NaN or inf in row(s) {bad[:5].tolist()}"
                + (" …" if bad.size > 5 else "")
            )
        norms = np.linalg.norm(v.astype(np.float64), axis=1)
        off = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
        if off.size:
            i = int(off[0])
            raise IncompatibleEmbeddingError(
                f"`vectors` must have unit L2 norm (normalised {self.encoder_id!r} vectors), got "
                f"norm {norms[i]:.4f} in row {i}"
                + (f" and {off.size - 1} more" if off.size > 1 else "")
            )
        return v

    @torch.no_grad()
    def predict_arrays(self, vectors: np.ndarray) -> dict[str, np.ndarray]:
        """Raw outputs per attribute for unit-norm float ``(N, dim)`` ``vectors``: float32
        ``(N, K)`` label probabilities (categorical; columns in ``labels`` order, rows sum to
        1) or float32 ``(N,)`` values in the attribute's unit (numeric)."""
        v = self.check_vectors(vectors)
        parts: dict[str, list[np.ndarray]] = {a.name: [] for a in self.attributes}
        self.model.eval()
        for s in range(0, len(v), self.batch_size):
            x = torch.from_numpy(v[s : s + self.batch_size]).to(self.device)
            out = self.model(x)
            for a in self.attributes:
                y = out[a.name].float()
                if a.kind == "categorical":
                    parts[a.name].append(torch.softmax(y, dim=1).cpu().numpy())
                else:
                    mean, std = self.config.numeric_targets[a.name]
                    parts[a.name].append((y[:, 0] * std + mean).cpu().numpy())
        result: dict[str, np.ndarray] = {}
        for a in self.attributes:
            if parts[a.name]:
                result[a.name] = np.concatenate(parts[a.name]).astype(np.float32)
            else:
                width = (len(v), len(a.labels)) if a.kind == "categorical" else (len(v),)
                result[a.name] = np.zeros(width, np.float32)
        return result

    def predict(self, vectors: np.ndarray) -> list[AttributeEstimate]:
        """One :class:`AttributeEstimate` per row of unit-norm float ``(N, dim)`` ``vectors``
        (the most probable label and every label's probability for categorical attributes,
        the value for numeric ones); refuses another width, non-finite or non-unit rows."""
        raw = self.predict_arrays(vectors)
        n = len(next(iter(raw.values())))
        out = []
        for i in range(n):
            values: dict[str, str | float] = {}
            probs: dict[str, dict[str, float]] = {}
            for a in self.attributes:
                r = raw[a.name][i]
                if a.kind == "categorical":
                    values[a.name] = a.labels[int(np.argmax(r))]
                    probs[a.name] = {lab: float(p) for lab, p in zip(a.labels, r, strict=True)}
                else:
                    values[a.name] = float(r)
            out.append(AttributeEstimate(values, probs, self.name))
        return out

    def predict_embeddings(
        self, embeddings: Sequence[IdentityEmbedding]
    ) -> list[AttributeEstimate]:
        """:meth:`predict` for :class:`IdentityEmbedding` objects, which must come from the
        head's encoder (else :class:`IncompatibleEmbeddingError`); embeddings marked not
        normalised are normalised first (:meth:`IdentityEmbedding.normalize`)."""
        embs = list(embeddings)
        for i, e in enumerate(embs):
            if not isinstance(e, IdentityEmbedding):
                raise InvalidArgumentError(
                    f"`embeddings` must hold IdentityEmbedding objects, got {type(e).__name__} "
                    f"at {i}"
                )
            if e.encoder_id != self.encoder_id:
                raise IncompatibleEmbeddingError(
                    f"`embeddings` must come from encoder {self.encoder_id!r} ({self.dim}-D), "
                    f"the one head {self.name!r} was trained on, got {e.encoder_id!r} "
                    f"({e.dim}-D) at {i}"
                )
        if not embs:
            return []
        return self.predict(np.stack([e.normalize().vector for e in embs]))

    # -- files --------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``folder`` (created; each file
        atomically, the config last); returns the folder."""
        from safetensors.torch import save_file

        out = Path(folder)
        state = {
            k: v.detach().to("cpu", torch.float32).contiguous()
            for k, v in self.model.state_dict().items()
        }
        with atomic_write(out / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        write_json(out / CONFIG_NAME, self.config.to_dict())
        self.path = out
        return out

    @classmethod
    def load(
        cls, folder: str | os.PathLike[str], *, device: str | torch.device = "cpu"
    ) -> AttributeHead:
        """Read a head folder written by :meth:`save` (safetensors only; never a pickle).

        A missing folder, config or weights file raises :class:`ModelNotAvailableError`
        (saying how to make one); a config that is not a head's, names an unknown ``kind`` or
        is malformed, corrupt weights, and weights whose names or shapes differ from what the
        config describes raise :class:`InvalidModelError` naming the file.
        """
        from safetensors.torch import load_file

        root = Path(folder)
        if not root.is_dir():
            what = "a file, not a folder" if root.exists() else "no such folder"
            raise ModelNotAvailableError(
                str(root), searched=[root], reason=f"attribute head folder: {what}", hint=_HINT
            )
        cfg_path, w_path = root / CONFIG_NAME, root / WEIGHTS_NAME
        if not cfg_path.is_file():
            raise ModelNotAvailableError(
                str(root),
                searched=[cfg_path],
                reason=f"the attribute head's {CONFIG_NAME} is missing",
                hint=_HINT,
            )
        config = _read_config(cfg_path)
        if not w_path.is_file():
            pickles = sorted(p.name for p in root.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
            extra = (
                f" ({', '.join(pickles)} found: facegen reads attribute heads from safetensors "
                "only, never from pickles)"
                if pickles
                else ""
            )
            raise ModelNotAvailableError(
                str(root),
                searched=[w_path],
                reason=f"the attribute head's {WEIGHTS_NAME} is missing{extra}",
                hint=_HINT,
            )
        check_safetensors(w_path, "attribute head weights")
        try:
            state = load_file(str(w_path))
        except Exception as exc:  # safetensors' own errors: a corrupt file
            raise InvalidModelError(f"{w_path}: cannot read the weights ({exc})") from exc
        model = config.build_model()
        _check_state(model, state, w_path)
        model.load_state_dict({k: v.float() for k, v in state.items()})
        head = cls(config, model, device=device)
        head.path = root
        return head


def _read_config(path: Path) -> AttributeHeadConfig:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidModelError(f"{path}: not a readable JSON config ({exc})") from exc
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt != HEAD_FORMAT:
        raise InvalidModelError(
            f"{path}: `format` must be {HEAD_FORMAT!r}, got {fmt!r}; is this the folder of an "
            "attribute head (`facegen train attributes`)?"
        )
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise InvalidModelError(
            f"{path}: `format_version` must be {FORMAT_VERSION}, got {version!r} (written by a "
            f"newer facegen than {__version__}?)"
        )
    try:
        return AttributeHeadConfig.from_dict(data)
    except (InvalidArgumentError, UnknownNameError) as exc:
        raise InvalidModelError(f"{path}: {exc}") from exc


def _check_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Raise :class:`InvalidModelError` unless ``state`` has exactly ``model``'s tensors."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    problems = []
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    if missing:
        problems.append(f"missing {', '.join(missing[:4])}" + (" …" if len(missing) > 4 else ""))
    if unexpected:
        problems.append(
            f"unexpected {', '.join(unexpected[:4])}" + (" …" if len(unexpected) > 4 else "")
        )
    shapes = [
        f"{k} {got[k]} instead of {want[k]}" for k in sorted(want) if k in got and got[k] != want[k]
    ]
    if shapes:
        problems.append("shape " + "; ".join(shapes[:4]))
    bad_dtype = sorted(k for k, v in state.items() if not v.is_floating_point())
    if bad_dtype:
        problems.append(f"not floating point: {', '.join(bad_dtype[:4])}")
    if problems:
        raise InvalidModelError(
            f"{path}: the weights do not match {CONFIG_NAME} ({'; '.join(problems)}); the two "
            "files must come from the same `facegen train attributes` run"
        )
