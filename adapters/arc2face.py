"""Arc2Face's identity encoder: an ArcFace vector → CLIP ``prompt_embeds`` for SD1.5.

The published procedure (Papantoniou et al., Arc2Face, ECCV 2024):

1. tokenize ``"photo of a id person"`` (padded to 77 tokens);
2. take the token embeddings and replace the one of ``id`` with the L2-normalised 512-D
   ArcFace vector, zero-padded to the text encoder's hidden size (768 for SD1.5);
3. run the fine-tuned CLIP text transformer on those embeddings (positional embeddings and
   causal mask as usual) and use ``last_hidden_state`` ``(N, 77, 768)`` as ``prompt_embeds``.

Here step 2 is a forward hook on the text encoder's input-embedding layer (a public torch
and transformers API), so the real ``CLIPTextModel`` runs unmodified on any transformers
version. Unconditional embeddings follow the authors (the empty prompt through the same
fine-tuned encoder); ``unconditional="zero-identity"`` instead runs the ID prompt with a zero
identity vector, which keeps the prompt structure and removes only the identity.

Checkpoints: hub ``FoivosPar/Arc2Face`` subfolder ``encoder`` (``config.json`` +
``pytorch_model.bin``, a ``CLIPTextModel``) and ``arc2face`` (the UNet); tokenizer, VAE and
scheduler from ``stable-diffusion-v1-5/stable-diffusion-v1-5``. Identity vectors come from
Arc2Face's own ``arcface.onnx`` (faces detected with antelopev2's SCRFD): facegen's
``arcface-onnx`` encoder with the ``arc2face-arcface`` preset (encoder id
``arcface-onnx/arc2face``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from facegen.adapters.base import IdentityAdapter, IdentityInput, IdentitySpec
from facegen.validate import check_choice, check_int

if TYPE_CHECKING:
    import torch
    from transformers import CLIPTextModel, CLIPTokenizer

__all__ = ["ARC2FACE_PROMPT", "ARC2FACE_REPO", "SD15_REPO", "Arc2FaceIDEncoder"]

ARC2FACE_REPO = "FoivosPar/Arc2Face"
SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
ARC2FACE_PROMPT = "photo of a id person"
ARC2FACE_ENCODER_IDS = ("arcface-onnx/arc2face",)

Unconditional = Literal["empty-prompt", "zero-identity"]
#: The negative embeddings :meth:`Arc2FaceIDEncoder.encode_unconditional` can make.
UNCONDITIONAL_KINDS: tuple[str, ...] = ("empty-prompt", "zero-identity")


class Arc2FaceIDEncoder(IdentityAdapter):
    """Arc2Face's ID encoder around a ``CLIPTextModel`` and its tokenizer.

    ``encode(id_embeds)`` → float ``(N, 77, hidden)`` ``prompt_embeds`` on the text encoder's
    device and dtype. ``id_embeds``: :class:`~facegen.types.IdentityEmbedding` objects from
    Arc2Face's ArcFace (``arcface-onnx/arc2face``), or raw ``(N, 512)`` vectors.

    Other identity encoders (a generator trained by ``facegen train generator``):
    ``encoder_ids``, ``identity_dim`` (at most the text encoder's hidden size; a narrower
    vector is zero-padded, as Arc2Face pads 512 into 768) and ``normalized`` describe the
    vectors it accepts; ``prompt`` / ``id_token`` the prompt whose ``id_token`` embedding is
    replaced.
    """

    output_form = "prompt_embeds"

    def __init__(
        self,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        *,
        prompt: str = ARC2FACE_PROMPT,
        id_token: str = "id",
        encoder_ids: tuple[str, ...] = ARC2FACE_ENCODER_IDS,
        identity_dim: int = 512,
        normalized: bool = True,
        identity_center: Sequence[float] | None = None,
    ) -> None:
        hidden = int(text_encoder.config.hidden_size)
        identity_dim = check_int(identity_dim, "identity_dim", minimum=1)
        self.identity = IdentitySpec(tuple(encoder_ids), dim=identity_dim, normalized=normalized)
        if hidden < self.identity.dim:
            raise ValueError(
                f"the text encoder's hidden size must be >= {self.identity.dim} to hold a "
                f"{self.identity.dim}-D identity vector, got {hidden}"
            )
        token = tokenizer.encode(id_token, add_special_tokens=False)
        if len(token) != 1:
            raise ValueError(f"`id_token` must be a single token, got {id_token!r} → {token}")
        ids = tokenizer(
            prompt,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        positions = (ids[0] == token[0]).nonzero().flatten()
        if len(positions) != 1:
            raise ValueError(
                f"`prompt` must contain {id_token!r} exactly once, got {len(positions)} in {prompt!r}"
            )
        empty = tokenizer(
            "",
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.prompt = prompt
        self._id_token = id_token
        self.hidden_size = hidden
        self._input_ids = ids
        self._empty_ids = empty
        self._id_position = int(positions[0])
        self._uncond_cache: dict[tuple[str, str, str], torch.Tensor] = {}
        self.identity_center: tuple[float, ...] | None = None
        if identity_center is not None:
            center = tuple(float(v) for v in identity_center)
            if len(center) != self.identity.dim or not all(math.isfinite(v) for v in center):
                raise ValueError(
                    f"`identity_center` must be {self.identity.dim} finite numbers, got "
                    f"{len(center)}"
                )
            self.identity_center = center

    @property
    def device(self) -> torch.device:
        return self.text_encoder.device

    @property
    def dtype(self) -> torch.dtype:
        return self.text_encoder.dtype

    @contextmanager
    def _identity_tokens(self, padded: torch.Tensor) -> Iterator[None]:
        """Replace the ``id`` token's embedding by ``padded`` (N, hidden) while active."""
        pos = self._id_position

        def hook(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            out = output.clone()
            out[:, pos] = padded.to(out.dtype)
            return out

        handle = self.text_encoder.get_input_embeddings().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _run(self, input_ids: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            return self.text_encoder(input_ids=input_ids.to(self.device))[0]

    def encode(self, id_embeds: IdentityInput, **_: Any) -> torch.Tensor:
        """``prompt_embeds`` ``(N, 77, hidden)`` for ``N`` identities."""
        import torch

        vecs = self.identity.prepare(id_embeds, adapter="Arc2Face")
        with torch.inference_mode():
            return self.prompt_embeds(vecs)

    def centered(self, vectors: torch.Tensor) -> torch.Tensor:
        """With ``identity_center``: each non-zero row minus the center, L2-normalised (the
        zero rows — the null identity of classifier-free guidance — stay zero). An encoder
        whose vectors share a large common direction (dlib's: different people lie at
        cosine ~0.87) then writes what tells people apart, not what they share, into the
        token. Without a center: the rows unchanged (Arc2Face's own recipe)."""
        import torch

        if self.identity_center is None:
            return vectors
        center = torch.tensor(self.identity_center, dtype=vectors.dtype, device=vectors.device)
        live = (vectors.abs().sum(dim=1, keepdim=True) > 0).to(vectors.dtype)
        shifted = vectors - center * live
        norm = shifted.norm(dim=1, keepdim=True).clamp_min(1e-6)
        return shifted / norm * live

    def prompt_embeds(self, vectors: torch.Tensor) -> torch.Tensor:
        """``prompt_embeds`` ``(N, 77, hidden)`` of float ``(N, identity_dim)`` vectors taken
        as they are (not checked, not normalised: :meth:`encode` does that first), with
        autograd as the caller has it, so training the text encoder differentiates through
        it."""
        import torch.nn.functional as F

        if vectors.ndim != 2 or vectors.shape[1] != self.identity.dim:
            raise ValueError(
                f"`vectors` must be (N, {self.identity.dim}), got {tuple(vectors.shape)}"
            )
        vectors = self.centered(vectors)
        padded = F.pad(vectors, (0, self.hidden_size - vectors.shape[1])).to(self.device)
        with self._identity_tokens(padded):
            ids = self._input_ids.repeat(len(vectors), 1).to(self.device)
            return self.text_encoder(input_ids=ids)[0]

    def encode_unconditional(self, n: int, kind: Unconditional = "empty-prompt") -> torch.Tensor:
        """``(n, 77, hidden)`` negative embeddings: the authors' empty prompt, or a zero identity."""
        import torch

        n = check_int(n, "n", minimum=1)
        check_choice(kind, "kind", UNCONDITIONAL_KINDS)
        # Constant for given weights: cached per (kind, device, dtype) while the encoder is in
        # eval mode (call clear_cache() after changing its weights in place).
        key = (kind, str(self.device), str(self.dtype))
        one = None if self.text_encoder.training else self._uncond_cache.get(key)
        if one is None:
            if kind == "empty-prompt":
                one = self._run(self._empty_ids)
            else:
                zeros = torch.zeros(1, self.hidden_size, device=self.device)
                with self._identity_tokens(zeros):
                    one = self._run(self._input_ids)
            if not self.text_encoder.training:
                self._uncond_cache[key] = one
        return one.repeat(n, 1, 1)

    def clear_cache(self) -> None:
        """Forget cached unconditional embeddings (after editing the encoder's weights)."""
        self._uncond_cache.clear()

    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """Save as a folder: ``config.json``, ``encoder/`` (CLIPTextModel, safetensors) and
        ``tokenizer/``; :meth:`from_pretrained` reads it back."""
        from facegen.adapters.base import write_adapter_config

        out = Path(folder)
        self.text_encoder.save_pretrained(out / "encoder", safe_serialization=True)
        self.tokenizer.save_pretrained(out / "tokenizer")
        extra = {} if self.identity_center is None else {"identity_center": self.identity_center}
        write_adapter_config(out, self, prompt=self.prompt, id_token=self._id_token, **extra)
        return out

    @classmethod
    def from_pretrained(
        cls,
        repo_id: str = ARC2FACE_REPO,
        *,
        subfolder: str = "encoder",
        tokenizer_repo: str = SD15_REPO,
        revision: str | None = None,
        local_files_only: bool | None = None,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
    ) -> Arc2FaceIDEncoder:
        """Load the fine-tuned encoder (``repo_id``/``subfolder``) and SD1.5's tokenizer, or a
        folder written by :meth:`save_pretrained`."""
        from transformers import CLIPTextModel, CLIPTokenizer

        from facegen.adapters.base import ADAPTER_CONFIG_NAME, read_adapter_config
        from facegen.hub import load_pretrained

        if (Path(repo_id) / ADAPTER_CONFIG_NAME).is_file() and not (
            Path(repo_id) / "model_index.json"
        ).exists():
            cfg = read_adapter_config(repo_id, cls.__name__)
            te = load_pretrained(
                CLIPTextModel, repo_id, "encoder", local_files_only=True, torch_dtype=torch_dtype
            )
            tok = load_pretrained(CLIPTokenizer, repo_id, "tokenizer", local_files_only=True)
            return cls(
                te.to(device).eval(),
                tok,
                prompt=cfg["prompt"],
                id_token=cfg["id_token"],
                encoder_ids=tuple(cfg["encoder_ids"]),
                identity_dim=int(cfg.get("identity_dim", 512)),
                normalized=bool(cfg.get("normalized", True)),
                identity_center=cfg.get("identity_center"),
            )

        text_encoder = load_pretrained(
            CLIPTextModel,
            repo_id,
            subfolder,
            revision=revision,
            local_files_only=local_files_only,
            torch_dtype=torch_dtype,
        )
        tokenizer = load_pretrained(
            CLIPTokenizer, tokenizer_repo, "tokenizer", local_files_only=local_files_only
        )
        return cls(text_encoder.to(device).eval(), tokenizer)
