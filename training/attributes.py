"""Training attribute heads: gender, age, … from identity vectors alone.

:func:`train_attribute_head` fits an :class:`~facegen.attribute_heads.AttributeHead` on
labelled unit-norm identity vectors of one encoder and measures it on a held-out split;
:func:`~facegen.training.attribute_data.load_labelled_csv` (re-exported here) reads such
data from a CSV of images or embeddings. ``facegen train attributes`` runs both.

The loss is, per attribute, the cross-entropy over its labels (categorical; optionally with
class-balanced weights ``n / (K · n_k)``) or the squared error of the standardised value
(numeric), over the rows that have that attribute, summed over attributes; AdamW with a
cosine learning-rate decay. A run is deterministic for a seed on CPU (its own RNG state:
the caller's torch RNG is left as it was).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from facegen.attribute_heads import (
    NORM_TOLERANCE,
    AttributeHead,
    AttributeHeadConfig,
    torch_device,
)
from facegen.attributes import AttributeSpec
from facegen.errors import IncompatibleEmbeddingError, InvalidArgumentError
from facegen.training.attribute_data import LabelledVectors, load_labelled_csv
from facegen.validate import check_int, check_number

if TYPE_CHECKING:
    import torch

__all__ = [
    "AttributeTrainResult",
    "LabelledVectors",
    "load_labelled_csv",
    "split_rows",
    "summarize_metrics",
    "train_attribute_head",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttributeTrainResult:
    """A trained head, its metrics and the mean training loss of each epoch.

    ``metrics``: ``rows`` (``train``/``validation`` counts), ``split`` (``"identity"`` or
    ``"row"``) and per attribute (``attributes[name]``): ``kind``, ``train_counts`` (label →
    rows; numeric: ``count``, ``mean``, ``std``) and, with a validation split,
    ``validation``: for categorical attributes ``accuracy``, ``balanced_accuracy`` (mean
    recall over the labels present), ``majority`` (accuracy of always answering the most
    common validation label), ``counts`` and ``recall`` per label; for numeric ones ``mae``,
    ``baseline_mae`` (always answering the training mean) and ``count``.
    """

    head: AttributeHead
    metrics: dict[str, Any]
    losses: list[float] = field(default_factory=list)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v == "") or (isinstance(v, float) and math.isnan(v))


def _encode_labels(
    specs: Sequence[AttributeSpec], labels: Mapping[str, Sequence[Any]], n: int
) -> dict[str, np.ndarray]:
    """Per attribute: int64 label indices (-1 missing) or float64 values (NaN missing)."""
    names = [s.name for s in specs]
    extra = sorted(set(labels) - set(names))
    absent = [k for k in names if k not in labels]
    if extra or absent:
        raise InvalidArgumentError(
            f"`labels` must have exactly the attributes of `specs` {names}, got {sorted(labels)}"
        )
    out: dict[str, np.ndarray] = {}
    for s in specs:
        values = list(labels[s.name])
        if len(values) != n:
            raise InvalidArgumentError(
                f"`labels[{s.name!r}]` must have one value per vector ({n}), got {len(values)}"
            )
        if s.kind == "categorical":
            index = {lab: k for k, lab in enumerate(s.labels)}
            bad = sorted({str(v) for v in values if not _missing(v) and v not in index})
            if bad:
                raise InvalidArgumentError(
                    f"`labels[{s.name!r}]` must hold labels among {list(s.labels)} (or '' for "
                    f"missing), got {bad[:5]}"
                )
            out[s.name] = np.array([-1 if _missing(v) else index[v] for v in values], np.int64)
        else:
            try:
                arr = np.array([np.nan if _missing(v) else float(v) for v in values], np.float64)
            except (TypeError, ValueError):
                raise InvalidArgumentError(
                    f"`labels[{s.name!r}]` must hold numbers (NaN for missing)"
                ) from None
            if np.isinf(arr).any():
                raise InvalidArgumentError(f"`labels[{s.name!r}]` must be finite, got inf")
            out[s.name] = arr
    return out


def _check_vectors(vectors: Any) -> np.ndarray:
    v = np.asarray(vectors)
    if v.ndim != 2 or v.shape[0] < 2 or v.shape[1] < 1 or not np.issubdtype(v.dtype, np.floating):
        raise InvalidArgumentError(
            f"`vectors` must be a float (N, D) array with N >= 2, got {v.dtype} {v.shape}"
        )
    v = np.ascontiguousarray(v, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(v).all(axis=1))
    if bad.size:
        raise InvalidArgumentError(
            f"`vectors` must be finite, got NaN or inf in row(s) {bad[:5].tolist()}"
        )
    norms = np.linalg.norm(v.astype(np.float64), axis=1)
    off = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if off.size:
        raise IncompatibleEmbeddingError(
            f"`vectors` must have unit L2 norm, got norm {norms[off[0]]:.4f} in row {off[0]}; "
            "normalise them first"
        )
    return v


def split_rows(
    n: int, val_fraction: float, seed: int, groups: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation row indices (sorted int64): ``round(val_fraction · n)`` rows
    (at least one when ``val_fraction > 0``) drawn with ``seed``; with ``groups`` (one per row)
    whole groups go to validation until it holds about that many rows, so no group is on
    both sides."""
    rng = np.random.default_rng(seed)
    if val_fraction <= 0:
        return np.arange(n, dtype=np.int64), np.zeros(0, np.int64)
    want = max(1, round(val_fraction * n))
    if groups is None:
        perm = rng.permutation(n)
        val = np.sort(perm[:want])
    else:
        if len(groups) != n:
            raise InvalidArgumentError(f"`groups` must have {n} entries, got {len(groups)}")
        members: dict[str, list[int]] = {}
        for i, g in enumerate(groups):
            members.setdefault(str(g), []).append(i)
        if len(members) < 2:
            raise InvalidArgumentError(
                f"`groups` must hold at least two groups for a validation split, got {len(members)}"
            )
        order = sorted(members)
        chosen: list[int] = []
        for k in rng.permutation(len(order)):
            if len(chosen) >= want or len(chosen) + len(members[order[k]]) >= n:
                break
            chosen += members[order[k]]
        if not chosen:  # the first group drawn holds almost every row: take the smallest
            chosen = min(members.values(), key=len)
        val = np.sort(np.asarray(chosen, np.int64))
    mask = np.ones(n, bool)
    mask[val] = False
    train = np.flatnonzero(mask).astype(np.int64)
    if not train.size:
        raise InvalidArgumentError(f"`val_fraction` {val_fraction} leaves no training rows")
    return train, val.astype(np.int64)


def _categorical_metrics(true: np.ndarray, pred: np.ndarray, labels: Sequence[str]) -> dict:
    present = true >= 0
    t, p = true[present], pred[present]
    if not t.size:
        return {"count": 0}
    counts = {lab: int((t == k).sum()) for k, lab in enumerate(labels)}
    recall = {
        lab: round(float((p[t == k] == k).mean()), 4) for k, lab in enumerate(labels) if counts[lab]
    }
    return {
        "count": int(t.size),
        "accuracy": round(float((t == p).mean()), 4),
        "balanced_accuracy": round(float(np.mean(list(recall.values()))), 4),
        "majority": round(max(counts.values()) / t.size, 4),
        "counts": counts,
        "recall": recall,
    }


def _numeric_metrics(true: np.ndarray, pred: np.ndarray, train_mean: float) -> dict:
    present = ~np.isnan(true)
    t, p = true[present], pred[present]
    if not t.size:
        return {"count": 0}
    return {
        "count": int(t.size),
        "mae": round(float(np.abs(t - p).mean()), 4),
        "baseline_mae": round(float(np.abs(t - train_mean).mean()), 4),
    }


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``threads`` inside the block (None: unchanged)."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads is not None:
            torch.set_num_threads(before)


def _fit(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: Mapping[str, torch.Tensor],
    specs: Sequence[AttributeSpec],
    train_idx: torch.Tensor,
    class_weights: Mapping[str, torch.Tensor] | None,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    progress: bool | None,
) -> list[float]:
    """Train ``model`` in place on the rows ``train_idx`` of ``x`` (float32 ``(N, D)``) and
    the targets ``y`` (int64 label indices, -1 missing; float32 standardised values, NaN
    missing); returns the mean loss of each epoch."""
    import torch
    from torch.nn import functional as F
    from tqdm.auto import tqdm

    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(train_idx) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    weights = {k: w.to(dev) for k, w in (class_weights or {}).items()}
    losses: list[float] = []
    model.train()
    disable = None if progress is None else not progress
    with tqdm(range(epochs), desc="training attribute head", disable=disable) as bar:
        for _ in bar:
            order = train_idx[torch.randperm(len(train_idx), generator=gen)]
            total, batches = 0.0, 0
            for s0 in range(0, len(order), batch_size):
                idx = order[s0 : s0 + batch_size]
                out = model(x[idx].to(dev))
                loss = torch.zeros((), device=dev)
                for s in specs:
                    t = y[s.name][idx].to(dev)
                    if s.kind == "categorical":
                        keep = t >= 0
                        if keep.any():
                            w = weights.get(s.name)
                            loss = loss + F.cross_entropy(out[s.name][keep], t[keep], weight=w)
                    else:
                        keep = ~torch.isnan(t)
                        if keep.any():
                            loss = loss + F.mse_loss(out[s.name][keep, 0], t[keep])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach())
                batches += 1
            losses.append(total / max(1, batches))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.eval()
    return losses


def train_attribute_head(
    vectors: np.ndarray,
    labels: Mapping[str, Sequence[str | float]],
    specs: Sequence[AttributeSpec],
    encoder_id: str,
    *,
    hidden: int = 256,
    epochs: int = 100,
    lr: float = 3e-3,
    weight_decay: float = 1e-2,
    batch_size: int = 256,
    val_fraction: float = 0.2,
    groups: Sequence[str] | None = None,
    balanced: bool = False,
    seed: int = 0,
    name: str = "attribute-head",
    data: str | None = None,
    record: Mapping[str, Any] | None = None,
    device: str = "cpu",
    threads: int | None = 1,
    progress: bool | None = None,
) -> AttributeTrainResult:
    """Train a head on ``vectors`` (float ``(N, D)``, unit rows of ``encoder_id``).

    ``labels``: attribute → ``N`` values, one key per spec in ``specs``: a label of the
    spec (``""`` or ``None`` = missing) for categorical attributes, a number (NaN / ``None``
    = missing) for numeric ones. ``hidden``: hidden units (``0``: linear heads). ``epochs``
    passes of mini-batches of ``batch_size`` with AdamW (``lr``, ``weight_decay``).
    ``val_fraction`` of the rows (of the ``groups``, e.g. persons, when given: a group is
    never on both sides) is held out for the metrics; ``0`` trains on everything and reports
    no validation metrics. ``balanced``: class-balanced cross-entropy weights. ``data``: the
    training data's name, recorded in the head's config (``training``) with the counts,
    metrics, settings and the entries of ``record`` (how the data was read). Deterministic
    for a ``seed`` on CPU. ``threads``: the CPU threads torch uses while training (restored
    after; ``None`` keeps torch's setting): the model is so small that one thread is fastest,
    and on a busy machine extra threads make each step many times slower. ``progress``:
    a progress bar over the epochs (``None``: when stderr is a terminal).
    """
    import torch

    v = _check_vectors(vectors)
    n, dim = v.shape
    specs = tuple(specs)
    hidden = check_int(hidden, "hidden", minimum=0)
    epochs = check_int(epochs, "epochs", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    lr = check_number(lr, "lr", minimum=0, min_open=True)
    weight_decay = check_number(weight_decay, "weight_decay", minimum=0)
    val_fraction = check_number(val_fraction, "val_fraction", minimum=0, maximum=0.9)
    seed = check_int(seed, "seed")
    if threads is not None:
        threads = check_int(threads, "threads", minimum=1)
    targets = _encode_labels(specs, labels, n)
    train_idx, val_idx = split_rows(n, val_fraction, seed, groups)

    # per-attribute statistics on the training rows only
    numeric_targets: dict[str, tuple[float, float]] = {}
    train_counts: dict[str, Any] = {}
    class_weights: dict[str, torch.Tensor] = {}
    for s in specs:
        t = targets[s.name][train_idx]
        if s.kind == "categorical":
            counts = np.bincount(t[t >= 0], minlength=len(s.labels))
            if counts.sum() == 0:
                raise InvalidArgumentError(
                    f"attribute {s.name!r} must have labelled training rows, got none"
                )
            empty = [lab for lab, c in zip(s.labels, counts, strict=True) if c == 0]
            if empty:
                logger.warning("attribute %r: no training rows labelled %s", s.name, empty)
            train_counts[s.name] = {lab: int(c) for lab, c in zip(s.labels, counts, strict=True)}
            w = np.where(counts > 0, counts.sum() / (len(s.labels) * np.maximum(counts, 1)), 0.0)
            class_weights[s.name] = torch.tensor(w, dtype=torch.float32)
        else:
            vals = t[~np.isnan(t)]
            if vals.size < 2 or float(vals.std()) == 0.0:
                raise InvalidArgumentError(
                    f"numeric attribute {s.name!r} must have at least two different training "
                    f"values, got {np.unique(vals).tolist()[:3]}"
                )
            numeric_targets[s.name] = (float(vals.mean()), float(vals.std()))
            train_counts[s.name] = {
                "count": int(vals.size),
                "mean": round(float(vals.mean()), 4),
                "std": round(float(vals.std()), 4),
            }

    config = AttributeHeadConfig(
        encoder_id=encoder_id,
        dim=dim,
        attributes=specs,
        kind="mlp" if hidden else "linear",
        hidden=hidden,
        numeric_targets=numeric_targets,
        name=name,
    )
    dev = torch_device(device)
    x_all = torch.from_numpy(v)
    y_all: dict[str, torch.Tensor] = {}
    for s in specs:
        t = targets[s.name]
        if s.kind == "categorical":
            y_all[s.name] = torch.from_numpy(t)
        else:
            mean, std = numeric_targets[s.name]
            y_all[s.name] = torch.from_numpy(((t - mean) / std).astype(np.float32))

    with torch.random.fork_rng(devices=[]), _torch_threads(threads):
        torch.manual_seed(seed)
        model = config.build_model().to(dev)
        losses = _fit(
            model,
            x_all,
            y_all,
            specs,
            torch.from_numpy(train_idx),
            class_weights if balanced else None,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            seed=seed,
            progress=progress,
        )
    head = AttributeHead(config, model.cpu())

    attrs: dict[str, Any] = {}
    raw = head.predict_arrays(v[val_idx]) if val_idx.size else {}
    for s in specs:
        entry: dict[str, Any] = {"kind": s.kind, "train_counts": train_counts[s.name]}
        if val_idx.size:
            t = targets[s.name][val_idx]
            if s.kind == "categorical":
                pred = raw[s.name].argmax(axis=1)
                entry["validation"] = _categorical_metrics(t, pred, s.labels)
            else:
                entry["validation"] = _numeric_metrics(
                    t, raw[s.name].astype(np.float64), numeric_targets[s.name][0]
                )
        attrs[s.name] = entry
    metrics = {
        "rows": {"train": int(train_idx.size), "validation": int(val_idx.size)},
        "split": "identity" if groups is not None else "row",
        "attributes": attrs,
    }
    if groups is not None:
        metrics["identities"] = {
            "train": len({groups[i] for i in train_idx}),
            "validation": len({groups[i] for i in val_idx}),
        }
    training = {
        "data": data,
        "metrics": metrics,
        "settings": {
            "hidden": hidden,
            "epochs": epochs,
            "lr": lr,
            "weight_decay": weight_decay,
            "batch_size": batch_size,
            "val_fraction": val_fraction,
            "balanced": bool(balanced),
            "seed": seed,
        },
        "loss": {"first_epoch": round(losses[0], 5), "last_epoch": round(losses[-1], 5)},
        **dict(record or {}),
    }
    head.config = dataclasses.replace(config, training=training)
    return AttributeTrainResult(head, metrics, losses)


def summarize_metrics(metrics: Mapping[str, Any], specs: Sequence[AttributeSpec]) -> list[str]:
    """Readable lines of :attr:`AttributeTrainResult.metrics` (one per attribute)."""
    rows = metrics["rows"]
    ids = metrics.get("identities")
    if not rows["validation"]:
        return ["no validation split (val_fraction 0): no metrics"]
    how = (
        f"of {ids['validation']} identities held out"
        if ids
        else "held out at random (an `identity` column keeps each person on one side)"
    )
    lines = [f"validation: {rows['validation']} rows {how}; trained on {rows['train']}"]
    for s in specs:
        val = metrics["attributes"][s.name].get("validation", {})
        if not val.get("count"):
            lines.append(f"  {s.name}: no labelled validation rows")
        elif s.kind == "categorical":
            counts = ", ".join(f"{k} {c}" for k, c in val["counts"].items())
            lines.append(
                f"  {s.name}: accuracy {val['accuracy']:.3f}, balanced accuracy "
                f"{val['balanced_accuracy']:.3f} (majority label {val['majority']:.3f}; {counts})"
            )
        else:
            unit = f" {s.unit}" if s.unit else ""
            lines.append(
                f"  {s.name}: MAE {val['mae']:.3f}{unit} (always the training mean: "
                f"{val['baseline_mae']:.3f}; {val['count']} rows)"
            )
    return lines
