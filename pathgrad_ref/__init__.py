"""pathgrad-ref: fast path gradient estimators for normalizing flows, each proven equal to a
full-Jacobian ``torch.func`` oracle (Vaitl, Winkler, Richter, Kessel, ICLR 2024)."""

from . import distributions, estimators, flows, metrics, samplers, targets, training
from .estimators import ESTIMATORS, get_estimator, gradient

__version__ = "0.1.0"

__all__ = [
    "ESTIMATORS",
    "distributions",
    "estimators",
    "flows",
    "get_estimator",
    "gradient",
    "metrics",
    "samplers",
    "targets",
    "training",
]
