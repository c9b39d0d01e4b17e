"""The generic implicit layer: :func:`implicit_inverse` of a map given only as ``h(x, *params)``.

Three maps written here, independently of the library, each with its derivatives in closed form:

- ``NetMap``: ``h(x; ℓ, b, W) = e^ℓ x + b + Σ_k softplus(W_k0) tanh(e^{W_k1} x + W_k2)``, with
  ``ℓ, b`` laid out like ``x`` (``element_axes`` 0) and weights ``W`` of shape ``(K, 3)`` shared
  by every element (``element_axes`` None);
- ``BoundedMap``: ``h(x; c, s) = c + s tanh(x)``, range ``(c − s, c + s)``, no ``element_axes``;
- ``StepMap``: ``h(x; c) = x/1000 + 5 tanh(20 (x − c))``, slope 100 at ``c`` and 1/1000 far away.

Everything is checked against the closed forms, finite differences, a Python loop or a counted
host read: never against the solver itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pytest
import torch
from meta_support import StatusCounter
from torch import Tensor
from torch.func import grad, jacfwd, jacrev, jvp, vjp, vmap
from torch.nn.functional import softplus

from pathgrad_ref.flows.implicit import (
    EXPANSIONS,
    INITIAL_BOUND,
    BisectionError,
    expand_bracket,
    implicit_inverse,
    log_derivatives,
    status_check,
)

pytestmark = pytest.mark.usefixtures("one_thread")

DT = torch.float64
EPS64 = torch.finfo(torch.float64).eps
EPS32 = torch.finfo(torch.float32).eps
K = 3


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape: int, seed: int, scale: float = 1.0, dtype: torch.dtype = DT) -> Tensor:
    return (scale * torch.randn(*shape, generator=_gen(seed), dtype=DT)).to(dtype)


def _rel(a: Tensor, b: Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# --- the test maps and their closed forms --------------------------------------------------


class NetMap:
    """``e^ℓ x + b + Σ_k softplus(W_k0) tanh(e^{W_k1} x + W_k2)``; ``W`` shared, ``(K, 3)``."""

    element_axes = (0, 0, None)

    def h(self, x: Tensor, la: Tensor, b: Tensor, W: Tensor) -> Tensor:
        u = torch.exp(W[:, 1]) * x.unsqueeze(-1) + W[:, 2]
        return torch.exp(la) * x + b + (softplus(W[:, 0]) * torch.tanh(u)).sum(-1)


class NetMapInitialBound(NetMap):
    initial_bound = 100.0


class BoundedMap:
    """``c + s tanh(x)``: range ``(c − s, c + s)``; no ``element_axes``."""

    def h(self, x: Tensor, c: Tensor, s: Tensor) -> Tensor:
        return c + s * torch.tanh(x)


class StepMap:
    """``x/1000 + 5 tanh(20 (x − c))``: steep at ``c``, flat far from it."""

    element_axes = (0,)

    def h(self, x: Tensor, c: Tensor) -> Tensor:
        return 1e-3 * x + 5.0 * torch.tanh(20.0 * (x - c))


def net_closed(
    x: Tensor, la: Tensor, b: Tensor, W: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(h, h', h'', ∂h/∂ℓ, ∂h/∂b, ∂h/∂W)`` of :class:`NetMap`, ``∂h/∂W`` of shape
    ``(*S, K, 3)``, the others ``S``."""
    a, r = softplus(W[:, 0]), torch.exp(W[:, 1])
    u = r * x.unsqueeze(-1) + W[:, 2]
    t = torch.tanh(u)
    sech2 = 1.0 - t * t
    value = torch.exp(la) * x + b + (a * t).sum(-1)
    d1 = torch.exp(la) + (a * r * sech2).sum(-1)
    d2 = (a * r * r * (-2.0 * t * sech2)).sum(-1)
    dW = torch.stack([torch.sigmoid(W[:, 0]) * t, a * sech2 * r * x.unsqueeze(-1), a * sech2], -1)
    return value, d1, d2, torch.exp(la) * x, torch.ones_like(x), dW


def _net_params(*shape: int, seed: int, dtype: torch.dtype = DT) -> tuple[Tensor, Tensor, Tensor]:
    la = _randn(*shape, seed=seed, scale=0.5, dtype=dtype)
    b = _randn(*shape, seed=seed + 1, scale=2.0, dtype=dtype)
    W = _randn(K, 3, seed=seed + 2, dtype=dtype)
    return la, b, W


def _solve(family: object, y: Tensor, params: Sequence[Tensor], **kw: object) -> Tensor:
    return implicit_inverse(family, y, params, **kw)  # type: ignore[arg-type]


# --- round trips ---------------------------------------------------------------------------


def test_round_trip_float64_to_rounding_with_far_roots() -> None:
    """``x`` within ``tol/2`` of the root of the computed map, which lies within (rounding of
    ``h`` at the root) / ``h'`` of the true root; roots at ``±1e4`` and ``3e5`` need the bracket
    ``[−10, 10]`` doubled up to 15 times."""
    tol = 1e-13
    far = torch.tensor([1e4, -1e4, 3e5, -2e5, 0.0, 1e-3, 12.0, -55.5], dtype=DT)
    x_true = torch.cat([far, _randn(24, seed=1, scale=5.0)])
    la, b, W = _net_params(x_true.numel(), seed=2)
    y = NetMap().h(x_true, la, b, W)
    x = _solve(NetMap(), y, (la, b, W), tol=tol)
    _, dh, _, _, _, _ = net_closed(x_true, la, b, W)
    # Size of the terms of h, so |computed h − h| <= a few eps * scale.
    scale = torch.exp(la) * x_true.abs() + b.abs() + softplus(W[:, 0]).sum()
    assert bool((NetMap().h(x, la, b, W) - y).abs().le(8 * EPS64 * scale).all())
    bound = tol / 2 + 8 * EPS64 * (x_true.abs() + scale / dh)
    assert bool(((x - x_true).abs() <= bound).all()), float(((x - x_true).abs() / bound).max())
    assert float((x[4:] - x_true[4:]).abs().max()) <= 1e-12  # |x| <= 56: near tol

    # Steep (slope 100) and flat (slope ~1e-3) regions; the flat roots at 1.5e4 need expanding.
    c = _randn(6, seed=3)
    x_step = torch.cat([c + 0.01, c - 0.003, c + 1.5e4, c - 4e3])
    c4 = c.repeat(4)
    y_step = StepMap().h(x_step, c4)
    x2 = _solve(StepMap(), y_step, (c4,), tol=tol)
    slope = 1e-3 + 100.0 / torch.cosh(20.0 * (x_step - c4)) ** 2
    err = (x2 - x_step).abs()
    assert bool((err <= tol / 2 + 8 * EPS64 * (x_step.abs() + (5.0 + y_step.abs()) / slope)).all())
    assert float(err[:12].max()) <= 1e-13  # steep region: the tolerance itself


def test_round_trip_float32_default_tolerance() -> None:
    """float32 with the default ``tol = 1e-6``: ``x`` against the float64 root of the same
    (float32-rounded) targets and parameters, within ``tol/2`` plus float32 rounding of ``h``."""
    x_true = torch.cat([torch.tensor([1e4, -3e3, 0.5]), _randn(40, seed=4, scale=3.0)]).float()
    la, b, W = _net_params(x_true.numel(), seed=5, dtype=torch.float32)
    y = NetMap().h(x_true, la, b, W)
    count = StatusCounter()
    with status_check(count):
        x = _solve(NetMap(), y, (la, b, W))
    assert count.calls == 1
    assert x.dtype == torch.float32
    p64 = (la.double(), b.double(), W.double())
    x_ref = _solve(NetMap(), y.double(), p64, tol=1e-13)
    _, dh, _, _, _, _ = net_closed(x_ref, *p64)
    scale = torch.exp(p64[0]) * x_ref.abs() + p64[1].abs() + softplus(p64[2][:, 0]).sum()
    bound = 1e-6 / 2 + 8 * EPS32 * (x_ref.abs() + scale / dh)
    err = (x.double() - x_ref).abs()
    assert bool((err <= bound).all()), float((err / bound).max())
    assert float(err[2:].max()) <= 1e-5


def test_one_status_read_per_solve() -> None:
    la, b, W = _net_params(5, 4, seed=6)
    y = _randn(5, 4, seed=7, scale=20.0)
    s = torch.exp(la)
    y_bounded = b + 0.9 * s * torch.tanh(y)
    for family, params, target in (
        (NetMap(), (la, b, W), y),
        (StepMap(), (b,), y),
        (BoundedMap(), (b, s), y_bounded),
    ):
        for dtype in (torch.float64, torch.float32):
            count = StatusCounter()
            with status_check(count):
                x = _solve(family, target.to(dtype), [p.to(dtype) for p in params])
            assert count.calls == 1, (type(family).__name__, dtype)
            assert x.shape == y.shape and x.dtype == dtype


# --- brackets: fixed expansion, never clamped ----------------------------------------------


def test_expand_bracket_doubles_a_fixed_number_of_times() -> None:
    """``expand_bracket``'s brackets are the smallest ``[−B·2^i, B·2^j]`` that hold the root,
    computed here by a Python loop; beyond ``B·2^EXPANSIONS`` the solver raises, and a family's
    ``initial_bound`` moves that reach."""
    la, b, W = _net_params(6, seed=8)
    x_true = torch.tensor([0.5, 25.0, -25.0, 1e3, -7e4, 6e5], dtype=DT)
    y = NetMap().h(x_true, la, b, W)

    def h(u: Tensor) -> Tensor:
        return NetMap().h(u, la, b, W)

    lo, hi = expand_bracket(h, y, INITIAL_BOUND)
    for i in range(6):
        h_i = lambda u, i=i: NetMap().h(u, la[i], b[i], W)  # noqa: E731
        lo_ref = hi_ref = INITIAL_BOUND
        lo_ref = -lo_ref
        for _ in range(EXPANSIONS):
            if float(h_i(torch.tensor(lo_ref, dtype=DT))) > float(y[i]):
                lo_ref *= 2
            if float(h_i(torch.tensor(hi_ref, dtype=DT))) < float(y[i]):
                hi_ref *= 2
        assert (float(lo[i]), float(hi[i])) == (lo_ref, hi_ref)
        assert float(lo[i]) <= float(x_true[i]) <= float(hi[i])

    reach = INITIAL_BOUND * 2.0**EXPANSIONS  # 655360
    x_out = torch.tensor([1.0, 1e6], dtype=DT)
    y_out = NetMap().h(x_out, la[:2], b[:2], W)
    count = StatusCounter()
    with status_check(count), pytest.raises(BisectionError, match=rf"net7.*bracket.*{reach:g}"):
        _solve(NetMap(), y_out, (la[:2], b[:2], W), name="net7")
    assert count.calls == 1
    x = _solve(NetMapInitialBound(), y_out, (la[:2], b[:2], W))
    assert float((x - x_out).abs().max()) <= 8 * EPS64 * 1e6 * 10


def test_never_clamps() -> None:
    """A target outside a bounded map's range raises, naming the layer, even when every other
    element is solvable; near the edge of the range the root is still found; NaN targets and
    infinite parameters raise naming ``finite``. One host read each."""
    c, s = _randn(5, seed=9), torch.full((5,), 2.0, dtype=DT)
    y = c + torch.tensor([0.0, 1.0, -1.5, 1.999, 2.001], dtype=DT)  # last: outside (c−2, c+2)
    for bad in (4, 3):
        yb = y.clone()
        if bad == 3:  # below the range instead
            yb[4], yb[3] = c[4], c[3] - 2.5
        count = StatusCounter()
        with status_check(count), pytest.raises(BisectionError) as info:
            _solve(BoundedMap(), yb, (c, s), name="tanh-layer")
        assert count.calls == 1
        message = str(info.value)
        assert "tanh-layer" in message and "bracket" in message
        assert "clamp" in message
    x = _solve(BoundedMap(), y[:4], (c[:4], s[:4]))
    ref = torch.atanh((y[:4] - c[:4]) / s[:4])  # atanh(0.9995) ≈ 4.15
    assert float((x - ref).abs().max()) <= 1e-11
    for yb, cb in (
        (y[:4].clone().index_fill_(0, torch.tensor([1]), math.nan), c[:4]),
        (y[:4], c[:4].clone().index_fill_(0, torch.tensor([2]), math.inf)),
    ):
        count = StatusCounter()
        with status_check(count), pytest.raises(BisectionError, match=r"tanh-layer.*finite"):
            _solve(BoundedMap(), yb, (cb, s[:4]), name="tanh-layer")
        assert count.calls == 1


# --- derivatives -----------------------------------------------------------------------------


def _net_inputs(seed: int, n: int = 4) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    la, b, W = _net_params(n, seed=seed)
    x_true = _randn(n, seed=seed + 10, scale=3.0)
    return NetMap().h(x_true, la, b, W), la, b, W


def test_gradcheck_and_gradgradcheck() -> None:
    """First and second derivatives of ``x(y, params)`` in every input, forward mode included,
    against torch's finite differences."""
    y, la, b, W = (t.clone().requires_grad_() for t in _net_inputs(seed=20, n=3))

    def net(y: Tensor, la: Tensor, b: Tensor, W: Tensor) -> Tensor:
        return _solve(NetMap(), y, (la, b, W))

    assert torch.autograd.gradcheck(net, (y, la, b, W), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(net, (y, la, b, W))

    c = _randn(3, seed=21).requires_grad_()
    ys = (StepMap().h(_randn(3, seed=22, scale=0.05) + c, c)).detach().requires_grad_()

    def step(y: Tensor, c: Tensor) -> Tensor:
        return _solve(StepMap(), y, (c,))

    assert torch.autograd.gradcheck(step, (ys, c), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(step, (ys, c))

    cb = _randn(3, seed=23).requires_grad_()
    sb = (1.0 + torch.rand(3, generator=_gen(24), dtype=DT)).requires_grad_()
    yb = (cb + 0.7 * sb * torch.tensor([-0.9, 0.1, 0.8], dtype=DT)).detach().requires_grad_()

    def bounded(y: Tensor, c: Tensor, s: Tensor) -> Tensor:
        return _solve(BoundedMap(), y, (c, s))

    assert torch.autograd.gradcheck(bounded, (yb, cb, sb), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(bounded, (yb, cb, sb))


def test_gradients_equal_the_closed_form_ift() -> None:
    """``∂x/∂y = 1/h'``, ``∂x/∂θ = −(∂h/∂θ)/h'`` summed over elements for the shared ``W``, and
    ``∂²x/∂y² = −h''/h'³``, from :func:`net_closed`."""
    y0, la0, b0, W0 = _net_inputs(seed=30, n=6)
    w = _randn(6, seed=31)
    y, la, b, W = (t.clone().requires_grad_() for t in (y0, la0, b0, W0))
    x = _solve(NetMap(), y, (la, b, W))
    g = torch.autograd.grad((w * x).sum(), (y, la, b, W), create_graph=True)
    xd = x.detach()
    _, dh, d2h, dla, db, dW = net_closed(xd, la0, b0, W0)
    assert _rel(g[0], w / dh) < 1e-12
    assert _rel(g[1], -w * dla / dh) < 1e-12
    assert _rel(g[2], -w * db / dh) < 1e-12
    assert _rel(g[3], -((w / dh)[:, None, None] * dW).sum(0)) < 1e-12
    (d2,) = torch.autograd.grad(g[0].sum(), y)  # diagonal: element i depends on y_i alone
    assert _rel(d2, -w * d2h / dh**3) < 1e-11

    # torch.func.grad agrees with autograd.
    fg = grad(lambda *a: (w * _solve(NetMap(), a[0], a[1:])).sum(), argnums=(0, 1, 2, 3))(
        y0, la0, b0, W0
    )
    for a, r in zip(fg, g, strict=True):
        assert _rel(a, r.detach()) < 1e-13


def test_forward_mode_equals_reverse_mode() -> None:
    y, la, b, W = _net_inputs(seed=40, n=4)

    def f(y: Tensor, la: Tensor, b: Tensor, W: Tensor) -> Tensor:
        return _solve(NetMap(), y, (la, b, W))

    for arg in range(4):
        jf = jacfwd(f, argnums=arg)(y, la, b, W)
        jr = jacrev(f, argnums=arg)(y, la, b, W)
        assert jf.shape == jr.shape
        assert _rel(jf, jr) < 1e-12, arg
    # One jvp in all inputs at once against the vjp: <u, J v> both ways.
    primals = (y, la, b, W)
    tangents = tuple(_randn(*t.shape, seed=41 + i) for i, t in enumerate(primals))
    u = _randn(4, seed=50)
    out, jv = jvp(f, primals, tangents)
    out2, pull = vjp(f, *primals)
    assert torch.equal(out, out2)
    uj = pull(u)
    lhs = (u * jv).sum()
    rhs = sum((a * t).sum() for a, t in zip(uj, tangents, strict=True))
    assert _rel(lhs, torch.as_tensor(rhs)) < 1e-12
    # Second order with forward mode inside and outside: diag(−h''/h'³) in y, and the mixed
    # derivative in the shared weights equal both ways.
    x = f(y, la, b, W)
    _, dh, d2h, _, _, _ = net_closed(x, la, b, W)
    for outer, inner in ((jacrev, jacfwd), (jacfwd, jacrev)):
        hess = outer(inner(lambda yy: f(yy, la, b, W)))(y)
        assert _rel(torch.diagonal(torch.diagonal(hess, 0, 0, 1)), -d2h / dh**3) < 1e-11
    mixed_rf = jacrev(jacfwd(f, argnums=3), argnums=0)(y, la, b, W)
    mixed_fr = jacfwd(jacrev(f, argnums=3), argnums=0)(y, la, b, W)
    mixed_rr = jacrev(jacrev(f, argnums=3), argnums=0)(y, la, b, W)
    assert _rel(mixed_rf, mixed_rr) < 1e-12 and _rel(mixed_fr, mixed_rr) < 1e-12


@pytest.mark.xfail(
    strict=True,
    reason="torch 2.13: forward over forward mode through an autograd.Function with a jvp rule "
    "gives zero higher derivatives (pytorch/pytorch#197867); use jacrev(jacfwd) or jacfwd(jacrev)",
)
def test_forward_over_forward_mode() -> None:
    y, la, b, W = _net_inputs(seed=40, n=4)
    x = _solve(NetMap(), y, (la, b, W))
    _, dh, d2h, _, _, _ = net_closed(x, la, b, W)
    hess = jacfwd(jacfwd(lambda yy: _solve(NetMap(), yy, (la, b, W))))(y)
    assert _rel(torch.diagonal(torch.diagonal(hess, 0, 0, 1)), -d2h / dh**3) < 1e-11


def test_vmap_equals_a_loop() -> None:
    """``vmap`` over a batch of 3: the fold path (shared ``W`` unbatched: one solve, one read),
    the slice-by-slice path (``W`` batched, or a map without ``element_axes``: one read per
    slice), unbatched targets with batched parameters, and ``vmap(grad)``."""
    n = 3
    la, b = _randn(n, 5, seed=60, scale=0.5), _randn(n, 5, seed=61, scale=2.0)
    Wb = _randn(n, K, 3, seed=62)
    y = _randn(n, 5, seed=63, scale=15.0)

    def net(y: Tensor, la: Tensor, b: Tensor, W: Tensor) -> Tensor:
        return _solve(NetMap(), y, (la, b, W))

    def run(fn: Callable[[], Tensor]) -> tuple[Tensor, int]:
        count = StatusCounter()
        with status_check(count):
            out = fn()
        return out, count.calls

    W = Wb[0]
    cases: list[tuple[tuple[int | None, ...], Tensor, int]] = []
    out, reads = run(lambda: vmap(net, in_dims=(0, 0, 0, None))(y, la, b, W))
    cases.append(((0, 0, 0, None), out, reads))
    loop = torch.stack([net(y[i], la[i], b[i], W) for i in range(n)])
    assert reads == 1 and _rel(out, loop) < 1e-14
    out, reads = run(lambda: vmap(net, in_dims=(0, 0, 0, 0))(y, la, b, Wb))
    loop = torch.stack([net(y[i], la[i], b[i], Wb[i]) for i in range(n)])
    assert reads == n and _rel(out, loop) < 1e-14
    out, reads = run(lambda: vmap(net, in_dims=(None, 0, None, None))(y[0], la, b[0], W))
    loop = torch.stack([net(y[0], la[i], b[0], W) for i in range(n)])
    assert reads == 1 and _rel(out, loop) < 1e-14
    # Batched axis not leading in the input.
    out, reads = run(lambda: vmap(net, in_dims=(1, 1, 0, None))(y.T, la.T, b, W))
    loop = torch.stack([net(y[i], la[i], b[i], W) for i in range(n)])
    assert reads == 1 and _rel(out, loop) < 1e-14

    # A map without element_axes: solved one slice at a time.
    c, s = _randn(n, 5, seed=64), 2.0 + torch.rand(n, 5, generator=_gen(65), dtype=DT)
    yb = c + s * torch.tanh(_randn(n, 5, seed=66))

    def bounded(y: Tensor, c: Tensor, s: Tensor) -> Tensor:
        return _solve(BoundedMap(), y, (c, s))

    out, reads = run(lambda: vmap(bounded)(yb, c, s))
    loop = torch.stack([bounded(yb[i], c[i], s[i]) for i in range(n)])
    assert reads == n and _rel(out, loop) < 1e-14
    assert _rel(out, torch.atanh((yb - c) / s)) < 1e-12

    # Per-sample gradients in the shared weights: vmap(grad) against a loop of grads.
    def loss(y: Tensor, la: Tensor, b: Tensor, W: Tensor) -> Tensor:
        return (net(y, la, b, W) ** 2).sum()

    per = vmap(grad(loss, argnums=(1, 3)), in_dims=(0, 0, 0, None))(y, la, b, W)
    for i in range(n):
        ref = grad(loss, argnums=(1, 3))(y[i], la[i], b[i], W)
        assert _rel(per[0][i], ref[0]) < 1e-13 and _rel(per[1][i], ref[1]) < 1e-13


# --- log_derivatives -------------------------------------------------------------------------


def test_log_derivatives() -> None:
    """``(h, log h', h''/h')`` against autograd's double differentiation, the closed form and
    central finite differences; ``log h'`` keeps its graph in the parameters."""
    la, b, W = _net_params(7, seed=70)
    la = la.clone().requires_grad_()
    x = _randn(7, seed=71, scale=2.0)

    def h(u: Tensor) -> Tensor:
        return NetMap().h(u, la, b, W)

    value, log_d, ratio = log_derivatives(h, x)
    xg = x.clone().requires_grad_()
    hx = h(xg)
    (d1,) = torch.autograd.grad(hx.sum(), xg, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), xg)
    assert _rel(value, hx) < 1e-15
    assert _rel(log_d, torch.log(d1)) < 1e-14
    assert _rel(ratio, d2 / d1) < 1e-13
    ref_h, ref_d1, ref_d2, _, _, _ = net_closed(x, la, b, W)
    assert _rel(value, ref_h) < 1e-15
    assert _rel(log_d, torch.log(ref_d1)) < 1e-14 and _rel(ratio, ref_d2 / ref_d1) < 1e-13
    with torch.no_grad():
        e = 1e-4
        hp, h0, hm = h(x + e), h(x), h(x - e)
        fd1, fd2 = (hp - hm) / (2 * e), (hp - 2 * h0 + hm) / e**2
    assert _rel(log_d.detach(), torch.log(fd1)) < 1e-7
    assert _rel(ratio.detach(), fd2 / fd1) < 1e-5
    # log h' is differentiable in ℓ: ∂ log h'/∂ℓ = e^ℓ / h'.
    (g,) = torch.autograd.grad(log_d.sum(), la)
    assert _rel(g, torch.exp(la.detach()) / ref_d1.detach()) < 1e-13


class JumpMap:
    """``h(x) = x + 1e-5·[x > 0.5]``: increasing, with a jump of 1e-5 at 0.5 (the size of the
    jump of zuko's Bernstein polynomial at its bound)."""

    def h(self, x: Tensor) -> Tensor:
        return x + 1e-5 * (x > 0.5).to(x.dtype)


def test_a_jump_across_the_target_raises_instead_of_missing_it() -> None:
    """A target inside the jump has no root: bisection would converge onto the jump and miss
    ``h(x) = y`` by up to 1e-5, silently. The status read says so instead."""
    y_gap = torch.tensor([0.0, 0.5 + 0.5e-5, 2.0], dtype=torch.float64)
    with pytest.raises(BisectionError, match="jumps across the root"):
        implicit_inverse(JumpMap(), y_gap, (), name="jumpy layer")
    # Targets off the jump are solved to rounding.
    y_ok = torch.tensor([0.0, 0.4, 2.0], dtype=torch.float64)
    x = implicit_inverse(JumpMap(), y_ok, ())
    assert float((JumpMap().h(x) - y_ok).abs().max()) <= 1e-12
