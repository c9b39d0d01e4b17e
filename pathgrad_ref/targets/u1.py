"""Compact U(1) lattice gauge theory in two dimensions and its exact finite-volume results.

Links ``U_μ(x) = exp(iθ_μ(x))`` live on a periodic ``L × L`` lattice; batches of link angles
have shape ``(N, 2, L, L)``: axis 1 is the direction ``μ ∈ {0, 1}``, axes 2 and 3 are the site
``x = (x0, x1)``, and ``x + μ̂`` shifts axis ``2 + μ`` by one (periodically).

Exact results (``docs/theory.md`` §7.3) come from the character expansion
``e^{β cos P} = Σ_n I_n(β) e^{inP}``. Integrating every link over the Haar measure ``dθ/2π``
ties all ``V = L²`` plaquette representations to one common ``n`` (each link sits in two
plaquettes with opposite signs), so

    Z_Haar(β) = ∫ Π_links dθ/(2π) e^{−S(θ)} = Σ_{n ∈ ℤ} I_n(β)^V.

The sums are evaluated in log space with ``e^{β}`` pulled out of every ``I_n``; the modified
Bessel functions come from :func:`log_bessel_ie`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from .base import Target

__all__ = [
    "U1Gauge",
    "exact_average_plaquette",
    "exact_log_z",
    "exact_topological_susceptibility",
    "log_bessel_ie",
]

_TWO_PI = 2.0 * math.pi

# Terms of the representation sums are dropped once they fall below this fraction of the
# n = 0 term: that is below the float64 resolution of every sum they enter.
_TERM_RTOL = 1e-17


def _check_lattice(L: int, beta: float) -> tuple[int, float]:
    if isinstance(L, bool):
        raise ValueError(f"U(1): L must be an integer >= 1, got {L!r}")
    try:
        size = operator.index(L)
    except TypeError:
        raise ValueError(f"U(1): L must be an integer >= 1, got {L!r}") from None
    if size < 1:
        raise ValueError(f"U(1): L must be an integer >= 1, got {size}")
    try:
        coupling = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"U(1): beta must be a finite real number, got {beta!r}") from None
    if not math.isfinite(coupling):
        raise ValueError(f"U(1): beta must be a finite real number, got {coupling}")
    return size, coupling


def _check_exact(L: int, beta: float) -> tuple[int, float]:
    size, coupling = _check_lattice(L, beta)
    if coupling < 0:
        # For β < 0 the I_n(β) = (−1)^n I_n(|β|) alternate in sign and the sums cancel.
        raise ValueError(f"U(1) exact results are implemented for beta >= 0, got {coupling}")
    return size, coupling


class U1Gauge(Target):
    """``S(θ) = −β Σ_x cos P(x)``, ``P(x) = θ_0(x) + θ_1(x+0̂) − θ_0(x+1̂) − θ_1(x)``
    (``docs/theory.md`` §7.3).

    Batches of link angles ``θ`` have shape ``(N, 2, L, L)`` (see the module docstring); any
    real angles are accepted, the action is ``2π``-periodic in every link. Each link sits in
    two plaquettes with opposite signs, which gives the force

        ∂S/∂θ_0(x) = β [sin P(x) − sin P(x−1̂)],
        ∂S/∂θ_1(x) = β [sin P(x−0̂) − sin P(x)].

    ``log_z`` stays ``None`` (the flows never need it); :meth:`exact_log_z` gives it with an
    explicit measure convention, see :func:`exact_log_z`.
    """

    log_z: float | None = None

    def __init__(self, L: int, beta: float) -> None:
        self.L, self.beta = _check_lattice(L, beta)
        self.event_shape = (2, self.L, self.L)

    @property
    def volume(self) -> int:
        """``V = L²``, the number of sites (and of plaquettes)."""
        return self.L * self.L

    def _check(self, theta: Tensor) -> None:
        if theta.dim() != 4 or tuple(theta.shape[1:]) != self.event_shape:
            raise ValueError(
                f"U1Gauge: expected links of shape (N, 2, {self.L}, {self.L}), "
                f"got {tuple(theta.shape)}"
            )

    def plaquette(self, theta: Tensor) -> Tensor:
        """``P(x) = θ_0(x) + θ_1(x+0̂) − θ_0(x+1̂) − θ_1(x)``, not wrapped.

        Shapes ``(N, 2, L, L) → (N, L, L)``.
        """
        self._check(theta)
        t0, t1 = theta[:, 0], theta[:, 1]
        # On (N, L, L) direction μ is axis 1 + μ; roll by −1 reads the neighbour at x + μ̂.
        return t0 + torch.roll(t1, -1, dims=1) - torch.roll(t0, -1, dims=2) - t1

    def action(self, theta: Tensor) -> Tensor:
        """``S = −β Σ_x cos P(x)``, shape ``(N,)``."""
        return -self.beta * torch.cos(self.plaquette(theta)).sum(dim=(1, 2))

    def force(self, theta: Tensor) -> Tensor:
        """``∇_θ S``, shape ``(N, 2, L, L)``; formula in the class docstring."""
        sin_p = torch.sin(self.plaquette(theta))
        # Roll by +1 reads the plaquette at x − μ̂.
        f0 = sin_p - torch.roll(sin_p, 1, dims=2)
        f1 = torch.roll(sin_p, 1, dims=1) - sin_p
        return self.beta * torch.stack((f0, f1), dim=1)

    def average_plaquette(self, theta: Tensor) -> Tensor:
        """``(1/V) Σ_x cos P(x)``, shape ``(N,)``."""
        return torch.cos(self.plaquette(theta)).mean(dim=(1, 2))

    def topological_charge(self, theta: Tensor) -> Tensor:
        """``Q = (1/2π) Σ_x wrap(P(x))``, ``wrap`` onto ``(−π, π]``; shape ``(N,)``.

        The unwrapped plaquettes sum to zero on the torus (every link enters twice with
        opposite signs), so ``Q`` is an integer up to floating-point rounding.
        """
        p = self.plaquette(theta)
        wrapped = math.pi - torch.remainder(math.pi - p, _TWO_PI)
        return wrapped.sum(dim=(1, 2)) / _TWO_PI

    def exact_log_z(self, measure: Literal["lebesgue", "haar"] = "lebesgue") -> float:
        """:func:`exact_log_z` at this lattice's ``L`` and ``β``."""
        return exact_log_z(self.L, self.beta, measure=measure)

    def exact_average_plaquette(self) -> float:
        """:func:`exact_average_plaquette` at this lattice's ``L`` and ``β``."""
        return exact_average_plaquette(self.L, self.beta)

    def exact_topological_susceptibility(self) -> float:
        """:func:`exact_topological_susceptibility` at this lattice's ``L`` and ``β``."""
        return exact_topological_susceptibility(self.L, self.beta)


def log_bessel_ie(
    orders: Sequence[int] | npt.NDArray[np.integer], beta: float
) -> npt.NDArray[np.float64]:
    """``log(I_n(β) e^{−β})`` for integer orders ``n`` and ``β ≥ 0``; same shape as ``orders``.

    Moving the contour of ``I_n(β) = (1/2π)∫_{−π}^{π} e^{β cos φ − inφ} dφ`` through the saddle
    point ``φ = −ic``, ``sinh c = |n|/β``, leaves (with ``ρ = √(β² + n²)``)

        I_n(β) = e^{ρ − |n| c} · (1/2π)∫_{−π}^{π} e^{−2ρ sin²(φ/2)} cos(|n|(sin φ − φ)) dφ,

    an integrand that is periodic, analytic and free of cancellation, so the trapezoid rule
    converges geometrically and gives ``I_n`` to full *relative* precision for every order,
    however small ``I_n`` is. Its aliasing error on ``M`` nodes is
    ``(I_{n+M}(β) e^{Mc} + I_{n−M}(β) e^{−Mc}) / I_n(β)``; measured, it is below ``1e-15`` for
    ``M ≈ 8(√n + √β + 1)``, and ``M`` below takes 50% more. ``I_{−n} = I_n``; at ``β = 0`` only
    ``I_0 = 1`` survives (``−inf`` elsewhere).
    """
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"log_bessel_ie needs a finite beta >= 0, got {beta}")
    n = np.abs(np.asarray(orders, dtype=np.int64))
    if beta == 0:
        return np.where(n == 0, 0.0, -np.inf)
    nf = n.astype(np.float64)
    rho = np.hypot(beta, nf)
    # ρ − β written as n²/(ρ + β): ρ and β nearly cancel when β ≫ n.
    log_prefactor = nf * nf / (rho + beta) - nf * np.arcsinh(nf / beta)
    n_top = float(nf.max()) if nf.size else 0.0
    m = 16 + 12 * math.ceil(math.sqrt(n_top) + math.sqrt(beta) + 1.0)
    phi = np.arange(m, dtype=np.float64) * (_TWO_PI / m)
    # −2ρ sin²(φ/2) rather than ρ(cos φ − 1): no cancellation near φ = 0.
    damping = np.exp(-2.0 * rho[..., None] * np.sin(0.5 * phi) ** 2)
    oscillation = np.cos(nf[..., None] * (np.sin(phi) - phi))
    mean = (damping * oscillation).mean(axis=-1)
    return np.asarray(log_prefactor + np.log(mean), dtype=np.float64)


def _log_ratios(beta: float) -> npt.NDArray[np.float64]:
    """``log(I_n(β)/I_0(β))`` for ``n = 0, 1, …, N``, ``N`` the first order below ``_TERM_RTOL``.

    ``I_n(β)`` decreases in ``n`` for ``β > 0``, so every later order is smaller still.
    """
    cutoff = math.log(_TERM_RTOL)
    top = 16
    while True:
        log_ie = log_bessel_ie(np.arange(top + 1), beta)
        log_r = log_ie - log_ie[0]
        below = np.nonzero(log_r < cutoff)[0]
        if below.size:
            return np.asarray(log_r[: int(below[0]) + 1], dtype=np.float64)
        top *= 2


def _representations(log_r: npt.NDArray[np.float64], volume: int) -> int:
    """Largest ``|n|`` kept in ``Σ_n I_n^V``: the first with ``(I_n/I_0)^V < _TERM_RTOL``."""
    below = np.nonzero(volume * log_r < math.log(_TERM_RTOL))[0]
    return int(below[0]) if below.size else len(log_r) - 1


def exact_log_z(L: int, beta: float, *, measure: Literal["lebesgue", "haar"] = "lebesgue") -> float:
    """``log Z`` of ``S = −β Σ_x cos P(x)`` on the periodic ``L × L`` lattice, ``β ≥ 0``.

    ``measure="haar"``: ``Z = ∫ Π_links (dθ/2π) e^{−S} = Σ_n I_n(β)^V`` with ``V = L²``, the
    normaliser of the density w.r.t. the probability (Haar) measure on every link.

    ``measure="lebesgue"`` (default): ``Z = ∫_{[0,2π)^{2V}} Π_links dθ e^{−S}
    = (2π)^{2V} Σ_n I_n(β)^V``. This is the one that matches ``log p(θ) = −S(θ) − log Z`` as a
    density on ``[0, 2π)^{2V}`` w.r.t. ``dθ``, the convention of the flows' ``log q`` (a
    uniform base has ``log q0 = −2V log 2π``), so that ``E_q[−S − log q] ≤ log Z``.

    Evaluated as ``V β + V log(I_0 e^{−β}) + log(1 + 2 Σ_{n≥1} (I_n/I_0)^V)`` (``I_n`` is
    even in ``n``), the orders cut where ``(I_n/I_0)^V < 1e-17``. At ``L = 1`` the single
    plaquette is identically zero, ``S ≡ −β``, and the sum is the generating-function identity
    ``Σ_n I_n(β) = e^β``.
    """
    size, coupling = _check_exact(L, beta)
    if measure not in ("lebesgue", "haar"):
        raise ValueError(f"exact_log_z: measure must be 'lebesgue' or 'haar', got {measure!r}")
    volume = size * size
    log_i0e = float(log_bessel_ie([0], coupling)[0])
    log_r = _log_ratios(coupling)
    n_max = _representations(log_r, volume)
    tail = float(np.exp(volume * log_r[1 : n_max + 1]).sum())
    log_z = volume * (coupling + log_i0e) + math.log1p(2.0 * tail)
    if measure == "lebesgue":
        log_z += 2 * volume * math.log(_TWO_PI)
    return log_z


def exact_average_plaquette(L: int, beta: float) -> float:
    """``⟨cos P⟩ = (1/V) ∂ log Z/∂β = Σ_n I_n^{V−1} I_n' / Σ_n I_n^V``, ``β ≥ 0``.

    ``I_n' = dI_n/dβ = (I_{n−1} + I_{n+1})/2``; all terms divided by ``I_0^V`` (ratios ``≤ 1``,
    no overflow). Independent of the measure convention of :func:`exact_log_z`. At ``L = 1``
    it is exactly 1.
    """
    size, coupling = _check_exact(L, beta)
    volume = size * size
    log_r = _log_ratios(coupling)
    n_max = _representations(log_r, volume)
    r = np.exp(log_bessel_ie(np.arange(n_max + 2), coupling) - log_bessel_ie([0], coupling))
    n = np.arange(-n_max, n_max + 1)
    r_n = r[np.abs(n)]
    r_prime = 0.5 * (r[np.abs(n - 1)] + r[np.abs(n + 1)])
    numerator = float((r_n ** (volume - 1) * r_prime).sum())
    denominator = float((r_n**volume).sum())
    return numerator / denominator


def exact_topological_susceptibility(L: int, beta: float) -> float:
    """``χ = ⟨Q²⟩ / V`` of the geometric charge ``Q = (1/2π) Σ_x wrap(P(x))``, ``β ≥ 0``.

    With a θ-term, ``Z(θ) = ⟨e^{iθQ}⟩ Z = Σ_n g(n + θ/2π)^V`` where
    ``g(ν) = (1/2π)∫_{−π}^{π} e^{β cos φ} cos(νφ) dφ`` (``g(n) = I_n(β)``); so
    ``⟨Q²⟩ = −Z''(0)/Z(0)``:

        ⟨Q²⟩ = −(V/4π²) Σ_n [g(n)^{V−1} g''(n) + (V−1) g(n)^{V−2} g'(n)²] / Σ_n g(n)^V.

    The derivatives at integer ``ν`` follow from the Fourier series of ``φ`` and ``φ²`` on
    ``(−π, π)`` integrated against ``e^{β cos φ}`` — Bessel functions only, no quadrature:

        g'(n)  = Σ_{k≥1} (−1)^k (I_{k−n} − I_{k+n}) / k,
        g''(n) = −(π²/3) I_n − 2 Σ_{k≥1} (−1)^k (I_{k−n} + I_{k+n}) / k².

    ``k`` runs until ``I_{k−|n|}/I_0 < 1e-17``. The alternating sums lose about
    ``log10(β)`` digits for large ``β`` (``g''(0) ≈ −I_0/β`` out of terms of size ``I_0``), and
    the ``n``-sum cancels where tunnelling is suppressed: the absolute error of ``χ`` is
    ``~1e-16 (1 + β)``, so on small lattices at large ``β`` (e.g. ``L = 2, β ≥ 10``, where
    ``χ < 1e-15``) the result is rounding noise and can even come out slightly negative.
    ``g'`` and ``g''`` decay only like ``1/n``, ``1/n²`` in ``n``, but they always come with at
    least ``g(n)^{V−2}`` (``V ≥ 4``), so the ``n``-sum is cut like that of ``Z``. At ``L = 1``
    the plaquette is identically zero, ``Q ≡ 0`` and ``χ = 0`` is returned directly.
    """
    size, coupling = _check_exact(L, beta)
    volume = size * size
    if volume == 1:
        return 0.0
    log_r = _log_ratios(coupling)
    n_max = _representations(log_r, volume)
    k_max = n_max + len(log_r) - 1
    r = np.exp(log_bessel_ie(np.arange(n_max + k_max + 1), coupling) - log_bessel_ie([0], coupling))
    n = np.arange(-n_max, n_max + 1)[:, None]
    k = np.arange(1, k_max + 1)[None, :]
    sign = np.where(k % 2 == 0, 1.0, -1.0)
    below, above = r[np.abs(k - n)], r[np.abs(k + n)]
    d1 = (sign * (below - above) / k).sum(axis=1)
    d2 = -(math.pi**2 / 3.0) * r[np.abs(n[:, 0])] - 2.0 * (sign * (below + above) / k**2).sum(
        axis=1
    )
    r_n = r[np.abs(n[:, 0])]
    numerator = (r_n ** (volume - 1) * d2 + (volume - 1) * r_n ** (volume - 2) * d1**2).sum()
    denominator = (r_n**volume).sum()
    return float(-numerator / denominator / (4.0 * math.pi**2))
