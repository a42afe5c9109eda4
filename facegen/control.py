"""Conditioning images for landmark / pose ControlNets, and pose transfer (head pose: facegen.head_pose).

Every renderer draws points given in some *source frame* onto a black ``size``×``size`` canvas
and returns RGB ``uint8`` ``(size, size, 3)`` (``output_type="np"``, default) or an RGB PIL image
(``output_type="pil"``). Pass PIL to diffusers: its image processor reads numpy images as floats
in [0, 1], so a uint8 array would have to be divided by 255 first.

Where the points live (pick at most one):

* neither: the points are already canvas pixels;
* ``source_size=(w, h)`` (or an int for a square): pixels of a ``w``×``h`` frame that is resized
  onto the whole canvas, pixel centres kept (``x' = (x + 0.5)·size/w - 0.5``, as ``cv2.resize``);
* ``matrix``: a float ``(2, 3)`` affine from source pixels to canvas pixels (e.g. an
  :class:`~facegen.types.AlignedFace` ``matrix`` made at this ``size``).

Resolution independence: radii and line widths are ``width_at_reference · size / reference``
(each renderer names its reference size, the resolution its annotator draws at; lines at least
1 px), every shape is a convex polygon at 1/16-px precision, inset by half a pixel so that its
lit area equals its true area. A 1024 render area-downsampled to 256 lights the same area as
the 256 render to ~15% and overlaps it with IoU >= 0.8 (dots) / 0.75 (1-px lines) (tested).
The InstantID map is the exception by default: IdentityNet was trained on ``draw_kps``'s
integer drawing, so :func:`render_instantid_kps` reproduces that pixel for pixel
(``drawing="subpixel"`` gives the resolution-independent variant above).
Drawing is aliased (no anti-aliasing, like the annotators), so every lit pixel has exactly one
of the documented colours. Points off the canvas are clipped, never an error.

Facts from the public annotators (read, not copied):

* OpenPose face (``lllyasviel/control_v11p_sd15_openpose``, trained on body / hand / face and
  their combinations): ControlNet 1.1's annotator (``annotator/openpose`` in
  lllyasviel/ControlNet-v1-1-nightly, the same code in huggingface/controlnet_aux
  ``open_pose``) draws every face keypoint as a filled white circle of radius 3 px on black
  (``draw_facepose``), at the detect resolution (512 by default), then resizes the map to the
  output bilinearly. Its face network (``facenet.pth``, OpenPose's face model,
  ``FACE_NUMBER_PARTS = 70``) predicts the 68 iBUG points plus the two pupils (68: the
  image-left eye, 69: the image-right eye) and a background map, and every peak is drawn: the
  pupils are part of the training data. We have no pupil model, so pupils default to the
  eye-contour centres (mean of iBUG 36–41 and 42–47) — right for a straight gaze; DWPose-based
  annotators pad the same two slots with the body's eye keypoints. Quirks not reproduced:
  the annotator also draws the peak of the background map, and skips points with x or y < 1 px.
* InstantID (``draw_kps`` in instantX-research/InstantID): 5 keypoints in insightface order
  (= ``Face.kps5``) coloured red, green, blue, yellow, magenta (RGB); limbs 0→2, 1→2, 3→2, 4→2
  (eyes and mouth corners to the nose) as filled ellipses, semi-axes (length/2, stickwidth 4),
  in the colour of their first point, later limbs over earlier ones, then the whole limb layer
  is multiplied by 0.6 (truncated to uint8); then filled circles of radius 10 in full colour.
  Everything is integer: the ellipse is ``cv2.ellipse2Poly`` at the truncated mean of its two
  points with ``int(length / 2)`` and ``int(angle)`` (degrees, 1° vertex steps) filled by
  ``cv2.fillConvexPoly``, the dots are ``cv2.circle`` at ``(int(x), int(y))``. facegen draws
  the same calls (checked pixel for pixel against a transcription of that description).
  Widths are fixed pixels at the working image size: SDXL's ~1024 px, our reference (the
  official demo resizes photos to a 1280 long side; ``reference_size=1280`` matches it).
* MediaPipe face (``CrucibleAI/ControlNetMediaPipeFace``, controlnet_aux ``mediapipe_face``):
  face oval, eyes, eyebrows and lips edges of the 478-point mesh, 2 px lines at the 512 detect
  resolution, plus 4×4 px squares at the iris centres (468, 473); colours in
  :data:`FACE_MESH_COLOURS` (their BGR drawing specs, flipped to RGB as their annotator does).
  MediaPipe itself is not a dependency: pass its edge lists as ``connections`` (or install
  ``mediapipe`` and leave ``connections=None``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt
from PIL import Image

from facegen.align import arcface_template, estimate_similarity, ffhq_quad
from facegen.errors import InvalidArgumentError, MissingDependencyError
from facegen.landmarks import check_points
from facegen.raster import INSET, dot, ellipse_polygon, fill_convex, line
from facegen.types import Face, transform_points
from facegen.validate import check_choice, check_int, check_number

__all__ = [
    "FACE_MESH_COLOURS",
    "FACE_MESH_IRIS_CENTRES",
    "INSTANTID_COLOURS",
    "INSTANTID_DRAWINGS",
    "LANDMARKS68_PARTS",
    "render_face_mesh",
    "render_instantid_kps",
    "render_landmarks68",
    "render_openpose_face",
    "transfer_face",
    "transfer_landmarks",
]

OutputType = Literal["np", "pil"]
OUTPUT_TYPES: tuple[str, ...] = ("np", "pil")
#: Where the points live: a square side or ``(width, height)`` in pixels (see the module doc).
SourceSize = float | tuple[float, float]
#: How :func:`render_instantid_kps` draws: InstantID's integer ``draw_kps`` or sub-pixel.
InstantIDDrawing = Literal["instantid", "subpixel"]
INSTANTID_DRAWINGS: tuple[str, ...] = ("instantid", "subpixel")

MIN_SIZE, MAX_SIZE = 16, 4096

#: OpenPose face: reference size, dot radius there (px), colour.
OPENPOSE_REFERENCE_SIZE, OPENPOSE_DOT_RADIUS, OPENPOSE_COLOUR = 512, 3.0, (255, 255, 255)

#: InstantID: reference size, limb half-width and dot radius there (px), limb factor.
INSTANTID_REFERENCE_SIZE, INSTANTID_STICK_WIDTH, INSTANTID_DOT_RADIUS = 1024, 4.0, 10.0
INSTANTID_LIMB_FACTOR = 0.6
#: RGB colour of each ``kps5`` point (and of the limb that starts there).
INSTANTID_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (255, 255, 0),
    (255, 0, 255),
)
_INSTANTID_LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))

#: facegen's own 68-point map: reference size and line width there (px).
LANDMARKS68_REFERENCE_SIZE, LANDMARKS68_LINE_WIDTH = 512, 2.0
#: Part → (iBUG indices, closed loop?, RGB colour), in drawing order (later parts on top).
#: "right"/"left" are the subject's own sides (iBUG 17–21 / 36–41: image-left in a frontal photo).
#: Hues are 40° apart so every pair differs by >= 85 in some channel.
LANDMARKS68_PARTS: dict[str, tuple[tuple[int, ...], bool, tuple[int, int, int]]] = {
    "jaw": (tuple(range(0, 17)), False, (255, 170, 0)),
    "nose_bridge": (tuple(range(27, 31)), False, (170, 255, 0)),
    "nose_lower": (tuple(range(31, 36)), False, (0, 255, 0)),
    "right_brow": (tuple(range(17, 22)), False, (255, 0, 0)),
    "left_brow": (tuple(range(22, 27)), False, (255, 0, 170)),
    "right_eye": (tuple(range(36, 42)), True, (0, 255, 170)),
    "left_eye": (tuple(range(42, 48)), True, (0, 170, 255)),
    "outer_lips": (tuple(range(48, 60)), True, (170, 0, 255)),
    "inner_lips": (tuple(range(60, 68)), True, (0, 0, 255)),
}

#: MediaPipe face: reference size, line width and iris half-width there (px).
FACE_MESH_REFERENCE_SIZE, FACE_MESH_LINE_WIDTH, FACE_MESH_IRIS_HALF = 512, 2.0, 2.0
#: Region → RGB, in drawing order (keys of ``connections``).
FACE_MESH_COLOURS: dict[str, tuple[int, int, int]] = {
    "face_oval": (10, 200, 10),
    "left_eye": (10, 200, 180),
    "left_eyebrow": (10, 220, 180),
    "right_eye": (180, 200, 10),
    "right_eyebrow": (180, 220, 10),
    "lips": (10, 180, 10),
}
#: Iris-centre landmark → RGB square drawn there (478-point meshes only).
FACE_MESH_IRIS_CENTRES: dict[int, tuple[int, int, int]] = {468: (250, 200, 10), 473: (10, 200, 250)}
_MEDIAPIPE_SETS = {
    "face_oval": "FACEMESH_FACE_OVAL",
    "left_eye": "FACEMESH_LEFT_EYE",
    "left_eyebrow": "FACEMESH_LEFT_EYEBROW",
    "right_eye": "FACEMESH_RIGHT_EYE",
    "right_eyebrow": "FACEMESH_RIGHT_EYEBROW",
    "lips": "FACEMESH_LIPS",
}

# --------------------------------------------------------------------------- validation


def _check_canvas(size: int, output_type: OutputType) -> int:
    """The checked canvas ``size`` (an int in [16, 4096]); ``output_type`` is checked too."""
    size = check_int(size, "size", minimum=MIN_SIZE, maximum=MAX_SIZE)
    check_choice(output_type, "output_type", OUTPUT_TYPES)
    return size


def _to_canvas(
    pts: np.ndarray, size: int, source_size: SourceSize | None, matrix: npt.ArrayLike | None
) -> np.ndarray:
    """Map validated source points to canvas pixels (see the module doc)."""
    if source_size is not None and matrix is not None:
        raise ValueError("`source_size` and `matrix` must not both be given")
    if matrix is not None:
        m = np.asarray(matrix, dtype=np.float64)
        if m.shape != (2, 3) or not np.all(np.isfinite(m)):
            raise ValueError(f"`matrix` must be a finite (2, 3) affine, got shape {m.shape}")
        with np.errstate(over="ignore", invalid="ignore"):
            return _finite(pts @ m[:, :2].T + m[:, 2])
    if source_size is None:
        return pts
    wh = (source_size, source_size) if np.ndim(source_size) == 0 else tuple(source_size)
    if len(wh) != 2:
        raise InvalidArgumentError(
            f"`source_size` must be a positive number or (width, height), got {source_size!r}"
        )
    w, h = (check_number(v, "source_size", minimum=0, min_open=True) for v in wh)
    scale = np.array([size / w, size / h])
    with np.errstate(over="ignore", invalid="ignore"):
        return _finite((pts + 0.5) * scale - 0.5)


def _finite(xy: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(xy)):
        raise ValueError("mapped points must be finite, got an overflow (points or matrix too big)")
    return xy


def _finish(canvas: np.ndarray, output_type: OutputType) -> np.ndarray | Image.Image:
    return Image.fromarray(canvas) if output_type == "pil" else canvas


# --------------------------------------------------------------------------- widths


def _scaled(width_at_reference: float, size: int, reference: int) -> float:
    return width_at_reference * size / reference


def _line_width(width_at_reference: float, size: int, reference: int) -> float:
    return max(1.0, _scaled(width_at_reference, size, reference))


# --------------------------------------------------------------------------- renderers


def render_openpose_face(
    points68: npt.ArrayLike,
    size: int,
    *,
    source_size: SourceSize | None = None,
    matrix: npt.ArrayLike | None = None,
    pupils: bool = True,
    output_type: OutputType = "np",
) -> np.ndarray | Image.Image:
    """OpenPose face map for ``lllyasviel/control_v11p_sd15_openpose`` (see the module doc).

    ``points68``: iBUG ``(68, 2|3)``, or OpenPose's ``(70, 2|3)`` whose last two rows are the
    pupils (image-left eye, then image-right eye). With 68 points and ``pupils=True`` the pupils
    are the eye-contour centres; ``pupils=False`` draws the 68 points only. White filled dots,
    radius ``3·size/512`` px, on black. Returns RGB uint8 ``(size, size, 3)`` (or PIL).
    """
    size = _check_canvas(size, output_type)
    if not isinstance(pupils, bool):
        raise ValueError(f"`pupils` must be a bool, got {pupils!r}")
    pts = check_points(points68, "points68", (68, 70))
    if len(pts) == 68 and pupils:
        pts = np.vstack([pts, pts[36:42].mean(0), pts[42:48].mean(0)])
    elif len(pts) == 70 and not pupils:
        pts = pts[:68]
    xy = _to_canvas(pts, size, source_size, matrix)
    canvas = np.zeros((size, size, 3), np.uint8)
    radius = _scaled(OPENPOSE_DOT_RADIUS, size, OPENPOSE_REFERENCE_SIZE)
    for p in xy:
        dot(canvas, p, radius, OPENPOSE_COLOUR)
    return _finish(canvas, output_type)


#: Beyond this many pixels (in any integer the drawing needs) cv2's integer calls overflow.
_CV2_INT_LIMIT = 1 << 30


def _instantid_integer_map(xy: np.ndarray, size: int, stick_width: int, radius: int) -> np.ndarray:
    """InstantID's ``draw_kps`` on a black ``size``×``size`` canvas: RGB uint8.

    Integer positions (``int()`` truncation), ``cv2.ellipse2Poly`` limbs filled with
    ``cv2.fillConvexPoly`` on a float canvas scaled by 0.6, then ``cv2.circle`` dots. Shapes that
    lie wholly off the canvas are skipped (they light nothing); a limb whose integers exceed
    what cv2 takes (a point ~10⁹ px away) is drawn as the sub-pixel ellipse instead.
    """
    layer = np.zeros((size, size, 3), np.float64)
    for i, j in _INSTANTID_LIMBS:
        x = xy[[i, j], 0]
        y = xy[[i, j], 1]
        colour = INSTANTID_COLOURS[i]
        length = float(((x[0] - x[1]) ** 2 + (y[0] - y[1]) ** 2) ** 0.5)
        reach = length / 2 + stick_width + 2
        cx, cy = float(np.mean(x)), float(np.mean(y))
        if cx + reach < 0 or cy + reach < 0 or cx - reach > size or cy - reach > size:
            continue  # wholly off the canvas
        if max(abs(cx), abs(cy), length) >= _CV2_INT_LIMIT:
            fill_convex(layer, ellipse_polygon(xy[i], xy[j], float(stick_width)), colour)
            continue
        angle = math.degrees(math.atan2(y[0] - y[1], x[0] - x[1]))
        polygon = cv2.ellipse2Poly(
            (int(cx), int(cy)), (int(length / 2), stick_width), int(angle), 0, 360, 1
        )
        cv2.fillConvexPoly(layer, polygon, colour)
    canvas = (layer * INSTANTID_LIMB_FACTOR).astype(np.uint8)
    for (px, py), colour in zip(xy, INSTANTID_COLOURS):
        if not (-radius - 1 <= px <= size + radius and -radius - 1 <= py <= size + radius):
            continue  # wholly off the canvas
        cv2.circle(canvas, (int(px), int(py)), radius, colour, -1)
    return canvas


def render_instantid_kps(
    kps5: npt.ArrayLike,
    size: int,
    *,
    source_size: SourceSize | None = None,
    matrix: npt.ArrayLike | None = None,
    reference_size: int = INSTANTID_REFERENCE_SIZE,
    drawing: InstantIDDrawing = "instantid",
    output_type: OutputType = "np",
) -> np.ndarray | Image.Image:
    """InstantID's IdentityNet keypoint map (see the module doc for the drawing rules).

    ``kps5``: ``(5, 2|3)`` in ``Face.kps5`` (insightface) order. Limb half-width
    ``4·size/reference_size``, dot radius ``10·size/reference_size`` (``reference_size=size``
    draws InstantID's absolute 4 / 10 px). Limb pixels are ``trunc(0.6·colour)`` (e.g.
    (153, 0, 0)), dots full :data:`INSTANTID_COLOURS`. Returns RGB uint8 ``(size, size, 3)``
    (or PIL).

    ``drawing="instantid"`` (default): InstantID's own integer drawing, the one IdentityNet
    was trained on. With ``size == reference_size`` (e.g. 1024 at the default reference) the
    map equals ``draw_kps`` on a ``size``×``size`` image pixel for pixel; at other sizes the
    half-width and radius are rounded to whole pixels (at least 1). ``"subpixel"``: the
    points at 1/16-px precision and widths scaled without rounding (resolution independent,
    see the module doc); 10–18 % of the lit pixels differ from ``draw_kps`` at 1024 (measured
    on face-like keypoints).
    """
    size = _check_canvas(size, output_type)
    reference_size = check_int(reference_size, "reference_size", minimum=1)
    check_choice(drawing, "drawing", INSTANTID_DRAWINGS)
    xy = _to_canvas(check_points(kps5, "kps5", (5,)), size, source_size, matrix)
    half = _scaled(INSTANTID_STICK_WIDTH, size, reference_size)
    radius = _scaled(INSTANTID_DOT_RADIUS, size, reference_size)
    if drawing == "instantid":
        stick_px, radius_px = (max(1, math.floor(v + 0.5)) for v in (half, radius))
        return _finish(_instantid_integer_map(xy, size, stick_px, radius_px), output_type)
    canvas = np.zeros((size, size, 3), np.uint8)
    for i, j in _INSTANTID_LIMBS:
        colour = (np.array(INSTANTID_COLOURS[i], np.float64) * INSTANTID_LIMB_FACTOR).astype(
            np.uint8
        )
        fill_convex(canvas, ellipse_polygon(xy[i], xy[j], half), colour.tolist())
    for p, colour in zip(xy, INSTANTID_COLOURS):
        dot(canvas, p, radius, colour)
    return _finish(canvas, output_type)


def render_landmarks68(
    points68: npt.ArrayLike,
    size: int,
    *,
    source_size: SourceSize | None = None,
    matrix: npt.ArrayLike | None = None,
    output_type: OutputType = "np",
) -> np.ndarray | Image.Image:
    """facegen's 68-point map for facegen-trained landmark ControlNets.

    Each part of :data:`LANDMARKS68_PARTS` is a polyline in its own colour (eyes and both lips
    closed loops) on black, ``2·size/512`` px wide (rounded, at least 1), in the table's order.
    ``points68``: iBUG ``(68, 2|3)``. Returns RGB uint8 ``(size, size, 3)`` (or PIL).
    """
    size = _check_canvas(size, output_type)
    xy = _to_canvas(check_points(points68, "points68", (68,)), size, source_size, matrix)
    canvas = np.zeros((size, size, 3), np.uint8)
    width = _line_width(LANDMARKS68_LINE_WIDTH, size, LANDMARKS68_REFERENCE_SIZE)
    for idx, closed, colour in LANDMARKS68_PARTS.values():
        chain = [*idx, idx[0]] if closed else list(idx)
        for a, b in itertools.pairwise(chain):
            line(canvas, xy[a], xy[b], width, colour)
    return _finish(canvas, output_type)


def _mediapipe_connections() -> dict[str, Iterable[tuple[int, int]]]:
    try:
        from mediapipe.solutions import face_mesh_connections as fmc  # type: ignore[import-not-found]
    except (ImportError, AttributeError) as e:
        raise MissingDependencyError(
            "mediapipe", purpose="the face-mesh edge lists (or pass `connections` yourself)"
        ) from e
    return {k: getattr(fmc, v) for k, v in _MEDIAPIPE_SETS.items()}


def render_face_mesh(
    points478: npt.ArrayLike,
    size: int,
    *,
    connections: Mapping[str, Iterable[tuple[int, int]]] | None = None,
    source_size: SourceSize | None = None,
    matrix: npt.ArrayLike | None = None,
    output_type: OutputType = "np",
) -> np.ndarray | Image.Image:
    """MediaPipe-face map for ``CrucibleAI/ControlNetMediaPipeFace`` from given mesh points.

    ``points478``: MediaPipe FaceMesh ``(478, 2|3)`` (with irises) or ``(468, 2|3)`` (none drawn)
    in pixels; MediaPipe's normalised output times the image size, with that size as
    ``source_size``. ``connections``: region name (keys of :data:`FACE_MESH_COLOURS`) → edges
    ``(i, j)``, e.g. ``{"lips": mediapipe.solutions.face_mesh.FACEMESH_LIPS, …}``; ``None``
    takes all six from an installed ``mediapipe``. Lines ``2·size/512`` px, iris squares
    ``4·size/512`` px. Returns RGB uint8 ``(size, size, 3)`` (or PIL).
    """
    size = _check_canvas(size, output_type)
    pts = check_points(points478, "points478", (478, 468))
    if connections is None:
        connections = _mediapipe_connections()
    if not isinstance(connections, Mapping):
        raise ValueError(
            f"`connections` must map region names to edges, got {type(connections).__name__}"
        )
    unknown = sorted(set(connections) - set(FACE_MESH_COLOURS))
    if unknown:
        raise ValueError(
            f"`connections` keys must be among {', '.join(FACE_MESH_COLOURS)}, got {unknown}"
        )
    edges_by_region: dict[str, np.ndarray] = {}
    for region, edges in connections.items():
        e = np.asarray(sorted(tuple(map(int, ed)) for ed in edges), dtype=np.int64).reshape(-1, 2)
        if e.size and (e.min() < 0 or e.max() >= len(pts)):
            raise ValueError(
                f"`connections[{region!r}]` indices must be in [0, {len(pts) - 1}], "
                f"got [{e.min()}, {e.max()}]"
            )
        edges_by_region[region] = e
    xy = _to_canvas(pts, size, source_size, matrix)
    canvas = np.zeros((size, size, 3), np.uint8)
    width = _line_width(FACE_MESH_LINE_WIDTH, size, FACE_MESH_REFERENCE_SIZE)
    for region, colour in FACE_MESH_COLOURS.items():
        for a, b in edges_by_region.get(region, ()):
            line(canvas, xy[a], xy[b], width, colour)
    if len(pts) == 478:
        h = max(_scaled(FACE_MESH_IRIS_HALF, size, FACE_MESH_REFERENCE_SIZE) - INSET, 0.0)
        square = np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
        for idx, colour in FACE_MESH_IRIS_CENTRES.items():
            fill_convex(canvas, xy[idx] + square, colour)
    return _finish(canvas, output_type)


# --------------------------------------------------------------------------- pose transfer

#: Aligned frames :func:`transfer_face` moves a face into, and how it fits the ArcFace one.
TRANSFER_TEMPLATES: tuple[str, ...] = ("arcface", "ffhq")
TRANSFER_FITS: tuple[str, ...] = ("kps5", "eyes")


def _transfer_matrix(kps5: np.ndarray, size: int, template: str, fit: str) -> np.ndarray:
    if template == "arcface":
        dst = arcface_template(size)
        if fit == "kps5":
            return estimate_similarity(kps5, dst)
        return estimate_similarity(kps5[:2], dst[:2])  # exact on the two eyes
    if fit != "kps5":
        raise ValueError(f"`fit` must be 'kps5' with template 'ffhq', got {fit!r}")
    quad = ffhq_quad(kps5)
    return cv2.getAffineTransform(
        quad[:3].astype(np.float32), np.array([[0, 0], [0, size], [size, size]], np.float32)
    ).astype(np.float64)


def transfer_face(
    reference_face: Face,
    *,
    size: int,
    template: str = "arcface",
    fit: Literal["kps5", "eyes"] = "kps5",
) -> Face:
    """``reference_face`` moved into the aligned ``size``×``size`` frame of ``template``.

    ``template="arcface"`` with ``fit="kps5"`` uses :func:`facegen.align.align_face`'s own
    similarity (least squares over the 5 keypoints; the same matrix); ``fit="eyes"`` maps the
    two eye centres exactly onto the template's eyes instead (the other points follow rigidly).
    ``template="ffhq"`` is align_face's FFHQ square (``margin=1``). Box, ``kps5`` and
    ``landmarks`` (z of ``(K, 3)`` landmarks times the scale) are mapped; the matrix is in
    ``extras["control_matrix"]`` (2×3 list). Render the result with ``source_size=None``.
    """
    if not isinstance(reference_face, Face):
        raise ValueError(f"`reference_face` must be a Face, got {type(reference_face).__name__}")
    size = check_int(size, "size", minimum=MIN_SIZE, maximum=MAX_SIZE)
    check_choice(template, "template", TRANSFER_TEMPLATES)
    check_choice(fit, "fit", TRANSFER_FITS)
    m = _transfer_matrix(reference_face.kps5.astype(np.float64), size, template, fit)
    x1, y1, x2, y2 = reference_face.bbox
    corners = transform_points(np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]), m)
    bbox = np.concatenate([corners.min(0), corners.max(0)])
    landmarks = None
    if reference_face.landmarks is not None:
        lm = np.array(reference_face.landmarks, dtype=np.float32)
        lm[:, :2] = transform_points(lm[:, :2], m)
        if lm.shape[1] == 3:
            lm[:, 2] *= math.sqrt(abs(np.linalg.det(m[:, :2])))
        landmarks = lm
    extras = {**reference_face.extras, "control_matrix": m.tolist()}
    return reference_face.replace(
        bbox=bbox, kps5=transform_points(reference_face.kps5, m), landmarks=landmarks, extras=extras
    )


def transfer_landmarks(
    reference_face: Face,
    *,
    size: int,
    template: str = "arcface",
    fit: Literal["kps5", "eyes"] = "kps5",
) -> np.ndarray:
    """The reference's dense landmarks in the aligned output frame (see :func:`transfer_face`).

    Returns float32 ``(K, 2|3)`` in ``size``×``size`` canvas pixels, ready for
    :func:`render_landmarks68` / :func:`render_openpose_face` with ``source_size=None``.
    """
    if isinstance(reference_face, Face) and reference_face.landmarks is None:
        raise ValueError(
            "`reference_face.landmarks` must be set (use a detector or landmarker that gives "
            "dense landmarks, e.g. DlibDetector), got None"
        )
    moved = transfer_face(reference_face, size=size, template=template, fit=fit)
    return np.asarray(moved.landmarks, dtype=np.float32)
