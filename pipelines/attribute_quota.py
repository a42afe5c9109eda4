"""Attribute-targeted identity sampling: identities kept per demographic group until each
group's quota is met.

A :class:`GroupTargets` says which groups a dataset should hold and in what proportions
(``balanced``: every combination of the grouped attributes' labels and bands, equally; or
explicit proportions per group label such as ``"gender=female|age=20-39"``). Proportions
become whole quotas that sum to the number of identities by the largest-remainder method
(each quota is ``floor(p·n)`` or one more, so the achieved proportion of every group is within
``1/n`` of its target).

:func:`sample_identities_by_group` runs the usual sampler (:func:`~facegen.pipelines.identities.
sample_identities`: separation between identities, leakage check against a real bank) with a
:class:`QuotaSelector`: each batch's candidates that passed those checks are labelled by an
attribute estimator on the identity vector (a head trained by ``facegen train attributes``,
or any :class:`~facegen.attributes.VectorAttributeEstimator`, e.g. one that renders a probe
image and estimates from it), and a candidate is tried only while its group still has room.
When the candidate budget runs out first, the error names each group's progress.

The groups are those the *estimator* assigns. How close they are to the identities' true
attributes is the estimator's accuracy (its validation metrics are in its ``config.json``);
the dataset report re-estimates the generated images to show what was achieved.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facegen.attributes import (
    AttributeEstimate,
    Grouping,
    ImageAttributeEstimator,
    VectorAttributeEstimator,
    band_label,
)
from facegen.errors import FacegenError, InvalidArgumentError
from facegen.pipelines.identities import IdentitySet, sample_identities
from facegen.validate import check_int

__all__ = [
    "GroupTargets",
    "ProbeImageEstimator",
    "QuotaSelector",
    "group_labels_of",
    "quotas_for",
    "sample_identities_by_group",
]

logger = logging.getLogger(__name__)


def quotas_for(proportions: Mapping[str, float], n: int) -> dict[str, int]:
    """Whole quotas summing to ``n`` for ``proportions`` (normalised to sum 1): the
    largest-remainder (Hamilton) method; ties go to the group listed first."""
    check_int(n, "n", minimum=1)
    if not proportions:
        raise InvalidArgumentError("`proportions` must name at least one group, got none")
    bad = {k: v for k, v in proportions.items() if not (math.isfinite(v) and v >= 0)}
    if bad:
        raise InvalidArgumentError(f"proportions must be finite and >= 0, got {bad}")
    total = float(sum(proportions.values()))
    if total <= 0:
        raise InvalidArgumentError("proportions must not all be 0")
    exact = {k: n * v / total for k, v in proportions.items()}
    quotas = {k: math.floor(x) for k, x in exact.items()}
    left = n - sum(quotas.values())
    order = sorted(exact, key=lambda k: -(exact[k] - quotas[k]))  # stable: listed order on ties
    for k in order[:left]:
        quotas[k] += 1
    return quotas


def group_labels_of(estimator: VectorAttributeEstimator, grouping: Grouping) -> list[str]:
    """Every group label the estimator can produce under ``grouping``: the product of the
    categorical labels and, for numeric attributes, the bands of their edges."""
    specs = {a.name: a for a in estimator.attributes}
    axes: list[list[str]] = []
    for name in grouping.attributes:
        if name not in specs:
            raise InvalidArgumentError(
                f"attribute {name!r} is not estimated by {estimator.name or 'the estimator'}; "
                f"it gives {sorted(specs)}"
            )
        spec = specs[name]
        if spec.kind == "categorical":
            axes.append([f"{name}={v}" for v in spec.labels])
        else:
            edges = grouping.bins.get(name)
            if not edges:
                raise InvalidArgumentError(
                    f"numeric attribute {name!r} needs band edges (`bins`) to form groups"
                )
            probes = [edges[0] - 1, *edges]
            axes.append([f"{name}={band_label(v, edges)}" for v in probes])
    return ["|".join(parts) for parts in itertools.product(*axes)]


@dataclass(frozen=True)
class GroupTargets:
    """Target proportions over groups.

    ``grouping``: the attributes (and numeric bands) that form the groups. ``proportions``:
    group label → weight (normalised); empty means *balanced*: every group the estimator can
    produce, equally. ``prompts``: group label → a text prompt for presets that take one
    (e.g. the group's words, so a text-capable generator renders it faithfully).
    """

    grouping: Grouping
    proportions: Mapping[str, float] = field(default_factory=dict)
    prompts: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for label in [*self.proportions, *self.prompts]:
            parts = Grouping.parse_label(label)
            if tuple(parts) != self.grouping.attributes:
                raise InvalidArgumentError(
                    f"group label {label!r} must name the grouped attributes "
                    f"{list(self.grouping.attributes)} in that order"
                )
        extra = sorted(set(self.prompts) - set(self.proportions)) if self.proportions else []
        if extra:
            raise InvalidArgumentError(f"`prompts` name groups without a target: {extra}")
        object.__setattr__(self, "proportions", {k: float(v) for k, v in self.proportions.items()})
        object.__setattr__(self, "prompts", dict(self.prompts))

    def quotas(self, n: int, estimator: VectorAttributeEstimator) -> dict[str, int]:
        """Whole quotas per group for ``n`` identities (see :func:`quotas_for`)."""
        possible = group_labels_of(estimator, self.grouping)
        if not self.proportions:
            return quotas_for(dict.fromkeys(possible, 1.0), n)
        unknown = sorted(set(self.proportions) - set(possible))
        if unknown:
            raise InvalidArgumentError(
                f"target groups {unknown} cannot be produced by the estimator; possible: {possible}"
            )
        return quotas_for(self.proportions, n)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.grouping.to_dict(),
            "targets": dict(self.proportions) or "balanced",
            "prompts": dict(self.prompts),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GroupTargets:
        """``{"attributes": [...], "bins": {...}, "targets": "balanced" | {label: weight},
        "prompts": {label: text}}``."""
        targets = d.get("targets", "balanced")
        if targets == "balanced":
            targets = {}
        if not isinstance(targets, Mapping):
            raise InvalidArgumentError(
                f"`targets` must be 'balanced' or a mapping of group label → proportion, got "
                f"{targets!r}"
            )
        if "attributes" not in d:
            raise InvalidArgumentError("`attributes` (the grouped attribute names) must be given")
        return cls(Grouping.from_dict(d), targets, d.get("prompts") or {})


class QuotaSelector:
    """A :class:`~facegen.pipelines.identities.CandidateSelector` filling per-group quotas.

    ``estimates`` and ``groups`` hold the kept identities' estimates and group labels, in
    acceptance order (the order of the sampled identities).
    """

    def __init__(
        self,
        estimator: VectorAttributeEstimator,
        grouping: Grouping,
        quotas: Mapping[str, int],
    ) -> None:
        self.estimator = estimator
        self.grouping = grouping
        self.quotas = dict(quotas)
        self.counts = dict.fromkeys(self.quotas, 0)
        self.seen = dict.fromkeys(self.quotas, 0)
        self.outside = 0  # candidates whose group has no quota at all
        self.estimates: list[AttributeEstimate] = []
        self.groups: list[str] = []
        self._batch: list[tuple[AttributeEstimate, str]] = []

    def choose(self, candidates: np.ndarray) -> np.ndarray:
        est = self.estimator.predict(candidates)
        labels = [
            self.grouping.label(e) if set(self.grouping.attributes) <= set(e.values) else ""
            for e in est
        ]  # "" : the estimator could not tell (a probe image without a face)
        room = {g: self.quotas[g] - self.counts[g] for g in self.quotas}
        chosen: list[int] = []
        for i, g in enumerate(labels):
            if g not in room:
                self.outside += 1
                continue
            self.seen[g] += 1
            if room[g] > 0:
                room[g] -= 1
                chosen.append(i)
        self._batch = list(zip(est, labels, strict=True))
        return np.asarray(chosen, np.int64)

    def accepted(self, indices: np.ndarray) -> None:
        for i in np.asarray(indices, np.int64):
            est, g = self._batch[int(i)]
            self.counts[g] += 1
            self.estimates.append(est)
            self.groups.append(g)

    def shortfall(self) -> str:
        short = [
            f"{g}: {self.counts[g]}/{q} (seen {self.seen[g]})"
            for g, q in self.quotas.items()
            if self.counts[g] < q
        ]
        return "groups short of their quota: " + "; ".join(short)


class ProbeImageEstimator(VectorAttributeEstimator):
    """Attributes of identity vectors read off a generated **probe image** of each: for
    generators without an attribute head. One image per candidate (``generate(vectors,
    seeds)`` → RGB uint8 images, the dataset worker's generator), its largest face found by
    ``analyzer``, its attributes estimated by ``image_estimator``. A probe without a face
    gives an estimate without values (the candidate joins no group). Seeds are
    ``seed + k`` for the ``k``-th candidate probed, so a run is reproducible.

    This costs one generation per candidate that passes the separation checks; an attribute
    head (``facegen train attributes``) costs nothing by comparison. The probe shows what
    the generator renders for the vector, which is what the dataset's images will show.
    """

    def __init__(
        self,
        generate: Any,
        analyzer: Any,
        image_estimator: ImageAttributeEstimator,
        *,
        encoder_id: str,
        seed: int = 0,
        batch_size: int = 8,
    ) -> None:
        self.generate, self.analyzer, self.image_estimator = generate, analyzer, image_estimator
        self.encoder_id = encoder_id
        self.name = f"probe:{image_estimator.name}"
        self.attributes = tuple(image_estimator.attributes)
        self.seed, self.batch_size = seed, batch_size
        self.probed = 0
        self.no_face = 0

    def predict(self, vectors: np.ndarray) -> list[AttributeEstimate]:
        from facegen.errors import NoFaceDetectedError

        v = np.asarray(vectors, np.float32)
        out: list[AttributeEstimate] = []
        for s in range(0, len(v), self.batch_size):
            block = v[s : s + self.batch_size]
            seeds = [self.seed + self.probed + k for k in range(len(block))]
            self.probed += len(block)
            for img in self.generate(block, seeds):
                try:
                    faces = self.analyzer.analyze(img, select="largest", embed=False)
                except NoFaceDetectedError:
                    faces = []
                if not faces:
                    self.no_face += 1
                    out.append(AttributeEstimate({}, estimator=self.name))
                    continue
                out.append(self.image_estimator.estimate(img, faces[:1])[0])
        return out


def image_estimator_from_name(name: str) -> ImageAttributeEstimator:
    """A registered image estimator (``genderage``) or, for a path ending in ``.json``, the
    described ONNX classifier."""
    from facegen.backends import ATTRIBUTE_ESTIMATORS

    if name.endswith(".json"):
        return ATTRIBUTE_ESTIMATORS.create("onnx-json", config=name)
    if name not in ATTRIBUTE_ESTIMATORS:
        raise FacegenError(
            f"`probe:{name}`: unknown image attribute estimator; valid: "
            f"{', '.join(ATTRIBUTE_ESTIMATORS.names())} or a classifier's .json"
        )
    return ATTRIBUTE_ESTIMATORS.create(name)


def sample_identities_by_group(
    n: int,
    targets: GroupTargets,
    estimator: VectorAttributeEstimator,
    *,
    dim: int,
    encoder_id: str,
    max_candidates: int | None = None,
    batch_size: int = 1024,
    **kwargs: Any,
) -> tuple[IdentitySet, QuotaSelector]:
    """``n`` separated identities whose estimated groups meet ``targets``' quotas.

    ``estimator`` must work on ``encoder_id`` vectors of width ``dim``. ``max_candidates``
    (default ``50·n + batch_size``) is the budget of candidates drawn; when it runs out,
    :class:`~facegen.pipelines.identities.SeparationError` names each group's count against
    its quota. Other keyword arguments go to :func:`sample_identities` (sampler, seed,
    separation, bank, leakage bank, …). Returns the identities (``stats`` gains
    ``quotas``/``achieved``/``seen_per_group``) and the selector (per-identity estimates and
    groups, in the identities' order).
    """
    if estimator.encoder_id != encoder_id:
        raise InvalidArgumentError(
            f"the attribute estimator works on {estimator.encoder_id!r} vectors; the identities "
            f"are {encoder_id!r} vectors"
        )
    quotas = targets.quotas(n, estimator)
    sel = QuotaSelector(estimator, targets.grouping, quotas)
    budget = max_candidates if max_candidates is not None else 50 * n + batch_size
    ids = sample_identities(
        n,
        dim=dim,
        encoder_id=encoder_id,
        max_candidates=budget,
        batch_size=batch_size,
        select=sel,
        **kwargs,
    )
    ids.stats.update(
        quotas=quotas,
        achieved=dict(sel.counts),
        seen_per_group=dict(sel.seen),
        outside_groups=sel.outside,
    )
    logger.info("identities per group: %s", sel.counts)
    return ids, sel


def achieved_table(
    groups: Sequence[str], quotas: Mapping[str, int], proportions: Mapping[str, float]
) -> list[dict[str, Any]]:
    """Per group: target proportion, quota, achieved count and proportion (for reports)."""
    n = max(len(groups), 1)
    total = float(sum(proportions.values())) if proportions else 0.0
    counts = {g: 0 for g in quotas}
    for g in groups:
        counts[g] = counts.get(g, 0) + 1
    rows = []
    for g in counts:
        target = proportions[g] / total if total else 1.0 / max(len(quotas), 1)
        rows.append(
            {
                "group": g,
                "target": round(target, 4),
                "quota": int(quotas.get(g, 0)),
                "achieved": counts[g],
                "achieved_proportion": round(counts[g] / n, 4),
            }
        )
    return rows
