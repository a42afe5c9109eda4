"""Face masks for editing and privacy: where an edit may change pixels, and how to blend it.

A mask is float32 ``(H, W)`` in [0, 1]: 1 where the edit replaces the image, 0 where the
image must stay as it was, values between on a feathered edge. It is drawn from one
:class:`~facegen.types.Face`:

1. **Region** (:func:`face_region`). With 68 iBUG landmarks: the jaw line (points 0–16)
   and the eyebrows (17–26), plus a forehead extension: every brow point is copied
   ``forehead`` × face height further "up" (an arc: the full amount over the brow centre,
   60% at the outer ends). "Up" runs from the mouth centre to the eye centre, so rolled
   faces get a rolled mask; face height is the region's extent along that axis (brows to
   chin). Without 68 landmarks the region is the ``bbox`` corners, the ``kps5`` points and
   any other landmarks, with the two top corners raised by ``forehead`` × box height (up
   from the ``kps5`` eyes/mouth). The region's convex hull is what the shapes are fitted to.
2. **Shape**: ``"hull"`` (that hull), ``"ellipse"`` (the smallest ellipse with the hull's
   aspect, aligned with the face axes, that contains the whole hull) or ``"box"`` (the
   hull's bounding rectangle along the face axes; axis-aligned for an upright face).
3. **Dilation** (``dilate``) grows the shape outward; **feather** adds a Gaussian falloff
   *outside* it: at distance ``t`` beyond the dilated shape the mask is
   ``(exp(-t²/2σ²) - e^-4.5) / (1 - e^-4.5)``, reaching exactly 0 at ``t = 3σ``. The
   dilated shape itself is always exactly 1, so feathering never lets the original show
   through inside it. Both are a fraction of the face size (a number) or pixels (a string
   such as ``"12px"``). Face size (:attr:`FaceRegion.scale`) is the geometric mean of the
   region's width and height along the face axes, before the forehead extension.

Coordinates are image pixels with integer values at pixel centres (OpenCV's convention).
``matrix`` (a ``(2, 3)`` affine, e.g. :attr:`facegen.types.AlignedFace.matrix`) draws the
mask in another frame: the face's points are mapped through it first, so dilation and
feather in pixels are pixels of that frame. Faces partly or wholly outside the canvas are
clipped (a face just outside still reaches in through its dilation and feather).

:func:`blend` composites an edit through a mask, leaving every pixel where the mask is 0
byte-identical; :func:`match_color` matches an edit's colour statistics to the original's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from facegen.landmarks import IBUG68
from facegen.types import Face, transform_points
from facegen.validate import check_number

__all__ = [
    "COLOR_SPACES",
    "MASK_SHAPES",
    "FaceRegion",
    "Length",
    "MaskSpec",
    "blend",
    "face_mask",
    "face_region",
    "faces_mask",
    "match_color",
    "parse_length",
    "region_mask",
]

MASK_SHAPES = ("hull", "ellipse", "box")
COLOR_SPACES = ("lab", "rgb")

#: A length: a number is a fraction of the face size, a string ``"<number>px"`` is pixels.
Length = float | str

_ELLIPSE_VERTICES = 96
#: The Gaussian falloff is cut at 3σ; this is its value there (subtracted so it ends at 0).
_TAIL = math.exp(-4.5)
#: Sub-pixel bits for ``cv2.fillConvexPoly`` (1/16 pixel).
_SHIFT = 4
_MAX_FOREHEAD = 2  # an int, so messages say [0, 2]
_GAIN_LIMITS = (0.25, 4.0)


def parse_length(value: Length, name: str) -> tuple[float, str]:
    """Parse a length option into ``(amount, unit)`` with unit ``"face"`` or ``"px"``.

    A finite number >= 0 is a fraction of the face size; a string ``"<number>px"`` (e.g.
    ``"12px"``, ``"2.5 px"``) is pixels. Anything else raises ``ValueError`` naming ``name``.
    """
    want = f"`{name}` must be a number >= 0 (a fraction of the face size) or a string like '12px'"
    if isinstance(value, bool):
        raise ValueError(f"{want}, got {value!r}")
    if isinstance(value, (int, float, np.integer, np.floating)):
        amount, unit = float(value), "face"
    elif isinstance(value, str) and value.strip().lower().endswith("px"):
        try:
            amount, unit = float(value.strip()[:-2]), "px"
        except ValueError:
            raise ValueError(f"{want}, got {value!r}") from None
    else:
        raise ValueError(f"{want}, got {value!r}")
    if not (math.isfinite(amount) and amount >= 0):
        raise ValueError(f"{want}, got {value!r}")
    return amount, unit


def _to_pixels(value: Length, name: str, scale: float) -> float:
    amount, unit = parse_length(value, name)
    return amount if unit == "px" else amount * scale


@dataclass(frozen=True)
class MaskSpec:
    """How to draw a face mask (see the module doc).

    ``shape``: one of :data:`MASK_SHAPES`. ``forehead``: extension above the brows as a
    fraction of face height, in [0, 2]. ``dilate`` / ``feather``: :data:`Length` values
    (fraction of face size, or ``"Npx"``); ``feather`` is the σ of the outward Gaussian
    falloff.
    """

    shape: str = "hull"
    forehead: float = 0.3
    dilate: Length = 0.0
    feather: Length = 0.0

    def __post_init__(self) -> None:
        if self.shape not in MASK_SHAPES:
            raise ValueError(f"`shape` must be one of {', '.join(MASK_SHAPES)}, got {self.shape!r}")
        check_number(self.forehead, "forehead", minimum=0, maximum=_MAX_FOREHEAD)
        parse_length(self.dilate, "dilate")
        parse_length(self.feather, "feather")

    def dilate_px(self, scale: float) -> float:
        """The dilation in pixels for a face of size ``scale`` pixels."""
        return _to_pixels(self.dilate, "dilate", scale)

    def feather_px(self, scale: float) -> float:
        """The feather σ in pixels for a face of size ``scale`` pixels."""
        return _to_pixels(self.feather, "feather", scale)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (numbers as floats, pixel lengths as their strings)."""
        return {
            "shape": self.shape,
            "forehead": float(self.forehead),
            "dilate": self.dilate if isinstance(self.dilate, str) else float(self.dilate),
            "feather": self.feather if isinstance(self.feather, str) else float(self.feather),
        }


@dataclass(frozen=True, eq=False)
class FaceRegion:
    """A face's geometry in the frame a mask is drawn in.

    ``hull``: float64 ``(N, 2)`` convex hull of the face points including the forehead
    extension. ``up``: float64 ``(2,)``
    unit vector from chin towards forehead; ``right`` is ``up`` turned 90° clockwise on
    screen (image-right for an upright face). ``scale``: face size in pixels (see module
    doc), >= 1. ``source``: ``"ibug68"`` when drawn from 68 landmarks, else ``"bbox"``.
    """

    hull: np.ndarray
    up: np.ndarray
    scale: float
    source: str

    @property
    def right(self) -> np.ndarray:
        return np.array([-self.up[1], self.up[0]])

    def _frame_extent(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hull coordinates along (right, up) and their ``[min, max]`` ranges."""
        u = self.hull @ self.right
        v = self.hull @ self.up
        return np.stack([u, v], 1), np.array([u.min(), u.max()]), np.array([v.min(), v.max()])

    def polygon(self, shape: str = "hull") -> np.ndarray:
        """The mask outline for ``shape`` (before dilation): float64 ``(N, 2)``, convex."""
        if shape == "hull":
            return self.hull.copy()
        uv, ur, vr = self._frame_extent()
        if shape == "box":
            corners_uv = [(ur[0], vr[0]), (ur[1], vr[0]), (ur[1], vr[1]), (ur[0], vr[1])]
            return np.array([u * self.right + v * self.up for u, v in corners_uv])
        if shape == "ellipse":
            centre = np.array([ur.mean(), vr.mean()])
            half = np.maximum(np.array([ur[1] - ur[0], vr[1] - vr[0]]) / 2.0, 0.5)
            # grow the extent's inscribed ellipse until every hull point is inside it
            reach = float(np.sqrt((((uv - centre) / half) ** 2).sum(1)).max())
            half = half * max(reach, 1.0) / math.cos(math.pi / _ELLIPSE_VERTICES)
            t = np.linspace(0.0, 2.0 * math.pi, _ELLIPSE_VERTICES, endpoint=False)
            u = centre[0] + half[0] * np.cos(t)
            v = centre[1] + half[1] * np.sin(t)
            return u[:, None] * self.right + v[:, None] * self.up
        raise ValueError(f"`shape` must be one of {', '.join(MASK_SHAPES)}, got {shape!r}")


def _unit(vec: np.ndarray) -> np.ndarray | None:
    n = float(np.hypot(*vec))
    return vec / n if n > 1e-6 else None


def _ibug68(face: Face) -> np.ndarray | None:
    lm = face.landmarks
    if lm is not None and face.landmark_scheme == IBUG68 and lm.shape[0] == 68:
        return lm[:, :2].astype(np.float64)
    return None


def face_region(
    face: Face, *, forehead: float = 0.3, matrix: np.ndarray | None = None
) -> FaceRegion:
    """The geometry of ``face`` (see the module doc), optionally mapped through ``matrix``.

    ``matrix``: float ``(2, 3)`` affine from image pixels to the target frame (``None`` =
    image pixels). ``forehead``: fraction of face height added above the brows, in [0, 2].
    """
    MaskSpec(forehead=forehead)  # validates `forehead`
    m = None
    if matrix is not None:
        m = np.asarray(matrix, np.float64)
        if m.shape != (2, 3) or not np.all(np.isfinite(m)):
            raise ValueError(f"`matrix` must be a finite (2, 3) affine matrix, got {m.shape}")

    def to_frame(points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        return pts if m is None else transform_points(pts, m).astype(np.float64)

    default_up = np.array([0.0, -1.0]) if m is None else m[:, :2] @ np.array([0.0, -1.0])
    lm68 = _ibug68(face)
    if lm68 is not None:
        pts = to_frame(lm68)
        core = np.concatenate([pts[0:17], pts[17:27]])
        top = np.arange(17, 27)
        up = _unit(pts[36:48].mean(0) - pts[48:68].mean(0))
        source = IBUG68
    else:
        x1, y1, x2, y2 = (float(v) for v in face.bbox)
        box = to_frame(np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]))
        kps = to_frame(face.kps5)
        extra = [to_frame(face.landmarks[:, :2])] if face.landmarks is not None else []
        core = np.concatenate([box, kps, *extra])
        top = np.arange(0, 2)
        up = _unit(kps[0:2].mean(0) - kps[3:5].mean(0))
        source = "bbox"
    if up is None:
        up = _unit(default_up)
    if up is None:  # a singular matrix: the whole face maps onto a point or a line
        up = np.array([0.0, -1.0])
    right = np.array([-up[1], up[0]])
    u, v = core @ right, core @ up
    width, height = float(np.ptp(u)), float(np.ptp(v))
    scale = math.sqrt(width * height)
    if scale < 1.0:  # a degenerate (flat) face: fall back to its longer side
        scale = max(width, height, 1.0)
    raised = core[top]
    if forehead > 0 and source == IBUG68:
        mid, half = (u[top].max() + u[top].min()) / 2, max(np.ptp(u[top]) / 2, 1e-6)
        t = (u[top] - mid) / half
        lift = forehead * height * np.sqrt(np.clip(1.0 - (0.8 * t) ** 2, 0.0, 1.0))
        raised = raised + lift[:, None] * up
    elif forehead > 0:
        raised = raised + forehead * height * up
    allpts = np.concatenate([core, raised]).astype(np.float32)
    hull = cv2.convexHull(allpts).reshape(-1, 2).astype(np.float64)
    return FaceRegion(hull=hull, up=up, scale=scale, source=source)


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
        ok = all(not isinstance(s, bool) and float(s) == int(s) and int(s) > 0 for s in size) and (
            h * w <= 1 << 31
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"`size` must be (H, W) with positive integers (e.g. image.shape[:2]), got {size!r}"
        )
    return h, w


def _clip_polygon(poly: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Sutherland–Hodgman: the part of convex ``poly`` inside ``[x0, x1] × [y0, y1]``."""
    out = np.asarray(poly, np.float64)
    for axis, bound, keep_below in ((0, x0, False), (0, x1, True), (1, y0, False), (1, y1, True)):
        if len(out) == 0:
            break
        inside = out[:, axis] <= bound if keep_below else out[:, axis] >= bound
        nxt = np.roll(out, -1, axis=0)
        nxt_in = np.roll(inside, -1)
        pts: list[np.ndarray] = []
        for p, q, pin, qin in zip(out, nxt, inside, nxt_in):
            if pin:
                pts.append(p)
            if pin != qin:
                t = (bound - p[axis]) / (q[axis] - p[axis])
                pts.append(p + t * (q - p))
        out = np.array(pts).reshape(-1, 2)
    return out


def _render(polygon: np.ndarray, size: tuple[int, int], dilate: float, sigma: float) -> np.ndarray:
    h, w = size
    mask = np.zeros((h, w), np.float32)
    reach = dilate + 3.0 * sigma
    pad = math.ceil(reach) + 2
    lo, hi = polygon.min(0), polygon.max(0)
    # canvas: the polygon's box grown by the reach, within the image grown by the reach
    cx0 = max(math.floor(lo[0]) - pad, -pad)
    cy0 = max(math.floor(lo[1]) - pad, -pad)
    cx1 = min(math.ceil(hi[0]) + pad + 1, w + pad)
    cy1 = min(math.ceil(hi[1]) + pad + 1, h + pad)
    if cx1 <= max(cx0, 0) or cy1 <= max(cy0, 0) or cx0 >= w or cy0 >= h:
        return mask
    clipped = _clip_polygon(polygon, cx0 - 1, cy0 - 1, cx1, cy1)
    if len(clipped) == 0:
        return mask
    canvas = np.zeros((cy1 - cy0, cx1 - cx0), np.uint8)
    pts = np.round((clipped - [cx0, cy0]) * (1 << _SHIFT)).astype(np.int32)
    cv2.fillConvexPoly(canvas, pts, 255, lineType=cv2.LINE_8, shift=_SHIFT)
    if not canvas.any():  # thinner than a pixel: draw its outline instead
        cv2.polylines(canvas, [pts], True, 255, lineType=cv2.LINE_8, shift=_SHIFT)
    if reach <= 0:
        local = (canvas > 0).astype(np.float32)
    else:
        dist = cv2.distanceTransform(
            (canvas == 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
        )
        local = (dist <= dilate).astype(np.float32)
        if sigma > 0:
            t = dist - dilate
            ring = (t > 0) & (t < 3.0 * sigma)
            fall = (np.exp(-(t[ring] ** 2) / (2.0 * sigma**2)) - _TAIL) / (1.0 - _TAIL)
            local[ring] = np.clip(fall, 0.0, 1.0)
    ix0, iy0, ix1, iy1 = max(cx0, 0), max(cy0, 0), min(cx1, w), min(cy1, h)
    mask[iy0:iy1, ix0:ix1] = local[iy0 - cy0 : iy1 - cy0, ix0 - cx0 : ix1 - cx0]
    return mask


def region_mask(
    region: FaceRegion, size: Sequence[int], spec: MaskSpec | None = None
) -> np.ndarray:
    """Draw ``region`` as a float32 ``(H, W)`` mask in [0, 1]; ``size`` is ``(H, W)``.

    ``spec.forehead`` is not used here (it shaped ``region`` already, see :func:`face_region`).
    """
    hw = _check_size(size)
    spec = spec or MaskSpec()
    poly = region.polygon(spec.shape)
    return _render(poly, hw, spec.dilate_px(region.scale), spec.feather_px(region.scale))


def face_mask(
    face: Face,
    size: Sequence[int],
    spec: MaskSpec | None = None,
    *,
    matrix: np.ndarray | None = None,
) -> np.ndarray:
    """The edit mask of one face: float32 ``(H, W)`` in [0, 1] (see the module doc).

    ``size``: ``(H, W)`` of the frame (``image.shape[:2]``, or the aligned crop's size with
    ``matrix``). ``matrix``: float ``(2, 3)`` affine from image pixels to that frame.
    """
    spec = spec or MaskSpec()
    region = face_region(face, forehead=spec.forehead, matrix=matrix)
    return region_mask(region, size, spec)


def faces_mask(
    faces: Sequence[Face],
    size: Sequence[int],
    spec: MaskSpec | None = None,
    *,
    matrix: np.ndarray | None = None,
) -> np.ndarray:
    """The union (pixel-wise maximum) of the masks of ``faces``: float32 ``(H, W)`` in [0, 1].

    No faces give an all-zero mask.
    """
    hw = _check_size(size)
    out = np.zeros(hw, np.float32)
    for face in faces:
        np.maximum(out, face_mask(face, hw, spec, matrix=matrix), out=out)
    return out


def _check_rgb(image: Any, name: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(
            f"`{name}` must be an RGB uint8 (H, W, 3) array, got {arr.dtype} {arr.shape}"
        )
    return arr


def _check_mask(mask: Any, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2 or m.shape != shape:
        raise ValueError(f"`{name}` must have shape {shape} (the image's H, W), got {m.shape}")
    if m.dtype == bool:
        return m.astype(np.float32)
    if not np.issubdtype(m.dtype, np.floating):
        raise ValueError(f"`{name}` must be a float or bool array in [0, 1], got dtype {m.dtype}")
    m = m.astype(np.float32, copy=False)
    if m.size and not (np.all(np.isfinite(m)) and m.min() >= 0.0 and m.max() <= 1.0):
        raise ValueError(
            f"`{name}` must hold finite values in [0, 1], got range "
            f"[{np.nanmin(m) if np.isfinite(m).any() else 'nan'}, "
            f"{np.nanmax(m) if np.isfinite(m).any() else 'nan'}]"
        )
    return m


def blend(original: np.ndarray, edited: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Composite ``edited`` over ``original`` through ``mask``.

    ``original``, ``edited``: RGB uint8 ``(H, W, 3)``. ``mask``: float ``(H, W)`` in [0, 1]
    (or bool). Returns a new RGB uint8 ``(H, W, 3)``: ``round(o·(1-m) + e·m)`` where
    ``m > 0``, and ``original``'s bytes unchanged wherever ``m == 0`` (also where ``m == 1``
    the result is exactly ``edited``).
    """
    orig = _check_rgb(original, "original")
    edit = _check_rgb(edited, "edited")
    if edit.shape != orig.shape:
        raise ValueError(
            f"`edited` must have the shape of `original` {orig.shape}, got {edit.shape}"
        )
    m = _check_mask(mask, orig.shape[:2])
    out = orig.copy()
    rows = np.flatnonzero(m.any(axis=1))
    if len(rows) == 0:
        return out
    cols = np.flatnonzero(m.any(axis=0))
    ys, xs = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    mm = m[ys, xs, None]
    o = orig[ys, xs].astype(np.float32)
    mixed = o + (edit[ys, xs].astype(np.float32) - o) * mm
    mixed = np.clip(np.round(mixed), 0, 255).astype(np.uint8)
    out[ys, xs] = np.where(mm > 0, mixed, orig[ys, xs])
    return out


def _to_space(image: np.ndarray, space: str) -> np.ndarray:
    f = image.astype(np.float32) / 255.0
    return cv2.cvtColor(f, cv2.COLOR_RGB2LAB) if space == "lab" else f


def _from_space(values: np.ndarray, space: str) -> np.ndarray:
    rgb = cv2.cvtColor(values.astype(np.float32), cv2.COLOR_LAB2RGB) if space == "lab" else values
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def _weighted_stats(values: np.ndarray, weights: np.ndarray, name: str) -> tuple[np.ndarray, ...]:
    total = float(weights.sum())
    if total <= 0:
        raise ValueError(f"`{name}` must select at least one pixel, got an all-zero mask")
    w = weights[..., None]
    mean = (values * w).sum((0, 1)) / total
    std = np.sqrt((((values - mean) ** 2) * w).sum((0, 1)) / total)
    return mean, std


def match_color(
    image: np.ndarray,
    reference: np.ndarray,
    mask: np.ndarray,
    *,
    reference_mask: np.ndarray | None = None,
    space: str = "lab",
) -> np.ndarray:
    """Shift ``image``'s colours so their per-channel mean/std inside ``mask`` match ``reference``.

    ``image``, ``reference``: RGB uint8 ``(H, W, 3)`` (may differ in size when
    ``reference_mask`` is given). ``mask``: float ``(H, W)`` in [0, 1], the weights of
    ``image``'s pixels; ``reference_mask`` (default ``mask``) weights ``reference``'s.
    ``space``: ``"lab"`` (CIELAB, the default) or ``"rgb"``. Each channel becomes
    ``(x - mean_i) · gain + mean_r`` with ``gain = std_r / std_i`` limited to [0.25, 4]
    (1 when ``std_i`` is ~0). The whole image is transformed; composite the result with
    :func:`blend` to restrict it to the mask. Returns RGB uint8 of ``image``'s shape.
    """
    img = _check_rgb(image, "image")
    ref = _check_rgb(reference, "reference")
    if space not in COLOR_SPACES:
        raise ValueError(f"`space` must be one of {', '.join(COLOR_SPACES)}, got {space!r}")
    m = _check_mask(mask, img.shape[:2])
    if reference_mask is None:
        if ref.shape != img.shape:
            raise ValueError(
                f"`reference` must have the shape of `image` {img.shape} unless `reference_mask` "
                f"is given, got {ref.shape}"
            )
        rm = m
    else:
        rm = _check_mask(reference_mask, ref.shape[:2], "reference_mask")
    vi, vr = _to_space(img, space), _to_space(ref, space)
    mean_i, std_i = _weighted_stats(vi, m, "mask")
    mean_r, std_r = _weighted_stats(
        vr, rm, "reference_mask" if reference_mask is not None else "mask"
    )
    gain = np.where(std_i > 1e-4, std_r / np.maximum(std_i, 1e-4), 1.0)
    gain = np.clip(gain, *_GAIN_LIMITS)
    return _from_space((vi - mean_i) * gain + mean_r, space)
