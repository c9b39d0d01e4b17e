"""Continuous flows (``pathgrad_ref.flows.continuous``): the solver, the exact divergence, every
estimator against its dense oracle at the solver's order, sticking the landing, finite
differences, the torchdiffeq solvers against the fixed-step one, flow matching.

The dense oracles differentiate the solver's map ``z ↦ x(1)`` (RK4 at ``steps`` steps) and take
``log|det ∂x/∂z|`` from ``slogdet``; the estimators integrate ``div v`` and the score ODE along
the same solve. The two agree only to the solver's error, ``O(h⁴)``, so agreement is tested at a
step count, and the difference is tested to fall by about ``2⁴`` when the steps double: a bug
gives a difference that does not converge.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import pytest
import torch
from support import assert_sticks_the_landing, perturb, rel_err, target_batch
from torch import Tensor, nn

from pathgrad_ref.estimators import ESTIMATORS, get_estimator, gradient
from pathgrad_ref.flows import ContinuousLayer, Flow, continuous_flow, flow_matching_loss
from pathgrad_ref.flows.continuous import rk4, velocity_and_divergence
from pathgrad_ref.targets import GaussianMixture

DIM = 3
PAIRS = {
    "reverse-path-fast": "reverse-path-naive",
    "reverse-path-dropin": "reverse-path-naive",
    "reverse-standard": "reverse-standard-naive",
    "forward-path-fast": "forward-path-naive",
    "forward-path-gdreg": "forward-path-naive",
    "forward-standard": "forward-standard-naive",
}


@pytest.fixture(autouse=True)
def _float64() -> Iterator[None]:
    """float64 within each test of this module, restored after it (a module-level default
    would leak into every test collected after this file)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def make_flow(steps: int, dim: int = DIM, **layer: object) -> Flow:
    """A continuous flow whose parameters depend on the seed alone (not on ``steps``), far
    from the identity (every weight perturbed by 0.5)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        flow = continuous_flow(dim, hidden=(16,), steps=steps)
    perturb(flow, 0.5)
    if layer:
        old = flow.layers[0]
        assert isinstance(old, ContinuousLayer)
        flow.layers[0] = ContinuousLayer(old.velocity, steps, **layer)  # type: ignore[arg-type]
    return flow


def batch_for(name: str, flow: Flow, target: GaussianMixture, n: int = 4) -> Tensor:
    if name.startswith("reverse"):
        return flow.base.sample(n, torch.Generator().manual_seed(3))
    return target_batch(flow, target, n)


def oracle_difference(name: str, steps: int) -> float:
    flow, target = make_flow(steps), GaussianMixture(DIM)
    batch = batch_for(name, flow, target)
    return rel_err(gradient(name, flow, target, batch), gradient(PAIRS[name], flow, target, batch))


# -- the pieces ------------------------------------------------------------------------------------


def test_rk4_is_fourth_order_on_a_linear_ode() -> None:
    """``dx/dt = A x`` has the exact flow ``exp(A t)``: the error falls by 2⁴ per halving."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 3, generator=g)
    x0 = torch.randn(5, 3, generator=g)
    exact = x0 @ torch.linalg.matrix_exp(A).T
    errors = []
    for steps in (8, 16, 32):
        (x1,) = rk4(lambda t, s: (s[0] @ A.T,), (x0,), 0.0, 1.0, steps)
        errors.append(float((x1 - exact).abs().max()))
    orders = [math.log2(a / b) for a, b in itertools.pairwise(errors)]
    assert all(3.8 < p < 4.2 for p in orders), (errors, orders)


def test_divergence_is_the_exact_trace() -> None:
    """``div v`` equals the trace of the Jacobian that autograd builds row by row."""
    flow = make_flow(4)
    layer = flow.layers[0]
    assert isinstance(layer, ContinuousLayer)
    x = torch.randn(6, DIM, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(0.3)
    v, div = velocity_and_divergence(layer.velocity, x, t)
    assert torch.equal(v, layer.velocity(x, t))
    for i in range(x.shape[0]):
        J = torch.autograd.functional.jacobian(lambda u: layer.velocity(u[None], t)[0], x[i])
        assert abs(float(torch.trace(J) - div[i].detach())) < 1e-13


def test_score_rate_functional_branch_equals_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """The VJP of ``(v, div v)`` taken by ``torch.func.vjp`` (the form used under
    ``torch.compile``) equals the eager ``autograd.grad`` form, forced here in eager mode; and
    both equal ``−Jᵀ s − ∇ div v`` from the dense per-sample Jacobian."""
    import pathgrad_ref.flows.continuous as continuous

    layer = make_flow(4).layers[0]
    assert isinstance(layer, ContinuousLayer)
    gen = torch.Generator().manual_seed(8)
    x, s = torch.randn(5, DIM, generator=gen), torch.randn(5, DIM, generator=gen)
    t = torch.tensor(0.7)
    eager = continuous.score_rate(layer.velocity, x, s, t)
    monkeypatch.setattr(continuous, "is_compiling", lambda: True)
    functional = continuous.score_rate(layer.velocity, x, s, t)
    for a, b in zip(eager, functional, strict=True):
        assert not a.requires_grad and not b.requires_grad
        assert torch.allclose(a, b, rtol=1e-13, atol=1e-13)

    def v_one(u: Tensor) -> Tensor:
        return layer.velocity(u[None], t)[0]

    for i in range(x.shape[0]):
        J = torch.autograd.functional.jacobian(v_one, x[i])
        grad_div = torch.autograd.functional.jacobian(
            lambda u: torch.trace(torch.autograd.functional.jacobian(v_one, u, create_graph=True)),
            x[i],
        )
        expected = -(J.T @ s[i]) - grad_div
        assert torch.allclose(eager[2][i], expected, rtol=1e-12, atol=1e-12)


def test_log_det_converges_to_slogdet_of_the_solver_map() -> None:
    """``∫ div v`` along the RK4 solve against ``log|det|`` of the RK4 map's dense Jacobian:
    both approximate the exact flow's log-det, so they differ by ``O(h⁴)``."""
    z = torch.randn(4, DIM, generator=torch.Generator().manual_seed(2))
    gaps = []
    for steps in (4, 8, 16):
        layer = make_flow(steps).layers[0]
        assert isinstance(layer, ContinuousLayer)
        _, log_det = layer(z)

        def push(u: Tensor, layer: ContinuousLayer = layer) -> Tensor:
            return layer(u[None])[0][0]

        jacobians = [torch.autograd.functional.jacobian(push, z[i]) for i in range(z.shape[0])]
        dense = torch.stack([torch.linalg.slogdet(J)[1] for J in jacobians])
        gaps.append(float((log_det.detach() - dense).abs().max()))
    orders = [math.log2(a / b) for a, b in itertools.pairwise(gaps)]
    assert gaps[-1] < 1e-5 and all(3.5 < p < 4.5 for p in orders), (gaps, orders)


def test_round_trip_converges_at_fourth_order() -> None:
    """The inverse is the solver run backwards: it inverts the forward map to at least ``O(h⁴)``,
    and the two log-dets cancel to the same order. (Observed: ``O(h⁵)``. The backward solve is
    RK4's adjoint method up to ``O(h⁵)`` per step, and for a method of even order the leading
    error terms of the two directions cancel.)"""
    z = torch.randn(8, DIM, generator=torch.Generator().manual_seed(4))
    errors = []
    for steps in (4, 8, 16):
        layer = make_flow(steps).layers[0]
        with torch.no_grad():
            x, ld = layer(z)
            back, ld_back = layer.inverse(x)
        errors.append(max(float((back - z).abs().max()), float((ld + ld_back).abs().max())))
    orders = [math.log2(a / b) for a, b in itertools.pairwise(errors)]
    assert all(3.5 < p < 5.5 for p in orders), (errors, orders)


# -- every estimator against the dense oracle ------------------------------------------------------


@pytest.mark.parametrize("name", list(PAIRS))
def test_estimator_matches_oracle_at_fourth_order(name: str) -> None:
    """At 16 steps the estimator and the oracle agree to ``1e-5`` (relative); doubling the steps
    shrinks the difference by ``2⁴`` (observed order within [3, 5]). A wrong sign or a missing
    term in the score ODE leaves an ``O(1)`` difference that does not shrink."""
    coarse, fine = oracle_difference(name, 8), oracle_difference(name, 16)
    order = math.log2(coarse / fine)
    assert fine < 1e-5, (coarse, fine)
    assert 3.0 < order < 5.0, (coarse, fine, order)


def test_every_estimator_is_covered() -> None:
    fast = {n for n in ESTIMATORS if not n.endswith("-naive")}
    assert fast == set(PAIRS)


def test_path_estimators_agree_with_each_other_to_solver_error() -> None:
    """Algorithm 1 (score ODE) and Algorithm 2 (autograd through the inverse solve) are two
    discretisations of the same gradient."""
    flow, target = make_flow(32), GaussianMixture(DIM)
    z = batch_for("reverse", flow, target)
    g_fast = gradient("reverse-path-fast", flow, target, z)
    g_dropin = gradient("reverse-path-dropin", flow, target, z)
    assert rel_err(g_fast, g_dropin) < 1e-6


def test_loss_values_are_the_kl_estimates() -> None:
    """Every estimator of one direction returns the same loss value (log q from ``∫ div v``),
    and it matches the oracle's (log q from ``slogdet``) to the solver's error."""
    flow, target = make_flow(16), GaussianMixture(DIM)
    for dirn, names in (
        ("reverse", ["reverse-standard", "reverse-path-fast", "reverse-path-naive"]),
        ("forward", ["forward-standard", "forward-path-fast", "forward-path-naive"]),
    ):
        batch = batch_for(dirn, flow, target)
        values = [float(get_estimator(n)(flow, target, batch)[0]) for n in names]
        assert abs(values[0] - values[1]) < 1e-12, (dirn, values)
        assert abs(values[0] - values[2]) < 1e-5, (dirn, values)


# -- independent checks ----------------------------------------------------------------------------


@pytest.mark.parametrize("dirn", ["reverse", "forward"])
def test_sticks_the_landing(dirn: str) -> None:
    """At ``p = q_θ`` the path gradient of each sample vanishes to the solver's error (the
    target's force comes through the inverse solve, the score through the score ODE)."""
    assert_sticks_the_landing(make_flow(32), dirn, n=2, tol=1e-5)


def test_sticks_the_landing_at_zero_velocity() -> None:
    """``v = 0`` and the target the base: every trajectory is constant, so the path gradient
    of each sample is exactly zero while the standard one is not."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        flow = continuous_flow(DIM, hidden=(8,), steps=4)  # zero-initialised last layer
    target = _BaseAsTarget(flow)
    z = flow.base.sample(3, torch.Generator().manual_seed(5))
    for dirn in ("reverse", "forward"):
        g_path = gradient(f"{dirn}-path-fast", flow, target, z)
        g_std = gradient(f"{dirn}-standard", flow, target, z)
        assert max(float(t.abs().max()) for t in g_path.values()) == 0.0
        assert max(float(t.abs().max()) for t in g_std.values()) > 1e-3


class _BaseAsTarget(GaussianMixture):
    """``p = q0 = N(0, I)``: the action ``S = ‖x‖²/2`` (up to a constant), ``force = ∇S = x``."""

    def __init__(self, flow: Flow) -> None:
        super().__init__(flow.event_shape[0])

    def action(self, x: Tensor) -> Tensor:
        return 0.5 * x.pow(2).flatten(1).sum(1)

    def force(self, x: Tensor) -> Tensor:
        return x


def test_standard_gradient_matches_central_differences() -> None:
    """``reverse-standard``'s gradient along a random direction of θ against the central
    difference of the computed loss (``ε = 1e-5``: truncation ``O(ε²)``, rounding ``1e-11``)."""
    flow, target = make_flow(8), GaussianMixture(DIM)
    z = batch_for("reverse", flow, target)
    g = gradient("reverse-standard", flow, target, z)
    params = dict(flow.named_parameters())
    gen = torch.Generator().manual_seed(9)
    direction = {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}
    analytic = sum(float((g[n] * direction[n]).sum()) for n in params)
    eps = 1e-5

    def loss_at(sign: float) -> float:
        with torch.no_grad():
            for n, p in params.items():
                p.add_(sign * eps * direction[n])
        value = float(get_estimator("reverse-standard")(flow, target, z)[0])
        with torch.no_grad():
            for n, p in params.items():
                p.sub_(sign * eps * direction[n])
        return value

    numeric = (loss_at(1.0) - loss_at(-1.0)) / (2 * eps)
    assert abs(analytic - numeric) < 1e-7 * max(1.0, abs(analytic)), (analytic, numeric)


def test_lattice_event_shape() -> None:
    """A flow over an ``L × L`` lattice (velocity on the flattened field): the fast path equals
    the oracle to the solver's error."""
    from pathgrad_ref.targets import Phi4

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        flow = continuous_flow((2, 2), hidden=(8,), steps=16)
    perturb(flow, 0.3)
    target = Phi4((2, 2))
    z = flow.base.sample(3, torch.Generator().manual_seed(6))
    fast = gradient("reverse-path-fast", flow, target, z)
    naive = gradient("reverse-path-naive", flow, target, z)
    assert rel_err(fast, naive) < 1e-5


# -- torchdiffeq -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer",
    [
        {"solver": "dopri5", "atol": 1e-11, "rtol": 1e-11},
        {"solver": "dopri5", "atol": 1e-11, "rtol": 1e-11, "adjoint": True},
        {"solver": "rk4", "adjoint": True},
    ],
    ids=["dopri5", "dopri5-adjoint", "rk4-adjoint"],
)
@pytest.mark.parametrize("name", ["reverse-path-fast", "forward-standard"])
def test_torchdiffeq_solvers_agree_with_fixed_step(name: str, layer: dict[str, object]) -> None:
    """An adaptive solve at tight tolerances, and the adjoint method, give the gradients of
    our RK4 at 128 steps (itself about ``1e-10`` from the exact flow here, by its fourth order
    from the 16-step differences above) to ``1e-8``."""
    pytest.importorskip("torchdiffeq")
    target = GaussianMixture(DIM)
    reference = make_flow(128)
    other = make_flow(128, **layer)
    batch = batch_for(name, reference, target, n=2)
    assert (
        rel_err(gradient(name, other, target, batch), gradient(name, reference, target, batch))
        < 1e-8
    )


# -- flow matching ---------------------------------------------------------------------------------


class _OptimalField(nn.Module):
    """The conditional-flow-matching optimum for a point-mass target ``x1 = c`` on the linear
    path: ``v(x, t) = (c − x)/(1 − t)`` for ``t: 0 → 1`` (``(x − c)/t`` for ``t: 1 → 0``)."""

    def __init__(self, c: Tensor, reversed_time: bool) -> None:
        super().__init__()
        self.c = c
        self.reversed_time = reversed_time
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if self.reversed_time:
            return (x - self.c) / t + self.dummy
        return (self.c - x) / (1 - t) + self.dummy


@pytest.mark.parametrize("reversed_time", [False, True])
def test_flow_matching_loss_vanishes_at_the_optimum(reversed_time: bool) -> None:
    """For a point-mass target every conditional path reaches ``c`` and its velocity is the
    field above: the loss is zero there (to rounding), and positive for any other field."""
    from pathgrad_ref.distributions import StandardNormal

    c = torch.tensor([1.0, -2.0, 0.5])
    t0, t1 = (1.0, 0.0) if reversed_time else (0.0, 1.0)
    field = _OptimalField(c, reversed_time)
    flow = Flow(StandardNormal((3,)), [ContinuousLayer(field, 4, t0=t0, t1=t1)])
    x1 = c.expand(64, 3).clone()
    gen = torch.Generator().manual_seed(0)
    assert float(flow_matching_loss(flow, x1, gen)) < 1e-20
    with torch.no_grad():
        field.dummy.fill_(0.1)
    assert float(flow_matching_loss(flow, x1, gen)) > 1e-3


def test_flow_matching_loss_trains_the_velocity() -> None:
    """Its gradient reaches the velocity network's parameters."""
    flow = make_flow(4)
    x1 = GaussianMixture(DIM).sample(16, torch.Generator().manual_seed(1))
    loss = flow_matching_loss(flow, x1, torch.Generator().manual_seed(2))
    grads = torch.autograd.grad(loss, list(flow.parameters()))
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


# -- bad input -------------------------------------------------------------------------------------


def test_bad_arguments_are_refused() -> None:
    velocity = make_flow(2).layers[0].velocity  # type: ignore[union-attr]
    assert isinstance(velocity, nn.Module)
    with pytest.raises(TypeError, match=r"velocity must be an nn\.Module"):
        ContinuousLayer(lambda x, t: x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="steps must be a positive int"):
        ContinuousLayer(velocity, steps=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps must be a positive int"):
        ContinuousLayer(velocity, steps=0)
    with pytest.raises(ValueError, match="unknown solver 'rk5'"):
        ContinuousLayer(velocity, solver="rk5")
    with pytest.raises(ValueError, match="t0 and t1 must differ"):
        ContinuousLayer(velocity, t0=0.5, t1=0.5)
    with pytest.raises(ValueError, match="t1 must be finite"):
        ContinuousLayer(velocity, t1=float("inf"))
    with pytest.raises(ValueError, match="atol must be a finite positive number"):
        ContinuousLayer(velocity, atol=0.0)
    with pytest.raises(TypeError, match="adjoint must be a bool"):
        ContinuousLayer(velocity, adjoint=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dim must be a positive int"):
        continuous_flow(2.5)  # type: ignore[arg-type]

    class WrongShape(nn.Module):
        def forward(self, x: Tensor, t: Tensor) -> Tensor:
            return x.sum(1, keepdim=True)

    odd = Flow(make_flow(2).base, [ContinuousLayer(WrongShape(), 2)])
    with pytest.raises(ValueError, match=r"velocity\(x, t\) returned shape \(4, 1\)"):
        odd(torch.zeros(4, DIM))
    flow = make_flow(2)
    with pytest.raises(ValueError, match="expected a flow of one ContinuousLayer"):
        from pathgrad_ref.flows import real_nvp

        flow_matching_loss(real_nvp(4, n_couplings=2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="x1"):
        flow_matching_loss(flow, torch.zeros(3, DIM + 1))
