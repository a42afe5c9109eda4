"""Writes face-analysis results to a folder: JSON, aligned crops, embeddings, previews.

Layout for an image ``photo.jpg`` (names made safe and unique within the folder, ignoring
case; an input named ``manifest.*`` gets ``manifest-2``)::

    OUT/photo.json                 faces (bbox, score, kps5, landmarks, embedding info), files
    OUT/photo_face0.png            aligned crops (template and size as configured)
    OUT/photo.safetensors          embeddings (N, D) float32 + encoder metadata
    OUT/photo_preview.png          annotated preview
    OUT/manifest.json              how the run was made + every image's status
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facegen._version import __version__
from facegen.align import TEMPLATES, align_face
from facegen.embedding_io import save_embeddings
from facegen.errors import OutputError
from facegen.fileio import write_json
from facegen.image_io import save_image
from facegen.paths import safe_child, safe_name
from facegen.types import Face
from facegen.validate import check_choice, check_int, check_number
from facegen.visualize import draw_faces

__all__ = ["MANIFEST_NAME", "AnalysisWriter"]

#: Base name of the run's manifest; no image's outputs may use it.
MANIFEST_NAME = "manifest"


class AnalysisWriter:
    """Collects per-image results under ``out_dir`` and a ``manifest.json`` at :meth:`close`."""

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        crop_size: int = 112,
        template: str = "arcface",
        margin: float = 1.0,
        preview: bool = True,
        provenance: dict[str, Any] | None = None,
    ) -> None:
        crop_size = check_int(crop_size, "crop_size", minimum=16, maximum=4096)
        check_choice(template, "template", TEMPLATES)
        margin = check_number(margin, "margin", minimum=0, min_open=True)
        self.out_dir = Path(out_dir)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"cannot create output folder {self.out_dir}: {exc.strerror or exc}"
            ) from exc
        if not os.access(self.out_dir, os.W_OK):
            raise OutputError(f"output folder {self.out_dir} is not writable")
        self.crop_size = crop_size
        self.template = template
        self.margin = margin
        self.preview = preview
        self.provenance = {
            "facegen_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "crop_size": crop_size,
            "template": template,
            "margin": margin,
            **(provenance or {}),
        }
        # base names in use, lower-cased (one file on case-insensitive disks); "manifest" is
        # reserved so that an input called manifest.jpg cannot write over manifest.json
        self._used: set[str] = {MANIFEST_NAME}
        self._images: list[dict[str, Any]] = []

    def _unique(self, source: Path) -> str:
        base = safe_name(source.stem)
        name, k = base, 2
        while name.lower() in self._used:
            name, k = f"{base}-{k}", k + 1
        self._used.add(name.lower())
        return name

    def write(
        self, source: str | os.PathLike[str], image: np.ndarray, faces: Sequence[Face]
    ) -> dict[str, Any]:
        """Write everything for one analysed image; returns its JSON record."""
        name = self._unique(Path(source))
        record: dict[str, Any] = {
            "source": str(source),
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "faces": [],
        }
        for i, face in enumerate(faces):
            fd = face.to_dict()
            aligned = align_face(
                image, face, size=self.crop_size, template=self.template, margin=self.margin
            )
            crop_name = f"{name}_face{i}.png"
            save_image(
                aligned.image,
                safe_child(self.out_dir, crop_name),
                metadata={
                    "source": str(source),
                    "face_index": i,
                    "template": self.template,
                    "matrix": aligned.matrix.tolist(),
                    "facegen_version": __version__,
                },
            )
            fd["crop"] = crop_name
            fd["crop_matrix"] = np.round(aligned.matrix, 6).tolist()
            record["faces"].append(fd)
        embs = [f.embedding for f in faces if f.embedding is not None]
        if embs and len(embs) == len(faces):
            emb_name = f"{name}.safetensors"
            save_embeddings(
                safe_child(self.out_dir, emb_name),
                embs,
                names=[f"{source}#{i}" for i in range(len(embs))],
                extra={"source": str(source)},
            )
            record["embeddings"] = emb_name
        if self.preview:
            prev_name = f"{name}_preview.png"
            save_image(
                draw_faces(image, faces),
                safe_child(self.out_dir, prev_name),
                metadata={"source": str(source), "facegen_version": __version__},
            )
            record["preview"] = prev_name
        write_json(safe_child(self.out_dir, f"{name}.json"), record)
        self._images.append({"source": str(source), "result": f"{name}.json", "faces": len(faces)})
        return record

    def add_failure(self, source: str | os.PathLike[str], error: str) -> None:
        self._images.append({"source": str(source), "error": error})

    def close(self) -> Path:
        """Write ``manifest.json`` (provenance and per-image status)."""
        path = self.out_dir / f"{MANIFEST_NAME}.json"
        write_json(path, {**self.provenance, "images": self._images})
        return path
