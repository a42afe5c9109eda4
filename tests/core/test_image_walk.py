"""Folder walks that meet link loops and entries that cannot be read."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import numpy as np
import pytest

import facegen.image_io as image_io
from facegen.image_io import SkippedEntry, find_images, save_image, scan_images


def _tree(root: Path) -> Path:
    (root / "a" / "b").mkdir(parents=True)
    for rel in ("a/1.png", "a/b/2.png", "top.jpg"):
        save_image(np.zeros((8, 8, 3), np.uint8), root / rel)
    return root


def _reasons(skipped: list[SkippedEntry], root: Path) -> dict[str, str]:
    return {s.path.relative_to(root).as_posix(): s.reason for s in skipped}


def test_a_link_to_its_own_parent_is_reported_and_not_followed(tmp_path: Path) -> None:
    root = _tree(tmp_path / "in")
    (root / "a" / "b" / "up").symlink_to("..", target_is_directory=True)  # b/up -> a
    (root / "self").symlink_to(".", target_is_directory=True)
    (root / "ping").symlink_to("pong")  # a chain of links with no end
    (root / "pong").symlink_to("ping")
    scan = scan_images([root])
    assert [p.relative_to(root).as_posix() for p in scan.files] == [
        "a/1.png",
        "a/b/2.png",
        "top.jpg",
    ]
    assert _reasons(scan.skipped, root) == {
        "a/b/up": "symlink_loop",
        "ping": "symlink_loop",
        "pong": "symlink_loop",
        "self": "symlink_loop",
    }


def test_a_link_to_another_folder_is_followed(tmp_path: Path) -> None:
    root = _tree(tmp_path / "in")
    other = _tree(tmp_path / "other")
    (root / "more").symlink_to(other / "a", target_is_directory=True)
    scan = scan_images([root])
    assert "more/b/2.png" in {p.relative_to(root).as_posix() for p in scan.files}
    assert scan.skipped == []
    assert scan_images([root], recursive=False).files == [root / "top.jpg"]


def test_unreadable_folders_files_and_dangling_links_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _tree(tmp_path / "in")
    (root / "gone.jpg").symlink_to(root / "nowhere.jpg")
    (root / "gone.txt").symlink_to(root / "nowhere.txt")  # not an image: not listed
    # tests run as root, where chmod 000 does not stop reading: the system's refusal is
    # simulated for one folder (listing) and one file (opening)
    real_scandir, real_open = os.scandir, os.open
    locked_dir, locked_file = root / "a" / "b", root / "a" / "1.png"

    def scandir(path):  # type: ignore[no-untyped-def]
        if Path(path) == locked_dir:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    def open_(path, flags, *args):  # type: ignore[no-untyped-def]
        if Path(path) == locked_file:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(image_io.os, "scandir", scandir)
    monkeypatch.setattr(image_io.os, "open", open_)
    scan = scan_images([root])
    assert [p.relative_to(root).as_posix() for p in scan.files] == ["top.jpg"]
    assert _reasons(scan.skipped, root) == {
        "a/1.png": "unreadable",
        "a/b": "unreadable",
        "gone.jpg": "unreadable",
    }
    assert {s.detail for s in scan.skipped} == {"Permission denied", "a link to nothing"}


def test_find_images_lists_unreadable_files_and_warns_about_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    root = _tree(tmp_path / "in")
    (root / "loop").symlink_to(".", target_is_directory=True)
    real_open = os.open

    def open_(path, flags, *args):  # type: ignore[no-untyped-def]
        if Path(path).name == "1.png":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(image_io.os, "open", open_)
    with caplog.at_level(logging.WARNING, logger="facegen.image_io"):
        got = find_images([root])
    # a file that cannot be opened stays listed, so whoever loads it reports it
    assert [p.relative_to(root).as_posix() for p in got] == ["a/1.png", "a/b/2.png", "top.jpg"]
    assert any("loop: symlink loop" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads chmod 000 entries"
)
def test_chmod_000_entries_are_unreadable(tmp_path: Path) -> None:
    root = _tree(tmp_path / "in")
    (root / "a" / "b").chmod(0)
    (root / "top.jpg").chmod(0)
    try:
        scan = scan_images([root])
        assert _reasons(scan.skipped, root) == {"a/b": "unreadable", "top.jpg": "unreadable"}
        assert [p.relative_to(root).as_posix() for p in scan.files] == ["a/1.png"]
    finally:
        (root / "a" / "b").chmod(0o755)
        (root / "top.jpg").chmod(0o644)


def test_a_link_to_a_parent_of_the_root_does_not_walk_out_of_it(tmp_path: Path) -> None:
    from facegen.image_io import scan_images

    top = tmp_path / "top"
    inside = top / "in"
    inside.mkdir(parents=True)
    save_image(np.zeros((8, 8, 3), np.uint8), inside / "mine.png")
    save_image(np.zeros((8, 8, 3), np.uint8), top / "sibling.png")
    (inside / "up").symlink_to("..")
    (inside / "root").symlink_to("/")
    scan = scan_images([inside])
    assert [p.name for p in scan.files] == ["mine.png"]
    assert {s.path.name for s in scan.skipped if s.reason == "symlink_loop"} == {"up", "root"}
