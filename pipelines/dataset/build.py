"""Building a verified synthetic identity dataset: generate, check, retry, journal, resume.

Every image is checked before it is kept: the largest face is detected, aligned to the
112×112 ArcFace template and embedded with ``verifier`` (a FaceAnalyzer whose encoder lives
in the identities' space); it is accepted only if its cosine similarity to its identity lies
in ``[min_similarity, max_similarity]`` (below: identity drift; above: a near-copy). A
rejected image is generated again with the next seed, at most ``max_attempts`` times; an
identity that cannot be filled is recorded as failed and skipped. Every rejection is logged.
With ``anchors`` (:mod:`facegen.pipelines.dataset.anchors`), images are checked against the
person the generator rendered for their identity instead of the sampled vector.

Work is deterministic: image ``j`` of identity ``i`` at attempt ``a`` uses
``image_seed(seed, i, j, a)``, so any shard, rerun or machine makes the same images.

Crash safety: an identity is committed when all its crops are written (atomically) and one
line is appended (and fsync'ed) to the shard's journal ``journal/shard-K-of-N.jsonl``. A rerun
skips committed identities and regenerates the others from scratch (same seeds, same files),
so a run killed at any moment completes with nothing lost or duplicated.
:func:`facegen.pipelines.dataset.export.export` turns the committed crops into the training
formats (WebDataset, RecordIO, Parquet).

Locks: a run holds the lock of its shard, ``.facegen.lock.shard-K-of-N`` in ``out_dir``
(:func:`shard_lock`, :func:`facegen.locks.folder_lock`), for as long as it runs. Shards of
one run fill disjoint identities, each with its own journal and its own image folders, so
they run side by side into one folder (``--shard``, ``accelerate``, Ray); two runs of the
same shard would append to one journal and write the same files at once, so the second one
fails at once, naming the first. Runs with different shard counts are not excluded: where
their identities overlap they write the same bytes to the same files (same seeds, atomic
writes) and journal them separately, and every reader takes one record per identity.
:func:`~facegen.pipelines.dataset.export.export` holds ``.facegen.lock.export`` while it writes
``out_dir/export``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facegen.align import align_face
from facegen.analyzer import FaceAnalyzer
from facegen.errors import FacegenError, InvalidArgumentError, NoFaceDetectedError
from facegen.fileio import append_json_line, drop_torn_tail
from facegen.identity import l2_normalize
from facegen.image_io import load_image
from facegen.locks import folder_lock
from facegen.provenance import can_watermark, save_with_provenance
from facegen.types import Face
from facegen.validate import check_int, check_number

__all__ = [
    "MIN_DETECTION_SIDE",
    "DatasetSpec",
    "DatasetSummary",
    "build_dataset",
    "committed_identities",
    "crop_path",
    "enlarged_for_detection",
    "full_image_path",
    "image_seed",
    "iter_records",
    "read_journal",
    "shard_lock",
]

logger = logging.getLogger(__name__)

#: ``generate(vectors (B, D) float32, seeds [B]) -> B RGB uint8 images``; with a
#: ``condition`` function, ``generate(vectors, seeds, conditions [B])`` (see :func:`build_dataset`).
GenerateFn = Callable[..., Sequence[np.ndarray]]
#: ``condition(identity, index, seed) -> (generator kwargs for that image, JSON-able record)``.
ConditionFn = Callable[[int, int, int], tuple[dict[str, Any], dict[str, Any]]]


@dataclass(frozen=True)
class DatasetSpec:
    images_per_identity: int
    min_similarity: float = 0.5
    max_similarity: float = 0.98
    max_attempts: int = 3
    seed: int = 0
    batch_size: int = 8
    crop_size: int = 112
    #: Per-image identity perturbation: image ``j`` adds Gaussian noise of standard deviation
    #: ``perturbation[j % len]`` per dimension (scaled by ``1/sqrt(D)``, so a level is the
    #: expected norm of the noise) to the identity, then re-normalises. ``(0.0,)`` = none.
    perturbation: tuple[float, ...] = (0.0,)
    #: Also keep every accepted image at full resolution (``full/<identity>/<index>.jpg``).
    keep_full: bool = False
    #: Mark every stored image with facegen's invisible watermark (provenance metadata is
    #: always written).
    watermark: bool = True
    #: Threads that detect faces in a batch in parallel (0: one per CPU core, at most 4).
    #: How fast a run goes, not what it makes.
    verify_workers: int = 0

    def __post_init__(self) -> None:
        check_int(self.verify_workers, "verify_workers", minimum=0, maximum=64)
        check_int(self.images_per_identity, "images_per_identity", minimum=1)
        check_int(self.max_attempts, "max_attempts", minimum=1)
        check_int(self.batch_size, "batch_size", minimum=1)
        check_int(self.crop_size, "crop_size", minimum=16)
        lo = check_number(self.min_similarity, "min_similarity", minimum=-1, maximum=1)
        hi = check_number(self.max_similarity, "max_similarity", minimum=-1, maximum=1)
        if not lo < hi:
            raise InvalidArgumentError(
                "`min_similarity` < `max_similarity` in [-1, 1] is required, got "
                f"{self.min_similarity} and {self.max_similarity}"
            )
        if not self.perturbation:
            raise InvalidArgumentError("`perturbation` must hold at least one level, got none")
        for p in self.perturbation:
            check_number(p, "perturbation", minimum=0, maximum=10, max_open=True)


@dataclass
class DatasetSummary:
    done: int = 0
    failed: int = 0
    skipped_existing: int = 0
    images: int = 0
    rejections: dict[str, int] = field(default_factory=dict)


#: The "attempt" whose seed picks an image's condition (pose, prompt): never a real attempt.
_CONDITION_STREAM = 1 << 30


def image_seed(seed: int, identity: int, index: int, attempt: int) -> int:
    """The seed of image ``index`` of ``identity`` at ``attempt`` (31-bit, deterministic)."""
    state = np.random.SeedSequence([seed, identity, index, attempt]).generate_state(1)[0]
    return int(state) & 0x7FFFFFFF


def _journal_path(out: Path, shard: tuple[int, int]) -> Path:
    return out / "journal" / f"shard-{shard[0]}-of-{shard[1]}.jsonl"


def read_journal(path: Path) -> Iterator[dict[str, Any]]:
    """Committed records of a journal; a torn last line (a crash mid-write) is ignored."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            yield json.loads(line)


def crop_path(out: str | os.PathLike[str], identity: int, index: int) -> Path:
    """Where an accepted image's aligned crop is stored (PNG)."""
    return Path(out) / "images" / f"{identity:06d}" / f"{index:04d}.png"


def full_image_path(out: str | os.PathLike[str], identity: int, index: int) -> Path:
    """Where ``keep_full`` stores the full-resolution image (JPEG quality 95)."""
    return Path(out) / "full" / f"{identity:06d}" / f"{index:04d}.jpg"


def shard_lock(
    out_dir: str | os.PathLike[str], shard: tuple[int, int]
) -> AbstractContextManager[Path]:
    """The lock a run holds on its ``shard`` ``(K, N)`` of ``out_dir`` (file
    ``.facegen.lock.shard-K-of-N``; see the module doc). Entering it raises
    :class:`~facegen.errors.FolderLockedError` when another run holds it."""
    k, n_shards = shard
    what = "dataset run" if n_shards == 1 else f"dataset run, shard {k} of {n_shards}"
    return folder_lock(out_dir, what, part=f"shard-{k}-of-{n_shards}")


def _check_shard(shard: tuple[int, int]) -> None:
    k, n_shards = shard
    if not 0 <= k < n_shards:
        raise ValueError(f"`shard` must be (K, N) with 0 <= K < N, got {shard}")


def build_dataset(
    out_dir: str | os.PathLike[str],
    identities: np.ndarray,
    generate: GenerateFn,
    verifier: FaceAnalyzer,
    spec: DatasetSpec,
    *,
    shard: tuple[int, int] = (0, 1),
    condition: ConditionFn | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    anchors: Sequence[dict[str, Any]] | None = None,
) -> DatasetSummary:
    """Generate and verify ``spec.images_per_identity`` images for this shard's identities.

    ``identities``: ``(N, D)`` vectors in the verifier encoder's space; identity ``i`` belongs
    to shard ``i % shard[1] == shard[0]``. Identities committed by any journal in ``out_dir``
    (another shard count, a merged part) are skipped. Safe to rerun after a crash (see module
    doc). ``condition`` gives per-image generator inputs (a pose's control image, a prompt) that
    are passed to ``generate`` as a third argument, one dict per image, and recorded with the
    image. ``progress(identities_done, identities_total, images_written)`` is called after each
    committed identity. ``anchors``: one record per identity from
    :func:`~facegen.pipelines.dataset.anchors.find_anchors`; images are then verified against
    their identity's anchor vector instead of its sampled vector (still the generator's
    input), and an identity without an anchor fails at once with the anchor's rejections.
    Holds the shard's lock while it runs (see the module doc): raises
    :class:`~facegen.errors.FolderLockedError` at once when another run is filling this shard
    of ``out_dir``.
    """
    _check_shard(shard)
    with shard_lock(out_dir, shard):
        return _build_dataset(
            out_dir, identities, generate, verifier, spec, shard, condition, progress, anchors
        )


def _build_dataset(
    out_dir: str | os.PathLike[str],
    identities: np.ndarray,
    generate: GenerateFn,
    verifier: FaceAnalyzer,
    spec: DatasetSpec,
    shard: tuple[int, int],
    condition: ConditionFn | None,
    progress: Callable[[int, int, int], None] | None,
    anchors: Sequence[dict[str, Any]] | None = None,
) -> DatasetSummary:
    """:func:`build_dataset` for a caller that holds the shard's lock."""
    k, n_shards = shard
    vecs = l2_normalize(np.asarray(identities, np.float32))
    if anchors is not None and len(anchors) != len(vecs):
        raise FacegenError(f"{len(anchors)} anchors for {len(vecs)} identities")
    out = Path(out_dir)
    journal = _journal_path(out, shard)
    journal.parent.mkdir(parents=True, exist_ok=True)
    if drop_torn_tail(journal):
        logger.info("dropped a torn journal line in %s", journal)
    committed = {r["identity"] for r in iter_records(out)}
    mine = range(k, len(vecs), n_shards)
    summary = DatasetSummary(skipped_existing=sum(i in committed for i in mine))
    todo = [i for i in mine if i not in committed]
    with open(journal, "a", encoding="utf-8") as jf:
        for record in _fill_identities(
            out, todo, vecs, generate, verifier, spec, condition, anchors
        ):
            append_json_line(jf, record)
            for rej in record["rejections"]:
                summary.rejections[rej["reason"]] = summary.rejections.get(rej["reason"], 0) + 1
            if record["status"] == "done":
                summary.done += 1
                summary.images += len(record["images"])
            else:
                summary.failed += 1
            if progress is not None:
                done = summary.done + summary.failed + summary.skipped_existing
                progress(done, len(mine), summary.images)
    return summary


def _largest_faces(
    verifier: FaceAnalyzer, arrays: Sequence[np.ndarray], workers: int = 0
) -> list[Face | None]:
    """The largest face of each image (None where none), embedded in one batch, detected by
    ``workers`` threads (0: one per CPU core, at most 4); a verifier without
    ``largest_faces`` (a stand-in) is asked image by image."""
    if hasattr(verifier, "largest_faces"):
        workers = workers or max(1, min(4, os.cpu_count() or 1))
        return list(verifier.largest_faces(arrays, workers=workers))
    out = []
    for arr in arrays:
        try:
            out.append(verifier.analyze(arr, select="largest")[0])
        except NoFaceDetectedError:
            out.append(None)
    return out


#: Generated images whose shorter side is below this are enlarged (bicubic, by an integer
#: factor) before the verifier detects: detectors miss small faces (dlib's HOG finds none
#: below ~80 px), and small generators (the 64×64 ``demo-orl``) fill the frame with one.
MIN_DETECTION_SIDE = 160


def enlarged_for_detection(image: np.ndarray) -> np.ndarray:
    """``image`` enlarged by the smallest integer factor that brings its shorter side to
    :data:`MIN_DETECTION_SIDE` (unchanged when it is that large already)."""
    import cv2

    side = min(image.shape[:2])
    factor = -(-MIN_DETECTION_SIDE // max(side, 1))
    if factor <= 1:
        return image
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)


#: The other identities' anchors an anchored image must not match: ``(matrix (K, D) of the
#: run's anchors, this identity's row)``.
Rivals = tuple[np.ndarray, int]


def _verify(
    face: Face | None, target: np.ndarray, spec: DatasetSpec, rivals: Rivals | None = None
) -> tuple[Face | None, float, str | None, float | None]:
    """``(face, similarity, rejection reason or None, nearest rival's similarity)`` for an
    image's largest face (None when it has none). With ``rivals`` (a run verified against
    anchors), an image that also matches another identity's anchor (at ``min_similarity``)
    is ``ambiguous``: its label would be in doubt."""
    if face is None:
        return None, float("nan"), "no_face", None
    vector = l2_normalize(face.embedding.vector)
    sim = float(np.dot(vector, target))
    if sim < spec.min_similarity:
        return face, sim, "identity_drift", None
    if sim > spec.max_similarity:
        return face, sim, "near_duplicate", None
    if rivals is not None and len(rivals[0]) > 1:
        sims = rivals[0] @ vector
        sims[rivals[1]] = -np.inf
        rival = float(sims.max())
        return face, sim, "ambiguous" if rival >= spec.min_similarity else None, rival
    return face, sim, None, None


def _perturbed(
    target: np.ndarray, idx: Sequence[int], seeds: Sequence[int], levels: Sequence[float]
) -> np.ndarray:
    """The identity vector per image, with that image's seeded perturbation (unit rows)."""
    out = np.repeat(target[None], len(idx), axis=0).astype(np.float32)
    dim = target.shape[0]
    for row, (j, seed) in enumerate(zip(idx, seeds)):
        level = levels[j % len(levels)]
        if level > 0:
            noise = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
            out[row] += level * noise / np.sqrt(dim)
    return l2_normalize(out)


def iter_records(out_dir: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Committed records of every journal in ``out_dir/journal`` (all shards, merged parts)."""
    for path in sorted((Path(out_dir) / "journal").glob("*.jsonl")):
        yield from read_journal(path)


def _measured_pose(face: Face) -> dict[str, float]:
    """Head pose of an accepted face from its 68 landmarks, when the verifier gives them."""
    from facegen.head_pose import pose_from_landmarks

    if face.landmarks is None or len(face.landmarks) != 68:
        return {}
    try:
        p = pose_from_landmarks(face.landmarks[:, :2])
    except FacegenError:
        return {}
    return {"yaw": round(p.yaw, 2), "pitch": round(p.pitch, 2), "roll": round(p.roll, 2)}


def _check_batch(
    out: Path,
    i: int,
    target: np.ndarray,
    verifier: FaceAnalyzer,
    spec: DatasetSpec,
    attempt: int,
    idx: Sequence[int],
    seeds: Sequence[int],
    images: Sequence[np.ndarray],
    conds: Sequence[tuple[dict[str, Any], dict[str, Any]]],
    rivals: Rivals | None = None,
) -> list[tuple[int, dict[str, Any], bool]]:
    """Verify, align and store one generated batch: ``(index, record, accepted)`` per image."""
    results = []
    originals = [load_image(np.asarray(img)) for img in images]
    arrays = [enlarged_for_detection(a) for a in originals]
    # detection in parallel, one embedding batch
    found = _largest_faces(verifier, arrays, spec.verify_workers)
    for n, (j, seed, arr, orig) in enumerate(zip(idx, seeds, arrays, originals)):
        face, sim, reason, rival = _verify(found[n], target, spec, rivals)
        nearest_rival = {} if rival is None else {"rival_similarity": round(rival, 6)}
        if reason is not None:
            rec = {
                "index": j,
                "attempt": attempt,
                "seed": seed,
                "reason": reason,
                "similarity": None if np.isnan(sim) else round(sim, 6),
                **nearest_rival,
            }
            results.append((j, rec, False))
            continue
        crop = align_face(arr, face, size=spec.crop_size).image
        meta = {"identity": i, "index": j, "seed": seed}
        for img, path in [(crop, crop_path(out, i, j))] + (
            [(orig, full_image_path(out, i, j))] if spec.keep_full else []
        ):
            save_with_provenance(
                img,
                path,
                "dataset",
                meta,
                watermark=spec.watermark and can_watermark(img),
            )
        rec = {
            "index": j,
            "seed": seed,
            "attempt": attempt,
            "similarity": round(sim, 6),
            **nearest_rival,
            **_measured_pose(face),
            **(conds[n][1] if conds else {}),
        }
        results.append((j, rec, True))
    return results


@dataclass
class _Job:
    """One identity being filled: the batches of its current attempt and their checks."""

    identity: int
    #: what images are verified against: the sampled vector, or the identity's anchor
    target: np.ndarray
    pending: list[int]
    #: what the generator is given (None: ``target``)
    vector: np.ndarray | None = None
    anchor: dict[str, Any] | None = None
    rivals: Rivals | None = None
    attempt: int = 0
    cursor: int = 0
    checks: list[Future] = field(default_factory=list)
    accepted: dict[int, dict[str, Any]] = field(default_factory=dict)
    rejections: list[dict[str, Any]] = field(default_factory=list)

    def generated_all(self) -> bool:
        return self.cursor >= len(self.pending)

    def record(self) -> dict[str, Any]:
        out = {
            "identity": self.identity,
            "status": "failed" if self.pending else "done",
            "images": [self.accepted[j] for j in sorted(self.accepted)],
            "rejections": self.rejections,
        }
        if self.anchor is not None:
            out["anchor"] = {k: self.anchor[k] for k in ("attempt", "seed", "target_similarity")}
        return out


def _anchored_job(
    i: int, vecs: np.ndarray, anchor: dict[str, Any], spec: DatasetSpec, rivals: Rivals
) -> _Job:
    """The job of identity ``i`` verified against its ``anchor`` (a ``done`` record; its row
    in ``rivals``); the anchor's rejected candidates open the identity's rejections."""
    return _Job(
        i,
        rivals[0][rivals[1]],
        list(range(spec.images_per_identity)),
        vector=vecs[i],
        anchor=anchor,
        rivals=rivals,
        rejections=list(anchor["rejections"]),
    )


def _anchor_rows(anchors: Sequence[dict[str, Any]]) -> tuple[np.ndarray, dict[int, int]]:
    """The unit vectors of the found anchors ``(K, D)`` and each identity's row."""
    found = [a for a in anchors if a["status"] == "done"]
    if not found:
        return np.zeros((0, 0), np.float32), {}
    matrix = l2_normalize(np.stack([np.asarray(a["vector"], np.float32) for a in found]))
    return matrix, {int(a["identity"]): n for n, a in enumerate(found)}


def _fill_identities(
    out: Path,
    todo: Sequence[int],
    vecs: np.ndarray,
    generate: GenerateFn,
    verifier: FaceAnalyzer,
    spec: DatasetSpec,
    condition: ConditionFn | None,
    anchors: Sequence[dict[str, Any]] | None = None,
    lookahead: int = 2,
) -> Iterator[dict[str, Any]]:
    """Yield each identity's finished record. Generation and verification overlap: a batch is
    verified (and its crops written) in a background thread while the next one is generated,
    and up to ``lookahead`` identities are in flight, so the next identity's first batch is
    generated while the previous one's last batch is checked. Each identity's record depends
    only on its own seeds, so the result is the same as one image at a time."""
    queue = list(todo)
    active: list[_Job] = []
    matrix, rows = _anchor_rows(anchors) if anchors is not None else (None, {})
    with ThreadPoolExecutor(1, thread_name_prefix="facegen-verify") as pool:
        while queue or active:
            # 1. identities whose attempt is fully checked: retry the rejected, or finish
            for job in list(active):
                if not job.generated_all() or not all(c.done() for c in job.checks):
                    continue
                still: list[int] = []
                for c in job.checks:
                    for j, rec, ok in c.result():
                        if ok:
                            job.accepted[j] = rec
                        else:
                            job.rejections.append(rec)
                            still.append(j)
                job.pending, job.cursor, job.checks = still, 0, []
                job.attempt += 1
                if not still or job.attempt >= spec.max_attempts:
                    if still:
                        logger.info(
                            "identity %d failed: %d image(s) not accepted in %d attempts",
                            job.identity,
                            len(still),
                            spec.max_attempts,
                        )
                    active.remove(job)
                    yield job.record()
            # 2. the next batch to generate: the oldest identity with one, or a new identity
            job = next((a for a in active if not a.generated_all()), None)
            if job is None and queue and len(active) < lookahead:
                i = queue.pop(0)
                if anchors is None:
                    job = _Job(i, vecs[i], list(range(spec.images_per_identity)))
                elif anchors[i]["status"] == "done":
                    job = _anchored_job(i, vecs, anchors[i], spec, (matrix, rows[i]))
                else:  # no anchor: nothing to verify images against
                    rejections = list(anchors[i]["rejections"])
                    yield {
                        "identity": i,
                        "status": "failed",
                        "images": [],
                        "rejections": rejections,
                    }
                    continue
                active.append(job)
            if job is None:
                # everything generated: wait for a check still running to finish (waiting on
                # finished ones too would return at once, and this loop would spin, holding
                # the GIL the checks need)
                running = [c for a in active for c in a.checks if not c.done()]
                if running:
                    wait(running, return_when=FIRST_COMPLETED)
                continue
            job.checks.append(
                pool.submit(
                    _check_batch, *_generate_batch(out, job, generate, verifier, spec, condition)
                )
            )


def _generate_batch(
    out: Path,
    job: _Job,
    generate: GenerateFn,
    verifier: FaceAnalyzer,
    spec: DatasetSpec,
    condition: ConditionFn | None,
) -> tuple[Any, ...]:
    """Generate the job's next batch; returns the arguments of its :func:`_check_batch`."""
    i, attempt = job.identity, job.attempt
    idx = job.pending[job.cursor : job.cursor + spec.batch_size]
    job.cursor += len(idx)
    seeds = [image_seed(spec.seed, i, j, attempt) for j in idx]
    given = job.target if job.vector is None else job.vector
    vectors = _perturbed(given, idx, seeds, spec.perturbation)
    conds: list[tuple[dict[str, Any], dict[str, Any]]] = []
    if condition is None:
        images = generate(vectors, seeds)
    else:  # the condition (pose, prompt) of image j is fixed across its attempts
        conds = [condition(i, j, image_seed(spec.seed, i, j, _CONDITION_STREAM)) for j in idx]
        images = generate(vectors, seeds, [c[0] for c in conds])
    if len(images) != len(idx):
        raise FacegenError(f"the generator returned {len(images)} images for {len(idx)} seeds")
    return (
        out, i, job.target, verifier, spec, attempt, idx, seeds, list(images), conds, job.rivals
    )  # fmt: skip


def committed_identities(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The ``done`` record of every filled identity, one per identity, in identity order.

    Journals of several shard counts or merged parts may hold the same identity twice (same
    seeds, same files); the first one found is used.
    """
    seen: dict[int, dict[str, Any]] = {}
    for r in iter_records(out_dir):
        if r["status"] == "done":
            seen.setdefault(int(r["identity"]), r)
    return [seen[i] for i in sorted(seen)]
