"""How exact the compiled training step is: the relative gradient errors behind
``tests/test_compile.py``, measured and rendered rather than only asserted.

    python benchmarks/compile_exactness.py            # CPU, float64, default and reduce-overhead

For every estimator on the tiny RealNVP, Z2Nice and U(1) flows of the tests, and for both
compile modes on the fast path: ``‖g_compiled − g_eager‖ / ‖g_eager‖`` and
``‖g_compiled − g_naive‖ / ‖g_naive‖`` over all parameters (the tests assert ``≤ 1e-10``).
Writes ``results/compile-exactness-<device>.json`` and renders into ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import harness
import torch
import torch._dynamo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_compile import ESTIMATORS, SETUPS, check_compiled_step

RESULTS = Path(__file__).resolve().parent / "results"
RESULTS_MD = RESULTS.parent / "RESULTS.md"
FAST = ("reverse-path-fast", "forward-path-fast")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        harness.set_threads(1)
    rows: list[dict[str, Any]] = []
    runs = [(s, e, None) for s in SETUPS for e in ESTIMATORS]
    runs += [(s, e, "reduce-overhead") for s in SETUPS for e in FAST]
    for setup, name, mode in runs:
        torch._dynamo.reset()
        err_eager, err_oracle = check_compiled_step(setup, name, device, mode)
        rows.append(
            {
                "setup": setup,
                "estimator": name,
                "mode": mode or "default",
                "rel_err_vs_eager": err_eager,
                "rel_err_vs_naive": err_oracle,
            }
        )
        print(f"{setup} {name} {mode or 'default'}: {err_eager:.1e} {err_oracle:.1e}", flush=True)
    doc = {"rows": rows, "provenance": harness.provenance(device)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"compile-exactness-{device.type}.json").write_text(json.dumps(doc, indent=1) + "\n")
    worst_eager = max(rows, key=lambda r: r["rel_err_vs_eager"])
    worst_naive = max(rows, key=lambda r: r["rel_err_vs_naive"])
    lines = [
        f"Rendered by `benchmarks/compile_exactness.py` from "
        f"`results/compile-exactness-{device.type}.json` ({doc['provenance']['time_utc'][:10]}, "
        f"torch {doc['provenance']['torch']}): float64, tiny flows of `tests/test_compile.py`, "
        "relative error over all parameter gradients of one compiled training step.",
        "",
        "| setup | estimator | mode | vs eager | vs naive oracle |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['setup']} | {r['estimator']} | {r['mode']} | {r['rel_err_vs_eager']:.1e} | "
        f"{r['rel_err_vs_naive']:.1e} |"
        for r in rows
    ]
    lines += [
        "",
        f"Largest compiled-vs-eager error {worst_eager['rel_err_vs_eager']:.1e} "
        f"({worst_eager['setup']}, {worst_eager['estimator']}, {worst_eager['mode']}); largest "
        f"compiled-vs-naive error {worst_naive['rel_err_vs_naive']:.1e} ({worst_naive['setup']}, "
        f"{worst_naive['estimator']}, {worst_naive['mode']}).",
    ]
    block = "\n".join(lines)
    harness.replace_block(RESULTS_MD, f"compile-exactness-{device.type}", block)
    print(block)


if __name__ == "__main__":
    main()
