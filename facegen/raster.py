"""Aliased drawing of convex shapes at sub-pixel precision, for the conditioning maps.

Every shape is a convex polygon filled by ``cv2.fillConvexPoly`` with 1/16-px fixed-point
coordinates and inset by half a pixel (:data:`INSET`), so that its lit area equals its true
area at every canvas size (cv2 lights every pixel the rounded outline touches). Drawing is
aliased: every lit pixel has exactly the given colour. Shapes are clipped to a margin around
the canvas first, so points far off it (or huge) never reach cv2's integer limits.

Canvases are ``uint8`` or ``float64`` ``(S, S, 3)`` (square), points float ``(x, y)`` pixels.
Used by :mod:`facegen.control`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

__all__ = [
    "INSET",
    "clip_convex",
    "clip_segment",
    "disc",
    "dot",
    "ellipse_polygon",
    "fill_convex",
    "line",
]

_SHIFT = 4  # fractional bits of cv2's fixed-point coordinates (1/16 px)
_ONE = 1 << _SHIFT
#: cv2's polygon fill lights every pixel the rounded outline touches (~0.5 px extra all round),
#: so every shape is inset by half a pixel: lit areas then match true areas at every size.
INSET = 0.5


def disc(centre: np.ndarray, radius: float) -> np.ndarray:
    """A circle of ``radius`` px about ``centre`` as a float64 ``(N, 2)`` polygon (16–360 sides)."""
    n = 16 if radius < 4 else min(360, int(8 * radius))
    t = np.arange(n) * (2 * math.pi / n)
    return np.stack([centre[0] + radius * np.cos(t), centre[1] + radius * np.sin(t)], axis=1)


def dot(canvas: np.ndarray, p: np.ndarray, radius: float, colour: Sequence[int]) -> None:
    """A filled disc of ``radius`` px at ``p`` (nothing when it lies wholly off the canvas)."""
    s = canvas.shape[0]
    if not (-radius - 2 <= p[0] <= s + radius + 1 and -radius - 2 <= p[1] <= s + radius + 1):
        return  # wholly off the canvas
    fill_convex(canvas, disc(p, max(radius - INSET, 0.0)), colour)


def clip_segment(a: np.ndarray, b: np.ndarray, lo: float, hi: float) -> tuple | None:
    """Liang–Barsky: the part of segment a→b inside the square [lo, hi]², or None."""
    d = b - a
    t0, t1 = 0.0, 1.0
    for p, q in ((-d[0], a[0] - lo), (d[0], hi - a[0]), (-d[1], a[1] - lo), (d[1], hi - a[1])):
        if p == 0:
            if q < 0:
                return None
        else:
            t = q / p
            if p < 0:
                t0 = max(t0, t)
            else:
                t1 = min(t1, t)
    if t0 > t1:
        return None
    return a + t0 * d, a + t1 * d


def line(
    canvas: np.ndarray, a: np.ndarray, b: np.ndarray, width: float, colour: Sequence[int]
) -> None:
    """A band of ``width`` px around segment a–b with round caps (1/16-px precision)."""
    margin = width + 2.0
    seg = clip_segment(a, b, -margin, canvas.shape[0] + margin)
    if seg is None:
        return
    p, q = seg
    d = q - p
    length = float(np.hypot(*d))
    if length > 1e-6:
        n = np.array([-d[1], d[0]]) * (max(width / 2 - INSET, 0.0) / length)
        fill_convex(canvas, np.array([p + n, q + n, q - n, p - n]), colour)
    for end in (p, q):
        dot(canvas, end, width / 2, colour)


def clip_convex(poly: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Sutherland–Hodgman clip of a convex polygon ``(N, 2)`` to the square [lo, hi]²."""
    if poly.min() >= lo and poly.max() <= hi:
        return poly
    for axis, bound, keep_below in ((0, lo, False), (0, hi, True), (1, lo, False), (1, hi, True)):
        if len(poly) == 0:
            break
        inside = poly[:, axis] <= bound if keep_below else poly[:, axis] >= bound
        out = []
        for i in range(len(poly)):
            cur, nxt = poly[i], poly[(i + 1) % len(poly)]
            cin, nin = inside[i], inside[(i + 1) % len(poly)]
            if cin:
                out.append(cur)
            if cin != nin:
                t = (bound - cur[axis]) / (nxt[axis] - cur[axis])
                out.append(cur + t * (nxt - cur))
        poly = np.array(out).reshape(-1, 2)
    return poly


def fill_convex(canvas: np.ndarray, poly: np.ndarray, colour: Sequence[int]) -> None:
    """Fill the convex polygon ``poly`` ``(N, 2)`` (clipped to the canvas) in ``colour``."""
    poly = clip_convex(poly, -2.0, canvas.shape[0] + 2.0)
    if len(poly) >= 3:
        pts = np.round(poly * _ONE).astype(np.int32)
        cv2.fillConvexPoly(canvas, pts, tuple(colour), cv2.LINE_8, _SHIFT)


def ellipse_polygon(a: np.ndarray, b: np.ndarray, half_width: float) -> np.ndarray:
    """Ellipse over segment a–b: semi-axes (|ab|/2, half_width), 1° vertex steps."""
    centre = (a + b) / 2
    d = b - a
    angle = math.atan2(d[1], d[0])
    t = np.deg2rad(np.arange(360.0))
    ex = max(np.hypot(*d) / 2 - INSET, 0.0) * np.cos(t)
    ey = max(half_width - INSET, 0.0) * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([centre[0] + ex * c - ey * s, centre[1] + ex * s + ey * c], axis=1)
