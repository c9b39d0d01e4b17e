"""Is ``torch.compile`` worth offering for the training step? Exactness first, then speed.

    python benchmarks/compile_check.py --setup phi4 --rounds 10

For each estimator: the gradient of one step compiled as a whole (estimator + backward,
``torch.compile`` with default settings) against the eager gradient at the same parameters, in
float64, as the largest relative error over the parameter tensors; then eager and compiled
steps in float32, interleaved, as a time ratio. Writes ``results/compile-<device>.json``.
``torch._functorch.config.donated_buffer`` is switched off: the fast path's input-only VJPs
retain the graph, which donated buffers forbid.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import harness
import torch
import torch._functorch.config as functorch_config

from pathgrad_ref.estimators import get_estimator

RESULTS = Path(__file__).resolve().parent / "results"
NAMES = ("reverse-standard", "reverse-path-fast", "forward-standard", "forward-path-fast")


def compiled_step(bench: harness.Bench, estimator: str) -> harness.Step:
    """A training step whose estimator call and backward are one compiled function."""
    est = get_estimator(estimator)
    batch = bench.batches[harness.direction_of(estimator)]

    def inner() -> torch.Tensor:
        loss, _ = est(bench.flow, bench.target, batch)
        torch.autograd.backward(loss)
        return loss.detach()

    compiled = torch.compile(inner)

    def step() -> torch.Tensor:
        bench.optimizer.zero_grad(set_to_none=True)
        loss: torch.Tensor = compiled()
        bench.optimizer.step()
        return loss

    return step


def gradient_error(bench: harness.Bench, estimator: str) -> float:
    """Largest relative error (max-norm per tensor) of the compiled gradient against eager."""
    params = dict(bench.flow.named_parameters())

    def grads(step: harness.Step) -> dict[str, torch.Tensor]:
        lr = [g["lr"] for g in bench.optimizer.param_groups]
        for g in bench.optimizer.param_groups:
            g["lr"] = 0.0  # the step must not move the parameters between the two gradients
        step()
        for g, v in zip(bench.optimizer.param_groups, lr, strict=True):
            g["lr"] = v
        return {n: p.grad.detach().clone() for n, p in params.items() if p.grad is not None}

    eager = grads(harness.make_step(bench, estimator))
    compiled = grads(compiled_step(bench, estimator))
    return max(
        float((compiled[n] - eager[n]).abs().max() / eager[n].abs().max().clamp_min(1e-300))
        for n in eager
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--setup", default="phi4", choices=harness.SETUPS)
    ap.add_argument("--scale", default="small", choices=harness.SCALES)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        harness.set_threads(args.threads)
    functorch_config.donated_buffer = False

    out: dict[str, Any] = {"setup": args.setup, "scale": args.scale, "estimators": {}}
    exact = harness.build(args.setup, args.scale, device, torch.float64)
    for name in NAMES:
        t0 = time.perf_counter()
        err = gradient_error(exact, name)
        out["estimators"][name] = {"max_rel_grad_error_float64": err}
        print(
            f"{name}: compiled vs eager gradient, max rel error {err:.2e} "
            f"({time.perf_counter() - t0:.0f} s incl. compilation)",
            file=sys.stderr,
        )
    eager_bench = harness.build(args.setup, args.scale, device, torch.float32)
    comp_bench = harness.build(args.setup, args.scale, device, torch.float32)
    steps: dict[str, harness.Step] = {}
    for name in NAMES:
        steps[f"{name} [eager]"] = harness.make_step(eager_bench, name)
        steps[f"{name} [compiled]"] = compiled_step(comp_bench, name)
    times = harness.interleaved_times(steps, device, rounds=args.rounds, steps_per_round=2)
    for name in NAMES:
        s = harness.summary(harness.round_ratios(times, f"{name} [compiled]", f"{name} [eager]"))
        out["estimators"][name]["compiled_over_eager_time"] = s
        print(f"{name}: compiled / eager step time, median {s['median']:.3f}", file=sys.stderr)
    out["provenance"] = harness.provenance(device)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"compile-{device.type}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
