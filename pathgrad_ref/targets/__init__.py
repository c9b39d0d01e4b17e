"""Targets ``p ∝ exp(−S)``: Gaussian mixture and lattice φ⁴."""

from .base import Target
from .gmm import GaussianMixture
from .phi4 import Phi4

__all__ = ["GaussianMixture", "Phi4", "Target"]
