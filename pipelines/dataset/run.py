"""Dataset runs: one config, deterministic shards, local / ``accelerate`` / Ray executors, merge.

A run is described by a :class:`DatasetConfig` (from a YAML/TOML/JSON file, CLI flags, or
both) and saved as ``config.json`` beside its output; the same config gives the same dataset
whatever runs it:

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
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from facegen.errors import FacegenError, MissingDependencyError
from facegen.locks import folder_lock, is_lock_file

__all__ = [
    "DatasetConfig",
    "Worker",
    "accelerate_shard",
    "load_config",
    "merge",
    "prepare_run",
    "preset_worker",
    "run_ray",
    "run_shard",
]

logger = logging.getLogger(__name__)

FORMATS = ("wds", "rec", "parquet", "imagefolder")
POSE_CHOICES = ("none", "reference", "sampled")

#: Settings that only change how fast a run goes, not what it makes: a resumed run may differ.
_RUNTIME_KEYS = ("batch_size", "formats", "holdout")


def _check_types(values: Mapping[str, Any], annotations: Mapping[str, str]) -> None:
    """Scalars of the wrong kind, named by key, before the dataclass sees them."""
    for key, v in values.items():
        kind = annotations.get(key, "")
        if kind.startswith("int") and (isinstance(v, bool) or not isinstance(v, int)):
            raise ValueError(f"`{key}` must be an integer, got {v!r}")
        if kind.startswith("float") and (
            isinstance(v, bool) or not isinstance(v, (int, float)) or v != v
        ):
            raise ValueError(f"`{key}` must be a number, got {v!r}")
        if kind == "bool" and not isinstance(v, bool):
            raise ValueError(f"`{key}` must be true or false, got {v!r}")
        if kind.startswith("str") and not isinstance(v, str):
            raise ValueError(f"`{key}` must be a string, got {v!r}")


#: Upper bounds of one run's counts (10M identities is ~30 GB of vectors to sample).
_MAXIMA = {
    "identities": 10_000_000,
    "images_per_identity": 100_000,
    "attempts": 1_000,
    "batch_size": 4_096,
}


@dataclass(frozen=True)
class DatasetConfig:
    """Everything that defines a dataset run (all JSON/YAML/TOML scalars and lists)."""

    identities: int
    images_per_identity: int
    preset: str = "arc2face"
    seed: int = 0
    sampler: str = "uniform"
    identity_separation: float = 0.3
    min_similarity: float = 0.5
    max_similarity: float = 0.98
    attempts: int = 3
    perturbation: tuple[float, ...] = (0.0,)
    steps: int | None = None
    dtype: str = "float32"
    prompts: tuple[str, ...] = ()
    pose: str = "none"
    pose_from: str | None = None
    keep_full: bool = False
    watermark: bool = True
    batch_size: int = 8
    formats: tuple[str, ...] = ()
    holdout: int = 0

    def __post_init__(self) -> None:
        for name in ("identities", "images_per_identity", "attempts", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {v!r}")
            if v > _MAXIMA[name]:
                raise ValueError(f"`{name}` must be at most {_MAXIMA[name]:,}, got {v:,}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"`seed` must be an integer, got {self.seed!r}")
        if not 0 <= self.seed <= 2**31 - 1:
            raise ValueError(f"`seed` must be in [0, 2147483647], got {self.seed}")
        if not -1 < self.identity_separation <= 1:
            raise ValueError(
                f"`identity_separation` must be in (-1, 1], got {self.identity_separation}"
            )
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"`steps` must be an integer >= 1, got {self.steps!r}")
        if self.pose not in POSE_CHOICES:
            raise ValueError(f"`pose` must be one of {', '.join(POSE_CHOICES)}, got {self.pose!r}")
        if (self.pose == "none") != (self.pose_from is None):
            raise ValueError(
                "`pose` 'reference'/'sampled' needs `pose_from` (a folder of reference photos), "
                f"and `pose_from` needs one of them; got pose={self.pose!r}, "
                f"pose_from={self.pose_from!r}"
            )
        bad = [f for f in self.formats if f not in FORMATS]
        if bad:
            raise ValueError(f"`formats` must be among {', '.join(FORMATS)}, got {bad}")
        if self.holdout < 0 or self.holdout == 1:
            raise ValueError(f"`holdout` must be 0 or >= 2, got {self.holdout}")
        if self.holdout >= self.identities:
            raise ValueError(
                f"`holdout` must be < `identities` ({self.identities}), got {self.holdout}"
            )
        self.spec()  # validates similarity bounds, perturbation levels

    def spec(self) -> Any:
        from facegen.pipelines.dataset.build import DatasetSpec

        return DatasetSpec(
            images_per_identity=self.images_per_identity,
            min_similarity=self.min_similarity,
            max_similarity=self.max_similarity,
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
        known = {f.name for f in fields(cls)}
        norm = {str(k).replace("-", "_"): v for k, v in data.items()}
        unknown = sorted(set(norm) - known)
        if unknown:
            raise FacegenError(
                f"{source}: unknown setting(s) {unknown}; valid: {', '.join(sorted(known))}"
            )
        missing = [k for k in ("identities", "images_per_identity") if norm.get(k) is None]
        if missing:
            raise FacegenError(f"{source}: `{'`, `'.join(missing)}` must be given")
        for k in ("perturbation", "prompts", "formats"):
            v = norm.get(k)
            if isinstance(v, str):
                norm[k] = [t for t in v.split(",") if t] if k != "prompts" else [v]
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


# ------------------------------------------------------------------------------ run folder


def _check_config(out: Path, cfg: DatasetConfig) -> None:
    """Refuse to mix datasets: an existing ``config.json`` must match in content settings."""
    path = out / "config.json"
    if not path.exists():
        return
    old = DatasetConfig.from_dict(json.loads(path.read_text()), source=str(path))
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
    pose_analyzer: Any = None,
) -> tuple[np.ndarray, Any]:
    """Create/check the run folder: ``config.json``, ``identities.safetensors`` (sampled once,
    then read by every shard) and, with poses, ``poses.safetensors``. Returns the ``(N, D)``
    identities and the pose bank (or ``None``). Safe to call from several shards at once:
    every file is written atomically and is the same whoever writes it; they take turns
    (lock ``.facegen.lock.prepare``, waited for), so the first samples and the others read,
    and a run with other settings starting at the same moment is refused, not mixed in."""
    with folder_lock(out_dir, "dataset run (preparing)", part="prepare", timeout=None):
        return _prepare(Path(out_dir), cfg, encoder_id, dim, pose_analyzer)


def _prepare(
    out: Path, cfg: DatasetConfig, encoder_id: str, dim: int, pose_analyzer: Any
) -> tuple[np.ndarray, Any]:
    """:func:`prepare_run` while it holds the prepare lock."""
    from facegen.embedding_io import load_embeddings
    from facegen.fileio import write_json
    from facegen.pipelines.dataset.poses import PoseBank
    from facegen.pipelines.identities import sample_identities

    _check_config(out, cfg)
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
        ids = sample_identities(
            cfg.identities,
            dim=dim,
            sampler=cfg.sampler,
            seed=cfg.seed,
            max_similarity=cfg.identity_separation,
            encoder_id=encoder_id,
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
    identity space (``encoder_id``, ``dim``) and the per-image control ``size`` (pixels)."""

    generate: Callable[..., Any]
    verifier: Any
    encoder_id: str
    dim: int
    size: int = 512
    takes_prompt: bool = False
    takes_control: bool = False


#: ``(config, device) -> Worker``: builds the models once per process/actor.
WorkerFactory = Callable[[DatasetConfig, str], Worker]


def preset_worker(
    cfg: DatasetConfig, device: str = "cpu", *, offline: bool | None = None
) -> Worker:
    """A :class:`Worker` around ``from_preset(cfg.preset)`` whose identity analyzer verifies."""
    from facegen.pipelines.generation.presets import from_preset

    pipe = from_preset(
        cfg.preset,
        device=device,
        dtype=cfg.dtype,
        local_files_only=True if offline else None,
    )
    pipe.set_progress_bar_config(disable=True)
    verifier = getattr(pipe, "identity_analyzer", None)
    if verifier is None or getattr(verifier, "encoder", None) is None:
        from facegen.pipelines.generation.presets import preset_names

        raise FacegenError(
            f"preset {cfg.preset!r} has no identity analyzer to verify images; use a preset with "
            f"one ({', '.join(preset_names(test_double=False))})"
        )
    takes_control = getattr(pipe, "controlnet", None) is not None
    takes_prompt = bool(pipe.takes_prompt)
    if cfg.pose != "none" and not takes_control:
        from facegen.pipelines.generation.presets import preset_names

        raise FacegenError(
            f"`pose` {cfg.pose!r} needs a ControlNet preset "
            f"({', '.join(preset_names(controlnet='built-in'))}; a landmark ControlNet for the "
            f"pose to follow the landmarks); {cfg.preset!r} has none"
        )
    if cfg.prompts and not takes_prompt:
        raise FacegenError(f"preset {cfg.preset!r} takes no text prompt; drop `prompts`")
    call: dict[str, Any] = {"output_type": "np"}
    if cfg.steps:
        call["num_inference_steps"] = cfg.steps

    def generate(vectors: Any, seeds: list[int], conds: list[dict[str, Any]] | None = None) -> Any:
        conds = conds or [{} for _ in seeds]
        images: list[Any] = [None] * len(seeds)
        groups: dict[Any, list[int]] = {}
        for n, c in enumerate(conds):  # one call per prompt (the pipeline takes one prompt)
            groups.setdefault(c.get("prompt"), []).append(n)
        for prompt, idx in groups.items():
            kw = dict(call)
            if prompt is not None:
                kw["prompt"] = prompt
            if takes_control:
                kw["control_image"] = [conds[n]["control_image"] for n in idx]
            out = pipe(vectors[idx], seeds=[seeds[n] for n in idx], **kw).images
            for n, im in zip(idx, out):
                images[n] = (np.clip(im, 0, 1) * 255).round().astype(np.uint8)
        return images

    size = int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
    return Worker(
        generate,
        verifier,
        verifier.encoder.encoder_id,
        verifier.encoder.dim,
        size,
        takes_prompt,
        takes_control,
    )


def _condition_fn(cfg: DatasetConfig, bank: Any, size: int) -> Any:
    """Per-image generator inputs: a landmark map for the pose, a prompt (cycled)."""
    if bank is None and not cfg.prompts:
        return None

    def condition(identity: int, index: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        kwargs: dict[str, Any] = {}
        record: dict[str, Any] = {}
        if bank is not None:
            points, record = bank.sample(cfg.pose, seed)
            kwargs["control_image"] = bank.render(points, size)
        if cfg.prompts:
            prompt = cfg.prompts[seed % len(cfg.prompts)]
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
    prepared: tuple[np.ndarray, Any] | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> Any:
    """Fill one shard; returns its summary. ``prepared``: :func:`prepare_run`'s result (made
    here when not given). Holds the shard's lock throughout: raises
    :class:`~facegen.errors.FolderLockedError` at once when another run fills this shard."""
    from facegen.pipelines.dataset.build import _build_dataset, _check_shard, shard_lock

    _check_shard(shard)
    with shard_lock(out_dir, shard):
        if prepared is None:
            prepared = prepare_run(out_dir, cfg, encoder_id=worker.encoder_id, dim=worker.dim)
        vectors, bank = prepared
        condition = _condition_fn(cfg, bank, worker.size)
        spec = cfg.spec()
        return _build_dataset(
            out_dir, vectors, worker.generate, worker.verifier, spec, shard, condition, progress
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
        self.prepared: tuple[np.ndarray, Any] | None = None

    def prepare(self) -> int:
        if self.prepared is None:
            w = self.worker
            self.prepared = prepare_run(self.out_dir, self.cfg, encoder_id=w.encoder_id, dim=w.dim)
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
    if num_workers < 1:
        raise ValueError(f"`num_workers` must be >= 1, got {num_workers}")
    n_shards = min(shards or 4 * num_workers, cfg.identities)
    if n_shards < 1:
        raise ValueError(f"`shards` must be >= 1, got {shards}")
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
        for name in ("identities.safetensors", "poses.safetensors"):
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
    rejections: dict[str, int] = {}
    for r in done:
        for rej in r["rejections"]:
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
