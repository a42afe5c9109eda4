"""The description of a dataset run: :class:`DatasetConfig`, from a YAML/TOML/JSON file
(:func:`load_config`), command-line flags, a web form, or any mix of them.

A run saves its config as ``config.json`` beside its output; the settings that decide what
the dataset holds (:meth:`DatasetConfig.identity_dict`) must match when a run resumes, those
that only decide how fast it goes (batch size, export formats, holdout) may change.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facegen.errors import FacegenError, InvalidArgumentError
from facegen.validate import check_choice, check_int, check_number

if TYPE_CHECKING:
    from facegen.pipelines.attribute_quota import GroupTargets
    from facegen.pipelines.dataset.build import DatasetSpec

__all__ = [
    "CONFIG_KEYS",
    "GLOBAL_DEFAULTS",
    "POSE_CHOICES",
    "VERIFY_CHOICES",
    "DatasetConfig",
    "export_formats",
    "load_config",
]

POSE_CHOICES = ("none", "reference", "sampled", "bands")
#: What a run checks each image against (``verify_against``): ``target``, the sampled identity
#: vector; ``anchor``, the identity as the generator renders it (one first image's vector,
#: kept only when it is new and apart from the other identities; see
#: :mod:`facegen.pipelines.dataset.anchors`).
VERIFY_CHOICES = ("target", "anchor")

#: The thresholds a run leaves unset take the preset's calibrated values
#: (:attr:`~facegen.pipelines.generation.capabilities.PresetInfo.dataset_defaults`), else
#: these (ArcFace's identity space: Arc2Face and the IP-Adapter-FaceID presets).
GLOBAL_DEFAULTS = {"identity_separation": 0.3, "min_similarity": 0.5, "max_similarity": 0.98}

#: Settings that only change how fast a run goes, not what it makes: a resumed run may differ.
_RUNTIME_KEYS = ("batch_size", "formats", "holdout")

#: Upper bounds of one run's counts (10M identities is ~30 GB of vectors to sample).
_MAXIMA = {
    "identities": 10_000_000,
    "images_per_identity": 100_000,
    "attempts": 1_000,
    "batch_size": 4_096,
}


def export_formats() -> list[str]:
    """The export formats a run may name: the dataset writers' registry
    (:data:`facegen.pipelines.dataset.writers.WRITERS`)."""
    from facegen.pipelines.dataset.writers import WRITERS

    return WRITERS.names()


def _sampler_names() -> list[str]:
    """``auto`` and the identity samplers' registry."""
    from facegen.pipelines.identities import SAMPLERS

    return ["auto", *SAMPLERS.names()]


def _check_types(values: Mapping[str, Any], annotations: Mapping[str, str]) -> None:
    """Scalars of the wrong kind, named by key, before the dataclass sees them."""
    for key, v in values.items():
        kind = annotations.get(key, "")
        if kind.startswith("int"):
            check_int(v, key)
        elif kind.startswith("float"):
            check_number(v, key)
        elif kind == "bool" and not isinstance(v, bool):
            raise InvalidArgumentError(f"`{key}` must be true or false, got {v!r}")
        elif kind.startswith("str") and not isinstance(v, str):
            raise InvalidArgumentError(f"`{key}` must be a string, got {v!r}")


@dataclass(frozen=True)
class DatasetConfig:
    """Everything that defines a dataset run (all JSON/YAML/TOML scalars and lists)."""

    identities: int
    images_per_identity: int
    preset: str = "arc2face"
    seed: int = 0
    #: ``auto``: ``gaussian`` fitted to the identity bank (the preset's or ``identity_bank``)
    #: when there is one, else ``uniform``
    sampler: str = "auto"
    #: None: the preset's calibrated value, else :data:`GLOBAL_DEFAULTS`
    identity_separation: float | None = None
    min_similarity: float | None = None
    max_similarity: float | None = None
    #: a file of real identity vectors (``facegen analyze --save-embeddings``) to fit the
    #: ``gaussian`` sampler to and to check leakage against; None: the preset's own bank
    identity_bank: str | None = None
    #: keep sampled identities below ``leakage_threshold`` to every vector of the bank
    leakage_check: bool = True
    #: None: the preset's calibrated value, else ``identity_separation``
    leakage_threshold: float | None = None
    attempts: int = 3
    #: None: the preset's recommendation, else ``target`` (:data:`VERIFY_CHOICES`)
    verify_against: str | None = None
    perturbation: tuple[float, ...] = (0.0,)
    steps: int | None = None
    dtype: str = "float32"
    prompts: tuple[str, ...] = ()
    pose: str = "none"
    pose_from: str | None = None
    #: yaw/pitch bands cycled over an identity's images with ``pose: bands``, each
    #: ``"yaw=A:B"``, ``"pitch=A:B"`` or ``"yaw=A:B,pitch=C:D"`` (degrees)
    pose_bands: tuple[str, ...] = ()
    #: a folder written by ``facegen train attributes``: estimates attributes from identity
    #: vectors, so ``group_targets`` can be met while sampling; or ``probe:NAME`` (NAME an
    #: image attribute estimator, e.g. ``genderage``, or a classifier's ``.json``): estimate
    #: from one generated probe image per candidate
    attribute_head: str | None = None
    #: groups and their target proportions (:class:`~facegen.pipelines.attribute_quota.
    #: GroupTargets` as a mapping: attributes, bins, targets, prompts)
    group_targets: dict[str, Any] | None = None
    #: candidates drawn at most to meet the group quotas (None: 50 per identity)
    attribute_budget: int | None = None
    keep_full: bool = False
    watermark: bool = True
    batch_size: int = 8
    formats: tuple[str, ...] = ()
    holdout: int = 0

    def __post_init__(self) -> None:
        for name, maximum in _MAXIMA.items():
            check_int(getattr(self, name), name, minimum=1, maximum=maximum)
        check_int(self.seed, "seed", minimum=0, maximum=2**31 - 1)
        if self.identity_separation is not None:
            check_number(
                self.identity_separation,
                "identity_separation",
                minimum=-1,
                maximum=1,
                min_open=True,
            )
        if self.leakage_threshold is not None:
            check_number(self.leakage_threshold, "leakage_threshold", minimum=-1, maximum=1)
        check_choice(self.sampler, "sampler", _sampler_names())
        if self.verify_against is not None:
            check_choice(self.verify_against, "verify_against", VERIFY_CHOICES)
        if self.steps is not None:
            check_int(self.steps, "steps", minimum=1)
        check_choice(self.pose, "pose", POSE_CHOICES)
        if (self.pose == "bands") != bool(self.pose_bands):
            raise InvalidArgumentError(
                "`pose` 'bands' needs `pose_bands` (e.g. ['yaw=-40:-20', 'yaw=-10:10']), and "
                f"`pose_bands` needs `pose` 'bands'; got pose={self.pose!r}, "
                f"pose_bands={list(self.pose_bands)}"
            )
        if self.pose_bands:
            from facegen.pipelines.dataset.poses import parse_pose_band

            for band in self.pose_bands:
                parse_pose_band(band)
        self._check_groups()
        if (self.pose == "none") != (self.pose_from is None):
            raise InvalidArgumentError(
                "`pose` 'reference'/'sampled' needs `pose_from` (a folder of reference photos), "
                f"and `pose_from` needs one of them; got pose={self.pose!r}, "
                f"pose_from={self.pose_from!r}"
            )
        for f in self.formats:
            check_choice(f, "formats", export_formats())
        check_int(self.holdout, "holdout", minimum=0)
        if self.holdout == 1:
            raise InvalidArgumentError(f"`holdout` must be 0 or >= 2, got {self.holdout}")
        if self.holdout >= self.identities:
            raise InvalidArgumentError(
                f"`holdout` must be < `identities` ({self.identities}), got {self.holdout}"
            )
        self.spec()  # validates similarity bounds, perturbation levels

    def _check_groups(self) -> None:
        if self.group_targets is None:
            if self.attribute_budget is not None:
                raise InvalidArgumentError("`attribute_budget` applies only with `group_targets`")
            return
        from facegen.pipelines.attribute_quota import GroupTargets

        if not isinstance(self.group_targets, dict):
            raise InvalidArgumentError(
                f"`group_targets` must be a mapping (attributes, bins, targets, prompts), got "
                f"{self.group_targets!r}"
            )
        GroupTargets.from_dict(self.group_targets)
        if self.attribute_budget is not None:
            check_int(self.attribute_budget, "attribute_budget", minimum=self.identities)

    def targets(self) -> GroupTargets | None:
        """The run's :class:`~facegen.pipelines.attribute_quota.GroupTargets` (or None)."""
        if self.group_targets is None:
            return None
        from facegen.pipelines.attribute_quota import GroupTargets

        return GroupTargets.from_dict(self.group_targets)

    def setting(self, name: str, defaults: Mapping[str, float | str] | None = None) -> float:
        """A threshold's value: as set, else ``defaults``' (a preset's calibration), else
        :data:`GLOBAL_DEFAULTS`' (``leakage_threshold``: else ``identity_separation``'s)."""
        value = getattr(self, name)
        if value is not None:
            return float(value)
        if defaults and name in defaults:
            return float(defaults[name])
        if name == "leakage_threshold":
            return self.setting("identity_separation", defaults)
        return float(GLOBAL_DEFAULTS[name])

    def resolved(
        self, defaults: Mapping[str, float | str] | None = None, *, has_bank: bool = False
    ) -> DatasetConfig:
        """This config with every unset threshold filled in (:meth:`setting`), the ``auto``
        sampler decided (``gaussian`` when an identity bank is available) and
        ``verify_against`` decided (the preset's recommendation, else ``target``): what a run
        records in its ``config.json`` and compares on resume."""
        values: dict[str, Any] = {
            name: self.setting(name, defaults) for name in (*GLOBAL_DEFAULTS, "leakage_threshold")
        }
        sampler = self.sampler
        if sampler == "auto":
            sampler = "gaussian" if has_bank or self.identity_bank else "uniform"
        verify = self.verify_against or str((defaults or {}).get("verify_against", "target"))
        return replace(self, sampler=sampler, verify_against=verify, **values)

    def spec(self) -> DatasetSpec:
        """The :class:`~facegen.pipelines.dataset.build.DatasetSpec` of this run."""
        from facegen.pipelines.dataset.build import DatasetSpec

        return DatasetSpec(
            images_per_identity=self.images_per_identity,
            min_similarity=self.setting("min_similarity"),
            max_similarity=self.setting("max_similarity"),
            max_attempts=self.attempts,
            seed=self.seed,
            batch_size=self.batch_size,
            perturbation=tuple(self.perturbation),
            keep_full=self.keep_full,
            watermark=self.watermark,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> DatasetConfig:
        """Build from a mapping; dashes in keys are accepted; unknown keys are refused."""
        known = set(CONFIG_KEYS)
        norm = {str(k).replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(norm) - known)
        if unknown:
            raise FacegenError(
                f"{source}: unknown setting(s) {unknown}; valid: {', '.join(sorted(known))}"
            )
        missing = [k for k in ("identities", "images_per_identity") if norm.get(k) is None]
        if missing:
            raise FacegenError(f"{source}: `{'`, `'.join(missing)}` must be given")
        for k in ("perturbation", "prompts", "formats", "pose_bands"):
            v = norm.get(k)
            if isinstance(v, str):
                norm[k] = (
                    [t for t in v.split(",") if t] if k not in ("prompts", "pose_bands") else [v]
                )
            if norm.get(k) is not None:
                norm[k] = tuple(norm[k])
        if norm.get("perturbation") is not None:
            try:
                norm["perturbation"] = tuple(float(x) for x in norm["perturbation"])
            except (TypeError, ValueError):
                raise FacegenError(
                    f"{source}: `perturbation` must be numbers (levels in [0, 1)), got "
                    f"{data.get('perturbation')!r}"
                ) from None
        norm = {k: v for k, v in norm.items() if v is not None}
        try:
            _check_types(norm, {f.name: str(f.type) for f in fields(cls)})
            return cls(**norm)
        except (TypeError, ValueError) as e:
            raise FacegenError(f"{source}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def identity_dict(self) -> dict[str, Any]:
        """The settings that determine the dataset's content (what a resume must match)."""
        return {k: v for k, v in self.to_dict().items() if k not in _RUNTIME_KEYS}


#: Every setting of a run, in declaration order (a CLI flag or config key each).
CONFIG_KEYS = tuple(f.name for f in fields(DatasetConfig))


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a run description: ``.yaml``/``.yml``, ``.toml`` or ``.json`` → a flat mapping.

    A TOML file may put the settings under a ``[dataset]`` table; so may YAML/JSON under a
    ``dataset:`` key.
    """
    p = Path(path)
    if not p.is_file():
        raise FacegenError(f"config file {p} does not exist")
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise FacegenError(f"config file {p} must end in .yaml, .yml, .toml or .json")
    except FacegenError:
        raise
    except Exception as e:  # yaml/toml/json parse errors have no common base
        raise FacegenError(f"config file {p} could not be parsed: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("dataset"), dict):
        data = data["dataset"]
    if not isinstance(data, dict):
        raise FacegenError(f"config file {p} must hold a mapping of settings")
    return data
