"""Lattice φ⁴ theory in the hopping parametrisation, periodic boundaries."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import Target


class Phi4(Target):
    """``S(φ) = Σ_x [ −2κ Σ_μ φ_x φ_{x+μ̂} + (1 − 2λ) φ_x² + λ φ_x⁴ ]`` (``docs/theory.md`` §7.2).

    ``μ`` runs over the lattice directions (forward neighbours only, so each link counts once);
    ``S(−φ) = S(φ)``. The force is

        ∂S/∂φ_x = −2κ Σ_μ (φ_{x+μ̂} + φ_{x−μ̂}) + 2(1 − 2λ) φ_x + 4λ φ_x³.

    Batches ``(N, *shape)``; the paper's lattice is ``16 × 8``.
    """

    def __init__(self, shape: Sequence[int], kappa: float = 0.3, lam: float = 0.022) -> None:
        dims = tuple(int(s) for s in shape)
        if not dims or min(dims) < 1:
            raise ValueError(f"Phi4 needs a non-empty positive lattice shape, got {tuple(shape)}")
        self.event_shape = dims
        self.kappa = float(kappa)
        self.lam = float(lam)
        self._axes = tuple(range(1, len(dims) + 1))

    @property
    def volume(self) -> int:
        v = 1
        for d in self.event_shape:
            v *= d
        return v

    def _hop(self, phi: Tensor) -> Tensor:
        """``Σ_μ φ_{x+μ̂}`` at every site."""
        return sum((torch.roll(phi, -1, dims=ax) for ax in self._axes), torch.zeros_like(phi))

    def action(self, phi: Tensor) -> Tensor:
        phi2 = phi * phi
        density = -2 * self.kappa * phi * self._hop(phi) + (1 - 2 * self.lam) * phi2
        density = density + self.lam * phi2 * phi2
        return density.flatten(1).sum(1)

    def force(self, phi: Tensor) -> Tensor:
        neighbours = sum(
            (torch.roll(phi, s, dims=ax) for ax in self._axes for s in (-1, 1)),
            torch.zeros_like(phi),
        )
        return -2 * self.kappa * neighbours + 2 * (1 - 2 * self.lam) * phi + 4 * self.lam * phi**3

    def magnetisation(self, phi: Tensor) -> Tensor:
        """``M = Σ_x φ_x``, shape ``(N,)``."""
        return phi.flatten(1).sum(1)
