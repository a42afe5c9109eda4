"""Identity morphs (:mod:`facegen.training.diffusion.morphs`): the warp and blend on synthetic
crops, and morphs of real ORL people measured with dlib, the way the generator's face cache
measures them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from facegen.errors import InvalidArgumentError
from facegen.training.diffusion.morphs import (
    MORPHS_MANIFEST,
    ensure_identity_morphs,
    is_morph_label,
    make_identity_morphs,
    morph_faces,
)

POINTS = np.array([[20.0, 24.0], [44.0, 24.0], [32.0, 36.0], [22.0, 48.0], [42.0, 48.0]])


def _gradient(size: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    img = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_a_full_weight_returns_that_face_and_equal_shapes_blend_linearly() -> None:
    a, b = _gradient(), np.full((64, 64, 3), 200, np.uint8)
    same = morph_faces([a, b], [POINTS, POINTS], [1.0, 0.0])
    assert np.abs(same.astype(int) - a).max() <= 1  # identity warp, resampling only
    half = morph_faces([a, b], [POINTS, POINTS], [1.0, 1.0])  # weights are normalised
    want = (a.astype(float) + 200) / 2
    assert np.abs(half - want).max() <= 1


def test_the_morph_moves_features_to_the_weighted_mean_shape() -> None:
    # a bright dot at each face's first landmark: in the morph it lands where the weighted
    # mean of the two landmarks is, in both warped faces
    def dot_at(p: np.ndarray) -> np.ndarray:
        img = np.zeros((64, 64, 3), np.uint8)
        x, y = int(p[0]), int(p[1])
        img[y - 1 : y + 2, x - 1 : x + 2] = 255
        return img

    pa, pb = POINTS.copy(), POINTS.copy()
    pb[0] = [14.0, 18.0]
    out = morph_faces([dot_at(pa[0]), dot_at(pb[0])], [pa, pb], [0.25, 0.75])
    ys, xs = np.nonzero(out[..., 0] > 100)
    want = 0.25 * pa[0] + 0.75 * pb[0]
    assert abs(xs.mean() - want[0]) < 1.0 and abs(ys.mean() - want[1]) < 1.0


def test_bad_morph_inputs_are_refused() -> None:
    a = _gradient()
    with pytest.raises(InvalidArgumentError, match="two or more"):
        morph_faces([a], [POINTS], [1.0])
    with pytest.raises(InvalidArgumentError, match="one size"):
        morph_faces([a, _gradient(32)], [POINTS, POINTS], [1, 1])
    with pytest.raises(InvalidArgumentError, match="K >= 3"):
        morph_faces([a, a], [POINTS, POINTS[:4]], [1, 1])
    with pytest.raises(InvalidArgumentError, match="non-negative"):
        morph_faces([a, a], [POINTS, POINTS], [1, -1])
    with pytest.raises(InvalidArgumentError, match="non-negative"):
        morph_faces([a, a], [POINTS, POINTS], [float("nan"), 1])


@pytest.fixture(scope="module")
def three_people(orl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("orl3")
    for person in ("s2", "s3", "s4"):
        (root / person).mkdir()
        for k in (1, 2, 3):
            (root / person / f"{k}.pgm").write_bytes((orl_dir / person / f"{k}.pgm").read_bytes())
    (root / "s4" / "broken.png").write_bytes(b"not an image")
    return root


def test_morphs_of_real_people_are_new_identity_vectors_between_their_parents(
    three_people: Path, dlib_analyzer, tmp_path: Path
) -> None:
    from PIL import Image

    out = tmp_path / "morphs"
    rep = make_identity_morphs(
        three_people, out, count=6, parents=2, analyzer=dlib_analyzer, progress=False
    )
    assert (rep.written, rep.people, rep.faces) == (6, 3, 9)
    assert any("broken.png" in s for s in rep.skipped)
    record = json.loads((out / MORPHS_MANIFEST).read_text())
    assert [m["label"] for m in record["morphs"]] == [f"morph-{k:05d}" for k in range(6)]
    means = {}
    for person in ("s2", "s3", "s4"):
        vs = [
            dlib_analyzer.analyze(np.asarray(Image.open(p).convert("RGB")))[0].embedding.vector
            for p in sorted((three_people / person).glob("*.pgm"))
        ]
        m = np.mean(vs, axis=0)
        means[person] = m / np.linalg.norm(m)
    between = 0
    for m in record["morphs"]:
        assert len(set(m["people"])) == 2 and abs(sum(m["weights"]) - 1) < 1e-5
        assert is_morph_label(m["label"])
        image = np.asarray(Image.open(out / m["label"] / "morph.png"))
        assert image.shape == (128, 128, 3)
        face = dlib_analyzer.analyze(image)[0]  # a morph is still a face dlib finds
        v = face.embedding.vector / np.linalg.norm(face.embedding.vector)
        sims = {p: float(v @ means[p]) for p in means}
        parents = sorted(m["people"])
        other = next(p for p in means if p not in parents)
        # nearest to one of its parents, not to the person it was not made of
        between += max(sims, key=sims.get) != other
        assert sims[parents[0]] < 0.999 and sims[parents[1]] < 0.999  # a new vector
    assert between == 6


def test_morphs_are_reproducible_refused_twice_and_reused_when_unchanged(
    three_people: Path, dlib_analyzer, tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    kw = {"count": 3, "parents": 3, "analyzer": dlib_analyzer, "progress": False, "seed": 7}
    make_identity_morphs(three_people, a, **kw)
    make_identity_morphs(three_people, b, **kw)
    for k in range(3):
        name = f"morph-{k:05d}/morph.png"
        assert (a / name).read_bytes() == (b / name).read_bytes()
    with pytest.raises(InvalidArgumentError, match="already holds morphs"):
        make_identity_morphs(three_people, a, **kw)
    with pytest.raises(InvalidArgumentError, match="at least 4 people"):
        make_identity_morphs(three_people, tmp_path / "c", **{**kw, "parents": 4})
    # ensure_identity_morphs keeps a complete folder with the same settings …
    stamp = (a / "morph-00000" / "morph.png").stat().st_mtime_ns
    ensure_identity_morphs(three_people, a, count=3, parents=3, seed=7)
    assert (a / "morph-00000" / "morph.png").stat().st_mtime_ns == stamp
    # … and remakes them when a photo changed
    photo = three_people / "s2" / "1.pgm"
    st = photo.stat()
    os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ensure_identity_morphs(three_people, a, count=3, parents=3, seed=7)
    assert (a / "morph-00000" / "morph.png").stat().st_mtime_ns != stamp
    # … and remakes one that lost a morph or asks for other settings
    (a / "morph-00002" / "morph.png").unlink()
    (a / "morph-00001" / "stale.txt").write_text("x")
    ensure_identity_morphs(three_people, a, count=2, parents=2, seed=7)
    assert sorted(p.name for p in a.glob("morph-*")) == ["morph-00000", "morph-00001"]
    assert not (a / "morph-00001" / "stale.txt").exists()
    assert json.loads((a / MORPHS_MANIFEST).read_text())["settings"]["parents"] == 2


def test_cli_flags_reach_the_generator_config(tmp_path: Path) -> None:
    from facegen.app.cli.main import build_parser
    from facegen.app.cli.train import _GEN_KEYS, config_from
    from facegen.training.diffusion.generator import GeneratorTrainConfig

    parser = build_parser()
    argv = ["train", "generator", str(tmp_path), "--out", str(tmp_path / "o")]
    args = parser.parse_args([*argv, "--identity-morphs", "40", "--morph-parents", "4"])
    keys = {f: d for f, d in _GEN_KEYS.items() if hasattr(args, d)}
    cfg = config_from(GeneratorTrainConfig, args, keys)
    assert (cfg.identity_morphs, cfg.morph_parents) == (40, 4)
    assert cfg.morphs_dir == tmp_path / "o" / "morphs"
    plain = config_from(GeneratorTrainConfig, parser.parse_args(argv), keys)
    assert plain.identity_morphs == 0 and plain.prepare_photo_inputs() == [str(tmp_path)]
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--identity-morphs", "-1"])
    with pytest.raises(InvalidArgumentError, match="morph_parents"):
        GeneratorTrainConfig(output_dir="o", data_dir="d", morph_parents=1)
