"""What every identity adapter declares, and the checks done on identities it is given.

An adapter turns identity vectors into diffusion conditioning. Each declares an
:class:`IdentitySpec`: which encoder's vectors it was trained on (``encoder_ids``), their
dimension and whether they must be L2-normalised; and its output form:

* ``"prompt_embeds"``: ``(N, 77, hidden)`` text-encoder states (Arc2Face);
* ``"ip_adapter_image_embeds"``: what diffusers' IP-Adapter path takes (IP-Adapter-FaceID).

:meth:`IdentitySpec.prepare` is the single gate: :class:`~facegen.types.IdentityEmbedding`
objects of another encoder are refused with :class:`IncompatibleEmbeddingError`; raw arrays
or tensors (whose encoder cannot be known) are accepted when their shape fits, and are
checked for NaN/inf and zero vectors.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np
import numpy.typing as npt

from facegen.errors import IncompatibleEmbeddingError
from facegen.types import IdentityEmbedding

if TYPE_CHECKING:
    import torch

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "IdentityAdapter",
    "IdentityInput",
    "IdentitySpec",
    "OutputForm",
    "read_adapter_config",
    "write_adapter_config",
]

OutputForm = Literal["prompt_embeds", "ip_adapter_image_embeds"]

#: What adapters accept as identities: embeddings, or raw ``(N, D)`` / ``(D,)`` vectors
#: (arrays, nested lists or torch tensors; ``Union``: torch is a lazy, forward reference).
IdentityInput = Union[IdentityEmbedding, Sequence[IdentityEmbedding], npt.ArrayLike, "torch.Tensor"]


@dataclass(frozen=True)
class IdentitySpec:
    """The identity vectors an adapter was trained on."""

    encoder_ids: tuple[str, ...]
    dim: int = 512
    normalized: bool = True

    def describe(self) -> str:
        ids = " or ".join(repr(e) for e in self.encoder_ids)
        return f"{self.dim}-D {'L2-normalised ' if self.normalized else ''}vectors from {ids}"

    def prepare(self, identities: IdentityInput, *, adapter: str = "this adapter") -> torch.Tensor:
        """Check ``identities`` and return a float32 torch tensor ``(N, dim)``.

        Normalised when the spec says so (a raw vector is normalised here; an
        :class:`IdentityEmbedding` marked un-normalised is refused rather than fixed,
        because its scale may carry meaning the adapter was not trained on).
        """
        import torch

        if isinstance(identities, IdentityEmbedding):
            identities = [identities]
        if (
            isinstance(identities, (list, tuple))
            and identities
            and all(isinstance(e, IdentityEmbedding) for e in identities)
        ):
            for e in identities:
                if e.encoder_id not in self.encoder_ids:
                    raise IncompatibleEmbeddingError(
                        f"{adapter} needs {self.describe()}, got an embedding from "
                        f"{e.encoder_id!r}. Embed the photo with the matching encoder "
                        "(vectors of different encoders are not interchangeable)."
                    )
                if self.normalized and not e.normalized:
                    raise IncompatibleEmbeddingError(
                        f"{adapter} needs L2-normalised embeddings, got normalized=False; "
                        "call .normalize() first"
                    )
            arr = np.stack([e.vector for e in identities]).astype(np.float32)
        else:
            if isinstance(identities, (list, tuple)) and not identities:
                raise ValueError("`id_embeds` must not be empty")
            t = identities if isinstance(identities, torch.Tensor) else None
            arr = (
                t.detach().to("cpu", torch.float32).numpy()
                if t is not None
                else np.asarray(identities, dtype=np.float32)
            )
            if arr.ndim == 1:
                arr = arr[None]
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != self.dim:
            raise IncompatibleEmbeddingError(
                f"`id_embeds` must be (N, {self.dim}) for {adapter} ({self.describe()}), "
                f"got shape {tuple(arr.shape)}"
            )
        if not np.all(np.isfinite(arr)):
            raise IncompatibleEmbeddingError("`id_embeds` must be finite, got NaN or inf")
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise IncompatibleEmbeddingError(
                "`id_embeds` contains a zero vector; it has no identity (for an "
                "identity-free baseline use the adapter's documented zero-identity option)"
            )
        if self.normalized:
            arr = arr / norms
        return torch.from_numpy(np.ascontiguousarray(arr))


class IdentityAdapter(ABC):
    """An identity → conditioning module. Subclasses set :attr:`identity` and :attr:`output_form`."""

    identity: IdentitySpec
    output_form: OutputForm

    @abstractmethod
    def encode(self, id_embeds: IdentityInput, **kwargs: Any) -> torch.Tensor | list[torch.Tensor]:
        """Conditioning for ``id_embeds``: ``prompt_embeds`` or ``ip_adapter_image_embeds``
        (see the subclass for shapes)."""


#: The file that describes a saved adapter folder (next to its ``.safetensors`` weights).
ADAPTER_CONFIG_NAME = "config.json"


def write_adapter_config(
    folder: str | os.PathLike[str], adapter: IdentityAdapter, **fields: Any
) -> Path:
    """Write ``config.json`` for ``adapter`` in ``folder``: its kind, identity spec, output form
    and ``fields``. Returns the file's path."""
    import json

    from facegen._version import __version__
    from facegen.fileio import atomic_write

    path = Path(folder) / ADAPTER_CONFIG_NAME
    cfg = {
        "adapter": type(adapter).__name__,
        "encoder_ids": list(adapter.identity.encoder_ids),
        "identity_dim": adapter.identity.dim,
        "normalized": adapter.identity.normalized,
        "output_form": adapter.output_form,
        "facegen_version": __version__,
        **fields,
    }
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return path


def read_adapter_config(folder: str | os.PathLike[str], expected: str) -> dict[str, Any]:
    """Read a saved adapter's ``config.json``; it must describe an ``expected`` adapter."""
    import json

    from facegen.errors import InvalidModelError

    path = Path(folder) / ADAPTER_CONFIG_NAME
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidModelError(f"{path}: not a readable adapter config ({exc})") from exc
    if not isinstance(cfg, dict) or cfg.get("adapter") != expected:
        got = cfg.get("adapter") if isinstance(cfg, dict) else type(cfg).__name__
        raise InvalidModelError(f"{path}: `adapter` must be {expected!r}, got {got!r}")
    return cfg
