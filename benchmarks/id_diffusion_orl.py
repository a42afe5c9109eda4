"""Does identity conditioning carry identity? A tiny ID→face diffusion model trained on ORL.

ORL (``../shared/data/orl_faces``: 39 people × 10 grey 92×112 photos). Every photo is upscaled
×2, detected with facegen's dlib analyzer (HOG + 68 landmarks → 5 keypoints) and aligned to the
ArcFace template at ``--size`` px (grey, one channel); where no face is found the photo is
centre-cropped and resized instead (counted). Photos ``1..(10 - holdout)`` of each person are
the training set; the last ``--holdout`` photos are used for nothing but the ceiling row.

Condition: per person, the mean of the dlib 128-D embeddings (full-resolution ×2 photo,
dlib's own 150×150 chip) of their *training* photos, L2-normalised — one vector per identity.
These 39 vectors are also the gallery for the identification metric.

Model: a small pixel-space diffusers ``UNet2DConditionModel`` whose cross-attention reads
``--tokens`` tokens made from the identity by a small MLP (the IP-Adapter-FaceID idea:
identity → K tokens), trained jointly from scratch with the DDPM noise-prediction loss
(``DDPMScheduler``, 1000 steps, linear betas), AdamW, horizontal flips and 10 % condition
dropout (the dropped condition is the zero vector, projected like any other), for a wall-time
budget. Sampling: ``DDIMScheduler`` with classifier-free guidance.

Evaluation: for each of the 39 identities, ``--per-id`` samples with fixed seeds. Each is
upscaled to 160 px, padded by replication, and detected + embedded with dlib; where dlib finds
no face, the sample is warped straight onto dlib's 150×150 chip with the mean crop→chip
transform measured on the real photos and embedded without detection (counted). Rank-1:
is the nearest (cosine) of the 39 identity vectors the sample's own? Controls: the same model
untrained (random init), and the trained model sampled with the condition dropped. Ceiling:
the real held-out photos at the same resolution through the same evaluation.

Usage: ``python benchmarks/id_diffusion_orl.py [--budget-min 12] [--size 32] [--per-id 3]
[--steps 20] [--guidance 3] [--threads 0] [--out /tmp/id_diffusion_orl]``
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

ORL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "orl_faces"
EVAL_SIZE = 160
EVAL_PAD = 40


@dataclass
class Photo:
    person: int
    index: int
    crop: np.ndarray  # (size, size) uint8 grey
    embedding: np.ndarray | None  # (128,) normalised, None where no face was found
    crop_to_chip: np.ndarray | None  # 2×3 affine: our crop → dlib 150×150 chip


def _people() -> list[Path]:
    dirs = [d for d in ORL.iterdir() if d.is_dir() and d.name.startswith("s")]
    return sorted(dirs, key=lambda d: int(d.name[1:]))


def _to3(m: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(m, np.float64), [0.0, 0.0, 1.0]])


def _load_photos(analyzer: Any, size: int) -> tuple[list[Photo], int]:
    """Every ORL photo aligned at ``size`` px, with its embedding; also the fallback count."""
    from facegen.align import align_face
    from facegen.image_io import load_image

    assert analyzer.encoder is not None
    photos: list[Photo] = []
    fallback = 0
    for p, d in enumerate(_people()):
        for k in range(1, 11):
            img = load_image(d / f"{k}.pgm")
            big = cv2.resize(img, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
            faces = analyzer.detect(big)
            if faces:
                face = max(faces, key=lambda f: f.area)
                al = align_face(big, face, size=size, template="arcface")
                chip = analyzer.encoder.align(big, face)
                emb = analyzer.encoder.embed_crops([chip])[0]
                m = (_to3(chip.matrix) @ np.linalg.inv(_to3(al.matrix)))[:2]
                crop = cv2.cvtColor(al.image, cv2.COLOR_RGB2GRAY)
                photos.append(Photo(p, k, crop, emb, m))
            else:
                h, w = img.shape[:2]
                s = min(h, w)
                top = (h - s) // 2
                sq = img[top : top + s, (w - s) // 2 : (w - s) // 2 + s]
                crop = cv2.cvtColor(
                    cv2.resize(sq, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY
                )
                photos.append(Photo(p, k, crop, None, None))
                fallback += 1
    return photos, fallback


class IdentityTokens(nn.Module):
    """128-D identity → ``tokens`` × ``dim`` cross-attention tokens (IP-Adapter-FaceID style)."""

    def __init__(self, in_dim: int = 128, dim: int = 64, tokens: int = 4) -> None:
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.mlp = nn.Sequential(nn.Linear(in_dim, 256), nn.GELU(), nn.Linear(256, tokens * dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.mlp(x).view(-1, self.tokens, self.dim))


class IdDiffusion(nn.Module):
    def __init__(self, size: int, tokens: int, cross_dim: int = 64) -> None:
        super().__init__()
        from diffusers import UNet2DConditionModel

        self.proj = IdentityTokens(128, cross_dim, tokens)
        self.unet = UNet2DConditionModel(
            sample_size=size,
            in_channels=1,
            out_channels=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            cross_attention_dim=cross_dim,
            attention_head_dim=8,
            norm_num_groups=8,
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, ident: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=self.proj(ident)).sample


def _train_step(
    model: IdDiffusion,
    opt: torch.optim.Optimizer,
    sched: Any,
    x0: torch.Tensor,
    cond: torch.Tensor,
    gen: torch.Generator,
    p_drop: float,
) -> float:
    b = x0.shape[0]
    flip = torch.rand(b, generator=gen) < 0.5
    x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
    keep = (torch.rand(b, generator=gen) >= p_drop).float()[:, None]
    cond = cond * keep
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=gen)
    xt = sched.add_noise(x0, noise, t)
    loss = nn.functional.mse_loss(model(xt, t, cond), noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


@torch.no_grad()
def _sample(
    model: IdDiffusion,
    cond: torch.Tensor,
    seeds: list[int],
    size: int,
    steps: int,
    guidance: float,
    batch: int = 64,
) -> np.ndarray:
    """DDIM + classifier-free guidance; ``guidance <= 0`` samples with the condition dropped."""
    from diffusers import DDIMScheduler

    model.eval()
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    sched.set_timesteps(steps)
    out = []
    for s in range(0, len(seeds), batch):
        c = cond[s : s + batch]
        x = torch.cat(
            [
                torch.randn((1, 1, size, size), generator=torch.Generator().manual_seed(sd))
                for sd in seeds[s : s + batch]
            ]
        )
        null = torch.zeros_like(c)
        for t in sched.timesteps:
            tt = t.expand(len(c))
            if guidance <= 0:
                eps = model(x, tt, null)
            elif guidance == 1:
                eps = model(x, tt, c)
            else:
                both = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([c, null]))
                e_c, e_u = both.chunk(2)
                eps = e_u + guidance * (e_c - e_u)
            x = sched.step(eps, t, x).prev_sample
        out.append(x)
    imgs = torch.cat(out).clamp(-1, 1)[:, 0].numpy()
    return np.round((imgs + 1) * 127.5).astype(np.uint8)


def _embed_generated(
    analyzer: Any, crops: np.ndarray, crop_to_chip: np.ndarray
) -> tuple[np.ndarray, int]:
    """Embed grey ``(N, s, s)`` crops: dlib detection on a 160-px upscale, else a fixed warp."""
    assert analyzer.encoder is not None
    size = crops.shape[1]
    scale = EVAL_SIZE / size
    # crop → padded upscale coordinates, so the fixed warp can read the same padded image
    up = np.array([[scale, 0, EVAL_PAD], [0, scale, EVAL_PAD], [0, 0, 1]], np.float64)
    fixed = (_to3(crop_to_chip) @ np.linalg.inv(up))[:2]
    chips, failed = [], 0
    for c in crops:
        big = cv2.resize(c, (EVAL_SIZE, EVAL_SIZE), interpolation=cv2.INTER_CUBIC)
        big = cv2.copyMakeBorder(big, *(EVAL_PAD,) * 4, cv2.BORDER_REPLICATE)
        rgb = np.ascontiguousarray(cv2.cvtColor(big, cv2.COLOR_GRAY2RGB))
        faces = analyzer.detect(rgb)
        if faces:
            chips.append(analyzer.encoder.align(rgb, max(faces, key=lambda f: f.area)).image)
        else:
            chips.append(cv2.warpAffine(rgb, fixed, (150, 150), flags=cv2.INTER_LINEAR))
            failed += 1
    return analyzer.encoder.embed_crops(chips), failed


def _identify(emb: np.ndarray, labels: np.ndarray, gallery: np.ndarray) -> dict[str, float]:
    sims = emb @ gallery.T
    own = sims[np.arange(len(labels)), labels]
    mask = np.ones_like(sims, bool)
    mask[np.arange(len(labels)), labels] = False
    others = sims[mask].reshape(len(labels), -1)
    rank = (sims > own[:, None]).sum(1)
    return {
        "rank1": float((rank == 0).mean()),
        "rank5": float((rank < 5).mean()),
        "cos_own": float(own.mean()),
        "cos_other": float(others.mean()),
    }


def _sheet(images: np.ndarray, rows: int, cols: int, path: Path, scale: int = 2) -> None:
    s = images.shape[1]
    sheet = np.full((rows * (s + 2), cols * (s + 2)), 255, np.uint8)
    for i, im in enumerate(images[: rows * cols]):
        r, c = divmod(i, cols)
        sheet[r * (s + 2) : r * (s + 2) + s, c * (s + 2) : c * (s + 2) + s] = im
    sheet = cv2.resize(sheet, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(path), sheet)


def _pick_threads(model: IdDiffusion, x0: torch.Tensor, cond: torch.Tensor, sched: Any) -> int:
    """Time three training steps on a throwaway copy with 1 and 2 threads; keep the faster."""
    best, best_t = 1, math.inf
    for n in (1, 2):
        torch.set_num_threads(n)
        m = copy.deepcopy(model)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        _train_step(m, opt, sched, x0, cond, g, 0.1)
        t0 = time.perf_counter()
        for _ in range(3):
            _train_step(m, opt, sched, x0, cond, g, 0.1)
        dt = (time.perf_counter() - t0) / 3
        print(f"threads={n}: {dt * 1000:.0f} ms/step")
        if dt < best_t:
            best, best_t = n, dt
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-min", type=float, default=12.0, help="training wall time")
    ap.add_argument("--size", type=int, default=32, choices=(32, 48))
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--holdout", type=int, default=1, help="photos per person kept out")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--cond-drop", type=float, default=0.1)
    ap.add_argument("--per-id", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20, help="DDIM sampling steps")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=0, help="0: time 1 and 2, keep the faster")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/id_diffusion_orl"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    from diffusers import DDPMScheduler

    from facegen.analyzer import FaceAnalyzer
    from facegen.identity import l2_normalize

    t0 = time.perf_counter()
    analyzer = FaceAnalyzer.from_names("dlib", "dlib68", "dlib", detector_options={"upsample": 0})
    photos, fallback = _load_photos(analyzer, args.size)
    n_people = 1 + max(p.person for p in photos)
    n_train_per = 10 - args.holdout
    train = [p for p in photos if p.index <= n_train_per]
    held = [p for p in photos if p.index > n_train_per]
    gallery = np.zeros((n_people, 128), np.float32)
    for i in range(n_people):
        embs = [p.embedding for p in train if p.person == i and p.embedding is not None]
        gallery[i] = l2_normalize(np.mean(embs, 0))
    crop_to_chip = np.mean([p.crop_to_chip for p in photos if p.crop_to_chip is not None], 0)
    print(
        f"data: {len(photos)} photos, {fallback} without a face (centre crop), "
        f"{len(train)} train / {len(held)} held out, {time.perf_counter() - t0:.0f} s"
    )

    x_all = torch.tensor(np.stack([p.crop for p in train]), dtype=torch.float32)
    x_all = (x_all / 127.5 - 1)[:, None]
    c_all = torch.tensor(gallery[[p.person for p in train]])

    model = IdDiffusion(args.size, args.tokens)
    untrained = copy.deepcopy(model)
    n_params = sum(p.numel() for p in model.parameters())
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    bs = args.batch_size
    threads = args.threads or _pick_threads(model, x_all[:bs], c_all[:bs], sched)
    torch.set_num_threads(threads)

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(args.seed)
    budget = args.budget_min * 60
    losses: list[float] = []
    step = 0
    model.train()
    t_start = time.perf_counter()
    while time.perf_counter() - t_start < budget:
        idx = torch.randint(0, len(x_all), (bs,), generator=gen)
        losses.append(_train_step(model, opt, sched, x_all[idx], c_all[idx], gen, args.cond_drop))
        step += 1
        if step % 200 == 0:
            el = time.perf_counter() - t_start
            print(f"step {step:5d}  loss(200-avg) {np.mean(losses[-200:]):.4f}  {el:.0f} s")
    train_s = time.perf_counter() - t_start
    loss_start = float(np.mean(losses[:50]))
    loss_end = float(np.mean(losses[-200:]))

    # ---------------------------------------------------------------- evaluation
    labels = np.repeat(np.arange(n_people), args.per_id)
    seeds = [1000 + i for i in range(len(labels))]
    cond = torch.tensor(gallery[labels])
    rows: list[tuple[str, dict[str, float], int, int]] = []
    samples: dict[str, np.ndarray] = {}
    t_eval = time.perf_counter()
    for name, m, g in (
        (f"trained, ID-conditioned (cfg {args.guidance:g})", model, args.guidance),
        ("trained, ID-conditioned (cfg 1)", model, 1.0),
        ("trained, condition dropped", model, 0.0),
        (f"untrained (random init, cfg {args.guidance:g})", untrained, args.guidance),
    ):
        imgs = _sample(m, cond, seeds, args.size, args.steps, g)
        samples[name] = imgs
        emb, failed = _embed_generated(analyzer, imgs, crop_to_chip)
        rows.append((name, _identify(emb, labels, gallery), failed, len(imgs)))
    held_crops = np.stack([p.crop for p in held])
    held_labels = np.array([p.person for p in held])
    emb, failed = _embed_generated(analyzer, held_crops, crop_to_chip)
    rows.append(
        (
            f"real held-out photos at {args.size} px (ceiling)",
            _identify(emb, held_labels, gallery),
            failed,
            len(held),
        )
    )
    held_full = np.stack([p.embedding for p in held if p.embedding is not None])
    held_full_l = np.array([p.person for p in held if p.embedding is not None])
    rows.append(
        (
            "real held-out photos, full res (reference)",
            _identify(held_full, held_full_l, gallery),
            0,
            len(held_full),
        )
    )
    eval_s = time.perf_counter() - t_eval

    # contact sheet: per identity, one row = real training crop + per-id conditioned samples
    # + the same seeds with the condition dropped
    first = {p.person: p.crop for p in reversed(train)}
    main_name = rows[0][0]
    tiles = []
    for i in range(n_people):
        tiles.append(first[i])
        tiles.extend(samples[main_name][labels == i])
        tiles.extend(samples["trained, condition dropped"][labels == i])
    sheet_path = args.out / "contact_sheet.png"
    per_row = 1 + 2 * args.per_id
    groups = 3  # identities side by side, so the sheet is not one tall column
    rows_n = -(-n_people // groups)
    blank = np.full_like(tiles[0], 255)
    tiles += [blank] * (rows_n * groups * per_row - len(tiles))
    grid = np.stack(tiles).reshape(groups, rows_n, per_row, args.size, args.size)
    grid = grid.transpose(1, 0, 2, 3, 4).reshape(-1, args.size, args.size)
    _sheet(grid, rows_n, groups * per_row, sheet_path)

    print(
        f"\ncontact sheet: {sheet_path}  (per row: real crop | {args.per_id} conditioned |"
        f" {args.per_id} condition dropped, same seeds)\n"
    )
    print("| setting | value |\n|---|---|")
    settings = {
        "resolution": f"{args.size}×{args.size}, grey, ArcFace-template crop",
        "data": f"{n_people} people × {n_train_per} train photos ({fallback} of 390 photos "
        f"centre-cropped, no face found); {args.holdout}/person held out",
        "condition": "per-person mean dlib embedding of the train photos, L2-normalised; "
        f"MLP → {args.tokens} tokens × 64",
        "UNet": f"(32, 64, 64), layers_per_block 1, {n_params / 1e6:.2f} M params incl. MLP",
        "training": f"{step} steps × batch {bs}, AdamW lr {args.lr:g}, {train_s / 60:.1f} min, "
        f"{threads} thread(s), cond dropout {args.cond_drop:g}",
        "loss (first 50 / last 200 steps)": f"{loss_start:.4f} / {loss_end:.4f}",
        "sampling": f"DDIM {args.steps} steps, {args.per_id} seeds/identity, eval {eval_s:.0f} s",
        "evaluation": f"upscale to {EVAL_SIZE} px + {EVAL_PAD} px pad, dlib HOG+68 → chip → "
        "dlib ResNet; no face → fixed crop→chip warp",
    }
    for k, v in settings.items():
        print(f"| {k} | {v} |")
    print(
        f"\nchance rank-1 = 1/{n_people} = {100 / n_people:.1f} %, rank-5 = "
        f"{500 / n_people:.1f} %\n"
    )
    print("| images | n | no face (fixed warp) | rank-1 | rank-5 | cos own | cos others |")
    print("|---|---|---|---|---|---|---|")
    for name, r, failed, n in rows:
        print(
            f"| {name} | {n} | {failed} | {100 * r['rank1']:.1f} % | {100 * r['rank5']:.1f} % | "
            f"{r['cos_own']:.3f} | {r['cos_other']:.3f} |"
        )


if __name__ == "__main__":
    main()
