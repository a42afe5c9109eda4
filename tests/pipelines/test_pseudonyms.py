"""Consistent pseudonyms on real photos: one synthetic identity per real person, keyed by a secret."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from photo_generator import load_people

from facegen.pipelines.editing.pseudonyms import Pseudonymizer, cluster_embeddings
from facegen.types import IdentityEmbedding


@pytest.fixture(scope="module")
def faces(orl_dir: Path, dlib_analyzer):
    """Keys and dlib embeddings of 3 people × 5 photos, with the person of each key."""
    people = load_people(orl_dir, dlib_analyzer, ["s10", "s11", "s12"])
    keys, vecs, who = [], [], []
    for p, (_, photos) in enumerate(people):
        for k, photo in enumerate(photos[:5]):
            keys.append(f"person{p}/{k}.jpg#0")
            vecs.append(dlib_analyzer.embed(photo).vector)
            who.append(p)
    return keys, np.stack(vecs), who


def test_same_person_same_pseudonym_across_photos(faces, dlib_analyzer) -> None:
    keys, vecs, who = faces
    thr = dlib_analyzer.encoder.same_person_threshold
    pz = Pseudonymizer("correct horse battery", "arcface-onnx/arc2face", 512, thr)
    labels = pz.fit(keys, vecs)
    assert pz.num_people == 3
    for a in range(len(keys)):
        for b in range(len(keys)):
            assert (labels[keys[a]] == labels[keys[b]]) == (who[a] == who[b])
    ids = {k: pz.identity_for(k).vector for k in keys}
    for a in range(len(keys)):
        for b in range(len(keys)):
            same = np.array_equal(ids[keys[a]], ids[keys[b]])
            assert same == (who[a] == who[b])
    v = ids[keys[0]]
    assert v.shape == (512,) and abs(np.linalg.norm(v) - 1) < 1e-5
    # an unseen photo of a known person joins that person's pseudonym
    assert np.array_equal(pz.identity_for("new.jpg#0", vecs[1]).vector, ids[keys[0]])


def test_mapping_is_reproducible_order_free_and_keyed_by_the_secret(faces) -> None:
    keys, vecs, _ = faces
    a = Pseudonymizer("secret-one", "enc", 64, 0.925)
    a.fit(keys, vecs)
    order = np.random.default_rng(0).permutation(len(keys))
    b = Pseudonymizer("secret-one", "enc", 64, 0.925)
    b.fit([keys[i] for i in order], vecs[order])  # files found in another order
    c = Pseudonymizer("secret-two", "enc", 64, 0.925)
    c.fit(keys, vecs)
    for k in keys:
        assert np.array_equal(a.identity_for(k).vector, b.identity_for(k).vector)
        assert not np.allclose(a.identity_for(k).vector, c.identity_for(k).vector)


def test_per_face_and_original_bound(faces) -> None:
    keys, vecs, _ = faces
    pz = Pseudonymizer("secret-one", "enc", 8, 0.925, per_face=True, max_similarity=0.0)
    pz.fit(keys, vecs)
    got = [pz.identity_for(k).vector for k in keys]
    assert len({g.tobytes() for g in got}) == len(keys)  # a fresh identity per face
    original = IdentityEmbedding(got[0], "enc", True)
    again = pz.identity_for(keys[0], original=original)
    assert float(again.vector @ got[0]) < 0.0  # redrawn until below max_similarity
    with pytest.raises(ValueError, match="secret"):
        Pseudonymizer("short", "enc", 8, 0.9)
    with pytest.raises(ValueError, match="unique"):
        cluster_embeddings(["a", "a"], np.ones((2, 3)), 0.5)
