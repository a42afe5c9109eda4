"""Prior preservation for the LoRA loop (DreamBooth): class images of other people.

:class:`ClassImages` names a folder of them; :func:`class_image_cache` tops it up to the
wanted number with images the base model makes (``prompt`` for prompt conditioning; for
Arc2Face, random identities, stored next to the images as ``identities.safetensors``) and
caches them like the photos (latents, and the identities for Arc2Face);
:class:`PairedDataset` pairs every photo with a class image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facegen.errors import InvalidArgumentError
from facegen.training.diffusion.components import TrainingRun
from facegen.training.diffusion.config import ConditionedTrainConfig
from facegen.training.diffusion.face_cache import CacheDataset, FaceCache

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

__all__ = [
    "CLASS_IDENTITIES_NAME",
    "ClassImages",
    "PairedDataset",
    "base_pipeline",
    "class_image_cache",
]

logger = logging.getLogger(__name__)

#: The identities of generated Arc2Face class images, by file name.
CLASS_IDENTITIES_NAME = "identities.safetensors"


@dataclass(frozen=True)
class ClassImages:
    """``count`` class images in ``folder``; ``prompt`` makes the missing ones (prompts)."""

    folder: Path
    count: int
    prompt: str


class PairedDataset:
    """Instance item ``i % n`` with class item ``i % m`` (keys ``class_*``), DreamBooth-style."""

    def __init__(self, instance: CacheDataset, klass: CacheDataset) -> None:
        self.instance, self.klass = instance, klass

    def __len__(self) -> int:
        return max(len(self.instance), len(self.klass))

    def __getitem__(self, i: int) -> dict[str, Any]:
        out = dict(self.instance[i % len(self.instance)])
        out.update({f"class_{k}": v for k, v in self.klass[i % len(self.klass)].items()})
        return out


def base_pipeline(run: TrainingRun[ConditionedTrainConfig]) -> StableDiffusionPipeline:
    """The base model as a pipeline of the run's conditioning (the LoRA in it once added)."""
    from facegen.pipelines.generation.id_to_face import IDToFacePipeline

    return run.pipeline(IDToFacePipeline if run.cfg.arc2face else None)


def _generate_class_images(run: TrainingRun[ConditionedTrainConfig], classes: ClassImages) -> None:
    """Top ``classes.folder`` up to ``classes.count`` images made by the base model (in the
    run's inference precision)."""
    import torch

    from facegen.embedding_io import load_embeddings, save_embeddings
    from facegen.image_io import find_images
    from facegen.types import IdentityEmbedding

    cfg, folder = run.cfg, classes.folder
    folder.mkdir(parents=True, exist_ok=True)
    have = find_images([folder])
    todo = classes.count - len(have)
    if todo <= 0:
        return
    arc = cfg.arc2face
    if arc and have and not (folder / CLASS_IDENTITIES_NAME).is_file():
        raise InvalidArgumentError(
            f"{folder} holds class images without {CLASS_IDENTITIES_NAME}; for Arc2Face, "
            "generated class images need their identities: empty the folder or fill it yourself"
        )
    logger.info("generating %d class images in %s", todo, folder)
    pipe = base_pipeline(run)
    embs: list[IdentityEmbedding] = []
    names: list[str] = []
    if arc and (folder / CLASS_IDENTITIES_NAME).is_file():
        embs, names = load_embeddings(folder / CLASS_IDENTITIES_NAME)
    rng = np.random.default_rng(cfg.seed + 1)
    start = len(have)
    for k in range(todo):
        i = start + k
        gen = torch.Generator().manual_seed(cfg.seed + 1000 + i)
        size = {"height": cfg.resolution, "width": cfg.resolution}
        steps = cfg.validation_inference_steps
        if arc:
            v = rng.standard_normal(512).astype(np.float32)
            emb = IdentityEmbedding(v / np.linalg.norm(v), "arcface-onnx/arc2face")
            with run.precision():
                out = pipe(id_embeds=[emb], generator=gen, num_inference_steps=steps, **size)
            embs.append(emb)
        else:
            with run.precision():
                out = pipe(classes.prompt, generator=gen, num_inference_steps=steps, **size)
        image = out.images[0]
        name = f"class-{i:05d}.png"
        image.save(folder / name)
        names.append(name)
    if arc:
        save_embeddings(folder / CLASS_IDENTITIES_NAME, embs, names=names)


def _class_cache(run: TrainingRun[ConditionedTrainConfig], classes: ClassImages) -> FaceCache:
    """The class images (made or topped up first) cached like the instance photos."""
    import torch

    from facegen.embedding_io import load_embeddings
    from facegen.training.diffusion.face_cache_build import (
        build_face_cache,
        build_image_cache,
        list_photos,
    )

    cfg, vae, folder = run.cfg, run.vae, classes.folder
    with torch.no_grad():
        _generate_class_images(run, classes)
    cache_dir = run.output_dir / "class_cache"
    if not cfg.arc2face:
        return build_image_cache(folder, cache_dir, size=cfg.resolution, vae=vae)
    ids = folder / CLASS_IDENTITIES_NAME
    if not ids.is_file():  # class photos of real people: analyse them like the instance photos
        return build_face_cache(
            folder,
            cache_dir,
            analyzer=run.analyzer,
            size=cfg.resolution,
            template=cfg.template,  # type: ignore[arg-type]
            margin=cfg.crop_margin,
            vae=vae,
        )
    embs, names = load_embeddings(ids)
    by_name = dict(zip(names, embs))
    paths = list_photos(folder)
    missing = [p.name for p in paths if p.name not in by_name]
    if missing:
        raise InvalidArgumentError(
            f"{ids} must name every class image, got none for {', '.join(missing[:3])}"
        )
    return build_image_cache(
        paths, cache_dir, size=cfg.resolution, vae=vae, embeddings=[by_name[p.name] for p in paths]
    )


def class_image_cache(run: TrainingRun[ConditionedTrainConfig], classes: ClassImages) -> FaceCache:
    """The cache of ``classes`` (``output_dir/class_cache``), built on the main process
    (after making the missing images) and opened by every process."""
    if run.accelerator.is_main_process:
        _class_cache(run, classes)
    run.accelerator.wait_for_everyone()
    return FaceCache(run.output_dir / "class_cache")
