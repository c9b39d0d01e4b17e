"""Scaling study: step time of the standard and fast-path estimators against lattice volume.

    python benchmarks/scaling.py --device cpu                   # L = 8 … 128, writes results/
    python benchmarks/scaling.py --device cpu --sizes 8,16,32 --rounds 5

φ⁴ on ``L × L`` lattices with a Z2Nice flow of fixed depth and width (``--couplings``,
``--hidden``; defaults sized for one CPU core) and a fixed batch. For every ``L`` the four
estimators (standard and fast path, both directions) are interleaved as in ``table2.py``; the
fast-path factor is taken round by round. The claim under test: the fast path scales like the
standard estimator, i.e. the factor stays roughly constant while the step time grows with the
volume. Writes ``results/scaling-<device>.json`` and a log-log plot ``scaling-<device>.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import harness
import torch

RESULTS = Path(__file__).resolve().parent / "results"
RESULTS_MD = RESULTS.parent / "RESULTS.md"
ESTIMATORS = ("reverse-standard", "reverse-path-fast", "forward-standard", "forward-path-fast")
PAIRS = (("reverse-path-fast", "reverse-standard"), ("forward-path-fast", "forward-standard"))


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx
    )


def run_scaling(
    sizes: Sequence[int],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    couplings: int = 4,
    hidden: Sequence[int] = (256, 256),
    batch: int = 64,
    rounds: int = 7,
    min_block: float = 0.2,
    progress: bool = True,
) -> dict[str, Any]:
    """Interleaved step times of :data:`ESTIMATORS` on ``L × L`` φ⁴ for every ``L`` in
    ``sizes``; returns per-``L`` medians, the factors and the log-log slopes."""
    per_l: list[dict[str, Any]] = []
    for L in sizes:
        spec = {
            "shape": [L, L],
            "n_couplings": couplings,
            "hidden": list(hidden),
            "batch": batch,
        }
        bench = harness.build("phi4", device=device, dtype=dtype, sizes=spec)
        steps = {e: harness.make_step(bench, e) for e in ESTIMATORS}
        for step in steps.values():
            step()
            step()
        harness.synchronize(device)
        probe = harness.interleaved_times(steps, device, rounds=1, warmup=0)
        k = max(1, math.ceil(min_block / max(max(v[0] for v in probe.values()), 1e-9)))
        times = harness.interleaved_times(steps, device, rounds=rounds, steps_per_round=k, warmup=0)
        row: dict[str, Any] = {
            "L": L,
            "volume": L * L,
            "n_parameters": bench.n_parameters,
            "steps_per_round": k,
            "step_time_s": {e: harness.summary(v) for e, v in times.items()},
            "factors": {
                f"{n} / {d}": harness.summary(harness.round_ratios(times, n, d)) for n, d in PAIRS
            },
        }
        per_l.append(row)
        if progress:
            med = {e: row["step_time_s"][e]["median"] * 1e3 for e in ESTIMATORS}
            ms = "  ".join(f"{e} {t:.1f} ms" for e, t in med.items())
            fac = "  ".join(f"{k.split()[0]}: {v['median']:.3f}" for k, v in row["factors"].items())
            print(f"L={L} V={L * L}  {ms}  {fac}", file=sys.stderr, flush=True)
    volumes = [r["volume"] for r in per_l]
    slopes = {
        e: loglog_slope(volumes, [r["step_time_s"][e]["median"] for r in per_l]) for e in ESTIMATORS
    }
    spread = {}
    for n, d in PAIRS:
        meds = [r["factors"][f"{n} / {d}"]["median"] for r in per_l]
        spread[f"{n} / {d}"] = max(meds) / min(meds)
    return {
        "flow": {"kind": "z2_nice", "n_couplings": couplings, "hidden": list(hidden)},
        "batch": batch,
        "dtype": str(dtype),
        "rounds": rounds,
        "rows": per_l,
        "loglog_slope": slopes,
        "factor_spread_max_over_min": spread,
        "provenance": harness.provenance(device),
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Log-log step time against volume, and the fast-path factors against volume."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    vol = [r["volume"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {
        "reverse-standard": ("C0", "-", "o"),
        "reverse-path-fast": ("C0", "--", "s"),
        "forward-standard": ("C1", "-", "o"),
        "forward-path-fast": ("C1", "--", "s"),
    }
    for e in ESTIMATORS:
        color, ls, marker = styles[e]
        t = [r["step_time_s"][e]["median"] * 1e3 for r in rows]
        slope = result["loglog_slope"][e]
        ax1.loglog(vol, t, ls=ls, marker=marker, color=color, label=f"{e} (slope {slope:.2f})")
    ax1.set_xlabel("lattice volume V = L²")
    ax1.set_ylabel("median step time (ms)")
    ax1.legend(fontsize=8)
    ax1.grid(True, which="both", alpha=0.3)
    for (n, d), color in zip(PAIRS, ("C0", "C1"), strict=True):
        key = f"{n} / {d}"
        med = [r["factors"][key]["median"] for r in rows]
        lo = [r["factors"][key]["median"] - r["factors"][key]["min"] for r in rows]
        hi = [r["factors"][key]["max"] - r["factors"][key]["median"] for r in rows]
        ax2.errorbar(vol, med, yerr=[lo, hi], marker="s", color=color, capsize=3, label=key)
    ax2.axhline(4 / 3, color="gray", ls=":", label="4/3 (structural estimate, MLP couplings)")
    ax2.set_xscale("log")
    ax2.set_xlabel("lattice volume V = L²")
    ax2.set_ylabel("runtime factor (median, min–max over rounds)")
    ax2.legend(fontsize=8)
    ax2.grid(True, which="both", alpha=0.3)
    fl = result["flow"]
    p = result["provenance"]
    fig.suptitle(
        f"φ⁴ L×L, Z2Nice {fl['n_couplings']} couplings, hidden {fl['hidden']}, batch "
        f"{result['batch']}, {result['dtype']}; {p.get('gpu', p['cpu'])}, torch {p['torch']}, "
        f"{p['torch_threads']} thread(s)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render(result: dict[str, Any], device_type: str) -> str:
    """The markdown block that ``RESULTS.md`` shows between its ``scaling-<device>`` markers."""
    p, fl = result["provenance"], result["flow"]
    lines = [
        f"Rendered by `benchmarks/scaling.py` from `results/scaling-{device_type}.json` "
        f"({p.get('gpu', p['cpu'])}, torch {p['torch']}, {p['torch_threads']} thread(s), "
        f"{p['time_utc'][:10]}): φ⁴ on L×L, Z2Nice with {fl['n_couplings']} couplings, hidden "
        f"{fl['hidden']}, batch {result['batch']}, {result['dtype']}, {result['rounds']} "
        "interleaved rounds per L; medians.",
        "",
        "| L | V | "
        + " | ".join(f"{e} (ms)" for e in ESTIMATORS)
        + " | fast / standard (reverse) | fast / standard (forward) |",
        "|---|---|" + "---|" * (len(ESTIMATORS) + 2),
    ]
    for r in result["rows"]:
        cells = [str(r["L"]), str(r["volume"])]
        cells += [f"{r['step_time_s'][e]['median'] * 1e3:.1f}" for e in ESTIMATORS]
        cells += [f"{r['factors'][f'{n} / {d}']['median']:.3f}" for n, d in PAIRS]
        lines.append("| " + " | ".join(cells) + " |")
    slopes = ", ".join(f"{e} {v:.2f}" for e, v in result["loglog_slope"].items())
    spread = ", ".join(
        f"{k.split()[0]} {v:.3f}" for k, v in result["factor_spread_max_over_min"].items()
    )
    lines += [
        "",
        f"Log-log slopes of step time against V: {slopes}. Largest over smallest per-L median "
        f"factor: {spread}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="8,16,32,64,128", help="comma-separated lattice sizes L")
    ap.add_argument("--couplings", type=int, default=4)
    ap.add_argument("--hidden", default="256,256", help="comma-separated hidden widths")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--min-block", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--render-only", action="store_true", help="re-plot and re-render from the JSON"
    )
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.render_only:
        result = json.loads((args.out / f"scaling-{device.type}.json").read_text())
        plot(result, args.out / f"scaling-{device.type}.png")
        if args.out.resolve() == RESULTS:
            harness.replace_block(RESULTS_MD, f"scaling-{device.type}", render(result, device.type))
        return
    if device.type == "cpu":
        harness.set_threads(args.threads)
    result = run_scaling(
        [int(s) for s in args.sizes.split(",")],
        device,
        getattr(torch, args.dtype),
        args.couplings,
        [int(h) for h in args.hidden.split(",")],
        args.batch,
        args.rounds,
        args.min_block,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"scaling-{device.type}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out / f"scaling-{device.type}.png")
    if args.out.resolve() == RESULTS:
        harness.replace_block(RESULTS_MD, f"scaling-{device.type}", render(result, device.type))
    print(json.dumps({k: result[k] for k in ("loglog_slope", "factor_spread_max_over_min")}))


if __name__ == "__main__":
    main()
