"""Rational-quadratic splines (Durkan et al. 2019) with ``log f'`` and ``f''/f'`` in closed form,
and their circular version (Rezende et al. 2020) for angles (``docs/theory.md`` §4.4).

In bin ``k`` with knots ``(x_k, y_k)``, width ``w``, height ``h``, slope ``s = h/w``, knot
derivatives ``δ_k, δ_{k+1}`` and ``ξ = (x − x_k)/w``:

    f(x)   = y_k + h (s ξ² + δ_k ξ(1−ξ)) / D(ξ)
    N(ξ)   = δ_{k+1} ξ² + 2 s ξ(1−ξ) + δ_k (1−ξ)²,    D(ξ) = s + (δ_k + δ_{k+1} − 2s) ξ(1−ξ)
    f'(x)  = s² N / D²
    f''/f' = ∂_x log f' = [N'(ξ)/N − 2 D'(ξ)/D] / w

The inverse solves a quadratic ``a ξ² + b ξ + c = 0`` in ``ξ``, each element by the form of the
root that does not cancel for the sign of its ``b`` (``docs/theory.md`` (4.13)), clamped to
``[0, 1]``. The fast path needs
``f''/f'`` in both directions (the coupling score step of :mod:`.coupling`); no flow library
computes it, which is what kept spline flows off the fast path.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from .transforms import Elementwise, ElementwiseTransform

TWO_PI = 2.0 * math.pi


def _gather(t: Tensor, idx: Tensor) -> Tensor:
    """``t[..., idx]`` for ``t (..., K+1)``, ``idx (...)``: one entry per element."""
    return torch.gather(t, -1, idx.unsqueeze(-1)).squeeze(-1)


def _bin_derivatives(
    xi: Tensor, w: Tensor, s: Tensor, d0: Tensor, d1: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(N, D, log f', f''/f')`` at ``ξ`` of a bin of width ``w``, slope ``s``, knot derivatives
    ``δ_k = d0``, ``δ_{k+1} = d1`` (module doc); all of one shape."""
    one_minus = 1.0 - xi
    c = d0 + d1 - 2.0 * s
    num = d1 * xi * xi + 2.0 * s * xi * one_minus + d0 * one_minus * one_minus
    den = s + c * xi * one_minus
    log_deriv = 2.0 * torch.log(s) + torch.log(num) - 2.0 * torch.log(den)
    d_num = 2.0 * d1 * xi + 2.0 * s * (1.0 - 2.0 * xi) - 2.0 * d0 * one_minus
    d_den = c * (1.0 - 2.0 * xi)
    grad_log_deriv = (d_num / num - 2.0 * d_den / den) / w
    return num, den, log_deriv, grad_log_deriv


def _check_knots(x_knots: Tensor, y_knots: Tensor, derivatives: Tensor) -> None:
    """``ValueError`` unless ``x_knots`` and ``y_knots`` are finite and strictly increasing along
    the last axis and ``derivatives`` finite and positive (one host read per tensor)."""
    tensors = (x_knots, y_knots, derivatives)
    if torch.compiler.is_compiling() or any(
        torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors
    ):
        return  # values cannot be read here (graph break, or vmap's data-dependent control)
    for name, knots in (("x_knots", x_knots), ("y_knots", y_knots)):
        step = knots[..., 1:] - knots[..., :-1]
        if not bool((torch.isfinite(knots).all() & (step > 0).all()).item()):
            raise ValueError(
                f"rational_quadratic: {name} must be finite and strictly increasing along the "
                f"last axis; smallest step {float(step.min())}, "
                f"{int((~torch.isfinite(knots)).sum())} non-finite value(s)"
            )
    if not bool((torch.isfinite(derivatives) & (derivatives > 0)).all().item()):
        raise ValueError(
            "rational_quadratic: derivatives must be finite and positive; smallest "
            f"{float(derivatives.min())}, {int((~torch.isfinite(derivatives)).sum())} "
            "non-finite value(s)"
        )


def rational_quadratic(
    x: Tensor,
    x_knots: Tensor,
    y_knots: Tensor,
    derivatives: Tensor,
    inverse: bool = False,
    *,
    check: bool = True,
) -> Elementwise:
    """The rational-quadratic spline ``f`` through the knots, or its inverse, element-wise.

    Forward: ``out = f(x)``, ``log_deriv = log f'(x)``, ``grad_log_deriv = f''(x)/f'(x)``.
    Inverse (``x`` is then a point ``y`` of the output space): ``out = f^{-1}(y)``,
    ``log_deriv = −log f'(f^{-1}(y))``, ``grad_log_deriv = −(f''/f')/f'`` at ``f^{-1}(y)``
    (``∂_y`` of ``−log f'(f^{-1}(y))``). Outside ``[x_knots[..., 0], x_knots[..., -1]]``
    (inverse: the ``y_knots`` range) the map is the identity, ``log_deriv = grad_log_deriv = 0``.

    Args:
        x: points, shape ``(...)``.
        x_knots, y_knots: increasing knot coordinates, shape ``(..., K+1)`` (broadcast against
            ``x`` on the leading axes).
        derivatives: ``f'`` at the knots, positive, shape ``(..., K+1)``.
        inverse: evaluate ``f^{-1}`` instead of ``f``.
        check: raise ``ValueError`` unless the knots are finite and strictly increasing and the
            derivatives finite and positive (the map is otherwise not a bijection and its
            values are meaningless). This reads a flag back to the host: a device
            synchronisation on a GPU, a graph break under ``torch.compile``. It is skipped
            inside ``torch.compile`` and ``torch.func`` transforms, where values cannot be
            read; the spline flows, whose parametrisation makes valid knots, pass
            ``check=False``.

    Pure tensor code with no data-dependent Python branches: it runs under ``torch.func``
    transforms and ``torch.compile``. Points outside the range are evaluated at the first knot
    and then discarded by ``torch.where``, so the unused branch is finite and contributes
    exactly zero to every gradient (no ``0 · NaN``).
    """
    if not (x_knots.shape == y_knots.shape == derivatives.shape) or x_knots.shape[-1] < 2:
        raise ValueError(
            "expected x_knots, y_knots and derivatives of one shape (..., K+1) with K >= 1, got "
            f"{tuple(x_knots.shape)}, {tuple(y_knots.shape)}, {tuple(derivatives.shape)}"
        )
    if check:
        _check_knots(x_knots, y_knots, derivatives)
    lead = torch.broadcast_shapes(x.shape, x_knots.shape[:-1])  # type: ignore[no-untyped-call]
    n_knots = x_knots.shape[-1]
    x = x.expand(lead)
    x_knots, y_knots, derivatives = (
        t.expand(*lead, n_knots) for t in (x_knots, y_knots, derivatives)
    )
    # The input side of the map: x knots forward, y knots inverse.
    in_knots = y_knots if inverse else x_knots
    inside = (x >= in_knots[..., 0]) & (x <= in_knots[..., -1])
    x_in = torch.where(inside, x, in_knots[..., 0])
    # Bin k holds in_knots[k] <= x < in_knots[k+1]; the last bin also takes its right end.
    idx = torch.searchsorted(
        in_knots[..., 1:-1].contiguous(), x_in.unsqueeze(-1).contiguous(), right=True
    ).squeeze(-1)
    xk, yk = _gather(x_knots, idx), _gather(y_knots, idx)
    w = _gather(x_knots, idx + 1) - xk
    h = _gather(y_knots, idx + 1) - yk
    d0, d1 = _gather(derivatives, idx), _gather(derivatives, idx + 1)
    s = h / w
    if inverse:
        # y − y_k = h (s ξ² + δ_k ξ(1−ξ)) / D(ξ) is the quadratic a ξ² + b ξ + c = 0 with
        dy = x_in - yk
        c_coef = d0 + d1 - 2.0 * s
        a = h * (s - d0) + dy * c_coef
        b = h * d0 - dy * c_coef
        c = -s * dy
        # q(0) = c <= 0 <= q(1) = s (h − dy): a root in [0, 1], simple since q'(ξ) = w f' D > 0
        # there, so b² − 4ac >= 0 in exact arithmetic; the clamp guards the rounding.
        sqrt_disc = torch.sqrt((b * b - 4.0 * a * c).clamp_min(0.0))
        # The root is (−b + √disc)/(2a) = 2c/(−b − √disc). Each form subtracts two numbers of
        # one sign for one sign of b, so take 2c/(−b − √disc) where b >= 0 (its denominator is
        # <= −2|b|, or −√disc at b = 0), and (−b + √disc)/(2a) where b < 0, where a = h s − b
        # > 0 (a + b = h s). The unused form's denominator is replaced by a safe constant, so
        # it is finite and its zero weight in torch.where adds no 0 · inf to the gradients.
        b_pos = b >= 0.0
        den_pos = torch.where(b_pos, -b - sqrt_disc, -1.0)
        den_neg = torch.where(b_pos, 1.0, 2.0 * a)
        xi = torch.where(b_pos, (2.0 * c) / den_pos, (sqrt_disc - b) / den_neg)
        # Rounding can put the root a few ulp outside the bin (at y = y_{k+1}, or where f' is
        # tiny); outside, N or D could turn negative and log f' NaN.
        xi = xi.clamp(0.0, 1.0)
        _, _, log_deriv, grad_log_deriv = _bin_derivatives(xi, w, s, d0, d1)
        out = xk + xi * w
        # d log(1/f'(x(y)))/dy = −(f''/f')(x) · dx/dy = −(f''/f') / f'.
        log_inv, grad_inv = -log_deriv, -grad_log_deriv * torch.exp(-log_deriv)
        zero = torch.zeros_like(x)
        return Elementwise(
            torch.where(inside, out, x),
            torch.where(inside, log_inv, zero),
            torch.where(inside, grad_inv, zero),
        )
    xi = (x_in - xk) / w
    _, den, log_deriv, grad_log_deriv = _bin_derivatives(xi, w, s, d0, d1)
    out = yk + h * (s * xi * xi + d0 * xi * (1.0 - xi)) / den
    zero = torch.zeros_like(x)
    return Elementwise(
        torch.where(inside, out, x),
        torch.where(inside, log_deriv, zero),
        torch.where(inside, grad_log_deriv, zero),
    )


def _knots(raw: Tensor, low: float, high: float, min_size: float) -> Tensor:
    """Knots ``low = t_0 < … < t_K = high`` from ``K`` raw sizes: ``softmax`` with a floor,
    ``size_k = m + (1 − K m) softmax(raw)_k`` of the whole range. Shape ``(..., K+1)``; the end
    knots are exact (not a rounded cumulative sum)."""
    n_bins = raw.shape[-1]
    sizes = min_size + (1.0 - min_size * n_bins) * torch.softmax(raw, dim=-1)
    inner = torch.cumsum(sizes, dim=-1)[..., :-1]
    span = high - low
    ends = raw.new_zeros(*raw.shape[:-1], 1)
    return torch.cat([ends + low, low + span * inner, ends + high], dim=-1)


def _real(name: str, value: object) -> float:
    """``value`` as a finite float, or ``TypeError`` / ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name}: expected a finite number, got {out}")
    return out


class _SplineParams:
    """The parametrisation shared by both spline transforms: bin sizes by a floored softmax
    (:func:`_knots`), knot derivatives by a floored softplus, or, with ``max_derivative``, by a
    sigmoid between the two bounds. Validates every option with a message naming it."""

    bins: int
    min_bin_width: float
    min_bin_height: float
    min_derivative: float
    max_derivative: float | None
    _shift: float

    def __init__(
        self,
        bins: int,
        min_bins: int,
        min_bin_width: float,
        min_bin_height: float,
        min_derivative: float,
        max_derivative: float | None,
    ) -> None:
        if isinstance(bins, bool) or not isinstance(bins, numbers.Integral):
            raise TypeError(f"bins: expected an int, got {type(bins).__name__} {bins!r}")
        if bins < min_bins:
            raise ValueError(f"bins must be >= {min_bins}, got {bins}")
        self.bins = int(bins)
        for name, value in (("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height)):
            # > 0: a zero floor lets a bin's size underflow to 0 (division by w or h).
            if not 0.0 < _real(name, value) * self.bins < 1.0:
                raise ValueError(
                    f"{name} · bins must lie in (0, 1), got {value} · {self.bins}: each of the "
                    "bins takes at least this fraction of the range"
                )
        # (0, 1): δ > 0 always (log N(ξ) at a knot is log δ), and raw 0 ↦ δ = 1 needs δ_min < 1.
        if not 0.0 < _real("min_derivative", min_derivative) < 1.0:
            raise ValueError(f"min_derivative must lie in (0, 1), got {min_derivative}")
        self.min_bin_width = float(min_bin_width)
        self.min_bin_height = float(min_bin_height)
        self.min_derivative = float(min_derivative)
        self.max_derivative = None
        if max_derivative is None:
            # softplus(raw + shift) + min_derivative = 1 at raw = 0: zero parameters, unit slopes.
            self._shift = math.log(math.expm1(1.0 - self.min_derivative))
        else:
            if not _real("max_derivative", max_derivative) > 1.0:
                raise ValueError(f"max_derivative must be > 1 (or None), got {max_derivative}")
            self.max_derivative = float(max_derivative)
            # δ_min + (δ_max − δ_min) σ(raw + shift) = 1 at raw = 0.
            self._shift = math.log((1.0 - self.min_derivative) / (self.max_derivative - 1.0))

    def derivative(self, raw: Tensor) -> Tensor:
        """``δ = δ_min + softplus(raw + c)``, or with ``max_derivative``
        ``δ = δ_min + (δ_max − δ_min) σ(raw + c)``; ``c`` such that ``raw = 0`` gives ``δ = 1``.
        Shape of ``raw``."""
        if self.max_derivative is None:
            return self.min_derivative + torch.nn.functional.softplus(raw + self._shift)
        span = self.max_derivative - self.min_derivative
        return self.min_derivative + span * torch.sigmoid(raw + self._shift)

    def unpack(self, p: Tensor, n_params: int) -> Tensor:
        """``p (N, n_params, n)`` as ``(N, n, n_params)``: one spline's numbers on the last axis."""
        if p.dim() != 3 or p.shape[1] != n_params:
            raise ValueError(
                f"expected parameters of shape (N, {n_params}, n), got {tuple(p.shape)}"
            )
        return p.movedim(1, -1)


class RationalQuadraticSpline(ElementwiseTransform):
    """``K = bins`` rational-quadratic bins on ``[−B, B]``, the identity outside.

    ``p`` of shape ``(N, 3K − 1, n)`` for ``a`` of shape ``(N, n)``: ``p[:, :K]`` softmax logits of
    the bin widths, ``p[:, K:2K]`` those of the heights (each bin at least ``min_bin_width``,
    ``min_bin_height`` of ``2B``), ``p[:, 2K:]`` the ``K − 1`` interior knot derivatives
    ``δ = δ_min + softplus(raw + c)`` with ``raw = 0 ↦ δ = 1`` (the default), or, with
    ``max_derivative = δ_max``, ``δ = δ_min + (δ_max − δ_min) σ(raw + c)``, bounded on both
    sides (``docs/theory.md`` §4.4 says why the default stays unbounded above). The boundary
    derivatives are 1, so the identity tails join with a continuous ``f'``. All-zero parameters
    give the identity. ``bins >= 2``: one bin with unit end derivatives is always the identity.
    """

    def __init__(
        self,
        bins: int = 8,
        bound: float = 5.0,
        min_bin_width: float = 1e-3,
        min_bin_height: float = 1e-3,
        min_derivative: float = 1e-3,
        *,
        max_derivative: float | None = None,
    ) -> None:
        if not _real("bound", bound) > 0.0:
            raise ValueError(f"bound must be > 0, got {bound}")
        self.params = _SplineParams(
            bins, 2, min_bin_width, min_bin_height, min_derivative, max_derivative
        )
        self.bound = float(bound)
        self.n_params = 3 * self.bins - 1

    @property
    def bins(self) -> int:
        """The number of bins ``K``."""
        return self.params.bins

    def knots(self, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(x_knots, y_knots, derivatives)``, each ``(N, n, K+1)``, from ``p (N, 3K−1, n)``."""
        q = self.params.unpack(p, self.n_params)
        K, B = self.bins, self.bound
        pr = self.params
        x_knots = _knots(q[..., :K], -B, B, pr.min_bin_width)
        y_knots = _knots(q[..., K : 2 * K], -B, B, pr.min_bin_height)
        ones = q.new_ones(*q.shape[:-1], 1)
        derivatives = torch.cat([ones, pr.derivative(q[..., 2 * K :]), ones], dim=-1)
        return x_knots, y_knots, derivatives

    # The parametrisation makes valid knots: no check, so no host read on the hot path.
    def forward(self, a: Tensor, p: Tensor) -> Elementwise:
        return rational_quadratic(a, *self.knots(p), check=False)

    def inverse(self, a: Tensor, p: Tensor) -> Elementwise:
        return rational_quadratic(a, *self.knots(p), inverse=True, check=False)


class CircularSpline(ElementwiseTransform):
    """A diffeomorphism of the circle: ``f(θ) = (g(θ mod 2π) + ρ) mod 2π`` with ``g`` a
    rational-quadratic spline of ``[0, 2π]`` onto itself whose end derivatives agree,
    ``δ_0 = δ_K`` (so ``f'`` is continuous on the circle), and ``ρ`` an optional rotation.

    ``p`` of shape ``(N, n_params, n)``: ``p[:, :K]`` width logits, ``p[:, K:2K]`` height
    logits, ``p[:, 2K:3K]`` the ``K`` knot derivatives ``δ_0 … δ_{K−1}`` (``δ_K = δ_0``) as in
    :class:`RationalQuadraticSpline` (softplus, or bounded with ``max_derivative``), and with
    ``rotation=True`` ``p[:, 3K]`` the rotation angle ``ρ`` itself (radians, unconstrained: only
    ``ρ mod 2π`` matters). ``n_params = 3K (+ 1)``, ``bins >= 1``. All-zero parameters give the
    identity. Outputs lie in ``[0, 2π)``; the rotation and the reductions mod 2π change no
    derivative, so ``log f'`` and ``f''/f'`` are those of ``g``.
    """

    def __init__(
        self,
        bins: int = 8,
        rotation: bool = True,
        min_bin_width: float = 1e-3,
        min_bin_height: float = 1e-3,
        min_derivative: float = 1e-3,
        *,
        max_derivative: float | None = None,
    ) -> None:
        if not isinstance(rotation, bool):
            raise TypeError(f"rotation: expected a bool, got {type(rotation).__name__}")
        # One bin is a real map here: its end derivative δ_0 = δ_1 is free.
        self.params = _SplineParams(
            bins, 1, min_bin_width, min_bin_height, min_derivative, max_derivative
        )
        self.rotation = rotation
        self.n_params = 3 * self.bins + (1 if rotation else 0)

    @property
    def bins(self) -> int:
        """The number of bins ``K``."""
        return self.params.bins

    def knots(self, p: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``(x_knots, y_knots, derivatives, ρ or None)``; knots ``(N, n, K+1)``, ``ρ (N, n)``."""
        q = self.params.unpack(p, self.n_params)
        K, pr = self.bins, self.params
        x_knots = _knots(q[..., :K], 0.0, TWO_PI, pr.min_bin_width)
        y_knots = _knots(q[..., K : 2 * K], 0.0, TWO_PI, pr.min_bin_height)
        delta = pr.derivative(q[..., 2 * K : 3 * K])
        derivatives = torch.cat([delta, delta[..., :1]], dim=-1)
        rho = q[..., 3 * K] if self.rotation else None
        return x_knots, y_knots, derivatives, rho

    def forward(self, a: Tensor, p: Tensor) -> Elementwise:
        x_knots, y_knots, derivatives, rho = self.knots(p)
        res = rational_quadratic(
            torch.remainder(a, TWO_PI), x_knots, y_knots, derivatives, check=False
        )
        out = res.out if rho is None else res.out + rho
        return Elementwise(torch.remainder(out, TWO_PI), res.log_deriv, res.grad_log_deriv)

    def inverse(self, a: Tensor, p: Tensor) -> Elementwise:
        x_knots, y_knots, derivatives, rho = self.knots(p)
        y = torch.remainder(a if rho is None else a - rho, TWO_PI)
        res = rational_quadratic(y, x_knots, y_knots, derivatives, inverse=True, check=False)
        return Elementwise(torch.remainder(res.out, TWO_PI), res.log_deriv, res.grad_log_deriv)
