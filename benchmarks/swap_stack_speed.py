"""Speed of the published one-shot-swap-stack networks on the CPU, rebuilt with random weights.

Each network is rebuilt in PyTorch from its published description (see the module named in
the table below for what each rebuild follows and how sure it is), exported to ONNX (opset
17, dynamic batch axis) in the input/output signature of the published ONNX file, and run
with ONNX Runtime's ``CPUExecutionProvider``: faces/s at batch 1 and 4, the median of
``--repeats`` timed runs after one warm-up run. Random weights give the true cost of an
architecture; the published files may differ in details that do not change it.

| name | network | module |
|---|---|---|
| inswapper_128 | insightface inswapper_128 | ``inswapper_arch.py`` |
| simswap_256 | SimSwap generator | ``oneshot_swap.py`` (``_simswap_generator``) |
| ghost_{1,2,3}_256 | GHOST AEI-Net, U-Net encoder, 1/2/3 AAD blocks | ``ghost_arch.py`` |
| gfpgan_1.4 | GFPGAN v1.4 (GFPGANv1Clean) | ``gfpgan_arch.py`` |
| codeformer | CodeFormer, fidelity w as an input | ``codeformer_arch.py`` |
| bisenet_resnet_{18,34} | BiSeNet face parsing, 19 classes | ``bisenet_arch.py`` |

Not rebuilt: HyperSwap (FaceFusion's ``hyperswap_1{a,b,c}_256``), whose architecture has not
been published.

Usage: ``python benchmarks/swap_stack_speed.py [--only NAME[,NAME]] [--threads 2]
[--repeats 3]``. By default all networks except ghost_1_256 and ghost_2_256 are timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

BATCHES = (1, 4)


@dataclass(frozen=True)
class Net:
    name: str
    build: Callable[[], object]
    inputs: dict[str, tuple[int, ...]]  # name → shape at batch 1; float64 when the name is "weight"
    outputs: dict[str, tuple[int, ...]]
    default: bool = True

    def describe(self) -> str:
        def one(name: str, shape: tuple[int, ...]) -> str:
            if name == "weight":
                return "weight (float64)"
            return f"{name} N×{'×'.join(map(str, shape[1:]))}"

        return ", ".join(one(k, v) for k, v in self.inputs.items())

    def feeds(self, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        out = {}
        for name, shape in self.inputs.items():
            if name == "weight":
                out[name] = np.array([0.5], np.float64)
            elif len(shape) == 2:  # an identity vector: unit length, as the callers pass it
                v = rng.standard_normal((batch, *shape[1:])).astype(np.float32)
                out[name] = v / np.linalg.norm(v, axis=1, keepdims=True)
            else:
                out[name] = rng.uniform(-1, 1, (batch, *shape[1:])).astype(np.float32)
        return out


def _nets() -> list[Net]:
    from bisenet_arch import build_bisenet
    from codeformer_arch import build_codeformer
    from gfpgan_arch import GFPGANArch
    from ghost_arch import build_ghost
    from inswapper_arch import build_inswapper
    from oneshot_swap import _simswap_generator

    def swap(size: int) -> tuple[dict, dict]:
        return (
            {"target": (1, 3, size, size), "source": (1, 512)},
            {"output": (1, 3, size, size)},
        )

    def face(size: int) -> dict:
        return {"input": (1, 3, size, size)}

    cf_in = {**face(512), "weight": (1,)}
    parse_out = {k: (1, 19, 512, 512) for k in ("output", "output16", "output32")}
    return [
        Net("inswapper_128", build_inswapper, *swap(128)),
        Net("simswap_256", _simswap_generator, *swap(256)),
        Net("ghost_1_256", lambda: build_ghost(1), *swap(256), default=False),
        Net("ghost_2_256", lambda: build_ghost(2), *swap(256), default=False),
        Net("ghost_3_256", lambda: build_ghost(3), *swap(256)),
        Net("gfpgan_1.4", lambda: GFPGANArch().eval(), face(512), {"output": (1, 3, 512, 512)}),
        Net("codeformer", build_codeformer, cf_in, {"output": (1, 3, 512, 512)}),
        Net("bisenet_resnet_18", lambda: build_bisenet(18), face(512), parse_out),
        Net("bisenet_resnet_34", lambda: build_bisenet(34), face(512), parse_out),
    ]


def export(net: Net, model, path: Path) -> None:
    import torch

    args = tuple(
        torch.full(shape, 0.5, dtype=torch.float64) if name == "weight" else torch.zeros(shape)
        for name, shape in net.inputs.items()
    )
    dynamic = {name: {0: "n"} for name in [*net.inputs, *net.outputs] if name != "weight"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
        torch.onnx.export(
            model, args, str(path), input_names=list(net.inputs),
            output_names=list(net.outputs), dynamic_axes=dynamic, opset_version=17, dynamo=False,
        )  # fmt: skip


def time_net(net: Net, path: Path, threads: int, repeats: int) -> list[tuple[int, float]]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    rows = []
    for batch in BATCHES:
        feed = net.feeds(batch, rng)
        outs = sess.run(None, feed)  # warm-up, and a check of the signature
        for out, (name, shape) in zip(outs, net.outputs.items()):
            want = (batch, *shape[1:])
            if out.shape != want or not np.isfinite(out).all():
                raise RuntimeError(f"{net.name}: {name} is {out.shape}, want {want} and finite")
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - t0)
        rows.append((batch, batch / statistics.median(times)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="comma-separated names (see the module docstring)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    torch.manual_seed(0)
    nets = _nets()
    if args.only:
        names = {n.strip() for n in args.only.split(",") if n.strip()}
        unknown = names - {n.name for n in nets}
        if unknown:
            ap.error(f"unknown network(s): {', '.join(sorted(unknown))}")
        nets = [n for n in nets if n.name in names]
    else:
        nets = [n for n in nets if n.default]

    print(
        f"{args.threads} CPU threads, ONNX Runtime CPUExecutionProvider, random weights, "
        f"median of {args.repeats} run(s) after a warm-up"
    )
    print("| network | inputs | parameters (M) | batch | faces/s |")
    print("|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory(prefix="swap_stack_") as work:
        for net in nets:
            model = net.build()
            params = sum(p.numel() for p in model.parameters()) / 1e6
            path = Path(work) / f"{net.name}.onnx"
            export(net, model, path)
            del model
            for batch, fps in time_net(net, path, args.threads, args.repeats):
                print(
                    f"| {net.name} | {net.describe()} | {params:.1f} | {batch} | {fps:.2f} |",
                    flush=True,
                )
            path.unlink()


if __name__ == "__main__":
    main()
