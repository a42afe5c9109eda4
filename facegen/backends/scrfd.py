"""SCRFD face detection with ONNX Runtime (insightface's ``scrfd_*.onnx`` / ``det_10g.onnx``).

The network takes a letterboxed RGB image normalised as ``(x - 127.5) / 128`` and, for every
feature stride, returns per-anchor scores, box distances and (for the ``*kps`` models) five
keypoint offsets, all in units of the stride. The layout follows from the number of outputs
(the same rule insightface uses):

===========  =====  =====================  =========  =========
outputs      fmc    strides                anchors    keypoints
===========  =====  =====================  =========  =========
6            3      8, 16, 32              2          no
9            3      8, 16, 32              2          yes
10           5      8, 16, 32, 64, 128     1          no
15           5      8, 16, 32, 64, 128     1          yes
===========  =====  =====================  =========  =========

Outputs are ordered scores (one per stride), then boxes, then keypoints; each is
``(N_anchors, C)`` or, for batch-exported models, ``(1, N_anchors, C)`` with ``C`` = 1, 4, 10.
Anchor centres are the top-left corners of the stride cells, row-major, each repeated once
per anchor. facegen needs five keypoints, so models without them are refused.

Post-processing follows insightface's ``SCRFD.detect`` step for step (checked against
``insightface/model_zoo/scrfd.py``): the image is resized keeping its aspect into the input
size and padded bottom/right; boxes and keypoints are mapped back by dividing by the *one*
factor ``det_scale = new_height / height``; candidates are suppressed with insightface's
``+1``-pixel NMS; ``max_faces`` keeps the boxes insightface's ``max_num`` keeps
(:func:`max_faces_ranking`, on the unclipped boxes). What facegen adds: boxes are clipped to
the image (ones wholly outside it are dropped before that ranking), and the result is sorted
by score (insightface returns ``max_num`` results in ranking order).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np

from facegen.backends.onnx_utils import check_rgb_image, load_session, static_dim, to_blob
from facegen.base import FaceDetector
from facegen.errors import InvalidModelError, UnknownNameError
from facegen.types import Face
from facegen.validate import check_choice, check_int, check_number

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

__all__ = [
    "MAX_FACES_METRICS",
    "MaxFacesMetric",
    "SCRFDDetector",
    "distance2bbox",
    "distance2kps",
    "max_faces_ranking",
    "nms",
    "select_max_faces",
]

logger = logging.getLogger(__name__)

#: number of outputs → (feature map count, keypoints present)
_LAYOUTS: dict[int, tuple[int, bool]] = {6: (3, False), 9: (3, True), 10: (5, False), 15: (5, True)}
_STRIDES: dict[int, tuple[int, ...]] = {3: (8, 16, 32), 5: (8, 16, 32, 64, 128)}
_NUM_ANCHORS: dict[int, int] = {3: 2, 5: 1}
_INPUT_MEAN = 127.5
_INPUT_STD = 128.0
_DEFAULT_INPUT_SIZE = (640, 640)

MaxFacesMetric = Literal["default", "max"]
#: How ``max_faces`` ranks faces: insightface's ``metric`` values for ``detect(max_num=…)``.
MAX_FACES_METRICS: tuple[str, ...] = ("default", "max")


def distance2bbox(centers: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Boxes from anchor centres and (left, top, right, bottom) distances.

    ``centers``: float32 ``(N, 2)`` xy; ``distance``: float32 ``(N, 4)`` in pixels.
    Returns float32 ``(N, 4)`` xyxy.
    """
    return np.stack(
        [
            centers[:, 0] - distance[:, 0],
            centers[:, 1] - distance[:, 1],
            centers[:, 0] + distance[:, 2],
            centers[:, 1] + distance[:, 3],
        ],
        axis=-1,
    )


def distance2kps(centers: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Keypoints from anchor centres and xy offsets.

    ``centers``: float32 ``(N, 2)``; ``distance``: float32 ``(N, 2K)`` in pixels, interleaved
    ``x0, y0, x1, y1, …``. Returns float32 ``(N, K, 2)``.
    """
    offsets = distance.reshape(len(distance), -1, 2)
    return centers[:, None, :] + offsets


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression with insightface's ``+1`` pixel rule.

    ``boxes``: ``(N, 4)`` xyxy; ``scores``: ``(N,)``. Areas are ``(x2 - x1 + 1) · (y2 - y1 + 1)``
    and overlaps ``max(0, xx2 - xx1 + 1) · max(0, yy2 - yy1 + 1)``, as in insightface's
    ``SCRFD.nms``; a box is dropped when its overlap ratio with a higher-scoring kept box is
    above ``iou_threshold`` (or is not a number). The arithmetic runs in the boxes' own float
    dtype (float32 in the detector, like insightface's ``pre_det``; integer boxes use float64),
    so float32 candidates give insightface's decisions bit for bit. Returns the kept indices,
    int64 ``(K,)``, by descending score (ties keep input order).
    """
    boxes = np.asarray(boxes)
    if not np.issubdtype(boxes.dtype, np.floating):
        boxes = boxes.astype(np.float64)
    threshold = float(iou_threshold)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = inter / (areas[i] + areas[rest] - inter)
        order = rest[ratio <= threshold]
    return np.asarray(keep, dtype=np.int64)


def max_faces_ranking(
    boxes: np.ndarray, image_size: tuple[int, int], metric: MaxFacesMetric = "default"
) -> np.ndarray:
    """The value insightface's ``SCRFD.detect(max_num=k, metric=…)`` ranks boxes by (higher wins).

    ``boxes``: float ``(N, 4)`` xyxy in image pixels; ``image_size``: ``(height, width)``.
    ``metric="default"``: ``area - 2·offset²``, where ``offset²`` is the squared distance of
    the box centre from the image centre ``(width // 2, height // 2)`` (a large face near the
    middle beats a slightly larger one in a corner); ``"max"``: the area alone. Returns
    ``(N,)`` in the boxes' float dtype (float32 in the detector, as in insightface).
    """
    check_choice(metric, "metric", MAX_FACES_METRICS)
    boxes = np.asarray(boxes)
    if not np.issubdtype(boxes.dtype, np.floating):
        boxes = boxes.astype(np.float64)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    if metric == "max":
        return area
    height, width = int(image_size[0]), int(image_size[1])
    dx = (boxes[:, 0] + boxes[:, 2]) / 2 - width // 2
    dy = (boxes[:, 1] + boxes[:, 3]) / 2 - height // 2
    return area - (np.power(dx, 2.0) + np.power(dy, 2.0)) * 2.0


def select_max_faces(
    boxes: np.ndarray,
    image_size: tuple[int, int],
    max_faces: int,
    metric: MaxFacesMetric = "default",
) -> np.ndarray:
    """Indices of the ``max_faces`` boxes insightface's ``max_num`` keeps, in input order.

    ``boxes``: float ``(N, 4)`` xyxy; ``image_size``: ``(height, width)``; ``max_faces`` 0 keeps
    all. Ranking by :func:`max_faces_ranking`; exact ties go to the earlier row (the higher
    score when rows are score-sorted; insightface's unstable sort leaves their order open).
    Returns int64 ``(min(N, max_faces),)`` sorted ascending.
    """
    n = len(boxes)
    if max_faces <= 0 or n <= max_faces:
        return np.arange(n, dtype=np.int64)
    values = max_faces_ranking(boxes, image_size, metric)
    return np.sort(np.argsort(-values, kind="stable")[:max_faces]).astype(np.int64)


class SCRFDDetector(FaceDetector):
    """SCRFD face detector on an ONNX Runtime session.

    Parameters
    ----------
    session:
        An ``onnxruntime.InferenceSession`` (or anything with the same ``get_inputs``,
        ``get_outputs`` and ``run``). When omitted, ``model_path`` is opened on ``device``.
    model_path:
        The ``.onnx`` file.
    input_size:
        Network input ``(width, height)``; both multiples of the largest stride. ``None``
        uses the model's fixed input size when it has one, else 640×640. A model with a
        fixed input size refuses any other.
    score_threshold:
        Minimum score in [0, 1] for a candidate.
    nms_threshold:
        IoU in (0, 1] above which the lower-scoring of two overlapping boxes is dropped.
    max_faces:
        Keep at most this many faces (0 = all), chosen as insightface's
        ``detect(max_num=max_faces, metric=max_faces_metric)`` chooses them (see
        :func:`max_faces_ranking`); the kept faces are then sorted by score.
    max_faces_metric:
        ``"default"`` (insightface's default): rank by ``area - 2·offset²``, ``offset`` being
        the distance of the box centre from the image centre, so a big face near the middle
        wins over a bigger one at the edge; ``"max"``: rank by box area alone.
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
        input_size: tuple[int, int] | None = None,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        max_faces: int = 0,
        max_faces_metric: MaxFacesMetric = "default",
        name: str = "scrfd",
    ) -> None:
        score_threshold = check_number(score_threshold, "score_threshold", minimum=0, maximum=1)
        nms_threshold = check_number(
            nms_threshold, "nms_threshold", minimum=0, maximum=1, min_open=True
        )
        max_faces = check_int(max_faces, "max_faces", minimum=0)
        check_choice(max_faces_metric, "max_faces_metric", MAX_FACES_METRICS)
        self.session = load_session(session, model_path, device)
        self.model_path = Path(model_path) if model_path is not None else None
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_faces = max_faces
        self.max_faces_metric: MaxFacesMetric = max_faces_metric
        self.name = name
        where = str(model_path) if model_path is not None else "SCRFD session"

        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise InvalidModelError(
                f"{where}: an SCRFD model must have one NCHW input, got "
                f"{[(i.name, i.shape) for i in inputs]}"
            )
        self.input_name: str = inputs[0].name
        outputs = self.session.get_outputs()
        if len(outputs) not in _LAYOUTS:
            raise InvalidModelError(
                f"{where}: an SCRFD model must have 6, 9, 10 or 15 outputs (scores, boxes and "
                f"optionally keypoints for 3 or 5 strides), got {len(outputs)}"
            )
        self.fmc, use_kps = _LAYOUTS[len(outputs)]
        if not use_kps:
            raise InvalidModelError(
                f"{where}: this SCRFD model has no keypoint outputs ({len(outputs)} outputs); "
                "facegen needs the 5 keypoints for alignment. Use a '*kps' model "
                "(e.g. scrfd_10g_bnkps.onnx or det_10g.onnx)."
            )
        self.strides: tuple[int, ...] = _STRIDES[self.fmc]
        self.num_anchors: int = _NUM_ANCHORS[self.fmc]
        ranks = {len(o.shape) for o in outputs}
        if len(ranks) != 1 or not ranks <= {2, 3}:
            raise InvalidModelError(
                f"{where}: SCRFD outputs must all be 2-D (N, C) or all 3-D (1, N, C), got ranks "
                f"{sorted(len(o.shape) for o in outputs)}"
            )
        self.batched: bool = ranks == {3}
        widths = [1] * self.fmc + [4] * self.fmc + [10] * self.fmc
        for out, want in zip(outputs, widths):
            got = static_dim(out.shape[-1])
            if got is not None and got != want:
                raise InvalidModelError(
                    f"{where}: SCRFD output {out.name!r} must end in width {want} "
                    "(outputs go scores, boxes, keypoints per stride), got shape "
                    f"{list(out.shape)}"
                )
        self.output_names: list[str] = [o.name for o in outputs]

        fixed_h, fixed_w = (static_dim(d) for d in inputs[0].shape[2:4])
        fixed = (fixed_w, fixed_h) if fixed_w and fixed_h else None
        if input_size is None:
            input_size = fixed or _DEFAULT_INPUT_SIZE
        input_size = (int(input_size[0]), int(input_size[1]))
        if fixed is not None and input_size != fixed:
            raise ValueError(
                f"`input_size` must be {fixed} (width, height) for {where}, whose input size is "
                f"fixed, got {input_size}"
            )
        top = self.strides[-1]
        if any(v <= 0 or v % top for v in input_size):
            raise ValueError(
                f"`input_size` must be (width, height), both positive multiples of {top}, got "
                f"{input_size}"
            )
        self.input_size: tuple[int, int] = input_size
        self._centers: dict[tuple[int, int, int], np.ndarray] = {}
        logger.debug(
            "%s: %d strides, %d anchors, batched=%s, input %s",
            where,
            self.fmc,
            self.num_anchors,
            self.batched,
            self.input_size,
        )

    @classmethod
    def from_pretrained(
        cls,
        preset: str = "antelopev2",
        model_path: str | Path | None = None,
        *,
        device: str | None = "cpu",
        offline: bool | None = None,
        **kwargs: Any,
    ) -> SCRFDDetector:
        """Find the preset's ``detector`` file (see :func:`facegen.hub.resolve`) and open it.

        ``model_path`` (a file or a folder holding the preset's file) wins over the caches.
        Other keyword arguments go to the constructor. ``name`` defaults to ``scrfd/<preset>``
        when the file is the preset's own (by name), else to ``scrfd/<file stem>``, so that a
        different model given through ``model_path`` is not recorded as the preset's.
        """
        from facegen.backends.packs import SCRFD_PRESETS
        from facegen.hub import get_preset, resolve

        if preset not in SCRFD_PRESETS:
            raise UnknownNameError("SCRFD detector preset", preset, SCRFD_PRESETS)
        filename = get_preset(preset).file_for("detector")
        path = resolve(preset, filename, path=model_path, offline=offline)
        kwargs.setdefault("name", f"scrfd/{preset if path.name == filename else path.stem}")
        return cls(model_path=path, device=device, **kwargs)

    # ------------------------------------------------------------------ internals

    def model_files(self) -> dict[str, str]:
        return {} if self.model_path is None else {"detector": str(self.model_path.absolute())}

    def _letterbox(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Resize keeping the aspect ratio into ``input_size``, pad bottom/right with 0.

        Returns the uint8 ``(H_in, W_in, 3)`` canvas and insightface's ``det_scale``
        (``new_height / height``, input pixels per source pixel), the one factor that maps
        both axes back. The resized size is truncated as insightface does, so the true x
        factor ``new_width / width`` may differ from it slightly; dividing by ``det_scale``
        anyway is what insightface does (and what its users' numbers come from).
        """
        h, w = image.shape[:2]
        in_w, in_h = self.input_size
        im_ratio = h / w
        if im_ratio > in_h / in_w:
            new_h, new_w = in_h, max(1, int(in_h / im_ratio))
        else:
            new_w, new_h = in_w, max(1, int(in_w * im_ratio))
        canvas = np.zeros((in_h, in_w, 3), np.uint8)
        canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        return canvas, new_h / h

    def _anchor_centers(self, height: int, width: int, stride: int) -> np.ndarray:
        """float32 ``(height·width·anchors, 2)`` xy centres, row-major, anchors innermost."""
        key = (height, width, stride)
        centers = self._centers.get(key)
        if centers is None:
            ys, xs = np.mgrid[:height, :width]
            centers = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
            centers = np.repeat(centers, self.num_anchors, axis=0)
            if len(self._centers) < 64:
                self._centers[key] = centers
        return centers

    def _decode(
        self, outs: list[np.ndarray], threshold: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Network outputs → candidates above ``threshold`` in input pixels.

        Returns boxes float32 ``(M, 4)``, scores float32 ``(M,)``, keypoints float32 ``(M, 5, 2)``.
        """
        in_w, in_h = self.input_size
        boxes, scores, kpss = [], [], []
        for idx, stride in enumerate(self.strides):
            score = outs[idx]
            bbox = outs[idx + self.fmc]
            kps = outs[idx + 2 * self.fmc]
            if self.batched:
                score, bbox, kps = score[0], bbox[0], kps[0]
            centers = self._anchor_centers(in_h // stride, in_w // stride, stride)
            score = score.reshape(-1)
            if not (len(score) == len(bbox) == len(kps) == len(centers)):
                raise InvalidModelError(
                    f"SCRFD outputs for stride {stride} must have {len(centers)} rows for a "
                    f"{in_w}x{in_h} input, got scores {len(score)}, boxes {len(bbox)}, "
                    f"keypoints {len(kps)}"
                )
            pos = np.flatnonzero(score >= threshold)
            if pos.size == 0:
                continue
            c = centers[pos]
            scores.append(score[pos].astype(np.float32))
            boxes.append(distance2bbox(c, bbox[pos].astype(np.float32) * stride))
            kpss.append(distance2kps(c, kps[pos].astype(np.float32) * stride))
        if not scores:
            return (
                np.zeros((0, 4), np.float32),
                np.zeros(0, np.float32),
                np.zeros((0, 5, 2), np.float32),
            )
        return np.concatenate(boxes), np.concatenate(scores), np.concatenate(kpss)

    # ------------------------------------------------------------------ public

    def detect(self, image: np.ndarray) -> list[Face]:
        """Detect faces in an RGB uint8 ``(H, W, 3)`` image.

        Returns :class:`Face` objects (bbox clipped to the image, ``kps5`` in the ArcFace
        order — SCRFD's own keypoint order) sorted by descending score; an empty list when
        none passes ``score_threshold``. Non-finite network outputs raise
        :class:`InvalidModelError`.
        """
        img = check_rgb_image(image)
        h, w = img.shape[:2]
        canvas, det_scale = self._letterbox(img)
        blob = to_blob(canvas[None], _INPUT_MEAN, _INPUT_STD)
        outs = [np.asarray(o) for o in self.session.run(self.output_names, {self.input_name: blob})]
        if not all(np.isfinite(o).all() for o in outs):
            # NaN scores would silently fail every threshold; NaN boxes would fail Face's checks
            raise InvalidModelError(f"SCRFD model {self.name!r} produced NaN or inf outputs")
        boxes, scores, kpss = self._decode(outs, self.score_threshold)
        if len(scores) == 0:
            return []
        # float32 / Python float stays float32, as in insightface
        boxes, kpss = boxes / det_scale, kpss / det_scale
        keep = nms(boxes, scores, self.nms_threshold)
        boxes, scores, kpss = boxes[keep], scores[keep], kpss[keep]
        clipped = boxes.copy()
        clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, w)
        clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, h)
        valid = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        boxes, clipped, scores, kpss = boxes[valid], clipped[valid], scores[valid], kpss[valid]
        # ranked on the unclipped boxes, like insightface (rows are score-sorted)
        chosen = select_max_faces(boxes, (h, w), self.max_faces, self.max_faces_metric)
        clipped, scores, kpss = clipped[chosen], scores[chosen], kpss[chosen]
        logger.debug("%s: %d face(s) in a %dx%d image", self.name, len(scores), w, h)
        return [
            Face(bbox=b, score=float(s), kps5=k, detector=self.name)
            for b, s, k in zip(clipped, scores, kpss)
        ]
