"""Face swap in a video with tiny random models (plumbing: the faces they make are noise):
the chosen tracks are regenerated on every frame, the rest of the frame is kept, the report
and the provenance record say what was done, and the selections behave."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av", reason="the video extra is not installed")

from facegen.video_io import VideoReader, probe_video  # noqa: E402

N, W, H = 4, 320, 240


@pytest.fixture(scope="module")
def clip(t1_image: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import cv2

    small = cv2.resize(t1_image, (480, round(t1_image.shape[0] * 480 / t1_image.shape[1])))
    path = tmp_path_factory.mktemp("swapclip") / "group.mp4"
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=8)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.options = {"crf": "12"}
        for i in range(N):
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(small[:H, 6 * i : 6 * i + W]), format="rgb24"
            )
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from facegen.pipelines.identities import sample_identities

    path = tmp_path_factory.mktemp("src") / "src.safetensors"
    sample_identities(1, seed=1).save(path)
    return path


def _frames(path: Path) -> list[np.ndarray]:
    with VideoReader(path) as reader:
        return [f.image for f in reader]


def test_swap_largest_face_per_frame_from_the_command(clip, source, tmp_path, capsys) -> None:
    from facegen.app.cli.main import main

    out = tmp_path / "swapped.mp4"
    args = ["swap", "--source", str(source), "--target", str(clip), "--preset", "tiny"]
    args += ["--steps", "1", "--faces", "largest", "--detect-every", "2", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["frames"] == N and report["faces_generated"] == N  # one face per frame
    assert report["settings"]["swap"]["faces"] == "largest"
    before, after = _frames(clip), _frames(out)
    assert len(after) == N
    for b, a in zip(before, after):
        diff = np.abs(a.astype(int) - b).mean(-1)
        assert diff.max() > 60  # a face was regenerated (noise from the tiny model)
        assert np.median(diff) < 6  # most of the frame is kept (re-encoding and watermark)
    record = json.loads(probe_video(out).metadata["comment"])
    assert record["operation"] == "swap"


def test_swap_selections_refused_for_video(clip, source, tmp_path, capsys) -> None:
    from facegen.app.cli.main import main

    base = ["swap", "--source", str(source), "--target", str(clip), "--preset", "tiny"]
    assert main([*base, "--faces", "best", "--out", str(tmp_path / "x.mp4")]) != 0
    assert "in a video: all, largest or reference" in capsys.readouterr().err
    assert main([*base, "--faces", "reference", "--out", str(tmp_path / "x.mp4")]) != 0
    assert "go together" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_reference_selects_the_tracks_of_one_person(clip, source, tmp_path, t1_image) -> None:
    """The reference is one of the clip's people (cropped from t1.jpg): only that track is
    swapped; an unrelated reference selects nothing and leaves the frames unchanged."""
    from facegen.analyzer import FaceAnalyzer
    from facegen.embedding_io import load_embeddings
    from facegen.pipelines.editing.jobs import load_edit_pipeline
    from facegen.pipelines.editing.video_swap import swap_video

    pipe = load_edit_pipeline("tiny")
    analyzer = FaceAnalyzer.from_names("dlib", None, "dlib")
    detector = FaceAnalyzer.from_names("dlib", None, None)
    identity = load_embeddings(source)[0][0]
    first = _frames(clip)[0]
    faces = analyzer.analyze(first)
    assert len(faces) >= 2
    ref = faces[0].embedding
    rep = swap_video(
        clip, tmp_path / "ref.mp4", detector, identity, pipe, faces=("reference", ref, 0.925),
        reference_analyzer=analyzer, watermark=False,
    )  # fmt: skip
    swapped_tracks = rep.faces_generated
    assert 0 < swapped_tracks <= N  # one person, at most once per frame
    other = np.ones(128, np.float32) / np.sqrt(128)
    from facegen.types import IdentityEmbedding

    none = swap_video(
        clip, tmp_path / "none.mp4", detector, identity, pipe,
        faces=("reference", IdentityEmbedding(other, "dlib-resnet-v1", True), 0.925),
        reference_analyzer=analyzer, watermark=False,
    )  # fmt: skip
    assert none.faces_generated == 0
