"""``torch.compile`` against eager for the training step: exactness first, then speed.

    python benchmarks/compile_check.py --setups phi4,gmm --scales small,paper-arch --rounds 10

For each setup and scale, and for the standard and fast estimators of both directions:

1. exactness: the gradient of one step with the estimator compiled
   (``pathgrad_ref.estimators.compile_estimator``) against the eager gradient at the same
   parameters, in float64 (batch ``--exact-batch``), as the largest relative error over the
   parameter tensors (max-norm per tensor);
2. speed: eager and compiled training steps (zero_grad, estimator, backward, Adam) in float32,
   interleaved round by round in one process; per round the ratios compiled / eager of every
   estimator and fast / standard of each direction, eager and compiled.

Every step runs with the estimators' per-call finiteness check off (a training loop checks each
batch where it is made; the check is a graph break under compilation), eager and compiled alike,
so that the ratios compare like with like. ``--mode reduce-overhead`` compiles with CUDA graphs
on a GPU. Results merge into ``results/compile-<device>.json`` (one entry per setup, scale and
mode) and render into ``RESULTS.md`` between the ``compile-<device>`` markers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import harness
import torch
import torch._dynamo

from pathgrad_ref.estimators import per_call_finite_check

RESULTS = Path(__file__).resolve().parent / "results"
RESULTS_MD = RESULTS.parent / "RESULTS.md"
NAMES = ("reverse-standard", "reverse-path-fast", "forward-standard", "forward-path-fast")


def _grads(step: harness.Step, bench: harness.Bench) -> dict[str, torch.Tensor]:
    lr = [g["lr"] for g in bench.optimizer.param_groups]
    for g in bench.optimizer.param_groups:
        g["lr"] = 0.0  # the step must not move the parameters between the two gradients
    step()
    for g, v in zip(bench.optimizer.param_groups, lr, strict=True):
        g["lr"] = v
    return {
        n: p.grad.detach().clone() for n, p in bench.flow.named_parameters() if p.grad is not None
    }


def gradient_error(bench: harness.Bench, estimator: str, mode: str | None) -> float:
    """Largest relative error (max-norm per tensor) of the compiled gradient against eager."""
    eager = _grads(harness.make_step(bench, estimator), bench)
    compiled = _grads(harness.make_step(bench, estimator, compiled=True, mode=mode), bench)
    if eager.keys() != compiled.keys():
        raise AssertionError(f"{estimator}: compiled and eager reach different parameters")
    return max(
        float((compiled[n] - eager[n]).abs().max() / eager[n].abs().max().clamp_min(1e-300))
        for n in eager
    )


def measure(
    setup: str,
    scale: str,
    device: torch.device,
    mode: str | None,
    rounds: int,
    min_block: float,
    exact_batch: int,
    check_cost: bool = False,
) -> dict[str, Any]:
    out: dict[str, Any] = {"setup": setup, "scale": scale, "mode": mode or "default"}
    exact = harness.build(setup, scale, device, torch.float64, batch=exact_batch)
    out["exact_batch"] = exact_batch
    out["max_rel_grad_error_float64"] = {}
    for name in NAMES:
        torch._dynamo.reset()
        t0 = time.perf_counter()
        err = gradient_error(exact, name, mode)
        out["max_rel_grad_error_float64"][name] = err
        print(
            f"  [{setup}/{scale}] {name}: compiled vs eager gradient, max rel error {err:.2e} "
            f"({time.perf_counter() - t0:.0f} s incl. compilation)",
            file=sys.stderr,
            flush=True,
        )
    torch._dynamo.reset()
    bench = harness.build(setup, scale, device, torch.float32)
    steps: dict[str, harness.Step] = {}
    t0 = time.perf_counter()
    for name in NAMES:
        steps[name] = harness.make_step(bench, name)
        steps[f"{name} [compiled]"] = harness.make_step(bench, name, compiled=True, mode=mode)
        steps[f"{name} [compiled]"]()  # compile now, outside every timed block
    out["compile_time_s"] = time.perf_counter() - t0
    checked = [harness.FAST["reverse"], harness.FAST["forward"]] if check_cost else []
    for name in checked:
        # The same steps with the per-call finiteness test on: a host read, and for the compiled
        # step a graph break (dynamo guards on the switch, so this is a second compiled entry).
        steps[f"{name} [checked]"] = harness.with_input_checks(steps[name])
        steps[f"{name} [compiled, checked]"] = harness.with_input_checks(
            steps[f"{name} [compiled]"]
        )
        steps[f"{name} [compiled, checked]"]()
    probe = harness.interleaved_times(steps, device, rounds=1, warmup=2)
    k = max(1, int(min_block / max(max(v[0] for v in probe.values()), 1e-9)) + 1)

    def progress(msg: str) -> None:
        print(f"  [{setup}/{scale}] {msg}", file=sys.stderr, flush=True)

    times = harness.interleaved_times(
        steps, device, rounds=rounds, steps_per_round=k, warmup=0, progress=progress
    )
    ratios: dict[str, Any] = {}
    pairs = [(f"{n} [compiled]", n) for n in NAMES]
    for d in ("reverse", "forward"):
        fast, std = harness.FAST[d], harness.STANDARD[d]
        pairs += [(fast, std), (f"{fast} [compiled]", f"{std} [compiled]")]
    for name in checked:
        pairs += [
            (f"{name} [checked]", name),
            (f"{name} [compiled, checked]", f"{name} [compiled]"),
        ]
    for num, den in pairs:
        vals = harness.round_ratios(times, num, den)
        ratios[f"{num} / {den}"] = {**harness.summary(vals), "values": vals}
    out["ratios"] = ratios
    out["step_time_s"] = {n: harness.summary(v) for n, v in times.items()}
    out["sizes"] = bench.sizes
    out["protocol"] = {
        "rounds": rounds,
        "steps_per_round": k,
        "dtype": "torch.float32",
        "per_call_finite_check": False,
        "order": "round-robin over all steps, rotated by one every round",
    }
    out["provenance"] = harness.provenance(device)
    return out


def entry_key(e: Mapping[str, Any]) -> str:
    return f"{e['setup']}/{e['scale']}/{e['mode']}"


def render(doc: Mapping[str, Any]) -> str:
    entries = sorted(
        doc["entries"].values(),
        key=lambda e: (harness.SETUPS.index(e["setup"]), harness.SCALES.index(e["scale"])),
    )
    hw = sorted({e["provenance"].get("gpu", e["provenance"]["cpu"]) for e in entries})
    when = sorted({e["provenance"]["time_utc"][:10] for e in entries})
    lines = [
        f"Rendered by `benchmarks/compile_check.py` from `results/compile-{doc['device_type']}"
        f".json` ({', '.join(hw)}; {', '.join(when)}). Step-time ratios from interleaved "
        "rounds in one process, float32, one thread, per-call finiteness check off for eager and "
        "compiled alike: median over rounds (mean ± std in brackets). Gradient error: compiled "
        "vs eager, float64, largest max-norm relative error over the parameter tensors.",
        "",
        "| setup | scale | mode | compiled / eager, fast (rev) | compiled / eager, fast (fwd) | "
        "compiled / eager, standard (rev) | compiled / eager, standard (fwd) | "
        "fast / standard eager (rev) | fast / standard compiled (rev) | "
        "fast / standard eager (fwd) | fast / standard compiled (fwd) | "
        "max grad error, compiled vs eager |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    c = " [compiled]"
    for e in entries:
        r = e["ratios"]

        def cell(key: str, r: Mapping[str, Any] = r) -> str:
            s = r[key]
            return f"{s['median']:.3f} ({harness.fmt_factor(s)})"

        cells = [
            e["setup"],
            e["scale"],
            e["mode"],
            cell(f"reverse-path-fast{c} / reverse-path-fast"),
            cell(f"forward-path-fast{c} / forward-path-fast"),
            cell(f"reverse-standard{c} / reverse-standard"),
            cell(f"forward-standard{c} / forward-standard"),
            cell("reverse-path-fast / reverse-standard"),
            cell(f"reverse-path-fast{c} / reverse-standard{c}"),
            cell("forward-path-fast / forward-standard"),
            cell(f"forward-path-fast{c} / forward-standard{c}"),
            f"{max(e['max_rel_grad_error_float64'].values()):.1e}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    checked = [(e, k) for e in entries for k in e["ratios"] if "checked]" in k]
    if checked:
        lines += [
            "",
            "Cost of the per-call finiteness test (step with it on over the same step with it "
            "off, same rounds):",
            "",
            "| setup | scale | ratio | median (mean ± std) |",
            "|---|---|---|---|",
        ]
        for e, k in checked:
            s = e["ratios"][k]
            lines.append(
                f"| {e['setup']} | {e['scale']} | `{k}` | {s['median']:.3f} "
                f"({harness.fmt_factor(s)}) |"
            )
    lines += [
        "",
        "| setup | scale | rounds × steps | compile time of the 4 float32 steps (s; short when "
        "inductor's on-disk cache already holds the kernels) | "
        "load avg at end (1, 5, 15 min) | date (UTC) |",
        "|---|---|---|---|---|---|",
    ]
    for e in entries:
        p = e["provenance"]
        lines.append(
            f"| {e['setup']} | {e['scale']} | {e['protocol']['rounds']} × "
            f"{e['protocol']['steps_per_round']} | {e['compile_time_s']:.0f} | "
            f"{p.get('load_average_1_5_15', 'n/a')} | {p['time_utc']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--setups", default="phi4", help="comma-separated setups")
    ap.add_argument("--scales", default="small", help="comma-separated scales")
    ap.add_argument("--mode", default=None, help="torch.compile mode (e.g. reduce-overhead)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--min-block", type=float, default=0.2, help="seconds per timed block")
    ap.add_argument("--exact-batch", type=int, default=64, help="batch of the float64 check")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--check-cost",
        action="store_true",
        help="also time the fast steps with the per-call finiteness test on (eager and compiled)",
    )
    ap.add_argument("--render-only", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    if device.type == "cpu":
        harness.set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"compile-{device.type}.json"
    doc: dict[str, Any] = {"device_type": device.type, "entries": {}}
    if path.exists():
        old = json.loads(path.read_text())
        if "entries" in old:  # files of the first version of this script are replaced
            doc = old
    todo = (
        []
        if args.render_only
        else [(s, c) for s in args.setups.split(",") if s for c in args.scales.split(",") if c]
    )
    with per_call_finite_check(False):
        for setup, scale in todo:
            print(f"{setup} ({scale}) on {device} ...", file=sys.stderr, flush=True)
            entry = measure(
                setup,
                scale,
                device,
                args.mode,
                args.rounds,
                args.min_block,
                args.exact_batch,
                args.check_cost,
            )
            doc["entries"][entry_key(entry)] = entry
            path.write_text(json.dumps(doc, indent=1) + "\n")
    if doc["entries"]:
        block = render(doc)
        if args.out.resolve() == RESULTS:
            harness.replace_block(RESULTS_MD, f"compile-{device.type}", block)
        print(block)


if __name__ == "__main__":
    main()
