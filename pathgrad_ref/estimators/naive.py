"""Full-Jacobian oracles: the estimators written from their definitions with ``torch.func``.

Nothing here uses the layer structure: the flow is a black-box map ``T_θ(z)`` evaluated one
sample at a time through ``functional_call``. Per sample they build the dense Jacobian
``J = ∂T_θ/∂z`` (``d × d``), take ``log q_θ(x) = log q0(z) − log|det J|`` from ``slogdet``, get

    ∇_x log q_θ(x) = J^{-T} (∇_z log q0(z) − ∇_z log|det J(z)|)                 (dense solve)

and differentiate w.r.t. θ with ``torch.func.grad``. Forward-KL oracles need ``z = T_θ^{-1}(x)``.
They do not re-derive it: they take the root ``z*`` from ``flow.inverse`` (detached, only its
value is used), check it by pushing it forward again (``T_θ(z*) ≈ x``, else ``AssertionError``),
and get its θ-dependence from the dense linearisation
``z(θ) = z* − J_0^{-1}(T_θ(z*) − stop_grad T_θ(z*))`` with ``J_0`` held fixed: its value is
``z*`` and its derivative is the implicit-function-theorem one, ``∂z/∂θ = −J^{-1} ∂_θ T``
(written without ``x`` so that periodic maps, whose outputs are wrapped, need no special case).
Where a layer declares its inverse approximate (``Layer.inverse_is_exact = False``: a continuous
flow's backward solve), ``z*`` is first refined by Newton's method on the dense Jacobian to a
root of the forward map as computed.
So the forward oracles are independent of the layers' inverse *derivatives* (score steps,
implicit gradients of the bisection), not of the inverse's value. They are slow by design
(``O(d³)`` per sample) and exist to be trusted.

Each returns a surrogate ``value + Σ_k ⟨g_k, θ_k⟩ − stop_grad(…)`` whose ``backward()`` leaves
exactly the oracle gradient ``g`` in ``param.grad``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jacfwd, vmap

from ..distributions import Uniform
from ..flows.base import Flow
from ..targets.base import Target
from ._common import check_inputs, kl_value

Params = dict[str, Tensor]

NEWTON_STEPS = 4
"""Newton steps that refine ``z*`` where a layer's inverse is approximate (module docstring)."""


class _Push(nn.Module):
    """``z ↦ T_θ(z)`` and nothing else, so that ``functional_call`` sees a plain map."""

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, z: Tensor) -> Tensor:
        return self.flow.transform(z)[0]


class _Oracle:
    """Per-sample dense quantities of a flow at its current parameters."""

    def __init__(self, flow: Flow, target: Target) -> None:
        self.flow = flow
        self.target = target
        self.push = _Push(flow)
        self.params: Params = {
            n: p.detach() for n, p in self.push.named_parameters() if p.requires_grad
        }
        self.frozen: Params = {
            n: p.detach() for n, p in self.push.named_parameters() if not p.requires_grad
        }
        self.frozen.update(dict(self.push.named_buffers()))
        self.shape = flow.event_shape
        self.dim = math.prod(self.shape)

    def T(self, params: Params, z: Tensor) -> Tensor:
        """One sample: ``T_θ(z)`` for ``z`` of ``event_shape``, flattened to ``(d,)``."""
        x: Tensor = functional_call(self.push, (params, self.frozen), (z.reshape(1, *self.shape),))
        return x.reshape(self.dim)

    def jacobian(self, params: Params, z: Tensor) -> Tensor:
        """``J = ∂T_θ/∂z``, ``(d, d)``, at one flattened ``z``."""
        J: Tensor = jacfwd(lambda u: self.T(params, u))(z)
        return J

    def log_det(self, params: Params, z: Tensor) -> Tensor:
        log_abs_det: Tensor = torch.linalg.slogdet(self.jacobian(params, z))[1]
        return log_abs_det

    def log_q0(self, z: Tensor) -> Tensor:
        return self.flow.base.log_prob(z.reshape(1, *self.shape))[0]

    def action(self, x: Tensor) -> Tensor:
        return self.target.action(x.reshape(1, *self.shape))[0]

    def data_score(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, log q_θ(x), G = ∇_x[log q_θ + S](x))`` at one flattened ``z``, θ fixed."""
        p = self.params
        J = self.jacobian(p, z)
        x = self.T(p, z)
        log_q = self.log_q0(z) - torch.linalg.slogdet(J)[1]
        score_z = grad(self.log_q0)(z) - grad(lambda u: self.log_det(p, u))(z)
        score_x = torch.linalg.solve(J.T, score_z)
        return x, log_q, score_x + grad(self.action)(x)

    def surrogate(self, value: Tensor, g: Params) -> Tensor:
        """``value`` with the gradient ``g`` on the flow's parameters."""
        params = dict(self.push.named_parameters())
        inner = sum(((g[n].detach() * params[n]).sum() for n in self.params), value.new_zeros(()))
        return value.detach() + inner - inner.detach()

    def param_grad(self, loss: Callable[[Params], Tensor]) -> Params:
        out: Params = grad(loss)(self.params)
        return out


def _flat(t: Tensor) -> Tensor:
    return t.detach().reshape(t.shape[0], -1)


def reverse_standard_naive(flow: Flow, target: Target, z: Tensor) -> tuple[Tensor, Tensor]:
    """``∇_θ mean[log q0(z) − log|det ∂_z T_θ(z)| + S(T_θ(z))]`` from dense Jacobians."""
    check_inputs(flow, target, z, "reverse")
    o = _Oracle(flow, target)
    zf = _flat(z)

    def per_sample(p: Params, u: Tensor) -> Tensor:
        return o.log_q0(u) - o.log_det(p, u) + o.action(o.T(p, u))

    g = o.param_grad(lambda p: vmap(per_sample, in_dims=(None, 0))(p, zf).mean())
    log_w = -vmap(per_sample, in_dims=(None, 0))(o.params, zf)
    return o.surrogate(kl_value(log_w, target, "reverse"), g), log_w


def reverse_path_naive(flow: Flow, target: Target, z: Tensor) -> tuple[Tensor, Tensor]:
    """``E_z[G(x)ᵀ ∂_θ T_θ(z)]``, ``G = ∇_x[log q_θ + S]`` by the dense solve above."""
    check_inputs(flow, target, z, "reverse")
    o = _Oracle(flow, target)
    zf = _flat(z)
    x, log_q, G = vmap(o.data_score)(zf)
    log_w = -vmap(o.action)(x) - log_q

    def inner(p: Params) -> Tensor:
        return (vmap(o.T, in_dims=(None, 0))(p, zf) * G).sum(1).mean()

    return o.surrogate(kl_value(log_w, target, "reverse"), o.param_grad(inner)), log_w


def _pullback_residual(o: _Oracle, x: Tensor, z: Tensor) -> Tensor:
    """``max |T_θ(z) − x|`` per sample, ``(N,)``. For a flow over a uniform base on a box of
    side ``P`` (the U(1) flow: angles, outputs reduced mod ``2π = P``) the difference is taken on
    the circle of circumference ``P``."""
    with torch.no_grad():
        diff = o.flow.transform(z)[0] - x
        base = o.flow.base
        if isinstance(base, Uniform):
            period = base.high - base.low
            diff = torch.remainder(diff + 0.5 * period, period) - 0.5 * period
    return diff.flatten(1).abs().amax(1)


def check_pullback(residual: Tensor, x: Tensor) -> None:
    """``AssertionError`` unless ``max |T(z*) − x| ≤ sqrt(eps) · max(1, max |x|)`` (residual shape
    ``(N,)``): rounding of a deep flow and bisection tolerances lie far below that bound, a wrong
    inverse far above. One host read (the meta-device tests stand in for it)."""
    tol = math.sqrt(torch.finfo(x.dtype).eps) * max(1.0, float(x.abs().max()))
    if float(residual.max()) > tol:
        raise AssertionError(
            f"pull-back failed: max |T(T^-1(x)) - x| = {float(residual.max()):.3e} > {tol:.1e}; "
            "the flow's inverse does not invert its forward map"
        )


def _pullback(o: _Oracle, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(z*, J_0)`` per sample: the root ``T_θ(z*) = x``, and the dense Jacobian there, both
    detached. The root's *value* comes from the flow's own inverse (the one piece the oracle
    does not re-derive); it is checked here by pushing it forward again, so that a wrong
    inverse fails loudly instead of silently moving the oracle's evaluation point."""
    with torch.no_grad():
        z, _ = o.flow.inverse(x)
    zf = _flat(z)
    jacobians = vmap(o.jacobian, in_dims=(None, 0))
    if not all(layer.inverse_is_exact for layer in o.flow._layers()):
        # A layer whose inverse is only an approximation of its forward map (an ODE solved
        # backwards inverts the exact flow, not the discrete forward map, to the solver's
        # error): refine z* to a root of the forward map itself by Newton's method on the dense
        # Jacobian, so the oracle is that of the map T_θ as computed. Quadratic convergence from
        # the inverse's point; a fixed count keeps the oracle free of data-dependent reads.
        xf = _flat(x)
        with torch.no_grad():
            for _ in range(NEWTON_STEPS):
                step = vmap(o.T, in_dims=(None, 0))(o.params, zf) - xf
                zf = zf - torch.linalg.solve(jacobians(o.params, zf), step)
        z = zf.reshape(z.shape)
    check_pullback(_pullback_residual(o, x, z), x)
    return zf, jacobians(o.params, zf).detach()


def forward_standard_naive(flow: Flow, target: Target, x: Tensor) -> tuple[Tensor, Tensor]:
    """``∇_θ mean[−log q_θ(x)]`` with ``log q_θ(x) = log q0(z(θ)) − log|det J(z(θ))|`` and
    ``z(θ)`` the linearisation of the module docstring (implicit differentiation)."""
    check_inputs(flow, target, x, "forward")
    o = _Oracle(flow, target)
    xf = _flat(x)
    z_root, J0 = _pullback(o, x)

    def log_q(p: Params, u: Tensor, J: Tensor) -> Tensor:
        x_theta = o.T(p, u)
        z_theta = u - torch.linalg.solve(J, x_theta - x_theta.detach())
        return o.log_q0(z_theta) - o.log_det(p, z_theta)

    batched = vmap(log_q, in_dims=(None, 0, 0))
    g = o.param_grad(lambda p: -batched(p, z_root, J0).mean())
    log_w = -vmap(o.action)(xf) - batched(o.params, z_root, J0)
    return o.surrogate(kl_value(log_w, target, "forward"), g), log_w.detach()


def forward_path_naive(flow: Flow, target: Target, x: Tensor) -> tuple[Tensor, Tensor]:
    """``E_{x~p}[G(x)ᵀ ∂_θ T_θ(z)]`` at ``z = T_θ^{-1}(x)`` held fixed (forward-KL duality),
    ``G`` by the dense solve at ``z``."""
    check_inputs(flow, target, x, "forward")
    o = _Oracle(flow, target)
    z_root, _ = _pullback(o, x)
    _, log_q, G = vmap(o.data_score)(z_root)
    log_w = -vmap(o.action)(_flat(x)) - log_q

    def inner(p: Params) -> Tensor:
        return (vmap(o.T, in_dims=(None, 0))(p, z_root) * G).sum(1).mean()

    return o.surrogate(kl_value(log_w, target, "forward"), o.param_grad(inner)), log_w
