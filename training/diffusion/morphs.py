"""Identity morphs: new training identities made from several different people.

A generator trained on a few dozen people learns those people and little in between: asked
for an identity that is none of them it draws the nearest one (BENCHMARKS.md, ``demo-orl``).
Morphing fills the space between them with photos whose identity vector is measured, not
assumed. Each morph takes one photo of each of ``parents`` different people, brings them onto
a common canvas by their five keypoints, moves each face's 68 landmarks to the weighted mean
shape (a piecewise-affine warp over a Delaunay triangulation of the landmarks and the canvas
border) and blends the warped faces with the same weights (the landmark morph of
face-averaging studies and of morphing-attack datasets). The photos are written as a folder
of pseudo-people, ``morph-00000/morph.png`` …, which the face cache reads like any photo
folder, so each morph's identity vector is the encoder's own measurement of it.

Morphs are new *identity vectors*, not new people: their vectors lie between their parents'
(``morphs.json`` records each morph's parents and weights). A generator's identity bank
leaves them out (labels starting with :data:`MORPH_LABEL_PREFIX`), so the leakage check still
compares sampled identities with the real people only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facegen.errors import InvalidArgumentError, InvalidImageError, NoFaceDetectedError
from facegen.validate import check_int, check_number

if TYPE_CHECKING:
    from facegen.analyzer import FaceAnalyzer
    from facegen.training.diffusion.photo_sources import Images

__all__ = [
    "MORPHS_MANIFEST",
    "MORPH_LABEL_PREFIX",
    "MorphReport",
    "ensure_identity_morphs",
    "is_morph_label",
    "make_identity_morphs",
    "morph_faces",
]

logger = logging.getLogger(__name__)

#: Each morph's folder (its person label) starts with this.
MORPH_LABEL_PREFIX = "morph-"
#: The record of a morph folder: settings, and each morph's parents and weights.
MORPHS_MANIFEST = "morphs.json"


def is_morph_label(label: object) -> bool:
    """Whether a person label names a morph made by :func:`make_identity_morphs`."""
    return str(label).startswith(MORPH_LABEL_PREFIX)


def _border_points(size: int) -> np.ndarray:
    """Eight points on the canvas border (corners and edge midpoints), fixed by every warp so
    that the triangulation covers the whole canvas."""
    e, h = size - 1.0, (size - 1.0) / 2.0
    return np.array(
        [[0, 0], [h, 0], [e, 0], [e, h], [e, e], [h, e], [0, e], [0, h]], dtype=np.float64
    )


def _warp_to(image: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``image`` (uint8) warped so that its points ``src`` land on ``dst``: piecewise affine,
    same size, float in [0, 1]."""
    from skimage.transform import PiecewiseAffineTransform, warp

    # output → input coordinates; scikit-image < 0.26 has only the (since deprecated)
    # in-place estimate, which returns whether it succeeded
    if hasattr(PiecewiseAffineTransform, "from_estimate"):
        tform = PiecewiseAffineTransform.from_estimate(dst, src)
        ok = bool(tform)
    else:
        tform = PiecewiseAffineTransform()
        ok = bool(tform.estimate(dst, src))
    if not ok:
        raise InvalidArgumentError("the landmarks do not triangulate (degenerate face shape)")
    return warp(image.astype(np.float32) / 255.0, tform, order=1, mode="edge")


def morph_faces(
    crops: Sequence[np.ndarray], points: Sequence[np.ndarray], weights: Sequence[float]
) -> np.ndarray:
    """The morph of face crops of one size: each warped to the weighted mean shape
    ``Σ wᵢ·pointsᵢ`` and blended with the same weights.

    ``crops``: RGB uint8 ``(S, S, 3)`` each; ``points``: ``(K, 2)`` landmarks in crop pixels
    for each (one scheme for all, e.g. 68 iBUG points); ``weights``: non-negative, one per
    crop, normalised to sum 1 (``[1, 0]`` gives the first face up to resampling). Returns RGB
    uint8 ``(S, S, 3)``.
    """
    crops = [np.asarray(c) for c in crops]
    if len(crops) < 2 or len(points) != len(crops) or len(weights) != len(crops):
        raise InvalidArgumentError(
            f"a morph takes two or more crops with one landmark set and one weight each, got "
            f"{len(crops)} crops, {len(points)} landmark sets, {len(weights)} weights"
        )
    shape = crops[0].shape
    if len(shape) != 3 or shape[0] != shape[1] or shape[2] != 3:
        raise InvalidArgumentError(f"the crops must be RGB squares, got {shape}")
    if any(c.shape != shape for c in crops):
        raise InvalidArgumentError(f"the crops must share one size, got {[c.shape for c in crops]}")
    pts = [np.asarray(p, np.float64) for p in points]
    k = pts[0].shape
    if len(k) != 2 or k[1] != 2 or k[0] < 3 or any(p.shape != k for p in pts):
        raise InvalidArgumentError(
            f"the landmarks must be (K, 2) arrays of one K >= 3, got {[p.shape for p in pts]}"
        )
    w = np.asarray(weights, np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise InvalidArgumentError(f"`weights` must be non-negative with a positive sum, got {w}")
    w = w / w.sum()
    size = shape[0]
    border = _border_points(size)
    pts = [np.vstack([np.clip(p, 0, size - 1), border]) for p in pts]
    mean = sum(wi * p for wi, p in zip(w, pts))
    out = np.zeros(shape, np.float64)
    for wi, c, p in zip(w, crops, pts):
        if wi > 0:
            out += wi * _warp_to(c, p, mean)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


@dataclass
class _Face:
    source: str
    label: str
    crop: np.ndarray
    points: np.ndarray


@dataclass
class MorphReport:
    """What :func:`make_identity_morphs` did: ``written`` morphs into ``out_dir`` from
    ``people`` people's ``faces`` usable photos; ``skipped``: photos without a readable face
    and its 68 landmarks."""

    out_dir: Path
    written: int
    people: int
    faces: int
    skipped: list[str] = field(default_factory=list)


def _faces(
    images: Images, analyzer: FaceAnalyzer, size: int, margin: float, progress: Any
) -> tuple[list[_Face], list[str]]:
    """Every photo's largest face on the ``size`` canvas, with its 68 landmarks there."""
    from facegen.align import align_face
    from facegen.landmarks import IBUG68
    from facegen.training.diffusion.face_cache_build import _progress_bar
    from facegen.training.diffusion.photo_sources import photo_sources

    faces: list[_Face] = []
    skipped: list[str] = []
    sources = photo_sources(images)
    counts = [s.count() for s in sources]
    total = None if None in counts else sum(c or 0 for c in counts)
    with _progress_bar(total, "finding faces", progress) as bar:
        for source in sources:
            for item in source:
                bar.update(1)
                try:
                    image = item.load()
                    found = analyzer.analyze(image, select="largest", source=item.source)
                except (NoFaceDetectedError, InvalidImageError) as e:
                    logger.debug("%s skipped: %s", item.source, e)
                    found = []
                face = found[0] if found else None
                if face is None or face.landmarks is None or face.landmark_scheme != IBUG68:
                    skipped.append(item.source)
                    continue
                crop = align_face(
                    image, face, size=size, template="ffhq", margin=margin, border="replicate"
                )
                label = item.label if item.label is not None else Path(item.source).parent.name
                if is_morph_label(label):  # never morph morphs
                    skipped.append(item.source)
                    continue
                points = crop.to_crop(face.landmarks[:, :2])
                faces.append(_Face(item.source, str(label), crop.image, points))
    return faces, skipped


def _inputs_fingerprint(images: Images) -> str:
    """The face cache's fingerprint of the photos' files (path, size, mtime): morphs of
    changed photos are made again."""
    from facegen.training.diffusion.face_cache_build import _fingerprint
    from facegen.training.diffusion.photo_sources import photo_sources

    keys = [k for s in photo_sources(images) for k in s.file_keys()]
    return _fingerprint({"kind": "morph-inputs"}, keys, [], None)


def make_identity_morphs(
    images: Images,
    out_dir: str | os.PathLike[str],
    *,
    count: int,
    parents: int = 3,
    concentration: float = 1.0,
    analyzer: FaceAnalyzer | None = None,
    size: int = 128,
    margin: float = 1.2,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool | Callable[..., Any] | None = None,
) -> MorphReport:
    """Write ``count`` morphs, each of ``parents`` different people of ``images``, into
    ``out_dir``.

    ``images``: what :func:`~facegen.training.diffusion.photo_sources.photo_sources` reads (a
    folder of person folders, shards, a dataset); a photo's person is its label (its folder's
    name). ``analyzer``: finds the largest face and its 68 landmarks (default: dlib's detector
    and 68-point predictor, offline). Each morph draws ``parents`` different people uniformly,
    one random photo of each, and weights from a symmetric Dirichlet(``concentration``) (1:
    uniform over the simplex; larger: nearer the plain average). With two parents most morphs
    stay within an encoder's same-person threshold of a parent (a morphing attack); three or
    more reach farther from each. Each morph is a ``size``×``size`` crop around the face (the
    FFHQ square ``margin`` times larger, edges repeated), written as
    ``out_dir/morph-NNNNN/morph.png``; ``out_dir/morphs.json`` lists each one's parents and
    weights. The same inputs and ``seed`` give the same morphs. An ``out_dir`` that already
    holds morphs is refused unless ``overwrite`` (its morph folders are then replaced).
    """
    from PIL import Image

    from facegen.training.diffusion.face_cache_build import _progress_bar

    count = check_int(count, "count", minimum=1)
    parents = check_int(parents, "parents", minimum=2)
    concentration = check_number(concentration, "concentration", minimum=0, min_open=True)
    size = check_int(size, "size", minimum=32, maximum=1024)
    margin = check_number(margin, "margin", minimum=0.5, maximum=3)
    out = Path(out_dir)
    manifest = out / MORPHS_MANIFEST
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(f"{out} exists and is not a folder")
    if manifest.exists() and not overwrite:
        raise InvalidArgumentError(
            f"{out} already holds morphs ({MORPHS_MANIFEST}); choose another folder or overwrite"
        )
    if analyzer is None:
        from facegen.analyzer import FaceAnalyzer

        analyzer = FaceAnalyzer.from_names("dlib", "dlib68", None)
    faces, skipped = _faces(images, analyzer, size, margin, progress)
    by_person: dict[str, list[_Face]] = {}
    for f in faces:
        by_person.setdefault(f.label, []).append(f)
    people = sorted(by_person)
    if len(people) < parents:
        raise InvalidArgumentError(
            f"morphs of {parents} people need photos of at least {parents} people with a face "
            f"and 68 landmarks; found {len(people)} ({len(faces)} faces, {len(skipped)} photos "
            "skipped)"
        )
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{MORPH_LABEL_PREFIX}*"):
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
    rng = np.random.default_rng(seed)
    records = []
    with _progress_bar(count, "morphing", progress) as bar:
        for k in range(count):
            chosen = [people[i] for i in rng.choice(len(people), parents, replace=False)]
            picked = [by_person[p][int(rng.integers(len(by_person[p])))] for p in chosen]
            weights = rng.dirichlet(np.full(parents, concentration))
            image = morph_faces(
                [f.crop for f in picked], [f.points for f in picked], weights.tolist()
            )
            name = f"{MORPH_LABEL_PREFIX}{k:05d}"
            (out / name).mkdir()
            Image.fromarray(image).save(out / name / "morph.png")
            records.append(
                {
                    "label": name,
                    "people": chosen,
                    "parents": [f.source for f in picked],
                    "weights": [round(float(x), 6) for x in weights],
                }
            )
            bar.update(1)
    settings = {
        "count": count,
        "parents": parents,
        "concentration": concentration,
        "size": size,
        "margin": margin,
        "seed": seed,
        "inputs": _inputs_fingerprint(images),
    }
    tmp = manifest.with_name(MORPHS_MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"settings": settings, "morphs": records}, indent=1))
    os.replace(tmp, manifest)
    if skipped:
        logger.warning(
            "%d of %d photos skipped (no face with 68 landmarks)",
            len(skipped),
            len(skipped) + len(faces),
        )
    return MorphReport(out, len(records), len(people), len(faces), skipped)


def ensure_identity_morphs(
    images: Images,
    out_dir: str | os.PathLike[str],
    *,
    count: int,
    parents: int = 3,
    seed: int = 0,
    progress: bool | Callable[..., Any] | None = None,
) -> Path:
    """``out_dir`` holding the morphs :func:`make_identity_morphs` makes with these settings:
    reused when its ``morphs.json`` has them, the same photo files (path, size, mtime) and
    every morph (a resumed run), made afresh otherwise. Returns ``out_dir``."""
    out = Path(out_dir)
    manifest = out / MORPHS_MANIFEST
    try:
        record = json.loads(manifest.read_text())
        settings = record["settings"]
        complete = all((out / m["label"] / "morph.png").is_file() for m in record["morphs"])
    except (OSError, ValueError, KeyError, TypeError):
        settings, complete = None, False
    want = {"count": count, "parents": parents, "seed": seed}
    if complete and settings:
        want["inputs"] = _inputs_fingerprint(images)
    if complete and settings and all(settings.get(k) == v for k, v in want.items()):
        logger.info("reusing the %d identity morphs in %s", count, out)
        return out
    make_identity_morphs(
        images, out, count=count, parents=parents, seed=seed, overwrite=True, progress=progress
    )
    return out
