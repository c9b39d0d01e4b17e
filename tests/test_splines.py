"""Rational-quadratic and circular splines: closed-form ``f'`` and ``f''/f'`` against autograd and
central differences in both directions, inverses, identities, and spline coupling layers against
dense autograd (log-det by ``slogdet``, both score steps)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from support import dense_log_det, dense_score_step, flat_map, perturb, rel_err
from torch import Tensor

from pathgrad_ref.flows import MLP, Coupling, alternating_mask
from pathgrad_ref.flows.splines import (
    CircularSpline,
    RationalQuadraticSpline,
    rational_quadratic,
)
from pathgrad_ref.flows.transforms import ElementwiseTransform

TWO_PI = 2 * math.pi
N, n = 64, 3


# Distinct minimums, so that a swap of two of them changes what these tests see.
MINIMUMS = {"min_bin_width": 0.02, "min_bin_height": 0.005, "min_derivative": 0.01}


def _spline(kind: str) -> ElementwiseTransform:
    if kind == "rqs":
        return RationalQuadraticSpline(bins=5, bound=2.0, **MINIMUMS)
    if kind == "rqs-bounded":
        return RationalQuadraticSpline(bins=5, bound=2.0, **MINIMUMS, max_derivative=20.0)
    if kind == "circular":
        return CircularSpline(bins=5, rotation=True, **MINIMUMS)
    if kind == "circular-norot":
        return CircularSpline(bins=5, rotation=False)
    raise ValueError(kind)


KINDS = ["rqs", "rqs-bounded", "circular", "circular-norot"]


def _points(kind: str, gen: torch.Generator) -> Tensor:
    if kind.startswith("rqs"):
        # 3·N(0,1) on a spline of [−2, 2]: about half the points lie in the identity tails.
        return 3.0 * torch.randn(N, n, generator=gen, dtype=torch.float64)
    return TWO_PI * torch.rand(N, n, generator=gen, dtype=torch.float64)


def _params(t: ElementwiseTransform, gen: torch.Generator, scale: float = 1.5) -> Tensor:
    return scale * torch.randn(N, t.n_params, n, generator=gen, dtype=torch.float64)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    k: str = request.param
    return k


@pytest.mark.parametrize("inverse", [False, True])
def test_derivatives_match_autograd(kind: str, inverse: bool) -> None:
    """``exp(log_deriv) = ∂out/∂a`` and ``grad_log_deriv = ∂ log_deriv/∂a`` by autograd (exact up
    to rounding), element-wise."""
    gen = torch.Generator().manual_seed(0)
    t = _spline(kind)
    p = _params(t, gen)
    a = _points(kind, gen).requires_grad_(True)
    res = t.inverse(a, p) if inverse else t.forward(a, p)
    assert res.grad_log_deriv is not None
    (d_out,) = torch.autograd.grad(res.out.sum(), a, retain_graph=True)
    (d_log,) = torch.autograd.grad(res.log_deriv.sum(), a)
    assert rel_err(res.log_deriv.exp(), d_out) < 1e-13
    assert rel_err(res.grad_log_deriv, d_log) < 1e-12
    assert float(d_log.abs().max()) > 0.1, "the test needs a curved spline"


@pytest.mark.parametrize("inverse", [False, True])
def test_derivatives_match_finite_differences(kind: str, inverse: bool) -> None:
    """The same against Richardson-extrapolated central differences (step 1e-5,
    error O(h⁴) plus rounding / h): an
    independent check of the closed forms that does not use autograd at all. Points within 1e-4
    of a knot are skipped, where ``f''`` jumps (the spline is C¹, not C²)."""
    gen = torch.Generator().manual_seed(1)
    t = _spline(kind)
    p = _params(t, gen, scale=1.0)
    a = _points(kind, gen)
    step = 1e-5

    def f(u: Tensor) -> tuple[Tensor, Tensor]:
        r = t.inverse(u, p) if inverse else t.forward(u, p)
        return r.out, r.log_deriv

    def central(h: float) -> tuple[Tensor, Tensor]:
        (out_hi, log_hi), (out_lo, log_lo) = f(a + h), f(a - h)
        d_out = out_hi - out_lo
        if kind.startswith("circular"):  # the circular output wraps at 2π
            d_out = torch.remainder(d_out + math.pi, TWO_PI) - math.pi
        return d_out / (2 * h), (log_hi - log_lo) / (2 * h)

    # Richardson: (4 c(h/2) − c(h)) / 3 cancels the O(h²) term of the central difference.
    (d1, g1), (d2, g2) = central(step), central(step / 2)
    fd_deriv, fd_grad = (4 * d2 - d1) / 3, (4 * g2 - g1) / 3
    res = t.inverse(a, p) if inverse else t.forward(a, p)
    knots = _knot_points(t, p, inverse)
    away = ((a.unsqueeze(-1) - knots).abs() > 1e-4).all(-1)
    if kind.startswith("rqs"):
        away &= (a.abs() - t.bound).abs() > 1e-4  # type: ignore[attr-defined]
    assert int(away.sum()) > N * n // 2
    assert res.grad_log_deriv is not None
    deriv = res.log_deriv.exp()
    err_deriv = float(((fd_deriv - deriv).abs() / (1.0 + deriv))[away].max())
    # Measured: at most 2e-10 (f') and 1.5e-10 (f''/f') over the six cases, rounding / h.
    assert err_deriv < 1e-8
    grad = res.grad_log_deriv
    assert float(((fd_grad - grad).abs() / (1.0 + grad.abs()))[away].max()) < 1e-8


def _knot_points(t: ElementwiseTransform, p: Tensor, inverse: bool) -> Tensor:
    """The knots on the input side of ``t`` (forward: x knots; inverse: y knots, rotated)."""
    if isinstance(t, RationalQuadraticSpline):
        xk, yk, _ = t.knots(p)
        return yk if inverse else xk
    assert isinstance(t, CircularSpline)
    xk, yk, _, rho = t.knots(p)
    if not inverse:
        return torch.cat([xk, xk + TWO_PI], -1)
    knots = yk if rho is None else torch.remainder(yk + rho.unsqueeze(-1), TWO_PI)
    return torch.cat([knots, knots + TWO_PI, knots - TWO_PI], -1)


def test_round_trip(kind: str) -> None:
    gen = torch.Generator().manual_seed(2)
    t = _spline(kind)
    p = _params(t, gen)
    a = _points(kind, gen)
    fwd = t.forward(a, p)
    back = t.inverse(fwd.out, p)
    # Inverting a region of slope δ_min amplifies rounding by 1/δ_min: absolute 1e-10.
    assert float((back.out - a).abs().max()) < 1e-10
    assert float((back.log_deriv + fwd.log_deriv).abs().max()) < 1e-8
    assert float((fwd.out - a).abs().max()) > 0.1, "the test needs a spline far from identity"
    if kind.startswith("circular"):
        assert bool(((fwd.out >= 0) & (fwd.out < TWO_PI)).all())
        assert bool(((back.out >= 0) & (back.out < TWO_PI)).all())


def test_identity_at_zero_parameters(kind: str) -> None:
    gen = torch.Generator().manual_seed(3)
    t = _spline(kind)
    a = _points(kind, gen)
    p = torch.zeros(N, t.n_params, n, dtype=torch.float64)
    for res in (t.forward(a, p), t.inverse(a, p)):
        assert res.grad_log_deriv is not None
        assert float((res.out - a).abs().max()) < 1e-14
        assert float(res.log_deriv.abs().max()) < 1e-14
        assert float(res.grad_log_deriv.abs().max()) < 1e-14


def test_tails_are_identity_with_zero_gradients() -> None:
    """Outside ``[−B, B]`` the map is the identity, ``log f' = f''/f' = 0``, and the parameter
    gradients there are exactly zero and finite (no NaN leaking from the unused branch)."""
    t = RationalQuadraticSpline(bins=4, bound=1.0)
    gen = torch.Generator().manual_seed(4)
    a = torch.tensor([[-7.0, -1.0 - 1e-12, 1.0 + 1e-9, 40.0]], dtype=torch.float64)
    p = torch.randn(1, t.n_params, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
    for inverse in (False, True):
        res = t.inverse(a, p) if inverse else t.forward(a, p)
        assert res.grad_log_deriv is not None
        assert torch.equal(res.out, a)
        assert torch.equal(res.log_deriv, torch.zeros_like(a))
        assert torch.equal(res.grad_log_deriv, torch.zeros_like(a))
        (g,) = torch.autograd.grad((res.out + res.log_deriv + res.grad_log_deriv).sum(), p)
        assert torch.equal(g, torch.zeros_like(g))


def test_parameter_gradients_finite_everywhere() -> None:
    """Mixed inside / outside / knot points: parameter gradients exist and are finite."""
    t = RationalQuadraticSpline(bins=4, bound=1.0)
    gen = torch.Generator().manual_seed(5)
    p = torch.randn(1, t.n_params, 7, generator=gen, dtype=torch.float64).requires_grad_(True)
    xk, _, _ = t.knots(p.detach())
    a = torch.cat([xk[:, 0, :], torch.tensor([[3.0, 0.3]], dtype=torch.float64)], dim=1)
    for inverse in (False, True):
        res = t.inverse(a, p) if inverse else t.forward(a, p)
        assert res.grad_log_deriv is not None
        (g,) = torch.autograd.grad((res.out + res.log_deriv + res.grad_log_deriv).sum(), p)
        assert bool(torch.isfinite(g).all()) and float(g.abs().max()) > 0


def test_circular_spline_is_a_circle_map() -> None:
    """``f(θ + 2π) = f(θ)`` mod 2π, ``f'`` is continuous across ``0 ≡ 2π`` (``δ_0 = δ_K``), and
    the rotation shifts the output alone."""
    gen = torch.Generator().manual_seed(6)
    t = CircularSpline(bins=5)
    p = torch.randn(1, t.n_params, 4, generator=gen, dtype=torch.float64)
    a = TWO_PI * torch.rand(1, 4, generator=gen, dtype=torch.float64)
    r0, r1 = t.forward(a, p), t.forward(a + TWO_PI, p)
    assert float((r0.out - r1.out).abs().max()) < 1e-12
    # Elements 0 and 1 share one spline: f' just below 2π equals f' at 0.
    q = p.clone()
    q[:, :, 1] = q[:, :, 0]
    ends = torch.tensor([[0.0, TWO_PI - 1e-9, 1.0, 2.0]], dtype=torch.float64)
    log_d = t.forward(ends, q).log_deriv
    assert float((log_d[0, 0] - log_d[0, 1]).abs()) < 1e-7
    rotated = p.clone()
    rotated[:, -1] += 0.7
    shifted = t.forward(a, rotated).out
    moved = torch.remainder(shifted - r0.out - 0.7 + math.pi, TWO_PI) - math.pi
    assert float(moved.abs().max()) < 1e-12


def test_pure_function_broadcasts_and_vmaps() -> None:
    """``rational_quadratic`` on ``(...)`` points and ``(..., K+1)`` knots, shared knots
    broadcast; per-element ``torch.func`` derivatives equal the closed forms."""
    xk = torch.tensor([-1.0, -0.2, 0.5, 1.0], dtype=torch.float64)
    yk = torch.tensor([-1.0, 0.3, 0.6, 1.0], dtype=torch.float64)
    dk = torch.tensor([1.0, 0.5, 2.0, 1.0], dtype=torch.float64)
    x = torch.linspace(-1.5, 1.5, 13, dtype=torch.float64)
    res = rational_quadratic(x, xk, yk, dk)
    f = torch.func.vmap(torch.func.grad(lambda u: rational_quadratic(u, xk, yk, dk).out))
    assert rel_err(f(x), res.log_deriv.exp()) < 1e-13
    inv = rational_quadratic(res.out, xk, yk, dk, inverse=True)
    assert float((inv.out - x).abs().max()) < 1e-14
    with pytest.raises(ValueError, match=r"one shape \(\.\.\., K\+1\)"):
        rational_quadratic(x, xk, yk, dk[:-1])


def test_bad_options() -> None:
    """Every bad constructor argument is refused with one error naming it."""
    cases: list[tuple[Callable[[], object], type[Exception], str]] = [
        (lambda: RationalQuadraticSpline(bins=0), ValueError, "bins must be >= 2"),
        # One bin with unit end derivatives is the identity whatever the parameters.
        (lambda: RationalQuadraticSpline(bins=1), ValueError, "bins must be >= 2"),
        (lambda: RationalQuadraticSpline(bins=2.5), TypeError, "bins: expected an int"),  # type: ignore[arg-type]
        (lambda: RationalQuadraticSpline(bins=True), TypeError, "bins: expected an int"),
        (lambda: RationalQuadraticSpline(bins=10, min_bin_width=0.1), ValueError, "min_bin_width"),
        (lambda: RationalQuadraticSpline(min_bin_height=0.0), ValueError, "min_bin_height"),
        (lambda: RationalQuadraticSpline(min_bin_width=-1e-3), ValueError, "min_bin_width"),
        (lambda: RationalQuadraticSpline(min_derivative=0.0), ValueError, "min_derivative"),
        (lambda: RationalQuadraticSpline(min_derivative=1.0), ValueError, "min_derivative"),
        (lambda: RationalQuadraticSpline(min_derivative=math.nan), ValueError, "min_derivative"),
        (lambda: RationalQuadraticSpline(bound=0.0), ValueError, "bound must be > 0"),
        (lambda: RationalQuadraticSpline(bound=math.inf), ValueError, "bound: expected a finite"),
        (lambda: RationalQuadraticSpline(bound=math.nan), ValueError, "bound: expected a finite"),
        (lambda: RationalQuadraticSpline(bound="5"), TypeError, "bound: expected a real"),  # type: ignore[arg-type]
        (lambda: RationalQuadraticSpline(max_derivative=1.0), ValueError, "max_derivative"),
        (lambda: RationalQuadraticSpline(max_derivative=math.inf), ValueError, "max_derivative"),
        (lambda: CircularSpline(bins=0), ValueError, "bins must be >= 1"),
        (lambda: CircularSpline(bins=3.0), TypeError, "bins: expected an int"),  # type: ignore[arg-type]
        (lambda: CircularSpline(rotation=1), TypeError, "rotation: expected a bool"),  # type: ignore[arg-type]
        (lambda: CircularSpline(bins=4, min_bin_height=0.25), ValueError, "min_bin_height"),
        (lambda: CircularSpline(min_derivative=-0.1), ValueError, "min_derivative"),
        (lambda: CircularSpline(max_derivative=0.5), ValueError, "max_derivative"),
    ]
    for make, error, message in cases:
        with pytest.raises(error, match=message):
            make()
    with pytest.raises(ValueError, match=r"expected parameters of shape \(N, 23, n\)"):
        RationalQuadraticSpline().forward(torch.zeros(2, 3), torch.zeros(2, 22, 3))
    # Valid edge cases construct: one circular bin is a real map (its end derivative is free).
    assert CircularSpline(bins=1).n_params == 4
    assert RationalQuadraticSpline(bins=2, bound=1, max_derivative=2).n_params == 5


# --- spline coupling layers against dense autograd -------------------------------------------

DIM = 5


def _coupling(kind: str) -> Coupling:
    torch.manual_seed(0)
    t = _spline(kind)
    m = alternating_mask((DIM,), 0)
    k = int(m.sum())
    lay = Coupling(m, MLP(DIM - k, t.n_params * k, (8,), "tanh"), t).double()
    perturb(lay, 0.5)
    return lay


def _coupling_inputs(kind: str) -> Tensor:
    gen = torch.Generator().manual_seed(8)
    if kind.startswith("rqs"):
        return 2.0 * torch.randn(6, DIM, generator=gen, dtype=torch.float64)
    return TWO_PI * torch.rand(6, DIM, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("inverse", [False, True])
def test_coupling_log_det_matches_slogdet(kind: str, inverse: bool, exact_tol: float) -> None:
    lay = _coupling(kind)
    x = _coupling_inputs(kind)
    f = lay.inverse if inverse else lay.forward
    ref = dense_log_det(flat_map(lambda u: f(u)[0], (DIM,)), x)
    got = f(x)[1]
    assert rel_err(got, ref) < exact_tol
    assert float(got.detach().abs().max()) > 0.1


@pytest.mark.parametrize("inverse", [False, True])
def test_coupling_score_step_matches_dense(kind: str, inverse: bool, exact_tol: float) -> None:
    lay = _coupling(kind)
    x = _coupling_inputs(kind).requires_grad_(True)
    score = torch.randn(x.shape, generator=torch.Generator().manual_seed(9), dtype=x.dtype)
    step = lay.inverse_and_score if inverse else lay.forward_and_score
    y, _, score_y = step(x, score)
    f = lay.inverse if inverse else lay.forward
    ref = dense_score_step(flat_map(lambda u: f(u)[0], (DIM,)), x.detach(), score)
    assert rel_err(score_y, ref) < exact_tol
    assert y.requires_grad and not score_y.requires_grad


# --- distinct minimums, bounded derivatives, the kernel's checks --------------------------------


@pytest.mark.parametrize("max_derivative", [None, 30.0])
def test_each_minimum_binds_its_own_quantity(max_derivative: float | None) -> None:
    """With distinct ``min_bin_width``, ``min_bin_height``, ``min_derivative`` (and
    ``max_derivative``) and extreme parameters, every bin width, bin height and knot derivative
    respects its own bound, and each bound is reached (a swap of two options fails one side)."""
    B, K = 2.0, 6
    mins = {"width": 0.04, "height": 0.005, "derivative": 0.02}
    t = RationalQuadraticSpline(
        bins=K,
        bound=B,
        min_bin_width=mins["width"],
        min_bin_height=mins["height"],
        min_derivative=mins["derivative"],
        max_derivative=max_derivative,
    )
    c = CircularSpline(
        bins=K,
        min_bin_width=mins["width"],
        min_bin_height=mins["height"],
        min_derivative=mins["derivative"],
        max_derivative=max_derivative,
    )
    gen = torch.Generator().manual_seed(10)
    for spline, span in ((t, 2 * B), (c, TWO_PI)):
        # Scale 60: softmax logits and raw derivatives far into saturation on both sides.
        p = 60.0 * torch.randn(256, spline.n_params, 2, generator=gen, dtype=torch.float64)
        xk, yk, dk = spline.knots(p)[:3]
        got = {"width": xk.diff(dim=-1), "height": yk.diff(dim=-1), "derivative": dk}
        floor = {"width": mins["width"] * span, "height": mins["height"] * span}
        floor["derivative"] = mins["derivative"]
        for name, values in got.items():
            low = float(values.min())
            assert low >= floor[name] * (1 - 1e-9), (type(spline).__name__, name, low)
            assert low <= floor[name] * (1 + 1e-6), (type(spline).__name__, name, "not reached")
        if max_derivative is not None:
            top = float(dk.max())
            assert max_derivative * (1 - 1e-6) <= top <= max_derivative
        # And the maps stay valid bijections there: the kernel's own check passes.
        rational_quadratic(xk[..., 1], xk, yk, dk, check=True)


def test_bounded_derivatives_start_at_identity_and_match_autograd() -> None:
    """``max_derivative``: zero parameters give ``δ = 1`` (the identity), and the closed-form
    ``f'`` and ``f''/f'`` agree with autograd in both directions."""
    t = RationalQuadraticSpline(bins=5, bound=2.0, max_derivative=20.0)
    gen = torch.Generator().manual_seed(11)
    a = 3.0 * torch.randn(N, n, generator=gen, dtype=torch.float64)
    zero = torch.zeros(N, t.n_params, n, dtype=torch.float64)
    assert float((t.forward(a, zero).out - a).abs().max()) < 1e-14
    p = 2.0 * torch.randn(N, t.n_params, n, generator=gen, dtype=torch.float64)
    for inverse in (False, True):
        u = a.clone().requires_grad_(True)
        res = t.inverse(u, p) if inverse else t.forward(u, p)
        assert res.grad_log_deriv is not None
        (d_out,) = torch.autograd.grad(res.out.sum(), u, retain_graph=True)
        (d_log,) = torch.autograd.grad(res.log_deriv.sum(), u)
        assert rel_err(res.log_deriv.exp(), d_out) < 1e-13
        assert rel_err(res.grad_log_deriv, d_log) < 1e-12


def test_kernel_refuses_invalid_knots() -> None:
    """``rational_quadratic`` checks by default; ``check=False`` (the flows' hot path) and
    ``torch.func.vmap`` (where values cannot be read) skip the check."""
    xk = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    yk = torch.tensor([-1.0, 0.5, 1.0], dtype=torch.float64)
    dk = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    x = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
    bad = {
        "x_knots": (xk.flip(0), yk, dk),
        "y_knots": (xk, torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64), dk),
        "derivatives": (xk, yk, torch.tensor([1.0, -2.0, 1.0], dtype=torch.float64)),
    }
    for name, knots in bad.items():
        with pytest.raises(ValueError, match=f"{name} must be finite and"):
            rational_quadratic(x, *knots)
        rational_quadratic(x, *knots, check=False)  # no error, and no host read
    with pytest.raises(ValueError, match="x_knots must be finite"):
        rational_quadratic(x, torch.tensor([-1.0, math.nan, 1.0], dtype=torch.float64), yk, dk)
    with pytest.raises(ValueError, match="derivatives must be finite"):
        rational_quadratic(x, xk, yk, torch.tensor([1.0, math.inf, 1.0], dtype=torch.float64))
    batched = torch.func.vmap(lambda d: rational_quadratic(x, xk, yk, d).out)
    assert batched(torch.stack([dk, dk])).shape == (2, 5)


# --- the inverse in float32 --------------------------------------------------------------------

EPS32 = torch.finfo(torch.float32).eps


def _backward_error(
    y: Tensor, x_back: Tensor, knots: tuple[Tensor, Tensor, Tensor]
) -> tuple[float, int]:
    """``max |f(x_back) − y| / (ε₃₂ B (1 + f'(x_back)))`` with ``f`` evaluated in float64 on the
    float32 knots, and the number of non-finite outputs. ``B`` = the largest knot magnitude.
    A stable inverse returns an ``x_back`` that solves ``f(x) = y`` up to a few roundings of
    ``y`` (the ``1``) and of ``x_back`` itself (the ``f'``), whatever the conditioning ``1/f'``."""
    k64 = (knots[0].double(), knots[1].double(), knots[2].double())
    fwd = rational_quadratic(x_back.double(), *k64, check=False)
    scale = float(k64[0].abs().max().clamp_min(k64[1].abs().max()))
    err = (fwd.out - y.double()).abs() / (EPS32 * scale * (1.0 + fwd.log_deriv.exp()))
    return float(err.max()), int((~torch.isfinite(x_back)).sum())


def _all_finite(res: object) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in res)  # type: ignore[attr-defined]


def test_inverse_float32_steep_knot_is_finite_and_accurate() -> None:
    """The issue's bin: ``x = [−5, 4.9, 5]``, ``y = [−5, −4.99, 5]``, ``δ = [1, 16, 1]``. In the top
    1e-4 of bin 0, ``b < 0`` and the single form ``2c/(−b − √disc)`` cancelled: 953 of 2001
    NaN ``log f'`` and ``x`` off by 5e-3 in float32. The float64 inverse is well conditioned
    there (``f' ≥ 1/16``): float32 must match it to ``x`` error ``≤ 64 ε₃₂ |x|`` (the rounding
    of ``y`` divided by ``f'`` is ``16 ε₃₂ |y|``); measured 1.4e-6 = 2.4 ε₃₂ |x|. Its
    ``log f'`` must be that of the float64 spline at the returned ``x`` to
    ``64 ε₃₂ (1 + |x f''/f'|)`` (the rounding of ``x`` moves ``log f'`` by ``f''/f' ≈ 3e3``
    times as much); measured 0.8 of the unit."""
    xk = torch.tensor([-5.0, 4.9, 5.0])
    yk = torch.tensor([-5.0, -4.99, 5.0])
    dk = torch.tensor([1.0, 16.0, 1.0])
    y64 = torch.linspace(-4.99 - 1e-6, -4.99, 2001, dtype=torch.float64)
    y = y64.float()
    ref = rational_quadratic(y.double(), xk.double(), yk.double(), dk.double(), inverse=True)
    got = rational_quadratic(y, xk, yk, dk, inverse=True)
    assert _all_finite(got)
    assert float((got.out.double() - ref.out).abs().max()) <= 64 * EPS32 * 5.0
    at = rational_quadratic(got.out.double(), xk.double(), yk.double(), dk.double())
    unit = EPS32 * (1.0 + (got.out.double() * at.grad_log_deriv).abs())  # type: ignore[operator]
    assert float(((got.log_deriv.double() + at.log_deriv) / unit).abs().max()) <= 64.0


@pytest.mark.parametrize("max_derivative", [None, 30.0])
@pytest.mark.parametrize("scale", [1.0, 5.0, 10.0])
def test_inverse_float32_random_splines(scale: float, max_derivative: float | None) -> None:
    """Random splines in float32, parameters up to scale 10, points uniform on ``[−B, B]``, on
    every y-knot and ±1 ulp of it: all outputs finite, backward error ``≤ 128`` (units of
    ``ε₃₂ B (1 + f')``, :func:`_backward_error`). The single root form gave 3 and 15
    non-finite values in 5e5 points at scales 5 and 10 and backward errors up to 7e3; the pair
    of forms, here, 0 and at most 2.4, 20, 35 (softplus; 4.8, 35, 47 bounded) at scales 1, 5,
    10: the bound 128 leaves a factor 2.7 over the worst of them."""
    gen = torch.Generator().manual_seed(int(scale))
    t = RationalQuadraticSpline(bins=8, bound=5.0, max_derivative=max_derivative)
    p = scale * torch.randn(512, t.n_params, 16, generator=gen)
    knots = t.knots(p)
    yk = knots[1]
    inf = torch.tensor(math.inf)
    on_knots = torch.cat([yk, torch.nextafter(yk, inf), torch.nextafter(yk, -inf)], -1)
    uniform = 10.0 * torch.rand(512, 16, 64, generator=gen) - 5.0
    y = torch.cat([on_knots, uniform], -1)  # (512, 16, M): M points per spline
    xk, yk, dk = (k.unsqueeze(-2).expand(*y.shape, k.shape[-1]) for k in knots)
    expand = (xk, yk, dk)
    res = rational_quadratic(y, *expand, inverse=True)
    assert _all_finite(res)
    err, n_bad = _backward_error(y, res.out, expand)
    assert n_bad == 0 and err <= 128.0, err
    fwd = rational_quadratic(res.out, *expand)
    assert _all_finite(fwd)
