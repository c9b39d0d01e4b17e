"""Element-wise scalings ``y = x·exp(σ) + μ`` and their one score step; the global scaling
``x' = x·exp(γ)`` with one learnable ``γ`` (odd, so Z2-equivariant)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from . import _args
from .base import Layer


class Scaling(Layer):
    """Base of the layers ``y = x·exp(σ) + μ`` with ``σ = self.log_scale`` constant in ``x``
    (one value, or one per feature, broadcast against ``(N, *event_shape)``).

    The Jacobian is ``diag(exp(σ))`` and ``log|det J|`` does not depend on ``x``, so the score
    steps of ``docs/theory.md`` §4.6 reduce to a rescaling: ``s_y = s_x·exp(−σ)`` forward and
    ``s_x = s_y·exp(σ)`` through the inverse. Subclasses write ``forward`` and ``inverse`` and
    own ``log_scale``; both score steps live here only."""

    # log|det J| = Σσ does not depend on x (the default score step checks the declaration).
    constant_log_det = True

    log_scale: nn.Parameter

    def forward_and_score(self, x: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``s_y = s_x·exp(−σ)``; shapes as in :meth:`Layer.forward_and_score`."""
        y, log_det = self.forward(x)
        return y, log_det, score * torch.exp(-self.log_scale.detach())

    def inverse_and_score(self, y: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``s_x = s_y·exp(σ)``."""
        x, log_det = self.inverse(y)
        return x, log_det, score * torch.exp(self.log_scale.detach())


class GlobalScaling(Scaling):
    """``x' = x·exp(γ)``, ``log|det J| = d·γ``, score step ``s' = s·exp(−γ)``, on
    ``(N, *event_shape)`` batches.

    ``event_shape`` fixes ``d``; ``γ`` starts at ``log_scale`` (0: the identity)."""

    def __init__(self, event_shape: Sequence[int], log_scale: float = 0.0) -> None:
        super().__init__()
        self.event_shape = _args.widths("event_shape", event_shape)
        if not self.event_shape:
            raise ValueError("event_shape must be non-empty, got ()")
        if isinstance(log_scale, bool) or not isinstance(log_scale, (int, float)):
            raise TypeError(f"log_scale must be a finite float, got {log_scale!r}")
        if not math.isfinite(log_scale):
            raise ValueError(f"log_scale must be a finite float, got {log_scale}")
        self.dim = math.prod(self.event_shape)
        self.log_scale = nn.Parameter(torch.tensor(float(log_scale)))

    def _log_det(self, x: Tensor, sign: float) -> Tensor:
        return (sign * self.dim * self.log_scale).expand(x.shape[0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * torch.exp(self.log_scale), self._log_det(x, 1.0)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return y * torch.exp(-self.log_scale), self._log_det(y, -1.0)
