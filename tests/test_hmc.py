"""HMC sampler and autocorrelation diagnostics against exactly known expectations.

Statistical checks compare an HMC mean with an exact value within ``Z_TOL`` standard errors,
``SE = std · sqrt(2τ_int / N)`` with ``τ_int`` estimated from the same series. Seeds are fixed,
so the outcomes are deterministic; the tolerances say how much room a different seed needs.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import Tensor

from pathgrad_ref.samplers import (
    HMCResult,
    autocorrelation,
    effective_sample_size,
    hmc_sample,
    integrated_autocorrelation_time,
    leapfrog,
)
from pathgrad_ref.targets import Phi4, U1Gauge
from pathgrad_ref.targets.base import Target

# Short test runs make hmc_sample's τ_int of its observable unreliable, which it says.
pytestmark = pytest.mark.filterwarnings("ignore:series of .* too short:RuntimeWarning")

Z_TOL = 4.0
F64 = torch.float64


class StandardNormal(Target):
    """``S(x) = Σ_i x_i² / 2``, ``x ∈ R^d``."""

    def __init__(self, dim: int = 1) -> None:
        self.event_shape = (dim,)

    def action(self, x: Tensor) -> Tensor:
        return 0.5 * (x * x).sum(1)

    def force(self, x: Tensor) -> Tensor:
        return x


class VonMises(Target):
    """``S(θ) = −β Σ_i cos θ_i``: independent angles, periodic with period ``2π``."""

    def __init__(self, dim: int, beta: float) -> None:
        self.event_shape = (dim,)
        self.beta = beta

    def action(self, x: Tensor) -> Tensor:
        return -self.beta * torch.cos(x).sum(1)

    def force(self, x: Tensor) -> Tensor:
        return self.beta * torch.sin(x)


def mean_and_se(series: Tensor) -> tuple[float, float, float]:
    """Mean, autocorrelation-aware standard error and ``τ_int`` of ``(n_kept, n_chains)``."""
    tau = integrated_autocorrelation_time(series)
    se = float(series.std()) * math.sqrt(2.0 * tau / series.numel())
    return float(series.mean()), se, tau


def assert_close_in_se(series: Tensor, exact: float, name: str) -> None:
    mean, se, tau = mean_and_se(series)
    z = (mean - exact) / se
    msg = f"{name}: HMC {mean:.5f} ± {se:.5f} (τ_int {tau:.2f}) vs exact {exact:.5f}, z = {z:.2f}"
    print(msg)
    assert abs(z) < Z_TOL, msg
    # A loose SE would make the check vacuous.
    assert se < 0.01 * max(abs(exact), float(series.std())), msg


def site_moment_exact(lam: float, k: int) -> float:
    """``∫φ^k e^{−(1−2λ)φ² − λφ⁴} dφ / ∫e^{…} dφ`` by the trapezoid rule, which converges
    geometrically fast for smooth integrands that vanish at the ends of the grid."""
    phi = np.linspace(-12.0, 12.0, 240_001)
    w = np.exp(-(1 - 2 * lam) * phi**2 - lam * phi**4)
    return float((phi**k * w).sum() / w.sum())


# --- diagnostics --------------------------------------------------------------------------------


def ar1(rho: float, n_steps: int, n_chains: int, seed: int) -> Tensor:
    """``x_{t+1} = ρ x_t + sqrt(1 − ρ²) ε_t``, started in equilibrium; ``(n_steps, n_chains)``."""
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(n_steps, n_chains, generator=g, dtype=F64)
    x = torch.empty_like(eps)
    x[0] = eps[0]
    scale = math.sqrt(1 - rho * rho)
    for t in range(1, n_steps):
        x[t] = rho * x[t - 1] + scale * eps[t]
    return x


@pytest.mark.parametrize("method", ["geyer", "sokal"])
@pytest.mark.parametrize("rho", [0.0, 0.5, 0.9])
def test_tau_int_ar1(rho: float, method: str) -> None:
    series = ar1(rho, 20_000, 8, seed=11)
    exact = (1 + rho) / (2 * (1 - rho))
    tau = integrated_autocorrelation_time(series, method=method)  # type: ignore[arg-type]
    # Madras–Sokal: relative SD of τ̂ ≈ sqrt(2(2W + 1)/N), window W ≈ 5τ (or ≥ 1).
    rel_sd = math.sqrt(2 * (2 * max(5 * exact, 1) + 1) / series.numel())
    print(f"AR(1) ρ={rho} {method}: τ̂ = {tau:.4f}, exact {exact:.4f}, rel SD {rel_sd:.3f}")
    assert abs(tau / exact - 1) < Z_TOL * rel_sd


def test_tau_int_anticorrelated_ar1_geyer() -> None:
    rho = -0.6
    tau = integrated_autocorrelation_time(ar1(rho, 20_000, 8, seed=12))
    exact = (1 + rho) / (2 * (1 - rho))
    assert tau == pytest.approx(exact, rel=0.05)


def test_autocorrelation_and_ess() -> None:
    series = ar1(0.5, 4_000, 4, seed=13)
    rho = autocorrelation(series)
    assert rho.shape == (4_000,)
    assert float(rho[0]) == 1.0
    assert float(rho[1]) == pytest.approx(0.5, abs=0.03)
    assert float(rho[2]) == pytest.approx(0.25, abs=0.03)
    ess = effective_sample_size(series)
    assert ess == pytest.approx(series.numel() / 3.0, rel=0.15)
    # One chain given as a 1D series is the same as a (n, 1) series.
    one = series[:, 0]
    assert integrated_autocorrelation_time(one) == integrated_autocorrelation_time(one[:, None])


def test_tau_int_short_series_warns_and_constant_is_nan() -> None:
    with pytest.warns(RuntimeWarning, match="too short"):
        integrated_autocorrelation_time(ar1(0.99, 50, 1, seed=14))
    assert math.isnan(integrated_autocorrelation_time(torch.ones(100, 3)))


def test_diagnostics_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        integrated_autocorrelation_time(torch.zeros(10, 2, 2))
    with pytest.raises(ValueError, match="at least 2 steps"):
        integrated_autocorrelation_time(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="finite"):
        integrated_autocorrelation_time(torch.tensor([0.0, math.nan, 1.0]))
    with pytest.raises(ValueError, match="method"):
        integrated_autocorrelation_time(torch.randn(10), method="bogus")  # type: ignore[arg-type]


# --- HMC against exact expectations ------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.022, 0.5])
def test_phi4_decoupled_sites_match_quadrature(lam: float) -> None:
    """At κ = 0 the sites decouple into ``p(φ) ∝ exp(−(1−2λ)φ² − λφ⁴)``."""
    target = Phi4((4, 4), kappa=0.0, lam=lam)
    res = hmc_sample(
        target, 400 * 200, n_chains=400, step_size=0.25, n_leapfrog=6, n_therm=50,
        step_jitter=0.2, generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    assert 0.85 < res.acceptance_rate <= 1.0
    for k in (2, 4):
        site_mean = (res.chains**k).flatten(2).mean(2)
        assert_close_in_se(site_mean, site_moment_exact(lam, k), f"κ=0 λ={lam} <φ^{k}>")
    if lam == 0.5:
        # (1 − 2λ) = 0: integration by parts gives <φ⁴> = 1/(4λ) exactly.
        assert site_moment_exact(lam, 4) == pytest.approx(0.5, abs=1e-12)


def test_phi4_free_field_matches_fourier_sum() -> None:
    """λ = 0: ``S = ½ φᵀMφ``, ``M(k) = 2 − 4κ Σ_μ cos k_μ``; then ``<φ_x²> = (1/V) Σ_k 1/M(k)``,
    ``<φ_x φ_{x+0̂}> = (1/V) Σ_k cos k_0 / M(k)`` and ``<M²>/V = 1/M(0)``."""
    kappa, shape = 0.2, (6, 4)
    target = Phi4(shape, kappa=kappa, lam=0.0)
    k0 = 2 * np.pi * np.arange(shape[0]) / shape[0]
    k1 = 2 * np.pi * np.arange(shape[1]) / shape[1]
    m_k = 2 - 4 * kappa * (np.cos(k0)[:, None] + np.cos(k1)[None, :])
    volume = shape[0] * shape[1]
    res = hmc_sample(
        target, 400 * 200, n_chains=400, step_size=0.25, n_leapfrog=6, n_therm=50,
        step_jitter=0.2, generator=torch.Generator().manual_seed(2),
        observable=target.magnetisation,
    )  # fmt: skip
    phi = res.chains
    assert_close_in_se(phi.pow(2).flatten(2).mean(2), float((1 / m_k).mean()), "free <φ_x²>")
    link = (phi * torch.roll(phi, -1, dims=2)).flatten(2).mean(2)
    assert_close_in_se(link, float((np.cos(k0)[:, None] / m_k).mean()), "free <φ_x φ_x+0>")
    assert_close_in_se(res.observable.pow(2) / volume, 1 / (2 - 8 * kappa), "free <M²>/V")
    assert math.isfinite(res.tau_int) and res.tau_int > 0


def test_standard_normal_is_invariant() -> None:
    res = hmc_sample(
        StandardNormal(1), 200 * 250, n_chains=200, step_size=0.3, n_leapfrog=4, n_therm=20,
        step_jitter=0.3, generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    x = res.chains[..., 0]
    assert_close_in_se(x, 0.0, "N(0,1) mean")
    assert_close_in_se(x * x, 1.0, "N(0,1) variance")


def test_periodic_samples_stay_in_range_and_match_von_mises() -> None:
    beta, period = 2.0, 2 * math.pi
    target = VonMises(3, beta)
    init = torch.tensor([-3.0, 7.0, 20.0], dtype=F64)  # outside [0, 2π), wrapped on entry
    res = hmc_sample(
        target, 200 * 200, n_chains=200, step_size=0.3, n_leapfrog=5, n_therm=30, init=init,
        periodic=period, step_jitter=0.2, generator=torch.Generator().manual_seed(4),
    )  # fmt: skip
    assert float(res.samples.min()) >= 0.0 and float(res.samples.max()) < period
    assert float(res.final_state.min()) >= 0.0 and float(res.final_state.max()) < period
    grid = np.arange(4096) * period / 4096  # periodic trapezoid rule: exact to rounding
    w = np.exp(beta * np.cos(grid))
    exact = float((np.cos(grid) * w).sum() / w.sum())  # I₁(β)/I₀(β)
    assert_close_in_se(torch.cos(res.chains).mean(2), exact, "von Mises <cos θ>")


# --- integrator and acceptance -----------------------------------------------------------------


def test_leapfrog_reversible_and_energy_error_scales_as_step_squared() -> None:
    target = Phi4((4, 4), kappa=0.2, lam=0.5)
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(256, 4, 4, generator=g, dtype=F64)
    p0 = torch.randn(256, 4, 4, generator=g, dtype=F64)

    def energy(x: Tensor, p: Tensor) -> Tensor:
        return target.action(x) + 0.5 * (p * p).flatten(1).sum(1)

    errors = []
    for n in (10, 20, 40):  # trajectory length 1 throughout
        x1, p1 = leapfrog(target, x0, p0, 1.0 / n, n)
        errors.append(float((energy(x1, p1) - energy(x0, p0)).abs().mean()))
        xb, pb = leapfrog(target, x1, -p1, 1.0 / n, n)
        torch.testing.assert_close(xb, x0, rtol=0, atol=1e-11)
        torch.testing.assert_close(-pb, p0, rtol=0, atol=1e-11)
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    print(f"leapfrog mean |ΔH| at ε = 0.1, 0.05, 0.025: {errors}, ratios {ratios}")
    assert all(3.6 < r < 4.4 for r in ratios)


def test_acceptance_rate_tends_to_one_as_step_shrinks() -> None:
    target = Phi4((4, 4), kappa=0.2, lam=0.5)
    rates = []
    for eps in (0.5, 0.1, 0.01):
        res = hmc_sample(
            target, 64 * 20, n_chains=64, step_size=eps, n_leapfrog=max(1, round(1 / eps)),
            n_therm=10, generator=torch.Generator().manual_seed(6),
        )  # fmt: skip
        assert 0.0 < res.acceptance_rate <= 1.0
        rates.append(res.acceptance_rate)
    print(f"acceptance at ε = 0.5, 0.1, 0.01: {rates}")
    assert rates[0] < rates[1] <= rates[2]
    assert rates[2] > 0.995


def test_step_size_adaptation_reaches_target_acceptance() -> None:
    target = Phi4((4, 4), kappa=0.2, lam=0.022)
    res = hmc_sample(
        target, 200 * 50, n_chains=200, step_size=1.5, n_leapfrog=5, n_therm=200,
        adapt_step_size=True, target_acceptance=0.8, generator=torch.Generator().manual_seed(7),
    )  # fmt: skip
    print(f"adapted ε = {res.step_size:.4f}, acceptance {res.acceptance_rate:.3f}")
    assert res.step_size < 1.5
    assert res.metadata["final_step_size"] == res.step_size
    assert abs(res.acceptance_rate - 0.8) < 0.05


# --- result, reproducibility, input checks ------------------------------------------------------


def _small_run(seed: int, **kw: object) -> HMCResult:
    settings: dict[str, object] = {
        "n_chains": 8, "step_size": 0.3, "n_leapfrog": 3, "n_therm": 5, "thin": 2,
        "generator": torch.Generator().manual_seed(seed),
    }  # fmt: skip
    settings.update(kw)
    return hmc_sample(Phi4((3, 2), kappa=0.1, lam=0.1), 8 * 6, **settings)  # type: ignore[arg-type]


def test_result_layout_metadata_and_reproducibility() -> None:
    res = _small_run(8)
    assert res.samples.shape == (48, 3, 2) and res.samples.dtype == F64
    assert res.chains.shape == (6, 8, 3, 2)
    assert res.observable.shape == (6, 8)
    assert res.n_steps == 12
    torch.testing.assert_close(res.chains[-1], res.final_state)
    target = Phi4((3, 2), kappa=0.1, lam=0.1)
    torch.testing.assert_close(res.observable, target.action(res.samples).view(6, 8))
    assert res.effective_sample_size == pytest.approx(48 / (2 * res.tau_int))
    meta = json.loads(json.dumps(res.metadata))
    assert meta["target"] == "Phi4" and meta["target_params"]["kappa"] == 0.1
    assert meta["seed"] == 8 and meta["thin"] == 2 and meta["dtype"] == "float64"
    again = _small_run(8)
    assert torch.equal(res.samples, again.samples)
    assert not torch.equal(res.samples, _small_run(9).samples)


def test_float32_and_continuation() -> None:
    res = _small_run(10, dtype=torch.float32)
    assert res.samples.dtype == torch.float32
    more = _small_run(11, init=res.final_state, n_therm=0)
    assert more.samples.shape == res.samples.shape


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"n_chains": 0}, "n_chains"),
        ({"step_size": 0.0}, "step_size"),
        ({"step_size": -0.1}, "step_size"),
        ({"step_size": math.nan}, "step_size"),
        ({"n_leapfrog": 0}, "n_leapfrog"),
        ({"n_therm": -1}, "n_therm"),
        ({"thin": 0}, "thin"),
        ({"n_chains": 5}, "multiple of n_chains"),
        ({"init": torch.full((8, 3, 2), math.nan, dtype=F64)}, "init: expected finite"),
        ({"init": torch.zeros(8, 6, dtype=F64)}, "init: expected shape"),
        ({"periodic": 0.0}, "periodic"),
        ({"step_jitter": 1.0}, "step_jitter"),
        ({"target_acceptance": 1.0}, "target_acceptance"),
        ({"adapt_step_size": True, "n_therm": 0}, "adapt_step_size"),
        ({"observable": lambda x: x.sum()}, "observable"),
        ({"dtype": torch.int64}, "dtype"),
    ],
)
def test_bad_input_raises(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _small_run(0, **kw)


def test_u1_average_plaquette_matches_exact_formula() -> None:
    """Periodic HMC on U(1) links reproduces the character-expansion ``⟨cos P⟩`` (L=4, β=1)."""
    target = U1Gauge(4, 1.0)
    res = hmc_sample(
        target,
        64 * 400,
        n_chains=64,
        step_size=0.25,
        n_leapfrog=6,
        n_therm=50,
        periodic=2 * math.pi,
        generator=torch.Generator().manual_seed(0),
        observable=target.average_plaquette,
    )
    obs = res.observable
    se = float(obs.std()) * math.sqrt(2 * res.tau_int / obs.numel())
    exact = target.exact_average_plaquette()
    assert abs(float(obs.mean()) - exact) < 4 * se, (float(obs.mean()), se, exact)
    assert se < 0.003
    assert bool(((res.samples >= 0) & (res.samples < 2 * math.pi)).all())
