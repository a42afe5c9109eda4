"""The web app in a real browser: Chromium (the system's, e.g. Debian's ``chromium``)
driven by Playwright, headless. Skipped only where no Chromium binary can be found (set
``FACEGEN_CHROMIUM`` to point at one); a screenshot is kept as a test artifact (and copied to
``$FACEGEN_ARTIFACTS`` when that is set)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from web_testing import TINY_PRESETS, free_port, tiny_factory

from facegen.analyzer import FaceAnalyzer
from facegen.app.web.app import launch_app
from facegen.app.web.services import Services
from facegen.image_io import load_image
from facegen.samples import sample_path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
TIMEOUT_MS = 180_000  # a loaded CI machine: model loading and detection can take a while


def _chromium() -> str:
    env = os.environ.get("FACEGEN_CHROMIUM")
    if env:
        if not Path(env).is_file():
            pytest.fail(f"FACEGEN_CHROMIUM={env} is not a file")
        return env
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "no Chromium binary found (looked for "
        + ", ".join(BROWSERS)
        + " on PATH and FACEGEN_CHROMIUM); install one, e.g. `apt-get install chromium`"
    )


@pytest.fixture(scope="module")
def browser() -> Any:
    binary = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            f"a browser is installed ({binary}) but the playwright package is not: "
            "pip install playwright (the system browser is used; no browser download)"
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=binary, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory) -> Any:
    dlib = FaceAnalyzer.from_names("dlib", "dlib68", "dlib")
    services = Services(
        default_preset="tiny",
        presets=TINY_PRESETS,
        pipeline_factory=tiny_factory(dlib),
        analyzer=dlib,
        output_root=tmp_path_factory.mktemp("browser-app"),
    )
    demo = launch_app(services, port=free_port(), block=False, quiet=True)
    try:
        yield demo.local_url
    finally:
        demo.close()
        services.close()


def _keep(screenshot: Path) -> None:
    target = os.environ.get("FACEGEN_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy2(screenshot, Path(target) / screenshot.name)


@contextlib.contextmanager
def _page(browser: Any, tmp_path: Path, name: str, height: int = 1000) -> Iterator[Any]:
    """A new page; on a failure its screenshot is kept as ``NAME_failure.png``."""
    page = browser.new_page(viewport={"width": 1400, "height": height})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        yield page
    except Exception:
        failure = tmp_path / f"{name}_failure.png"
        page.screenshot(path=str(failure), full_page=True)
        _keep(failure)
        raise
    finally:
        page.close()


def _shown_image(page: Any, selector: str) -> np.ndarray:
    """The first image under ``selector`` once loaded, fetched from the app: RGB uint8."""
    shown = page.locator(selector).first
    shown.wait_for(state="visible")
    page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=shown.element_handle())
    src = shown.get_attribute("src")
    assert src
    response = page.request.get(src)
    assert response.ok
    return np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))


def test_anonymize_a_group_photo_in_the_browser(browser: Any, app_url: str, tmp_path: Path) -> None:
    t1 = sample_path("t1")
    with _page(browser, tmp_path, "anonymize_t1") as page:
        page.goto(app_url)
        page.get_by_role("tab", name="Anonymize").click()
        page.locator("#anon-files input[type=file]").set_input_files(str(t1))
        page.locator("#anon-files").get_by_label("t1.jpg").wait_for()  # the upload is listed
        page.locator("#anon-run").click()
        shown = _shown_image(page, "#anon-gallery img")
        page.get_by_text("Provenance:").wait_for()
        shot = tmp_path / "anonymize_t1.png"
        page.screenshot(path=str(shot), full_page=True)
        _keep(shot)
        assert shot.stat().st_size > 10_000

        # the displayed image is the anonymized photo: same size, faces changed
        original = load_image(t1)
        assert shown.shape == original.shape
        diff = np.abs(shown.astype(int) - original).mean(-1)
        dlib = FaceAnalyzer.from_names("dlib", None, None)
        boxes = [[int(v) for v in f.bbox] for f in dlib.detect(original)]
        inside = np.mean([diff[y1:y2, x1:x2].mean() for x1, y1, x2, y2 in boxes])
        assert inside > 10 and inside > 5 * np.median(diff)
        assert page.locator(".toast-body").count() == 0  # no error shown
        notice = page.locator("#anon-provenance").inner_text()
        assert "1/1 file(s) carry facegen's provenance record" in notice


def test_anonymize_a_video_in_the_browser(browser: Any, app_url: str, tmp_path: Path) -> None:
    """Upload a short clip (a pan across t1.jpg) in the Video tab: the anonymized video plays
    in the page, and the report and summary are shown."""
    av = pytest.importorskip("av", reason="the video extra is not installed")
    import cv2

    t1 = load_image(sample_path("t1"))
    small = cv2.resize(t1, (480, round(t1.shape[0] * 480 / t1.shape[1])))
    clip = tmp_path / "street.mp4"
    with av.open(str(clip), "w") as out:
        vs = out.add_stream("libx264", rate=10)
        vs.width, vs.height, vs.pix_fmt = 320, 240, "yuv420p"
        for i in range(6):
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(small[:240, 8 * i : 8 * i + 320]), format="rgb24"
            )
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
    with _page(browser, tmp_path, "anonymize_video") as page:
        page.goto(app_url)
        page.get_by_role("tab", name="Video").click()
        page.locator("#anon-video input[type=file]").set_input_files(str(clip))
        page.locator("#anon-video video").first.wait_for(state="attached")  # uploaded
        page.locator("#anon-video-run").click()
        page.get_by_text("face track(s)").wait_for()
        summary = page.locator("#anon-video-summary").inner_text()
        assert "6 frames" in summary and "watermark" in summary
        played = page.locator("#anon-video-out video").first
        played.wait_for(state="attached")
        src = played.get_attribute("src")
        assert src and src.endswith(".mp4")
        response = page.request.get(src)
        assert response.ok and len(response.body()) > 1000
        assert page.locator(".toast-body").count() == 0  # no error shown
        shot = tmp_path / "anonymize_video.png"
        page.screenshot(path=str(shot), full_page=True)
        _keep(shot)
        # the Swap tab takes a target video too
        page.get_by_role("tab", name="Swap", exact=True).click()
        page.locator("#swap-video input[type=file]").wait_for(state="attached")
        assert page.locator("#swap-video-run").count() == 1


def test_the_control_tab_turns_a_face_offline_on_the_shipped_models(
    browser: Any, tmp_path: Path, monkeypatch
) -> None:
    """The app as it starts without published weights (default preset demo-orl): the Control
    tab starts on demo-orl-controlnet, takes an identity photo and a pose reference, shows the
    reference's landmark map and makes faces, loaded for real from the installed package."""
    from facegen.pipelines.generation.presets import DEMO_ORL_CONTROLNET_NAME, DEMO_ORL_NAME

    monkeypatch.setenv("FACEGEN_OFFLINE", "1")
    dlib = FaceAnalyzer.from_names("dlib", "dlib68", "dlib")
    services = Services(
        default_preset=DEMO_ORL_NAME,
        presets=[DEMO_ORL_NAME, DEMO_ORL_CONTROLNET_NAME],
        analyzer=dlib,
        output_root=tmp_path / "app",
    )
    demo = launch_app(services, port=free_port(), block=False, quiet=True)
    try:
        with _page(browser, tmp_path, "control_demo_orl", height=1200) as page:
            page.goto(demo.local_url)
            page.get_by_role("tab", name="Control").click()
            assert page.locator("#ctl-preset input").input_value() == DEMO_ORL_CONTROLNET_NAME
            page.locator("#ctl-photo input[type=file]").set_input_files(str(sample_path("hanks")))
            page.locator("#ctl-reference input[type=file]").set_input_files(str(sample_path("t1")))
            landmark_map = _shown_image(page, "#ctl-map img")
            assert landmark_map.max() > 100 and (landmark_map.max(-1) > 100).mean() < 0.2  # lines
            page.locator("#ctl-run").click()
            shown = _shown_image(page, "#ctl-gallery img")
            assert shown.shape == (64, 64, 3) and shown.std() > 10  # a face, not a flat image
            assert page.locator(".toast-body").count() == 0  # no error shown
            shot = tmp_path / "control_demo_orl.png"
            page.screenshot(path=str(shot), full_page=True)
            _keep(shot)
    finally:
        demo.close()
        services.close()
