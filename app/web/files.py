"""The web app's edges: uploads in (size and pixel limits, readable errors), outputs out
(provenance-stamped files, zips with a manifest, the provenance line shown under results)."""

from __future__ import annotations

import collections
import functools
import json
import logging
import os
import re
import threading
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from facegen.errors import (
    AmbiguousFaceError,
    FacegenError,
    FaceIndexError,
    InvalidImageError,
    ModelNotAvailableError,
    NoFaceDetectedError,
)
from facegen.types import IdentityEmbedding

if TYPE_CHECKING:
    from PIL import Image

    from facegen.provenance import Kind

__all__ = [
    "SavedImage",
    "embedding_upload",
    "float_input",
    "human_errors",
    "image_upload",
    "int_input",
    "provenance_notice",
    "save_output",
    "upload_name",
    "write_zip",
]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: What a number field of a form hands a handler (Gradio sends numbers; API callers may
#: send anything, so strings and None are refused with a readable error).
FieldValue = float | str | None


class SessionFiles(Protocol):
    """The part of a session's state (:class:`~facegen.app.web.services.SessionState`) that
    :func:`human_errors` keeps up to date."""

    workspace: str | None
    uploads: list[str]
    busy: int


def _gr() -> ModuleType:
    import gradio as gr

    return gr


def user_error(message: str, title: str = "Error") -> Exception:
    """A ``gr.Error`` shown to the user as is (no traceback in the server log either)."""
    return _gr().Error(message, title=title, print_exception=False)


def _model_message(exc: ModelNotAvailableError) -> str:
    """The model error without the server's file-system paths: what is missing and how to
    provide it."""
    keep: list[str] = []
    skipping = False
    for line in str(exc).splitlines():
        if line.startswith("Looked in:"):
            skipping = True
            continue
        if line.startswith("To provide it"):
            skipping = False
        if not skipping:
            keep.append(line)
    keep.append("The Models panel lists what is installed and how to get the rest.")
    return "\n".join(keep)


def _paths_in(value: object) -> Iterator[str]:
    """File paths inside a handler argument: a path, a list of them, or Gradio file dicts."""
    if isinstance(value, (str, Path)):
        yield str(value)
    elif isinstance(value, dict):
        for key in ("path", "name"):
            if isinstance(value.get(key), str):
                yield value[key]
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _paths_in(v)


_claims_lock = threading.Lock()
#: How many live sessions hold each upload (Gradio keeps one copy per content, shared by
#: every session that uploads the same bytes).
_claims: collections.Counter[str] = collections.Counter()


def _is_upload(path: str) -> bool:
    """Whether ``path`` is a file Gradio stored as an upload: ``<cache>/<sha256>/<name>``
    inside the process's Gradio cache folder (anything else a handler receives, such as a
    prompt that happens to name a file, is never treated as an upload)."""
    if len(path) > 4096 or not os.path.isfile(path):
        return False
    from gradio.utils import get_upload_folder

    p = Path(os.path.realpath(path))
    cache = Path(os.path.realpath(get_upload_folder()))
    return p.parent.parent == cache and re.fullmatch(r"[0-9a-f]{64}", p.parent.name) is not None


def release_upload(path: str) -> bool:
    """Drop one session's claim on an upload; True when no live session holds it any more."""
    with _claims_lock:
        _claims[path] -= 1
        if _claims[path] > 0:
            return False
        del _claims[path]
        return True


def _session_states(values: list[object]) -> list[SessionFiles]:
    return [v for v in values if hasattr(v, "uploads") and hasattr(v, "workspace")]  # type: ignore[misc]


def _remember_uploads(values: list[object]) -> None:
    """Record the uploaded files a handler receives in its session's state (the argument
    with ``uploads`` and ``workspace``), so that they are deleted when the session ends and
    no other session holds them."""
    states = _session_states(values)
    if not states:
        return
    found = [
        os.path.realpath(p)
        for v in values
        if not any(v is st for st in states)
        for p in _paths_in(v)
        if _is_upload(p)
    ]
    for state in states:
        new = [p for p in dict.fromkeys(found) if p not in state.uploads]
        state.uploads.extend(new)
        with _claims_lock:
            _claims.update(new)


def human_errors(action: str) -> Callable[[F], F]:
    """Turn facegen's errors into ``gr.Error`` messages for the page; anything unexpected is
    logged with its traceback on the server and shown as one plain sentence."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            gr = _gr()
            values = [*args, *kwargs.values()]
            _remember_uploads(values)
            states = _session_states(values)
            for state in states:  # a session with a job running is not ended under it
                state.busy += 1
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except ModelNotAvailableError as exc:
                raise user_error(_model_message(exc), "Model not available") from None
            except NoFaceDetectedError as exc:
                raise user_error(str(exc), "No face found") from None
            except (AmbiguousFaceError, FaceIndexError) as exc:
                raise user_error(str(exc), "Which face?") from None
            except InvalidImageError as exc:
                raise user_error(str(exc), "Unreadable image") from None
            except (FacegenError, ValueError) as exc:
                raise user_error(str(exc), f"{action} failed") from None
            except MemoryError:
                raise user_error(
                    f"{action} ran out of memory; try fewer or smaller images.", "Out of memory"
                ) from None
            except Exception:
                logger.exception("%s failed", action)
                raise user_error(
                    f"{action} failed because of an internal error; the details are in the "
                    "server log.",
                    f"{action} failed",
                ) from None
            finally:
                for state in states:
                    state.busy -= 1

        return inner  # type: ignore[return-value]

    return wrap


# ------------------------------------------------------------------------------- inputs


def int_input(value: FieldValue, name: str, lo: int, hi: int) -> int:
    """A whole number in ``[lo, hi]`` from a form field, or a ``gr.Error`` saying why not."""
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise user_error(f"{name} must be a whole number, got {value!r}.") from None
    if float(value) != v:
        raise user_error(f"{name} must be a whole number, got {value!r}.")
    if not lo <= v <= hi:
        raise user_error(f"{name} must be {lo}–{hi}, got {v}.")
    return v


def float_input(value: FieldValue, name: str, lo: float, hi: float) -> float:
    """A finite number in ``[lo, hi]`` from a form field, or a ``gr.Error`` saying why not."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise user_error(f"{name} must be a number, got {value!r}.") from None
    if not (np.isfinite(v) and lo <= v <= hi):
        raise user_error(f"{name} must be in [{lo:g}, {hi:g}], got {v:g}.")
    return v


def upload_name(path: str | Path) -> str:
    """The name the user gave the file (gradio keeps it as the cached file's name)."""
    return Path(path).name


def _check_size(path: Path, limit_bytes: int) -> None:
    try:
        size = path.stat().st_size
    except OSError:
        raise user_error(f"{path.name}: the upload could not be read.", "Upload failed") from None
    if size > limit_bytes:
        raise user_error(
            f"{path.name} is {size / 2**20:.1f} MB; uploads are limited to "
            f"{limit_bytes / 2**20:.0f} MB.",
            "File too large",
        )
    if size == 0:
        raise user_error(f"{path.name} is empty (0 bytes).", "Unreadable image")


def image_upload(
    path: str | Path | None, *, what: str, max_bytes: int, max_pixels: int
) -> tuple[np.ndarray, str]:
    """Read an uploaded image as RGB uint8 ``(H, W, 3)``; returns it with its file name.

    The file size and the pixel count (from the header, before any pixel is decoded) are
    checked first; unreadable files raise a ``gr.Error`` naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    from facegen.image_io import load_image

    if path is None or str(path) == "":
        raise user_error(f"Please upload {what}.", "Missing input")
    p = Path(path)
    name = upload_name(p)
    _check_size(p, max_bytes)
    try:
        with Image.open(p) as img:  # reads the header only
            w, h = img.size
    except Image.DecompressionBombError:
        w = h = 0
        too_big = True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise user_error(
            f"{name} is not an image this app can read (JPEG, PNG, WebP, BMP, GIF or TIFF "
            "expected), or the file is damaged.",
            "Unreadable image",
        ) from None
    else:
        too_big = w * h > max_pixels
    if too_big:
        size = f"{w}×{h} pixels ({w * h / 1e6:.0f} MP)" if w else "too large to open"
        raise user_error(
            f"{name} is {size}; this app accepts images up to {max_pixels / 1e6:.0f} MP. "
            "Please upload a smaller version.",
            "Image too large",
        )
    try:
        return load_image(p, max_pixels=max_pixels, name=name), name
    except InvalidImageError as exc:
        raise user_error(str(exc), "Unreadable image") from None


def embedding_upload(
    path: str | Path | None, *, max_bytes: int
) -> tuple[list[IdentityEmbedding], str]:
    """Read an uploaded ``.safetensors`` embeddings file (``facegen embed``): the
    embeddings and the file name."""
    from facegen.embedding_io import load_embeddings

    if path is None or str(path) == "":
        raise user_error("Please upload an embedding file (.safetensors).", "Missing input")
    p = Path(path)
    name = upload_name(p)
    _check_size(p, max_bytes)
    if p.suffix.lower() != ".safetensors":
        raise user_error(
            f"{name} must be a .safetensors file written by `facegen embed`.", "Wrong file type"
        )
    try:
        embs, _ = load_embeddings(p)
    except FacegenError as exc:
        raise user_error(str(exc).replace(str(p), name), "Unreadable embedding file") from None
    except Exception:
        raise user_error(
            f"{name} is not a facegen embeddings file (safetensors with an `embeddings` tensor).",
            "Unreadable embedding file",
        ) from None
    return embs, name


# ------------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class SavedImage:
    """One output file and what its provenance check found."""

    path: Path
    metadata: bool
    watermark_embedded: bool
    watermark_detected: bool
    source_type: str | None


def save_output(
    image: np.ndarray | Image.Image,
    path: Path,
    operation: str,
    params: Mapping[str, Any],
    *,
    kind: Kind = "generated",
) -> SavedImage:
    """Save with provenance (metadata + invisible watermark, when the image is large enough
    to carry it), then read the file back to report what it carries."""
    from facegen.provenance import can_watermark, check, save_with_provenance

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    mark = can_watermark(arr)
    params = _fits_in_record(params)
    out = save_with_provenance(arr, path, operation, params, kind=kind, watermark=mark)
    rep = check(out)
    return SavedImage(
        out,
        rep.has_metadata,
        mark,
        rep.watermark_detected,
        rep.digital_source_type,
    )


#: Provenance records hold at most 16 KB of JSON; the app keeps a margin.
_RECORD_BUDGET = 12_000


def _fits_in_record(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """``params``, with long per-face lists replaced by their length when the record would
    be too large (the zip's manifest keeps the details)."""
    if len(json.dumps(params, default=str)) <= _RECORD_BUDGET:
        return params
    out = {
        k: (f"{len(v)} entries; see manifest.json" if isinstance(v, list) else v)
        for k, v in params.items()
    }
    if len(json.dumps(out, default=str)) <= _RECORD_BUDGET:
        return out
    return {k: v for k, v in out.items() if isinstance(v, (str, int, float, bool)) or v is None}


def provenance_notice(saved: Sequence[SavedImage]) -> str:
    """The line shown under every result: what labels the outputs carry."""
    from facegen.watermark import SCHEME

    n = len(saved)
    if n == 0:
        return ""
    meta = sum(s.metadata for s in saved)
    embedded = sum(s.watermark_embedded for s in saved)
    detected = sum(s.watermark_detected for s in saved)
    kinds = sorted({(s.source_type or "").rsplit("/", 1)[-1] for s in saved if s.source_type})
    parts = [
        f"**Provenance:** {meta}/{n} file(s) carry facegen's provenance record"
        + (f" (IPTC digital source type: {', '.join(kinds)})" if kinds else ""),
        f"invisible watermark `{SCHEME}` embedded in {embedded}/{n}, detected on read-back in "
        f"{detected}/{n}",
    ]
    if embedded < n:
        parts.append("images under 64 px carry the metadata label only")
    elif detected < n:
        parts.append("very small images are too small for a reliable watermark read-back")
    return "; ".join(parts) + "."


def _json_value(v: object) -> object:
    """What ``json.dumps`` writes for a value it does not know: NumPy scalars and arrays as
    numbers and lists, anything else as its text."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def write_zip(path: Path, files: Sequence[Path], manifest: Mapping[str, Any]) -> Path:
    """A zip of ``files`` (stored flat) and ``manifest.json``."""

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest, indent=2, default=_json_value))
        for f in files:
            zf.write(f, arcname=f.name, compress_type=zipfile.ZIP_STORED)
    return path


def zip_folder(path: Path, folder: Path, *, exclude: Sequence[str] = ()) -> Path:
    """A zip of everything under ``folder`` (relative names), except top-level ``exclude``."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            rel = f.relative_to(folder)
            if f.is_file() and rel.parts[0] not in exclude and f != path:
                zf.write(f, arcname=rel.as_posix())
    return path
