"""The web app's video endpoints and the Swap tab's one-shot method, through its HTTP API
(gradio_client), launched in-process with tiny models (``conftest.app``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gradio_client import Client, handle_file
from web_testing import STEPS, app_error

from facegen.image_io import load_image
from facegen.provenance import read_provenance


def _clip(path: Path, t1: np.ndarray, frames: int) -> Path:
    """A 320×240 pan across t1.jpg (faces in every frame), H.264 with a silent audio track."""
    av = pytest.importorskip("av", reason="the video extra is not installed")
    import cv2

    small = cv2.resize(t1, (480, round(t1.shape[0] * 480 / t1.shape[1])))
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=10)
        vs.width, vs.height, vs.pix_fmt = 320, 240, "yuv420p"
        for i in range(frames):
            window = np.ascontiguousarray(small[:240, 8 * i : 8 * i + 320])
            frame = av.VideoFrame.from_ndarray(window, format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
    return path


def _anon_video(client: Client, video: Path, mode: str = "blur", every: int = 2) -> Any:
    return client.predict(
        handle_file(str(video)),
        mode,
        0.25,
        8,
        "hull",
        every,
        api_name="/anonymize_video",
    )


def test_anonymize_video_tracks_and_covers_every_frame(
    app: Any, t1_path: Path, tmp_path: Path
) -> None:
    from facegen.video_io import VideoReader, probe_video

    t1 = load_image(t1_path)
    clip = _clip(tmp_path / "street.mp4", t1, 8)
    video, report, summary = _anon_video(app.client, clip)
    out = Path(video["video"] if isinstance(video, dict) else video)
    assert out.suffix == ".mp4" and probe_video(out).frame_count == 8
    assert report["frames"] == 8 and report["frames_detected"] == 4
    assert report["faces_detected"] > 0 and report["source"] == "street.mp4"
    assert "face track" in summary
    with VideoReader(clip) as a, VideoReader(out) as b:
        before, after = [f.image for f in a], [f.image for f in b]
    assert all(np.abs(x.astype(int) - y).mean() > 1 for x, y in zip(before, after))


def test_anonymize_video_refuses_long_wrong_and_generate(
    app: Any, t1_path: Path, tmp_path: Path
) -> None:
    t1 = load_image(t1_path)
    long_clip = _clip(tmp_path / "long.mp4", t1, 12)
    assert "at most 10" in app_error(
        app.client, handle_file(str(long_clip)), "blur", 0.25, 8, "hull", 1,
        api_name="/anonymize_video",
    )  # fmt: skip
    short = _clip(tmp_path / "short.mp4", t1, 4)
    assert "photos for now" in app_error(
        app.client, handle_file(str(short)), "generate", 0.25, 8, "hull", 1,
        api_name="/anonymize_video",
    )  # fmt: skip
    still = tmp_path / "photo.mp4"
    still.write_bytes(t1_path.read_bytes())
    message = app_error(
        app.client, handle_file(str(still)), "blur", 0.25, 8, "hull", 1,
        api_name="/anonymize_video",
    )  # fmt: skip
    assert "still image" in message and str(tmp_path) not in message


def test_swap_video_with_tiny_models(app: Any, t1_path: Path, tmp_path: Path) -> None:
    """Plumbing (tiny random pipeline): the source photo's identity on the largest face of
    every frame; 'best' is refused for a video."""
    from facegen.video_io import probe_video

    clip = _clip(tmp_path / "group.mp4", load_image(t1_path), 4)
    video, report, summary = app.client.predict(
        handle_file(str(t1_path)), handle_file(str(clip)), "largest", "tiny", 0, 1, 2,
        api_name="/swap_video",
    )  # fmt: skip
    out = Path(video["video"] if isinstance(video, dict) else video)
    assert probe_video(out).frame_count == 4
    assert report["faces_generated"] == 4 and report["settings"]["swap"]["faces"] == "largest"
    assert "faces swapped" in summary
    message = app_error(
        app.client, handle_file(str(t1_path)), handle_file(str(clip)), "best", "tiny", 0, 1, 1,
        api_name="/swap_video",
    )  # fmt: skip
    assert "largest" in message and "Traceback" not in message  # gradio checks the choice


def test_swap_with_a_one_shot_model_and_restoration(
    app: Any, t1_path: Path, astronaut_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Swap tab's method: inswapper (a random-weight double in the real signature) with
    GFPGAN after it, on a photo and on a video; a method whose model is missing says which
    and where it looked."""
    pytest.importorskip("onnx")
    from onnx_face_models import build_arcface_w600k, build_restorer, build_swapper

    from facegen.video_io import probe_video

    models = tmp_path / "home" / "models"
    build_swapper(models / "inswapper_128" / "inswapper_128.onnx", size=128, emap=True)
    build_arcface_w600k(models / "buffalo_l" / "w600k_r50.onnx")
    build_restorer(models / "gfpgan_1.4" / "gfpgan_1.4.onnx")
    monkeypatch.setenv("FACEGEN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FACEGEN_OFFLINE", "1")
    photo = (
        handle_file(str(astronaut_path)),
        handle_file(str(t1_path)),
        "all",
        "tiny",
        0,
        STEPS,
        1.0,
    )
    _, after, table, download, _ = app.client.predict(
        *photo, "inswapper_128", "gfpgan", 0.8, api_name="/swap"
    )
    t1 = load_image(t1_path)
    assert np.abs(load_image(after).astype(int) - t1).mean() > 0.5
    info = read_provenance(download)
    assert info.params["swapper"] == "inswapper_128" and info.params["restore"]["model"] == "gfpgan"
    assert len(table["data"]) == 6 and "one-shot" in table["data"][0][3]
    message = app_error(app.client, *photo, "simswap_256", "none", 0.8, api_name="/swap")
    assert "simswap_256" in message and "facefusion/models-3.0.0" in message
    clip = _clip(tmp_path / "group.mp4", t1, 4)
    video, report, _ = app.client.predict(
        handle_file(str(astronaut_path)), handle_file(str(clip)), "all", "tiny", 0, 1, 2,
        "inswapper_128", api_name="/swap_video",
    )  # fmt: skip
    out = Path(video["video"] if isinstance(video, dict) else video)
    assert probe_video(out).frame_count == 4
    assert report["settings"]["swap"]["swapper"] == "inswapper_128"
    assert report["faces_generated"] == report["faces_covered"] > 0
