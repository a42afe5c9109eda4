"""Anchored identities: verify a dataset's images against the identity as the generator
renders it (``verify_against: anchor``), not against the sampled vector.

A generator that renders a sampled identity vector as *some* consistent person, but not as
that vector (a small model trained on a few people: ``demo-orl``'s images of a sampled
identity lie at dlib cosine ~0.88 to the vector and ~0.95 to each other), fails the target
check on nearly every image. With anchors, each identity first gets one **anchor** image,
made from its sampled vector with the seed :func:`anchor_seed` ``(seed, identity,
attempt)``. The anchor's face vector becomes the identity's label, kept only when

* the verifier finds a face in it (else ``anchor_no_face``);
* it is below ``leakage_threshold`` to every vector of the identity bank, i.e. the person
  rendered is not one the generator was trained on (else ``anchor_leakage``; only with a
  bank and the leakage check on);
* it is below ``identity_separation`` to the anchor of every earlier identity, i.e. two
  identities of the dataset do not render as one person (else ``anchor_too_close``).

An identity tries ``attempts`` anchors (seeds) before it fails. The images of an identity with
an anchor are generated from its sampled vector as in ``target`` mode and each is verified
against the anchor's vector with the run's similarity window, and rejected as ``ambiguous``
when it also matches another identity's anchor at ``min_similarity`` (its label would be in
doubt); the anchor image itself is not one of them. This is the consistency filter of
DCFace-style pipelines, applied as images are made, so the journal, retries and resume work as
in ``target`` mode.

Anchors are decided in identity order, each against those decided before it, so the same
config gives the same anchors whatever runs it: one process finds them for the whole run (the
first shard to get there, under the lock ``.facegen.lock.anchors``; other shards wait for it,
then read). Each decision is one fsync'ed line of ``anchors.jsonl``; a killed run resumes after
the last one. Cost: one to ``attempts`` extra images per identity, all in that one process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facegen.analyzer import FaceAnalyzer
from facegen.errors import FacegenError
from facegen.fileio import append_json_line, drop_torn_tail
from facegen.identity import l2_normalize
from facegen.image_io import load_image
from facegen.locks import folder_lock
from facegen.pipelines.dataset.build import (
    _CONDITION_STREAM,
    _largest_faces,
    enlarged_for_detection,
    image_seed,
    read_journal,
)

__all__ = [
    "ANCHOR_FILE",
    "ANCHOR_REASONS",
    "anchor_seed",
    "anchor_vectors",
    "find_anchors",
    "read_anchors",
    "run_anchors",
]

if TYPE_CHECKING:
    from facegen.pipelines.dataset.config import DatasetConfig

logger = logging.getLogger(__name__)

#: The anchors' journal in a run folder: one JSON line per identity, in identity order.
ANCHOR_FILE = "anchors.jsonl"
#: Why an anchor was not kept (rejection reasons, as they appear in the journals).
ANCHOR_REASONS = ("anchor_no_face", "anchor_leakage", "anchor_too_close")
#: The "image index" whose seeds make anchors: never a real image's index.
_ANCHOR_STREAM = (1 << 30) + 1


def anchor_seed(seed: int, identity: int, attempt: int) -> int:
    """The seed of ``identity``'s anchor at ``attempt`` (31-bit, deterministic)."""
    return image_seed(seed, identity, _ANCHOR_STREAM, attempt)


def read_anchors(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The decided anchors of a run folder, identity 0, 1, … in order (a torn last line is
    ignored); raises :class:`~facegen.errors.FacegenError` when the journal is out of order."""
    path = Path(out_dir) / ANCHOR_FILE
    records = list(read_journal(path))
    for n, r in enumerate(records):
        if r.get("identity") != n:
            raise FacegenError(
                f"{path}: line {n + 1} is identity {r.get('identity')!r}, expected {n}; the "
                "anchors' journal is damaged (delete it to find the anchors again)"
            )
    return records


def anchor_vectors(out_dir: str | os.PathLike[str]) -> dict[int, np.ndarray]:
    """``{identity: unit anchor vector}`` of the identities that have one."""
    return {
        int(r["identity"]): l2_normalize(np.asarray(r["vector"], np.float32))
        for r in read_anchors(out_dir)
        if r["status"] == "done"
    }


def find_anchors(
    out_dir: str | os.PathLike[str],
    vectors: np.ndarray,
    generate: Callable[..., Sequence[np.ndarray]],
    verifier: FaceAnalyzer,
    *,
    seed: int,
    attempts: int,
    separation: float,
    bank: np.ndarray | None = None,
    leakage_threshold: float | None = None,
    batch_size: int = 8,
    condition: Callable[[int, int, int], tuple[dict[str, Any], dict[str, Any]]] | None = None,
    verify_workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Decide the anchor of every identity of ``vectors`` (``(N, D)``, the run's sampled
    identities) and return the ``N`` records (see the module doc), finding only those not yet
    in ``out_dir/anchors.jsonl``. ``bank``: real identity vectors the anchors must stay below
    ``leakage_threshold`` to (None: no leakage check). ``condition``: the run's per-image
    generator inputs; an anchor takes those of its identity's image 0. Waits while another
    process finds them (lock ``.facegen.lock.anchors``). ``progress(decided, total)``."""
    vecs = l2_normalize(np.asarray(vectors, np.float32))
    if (bank is None) != (leakage_threshold is None):
        raise ValueError("`bank` and `leakage_threshold` go together")
    ref = None if bank is None else l2_normalize(np.asarray(bank, np.float32))
    out = Path(out_dir)
    with folder_lock(out, "dataset run (finding anchors)", part="anchors", timeout=None):
        path = out / ANCHOR_FILE
        if drop_torn_tail(path):
            logger.info("dropped a torn line in %s", path)
        records = read_anchors(out)
        if len(records) > len(vecs):
            raise FacegenError(
                f"{path} holds {len(records)} anchors; this run has {len(vecs)} identities"
            )
        finder = _AnchorFinder(
            vecs, generate, verifier, seed, attempts, separation, ref, leakage_threshold,
            condition, verify_workers,
        )  # fmt: skip
        for r in records:
            finder.taken(r)
        if len(records) < len(vecs):
            logger.info(
                "finding anchors for identities %d–%d (%s)", len(records), len(vecs) - 1, out
            )
        with open(path, "a", encoding="utf-8") as f:
            for start in range(len(records), len(vecs), batch_size):
                block = range(start, min(start + batch_size, len(vecs)))
                for record in finder.decide(block):
                    append_json_line(f, record)
                    records.append(record)
                    if progress is not None:
                        progress(len(records), len(vecs))
    return records


def run_anchors(
    out_dir: str | os.PathLike[str],
    cfg: DatasetConfig,
    vectors: np.ndarray,
    generate: Callable[..., Sequence[np.ndarray]],
    verifier: FaceAnalyzer,
    bank: np.ndarray | None,
    condition: Callable[[int, int, int], tuple[dict[str, Any], dict[str, Any]]] | None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """:func:`find_anchors` for a dataset run: ``cfg`` (resolved) gives the seed, attempts,
    separation and batch size; the anchors stay away from ``bank`` (the run's identity bank)
    when ``cfg`` checks leakage."""
    leak = bank if cfg.leakage_check else None
    return find_anchors(
        out_dir,
        vectors,
        generate,
        verifier,
        seed=cfg.seed,
        attempts=cfg.attempts,
        separation=cfg.setting("identity_separation"),
        bank=leak,
        leakage_threshold=None if leak is None else cfg.setting("leakage_threshold"),
        batch_size=cfg.batch_size,
        condition=condition,
        progress=progress,
    )


class _AnchorFinder:
    """Renders and judges anchor candidates; holds the anchors decided so far."""

    def __init__(
        self,
        vecs: np.ndarray,
        generate: Callable[..., Sequence[np.ndarray]],
        verifier: FaceAnalyzer,
        seed: int,
        attempts: int,
        separation: float,
        bank: np.ndarray | None,
        leakage_threshold: float | None,
        condition: Callable[[int, int, int], tuple[dict[str, Any], dict[str, Any]]] | None,
        verify_workers: int,
    ) -> None:
        self.vecs, self.generate, self.verifier = vecs, generate, verifier
        self.seed, self.attempts, self.separation = seed, attempts, separation
        self.bank, self.leakage_threshold = bank, leakage_threshold
        self.condition, self.verify_workers = condition, verify_workers
        self.kept: list[np.ndarray] = []

    def taken(self, record: dict[str, Any]) -> None:
        """Count an anchor decided earlier (read back from the journal)."""
        if record["status"] == "done":
            self.kept.append(l2_normalize(np.asarray(record["vector"], np.float32)))

    def render(self, jobs: Sequence[tuple[int, int]]) -> list[np.ndarray | None]:
        """The face vector (None: no face) of the anchor of each ``(identity, attempt)``."""
        vectors = self.vecs[[i for i, _ in jobs]]
        seeds = [anchor_seed(self.seed, i, a) for i, a in jobs]
        if self.condition is None:
            images = self.generate(vectors, seeds)
        else:
            conds = [
                self.condition(i, 0, image_seed(self.seed, i, 0, _CONDITION_STREAM))[0]
                for i, _ in jobs
            ]
            images = self.generate(vectors, seeds, conds)
        if len(images) != len(jobs):
            raise FacegenError(f"the generator returned {len(images)} images for {len(jobs)} seeds")
        arrays = [enlarged_for_detection(load_image(np.asarray(im))) for im in images]
        faces = _largest_faces(self.verifier, arrays, self.verify_workers)
        return [None if f is None else l2_normalize(f.embedding.vector) for f in faces]

    def judge(self, vector: np.ndarray | None) -> tuple[str | None, dict[str, float]]:
        """``(rejection reason or None, measured similarities)`` of one candidate."""
        if vector is None:
            return "anchor_no_face", {}
        sims: dict[str, float] = {}
        if self.bank is not None and len(self.bank):
            sims["nearest_bank"] = round(float((self.bank @ vector).max()), 6)
        if self.kept:
            sims["nearest_anchor"] = round(float((np.stack(self.kept) @ vector).max()), 6)
        if self.leakage_threshold is not None and sims.get("nearest_bank", -1.0) >= (
            self.leakage_threshold
        ):
            return "anchor_leakage", sims
        if sims.get("nearest_anchor", -1.0) >= self.separation:
            return "anchor_too_close", sims
        return None, sims

    def decide(self, block: range) -> list[dict[str, Any]]:
        """The records of ``block``'s identities, in order: every first attempt is rendered in
        one batch, an identity's further attempts together when its first is rejected."""
        first = self.render([(i, 0) for i in block])
        records = []
        for i, vector in zip(block, first):
            candidates = {0: vector}
            rejections: list[dict[str, Any]] = []
            record: dict[str, Any] | None = None
            for a in range(self.attempts):
                if a not in candidates:
                    rest = list(range(a, self.attempts))
                    candidates.update(zip(rest, self.render([(i, r) for r in rest])))
                reason, sims = self.judge(candidates[a])
                entry = {"attempt": a, "seed": anchor_seed(self.seed, i, a), **sims}
                if reason is not None:
                    rejections.append({**entry, "reason": reason})
                    continue
                v = candidates[a]
                assert v is not None
                record = {
                    "identity": i,
                    "status": "done",
                    **entry,
                    "target_similarity": round(float(v @ self.vecs[i]), 6),
                    "vector": [round(float(x), 7) for x in v],
                    "rejections": rejections,
                }
                self.kept.append(v)
                break
            if record is None:
                logger.info("identity %d has no anchor after %d attempts", i, self.attempts)
                record = {"identity": i, "status": "failed", "rejections": rejections}
            records.append(record)
        return records
