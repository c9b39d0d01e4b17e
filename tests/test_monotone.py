"""The project's own root-found element-wise transform (:class:`TanhSum`): its closed-form
derivatives against autograd and central differences, its bisection inverse to rounding out to
roots far beyond the solver's first bracket, the inverse's derivatives against gradcheck, and
every estimator of a coupling flow built with it against its naive oracle."""

from __future__ import annotations

import math

import pytest
import torch
from support import assert_sticks_the_landing, perturb, rel_err
from torch import Tensor

from pathgrad_ref.estimators import direction, gradient
from pathgrad_ref.flows import Flow, TanhSum, monotone_coupling_flow
from pathgrad_ref.flows.implicit import BisectionError
from pathgrad_ref.flows.monotone import tanh_sum, tanh_sum_coefficients
from pathgrad_ref.targets import GaussianMixture

pytestmark = pytest.mark.usefixtures("one_thread")

K = 3
EPS = torch.finfo(torch.float64).eps


def _params(n_rows: int, n: int, scale: float = 1.0, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n_rows, 1 + 3 * K, n, generator=gen, dtype=torch.float64)


def _f(a: Tensor, p: Tensor) -> Tensor:
    """The map straight from its defining formula (the module's helpers not used)."""
    s, rho, alpha, beta = p[:, 0], p[:, 1 : 1 + K], p[:, 1 + K : 1 + 2 * K], p[:, 1 + 2 * K :]
    steps = torch.log1p(torch.exp(rho)) * torch.tanh(torch.exp(alpha) * (a[:, None] - beta))
    return torch.exp(s) * a + steps.sum(1)


def test_forward_value_and_derivatives_against_autograd_and_differences() -> None:
    t = TanhSum(K)
    p = _params(6, 5)
    a = 3.0 * torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    res = t.forward(a, p)
    assert torch.allclose(res.out, _f(a, p), rtol=1e-14, atol=1e-14)
    # Autograd of the defining formula: f' and f'' (element-wise map, so a sum's gradient).
    x = a.clone().requires_grad_(True)
    (d1,) = torch.autograd.grad(_f(x, p).sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x)
    assert torch.allclose(res.log_deriv, torch.log(d1), rtol=1e-13, atol=1e-13)
    assert res.grad_log_deriv is not None
    assert torch.allclose(res.grad_log_deriv, d2 / d1, rtol=1e-12, atol=1e-12)
    # Central differences of f and of log f' (O(h²) truncation, h = 1e-5).
    h = 1e-5
    fd1 = (_f(a + h, p) - _f(a - h, p)) / (2 * h)
    assert torch.allclose(res.log_deriv.exp(), fd1, rtol=1e-8, atol=1e-8)
    fd_log = (t.forward(a + h, p).log_deriv - t.forward(a - h, p).log_deriv) / (2 * h)
    assert torch.allclose(res.grad_log_deriv, fd_log, rtol=1e-7, atol=1e-7)


def test_the_map_is_increasing_with_range_all_of_r() -> None:
    p = _params(2, 3, scale=2.0)
    a = torch.linspace(-50, 50, 2001, dtype=torch.float64)[:, None, None].expand(-1, 2, 3)
    f = tanh_sum(a, tanh_sum_coefficients(p, K))
    assert bool((f.diff(dim=0) > 0).all())
    slope, weight, _, _ = tanh_sum_coefficients(p, K)
    # |f(a) − e^s a| <= Σ w (equal where every tanh has rounded to ±1): unbounded both ways.
    assert bool(((f - slope * a).abs() <= weight.sum(-2) + 1e-13 * (1 + slope * a.abs())).all())


def _roots(n_rows: int = 4) -> Tensor:
    """Roots from 0 out to the solver's reach ±655,360 (first bracket ±10, 16 doublings)."""
    values = [0.0, 1e-3, 9.99, 10.0, 10.01, 123.4, 1e3, 4.5e4, 3e5, 6e5]
    row = torch.tensor(values + [-v for v in values[1:]], dtype=torch.float64)
    return row.expand(n_rows, -1).clone()


def test_inverse_round_trip_to_rounding_with_far_roots() -> None:
    t = TanhSum(K)
    x0 = _roots()
    p = _params(x0.shape[0], x0.shape[1], scale=0.7, seed=2)
    fwd = t.forward(x0, p)
    inv = t.inverse(fwd.out, p)
    # Rounding of y = f(x0) moves the root by ulp(y)/f'; the solver adds at most tol/2 = 5e-14.
    slope = fwd.log_deriv.exp()
    allowed = 5e-14 + 4 * EPS * (fwd.out.abs() + 1.0) / slope + 2 * EPS * x0.abs()
    assert bool(((inv.out - x0).abs() <= allowed).all()), float(((inv.out - x0).abs()).max())
    assert torch.allclose(inv.log_deriv, -fwd.log_deriv, rtol=0, atol=1e-12)
    assert fwd.grad_log_deriv is not None and inv.grad_log_deriv is not None
    expected = -fwd.grad_log_deriv / slope
    assert torch.allclose(inv.grad_log_deriv, expected, rtol=1e-10, atol=1e-12)


def test_a_root_beyond_the_solvers_reach_raises_with_the_name() -> None:
    t = TanhSum(K, name="layer 7")
    p = torch.zeros(1, 1 + 3 * K, 1, dtype=torch.float64)
    with pytest.raises(BisectionError, match="layer 7: could not bracket"):
        t.inverse(torch.full((1, 1), 1e7, dtype=torch.float64), p)


def test_inverse_derivatives_are_those_of_the_true_inverse() -> None:
    """gradcheck and gradgradcheck (both modes) of ``(a, p) ↦ f^{-1}(a; p)`` and its log-slope,
    and the returned ``∂_a log (f^{-1})'`` against autograd of the returned log-slope."""
    t = TanhSum(2)
    gen = torch.Generator().manual_seed(3)
    p = 0.8 * torch.randn(2, 7, 2, generator=gen, dtype=torch.float64)
    a = torch.tensor([[-12.0, 0.3], [2.0, 40.0]], dtype=torch.float64)

    def inv(a_in: Tensor, p_in: Tensor) -> tuple[Tensor, Tensor]:
        res = t.inverse(a_in, p_in)
        return res.out, res.log_deriv

    inputs = (a.clone().requires_grad_(True), p.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(inv, inputs, check_forward_ad=True)
    assert torch.autograd.gradgradcheck(inv, inputs)
    x = a.clone().requires_grad_(True)
    res = t.inverse(x, p)
    (g,) = torch.autograd.grad(res.log_deriv.sum(), x)
    assert res.grad_log_deriv is not None
    assert torch.allclose(res.grad_log_deriv, g, rtol=1e-12, atol=1e-12)


def _flow() -> Flow:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        flow = monotone_coupling_flow(3, n_couplings=2, components=2, hidden=(8,)).double()
    perturb(flow, 0.3)
    return flow


ORACLE = {
    "reverse-path-naive": ("reverse-path-fast", "reverse-path-dropin"),
    "reverse-standard-naive": ("reverse-standard",),
    "forward-path-naive": ("forward-path-fast", "forward-path-gdreg"),
    "forward-standard-naive": ("forward-standard",),
}


@pytest.mark.parametrize("oracle", list(ORACLE))
def test_every_estimator_equals_its_naive_oracle(oracle: str) -> None:
    flow, target = _flow(), GaussianMixture(3)
    gen = torch.Generator().manual_seed(4)
    if direction(oracle) == "reverse":
        batch = flow.base.sample(3, gen)
    else:
        batch = target.sample(3, gen).double()
    g_oracle = gradient(oracle, flow, target, batch)
    assert all(bool(torch.isfinite(g).all()) for g in g_oracle.values())
    for fast in ORACLE[oracle]:
        assert rel_err(gradient(fast, flow, target, batch), g_oracle) <= 1e-9, fast
    if oracle == "reverse-path-naive":  # not vacuous: the path gradient is not the standard one
        assert rel_err(gradient("reverse-standard", flow, target, batch), g_oracle) > 1e-3


def test_constructor_checks_and_zero_init() -> None:
    with pytest.raises(ValueError, match="components"):
        monotone_coupling_flow(3, components=0)
    flow = monotone_coupling_flow(2, n_couplings=1, components=2, hidden=(4,)).double()
    z = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    with torch.no_grad():
        x, _ = flow.transform(z)
    # Zero-initialised conditioners: the active site maps by a + K log 2 tanh(a).
    a = z[0, 0] if x[0, 1] == z[0, 1] else z[0, 1]
    moved = x[0, 0] if x[0, 1] == z[0, 1] else x[0, 1]
    assert math.isclose(float(moved), float(a + 2 * math.log(2) * torch.tanh(a)), rel_tol=1e-14)


@pytest.mark.parametrize("dirn", ["reverse", "forward"])
def test_sticking_the_landing(dirn: str) -> None:
    """At ``p = q_θ`` the path gradient of every single sample vanishes (the forward
    direction's force runs through the root-found inverse and its implicit gradients)."""
    assert_sticks_the_landing(_flow(), dirn)
