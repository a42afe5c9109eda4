"""Labelled identity vectors from a CSV file: the training data of attribute heads.

The CSV (UTF-8, a header row) has one column that says where each row's identity vector
comes from, and one column per attribute:

``image``
    an image file, relative to the CSV's folder (or absolute). Its largest face is embedded
    with the analyzer's encoder; images without a face, and unreadable ones, are skipped and
    reported. Vectors are cached (:class:`~facegen.training.embedding_cache.ImageEmbeddingCache`)
    so a second run embeds only new or changed files;
``embedding``
    ``FILE#ROW``: row ``ROW`` (0-based) of an embeddings file (``facegen embed`` output,
    relative to the CSV's folder);
``row``
    ``ROW`` of the one embeddings file given as ``embeddings=`` (``--embeddings``).

Exactly one of these must be present. An optional ``identity`` column names the person of
each row: the validation split then keeps all rows of a person on one side (otherwise photos
of one person in both halves measure recognition of that person, not of the attribute).
Every other column (except those in ``ignore``) is an attribute.

Whether an attribute is categorical or numeric is the caller's choice (``categorical=`` /
``numeric=``, ``--categorical`` / ``--numeric``); a column named in neither is *inferred*:
numeric when every value parses as a finite number, categorical otherwise, and each decision
is returned in :attr:`LabelledVectors.decisions` (the CLI prints them). A categorical
attribute's labels are its distinct values in the rows used, sorted. An empty cell is a missing value (that
attribute is not trained on that row); in a numeric column ``nan`` is missing too.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facegen.attributes import AttributeSpec
from facegen.errors import FacegenError, IncompatibleEmbeddingError, InvalidArgumentError
from facegen.training.embedding_cache import ImageEmbeddingCache, SkippedImage
from facegen.types import IdentityEmbedding

if TYPE_CHECKING:
    from facegen.analyzer import FaceAnalyzer

__all__ = [
    "REFERENCE_COLUMNS",
    "LabelledVectors",
    "describe_skipped",
    "load_labelled_csv",
    "reference_column",
]

logger = logging.getLogger(__name__)

#: the columns that say where a row's vector comes from (exactly one per CSV)
REFERENCE_COLUMNS = ("image", "embedding", "row")
IDENTITY_COLUMN = "identity"


@dataclass
class LabelledVectors:
    """Identity vectors with their attribute labels, ready for
    :func:`~facegen.training.attributes.train_attribute_head`.

    ``vectors``: float32 ``(N, D)`` unit rows of ``encoder_id``. ``labels``: attribute →
    ``N`` values (a label string or ``""`` for categorical; a float or NaN for numeric).
    ``identities``: the ``identity`` column (``None`` without one). ``sources``: each row's
    image path or ``FILE#ROW``. ``rows_read``: data rows in the CSV; ``rows_dropped``: those
    left out (no usable vector, or no label at all). ``skipped``: images without a usable
    face. ``images``: distinct image files (0 without an ``image`` column); ``embedded`` /
    ``reused``: images embedded now / taken from the cache.
    ``decisions``: one line per attribute saying how it was read.
    """

    vectors: np.ndarray
    labels: dict[str, list[str | float]]
    specs: tuple[AttributeSpec, ...]
    encoder_id: str
    identities: list[str] | None
    sources: list[str]
    csv_path: str
    rows_read: int
    rows_dropped: int = 0
    skipped: list[SkippedImage] = field(default_factory=list)
    images: int = 0
    embedded: int = 0
    reused: int = 0
    decisions: list[str] = field(default_factory=list)


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            body = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidArgumentError(
            f"`path` must be a readable UTF-8 CSV file, got {path} ({reason})"
        ) from None
    if not header:
        raise InvalidArgumentError(f"{path}: the CSV must start with a header row, got nothing")
    names = [h.strip() for h in header]
    dup = sorted(n for n, c in Counter(names).items() if c > 1)
    if dup or "" in names:
        raise InvalidArgumentError(
            f"{path}: column names must be non-empty and distinct, got {names}"
        )
    rows = []
    for line, cells in enumerate(body, start=2):
        if not any(c.strip() for c in cells):
            continue  # blank line
        if len(cells) != len(names):
            raise InvalidArgumentError(
                f"{path}:{line}: a row must have {len(names)} cells like the header, got "
                f"{len(cells)}"
            )
        rows.append({"_line": str(line), **{n: c.strip() for n, c in zip(names, cells)}})
    if not rows:
        raise InvalidArgumentError(f"{path}: the CSV must have at least one data row, got none")
    return names, rows


def reference_column(path: str | os.PathLike[str]) -> str:
    """Which of :data:`REFERENCE_COLUMNS` the CSV at ``path`` uses (its header alone)."""
    names, _ = _read_rows(Path(path))
    return _reference_of(Path(path), names)


def _reference_of(path: Path, names: Sequence[str]) -> str:
    refs = [c for c in REFERENCE_COLUMNS if c in names]
    if len(refs) != 1:
        raise InvalidArgumentError(
            f"{path}: the CSV must have exactly one of the columns "
            f"{', '.join(REFERENCE_COLUMNS)} (where each row's identity vector comes from), "
            f"got {refs or 'none'} among {list(names)}"
        )
    return refs[0]


def _as_number(text: str) -> float | None:
    """``text`` as a float (NaN for ``nan``), or ``None`` when it is not a number."""
    try:
        v = float(text)
    except ValueError:
        return None
    return v if not math.isinf(v) else None


def _decide_kinds(
    path: Path,
    rows: list[dict[str, str]],
    columns: Sequence[str],
    categorical: Sequence[str],
    numeric: Sequence[str],
) -> tuple[dict[str, tuple[str, str]], dict[str, list[str | float]]]:
    """Each attribute column's kind with the reason for it, and its parsed values (label
    strings, ``""`` missing; or floats, NaN missing). Labels are checked here, before any
    image is embedded."""
    kinds: dict[str, tuple[str, str]] = {}
    values: dict[str, list[str | float]] = {}
    for name in columns:
        cells = [r[name] for r in rows]
        present = [c for c in cells if c]
        if not present:
            raise InvalidArgumentError(f"{path}: column {name!r} must have values, got none")
        numbers = [_as_number(c) for c in present]
        if name in numeric:
            bad = [(r["_line"], r[name]) for r in rows if r[name] and _as_number(r[name]) is None]
            if bad:
                shown = ", ".join(f"line {ln}: {v!r}" for ln, v in bad[:3])
                raise InvalidArgumentError(
                    f"{path}: numeric attribute {name!r} must hold finite numbers, got {shown}"
                    + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
                )
            kinds[name] = ("numeric", "as asked")
        elif name in categorical:
            kinds[name] = ("categorical", "as asked")
        elif all(v is not None for v in numbers):
            distinct = len({float(v) for v in numbers if v is not None and not math.isnan(v)})
            kinds[name] = (
                "numeric",
                f"inferred: every value is a number, {distinct} distinct; pass it as categorical "
                f"(--categorical {name}) if these are classes",
            )
        else:
            kinds[name] = ("categorical", "inferred: not every value is a number")
        if kinds[name][0] == "numeric":
            values[name] = [float("nan") if not c else float(_as_number(c) or 0.0) for c in cells]
        else:
            _categorical_spec(path, name, present)  # bad labels fail now, not after embedding
            values[name] = list(cells)
    return kinds, values


def _categorical_spec(path: Path, name: str, present: Sequence[str]) -> AttributeSpec:
    try:
        return AttributeSpec(name, "categorical", tuple(sorted(set(present))))
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{path}: {exc}") from None


def _specs(
    path: Path, kinds: dict[str, tuple[str, str]], values: dict[str, list[str | float]]
) -> tuple[list[AttributeSpec], list[str]]:
    """The attribute specs of the rows used (labels: the distinct values there) and one line
    per attribute saying how it was read, with its counts."""
    specs, decisions = [], []
    for name, (kind, why) in kinds.items():
        if kind == "numeric":
            n = sum(not math.isnan(float(v)) for v in values[name])
            if n == 0:
                raise InvalidArgumentError(
                    f"{path}: column {name!r} must have values in the rows used, got none"
                )
            specs.append(AttributeSpec(name, "numeric"))
            decisions.append(f"{name}: numeric, {n} values ({why})")
        else:
            present = [str(v) for v in values[name] if v]
            spec = _categorical_spec(path, name, present)
            counts = Counter(present)
            shown = ", ".join(f"{lab} {counts[lab]}" for lab in spec.labels[:12])
            more = f", … ({len(spec.labels)} labels)" if len(spec.labels) > 12 else ""
            specs.append(spec)
            decisions.append(f"{name}: categorical, {shown}{more} ({why})")
    return specs, decisions


def _split_ref(text: str, path: Path, line: str) -> tuple[str, int]:
    file, sep, row = text.rpartition("#")
    if not sep or not file or not row.strip().isdigit():
        raise InvalidArgumentError(
            f"{path}:{line}: `embedding` must be FILE#ROW (a 0-based row), got {text!r}"
        )
    return file, int(row)


def _file_vectors(
    path: Path, rows: list[dict[str, str]], ref: str, embeddings: Path | None
) -> tuple[list[IdentityEmbedding], list[str]]:
    """Each row's vector (and its ``FILE#ROW``) from embeddings files."""
    from facegen.embedding_io import load_embeddings

    files: dict[Path, list[IdentityEmbedding]] = {}
    vecs, sources = [], []
    for r in rows:
        if ref == "embedding":
            name, idx = _split_ref(r["embedding"], path, r["_line"])
            file = Path(name) if Path(name).is_absolute() else path.parent / name
        else:
            text = r["row"]
            if not text.isdigit():
                raise InvalidArgumentError(
                    f"{path}:{r['_line']}: `row` must be a 0-based row number, got {text!r}"
                )
            assert embeddings is not None
            file, idx, name = embeddings, int(text), str(embeddings)
        if file not in files:
            if not file.is_file():
                raise InvalidArgumentError(
                    f"{path}:{r['_line']}: embeddings file {str(file)!r} must exist, got no file"
                )
            files[file] = load_embeddings(file)[0]
        embs = files[file]
        if idx >= len(embs):
            raise InvalidArgumentError(
                f"{path}:{r['_line']}: row must be in [0, {len(embs) - 1}] for {name}, got {idx}"
            )
        vecs.append(embs[idx])
        sources.append(f"{name}#{idx}")
    return vecs, sources


def load_labelled_csv(
    path: str | os.PathLike[str],
    *,
    categorical: Sequence[str] = (),
    numeric: Sequence[str] = (),
    ignore: Sequence[str] = (),
    analyzer: FaceAnalyzer | Callable[[], FaceAnalyzer] | None = None,
    embeddings: str | os.PathLike[str] | None = None,
    cache: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> LabelledVectors:
    """Read a labelled CSV (format: the module doc) into identity vectors and labels.

    ``categorical`` / ``numeric``: attribute columns whose kind the caller decides (the others
    are inferred, see the module doc). ``ignore``: columns that are not attributes.
    ``analyzer``: the :class:`~facegen.analyzer.FaceAnalyzer` (or a function making it, called
    only when images must be embedded) for an ``image`` column; ``cache``: its embedding cache
    file (``None``: no cache). ``embeddings``: the file a ``row`` column refers to.

    Vectors are normalised to unit length (:meth:`IdentityEmbedding.normalize`) and must all
    come from one encoder (:class:`IncompatibleEmbeddingError`). Images without a usable face
    are skipped and listed in ``skipped``; their rows are dropped, as are rows without any
    label. Malformed CSVs and references raise :class:`InvalidArgumentError` naming the line.
    """
    csv_path = Path(path)
    names, rows = _read_rows(csv_path)
    ref = _reference_of(csv_path, names)
    if ref == "row" and embeddings is None:
        raise InvalidArgumentError(
            f"{csv_path}: a `row` column needs the embeddings file it refers to (`embeddings`, "
            "--embeddings FILE)"
        )
    if ref != "row" and embeddings is not None:
        raise InvalidArgumentError(
            f"`embeddings` applies to a CSV with a `row` column, got one with `{ref}`"
        )
    reserved = {*REFERENCE_COLUMNS, IDENTITY_COLUMN}
    for opt, cols in (("categorical", categorical), ("numeric", numeric), ("ignore", ignore)):
        unknown = [c for c in cols if c not in names or c in reserved]
        if unknown:
            valid = [n for n in names if n not in reserved]
            raise InvalidArgumentError(
                f"`{opt}` must name attribute columns of {csv_path} ({', '.join(valid)}), got "
                f"{unknown}"
            )
    both = sorted(set(categorical) & set(numeric))
    if both:
        raise InvalidArgumentError(f"columns must be categorical or numeric, not both: {both}")
    columns = [n for n in names if n not in reserved and n not in ignore]
    if not columns:
        raise InvalidArgumentError(
            f"{csv_path}: the CSV must have at least one attribute column besides "
            f"{', '.join(sorted(reserved))}, got {names}"
        )
    kinds, values = _decide_kinds(csv_path, rows, columns, categorical, numeric)
    # rows without any label are left out before their vectors are looked for
    labelled_idx = [
        i
        for i in range(len(rows))
        if any(
            (isinstance(values[c][i], str) and values[c][i] != "")
            or (isinstance(values[c][i], float) and not math.isnan(values[c][i]))
            for c in columns
        )
    ]
    if not labelled_idx:
        raise InvalidArgumentError(f"{csv_path}: at least one row must have a label, got none")
    labelled = [rows[i] for i in labelled_idx]

    found: list[IdentityEmbedding | SkippedImage]
    skipped: list[SkippedImage] = []
    embedded = reused = images = 0
    if ref == "image":
        if analyzer is None:
            raise InvalidArgumentError(
                f"{csv_path}: an `image` column needs `analyzer` (a FaceAnalyzer with an encoder)"
            )
        shown = [r["image"] for r in labelled]
        files = [Path(s) if Path(s).is_absolute() else csv_path.parent / s for s in shown]
        unique = list(dict.fromkeys(files))
        images = len(unique)
        display = {f: s for f, s in zip(files, shown, strict=True)}
        made = analyzer() if callable(analyzer) and not hasattr(analyzer, "analyze") else analyzer
        store = ImageEmbeddingCache(cache, made)  # type: ignore[arg-type]
        per_file = dict(
            zip(
                unique,
                store.embed(unique, names=[display[f] for f in unique], progress=progress),
                strict=True,
            )
        )
        found = [per_file[f] for f in files]
        skipped = [v for v in per_file.values() if isinstance(v, SkippedImage)]
        embedded, reused = store.embedded, store.reused
        sources = shown
    else:
        vecs, sources = _file_vectors(
            csv_path, labelled, ref, Path(embeddings) if embeddings is not None else None
        )
        found = list(vecs)

    kept = [
        (i, v, src)
        for i, v, src in zip(labelled_idx, found, sources, strict=True)
        if isinstance(v, IdentityEmbedding)
    ]
    if not kept:
        why = f"; {describe_skipped(skipped, images)}" if skipped else ""
        raise FacegenError(f"{csv_path}: no labelled row has a usable identity vector{why}")
    embs = [v for _, v, _ in kept if isinstance(v, IdentityEmbedding)]
    first = embs[0]
    for (i, _, _), e in zip(kept, embs, strict=True):
        if e.encoder_id != first.encoder_id or e.dim != first.dim:
            raise IncompatibleEmbeddingError(
                f"{csv_path}:{rows[i]['_line']}: identity vectors must come from one encoder, got "
                f"{e.encoder_id!r} ({e.dim}-D) after {first.encoder_id!r} ({first.dim}-D)"
            )
    vectors = np.stack([e.normalize().vector for e in embs]).astype(np.float32)
    idx = [i for i, _, _ in kept]
    kept_values = {c: [values[c][i] for i in idx] for c in columns}
    specs, decisions = _specs(csv_path, kinds, kept_values)
    identities = None
    if IDENTITY_COLUMN in names:  # a row without an identity is a person of its own
        identities = [rows[i][IDENTITY_COLUMN] or f"(line {rows[i]['_line']})" for i in idx]
    return LabelledVectors(
        vectors=vectors,
        labels=kept_values,
        specs=tuple(specs),
        encoder_id=first.encoder_id,
        identities=identities,
        sources=[src for _, _, src in kept],
        csv_path=str(csv_path),
        rows_read=len(rows),
        rows_dropped=len(rows) - len(kept),
        skipped=skipped,
        images=images,
        embedded=embedded,
        reused=reused,
        decisions=decisions,
    )


def describe_skipped(skipped: Sequence[SkippedImage], total: int, *, first: int = 5) -> str:
    """One line: how many of ``total`` images were skipped, why, and the first few paths."""
    why = Counter(s.reason for s in skipped)
    reasons = ", ".join(f"{r}: {n}" for r, n in sorted(why.items()))
    shown = ", ".join(f"{s.path} ({s.reason})" for s in skipped[:first])
    more = f", … {len(skipped) - first} more" if len(skipped) > first else ""
    return f"skipped {len(skipped)} of {total} images ({reasons}): {shown}{more}"
