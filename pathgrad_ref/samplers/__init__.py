"""Markov chain samplers for targets ``p ∝ exp(−S)`` and their autocorrelation diagnostics."""

from .diagnostics import autocorrelation, effective_sample_size, integrated_autocorrelation_time
from .hmc import HMCResult, hmc_sample, leapfrog

__all__ = [
    "HMCResult",
    "autocorrelation",
    "effective_sample_size",
    "hmc_sample",
    "integrated_autocorrelation_time",
    "leapfrog",
]
