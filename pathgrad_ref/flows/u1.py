"""Gauge-equivariant coupling flow for 2D U(1) lattice gauge theory (``docs/theory.md`` §4.3, §7.3).

Links ``θ_μ(x) ∈ [0, 2π)`` form an event of shape ``(2, L, L)``: event axis 0 is the direction
``μ``, and ``μ̂`` shifts lattice axis ``μ`` (event axis ``1 + μ``). The plaquette is

    P(x) = θ_0(x) + θ_1(x + 0̂) − θ_0(x + 1̂) − θ_1(x).

Coupling layer ``i`` (Kanwar et al. 2020 masks): ``μ = i mod 2``, ``ν = 1 − μ``,
``o = ⌊i/2⌋ mod 4``. The *active* links are ``θ_μ(x)`` with ``x_ν ≡ o (mod 4)``. Each enters one
plaquette with sign ``+`` (its *active* plaquette: ``P(x)`` for ``μ = 0``, ``P(x − 0̂)`` for
``μ = 1``), which holds no other active link, and one with sign ``−`` (*passive*). Plaquettes in
rows ``x_ν ≡ o + 1, o + 2`` hold no active link (*frozen*) and condition the layer.

The layer is a :class:`~pathgrad_ref.flows.coupling.Coupling` in link space: with ``a`` the
active links, ``b`` all others and ``r(b)`` the active plaquette with its active link set to 0,

    P = a + r,     a' = a + h(P) − P  (mod 2π),

so the active plaquette becomes ``h(P)``, ``f'(a) = h'(P)`` and ``∂_a log f' = h''(P)/h'(P)``.
``h`` is a mixture of tan transforms, a diffeomorphism of the circle conditioned on the frozen
plaquettes, which are gauge invariant: the layer commutes with gauge transformations. The
fast-path score step of :class:`Coupling` applies unchanged; the inverse solves ``h(P) = P'``
by bisection with implicit-function-theorem gradients (:mod:`.implicit`). With
``transform="circular-spline"`` ``h`` is instead a circular rational-quadratic spline
(:class:`~pathgrad_ref.flows.splines.CircularSpline`), whose inverse is closed form: no bisection.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..distributions import Uniform
from .base import Flow, Layer
from .coupling import Coupling
from .implicit import implicit_inverse
from .splines import CircularSpline
from .transforms import Elementwise, ElementwiseTransform

TWO_PI = 2.0 * math.pi
U1_TRANSFORMS = ("tan-mixture", "circular-spline")


def _plaquette(links: Tensor) -> Tensor:
    """``P(x) = θ_0(x) + θ_1(x+0̂) − θ_0(x+1̂) − θ_1(x)``: ``(N, 2, L, L) -> (N, L, L)``.

    Not wrapped to ``[0, 2π)``. ``θ(x + μ̂)`` is ``roll(θ, −1)`` along lattice axis ``μ``."""
    t0, t1 = links[:, 0], links[:, 1]
    return t0 + torch.roll(t1, -1, dims=1) - torch.roll(t0, -1, dims=2) - t1


def u1_masks(L: int, index: int) -> tuple[Tensor, Tensor, Tensor]:
    """Masks of coupling layer ``index`` on an ``L × L`` lattice (``L`` divisible by 4).

    Returns:
        ``links`` (bool ``(2, L, L)``, the active links), ``active_plaquette`` (long
        ``(n_active,)``, the flat index ``x_0·L + x_1`` of each active link's active plaquette,
        in the row-major order of the active links) and ``frozen`` (bool ``(L, L)``, the
        plaquettes that hold no active link).
    """
    if L < 4 or L % 4 != 0:
        raise ValueError(f"the U(1) coupling masks need L divisible by 4, got L={L}")
    if index < 0:
        raise ValueError(f"layer index must be >= 0, got {index}")
    mu, offset = index % 2, (index // 2) % 4
    nu = 1 - mu
    coords = torch.arange(L)
    row = coords.view(L, 1) if nu == 0 else coords.view(1, L)  # x_ν on the (L, L) grid
    row = row.expand(L, L)
    links = torch.zeros(2, L, L, dtype=torch.bool)
    links[mu] = row % 4 == offset
    frozen = ((row - offset) % 4 == 1) | ((row - offset) % 4 == 2)
    x0, x1 = torch.nonzero(links[mu], as_tuple=True)
    # θ_0(x) is +1 in P(x); θ_1(x) is +1 in P(x − 0̂) (as θ_1(y + 0̂) with y = x − 0̂).
    if mu == 1:
        x0 = (x0 - 1) % L
    active_plaquette = x0 * L + x1
    return links, active_plaquette, frozen


class TanMixture:
    """Mixture of tan transforms ("non-compact projection"), a diffeomorphism of the circle:

        h(θ) = θ + Σ_k w_k D_k(θ − β_k),
        D_k(φ) = T_{α_k}(φ) − φ = 2·atan2((α_k − 1) sin φ, (1 + α_k) + (1 − α_k) cos φ),

    where ``T_α(φ) = 2·atan(α tan(φ/2))`` on ``(−π, π)``. ``D_k`` is smooth and 2π-periodic
    (its denominator is ``>= 2 min(1, α_k) > 0``), so ``h(θ + 2π) = h(θ) + 2π``, ``h`` is
    increasing on all of ``R`` and ``|h(θ) − θ| < π``: no wrapping and no ``tan`` are needed.
    ``h' = Σ_k w_k T'_k``, ``T'(φ) = 2α / ((1+α²) + (1−α²) cos φ)``, and
    ``T''(φ) = 2α(1−α²) sin φ / ((1+α²) + (1−α²) cos φ)²``.

    Parameters ``q`` of shape ``(3K, *S)`` for angles of shape ``S``: ``q[:K]`` softmax logits of
    ``w``, ``q[K:2K]`` raw ``α = α_min + (1 − α_min)·exp(raw)`` (``α = 1``, the identity, at
    ``raw = 0``), ``q[2K:]`` the shifts ``β``. Implements
    :class:`~pathgrad_ref.flows.implicit.MonotoneFamily`, with its optional
    ``max_bracket_width`` (``2π``) and ``prepare`` (the softmax and exp once per solve).
    """

    # The brackets (y − π, y + π) are 2π wide: bisection's step count needs no device read.
    max_bracket_width = TWO_PI
    # ``q`` is ``(3K, *S)``: a vmapped axis of the angles enters it at axis 1.
    element_axes = (1,)

    def __init__(self, n_mixture: int, alpha_min: float = 1e-3) -> None:
        if n_mixture < 1:
            raise ValueError(f"n_mixture must be >= 1, got {n_mixture}")
        if not 0.0 <= alpha_min < 1.0:
            raise ValueError(f"alpha_min must lie in [0, 1), got {alpha_min}")
        self.n_mixture = n_mixture
        self.alpha_min = float(alpha_min)

    @property
    def n_params(self) -> int:
        return 3 * self.n_mixture

    def _unpack(self, theta: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(w, α, φ = θ − β, α − α_min)``, each ``(K, *S)``."""
        K = self.n_mixture
        if q.shape[0] != 3 * K:
            raise ValueError(f"expected {3 * K} mixture parameters on axis 0, got {q.shape[0]}")
        w = torch.softmax(q[:K], dim=0)
        e = (1.0 - self.alpha_min) * torch.exp(q[K : 2 * K])
        return w, self.alpha_min + e, theta.unsqueeze(0) - q[2 * K :], e

    @staticmethod
    def _den(alpha: Tensor, cos: Tensor) -> Tensor:
        # (1+α²) + (1−α²) cos φ >= 2 min(1, α²) > 0.
        return (1.0 + alpha * alpha) + (1.0 - alpha * alpha) * cos

    def shift(self, theta: Tensor, q: Tensor) -> Tensor:
        """``h(θ) − θ = Σ_k w_k D_k(θ − β_k) ∈ (−π, π)``, shape ``S``."""
        w, alpha, phi, _ = self._unpack(theta, q)
        d = 2.0 * torch.atan2(
            (alpha - 1.0) * torch.sin(phi), (1.0 + alpha) + (1.0 - alpha) * torch.cos(phi)
        )
        return (w * d).sum(0)

    def h(self, x: Tensor, p: Tensor) -> Tensor:
        """``h(x)``, shape ``S``."""
        return x + self.shift(x, p)

    def prepare(self, p: Tensor) -> Callable[[Tensor], Tensor]:
        """``x ↦ h(x; p)`` with ``w = softmax``, ``α`` and the coefficients of ``D_k`` computed
        once, for the many evaluations at one ``p`` in a bisection. Same operations in the
        same order as :meth:`h`, hence the same values, bit for bit."""
        w, alpha, _, _ = self._unpack(p.new_zeros(p.shape[1:]), p)
        beta = p[2 * self.n_mixture :]
        sin_coef, cos_add, cos_coef = alpha - 1.0, 1.0 + alpha, 1.0 - alpha

        def h(x: Tensor) -> Tensor:
            phi = x.unsqueeze(0) - beta
            d = 2.0 * torch.atan2(sin_coef * torch.sin(phi), cos_add + cos_coef * torch.cos(phi))
            return x + (w * d).sum(0)

        return h

    def dh_dx(self, x: Tensor, p: Tensor) -> Tensor:
        """``h'(x) = Σ_k w_k T'_k(x − β_k) > 0``, shape ``S``."""
        w, alpha, phi, _ = self._unpack(x, p)
        return (w * (2.0 * alpha / self._den(alpha, torch.cos(phi)))).sum(0)

    def derivatives(self, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(h(x) − x, h'(x), h''(x))``, each of shape ``S``."""
        w, alpha, phi, _ = self._unpack(x, p)
        sin, cos = torch.sin(phi), torch.cos(phi)
        d = 2.0 * torch.atan2((alpha - 1.0) * sin, (1.0 + alpha) + (1.0 - alpha) * cos)
        den = self._den(alpha, cos)
        t1 = 2.0 * alpha / den
        t2 = t1 * (1.0 - alpha * alpha) * sin / den
        return (w * d).sum(0), (w * t1).sum(0), (w * t2).sum(0)

    def dh_dp(self, x: Tensor, p: Tensor) -> Tensor:
        """``∂h/∂q``, shape ``(3K, *S)``, from

        ``∂h/∂logit_j = w_j (D_j − Σ_k w_k D_k)``, ``∂h/∂raw_k = w_k (α_k − α_min) ∂D/∂α``
        with ``∂D/∂α = 2 sin φ / ((1+α²) + (1−α²) cos φ)``, and ``∂h/∂β_k = −w_k (T'_k − 1)``.
        """
        w, alpha, phi, e = self._unpack(x, p)
        sin, cos = torch.sin(phi), torch.cos(phi)
        d = 2.0 * torch.atan2((alpha - 1.0) * sin, (1.0 + alpha) + (1.0 - alpha) * cos)
        den = self._den(alpha, cos)
        d_logit = w * (d - (w * d).sum(0, keepdim=True))
        d_raw = w * e * (2.0 * sin / den)
        # T' − 1 = −(1−α)((1−α) + (1+α) cos φ) / den, written without cancellation near α = 1.
        d_beta = w * (1.0 - alpha) * ((1.0 - alpha) + (1.0 + alpha) * cos) / den
        return torch.cat([d_logit, d_raw, d_beta], dim=0)

    def bracket(self, y: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        """``(y − π, y + π)``: ``|h(x) − x| < π`` puts the root ``h^{-1}(y)`` strictly inside."""
        return y - math.pi, y + math.pi


class PlaquetteTransform(ElementwiseTransform):
    """``f(a; r, q) = a + h(a + r; q) − (a + r)  (mod 2π)`` on active links ``a``, shape ``(N, n)``.

    ``p`` has shape ``(N, 1 + 3K, n)``: ``p[:, 0] = r``, the rest the :class:`TanMixture`
    parameters. Forward: ``log f' = log h'(P)``, ``∂_a log f' = h''(P)/h'(P)``, ``P = a + r``.
    Inverse: ``P = h^{-1}(a' + r)`` by bisection (implicit gradients), ``a = P − r (mod 2π)``,
    ``log`` of its derivative ``−log h'(P)``, ``∂_{a'}`` of that ``−h''(P)/h'(P)²``. Reduction mod
    2π has derivative 1, so it changes no derivative.
    """

    def __init__(
        self, n_mixture: int, alpha_min: float = 1e-3, tol: float | None = None, max_iter: int = 200
    ) -> None:
        self.mixture = TanMixture(n_mixture, alpha_min)
        self.n_params = 1 + self.mixture.n_params
        self.tol = tol
        self.max_iter = max_iter

    def _split(self, a: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        if p.shape[1] != self.n_params:
            raise ValueError(f"expected {self.n_params} parameters on axis 1, got {p.shape[1]}")
        return p[:, 0], p[:, 1:].movedim(1, 0)

    def forward(self, a: Tensor, p: Tensor) -> Elementwise:
        r, q = self._split(a, p)
        shift, dh, d2h = self.mixture.derivatives(a + r, q)
        out = torch.remainder(a + shift, TWO_PI)
        return Elementwise(out, torch.log(dh), d2h / dh)

    def inverse(self, a: Tensor, p: Tensor) -> Elementwise:
        r, q = self._split(a, p)
        plaq = implicit_inverse(self.mixture, a + r, q, self.tol, self.max_iter)
        _, dh, d2h = self.mixture.derivatives(plaq, q)
        out = torch.remainder(plaq - r, TWO_PI)
        return Elementwise(out, -torch.log(dh), -d2h / (dh * dh))


class CircularPlaquetteTransform(ElementwiseTransform):
    """``f(a; r, q) = (h(a + r; q) − r) mod 2π`` with ``h`` a circular spline
    (:class:`~pathgrad_ref.flows.splines.CircularSpline`, which wraps ``P = a + r`` into
    ``[0, 2π)`` itself): the active plaquette ``P`` becomes ``h(P)``.

    ``p`` has shape ``(N, 1 + n_spline, n)``: ``p[:, 0] = r``, the rest the spline parameters.
    Forward: ``log f' = log h'(P)``, ``∂_a log f' = h''(P)/h'(P)``. Inverse: ``P = h^{-1}(a' + r)``
    in closed form, ``a = (P − r) mod 2π``, with the spline's inverse log-derivative and its
    gradient. The shift by ``r`` and the reductions mod 2π change no derivative.
    """

    def __init__(self, bins: int = 8, rotation: bool = True) -> None:
        self.spline = CircularSpline(bins, rotation=rotation)
        self.n_params = 1 + self.spline.n_params

    def _split(self, p: Tensor) -> tuple[Tensor, Tensor]:
        if p.shape[1] != self.n_params:
            raise ValueError(f"expected {self.n_params} parameters on axis 1, got {p.shape[1]}")
        return p[:, 0], p[:, 1:]

    def forward(self, a: Tensor, p: Tensor) -> Elementwise:
        r, q = self._split(p)
        res = self.spline.forward(a + r, q)
        return Elementwise(torch.remainder(res.out - r, TWO_PI), res.log_deriv, res.grad_log_deriv)

    def inverse(self, a: Tensor, p: Tensor) -> Elementwise:
        r, q = self._split(p)
        res = self.spline.inverse(a + r, q)
        return Elementwise(torch.remainder(res.out - r, TWO_PI), res.log_deriv, res.grad_log_deriv)


class U1Conditioner(nn.Module):
    """``(N, n_passive) -> (N, 1 + C, n_active)``: ``r`` and ``C`` transform parameters (``C = 3K``
    mixture parameters, or ``n_channels`` when given, e.g. a circular spline's).

    Rebuilds the link field with zeros on the active links, so that the plaquettes give ``r``
    at the active plaquettes and the true values at the frozen ones; ``(cos P, sin P)`` of the
    frozen plaquettes (zeros elsewhere) go through a periodic conv net whose ``C`` output
    channels at each active plaquette site are that active link's transform parameters.
    """

    unpermute: Tensor
    active_plaquette: Tensor
    frozen: Tensor

    def __init__(
        self,
        L: int,
        index: int,
        n_mixture: int = 6,
        hidden: Sequence[int] = (8, 8),
        kernel_size: int = 3,
        activation: type[nn.Module] = nn.Tanh,
        zero_init: bool = True,
        n_channels: int | None = None,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        links, active_plaquette, frozen = u1_masks(L, index)
        self.L = L
        flat = links.reshape(-1)
        self.n_active = int(flat.sum())
        # Same ordering as Coupling: active sites, then passive ones, each row-major.
        order = torch.cat([torch.nonzero(flat).flatten(), torch.nonzero(~flat).flatten()])
        self.register_buffer("unpermute", torch.argsort(order), persistent=False)
        self.register_buffer("active_plaquette", active_plaquette, persistent=False)
        self.register_buffer("frozen", frozen.to(torch.get_default_dtype()), persistent=False)
        sizes = [2, *hidden, 3 * n_mixture if n_channels is None else n_channels]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(itertools.pairwise(sizes)):
            layers.append(
                nn.Conv2d(
                    c_in, c_out, kernel_size, padding=kernel_size // 2, padding_mode="circular"
                )
            )
            if i < len(sizes) - 2:
                layers.append(activation())
        self.net = nn.Sequential(*layers)
        if zero_init:
            last = layers[-1]
            assert isinstance(last, nn.Conv2d)
            with torch.no_grad():
                last.weight.zero_()
                if last.bias is not None:
                    last.bias.zero_()

    def forward(self, b: Tensor) -> Tensor:
        n = b.shape[0]
        # A gather with a fixed index, not an in-place scatter: torch.func transforms apply.
        links = torch.cat([b.new_zeros(n, self.n_active), b], dim=1)[:, self.unpermute]
        plaq = _plaquette(links.reshape(n, 2, self.L, self.L))
        r = plaq.flatten(1)[:, self.active_plaquette]
        feats = torch.stack([torch.cos(plaq), torch.sin(plaq)], dim=1) * self.frozen
        out: Tensor = self.net(feats)
        params = out.flatten(2)[:, :, self.active_plaquette]
        return torch.cat([r.unsqueeze(1), params], dim=1)


class U1Coupling(Coupling):
    """Gauge-equivariant coupling layer ``index`` on ``(N, 2, L, L)`` links (see module doc).

    Args:
        L: lattice size, divisible by 4.
        index: layer index; sets the direction ``μ = index mod 2`` and offset
            ``⌊index/2⌋ mod 4`` of the masks.
        n_mixture: number ``K`` of tan transforms.
        hidden: conv hidden channels.
        kernel_size: odd conv kernel size (circular padding).
        zero_init: zero the last conv layer, so that the layer starts as the identity.
        alpha_min: floor of the tan-transform slopes ``α``.
        tol, max_iter: bisection tolerance and iteration bound of the inverse
            (see :func:`~pathgrad_ref.flows.implicit.implicit_inverse`).
        transform: ``"tan-mixture"`` (:class:`PlaquetteTransform`, the paper's) or
            ``"circular-spline"`` (:class:`CircularPlaquetteTransform`: closed-form inverse;
            ``n_mixture``, ``alpha_min``, ``tol`` and ``max_iter`` then play no part).
        bins, rotation: the circular spline's bins and whether it ends with a rotation.
    """

    transform: PlaquetteTransform | CircularPlaquetteTransform

    def __init__(
        self,
        L: int,
        index: int,
        n_mixture: int = 6,
        hidden: Sequence[int] = (8, 8),
        kernel_size: int = 3,
        zero_init: bool = True,
        alpha_min: float = 1e-3,
        tol: float | None = None,
        max_iter: int = 200,
        transform: str = "tan-mixture",
        bins: int = 8,
        rotation: bool = True,
    ) -> None:
        links, _, _ = u1_masks(L, index)
        plaquette_map: PlaquetteTransform | CircularPlaquetteTransform
        if transform == "tan-mixture":
            plaquette_map = PlaquetteTransform(n_mixture, alpha_min, tol, max_iter)
        elif transform == "circular-spline":
            plaquette_map = CircularPlaquetteTransform(bins, rotation)
        else:
            raise ValueError(
                f"unknown U(1) transform {transform!r}; expected one of {U1_TRANSFORMS}"
            )
        conditioner = U1Conditioner(
            L,
            index,
            n_mixture,
            hidden,
            kernel_size,
            zero_init=zero_init,
            n_channels=plaquette_map.n_params - 1,
        )
        super().__init__(links, conditioner, plaquette_map)
        self.index = index
        if not torch.equal(conditioner.unpermute, self.unpermute):
            raise AssertionError("conditioner and coupling disagree on the link ordering")


def u1_flow(
    L: int,
    n_layers: int = 24,
    n_mixture: int = 6,
    hidden: Sequence[int] = (8, 8),
    kernel_size: int = 3,
    zero_init: bool = True,
    alpha_min: float = 1e-3,
    tol: float | None = None,
    max_iter: int = 200,
    transform: str = "tan-mixture",
    bins: int = 8,
    rotation: bool = True,
) -> Flow:
    """The U(1) flow (``docs/theory.md`` §7.3): ``n_layers`` gauge-equivariant couplings
    ``U1Coupling(L, i)``, ``i = 0, …, n_layers − 1``, over the uniform base on
    ``[0, 2π)^{2×L×L}``; events ``(N, 2, L, L)``. Defaults *(from the authors' public code)*:
    24 layers, 6 tan transforms, conv channels ``[8, 8]``, kernel 3. ``transform=
    "circular-spline"`` puts circular splines of ``bins`` bins (and a rotation) on the
    plaquettes instead of tan mixtures: explicitly invertible, no bisection (``docs/theory.md``
    §4.4)."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    layers: list[Layer] = [
        U1Coupling(
            L,
            i,
            n_mixture,
            hidden,
            kernel_size,
            zero_init,
            alpha_min,
            tol,
            max_iter,
            transform=transform,
            bins=bins,
            rotation=rotation,
        )
        for i in range(n_layers)
    ]
    return Flow(Uniform((2, L, L), 0.0, TWO_PI), layers)
