"""Dataset runs on a preset's identity bank: the ``auto`` sampler, calibrated thresholds,
the leakage check, and resume across the resolution of unset settings.

The bank: dlib's 128-D vectors of real ORL photos (people s2–s13, photos 1–5), as a
generator trained on them ships it (``identity_bank.safetensors``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facegen.embedding_io import load_embeddings, save_embeddings
from facegen.errors import FacegenError
from facegen.identity import l2_normalize
from facegen.pipelines.dataset.config import GLOBAL_DEFAULTS, DatasetConfig
from facegen.pipelines.dataset.run import prepare_run
from facegen.types import IdentityEmbedding

ENC = "dlib-resnet-v1"
#: a dlib-space calibration, as `facegen train generator` writes it (same-person cosine 0.925)
DEFAULTS = {
    "min_similarity": 0.925,
    "leakage_threshold": 0.925,
    "identity_separation": 0.925,
    "max_similarity": 0.995,
}


@pytest.fixture(scope="module")
def bank(orl_dir: Path, dlib_analyzer) -> np.ndarray:
    import cv2

    from facegen.image_io import load_image

    rows = []
    for person in range(2, 14):
        for k in range(1, 6):
            img = load_image(orl_dir / f"s{person}" / f"{k}.pgm")
            img = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
            rows.append(dlib_analyzer.embed(img).vector)
    return l2_normalize(np.stack(rows).astype(np.float32))


def _cfg(**kw) -> DatasetConfig:
    return DatasetConfig(**{"identities": 12, "images_per_identity": 2, "preset": "x", **kw})


def test_unset_settings_take_the_preset_calibration_then_the_global_defaults() -> None:
    cfg = _cfg(min_similarity=0.9)
    assert cfg.sampler == "auto" and cfg.identity_separation is None
    r = cfg.resolved(DEFAULTS, has_bank=True)
    assert r.sampler == "gaussian"
    assert r.min_similarity == 0.9  # set by the user: kept
    assert r.identity_separation == 0.925 and r.max_similarity == 0.995
    assert r.leakage_threshold == 0.925
    assert r.spec().min_similarity == 0.9 and r.spec().max_similarity == 0.995
    g = _cfg().resolved(None)
    assert g.sampler == "uniform"
    assert (g.identity_separation, g.min_similarity, g.max_similarity) == tuple(
        GLOBAL_DEFAULTS[k] for k in ("identity_separation", "min_similarity", "max_similarity")
    )
    assert g.leakage_threshold == g.identity_separation  # no calibration: the separation
    assert _cfg(sampler="spread").resolved(DEFAULTS, has_bank=True).sampler == "spread"
    with pytest.raises(ValueError, match="sampler"):
        _cfg(sampler="gausian")


def test_auto_samples_the_bank_gaussian_away_from_every_real_identity(
    tmp_path: Path, bank: np.ndarray
) -> None:
    out = tmp_path / "ds"
    vectors, _ = prepare_run(
        out, _cfg(), encoder_id=ENC, dim=128, identity_bank=bank, defaults=DEFAULTS
    )
    assert vectors.shape == (12, 128)
    saved = json.loads((out / "config.json").read_text())
    assert saved["sampler"] == "gaussian" and saved["leakage_threshold"] == 0.925
    assert saved["identity_separation"] == 0.925 and saved["min_similarity"] == 0.925
    v = l2_normalize(vectors)
    assert float((v @ bank.T).max()) < 0.925  # no sampled identity is a real person's
    pair = v @ v.T
    np.fill_diagonal(pair, -1)
    assert float(pair.max()) < 0.925
    # in the bank's region of the space, not anywhere on the sphere
    mean = l2_normalize(bank.mean(0))
    assert float((v @ mean).min()) > 0.5
    # the same command again reads the identities it sampled
    again, _ = prepare_run(
        out, _cfg(), encoder_id=ENC, dim=128, identity_bank=bank, defaults=DEFAULTS
    )
    assert np.array_equal(again, vectors)
    # a recorded config written before these settings existed resolves to the same run
    old = {k: v for k, v in saved.items() if k not in ("leakage_check", "identity_bank")}
    (out / "config.json").write_text(json.dumps(old))
    prepare_run(out, _cfg(), encoder_id=ENC, dim=128, identity_bank=bank, defaults=DEFAULTS)
    with pytest.raises(FacegenError, match="other settings"):
        prepare_run(
            out,
            _cfg(identity_separation=0.9),
            encoder_id=ENC,
            dim=128,
            identity_bank=bank,
            defaults=DEFAULTS,
        )


def test_the_leakage_check_is_what_keeps_samples_away(tmp_path: Path, bank: np.ndarray) -> None:
    """Without the check some gaussian samples land on real people (so the check above is
    not vacuous); with it none do."""
    kw = {"encoder_id": ENC, "dim": 128, "identity_bank": bank, "defaults": DEFAULTS}
    off, _ = prepare_run(tmp_path / "off", _cfg(identities=40, leakage_check=False), **kw)
    on, _ = prepare_run(tmp_path / "on", _cfg(identities=40), **kw)
    assert float((l2_normalize(off) @ bank.T).max()) >= 0.925
    assert float((l2_normalize(on) @ bank.T).max()) < 0.925


def test_a_users_bank_file_replaces_the_presets_and_must_match_its_space(
    tmp_path: Path, bank: np.ndarray
) -> None:
    mine = tmp_path / "mine.safetensors"
    save_embeddings(mine, [IdentityEmbedding(v, ENC, True) for v in bank])
    other_preset_bank = l2_normalize(bank[:5] + 0.1)
    vectors, _ = prepare_run(
        tmp_path / "a",
        _cfg(identities=6, identity_bank=str(mine)),
        encoder_id=ENC,
        dim=128,
        identity_bank=other_preset_bank,
        defaults=DEFAULTS,
    )
    assert json.loads((tmp_path / "a" / "config.json").read_text())["identity_bank"] == str(mine)
    assert float((l2_normalize(vectors) @ bank.T).max()) < 0.925
    embs, _ = load_embeddings(mine)
    assert len(embs) == len(bank)
    other = tmp_path / "arc.safetensors"
    rng = np.random.default_rng(0)
    save_embeddings(
        other,
        [IdentityEmbedding(l2_normalize(rng.standard_normal(512)), "arcface-onnx/x", True)] * 3,
    )
    with pytest.raises(FacegenError, match=r"512-D arcface-onnx/x vectors.*128-D dlib"):
        prepare_run(tmp_path / "b", _cfg(identity_bank=str(other)), encoder_id=ENC, dim=128)
    with pytest.raises(FacegenError, match="'gaussian' sampler needs an identity bank"):
        prepare_run(tmp_path / "c", _cfg(sampler="gaussian"), encoder_id=ENC, dim=128)


def test_leakage_also_keeps_samples_away_from_each_persons_mean(
    tmp_path: Path, bank: np.ndarray
) -> None:
    """A sample can lie below the threshold to every photo of a person and still above it to
    the person's mean: with the people's names the bank gains their means, checked too."""
    from facegen.pipelines.identities import with_person_means

    names = [f"s{p}" for p in range(2, 14) for _ in range(5)]
    rows = with_person_means(bank, names)
    assert rows.shape == (len(bank) + 12, 128)
    means = rows[len(bank) :]
    assert np.allclose(np.linalg.norm(means, axis=1), 1, atol=1e-5)
    assert np.array_equal(with_person_means(bank, None), bank)  # no names: the rows only
    kw = {"encoder_id": ENC, "dim": 128, "defaults": DEFAULTS}
    photos_only, _ = prepare_run(tmp_path / "p", _cfg(identities=30), identity_bank=bank, **kw)
    with_means, _ = prepare_run(tmp_path / "m", _cfg(identities=30), identity_bank=rows, **kw)
    assert float((l2_normalize(photos_only) @ means.T).max()) >= 0.925  # the gap, shown
    assert float((l2_normalize(with_means) @ means.T).max()) < 0.925  # closed
    assert float((l2_normalize(with_means) @ bank.T).max()) < 0.925
