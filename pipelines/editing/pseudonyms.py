"""Consistent pseudonyms: the same real person gets the same synthetic identity everywhere.

Generative anonymization replaces each face with a synthetic identity. Across a folder, a
person who appears in many photos should become ONE synthetic person (so the anonymized
set stays usable: who-is-with-whom survives, who-is-who does not), and nobody without the
secret should be able to tell which real person a pseudonym stands for.

:class:`Pseudonymizer` does this in two steps:

1. :meth:`~Pseudonymizer.fit`: cluster the faces of the whole set by identity embedding
   (any encoder, e.g. dlib's; ``threshold`` = its same-person cosine). Faces are visited in
   the sorted order of their keys (``"path#face"``) and each joins the nearest cluster whose
   running centre is at least ``threshold`` similar, else opens a new one — deterministic
   for a given set, whatever order the files were found in.
2. Each cluster's pseudonym is a unit vector in the *conditioning* encoder's space (e.g.
   Arc2Face's ArcFace, 512-D) drawn from a seed ``HMAC-SHA256(secret, smallest member key)``:
   the same set and secret give the same pseudonyms on every run (a resumed folder stays
   consistent), and the mapping cannot be recomputed, or inverted, without the secret. No
   real embedding is stored.

``per_face=True`` gives every face its own pseudonym (seeded by its own key) instead.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from facegen.identity import l2_normalize
from facegen.types import IdentityEmbedding

__all__ = ["Pseudonymizer", "cluster_embeddings", "pseudonym_vector"]


def _seed(secret: bytes, key: str, counter: int = 0) -> int:
    digest = hmac.new(secret, f"{key}\x00{counter}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "little")


def pseudonym_vector(secret: bytes, key: str, dim: int, counter: int = 0) -> np.ndarray:
    """A unit float32 ``(dim,)`` vector drawn from ``HMAC-SHA256(secret, key, counter)``."""
    rng = np.random.default_rng(_seed(secret, key, counter))
    return l2_normalize(rng.standard_normal(dim).astype(np.float32))


def cluster_embeddings(
    keys: Sequence[str], embeddings: np.ndarray, threshold: float
) -> dict[str, int]:
    """Leader clustering in sorted key order: ``key → cluster index`` (clusters numbered in
    the order they open). ``embeddings``: ``(N, D)``, any norm."""
    if len(keys) != len(embeddings):
        raise ValueError(f"`embeddings` must have {len(keys)} rows, got {len(embeddings)}")
    if len(set(keys)) != len(keys):
        raise ValueError("`keys` must be unique")
    vecs = l2_normalize(np.asarray(embeddings, np.float32)) if len(keys) else embeddings
    sums: list[np.ndarray] = []
    labels: dict[str, int] = {}
    for n in sorted(range(len(keys)), key=lambda i: keys[i]):
        v = vecs[n]
        best, best_sim = -1, threshold
        if sums:
            centres = l2_normalize(np.stack(sums))
            sims = centres @ v
            k = int(np.argmax(sims))
            if sims[k] >= best_sim:
                best = k
        if best < 0:
            sums.append(v.copy())
            best = len(sums) - 1
        else:
            sums[best] += v
        labels[keys[n]] = best
    return labels


@dataclass
class Pseudonymizer:
    """Map faces to synthetic identities (see the module doc).

    ``secret``: bytes or text, at least 8 bytes. ``encoder_id``/``dim``: the conditioning
    encoder's space the pseudonyms live in. ``threshold``: the clustering encoder's
    same-person cosine. ``max_similarity``: a pseudonym is redrawn (next counter) while it is
    at least this similar to the cluster's own identity when that is in the same space.
    """

    secret: bytes | str
    encoder_id: str
    dim: int
    threshold: float
    per_face: bool = False
    max_similarity: float = 0.3
    _labels: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _owner: dict[int, str] = field(default_factory=dict, init=False, repr=False)
    _centres: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.secret, str):
            self.secret = self.secret.encode()
        if not isinstance(self.secret, bytes) or len(self.secret) < 8:
            raise ValueError("`secret` must be at least 8 bytes (or characters)")
        if self.dim < 2:
            raise ValueError(f"`dim` must be >= 2, got {self.dim}")
        if not -1 <= self.threshold <= 1:
            raise ValueError(f"`threshold` must be in [-1, 1], got {self.threshold}")

    def fit(self, keys: Sequence[str], embeddings: np.ndarray) -> dict[str, int]:
        """Cluster every face of the set; returns ``key → cluster``."""
        self._labels = cluster_embeddings(keys, embeddings, self.threshold)
        self._owner = {}
        for key in sorted(self._labels):
            self._owner.setdefault(self._labels[key], key)
        vecs = l2_normalize(np.asarray(embeddings, np.float32)) if len(keys) else None
        if vecs is not None:
            index = {k: n for n, k in enumerate(keys)}
            sums = np.zeros((len(self._owner), vecs.shape[1]), np.float32)
            for key, c in self._labels.items():
                sums[c] += vecs[index[key]]
            self._centres = l2_normalize(sums)
        return dict(self._labels)

    @property
    def num_people(self) -> int:
        return len(self._owner)

    def cluster_of(self, key: str, embedding: np.ndarray | None = None) -> int | None:
        """The cluster of a fitted face; for an unseen one, the nearest centre at or above
        ``threshold`` (or ``None``)."""
        if key in self._labels:
            return self._labels[key]
        if embedding is None or self._centres is None:
            return None
        sims = self._centres @ l2_normalize(np.asarray(embedding, np.float32))
        k = int(np.argmax(sims))
        return k if sims[k] >= self.threshold else None

    def identity_for(
        self,
        key: str,
        embedding: np.ndarray | None = None,
        original: IdentityEmbedding | None = None,
    ) -> IdentityEmbedding:
        """The synthetic identity of face ``key`` (its cluster's, or its own with ``per_face``
        or when it belongs to no cluster). With ``original`` in the pseudonym space, the
        pseudonym is guaranteed to be below ``max_similarity`` to it."""
        cluster = None if self.per_face else self.cluster_of(key, embedding)
        seed_key = key if cluster is None else f"cluster:{self._owner[cluster]}"
        for counter in range(1000):
            v = pseudonym_vector(self.secret, seed_key, self.dim, counter)
            if (
                original is None
                or original.encoder_id != self.encoder_id
                or float(v @ l2_normalize(original.vector)) < self.max_similarity
            ):
                return IdentityEmbedding(v, self.encoder_id, True)
        raise RuntimeError("no pseudonym below `max_similarity` in 1000 draws")  # pragma: no cover
