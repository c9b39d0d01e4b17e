"""ESS and NLL against their definitions, and the gradient-variance helper."""

from __future__ import annotations

import math

import pytest
import torch
from support import FlowDensity, make_setup

from pathgrad_ref.estimators import gradient
from pathgrad_ref.metrics import forward_ess, gradient_variance, nll, reverse_ess


def test_ess_against_direct_formulas() -> None:
    log_w = torch.randn(50, dtype=torch.float64)
    w = log_w.exp()
    n = w.numel()
    assert math.isclose(
        reverse_ess(log_w), float(w.sum() ** 2 / (n * (w * w).sum())), rel_tol=1e-12
    )
    assert math.isclose(forward_ess(log_w), float(n**2 / (w.sum() * (1 / w).sum())), rel_tol=1e-12)


def test_ess_limits_and_stability() -> None:
    flat = torch.full((10,), 3.0, dtype=torch.float64)
    assert math.isclose(reverse_ess(flat), 1.0, rel_tol=1e-12)
    assert math.isclose(forward_ess(flat), 1.0, rel_tol=1e-12)
    # invariant under log Z shifts far beyond exp's range
    log_w = torch.randn(20, dtype=torch.float64)
    assert math.isclose(reverse_ess(log_w + 5000), reverse_ess(log_w), rel_tol=1e-12)
    assert math.isclose(forward_ess(log_w - 5000), forward_ess(log_w), rel_tol=1e-12)
    dominant = torch.tensor([0.0, -800.0, -800.0, -800.0], dtype=torch.float64)
    assert math.isclose(reverse_ess(dominant), 0.25, rel_tol=1e-12)
    with pytest.raises(ValueError, match=r"non-empty \(N,\)"):
        reverse_ess(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="NaN"):
        forward_ess(torch.tensor([0.0, float("nan")]))


def test_nll_of_own_samples_is_entropy_estimate() -> None:
    flow, _ = make_setup("realnvp-gmm", torch.device("cpu"), torch.float64)
    with torch.no_grad():
        x, log_q = flow.sample(64)
    assert math.isclose(nll(flow, x), float(-log_q.mean()), rel_tol=1e-10)
    with pytest.raises(ValueError, match="held-out"):
        nll(flow, torch.zeros(3, 2, dtype=torch.float64))


def test_gradient_variance_matches_manual() -> None:
    flow, target = make_setup("realnvp-gmm", torch.device("cpu"), torch.float64)
    batches = [flow.base.sample(8) for _ in range(4)]
    stats = gradient_variance("reverse-standard", flow, target, batches)
    grads = [gradient("reverse-standard", flow, target, b) for b in batches]
    for k in stats.variance:
        stacked = torch.stack([g[k] for g in grads])
        assert torch.allclose(stats.mean[k], stacked.mean(0))
        assert torch.allclose(stats.variance[k], stacked.var(0))
    assert stats.n == 4 and stats.total_variance() > 0
    # zero for the path gradient when the target is the flow itself
    own = FlowDensity(flow)
    assert gradient_variance("reverse-path-fast", flow, own, batches).total_variance() < 1e-20
    with pytest.raises(ValueError, match="at least 2 batches"):
        gradient_variance("reverse-standard", flow, target, batches[:1])
