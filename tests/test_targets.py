"""Targets: forces against autograd, the GMM against its explicit 2^d-component form and exact
moments, φ⁴ against a site-by-site loop and its Z2 symmetry."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pathgrad_ref.targets import GaussianMixture, Phi4, Target


def _autograd_force(target: Target, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(target.action(x).sum(), x)
    return g


@pytest.mark.parametrize("target", [GaussianMixture(3), Phi4((4, 6), 0.3, 0.022), Phi4((3, 3, 2))])
def test_force_matches_autograd(target: Target) -> None:
    x = 1.5 * torch.randn(5, *target.event_shape, dtype=torch.float64)
    assert torch.allclose(target.force(x), _autograd_force(target, x), rtol=1e-12, atol=1e-12)


def test_gmm_equals_explicit_mixture() -> None:
    d, s2 = 3, 0.5
    means = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=d)), dtype=torch.float64)
    x = 2 * torch.randn(50, d, dtype=torch.float64)
    sq = ((x[:, None, :] - means[None]) ** 2).sum(-1)
    log_p = (
        torch.logsumexp(-sq / (2 * s2), 1) - math.log(2**d) - 0.5 * d * math.log(2 * math.pi * s2)
    )
    assert torch.allclose(GaussianMixture(d, s2).log_prob(x), log_p, rtol=1e-13)
    # stable far from the modes, where a naive log cosh overflows
    far = torch.full((1, d), 400.0, dtype=torch.float64)
    assert torch.isfinite(GaussianMixture(d).action(far)).all()


def test_gmm_integrates_to_one_in_2d() -> None:
    h = 0.02
    grid = torch.arange(-6, 6 + h / 2, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    p = GaussianMixture(2).log_prob(torch.stack([xx, yy], -1).reshape(-1, 2)).exp()
    assert abs(float(p.sum()) * h * h - 1) < 1e-8


def test_gmm_sampler_moments() -> None:
    gmm = GaussianMixture(3)
    n = 200_000
    x = gmm.sample(n, torch.Generator().manual_seed(0))
    # each coordinate: ±1 with equal weight plus N(0, σ²): E x = 0, E x² = 1 + σ²,
    # E x⁴ = 1 + 6σ² + 3σ⁴; coordinates independent.
    s2 = gmm.sigma2
    for moment, exact, var in [
        (x.mean(0), 0.0, 1 + s2),
        ((x**2).mean(0), 1 + s2, (1 + 6 * s2 + 3 * s2**2) - (1 + s2) ** 2),
    ]:
        assert (moment - exact).abs().max() < 5 * math.sqrt(var / n)
    cov01 = float((x[:, 0] * x[:, 1]).mean())
    assert abs(cov01) < 5 * (1 + s2) / math.sqrt(n)


def test_phi4_action_against_site_loop() -> None:
    kappa, lam = 0.27, 0.1
    shape = (3, 4)
    phi = torch.randn(2, *shape, dtype=torch.float64)
    ref = torch.zeros(2, dtype=torch.float64)
    for t, x in itertools.product(range(shape[0]), range(shape[1])):
        site = phi[:, t, x]
        hop = phi[:, (t + 1) % shape[0], x] + phi[:, t, (x + 1) % shape[1]]
        ref += -2 * kappa * site * hop + (1 - 2 * lam) * site**2 + lam * site**4
    assert torch.allclose(Phi4(shape, kappa, lam).action(phi), ref, rtol=1e-13)


def test_phi4_symmetric() -> None:
    target = Phi4((4, 6))
    phi = torch.randn(3, 4, 6, dtype=torch.float64)
    assert torch.allclose(target.action(-phi), target.action(phi), rtol=1e-14)
    assert torch.allclose(target.force(-phi), -target.force(phi), rtol=1e-14)
    assert torch.allclose(target.magnetisation(phi), phi.sum((1, 2)))


def test_target_errors() -> None:
    with pytest.raises(ValueError, match="dim >= 1"):
        GaussianMixture(0)
    with pytest.raises(ValueError, match="lattice shape"):
        Phi4(())
    with pytest.raises(ValueError, match="no known normalisation"):
        Phi4((2, 2)).log_prob(torch.zeros(1, 2, 2))
    with pytest.raises(NotImplementedError, match="MCMC"):
        Phi4((2, 2)).sample(3)
