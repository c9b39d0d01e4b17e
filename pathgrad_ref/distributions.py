"""Base distributions ``q0`` of the flows: standard normal and uniform on a box.

Each has ``log_prob(z) -> (N,)``, ``score(z) = ∇_z log q0(z) -> z.shape`` and
``sample(n) -> (n, *event_shape)``. They are modules so that ``flow.to(device, dtype)`` moves them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class BaseDistribution(nn.Module):
    """A fixed base density on ``event_shape``; samples follow the module's dtype and device."""

    event_shape: tuple[int, ...]
    anchor: Tensor

    def __init__(self, event_shape: Sequence[int]) -> None:
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        if not self.event_shape or min(self.event_shape) < 1:
            raise ValueError(f"event_shape must be non-empty and positive, got {event_shape}")
        # An empty buffer records dtype and device so that sampling follows ``.to(...)``.
        self.register_buffer("anchor", torch.zeros(()), persistent=False)

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    def log_prob(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def score(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def _reduce(self, t: Tensor) -> Tensor:
        return t.flatten(1).sum(1)


class StandardNormal(BaseDistribution):
    """``log q0(z) = −|z|²/2 − (d/2) log 2π``, ``score(z) = −z``."""

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * self._reduce(z * z) - 0.5 * self.dim * math.log(2 * math.pi)

    def score(self, z: Tensor) -> Tensor:
        return -z

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(
            (n, *self.event_shape),
            generator=generator,
            dtype=self.anchor.dtype,
            device=self.anchor.device,
        )


class Uniform(BaseDistribution):
    """Uniform on ``[low, high)^d``: ``log q0 = −d log(high − low)`` inside, ``−inf`` outside;
    ``score = 0``."""

    def __init__(self, event_shape: Sequence[int], low: float = 0.0, high: float = 1.0) -> None:
        super().__init__(event_shape)
        if not high > low:
            raise ValueError(f"Uniform needs high > low, got low={low}, high={high}")
        self.low = float(low)
        self.high = float(high)

    def log_prob(self, z: Tensor) -> Tensor:
        inside = ((z >= self.low) & (z <= self.high)).flatten(1).all(1)
        value = -self.dim * math.log(self.high - self.low)
        # Written with z so that the result is a function of z under torch.func transforms.
        zero = 0.0 * self._reduce(z)
        return torch.where(inside, zero + value, zero - math.inf)

    def score(self, z: Tensor) -> Tensor:
        return torch.zeros_like(z)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(
            (n, *self.event_shape),
            generator=generator,
            dtype=self.anchor.dtype,
            device=self.anchor.device,
        )
        return self.low + (self.high - self.low) * u
