"""Element-wise inverses of monotone maps by root-finding, with implicit-function-theorem gradients.

For an increasing map ``x ↦ h(x; p)`` (element-wise, ``p`` its parameters) the inverse
``x = h^{-1}(y; p)`` has no closed form. It is found by bisection, and its derivatives come from
differentiating ``h(x(y, p); p) = y`` (``docs/theory.md`` §6):

    ∂x/∂y = 1 / h'(x),        ∂x/∂p = −(∂h/∂p)(x) / h'(x).

Differentiating through the bisection iterations instead gives zero gradients (the iterates are
piecewise constant in ``y`` and ``p``): the error the project exists to avoid. The backward and
forward-mode rules below are built of differentiable torch operations on the saved *output*
``x`` and on ``p``; since ``x`` itself carries this rule, derivatives of every order are those
of the true inverse. The rule works under plain autograd and under ``torch.func`` transforms
(``grad``, ``vjp``, ``jacrev``, ``jacfwd``, ``jvp``, ``vmap``), except forward over forward mode
(``jacfwd(jacfwd(·))``): torch drops the outer tangent of a custom ``jvp`` rule and returns zero
higher derivatives there (pytorch/pytorch#197867); ``jacrev(jacfwd(·))`` is exact.

One solver serves two kinds of map:

- a family with closed forms (:class:`MonotoneFamily`: ``h'``, ``∂h/∂p``, a bracket), such as
  the U(1) flow's mixture of tan transforms;
- any increasing element-wise map given only in its explicit direction, ``h(x, *params)``
  (:class:`MonotoneMap`), such as zuko's monotone networks and polynomials. ``h'``,
  ``∂h/∂params`` and ``h''/h'`` then come from automatic differentiation of ``h``
  (:func:`log_derivatives`), and the bracket from doubling ``[−B, B]`` a fixed number of times
  (:data:`EXPANSIONS`). A root that no bracket holds raises, naming the layer: nothing is
  clamped.

On a GPU every value read back to the host stalls the launch queue, and a bisection of tens of
small steps per layer is launch-bound. The solver therefore runs a step count fixed in advance
(:func:`bisection_iterations`, from the widest possible bracket and the tolerance) and reads the
device once, at the end, for the finiteness, bracket and convergence flags together
(:func:`read_status`); the map's parameter-only work (a softmax, an exp) is prepared once per
solve (``prepare``). Nothing unconverged is ever returned.
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
    - ``element_axes = (1,)``: a vmapped axis of ``y`` enters ``p`` at axis 1 (see
      :class:`MonotoneMap`); without it the solver solves one vmapped slice at a time.
    """

    def h(self, x: Tensor, p: Tensor) -> Tensor: ...

    def dh_dx(self, x: Tensor, p: Tensor) -> Tensor: ...

    def dh_dp(self, x: Tensor, p: Tensor) -> Tensor: ...

    def bracket(self, y: Tensor, p: Tensor) -> tuple[Tensor, Tensor]: ...


class MonotoneMap(Protocol):
    """An increasing element-wise map ``y = h(x, *params)`` given in its explicit direction.

    ``x`` and ``y`` have any shape ``S``; element ``i`` of ``y`` depends on element ``i`` of
    ``x`` alone (and on the parameters). ``h`` is written in differentiable torch operations that
    ``torch.func`` transforms accept: the solver differentiates it for ``h'``, ``∂h/∂params``
    and ``h''/h'``. Optional attributes, read with ``getattr``:

    - ``element_axes: tuple[int | None, ...]``, one entry per parameter: the axis at which a new
      leading batch axis of ``x`` enters that parameter (``0`` for parameters laid out like
      ``x`` with trailing dimensions), or ``None`` for a parameter shared by all elements (a
      network's weights). Under ``vmap`` the solver then folds the vmapped axis into the
      elements; without it (or when a shared parameter is vmapped) it solves one slice at a
      time.
    - ``initial_bound: float`` (default :data:`INITIAL_BOUND`), the half-width ``B`` of the
      first bracket ``[−B, B]``.
    - ``prepare(*params) -> (x ↦ h(x, *params))``, as for :class:`MonotoneFamily`.
    """

    def h(self, x: Tensor, *params: Tensor) -> Tensor: ...


INITIAL_BOUND = 10.0
"""Half-width ``B`` of the first bracket ``[−B, B]`` of a map without its own bracket."""

EXPANSIONS = 16
"""Doublings of a bracket ``[−B, B]`` before the root must lie inside: ``±B·2^16`` (``±655,360``
for ``B = 10``). Run unconditionally (a bracket that already holds its root stays), so that the
step count is known in advance; a root beyond raises."""


def derivative(h: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """``(h(x), h'(x))`` of an element-wise map, shape ``S`` each, by one forward-mode pass
    (tangent 1 in every element). The values keep their autograd graph in ``x`` and in the
    tensors ``h`` closes over, and the pass composes with ``torch.func`` transforms."""
    value: Any = torch.func.jvp(h, (x,), (torch.ones_like(x),))
    return value[0], value[1]


def log_derivatives(h: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(h(x), log h'(x), h''(x)/h'(x))`` of an increasing element-wise map, shape ``S`` each:
    reverse mode over reverse mode (for an element-wise map the VJP with cotangent 1 is the
    diagonal ``h'``, and the VJP of that is ``h''``), so ``h''`` is exact (no finite
    differences). Reverse mode, because torch runs many forward-mode rules through Python
    decompositions: it is about 1.4× faster here. ``h`` and ``log h'`` keep their graph (a
    flow's log-det is differentiated by the standard gradient); ``h''/h'`` feeds the score step,
    which uses its value."""
    ones = torch.ones_like(x)

    def first(u: Tensor) -> tuple[Tensor, Tensor]:
        value: Any = torch.func.vjp(h, u)
        y, pullback = value
        return pullback(torch.ones_like(y))[0], y

    result: Any = torch.func.vjp(first, x, has_aux=True)
    dh, pullback2, y = result
    (d2h,) = pullback2(ones)
    return y, torch.log(dh), d2h / dh


class BisectionError(RuntimeError):
    """Bisection did not reach the requested tolerance, or the bracket was invalid."""


# The solver's status, one flag per condition, read from the device once per bisection.
STATUS_FIELDS = ("finite", "bracket", "converged", "continuous")
StatusCheck = Callable[[Tensor], Sequence[bool]]


def read_status(status: Tensor) -> list[bool]:
    """The solver's status flags ``(finite, bracket, converged, continuous)`` on the host: the
    bisection's one host synchronisation (a single ``(4,)`` bool copy)."""
    return [bool(v) for v in status.tolist()]


_status_check: ContextVar[StatusCheck] = ContextVar("bisection_status_check", default=read_status)


@contextmanager
def status_check(check: StatusCheck) -> Iterator[None]:
    """Replace :func:`read_status`, the bisection's only host read, within the block.

    ``check(status)`` gets the ``(4,)`` bool status tensor on the solver's device and returns
    the flags ``(finite, bracket, converged, continuous)``. For tests: on the ``meta`` device,
    where no value can be read, a check that asserts the status' device and returns all
    ``True`` lets the whole solver run, which proves that it makes no other host read; a
    counting wrapper around :func:`read_status` counts the reads on any device.
    """
    token = _status_check.set(check)
    try:
        yield
    finally:
        _status_check.reset(token)


def _prepared_map(family: Any, params: Sequence[Tensor]) -> Callable[[Tensor], Tensor]:
    """``x ↦ h(x; p)``, with the work that depends on ``p`` alone done once if the family offers
    ``prepare(*params)`` (the same values as ``family.h``, computed by the same operations)."""
    prepare = getattr(family, "prepare", None)
    if prepare is not None:
        h: Callable[[Tensor], Tensor] = prepare(*params)
        return h
    return lambda x: family.h(x, *params)


def _bound(family: Any) -> float:
    bound = float(getattr(family, "initial_bound", INITIAL_BOUND))
    if not (math.isfinite(bound) and bound > 0):
        raise ValueError(f"initial_bound must be finite and positive, got {bound}")
    return bound


def expand_bracket(
    h: Callable[[Tensor], Tensor], y: Tensor, bound: float, expansions: int = EXPANSIONS
) -> tuple[Tensor, Tensor]:
    """Brackets ``(lo, hi)`` of the roots of ``h(x) = y`` for an increasing ``h``, shape ``S``:
    start from ``[−B, B]`` and double ``lo`` while ``h(lo) > y`` and ``hi`` while ``h(hi) < y``,
    ``expansions`` times, unconditionally (device code, no host read). Where the root lies
    beyond ``±B·2^expansions`` the bracket does not hold it, and the status read raises."""
    lo = torch.full_like(y, -bound)
    hi = torch.full_like(y, bound)
    for _ in range(expansions):
        lo = torch.where(h(lo) > y, 2.0 * lo, lo)
        hi = torch.where(h(hi) < y, 2.0 * hi, hi)
    return lo, hi


def bisection_start(
    family: Any, h: Callable[[Tensor], Tensor], y: Tensor, params: Sequence[Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(lo, hi, finite, bracket_ok)``: the initial brackets (shape ``S``) and two bool flags
    of shape ``()``, that ``y`` and the parameters are finite and that every bracket encloses its
    root (``h(lo) <= y <= h(hi)``; an invalid bracket would make bisection converge to a wrong
    point silently). The brackets are the family's own (``family.bracket(y, *params)``) or
    :func:`expand_bracket`'s. Device code only: the flags are read later, with the convergence
    flag."""
    bracket = getattr(family, "bracket", None)
    if bracket is not None:
        lo, hi = bracket(y, *params)
        lo = lo.to(y.dtype).expand(y.shape)
        hi = hi.to(y.dtype).expand(y.shape)
    else:
        lo, hi = expand_bracket(h, y, _bound(family))
    finite = torch.isfinite(y).all()
    for p in params:
        finite = finite & torch.isfinite(p).all()
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


def root_is_continuous(h: Callable[[Tensor], Tensor], y: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """bool, shape ``()``: over every final bracket ``h`` rises no more than its slope and
    rounding allow, ``h(hi) − h(lo) <= 4·m·(hi − lo) + 64·eps·(1 + |y|)``, ``m`` the larger of
    the one-sided difference quotients just outside the bracket (step ``sqrt(eps)·(1 + |x|)``,
    so that a jump inside the bracket does not enter them). A map that jumps across the target
    (zuko's Bernstein polynomial jumps by about 1e-5 at its bound) would otherwise give a
    bracket of width ``tol`` whose midpoint misses ``h(x) = y`` by the jump, silently. Device
    code only, and no derivatives (the solver may run inside autograd's forward mode)."""
    eps = torch.finfo(y.dtype).eps
    step = math.sqrt(eps) * (1.0 + (0.5 * (lo + hi)).abs())
    h_lo, h_hi = h(lo), h(hi)
    slope = torch.maximum((h_lo - h(lo - step)) / step, (h(hi + step) - h_hi) / step)
    allowed = 4.0 * slope * (hi - lo) + 64.0 * eps * (1.0 + y.abs())
    return ((h_hi - h_lo) <= allowed).all()


def bisection_iterations(width: float, tol: float) -> int:
    """``⌈log2(width / tol)⌉ + 1``: steps that shrink a bracket of width ``width`` to ``tol``
    (each step halves it), plus one for the rounding of ``width`` and of the midpoints."""
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"bracket width must be finite and positive, got {width}")
    return 1 if width <= tol else math.ceil(math.log2(width / tol)) + 1


def _bisect(
    family: Any, y: Tensor, params: Sequence[Tensor], tol: float, max_iter: int, name: str
) -> Tensor:
    """``x`` with ``|x − h^{-1}(y)| <= tol / 2`` element-wise, by bisection; shape ``S``.

    An element also counts as converged when its bracket ``[lo, hi]`` holds no representable
    number strictly inside (the answer is then exact to the last unit in the last place).

    Host synchronisations: one, when the widest bracket is known in advance: the family states
    ``max_bracket_width`` (e.g. ``2π`` for :class:`~pathgrad_ref.flows.u1.TanMixture`), or it
    has no bracket of its own and the expanded bracket is at most ``2B·2^EXPANSIONS`` wide. The
    step count :func:`bisection_iterations` is then fixed, and the finiteness, bracket and
    convergence flags are read together after the steps (:func:`read_status`). A family with a
    bracket but no stated width has its widest bracket read first (two reads). If rounding left a
    bracket wider than ``tol`` after those steps, a few more follow, each batch with one more
    read, up to ``max_iter`` steps in all; nothing unconverged is returned.
    """
    if y.numel() == 0:
        return y.clone()
    where = f"{name}: " if name else ""
    check = _status_check.get()
    width: float | None = getattr(family, "max_bracket_width", None)
    if width is None:
        if getattr(family, "bracket", None) is None:
            width = 2.0 * _bound(family) * 2.0**EXPANSIONS
        else:
            lo, hi = family.bracket(y, *params)
            width = float((hi - lo).max())
            if not (math.isfinite(width) and width > 0):
                # Non-finite input gives a non-finite width: let the status read name the cause.
                width = tol
    n_iter = min(max_iter, bisection_iterations(width, tol))
    h = _prepared_map(family, params)
    lo, hi, finite, bracket_ok = bisection_start(family, h, y, params)
    lo, hi = bisect_n(h, y, lo, hi, n_iter)
    while True:
        converged_now = bisection_converged(lo, hi, tol)
        continuous = root_is_continuous(h, y, lo, hi)
        status = torch.stack([finite, bracket_ok, converged_now, continuous])
        ok_finite, ok_bracket, converged, ok_continuous = check(status)
        if not ok_finite:
            raise BisectionError(f"{where}bisection needs finite targets y and parameters p")
        if not ok_bracket:
            if getattr(family, "bracket", None) is not None:
                raise BisectionError(
                    f"{where}the bracket from family.bracket does not enclose the root"
                )
            reach = _bound(family) * 2.0**EXPANSIONS
            raise BisectionError(
                f"{where}could not bracket the root of h(x) = y within [-{reach:g}, {reach:g}]: "
                "a target lies outside the range of the increasing map (nothing is clamped)"
            )
        if converged and not ok_continuous:
            raise BisectionError(
                f"{where}h jumps across the root: h(hi) - h(lo) is larger than its slope and "
                "rounding allow over the final bracket (a discontinuous map); a target inside "
                "the jump has no root, and one at its edge cannot be placed to rounding"
            )
        if converged:
            return 0.5 * (lo + hi)
        if n_iter >= max_iter:
            worst = float((hi - lo).max())
            raise BisectionError(
                f"{where}bisection did not converge in max_iter={max_iter} iterations: widest "
                f"bracket {worst:.3e} > tol={tol:.3e}; raise max_iter or tol"
            )
        extra = min(max_iter - n_iter, 4)
        lo, hi = bisect_n(h, y, lo, hi, extra)
        n_iter += extra


def _dh_dx(family: Any, x: Tensor, params: Sequence[Tensor]) -> Tensor:
    """``h'(x)``: the family's closed form, else forward-mode autodiff of ``h``."""
    closed = getattr(family, "dh_dx", None)
    if closed is not None:
        dh: Tensor = closed(x, *params)
        return dh
    return derivative(lambda u: family.h(u, *params), x)[1]


# Leading arguments of ``_ImplicitInverse`` before the parameters: y, family, tol, max_iter, name.
_N_FIXED = 5


class _ImplicitInverse(torch.autograd.Function):
    """``x = h^{-1}(y; p)`` with the implicit-function-theorem derivative rules.

    Arguments ``(y, family, tol, max_iter, name, *params)``. A family with the closed form
    ``dh_dp`` (one parameter tensor of shape ``(n_params, *S)``) uses it; any other gets
    ``∂h/∂params`` by a VJP (reverse mode) or JVP (forward mode) of ``h`` at the root."""

    @staticmethod
    def forward(
        y: Tensor, family: Any, tol: float, max_iter: int, name: str, *params: Tensor
    ) -> Tensor:
        detached = [p.detach() for p in params]
        return _bisect(family, y.detach(), detached, tol, max_iter, name)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        family = inputs[1]
        params = inputs[_N_FIXED:]
        # The output is saved, not recomputed: its own graph node carries this rule, which is
        # what makes the derivative of the backward (second order) that of the true inverse.
        ctx.save_for_backward(output, *params)
        ctx.save_for_forward(output, *params)
        ctx.family = family

    @staticmethod
    def backward(ctx: Any, grad_x: Tensor) -> tuple[Tensor | None, ...]:
        x, *params = ctx.saved_tensors
        family: Any = ctx.family
        needs = ctx.needs_input_grad[_N_FIXED:]
        none = (None,) * (_N_FIXED - 1)
        dh_dp = getattr(family, "dh_dp", None)
        if dh_dp is not None:
            (p,) = params
            grad_y = grad_x / family.dh_dx(x, p)
            grad_p = -grad_y.unsqueeze(0) * dh_dp(x, p) if needs[0] else None
            return (grad_y, *none, grad_p)
        grad_y = grad_x / _dh_dx(family, x, params)
        grads: list[Tensor | None] = [None] * len(params)
        if any(needs):
            result: Any = torch.func.vjp(lambda *ps: family.h(x, *ps), *params)
            for i, g in enumerate(result[1](-grad_y)):
                grads[i] = g if needs[i] else None
        return (grad_y, *none, *grads)

    @staticmethod
    def jvp(ctx: Any, dy: Tensor | None, *tangents: Any) -> Tensor:
        x, *params = ctx.saved_tensors
        family: Any = ctx.family
        dparams = tangents[_N_FIXED - 1 :]
        num = torch.zeros_like(x) if dy is None else dy
        dh_dp = getattr(family, "dh_dp", None)
        if dh_dp is not None:
            (p,), (dp,) = params, dparams
            if dp is not None:
                num = num - (dh_dp(x, p) * dp).sum(0)
            dh: Tensor = family.dh_dx(x, p)
            return num / dh
        # Reverse mode inside this forward-mode rule: under plain forward-mode autograd
        # (``torch.autograd.forward_ad``, gradcheck's ``check_forward_ad``) a nested
        # ``torch.func.jvp`` raises, a VJP does not. ``h' = 1ᵀ ∂h/∂x`` (element-wise map), and
        # ``(∂h/∂p)·dp`` is the VJP, in ``u``, of the linear map ``u ↦ uᵀ ∂h/∂p``.
        value: Any = torch.func.vjp(lambda u: family.h(u, *params), x)
        dh_x: Tensor = value[1](torch.ones_like(value[0]))[0]
        active = [i for i, t in enumerate(dparams) if t is not None]
        if active:

            def h_of(*moving: Tensor) -> Tensor:
                full = list(params)
                for i, p in zip(active, moving, strict=True):
                    full[i] = p
                out: Tensor = family.h(x, *full)
                return out

            pulled: Any = torch.func.vjp(h_of, *(params[i] for i in active))
            transposed: Any = torch.func.vjp(pulled[1], torch.zeros_like(pulled[0]))
            num = num - transposed[1](tuple(dparams[i] for i in active))[0]
        return num / dh_x

    @staticmethod
    def vmap(info: Any, in_dims: tuple[int | None, ...], *args: Any) -> tuple[Tensor, int]:
        # Explicit rule: bisection has data-dependent stopping, which a generated rule cannot
        # trace. Element-wise maps accept any shape, so the vmapped axis becomes one more axis
        # of elements, wherever the family says where it enters each parameter
        # (``element_axes``); a vmapped shared parameter (a network's weights) is solved one
        # slice at a time.
        y, family, tol, max_iter, name = args[:_N_FIXED]
        params = args[_N_FIXED:]
        y_dim, p_dims = in_dims[0], in_dims[_N_FIXED:]
        n = int(info.batch_size)
        stated: tuple[int | None, ...] | None = getattr(family, "element_axes", None)
        axes = stated if stated is not None else (None,) * len(params)
        foldable = stated is not None and all(
            d is None or ax is not None for d, ax in zip(p_dims, axes, strict=True)
        )
        if foldable:
            y_b = y.movedim(y_dim, 0) if y_dim is not None else y.unsqueeze(0).expand(n, *y.shape)
            params_b = []
            for p, d, ax in zip(params, p_dims, axes, strict=True):
                if ax is None:
                    params_b.append(p)
                elif d is not None:
                    params_b.append(p.movedim(d, ax))
                else:
                    params_b.append(p.unsqueeze(ax).expand(*p.shape[:ax], n, *p.shape[ax:]))
            return _apply(y_b, family, tol, max_iter, name, *params_b), 0
        slices = []
        for i in range(n):
            y_i = y.select(y_dim, i) if y_dim is not None else y
            p_i = [
                p.select(d, i) if d is not None else p for p, d in zip(params, p_dims, strict=True)
            ]
            slices.append(_apply(y_i, family, tol, max_iter, name, *p_i))
        return torch.stack(slices), 0


# ``Function.apply`` is untyped; this alias gives it the signature of ``forward``.
_apply: Callable[..., Tensor] = _ImplicitInverse.apply


def default_tolerance(dtype: torch.dtype) -> float:
    """The solver's default absolute tolerance on ``x``: ``1e-13`` in float64, ``1e-6`` in
    float32 (a few units in the last place at ``|x| ~ 1``), ``1e-3`` in 16-bit floats."""
    if dtype == torch.float64:
        return 1e-13
    if dtype == torch.float32:
        return 1e-6
    return 1e-3


def implicit_inverse(
    family: Any,
    y: Tensor,
    p: Tensor | Sequence[Tensor],
    tol: float | None = None,
    max_iter: int = 200,
    name: str = "",
) -> Tensor:
    """``x = h^{-1}(y; p)`` element-wise by bisection, differentiable in ``y`` and ``p`` by
    ``∂x/∂y = 1/h'(x)``, ``∂x/∂p = −(∂h/∂p)/h'(x)``.

    Args:
        family: the maps: a :class:`MonotoneFamily` (closed forms, ``p`` one tensor of shape
            ``(n_params, *S)``) or a :class:`MonotoneMap` (``h(x, *params)`` alone, ``p`` a
            sequence of tensors, derivatives by autodiff, bracket by expansion).
        y: targets, any shape ``S``.
        p: the parameters: one tensor, or a sequence of tensors passed to ``h`` in order.
        tol: absolute tolerance on ``x`` (the final bracket width); default
            :func:`default_tolerance`. A bracket that holds no float strictly inside also
            counts as converged.
        max_iter: the most bisection steps; more raise :class:`BisectionError`, as does a
            bracket that does not enclose the root. Nothing unconverged is returned.
        name: the layer, named in every error.

    Returns:
        ``x``, shape ``S``, with ``|x − h^{-1}(y)| <= tol/2``.
    """
    if isinstance(p, Tensor):
        params: tuple[Tensor, ...] = (p,)
        if getattr(family, "dh_dp", None) is not None and (
            p.dim() != y.dim() + 1 or tuple(p.shape[1:]) != tuple(y.shape)
        ):
            raise ValueError(
                f"p must have shape (n_params, *y.shape) = (n_params, {tuple(y.shape)}), "
                f"got {tuple(p.shape)}"
            )
    else:
        params = tuple(p)
    if tol is None:
        tol = default_tolerance(y.dtype)
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    x = _apply(y, family, float(tol), int(max_iter), str(name), *params)
    return x
