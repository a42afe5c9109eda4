"""The JSON that describes an ONNX face-attribute classifier (``ATTRIBUTE_ESTIMATORS``
``"onnx-json"``, :class:`facegen.backends.attributes_onnx.OnnxAttributeClassifier`).

Schema (unknown keys are refused, so typos do not pass silently)::

    {
      "model": "fairface.onnx",        # required; relative to the JSON's folder (or absolute)
      "name": "fairface",              # optional; recorded with every estimate (default: JSON stem)
      "crop": "arcface",               # required: "box", "arcface", "ffhq" or a named 5-point
                                       #   template of facegen.align (POINT_TEMPLATES)
      "margin": 1.0,                   # "ffhq" only: the crop's margin multiplier (default 1.0)
      "box_scale": 1.5,                # "box" only: the crop shows box_scale · max(box w, h),
                                       #   centred on the box, no rotation (default 1.5)
      "input_size": 224,               # crop side in pixels; default: the model's fixed input
      "color": "RGB",                  # channel order the network takes: "RGB" or "BGR"
      "layout": "NCHW",                # "NCHW" or "NHWC"
      "scale": 255,                    # pixels (0-255) are divided by this first (default 1)
      "mean": [0.485, 0.456, 0.406],   # then (x - mean[c]) / std[c]; one number or three, in
      "std": [0.229, 0.224, 0.225],    #   the network's channel order (defaults 0 and 1)
      "attributes": [                  # required, at least one, names unique
        {"name": "race", "kind": "categorical", "labels": ["White", "Black", ...],
         "output": "race_logits",      # output name or index; optional for one-output models
         "slice": [0, 7],              # [start, stop) of the output's values per face
         "activation": "softmax"},     # "softmax" (default) | "sigmoid" | "none"
        {"name": "age", "kind": "numeric", "output": 1, "slice": [18, 19],
         "activation": "none",         # "none" (default) | "sigmoid"
         "scale": 100, "offset": 0, "unit": "years"}
      ]
    }

So the network sees ``(pixel / scale - mean[c]) / std[c]``, e.g. ``scale 255`` with ImageNet
``mean``/``std`` for torchvision-trained models, or ``scale 1``, ``mean 127.5``, ``std 128``
for insightface-style ones. An output's values per face are its non-batch axes flattened.

Categorical attributes: ``softmax`` over ``len(labels)`` values gives label probabilities;
``sigmoid`` reads ONE value as the logit of ``labels[1]`` (exactly two labels); ``none`` takes
the argmax of ``len(labels)`` values and reports no probabilities. Numeric attributes read one
value: ``value = act(x) · scale + offset``. Widths are checked against the model's outputs when
it is loaded (or at the first run when the graph leaves them symbolic).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facegen.align import TEMPLATES
from facegen.attributes import AttributeSpec
from facegen.errors import InvalidArgumentError

__all__ = ["CROPS", "ClassifierConfig", "OutputAttribute"]

#: How a classifier's face crop can be cut: the detection box, or a 5-point aligned template.
CROPS: tuple[str, ...] = ("box", *TEMPLATES)
_TOP_KEYS = (
    "model",
    "name",
    "crop",
    "margin",
    "box_scale",
    "input_size",
    "color",
    "layout",
    "scale",
    "mean",
    "std",
    "attributes",
)
_ATTR_KEYS = (
    "name",
    "kind",
    "labels",
    "output",
    "slice",
    "activation",
    "scale",
    "offset",
    "unit",
)
_ACTIVATIONS = {"categorical": ("softmax", "sigmoid", "none"), "numeric": ("none", "sigmoid")}


class _Reader:
    """Reads typed values from one JSON object, naming ``key`` (with its path) in errors."""

    def __init__(self, data: Any, where: str, prefix: str, keys: tuple[str, ...]) -> None:
        self.where, self.prefix = where, prefix
        if not isinstance(data, Mapping):
            what = f"`{prefix.rstrip('.')}`" if prefix else "the classifier description"
            raise self.error(f"{what} must be a JSON object, got {type(data).__name__}")
        unknown = [k for k in data if k not in keys]
        if unknown:
            raise self.error(f"unknown key `{prefix}{unknown[0]}`; valid keys: {', '.join(keys)}")
        self.data = data

    def error(self, msg: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"{self.where}: {msg}")

    def bad(self, key: str, must: str) -> InvalidArgumentError:
        return self.error(f"`{self.prefix}{key}` must be {must}, got {self.data[key]!r}")

    def has(self, key: str) -> bool:
        return key in self.data

    def required(self, key: str) -> None:
        if key not in self.data:
            raise self.error(f"`{self.prefix}{key}` is required")

    def string(self, key: str, default: str | None = None) -> str:
        if key not in self.data and default is not None:
            return default
        self.required(key)
        v = self.data[key]
        if not isinstance(v, str) or not v:
            raise self.bad(key, "a non-empty string")
        return v

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str:
        v = self.string(key, default)
        if v not in choices:
            raise self.bad(key, f"one of {', '.join(choices)}")
        return v

    def number(self, key: str, default: float, *, positive: bool = False) -> float:
        if key not in self.data:
            return default
        v = self.data[key]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or (positive and not v > 0):
            raise self.bad(key, "a finite number > 0" if positive else "a finite number")
        return float(v)

    def triple(self, key: str, default: float, *, positive: bool) -> tuple[float, float, float]:
        """One number or three (per channel)."""
        if key not in self.data:
            return (default,) * 3
        v = self.data[key]
        items = [v] * 3 if not isinstance(v, list) else v
        ok = len(items) == 3 and all(
            isinstance(x, (int, float))
            and not isinstance(x, bool)
            and math.isfinite(x)
            and (not positive or x > 0)
            for x in items
        )
        if not ok:
            sign = "positive " if positive else ""
            raise self.bad(key, f"one {sign}finite number or a list of three (per channel)")
        return (float(items[0]), float(items[1]), float(items[2]))


@dataclass(frozen=True)
class OutputAttribute:
    """One attribute of a classifier and where it reads its values.

    ``output``: the model output's name or index (``None``: the only output). ``slice``:
    ``(start, stop)`` of the output's per-face values (``None``: all of them). ``activation``,
    ``scale``, ``offset``: see the module docstring.
    """

    spec: AttributeSpec
    output: str | int | None = None
    slice: tuple[int, int] | None = None
    activation: str = "softmax"
    scale: float = 1.0
    offset: float = 0.0

    @property
    def width(self) -> int:
        """How many values per face this attribute reads."""
        if self.spec.kind == "numeric" or self.activation == "sigmoid":
            return 1
        return len(self.spec.labels)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.spec.name, "kind": self.spec.kind}
        if self.spec.kind == "categorical":
            d["labels"] = list(self.spec.labels)
        if self.output is not None:
            d["output"] = self.output
        if self.slice is not None:
            d["slice"] = list(self.slice)
        d["activation"] = self.activation
        if self.spec.kind == "numeric":
            d.update(scale=self.scale, offset=self.offset, unit=self.spec.unit)
        return d

    @classmethod
    def from_dict(cls, data: Any, *, where: str, index: int) -> OutputAttribute:
        r = _Reader(data, where, f"attributes[{index}].", _ATTR_KEYS)
        name = r.string("name")
        kind = r.choice("kind", ("categorical", "numeric"), "categorical")
        numeric = kind == "numeric"
        for key in ("scale", "offset", "unit") if not numeric else ("labels",):
            if r.has(key):
                raise r.error(
                    f"`attributes[{index}].{key}` does not apply to a {kind} attribute ({name!r})"
                )
        labels: tuple[str, ...] = ()
        if not numeric:
            r.required("labels")
            raw = r.data["labels"]
            if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
                raise r.bad("labels", "a list of strings")
            labels = tuple(raw)
        try:
            spec = AttributeSpec(name, kind, labels, unit=r.string("unit", "") if numeric else "")
        except InvalidArgumentError as exc:
            raise r.error(f"`attributes[{index}]`: {exc}") from None
        output: str | int | None = None
        if r.has("output"):
            output = r.data["output"]
            is_index = isinstance(output, int) and not isinstance(output, bool) and output >= 0
            if not is_index and not (isinstance(output, str) and output):
                raise r.bad("output", "an output name or a non-negative index")
        sl: tuple[int, int] | None = None
        if r.has("slice"):
            v = r.data["slice"]
            ints = isinstance(v, list) and all(
                isinstance(x, int) and not isinstance(x, bool) for x in v
            )
            if not ints or len(v) != 2 or not 0 <= v[0] < v[1]:
                raise r.bad("slice", "[start, stop] with 0 <= start < stop")
            sl = (v[0], v[1])
        activation = r.choice("activation", _ACTIVATIONS[kind], _ACTIVATIONS[kind][0])
        if activation == "sigmoid" and not numeric and len(labels) != 2:
            raise r.error(
                f"`attributes[{index}].activation` 'sigmoid' reads one logit of labels[1], so "
                f"`labels` must have exactly 2 entries, got {len(labels)}"
            )
        attr = cls(
            spec,
            output,
            sl,
            activation,
            scale=r.number("scale", 1.0),
            offset=r.number("offset", 0.0),
        )
        if sl is not None and sl[1] - sl[0] != attr.width:
            raise r.error(
                f"`attributes[{index}].slice` {list(sl)} holds {sl[1] - sl[0]} value(s), but "
                f"{name!r} ({kind}, activation {activation!r}) reads {attr.width}"
            )
        return attr


@dataclass(frozen=True)
class ClassifierConfig:
    """A validated classifier description (see the module docstring for every key).

    ``model`` is kept as written; :attr:`model_path` resolves it against ``base_dir`` (the
    JSON's folder). ``source`` names where the description came from, for messages.
    """

    model: str
    crop: str
    attributes: tuple[OutputAttribute, ...]
    name: str = "onnx-json"
    margin: float = 1.0
    box_scale: float = 1.5
    input_size: int | None = None
    color: str = "RGB"
    layout: str = "NCHW"
    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    base_dir: Path = field(default=Path("."), compare=False)
    source: str = field(default="classifier description", compare=False)
    source_path: Path | None = field(default=None, compare=False)

    @property
    def model_path(self) -> Path:
        return self.base_dir / Path(self.model).expanduser()

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (every key explicit) that :meth:`from_dict` reads back."""
        d: dict[str, Any] = {"model": self.model, "name": self.name, "crop": self.crop}
        if self.crop == "ffhq":
            d["margin"] = self.margin
        if self.crop == "box":
            d["box_scale"] = self.box_scale
        if self.input_size is not None:
            d["input_size"] = self.input_size
        d.update(
            color=self.color,
            layout=self.layout,
            scale=self.scale,
            mean=list(self.mean),
            std=list(self.std),
            attributes=[a.to_dict() for a in self.attributes],
        )
        return d

    @classmethod
    def from_dict(
        cls,
        data: Any,
        *,
        base_dir: str | Path = ".",
        source: str = "classifier description",
        default_name: str = "onnx-json",
    ) -> ClassifierConfig:
        """Validate ``data`` (a parsed JSON object); errors name the offending key."""
        r = _Reader(data, source, "", _TOP_KEYS)
        model = r.string("model")
        crop = r.choice("crop", CROPS)
        if r.has("margin") and crop != "ffhq":
            raise r.error(f"`margin` applies to crop 'ffhq' only, got crop {crop!r}")
        if r.has("box_scale") and crop != "box":
            raise r.error(f"`box_scale` applies to crop 'box' only, got crop {crop!r}")
        input_size: int | None = None
        if r.has("input_size"):
            v = r.data["input_size"]
            if not isinstance(v, int) or isinstance(v, bool) or not 16 <= v <= 4096:
                raise r.bad("input_size", "an integer in [16, 4096]")
            input_size = v
        r.required("attributes")
        raw_attrs = r.data["attributes"]
        if not isinstance(raw_attrs, list) or not raw_attrs:
            raise r.bad("attributes", "a non-empty list of attribute objects")
        attrs = tuple(
            OutputAttribute.from_dict(a, where=source, index=i) for i, a in enumerate(raw_attrs)
        )
        names = [a.spec.name for a in attrs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise r.error(f"`attributes` must name each attribute once, got {dup} twice")
        return cls(
            model=model,
            crop=crop,
            attributes=attrs,
            name=r.string("name", default_name),
            margin=r.number("margin", 1.0, positive=True),
            box_scale=r.number("box_scale", 1.5, positive=True),
            input_size=input_size,
            color=r.choice("color", ("RGB", "BGR"), "RGB"),
            layout=r.choice("layout", ("NCHW", "NHWC"), "NCHW"),
            scale=r.number("scale", 1.0, positive=True),
            mean=r.triple("mean", 0.0, positive=False),
            std=r.triple("std", 1.0, positive=True),
            base_dir=Path(base_dir),
            source=source,
        )

    @classmethod
    def from_json(cls, path: str | Path) -> ClassifierConfig:
        """Read and validate the JSON file at ``path`` (``model`` is relative to its folder)."""
        p = Path(path).expanduser()
        if p.suffix.lower() != ".json" or not p.is_file():
            raise InvalidArgumentError(
                f"`config` must be an existing .json file describing the classifier, got {str(p)!r}"
            )
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgumentError(
                f"{p}: cannot read the classifier description: {exc}"
            ) from exc
        except json.JSONDecodeError as exc:
            raise InvalidArgumentError(
                f"{p}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
            ) from None
        cfg = cls.from_dict(data, base_dir=p.parent, source=str(p), default_name=p.stem)
        return dataclasses.replace(cfg, source_path=p)
