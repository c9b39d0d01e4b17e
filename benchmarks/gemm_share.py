"""Share of a training step's CPU time spent in matrix products (what compiling cannot fuse).

    python benchmarks/gemm_share.py --setup phi4 --scale paper-arch --steps 3

Profiles ``--steps`` eager training steps of the fast and standard estimators with
``torch.profiler`` (CPU, one thread, float32) and prints, per estimator, the self CPU time of
``aten::mm``, ``aten::addmm``, ``aten::bmm`` and ``aten::convolution`` kernels (their
``mkldnn``/``_convolution`` children included through self times) over the total self CPU time.
``torch.compile`` fuses the element-wise work around the products and leaves the products
themselves to the same BLAS/oneDNN kernels, so ``1 − share`` bounds what it can save.
"""

from __future__ import annotations

import argparse

import harness
import torch
from torch.profiler import ProfilerActivity, profile

GEMM = ("mm", "addmm", "bmm", "matmul", "linear", "conv", "mkldnn", "gemm")


def gemm_share(step: harness.Step, steps: int) -> float:
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    total = 0.0
    gemm = 0.0
    for ev in prof.key_averages():
        t = float(ev.self_cpu_time_total)
        total += t
        if any(k in ev.key.lower() for k in GEMM):
            gemm += t
    return gemm / total


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--setup", default="phi4", choices=harness.SETUPS)
    ap.add_argument("--scale", default="paper-arch", choices=harness.SCALES)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args(argv)
    harness.set_threads(1)
    bench = harness.build(args.setup, args.scale, "cpu", torch.float32)
    for name in ("reverse-standard", "reverse-path-fast", "forward-standard", "forward-path-fast"):
        share = gemm_share(harness.make_step(bench, name), args.steps)
        print(f"{args.setup}/{args.scale} {name}: matrix products {share:.1%} of self CPU time")


if __name__ == "__main__":
    main()
