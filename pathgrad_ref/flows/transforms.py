"""Element-wise monotone maps ``a' = f(a; p)`` used by coupling layers.

A transform returns, element-wise, the output, ``log f'(a)`` and ``∂_a log f'(a) = f''/f'``
(``None`` where it is identically zero). ``p`` has shape ``(N, n_params, n)`` for ``a`` of shape
``(N, n)``: it is what the conditioner predicts from the passive half.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
from torch import Tensor


class Elementwise(NamedTuple):
    """``out = f(a)``, ``log_deriv = log f'(a)``, ``grad_log_deriv = f''(a)/f'(a)`` or ``None``."""

    out: Tensor
    log_deriv: Tensor
    grad_log_deriv: Tensor | None


def elementwise_score(score: Tensor, res: Elementwise) -> Tensor:
    """``s' = (s − f''/f') / f'``: the score through an element-wise map ``a' = f(a)``, whose
    Jacobian is ``diag(f')`` and whose log-det gradient is ``f''/f'`` (``docs/theory.md`` §4.1).
    ``score`` and the fields of ``res`` have the shape of ``a``; the result is detached from the
    parameters (the map's values are used, not differentiated)."""
    u = score if res.grad_log_deriv is None else score - res.grad_log_deriv.detach()
    return u * torch.exp(-res.log_deriv.detach())


class ElementwiseTransform(ABC):
    """A family of increasing bijections of the real line indexed by ``n_params`` numbers."""

    n_params: int

    @abstractmethod
    def forward(self, a: Tensor, p: Tensor) -> Elementwise: ...

    @abstractmethod
    def inverse(self, a: Tensor, p: Tensor) -> Elementwise: ...


class Affine(ElementwiseTransform):
    """``f(a) = a·exp(σ) + μ`` with ``p = (σ, μ)``: ``log f' = σ``, ``f''/f' = 0``."""

    n_params = 2

    def forward(self, a: Tensor, p: Tensor) -> Elementwise:
        sigma, mu = p[:, 0], p[:, 1]
        return Elementwise(a * torch.exp(sigma) + mu, sigma, None)

    def inverse(self, a: Tensor, p: Tensor) -> Elementwise:
        sigma, mu = p[:, 0], p[:, 1]
        return Elementwise((a - mu) * torch.exp(-sigma), -sigma, None)


class Additive(ElementwiseTransform):
    """``f(a) = a + μ`` with ``p = (μ,)``: volume preserving, ``log f' = 0``."""

    n_params = 1

    def forward(self, a: Tensor, p: Tensor) -> Elementwise:
        return Elementwise(a + p[:, 0], torch.zeros_like(a), None)

    def inverse(self, a: Tensor, p: Tensor) -> Elementwise:
        return Elementwise(a - p[:, 0], torch.zeros_like(a), None)
