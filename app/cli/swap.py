"""``facegen swap`` and ``facegen reenact``: generative identity edits on real photos."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from facegen.app.cli.options import add_generation_options, subcommand_parents
from facegen.errors import FacegenError

__all__ = ["add_swap_parsers", "load_edit_pipeline", "pseudonym_hook"]


def _faces(text: str) -> str | int:
    if text in ("all", "largest", "best", "reference"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be all, largest, best, reference or a face index, got {text!r}"
        ) from None


def add_swap_parsers(sub: Any) -> None:
    s = sub.add_parser(
        "swap",
        parents=subcommand_parents(),
        help="put the source identity on the target face(s), keeping pose and lighting",
        description="Per target face: align, mask from its landmarks, regenerate with the "
        "source identity (its own landmark map keeps pose and expression), colour-match and "
        "paste back; pixels outside the masks are kept. Reports, per face, the similarity to "
        "the source and to the original person with the conditioning encoder and an "
        "independent one (dlib).",
    )
    s.add_argument("--source", type=Path, required=True, help="photo or .safetensors embedding")
    s.add_argument("--target", type=Path, required=True, help="photo or folder")
    s.add_argument("--faces", type=_faces, default="all", help="all|largest|best|reference|INDEX")
    s.add_argument("--reference", type=Path, help="with --faces reference: whose faces to swap")
    s.add_argument("--out", type=Path, required=True)
    add_generation_options(s)
    s.set_defaults(func=cmd_swap)
    r = sub.add_parser(
        "reenact",
        parents=subcommand_parents(),
        help="the source person with the driving photo's pose and expression",
        description="Needs a preset with a landmark ControlNet (--controlnet PATH, or "
        "tiny-controlnet for plumbing).",
    )
    r.add_argument("--source", type=Path, required=True, help="photo of the person")
    r.add_argument("--driving", type=Path, required=True, help="photo with the pose/expression")
    r.add_argument(
        "--identity",
        type=Path,
        help="the source's identity as a .safetensors embedding (default: from its photo)",
    )
    r.add_argument("--out", type=Path, required=True)
    add_generation_options(r)
    r.set_defaults(func=cmd_reenact)


def load_edit_pipeline(args: argparse.Namespace) -> Any:
    """The preset's pipeline, and the detection analyzer (dlib + 68 landmarks + dlib encoder,
    independent of every conditioning encoder)."""
    from facegen.analyzer import FaceAnalyzer
    from facegen.pipelines.generation.presets import from_preset

    extra = {"controlnet": args.controlnet} if args.controlnet else {}
    pipe = from_preset(
        args.preset,
        device=args.device,
        dtype=args.dtype,
        local_files_only=True if args.offline else None,
        **extra,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe, FaceAnalyzer.from_names("dlib", "dlib68", "dlib")


def _gen_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"strength": args.strength, "seeds": args.seed}
    if args.steps:
        out["num_inference_steps"] = args.steps
    if args.guidance is not None:
        out["guidance_scale"] = args.guidance
    if args.prompt:
        out["prompt"] = args.prompt
    return out


def _source_identity(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from facegen.embedding_io import load_embeddings

        embs, _ = load_embeddings(path)
        if len(embs) != 1:
            raise FacegenError(f"{path} holds {len(embs)} embeddings; give a file with one")
        return embs[0]
    if not path.is_file():
        raise FacegenError(f"source {path} does not exist")
    return path


def _save(args: argparse.Namespace, image: Any, name: str, op: str, params: dict) -> Path:
    from facegen.provenance import can_watermark, save_with_provenance

    suffix = Path(name).suffix.lower()
    if suffix not in (".png", ".jpg", ".jpeg", ".webp"):
        name = str(Path(name).with_suffix(".png"))
    return save_with_provenance(
        image,
        args.out / name,
        op,
        params,
        kind="edited",
        watermark=not args.no_watermark and can_watermark(image),
    )


def _fmt(sims: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in sims.items() if v is not None) or "n/a"


def cmd_swap(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from facegen.image_io import find_images
    from facegen.pipelines.editing.swap import swap

    source = _source_identity(args.source)
    targets = find_images([args.target]) if args.target.exists() else []
    if not targets:
        raise FacegenError(f"no target images at {args.target}")
    if (args.faces == "reference") != (args.reference is not None):
        raise FacegenError("--faces reference and --reference REF go together")
    pipe, analyzer = load_edit_pipeline(args)
    faces: Any = args.faces
    if faces == "reference":
        ref = analyzer.analyze(args.reference, select="largest", source=str(args.reference))[0]
        faces = ("reference", ref.embedding, analyzer.encoder.same_person_threshold)
    report = []
    failed = 0
    for path in tqdm(targets, desc="swap", unit="img", file=sys.stderr, disable=len(targets) < 2):
        try:
            res = swap(
                path,
                source,
                pipe,
                analyzer,
                faces,
                independent_analyzer=analyzer,
                **_gen_kwargs(args),
            )
        except FacegenError as e:
            failed += 1
            print(f"{path.name}: {e}", file=sys.stderr)
            report.append({"target": str(path), "error": str(e)})
            continue
        per_face = [
            {k: v for k, v in f.to_dict().items() if k not in ("crop", "control", "matrix")}
            for f in res.faces
        ]
        params = {"source": str(args.source), "preset": args.preset, "faces": per_face}
        out = _save(args, res.image, path.name, "swap", params)
        report.append({"target": str(path), "output": str(out), "faces": per_face})
        for f in res.faces:
            print(
                f"{path.name} face {f.edit.index}: to source {_fmt(f.source_similarity)}; "
                f"to original {_fmt(f.target_similarity)}"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    from facegen.fileio import write_json

    write_json(args.out / "swap_report.json", {"images": report})
    print(f"{len(targets) - failed} of {len(targets)} image(s) swapped → {args.out}")
    return 0 if failed == 0 else 1


def cmd_reenact(args: argparse.Namespace) -> int:
    from facegen.pipelines.editing.face_edit import reenact

    for p in (args.source, args.driving):
        if not p.is_file():
            raise FacegenError(f"{p} does not exist")
    pipe, analyzer = load_edit_pipeline(args)
    kw = _gen_kwargs(args)
    kw["seed"] = kw.pop("seeds")
    if args.identity is not None:
        kw["source_identity"] = _source_identity(args.identity)
    res = reenact(args.source, args.driving, pipe, analyzer, **kw)
    params = {"source": str(args.source), "driving": str(args.driving), "preset": args.preset}
    out = _save(args, res.image, args.source.name, "reenact", params)
    print(json.dumps({"output": str(out), "faces": len(res.faces)}))
    return 0


def pseudonym_hook(
    pipe: Any, verifier: Any, images: list[Path], secret: str | None, args: argparse.Namespace
) -> Any:
    """The anonymizer's ``generate`` hook: one synthetic identity per real person across
    ``images`` (clustered with ``verifier``'s encoder, keyed by ``secret``), or a fresh one per
    face without a secret; each result verified by ``verifier`` (independent of the
    conditioning encoder), retried, else the classical fallback."""
    import hashlib

    import numpy as np

    from facegen.pipelines.editing.pseudonyms import Pseudonymizer
    from facegen.pipelines.editing.swap import embed_at, make_replace_face

    options = {k: v for k, v in _gen_kwargs(args).items() if k != "seeds"}
    if secret is None:
        return make_replace_face(pipe, verifier, max_tries=args.attempts, seed=args.seed, **options)
    enc_ids = getattr(pipe, "id_encoder_ids", ("arcface-onnx/arc2face",))
    dim = int(getattr(getattr(pipe.identity_analyzer, "encoder", None), "dim", 512) or 512)
    pz = Pseudonymizer(secret, enc_ids[0], dim, verifier.encoder.same_person_threshold)
    keys, vecs = [], []
    for path in images:  # pass 1: who is who across the set (never written anywhere)
        try:
            for k, face in enumerate(verifier.analyze(path, source=str(path))):
                keys.append(f"{path}#{k}")
                vecs.append(face.embedding.vector)
        except FacegenError:
            continue
    if keys:
        pz.fit(keys, np.stack(vecs))

    def hook(image: Any, face: Any, mask: Any) -> Any:
        emb = embed_at(verifier, image, [face])[0].vector
        # the person's cluster; a face that fits none gets its own pseudonym
        own = hashlib.sha256(np.round(emb, 2).astype(np.float32).tobytes()).hexdigest()
        identity = pz.identity_for(f"face:{own}", emb)
        inner = make_replace_face(
            pipe,
            verifier,
            max_tries=args.attempts,
            seed=args.seed,
            identity_fn=lambda original, seed: identity,
            **options,
        )
        return inner(image, face, mask)

    return hook
