"""Jobs of the one-shot path, shared by the command line and the web app: build a
:class:`~facegen.pipelines.editing.oneshot.OneShotSwap` from names, get the source identity,
swap or restore one file and write it with its provenance record."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from facegen._version import __version__
from facegen.analyzer import FaceAnalyzer
from facegen.errors import FacegenError, IncompatibleEmbeddingError, UnknownNameError
from facegen.image_io import ImageSource, load_image
from facegen.pipelines.editing.oneshot import OneShotSwap, check_blend, parse_mask, restore_faces
from facegen.types import IdentityEmbedding

__all__ = [
    "METHOD_ALIASES",
    "load_oneshot",
    "load_restorer",
    "oneshot_method",
    "oneshot_source",
    "oneshot_swap_file",
    "restore_file",
    "restore_generated",
    "source_analyzer",
]

#: Short method names → swapper names (``--method inswapper`` = ``inswapper_128``).
METHOD_ALIASES = {
    "inswapper": "inswapper_128",
    "simswap": "simswap_256",
    "ghost": "ghost_256",
    "hyperswap": "hyperswap_256",
}


def oneshot_method(name: str) -> str | None:
    """The swapper name of a ``--method`` (None for ``diffusion``)."""
    from facegen.backends.swappers import SWAPPER_SPECS

    if name == "diffusion":
        return None
    full = METHOD_ALIASES.get(name, name)
    if full not in SWAPPER_SPECS:
        choices = ["diffusion", *METHOD_ALIASES, *SWAPPER_SPECS]
        raise UnknownNameError("swap method", name, choices)
    return full


def load_restorer(
    name: str, *, fidelity: float = 0.5, device: str = "cpu", offline: bool | None = None,
    model_path: str | os.PathLike[str] | None = None,
) -> Any:  # fmt: skip
    from facegen.backends.restorers import OnnxFaceRestorer

    return OnnxFaceRestorer.from_pretrained(
        name, model_path, device=device, offline=offline, fidelity=fidelity
    )


def load_oneshot(
    method: str,
    *,
    restore: str | None = None,
    restore_blend: float = 0.8,
    fidelity: float = 0.5,
    mask: str = "box",
    occlusion: bool = False,
    device: str = "cpu",
    offline: bool | None = None,
    model_path: str | os.PathLike[str] | None = None,
) -> OneShotSwap:
    """The swapper of ``method`` (with ``model_path``: that file), and the restorer, parser
    and occluder the options ask for, each through :func:`facegen.hub.resolve`."""
    from facegen.backends.face_parsing import FaceParser, Occluder
    from facegen.backends.restorers import RESTORER_SPECS, check_fidelity
    from facegen.backends.swappers import OnnxFaceSwapper

    name = oneshot_method(method)
    if name is None:
        raise FacegenError("the diffusion method is not a one-shot swapper")
    # every setting is checked before any model is looked for or loaded
    opts = parse_mask(mask, occlusion=occlusion)
    check_blend(restore_blend)
    check_fidelity(fidelity)
    if restore is not None and restore not in RESTORER_SPECS:
        raise UnknownNameError("face restorer", restore, RESTORER_SPECS)
    swapper = OnnxFaceSwapper.from_pretrained(name, model_path, device=device, offline=offline)
    parser = (
        FaceParser.from_pretrained(device=device, offline=offline)
        if opts.kind == "parsing"
        else None
    )
    occluder = Occluder.from_pretrained(device=device, offline=offline) if occlusion else None
    restorer = (
        load_restorer(restore, fidelity=fidelity, device=device, offline=offline)
        if restore
        else None
    )
    return OneShotSwap(
        swapper, mask=opts, parser=parser, occluder=occluder, restorer=restorer,
        restore_blend=restore_blend,
    )  # fmt: skip


def source_analyzer(*, device: str = "cpu", offline: bool | None = None) -> FaceAnalyzer:
    """dlib's detector and 68 points, and buffalo_l's ArcFace (w600k_r50): the embedding every
    one-shot swapper reads its source from."""
    return FaceAnalyzer.from_names(
        "dlib", "dlib68", "arcface-onnx", device=device, offline=offline,
        encoder_options={"preset": "buffalo_l"},
    )  # fmt: skip


def oneshot_source(
    source: IdentityEmbedding | ImageSource, analyzer: FaceAnalyzer, *, name: str | None = None
) -> IdentityEmbedding:
    """The source identity: an embedding as given (it must be buffalo_l's), or the largest
    face of a photo embedded with ``analyzer`` (see :func:`source_analyzer`)."""
    if isinstance(source, IdentityEmbedding):
        return source
    face = analyzer.analyze(source, select="largest", source=name or "source photo")[0]
    if face.embedding is None:
        raise IncompatibleEmbeddingError("the source analyzer must have an identity encoder")
    return face.embedding


def oneshot_swap_file(
    target: ImageSource,
    source: IdentityEmbedding,
    swap: OneShotSwap,
    analyzer: FaceAnalyzer,
    path: str | os.PathLike[str],
    *,
    faces: Any = "all",
    target_name: str | None = None,
    source_name: str | None = None,
    watermark: bool = True,
    found: list[Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """``source`` on ``target``'s chosen faces (``faces``: all, largest, best, an index or a
    reference selection, as the diffusion swap takes them), written with its record.
    ``found``: ``analyzer``'s faces of ``target`` when the caller already has them."""
    from facegen.pipelines.editing.jobs import _selection_record, save_edited
    from facegen.pipelines.editing.swap import _select_targets

    name = target_name or (str(target) if isinstance(target, (str, os.PathLike)) else "target")
    image = load_image(target, name=name) if not hasattr(target, "shape") else target
    if found is None:
        found = analyzer.detect(image)
    if not found:
        from facegen.errors import NoFaceDetectedError

        raise NoFaceDetectedError(source=Path(name).name)
    chosen = _select_targets(found, faces, image, [analyzer])
    result = swap.swap(image, chosen, swap.prepare_source(source))
    record = {
        "software": f"facegen {__version__}",
        "source": source_name,
        "target": Path(name).name,
        "selection": _selection_record(faces),
        **swap.settings(),
        "faces": result.faces,
    }
    return save_edited(result.image, path, "swap", record, watermark=watermark), record


def restore_file(
    image: ImageSource,
    restorer: Any,
    analyzer: FaceAnalyzer,
    path: str | os.PathLike[str],
    *,
    blend: float = 0.8,
    name: str | None = None,
    watermark: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Every face of ``image`` restored (see :func:`~facegen.pipelines.editing.oneshot.restore_faces`)."""
    from facegen.pipelines.editing.jobs import save_edited

    label = name or (str(image) if isinstance(image, (str, os.PathLike)) else "image")
    img = load_image(image, name=label) if not hasattr(image, "shape") else image
    found = analyzer.detect(img)
    if not found:
        from facegen.errors import NoFaceDetectedError

        raise NoFaceDetectedError(source=Path(label).name)
    out = restore_faces(img, found, restorer, blend=blend)
    record = {
        "software": f"facegen {__version__}",
        "image": Path(label).name,
        "restore": {"model": restorer.name, "blend": blend,
                    **({"fidelity": restorer.fidelity} if restorer.spec.fidelity else {})},
        "faces": [{"bbox": [round(float(v), 1) for v in f.bbox]} for f in found],
    }  # fmt: skip
    return save_edited(out, path, "restore", record, watermark=watermark), record


class _Restored:
    """A ``replace_face`` hook whose accepted faces are restored after verification; other
    attributes (a pseudonym track's ``observe``) are the wrapped hook's."""

    def __init__(self, hook: Any, restorer: Any, blend: float) -> None:
        self.hook, self.restorer, self.blend = hook, restorer, blend

    def __call__(self, image: Any, face: Any, mask: Any) -> Any:
        import dataclasses

        out = self.hook(image, face, mask)
        if not getattr(out, "accepted", False):
            return out
        return dataclasses.replace(
            out, image=restore_faces(out.image, [face], self.restorer, blend=self.blend)
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.hook, name)


def restore_generated(replacement: Any, restorer: Any, blend: float = 0.8) -> Any:
    """Generative anonymization's hooks (a :class:`~facegen.pipelines.editing.anonymize.FaceReplacement`
    for photos or a :class:`~facegen.pipelines.editing.jobs.TrackReplacement` for video) with
    every accepted face restored (GFPGAN / CodeFormer) after it passed verification."""
    from facegen.pipelines.editing.anonymize import FaceReplacement
    from facegen.pipelines.editing.jobs import TrackReplacement

    b = check_blend(blend)
    record = {"model": restorer.name, "blend": b}
    if restorer.spec.fidelity:
        record["fidelity"] = restorer.fidelity
    if isinstance(replacement, TrackReplacement):
        inner = replacement.factory
        return TrackReplacement(
            lambda video, track: _Restored(inner(video, track), restorer, b),
            {**replacement.settings, "restore": record}, replacement.video,
            replacement.resume_token,
        )  # fmt: skip
    if isinstance(replacement, FaceReplacement):
        return FaceReplacement(
            _Restored(replacement.hook, restorer, b),
            {**replacement.settings, "restore": record},
        )
    raise FacegenError(f"cannot restore the faces of {type(replacement).__name__}")
