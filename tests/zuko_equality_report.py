"""Print the relative errors reached by the zuko equality tests (``test_interop_zuko.py``).

    python tests/zuko_equality_report.py            # float64, CPU; a markdown table

The tests assert ``≤ 1e-9``; this shows how far below that each zuko flow lands: for every flow
and orientation, the largest relative error over the six estimators against their oracles.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from support import rel_err
from test_interop_zuko import FLOWS, ORACLE, ORIENTATIONS, _batch, _setup

from pathgrad_ref.estimators import gradient


def main() -> None:
    torch.set_num_threads(1)
    print("| zuko flow | orientation | largest relative error | estimator |")
    print("|---|---|---|---|")
    for name in FLOWS:
        for orientation in ORIENTATIONS:
            _, wrapped, target = _setup(name, orientation)
            worst, which = 0.0, ""
            for oracle, estimators in ORACLE.items():
                batch = _batch(name, oracle, wrapped, target)
                g_oracle = gradient(oracle, wrapped, target, batch)
                for est in estimators:
                    err = rel_err(gradient(est, wrapped, target, batch), g_oracle)
                    if err >= worst:
                        worst, which = err, est
            print(f"| {name} | {orientation} | {worst:.1e} | {which} |", flush=True)


if __name__ == "__main__":
    main()
