"""Table-2 rows for the flows practitioners train: spline couplings, Glow, masked autoregressive.

    python benchmarks/every_flow.py --device cpu
    python benchmarks/every_flow.py --device cpu --rounds 15 --min-block 0.5   # quieter machine

Per flow, the six (non-naive) estimators run interleaved training steps in one run, exactly as
``table2.py`` does (``harness.interleaved_times``: round-robin blocks, the order rotated every
round, ratios taken round by round), then one more step each for peak memory
(``harness.step_memory``). Rows:

- ``nsf``: rational-quadratic spline couplings (``neural_spline_flow``), d = 6;
- ``glow``: ActNorm → LULinear → affine coupling blocks (``glow_flow``), d = 6;
- ``maf-d{8,32,128}``: masked autoregressive, affine (``masked_autoregressive_flow``), to show
  how each estimator's cost grows with ``d``. Its sampling direction (the layer's ``forward``)
  is sequential, ``d`` MADE passes; the density direction is one. The reverse fast path runs the
  sequential forward the sample needs anyway and takes its score VJP through the *one-pass*
  inverse; the forward-KL fast path takes its VJP through the *sequential* forward (cost ∝ d),
  where maximum likelihood needs the one pass only.

Parameters are seeded noise around the constructors' identity initialisation (every layer
moves). Writes ``benchmarks/results/every-flow-<device type>.json`` (with the git commit,
versions, hardware and load average) and renders it into ``benchmarks/RESULTS.md`` between
``<!-- BEGIN every-flow-<device type> -->`` markers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import harness
import torch

from pathgrad_ref.flows import Flow, glow_flow, masked_autoregressive_flow, neural_spline_flow
from pathgrad_ref.targets import GaussianMixture

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
RESULTS_MD = RESULTS.parent / "RESULTS.md"

# name -> (title, constructor arguments, batch)
ROWS: dict[str, tuple[str, dict[str, Any], int]] = {
    "nsf": ("Spline couplings (NSF)", {"dim": 6, "n_couplings": 6, "bins": 8}, 512),
    "glow": ("Glow", {"dim": 6, "n_blocks": 4}, 512),
    "maf-d8": ("MAF, affine", {"dim": 8, "n_layers": 4}, 256),
    "maf-d32": ("MAF, affine", {"dim": 32, "n_layers": 4}, 256),
    "maf-d128": ("MAF, affine", {"dim": 128, "n_layers": 4}, 256),
}
HIDDEN = (64, 64)


def make_flow(row: str) -> Flow:
    _, args, _ = ROWS[row]
    if row == "nsf":
        return neural_spline_flow(
            args["dim"], n_couplings=args["n_couplings"], bins=args["bins"], hidden=HIDDEN
        )
    if row == "glow":
        return glow_flow(args["dim"], args["n_blocks"], HIDDEN)
    return masked_autoregressive_flow(args["dim"], args["n_layers"], HIDDEN, "affine")


def build(row: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> harness.Bench:
    torch.manual_seed(seed)
    flow = make_flow(row)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # move every layer off the identity
        for p in flow.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    flow = flow.to(device=device, dtype=dtype)
    dim = ROWS[row][1]["dim"]
    target = GaussianMixture(dim)
    n = ROWS[row][2]
    z = flow.base.sample(n)
    x = target.sample(n).to(device=device, dtype=dtype)
    return harness.Bench(
        name=row,
        flow=flow,
        target=target,
        batches={"reverse": z, "forward": x},
        optimizer=torch.optim.Adam(flow.parameters(), lr=harness.LEARNING_RATE),
        sizes={**ROWS[row][1], "hidden": list(HIDDEN), "batch": n},
        device=device,
        dtype=dtype,
    )


def measure(
    row: str, device: torch.device, dtype: torch.dtype, rounds: int, min_block: float
) -> dict[str, Any]:
    bench = build(row, device, dtype)
    steps = {e: harness.make_step(bench, e) for e in harness.ESTIMATORS}
    for step in steps.values():
        step()
    harness.synchronize(device)
    slowest = 0.0
    for step in steps.values():
        t0 = time.perf_counter()
        step()
        harness.synchronize(device)
        slowest = max(slowest, time.perf_counter() - t0)
    k = max(1, int(min_block / max(slowest, 1e-9)) + 1)
    load_before = harness.provenance(device).get("load_average_1_5_15")
    times = harness.interleaved_times(steps, device, rounds=rounds, steps_per_round=k, warmup=1)
    factors = {
        f"{num} / {den}": {
            **harness.summary(harness.round_ratios(times, num, den)),
            "values": harness.round_ratios(times, num, den),
        }
        for num, den in harness.FACTORS
    }
    memory = {}
    for e in harness.ESTIMATORS:
        m = harness.step_memory(steps[e], device)
        memory[e] = {"delta_bytes": m.delta_bytes, "peak_bytes": m.peak_bytes, "method": m.method}
    print(f"  {row}: done ({k} steps per block)", file=sys.stderr, flush=True)
    return {
        "row": row,
        "title": ROWS[row][0],
        "sizes": bench.sizes,
        "dtype": str(dtype),
        "n_parameters": bench.n_parameters,
        "protocol": {"rounds": rounds, "steps_per_round": k, "min_block_s": min_block},
        "load_average_before": load_before,
        "step_time_s": {n: {**harness.summary(v), "values": v} for n, v in times.items()},
        "factors": factors,
        "memory": memory,
        "provenance": harness.provenance(device),
    }


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "unknown"


def _f(s: Mapping[str, float]) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f} ({s['median']:.2f})"


def render(doc: Mapping[str, Any]) -> str:
    rows = doc["rows"]
    first = next(iter(rows.values()))["provenance"]
    loads = [r["provenance"].get("load_average_1_5_15", ["?"])[0] for r in rows.values()]
    lines = [
        f"Rendered by `benchmarks/every_flow.py` from `results/{doc['file']}` (commit "
        f"{doc['commit']}, torch {first['torch']}, {first['cpu']}, {first['torch_threads']} "
        f"thread(s), {first['time_utc'][:10]}; 1-min load average during the rows: "
        f"{', '.join(str(x) for x in loads)}). Mean ± std over interleaved rounds, median in "
        "brackets; memory is the peak step memory above the step's start (MiB).",
        "",
        "| flow | d | params | batch | fast / standard (rev) | fast / Alg. 2 (rev) | "
        "fast / standard (fwd) | fast / Alg. 3 (fwd) | memory std / Alg. 2 / fast (rev) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows.values():
        f, m = r["factors"], r["memory"]
        inv = {
            "rev": {
                k: 1 / v
                for k, v in f["reverse-path-dropin / reverse-path-fast"].items()
                if k in ("mean", "median")
            },
            "fwd": {
                k: 1 / v
                for k, v in f["forward-path-gdreg / forward-path-fast"].items()
                if k in ("mean", "median")
            },
        }
        mem = " / ".join(
            harness.mib(m[e]["delta_bytes"])
            for e in ("reverse-standard", "reverse-path-dropin", "reverse-path-fast")
        )
        lines.append(
            f"| {r['title']} | {r['sizes']['dim']} | {r['n_parameters']} | {r['sizes']['batch']} "
            f"| {_f(f['reverse-path-fast / reverse-standard'])} "
            f"| {inv['rev']['mean']:.2f} ({inv['rev']['median']:.2f}) "
            f"| {_f(f['forward-path-fast / forward-standard'])} "
            f"| {inv['fwd']['mean']:.2f} ({inv['fwd']['median']:.2f}) | {mem} |"
        )
    lines += [
        "",
        "Step times (ms, median over rounds) of every estimator; for MAF they show how each "
        "grows with d:",
        "",
        "| flow | d | " + " | ".join(harness.ESTIMATORS) + " |",
        "|---|---|" + "---|" * len(harness.ESTIMATORS),
    ]
    for r in rows.values():
        t = r["step_time_s"]
        cells = [f"{1e3 * t[e]['median']:.1f}" for e in harness.ESTIMATORS]
        lines.append(f"| {r['title']} | {r['sizes']['dim']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {list(ROWS)}")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--min-block", type=float, default=0.2, help="seconds per timed block")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    harness.set_threads(args.threads)
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; expected some of {list(ROWS)}")
    doc: dict[str, Any] = {
        "file": f"every-flow-{device.type}.json",
        "commit": _commit(),
        "command": " ".join(["python", "benchmarks/every_flow.py", *(argv or sys.argv[1:])]),
        "rows": {r: measure(r, device, torch.float32, args.rounds, args.min_block) for r in rows},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / doc["file"]
    path.write_text(json.dumps(doc, indent=1) + "\n")
    text = render(doc)
    print(text)
    if not harness.replace_block(RESULTS_MD, f"every-flow-{device.type}", text):
        print(f"no every-flow-{device.type} markers in {RESULTS_MD}; not rendered", file=sys.stderr)


if __name__ == "__main__":
    main()
