"""A root-found element-wise transform: a linear map plus a positive sum of tanh steps.

    f(a) = e^s a + Σ_{k=1}^{K} w_k tanh(e^{α_k} (a − β_k)),      w_k = softplus(ρ_k) > 0,

    f'(a)  = e^s + Σ_k w_k e^{α_k} (1 − t_k²),                   t_k = tanh(e^{α_k} (a − β_k)),
    f''(a) = −2 Σ_k w_k e^{2α_k} t_k (1 − t_k²).

``f' >= e^s > 0`` and ``|f(a) − e^s a| < Σ_k w_k``, so ``f`` is an increasing bijection of the
real line; its inverse has no closed form. It is the monotone map of a one-hidden-layer
network with positive output weights and a linear skip term (the building block of neural
autoregressive flows, with tanh for the sigmoid), here with its parameters predicted
per element by a coupling's conditioner. The inverse is found by the project's generic solver
(:func:`~pathgrad_ref.flows.implicit.implicit_inverse`, bracket expansion from ``[−10, 10]``,
bisection, implicit-function-theorem derivatives of every order), with

    log (f^{-1})'(y) = −log f'(x),    ∂_y log (f^{-1})'(y) = −(f''/f')(x) / f'(x),   x = f^{-1}(y).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from . import _args
from .implicit import implicit_inverse
from .transforms import Elementwise, ElementwiseTransform

Coefficients = tuple[Tensor, Tensor, Tensor, Tensor]


def tanh_sum_coefficients(p: Tensor, components: int) -> Coefficients:
    """``(e^s, w, e^α, β)`` from ``p`` of shape ``(..., 1 + 3K, n)``: row 0 the log-slope ``s``,
    rows ``[1, 1 + K)`` the raw weights ``ρ`` (``w = softplus(ρ)``), ``[1 + K, 1 + 2K)`` the
    log-scales ``α``, ``[1 + 2K, 1 + 3K)`` the shifts ``β``. Shapes ``(..., n)`` for the slope,
    ``(..., K, n)`` for the others."""
    K = components
    if p.shape[-2] != 1 + 3 * K:
        raise ValueError(f"p must have 1 + 3K = {1 + 3 * K} rows at axis -2, got {p.shape[-2]}")
    slope = torch.exp(p[..., 0, :])
    weight = torch.nn.functional.softplus(p[..., 1 : 1 + K, :])
    scale = torch.exp(p[..., 1 + K : 1 + 2 * K, :])
    shift = p[..., 1 + 2 * K :, :]
    return slope, weight, scale, shift


def tanh_sum(x: Tensor, coef: Coefficients) -> Tensor:
    """``f(x)`` of shape ``(..., n)`` from :func:`tanh_sum_coefficients`."""
    slope, weight, scale, shift = coef
    t = torch.tanh(scale * (x.unsqueeze(-2) - shift))
    return slope * x + (weight * t).sum(-2)


def tanh_sum_derivatives(x: Tensor, coef: Coefficients) -> tuple[Tensor, Tensor, Tensor]:
    """``(f(x), f'(x), f''(x))`` in closed form, each of shape ``(..., n)``."""
    slope, weight, scale, shift = coef
    t = torch.tanh(scale * (x.unsqueeze(-2) - shift))
    sech2 = 1.0 - t * t
    f = slope * x + (weight * t).sum(-2)
    d1 = slope + (weight * scale * sech2).sum(-2)
    d2 = -2.0 * (weight * scale * scale * t * sech2).sum(-2)
    return f, d1, d2


class _TanhSumMap:
    """The solver's :class:`~pathgrad_ref.flows.implicit.MonotoneMap`: ``h(x, p) = f(x; p)``
    for ``x`` of shape ``(..., n)`` and ``p`` of shape ``(..., 1 + 3K, n)`` (the coupling's
    layout). A vmapped axis of ``x`` enters ``p`` at axis 0 (``element_axes``), as a leading
    batch axis; the coefficients are computed once per solve (``prepare``)."""

    element_axes = (0,)

    def __init__(self, components: int) -> None:
        self.components = components

    def prepare(self, p: Tensor) -> Callable[[Tensor], Tensor]:
        coef = tanh_sum_coefficients(p, self.components)
        return lambda x: tanh_sum(x, coef)

    def h(self, x: Tensor, p: Tensor) -> Tensor:
        return self.prepare(p)(x)


class TanhSum(ElementwiseTransform):
    """``f(a) = e^s a + Σ_{k<K} softplus(ρ_k) tanh(e^{α_k} (a − β_k))``, an increasing bijection
    of R with a root-found inverse.

    ``p`` has shape ``(N, 1 + 3K, n)`` for ``a`` of shape ``(N, n)``: rows ``s``, ``ρ_0..ρ_{K-1}``,
    ``α_0..α_{K-1}``, ``β_0..β_{K-1}`` (:func:`tanh_sum_coefficients`). ``forward`` is explicit
    with closed-form ``log f'`` and ``f''/f'``; ``inverse`` solves ``f(x) = a`` by
    :func:`~pathgrad_ref.flows.implicit.implicit_inverse` (bracket expanded from ``[−10, 10]``
    up to ``±655,360``; a root beyond raises, nothing is clamped) and returns
    ``(x, −log f'(x), −(f''/f')(x)/f'(x))``, each of shape ``(N, n)``, differentiable to every
    order in ``a`` and ``p`` through the implicit-function-theorem rules.

    With a zero parameter vector the map is ``a + K log 2 · tanh(a)`` (not the identity).
    """

    def __init__(self, components: int = 3, name: str = "TanhSum") -> None:
        self.components = _args.integer("components", components)
        self.n_params = 1 + 3 * self.components
        self.name = name
        self._map = _TanhSumMap(self.components)

    def forward(self, a: Tensor, p: Tensor) -> Elementwise:
        coef = tanh_sum_coefficients(p, self.components)
        f, d1, d2 = tanh_sum_derivatives(a, coef)
        return Elementwise(f, torch.log(d1), d2 / d1)

    def inverse(self, a: Tensor, p: Tensor) -> Elementwise:
        x = implicit_inverse(self._map, a, p, name=self.name)
        _, d1, d2 = tanh_sum_derivatives(x, tanh_sum_coefficients(p, self.components))
        return Elementwise(x, -torch.log(d1), -d2 / (d1 * d1))
