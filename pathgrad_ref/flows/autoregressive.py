"""Masked autoregressive layers (MAF: Papamakarios et al. 2017) on a MADE conditioner
(Germain et al. 2015), and their score steps (``docs/theory.md`` §4.7).

In a fixed order of the features, ``y_i = f(x_i; c_i(y_{<i}))`` with ``f`` any
:class:`~pathgrad_ref.flows.transforms.ElementwiseTransform`. Its two directions cost
differently:

- *density* direction ``g = T^{-1}``, ``x_i = f^{-1}(y_i; c_i(y_{<i}))``: the parameters come
  from ``y``, all known, so one MADE pass computes all of them: **one pass**;
- *sampling* direction ``T``, the layer's ``forward`` (``x_{l+1} = T_l(x_l)``): ``y_i`` needs
  ``y_{<i}``, so ``d`` MADE passes, each fixing one more degree of the order: **sequential**.

The score steps use the one-pass map wherever the mathematics allows it (the default step of
:class:`~pathgrad_ref.flows.base.Layer` runs the *other* direction of the step's own map):

- ``forward_and_score`` (reverse KL, Algorithm 1 forward): the sequential ``forward`` that the
  sample needs anyway, then ``s_y = J_g(y)ᵀ s_x + ∇_y log|det J_g(y)|``: one VJP through the
  **one-pass** ``g``. Extra cost over ``forward``: one MADE pass and its backward.
- ``inverse_and_score`` (forward KL, Algorithm 1 through the inverse): the one-pass ``inverse``,
  then ``s_x = J_T(x)ᵀ s_y + ∇_x log|det J_T(x)|``. The default would take that VJP through
  the **sequential** ``T`` (``d`` MADE passes and their backward); the override solves the
  equivalent triangular system ``J_g(y)ᵀ s_x = s_y − ∇_y log|det J_g(y)|`` by ``d − 1`` Jacobi
  steps, each one VJP through the graph of the one-pass ``g`` (one MADE forward, ``d``
  backwards). Cost ∝ ``d`` either way, where the standard (maximum likelihood) estimator needs
  one pass: for an autoregressive flow trained by forward KL the path gradient is the expensive
  estimator (measured in ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..distributions import StandardNormal
from .base import Flow, Layer
from .conditioners import ACTIVATIONS
from .transforms import Affine, ElementwiseTransform


class MaskedLinear(nn.Linear):
    """``y = b + (W ⊙ M) x`` with a fixed 0/1 mask ``M`` of ``(out_features, in_features)``."""

    mask: Tensor

    def __init__(self, mask: Tensor, bias: bool = True) -> None:
        super().__init__(mask.shape[1], mask.shape[0], bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked MLP ``(N, d) -> (N, n_params, d)``, autoregressive in ``order``.

    ``order[i]`` is the degree of feature ``i`` (a permutation of ``0 … d−1``): output
    ``[:, k, i]`` depends on input ``j`` only if ``order[j] < order[i]``. Hidden unit ``u`` of
    every layer has degree ``u mod (d−1)`` and sees inputs of degree ≤ its own; an output of
    degree ``m`` sees hidden units of degree < ``m``. The last layer starts at zero
    (``zero_init_last``), so an affine layer starts as the identity.
    """

    order: Tensor

    def __init__(
        self,
        order: Tensor,
        n_params: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "tanh",
        zero_init_last: bool = True,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}"
            )
        order = order.long().flatten()
        d = int(order.numel())
        if sorted(order.tolist()) != list(range(d)):
            raise ValueError(f"order must be a permutation of range({d}), got {order.tolist()}")
        self.dim, self.n_params = d, int(n_params)
        self.register_buffer("order", order.clone(), persistent=True)
        degrees = [order]
        for width in hidden:
            degrees.append(torch.arange(width) % max(d - 1, 1))
        layers: list[nn.Module] = []
        for prev, cur in itertools.pairwise(degrees):
            layers += [
                MaskedLinear((cur[:, None] >= prev[None, :]).float()),
                ACTIVATIONS[activation](),
            ]
        out_deg = order.repeat(self.n_params)  # output row k·d + i has the degree of feature i
        last = MaskedLinear((out_deg[:, None] > degrees[-1][None, :]).float())
        if zero_init_last:
            with torch.no_grad():
                last.weight.zero_()
                assert last.bias is not None
                last.bias.zero_()
        self.net = nn.Sequential(*layers, last)

    def forward(self, y: Tensor) -> Tensor:
        out: Tensor = self.net(y)
        return out.reshape(y.shape[0], self.n_params, self.dim)


class MaskedAutoregressive(Layer):
    """``y_i = f(x_i; c_i(y_{<i}))`` on ``(N, d)`` batches, ``c`` a :class:`MADE`.

    ``forward`` (sampling direction) is sequential: ``d`` MADE passes; ``inverse`` (density
    direction) is one pass. ``log|det ∂y/∂x| = Σ_i log f'(x_i; c_i)`` (triangular Jacobian). The
    sampling-direction score step is the default one of :class:`Layer` (a VJP through the
    one-pass map); the inverse one solves a triangular system with VJPs of the one-pass map
    (see the module docstring for the costs).
    """

    def __init__(
        self,
        dim: int,
        transform: ElementwiseTransform | None = None,
        hidden: Sequence[int] = (64, 64),
        order: Tensor | None = None,
        activation: str = "tanh",
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.event_shape = (self.dim,)
        self.transform = Affine() if transform is None else transform
        order = torch.arange(self.dim) if order is None else order
        self.made = MADE(order, self.transform.n_params, hidden, activation, zero_init)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"MaskedAutoregressive expects a (batch, {self.dim}) batch, got {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Sequential: after pass ``k`` the outputs of degree ``< k`` are final, so ``d``
        passes give ``y``; the last pass's parameters are ``c(y)`` (output ``i`` sees only
        degrees below its own), hence the log-det."""
        self._check(x)
        y = torch.zeros_like(x)
        log_deriv = torch.zeros_like(x)
        for _ in range(self.dim):
            res = self.transform.forward(x, self.made(y))
            y, log_deriv = res.out, res.log_deriv
        return y, log_deriv.sum(1)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """One pass: ``x = f^{-1}(y; c(y))``."""
        self._check(y)
        res = self.transform.inverse(y, self.made(y))
        return res.out, res.log_deriv.sum(1)

    def forward_and_score(self, x: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Sequential ``forward``, then one VJP through the one-pass inverse at ``y``:
        ``s_y = J_g(y)ᵀ s_x + ∇_y log|det J_g(y)|`` (the default step, named here for its
        cost)."""
        return super().forward_and_score(x, score)

    def inverse_and_score(self, y: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One-pass ``inverse``, then ``s_x = J_g(y)^{-T} (s_y − ∇_y log|det J_g(y)|)`` by a
        triangular solve that needs only the one-pass map ``g``.

        ``J_g = D + N`` with ``D = diag(∂x_i/∂y_i) = diag(exp(log (f^{-1})'))`` and ``N`` strictly
        lower triangular in the order, so ``D^{-1} Nᵀ`` is nilpotent and the Jacobi iteration

            w ← w + D^{-1} (u − J_gᵀ w),        w_0 = D^{-1} u,   u = s_y − ∇_y log|det J_g|

        is exact after ``d − 1`` steps. Each step is one VJP through the graph of *one* MADE pass
        (``torch.func.vjp``'s function is reused): one forward and ``d`` backward passes of the
        MADE in all, where the default step would run the sequential forward (``d`` passes) and
        its backward. Cost ∝ ``d`` either way; maximum likelihood needs one pass.
        """
        x, log_det = self.inverse(y)

        def density(u: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
            res = self.transform.inverse(u, self.made(u))
            if not res.out.requires_grad:
                raise RuntimeError(
                    "MaskedAutoregressive.inverse_and_score: the density map does not depend on "
                    "its input under torch.func.vjp; expected a differentiable map"
                )
            return (res.out, res.log_deriv.sum(1)), res.log_deriv

        with torch.no_grad():  # values only: no graph in the parameters (see Layer's default)
            result: Any = torch.func.vjp(density, y.detach(), has_aux=True)
            (out, ladj), vjp_fn, log_deriv = result
            none, one = torch.zeros_like(out), torch.ones_like(ladj)
            (grad_ladj,) = vjp_fn((none, one))
            u = score.detach() - grad_ladj
            inv_diag = torch.exp(-log_deriv)
            w = u * inv_diag
            for _ in range(self.dim - 1):
                (jt_w,) = vjp_fn((w, torch.zeros_like(ladj)))
                w = w + (u - jt_w) * inv_diag
        return x, log_det, w


TRANSFORMS = ("affine", "spline")


def _transform(kind: str) -> ElementwiseTransform:
    if kind == "affine":
        return Affine()
    if kind == "spline":
        from .splines import RationalQuadraticSpline

        spline: ElementwiseTransform = RationalQuadraticSpline()
        return spline
    raise ValueError(f"unknown transform {kind!r}; expected one of {TRANSFORMS}")


def masked_autoregressive_flow(
    dim: int,
    n_layers: int = 4,
    hidden: Sequence[int] = (64, 64),
    transform: str = "affine",
    activation: str = "tanh",
) -> Flow:
    """MAF on ``R^dim``: ``n_layers`` masked autoregressive layers with ``transform``
    (``"affine"`` or ``"spline"``: rational-quadratic, 8 bins on ``[−5, 5]``), the order
    reversed from one layer to the next, zero-initialised conditioners; ``N(0, I)`` base."""
    layers: list[Layer] = []
    for i in range(n_layers):
        order = torch.arange(dim) if i % 2 == 0 else torch.arange(dim).flip(0)
        layers.append(MaskedAutoregressive(dim, _transform(transform), hidden, order, activation))
    return Flow(StandardNormal((dim,)), layers)
