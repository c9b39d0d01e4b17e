"""Step time and peak memory of one training step, per setup and estimator (pytest-benchmark).

These are absolute times for pytest-benchmark's tables, histories and ``--benchmark-compare``;
they are not interleaved and vary with the machine. The runtime factors of Table 2 and the gates
are in ``table2.py`` and ``test_bench_gates.py``, which interleave the estimators.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import harness
import pytest
import torch

# The time a benchmark aims to spend measuring (after warm-up), and the bounds on its rounds.
TARGET_SECONDS = 3.0
MIN_ROUNDS, MAX_ROUNDS = 3, 50


@pytest.mark.parametrize("estimator", harness.ESTIMATORS)
@pytest.mark.parametrize("setup", harness.SETUPS)
def test_step(
    benchmark: Any,
    benches: Callable[[str], harness.Bench],
    bench_scale: str,
    setup: str,
    estimator: str,
) -> None:
    bench = benches(setup)
    step = harness.make_step(bench, estimator)
    device = bench.device

    def synced() -> torch.Tensor:
        loss = step()
        harness.synchronize(device)
        return loss

    # Warm-up, and a first estimate of the step time to size the rounds.
    synced()
    t0 = time.perf_counter()
    loss = synced()
    estimate = time.perf_counter() - t0
    assert torch.isfinite(loss), f"{estimator} on {setup}: non-finite loss {float(loss)}"
    memory = harness.step_memory(step, device)
    rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, TARGET_SECONDS // max(estimate, 1e-6))))

    benchmark.group = f"{setup} ({bench_scale}, {device})"
    benchmark.extra_info.update(
        {
            "setup": setup,
            "estimator": estimator,
            "scale": bench_scale,
            "sizes": bench.sizes,
            "dtype": str(bench.dtype),
            "n_parameters": bench.n_parameters,
            "peak_memory_delta_bytes": memory.delta_bytes,
            "peak_memory_bytes": memory.peak_bytes,
            "memory_method": memory.method,
            **harness.provenance(device),
        }
    )
    benchmark.pedantic(synced, rounds=rounds, iterations=1, warmup_rounds=1)
