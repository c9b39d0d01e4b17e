"""Global scaling ``x' = x·exp(γ)`` with one learnable ``γ`` (odd, so Z2-equivariant)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import Layer


class GlobalScaling(Layer):
    """``x' = x·exp(γ)``, ``log|det J| = d·γ``, score step ``s' = s·exp(−γ)``.

    ``event_shape`` fixes ``d``; ``γ`` starts at ``log_scale`` (0: the identity)."""

    def __init__(self, event_shape: tuple[int, ...], log_scale: float = 0.0) -> None:
        super().__init__()
        self.event_shape = tuple(event_shape)
        self.dim = math.prod(self.event_shape)
        self.log_scale = nn.Parameter(torch.tensor(float(log_scale)))

    def _log_det(self, x: Tensor, sign: float) -> Tensor:
        return (sign * self.dim * self.log_scale).expand(x.shape[0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * torch.exp(self.log_scale), self._log_det(x, 1.0)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return y * torch.exp(-self.log_scale), self._log_det(y, -1.0)

    def forward_and_score(self, x: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        y, log_det = self.forward(x)
        return y, log_det, score * torch.exp(-self.log_scale.detach())

    def inverse_and_score(self, y: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, log_det = self.inverse(y)
        return x, log_det, score * torch.exp(self.log_scale.detach())
