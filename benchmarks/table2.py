"""Table 2 of the paper: runtime factors of the path gradient estimators (``docs/theory.md`` §9).

    python benchmarks/table2.py --device cpu --scale small
    python benchmarks/table2.py --device cpu --scale paper-arch --setups phi4,u1
    python benchmarks/table2.py --device cuda --scale paper          # the GPU table

For every setup, the six (non-naive) estimators run one training step each, round-robin, for
``--rounds`` rounds of ``--steps-per-round`` steps (the order rotates every round; warm-up
steps first; CUDA synchronised around every timed block). A runtime factor is the ratio of two
estimators' step times *in the same round*; the table gives its mean ± standard deviation over
the rounds (the JSON also has medians and every raw value). Peak step memory is measured on one
further step per estimator (see ``harness.step_memory`` for what is measured on each device).

Results merge into ``benchmarks/results/table2-<device type>.json`` (one entry per setup, scale
and batch; ``--fresh`` starts the file anew) and the markdown rendering next to it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import harness
import torch

from pathgrad_ref.estimators import per_call_finite_check, per_call_finite_enabled

RESULTS = Path(__file__).resolve().parent / "results"
RESULTS_MD = RESULTS.parent / "RESULTS.md"
# What this script rewrites in a checkout: a change there is no change of the code measured.
OWN_OUTPUTS = ("benchmarks/results/table2-*", "benchmarks/RESULTS.md")


def _parse_batches(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        setup, _, value = item.partition("=")
        if setup not in harness.SETUPS or not value.isdigit():
            raise SystemExit(f"--batch expects SETUP=N with SETUP in {harness.SETUPS}, got {item}")
        out[setup] = int(value)
    return out


def _steps_per_round(seconds_per_step: float, min_block: float) -> int:
    """Steps per timed block so that a block lasts at least ``min_block`` seconds (host clock
    resolution and launch jitter then matter little)."""
    return max(1, math.ceil(min_block / max(seconds_per_step, 1e-9)))


def measure_setup(
    setup: str,
    scale: str,
    device: torch.device,
    dtype: torch.dtype,
    batch: int | None,
    rounds: int,
    min_block: float,
    warmup: int,
    ablations: bool,
    compiled: bool = False,
    mode: str | None = None,
) -> dict[str, Any]:
    """One Table 2 entry: factors, step times and memory of ``setup``; with ``compiled`` also
    every estimator compiled (``harness.make_step(..., compiled=True)``) in the same rounds."""
    bench = harness.build(setup, scale, device, dtype, batch=batch)
    steps: dict[str, harness.Step] = {e: harness.make_step(bench, e) for e in harness.ESTIMATORS}
    if compiled:
        for e in harness.ESTIMATORS:
            steps[f"{e} [compiled]"] = harness.make_step(bench, e, compiled=True, mode=mode)
    if ablations:
        # What the estimators' per-call finiteness test (a flag read back to the host) costs.
        for e in ("reverse-standard", "reverse-path-fast"):
            steps[f"{e} [no input check]"] = harness.without_input_checks(steps[e])
    # Warm-up, then one timed step of each to size the blocks.
    for step in steps.values():
        for _ in range(warmup):
            step()
    harness.synchronize(device)
    slowest = 0.0
    for step in steps.values():
        t0 = time.perf_counter()
        step()
        harness.synchronize(device)
        slowest = max(slowest, time.perf_counter() - t0)
    k = _steps_per_round(slowest, min_block)

    def progress(msg: str) -> None:
        print(f"  [{setup}/{scale}] {msg}", file=sys.stderr, flush=True)

    times = harness.interleaved_times(
        steps, device, rounds=rounds, steps_per_round=k, warmup=0, progress=progress
    )
    factors = {
        f"{num} / {den}": {
            **harness.summary(harness.round_ratios(times, num, den)),
            "values": harness.round_ratios(times, num, den),
        }
        for num, den in harness.FACTORS
    }
    if compiled:
        c = " [compiled]"
        pairs = [(f"{n}{c}", f"{d}{c}") for n, d in harness.FACTORS]
        pairs += [(f"{e}{c}", e) for e in harness.ESTIMATORS]
        for num, den in pairs:
            vals = harness.round_ratios(times, num, den)
            factors[f"{num} / {den}"] = {**harness.summary(vals), "values": vals}
    if ablations:
        for e in ("reverse-standard", "reverse-path-fast"):
            key = f"{e} / {e} [no input check]"
            vals = harness.round_ratios(times, e, f"{e} [no input check]")
            factors[key] = {**harness.summary(vals), "values": vals}
    memory: dict[str, Any] = {}
    for e in harness.ESTIMATORS:
        m = harness.step_memory(steps[e], device)
        memory[e] = {"delta_bytes": m.delta_bytes, "peak_bytes": m.peak_bytes}
        memory["method"] = m.method
    for d in ("reverse", "forward"):
        std = memory[harness.STANDARD[d]]["delta_bytes"]
        for e in (harness.FAST[d], harness.DROPIN[d]):
            got = memory[e]["delta_bytes"]
            memory[e]["delta_over_standard"] = None if not std or got is None else got / std
    return {
        "setup": setup,
        "scale": scale,
        "sizes": bench.sizes,
        "dtype": str(dtype),
        "n_parameters": bench.n_parameters,
        "notes": bench.notes,
        "compiled": compiled,
        "compile_mode": (mode or "default") if compiled else None,
        "protocol": {
            "per_call_finite_check": per_call_finite_enabled(),
            "rounds": rounds,
            "steps_per_round": k,
            "warmup_steps": warmup,
            "order": "round-robin over estimators, rotated by one every round",
            "step": "zero_grad, estimator, backward, Adam step (batch drawn once)",
        },
        "step_time_s": {
            name: {**harness.summary(vals), "values": vals} for name, vals in times.items()
        },
        "factors": factors,
        "memory": memory,
        "provenance": harness.provenance(device),
        "code": harness.code_commit(OWN_OUTPUTS, __file__),
    }


def entry_key(entry: Mapping[str, Any]) -> str:
    key = f"{entry['setup']}/{entry['scale']}/batch={entry['sizes']['batch']}/{entry['dtype']}"
    return key + (f"/compiled-{entry['compile_mode']}" if entry.get("compiled") else "")


SETUP_TITLES = {
    "gmm": "RealNVP, GMM",
    "phi4": "Z2Nice, φ⁴",
    "u1": "U(1) flow (implicit)",
}


def _arch(entry: Mapping[str, Any]) -> str:
    s = entry["sizes"]
    if entry["setup"] == "gmm":
        return f"d={s['dim']}, {s['n_couplings']} couplings, hidden {s['hidden']}"
    if entry["setup"] == "phi4":
        shape = "×".join(str(n) for n in s["shape"])
        return f"{shape}, {s['n_couplings']} couplings, hidden {s['hidden']}"
    return f"{s['L']}×{s['L']}, {s['n_layers']} layers, K={s['n_mixture']}, conv {s['hidden']}"


def sorted_entries(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    return sorted(
        doc["entries"].values(),
        key=lambda e: (
            harness.SETUPS.index(e["setup"]),
            harness.SCALES.index(e["scale"]),
            e["sizes"]["batch"],
        ),
    )


def factor_table(entries: list[dict[str, Any]]) -> list[str]:
    """Markdown rows of the runtime factors (mean ± std over rounds), one row per entry."""
    lines = [
        "| setup | scale | architecture | batch | Alg. 2 / standard (reverse) | "
        "fast / standard (reverse) | Alg. 3 / standard (forward) | fast / standard (forward) | "
        "Alg. 2 / fast | Alg. 3 / fast |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        f = e["factors"]
        cells = [
            SETUP_TITLES[e["setup"]],
            e["scale"] + (" (compile run)" if e.get("compiled") else ""),
            _arch(e),
            str(e["sizes"]["batch"]),
        ] + [
            f"{harness.fmt_factor(f[f'{n} / {d}'])} ({f[f'{n} / {d}']['median']:.2f})"
            for n, d in harness.FACTORS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def compiled_table(entries: list[dict[str, Any]]) -> list[str]:
    """Markdown rows of the compiled runs: Table 2 factors with every step compiled, and the
    compiled / eager step time of each estimator, from the same interleaved rounds."""
    rows = [e for e in entries if e.get("compiled")]
    if not rows:
        return []
    c = " [compiled]"
    lines = [
        "| setup | scale | mode | batch | fast / standard compiled (reverse) | "
        "fast / standard compiled (forward) | Alg. 2 / fast compiled | Alg. 3 / fast compiled | "
        + " | ".join(f"{e} compiled / eager" for e in harness.ESTIMATORS)
        + " |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(harness.ESTIMATORS),
    ]
    for e in rows:
        f = e["factors"]

        def cell(key: str, f: Mapping[str, Any] = f) -> str:
            return f"{harness.fmt_factor(f[key])} ({f[key]['median']:.2f})"

        cells = [
            SETUP_TITLES[e["setup"]],
            e["scale"],
            str(e["compile_mode"]),
            str(e["sizes"]["batch"]),
            cell(f"reverse-path-fast{c} / reverse-standard{c}"),
            cell(f"forward-path-fast{c} / forward-standard{c}"),
            cell(f"reverse-path-dropin{c} / reverse-path-fast{c}"),
            cell(f"forward-path-gdreg{c} / forward-path-fast{c}"),
        ] + [cell(f"{n}{c} / {n}") for n in harness.ESTIMATORS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def memory_table(entries: list[dict[str, Any]]) -> list[str]:
    """Markdown rows of the fast path's peak step memory over the standard estimator's."""
    lines = [
        "| setup | scale | batch | fast / standard memory (reverse) | "
        "fast / standard memory (forward) |",
        "|---|---|---|---|---|",
    ]
    for e in entries:
        scale = e["scale"] + (" (compile run)" if e.get("compiled") else "")
        cells = [SETUP_TITLES[e["setup"]], scale, str(e["sizes"]["batch"])]
        for d in ("reverse", "forward"):
            r = e["memory"][harness.FAST[d]].get("delta_over_standard")
            cells.append("—" if r is None else f"{r:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(doc: Mapping[str, Any]) -> str:
    """The markdown table of every entry of ``doc`` (a ``table2-<device>.json``)."""
    entries = sorted_entries(doc)
    lines = [
        f"# Table 2 on `{doc['device_type']}`: runtime factors of the path gradient estimators",
        "",
        "Generated by `benchmarks/table2.py`; do not edit by hand. Factor = step time of the "
        "estimator / step time of the reference, both measured in the same round of an "
        "interleaved run; mean ± std over the rounds, the median in brackets (robust to the "
        "slow spells of a shared machine). A step is zero_grad, estimator, backward and an Adam "
        "step.",
        "",
        *factor_table(entries),
    ]
    if any(e.get("compiled") for e in entries):
        lines += [
            "",
            "## Compiled (`--compile`)",
            "",
            "Every estimator also compiled (`pathgrad_ref.estimators.compile_estimator`) and "
            "timed in the same interleaved rounds as the eager steps; per-call finiteness check "
            "off for all steps of a compile run.",
            "",
            *compiled_table(entries),
        ]
    lines += [
        "",
        "## Step time and peak step memory",
        "",
        "Median step time over the rounds; peak memory of one step above what was live before "
        "it (parameters, optimiser state and batch excluded), and its ratio to the standard "
        "estimator of the same direction.",
        "",
        "| setup | scale | batch | estimator | step time (ms) | peak step memory (MiB) | "
        "memory / standard |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        for name in harness.ESTIMATORS:
            t = e["step_time_s"][name]["median"] * 1e3
            m = e["memory"][name]
            ratio = m.get("delta_over_standard")
            scale = e["scale"] + (" (compile run)" if e.get("compiled") else "")
            lines.append(
                f"| {SETUP_TITLES[e['setup']]} | {scale} | {e['sizes']['batch']} | {name} | "
                f"{t:.1f} | {harness.mib(m['delta_bytes'])} | "
                f"{'—' if ratio is None else f'{ratio:.3f}'} |"
            )
    extra = [
        (e, k)
        for e in entries
        for k in e["factors"]
        if "[" in k and "[compiled]" not in k and e["factors"][k] is not None
    ]
    if extra:
        lines += [
            "",
            "## Ablations",
            "",
            "| setup | scale | batch | ratio | mean ± std | median |",
            "|---|---|---|---|---|---|",
        ]
        for e, k in extra:
            s = e["factors"][k]
            lines.append(
                f"| {SETUP_TITLES[e['setup']]} | {e['scale']} | {e['sizes']['batch']} | `{k}` | "
                f"{harness.fmt_factor(s)} | {s['median']:.3f} |"
            )
    lines += ["", "## Provenance", ""]
    lines += [
        "| setup | scale | batch | device | CPU / GPU | torch | threads | rounds × steps | "
        "load avg at end (1, 5, 15 min) | date (UTC) | code commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        p, pr = e["provenance"], e["protocol"]
        hw = p.get("gpu", p["cpu"])
        lines.append(
            f"| {e['setup']} | {e['scale']} | {e['sizes']['batch']} | {p['device']} | {hw} | "
            f"{p['torch']} | {p['torch_threads']} of {p['cpu_count']} | "
            f"{pr['rounds']} × {pr['steps_per_round']} | {p.get('load_average_1_5_15', 'n/a')} | "
            f"{p['time_utc']} | {(e.get('code') or {}).get('commit', 'not recorded')} |"
        )
    mem_methods = sorted({e["memory"]["method"] for e in entries})
    lines += ["", "Memory measured by: " + "; ".join(mem_methods) + "."]
    notes = sorted({n for e in entries for n in e["notes"]})
    if notes:
        lines += ["", "Notes: " + "; ".join(notes) + "."]
    return "\n".join(lines) + "\n"


def results_block(doc: Mapping[str, Any]) -> str:
    """What ``table2.py`` writes into ``RESULTS.md`` between its markers."""
    entries = sorted_entries(doc)
    when = sorted({e["provenance"]["time_utc"][:10] for e in entries})
    hw = sorted({e["provenance"].get("gpu", e["provenance"]["cpu"]) for e in entries})
    lines = [
        f"Rendered by `benchmarks/table2.py` from `results/table2-{doc['device_type']}.json` "
        f"({', '.join(hw)}; {', '.join(when)}). Mean ± std over interleaved rounds, the "
        "median in brackets.",
        "",
        *factor_table(entries),
        *(
            ["", "Compiled (`--compile`; median in brackets):", "", *compiled_table(entries)]
            if any(e.get("compiled") for e in entries)
            else []
        ),
        "",
        "Peak step memory, fast path over the standard estimator of its direction:",
        "",
        *memory_table(entries),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    ap.add_argument("--scale", default="small", choices=harness.SCALES)
    ap.add_argument("--setups", default=",".join(harness.SETUPS), help="comma-separated setups")
    ap.add_argument("--batch", action="append", default=[], help="SETUP=N, override a batch")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    ap.add_argument(
        "--min-block", type=float, default=0.2, help="seconds a timed block lasts at least"
    )
    ap.add_argument("--warmup", type=int, default=2, help="warm-up steps per estimator")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    ap.add_argument(
        "--ablations", action="store_true", help="also time the estimators without input checks"
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="also time every estimator compiled (torch.compile), in the same rounds; all steps "
        "then run with the per-call finiteness check off",
    )
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    ap.add_argument("--fresh", action="store_true", help="replace the results file")
    ap.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: re-render the markdown (and RESULTS.md) from the JSON",
    )
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    if device.type == "cpu":
        harness.set_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    batches = _parse_batches(args.batch)
    setups = [s for s in args.setups.split(",") if s]

    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"table2-{device.type}.json"
    doc: dict[str, Any] = {"device_type": device.type, "entries": {}}
    if json_path.exists() and not args.fresh:
        doc = json.loads(json_path.read_text())
    if args.render_only:
        setups = []
    for setup in setups:
        print(f"{setup} ({args.scale}) on {device} ...", file=sys.stderr, flush=True)
        # A compiled step reads the switch while it is traced; the same setting for every step
        # keeps eager and compiled alike (a training loop checks batches where it makes them).
        with per_call_finite_check(not args.compile):
            entry = measure_setup(
                setup,
                args.scale,
                device,
                dtype,
                batches.get(setup),
                args.rounds,
                args.min_block,
                args.warmup,
                args.ablations,
                args.compile,
                args.compile_mode,
            )
        doc["entries"][entry_key(entry)] = entry
        # Written after every setup, so that an interrupted run keeps what it measured.
        json_path.write_text(json.dumps(doc, indent=1) + "\n")
        md = render_markdown(doc)
        (args.out / f"table2-{device.type}.md").write_text(md)
    if doc["entries"]:
        (args.out / f"table2-{device.type}.md").write_text(render_markdown(doc))
        if args.out.resolve() == RESULTS:
            harness.replace_block(RESULTS_MD, f"table2-{device.type}", results_block(doc))
        print(render_markdown(doc))


if __name__ == "__main__":
    main()
