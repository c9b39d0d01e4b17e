"""The target contract: an action ``S`` with ``p(x) = exp(−S(x)) / Z``."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


class Target(ABC):
    """A target density through its action (energy).

    ``action(x) -> (N,)`` and ``force(x) = ∇_x S(x) -> x.shape`` for batches
    ``(N, *event_shape)``. ``log_z`` is ``log Z`` where it is known (``0.0`` for normalised
    targets), else ``None``. Targets hold no tensors: they follow the input's dtype and device.
    """

    event_shape: tuple[int, ...]
    log_z: float | None = None

    @abstractmethod
    def action(self, x: Tensor) -> Tensor: ...

    def force(self, x: Tensor) -> Tensor:
        """``∇_x S(x)`` by autograd; subclasses override it with the analytic form."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.action(x).sum(), x)
        return g

    def log_prob(self, x: Tensor) -> Tensor:
        """``−S(x) − log Z``; only for targets with a known ``log_z``."""
        if self.log_z is None:
            raise ValueError(f"{type(self).__name__} has no known normalisation log Z")
        return -self.action(x) - self.log_z

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} has no exact sampler; use an MCMC sampler "
            "(pathgrad_ref.samplers) for target samples"
        )
