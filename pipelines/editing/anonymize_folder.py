"""Anonymize a folder of images: mirrored tree, per-file journal, resumable.

Folder runs (:func:`anonymize_folder`) mirror the input tree under ``out_dir`` and keep a
journal, ``out_dir/anonymize_report.jsonl``: one JSON record per processed file, appended
and fsync'ed after the file's output was written (atomically), with the SHA-256 of that
output. A rerun skips a file whose latest record is ``"done"`` with the same settings and the
same input size/mtime and whose output still exists with that hash (an output deleted or
changed since is made again); ``"no_face"`` and ``"error"`` files are tried again. When a
run ends (and when one starts after a crash) the journal is rewritten, atomically, to hold
exactly one record per input: its latest. Entries of the input folder that cannot be read (a
folder that cannot be listed, a file that cannot be opened, a link to nothing) and links that
loop back into their own folder get an ``"error"`` record whose ``reason`` says which
(``"unreadable"``, ``"symlink_loop"``); the run goes on and never loops. A run holds the lock
on ``out_dir`` (:func:`facegen.locks.folder_lock`, file ``.facegen.lock``) from start to end,
so a second run into the same folder fails at once naming the first. Outputs keep the input's
name when :func:`facegen.image_io.save_image` can write its format (``.png``, ``.jpg``,
``.jpeg``, ``.webp``); other formats are written as PNG (``a.bmp`` → ``a.png``). Two inputs
that would share one output (``a.bmp`` and ``a.png``) are never merged: the later one, in
sorted order, is recorded as an error. JPEG/WebP outputs are re-encoded (quality 95), so only PNG keeps the pixels outside the
masks byte-identical on disk. Input metadata (EXIF, GPS, …) is not copied; outputs carry
facegen's own record of how they were made.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2

from facegen._version import __version__
from facegen.analyzer import FaceAnalyzer
from facegen.errors import FacegenError, InvalidImageError, NoFaceDetectedError, OutputError
from facegen.fileio import append_json_line, atomic_write, drop_torn_tail
from facegen.image_io import SkippedEntry, scan_images
from facegen.locks import folder_lock
from facegen.pipelines.editing.anonymize import (
    AnonymizeOptions,
    ReplaceFaceFn,
    _check_hook,
    _detector_info,
    anonymize_settings,
)
from facegen.pipelines.editing.jobs import anonymize_file, check_output_format, output_name

__all__ = ["REPORT_NAME", "FolderReport", "anonymize_folder", "read_report"]

logger = logging.getLogger(__name__)

REPORT_NAME = "anonymize_report.jsonl"


# ----------------------------------------------------------------------------- folders


@dataclass
class FolderReport:
    """Counts and records of one :func:`anonymize_folder` run.

    ``total``: image files found, plus entries that could not be read; ``done`` / ``no_face`` / ``errors``: files processed in
    this run by outcome; ``skipped``: files finished by an earlier run; ``faces``: faces
    anonymized in this run. ``records``: this run's journal records, in processing order.
    """

    input_dir: Path
    out_dir: Path
    report_path: Path
    total: int = 0
    done: int = 0
    skipped: int = 0
    no_face: int = 0
    errors: int = 0
    faces: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("input_dir", "out_dir", "report_path"):
            d[k] = str(d[k])
        return d

    def count(self, record: dict[str, Any]) -> None:
        """Add one processed file's journal record."""
        self.records.append(record)
        if record["status"] == "done":
            self.done += 1
            self.faces += len(record["faces"])
        elif record["status"] == "no_face":
            self.no_face += 1
        else:
            self.errors += 1


def read_report(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The complete records of a folder run's journal (a torn last line is ignored)."""
    p = Path(path)
    if not p.exists():
        return
    with open(p, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                rec = json.loads(line)
            except ValueError:
                logger.warning("skipping an unreadable line in %s", p)
                continue
            if isinstance(rec, dict) and isinstance(rec.get("input"), str):
                yield rec


def _stat(path: Path) -> dict[str, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _remove_stale(out: Path, rel: str) -> None:
    """Delete an earlier run's output that no current record accounts for."""
    stale = out / rel
    try:
        inside = stale.resolve().is_relative_to(out.resolve())
        if inside and stale.is_file():
            stale.unlink()
            logger.info("removed the stale output %s", stale)
    except OSError as exc:
        logger.warning("could not remove the stale output %s: %s", stale, exc)


def anonymize_folder(
    input_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    analyzer: FaceAnalyzer,
    options: AnonymizeOptions | None = None,
    *,
    replace_face: ReplaceFaceFn | None = None,
    output_format: str | None = None,
    recursive: bool = True,
    watermark: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> FolderReport:
    """Anonymize every image under ``input_dir`` into the mirrored tree under ``out_dir``.

    ``options`` and ``replace_face`` as in
    :func:`~facegen.pipelines.editing.anonymize.anonymize_image`; every file is written by
    :func:`~facegen.pipelines.editing.jobs.anonymize_file`. ``output_format``: ``None`` keeps
    each file's format where possible (see the module doc), or ``"png"`` / ``"jpg"`` /
    ``"webp"`` for all (``a.jpg`` → ``a.png``; a ``.jpeg`` input stays ``.jpeg`` under
    ``"jpg"``). ``out_dir`` may lie inside ``input_dir`` (it is not scanned) but must not be
    it. ``progress(finished, total)`` is called after each file, skipped ones included.
    Outputs carry facegen's provenance record (kind ``"edited"``) and, with ``watermark``
    (the default; images of at least 64 px a side), the invisible watermark, which changes
    every pixel by a few grey levels: pass ``watermark=False`` for outputs whose pixels
    outside the masks are byte-identical to the input (PNG).

    Every file gets one journal record (``REPORT_NAME`` in ``out_dir``): ``input`` and
    ``output`` (POSIX paths relative to the two folders; ``output`` is ``None`` unless done),
    ``status`` (``"done"``, ``"no_face"`` or ``"error"``), ``faces_detected``, ``faces``
    (:meth:`FaceRecord.to_dict` each), ``error``, ``reason`` (``"unreadable"`` or
    ``"symlink_loop"`` for an entry that could not be read, else ``None``), ``output_sha256``
    (of the written output, when done), ``settings``, ``input_stat``, ``detector``,
    ``seconds``, ``facegen_version``. Unreadable images and per-file failures are recorded
    as errors and the run goes on; a file that is no longer done loses its stale output.

    Raises :class:`~facegen.errors.FolderLockedError` at once when another run is writing
    into ``out_dir`` (see the module doc).
    """
    opts = options or AnonymizeOptions()
    _check_hook(opts, replace_face)
    check_output_format(output_format)
    src = Path(input_dir)
    if not src.is_dir():
        raise InvalidImageError("`input_dir` must be an existing folder", source=str(src))
    out = Path(out_dir)
    if out.resolve() == src.resolve():
        raise OutputError(f"`out_dir` must differ from `input_dir`, got {out} for both")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc.strerror or exc}") from exc
    settings = {
        **anonymize_settings(opts, replace_face),
        "output_format": output_format,
        "watermark": watermark,
    }
    run = _FolderRun(src, out, analyzer, opts, replace_face, output_format, watermark, settings)
    with folder_lock(out, "anonymize run"):
        report = run.run(recursive, progress)
    logger.info(
        "anonymized %d file(s) (%d face(s)); %d skipped as finished, %d without a face, "
        "%d error(s)",
        report.done, report.faces, report.skipped, report.no_face, report.errors,
    )  # fmt: skip
    return report


#: One input of a run: its path, its path relative to the input folder, its output's path
#: relative to the output folder ("" for an entry that could not be read) and, for such an
#: entry, why.
_Item = tuple[Path, str, str, SkippedEntry | None]


@dataclass(frozen=True, eq=False)
class _FolderRun:
    """The body of :func:`anonymize_folder`, run while it holds the lock on ``out``."""

    src: Path
    out: Path
    analyzer: FaceAnalyzer
    options: AnonymizeOptions
    replace_face: ReplaceFaceFn | None
    output_format: str | None
    watermark: bool
    #: what a finished file's record must hold to be skipped by a rerun
    settings: dict[str, Any]

    def run(self, recursive: bool, progress: Callable[[int, int], None] | None) -> FolderReport:
        journal = self.out / REPORT_NAME
        if drop_torn_tail(journal):
            logger.info("dropped a torn journal line in %s", journal)
        _compact(journal)  # a crashed run may have left a file's earlier record behind
        previous = {rec["input"]: rec for rec in read_report(journal)}
        plan, owner = self._plan(recursive)
        report = FolderReport(self.src, self.out, journal, total=len(plan))
        with open(journal, "a", encoding="utf-8") as jf:
            for n, item in enumerate(plan, 1):
                path, rel, out_rel, skipped = item
                stat = None if skipped is not None else _stat(path)
                prev = previous.get(rel)
                if skipped is None and _finished(prev, self.settings, stat, self.out, out_rel):
                    report.skipped += 1
                else:
                    record = self._record(item, owner)
                    record.update(input_stat=stat)
                    old = prev.get("output") if prev is not None else None
                    if old and old != record["output"] and owner.get(old, rel) == rel:
                        _remove_stale(self.out, old)
                    append_json_line(jf, record)
                    report.count(record)
                if progress is not None:
                    progress(n, len(plan))
        _compact(journal)  # one record per input: the latest
        return report

    def _plan(self, recursive: bool) -> tuple[list[_Item], dict[str, str]]:
        """Every input in sorted order, and each output's owner: the first input (in sorted
        order) that maps onto it."""
        scan = scan_images([self.src], recursive=recursive, exclude=[self.out])
        owner: dict[str, str] = {}
        plan: list[_Item] = []
        for path in scan.files:
            rel = path.relative_to(self.src).as_posix()
            out_rel = output_name(rel, self.output_format)
            owner.setdefault(out_rel, rel)
            plan.append((path, rel, out_rel, None))
        for entry in scan.skipped:
            plan.append((entry.path, entry.path.relative_to(self.src).as_posix(), "", entry))
        plan.sort(key=lambda item: item[0])
        return plan, owner

    def _record(self, item: _Item, owner: dict[str, str]) -> dict[str, Any]:
        """Process one input that is not finished; its journal record."""
        path, rel, out_rel, skipped = item
        detector = _detector_info(self.analyzer)[0]
        if skipped is not None:
            record = _new_record(rel, self.settings, detector)
            what = "a link that loops" if skipped.reason == "symlink_loop" else "unreadable"
            record.update(reason=skipped.reason, error=f"{rel}: {what} ({skipped.detail})")
            logger.warning("%s", record["error"])
        elif owner[out_rel] != rel:
            record = _new_record(rel, self.settings, detector)
            record["error"] = (
                f"OutputError: output {out_rel} is already the output of {owner[out_rel]}; "
                "rename one of the inputs or choose another output_format"
            )
            logger.warning("%s: %s", rel, record["error"])
        else:
            record = self._process(path, rel, out_rel, detector)
        return record

    def _process(self, path: Path, rel: str, out_rel: str, detector: str | None) -> dict[str, Any]:
        """Anonymize one file into ``out/out_rel``; returns its journal record."""
        start = time.perf_counter()
        record = _new_record(rel, self.settings, detector)
        try:
            job = anonymize_file(
                path, self.out / out_rel, self.analyzer, self.options,
                replace_face=self.replace_face, source=rel, watermark=self.watermark,
            )  # fmt: skip
            digest = _sha256(job.path)
            if digest is None:
                raise OutputError(f"cannot read back {out_rel} after writing it")
            record.update(
                status="done", output=out_rel, faces=job.record["faces"], output_sha256=digest,
                faces_detected=job.result.num_detected,
            )  # fmt: skip
        except NoFaceDetectedError:
            record["status"] = "no_face"
            logger.info("%s: no face detected; nothing written", rel)
        except (FacegenError, OSError, ValueError, cv2.error) as exc:
            record.update(status="error", error=f"{type(exc).__name__}: {exc}")
            logger.warning("%s: %s", rel, exc)
        record["seconds"] = round(time.perf_counter() - start, 3)
        return record


def _compact(journal: Path) -> None:
    """Rewrite ``journal`` (atomically) to hold one record per input, its latest, in the
    order the inputs first appeared; nothing is written when it already does."""
    if not journal.exists():
        return
    latest: dict[str, dict[str, Any]] = {}
    count = 0
    for rec in read_report(journal):
        latest[rec["input"]] = rec
        count += 1
    with open(journal, encoding="utf-8") as f:
        lines = sum(1 for _ in f)
    if count == len(latest) == lines:
        return
    with atomic_write(journal) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec in latest.values():
            f.write(json.dumps(rec, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str | None:
    """The SHA-256 (hex) of the file at ``path``, or ``None`` when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _finished(
    prev: dict[str, Any] | None,
    settings: dict[str, Any],
    stat: dict[str, int] | None,
    out: Path,
    out_rel: str,
) -> bool:
    """Whether an earlier run already finished this file with these settings, and its output
    is still the one that run wrote (same SHA-256)."""
    if not (
        prev is not None
        and prev.get("status") == "done"
        and prev.get("settings") == settings
        and prev.get("input_stat") == stat
        and prev.get("output") == out_rel
        and isinstance(prev.get("output_sha256"), str)
    ):
        return False
    target = out / out_rel
    return target.is_file() and _sha256(target) == prev["output_sha256"]


def _new_record(rel: str, settings: dict[str, Any], detector: str | None) -> dict[str, Any]:
    return {
        "input": rel,
        "detector": detector,
        "output": None,
        "status": "error",
        "faces_detected": 0,
        "faces": [],
        "error": None,
        "reason": None,
        "output_sha256": None,
        "settings": settings,
        "facegen_version": __version__,
        "seconds": 0.0,
    }
