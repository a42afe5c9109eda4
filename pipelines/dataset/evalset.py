"""Export a built dataset as a demographically labelled **evaluation set**.

:func:`export_evaluation_set` writes, under ``out_dir/export``:

* ``evaluation.bin``: insightface's verification format (``facegen eval fr --bin``);
* ``evaluation_pairs.csv``: one row per pair, in the ``.bin``'s order: ``pair``, ``issame``,
  ``a_identity``, ``a_image``, ``b_identity``, ``b_image``, ``a_group``, ``b_group`` and, for
  each estimated attribute, ``a_<name>``/``b_<name>`` — what ``facegen eval fr --groups``
  reads to report per-group error rates;
* ``evaluation.json``: how many pairs of each kind per group, and the settings.

Pairs are balanced per group: each identity with two or more images gives
``pairs_per_identity`` genuine pairs (distinct image pairs, as many as it has), and its group
gets as many *within-group* impostor pairs (two identities of the group). Each pair of groups
gets *cross-group* impostor pairs, ``cross_pairs`` each (default: the smallest group's genuine
count divided by the number of other groups, so every group takes part in about as many
cross-group impostor pairs as it has genuine pairs). Every kind of pair (each group's genuine,
within-group impostor, and the cross-group impostor pairs) is spread evenly through the list,
so the contiguous folds of the 10-fold protocol — of the whole set and of each group's own
pairs — hold both kinds. A run without ``group_targets`` has one group, ``all``.
"""

from __future__ import annotations

import csv
import io
import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np

from facegen.errors import FacegenError
from facegen.image_io import load_image
from facegen.locks import folder_lock
from facegen.pipelines.dataset.build import committed_identities, crop_path
from facegen.validate import check_int

__all__ = ["export_evaluation_set"]

#: (identity, image) of both sides and whether they are the same person
_Pair = tuple[int, int, int, int, bool]


def export_evaluation_set(
    out_dir: str | os.PathLike[str],
    *,
    pairs_per_identity: int = 10,
    cross_pairs: int | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write ``evaluation.bin``, ``evaluation_pairs.csv`` and ``evaluation.json`` (see the
    module docstring) for the committed identities of ``out_dir``; returns their paths."""
    from facegen.pipelines.dataset.groups import read_groups

    out = Path(out_dir)
    check_int(pairs_per_identity, "pairs_per_identity", minimum=1)
    if cross_pairs is not None:
        check_int(cross_pairs, "cross_pairs", minimum=0)
    records = committed_identities(out)
    if not records:
        raise FacegenError(f"{out}: no committed identities to export")
    groups = read_groups(out)
    label: dict[int, str] = {}
    attrs: dict[int, dict[str, Any]] = {}
    if groups is not None:
        for r in groups["identities"]:
            label[int(r["identity"])] = r["group"]
            attrs[int(r["identity"])] = {
                k: v for k, v in r.get("attributes", {}).items() if k not in ("probabilities",)
            }
    images = {int(r["identity"]): [int(im["index"]) for im in r["images"]] for r in records}
    members: dict[str, list[int]] = {}
    for i in sorted(images):
        members.setdefault(label.get(i, "all"), []).append(i)
    rng = np.random.default_rng(seed)
    pairs, counts = _balanced_pairs(images, members, pairs_per_identity, cross_pairs, rng)
    if not any(p[4] for p in pairs) or all(p[4] for p in pairs):
        raise FacegenError(
            f"{out}: an evaluation set needs genuine and impostor pairs: identities with two or "
            f"more images and at least two identities; got {len(images)} identities"
        )
    with folder_lock(out, "dataset export", part="export"):
        return _write(out, pairs, label, attrs, counts, pairs_per_identity, seed)


def _genuine(imgs: list[int], k: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    combos = list(itertools.combinations(imgs, 2))
    pick = rng.permutation(len(combos))[: min(k, len(combos))]
    return [combos[int(t)] for t in pick]


def _impostors(
    a_ids: list[int],
    b_ids: list[int] | None,
    count: int,
    images: dict[int, list[int]],
    rng: np.random.Generator,
) -> list[_Pair]:
    """``count`` impostor pairs: two identities of ``a_ids`` (``b_ids`` None) or one of each."""
    out: list[_Pair] = []
    if (b_ids is None and len(a_ids) < 2) or (b_ids is not None and not b_ids):
        return out
    for _ in range(count):
        if b_ids is None:
            i, j = (int(x) for x in rng.choice(a_ids, 2, replace=False))
        else:
            i, j = int(rng.choice(a_ids)), int(rng.choice(b_ids))
        out.append((i, int(rng.choice(images[i])), j, int(rng.choice(images[j])), False))
    return out


def _spread(base: list[_Pair], extra: list[_Pair]) -> list[_Pair]:
    """``extra`` inserted evenly through ``base`` (stable, deterministic)."""
    if not extra or not base:
        return base or extra
    keyed = [((k + 0.5) / len(base), 0, p) for k, p in enumerate(base)]
    keyed += [((k + 0.5) / len(extra), 1, p) for k, p in enumerate(extra)]
    keyed.sort(key=lambda t: (t[0], t[1]))
    return [p for _, _, p in keyed]


def _balanced_pairs(
    images: dict[int, list[int]],
    members: dict[str, list[int]],
    per_identity: int,
    cross: int | None,
    rng: np.random.Generator,
) -> tuple[list[_Pair], dict[str, dict[str, int]]]:
    gen_by: dict[str, list[_Pair]] = {}
    imp_by: dict[str, list[_Pair]] = {}
    counts: dict[str, dict[str, int]] = {}
    for g, ids in members.items():
        gen_by[g] = [
            (i, a, i, b, True) for i in ids for a, b in _genuine(images[i], per_identity, rng)
        ]
        imp_by[g] = _impostors(ids, None, len(gen_by[g]), images, rng)
        counts[g] = {
            "identities": len(ids),
            "genuine": len(gen_by[g]),
            "impostor_within": len(imp_by[g]),
            "impostor_cross": 0,
        }
    names = list(members)
    if cross is None and len(names) > 1:
        cross = min(c["genuine"] for c in counts.values()) // (len(names) - 1)
    cross_list: list[_Pair] = []
    for g, h in itertools.combinations(names, 2):
        got = _impostors(members[g], members[h], cross or 0, images, rng)
        cross_list.extend(got)
        counts[g]["impostor_cross"] += len(got)
        counts[h]["impostor_cross"] += len(got)
    # genuine pairs spread evenly among the impostors, each kind's groups spread evenly
    genuine = _merge_evenly(list(gen_by.values()))
    impostor = _spread(_merge_evenly(list(imp_by.values())), cross_list)
    return _spread(genuine, impostor), counts


def _merge_evenly(lists: list[list[_Pair]]) -> list[_Pair]:
    out: list[_Pair] = []
    for part in lists:
        out = _spread(out, part) if out else list(part)
    return out


def _write(
    out: Path,
    pairs: list[_Pair],
    label: dict[int, str],
    attrs: dict[int, dict[str, Any]],
    counts: dict[str, dict[str, int]],
    per_identity: int,
    seed: int,
) -> list[Path]:
    from facegen.fileio import atomic_write, write_json
    from facegen.pipelines.dataset.writers import write_verification_bin

    cache: dict[tuple[int, int], np.ndarray] = {}

    def crop(i: int, j: int) -> np.ndarray:
        if (i, j) not in cache:
            cache[i, j] = load_image(crop_path(out, i, j))
        return cache[i, j]

    dest = out / "export"
    dest.mkdir(parents=True, exist_ok=True)
    bin_path = write_verification_bin(
        dest / "evaluation.bin",
        [(crop(a, ai), crop(b, bi)) for a, ai, b, bi, _ in pairs],
        [same for *_, same in pairs],
    )
    names = sorted({k for v in attrs.values() for k in v if k != "estimator"})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "pair",
            "issame",
            "a_identity",
            "a_image",
            "b_identity",
            "b_image",
            "a_group",
            "b_group",
            *[f"{side}_{n}" for n in names for side in ("a", "b")],
        ]
    )
    for k, (a, ai, b, bi, same) in enumerate(pairs):
        extra = [attrs.get(x, {}).get(n, "") for n in names for x in (a, b)]
        w.writerow([k, int(same), a, ai, b, bi, label.get(a, "all"), label.get(b, "all"), *extra])
    csv_path = dest / "evaluation_pairs.csv"
    with atomic_write(csv_path) as tmp:
        Path(tmp).write_text(buf.getvalue(), encoding="utf-8")
    info_path = write_json(
        dest / "evaluation.json",
        {
            "pairs": len(pairs),
            "genuine": sum(p[4] for p in pairs),
            "impostor": sum(not p[4] for p in pairs),
            "groups": counts,
            "pairs_per_identity": per_identity,
            "seed": seed,
            "files": {"bin": bin_path.name, "pairs_csv": csv_path.name},
        },
    )
    return [bin_path, csv_path, Path(info_path)]
