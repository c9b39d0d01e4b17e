"""Gaussian mixture with ``2^d`` equal-weight components at the corners of ``{−1, +1}^d``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Target


class GaussianMixture(Target):
    """``p(x) = 2^{-d} Σ_{m ∈ {±1}^d} N(x; m, σ² I)``, normalised (``docs/theory.md`` §7.1,
    ``σ² = 0.5``).

    The mixture over all corners factorises over coordinates,
    ``p(x) = Π_i ½[N(x_i; −1, σ²) + N(x_i; +1, σ²)]``, so that

        S(x) = Σ_i [ (x_i² + 1)/(2σ²) − log cosh(x_i/σ²) ] + (d/2) log(2πσ²)

    costs ``O(d)``, not ``O(2^d)``; ``∇S = x/σ² − tanh(x/σ²)/σ²``. Batches ``(N, d)``.
    """

    log_z = 0.0

    def __init__(self, dim: int, sigma2: float = 0.5) -> None:
        if dim < 1:
            raise ValueError(f"GaussianMixture needs dim >= 1, got {dim}")
        if not sigma2 > 0:
            raise ValueError(f"GaussianMixture needs sigma2 > 0, got {sigma2}")
        self.dim = int(dim)
        self.sigma2 = float(sigma2)
        self.event_shape = (self.dim,)

    def action(self, x: Tensor) -> Tensor:
        t = x / self.sigma2
        # log cosh(t) = |t| + log1p(exp(−2|t|)) − log 2, stable for large |t|.
        log_cosh = t.abs() + torch.log1p(torch.exp(-2 * t.abs())) - math.log(2.0)
        per_site = (x * x + 1) / (2 * self.sigma2) - log_cosh
        return per_site.sum(-1) + 0.5 * self.dim * math.log(2 * math.pi * self.sigma2)

    def force(self, x: Tensor) -> Tensor:
        return (x - torch.tanh(x / self.sigma2)) / self.sigma2

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples ``(n, d)``: a uniformly random corner plus ``N(0, σ² I)`` noise
        (float64, CPU unless a generator on another device is given)."""
        device = generator.device if generator is not None else torch.device("cpu")
        corner = 2 * torch.randint(0, 2, (n, self.dim), generator=generator, device=device) - 1
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=device)
        return corner.to(torch.float64) + math.sqrt(self.sigma2) * noise
