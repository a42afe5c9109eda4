from __future__ import annotations

from pathlib import Path

import pytest

from facegen import ModelNotAvailableError, UnknownNameError, hub


@pytest.fixture()
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FACEGEN_HOME", str(tmp_path / "fg"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("INSIGHTFACE_HOME", str(tmp_path / "if"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def test_presets_name_the_published_files() -> None:
    names = {p.name for p in hub.presets()}
    assert {"antelopev2", "buffalo_l", "arc2face-arcface", "dlib"} <= names
    a = hub.get_preset("antelopev2")
    assert (
        a.file_for("detector") == "scrfd_10g_bnkps.onnx"
        and a.file_for("recognition") == "glintr100.onnx"
    )
    b = hub.get_preset("buffalo_l")
    assert (b.repo_id, b.subfolder, b.file_for("recognition")) == (
        "public-data/insightface",
        "models/buffalo_l",
        "w600k_r50.onnx",
    )
    arc = hub.get_preset("arc2face-arcface")
    assert (arc.repo_id, arc.files) == ("FoivosPar/Arc2Face", ("arcface.onnx",))
    with pytest.raises(UnknownNameError, match="buffalo_l"):
        hub.get_preset("buffalo_xl")
    with pytest.raises(UnknownNameError, match="recognition"):
        a.file_for("swapper")


def test_dlib_weights_resolve_offline_from_the_pypi_package(isolated: Path) -> None:
    p = hub.resolve("dlib", "dlib_face_recognition_resnet_model_v1.dat", offline=True)
    assert p.is_file() and "face_recognition_models" in str(p)


def test_missing_model_error_says_what_where_and_how(isolated: Path) -> None:
    with pytest.raises(ModelNotAvailableError) as ei:
        hub.resolve("antelopev2", "glintr100.onnx")
    msg = str(ei.value)
    assert "antelopev2/glintr100.onnx" in msg and "offline" in msg
    assert str(isolated / "fg" / "models" / "antelopev2" / "glintr100.onnx") in msg
    assert str(isolated / "if") in msg and "DIAMONIK7777/antelopev2" in msg
    assert "HF_HOME" in msg and "facegen models download antelopev2" in msg


@pytest.mark.parametrize(
    ("preset", "filename", "option"),
    [
        ("antelopev2", "glintr100.onnx", "--encoder-model"),
        ("antelopev2", "scrfd_10g_bnkps.onnx", "--detector-model"),
        ("buffalo_l", "genderage.onnx", "--attribute-model"),
        ("inswapper_128", "inswapper_128.onnx", "--swapper-model"),
        ("antelopev2", "1k3d68.onnx", None),  # a landmark model: from Python only
    ],
)
def test_missing_model_hint_names_the_files_own_option(
    isolated: Path, preset: str, filename: str, option: str | None
) -> None:
    with pytest.raises(ModelNotAvailableError) as ei:
        hub.resolve(preset, filename)
    msg = str(ei.value)
    assert f"model_path=/path/to/{filename}" in msg
    others = {"--encoder-model", "--detector-model", "--attribute-model", "--swapper-model"}
    if option is None:
        assert "on the command line" not in msg
    else:
        assert f"{option} on the command line" in msg
        others.discard(option)
    assert not any(o in msg for o in others)


def test_resolution_order(isolated: Path) -> None:
    own = isolated / "fg" / "models" / "buffalo_l" / "w600k_r50.onnx"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"x")
    assert hub.resolve("buffalo_l", "w600k_r50.onnx") == own
    explicit = isolated / "mine.onnx"
    explicit.write_bytes(b"y")
    assert hub.resolve("buffalo_l", "w600k_r50.onnx", path=explicit) == explicit
    assert (
        hub.resolve("buffalo_l", "w600k_r50.onnx", path=isolated / "fg" / "models" / "buffalo_l")
        == own
    )
    with pytest.raises(ModelNotAvailableError, match="explicit path"):
        hub.resolve("buffalo_l", "w600k_r50.onnx", path=isolated / "nope.onnx")
    # insightface's own folder is looked at too
    ins = isolated / "if" / "models" / "antelopev2" / "glintr100.onnx"
    ins.parent.mkdir(parents=True)
    ins.write_bytes(b"z")
    assert hub.resolve("antelopev2", "glintr100.onnx") == ins


def test_hf_cache_is_used(isolated: Path) -> None:
    # lay out a Hugging Face cache entry by hand, as huggingface_hub writes it
    repo = isolated / "hf" / "models--FoivosPar--Arc2Face"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "arcface.onnx").write_bytes(b"w")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    assert hub.resolve("arc2face-arcface") == snap / "arcface.onnx"
    st = hub.status("arc2face-arcface")
    assert st["arcface.onnx"] == str(snap / "arcface.onnx")


@pytest.mark.parametrize(
    "name", ["../../etc/passwd", "unet/../../x", "/etc/passwd", "a//b", "./a", "a\\b", "C:x", ""]
)
def test_path_escape_in_filename_refused(isolated: Path, name: str) -> None:
    with pytest.raises(ValueError, match="relative path inside"):
        hub.resolve("dlib", name)


def test_nested_file_of_a_folder_preset_resolves(isolated: Path) -> None:
    """A folder preset names its files by relative path (``unet/config.json``)."""
    preset = hub.ModelPreset(
        name="nested-test", description="d", files=("unet/config.json",), license="test"
    )
    target = isolated / "fg" / "models" / "nested-test" / "unet" / "config.json"
    target.parent.mkdir(parents=True)
    target.write_text("{}")
    assert hub.resolve(preset, "unet/config.json", download=False) == target


def test_offline_flag_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("FACEGEN_OFFLINE", raising=False)
    assert hub.is_offline() is False
    monkeypatch.setenv("FACEGEN_OFFLINE", "1")
    assert hub.is_offline() is True
    assert hub.is_offline(False) is False


def test_url_download_checks_sha256_and_writes_atomically(isolated: Path, monkeypatch) -> None:
    import hashlib

    monkeypatch.delenv("HF_HUB_OFFLINE")
    src = isolated / "served.bin"
    src.write_bytes(b"weights" * 100)
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    preset = hub.ModelPreset(
        name="toy",
        description="",
        files=("toy.bin",),
        license="test",
        urls={"toy.bin": src.as_uri()},
        sha256={"toy.bin": "0" * 64},
    )
    with pytest.raises(ModelNotAvailableError, match="checksum mismatch"):
        hub.resolve(preset)
    dest_dir = isolated / "fg" / "models" / "toy"
    assert not any(dest_dir.iterdir())  # no partial file left behind
    ok = hub.ModelPreset(**{**preset.__dict__, "sha256": {"toy.bin": good}})
    got = hub.resolve(ok)
    assert got == dest_dir / "toy.bin" and got.read_bytes() == src.read_bytes()
    # offline: the local copy is found without any download
    assert hub.resolve(ok, offline=True) == got
