"""The generate job both surfaces call: its rules (prompt, control, seeds), its identities,
its outputs (file names, records, manifest) and its reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facegen import AmbiguousFaceError, IdentityEmbedding, IncompatibleEmbeddingError
from facegen.errors import InvalidArgumentError, UnknownNameError
from facegen.pipelines.generation.job import (
    EmbeddingIdentities,
    GenerateRequest,
    PhotoIdentities,
    PhotoIdentity,
    PoseReference,
    RandomIdentities,
    load_generate_pipeline,
    run_generate,
)
from facegen.pipelines.generation.presets import preset_names
from facegen.pipelines.identities import sample_identities
from facegen.provenance import read_provenance


@pytest.fixture(scope="module")
def pipe():
    return load_generate_pipeline("tiny")


def _request(**kw) -> GenerateRequest:
    args = {"preset": "tiny", "identities": RandomIdentities(2), "num_images": 2, "seed": 7,
            "steps": 1}  # fmt: skip
    return GenerateRequest(**{**args, **kw})


def test_the_rules_are_checked_before_any_model_loads() -> None:
    with pytest.raises(InvalidArgumentError, match="preset 'tiny' is identity-only"):
        _request(prompt="a cat")
    text = preset_names(takes_prompt=True)[0]
    with pytest.raises(InvalidArgumentError, match=f"preset '{text}' is steered by identity"):
        _request(preset=text)
    pose = PoseReference(np.zeros((8, 8, 3), np.uint8), "pose.png")
    with pytest.raises(InvalidArgumentError, match="need a ControlNet preset"):
        _request(control=pose)
    with pytest.raises(InvalidArgumentError, match="need a ControlNet preset"):
        _request(preset="tiny-controlnet")
    # every image's seed is valid: 4 images from seed 2**31 - 4 end at 2**31 - 1
    assert _request(seed=2**31 - 4).seeds[-1] == 2**31 - 1
    with pytest.raises(
        InvalidArgumentError, match=r"`seed` must be an integer in \[0, 2147483644\]"
    ):
        _request(seed=2**31 - 3)
    with pytest.raises(InvalidArgumentError, match="`num_images` must be an integer >= 1"):
        _request(num_images=0)
    with pytest.raises(UnknownNameError, match="tiny-controlnet"):
        _request(preset="tiny2")
    ids = (IdentityEmbedding(np.eye(512, dtype=np.float32)[0], "arcface-onnx/arc2face"),)
    with pytest.raises(InvalidArgumentError, match=r"ids\.st holds 1 embedding\(s\)"):
        EmbeddingIdentities(ids, "ids.st", (1,))


def test_outputs_are_named_recorded_and_reproducible(pipe, tmp_path: Path) -> None:
    req = _request()
    res = run_generate(req, pipe, tmp_path / "a")
    names = [p.name for p in res.paths]
    assert names == [
        "id0000_img000_seed7.png",
        "id0000_img001_seed8.png",
        "id0001_img000_seed9.png",
        "id0001_img001_seed10.png",
    ]
    manifest = json.loads(res.manifest_path.read_text())
    assert manifest["operation"] == "generate" and manifest["seed"] == 7
    assert manifest["source"] == {"identities": "random", "random_identities": 2, "seed": 7}
    assert [r["file"] for r in manifest["images"]] == names
    info = read_provenance(res.paths[3])
    assert info is not None and info.operation == "generate"
    assert info.params["identity"] == {"random_identity_seed": 7, "random_identity_index": 1}
    assert info.params["seed"] == 10 and info.params["identity_source"] == "random"
    # the random identities are sample_identities' (separated), seeded with the request's seed
    expected = sample_identities(2, seed=7).vectors
    np.testing.assert_array_equal([i.embedding.vector for i in res.identities], expected)
    again = run_generate(req, pipe, tmp_path / "b")
    for a, b in zip(res.images, again.images):
        np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(res.images[0].image, res.images[2].image)  # two people


def test_embedding_files_must_match_the_pipeline(pipe, tmp_path: Path) -> None:
    vecs = np.random.default_rng(1).normal(size=(3, 512)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    embs = tuple(IdentityEmbedding(v, "arcface-onnx/arc2face", True) for v in vecs)
    res = run_generate(
        _request(identities=EmbeddingIdentities(embs, "ids.st", (2,)), num_images=1),
        pipe,
        tmp_path,
    )
    assert res.images[0].record["identity"] == {"embedding_file": "ids.st", "embedding_index": 2}
    dlib = (IdentityEmbedding(np.eye(128, dtype=np.float32)[0], "dlib-resnet-v1"),)
    with pytest.raises(IncompatibleEmbeddingError, match="holds dlib-resnet-v1 embeddings"):
        run_generate(_request(identities=EmbeddingIdentities(dlib, "d.st")), pipe, tmp_path)


def test_photos_need_an_identity_encoder_and_one_face(pipe, t1_image, tmp_path: Path) -> None:
    group = PhotoIdentities((PhotoIdentity(t1_image, "t1.jpg"),))
    with pytest.raises(InvalidArgumentError, match="cannot read identities from photos"):
        run_generate(_request(identities=group), pipe, tmp_path)
    from facegen.analyzer import FaceAnalyzer

    class Reader:  # stands in for the conditioning encoder: dlib faces, arc2face-shaped ids
        def __init__(self) -> None:
            self.dlib = FaceAnalyzer.from_names("dlib", None, None)

        def analyze(self, image, **kw):
            from dataclasses import replace

            faces = self.dlib.analyze(image, embed=False, **kw)
            rng = np.random.default_rng(0)
            return [
                replace(f, embedding=IdentityEmbedding(
                    (v := rng.normal(size=512).astype(np.float32)) / np.linalg.norm(v),
                    "arcface-onnx/arc2face", True,
                ))
                for f in faces
            ]  # fmt: skip

    pipe.identity_analyzer = Reader()
    try:
        with pytest.raises(AmbiguousFaceError):  # a group photo needs the face chosen
            run_generate(_request(identities=group), pipe, tmp_path)
        box = tuple(float(v) for v in pipe.identity_analyzer.dlib.detect(t1_image)[2].bbox)
        chosen = PhotoIdentities((PhotoIdentity(t1_image, "t1.jpg", box, 2),))
        res = run_generate(
            _request(identities=chosen, num_images=1, measure_identity=False), pipe, tmp_path
        )
    finally:
        pipe.identity_analyzer = None
    record = res.images[0].record["identity"]
    assert record["photo"] == "t1.jpg" and record["face"] == 2
    np.testing.assert_allclose(record["bbox"], box, atol=0.1)
