"""Dataset runs: config files, poses, full images, hold-out pairs, merge, kill -9, Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from photo_generator import PhotoGenerator, load_people, photo_worker, write_identities

from facegen.errors import FacegenError
from facegen.image_io import load_image, save_image
from facegen.pipelines.dataset.build import (
    committed_identities,
    full_image_path,
    iter_records,
)
from facegen.pipelines.dataset.export import export
from facegen.pipelines.dataset.poses import BANK_SIZE, PoseBank
from facegen.pipelines.dataset.run import DatasetConfig, Worker, load_config, merge, run_shard

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def people(orl_dir: Path, dlib_analyzer):
    return load_people(orl_dir, dlib_analyzer)


def _cfg(**kw) -> DatasetConfig:
    base = dict(
        identities=3,
        images_per_identity=3,
        min_similarity=0.85,
        max_similarity=0.9999,
        attempts=6,
        batch_size=2,
        preset="photos",
    )
    return DatasetConfig(**{**base, **kw})


def _worker(people, analyzer, **kw) -> Worker:
    return Worker(PhotoGenerator(people, **kw), analyzer, "dlib-resnet-v1", 128, size=64)


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted((root / "images").rglob("*.png"))
    }


# ------------------------------------------------------------------------------ config


def test_config_files_yaml_toml_json_agree(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "identities: 10\nimages-per-identity: 4\nperturbation: [0, 0.2]\nprompts: [a, b]\n"
    )
    (tmp_path / "b.toml").write_text(
        '[dataset]\nidentities = 10\nimages_per_identity = 4\nperturbation = [0.0, 0.2]\nprompts = ["a", "b"]\n'
    )
    (tmp_path / "c.json").write_text(
        json.dumps(
            {
                "identities": 10,
                "images_per_identity": 4,
                "perturbation": "0,0.2",
                "prompts": ["a", "b"],
            }
        )
    )
    cfgs = [
        DatasetConfig.from_dict(load_config(tmp_path / n)) for n in ("a.yaml", "b.toml", "c.json")
    ]
    assert cfgs[0] == cfgs[1] == cfgs[2]
    assert cfgs[0].perturbation == (0.0, 0.2) and cfgs[0].spec().perturbation == (0.0, 0.2)
    # the saved form reads back to the same config
    assert DatasetConfig.from_dict(json.loads(json.dumps(cfgs[0].to_dict()))) == cfgs[0]
    with pytest.raises(FacegenError, match=r"unknown setting\(s\) \['identites'\]"):
        DatasetConfig.from_dict({"identites": 3, "images_per_identity": 1})
    with pytest.raises(FacegenError, match="`identities` must be given"):
        DatasetConfig.from_dict({"images_per_identity": 1})
    with pytest.raises(FacegenError, match="pose_from"):
        DatasetConfig.from_dict({"identities": 3, "images_per_identity": 1, "pose": "sampled"})
    (tmp_path / "bad.yaml").write_text("identities: [1,\n")
    with pytest.raises(FacegenError, match="could not be parsed"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "a.txt").write_text("identities: 3")
    with pytest.raises(FacegenError, match="must end in"):
        load_config(tmp_path / "a.txt")


def test_resume_refuses_other_settings_but_not_runtime_ones(
    tmp_path: Path, people, dlib_analyzer
) -> None:
    write_identities(tmp_path, people)
    run_shard(tmp_path, _cfg(), (0, 1), _worker(people, dlib_analyzer))
    # batch size and formats change how, not what: resuming with them is fine
    s = run_shard(
        tmp_path, _cfg(batch_size=3, formats=("wds",)), (0, 1), _worker(people, dlib_analyzer)
    )
    assert s.skipped_existing == 3
    with pytest.raises(FacegenError, match=r"other settings.*min_similarity"):
        run_shard(tmp_path, _cfg(min_similarity=0.8), (0, 1), _worker(people, dlib_analyzer))


# ------------------------------------------------------------------------------ poses


@pytest.fixture(scope="module")
def pose_folder(tmp_path_factory, t1_image, astronaut, dlib_analyzer) -> Path:
    """One crop per face of t1 (six people, varied poses) and the astronaut, in sub-folders."""
    root = tmp_path_factory.mktemp("poses")
    for k, f in enumerate(dlib_analyzer.analyze(t1_image, embed=False)):
        x1, y1, x2, y2 = f.bbox.astype(int)
        pad = (x2 - x1) // 2
        crop = t1_image[max(0, y1 - pad) : y2 + pad, max(0, x1 - pad) : x2 + pad]
        crop = np.ascontiguousarray(np.kron(crop, np.ones((2, 2, 1), np.uint8)))  # ×2 for HOG
        save_image(crop, root / "t1" / f"face{k}.png")
    save_image(astronaut, root / "astronaut.png")
    (root / "notes.txt").write_text("not an image")
    (root / "broken.png").write_bytes(b"\x89PNG broken")
    return root


def test_pose_bank_reference_and_sampled(tmp_path: Path, pose_folder: Path) -> None:
    bank = PoseBank.from_folder(pose_folder)
    assert len(bank) == 7 and "astronaut.png" in bank.names and "broken.png" not in bank.names
    assert bank.landmarks.shape == (7, 68, 2)
    # references are normalised into the aligned frame: eyes land near the template's eyes
    eyes = bank.landmarks[:, 36:48].mean(1)
    assert np.all((eyes[:, 0] > 0.2 * BANK_SIZE) & (eyes[:, 0] < 0.8 * BANK_SIZE))
    pts, info = bank.sample("reference", seed=3)
    assert info["pose_reference"] in bank.names
    assert any(np.array_equal(pts, r) for r in bank.landmarks)
    a, ia = bank.sample("sampled", seed=3)
    b, _ = bank.sample("sampled", seed=3)
    c, _ = bank.sample("sampled", seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)  # seeded
    assert not any(np.allclose(a, r, atol=0.5) for r in bank.landmarks)  # a new shape
    lo, hi = bank.landmarks.min(0), bank.landmarks.max(0)
    span = hi - lo
    assert np.all((a > lo - span) & (a < hi + span))  # within the references' range
    assert {"target_yaw", "target_pitch", "target_roll"} <= set(ia)
    img = bank.render(a, 64)
    assert img.shape == (64, 64, 3) and img.max() > 0
    bank.save(tmp_path / "poses.safetensors")
    again = PoseBank.load(tmp_path / "poses.safetensors")
    assert again.names == bank.names and np.array_equal(again.landmarks, bank.landmarks)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FacegenError, match="no images"):
        PoseBank.from_folder(tmp_path / "empty")
    with pytest.raises(FacegenError, match="at least 2"):
        PoseBank(bank.landmarks[:1], bank.names[:1]).sample("sampled", 0)


def test_run_with_poses_full_images_and_holdout(
    tmp_path: Path, people, dlib_analyzer, pose_folder: Path
) -> None:
    from facegen.pipelines.dataset.writers import read_verification_bin

    cfg = _cfg(
        identities=3,
        images_per_identity=4,
        pose="sampled",
        pose_from=str(pose_folder),
        keep_full=True,
        batch_size=4,
    )
    write_identities(tmp_path, people)
    worker = _worker(people, dlib_analyzer)
    worker.takes_control = True
    s = run_shard(tmp_path, cfg, (0, 1), worker)
    assert s.done == 3 and (tmp_path / "poses.safetensors").is_file()
    conds = worker.generate.conditions
    assert len(conds) >= 12 and all(c["control_image"].shape == (64, 64, 3) for c in conds)
    recs = committed_identities(tmp_path)
    for r in recs:
        for im in r["images"]:
            assert im["pose_mode"] == "sampled" and "target_yaw" in im
            assert "yaw" in im  # measured on the accepted face (dlib gives 68 landmarks)
            full = load_image(full_image_path(tmp_path, r["identity"], im["index"]))
            assert full.shape == (224, 184, 3)  # the generator's full image, not the crop
    # the same pose for image j whatever the attempt or batch: conditions are keyed by (i, j)
    files = export(tmp_path, ["wds", "parquet"], holdout=2)
    names = {f.name for f in files}
    assert "verification.bin" in names and "manifest.parquet" in names
    vb = read_verification_bin(tmp_path / "export" / "verification.bin")
    assert sum(vb.issame) == 20 and len(vb.issame) == 40  # 2 identities × 10 genuine + 10 impostor
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "export" / "manifest.parquet").to_pydict()
    assert set(table["source_identity"]) == {0}  # held-out identities 1, 2 are not in training
    assert {"yaw", "pose_mode", "rejections", "target_yaw"} <= set(table)
    with pytest.raises(ValueError, match="holdout"):
        export(tmp_path, ["wds"], holdout=1)


# ------------------------------------------------------------------------------ merge


def test_parts_made_elsewhere_merge_into_one_dataset(tmp_path: Path, people, dlib_analyzer) -> None:
    cfg = _cfg()
    ref, a, b, merged = (tmp_path / n for n in ("ref", "a", "b", "merged"))
    for d in (ref, a, b):
        write_identities(d, people)
    run_shard(ref, cfg, (0, 1), _worker(people, dlib_analyzer))
    run_shard(a, cfg, (0, 2), _worker(people, dlib_analyzer))
    summary = merge(a)
    assert not summary["complete"] and summary["missing"] == [1]
    run_shard(b, cfg, (1, 2), _worker(people, dlib_analyzer))
    summary = merge(merged, [a, b])
    assert summary["complete"] and summary["done"] == 3 and summary["images"] == 9
    assert _files(merged) == _files(ref)
    merge(merged, [a, b])  # merging again changes nothing, duplicates nothing
    assert len(committed_identities(merged)) == 3
    assert sorted(r["identity"] for r in iter_records(merged)) == [0, 1, 2]
    assert json.loads((merged / "dataset.json").read_text())["complete"] is True
    other = tmp_path / "other"
    write_identities(other, people)
    run_shard(other, _cfg(seed=7, identities=3), (0, 3), _worker(people, dlib_analyzer))
    with pytest.raises(FacegenError, match="other settings"):
        merge(merged, [other])


# ------------------------------------------------------------------------------ tiny model


def test_tiny_pipeline_all_rejected_is_reported(tmp_path: Path, dlib_analyzer) -> None:
    """End to end with the tiny diffusion model: noise, every image rejected, nothing crashes."""
    from facegen.pipelines.generation.presets import from_preset

    pipe = from_preset("tiny")
    pipe.set_progress_bar_config(disable=True)

    def generate(vectors, seeds):
        v512 = np.tile(vectors, 4) / 2.0  # 128-D unit → 512-D unit
        out = pipe(v512, seeds=seeds, num_inference_steps=2, output_type="np").images
        return [(im * 255).round().astype(np.uint8) for im in out]

    worker = Worker(generate, dlib_analyzer, "dlib-resnet-v1", 128, size=64)
    s = run_shard(tmp_path, _cfg(identities=2, images_per_identity=2, attempts=2), (0, 1), worker)
    assert s.done == 0 and s.failed == 2 and s.rejections == {"no_face": 8}
    summary = merge(tmp_path)
    assert summary["failed"] == [0, 1] and summary["images"] == 0 and not summary["missing"]
    assert summary["rejections"] == s.rejections  # failed identities' rejections count too
    with pytest.raises(FacegenError, match="no committed identities"):
        export(tmp_path, ["wds"])


# ------------------------------------------------------------------------------ kill -9


_KILL_SCRIPT = """
import sys
from pathlib import Path
from photo_generator import photo_worker
from facegen.pipelines.dataset.run import DatasetConfig, run_shard
cfg = DatasetConfig.from_dict(dict(
    identities=3, images_per_identity=3, min_similarity=-1.0, max_similarity=1.0,
    batch_size=1, preset="photos"))
print("started", flush=True)
run_shard(Path(sys.argv[1]), cfg, (0, 1), photo_worker(cfg, delay=float(sys.argv[2])))
print("finished", flush=True)
"""


def test_sigkill_at_random_points_then_resume(tmp_path: Path, orl_dir: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(_KILL_SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    ref, run = tmp_path / "ref", tmp_path / "run"
    subprocess.run([sys.executable, str(script), str(ref), "0"], env=env, check=True, timeout=120)
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(6):
        p = subprocess.Popen(
            [sys.executable, str(script), str(run), "0.15"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert p.stdout is not None and p.stdout.readline().strip() == "started"
        time.sleep(float(rng.uniform(0.05, 0.6)))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait(timeout=60)
        if p.returncode == 0:
            break
    assert kills >= 3
    subprocess.run([sys.executable, str(script), str(run), "0"], env=env, check=True, timeout=120)
    assert _files(run) == _files(ref)
    ids = [r["identity"] for r in iter_records(run)]
    assert sorted(ids) == [0, 1, 2]  # committed once each, nothing duplicated
    leftovers = [p for p in run.rglob("*") if p.name.startswith(".") or "tmp" in p.name]
    assert leftovers == []  # no half-written file visible


# ------------------------------------------------------------------------------ Ray


def test_ray_executor_two_local_workers(tmp_path: Path, people, dlib_analyzer) -> None:
    ray = pytest.importorskip(
        "ray", reason="the Ray executor needs `pip install facegen[distributed]`"
    )
    import photo_generator

    from facegen.pipelines.dataset.run import run_ray

    ray.cloudpickle.register_pickle_by_value(photo_generator)
    cfg = _cfg()
    ref, out = tmp_path / "ref", tmp_path / "ray"
    for d in (ref, out):
        write_identities(d, people)
    run_shard(ref, cfg, (0, 1), _worker(people, dlib_analyzer))
    done = []
    results = run_ray(
        out,
        cfg,
        num_workers=2,
        shards=3,
        factory=photo_worker,
        progress=done.append,
        init_kwargs={"num_cpus": 2, "include_dashboard": False, "log_to_driver": False},
    )
    assert [r["shard"] for r in results] == [0, 1, 2] and len(done) == 3
    assert sum(r["done"] for r in results) == 3
    assert merge(out)["complete"]
    assert _files(out) == _files(ref)


_ACCELERATE_SCRIPT = """
import json, sys
from pathlib import Path
from photo_generator import photo_worker
from facegen.pipelines.dataset.run import DatasetConfig, accelerate_shard, merge, run_shard
cfg = DatasetConfig.from_dict(dict(
    identities=3, images_per_identity=2, min_similarity=-1.0, max_similarity=1.0, preset="photos"))
shard, device, state = accelerate_shard()
run_shard(Path(sys.argv[1]), cfg, shard, photo_worker(cfg, device))
state.wait_for_everyone()
if state.is_main_process:
    print("MERGED", json.dumps(merge(Path(sys.argv[1]))), flush=True)
"""


def test_accelerate_executor_two_processes(tmp_path: Path, orl_dir: Path) -> None:
    """Two processes started by torchrun (what ``accelerate launch --multi_gpu`` runs) each
    take one shard; the main process merges once both are done."""
    import shutil

    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun (installed with torch) is not on PATH")
    script = tmp_path / "run.py"
    script.write_text(_ACCELERATE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    port = str(29500 + os.getpid() % 1000)
    res = subprocess.run(
        [
            torchrun,
            "--nproc_per_node",
            "2",
            "--master_port",
            port,
            str(script),
            str(tmp_path / "out"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    merged = [line for line in res.stdout.splitlines() if line.startswith("MERGED")]
    assert len(merged) == 1  # only the main process merges
    summary = json.loads(merged[0].split(" ", 1)[1])
    assert summary["complete"] and summary["images"] == 6
    journals = sorted(p.name for p in (tmp_path / "out" / "journal").glob("*.jsonl"))
    assert journals == ["shard-0-of-2.jsonl", "shard-1-of-2.jsonl"]
