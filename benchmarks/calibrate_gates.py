"""The measured basis of the gate limits: repeat each gate's measurement and record the medians.

    python benchmarks/calibrate_gates.py --device cpu --repeats 5

Runs exactly the measurement of ``test_bench_gates.py`` (same rounds, blocks and estimators)
``--repeats`` times per setup, plus the memory ratios and the scaling spread, and writes
``results/gates-<device>.json`` with every median and the limits in force, so that a limit can
be checked against the spread of what it gates.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import harness
import scaling
import test_bench_gates as gates_mod
import torch

RESULTS = Path(__file__).resolve().parent / "results"
RESULTS_MD = RESULTS.parent / "RESULTS.md"


def render(doc: dict[str, Any], device_type: str) -> str:
    """The markdown block that ``RESULTS.md`` shows between its ``gates-<device>`` markers."""
    p = doc["provenance"]
    lines = [
        f"Rendered by `benchmarks/calibrate_gates.py` from `results/gates-{device_type}.json` "
        f"({p.get('gpu', p['cpu'])}, torch {p['torch']}, {p['torch_threads']} thread(s), "
        f"scale {doc['scale']}, {p['time_utc'][:10]}). Each gate measurement: "
        f"{doc['rounds']} interleaved rounds, blocks of at least {doc['min_block_s']} s; "
        "the gate tests the median over the rounds. Listed: that median in each repeat.",
        "",
        "| setup | ratio | limit | medians over repeats | min – max |",
        "|---|---|---|---|---|",
    ]
    for setup, gates in doc["runtime"].items():
        for key, g in gates.items():
            limit = f"≤ {g['upper']}" if g["upper"] is not None else f"≥ {g['lower']}"
            meds = g["medians"]
            lines.append(
                f"| {setup} | `{key}` | {limit} | {', '.join(f'{m:.3f}' for m in meds)} | "
                f"{min(meds):.3f} – {max(meds):.3f} |"
            )
    for setup, m in doc["memory"].items():
        for key, v in m["ratios"].items():
            lines.append(
                f"| {setup} | peak step memory `{key}` | ≤ {m['upper']} | {v:.3f} | {v:.3f} |"
            )
    sc = doc["scaling"]
    for key, vals in sc["spreads"].items():
        lines.append(
            f"| phi4 L×L, L ∈ {sc['sizes']} | max/min over L of median `{key}` | "
            f"≤ {sc['upper']} | {', '.join(f'{v:.3f}' for v in vals)} | "
            f"{min(vals):.3f} – {max(vals):.3f} |"
        )
    for key, vals in sc.get("slope_differences", {}).items():
        lines.append(
            f"| phi4 L×L, L ∈ {sc['sizes']} | log-log slope difference `{key}` | "
            f"≤ {sc['slope_difference_max']} in size | {', '.join(f'{v:+.3f}' for v in vals)} | "
            f"{min(vals):+.3f} – {max(vals):+.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--scale", default="small", choices=harness.SCALES)
    ap.add_argument("--setups", default=",".join(harness.SETUPS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scaling-repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--render-only", action="store_true", help="re-render RESULTS.md only")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    path = args.out / f"gates-{device.type}.json"
    if args.render_only:
        harness.replace_block(
            RESULTS_MD, f"gates-{device.type}", render(json.loads(path.read_text()), device.type)
        )
        return
    if device.type == "cpu":
        harness.set_threads(args.threads)

    out: dict[str, Any] = {
        "scale": args.scale,
        "rounds": gates_mod.ROUNDS,
        "min_block_s": gates_mod.MIN_BLOCK_S,
        "runtime": {},
        "memory": {},
        "provenance": harness.provenance(device),
    }
    for setup in args.setups.split(","):
        bench = harness.build(setup, args.scale, device)
        gates = gates_mod.gates_for(device, setup)
        medians: dict[str, list[float]] = {}
        for r in range(args.repeats):
            ratios = gates_mod.measure_gate_ratios(bench, gates)
            for key, s in ratios.items():
                medians.setdefault(key, []).append(s["median"])
            print(
                f"{setup} repeat {r + 1}: "
                + ", ".join(f"{k} {v['median']:.3f}" for k, v in ratios.items()),
                file=sys.stderr,
                flush=True,
            )
        out["runtime"][setup] = {
            f"{g.numerator} / {g.denominator}": {
                "medians": medians[f"{g.numerator} / {g.denominator}"],
                "upper": g.upper,
                "lower": g.lower,
            }
            for g in gates
        }
        mem: dict[str, float] = {}
        for d in ("reverse", "forward"):
            vals = {}
            for name in (harness.STANDARD[d], harness.FAST[d]):
                step = harness.make_step(bench, name)
                step()
                step()
                vals[name] = harness.step_memory(step, device).delta_bytes
            std, fast = vals[harness.STANDARD[d]], vals[harness.FAST[d]]
            assert std and fast is not None
            mem[f"{harness.FAST[d]} / {harness.STANDARD[d]}"] = fast / std
        out["memory"][setup] = {"ratios": mem, "upper": gates_mod.MEMORY_FAST_MAX}
        print(f"{setup} memory: {mem}", file=sys.stderr, flush=True)
    spreads: dict[str, list[float]] = {}
    slope_diffs: dict[str, list[float]] = {}
    for r in range(args.scaling_repeats):
        res = scaling.run_scaling(
            gates_mod.SCALING_SIZES, device, rounds=7, min_block=0.1, progress=False
        )
        for key, v in res["factor_spread_max_over_min"].items():
            spreads.setdefault(key, []).append(v)
        for key, v in gates_mod.slope_differences(res).items():
            slope_diffs.setdefault(key, []).append(v)
        print(f"scaling repeat {r + 1}: {res['factor_spread_max_over_min']}", file=sys.stderr)
    out["scaling"] = {
        "sizes": list(gates_mod.SCALING_SIZES),
        "spreads": spreads,
        "upper": gates_mod.SCALING_SPREAD_MAX,
        "slope_differences": slope_diffs,
        "slope_difference_max": gates_mod.SCALING_SLOPE_DIFF_MAX,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    if args.out.resolve() == RESULTS:
        harness.replace_block(RESULTS_MD, f"gates-{device.type}", render(out, device.type))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
