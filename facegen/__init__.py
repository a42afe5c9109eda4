"""facegen: generative face synthesis and identity-preserving face editing.

The core package holds the typed objects, errors, image I/O, face detection, landmarks,
alignment, identity encoders and identity math, and the model-source handling. Heavy
backends (dlib, onnxruntime) load lazily, when first used.
"""

from facegen._version import __version__
from facegen.errors import (
    AmbiguousFaceError,
    FacegenError,
    FaceIndexError,
    IncompatibleEmbeddingError,
    InvalidImageError,
    InvalidModelError,
    ModelNotAvailableError,
    NoFaceDetectedError,
    UnknownNameError,
)
from facegen.types import AlignedFace, Face, IdentityEmbedding

__all__ = [
    "AlignedFace",
    "AmbiguousFaceError",
    "Face",
    "FaceIndexError",
    "FacegenError",
    "IdentityEmbedding",
    "IncompatibleEmbeddingError",
    "InvalidImageError",
    "InvalidModelError",
    "ModelNotAvailableError",
    "NoFaceDetectedError",
    "UnknownNameError",
    "__version__",
]
