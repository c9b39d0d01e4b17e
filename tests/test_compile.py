"""Every estimator under ``torch.compile``: the gradient of a compiled training step equals the
eager gradient and the naive oracle's, in float64, to 1e-10.

A training step here is what the trainer runs: the estimator and ``backward`` of its loss, as one
compiled function (the ``backward`` call is a graph break; the forward region before it is one
compiled autograd node, which is where a fast path built on the eager graph structure went
wrong, see ``tests/test_compile_repro.py``). The flows are tiny, to keep compilation short;
compiling still takes minutes on a small CPU, so these tests carry the ``compile`` marker:
``pytest -m "not compile"`` skips them, explicitly. (The last test, of the per-call finiteness
switch, compiles nothing and is not marked.)

Backends. Every (flow, estimator) pair is compiled. The fast path (the estimators that rely on
the layers' structure, and the ones that were wrong) goes through inductor, the default backend
that ``--compile`` uses, on every flow; so does every estimator on the RealNVP flow. The other
pairs compile with ``aot_eager``: dynamo's capture and AOTAutograd's joint forward-backward graph,
where a broken graph or a lost gradient term shows, without inductor's C++ code generation, which
costs most of a cold compile on a small CPU.
``pytest tests/test_compile.py --compile-backend inductor`` runs the whole grid under inductor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
import torch._dynamo
from support import perturb, rel_err, target_batch
from torch import Tensor

from pathgrad_ref.estimators import (
    Estimator,
    check_finite,
    compile_estimator,
    direction,
    get_estimator,
    gradient,
    per_call_finite_check,
    per_call_finite_enabled,
    set_per_call_finite_check,
)
from pathgrad_ref.flows import (
    Flow,
    continuous_flow,
    neural_spline_flow,
    real_nvp,
    u1_flow,
    z2_nice,
)
from pathgrad_ref.flows.coupling import Coupling
from pathgrad_ref.targets import GaussianMixture, Phi4, Target, U1Gauge

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-10
ESTIMATORS = (
    "reverse-standard",
    "reverse-path-dropin",
    "reverse-path-fast",
    "forward-standard",
    "forward-path-gdreg",
    "forward-path-fast",
)
ORACLE = {
    "reverse-standard": "reverse-standard-naive",
    "reverse-path-dropin": "reverse-path-naive",
    "reverse-path-fast": "reverse-path-naive",
    "forward-standard": "forward-standard-naive",
    "forward-path-gdreg": "forward-path-naive",
    "forward-path-fast": "forward-path-naive",
}
SETUPS = ("realnvp-gmm", "z2nice-phi4", "u1-gauge")


def tiny_setup(name: str, device: torch.device) -> tuple[Flow, Target]:
    """The three flows of the paper and the spline flow at the smallest sizes that keep every
    code path: two couplings (both halves, and for U(1) both link directions), one hidden
    layer."""
    flow: Flow
    target: Target
    if name == "realnvp-gmm":
        flow, target = real_nvp(4, n_couplings=2, hidden=(8,)), GaussianMixture(4)
    elif name == "z2nice-phi4":
        flow, target = z2_nice((4, 4), n_couplings=2, hidden=(8,)), Phi4((4, 4))
    elif name == "u1-gauge":
        flow = u1_flow(4, n_layers=2, n_mixture=2, hidden=(2,), kernel_size=3)
        target = U1Gauge(4, beta=1.0)
    elif name == "nsf-gmm":
        flow = neural_spline_flow(4, n_couplings=2, bins=4, bound=2.5, hidden=(8,))
        target = GaussianMixture(4)
    else:
        raise ValueError(name)
    flow = flow.to(device=device, dtype=torch.float64)
    perturb(flow)
    return flow, target


def batch_for(name: str, flow: Flow, target: Target, n: int = 6) -> Tensor:
    if direction(name) == "reverse":
        torch.manual_seed(3)
        return flow.base.sample(n)
    return target_batch(flow, target, n)


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """Every test compiles from scratch: a shared cache could hit dynamo's recompile limit and
    fall back to eager, and the test would then compare eager with eager."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


def training_step(est: Estimator) -> Callable[[Flow, Target, Tensor], Tensor]:
    def step(flow: Flow, target: Target, batch: Tensor) -> Tensor:
        loss, _ = est(flow, target, batch)
        torch.autograd.backward(loss)
        return loss.detach()

    return step


def step_gradient(
    step: Callable[[Flow, Target, Tensor], Tensor], flow: Flow, target: Target, batch: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    for p in flow.parameters():
        p.grad = None
    loss = step(flow, target, batch)
    grads = {
        n: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
        for n, p in flow.named_parameters()
    }
    return loss, grads


def compiled_graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def check_compiled_step(
    setup: str, name: str, device: torch.device, mode: str | None, backend: str = "inductor"
) -> tuple[float, float]:
    flow, target = tiny_setup(setup, device)
    batch = batch_for(name, flow, target)
    est = get_estimator(name)
    eager_loss, eager = step_gradient(training_step(est), flow, target, batch)
    compiled = torch.compile(training_step(est), mode=mode, backend=backend)
    for _ in range(2):  # the second call runs the cached compiled code
        loss, grads = step_gradient(compiled, flow, target, batch)
        assert compiled_graphs() >= 1, "nothing was compiled: the test would compare eager code"
        assert torch.allclose(loss, eager_loss, rtol=TOL, atol=0.0)
        err_eager = rel_err(grads, eager)
        assert err_eager <= TOL, f"{setup} {name}: compiled vs eager {err_eager:.2e}"
    oracle = gradient(ORACLE[name], flow, target, batch)
    err_oracle = rel_err(grads, oracle)
    assert err_oracle <= TOL, f"{setup} {name}: compiled vs naive oracle {err_oracle:.2e}"
    return err_eager, err_oracle


def grid_backend(setup: str, name: str, request: pytest.FixtureRequest) -> str:
    """Inductor for the fast path on every flow and for every estimator on RealNVP,
    ``aot_eager`` for the rest (see the module docstring) unless ``--compile-backend`` says."""
    forced: str | None = request.config.getoption("--compile-backend")
    if forced is not None:
        return forced
    return "inductor" if name.endswith("-fast") or setup == "realnvp-gmm" else "aot_eager"


@pytest.mark.compile
@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("setup", SETUPS)
def test_compiled_step_is_exact(
    setup: str, name: str, device: torch.device, request: pytest.FixtureRequest
) -> None:
    backend = grid_backend(setup, name, request)
    check_compiled_step(setup, name, device, mode=None, backend=backend)


@pytest.mark.compile
@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("name", ["reverse-path-fast", "forward-path-fast"])
@pytest.mark.parametrize("setup", SETUPS)
def test_compiled_step_is_exact_reduce_overhead(
    setup: str, name: str, device: torch.device
) -> None:
    """reduce-overhead adds CUDA graphs to the default mode; on the CPU it would compile the
    default mode's graphs a second time and test nothing new."""
    if device.type != "cuda":
        pytest.skip("reduce-overhead differs from the default mode only on a CUDA device")
    check_compiled_step(setup, name, device, mode="reduce-overhead")


@pytest.mark.compile
@pytest.mark.usefixtures("fresh_dynamo")
def test_compiled_spline_flow_step_is_exact(device: torch.device) -> None:
    """The neural spline flow (rational-quadratic couplings: searchsorted, gather and
    ``torch.where`` over the identity tails) compiles, and its fast path stays exact; one
    representative, as compilation is slow on the CPU."""
    check_compiled_step("nsf-gmm", "reverse-path-fast", device, mode=None)


@pytest.mark.compile
@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("name", ["reverse-path-fast", "forward-path-fast"])
def test_compiled_continuous_flow_step_is_exact(name: str, device: torch.device) -> None:
    """A continuous flow's fast path (the score ODE inside the RK4 loop, ``torch.func.vjp`` of
    the exact divergence per stage) compiles and equals the eager step to rounding. Two RK4
    steps and ``aot_eager``: dynamo unrolls the solver loop, and every stage adds to the graph.
    (Against the oracle it agrees only to the solver's error: ``tests/test_continuous.py``.)"""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        flow = continuous_flow(3, hidden=(8,), steps=2).to(device=device, dtype=torch.float64)
    perturb(flow, 0.5)
    target = GaussianMixture(3)
    batch = batch_for(name, flow, target)
    est = get_estimator(name)
    eager_loss, eager = step_gradient(training_step(est), flow, target, batch)
    compiled = torch.compile(training_step(est), backend="aot_eager")
    loss, grads = step_gradient(compiled, flow, target, batch)
    assert compiled_graphs() >= 1, "nothing was compiled: the test would compare eager code"
    assert torch.allclose(loss, eager_loss, rtol=TOL, atol=0.0)
    assert rel_err(grads, eager) <= TOL


@pytest.mark.compile
@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("name", ["reverse-path-fast", "forward-path-fast"])
def test_compile_estimator(name: str, device: torch.device) -> None:
    """The library's compiled estimator, as the trainer uses it: per-call finiteness check off,
    the batch checked where it is made, ``backward`` outside the compiled function."""
    flow, target = tiny_setup("z2nice-phi4", device)
    batch = batch_for(name, flow, target)
    flow.check_input(batch)
    est = compile_estimator(name)
    _, eager = step_gradient(training_step(get_estimator(name)), flow, target, batch)
    with per_call_finite_check(False):
        _, grads = step_gradient(training_step(est), flow, target, batch)
    assert compiled_graphs() >= 1
    assert rel_err(grads, eager) <= TOL
    # Metadata checks still run on every call of the compiled estimator.
    with per_call_finite_check(False), pytest.raises(ValueError, match="expected shape"):
        est(flow, target, batch[:, :2])


@pytest.mark.parametrize("name", ["reverse-path-fast", "forward-path-fast", "forward-standard"])
def test_per_call_finite_switch(name: str, device: torch.device) -> None:
    """Off, the estimator does not read the values (no host sync) and NaN passes through to the
    loss; metadata is still checked; ``check_finite`` gives the clear error where batches are
    made; the context manager restores the default (on)."""
    flow, target = tiny_setup("realnvp-gmm", device)
    bad = batch_for(name, flow, target).clone()
    bad[1, 2] = float("nan")
    est = get_estimator(name)
    assert per_call_finite_enabled()
    with pytest.raises(ValueError, match="expected finite values"):
        est(flow, target, bad)
    with per_call_finite_check(False):
        assert not per_call_finite_enabled()
        loss, _ = est(flow, target, bad)
        assert torch.isnan(loss)
        with pytest.raises(ValueError, match=r"expected dtype torch\.float64"):
            est(flow, target, bad.float())
        with pytest.raises(ValueError, match="expected finite values, got NaN or inf in 1 sample"):
            check_finite(bad, "batch")
        with pytest.raises(ValueError, match="expected finite values"):
            flow.check_input(bad)
    assert per_call_finite_enabled()
    with pytest.raises(TypeError, match="expected a bool"):
        set_per_call_finite_check(0)  # type: ignore[arg-type]


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("setup", [*SETUPS, "nsf-gmm"])
def test_functional_score_step_equals_eager_step(
    setup: str, inverse: bool, device: torch.device
) -> None:
    """The compiled form of the coupling score step, run eagerly, against the eager form: the
    same ``(y, log_det, score)`` and, through ``y``, the same parameter gradient."""
    flow, _ = tiny_setup(setup, device)
    layer = flow.layers[1]
    assert isinstance(layer, Coupling)
    torch.manual_seed(5)
    x = flow.base.sample(5).requires_grad_(True)
    score = torch.randn_like(x)
    params = [p for p in layer.parameters() if p.requires_grad]
    results = []
    for step in (layer._score_step, layer._score_step_functional):
        y, log_det, s = step(x, score, inverse)
        cot = torch.randn_like(y, generator=torch.Generator().manual_seed(7))
        g = torch.autograd.grad((y * cot).sum() + log_det.sum(), params, allow_unused=True)
        results.append((y, log_det, s, g))
    (y0, ld0, s0, g0), (y1, ld1, s1, g1) = results
    assert not s1.requires_grad
    for u, v in [(y0, y1), (ld0, ld1), (s0, s1)]:
        assert torch.allclose(u, v, rtol=1e-12, atol=1e-13)
    for u, v in zip(g0, g1, strict=True):
        assert (u is None) == (v is None)
        if u is not None and v is not None:
            assert torch.allclose(u, v, rtol=1e-12, atol=1e-13)
