"""pathgrad-ref: fast path gradient estimators for normalizing flows, each proven equal to a
full-Jacobian ``torch.func`` oracle (Vaitl, Winkler, Richter, Kessel, ICLR 2024).

The training library, :mod:`pathgrad_ref.training`, is imported on its own (it is not needed
to use a flow or an estimator)."""

from . import distributions, estimators, flows, metrics, samplers, targets
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
]
