"""Median time of one fast reverse-KL step on a wrapped zuko NSF with ``passes=2``: an A/B of two
checkouts of the library on one machine, interleaved by the caller.

    for i in 1 2 3; do
        PYTHONPATH=/path/to/old python benchmarks/step_ab.py old
        PYTHONPATH=/path/to/new python benchmarks/step_ab.py new
    done

One thread, float32, ``NSF(8, transforms=4, passes=2, bins=8, hidden_features=(64, 64))`` in the
reverse-KL orientation, batch 256; the median of 35 steps after 5 warm-up steps. Prints the
label and the median in milliseconds (compare them as ratios, on one machine).
"""

from __future__ import annotations

import sys
import time

import torch


def main(label: str) -> None:
    import zuko

    from pathgrad_ref.estimators import get_estimator, per_call_finite_check
    from pathgrad_ref.interop import from_zuko
    from pathgrad_ref.targets import GaussianMixture

    torch.set_num_threads(1)
    torch.manual_seed(0)
    nsf = zuko.flows.NSF(8, transforms=4, passes=2, bins=8, hidden_features=(64, 64))
    wrapped = from_zuko(zuko.lazy.Flow(nsf.transform.inv, nsf.base))
    target, estimator = GaussianMixture(8), get_estimator("reverse-path-fast")
    z = wrapped.base.sample(256)
    times = []
    with per_call_finite_check(False):
        for _ in range(40):
            start = time.perf_counter()
            loss, _ = estimator(wrapped, target, z)
            loss.backward()
            times.append(time.perf_counter() - start)
    kept = sorted(times[5:])
    print(label, f"{1e3 * kept[len(kept) // 2]:.1f} ms")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "this")
