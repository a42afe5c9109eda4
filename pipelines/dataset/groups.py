"""A dataset run's demographic groups: ``groups.json`` beside ``identities.safetensors``.

Written once, when a run with ``group_targets`` samples its identities
(:func:`facegen.pipelines.attribute_quota.sample_identities_by_group`): the grouping, the
targets and whole quotas, the estimator that labelled the identity vectors, and per identity
(in the order of ``identities.safetensors``) its group label and estimated attributes. The
report compares the committed identities' groups with the targets; the evaluation-set export
labels every image with its identity's group.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facegen.errors import FacegenError

__all__ = ["GROUPS_FILE", "group_summary", "read_groups", "write_groups"]

GROUPS_FILE = "groups.json"


def write_groups(
    out: str | os.PathLike[str],
    *,
    targets: dict[str, Any],
    quotas: dict[str, int],
    estimator: dict[str, Any],
    groups: Sequence[str],
    attributes: Sequence[dict[str, Any]],
    stats: dict[str, Any],
) -> Path:
    from facegen.fileio import write_json

    path = Path(out) / GROUPS_FILE
    write_json(
        path,
        {
            "targets": targets,
            "quotas": quotas,
            "estimator": estimator,
            "sampling": {k: v for k, v in stats.items() if k not in ("quotas", "achieved")},
            "identities": [
                {"identity": i, "group": g, "attributes": a}
                for i, (g, a) in enumerate(zip(groups, attributes, strict=True))
            ],
        },
    )
    return path


def read_groups(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``groups.json`` of a run folder, or None when the run has no groups."""
    path = Path(out) / GROUPS_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["identities"] = sorted(data["identities"], key=lambda r: int(r["identity"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FacegenError(f"{path}: not a readable groups file ({e})") from None
    return data


def group_summary(groups: dict[str, Any], committed: Sequence[int]) -> list[dict[str, Any]]:
    """Per group: target proportion, quota, identities sampled and committed (done), and the
    committed proportion, for ``committed`` identity indices."""
    from facegen.pipelines.attribute_quota import achieved_table

    label = {int(r["identity"]): r["group"] for r in groups["identities"]}
    targets = groups["targets"].get("targets")
    proportions = targets if isinstance(targets, dict) else {}
    rows = achieved_table([label[i] for i in committed], groups["quotas"], proportions)
    sampled = achieved_table(list(label.values()), groups["quotas"], proportions)
    for r, s in zip(rows, sampled, strict=True):
        r["sampled"] = s["achieved"]
        r["committed"] = r.pop("achieved")
        r["committed_proportion"] = r.pop("achieved_proportion")
    return rows
