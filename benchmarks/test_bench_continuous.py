"""Gates of the continuous flow (``continuous_flows.py``, row ``GATE_ROW``): runtime ratios
measured in one run, peak step memory, and the velocity evaluations of a training step.

The runtime gates are those of ``test_bench_gates.py`` in form and measurement
(``measure_gate_ratios``: the estimators interleaved round-robin, the ratio taken round by
round, the median over the rounds tested). Their limits come from the repeated gate
measurement that ``continuous_flows.py --gate-repeats`` records in
``results/continuous-cpu.json`` (rendered in ``RESULTS.md``, "Continuous flows"), with a
margin for a noisy two-core runner. They are CPU limits: on a GPU the runtime gates skip until
``continuous_flows.py --device cuda`` has measured them.
"""

from __future__ import annotations

from typing import Any

import continuous_flows as cf
import harness
import pytest
import torch
from test_bench_gates import Gate, measure_gate_ratios

GATE_ROW = cf.DEFAULT_ROW

# fast / standard, both directions, d = 8 (the default row). Per RK4 stage the fast path does
# what the standard gradient's backward does, minus the parameter gradients of the d
# forward-mode products, plus one velocity evaluation with its backward: a work model puts it
# at about 0.8 of the standard step at d = 8 (RESULTS.md). Set above the calibration's medians
# with room for a loaded runner; a fast path that picked up a second solve of the augmented
# system (Algorithm 3's cost) would break it, one that kept the divergence graph would break
# the memory gate below. Re-measured at 097e0d6's continuous.py: repeat medians 0.870 - 1.092
# under a load of about 3, not under 1.0 in every repeat, so the limit was not tightened.
FAST_MAX = 1.2
# Algorithms 2 and 3 over the fast path: they solve the augmented system three and two times
# (every solve with the d forward-mode products, whether or not the log-determinant is used).
# Protects the point of Algorithm 1 on this flow.
DROPIN_OVER_FAST_MIN = 1.3
# Peak step memory, fast / standard, both directions: the fast path keeps the graph of the
# velocity alone, the standard gradient also that of the d forward-mode products of every
# stage (model 1/(1 + d) = 0.11 at d = 8). Memory does not depend on the load; the room is for
# allocator and torch changes. The eager input-only VJP (097e0d6) records one stage's graph in
# θ too: 0.112 at d = 8 (0.104 with torch.func.vjp, in the record at 6885273: git show
# 54db48b:benchmarks/results/continuous-cpu.json). A fast path that kept the divergence graph
# would sit near 1.
MEMORY_FAST_MAX = 0.2

# Velocity calls per training step, in RK4 stages of one solve: the standard gradient makes one
# jacobian call per stage (velocity_and_divergence with the graph); the fast path solves once
# and evaluates the velocity twice per stage: the forward of score_rate's input-only VJP of
# (v, div v) (told apart by its call site, cf.count_evaluations; in eager mode it runs under
# the same transforms and grad mode as the standard call), then v with its graph.
EXPECTED_CALLS = {
    "reverse-standard": {"jacobian, graph in θ": 1},
    "forward-standard": {"jacobian, graph in θ": 1},
    "reverse-path-fast": {cf.SCORE_RATE_JACOBIAN: 1, "plain, graph in θ": 1},
    "forward-path-fast": {cf.SCORE_RATE_JACOBIAN: 1, "plain, graph in θ": 1},
}


def cpu_gates() -> list[Gate]:
    """The runtime gates with their CPU limits; ``continuous_flows.py --gate-repeats`` measures
    these ratios on any device."""
    out = []
    for d in ("reverse", "forward"):
        fast, std, dropin = harness.FAST[d], harness.STANDARD[d], harness.DROPIN[d]
        out += [
            Gate(fast, std, upper=FAST_MAX, protects="fast path no dearer than one solve"),
            Gate(
                dropin,
                fast,
                lower=DROPIN_OVER_FAST_MIN,
                protects=f"Algorithm 1 beats {'Algorithm 2' if d == 'reverse' else 'Algorithm 3'}",
            ),
        ]
    return out


def runtime_gates(device: torch.device) -> list[Gate]:
    """The runtime gates on ``device``'s type: :func:`cpu_gates` on a CPU, none elsewhere
    (not measured on a GPU yet)."""
    return cpu_gates() if device.type == "cpu" else []


def measure(bench: harness.Bench) -> dict[str, dict[str, float]]:
    """The gate measurement, ``median_r(t_num,r / t_den,r)`` and its summary for every ratio of
    :func:`cpu_gates`: ``measure_gate_ratios`` (``ROUNDS`` interleaved rounds)."""
    return measure_gate_ratios(bench, cpu_gates())


@pytest.fixture(scope="module")
def cnf_bench(bench_device: torch.device, bench_dtype: torch.dtype) -> harness.Bench:
    return cf.build(GATE_ROW, bench_device, bench_dtype)


def test_continuous_runtime_gates(benchmark: Any, cnf_bench: harness.Bench) -> None:
    gates = runtime_gates(cnf_bench.device)
    if not gates:
        pytest.skip("continuous flow: no runtime limits measured on this device type yet")
    benchmark.group = "gates"
    ratios = benchmark.pedantic(measure, args=(cnf_bench,), rounds=1, iterations=1)
    benchmark.extra_info.update(ratios)
    benchmark.extra_info.update(harness.provenance(cnf_bench.device))
    failures = [
        msg
        for g in gates
        if (msg := g.check(ratios[f"{g.numerator} / {g.denominator}"]["median"])) is not None
    ]
    assert not failures, f"continuous {GATE_ROW}: " + "; ".join(failures)


def test_continuous_memory_gate(benchmark: Any, cnf_bench: harness.Bench) -> None:
    def run() -> dict[str, harness.Memory]:
        out = {}
        for name in (*harness.STANDARD.values(), *harness.FAST.values()):
            step = harness.make_step(cnf_bench, name)
            step()
            out[name] = harness.step_memory(step, cnf_bench.device)
        return out

    benchmark.group = "gates"
    memory = benchmark.pedantic(run, rounds=1, iterations=1)
    failures = []
    for d in ("reverse", "forward"):
        std = memory[harness.STANDARD[d]].delta_bytes
        fast = memory[harness.FAST[d]].delta_bytes
        assert std and fast is not None
        benchmark.extra_info[f"{d}: fast / standard peak step memory"] = fast / std
        if fast / std > MEMORY_FAST_MAX:
            failures.append(f"{d}: fast/standard peak step memory {fast / std:.3f}")
    assert not failures, "; ".join(failures) + f" > {MEMORY_FAST_MAX}"


def test_continuous_velocity_evaluations(benchmark: Any, cnf_bench: harness.Bench) -> None:
    stages = 4 * int(cnf_bench.sizes["steps"])

    def run() -> dict[str, dict[str, Any]]:
        return {e: cf.count_evaluations(cnf_bench, e) for e in EXPECTED_CALLS}

    benchmark.group = "gates"
    counts = benchmark.pedantic(run, rounds=1, iterations=1)
    for e, per_stage in EXPECTED_CALLS.items():
        expected = {k: n * stages for k, n in per_stage.items()}
        assert counts[e]["by_context"] == expected, (e, counts[e]["by_context"], expected)
