"""Sample face photos that ship inside installed packages (no download, nothing committed here).

* ``t1``: insightface's group photo, six different people (1280×886).
* ``hanks``: insightface's ``Tom_Hanks_54745.png``, a 112×112 aligned face.
* ``astronaut``: scikit-image's astronaut (Eileen Collins, public domain), 512×512.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from facegen.errors import MissingDependencyError, UnknownNameError

__all__ = ["SAMPLES", "sample_path"]

SAMPLES: dict[str, tuple[str, str]] = {
    "t1": ("insightface", "data/images/t1.jpg"),
    "hanks": ("insightface", "data/images/Tom_Hanks_54745.png"),
    "astronaut": ("skimage", "data/astronaut.png"),
}


def sample_path(name: str) -> Path:
    """Path of a bundled sample photo; raises when its package is missing."""
    if name not in SAMPLES:
        raise UnknownNameError("sample image", name, SAMPLES)
    package, rel = SAMPLES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise MissingDependencyError(package, purpose=f"the {name!r} sample photo")
    path = Path(spec.origin).parent / rel
    if not path.is_file():
        raise MissingDependencyError(package, purpose=f"the {name!r} sample photo ({path} missing)")
    return path
