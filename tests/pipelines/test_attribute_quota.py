"""Attribute-targeted identity sampling on a simulated attribute model.

The simulated model (``simulated_attributes.py``) reads gender and age off fixed directions
of the identity vector: what a head trained by ``facegen train attributes`` looks like to the
sampler, with known ground truth.
"""

from __future__ import annotations

import numpy as np
import pytest
from simulated_attributes import SimulatedAttributes

from facegen.attributes import Grouping
from facegen.errors import InvalidArgumentError
from facegen.pipelines.attribute_quota import (
    GroupTargets,
    achieved_table,
    group_labels_of,
    quotas_for,
    sample_identities_by_group,
)
from facegen.pipelines.identities import SeparationError, sample_identities

DIM = 32
ENC = "sim/32"


def Simulated() -> SimulatedAttributes:
    return SimulatedAttributes(DIM, ENC)


GROUPING = Grouping(("gender", "age"), {"age": (30, 50)})


def test_quotas_largest_remainder() -> None:
    q = quotas_for({"a": 1, "b": 1, "c": 1}, 10)
    assert q == {"a": 4, "b": 3, "c": 3}  # 3.33 each: the first listed gets the extra one
    q = quotas_for({"a": 0.7, "b": 0.2, "c": 0.1}, 7)
    assert sum(q.values()) == 7
    for k, p in {"a": 0.7, "b": 0.2, "c": 0.1}.items():
        assert abs(q[k] - 7 * p) < 1
    assert quotas_for({"a": 2, "b": 0}, 5) == {"a": 5, "b": 0}
    with pytest.raises(InvalidArgumentError):
        quotas_for({"a": float("nan")}, 3)
    with pytest.raises(InvalidArgumentError):
        quotas_for({"a": 0.0}, 3)


def test_possible_groups() -> None:
    labels = group_labels_of(Simulated(), GROUPING)
    assert labels == [
        "gender=female|age=<30",
        "gender=female|age=30-49",
        "gender=female|age=50+",
        "gender=male|age=<30",
        "gender=male|age=30-49",
        "gender=male|age=50+",
    ]


def test_balanced_meets_every_quota_exactly() -> None:
    est = Simulated()
    ids, sel = sample_identities_by_group(
        60, GroupTargets(GROUPING), est, dim=DIM, encoder_id=ENC, max_similarity=0.6, seed=3
    )
    assert len(ids) == 60
    assert ids.stats["quotas"] == dict.fromkeys(group_labels_of(est, GROUPING), 10)
    assert ids.stats["achieved"] == ids.stats["quotas"]
    # the recorded group of every identity is what the model says about that vector
    again = [GROUPING.label(e) for e in est.predict(ids.vectors)]
    assert again == sel.groups
    # separation still holds
    assert ids.verify().violations == 0
    # the selector passed over candidates of full groups (the middle age band is twice as
    # likely as the others, so it fills first)
    assert ids.stats["rejected_by_selector"] > 0


def test_explicit_proportions_within_one_over_n() -> None:
    target = {
        "gender=female|age=<30": 0.1,
        "gender=female|age=30-49": 0.3,
        "gender=female|age=50+": 0.3,
        "gender=male|age=30-49": 0.3,
    }
    n = 37
    ids, sel = sample_identities_by_group(
        n,
        GroupTargets(GROUPING, target),
        Simulated(),
        dim=DIM,
        encoder_id=ENC,
        max_similarity=0.6,
        seed=1,
    )
    rows = achieved_table(sel.groups, ids.stats["quotas"], target)
    assert {r["group"] for r in rows} == set(target)
    for r in rows:
        assert abs(r["achieved_proportion"] - r["target"]) <= 1 / n + 1e-9, r
    assert ids.stats["outside_groups"] > 0  # male <30 / 50+ were drawn and skipped


def test_same_seed_same_identities() -> None:
    args = dict(dim=DIM, encoder_id=ENC, max_similarity=0.6, seed=7)
    a, sa = sample_identities_by_group(24, GroupTargets(GROUPING), Simulated(), **args)
    b, sb = sample_identities_by_group(24, GroupTargets(GROUPING), Simulated(), **args)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert sa.groups == sb.groups


def test_budget_runs_out_and_names_the_short_group() -> None:
    grouping = Grouping(("age",), {"age": (85,)})  # 85+: about 0.1 % of candidates
    with pytest.raises(SeparationError, match=r"age=85\+: \d+/10"):
        sample_identities_by_group(
            20,
            GroupTargets(grouping),
            Simulated(),
            dim=DIM,
            encoder_id=ENC,
            max_similarity=0.9,
            max_candidates=2000,
        )


def test_refusals() -> None:
    with pytest.raises(InvalidArgumentError, match="works on 'sim/32' vectors"):
        sample_identities_by_group(4, GroupTargets(GROUPING), Simulated(), dim=DIM, encoder_id="x")
    with pytest.raises(InvalidArgumentError, match="cannot be produced"):
        GroupTargets(GROUPING, {"gender=other|age=<30": 1.0}).quotas(4, Simulated())
    with pytest.raises(InvalidArgumentError, match="must name the grouped attributes"):
        GroupTargets(GROUPING, {"gender=female": 1.0})
    with pytest.raises(InvalidArgumentError, match="without a target"):
        GroupTargets(
            GROUPING, {"gender=female|age=<30": 1.0}, prompts={"gender=male|age=<30": "a man"}
        )
    with pytest.raises(InvalidArgumentError, match="not estimated"):
        group_labels_of(Simulated(), Grouping(("race",)))
    with pytest.raises(InvalidArgumentError, match="band edges"):
        group_labels_of(Simulated(), Grouping(("age",)))


def test_targets_round_trip() -> None:
    t = GroupTargets(GROUPING, {"gender=female|age=<30": 2, "gender=male|age=50+": 1})
    back = GroupTargets.from_dict(t.to_dict())
    assert back == t
    assert (
        GroupTargets.from_dict({"attributes": ["gender"], "targets": "balanced"}).proportions == {}
    )


def test_without_selector_the_sampler_is_unchanged() -> None:
    a = sample_identities(30, dim=DIM, seed=5, max_similarity=0.6, encoder_id=ENC)
    assert "rejected_by_selector" not in a.stats
