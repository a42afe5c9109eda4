"""One-shot swap: paste-back exactness and seams, per-face overhead, and swapper speed.

Three measurements, no published weights needed:

1. **Paste-back** on real photos (t1.jpg's six people; ORL s32–s40 faces upscaled 3× onto a
   grey 640×480 canvas, one per image): a swapper double in inswapper's signature (its output
   is a fixed function of the crop, far from the original face, which makes seams show)
   pasted with each mask. Reported: pixels changed outside the mask's reach (the mask warped
   into the image; must be 0), and the **seam energy**: the mean gradient magnitude of the
   result on the mask's transition band (0.05 < mask < 0.95 in the image) minus that of the
   original on the same band, per pixel of band; lower = the paste blends in.
2. **Overhead per face** on a 1280×720 frame: align + mask + paste (the swapper double's own
   time is negligible), for 1, 3 and 6 faces, per face.
3. **Swapper speed with a real architecture**: SimSwap's generator as its paper describes it
   (7×7 conv, three stride-2 convs to 512 channels at 32×32, nine residual blocks whose two
   3×3 convs are followed by AdaIN driven by the 512-D source, three ×2 upsampling convs,
   7×7 conv to RGB; batch norm after the encoder/decoder convs), random weights, exported to
   ONNX in simswap_256's signature (``target`` N×3×256×256, ``source`` N×512) and run with
   ONNX Runtime on the CPU: faces/s one at a time and batched. The same for GFPGAN v1.4's
   network (``benchmarks/gfpgan_arch.py``: the half-width U-Net, 16 style codes, the
   StyleGAN2 decoder with channel multiplier 2 and half-channel SFT; 84.3 M parameters, the
   v1.4 file's 87 M less the style MLP it does not run). Random weights give the true cost
   of an architecture; the published files may differ in details.

Usage: ``python benchmarks/oneshot_swap.py [--threads 2] [--skip-speed]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
ORL = ROOT.parent / "shared" / "data" / "orl_faces"


def _photos() -> list[tuple[str, np.ndarray]]:
    from PIL import Image

    from facegen.image_io import load_image
    from facegen.samples import sample_path

    photos = [("t1.jpg", load_image(sample_path("t1")))]
    for person in range(32, 41):
        grey = np.asarray(Image.open(ORL / f"s{person}" / "1.pgm"))
        face = cv2.resize(grey, (276, 336), interpolation=cv2.INTER_CUBIC)
        canvas = np.full((480, 640), 110, np.uint8)
        canvas[72:408, 182:458] = face
        photos.append((f"orl s{person}", np.repeat(canvas[..., None], 3, axis=2)))
    return photos


def _reach_and_band(swap, image, faces, source):
    aligned = [swap.swapper.align(image, f) for f in faces]
    target = np.stack([a.image for a in aligned])
    swapped = swap.swapper.swap_crops(target, source)
    masks = swap.masks(faces, aligned, target, swapped)
    h, w = image.shape[:2]
    warped = np.max([cv2.warpAffine(m, a.inverse, (w, h)) for m, a in zip(masks, aligned)], axis=0)
    return warped


def _grad(img: np.ndarray) -> np.ndarray:
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1))


def paste_quality(work: Path) -> None:
    from onnx_face_models import build_swapper

    from facegen.analyzer import FaceAnalyzer
    from facegen.backends.swappers import OnnxFaceSwapper
    from facegen.pipelines.editing.oneshot import OneShotSwap
    from facegen.types import IdentityEmbedding

    build_swapper(work / "inswapper.onnx", size=128, emap=True)
    swapper = OnnxFaceSwapper("inswapper_128", model_path=work / "inswapper.onnx")
    analyzer = FaceAnalyzer.from_names("dlib", "dlib68", None)
    source = swapper.prepare_source(
        IdentityEmbedding(np.random.default_rng(0).standard_normal(512).astype(np.float32),
                          "arcface-onnx/buffalo_l", False)
    )  # fmt: skip
    rows: dict[str, list[tuple[int, float, int]]] = {"box": [], "hull": []}
    for name, image in _photos():
        faces = analyzer.detect(image)
        if not faces:
            print(f"{name}: no face found, left out", file=sys.stderr)
            continue
        for kind in rows:
            swap = OneShotSwap(swapper, mask=kind)
            out = swap.swap(image, faces, source).image
            reach = _reach_and_band(swap, image, faces, source)
            changed = np.abs(out.astype(int) - image).max(axis=2) > 0
            outside = int((changed & (reach == 0)).sum())
            band = (reach > 0.05) & (reach < 0.95)
            seam = float((_grad(out)[band] - _grad(image)[band]).mean()) if band.any() else 0.0
            rows[kind].append((outside, seam, len(faces)))
    print(
        "| mask | images | faces | pixels changed outside the mask | seam energy (mean ± sd over images) |"
    )
    print("|---|---|---|---|---|")
    for kind, r in rows.items():
        seams = np.array([s for _, s, _ in r])
        print(
            f"| {kind} | {len(r)} | {sum(n for *_, n in r)} | {sum(o for o, *_ in r)} | "
            f"{seams.mean():.1f} ± {seams.std():.1f} |"
        )


def overhead(work: Path) -> None:
    from facegen.align import POINT_TEMPLATES
    from facegen.backends.swappers import OnnxFaceSwapper
    from facegen.pipelines.editing.oneshot import OneShotSwap
    from facegen.types import Face

    swapper = OnnxFaceSwapper("inswapper_128", model_path=work / "inswapper.onnx")
    source = np.zeros((1, 512), np.float32)
    source[0, 0] = 1
    frame = np.random.default_rng(1).integers(0, 255, (720, 1280, 3), np.uint8)

    def face_at(x: float, y: float) -> Face:
        kps = POINT_TEMPLATES["arcface_112_v2"] * 160 + (x, y)
        return Face(bbox=np.array([x, y, x + 160, y + 160], np.float32), score=1.0, kps5=kps)

    print("\n| faces in the frame | mask | ms per face (align + mask + swap double + paste) |")
    print("|---|---|---|")
    for n in (1, 3, 6):
        faces = [face_at(60 + 200 * i, 200 + 40 * (i % 2)) for i in range(n)]
        for kind in ("box", "hull"):
            swap = OneShotSwap(swapper, mask=kind)
            swap.swap(frame, faces, source)
            t0 = time.perf_counter()
            reps = 10
            for _ in range(reps):
                swap.swap(frame, faces, source)
            per = (time.perf_counter() - t0) / reps / n * 1000
            print(f"| {n} | {kind} | {per:.1f} |")


def _simswap_generator(size: int = 256):
    import torch
    from torch import nn

    class AdaIN(nn.Module):
        def __init__(self, channels: int, latent: int = 512) -> None:
            super().__init__()
            self.style = nn.Linear(latent, 2 * channels)
            self.norm = nn.InstanceNorm2d(channels)

        def forward(self, x, z):
            scale, shift = self.style(z).chunk(2, dim=1)
            return self.norm(x) * (1 + scale[..., None, None]) + shift[..., None, None]

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.conv1 = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3))
            self.style1 = AdaIN(c)
            self.conv2 = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3))
            self.style2 = AdaIN(c)

        def forward(self, x, z):
            y = torch.relu(self.style1(self.conv1(x), z))
            y = self.style2(self.conv2(y), z)
            return x + y

    def down(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1), nn.BatchNorm2d(o), nn.ReLU())

    def up(i: int, o: int) -> nn.Module:
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear"), nn.Conv2d(i, o, 3, 1, 1),
            nn.BatchNorm2d(o), nn.ReLU(),
        )  # fmt: skip

    class Generator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Sequential(
                nn.ReflectionPad2d(3), nn.Conv2d(3, 64, 7), nn.BatchNorm2d(64), nn.ReLU()
            )
            self.down = nn.Sequential(down(64, 128), down(128, 256), down(256, 512))
            self.blocks = nn.ModuleList(Block(512) for _ in range(9))
            self.up = nn.Sequential(up(512, 256), up(256, 128), up(128, 64))
            self.last = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 3, 7))

        def forward(self, target, source):
            x = self.down(self.first(target))
            for block in self.blocks:
                x = block(x, source)
            return (self.last(self.up(x)) + 1) / 2

    return Generator().eval()


def _time(path: Path, feeds, threads: int, batches: tuple[int, ...]) -> list[tuple[int, float]]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    rows = []
    for batch in batches:
        feed = feeds(batch)
        sess.run(None, feed)
        t0 = time.perf_counter()
        reps = max(2, 8 // batch)
        for _ in range(reps):
            sess.run(None, feed)
        rows.append((batch, batch * reps / (time.perf_counter() - t0)))
    return rows


def speed(work: Path, threads: int) -> None:
    import torch
    from gfpgan_arch import GFPGANArch

    rng = np.random.default_rng(0)
    sim = _simswap_generator()
    sim_path = work / "simswap_arch.onnx"
    gfp = GFPGANArch().eval()
    gfp_path = work / "gfpgan_arch.onnx"
    with torch.no_grad():
        torch.onnx.export(
            sim, (torch.zeros(1, 3, 256, 256), torch.zeros(1, 512)), str(sim_path),
            input_names=["target", "source"], output_names=["output"],
            dynamic_axes={"target": {0: "n"}, "source": {0: "n"}, "output": {0: "n"}},
            opset_version=17, dynamo=False,
        )  # fmt: skip
        torch.onnx.export(
            gfp, (torch.zeros(1, 3, 512, 512),), str(gfp_path), input_names=["input"],
            output_names=["output"], dynamic_axes={"input": {0: "n"}, "output": {0: "n"}},
            opset_version=17, dynamo=False,
        )  # fmt: skip
    print(f"\n{threads} CPU threads, ONNX Runtime, random weights")
    print("| network | parameters | crop | batch | faces/s |")
    print("|---|---|---|---|---|")
    nets = (
        ("SimSwap generator", sim, sim_path, 256, lambda b: {
            "target": rng.random((b, 3, 256, 256), np.float32),
            "source": rng.standard_normal((b, 512)).astype(np.float32)}),
        ("GFPGAN v1.4 (GFPGANv1Clean)", gfp, gfp_path, 512, lambda b: {
            "input": rng.random((b, 3, 512, 512), np.float32)}),
    )  # fmt: skip
    for name, net, path, size, feeds in nets:
        params = sum(p.numel() for p in net.parameters()) / 1e6
        for batch, fps in _time(path, feeds, threads, (1, 4)):
            print(f"| {name} | {params:.1f} M | {size} | {batch} | {fps:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="oneshot_bench_"))
    paste_quality(work)
    overhead(work)
    if not args.skip_speed:
        speed(work, args.threads)


if __name__ == "__main__":
    main()
