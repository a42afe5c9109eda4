"""Invisible watermark: robustness, false positives, quality and speed on real photos.

Usage: ``python benchmarks/watermark.py [--orl ../shared/data/orl_faces] [--keys 20]
[--compare-dwtdct]``

Image set: the ORL faces (39 people × 10 photos, 92×112, upscaled to 210×256, and one per
person at native size), the bundled samples (t1 1280×886, astronaut 512×512, hanks
112×112), the seven faces dlib finds in t1/astronaut cropped with three margins,
mirrored, and resized to 64–256 pixels (42 crops per size), and synthetic-looking
variants (airbrushed, cartoon-flat, drawn gradients). For each image: PSNR of the marked copy; detection on the marked copy, after
JPEG quality 75, after a 0.5× bicubic resize and after both; false positives on the
unmarked image, its JPEG-75 copy and its 0.5× copy; time to embed and to detect.
``--keys N`` re-tests every unmarked variant with N random keys to check the detector's
false-positive calibration. ``--compare-dwtdct`` runs the ``invisible-watermark``
package's DWT-DCT (Stable Diffusion's watermark; 48-bit mark, detected when at least 41
bits match, p ≈ 1e-7) on the images it accepts (at least 256×256 pixels) for comparison.
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import io
import math
import secrets
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from facegen.image_io import load_image
from facegen.samples import sample_path
from facegen.watermark import detect_watermark, embed_watermark

ORL = Path(__file__).resolve().parents[2] / "shared" / "data" / "orl_faces"
Attack = Callable[[np.ndarray], np.ndarray]


def jpeg75(img: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=75)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def half(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BICUBIC)
    return np.asarray(small)


ATTACKS: dict[str, Attack] = {
    "clean": lambda x: x,
    "JPEG 75": jpeg75,
    "0.5×": half,
    "0.5× + JPEG 75": lambda x: jpeg75(half(x)),
}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BICUBIC))


def face_crops() -> list[np.ndarray]:
    """Square crops of the seven faces dlib finds in t1 and astronaut: three margins (the
    face box × 1.25, 1.5, 2) and their mirror images, 42 crops in all."""
    from facegen.analyzer import FaceAnalyzer

    analyzer = FaceAnalyzer.from_names("dlib", None, "dlib")
    crops = []
    for name in ("t1", "astronaut"):
        img = load_image(sample_path(name))
        h, w = img.shape[:2]
        for face in analyzer.detect(img):
            x0, y0, x1, y1 = (float(v) for v in face.bbox)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            for margin in (1.25, 1.5, 2.0):
                side = margin * max(x1 - x0, y1 - y0)
                a0, b0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
                a1, b1 = int(min(w, cx + side / 2)), int(min(h, cy + side / 2))
                crop = img[b0:b1, a0:a1]
                crops += [crop, np.ascontiguousarray(crop[:, ::-1])]
    return crops


def airbrushed(img: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), 1.5)


def cartoon(img: np.ndarray) -> np.ndarray:
    out = img
    for _ in range(3):
        out = cv2.bilateralFilter(out, 9, 40, 7)
    return (out // 24 * 24 + 12).astype(np.uint8)


def drawn(seed: int, size: int) -> np.ndarray:
    """A smooth, flat, face-like drawing: gradient background, soft ellipses, little texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.zeros((size, size, 3), np.float32)
    c0, c1 = rng.uniform(40, 220, 3), rng.uniform(40, 220, 3)
    img[:] = c0 * (1 - yy[..., None]) + c1 * yy[..., None]
    for _ in range(6):
        cx, cy, rx, ry = rng.uniform(0.2, 0.8, 2).tolist() + rng.uniform(0.05, 0.3, 2).tolist()
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
        alpha = np.clip(1.5 - inside, 0, 1)[..., None]
        img = img * (1 - alpha) + rng.uniform(30, 230, 3) * alpha
    img = cv2.GaussianBlur(img, (0, 0), size / 200)
    return np.clip(img + rng.normal(0, 1.0, img.shape), 0, 255).astype(np.uint8)


def build_set(orl: Path, use_faces: bool) -> list[tuple[str, np.ndarray]]:
    items: list[tuple[str, np.ndarray]] = []
    if orl.is_dir():
        people = sorted(p for p in orl.iterdir() if p.is_dir())
        for person in people:
            for k in range(1, 11):
                items.append(("ORL ↑210×256", resize(load_image(person / f"{k}.pgm"), 210, 256)))
        for person in people:
            items.append(("ORL native 92×112", load_image(person / "1.pgm")))
    else:
        print(f"(ORL faces not found at {orl}; skipped)")
    samples = {n: load_image(sample_path(n)) for n in ("t1", "astronaut", "hanks")}
    for name, img in samples.items():
        items.append((f"sample {name} {img.shape[1]}×{img.shape[0]}", img))
    crops = face_crops() if use_faces else []
    for side in (64, 96, 112, 128, 192, 256):
        for crop in crops:
            items.append((f"face crop {side}", resize(crop, side, side)))
    synth = [resize(c, 256, 256) for c in crops[2::6]] + [samples["astronaut"], samples["t1"]]
    for img in synth:
        items.append(("airbrushed", airbrushed(img)))
        items.append(("cartoon", cartoon(img)))
    for seed in range(6):
        items.append(("drawn", drawn(seed, (256, 512)[seed % 2])))
    return items


@dataclass
class Stats:
    n: int = 0
    min_side: int = 1 << 30
    psnr: list[float] = field(default_factory=list)
    hits: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    tested: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    false_pos: int = 0
    unmarked_tests: int = 0
    embed_ms: list[float] = field(default_factory=list)
    detect_ms: list[float] = field(default_factory=list)

    def add(self, other: Stats) -> None:
        self.n += other.n
        self.psnr += other.psnr
        for k in other.tested:
            self.hits[k] += other.hits[k]
            self.tested[k] += other.tested[k]
        self.false_pos += other.false_pos
        self.unmarked_tests += other.unmarked_tests
        self.embed_ms += other.embed_ms
        self.detect_ms += other.detect_ms


def rate(hits: int, n: int) -> str:
    return f"{100 * hits / n:.1f}% ({hits}/{n})" if n else "–"


def run_ours(items: list[tuple[str, np.ndarray]]) -> dict[str, Stats]:
    groups: dict[str, Stats] = defaultdict(Stats)
    for group, img in items:
        s = groups[group]
        s.n += 1
        s.min_side = min(s.min_side, *img.shape[:2])
        t = time.perf_counter()
        marked = embed_watermark(img)
        s.embed_ms.append(1000 * (time.perf_counter() - t))
        s.psnr.append(psnr(marked, img))
        for name, attack in ATTACKS.items():
            attacked = attack(marked)
            t = time.perf_counter()
            result = detect_watermark(attacked)
            if name == "clean":
                s.detect_ms.append(1000 * (time.perf_counter() - t))
            s.tested[name] += 1
            s.hits[name] += int(result.detected)
        for variant in (img, jpeg75(img), half(img)):
            s.unmarked_tests += 1
            s.false_pos += int(detect_watermark(variant).detected)
    return groups


def print_table(groups: dict[str, Stats]) -> None:
    cols = list(ATTACKS)
    print(
        "| images | n | PSNR dB mean (min) | "
        + " | ".join(f"detected {c}" for c in cols)
        + " | false positives (unmarked, JPEG, 0.5×) | embed ms | detect ms |"
    )
    print("|" + "---|" * (len(cols) + 6))
    total, from112, from128 = Stats(), Stats(), Stats()
    for s in groups.values():
        total.add(s)
        if s.min_side >= 112:
            from112.add(s)
        if s.min_side >= 128:
            from128.add(s)
    summary = [
        ("**all**", total),
        ("**all, short side ≥ 112**", from112),
        ("**all, short side ≥ 128**", from128),
    ]
    for name, s in [*groups.items(), *summary]:
        print(
            f"| {name} | {s.n} | {statistics.fmean(s.psnr):.1f} ({min(s.psnr):.1f}) | "
            + " | ".join(rate(s.hits[c], s.tested[c]) for c in cols)
            + f" | {rate(s.false_pos, s.unmarked_tests)} | {statistics.median(s.embed_ms):.1f}"
            f" | {statistics.median(s.detect_ms):.1f} |"
        )


def calibration(items: list[tuple[str, np.ndarray]], keys: int) -> None:
    variants = [v for _, img in items for v in (img, jpeg75(img), half(img))]
    p_values = [
        detect_watermark(v, key=secrets.token_bytes(16)).p_value
        for _ in range(keys)
        for v in variants
    ]
    n = len(p_values)
    print(f"\nDetector calibration: {n} tests of unmarked images with {keys} random keys\n")
    print("| p-value threshold | expected at most | observed |")
    print("|---|---|---|")
    for alpha in (1e-2, 1e-3, 1e-4):
        observed = sum(p <= alpha for p in p_values)
        print(f"| {alpha:g} | {alpha * n:.1f} | {observed} |")


def timing(img: np.ndarray, repeats: int = 50) -> None:
    def measure(fn: Callable[[], object]) -> tuple[float, float, float]:
        fn()
        wall, cpu = [], []
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        return 1000 * statistics.median(wall), 1000 * min(wall), 1000 * statistics.median(cpu)

    marked = embed_watermark(img)
    h, w = img.shape[:2]
    print(f"\nSpeed on a {w}×{h} image ({repeats} runs):\n")
    print("| step | wall ms, median | wall ms, best | CPU ms, median (all threads) |")
    print("|---|---|---|---|")
    for name, fn in (
        ("embed", lambda: embed_watermark(img)),
        ("detect", lambda: detect_watermark(marked)),
    ):
        med, best, cpu = measure(fn)
        print(f"| {name} | {med:.1f} | {best:.1f} | {cpu:.1f} |")


def compare_dwtdct(items: list[tuple[str, np.ndarray]]) -> None:
    try:
        from imwatermark import WatermarkDecoder, WatermarkEncoder
    except ImportError:
        print("\n(--compare-dwtdct needs `pip install invisible-watermark`; skipped)")
        return
    bits = [int(b) for b in np.random.default_rng(0).integers(0, 2, 48)]
    need = 41  # P(Binomial(48, 1/2) >= 41) ≈ 1e-7
    enc = WatermarkEncoder()
    enc.set_watermark("bits", bits)
    dec = WatermarkDecoder("bits", 48)

    def found(rgb: np.ndarray) -> bool:
        if rgb.shape[0] * rgb.shape[1] < 256 * 256:
            return False  # the package refuses to decode smaller images
        got = dec.decode(np.ascontiguousarray(rgb[..., ::-1]), "dwtDct")
        return sum(int(a == b) for a, b in zip(got, bits, strict=True)) >= need

    usable = [(g, im) for g, im in items if im.shape[0] * im.shape[1] >= 256 * 256]
    res: dict[str, dict[str, int]] = {"DWT-DCT": defaultdict(int), "facegen": defaultdict(int)}
    quality: dict[str, list[float]] = {"DWT-DCT": [], "facegen": []}
    for _, img in usable:
        theirs = np.ascontiguousarray(enc.encode(np.ascontiguousarray(img[..., ::-1]), "dwtDct"))
        marks = {"DWT-DCT": theirs[..., ::-1], "facegen": embed_watermark(img)}
        for name, marked in marks.items():
            quality[name].append(psnr(marked, img))
            test = found if name == "DWT-DCT" else (lambda x: detect_watermark(x).detected)
            for attack_name, attack in ATTACKS.items():
                res[name][attack_name] += int(test(attack(marked)))
            res[name]["fp"] += int(test(img))
    n = len(usable)
    print(f"\nComparison with invisible-watermark DWT-DCT on the {n} images ≥ 256×256\n")
    print("| scheme | PSNR dB mean | " + " | ".join(ATTACKS) + " | false positives |")
    print("|" + "---|" * (len(ATTACKS) + 3))
    for name, r in res.items():
        print(
            f"| {name} | {statistics.fmean(quality[name]):.1f} | "
            + " | ".join(rate(r[a], n) for a in ATTACKS)
            + f" | {rate(r['fp'], n)} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orl", type=Path, default=ORL)
    ap.add_argument("--keys", type=int, default=20, help="random keys for the calibration check")
    ap.add_argument("--no-faces", action="store_true", help="skip the dlib face crops")
    ap.add_argument("--compare-dwtdct", action="store_true")
    args = ap.parse_args()
    items = build_set(args.orl, not args.no_faces)
    print(f"{len(items)} images\n")
    print_table(run_ours(items))
    if args.keys:
        calibration(items, args.keys)
    timing(load_image(sample_path("astronaut")))
    if args.compare_dwtdct:
        compare_dwtdct(items)


if __name__ == "__main__":
    main()
