"""Demographic and other face attributes: what an estimator says, and how faces are grouped.

Two kinds of estimator produce :class:`AttributeEstimate` objects:

* **image estimators** (:class:`ImageAttributeEstimator`, registry
  :data:`facegen.backends.ATTRIBUTE_ESTIMATORS`): a network on a face crop, e.g. insightface's
  ``genderage.onnx`` or any ONNX classifier described by a small JSON;
* **identity heads** (:class:`VectorAttributeEstimator`): a small model on identity vectors
  of one encoder, trained by ``facegen train attributes``, so a synthetic identity's
  attributes are known before any image of it is generated.

Attributes are *categorical* (``labels``: the classes, e.g. ``("female", "male")``) or
*numeric* (e.g. age in years). Numeric attributes are grouped through bands
(``bins``, see :func:`band_label`). A :class:`Grouping` names the attributes (and bands)
whose combination forms a demographic **group label** such as ``"gender=female|age=20-39"``.
The labels are whatever the estimator was trained to output; facegen attaches no meaning to
them beyond equality.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facegen.errors import InvalidArgumentError
from facegen.types import Face

__all__ = [
    "AttributeEstimate",
    "AttributeSpec",
    "Grouping",
    "ImageAttributeEstimator",
    "VectorAttributeEstimator",
    "band_label",
]


@dataclass(frozen=True)
class AttributeSpec:
    """One attribute an estimator outputs.

    ``kind`` is ``"categorical"`` (``labels`` lists the classes, in the order of the model's
    outputs) or ``"numeric"`` (``labels`` is empty; ``unit`` says what the number is).
    """

    name: str
    kind: str = "categorical"
    labels: tuple[str, ...] = ()
    unit: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise InvalidArgumentError(
                f"attribute `name` must be an identifier (letters, digits, _), got {self.name!r}"
            )
        if self.kind not in ("categorical", "numeric"):
            raise InvalidArgumentError(
                f"attribute `kind` must be 'categorical' or 'numeric', got {self.kind!r}"
            )
        labels = tuple(str(x) for x in self.labels)
        if self.kind == "categorical":
            if len(labels) < 2 or len(set(labels)) != len(labels):
                raise InvalidArgumentError(
                    f"categorical attribute {self.name!r} must list at least two distinct "
                    f"labels, got {list(labels)}"
                )
            bad = [x for x in labels if not x or any(c in x for c in "|=,\n")]
            if bad:
                raise InvalidArgumentError(
                    f"labels of {self.name!r} must be non-empty and free of '|', '=', ',' and "
                    f"newlines, got {bad}"
                )
        elif labels:
            raise InvalidArgumentError(f"numeric attribute {self.name!r} takes no labels")
        object.__setattr__(self, "labels", labels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "labels": list(self.labels),
            "unit": self.unit,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AttributeSpec:
        return cls(
            name=d["name"],
            kind=d.get("kind", "categorical"),
            labels=tuple(d.get("labels", ())),
            unit=d.get("unit", ""),
        )


@dataclass(frozen=True)
class AttributeEstimate:
    """A face's (or identity's) attributes.

    ``values``: attribute name → label (categorical) or float (numeric).
    ``probabilities``: for categorical attributes, label → probability (sums to 1).
    ``estimator``: the estimator's name (recorded with every value it produced).
    """

    values: Mapping[str, str | float]
    probabilities: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    estimator: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: (round(float(v), 4) if isinstance(v, float) else v) for k, v in self.values.items()
        }
        if self.probabilities:
            out["probabilities"] = {
                k: {lab: round(float(p), 4) for lab, p in ps.items()}
                for k, ps in self.probabilities.items()
            }
        if self.estimator:
            out["estimator"] = self.estimator
        return out


def band_label(value: float, bins: Sequence[float]) -> str:
    """The band of ``value`` among edges ``bins`` (increasing): ``"<b0"``, ``"b0-b1"`` … ``"bk+"``.

    A band ``"a-b"`` holds ``a <= value < b`` in whole units, written as ``a``–``(b-1)`` for
    integer edges (``bins=(20, 40)``: 19 → ``"<20"``, 20 → ``"20-39"``, 40 → ``"40+"``).
    """
    edges = [float(b) for b in bins]
    if not edges or any(nxt <= cur for cur, nxt in itertools.pairwise(edges)):
        raise InvalidArgumentError(f"`bins` must be increasing edges, got {list(bins)}")
    if not math.isfinite(float(value)):
        raise InvalidArgumentError(f"cannot band a non-finite value {value!r}")

    def fmt(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:g}"

    if value < edges[0]:
        return f"<{fmt(edges[0])}"
    for lo, hi in itertools.pairwise(edges):
        if lo <= value < hi:
            top = hi - 1 if lo.is_integer() and hi.is_integer() else hi
            return f"{fmt(lo)}-{fmt(top)}"
    return f"{fmt(edges[-1])}+"


@dataclass(frozen=True)
class Grouping:
    """Which attributes form a group label, and the bands of the numeric ones.

    ``attributes``: names, in the order they appear in the label. ``bins``: for each numeric
    attribute, its band edges (see :func:`band_label`). ``label(estimate)`` →
    ``"gender=female|age=20-39"``.
    """

    attributes: tuple[str, ...]
    bins: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        attrs = tuple(self.attributes)
        if not attrs or len(set(attrs)) != len(attrs):
            raise InvalidArgumentError(
                f"`attributes` must name at least one attribute, each once, got {list(attrs)}"
            )
        unknown = sorted(set(self.bins) - set(attrs))
        if unknown:
            raise InvalidArgumentError(f"`bins` names attributes not grouped on: {unknown}")
        object.__setattr__(self, "attributes", attrs)
        object.__setattr__(
            self, "bins", {k: tuple(float(x) for x in v) for k, v in self.bins.items()}
        )

    def label(self, estimate: AttributeEstimate | Mapping[str, str | float]) -> str:
        values = estimate.values if isinstance(estimate, AttributeEstimate) else estimate
        parts = []
        for name in self.attributes:
            if name not in values:
                raise InvalidArgumentError(
                    f"attribute {name!r} is not among the estimated ones {sorted(values)}"
                )
            v = values[name]
            if name in self.bins:
                v = band_label(float(v), self.bins[name])
            elif isinstance(v, float):
                raise InvalidArgumentError(
                    f"numeric attribute {name!r} needs band edges in `bins` to form groups"
                )
            parts.append(f"{name}={v}")
        return "|".join(parts)

    @staticmethod
    def parse_label(label: str) -> dict[str, str]:
        """``"gender=female|age=20-39"`` → ``{"gender": "female", "age": "20-39"}``."""
        out: dict[str, str] = {}
        for part in label.split("|"):
            name, sep, value = part.partition("=")
            if not sep or not name:
                raise InvalidArgumentError(
                    f"a group label must be 'name=value' parts joined by '|', got {label!r}"
                )
            out[name] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "attributes": list(self.attributes),
            "bins": {k: list(v) for k, v in self.bins.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Grouping:
        return cls(tuple(d["attributes"]), {k: tuple(v) for k, v in d.get("bins", {}).items()})


class ImageAttributeEstimator(ABC):
    """Attributes from a face in an image (RGB uint8 ``(H, W, 3)``) and its detection."""

    name: str = ""
    attributes: tuple[AttributeSpec, ...] = ()

    @abstractmethod
    def estimate(self, image: np.ndarray, faces: Sequence[Face]) -> list[AttributeEstimate]:
        """One estimate per face, in order (batched where the model allows)."""

    def model_files(self) -> dict[str, str]:
        return {}


class VectorAttributeEstimator(ABC):
    """Attributes from identity vectors of one encoder (``encoder_id``), float32 ``(N, D)``."""

    name: str = ""
    encoder_id: str = ""
    attributes: tuple[AttributeSpec, ...] = ()

    @abstractmethod
    def predict(self, vectors: np.ndarray) -> list[AttributeEstimate]:
        """One estimate per row of unit-norm ``vectors``; refuses another encoder's width."""
