"""facegen.pipelines: diffusion pipelines, face editing and the synthetic dataset generator.

The public names are exported here lazily, so user code imports them from the package and
never from a file path, and ``import facegen.pipelines`` stays cheap (torch and diffusers
load when a pipeline name is first used)::

    from facegen.pipelines import from_preset, sample_identities

    pipe = from_preset("arc2face", device="cuda", dtype="float16")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name → the module that defines it
_EXPORTS: dict[str, str] = {
    # generation
    "FaceGenerationOutput": "facegen.pipelines.generation.id_to_face",
    "IDToFaceControlNetPipeline": "facegen.pipelines.generation.id_to_face",
    "IDToFacePipeline": "facegen.pipelines.generation.id_to_face",
    "IDTextToFaceControlNetPipeline": "facegen.pipelines.generation.id_text_to_face",
    "IDTextToFacePipeline": "facegen.pipelines.generation.id_text_to_face",
    "IDTextToFaceControlNetInpaintPipeline": "facegen.pipelines.generation.inpaint",
    "IDTextToFaceInpaintPipeline": "facegen.pipelines.generation.inpaint",
    "PRESETS": "facegen.pipelines.generation.presets",
    "PresetInfo": "facegen.pipelines.generation.presets",
    "from_preset": "facegen.pipelines.generation.presets",
    "preset_info": "facegen.pipelines.generation.presets",
    "preset_names": "facegen.pipelines.generation.presets",
    "ControlImage": "facegen.pipelines.generation.request",
    "EmbeddingIdentities": "facegen.pipelines.generation.request",
    "GenerateRequest": "facegen.pipelines.generation.request",
    "PhotoIdentities": "facegen.pipelines.generation.request",
    "PhotoIdentity": "facegen.pipelines.generation.request",
    "PoseReference": "facegen.pipelines.generation.request",
    "RandomIdentities": "facegen.pipelines.generation.request",
    "GenerateResult": "facegen.pipelines.generation.job",
    "GeneratorInfo": "facegen.pipelines.generation.generator_folder",
    "load_generator": "facegen.pipelines.generation.generator_folder",
    "save_generator": "facegen.pipelines.generation.generator_folder",
    "SpaceToDepthLatent": "facegen.pipelines.generation.space_to_depth",
    "load_generate_pipeline": "facegen.pipelines.generation.job",
    "run_generate": "facegen.pipelines.generation.job",
    # identities
    "sample_identities": "facegen.pipelines.identities",
    "verify_separation": "facegen.pipelines.separation",
    # editing
    "EditOptions": "facegen.pipelines.editing.options",
    "edit_faces": "facegen.pipelines.editing.face_edit",
    "reenact": "facegen.pipelines.editing.face_edit",
    "swap": "facegen.pipelines.editing.swap",
    "AnonymizeOptions": "facegen.pipelines.editing.anonymize",
    "anonymize_image": "facegen.pipelines.editing.anonymize",
    "anonymize_folder": "facegen.pipelines.editing.anonymize_folder",
    "anonymize_file": "facegen.pipelines.editing.jobs",
    "face_replacement": "facegen.pipelines.editing.jobs",
    "load_edit_pipeline": "facegen.pipelines.editing.jobs",
    "reenact_file": "facegen.pipelines.editing.jobs",
    "swap_file": "facegen.pipelines.editing.jobs",
    "FaceTracker": "facegen.pipelines.editing.tracking",
    "TrackerConfig": "facegen.pipelines.editing.tracking",
    "track_faces": "facegen.pipelines.editing.tracking",
    "anonymize_video": "facegen.pipelines.editing.video_anonymize",
    "swap_video": "facegen.pipelines.editing.video_swap",
    # dataset
    "DatasetConfig": "facegen.pipelines.dataset.config",
    "build_dataset": "facegen.pipelines.dataset.build",
    "dataset_report": "facegen.pipelines.dataset.report",
}

__all__ = [
    "PRESETS",
    "AnonymizeOptions",
    "ControlImage",
    "DatasetConfig",
    "EditOptions",
    "EmbeddingIdentities",
    "FaceGenerationOutput",
    "FaceTracker",
    "GenerateRequest",
    "GenerateResult",
    "GeneratorInfo",
    "IDTextToFaceControlNetInpaintPipeline",
    "IDTextToFaceControlNetPipeline",
    "IDTextToFaceInpaintPipeline",
    "IDTextToFacePipeline",
    "IDToFaceControlNetPipeline",
    "IDToFacePipeline",
    "PhotoIdentities",
    "PhotoIdentity",
    "PoseReference",
    "PresetInfo",
    "RandomIdentities",
    "SpaceToDepthLatent",
    "TrackerConfig",
    "anonymize_file",
    "anonymize_folder",
    "anonymize_image",
    "anonymize_video",
    "build_dataset",
    "dataset_report",
    "edit_faces",
    "face_replacement",
    "from_preset",
    "load_edit_pipeline",
    "load_generate_pipeline",
    "load_generator",
    "preset_info",
    "preset_names",
    "reenact",
    "reenact_file",
    "run_generate",
    "sample_identities",
    "save_generator",
    "swap",
    "swap_file",
    "swap_video",
    "track_faces",
    "verify_separation",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from facegen.pipelines.dataset.build import (
        build_dataset,
    )
    from facegen.pipelines.dataset.config import (
        DatasetConfig,
    )
    from facegen.pipelines.dataset.report import (
        dataset_report,
    )
    from facegen.pipelines.editing.anonymize import (
        AnonymizeOptions,
        anonymize_image,
    )
    from facegen.pipelines.editing.anonymize_folder import (
        anonymize_folder,
    )
    from facegen.pipelines.editing.face_edit import (
        edit_faces,
        reenact,
    )
    from facegen.pipelines.editing.jobs import (
        anonymize_file,
        face_replacement,
        load_edit_pipeline,
        reenact_file,
        swap_file,
    )
    from facegen.pipelines.editing.options import (
        EditOptions,
    )
    from facegen.pipelines.editing.swap import (
        swap,
    )
    from facegen.pipelines.editing.tracking import (
        FaceTracker,
        TrackerConfig,
        track_faces,
    )
    from facegen.pipelines.editing.video_anonymize import (
        anonymize_video,
    )
    from facegen.pipelines.editing.video_swap import (
        swap_video,
    )
    from facegen.pipelines.generation.generator_folder import (
        GeneratorInfo,
        load_generator,
        save_generator,
    )
    from facegen.pipelines.generation.id_text_to_face import (
        IDTextToFaceControlNetPipeline,
        IDTextToFacePipeline,
    )
    from facegen.pipelines.generation.id_to_face import (
        FaceGenerationOutput,
        IDToFaceControlNetPipeline,
        IDToFacePipeline,
    )
    from facegen.pipelines.generation.inpaint import (
        IDTextToFaceControlNetInpaintPipeline,
        IDTextToFaceInpaintPipeline,
    )
    from facegen.pipelines.generation.job import (
        GenerateResult,
        load_generate_pipeline,
        run_generate,
    )
    from facegen.pipelines.generation.presets import (
        PRESETS,
        PresetInfo,
        from_preset,
        preset_info,
        preset_names,
    )
    from facegen.pipelines.generation.request import (
        ControlImage,
        EmbeddingIdentities,
        GenerateRequest,
        PhotoIdentities,
        PhotoIdentity,
        PoseReference,
        RandomIdentities,
    )
    from facegen.pipelines.generation.space_to_depth import (
        SpaceToDepthLatent,
    )
    from facegen.pipelines.identities import (
        sample_identities,
    )
    from facegen.pipelines.separation import (
        verify_separation,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'facegen.pipelines' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
