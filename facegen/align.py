"""Face alignment: similarity warps onto canonical templates, and pasting edits back.

* ``arcface``: the 5-point ArcFace template (112×112 reference). Other sizes are scaled the
  way insightface's ``norm_crop`` scales it: multiples of 112 scale by ``size/112``; other
  multiples of 128 scale by ``size/128`` and shift right by ``8·size/128`` (so 128, 512 and
  1024 crops match insightface/Arc2Face); any other size scales by ``size/112``.
* ``ffhq``: the FFHQ-style oriented square from the eyes and mouth, with a ``margin``
  multiplier (1.0 = the FFHQ crop, larger = more context).

Encoders may have their own crop (dlib's 150×150 chip, template ``"dlib"``, made by
``DlibEncoder.align``); every :class:`AlignedFace` carries its matrix either way.
"""

from __future__ import annotations

import cv2
import numpy as np

from facegen.types import AlignedFace, Face
from facegen.validate import check_number

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "TEMPLATES",
    "align_face",
    "arcface_template",
    "estimate_similarity",
    "feather_mask",
    "ffhq_quad",
    "paste_back",
]

#: ArcFace's 5-point reference in a 112×112 crop (eyes, nose tip, mouth corners).
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

TEMPLATES = ("arcface", "ffhq")


def arcface_template(size: int) -> np.ndarray:
    """The ArcFace template for a ``size``×``size`` crop, float64 ``(5, 2)``."""
    if size < 16:
        raise ValueError(f"`size` must be >= 16, got {size}")
    if size % 112 != 0 and size % 128 == 0:
        ratio, shift = size / 128.0, 8.0 * size / 128.0
    else:
        ratio, shift = size / 112.0, 0.0
    dst = ARCFACE_TEMPLATE_112 * ratio
    dst[:, 0] += shift
    return dst


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking ``src`` to ``dst``.

    Umeyama's closed form; ``src``/``dst`` are ``(N, 2)``; returns float64 ``(2, 3)``.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"`src` and `dst` must both be (N>=2, 2), got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    cov = d_c.T @ s_c / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1.0
    rot = u @ np.diag(d) @ vt
    var_s = (s_c**2).sum() / len(src)
    if var_s <= 0:
        raise ValueError("`src` points must not all coincide")
    scale = float((sig * d).sum() / var_s)
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def ffhq_quad(kps5: np.ndarray, margin: float = 1.0) -> np.ndarray:
    """FFHQ-style oriented crop square from 5 points: ``(4, 2)`` corners TL, BL, BR, TR."""
    k = np.asarray(kps5, np.float64)
    eye_l, eye_r = k[0], k[1]
    mouth = (k[3] + k[4]) / 2
    eye_avg = (eye_l + eye_r) / 2
    eye_to_eye = eye_r - eye_l
    eye_to_mouth = mouth - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8) * margin
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def _invert(m: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(m, np.float64))


def align_face(
    image: np.ndarray,
    face: Face | np.ndarray,
    *,
    size: int = 112,
    template: str = "arcface",
    margin: float = 1.0,
    border_value: int = 0,
) -> AlignedFace:
    """Warp the face onto ``template`` at ``size``×``size``.

    ``face`` is a :class:`Face` or its ``(5, 2)`` ArcFace-order keypoints. ``image`` is RGB
    uint8 ``(H, W, 3)``. With ``template="arcface"`` and ``size=112`` the crop equals
    insightface's ``norm_crop`` (bilinear, black border).
    """
    kps = face.kps5 if isinstance(face, Face) else np.asarray(face, np.float64)
    if kps.shape != (5, 2):
        raise ValueError(f"`kps5` must have shape (5, 2), got {kps.shape}")
    if size < 16 or size > 4096:
        raise ValueError(f"`size` must be in [16, 4096], got {size}")
    if template == "arcface":
        m = estimate_similarity(kps, arcface_template(size))
    elif template == "ffhq":
        margin = check_number(margin, "margin", minimum=0, min_open=True)
        quad = ffhq_quad(kps, margin)
        m = cv2.getAffineTransform(
            quad[:3].astype(np.float32),
            np.array([[0, 0], [0, size], [size, size]], np.float32),
        ).astype(np.float64)
    else:
        raise ValueError(f"`template` must be one of {', '.join(TEMPLATES)}, got {template!r}")
    crop = cv2.warpAffine(
        np.ascontiguousarray(image),
        m,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(border_value,) * 3,
    )
    return AlignedFace(crop, m, _invert(m), template, size, tuple(image.shape[:2]))


def feather_mask(size: int, feather: float = 0.1) -> np.ndarray:
    """A float32 ``(size, size)`` mask, 1 inside and fading to 0 over ``feather``·size at the edge."""
    if not 0.0 <= feather < 0.5:
        raise ValueError(f"`feather` must be in [0, 0.5), got {feather}")
    if feather == 0:
        return np.ones((size, size), np.float32)
    ramp = np.clip(np.minimum(np.arange(size), np.arange(size)[::-1]) / (feather * size), 0, 1)
    ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep
    return np.outer(ramp, ramp).astype(np.float32)


def paste_back(
    image: np.ndarray,
    aligned: AlignedFace,
    new_crop: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    feather: float = 0.1,
) -> np.ndarray:
    """Paste an edited crop back into ``image`` through ``aligned``'s inverse transform.

    ``new_crop``: RGB uint8 ``(S, S, 3)`` (any ``S``; it is mapped onto the crop grid).
    ``mask``: optional float ``(S, S)`` in [0, 1] in crop space (e.g. a face-parsing mask);
    by default a feathered square. Returns a new RGB uint8 image of ``image``'s shape.
    """
    img = np.asarray(image)
    crop = np.asarray(new_crop)
    if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
        raise ValueError(f"`new_crop` must be uint8 (S, S, 3), got {crop.dtype} {crop.shape}")
    s = aligned.size
    if crop.shape[:2] != (s, s):
        crop = cv2.resize(
            crop, (s, s), interpolation=cv2.INTER_AREA if crop.shape[0] > s else cv2.INTER_CUBIC
        )
    if mask is None:
        m = feather_mask(s, feather)
    else:
        m = np.asarray(mask, np.float32)
        if m.ndim != 2:
            raise ValueError(f"`mask` must be 2-D (S, S), got shape {m.shape}")
        if m.shape != (s, s):
            m = cv2.resize(m, (s, s), interpolation=cv2.INTER_LINEAR)
        m = np.clip(m, 0.0, 1.0)
    h, w = img.shape[:2]
    warped = cv2.warpAffine(crop, aligned.inverse, (w, h), flags=cv2.INTER_LINEAR)
    wmask = cv2.warpAffine(m, aligned.inverse, (w, h), flags=cv2.INTER_LINEAR)[..., None]
    out = img.astype(np.float32) * (1 - wmask) + warped.astype(np.float32) * wmask
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
