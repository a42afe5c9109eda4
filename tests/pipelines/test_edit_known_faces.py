"""Editing geometry and verification on real faces, with an injected generator that returns a
known face instead of a diffusion sample (tiny models make noise, which verifies nothing)."""

from __future__ import annotations

import numpy as np
import pytest

import facegen.pipelines.editing.swap as swap_module
from facegen.align import align_face, paste_back
from facegen.masks import blend, face_mask
from facegen.pipelines.editing.anonymize import AnonymizeOptions, anonymize_image
from facegen.pipelines.editing.face_edit import EditOptions, EditResult, FaceEdit
from facegen.pipelines.editing.swap import embed_at, make_replace_face


@pytest.fixture(scope="module")
def faces(t1_image, dlib_analyzer):
    from facegen.analyzer import FaceAnalyzer

    analyzer = FaceAnalyzer.from_names("dlib", "dlib68", "dlib")
    return analyzer.analyze(t1_image)


@pytest.fixture(scope="module")
def tiny_pipe():
    from facegen.pipelines.generation.presets import from_preset

    return from_preset("tiny")


@pytest.mark.parametrize("size", [112, 256, 512])
def test_paste_back_of_the_unmodified_crop_reproduces_the_photo(t1_image, faces, size) -> None:
    for face in faces:
        aligned = align_face(t1_image, face, size=size)
        mask = face_mask(face, t1_image.shape[:2], AnonymizeOptions().mask_spec())
        back = paste_back(t1_image, aligned, aligned.image)
        inside = mask > 0.99
        # the faces of t1 are 90–130 px: a 512 crop upsamples, a 112 crop roughly keeps scale
        diff = np.abs(back[inside].astype(int) - t1_image[inside].astype(int))
        assert diff.mean() <= 2.0, (size, diff.mean())


def _donor_edit(donor_image, donor_face):
    """An ``edit_faces`` stand-in that puts another real person's face under the mask."""

    def edit_faces(image, targets, identities, pipe, options=None, *, masks, seeds, **_):
        face = targets[0]
        donor = align_face(donor_image, donor_face, size=256).image
        target = align_face(image, face, size=256)
        pasted = paste_back(image, target, donor, feather=0.0)
        out = blend(image, pasted, masks[0])
        rec = FaceEdit(
            index=0,
            bbox=tuple(float(v) for v in face.bbox),
            seed=seeds[0],
            matrix=target.matrix,
            mask_pixels=int((masks[0] > 0).sum()),
            coverage=1.0,
            crop=donor,
            control=None,
        )
        return EditResult(out, masks[0], [rec])

    return edit_faces


def _same_face_edit(image, targets, identities, pipe, options=None, *, masks, seeds, **_):
    """A generator that gives the original person back (what anonymization must refuse)."""
    face = targets[0]
    rec = FaceEdit(
        0, tuple(float(v) for v in face.bbox), seeds[0], np.eye(2, 3), 1, 1.0, None, None
    )
    return EditResult(image.copy(), masks[0], [rec])


def test_independent_check_accepts_another_person_and_refuses_the_original(
    t1_image, faces, dlib_analyzer, tiny_pipe, monkeypatch
) -> None:
    target, donor = 3, 0
    monkeypatch.setattr(swap_module, "edit_faces", _donor_edit(t1_image, faces[donor]))
    hook = make_replace_face(tiny_pipe, dlib_analyzer, EditOptions(seed=1), max_tries=2)
    opts = AnonymizeOptions(mode="generate", faces=target)
    res = anonymize_image(t1_image, dlib_analyzer, opts, replace_face=hook)
    rec = res.faces[0]
    assert rec.mode == "generate" and not rec.fallback
    # the verifier measured a different person: below dlib's same-person threshold
    assert rec.similarity < dlib_analyzer.encoder.same_person_threshold
    before = embed_at(dlib_analyzer, t1_image, [faces[target]])[0].vector
    after = embed_at(dlib_analyzer, res.image, [faces[target]])[0].vector
    assert float(before @ after) < dlib_analyzer.encoder.same_person_threshold
    np.testing.assert_array_equal(res.image[res.mask == 0], t1_image[res.mask == 0])

    monkeypatch.setattr(swap_module, "edit_faces", _same_face_edit)
    hook = make_replace_face(tiny_pipe, dlib_analyzer, EditOptions(seed=1), max_tries=2)
    opts = AnonymizeOptions(mode="generate", faces=target, fallback_mode="pixelate")
    res = anonymize_image(t1_image, dlib_analyzer, opts, replace_face=hook)
    rec = res.faces[0]
    assert rec.fallback and rec.mode == "pixelate"
    assert "no replacement passed in 2 tries" in rec.fallback_reason
    assert "is not below" in rec.fallback_reason  # refused because it is still the same person
