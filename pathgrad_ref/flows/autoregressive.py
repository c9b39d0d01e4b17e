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
from torch import Tensor

from ..distributions import StandardNormal
from . import _args
from .base import Flow, Layer
from .conditioners import MLP
from .transforms import Affine, ElementwiseTransform


class MADE(MLP):
    """Masked MLP ``(N, d) -> (N, n_params, d)``, autoregressive in ``order``.

    ``order[i]`` is the degree of feature ``i`` (a permutation of ``0 … d−1``): output
    ``[:, k, i]`` depends on input ``j`` only if ``order[j] < order[i]``. Hidden unit ``u`` of
    every layer has degree ``u mod (d−1)`` and sees the units of the layer below of degree ≤ its
    own; an output of degree ``m`` sees hidden units of degree < ``m``. Every hidden degree
    ``0 … d−2`` is below the top output degree ``d−1``, so every hidden unit reaches an output;
    a width of at least ``d−1`` gives every degree a unit, so that every input ``j`` with
    ``order[j] < order[i]`` can reach output ``i`` (narrower layers are refused). The last layer
    starts at zero (``zero_init_last``), so an affine layer starts as the identity. The network
    is an :class:`~pathgrad_ref.flows.conditioners.MLP` whose layers are masked.
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
        order = _args.permutation("order", order)
        d = int(order.numel())
        n_params = _args.integer("n_params", n_params)
        hidden = _args.widths("hidden", hidden)
        for i, width in enumerate(hidden):
            if width < d - 1:
                raise ValueError(
                    f"hidden[{i}] must be >= d - 1 = {d - 1} (one unit per degree, else some "
                    f"inputs reach no output), got {width}"
                )
        degrees = [order, *(torch.arange(width) % max(d - 1, 1) for width in hidden)]
        pairs = itertools.pairwise(degrees)
        masks = [(cur[:, None] >= prev[None, :]).float() for prev, cur in pairs]
        out_deg = order.repeat(n_params)  # output row k·d + i has the degree of feature i
        masks.append((out_deg[:, None] > degrees[-1][None, :]).float())
        super().__init__(d, n_params * d, hidden, activation, True, zero_init_last, masks)
        self.dim, self.n_params = d, n_params
        self.register_buffer("order", order.clone(), persistent=True)

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
        self.dim = _args.integer("dim", dim)
        self.event_shape = (self.dim,)
        if transform is not None and not isinstance(transform, ElementwiseTransform):
            raise TypeError(
                f"transform must be an ElementwiseTransform, got {type(transform).__name__}"
            )
        self.transform = Affine() if transform is None else transform
        order = torch.arange(self.dim) if order is None else order
        order = _args.permutation("order", order, self.dim)
        zero_init = _args.flag("zero_init", zero_init)
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
        self._check(y)

        def density(u: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
            res = self.transform.inverse(u, self.made(u))
            if not res.out.requires_grad:
                raise RuntimeError(
                    "MaskedAutoregressive.inverse_and_score: the density map does not depend on "
                    "its input under torch.func.vjp; expected a differentiable map"
                )
            return (res.out, res.log_deriv.sum(1)), res.log_deriv

        # The one MADE pass: under grad mode ``vjp``'s primal outputs keep the ordinary graph
        # in the parameters and in ``y``, so they are the layer's ``(x, log_det)`` as well as
        # the point of the input-only VJPs below.
        result: Any = torch.func.vjp(density, y, has_aux=True)
        (x, log_det), vjp_fn, log_deriv = result
        with torch.no_grad():  # values only: no graph in the parameters (see Layer's default)
            log_deriv = log_deriv.detach()
            none, one = torch.zeros_like(x), torch.ones_like(log_det)
            (grad_ladj,) = vjp_fn((none, one))
            u = score.detach() - grad_ladj
            inv_diag = torch.exp(-log_deriv)
            w = u * inv_diag
            for _ in range(self.dim - 1):
                (jt_w,) = vjp_fn((w, torch.zeros_like(log_det)))
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
    dim = _args.integer("dim", dim)
    n_layers = _args.integer("n_layers", n_layers)
    layers: list[Layer] = []
    for i in range(n_layers):
        order = torch.arange(dim) if i % 2 == 0 else torch.arange(dim).flip(0)
        layers.append(MaskedAutoregressive(dim, _transform(transform), hidden, order, activation))
    return Flow(StandardNormal((dim,)), layers)
