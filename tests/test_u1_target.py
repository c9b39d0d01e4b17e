"""2D U(1) gauge target: action, force, observables, and the exact character-expansion results,
each exact formula checked against an independent evaluation (Monte Carlo over links,
gauge-fixed grid quadrature, Gauss–Legendre quadrature, large-volume limits)."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
import torch

from pathgrad_ref.targets.base import Target
from pathgrad_ref.targets.u1 import (
    U1Gauge,
    exact_average_plaquette,
    exact_log_z,
    exact_topological_susceptibility,
    log_bessel_ie,
)

F64 = torch.float64
TWO_PI = 2 * math.pi


def _links(n: int, L: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return TWO_PI * torch.rand(n, 2, L, L, generator=g, dtype=F64)


def _gauge_transform(theta: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``θ_μ(x) → θ_μ(x) + α(x) − α(x+μ̂)``, ``α`` of shape ``(N, L, L)``."""
    t0 = theta[:, 0] + alpha - torch.roll(alpha, -1, dims=1)
    t1 = theta[:, 1] + alpha - torch.roll(alpha, -1, dims=2)
    return torch.stack((t0, t1), dim=1)


def _charge_one(L: int) -> torch.Tensor:
    """Links with every plaquette ``2π/V`` mod ``2π``, so ``Q = 1``; shape ``(1, 2, L, L)``."""
    V = L * L
    theta = torch.zeros(1, 2, L, L, dtype=F64)
    x0 = torch.arange(L, dtype=F64)
    theta[0, 1] = (TWO_PI / V) * x0[:, None]  # θ_1(x0, x1) = 2π x0 / V
    theta[0, 0, L - 1] = -(TWO_PI / L) * x0  # θ_0(L−1, x1) = −2π x1 / L closes the torus
    return torch.remainder(theta, TWO_PI)


# ---------------------------------------------------------------------------------------------
# The lattice model


@pytest.mark.parametrize("L", [1, 2, 3, 5])
def test_force_matches_autograd(L: int) -> None:
    target = U1Gauge(L, beta=1.7)
    theta = _links(6, L, seed=L)
    auto = Target.force(target, theta)
    torch.testing.assert_close(target.force(theta), auto, rtol=1e-12, atol=1e-12)
    assert target.force(theta).shape == theta.shape


def test_plaquette_by_explicit_indexing() -> None:
    L = 3
    target = U1Gauge(L, beta=1.0)
    theta = _links(2, L, seed=0)
    p = target.plaquette(theta)
    assert p.shape == (2, L, L)
    for x0, x1 in itertools.product(range(L), repeat=2):
        expected = (
            theta[:, 0, x0, x1]
            + theta[:, 1, (x0 + 1) % L, x1]
            - theta[:, 0, x0, (x1 + 1) % L]
            - theta[:, 1, x0, x1]
        )
        torch.testing.assert_close(p[:, x0, x1], expected, rtol=0, atol=1e-14)


def test_plaquette_and_action_on_hand_built_links() -> None:
    # L = 2, only θ_0(0,0) = a and θ_1(1,0) = b nonzero:
    # P(0,0) = a + b, P(0,1) = −a (θ_0(0,0) is its x+1̂ link), P(1,0) = −b, P(1,1) = 0.
    a, b = 0.3, 1.1
    theta = torch.zeros(1, 2, 2, 2, dtype=F64)
    theta[0, 0, 0, 0] = a
    theta[0, 1, 1, 0] = b
    target = U1Gauge(2, beta=2.0)
    expected = torch.tensor([[[a + b, -a], [-b, 0.0]]], dtype=F64)
    torch.testing.assert_close(target.plaquette(theta), expected)
    s = -2.0 * (math.cos(a + b) + math.cos(a) + math.cos(b) + 1.0)
    torch.testing.assert_close(target.action(theta), torch.tensor([s], dtype=F64))
    avg = (math.cos(a + b) + math.cos(a) + math.cos(b) + 1.0) / 4
    torch.testing.assert_close(target.average_plaquette(theta), torch.tensor([avg], dtype=F64))


def test_action_periodic_in_every_link() -> None:
    L = 3
    target = U1Gauge(L, beta=0.9)
    theta = _links(4, L, seed=1)
    g = torch.Generator().manual_seed(2)
    shifts = TWO_PI * torch.randint(-3, 4, theta.shape, generator=g).to(F64)
    torch.testing.assert_close(target.action(theta + shifts), target.action(theta))
    torch.testing.assert_close(
        target.topological_charge(theta + shifts), target.topological_charge(theta)
    )


def test_gauge_invariance() -> None:
    L = 4
    target = U1Gauge(L, beta=1.3)
    theta = torch.cat([_links(7, L, seed=3), _charge_one(L)])
    g = torch.Generator().manual_seed(4)
    alpha = TWO_PI * torch.rand(theta.shape[0], L, L, generator=g, dtype=F64)
    moved = _gauge_transform(theta, alpha)
    assert not torch.allclose(moved, theta)
    torch.testing.assert_close(target.action(moved), target.action(theta))
    torch.testing.assert_close(target.topological_charge(moved), target.topological_charge(theta))
    # The force is gauge covariant: links sharing plaquettes see the same sin P.
    torch.testing.assert_close(target.force(moved), target.force(theta))


def test_topological_charge_is_integer_and_nontrivial() -> None:
    L = 4
    target = U1Gauge(L, beta=1.0)
    q = target.topological_charge(_links(2000, L, seed=5))
    assert q.shape == (2000,)
    torch.testing.assert_close(q, torch.round(q), rtol=0, atol=1e-10)
    assert (q.abs() > 0.5).any()  # random links do carry charge: the check is not vacuous


@pytest.mark.parametrize("L", [2, 3, 5])
def test_charge_of_constructed_configs(L: int) -> None:
    target = U1Gauge(L, beta=1.0)
    one = _charge_one(L)
    V = L * L
    torch.testing.assert_close(
        target.plaquette(one).remainder(TWO_PI), torch.full((1, L, L), TWO_PI / V, dtype=F64)
    )
    assert target.topological_charge(one).item() == pytest.approx(1.0, abs=1e-12)
    assert target.topological_charge(-one).item() == pytest.approx(-1.0, abs=1e-12)
    # Twice the field: every plaquette 4π/V, still inside (−π, π] for V >= 4.
    assert target.topological_charge(2 * one).item() == pytest.approx(2.0, abs=1e-12)
    s = target.action(one).item()
    assert s == pytest.approx(-V * math.cos(TWO_PI / V), rel=1e-13)


def test_single_site_lattice_has_zero_plaquette() -> None:
    target = U1Gauge(1, beta=2.5)
    theta = _links(5, 1, seed=6)
    torch.testing.assert_close(target.plaquette(theta), torch.zeros(5, 1, 1, dtype=F64))
    torch.testing.assert_close(target.action(theta), torch.full((5,), -2.5, dtype=F64))
    torch.testing.assert_close(target.topological_charge(theta), torch.zeros(5, dtype=F64))


def test_shapes_and_volume() -> None:
    target = U1Gauge(3, beta=1.0)
    assert target.event_shape == (2, 3, 3)
    assert target.volume == 9
    theta = _links(4, 3, seed=7)
    assert target.action(theta).shape == (4,)
    assert target.average_plaquette(theta).shape == (4,)
    assert target.topological_charge(theta).shape == (4,)
    assert target.log_z is None
    with pytest.raises(ValueError, match="has no known normalisation"):
        target.log_prob(theta)
    with pytest.raises(ValueError, match=r"expected links of shape \(N, 2, 3, 3\)"):
        target.action(_links(4, 4, seed=0))
    with pytest.raises(ValueError, match="expected links of shape"):
        target.action(theta[0])


@pytest.mark.parametrize("L", [0, -2, 2.5, "3", None, True])
def test_constructor_rejects_bad_size(L: object) -> None:
    with pytest.raises(ValueError, match="L must be an integer >= 1"):
        U1Gauge(L, beta=1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("beta", [math.nan, math.inf, -math.inf, "x", None])
def test_constructor_rejects_bad_beta(beta: object) -> None:
    with pytest.raises(ValueError, match="beta must be a finite real number"):
        U1Gauge(2, beta=beta)  # type: ignore[arg-type]


def test_exact_functions_reject_bad_input() -> None:
    assert U1Gauge(2, beta=-1.0).beta == -1.0  # the action itself is fine at β < 0
    for fn in (exact_log_z, exact_average_plaquette, exact_topological_susceptibility):
        with pytest.raises(ValueError, match="beta >= 0"):
            fn(2, -0.5)
        with pytest.raises(ValueError, match="L must be an integer"):
            fn(0, 1.0)
    with pytest.raises(ValueError, match="measure"):
        exact_log_z(2, 1.0, measure="flat")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta >= 0"):
        log_bessel_ie([0], -1.0)


# ---------------------------------------------------------------------------------------------
# Modified Bessel functions


@pytest.mark.parametrize("beta", [1e-6, 1e-3, 0.1, 0.7, 1.0, 3.0, 10.0, 57.0, 300.0, 5000.0])
def test_bessel_against_torch_i0e_i1e(beta: float) -> None:
    b = torch.tensor(beta, dtype=F64)
    got = np.exp(log_bessel_ie([0, 1, -1], beta))
    ref = [torch.special.i0e(b).item(), torch.special.i1e(b).item(), torch.special.i1e(b).item()]
    np.testing.assert_allclose(got, ref, rtol=1e-13)


@pytest.mark.parametrize("beta", [0.01, 0.5, 1.0, 3.0, 10.0, 100.0])
def test_bessel_recursion_full_relative_precision(beta: float) -> None:
    # I_{n−1} − I_{n+1} = (2n/β) I_n, down to values far below the float64 resolution of I_0.
    n = np.arange(1, 120)
    log_i = log_bessel_ie(np.arange(0, 121), beta)
    lhs = np.exp(log_i[n - 1] - log_i[n]) - np.exp(log_i[n + 1] - log_i[n])
    np.testing.assert_allclose(lhs, 2 * n / beta, rtol=1e-11)
    if beta <= 10:
        assert log_i[-1] < -100  # the recursion was really checked on tiny values


@pytest.mark.parametrize("beta", [0.2, 2.0, 20.0, 400.0])
def test_bessel_sum_rule_and_node_convergence(beta: float) -> None:
    # Σ_n I_n(β) = e^β; and more trapezoid nodes (forced by a large order) change nothing.
    n = np.arange(-600, 601)
    log_i = log_bessel_ie(n, beta)
    assert np.exp(log_i).sum() == pytest.approx(1.0, rel=1e-13)
    small = log_bessel_ie(np.arange(0, 40), beta)
    np.testing.assert_allclose(small, log_i[600:640], rtol=0, atol=1e-13)


def test_bessel_at_zero_coupling() -> None:
    got = log_bessel_ie([0, 1, 5], 0.0)
    assert got[0] == 0.0
    assert np.all(np.isneginf(got[1:]))


# ---------------------------------------------------------------------------------------------
# Exact results


@pytest.mark.parametrize(
    ("L", "beta"), [(1, 2.0), (2, 0.3), (2, 1.0), (3, 2.0), (4, 3.0), (8, 1.5)]
)
def test_average_plaquette_is_derivative_of_log_z(L: int, beta: float) -> None:
    # S = −β Σ cos P, so d log Z/dβ = ⟨Σ_x cos P⟩ = V ⟨cos P⟩.
    h = 1e-4
    V = L * L
    fd = (exact_log_z(L, beta + h) - exact_log_z(L, beta - h)) / (2 * h) / V
    assert exact_average_plaquette(L, beta) == pytest.approx(fd, rel=1e-7)


def test_measure_conventions_and_single_site() -> None:
    for L, beta in [(1, 0.7), (3, 2.0)]:
        V = L * L
        diff = exact_log_z(L, beta) - exact_log_z(L, beta, measure="haar")
        assert diff == pytest.approx(2 * V * math.log(TWO_PI), rel=1e-14)
    # L = 1: P ≡ 0, so Z_Haar = e^β (a check of Σ_n I_n = e^β through the cut sum).
    for beta in [0.0, 0.4, 3.0, 40.0]:
        assert exact_log_z(1, beta, measure="haar") == pytest.approx(beta, abs=1e-13)
        assert exact_average_plaquette(1, beta) == pytest.approx(1.0, rel=1e-13)
        assert exact_topological_susceptibility(1, beta) == 0.0
    target = U1Gauge(2, 1.0)
    assert target.exact_log_z() == exact_log_z(2, 1.0)
    assert target.exact_average_plaquette() == exact_average_plaquette(2, 1.0)
    assert target.exact_topological_susceptibility() == exact_topological_susceptibility(2, 1.0)


def test_zero_coupling_values() -> None:
    # β = 0: uniform links; plaquettes average to zero, and for V >= 3 the wrapped plaquettes
    # are pairwise independent uniforms, ⟨φ²⟩ = π²/3, so χ = ⟨Q²⟩/V = 1/12.
    for L in [2, 3, 6]:
        assert exact_log_z(L, 0.0, measure="haar") == 0.0
        assert exact_average_plaquette(L, 0.0) == 0.0
        assert exact_topological_susceptibility(L, 0.0) == pytest.approx(1 / 12, rel=1e-14)


@functools.cache
def _legendre_nodes(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(nodes)


def _gauss_legendre(beta: float, n: np.ndarray, nodes: int) -> tuple[np.ndarray, ...]:
    """``g(n), g'(n), g''(n)`` times ``e^{−β}`` by Gauss–Legendre on ``[0, π]``, where
    ``g(ν) = (1/π)∫_0^π e^{β cos φ} cos(νφ) dφ``."""
    x, w = _legendre_nodes(nodes)
    phi = 0.5 * math.pi * (x + 1)
    w = 0.5 * math.pi * w / math.pi
    weight = np.exp(beta * (np.cos(phi) - 1))[None, :]
    nn = n[:, None]
    g = (w * weight * np.cos(nn * phi)).sum(1)
    d1 = -(w * weight * phi * np.sin(nn * phi)).sum(1)
    d2 = -(w * weight * phi**2 * np.cos(nn * phi)).sum(1)
    return g, d1, d2


@pytest.mark.parametrize(("L", "beta"), [(2, 0.5), (2, 1.0), (2, 3.0), (3, 2.0), (4, 5.0)])
def test_susceptibility_against_gauss_legendre(L: int, beta: float) -> None:
    # The module uses Bessel series for g', g''; here they come from direct quadrature.
    V = L * L
    # |n| <= 20 suffices: (I_20/I_0)^{V−2} < 1e-30 here. The oscillating quadrature sums carry
    # ~1e-14 of rounding noise, harmless because every such term is weighted by g^{V−2}.
    n = np.arange(-20, 21)
    g, d1, d2 = _gauss_legendre(beta, n, 120)
    g_fine, d1_fine, d2_fine = _gauss_legendre(beta, n, 240)
    for a, b in [(g, g_fine), (d1, d1_fine), (d2, d2_fine)]:
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)  # converged in the node count
    np.testing.assert_allclose(g, np.exp(log_bessel_ie(n, beta)), rtol=0, atol=1e-13)
    q2 = -V * (g ** (V - 1) * d2 + (V - 1) * g ** (V - 2) * d1**2).sum() / (g**V).sum()
    chi = q2 / V / (4 * math.pi**2)
    assert exact_topological_susceptibility(L, beta) == pytest.approx(chi, rel=1e-11)


def test_large_volume_limit() -> None:
    # For (I_1/I_0)^V → 0 the constraint on the plaquettes is invisible: they are independent
    # with density ∝ e^{β cos φ} on (−π, π].
    for L, beta in [(8, 1.0), (16, 3.0)]:
        b = torch.tensor(beta, dtype=F64)
        ratio = (torch.special.i1e(b) / torch.special.i0e(b)).item()
        assert exact_average_plaquette(L, beta) == pytest.approx(ratio, rel=1e-13)
        x, w = _legendre_nodes(240)
        phi = math.pi * x  # (−π, π)
        dens = w * np.exp(beta * (np.cos(phi) - 1))
        phi2 = (dens * phi**2).sum() / dens.sum()
        chi = phi2 / (4 * math.pi**2)
        assert exact_topological_susceptibility(L, beta) == pytest.approx(chi, rel=1e-12)
        V = L * L
        log_z_haar = V * (beta + math.log(torch.special.i0e(b).item()))
        assert exact_log_z(L, beta, measure="haar") == pytest.approx(log_z_haar, rel=1e-14)


def test_gauge_fixed_grid_quadrature_on_2x2() -> None:
    # Deterministic and independent of the character expansion: fix the tree links θ_0(0,0),
    # θ_0(0,1), θ_1(0,0) to zero (exact for gauge-invariant integrands under Haar measure) and
    # integrate the other five links with the periodic trapezoid rule, spectrally accurate for
    # the smooth periodic integrand e^{−S} (m = 16 nodes per link: error ~ β^m/m!).
    beta, L, m = 1.0, 2, 16
    target = U1Gauge(L, beta)
    grid = torch.arange(m, dtype=F64) * (TWO_PI / m)
    free = torch.cartesian_prod(*([grid] * 5))
    theta = torch.zeros(free.shape[0], 2, L, L, dtype=F64)
    theta[:, 0, 1, 0], theta[:, 0, 1, 1] = free[:, 0], free[:, 1]
    theta[:, 1, 1, 0], theta[:, 1, 0, 1], theta[:, 1, 1, 1] = free[:, 2], free[:, 3], free[:, 4]
    boltzmann = torch.exp(-target.action(theta))
    z = boltzmann.mean().item()
    cos_p = (boltzmann * target.average_plaquette(theta)).mean().item() / z
    assert math.log(z) == pytest.approx(exact_log_z(L, beta, measure="haar"), rel=1e-12)
    assert cos_p == pytest.approx(exact_average_plaquette(L, beta), rel=1e-12)


@pytest.mark.parametrize(("L", "beta"), [(2, 1.0), (3, 0.5)])
def test_monte_carlo_over_uniform_links(L: int, beta: float) -> None:
    # Uniform (Haar) links reweighted by e^{−S}: Z_Haar = E[e^{−S}], and ratio estimators
    # Σ w f / Σ w for ⟨cos P⟩ and ⟨Q²⟩ with delta-method standard errors.
    target = U1Gauge(L, beta)
    V = L * L
    n_samples, chunk = 1_000_000, 250_000
    g = torch.Generator().manual_seed(1234 + L)
    w_parts, cos_parts, q2_parts = [], [], []
    for _ in range(n_samples // chunk):
        theta = TWO_PI * torch.rand(chunk, 2, L, L, generator=g, dtype=F64)
        w_parts.append(torch.exp(-target.action(theta)))
        cos_parts.append(target.average_plaquette(theta))
        q2_parts.append(torch.round(target.topological_charge(theta)) ** 2)
    w, cos_p, q2 = torch.cat(w_parts), torch.cat(cos_parts), torch.cat(q2_parts)

    z_hat = w.mean().item()
    z_se = w.std().item() / math.sqrt(n_samples)
    z_exact = math.exp(exact_log_z(L, beta, measure="haar"))
    assert abs(z_hat - z_exact) < 5 * z_se, (z_hat, z_se, z_exact)

    def ratio(f: torch.Tensor) -> tuple[float, float]:
        est = (w * f).sum() / w.sum()
        se = torch.sqrt((w**2 * (f - est) ** 2).sum()) / w.sum()
        return est.item(), se.item()

    cos_hat, cos_se = ratio(cos_p)
    cos_exact = exact_average_plaquette(L, beta)
    assert abs(cos_hat - cos_exact) < 5 * cos_se, (cos_hat, cos_se, cos_exact)

    q2_hat, q2_se = ratio(q2)
    q2_exact = V * exact_topological_susceptibility(L, beta)
    assert abs(q2_hat - q2_exact) < 5 * q2_se, (q2_hat, q2_se, q2_exact)
    # The standard errors are small enough for the comparisons to bite.
    assert cos_se < 2e-3 * abs(cos_exact)
    assert q2_se < 2e-2 * q2_exact
