"""Shared machinery of the runtime benchmarks (``docs/theory.md`` §9): setups, one training
step, interleaved timing, peak step memory and the provenance of every number.

Everything that times or measures lives here, next to the benchmarks, and not in the package:
the library has no timing code. ``table2.py``, ``scaling.py`` and the pytest benchmarks import
this module by name (pytest puts ``benchmarks/`` on ``sys.path`` because it has no
``__init__.py``; a script run as ``python benchmarks/x.py`` has its own folder there).

The unit of measurement is one *training step*: ``zero_grad``, the estimator, ``backward`` and
an Adam step, on a batch drawn once (the draw is the same for every estimator of a direction,
so it would only dilute the ratios). Runtime factors are ratios of step times measured in the
same run with the estimators interleaved round-robin, never absolute times.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import pathgrad_ref
from pathgrad_ref.estimators import compile_estimator, get_estimator, per_call_finite_check
from pathgrad_ref.flows import Flow, real_nvp, u1_flow, z2_nice
from pathgrad_ref.targets import GaussianMixture, Phi4, Target, U1Gauge

SETUPS = ("gmm", "phi4", "u1")
SCALES = ("small", "paper-arch", "paper")
ESTIMATORS = (
    "reverse-standard",
    "reverse-path-dropin",
    "reverse-path-fast",
    "forward-standard",
    "forward-path-gdreg",
    "forward-path-fast",
)
STANDARD = {"reverse": "reverse-standard", "forward": "forward-standard"}
DROPIN = {"reverse": "reverse-path-dropin", "forward": "forward-path-gdreg"}
FAST = {"reverse": "reverse-path-fast", "forward": "forward-path-fast"}

# (numerator, denominator) of the runtime factors of Table 2: every path estimator against the
# standard estimator of its direction, and the drop-in algorithm (2 or 3) against Algorithm 1.
FACTORS: tuple[tuple[str, str], ...] = (
    ("reverse-path-dropin", "reverse-standard"),
    ("reverse-path-fast", "reverse-standard"),
    ("forward-path-gdreg", "forward-standard"),
    ("forward-path-fast", "forward-standard"),
    ("reverse-path-dropin", "reverse-path-fast"),
    ("forward-path-gdreg", "forward-path-fast"),
)

# Sizes per setup and scale. ``paper`` is the paper's configuration (``docs/theory.md`` §7;
# the GMM flow's sizes are ours); ``paper-arch`` keeps the paper's architectures with batches
# cut down for one CPU core; ``small`` is for the CI gates (their step times on the CPU are in
# results/table2-cpu.json).
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "gmm": {
        "small": {"dim": 6, "n_couplings": 6, "hidden": [64, 64], "batch": 512},
        "paper-arch": {"dim": 6, "n_couplings": 6, "hidden": [64, 64], "batch": 4000},
        "paper": {"dim": 6, "n_couplings": 6, "hidden": [64, 64], "batch": 4000},
    },
    "phi4": {
        "small": {"shape": [16, 8], "n_couplings": 8, "hidden": [128] * 4, "batch": 512},
        "paper-arch": {"shape": [16, 8], "n_couplings": 8, "hidden": [1000] * 4, "batch": 500},
        "paper": {"shape": [16, 8], "n_couplings": 8, "hidden": [1000] * 4, "batch": 8000},
    },
    "u1": {
        "small": {"L": 8, "n_layers": 24, "n_mixture": 6, "hidden": [8, 8], "batch": 16},
        "paper-arch": {"L": 16, "n_layers": 24, "n_mixture": 6, "hidden": [8, 8], "batch": 64},
        "paper": {"L": 16, "n_layers": 24, "n_mixture": 6, "hidden": [8, 8], "batch": 1000},
    },
}

# The learning rate does not change the cost of a step; it is small so that parameters shared by
# all estimators of a run stay where they started.
LEARNING_RATE = 1e-5


def sizes_for(setup: str, scale: str, batch: int | None = None) -> dict[str, Any]:
    """A copy of ``SIZES[setup][scale]``, with the batch replaced when ``batch`` is given."""
    if setup not in SIZES:
        raise ValueError(f"unknown setup {setup!r}; expected one of {SETUPS}")
    if scale not in SIZES[setup]:
        raise ValueError(f"unknown scale {scale!r}; expected one of {SCALES}")
    out = json.loads(json.dumps(SIZES[setup][scale]))
    if batch is not None:
        out["batch"] = int(batch)
    return dict(out)


@dataclass
class Bench:
    """One benchmark setup: a flow, its target, one batch per direction, and an optimiser.

    All estimators of a run share the flow and the optimiser: the parameters' values do not
    change the cost of a step (bisection runs a number of iterations fixed by its tolerance),
    and one copy keeps paper-size runs within memory.
    """

    name: str
    flow: Flow
    target: Target
    batches: dict[str, Tensor]
    optimizer: torch.optim.Optimizer
    sizes: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    notes: list[str] = field(default_factory=list)

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.flow.parameters())


def build(
    setup: str,
    scale: str = "small",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    batch: int | None = None,
    seed: int = 0,
    sizes: Mapping[str, Any] | None = None,
) -> Bench:
    """The benchmark ``setup`` at ``scale`` (or at explicit ``sizes``), with randomly
    initialised conditioners (no zero initialisation: no layer is the identity).

    Forward-KL batches stand in for target samples: exact samples for the GMM, flow samples for
    φ⁴ (a coupling step costs the same at any input) and uniform links (the β = 0 target) for
    U(1), whose bisection runs as many iterations at any input.
    """
    dev = torch.device(device)
    sz = dict(sizes) if sizes is not None else sizes_for(setup, scale, batch)
    if sizes is not None and batch is not None:
        sz["batch"] = int(batch)
    torch.manual_seed(seed)
    flow: Flow
    target: Target
    notes: list[str] = []
    if setup == "gmm":
        flow = real_nvp(sz["dim"], sz["n_couplings"], tuple(sz["hidden"]), zero_init=False)
        target = GaussianMixture(sz["dim"])
    elif setup == "phi4":
        flow = z2_nice(sz["shape"], sz["n_couplings"], tuple(sz["hidden"]), zero_init=False)
        target = Phi4(sz["shape"])
        notes.append("forward-KL batch: flow samples standing in for HMC samples")
    elif setup == "u1":
        flow = u1_flow(
            sz["L"], sz["n_layers"], sz["n_mixture"], tuple(sz["hidden"]), zero_init=False
        )
        target = U1Gauge(sz["L"], beta=sz.get("beta", 3.0))
        notes.append("forward-KL batch: uniform links (the beta = 0 target)")
    else:
        raise ValueError(f"unknown setup {setup!r}; expected one of {SETUPS}")
    flow = flow.to(device=dev, dtype=dtype)
    n = int(sz["batch"])
    z = flow.base.sample(n)
    if setup == "gmm":
        assert isinstance(target, GaussianMixture)
        x = target.sample(n).to(device=dev, dtype=dtype)
    elif setup == "phi4":
        with torch.no_grad():
            x, _ = flow(flow.base.sample(n))
    else:
        x = flow.base.sample(n)
    optimizer = torch.optim.Adam(flow.parameters(), lr=LEARNING_RATE)
    return Bench(
        name=setup,
        flow=flow,
        target=target,
        batches={"reverse": z, "forward": x.detach()},
        optimizer=optimizer,
        sizes=sz,
        device=dev,
        dtype=dtype,
        notes=notes,
    )


def direction_of(name: str) -> str:
    return "reverse" if name.startswith("reverse") else "forward"


Step = Callable[[], Tensor]


def make_step(
    bench: Bench, estimator: str, compiled: bool = False, mode: str | None = None
) -> Step:
    """One training step of ``estimator`` on ``bench``: zero_grad, estimator, backward, Adam.

    ``compiled``: the estimator is ``pathgrad_ref.estimators.compile_estimator(estimator,
    mode=mode)`` (forward and AOT backward compiled by inductor), as a training loop would use
    it; zero_grad, ``backward`` and Adam stay eager. Compilation happens on the first call.

    Returns the loss tensor without reading it: reading it (``.item()``) would add a host sync
    that no training loop needs inside a step.
    """
    est = compile_estimator(estimator, mode=mode) if compiled else get_estimator(estimator)
    batch = bench.batches[direction_of(estimator)]
    flow, target, opt = bench.flow, bench.target, bench.optimizer

    def step() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss, _ = est(flow, target, batch)
        torch.autograd.backward(loss)
        opt.step()
        return loss.detach()

    return step


def input_checks_disabled() -> contextlib.AbstractContextManager[None]:
    """The estimators' per-call finiteness test (a flag read back to the host: a device sync on
    a GPU, a graph break under torch.compile) switched off, as a training loop that checks each
    batch where it is made runs; shape, dtype and device are still checked."""
    return per_call_finite_check(False)


def without_input_checks(step: Step) -> Step:
    """``step`` with :func:`input_checks_disabled` around each call."""

    def wrapped() -> Tensor:
        with input_checks_disabled():
            return step()

    return wrapped


def with_input_checks(step: Step) -> Step:
    """``step`` with the per-call finiteness test switched on around each call (the default of
    the library), to measure its cost inside a run that has it off."""

    def wrapped() -> Tensor:
        with per_call_finite_check(True):
            return step()

    return wrapped


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that host clocks measure it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(
    steps: Mapping[str, Step],
    device: torch.device,
    rounds: int,
    steps_per_round: int = 1,
    warmup: int = 2,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per step of every entry of ``steps``, one value per round.

    Each round runs ``steps_per_round`` steps of every entry back to back, in an order rotated
    by one each round: a slow spell of a shared machine then hits all entries of the round
    alike, and no entry always follows the same other one. Ratios of entries are to be taken
    round by round (:func:`round_ratios`). ``warmup`` steps of every entry run first
    (allocator caches, lazy initialisation, oneDNN primitive caches).
    """
    names = list(steps)
    for name in names:
        for _ in range(warmup):
            steps[name]()
    synchronize(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            step = steps[name]
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                step()
            synchronize(device)
            times[name].append((time.perf_counter() - t0) / steps_per_round)
        if progress is not None:
            progress(f"round {r + 1}/{rounds}")
    return times


def round_ratios(times: Mapping[str, Sequence[float]], num: str, den: str) -> list[float]:
    """``times[num][r] / times[den][r]`` for every round ``r``."""
    return [a / b for a, b in zip(times[num], times[den], strict=True)]


def summary(values: Sequence[float]) -> dict[str, float]:
    """Mean, standard deviation (n − 1), median, min and max of ``values``."""
    vals = [float(v) for v in values]
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": float(len(vals)),
    }


@dataclass
class Memory:
    """Peak memory of one training step.

    ``delta_bytes``: the peak of live tensor memory during the step above what was live when it
    started (parameters, optimiser state and batch are live before and after, so they are not
    in it). ``peak_bytes``: the absolute peak (GPU only). ``method`` says how it was measured.
    """

    delta_bytes: int | None
    peak_bytes: int | None
    method: str


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (the profiler's C++ start/stop banners and its warning about
    blocks allocated before profiling); Python exceptions still propagate."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_MEASURED = "pathgrad-bench: measured step"


def _cpu_step_memory(step: Step) -> Memory:
    """Peak live CPU tensor memory of one step from ``torch.profiler`` memory events.

    With ``profile_memory=True`` torch's CPU allocator reports every allocation and free it
    makes while profiling (signed sizes) to the profiler; the running sum of those sizes in time
    order is the live memory, and its maximum during the measured step, minus its level when
    the step starts, is the peak above that level. The allocator only knows the size of blocks
    it allocated while profiling, so two steps run in one profiling session and the second is
    measured: whatever the first leaves behind (gradients, optimiser temporaries) is then known
    when the second frees it. Blocks older than the session and freed during the measured step
    would go unreported and raise the figure (an upper bound); in a training step those are
    none (parameters, optimiser state and the batch stay). Memory outside torch's allocator
    (Python objects, oneDNN's own scratch buffers) is not seen.
    """
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
        with record_function(_MEASURED):
            step()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as fh:
            trace = json.load(fh)
    events = trace.get("traceEvents", [])
    (marker,) = [e for e in events if e.get("name") == _MEASURED and e.get("ph") == "X"]
    t0, t1 = float(marker["ts"]), float(marker["ts"]) + float(marker["dur"])
    memory = [
        e
        for e in events
        if e.get("name") == "[memory]" and int(e.get("args", {}).get("Device Type", -1)) == 0
    ]
    memory.sort(key=lambda e: (float(e["ts"]), int(e["args"].get("Ev Idx", 0))))
    live = 0
    start: int | None = None
    peak = 0
    for e in memory:
        ts = float(e["ts"])
        if ts >= t0 and start is None:
            start = peak = live
        if ts > t1:
            break
        live += int(e["args"]["Bytes"])
        if start is not None:
            peak = max(peak, live)
    base = live if start is None else start
    return Memory(
        delta_bytes=max(peak, base) - base,
        peak_bytes=None,
        method="torch.profiler CPU allocator events: peak of live tensor bytes during the "
        "second of two profiled steps, above its level at that step's start",
    )


def step_memory(step: Step, device: torch.device) -> Memory:
    """Peak memory of one call of ``step`` (see :class:`Memory`); run warm-up steps first."""
    if device.type == "cuda":
        synchronize(device)
        gc.collect()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return Memory(
            delta_bytes=peak - base,
            peak_bytes=peak,
            method="torch.cuda.max_memory_allocated (absolute) and minus memory_allocated "
            "before the step (delta)",
        )
    return _cpu_step_memory(step)


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def provenance(device: torch.device) -> dict[str, Any]:
    """What produced a measurement: device name, versions, threads, machine load."""
    info: dict[str, Any] = {
        "device": str(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with contextlib.suppress(OSError):
        info["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


# The code a benchmark runs: the library and the benchmark scripts. An untracked file there (a
# module not yet committed) is code the commit does not hold, as much as a modified tracked file.
BENCHMARK_CODE = ("pathgrad_ref", "benchmarks")


def code_commit(
    own_outputs: Sequence[str], script: str, root: Path | None = None
) -> dict[str, Any]:
    """The commit of the checkout whose ``pathgrad_ref`` is imported, with ``+dirty`` where the
    measured code differs from it: a tracked file other than the script's own outputs
    (``own_outputs``, globs relative to the checkout: the records it rewrites) is modified, or an
    untracked file that git does not ignore lies under :data:`BENCHMARK_CODE`. Also that
    checkout's path and whether ``script`` (the caller's ``__file__``) lies in it. Outside git:
    ``{"commit": "unknown"}``. ``root`` replaces the imported package's checkout (for tests)."""
    package_root = root or Path(pathgrad_ref.__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=package_root, capture_output=True, text=True, check=True
        ).stdout.strip()

    excluded = [f":(top,exclude,glob){p}" for p in own_outputs]
    try:
        head = git("rev-parse", "--short", "HEAD")
        tracked = git("status", "--porcelain", "--untracked-files=no", "--", ":/", *excluded)
        code = [f":(top){c}" for c in BENCHMARK_CODE]
        untracked = git("ls-files", "--others", "--exclude-standard", "--", *code, *excluded)
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "package_root": str(package_root)}
    dirty = bool(tracked) or bool(untracked)
    return {
        "commit": head + ("+dirty" if dirty else ""),
        "dirty": dirty,
        "dirty_ignores": list(own_outputs),
        "package_root": str(package_root),
        "script_in_package_checkout": Path(script).resolve().is_relative_to(package_root),
    }


def set_threads(threads: int) -> None:
    """``threads > 0``: use that many intra-op threads; ``0``: keep torch's default.

    One thread is the default of the benchmarks on the CPU: on a shared two-core machine the
    default two threads spin in OpenMP barriers whenever another process holds a core, and we
    measured steps of the same matrix products many times slower that way (one measurement,
    not recorded); a single thread keeps the ratios meaningful.
    """
    if threads > 0:
        torch.set_num_threads(threads)


def replace_block(path: Path, name: str, text: str) -> bool:
    """Replace what lies between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in the file
    ``path`` by ``text``; returns False (and changes nothing) where the markers are missing.
    The scripts render their results into ``RESULTS.md`` this way, so that no figure there is
    typed by hand."""
    if not path.exists():
        return False
    doc = path.read_text()
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    i, j = doc.find(begin), doc.find(end)
    if i < 0 or j < i:
        return False
    path.write_text(doc[: i + len(begin)] + "\n" + text.rstrip("\n") + "\n" + doc[j:])
    return True


def mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f}"


def fmt_factor(s: Mapping[str, float]) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f}"


def geometric_mean(values: Sequence[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))
