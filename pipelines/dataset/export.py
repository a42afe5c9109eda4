"""Export a built dataset: its committed identities as training formats and a verification set.

:func:`export` reads the journals (one ``done`` record per identity,
:func:`facegen.pipelines.dataset.build.committed_identities`) and the stored crops, and writes
them through the dataset writers (:data:`facegen.pipelines.dataset.writers.WRITERS`) under
``out_dir/export``, holding ``.facegen.lock.export`` while it does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facegen.errors import FacegenError
from facegen.image_io import load_image
from facegen.locks import folder_lock
from facegen.pipelines.dataset.build import committed_identities, crop_path
from facegen.validate import check_int

__all__ = ["export"]


def export(
    out_dir: str | os.PathLike[str],
    formats: Sequence[str],
    *,
    holdout: int = 0,
    pairs_per_identity: int = 10,
) -> list[Path]:
    """Write the committed identities as ``formats`` under ``out_dir/export``.

    Class indices are the exported identities in increasing identity order (0…C-1). Every
    sample carries its identity vector (``identities.safetensors``, when present; a run
    verified against anchors: the identity's anchor vector, what its images were checked
    against) as its embedding and the journal's record (seed, similarity, attempt, pose, …) as metadata, plus
    ``rejections`` (how many candidates of that identity were rejected).

    ``holdout``: the last ``holdout`` committed identities are left out of the training
    formats and written as a verification set ``export/verification.bin`` (insightface's
    format): per held-out identity, ``pairs_per_identity`` genuine pairs (two of its images)
    and as many impostor pairs (one of its images, one of another held-out identity), chosen
    with a fixed seed.
    """
    out = Path(out_dir)
    records = committed_identities(out)
    if not records:
        raise FacegenError(f"{out}: no committed identities to export")
    check_int(holdout, "holdout", minimum=0, maximum=len(records) - 1)
    if holdout == 1:
        raise ValueError("`holdout` must be 0 or >= 2 (impostor pairs need two identities)")
    with folder_lock(out, "dataset export", part="export"):
        return _export(out, records, formats, holdout, pairs_per_identity)


def _export(
    out: Path,
    records: list[dict[str, Any]],
    formats: Sequence[str],
    holdout: int,
    pairs_per_identity: int,
) -> list[Path]:
    """:func:`export` while it holds the export lock."""
    from facegen.pipelines.dataset.writers import (
        DatasetSample,
        create_writers,
        write_verification_bin,
    )

    vectors = _identity_vectors(out)
    train, held = records[: len(records) - holdout], records[len(records) - holdout :]
    files: list[Path] = []
    if formats:
        writers = create_writers(list(formats), out / "export")
        with writers:
            for cls, r in enumerate(train):
                ident = int(r["identity"])
                for im in r["images"]:
                    writers.write(
                        DatasetSample(
                            identity=cls,
                            index=im["index"],
                            image=load_image(crop_path(out, ident, im["index"])),
                            embedding=vectors.get(ident),
                            metadata={
                                "source_identity": ident,
                                "rejections": len(r["rejections"]),
                                **im,
                            },
                        )
                    )
        files = writers.close()
    if held:
        pairs, issame = _verification_pairs(out, held, pairs_per_identity)
        files.append(write_verification_bin(out / "export" / "verification.bin", pairs, issame))
    return files


def _identity_vectors(out: Path) -> dict[int, np.ndarray]:
    """``{identity: vector}``: ``identities.safetensors``' rows, replaced by the anchors of a
    run verified against anchors."""
    from facegen.pipelines.dataset.anchors import ANCHOR_FILE, anchor_vectors

    vectors: dict[int, np.ndarray] = {}
    path = out / "identities.safetensors"
    if path.exists():
        from facegen.embedding_io import load_embeddings

        embeddings, _ = load_embeddings(path)
        vectors = {i: e.vector.astype(np.float32) for i, e in enumerate(embeddings)}
    if (out / ANCHOR_FILE).exists():
        vectors.update(anchor_vectors(out))
    return vectors


def _verification_pairs(
    out: Path, held: Sequence[dict[str, Any]], per_identity: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[bool]]:
    rng = np.random.default_rng(0)
    images = {int(r["identity"]): [im["index"] for im in r["images"]] for r in held if r["images"]}
    ids = sorted(images)
    cache: dict[tuple[int, int], np.ndarray] = {}

    def crop(i: int, j: int) -> np.ndarray:
        if (i, j) not in cache:
            cache[i, j] = load_image(crop_path(out, i, j))
        return cache[i, j]

    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    issame: list[bool] = []
    for i in ids:
        own = images[i]
        for _ in range(per_identity):
            if len(own) >= 2:
                a, b = rng.choice(own, 2, replace=False)
                pairs.append((crop(i, int(a)), crop(i, int(b))))
                issame.append(True)
            other = ids[(ids.index(i) + 1 + int(rng.integers(len(ids) - 1))) % len(ids)]
            pairs.append(
                (crop(i, int(rng.choice(own))), crop(other, int(rng.choice(images[other]))))
            )
            issame.append(False)
    return pairs, issame
