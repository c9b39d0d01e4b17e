"""Continuous-flow rows of the runtime benchmarks: one ``ContinuousLayer`` (fixed-step RK4,
exact divergence) on the Gaussian mixture, every estimator's training step, its velocity
evaluations and its peak memory.

    python benchmarks/continuous_flows.py --device cpu                  # every row, writes results/
    python benchmarks/continuous_flows.py --rows d8 --rounds 5 --out /tmp/cnf --no-rss
    python benchmarks/continuous_flows.py --device cuda                 # the GPU rows
    python benchmarks/continuous_flows.py --render-only                 # RESULTS.md from the JSON

The flow is ``continuous_flow(d, hidden, steps, zero_init=False)``: ``dx/dt = v_θ(x, t)`` from
``t = 0`` to ``1`` in ``steps`` RK4 steps (``4·steps`` stages), ``v_θ`` a tanh MLP of widths
``hidden`` on ``[x, t]``. Per RK4 stage (``pathgrad_ref/flows/continuous.py``):

- ``reverse-standard`` / ``forward-standard`` evaluate ``(v, div v)`` with the graph
  (``velocity_and_divergence``: ``v`` and ``d`` forward-mode products of the whole batch, one
  ``jvp`` per basis direction under one ``vmap`` over the directions) and backpropagate through
  all of it, parameters *and* state, i.e. through the divergence graph;
- ``reverse-path-fast`` / ``forward-path-fast`` take one input-only VJP of ``u ↦ (v, div v)``
  (``score_rate``: the same ``d`` forward-mode products, then a reverse pass for ``∇div v`` and
  ``Jᵀs``; in eager mode ``autograd.grad`` into a detached leaf ``u``, whose forward records a
  graph in θ too, but no parameter gradient is computed from it) and one more velocity
  evaluation with the graph; their backward runs through the state trajectory alone;
- ``reverse-path-dropin`` (Algorithm 2) and ``forward-path-gdreg`` (Algorithm 3) solve the
  augmented system three and two times (``Flow.transform`` and ``Flow.inverse`` always carry
  ``ℓ = ∫ div v``).

Rows (``ROWS``): ``d2``, ``d8``, ``d32``, ``d64`` (the scaling in ``d`` at fixed width, 8 RK4
steps), ``d8-steps32`` (the default step count of ``continuous_flow``, to show that the ratios
do not depend on it). ``d8`` is the default size, the one the target and the gates are set at.

Per row, the six estimators run interleaved training steps (``harness.interleaved_times``:
round-robin blocks of at least ``--min-block`` seconds, the order rotated every round; a ratio
is taken round by round). Then, outside the timed rounds:

- velocity evaluations of one step per estimator (:func:`count_evaluations`): calls of the
  velocity module's ``forward``, by call site (inside ``score_rate`` or not), the ``torch.func``
  transforms active at the call and whether autograd records;
- peak step memory of every estimator (``harness.step_memory``: the profiler's CPU allocator
  events, or ``torch.cuda.max_memory_allocated``), and on Linux CPUs a cross-check of the
  fast and standard steps by resident memory, each in its own process (:func:`rss_step_delta`);
- the pieces of one RK4 stage timed alone, interleaved (:func:`stage_pieces`): where the cost
  of the forward-mode products goes.

``--gate-repeats`` repeats the gate's own measurement (``test_bench_continuous.py``) on the
gate's row, the measured basis of its limits. Everything goes into
``benchmarks/results/continuous-<device type>.json`` with the commit of the code measured (and
whether its tree was dirty), versions, hardware and load averages; it is rendered into
``benchmarks/RESULTS.md`` between the ``continuous-<device type>`` markers.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import subprocess
import sys
import time
import types
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import harness
import torch

from pathgrad_ref.flows import ContinuousLayer, continuous_flow
from pathgrad_ref.flows.continuous import score_rate, velocity_and_divergence
from pathgrad_ref.targets import GaussianMixture

RESULTS = Path(__file__).resolve().parent / "results"
RESULTS_MD = RESULTS.parent / "RESULTS.md"

HIDDEN = (64, 64)
BATCH = 256
# name -> sizes; every row has the same velocity width, batch and seed.
ROWS: dict[str, dict[str, Any]] = {
    "d2": {"dim": 2, "steps": 8},
    "d8": {"dim": 8, "steps": 8},
    "d32": {"dim": 32, "steps": 8},
    "d64": {"dim": 64, "steps": 8},
    "d8-steps32": {"dim": 8, "steps": 32},
}
DEFAULT_ROW = "d8"
SCALING_ROWS = ("d2", "d8", "d32", "d64")

# (numerator, denominator): the fast path against the standard estimator and the drop-in
# algorithm of its direction.
RATIOS: tuple[tuple[str, str], ...] = (
    ("reverse-path-fast", "reverse-standard"),
    ("reverse-path-fast", "reverse-path-dropin"),
    ("forward-path-fast", "forward-standard"),
    ("forward-path-fast", "forward-path-gdreg"),
)

# The target set in RESULTS.md ("Continuous flows"): at the default size the fast path costs at
# most the standard gradient, in both directions (median of the per-round ratios).
TARGET_ROW = DEFAULT_ROW
TARGET_MAX = 1.0
TARGET_RATIOS = (RATIOS[0], RATIOS[2])


def sizes_of(row: str) -> dict[str, Any]:
    """``{dim, steps, hidden, batch}`` of ``row``."""
    if row not in ROWS:
        raise ValueError(f"unknown row {row!r}; expected one of {list(ROWS)}")
    return {**ROWS[row], "hidden": list(HIDDEN), "batch": BATCH}


def build(
    row: str, device: torch.device, dtype: torch.dtype = torch.float32, seed: int = 0
) -> harness.Bench:
    """The continuous flow of ``row`` (random initialisation: ``zero_init=False``, so the
    velocity is not zero), the GMM target of its dimension, base draws ``(batch, d)`` for the
    reverse KL and exact target samples ``(batch, d)`` for the forward KL."""
    sz = sizes_of(row)
    torch.manual_seed(seed)
    flow = continuous_flow(sz["dim"], tuple(sz["hidden"]), sz["steps"], zero_init=False)
    flow = flow.to(device=device, dtype=dtype)
    target = GaussianMixture(sz["dim"])
    n = int(sz["batch"])
    z = flow.base.sample(n)
    x = target.sample(n).to(device=device, dtype=dtype)
    return harness.Bench(
        name=row,
        flow=flow,
        target=target,
        batches={"reverse": z, "forward": x},
        optimizer=torch.optim.Adam(flow.parameters(), lr=harness.LEARNING_RATE),
        sizes=sz,
        device=device,
        dtype=dtype,
    )


def layer_of(bench: harness.Bench) -> ContinuousLayer:
    (layer,) = bench.flow._layers()
    assert isinstance(layer, ContinuousLayer)
    return layer


# ---- velocity evaluations --------------------------------------------------------------------

SCORE_RATE_JACOBIAN = "jacobian in score_rate (input-only VJP)"
CONTEXTS = (
    "jacobian, graph in θ",
    "jacobian, no graph",
    SCORE_RATE_JACOBIAN,
    "plain, graph in θ",
    "plain, no graph",
)
"""The labels of :func:`count_evaluations` (plus ``SCORE_RATE_JACOBIAN + ", torch.func.vjp"``
for the compiled form of ``score_rate`` and ``"other: ..."`` for a transform stack not listed)."""


def _transform_stack() -> tuple[str, ...]:
    """The ``torch.func`` transforms active at the call, outermost first: ``Vmap`` and ``Jvp``
    in ``velocity_and_divergence`` (a ``vmap`` over basis directions of a whole-batch ``jvp``),
    ``Grad`` outside them when ``torch.func.vjp`` (``score_rate``'s compiled form) wraps it."""
    get = getattr(torch._C._functorch, "get_interpreter_stack", None)
    stack = get() if get is not None else None
    return tuple(str(level.key()).rsplit(".", 1)[-1] for level in stack or ())


def _called_from(code: types.CodeType) -> bool:
    """Whether a frame running ``code`` is on the Python call stack of the caller."""
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


def _context(stack: Sequence[str], grad_enabled: bool, in_score_rate: bool) -> str:
    """The label of one velocity call. A *jacobian* call runs under ``velocity_and_divergence``'s
    ``jvp`` (a ``Jvp`` level). One made inside ``score_rate`` is the forward of the fast path's
    input-only VJP, told apart by its call site, not by transform levels: in eager mode that VJP
    is ``autograd.grad`` with autograd recording (the parameters require grad, so the forward
    records a graph in θ too, but only the input's gradient is taken), the same transforms and
    grad mode as the standard gradient's call."""
    if "Jvp" in stack:
        if in_score_rate:
            return SCORE_RATE_JACOBIAN + (", torch.func.vjp" if "Grad" in stack else "")
        if tuple(stack) == ("Vmap", "Jvp"):
            return "jacobian, graph in θ" if grad_enabled else "jacobian, no graph"
    if stack:
        return "other: " + ">".join(stack)
    return "plain, graph in θ" if grad_enabled else "plain, no graph"


def count_evaluations(bench: harness.Bench, estimator: str) -> dict[str, Any]:
    """Calls of the velocity module's ``forward`` during one training step of ``estimator``.

    One call is one evaluation on the whole batch ``(N, d)``, whatever transforms wrap it. A
    *jacobian* call runs in ``velocity_and_divergence`` (one ``vmap`` over the ``d`` basis
    directions of a whole-batch ``torch.func.jvp``): it evaluates ``v`` and its ``d``
    forward-mode products (Jacobian columns) for all ``N`` samples. One whose call stack holds
    ``score_rate`` is labelled ``SCORE_RATE_JACOBIAN``: an input-only reverse pass follows it in
    the forward solve (:func:`_context`). A *plain* call evaluates ``v`` alone; *graph in θ* /
    *no graph*: whether autograd records. Backward passes through recorded graphs are no calls
    and are not counted. ``directional_evaluations = plain + (1 + d) · jacobian``:
    velocity-sized forward products, the unit of work the d-scaling is about."""
    velocity = layer_of(bench).velocity
    counts: Counter[str] = Counter()
    score_rate_code = score_rate.__code__

    def hook(module: torch.nn.Module, args: Any) -> None:
        label = _context(_transform_stack(), torch.is_grad_enabled(), _called_from(score_rate_code))
        counts[label] += 1

    step = harness.make_step(bench, estimator)
    handle = velocity.register_forward_pre_hook(hook)
    try:
        step()
        harness.synchronize(bench.device)
    finally:
        handle.remove()
    d = int(bench.sizes["dim"])
    jac = sum(n for k, n in counts.items() if k.startswith("jacobian"))
    plain = sum(n for k, n in counts.items() if k.startswith("plain"))
    return {
        "calls": sum(counts.values()),
        "by_context": dict(sorted(counts.items())),
        "jacobian_calls": jac,
        "plain_calls": plain,
        "directional_evaluations": plain + (1 + d) * jac,
        "rk4_stages_per_solve": 4 * int(bench.sizes["steps"]),
    }


# ---- resident memory, one process per variant ------------------------------------------------

# Allocations of at least this size go to mmap and back to the OS when freed (glibc), so that
# resident memory follows live memory instead of what the heap keeps cached.
RSS_MMAP_THRESHOLD = 32768


def _proc_status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1))


def rss_supported(device: torch.device) -> bool:
    return device.type == "cpu" and Path("/proc/self/clear_refs").exists()


def rss_step_delta(row: str, estimator: str, device: torch.device) -> dict[str, int]:
    """``VmHWM − VmRSS``: peak resident memory during one training step above the resident
    memory at its start (bytes), after two warm-up steps, the high-water mark reset by writing
    ``5`` to ``/proc/self/clear_refs``. Run in a fresh process per variant
    (:func:`rss_in_subprocess`); it counts every byte the process touches (tensors, Python
    objects, allocator overhead), not only tensors."""
    bench = build(row, device)
    step = harness.make_step(bench, estimator)
    step()
    step()
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    base = _proc_status_kib("VmRSS")
    step()
    peak = _proc_status_kib("VmHWM")
    return {"delta_bytes": (peak - base) * 1024, "rss_at_start_bytes": base * 1024}


def rss_in_subprocess(row: str, estimator: str, threads: int) -> dict[str, int]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(RSS_MMAP_THRESHOLD)}
    cmd = [sys.executable, __file__, "--rss-child", row, estimator, "--threads", str(threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    result: dict[str, int] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ---- one RK4 stage ---------------------------------------------------------------------------

STAGE_PIECES = (
    "v",
    "v fwd+bwd",
    "v, (1+d)N rows",
    "(v, div v) fwd",
    "standard stage",
    "fast stage",
)


def stage_pieces(bench: harness.Bench) -> dict[str, harness.Step]:
    """The work of one RK4 stage, piece by piece, on the row's batch ``x`` ``(N, d)`` and
    velocity at ``t = 0.5``, each a callable for :func:`harness.interleaved_times`:

    - ``v``: ``v(x, t)`` without a graph;
    - ``v fwd+bwd``: ``v(x, t)`` with the graph, then its backward with a cotangent ``a``
      ``(N, d)`` into ``x`` and θ (the fast path's velocity evaluation with its share of the
      backward pass);
    - ``v, (1+d)N rows``: ``v`` without a graph on ``x`` repeated ``1 + d`` times, i.e. the
      arithmetic of ``v`` and ``d`` forward-mode products done as one plain evaluation;
    - ``(v, div v) fwd``: ``velocity_and_divergence`` without a graph (``v`` and the ``d``
      forward-mode products: one ``vmap`` over basis directions of a whole-batch ``jvp``);
    - ``standard stage``: ``velocity_and_divergence`` with the graph, then the backward with
      cotangents ``(a, 1)`` into ``x`` and θ (what the standard gradient does per stage);
    - ``fast stage``: ``score_rate`` (the input-only VJP of ``u ↦ (v, div v)`` with cotangent
      ``(s, 1)``, in eager mode by ``autograd.grad``) plus ``v fwd+bwd`` (what the fast path
      does per stage).

    The divergence pieces call the library's own ``velocity_and_divergence`` and ``score_rate``,
    so they time whatever form ``continuous.py`` has. The RK4 combinations and the target's
    terms are left out: they are the same for both."""
    layer = layer_of(bench)
    velocity = layer.velocity
    x0 = bench.batches["reverse"]
    t = torch.tensor(0.5, dtype=x0.dtype, device=x0.device)
    gen = torch.Generator(device=x0.device).manual_seed(1)
    a = torch.randn(x0.shape, generator=gen, dtype=x0.dtype, device=x0.device)
    s = torch.randn(x0.shape, generator=gen, dtype=x0.dtype, device=x0.device)
    ones = torch.ones(x0.shape[0], dtype=x0.dtype, device=x0.device)
    stacked = x0.repeat(1 + int(bench.sizes["dim"]), 1)

    def plain() -> torch.Tensor:
        with torch.no_grad():
            out: torch.Tensor = velocity(x0, t)
        return out

    def plain_fwd_bwd() -> torch.Tensor:
        velocity.zero_grad(set_to_none=True)
        x = x0.detach().requires_grad_(True)
        v = velocity(x, t)
        torch.autograd.backward(v, a)
        return v.detach()

    def plain_stacked() -> torch.Tensor:
        with torch.no_grad():
            out: torch.Tensor = velocity(stacked, t)
        return out

    def divergence_fwd() -> torch.Tensor:
        with torch.no_grad():
            _, div = velocity_and_divergence(velocity, x0, t)
        return div

    def standard() -> torch.Tensor:
        velocity.zero_grad(set_to_none=True)
        x = x0.detach().requires_grad_(True)
        v, div = velocity_and_divergence(velocity, x, t)
        torch.autograd.backward((v, div), (a, ones))
        return div.detach()

    def fast() -> torch.Tensor:
        ds = score_rate(velocity, x0, s, t)[2]
        plain_fwd_bwd()
        return ds

    pieces = (plain, plain_fwd_bwd, plain_stacked, divergence_fwd, standard, fast)
    return dict(zip(STAGE_PIECES, pieces, strict=True))


def measure_stages(bench: harness.Bench, rounds: int, min_block: float) -> dict[str, Any]:
    """Seconds per call of every :func:`stage_pieces` entry (interleaved rounds, as the steps),
    and ``fast stage / standard stage`` round by round."""
    pieces = stage_pieces(bench)
    probe = harness.interleaved_times(pieces, bench.device, rounds=1, warmup=2)
    k = max(1, math.ceil(min_block / max(max(v[0] for v in probe.values()), 1e-9)))
    times = harness.interleaved_times(
        pieces, bench.device, rounds=rounds, steps_per_round=k, warmup=0
    )
    ratio = harness.round_ratios(times, "fast stage", "standard stage")
    return {
        "calls_per_round": k,
        "time_s": {n: {**harness.summary(v), "values": v} for n, v in times.items()},
        "fast stage / standard stage": {**harness.summary(ratio), "values": ratio},
    }


# ---- one row ---------------------------------------------------------------------------------


def measure_row(
    row: str,
    device: torch.device,
    rounds: int,
    min_block: float,
    warmup: int,
    rss: bool,
    threads: int,
) -> dict[str, Any]:
    """Step times (interleaved), ratios, velocity evaluations and memory of ``row``."""
    bench = build(row, device)
    steps = {e: harness.make_step(bench, e) for e in harness.ESTIMATORS}
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
    k = max(1, math.ceil(min_block / max(slowest, 1e-9)))
    load_before = harness.provenance(device).get("load_average_1_5_15")

    def progress(msg: str) -> None:
        print(f"  [{row}] {msg} (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)

    times = harness.interleaved_times(
        steps, device, rounds=rounds, steps_per_round=k, warmup=0, progress=progress
    )
    load_after_timing = harness.provenance(device).get("load_average_1_5_15")
    ratios = {}
    for num, den in RATIOS:
        vals = harness.round_ratios(times, num, den)
        ratios[f"{num} / {den}"] = {**harness.summary(vals), "values": vals}
    nfe = {e: count_evaluations(bench, e) for e in harness.ESTIMATORS}
    stages = measure_stages(bench, rounds, min_block / 2)
    memory: dict[str, Any] = {}
    for e in harness.ESTIMATORS:
        m = harness.step_memory(steps[e], device)
        memory[e] = {"delta_bytes": m.delta_bytes, "peak_bytes": m.peak_bytes}
        memory["method"] = m.method
    rss_record: dict[str, Any] | None = None
    if rss and rss_supported(device):
        rss_record = {
            "method": "VmHWM - VmRSS of one step after two warm-up steps, high-water mark reset "
            "through /proc/self/clear_refs, one process per variant, "
            f"MALLOC_MMAP_THRESHOLD_={RSS_MMAP_THRESHOLD}",
        }
        for e in (*harness.STANDARD.values(), *harness.FAST.values()):
            rss_record[e] = rss_in_subprocess(row, e, threads)
    print(f"  [{row}] done ({k} steps per block)", file=sys.stderr, flush=True)
    return {
        "row": row,
        "sizes": bench.sizes,
        "dtype": str(bench.dtype),
        "n_parameters": bench.n_parameters,
        "protocol": {
            "rounds": rounds,
            "steps_per_round": k,
            "warmup_steps": warmup,
            "min_block_s": min_block,
            "order": "round-robin over the estimators, rotated by one every round",
            "step": "zero_grad, estimator, backward, Adam step (batch drawn once)",
            "ratio": "per round, then summarised over the rounds",
        },
        "load_average_before": load_before,
        "load_average_after_timing": load_after_timing,
        "step_time_s": {n: {**harness.summary(v), "values": v} for n, v in times.items()},
        "ratios": ratios,
        "velocity_evaluations": nfe,
        "stage": stages,
        "memory": memory,
        "rss": rss_record,
        "provenance": harness.provenance(device),
    }


# ---- gate calibration ------------------------------------------------------------------------


def calibrate_gates(device: torch.device, repeats: int) -> dict[str, Any]:
    """The gate's own measurement (``test_bench_continuous.measure``) repeated ``repeats``
    times: every median, the limits in force, and the load before each repeat."""
    import test_bench_continuous as gates_mod
    import test_bench_gates

    bench = build(gates_mod.GATE_ROW, device)
    medians: dict[str, list[float]] = {}
    loads = []
    for r in range(repeats):
        loads.append(round(os.getloadavg()[0], 2))
        got = gates_mod.measure(bench)
        for key, s in got.items():
            medians.setdefault(key, []).append(s["median"])
        print(
            f"  [gate {r + 1}/{repeats}] "
            + ", ".join(f"{key} {s['median']:.3f}" for key, s in got.items()),
            file=sys.stderr,
            flush=True,
        )
    return {
        "row": gates_mod.GATE_ROW,
        "rounds": test_bench_gates.ROUNDS,
        "min_block_s": test_bench_gates.MIN_BLOCK_S,
        "load_average_1min_before_each": loads,
        "runtime": {
            f"{g.numerator} / {g.denominator}": {
                "medians": medians[f"{g.numerator} / {g.denominator}"],
                "upper": g.upper,
                "lower": g.lower,
            }
            for g in gates_mod.cpu_gates()
        },
        "limits_apply_to": "cpu",
        "memory_upper": gates_mod.MEMORY_FAST_MAX,
    }


# ---- provenance ------------------------------------------------------------------------------


# What this script writes into a checkout (the record, rewritten after every row, and the
# rendered block): a change there is no change of the code measured.
OWN_OUTPUTS = ("benchmarks/results/continuous-*.json", "benchmarks/RESULTS.md")


def code_commit() -> dict[str, Any]:
    """The commit of the code measured (:func:`harness.code_commit`)."""
    return harness.code_commit(OWN_OUTPUTS, __file__)


# ---- rendering -------------------------------------------------------------------------------


def _f(s: Mapping[str, float]) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f} ({s['median']:.2f})"


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    num = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True))
    return num / sum((a - mx) ** 2 for a in lx)


def work_model_ratio(d: int) -> float:
    """``(2(1 + d) + 3) / (3(1 + d))``: fast / standard cost of an RK4 stage in matrix-product
    work, in units of one velocity evaluation ``F`` on the batch. Standard: the forward of
    ``(v, div v)`` is ``(1 + d) F`` (``v`` and ``d`` forward-mode products), its backward
    ``2 (1 + d) F`` (input and parameter gradients of each product). Fast: the same forward,
    an input-only reverse ``(1 + d) F`` (``autograd.grad`` into the input skips the parameter
    gradients' products), one more evaluation of ``v`` with its backward ``3 F``.
    Per-operation overhead is not in it."""
    return (2 * (1 + d) + 3) / (3 * (1 + d))


def target_verdicts(doc: Mapping[str, Any]) -> list[tuple[str, float, bool]]:
    """``(ratio, median, met)`` for each ratio of the target, at the target's row."""
    row = doc["rows"].get(TARGET_ROW)
    if row is None:
        return []
    out = []
    for num, den in TARGET_RATIOS:
        med = row["ratios"][f"{num} / {den}"]["median"]
        out.append((f"{num} / {den}", med, med <= doc["target"]["max"]))
    return out


def _memory_ratio(memory: Mapping[str, Any], direction: str) -> str:
    """Peak step memory of the fast path over the standard estimator of ``direction``."""
    fast = memory[harness.FAST[direction]]["delta_bytes"]
    std = memory[harness.STANDARD[direction]]["delta_bytes"]
    return "—" if not std or fast is None else f"{fast / std:.3f}"


def _rss_cell(rss: Mapping[str, Any] | None) -> str:
    """``fast / standard (fast / standard MiB)`` of the resident-memory cross-check, per
    direction."""
    if not rss:
        return "—"
    cells = []
    for d in ("reverse", "forward"):
        fast, std = rss[harness.FAST[d]]["delta_bytes"], rss[harness.STANDARD[d]]["delta_bytes"]
        cells.append(f"{fast / std:.3f} ({harness.mib(fast)} / {harness.mib(std)} MiB)")
    return ", ".join(cells)


def render(doc: Mapping[str, Any]) -> str:
    rows = doc["rows"]
    first = next(iter(rows.values()))["provenance"]
    hw = first.get("gpu", first["cpu"])
    loads = ", ".join(
        f"{name} {r['load_average_before'][0] if r['load_average_before'] else '?'}"
        for name, r in rows.items()
    )
    lines = [
        f"Rendered by `benchmarks/continuous_flows.py` from `results/{doc['file']}` (commit "
        f"`{doc['code']['commit']}`, torch {first['torch']}, {hw}, {first['torch_threads']} "
        f"thread(s), {first['time_utc'][:10]}; 1-min load average before each row: {loads}). "
        f"`continuous_flow(d, hidden {list(HIDDEN)}, steps)`, RK4, GMM target, batch {BATCH}, "
        "float32. Ratios: mean ± std over interleaved rounds, median in brackets.",
        "",
        "| row | d | RK4 steps | params | fast / standard (rev) | fast / Alg. 2 (rev) | "
        "fast / max. likelihood (fwd) | fast / Alg. 3 (fwd) | rounds × steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        f, sz, pr = r["ratios"], r["sizes"], r["protocol"]
        cells = [name, str(sz["dim"]), str(sz["steps"]), str(r["n_parameters"])]
        cells += [_f(f[f"{n} / {d}"]) for n, d in RATIOS]
        cells.append(f"{pr['rounds']} × {pr['steps_per_round']}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Step time (ms, median over the rounds):",
        "",
        "| row | " + " | ".join(harness.ESTIMATORS) + " |",
        "|---|" + "---|" * len(harness.ESTIMATORS),
    ]
    for name, r in rows.items():
        t = r["step_time_s"]
        lines.append(
            f"| {name} | "
            + " | ".join(f"{1e3 * t[e]['median']:.1f}" for e in harness.ESTIMATORS)
            + " |"
        )
    scaling = [n for n in SCALING_ROWS if n in rows]
    if scaling:
        lines += [
            "",
            "Scaling in d (medians; the work model is the formula of `work_model_ratio`, not a "
            "measurement):",
            "",
            "| d | fast / standard (rev, fwd) | work model | peak memory fast / standard "
            "(rev, fwd) |",
            "|---|---|---|---|",
        ]
        for n in scaling:
            r, d = rows[n], int(rows[n]["sizes"]["dim"])
            times = ", ".join(
                f"{r['ratios'][f'{harness.FAST[k]} / {harness.STANDARD[k]}']['median']:.2f}"
                for k in ("reverse", "forward")
            )
            mems = ", ".join(_memory_ratio(r["memory"], k) for k in ("reverse", "forward"))
            lines.append(f"| {d} | {times} | {work_model_ratio(d):.2f} | {mems} |")
    if len(scaling) >= 2:
        dims = [rows[n]["sizes"]["dim"] for n in scaling]
        slopes = ", ".join(
            f"{e} {loglog_slope(dims, [rows[n]['step_time_s'][e]['median'] for n in scaling]):.2f}"
            for e in harness.ESTIMATORS
        )
        lines += ["", f"Log-log slope of step time against d over {dims}: {slopes}."]
    staged = [n for n in rows if "stage" in rows[n]]
    if staged:
        lines += [
            "",
            "One RK4 stage, piece by piece (`stage_pieces`: ms per call, medians over "
            "interleaved rounds; *overhead* = `(v, div v) fwd` over `v, (1+d)N rows`: the "
            "forward-mode products against the same arithmetic as one plain evaluation):",
            "",
            "| row | v | v fwd+bwd | v, (1+d)N rows | (v, div v) fwd | overhead | standard stage "
            "| fast stage | fast / standard stage | work model |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for n in staged:
            st, d = rows[n]["stage"], int(rows[n]["sizes"]["dim"])
            ms = {k: 1e3 * v["median"] for k, v in st["time_s"].items()}
            over = ms["(v, div v) fwd"] / ms["v, (1+d)N rows"]
            cells = [n, *(f"{ms[k]:.3f}" for k in STAGE_PIECES), f"{over:.1f}"]
            cells.insert(5, cells.pop())  # overhead after the forward it describes
            cells += [
                f"{st['fast stage / standard stage']['median']:.2f}",
                f"{work_model_ratio(d):.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Velocity evaluations per training step: calls of the velocity module's `forward`, "
        "counted by a forward pre-hook, labelled by call site, the `torch.func` transforms "
        "around the call and whether autograd records (*graph in θ* / *no graph*). A "
        "*jacobian* call (in `velocity_and_divergence`: one `vmap` over basis directions of a "
        "whole-batch `jvp`) evaluates v and its d forward-mode products for the whole batch; "
        "*in score_rate* marks one whose call stack holds `score_rate`, the forward of the fast "
        "path's input-only VJP (in eager mode `autograd.grad` into the input: autograd records, "
        "only the input's gradient is taken); a *plain* call evaluates v alone. Backward passes "
        "run no `forward` and are not counted. Per RK4 stage of one solve (the counts of every "
        "row divided by its stages), then the directional evaluations of a whole step, plain + "
        "(1 + d) · jacobian, per row:",
        "",
        "| estimator | calls per RK4 stage | "
        + " | ".join(f"directional evaluations, {name}" for name in rows)
        + " |",
        "|---|---|" + "---|" * len(rows),
    ]
    for e in harness.ESTIMATORS:
        per_stage = {
            f"{n / r['velocity_evaluations'][e]['rk4_stages_per_solve']:g} {k}"
            for r in rows.values()
            for k, n in r["velocity_evaluations"][e]["by_context"].items()
        }
        cells = [e, " + ".join(sorted(per_stage))]
        cells += [
            str(r["velocity_evaluations"][e]["directional_evaluations"]) for r in rows.values()
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Peak step memory (MiB above the step's start; profiler CPU allocator events, or CUDA "
        "allocator statistics) and its cross-check by resident memory (one process per "
        "variant):",
        "",
        "| row | standard / Alg. 2 / fast (rev) | max. lik. / Alg. 3 / fast (fwd) | "
        "fast / standard (rev, fwd) | resident: fast / standard (rev, fwd) |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        m = r["memory"]

        def mem(es: Sequence[str], m: Mapping[str, Any] = m) -> str:
            return " / ".join(harness.mib(m[e]["delta_bytes"]) for e in es)

        rss_cell = _rss_cell(r.get("rss"))
        lines.append(
            f"| {name} | {mem(('reverse-standard', 'reverse-path-dropin', 'reverse-path-fast'))} "
            f"| {mem(('forward-standard', 'forward-path-gdreg', 'forward-path-fast'))} "
            f"| {_memory_ratio(m, 'reverse')}, {_memory_ratio(m, 'forward')} | {rss_cell} |"
        )
    verdicts = target_verdicts(doc)
    if verdicts:
        lines += ["", f"Target (row `{TARGET_ROW}`, median over rounds ≤ {doc['target']['max']}):"]
        bound = float(doc["target"]["max"])
        lines += [
            f"- `{key}` = {med:.2f}: " + ("met" if ok else f"missed by {med / bound:.2f}×")
            for key, med, ok in verdicts
        ]
    cal = doc.get("gate_calibration")
    if cal:
        lines += [
            "",
            f"Gate measurement (`test_bench_continuous.py`, row `{cal['row']}`, "
            f"{cal['rounds']} rounds, blocks ≥ {cal['min_block_s']} s) repeated; the median of "
            "each repeat (1-min load before each: "
            f"{', '.join(str(x) for x in cal['load_average_1min_before_each'])}):",
            "",
            "| ratio | limit | medians over repeats | min – max |",
            "|---|---|---|---|",
        ]
        for key, g in cal["runtime"].items():
            limit = f"≤ {g['upper']}" if g["upper"] is not None else f"≥ {g['lower']}"
            meds = g["medians"]
            lines.append(
                f"| `{key}` | {limit} | {', '.join(f'{v:.3f}' for v in meds)} | "
                f"{min(meds):.3f} – {max(meds):.3f} |"
            )
    return "\n".join(lines) + "\n"


# ---- command line ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {list(ROWS)}")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--min-block", type=float, default=0.3, help="seconds per timed block")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up steps per estimator")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    ap.add_argument("--gate-repeats", type=int, default=3, help="0: no gate calibration")
    ap.add_argument("--no-rss", action="store_true", help="skip the resident-memory cross-check")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--render-only", action="store_true", help="re-render RESULTS.md only")
    ap.add_argument("--rss-child", nargs=2, metavar=("ROW", "ESTIMATOR"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    if device.type == "cpu":
        harness.set_threads(args.threads)
    if args.rss_child:
        print(json.dumps(rss_step_delta(*args.rss_child, device)))
        return
    name = f"continuous-{device.type}"
    path = args.out / f"{name}.json"
    if args.render_only:
        doc = json.loads(path.read_text())
    else:
        rows = [r for r in args.rows.split(",") if r]
        unknown = [r for r in rows if r not in ROWS]
        if unknown:
            raise SystemExit(f"unknown rows {unknown}; expected some of {list(ROWS)}")
        doc = {
            "file": f"{name}.json",
            "code": code_commit(),
            "command": " ".join(
                ["python", "benchmarks/continuous_flows.py", *(argv or sys.argv[1:])]
            ),
            "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
            "target": {
                "row": TARGET_ROW,
                "max": TARGET_MAX,
                "ratios": [f"{n} / {d}" for n, d in TARGET_RATIOS],
            },
            "rows": {},
        }
        args.out.mkdir(parents=True, exist_ok=True)
        for row in rows:
            print(f"{row} on {device} ...", file=sys.stderr, flush=True)
            doc["rows"][row] = measure_row(
                row,
                device,
                args.rounds,
                args.min_block,
                args.warmup,
                not args.no_rss,
                args.threads,
            )
            # Written after every row, so that an interrupted run keeps what it measured.
            path.write_text(json.dumps(doc, indent=1) + "\n")
        if args.gate_repeats > 0:
            doc["gate_calibration"] = calibrate_gates(device, args.gate_repeats)
        doc["code_at_end"] = code_commit()
        path.write_text(json.dumps(doc, indent=1) + "\n")
    text = render(doc)
    print(text)
    if args.out.resolve() == RESULTS and not harness.replace_block(RESULTS_MD, name, text):
        print(f"no {name} markers in {RESULTS_MD}; not rendered there", file=sys.stderr)


if __name__ == "__main__":
    main()
