"""A stand-in generator for dataset tests: real ORL photos instead of diffusion samples.

Tiny diffusion models make noise, so the dataset machinery (verification, retries, journals,
shards, executors) is exercised with a generator that returns a real photo of the person
whose embedding is nearest to each requested identity vector, chosen by the seed.
Importable by subprocesses and Ray actors (see ``photo_worker``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

PEOPLE = ["s10", "s11", "s12"]
ORL_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "orl_faces"


def load_people(orl_dir: Path, analyzer: Any, people: list[str] = PEOPLE) -> list[tuple]:
    """Per person: target vector (dlib, from photo 1) and photos 2–10, upscaled ×2."""
    from facegen.image_io import load_image

    out = []
    for p in people:
        photos = [
            cv2.resize(
                load_image(orl_dir / p / f"{k}.pgm"),
                None,
                fx=2,
                fy=2,
                interpolation=cv2.INTER_CUBIC,
            )
            for k in range(1, 11)
        ]
        target = analyzer.embed(photos[0]).vector
        out.append((target, photos[1:]))
    return out


class PhotoGenerator:
    """Returns a real photo of the identity nearest to each vector; photo chosen by the seed.

    ``noise_every``: seeds divisible by it give noise (no face), to exercise retries.
    ``fail_after``: raise after that many calls (a crash in the middle of a run).
    ``delay``: seconds to sleep per call (for kill tests).
    """

    def __init__(
        self, people, noise_every: int = 0, fail_after: int | None = None, delay: float = 0.0
    ) -> None:
        self.targets = np.stack([t for t, _ in people])
        self.photos = [ph for _, ph in people]
        self.noise_every = noise_every
        self.fail_after = fail_after
        self.delay = delay
        self.calls = 0
        self.conditions: list[dict] = []

    def __call__(self, vectors: np.ndarray, seeds: list[int], conds: Any = None) -> list:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        if self.delay:
            time.sleep(self.delay)
        if conds is not None:
            self.conditions.extend(conds)
        out = []
        for v, s in zip(vectors, seeds):
            if self.noise_every and s % self.noise_every == 0:
                out.append(np.random.default_rng(s).integers(0, 255, (224, 184, 3), dtype=np.uint8))
                continue
            who = int(np.argmax(self.targets @ v))
            out.append(self.photos[who][s % len(self.photos[who])])
        return out


def write_identities(out: Path, people) -> None:
    """Put the real people's vectors in the run folder as its identities (instead of sampled)."""
    from facegen.embedding_io import save_embeddings
    from facegen.types import IdentityEmbedding

    out.mkdir(parents=True, exist_ok=True)
    vecs = [t / np.linalg.norm(t) for t, _ in people]
    save_embeddings(
        out / "identities.safetensors",
        [IdentityEmbedding(v.astype(np.float32), "dlib-resnet-v1", True) for v in vecs],
    )


def photo_worker(cfg: Any, device: str = "cpu", delay: float = 0.0) -> Any:
    """A dataset Worker factory: ORL photos generate, dlib verifies (no diffusion model)."""
    from facegen.analyzer import FaceAnalyzer
    from facegen.pipelines.dataset.run import Worker

    analyzer = FaceAnalyzer.from_names("dlib", None, "dlib")
    gen = PhotoGenerator(load_people(ORL_DIR, analyzer), delay=delay)
    return Worker(gen, analyzer, "dlib-resnet-v1", 128, size=64, takes_control=True)
