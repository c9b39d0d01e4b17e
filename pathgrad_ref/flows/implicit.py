"""Element-wise inverses of monotone maps by bisection, with implicit-function-theorem gradients.

For an increasing map ``x ↦ h(x; p)`` (element-wise, ``p`` a stack of parameters per element)
the inverse ``x = h^{-1}(y; p)`` has no closed form. It is found by bisection, and its
derivatives come from differentiating ``h(x(y, p); p) = y`` (``docs/theory.md`` §6):

    ∂x/∂y = 1 / h'(x),        ∂x/∂p = −(∂h/∂p)(x) / h'(x).

Differentiating through the bisection iterations instead gives zero gradients (the iterates are
piecewise constant in ``y`` and ``p``): the error the project exists to avoid. The backward and
forward-mode rules below are built of differentiable torch operations on the saved *output*
``x`` and on ``p``; since ``x`` itself carries this rule, derivatives of every order are those
of the true inverse. The rule works under plain autograd and under ``torch.func`` transforms
(``grad``, ``vjp``, ``jacrev``, ``jacfwd``, ``jvp``, ``vmap``).

On a GPU every value read back to the host stalls the launch queue, and a bisection of tens of
small steps per layer is launch-bound. The solver therefore runs a step count fixed in advance
(:func:`bisection_iterations`, from the family's bracket width and the tolerance) and reads the
device once, at the end, for the finiteness, bracket and convergence flags together
(:func:`read_status`); the map's parameter-only work (a softmax, an exp) is prepared once per
solve (``MonotoneFamily.prepare``). Nothing unconverged is ever returned.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
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

    Optional, read with ``getattr`` by the solver:

    - ``max_bracket_width: float``, an upper bound on ``hi − lo``: the step count is then known
      without reading the brackets, which saves a host synchronisation.
    - ``prepare(p) -> (x ↦ h(x; p))``: the map with the work that depends on ``p`` alone (e.g. a
      softmax) done once per solve instead of once per bisection step; it must return the same
      values as ``h``.
    """

    def h(self, x: Tensor, p: Tensor) -> Tensor: ...

    def dh_dx(self, x: Tensor, p: Tensor) -> Tensor: ...

    def dh_dp(self, x: Tensor, p: Tensor) -> Tensor: ...

    def bracket(self, y: Tensor, p: Tensor) -> tuple[Tensor, Tensor]: ...


class BisectionError(RuntimeError):
    """Bisection did not reach the requested tolerance, or the bracket was invalid."""


# The solver's status, one flag per condition, read from the device once per bisection.
STATUS_FIELDS = ("finite", "bracket", "converged")
StatusCheck = Callable[[Tensor], Sequence[bool]]


def read_status(status: Tensor) -> list[bool]:
    """The solver's status flags ``(finite, bracket, converged)`` on the host: the bisection's
    one host synchronisation (a single ``(3,)`` bool copy)."""
    return [bool(v) for v in status.tolist()]


_status_check: ContextVar[StatusCheck] = ContextVar("bisection_status_check", default=read_status)


@contextmanager
def status_check(check: StatusCheck) -> Iterator[None]:
    """Replace :func:`read_status`, the bisection's only host read, within the block.

    ``check(status)`` gets the ``(3,)`` bool status tensor on the solver's device and returns
    the flags ``(finite, bracket, converged)``. For tests: on the ``meta`` device, where no
    value can be read, a check that asserts the status' device and returns ``(True,) * 3`` lets
    the whole solver run, which proves that it makes no other host read; a counting wrapper
    around :func:`read_status` counts the reads on any device.
    """
    token = _status_check.set(check)
    try:
        yield
    finally:
        _status_check.reset(token)


def _prepared_map(family: MonotoneFamily, p: Tensor) -> Callable[[Tensor], Tensor]:
    """``x ↦ h(x; p)``, with the work that depends on ``p`` alone done once if the family offers
    ``prepare(p)`` (the same values as ``family.h``, computed by the same operations)."""
    prepare = getattr(family, "prepare", None)
    if prepare is not None:
        h: Callable[[Tensor], Tensor] = prepare(p)
        return h
    return lambda x: family.h(x, p)


def bisection_start(
    family: MonotoneFamily, h: Callable[[Tensor], Tensor], y: Tensor, p: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(lo, hi, finite, bracket_ok)``: the initial brackets (shape ``S``) and two bool flags
    of shape ``()``, that ``y`` and ``p`` are finite and that every bracket encloses its root
    (``h(lo) <= y <= h(hi)``; an invalid bracket would make bisection converge to a wrong point
    silently). Device code only: the flags are read later, with the convergence flag."""
    lo, hi = family.bracket(y, p)
    lo = lo.to(y.dtype).expand(y.shape)
    hi = hi.to(y.dtype).expand(y.shape)
    finite = torch.isfinite(y).all() & torch.isfinite(p).all()
    bracket_ok = ((h(lo) <= y) & (h(hi) >= y)).all()
    return lo, hi, finite, bracket_ok


def bisect_n(
    h: Callable[[Tensor], Tensor], y: Tensor, lo: Tensor, hi: Tensor, n_iter: int
) -> tuple[Tensor, Tensor]:
    """``n_iter`` bisection steps of the brackets ``[lo, hi]`` (shape ``S``) of ``h(x) = y``:
    ``mid = (lo + hi)/2``, then ``hi ← mid`` where ``h(mid) >= y``, else ``lo ← mid``.

    Device code only, with no host read: the step count is fixed in advance. Once a bracket
    holds no float strictly inside, ``mid`` equals ``lo`` or ``hi`` and further steps leave it
    unchanged (or collapse it onto an exact root), so extra steps are harmless."""
    for _ in range(n_iter):
        mid = 0.5 * (lo + hi)
        above = h(mid) >= y
        hi = torch.where(above, mid, hi)
        lo = torch.where(above, lo, mid)
    return lo, hi


def bisection_converged(lo: Tensor, hi: Tensor, tol: float) -> Tensor:
    """bool, shape ``()``: every bracket has width ``<= tol`` or holds no float strictly inside
    (the midpoint is then exact to the last unit in the last place)."""
    mid = 0.5 * (lo + hi)
    return ((hi - lo <= tol) | (mid <= lo) | (mid >= hi)).all()


def bisection_iterations(width: float, tol: float) -> int:
    """``⌈log2(width / tol)⌉ + 1``: steps that shrink a bracket of width ``width`` to ``tol``
    (each step halves it), plus one for the rounding of ``width`` and of the midpoints."""
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"bracket width must be finite and positive, got {width}")
    return 1 if width <= tol else math.ceil(math.log2(width / tol)) + 1


def _bisect(family: MonotoneFamily, y: Tensor, p: Tensor, tol: float, max_iter: int) -> Tensor:
    """``x`` with ``|x − h^{-1}(y; p)| <= tol / 2`` element-wise, by bisection; shape ``S``.

    An element also counts as converged when its bracket ``[lo, hi]`` holds no representable
    number strictly inside (the answer is then exact to the last unit in the last place).

    Host synchronisations: one, when the family states ``max_bracket_width`` (an upper bound
    on ``hi − lo`` of its brackets, e.g. ``2π`` for :class:`~pathgrad_ref.flows.u1.TanMixture`);
    the step count :func:`bisection_iterations` is then known in advance, and the finiteness,
    bracket and convergence flags are read together after the steps (:func:`read_status`).
    Without it, the widest bracket is read first (two reads). If rounding left a bracket wider
    than ``tol`` after those steps, a few more follow, each batch with one more read, up to
    ``max_iter`` steps in all; nothing unconverged is returned.
    """
    if y.numel() == 0:
        return y.clone()
    check = _status_check.get()
    width: float | None = getattr(family, "max_bracket_width", None)
    if width is None:
        lo, hi = family.bracket(y, p)
        width = float((hi - lo).max())
        if not (math.isfinite(width) and width > 0):
            # Non-finite input gives a non-finite width: let the status read name the cause.
            width = tol
    n_iter = min(max_iter, bisection_iterations(width, tol))
    h = _prepared_map(family, p)
    lo, hi, finite, bracket_ok = bisection_start(family, h, y, p)
    lo, hi = bisect_n(h, y, lo, hi, n_iter)
    while True:
        status = torch.stack([finite, bracket_ok, bisection_converged(lo, hi, tol)])
        ok_finite, ok_bracket, converged = check(status)
        if not ok_finite:
            raise BisectionError("bisection needs finite targets y and parameters p")
        if not ok_bracket:
            raise BisectionError("the bracket from family.bracket does not enclose the root")
        if converged:
            return 0.5 * (lo + hi)
        if n_iter >= max_iter:
            worst = float((hi - lo).max())
            raise BisectionError(
                f"bisection did not converge in max_iter={max_iter} iterations: widest "
                f"bracket {worst:.3e} > tol={tol:.3e}; raise max_iter or tol"
            )
        extra = min(max_iter - n_iter, 4)
        lo, hi = bisect_n(h, y, lo, hi, extra)
        n_iter += extra


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
