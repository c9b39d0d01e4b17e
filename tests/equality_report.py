"""Print the relative errors reached by every exact identity the test suite asserts.

    python tests/equality_report.py            # float64, CPU; a markdown table

The tests assert ``≤ 1e-9``; this shows how far below that each pair actually lands.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from support import SETUPS, make_setup, rel_err, target_batch
from test_estimators import EQUAL_PAIRS

from pathgrad_ref.estimators import direction, gradient


def main() -> None:
    torch.manual_seed(0)
    rows = []
    for setup in SETUPS:
        flow, target = make_setup(setup, torch.device("cpu"), torch.float64)
        torch.manual_seed(3)
        z = flow.base.sample(8)
        x = target_batch(flow, target, 8)
        for a, b in EQUAL_PAIRS:
            batch = z if direction(a) == "reverse" else x
            err = rel_err(gradient(a, flow, target, batch), gradient(b, flow, target, batch))
            rows.append((setup, f"{a} = {b}", err))
    print("| setup | identity | relative error |")
    print("|---|---|---|")
    for setup, pair, err in rows:
        print(f"| {setup} | {pair} | {err:.1e} |")


if __name__ == "__main__":
    main()
