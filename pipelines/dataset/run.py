"""Dataset runs: one config, deterministic shards, local / ``accelerate`` / Ray executors, merge.

A run is described by a :class:`~facegen.pipelines.dataset.config.DatasetConfig` (from a
YAML/TOML/JSON file, CLI flags, a web form, or a mix) and saved as ``config.json`` beside its
output; the same config gives the same dataset whatever runs it. A :class:`Worker` generates
and verifies: :func:`preset_worker` builds one from the config's preset, :func:`pipeline_worker`
wraps a pipeline already loaded (the web app's). Executors:

* **shards**: identity ``i`` belongs to shard ``i % N``; ``run_shard(out, cfg, (K, N))`` fills
  one, so any launcher can run them (``--shard K/N`` from Slurm arrays or several machines);
* **accelerate**: under ``accelerate launch`` each process takes the shard of its process
  index on its own device (:func:`accelerate_shard`), the main process merges at the end;
* **Ray**: :func:`run_ray` runs the shards as actors (one pipeline each, ``num_gpus`` per actor)
  on an existing cluster (``address``) or a local ``ray.init()``;
* **merge**: :func:`merge` folds parts made on other machines into one folder and writes a
  consistency summary ``dataset.json`` (missing identities, failures, rejections).

Work is journaled per shard (see :mod:`facegen.pipelines.dataset.build`), so any of these can be
killed and rerun. A shard's run holds that shard's lock from before :func:`prepare_run` to
its end, so shards of one run fill one folder side by side while a second run of the same
shard fails at once, naming the first (:func:`facegen.pipelines.dataset.build.shard_lock`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facegen.analyzer import FaceAnalyzer
from facegen.errors import FacegenError, MissingDependencyError
from facegen.locks import folder_lock, is_lock_file
from facegen.pipelines.dataset.config import DatasetConfig, load_config
from facegen.validate import check_int

if TYPE_CHECKING:
    from facegen.attributes import VectorAttributeEstimator
    from facegen.pipelines.attribute_quota import GroupTargets
    from facegen.pipelines.dataset.build import ConditionFn, DatasetSummary
    from facegen.pipelines.dataset.poses import PoseBank
    from facegen.pipelines.generation.id_to_face import IDGenerationMixin
    from facegen.pipelines.identities import IdentitySet

#: :func:`prepare_run`'s result: the ``(N, D)`` float32 identities and the pose bank (or None).
Prepared = tuple[np.ndarray, "PoseBank | None"]

__all__ = [
    "DatasetConfig",
    "Worker",
    "accelerate_shard",
    "load_config",
    "merge",
    "pipeline_worker",
    "prepare_run",
    "preset_worker",
    "run_ray",
    "run_shard",
]

logger = logging.getLogger(__name__)

#: ``attribute_head: probe:NAME``: estimate from a probe image with image estimator NAME.
PROBE_PREFIX = "probe:"

# ------------------------------------------------------------------------------ run folder


def _check_config(
    out: Path,
    cfg: DatasetConfig,
    defaults: Mapping[str, float | str] | None = None,
    has_bank: bool = False,
) -> None:
    """Refuse to mix datasets: an existing ``config.json`` must match in content settings
    (both resolved with the preset's defaults, so a run recorded before a setting existed
    compares by its effective value)."""
    path = out / "config.json"
    if not path.exists():
        return
    recorded = json.loads(path.read_text())
    recorded.setdefault("verify_against", "target")  # recorded before the setting existed
    old = DatasetConfig.from_dict(recorded, source=str(path))
    old = old.resolved(defaults, has_bank=has_bank)
    cfg = cfg.resolved(defaults, has_bank=has_bank)  # a no-op on a recorded (resolved) config
    if old.identity_dict() != cfg.identity_dict():
        a, b = old.identity_dict(), cfg.identity_dict()
        diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
        raise FacegenError(f"{out} holds a dataset made with other settings (was, now): {diff}")


def prepare_run(
    out_dir: str | os.PathLike[str],
    cfg: DatasetConfig,
    *,
    encoder_id: str,
    dim: int,
    pose_analyzer: FaceAnalyzer | None = None,
    identity_bank: np.ndarray | None = None,
    defaults: Mapping[str, float | str] | None = None,
    attribute_estimator: VectorAttributeEstimator | None = None,
) -> Prepared:
    """Create/check the run folder: ``config.json``, ``identities.safetensors`` (sampled once,
    then read by every shard) and, with poses, ``poses.safetensors``. Returns the ``(N, D)``
    identities and the pose bank (or ``None``). Safe to call from several shards at once:
    every file is written atomically and is the same whoever writes it; they take turns
    (lock ``.facegen.lock.prepare``, waited for), so the first samples and the others read,
    and a run with other settings starting at the same moment is refused, not mixed in.

    ``identity_bank`` (the preset's: the real identities its generator was trained on) and
    ``defaults`` (its calibrated thresholds) resolve ``cfg`` (:meth:`DatasetConfig.resolved`);
    ``cfg.identity_bank`` (a file) replaces the preset's bank. With a bank, the ``gaussian``
    sampler is fitted to it and, with ``cfg.leakage_check``, every sampled identity stays
    below ``leakage_threshold`` to each of its vectors.

    With ``cfg.group_targets`` the identities meet per-group quotas, labelled by
    ``attribute_estimator`` (default: the head in ``cfg.attribute_head``), and ``groups.json``
    records each identity's group (:mod:`facegen.pipelines.dataset.groups`)."""
    with folder_lock(out_dir, "dataset run (preparing)", part="prepare", timeout=None):
        bank = _identity_bank(cfg, identity_bank, encoder_id, dim)
        cfg = cfg.resolved(defaults, has_bank=bank is not None)
        return _prepare(
            Path(out_dir), cfg, encoder_id, dim, pose_analyzer, bank, defaults, attribute_estimator
        )


def _sample_by_group(
    out: Path,
    cfg: DatasetConfig,
    targets: GroupTargets,
    estimator: VectorAttributeEstimator | None,
    sampling: dict[str, Any],
) -> IdentitySet:
    """Identities meeting ``targets``' quotas; writes ``groups.json`` (before the identities
    file, so a run killed in between samples the same identities again)."""
    from facegen.pipelines.attribute_quota import sample_identities_by_group
    from facegen.pipelines.dataset.groups import write_groups

    where: dict[str, Any] = {}
    if estimator is None:
        if cfg.attribute_head is None:
            raise FacegenError(
                "`group_targets` needs an attribute estimator for identity vectors: "
                "`attribute_head` (a folder from `facegen train attributes`)"
            )
        from facegen.attribute_heads import AttributeHead

        estimator = AttributeHead.load(cfg.attribute_head)
        where["path"] = str(cfg.attribute_head)
    ids, sel = sample_identities_by_group(
        cfg.identities,
        targets,
        estimator,
        max_candidates=cfg.attribute_budget,
        **sampling,
    )
    write_groups(
        out,
        targets=targets.to_dict(),
        quotas=ids.stats["quotas"],
        estimator={"name": estimator.name, "encoder_id": estimator.encoder_id, **where},
        groups=sel.groups,
        attributes=[e.to_dict() for e in sel.estimates],
        stats=ids.stats,
    )
    return ids


def _identity_bank(
    cfg: DatasetConfig, preset_bank: np.ndarray | None, encoder_id: str, dim: int
) -> np.ndarray | None:
    """``cfg.identity_bank``'s vectors (checked against the identity space), else the preset's."""
    if cfg.identity_bank is None:
        return preset_bank
    from facegen.embedding_io import load_embeddings

    try:
        embs, names = load_embeddings(cfg.identity_bank)
    except (OSError, ValueError) as exc:
        raise FacegenError(f"`identity_bank` {cfg.identity_bank}: not readable ({exc})") from None
    if embs[0].encoder_id != encoder_id or embs[0].vector.shape[0] != dim:
        raise FacegenError(
            f"`identity_bank` {cfg.identity_bank} holds {embs[0].vector.shape[0]}-D "
            f"{embs[0].encoder_id} vectors; the preset's identities are {dim}-D {encoder_id}"
        )
    from facegen.pipelines.identities import with_person_means

    return with_person_means(np.stack([e.vector for e in embs]), names)


def _prepare(
    out: Path,
    cfg: DatasetConfig,
    encoder_id: str,
    dim: int,
    pose_analyzer: FaceAnalyzer | None,
    identity_bank: np.ndarray | None,
    defaults: Mapping[str, float | str] | None,
    attribute_estimator: VectorAttributeEstimator | None = None,
) -> Prepared:
    """:func:`prepare_run` while it holds the prepare lock (``cfg`` resolved)."""
    from facegen.embedding_io import load_embeddings
    from facegen.fileio import write_json
    from facegen.pipelines.dataset.poses import PoseBank
    from facegen.pipelines.identities import sample_identities

    _check_config(out, cfg, defaults, identity_bank is not None)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "config.json").exists():
        write_json(out / "config.json", cfg.to_dict())
    ids_file = out / "identities.safetensors"
    if ids_file.exists():
        embs, _ = load_embeddings(ids_file)
        if len(embs) != cfg.identities or embs[0].encoder_id != encoder_id:
            raise FacegenError(
                f"{ids_file} holds {len(embs)} {embs[0].encoder_id} identities; this run needs "
                f"{cfg.identities} {encoder_id} identities"
            )
        vectors = np.stack([e.vector for e in embs]).astype(np.float32)
    else:
        if cfg.sampler == "gaussian" and identity_bank is None:
            raise FacegenError(
                "the 'gaussian' sampler needs an identity bank: a preset that ships one (a "
                "generator trained by facegen) or `identity_bank` (a file of real identity "
                "vectors, e.g. from `facegen analyze --save-embeddings`)"
            )
        leak = identity_bank if cfg.leakage_check else None
        sampling: dict[str, Any] = dict(
            dim=dim,
            sampler=cfg.sampler,
            seed=cfg.seed,
            max_similarity=cfg.setting("identity_separation"),
            bank=identity_bank if cfg.sampler == "gaussian" else None,
            leakage_bank=leak,
            leakage_threshold=cfg.setting("leakage_threshold") if leak is not None else None,
            encoder_id=encoder_id,
        )
        targets = cfg.targets()
        if targets is None:
            ids = sample_identities(cfg.identities, **sampling)
        else:
            ids = _sample_by_group(out, cfg, targets, attribute_estimator, sampling)
        if leak is not None:
            logger.info(
                "sampled %d identities, each below %.3f cosine to all %d identities of the bank",
                len(ids.vectors),
                cfg.setting("leakage_threshold"),
                len(leak),
            )
        ids.save(ids_file)
        vectors = ids.vectors
    bank = None
    if cfg.pose != "none":
        poses_file = out / "poses.safetensors"
        if poses_file.exists():
            bank = PoseBank.load(poses_file)
        else:
            bank = PoseBank.from_folder(str(cfg.pose_from), pose_analyzer)
            bank.save(poses_file)
    return vectors, bank


# ---------------------------------------------------------------------------------- workers


@dataclass
class Worker:
    """What fills shards: ``generate``/``verifier`` as :func:`build_dataset` takes them, the
    identity space (``encoder_id``, ``dim``), the per-image control ``size`` (pixels), and
    the preset's ``identity_bank`` (real identities its generator was trained on, or None)
    and calibrated ``defaults`` (see :func:`prepare_run`)."""

    generate: Callable[..., Any]
    verifier: FaceAnalyzer
    encoder_id: str
    dim: int
    size: int = 512
    takes_prompt: bool = False
    takes_control: bool = False
    identity_bank: np.ndarray | None = None
    defaults: Mapping[str, float | str] | None = None
    #: labels identity vectors for ``group_targets`` (default: ``cfg.attribute_head``'s head)
    attribute_estimator: VectorAttributeEstimator | None = None

    def prepare(
        self, out_dir: str | os.PathLike[str], cfg: DatasetConfig, **kwargs: Any
    ) -> Prepared:
        """:func:`prepare_run` for this worker's identity space, bank and defaults (and, for
        ``attribute_head: probe:NAME``, a probe-image estimator on this worker's generator)."""
        if (
            self.attribute_estimator is None
            and cfg.attribute_head is not None
            and cfg.attribute_head.startswith(PROBE_PREFIX)
            and not (Path(out_dir) / "identities.safetensors").exists()
        ):
            from facegen.pipelines.attribute_quota import (
                ProbeImageEstimator,
                image_estimator_from_name,
            )

            self.attribute_estimator = ProbeImageEstimator(
                lambda v, seeds: self.generate(v, seeds),
                self.verifier,
                image_estimator_from_name(cfg.attribute_head[len(PROBE_PREFIX) :]),
                encoder_id=self.encoder_id,
                seed=cfg.seed + 1_000_003,
            )
        return prepare_run(
            out_dir,
            cfg,
            encoder_id=self.encoder_id,
            dim=self.dim,
            identity_bank=self.identity_bank,
            defaults=self.defaults,
            attribute_estimator=self.attribute_estimator,
            **kwargs,
        )

    def resolve(self, cfg: DatasetConfig) -> DatasetConfig:
        """``cfg`` with this preset's defaults filled in (:meth:`DatasetConfig.resolved`)."""
        has_bank = self.identity_bank is not None or cfg.identity_bank is not None
        return cfg.resolved(self.defaults, has_bank=has_bank)


#: ``(config, device) -> Worker``: builds the models once per process/actor.
WorkerFactory = Callable[[DatasetConfig, str], Worker]


def preset_worker(
    cfg: DatasetConfig, device: str = "cpu", *, offline: bool | None = None
) -> Worker:
    """A :class:`Worker` around ``from_preset(cfg.preset)`` (see :func:`pipeline_worker`)."""
    from facegen.pipelines.generation.presets import from_preset

    pipe = from_preset(
        cfg.preset,
        device=device,
        dtype=cfg.dtype,
        local_files_only=True if offline else None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipeline_worker(pipe, cfg)


def _check_pipeline(pipe: IDGenerationMixin, cfg: DatasetConfig) -> FaceAnalyzer:
    """The pipeline's verifier, once ``pipe`` can make ``cfg``'s dataset."""
    from facegen.pipelines.generation.presets import preset_names

    name = cfg.preset
    verifier = getattr(pipe, "identity_analyzer", None)
    if verifier is None or getattr(verifier, "encoder", None) is None:
        raise FacegenError(
            f"preset {name!r} has no identity analyzer to verify images; use a preset with "
            f"one ({', '.join(preset_names(test_double=False))})"
        )
    if cfg.pose != "none" and getattr(pipe, "controlnet", None) is None:
        raise FacegenError(
            f"`pose` {cfg.pose!r} needs a ControlNet preset "
            f"({', '.join(preset_names(controlnet='built-in'))}; a landmark ControlNet for the "
            f"pose to follow the landmarks); {name!r} has none"
        )
    if cfg.prompts and not pipe.takes_prompt:
        raise FacegenError(f"preset {name!r} takes no text prompt; drop `prompts`")
    targets = cfg.targets()
    if targets is not None and targets.prompts and not pipe.takes_prompt:
        raise FacegenError(
            f"preset {name!r} takes no text prompt; drop the `prompts` of `group_targets`"
        )
    return verifier


def pipeline_worker(pipe: IDGenerationMixin, cfg: DatasetConfig) -> Worker:
    """A :class:`Worker` around a loaded pipeline whose identity analyzer verifies: one
    pipeline call per prompt of a batch, ``cfg.steps`` steps (``None``: the preset's), the
    per-image landmark maps when it has a ControlNet. Raises
    :class:`~facegen.errors.FacegenError` when it cannot make ``cfg``'s dataset (no identity
    analyzer, a pose without a ControlNet, prompts it cannot take)."""
    verifier = _check_pipeline(pipe, cfg)
    takes_control = getattr(pipe, "controlnet", None) is not None
    call: dict[str, Any] = {"output_type": "np"}
    if cfg.steps:
        call["num_inference_steps"] = cfg.steps

    def generate(
        vectors: np.ndarray, seeds: list[int], conds: Sequence[dict[str, Any]] | None = None
    ) -> list[np.ndarray]:
        conds = conds or [{} for _ in seeds]
        images: list[Any] = [None] * len(seeds)
        groups: dict[str | None, list[int]] = {}
        for n, c in enumerate(conds):  # one call per prompt (the pipeline takes one prompt)
            groups.setdefault(c.get("prompt"), []).append(n)
        for prompt, idx in groups.items():
            kw = dict(call)
            if prompt is not None:
                kw["prompt"] = prompt
            if takes_control:
                kw["control_image"] = [conds[n]["control_image"] for n in idx]
            out = pipe(vectors[idx], seeds=[seeds[n] for n in idx], **kw).images  # type: ignore[operator]
            for n, im in zip(idx, out):
                images[n] = (np.clip(im, 0, 1) * 255).round().astype(np.uint8)
        return images

    from facegen.pipelines.editing.face_edit import pipeline_size
    from facegen.pipelines.identities import with_person_means

    enc = verifier.encoder
    assert enc is not None  # checked by _check_pipeline
    bank = getattr(pipe, "identity_bank", None)
    info = getattr(pipe, "preset_info", None)
    return Worker(
        generate,
        verifier,
        enc.encoder_id,
        enc.dim,
        pipeline_size(pipe),
        bool(pipe.takes_prompt),
        takes_control,
        identity_bank=None if bank is None else with_person_means(bank[0], bank[1]),
        defaults=dict(info.dataset_defaults) if info is not None else None,
    )


def _condition_fn(
    cfg: DatasetConfig, bank: PoseBank | None, size: int, groups: list[str] | None = None
) -> ConditionFn | None:
    """Per-image generator inputs: a landmark map for the pose (in the image's pose band
    with ``pose: bands``), a prompt (the identity's group's, else cycled over ``prompts``).
    ``groups``: each identity's group label (``groups.json``), for per-group prompts."""
    from facegen.pipelines.dataset.poses import parse_pose_band

    targets = cfg.targets()
    group_prompts = dict(targets.prompts) if targets is not None else {}
    if bank is None and not cfg.prompts and not group_prompts:
        return None

    bands = [parse_pose_band(b) for b in cfg.pose_bands]

    def condition(identity: int, index: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        kwargs: dict[str, Any] = {}
        record: dict[str, Any] = {}
        if bank is not None:
            if bands:
                points, record = bank.sample_band(bands[index % len(bands)], seed)
            else:
                points, record = bank.sample(cfg.pose, seed)
            kwargs["control_image"] = bank.render(points, size)
        prompt = None
        if group_prompts and groups is not None:
            prompt = group_prompts.get(groups[identity])
        if prompt is None and cfg.prompts:
            prompt = cfg.prompts[seed % len(cfg.prompts)]
        if prompt is not None:
            kwargs["prompt"] = prompt
            record["prompt"] = prompt
        return kwargs, record

    return condition


def run_shard(
    out_dir: str | os.PathLike[str],
    cfg: DatasetConfig,
    shard: tuple[int, int],
    worker: Worker,
    *,
    prepared: Prepared | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    anchor_progress: Callable[[int, int], None] | None = None,
) -> DatasetSummary:
    """Fill one shard; returns its summary. ``prepared``: :func:`prepare_run`'s result (made
    here when not given). With ``verify_against: anchor`` the run's anchors are found first
    (:mod:`facegen.pipelines.dataset.anchors`; ``anchor_progress(decided, total)``). Holds
    the shard's lock throughout: raises :class:`~facegen.errors.FolderLockedError` at once when
    another run fills this shard."""
    from facegen.pipelines.dataset.anchors import run_anchors
    from facegen.pipelines.dataset.build import _build_dataset, _check_shard, shard_lock

    _check_shard(shard)
    with shard_lock(out_dir, shard):
        if prepared is None:
            prepared = worker.prepare(out_dir, cfg)
        vectors, bank = prepared
        groups = None
        if cfg.group_targets is not None:
            from facegen.pipelines.dataset.groups import read_groups

            data = read_groups(out_dir)
            groups = None if data is None else [r["group"] for r in data["identities"]]
        condition = _condition_fn(cfg, bank, worker.size, groups)
        resolved = worker.resolve(cfg)
        spec = resolved.spec()
        anchors = None
        generate, verifier = worker.generate, worker.verifier
        if resolved.verify_against == "anchor":
            bank = _identity_bank(resolved, worker.identity_bank, worker.encoder_id, worker.dim)
            anchors = run_anchors(
                out_dir, resolved, vectors, generate, verifier, bank, condition, anchor_progress
            )
        return _build_dataset(
            out_dir, vectors, generate, verifier, spec, shard, condition, progress, anchors
        )


def accelerate_shard() -> tuple[tuple[int, int], str, Any]:
    """``((process_index, num_processes), device, state)`` of this process when started by
    ``accelerate launch`` (or ``torchrun``, ``mpirun``); a lone process is ``(0, 1)``.

    GPUs: ``accelerate launch --multi_gpu --num_processes 8 "$(which facegen)" dataset
    generate … --executor accelerate`` (several nodes: ``--num_machines``/``--machine_rank``)."""
    import torch
    from accelerate import PartialState

    # without CUDA, processes started by torchrun / accelerate / mpirun join over gloo
    state = PartialState(cpu=not torch.cuda.is_available())
    return (state.process_index, state.num_processes), str(state.device), state


# ---------------------------------------------------------------------------------- Ray


class _ShardActor:
    """Ray actor body: builds its worker once, then fills the shards it is given."""

    def __init__(self, out_dir: str, cfg: dict[str, Any], factory: WorkerFactory) -> None:
        import ray

        self.out_dir = out_dir
        self.cfg = DatasetConfig.from_dict(cfg)
        gpus = ray.get_gpu_ids()
        self.worker = factory(self.cfg, "cuda" if gpus else "cpu")
        self.prepared: Prepared | None = None

    def prepare(self) -> int:
        if self.prepared is None:
            w = self.worker
            self.prepared = w.prepare(self.out_dir, self.cfg)
        return len(self.prepared[0])

    def run(self, shard: int, n_shards: int) -> dict[str, Any]:
        self.prepare()
        s = run_shard(
            self.out_dir, self.cfg, (shard, n_shards), self.worker, prepared=self.prepared
        )
        return {"shard": shard, **asdict(s)}


def run_ray(
    out_dir: str | os.PathLike[str],
    cfg: DatasetConfig,
    *,
    address: str | None = None,
    num_workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    shards: int | None = None,
    factory: WorkerFactory | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    init_kwargs: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Fill every shard with ``num_workers`` Ray actors; returns the per-shard summaries.

    Connects to ``address`` (e.g. ``"auto"`` or ``"ray://head:10001"``) or, without one,
    starts a local Ray (``ray.init(**init_kwargs)``). ``shards`` (default ``4 × num_workers``,
    at most one per identity) are handed to idle actors as they finish, so fast and slow GPUs
    balance. ``factory(config, device)`` builds each actor's :class:`Worker` (default:
    :func:`preset_worker`); it must be picklable (cloudpickle). The run folder must be on a
    file system every actor sees (shared storage on a cluster).
    """
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise MissingDependencyError(
            "ray", extra="distributed", purpose="the Ray executor (--executor ray)"
        ) from None
    check_int(num_workers, "num_workers", minimum=1)
    if shards is not None:
        check_int(shards, "shards", minimum=1)
    n_shards = min(shards or 4 * num_workers, cfg.identities)
    out = Path(out_dir).resolve()
    _check_config(out, cfg)
    started_here = False
    if not ray.is_initialized():
        ray.init(address=address, **dict(init_kwargs or {}))
        started_here = True
    try:
        actor = ray.remote(num_gpus=gpus_per_worker, num_cpus=cpus_per_worker)(_ShardActor)
        make = factory or preset_worker
        actors = [actor.remote(str(out), cfg.to_dict(), make) for _ in range(num_workers)]
        # one actor samples the identities (and reads the pose folder); the others read files
        ray.get(actors[0].prepare.remote())
        pool = ActorPool(actors)
        results = []
        for r in pool.map_unordered(lambda a, k: a.run.remote(k, n_shards), range(n_shards)):
            results.append(r)
            if progress is not None:
                progress(r)
        return sorted(results, key=lambda r: r["shard"])
    finally:
        if started_here:
            ray.shutdown()


# ---------------------------------------------------------------------------------- merge


def merge(
    out_dir: str | os.PathLike[str], parts: list[str | os.PathLike[str]] | tuple = ()
) -> dict[str, Any]:
    """Fold ``parts`` (run folders of the same config made elsewhere) into ``out_dir`` and
    write ``dataset.json``: identities done/failed/missing, images, rejections, ``complete``.

    A part's images are copied when not already present (same seeds make the same files),
    its journals land under ``journal/<part name>--<journal>``. Exports and reports read all
    journals, one record per identity.
    """
    from facegen.fileio import write_json
    from facegen.pipelines.dataset.build import committed_identities, iter_records

    out = Path(out_dir)
    if not (out / "config.json").exists():
        if not parts:
            raise FacegenError(f"{out}: not a dataset folder (no config.json)")
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(parts[0]) / "config.json", out / "config.json")
    cfg = DatasetConfig.from_dict(json.loads((out / "config.json").read_text()))
    for part in map(Path, parts):
        if not (part / "config.json").exists():
            raise FacegenError(f"{part}: not a dataset folder (no config.json)")
        _check_config(part, cfg)
        for sub in ("images", "full"):
            for f in sorted((part / sub).rglob("*")) if (part / sub).is_dir() else []:
                dst = out / f.relative_to(part)
                if f.is_file() and not is_lock_file(f) and not dst.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    tmp = dst.with_name(f".{dst.name}.merge")
                    shutil.copy2(f, tmp)
                    os.replace(tmp, dst)
        for name in ("identities.safetensors", "poses.safetensors", "groups.json"):
            if (part / name).exists() and not (out / name).exists():
                shutil.copy2(part / name, out / name)
        (out / "journal").mkdir(exist_ok=True)
        for j in sorted((part / "journal").glob("*.jsonl")):
            tmp = out / "journal" / f".{part.name}--{j.name}.merge"
            shutil.copy2(j, tmp)
            os.replace(tmp, out / "journal" / f"{part.name}--{j.name}")
    done = committed_identities(out)
    seen = {int(r["identity"]) for r in iter_records(out)}
    done_ids = {int(r["identity"]) for r in done}
    # one record per identity (its committed one, else its first failed one): the rejections
    # of failed identities are counted too
    latest: dict[int, dict[str, Any]] = {int(r["identity"]): r for r in done}
    for r in iter_records(out):
        latest.setdefault(int(r["identity"]), r)
    rejections: dict[str, int] = {}
    for r in latest.values():
        for rej in r.get("rejections", ()):
            rejections[rej["reason"]] = rejections.get(rej["reason"], 0) + 1
    missing = sorted(set(range(cfg.identities)) - seen)
    summary = {
        "identities": cfg.identities,
        "done": len(done),
        "failed": sorted(seen - done_ids),
        "missing": missing,
        "images": sum(len(r["images"]) for r in done),
        "rejections": rejections,
        "complete": not missing,
    }
    write_json(out / "dataset.json", summary)
    return summary
