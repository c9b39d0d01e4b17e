"""Element-wise inverses of monotone maps by bisection, with implicit-function-theorem gradients.

For an increasing map ``x ↦ h(x; p)`` (element-wise, ``p`` a stack of parameters per element)
the inverse ``x = h^{-1}(y; p)`` has no closed form. It is found by bisection, and its
derivatives come from differentiating ``h(x(y, p); p) = y`` (SPEC §4):

    ∂x/∂y = 1 / h'(x),        ∂x/∂p = −(∂h/∂p)(x) / h'(x).

Differentiating through the bisection iterations instead gives zero gradients (the iterates are
piecewise constant in ``y`` and ``p``): the error the project exists to avoid. The backward and
forward-mode rules below are built of differentiable torch operations on the saved *output*
``x`` and on ``p``; since ``x`` itself carries this rule, derivatives of every order are those
of the true inverse. The rule works under plain autograd and under ``torch.func`` transforms
(``grad``, ``vjp``, ``jacrev``, ``jacfwd``, ``jvp``, ``vmap``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor


class MonotoneFamily(Protocol):
    """A family of increasing element-wise maps ``y = h(x; p)``: the contract of the solver.

    Shapes: ``x`` and ``y`` have any shape ``S``; ``p`` has shape ``(n_params, *S)`` and
    ``p[:, i]`` parameterises element ``i`` alone (no coupling across elements). All methods
    must be written in differentiable torch operations (they are differentiated again for
    higher-order derivatives) and must accept batched tensors of any ``S``.

    - ``h(x, p)``: ``h(x; p)``, shape ``S``; strictly increasing in ``x`` for each element.
    - ``dh_dx(x, p)``: ``∂h/∂x > 0``, shape ``S``.
    - ``dh_dp(x, p)``: the partial derivatives ``∂h/∂p_j``, shape ``(n_params, *S)``.
    - ``bracket(y, p) -> (lo, hi)``: shape ``S`` each, with ``h(lo) <= y <= h(hi)``.
    """

    def h(self, x: Tensor, p: Tensor) -> Tensor: ...

    def dh_dx(self, x: Tensor, p: Tensor) -> Tensor: ...

    def dh_dp(self, x: Tensor, p: Tensor) -> Tensor: ...

    def bracket(self, y: Tensor, p: Tensor) -> tuple[Tensor, Tensor]: ...


class BisectionError(RuntimeError):
    """Bisection did not reach the requested tolerance, or the bracket was invalid."""


def _bisect(family: MonotoneFamily, y: Tensor, p: Tensor, tol: float, max_iter: int) -> Tensor:
    """``x`` with ``|x − h^{-1}(y; p)| <= tol / 2`` element-wise, by bisection; shape ``S``.

    An element also counts as converged when its bracket ``[lo, hi]`` holds no representable
    number strictly inside (the answer is then exact to the last unit in the last place).
    """
    lo, hi = family.bracket(y, p)
    lo = lo.to(y.dtype).expand(y.shape)
    hi = hi.to(y.dtype).expand(y.shape)
    if y.numel() == 0:
        return y.clone()
    if not bool(torch.isfinite(y).all()) or not bool(torch.isfinite(p).all()):
        raise BisectionError("bisection needs finite targets y and parameters p")
    # An invalid bracket would make bisection converge to a wrong point silently.
    if not bool(((family.h(lo, p) <= y) & (family.h(hi, p) >= y)).all()):
        raise BisectionError("the bracket from family.bracket does not enclose the root")

    def converged(lo: Tensor, hi: Tensor) -> bool:
        mid = 0.5 * (lo + hi)
        done = (hi - lo <= tol) | (mid <= lo) | (mid >= hi)
        return bool(done.all())

    # Iterations needed for the widest bracket: run them without a host sync each step.
    width = float((hi - lo).max())
    n_free = 0 if width <= tol else min(max_iter, math.ceil(math.log2(width / tol)))
    it = 0
    while True:
        if it >= n_free and converged(lo, hi):
            break
        if it >= max_iter:
            worst = float((hi - lo).max())
            raise BisectionError(
                f"bisection did not converge in max_iter={max_iter} iterations: widest "
                f"bracket {worst:.3e} > tol={tol:.3e}; raise max_iter or tol"
            )
        mid = 0.5 * (lo + hi)
        above = family.h(mid, p) >= y
        hi = torch.where(above, mid, hi)
        lo = torch.where(above, lo, mid)
        it += 1
    return 0.5 * (lo + hi)


class _ImplicitInverse(torch.autograd.Function):
    """``x = h^{-1}(y; p)`` with the implicit-function-theorem derivative rules."""

    @staticmethod
    def forward(y: Tensor, p: Tensor, family: MonotoneFamily, tol: float, max_iter: int) -> Tensor:
        return _bisect(family, y.detach(), p.detach(), tol, max_iter)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _, p, family, _, _ = inputs
        # The output is saved, not recomputed: its own graph node carries this rule, which is
        # what makes the derivative of the backward (second order) that of the true inverse.
        ctx.save_for_backward(output, p)
        ctx.save_for_forward(output, p)
        ctx.family = family

    @staticmethod
    def backward(ctx: Any, grad_x: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        x, p = ctx.saved_tensors
        family: MonotoneFamily = ctx.family
        grad_y = grad_x / family.dh_dx(x, p)
        grad_p = -grad_y.unsqueeze(0) * family.dh_dp(x, p) if ctx.needs_input_grad[1] else None
        return grad_y, grad_p, None, None, None

    @staticmethod
    def jvp(ctx: Any, dy: Tensor | None, dp: Tensor | None, *_: Any) -> Tensor:
        x, p = ctx.saved_tensors
        family: MonotoneFamily = ctx.family
        num = torch.zeros_like(x) if dy is None else dy
        if dp is not None:
            num = num - (family.dh_dp(x, p) * dp).sum(0)
        return num / family.dh_dx(x, p)

    @staticmethod
    def vmap(
        info: Any,
        in_dims: tuple[int | None, ...],
        y: Tensor,
        p: Tensor,
        family: MonotoneFamily,
        tol: float,
        max_iter: int,
    ) -> tuple[Tensor, int]:
        # Explicit rule: bisection has data-dependent stopping, which a generated rule cannot
        # trace. Element-wise maps accept any shape, so the vmapped batch becomes a plain axis.
        y_dim, p_dim = in_dims[0], in_dims[1]
        n = int(info.batch_size)
        y_b = y.movedim(y_dim, 0) if y_dim is not None else y.unsqueeze(0).expand(n, *y.shape)
        if p_dim is not None:
            p_b = p.movedim(p_dim, 1)
        else:
            p_b = p.unsqueeze(1).expand(p.shape[0], n, *p.shape[1:])
        x = _apply(y_b, p_b, family, tol, max_iter)
        return x, 0


# ``Function.apply`` is untyped; this alias gives it the signature of ``forward``.
_apply: Callable[[Tensor, Tensor, MonotoneFamily, float, int], Tensor] = _ImplicitInverse.apply


def implicit_inverse(
    family: MonotoneFamily,
    y: Tensor,
    p: Tensor,
    tol: float | None = None,
    max_iter: int = 200,
) -> Tensor:
    """``x = h^{-1}(y; p)`` element-wise by bisection, differentiable in ``y`` and ``p`` by
    ``∂x/∂y = 1/h'(x)``, ``∂x/∂p = −(∂h/∂p)/h'(x)``.

    Args:
        family: the maps ``h`` (see :class:`MonotoneFamily` for the contract).
        y: targets, any shape ``S``.
        p: parameters, shape ``(n_params, *S)``.
        tol: absolute tolerance on ``x`` (the final bracket width); default ``1e-13`` in
            float64 and ``1e-5`` otherwise. A bracket that holds no float strictly inside also
            counts as converged.
        max_iter: the most bisection steps; more raise :class:`BisectionError`, as does a
            bracket that does not enclose the root. Nothing unconverged is returned.

    Returns:
        ``x``, shape ``S``, with ``|x − h^{-1}(y)| <= tol/2``.
    """
    if p.dim() != y.dim() + 1 or tuple(p.shape[1:]) != tuple(y.shape):
        raise ValueError(
            f"p must have shape (n_params, *y.shape) = (n_params, {tuple(y.shape)}), "
            f"got {tuple(p.shape)}"
        )
    if tol is None:
        tol = 1e-13 if y.dtype == torch.float64 else 1e-5
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    x = _apply(y, p, family, float(tol), int(max_iter))
    return x
