"""Face attributes from ONNX networks: insightface's ``genderage.onnx`` and JSON-described
classifiers.

* :class:`GenderAgeOnnx` — insightface's gender/age model (in the ``antelopev2`` and
  ``buffalo_l`` packs), with insightface's own preprocessing (``model_zoo/attribute.py``): a
  crop centred on the detection box, scaled so that ``1.5 · max(box w, box h)`` fills the
  model's input (96×96), no rotation, black border; RGB NCHW ``(x - mean) / std`` with
  mean 0 / std 1 when the graph's first nodes are ``Sub`` and ``Mul`` (or ``bn_data``),
  else 127.5 / 128. Output ``(N, 3)``: two gender scores (0 = female, 1 = male) and age / 100.
* :class:`OnnxAttributeClassifier` — any ONNX classifier (e.g. a FairFace-style
  race/gender/age network) described by a small JSON file; see
  :mod:`facegen.backends.attribute_config` for the schema.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from facegen.align import align_face
from facegen.attributes import AttributeEstimate, AttributeSpec, ImageAttributeEstimator
from facegen.backends.attribute_config import ClassifierConfig, OutputAttribute
from facegen.backends.onnx_utils import (
    check_rgb_image,
    input_normalisation,
    load_session,
    run_batched,
    square_image_input,
    static_dim,
    to_blob,
)
from facegen.errors import (
    InvalidArgumentError,
    InvalidModelError,
    ModelNotAvailableError,
    UnknownNameError,
)
from facegen.types import Face

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

__all__ = [
    "GENDERAGE_PRESETS",
    "GENDER_LABELS",
    "GenderAgeOnnx",
    "OnnxAttributeClassifier",
    "box_crop_matrix",
]

logger = logging.getLogger(__name__)

#: Model presets (see :mod:`facegen.hub`) whose ``genderage`` file :class:`GenderAgeOnnx` loads.
GENDERAGE_PRESETS: tuple[str, ...] = ("antelopev2", "buffalo_l")
#: genderage's gender classes in output order (insightface: ``Face.sex`` is 'M' for 1).
GENDER_LABELS: tuple[str, str] = ("female", "male")
#: insightface's default pixel normalisation for its attribute models (graph without Sub/Mul)
_DEFAULT_NORMALISATION = (127.5, 128.0)


def box_crop_matrix(bbox: np.ndarray, size: int, box_scale: float = 1.5) -> np.ndarray:
    """float64 ``(2, 3)`` similarity (no rotation) taking a detection box's neighbourhood to a
    ``size``×``size`` crop, as insightface's ``Attribute.get`` + ``face_align.transform`` build
    it.

    The box centre goes to the crop centre; scale = ``size / (box_scale · max(w, h))``, so the
    crop shows ``box_scale`` times the box's longer side. The centre, scale and scaled centre
    are computed in float32 from the float32 box, as insightface does under NumPy ≥ 2 (NEP 50
    scalar rules), so the warped crop is bit-identical to its crop there. (Under NumPy 1.x
    insightface computes the scale in float64; its crops can then differ by one grey level at a
    few pixels.)
    """
    box = np.asarray(bbox, np.float32).reshape(4)
    w, h = box[2] - box[0], box[3] - box[1]
    side = max(w, h)
    if not side > 0 or not np.isfinite(box).all():
        raise InvalidArgumentError(
            f"face `bbox` must be finite with a positive width or height, got {box.tolist()}"
        )
    half = np.float32(2)
    cx, cy = (box[2] + box[0]) / half, (box[3] + box[1]) / half
    scale = np.float32(size) / (side * np.float32(box_scale))
    return np.array(
        [
            [float(scale), 0.0, size / 2 - float(cx * scale)],
            [0.0, float(scale), size / 2 - float(cy * scale)],
        ],
        np.float64,
    )


def _box_crops(image: np.ndarray, faces: Sequence[Face], size: int, box_scale: float) -> np.ndarray:
    """RGB uint8 ``(N, size, size, 3)`` box crops (bilinear, black outside the image)."""
    return np.stack(
        [
            cv2.warpAffine(
                image,
                box_crop_matrix(f.bbox, size, box_scale),
                (size, size),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=(0, 0, 0),
            )
            for f in faces
        ]
    )


def _softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float64."""
    z = np.asarray(x, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _check_finite(raw: np.ndarray, name: str) -> None:
    if not np.isfinite(raw).all():
        raise InvalidModelError(f"attribute model {name!r} produced NaN or inf outputs")


# =========================================================================== genderage


class GenderAgeOnnx(ImageAttributeEstimator):
    """insightface's ``genderage.onnx``: gender (``female``/``male``) and age in years.

    Parameters
    ----------
    session:
        An ``onnxruntime.InferenceSession`` (or equivalent). When omitted, ``model_path`` is
        opened on ``device``.
    model_path:
        The ``.onnx`` file; also read to decide the input normalisation.
    input_mean, input_std:
        Pixel normalisation ``(x - mean) / std``; by default insightface's rule decides from
        the graph (mean 0 / std 1 when its first 8 nodes include ``Sub``/``_minus`` and
        ``Mul``/``_mul`` names, or one of the first 3 is ``bn_data``; else 127.5 / 128).
        Required when only a session is given.
    name:
        Recorded as :attr:`AttributeEstimate.estimator`.

    The network takes RGB float32 ``(N, 3, S, S)`` (S = 96 for the published file; a graph
    whose batch axis is fixed at 1 is run one face at a time) and returns ``(N, 3)``:
    ``pred[:2]`` gender scores, ``pred[2]`` age / 100. Decoding follows insightface:
    gender = ``argmax(pred[:2])`` (0 → ``"female"``, 1 → ``"male"``), age =
    ``round(pred[2] · 100)`` (numpy's round half to even). ``probabilities["gender"]`` is the
    softmax of the two scores; insightface itself only takes the argmax, so treat it as a
    confidence indication, not a calibrated probability.
    """

    thread_safe = True  # ONNX Runtime sessions run concurrently

    def __init__(
        self,
        session: InferenceSession | None = None,
        *,
        model_path: str | Path | None = None,
        device: str | None = "cpu",
        input_mean: float | None = None,
        input_std: float | None = None,
        name: str = "genderage",
    ) -> None:
        self.session = load_session(session, model_path, device)
        self.model_path = Path(model_path) if model_path is not None else None
        self.name = name
        self.attributes = (
            AttributeSpec("gender", "categorical", GENDER_LABELS),
            AttributeSpec("age", "numeric", unit="years"),
        )
        where = str(model_path) if model_path is not None else "genderage session"

        self.input_name, self.input_size, self._fixed_batch_one = square_image_input(
            self.session, where, "a genderage model"
        )

        outputs = self.session.get_outputs()
        if len(outputs) != 1:
            raise InvalidModelError(
                f"{where}: a genderage model must have exactly one output, got {len(outputs)}"
            )
        self.output_name: str = outputs[0].name
        out_shape = list(outputs[0].shape)
        if len(out_shape) != 2 or static_dim(out_shape[1]) not in (3, None):
            raise InvalidModelError(
                f"{where}: a genderage model's output must be (N, 3) (two gender scores and "
                f"age / 100), got {out_shape}"
            )
        self.input_mean, self.input_std = input_normalisation(
            model_path=model_path,
            input_mean=input_mean,
            input_std=input_std,
            default=_DEFAULT_NORMALISATION,
            check_bn_data=True,
            what=where,
        )
        logger.debug(
            "%s: input %d, mean %g, std %g", where, self.input_size, self.input_mean, self.input_std
        )

    @classmethod
    def from_pretrained(
        cls,
        preset: str = "buffalo_l",
        model_path: str | Path | None = None,
        *,
        device: str | None = "cpu",
        offline: bool | None = None,
        **kwargs: Any,
    ) -> GenderAgeOnnx:
        """Open the preset's ``genderage`` file (see :func:`facegen.hub.resolve`); a missing
        file raises :class:`~facegen.errors.ModelNotAvailableError` saying where it looked and
        how to provide it."""
        from facegen.hub import get_preset, resolve

        if preset not in GENDERAGE_PRESETS:
            raise UnknownNameError("genderage preset", preset, GENDERAGE_PRESETS)
        filename = get_preset(preset).file_for("genderage")
        path = resolve(preset, filename, path=model_path, offline=offline)
        return cls(model_path=path, device=device, **kwargs)

    def model_files(self) -> dict[str, str]:
        return {} if self.model_path is None else {"genderage": str(self.model_path.absolute())}

    def preprocess(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """The network's input for ``faces`` of ``image`` (RGB uint8 ``(H, W, 3)``): float32
        ``(N, 3, S, S)`` RGB, ``(x - input_mean) / input_std``."""
        img = check_rgb_image(image)
        if not faces:
            return np.zeros((0, 3, self.input_size, self.input_size), np.float32)
        crops = _box_crops(img, faces, self.input_size, 1.5)
        return to_blob(crops, self.input_mean, self.input_std)

    def decode(self, raw: np.ndarray) -> list[AttributeEstimate]:
        """Raw outputs ``(N, 3)`` → one estimate per row (see the class docstring)."""
        pred = np.asarray(raw, np.float32).reshape(len(raw), -1)
        if pred.shape[1] != 3:
            raise InvalidModelError(
                f"a genderage model must output 3 values per face, got {pred.shape[1]}"
            )
        _check_finite(pred, self.name)
        probs = _softmax(pred[:, :2])
        out: list[AttributeEstimate] = []
        for row, p in zip(pred, probs):
            gender = GENDER_LABELS[int(np.argmax(row[:2]))]
            age = float(np.round(row[2] * np.float32(100)))
            out.append(
                AttributeEstimate(
                    {"gender": gender, "age": age},
                    {"gender": dict(zip(GENDER_LABELS, (float(p[0]), float(p[1]))))},
                    estimator=self.name,
                )
            )
        return out

    def estimate(self, image: np.ndarray, faces: Sequence[Face]) -> list[AttributeEstimate]:
        """One estimate per face of ``image`` (RGB uint8 ``(H, W, 3)``), in order, batched."""
        blob = self.preprocess(image, faces)
        if not len(blob):
            return []
        raw = run_batched(
            self.session,
            self.input_name,
            [self.output_name],
            blob,
            fixed_batch_one=self._fixed_batch_one,
        )[0]
        return self.decode(raw)


# =========================================================================== JSON classifier


class OnnxAttributeClassifier(ImageAttributeEstimator):
    """An ONNX face-attribute classifier described by a :class:`ClassifierConfig` (a JSON).

    The face is cut as the config says (``crop``: a 5-point aligned crop with
    :func:`facegen.align.align_face`, or the detection-box crop of :class:`GenderAgeOnnx`
    with ``box_scale``), converted to the network's ``color`` order and ``layout``, and
    normalised ``(pixel / scale - mean[c]) / std[c]``. Each attribute reads a slice of one
    output (see :mod:`facegen.backends.attribute_config`).

    Parameters
    ----------
    config:
        The classifier's description (:meth:`ClassifierConfig.from_json`).
    session:
        An ``onnxruntime.InferenceSession`` (or equivalent); when omitted, ``model_path`` (or
        the config's ``model``) is opened on ``device``.
    model_path:
        Overrides the config's ``model`` file.
    """

    thread_safe = True

    def __init__(
        self,
        config: ClassifierConfig,
        session: InferenceSession | None = None,
        *,
        model_path: str | Path | None = None,
        device: str | None = "cpu",
    ) -> None:
        if not isinstance(config, ClassifierConfig):
            raise InvalidArgumentError(
                f"`config` must be a ClassifierConfig, got {type(config).__name__}"
            )
        self.config = config
        self.name = config.name
        self.attributes = tuple(a.spec for a in config.attributes)
        path = Path(model_path) if model_path is not None else config.model_path
        if session is None and not path.is_file():
            raise ModelNotAvailableError(
                str(path),
                searched=[path],
                reason="file not found",
                hint=f"The classifier description {config.source} names `model` "
                f"{config.model!r} (relative to its folder). Put the file there, edit `model`, "
                "or pass it explicitly (model_path= in Python; --attribute-model on the "
                "command line).",
            )
        self.session = load_session(session, path, device)
        self.model_path = path
        where = f"{path} (described by {config.source})"
        self._check_input(where)
        self._check_outputs(where)
        logger.debug("%s: input %d, crop %s", where, self.input_size, config.crop)

    @classmethod
    def from_json(
        cls,
        config: str | Path,
        *,
        model_path: str | Path | None = None,
        device: str | None = "cpu",
    ) -> OnnxAttributeClassifier:
        """Read the JSON at ``config`` and open its model (or ``model_path``) on ``device``."""
        return cls(ClassifierConfig.from_json(config), model_path=model_path, device=device)

    def model_files(self) -> dict[str, str]:
        files = {"attributes": str(self.model_path.absolute())}
        if self.config.source_path is not None:
            files["attributes_config"] = str(self.config.source_path.absolute())
        return files

    # ----------------------------------------------------------------- graph checks

    def _check_input(self, where: str) -> None:
        cfg = self.config
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise InvalidModelError(
                f"{where}: an attribute classifier must have one 4-D image input, got "
                f"{[(i.name, i.shape) for i in inputs]}"
            )
        inp = inputs[0]
        if getattr(inp, "type", "tensor(float)") != "tensor(float)":
            raise InvalidModelError(f"{where}: the input must be float32, got {inp.type}")
        shape = list(inp.shape)
        chan, hw = (shape[1], shape[2:4]) if cfg.layout == "NCHW" else (shape[3], shape[1:3])
        if static_dim(chan) not in (3, None):
            other = "NHWC" if cfg.layout == "NCHW" else "NCHW"
            raise InvalidModelError(
                f"{where}: `layout` {cfg.layout!r} puts the 3 colour channels at axis "
                f"{1 if cfg.layout == 'NCHW' else 3}, but the input is {shape} (is it {other}?)"
            )
        h, w = (static_dim(d) for d in hw)
        if h is not None and w is not None and h != w:
            raise InvalidModelError(f"{where}: the input must be square, got {shape}")
        graph_size = h if h is not None else w
        if cfg.input_size is None and graph_size is None:
            raise InvalidArgumentError(
                f"{cfg.source}: `input_size` must be given when the model's input size is not "
                f"fixed, got none (input {shape})"
            )
        if cfg.input_size is not None and graph_size not in (None, cfg.input_size):
            raise InvalidModelError(
                f"{where}: `input_size` {cfg.input_size} does not match the model's input {shape}"
            )
        self.input_name: str = inp.name
        self.input_size: int = cfg.input_size or graph_size or 0  # one is set (checked above)
        self._fixed_batch_one = static_dim(shape[0]) == 1

    def _check_outputs(self, where: str) -> None:
        outputs = self.session.get_outputs()
        names = [o.name for o in outputs]
        self._output_names: list[str] = []  # the outputs run, in order
        self._attr_outputs: list[int] = []  # per attribute: its index in _output_names
        for attr in self.config.attributes:
            ref = attr.output
            if ref is None:
                if len(outputs) != 1:
                    raise InvalidArgumentError(
                        f"{self.config.source}: attribute {attr.spec.name!r} must say which "
                        f"`output` it reads (a name or an index) when the model has several, "
                        f"got none; outputs: {names}"
                    )
                ref = 0
            if isinstance(ref, int):
                if not 0 <= ref < len(outputs):
                    raise InvalidModelError(
                        f"{where}: attribute {attr.spec.name!r} reads `output` {ref}, but the "
                        f"model has {len(outputs)} output(s): {names}"
                    )
                out = outputs[ref]
            else:
                if ref not in names:
                    raise InvalidModelError(
                        f"{where}: attribute {attr.spec.name!r} reads `output` {ref!r}, which "
                        f"the model does not have; outputs: {names}"
                    )
                out = outputs[names.index(ref)]
            dims = [static_dim(d) for d in list(out.shape)[1:]]
            width = None if any(d is None for d in dims) else int(np.prod(dims, dtype=np.int64))
            if width is not None:
                _check_width(attr, width, f"{where}: output {out.name!r}")
            if out.name not in self._output_names:
                self._output_names.append(out.name)
            self._attr_outputs.append(self._output_names.index(out.name))

    # ----------------------------------------------------------------- running

    def crops(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """RGB uint8 ``(N, S, S, 3)`` face crops as the config's ``crop`` cuts them."""
        img = check_rgb_image(image)
        cfg, size = self.config, self.input_size
        if not faces:
            return np.zeros((0, size, size, 3), np.uint8)
        if cfg.crop == "box":
            return _box_crops(img, faces, size, cfg.box_scale)
        return np.stack(
            [
                align_face(img, f, size=size, template=cfg.crop, margin=cfg.margin).image
                for f in faces
            ]
        )

    def preprocess(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """The network's float32 input: ``(N, 3, S, S)`` (NCHW) or ``(N, S, S, 3)`` (NHWC),
        channels in ``color`` order, ``(pixel / scale - mean[c]) / std[c]``."""
        cfg = self.config
        x = self.crops(image, faces).astype(np.float32)
        if cfg.color == "BGR":
            x = x[..., ::-1]
        x = x / np.float32(cfg.scale)
        x = (x - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
        if cfg.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, np.float32)

    def decode(self, raws: Sequence[np.ndarray]) -> list[AttributeEstimate]:
        """The model's outputs (in :attr:`output_names` order, each ``(N, …)``) → estimates."""
        flat = [np.asarray(r, np.float32).reshape(len(r), -1) for r in raws]
        for r in flat:
            _check_finite(r, self.name)
        n = len(flat[0]) if flat else 0
        values: list[dict[str, str | float]] = [{} for _ in range(n)]
        probs: list[dict[str, dict[str, float]]] = [{} for _ in range(n)]
        for attr, k in zip(self.config.attributes, self._attr_outputs):
            out = flat[k]
            _check_width(attr, out.shape[1], f"output {self._output_names[k]!r}")
            part = out[:, slice(*attr.slice)] if attr.slice else out
            for i, (v, p) in enumerate(_decode_attribute(attr, part)):
                values[i][attr.spec.name] = v
                if p is not None:
                    probs[i][attr.spec.name] = p
        return [AttributeEstimate(v, p, estimator=self.name) for v, p in zip(values, probs)]

    @property
    def output_names(self) -> list[str]:
        return list(self._output_names)

    def estimate(self, image: np.ndarray, faces: Sequence[Face]) -> list[AttributeEstimate]:
        """One estimate per face of ``image`` (RGB uint8 ``(H, W, 3)``), in order, batched."""
        blob = self.preprocess(image, faces)
        if not len(blob):
            return []
        raws = run_batched(
            self.session,
            self.input_name,
            self._output_names,
            blob,
            fixed_batch_one=self._fixed_batch_one,
        )
        return self.decode(raws)


def _check_width(attr: OutputAttribute, width: int, where: str) -> None:
    """Refuse an output of ``width`` values that ``attr``'s slice or labels do not fit."""
    name = attr.spec.name
    if attr.slice is not None and attr.slice[1] > width:
        raise InvalidModelError(
            f"{where} has {width} value(s) per face, but attribute {name!r} reads `slice` "
            f"{list(attr.slice)}"
        )
    got = attr.slice[1] - attr.slice[0] if attr.slice is not None else width
    need = attr.width
    if got != need:
        raise InvalidModelError(
            f"{where}: attribute {name!r} ({attr.spec.kind}, activation {attr.activation!r}) "
            f"needs {need} value(s), got {got} (output width {width}, `slice` "
            f"{list(attr.slice) if attr.slice else 'all'})"
        )


def _decode_attribute(
    attr: OutputAttribute, part: np.ndarray
) -> list[tuple[str | float, dict[str, float] | None]]:
    """``part`` float32 ``(N, width)`` → per row (value, label probabilities or None)."""
    if attr.spec.kind == "numeric":
        v = part[:, 0].astype(np.float64)
        if attr.activation == "sigmoid":
            v = 1.0 / (1.0 + np.exp(-v))
        return [(float(x * attr.scale + attr.offset), None) for x in v]
    labels = attr.spec.labels
    if attr.activation == "sigmoid":  # one logit for labels[1]
        p1 = 1.0 / (1.0 + np.exp(-part[:, 0].astype(np.float64)))
        p = np.stack([1.0 - p1, p1], axis=1)
    elif attr.activation == "softmax":
        p = _softmax(part)
    else:
        return [(labels[int(np.argmax(row))], None) for row in part]
    return [
        (labels[int(np.argmax(row))], {lab: float(q) for lab, q in zip(labels, row)}) for row in p
    ]
