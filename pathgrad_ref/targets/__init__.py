"""Targets ``p ∝ exp(−S)``: Gaussian mixture, lattice φ⁴ and 2D U(1) gauge theory."""

from .base import Target
from .gmm import GaussianMixture
from .phi4 import Phi4
from .u1 import U1Gauge

__all__ = ["GaussianMixture", "Phi4", "Target", "U1Gauge"]
