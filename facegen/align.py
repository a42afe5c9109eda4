"""Face alignment: similarity warps onto canonical templates, and pasting edits back.

* ``arcface``: the 5-point ArcFace template (112×112 reference). Other sizes are scaled the
  way insightface's ``norm_crop`` scales it: multiples of 112 scale by ``size/112``; other
  multiples of 128 scale by ``size/128`` and shift right by ``8·size/128`` (so 128, 512 and
  1024 crops match insightface/Arc2Face); any other size scales by ``size/112``.
* ``ffhq``: the FFHQ-style oriented square from the eyes and mouth, with a ``margin``
  multiplier (1.0 = the FFHQ crop, larger = more context).
* Named 5-point templates (:data:`POINT_TEMPLATES`, normalised to a unit square, scaled by
  the crop size): the crops published face models were trained on — ``arcface_112_v1``
  (SimSwap, GHOST), ``arcface_112_v2`` (= ``arcface`` at 112), ``arcface_128`` (inswapper,
  = ``arcface`` at 128), ``ffhq_512`` (GFPGAN, CodeFormer: facexlib's 512 face template),
  ``mtcnn_512``. The fit is the least-squares similarity (Umeyama) of the five points.

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
    "POINT_TEMPLATES",
    "TEMPLATES",
    "align_face",
    "arcface_template",
    "estimate_similarity",
    "feather_mask",
    "ffhq_quad",
    "paste_area",
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

#: Named 5-point templates in unit coordinates (x, y; left eye, right eye, nose, left and
#: right mouth corner), as the face-swap and restoration models' own code declares them.
POINT_TEMPLATES: dict[str, np.ndarray] = {
    name: np.array(points, np.float64).reshape(5, 2)
    for name, points in {
        "arcface_112_v1": [0.35473214, 0.45658929, 0.64526786, 0.45658929, 0.50000000,
                           0.61154464, 0.37913393, 0.77687500, 0.62086607, 0.77687500],
        "arcface_112_v2": [0.34191607, 0.46157411, 0.65653393, 0.45983393, 0.50022500,
                           0.64050536, 0.37097589, 0.82469196, 0.63151696, 0.82325089],
        "arcface_128": [0.36167656, 0.40387734, 0.63696719, 0.40235469, 0.50019687,
                        0.56044219, 0.38710391, 0.72160547, 0.61507734, 0.72034453],
        "ffhq_512": [0.37691676, 0.46864664, 0.62285697, 0.46912813, 0.50123859,
                     0.61331904, 0.39308822, 0.72541100, 0.61150205, 0.72490465],
        "mtcnn_512": [0.36562865, 0.46733799, 0.63305391, 0.46585885, 0.50019127,
                      0.61942959, 0.39032951, 0.77598822, 0.61178945, 0.77476328],
    }.items()
}  # fmt: skip

TEMPLATES = ("arcface", "ffhq", *POINT_TEMPLATES)


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
    border: str = "constant",
) -> AlignedFace:
    """Warp the face onto ``template`` at ``size``×``size``.

    ``face`` is a :class:`Face` or its ``(5, 2)`` ArcFace-order keypoints. ``image`` is RGB
    uint8 ``(H, W, 3)``. With ``template="arcface"`` and ``size=112`` the crop equals
    insightface's ``norm_crop`` (bilinear, black border). ``border``: ``"constant"``
    (``border_value``) or ``"replicate"`` (the edge pixels repeated) outside the image.
    """
    kps = face.kps5 if isinstance(face, Face) else np.asarray(face, np.float64)
    if kps.shape != (5, 2):
        raise ValueError(f"`kps5` must have shape (5, 2), got {kps.shape}")
    if size < 16 or size > 4096:
        raise ValueError(f"`size` must be in [16, 4096], got {size}")
    if border not in ("constant", "replicate"):
        raise ValueError(f"`border` must be 'constant' or 'replicate', got {border!r}")
    if template == "arcface":
        m = estimate_similarity(kps, arcface_template(size))
    elif template in POINT_TEMPLATES:
        m = estimate_similarity(kps, POINT_TEMPLATES[template] * size)
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
        borderMode=cv2.BORDER_CONSTANT if border == "constant" else cv2.BORDER_REPLICATE,
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
    out = img.copy()
    box = paste_area(aligned.inverse, s, img.shape[:2])
    if box is None:
        return out  # the crop maps outside the image
    x1, y1, x2, y2 = box
    inv = aligned.inverse.copy()
    inv[:, 2] -= (x1, y1)  # warp only the region the crop covers (same pixels, less work)
    size = (x2 - x1, y2 - y1)
    warped = cv2.warpAffine(crop, inv, size, flags=cv2.INTER_LINEAR)
    wmask = cv2.warpAffine(m, inv, size, flags=cv2.INTER_LINEAR)[..., None]
    roi = img[y1:y2, x1:x2].astype(np.float32)
    blended = roi * (1 - wmask) + warped.astype(np.float32) * wmask
    out[y1:y2, x1:x2] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return out


def paste_area(
    inverse: np.ndarray, size: int, shape: tuple[int, ...]
) -> tuple[int, int, int, int] | None:
    """The image box ``(x1, y1, x2, y2)`` (end exclusive) that a ``size``×``size`` crop covers
    through ``inverse`` (crop → image), one pixel wider for bilinear sampling, clipped to an
    image of ``shape``; None when it misses the image."""
    corners = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float64)
    pts = corners @ np.asarray(inverse, np.float64)[:, :2].T + np.asarray(inverse)[:, 2]
    h, w = int(shape[0]), int(shape[1])
    x1, y1 = (int(np.floor(v)) - 1 for v in pts.min(0))
    x2, y2 = (int(np.ceil(v)) + 2 for v in pts.max(0))
    x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if x2 <= x1 or y2 <= y1:
        return None
    return x1, y1, x2, y2
