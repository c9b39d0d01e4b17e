"""Device placement and host synchronisations, tested without a GPU.

On the ``meta`` device (see ``meta_support``) a tensor created on the CPU inside a computation,
or a host read of a value, raises; so every estimator, forward and backward, on every flow,
the U(1) bisection and HMC trajectories run here on ``meta`` as a CUDA run would, and fail on
the CPU in CI where a CUDA run would fail or synchronise. The code paths that replaced host
synchronisations (the bisection's fixed step count with one status read, HMC's accept/reject
by ``torch.where`` with on-device counts and adaptation) are checked on the CPU against
independent step-by-step references that read the host at every step, as the old code did.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from meta_support import META, StatusCounter, meta_mode
from support import SETUPS, make_setup
from torch import Tensor

from pathgrad_ref.estimators import ESTIMATORS
from pathgrad_ref.flows import Flow
from pathgrad_ref.flows.implicit import (
    BisectionError,
    bisection_iterations,
    implicit_inverse,
    status_check,
)
from pathgrad_ref.flows.u1 import TanMixture
from pathgrad_ref.samplers.hmc import hmc_sample, hmc_trajectory, run_chains
from pathgrad_ref.targets import Phi4, Target, U1Gauge

ROOT = Path(__file__).resolve().parent.parent
K = 3


pytestmark = pytest.mark.usefixtures("one_thread")


def _n_layers(flow: Flow) -> int:
    return len(flow.layers)


def _n_inverse_solves(setup: str, name: str, flow: Flow) -> int:
    """Bisections per call: one per U(1) layer wherever the estimator runs the inverse flow."""
    runs_inverse = name.startswith("forward") or name == "reverse-path-dropin"
    return _n_layers(flow) if setup == "u1-gauge" and runs_inverse else 0


# --- every estimator on every flow, on meta --------------------------------------------------


@pytest.mark.parametrize("name", list(ESTIMATORS))
@pytest.mark.parametrize("setup", SETUPS)
def test_estimator_forward_and_backward_on_meta(setup: str, name: str) -> None:
    flow, target = make_setup(setup, torch.device("cpu"), torch.float64)
    flow = flow.to(META)
    batch = torch.empty(5, *flow.event_shape, dtype=torch.float64, device=META)
    with meta_mode() as reads:
        loss, log_w = ESTIMATORS[name](flow, target, batch)
        loss.backward()
    assert loss.device == META and loss.shape == ()
    assert log_w.device == META and log_w.shape == (5,)
    for pname, p in flow.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert p.grad.device == META and p.grad.shape == p.shape, pname
    # The stand-ins were used exactly where expected: no other host read exists (it would
    # have raised on meta).
    assert reads.bisection == _n_inverse_solves(setup, name, flow)


def test_flow_sampling_and_inverse_on_meta() -> None:
    flow, _ = make_setup("u1-gauge", torch.device("cpu"), torch.float64)
    flow = flow.to(META)
    with meta_mode() as reads:
        x, log_q = flow.sample(3)
        z, log_q_inv = flow.inverse(x)
    assert x.device == z.device == log_q.device == log_q_inv.device == META
    assert reads.bisection == _n_layers(flow)


# --- a planted wrong-device tensor is caught ---------------------------------------------------


class _PlantedPhi4(Phi4):
    """φ⁴ whose force adds a tensor created on the CPU: the kind of bug the meta tests catch."""

    def force(self, phi: Tensor) -> Tensor:
        return super().force(phi) + torch.zeros(phi.shape[1:], dtype=phi.dtype)


def test_planted_cpu_tensor_fails_on_meta() -> None:
    flow, _ = make_setup("z2nice-phi4", torch.device("cpu"), torch.float64)
    flow, target = flow.to(META), _PlantedPhi4((4, 6))
    batch = torch.empty(5, 4, 6, dtype=torch.float64, device=META)
    with meta_mode(), pytest.raises(RuntimeError, match="device"):
        ESTIMATORS["reverse-path-fast"](flow, target, batch)
    x = torch.empty(4, 4, 6, dtype=torch.float64, device=META)
    with meta_mode(), pytest.raises(RuntimeError, match="device"):
        run_chains(target, x, n_therm=1, n_kept=1, thin=1, step_size=0.1, n_leapfrog=2)
    # The same code on the CPU runs: only a device mismatch makes it fail.
    cpu_flow, _ = make_setup("z2nice-phi4", torch.device("cpu"), torch.float64)
    ESTIMATORS["reverse-path-fast"](cpu_flow, target, torch.randn(5, 4, 6, dtype=torch.float64))


def test_host_read_fails_on_meta() -> None:
    """A host read (the old bisection's per-step convergence check) raises on meta."""

    class Reading(TanMixture):
        def prepare(self, p: Tensor) -> Callable[[Tensor], Tensor]:
            h = super().prepare(p)

            def h_reading(x: Tensor) -> Tensor:
                if bool((x > 100).any()):  # a host read per bisection step
                    raise AssertionError("unreachable")
                return h(x)

            return h_reading

    y = torch.empty(3, 4, dtype=torch.float64, device=META)
    q = torch.empty(3 * K, 3, 4, dtype=torch.float64, device=META)
    with meta_mode(), pytest.raises(RuntimeError, match="meta"):
        implicit_inverse(Reading(K), y, q)
    with meta_mode() as reads:
        implicit_inverse(TanMixture(K), y, q)
    assert reads.bisection == 1


# --- the bisection: one host read, same answer -------------------------------------------------


def _mixture_params(shape: tuple[int, ...], seed: int, scale: float = 1.5) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(3 * K, *shape, generator=g, dtype=torch.float64)


def _reference_bisection(m: TanMixture, y: Tensor, q: Tensor, tol: float) -> Tensor:
    """Plain bisection reading the host every step until every bracket is below ``tol`` or
    holds no float inside: the solver as it was before the fixed step count."""
    lo, hi = y - math.pi, y + math.pi
    while True:
        mid = 0.5 * (lo + hi)
        if bool(((hi - lo <= tol) | (mid <= lo) | (mid >= hi)).all()):
            return mid
        above = m.h(mid, q) >= y
        hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_bisection_one_status_read_matches_reference(
    dtype: torch.dtype, device: torch.device
) -> None:
    m = TanMixture(K)
    q = _mixture_params((40, 9), seed=3).to(device, dtype)
    x_true = 10.0 * torch.randn(40, 9, generator=torch.Generator().manual_seed(4))
    x_true = x_true.to(device, dtype)
    y = m.h(x_true, q)
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    count = StatusCounter()
    with status_check(count):
        x = implicit_inverse(m, y, q)
    assert count.calls == 1
    ref = _reference_bisection(m, y, q, tol)
    assert float((x - ref).abs().max()) <= tol
    if dtype == torch.float64:
        assert float((x - x_true).abs().max()) <= 1e-13


def test_prepared_mixture_equals_h_bit_for_bit() -> None:
    m = TanMixture(K)
    q = _mixture_params((7, 5), seed=8)
    x = 5.0 * torch.randn(7, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    assert torch.equal(m.prepare(q)(x), m.h(x, q))


def test_bisection_iterations_reach_tolerance() -> None:
    # Exact in binary: width 2^3, tol 2^-40 needs 43 halvings; one more for rounding.
    assert bisection_iterations(8.0, 2.0**-40) == 44
    assert bisection_iterations(1e-9, 1e-5) == 1
    for width, tol in ((2 * math.pi, 1e-13), (2 * math.pi, 1e-5), (3.0, 0.1)):
        n = bisection_iterations(width, tol)
        assert width / 2 ** (n - 1) <= tol < width / 2 ** (n - 2)
    with pytest.raises(ValueError, match="finite and positive"):
        bisection_iterations(math.inf, 1e-5)


def test_bisection_errors_with_one_read() -> None:
    m = TanMixture(K)
    q = _mixture_params((6,), seed=1)
    y = torch.linspace(-3.0, 9.0, 6, dtype=torch.float64)
    for bad_y, bad_q, match in (
        (y.clone().index_fill_(0, torch.tensor([2]), math.nan), q, "finite"),
        (y, q.clone().index_fill_(1, torch.tensor([4]), math.inf), "finite"),
    ):
        count = StatusCounter()
        with status_check(count), pytest.raises(BisectionError, match=match):
            implicit_inverse(m, bad_y, bad_q)
        assert count.calls == 1

    class BadBracket(TanMixture):
        def bracket(self, y: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
            return y + 4.0, y + 5.0

    count = StatusCounter()
    with status_check(count), pytest.raises(BisectionError, match="bracket"):
        implicit_inverse(BadBracket(K), y, q)
    assert count.calls == 1
    with pytest.raises(BisectionError, match="did not converge in max_iter=5"):
        implicit_inverse(m, y, q, max_iter=5)


def test_bisection_continues_when_the_stated_width_is_too_small() -> None:
    """A family that understates its bracket width: the fixed steps fall short, the status
    read says so, and more steps follow (more reads) until converged; never a wrong answer."""

    class Understated(TanMixture):
        max_bracket_width = 1e-3

    m, q = Understated(K), _mixture_params((30,), seed=2)
    x_true = torch.linspace(-5.0, 5.0, 30, dtype=torch.float64)
    count = StatusCounter()
    with status_check(count):
        x = implicit_inverse(m, m.h(x_true, q), q)
    assert count.calls > 1
    assert float((x - x_true).abs().max()) <= 1e-13

    class NoWidth(TanMixture):
        max_bracket_width = None  # type: ignore[assignment]  # the solver then reads the width

    x2 = implicit_inverse(NoWidth(K), m.h(x_true, q), q)
    assert float((x2 - x_true).abs().max()) <= 1e-13


def test_bisection_gradients_on_meta() -> None:
    y = torch.empty(4, 5, dtype=torch.float64, device=META, requires_grad=True)
    q = torch.empty(3 * K, 4, 5, dtype=torch.float64, device=META, requires_grad=True)
    with meta_mode() as reads:
        x = implicit_inverse(TanMixture(K), y, q)
        x.sum().backward()
    assert reads.bisection == 1
    assert y.grad is not None and y.grad.device == META
    assert q.grad is not None and q.grad.shape == q.shape and q.grad.device == META


# --- HMC: no host read per trajectory ----------------------------------------------------------


def _targets() -> list[tuple[Target, float | None]]:
    return [(Phi4((4, 4), kappa=0.3, lam=0.022), None), (U1Gauge(4, beta=1.0), 2 * math.pi)]


@pytest.mark.parametrize("jitter", [0.0, 0.2])
@pytest.mark.parametrize("which", [0, 1])
def test_hmc_chains_on_meta(which: int, jitter: float) -> None:
    target, period = _targets()[which]
    x = torch.empty(6, *target.event_shape, dtype=torch.float32, device=META)
    with meta_mode(), torch.no_grad():
        state = run_chains(
            target,
            x,
            n_therm=3,
            n_kept=2,
            thin=2,
            step_size=0.1,
            n_leapfrog=3,
            periodic=period,
            step_jitter=jitter,
            adapt_step_size=True,
        )
    assert state.samples.shape == (2, 6, *target.event_shape)
    assert state.observable.shape == (2, 6)
    for t in (state.samples, state.observable, state.final_state, state.n_accepted):
        assert t.device == META
    assert state.log_step_size.device == META and state.log_step_size.dtype == torch.float64
    step = torch.full((), 0.1, device=META)
    a, f = target.action(x), target.force(x)
    out = hmc_trajectory(target, x, a, f, step, 2, periodic=period)
    assert all(t.device == META for t in out) and out[3].dtype == torch.bool


def _reference_hmc(
    target: Target,
    x: Tensor,
    gen: torch.Generator,
    *,
    n_therm: int,
    n_kept: int,
    eps0: float,
    n_leapfrog: int,
    jitter: float,
    period: float | None,
    obs_fn: Callable[[Tensor], Tensor],
) -> tuple[Tensor, float, int]:
    """HMC as written before, with host reads every trajectory: the step size adapted in a
    Python float, and accept/reject chain by chain with a host read per chain."""
    log_eps = math.log(eps0)
    n_acc = 0
    obs = []
    n = x.shape[0]
    for t in range(n_therm + n_kept):
        eps: float | Tensor = math.exp(log_eps)
        if jitter > 0:
            u = torch.rand(n, generator=gen, dtype=x.dtype, device=x.device)
            eps = (eps * (1.0 + jitter * (2.0 * u - 1.0))).view(-1, *([1] * (x.dim() - 1)))
        p = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
        xn, pn = x, p - 0.5 * eps * target.force(x)
        for i in range(n_leapfrog):
            xn = xn + eps * pn
            pn = pn - (eps if i < n_leapfrog - 1 else 0.5 * eps) * target.force(xn)
        dh = target.action(xn) - target.action(x) + 0.5 * (pn * pn - p * p).flatten(1).sum(1)
        log_u = torch.log(torch.rand(n, generator=gen, dtype=x.dtype, device=x.device))
        x = x.clone()
        for c in range(n):
            if float(log_u[c]) < -float(dh[c]):
                x[c] = xn[c]
                n_acc += int(t >= n_therm)
        if period is not None:
            x = torch.remainder(x, period)
        if t >= n_therm:
            obs.append(obs_fn(x))
        else:
            prob = torch.exp(torch.clamp(-dh, max=0.0)).nan_to_num(0.0)
            log_eps += (float(prob.mean()) - 0.8) / (t + 1) ** 0.6
    return torch.stack(obs), math.exp(log_eps), n_acc


@pytest.mark.parametrize("jitter", [0.0, 0.3])
@pytest.mark.parametrize("which", [0, 1])
def test_hmc_on_device_bookkeeping_matches_host_reference(
    which: int, jitter: float, device: torch.device
) -> None:
    target, period = _targets()[which]
    x0 = torch.rand(8, *target.event_shape, generator=torch.Generator().manual_seed(0))
    x0 = ((x0.to(torch.float64) - 0.5) * (2 * math.pi if period else 2.0)).to(device)
    if period:
        x0 = torch.remainder(x0, period)
    kw: dict[str, Any] = {"n_therm": 6, "n_kept": 5, "eps0": 0.3, "n_leapfrog": 4, "jitter": jitter}
    obs_ref, eps_ref, acc_ref = _reference_hmc(
        target,
        x0,
        torch.Generator(device).manual_seed(11),
        period=period,
        obs_fn=target.action,
        **kw,
    )
    res = hmc_sample(
        target,
        8 * 5,
        n_chains=8,
        step_size=0.3,
        n_leapfrog=4,
        n_therm=6,
        init=x0,
        periodic=period,
        step_jitter=jitter,
        adapt_step_size=True,
        device=device,
        generator=torch.Generator(device).manual_seed(11),
    )
    assert res.acceptance_rate == acc_ref / 40
    assert 0 < acc_ref < 40, "both branches of accept/reject must be exercised"
    assert math.isclose(res.step_size, eps_ref, rel_tol=1e-14)
    torch.testing.assert_close(res.observable, obs_ref, rtol=1e-12, atol=1e-12)


# --- the --device option -----------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only machine")
def test_device_cuda_without_cuda_fails_loudly() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--device", "cuda"]
    cmd.append(
        str(ROOT / "tests" / "test_meta_device.py::test_prepared_mixture_equals_h_bit_for_bit")
    )
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "CUDA is not available" in proc.stdout + proc.stderr
    assert "passed" not in proc.stdout and "skipped" not in proc.stdout


# --- trainer steps on meta --------------------------------------------------------------------


def _meta_trainer(setup: str, estimator: str) -> Any:
    """A trainer on ``meta`` (float64, clipping on so that its path runs too); forward
    estimators draw minibatch indices from a CPU stream and move them to ``meta``."""
    from pathgrad_ref.training import TargetSamples, TrainConfig, Trainer

    flow, target = make_setup(setup, torch.device("cpu"), torch.float64)
    train = torch.randn(40, *flow.event_shape, dtype=torch.float64, generator=_gen(0))
    data = TargetSamples(train=train, test=None, metadata={})
    cfg = TrainConfig(
        estimator=estimator, steps=3, batch_size=8, clip_norm=0.5, lr_schedule="plateau",
        lr_patience=0, dtype="float64", progress=False,
    )  # fmt: skip
    return Trainer(flow, target, cfg, device=META, data=data, log=lambda _m: None)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("estimator", ["reverse-path-fast", "forward-path-fast"])
@pytest.mark.parametrize("setup", SETUPS)
def test_trainer_steps_on_meta(monkeypatch: pytest.MonkeyPatch, setup: str, estimator: str) -> None:
    """Three steady-state trainer steps (batch, estimator, backward, clipping, fused Adam with
    the skip of non-finite steps, the on-device counters and interval sums) on ``meta``: a
    tensor made on the wrong device, or a host read, raises. (torch's fused-kernel device
    check, which does not list meta, is bypassed here; the kernel itself has a meta
    implementation.)"""
    # torch.optim re-exports the adam function under the module's name: reach the module.
    adam_module = sys.modules[torch.optim.Adam.__module__]
    monkeypatch.setattr(adam_module, "_device_dtype_check_for_fused", lambda *a: None)
    with meta_mode() as reads:
        trainer = _meta_trainer(setup, estimator)
        for _ in range(3):
            loss, norm, finite = trainer._train_step()
            trainer.counters.update(loss, norm, finite)
    runs_inverse = setup == "u1-gauge" and estimator.startswith("forward")
    assert reads.bisection == (3 * _n_layers(trainer.flow) if runs_inverse else 0)
    for t in (loss, norm, finite):
        assert t.device == META and t.shape == ()
    assert all(getattr(trainer.counters, k).device == META for k in trainer.counters.KEYS)
    for p in trainer.params:
        assert p.device == META and p.grad is None
        state = trainer.optimizer.state[p]
        assert state, "Adam took its steps"
        assert all(v.device == META for v in state.values()), state.keys()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only machine")
def test_benchmarks_device_cuda_without_cuda_fails_loudly() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--device", "cuda"]
    cmd += [str(ROOT / "benchmarks" / "test_bench_step.py"), "--benchmark-only"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stdout + proc.stderr  # pytest's usage-error status
    assert "CUDA is not available" in proc.stdout + proc.stderr
    assert "passed" not in proc.stdout and "skipped" not in proc.stdout


# --- the GPU smoke script, as far as it runs without a GPU ---------------------------------------


def test_gpu_smoke_dry_run_lists_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    import gpu_smoke

    assert gpu_smoke.main(["--dry-run"]) == 0
    names = {line.split()[0] for line in capsys.readouterr().out.splitlines()[:-1]}
    expected = {f"estimator/{s}/{n}" for s in SETUPS for n in ESTIMATORS}
    expected |= {f"estimator-f32/{s}" for s in SETUPS}
    expected |= {f"paper_runs/{s}" for s in ("gmm", "phi4", "u1")}
    expected |= {"cuda", "precision", "resume", "table2", "torchrun-nccl"}
    expected |= {"syncs/u1-inverse", "syncs/hmc"}
    assert expected <= names
    assert {n for n in names if n.startswith("syncs/step/")}, "a training-step sync count"
    assert gpu_smoke.main(["--dry-run", "--only", "syncs,table2"]) == 0
    listed = capsys.readouterr().out.splitlines()[:-1]
    assert listed and all(line.startswith(("syncs/", "table2")) for line in listed)


def test_gpu_smoke_arguments_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    import gpu_smoke

    assert gpu_smoke.main(["--dry-run", "--only", "nonesuch"]) == 1
    assert "matches no check" in capsys.readouterr().err
    for bad in (["--device", "cpu"], ["--timeout", "0"], ["--table2-rounds", "0"]):
        with pytest.raises(SystemExit) as exc:
            gpu_smoke.parse_args(bad)
        assert exc.value.code == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only machine")
def test_gpu_smoke_fails_without_cuda() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "gpu_smoke.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stdout.startswith("FAIL  cuda  CUDA not available")
    assert "PASS" not in proc.stdout


def test_gpu_smoke_sync_expectation() -> None:
    import gpu_smoke

    assert "0 host syncs" in gpu_smoke._expect_syncs("step", 0.0, 0, [])
    with pytest.raises(RuntimeError, match=r"1 host syncs per call, expected 0 \(a.py:3\)"):
        gpu_smoke._expect_syncs("step", 1.0, 0, ["a.py:3"])


def test_gpu_smoke_training_command_runs_on_the_cpu(tmp_path: Path) -> None:
    """The smoke script's training command is accepted by the current command line and
    produces a run summary (here on the CPU; the script itself insists on CUDA)."""
    import argparse

    import gpu_smoke

    args = argparse.Namespace(device="cpu", work=str(tmp_path), timeout=600.0)
    figure = gpu_smoke._script_check("gmm")(args)
    assert "5 steps forward-path-fast" in figure
    assert gpu_smoke._summary(tmp_path / "runs" / "gmm", args)["steps_done"] == 5
    with pytest.raises(RuntimeError, match="expected cuda"):
        gpu_smoke._summary(tmp_path / "runs" / "gmm", argparse.Namespace(device="cuda"))


@pytest.mark.parametrize("name", ["reverse-path-fast", "forward-path-fast"])
def test_gpu_smoke_trainer_step_runs_on_the_cpu(name: str) -> None:
    """The step whose syncs the smoke script counts is the trainer's (here on the CPU, where
    only whether it runs and learns can be seen)."""
    import gpu_smoke

    step = gpu_smoke._trainer_step("z2nice-phi4", name, torch.device("cpu"))
    losses = [float(step()) for _ in range(3)]  # type: ignore[arg-type]
    assert all(math.isfinite(v) for v in losses) and len(set(losses)) == 3


def test_count_host_syncs(device: torch.device) -> None:
    """On CUDA (``--device cuda``): a host read counts one sync, device work none, a bisection
    one and HMC trajectories none. On the CPU the counter refuses to run (it would see
    nothing)."""
    from syncs import count_host_syncs

    if device.type != "cuda":
        with pytest.raises(RuntimeError, match="needs CUDA"), count_host_syncs():
            pass
        return
    x = torch.randn(100, device=device, dtype=torch.float64)
    torch.cuda.synchronize()
    with count_host_syncs() as device_only:
        y = (x * 2).exp().sum()
    with count_host_syncs() as one_read:
        float(y)
    assert (device_only.count, one_read.count) == (0, 1)
    m = TanMixture(K)
    q = _mixture_params((40, 9), seed=3).to(device)
    y_target = m.h(torch.zeros(40, 9, dtype=torch.float64, device=device), q)
    implicit_inverse(m, y_target, q)  # warm-up
    torch.cuda.synchronize()
    with count_host_syncs() as bisection:
        implicit_inverse(m, y_target, q)
    assert bisection.count == 1, bisection.sites
    target = Phi4((4, 4))
    x0 = torch.randn(16, 4, 4, dtype=torch.float64, device=device)
    torch.cuda.synchronize()
    with count_host_syncs() as hmc, torch.no_grad():
        run_chains(
            target,
            x0,
            n_therm=3,
            n_kept=2,
            thin=1,
            step_size=0.1,
            n_leapfrog=2,
            adapt_step_size=True,
        )
    assert hmc.count == 0, hmc.sites
