"""Continuous normalizing flows: ``dx/dt = v_θ(x, t)`` from ``t0`` to ``t1``, with the score
carried along the solve (``docs/theory.md`` §12).

Along a trajectory, with ``J = ∂v/∂x`` and the exact divergence ``div v = tr J``,

    d/dt log|det ∂x(t)/∂x(t0)| =  div v(x(t), t)
    d/dt s(t)                  = −J(x(t), t)ᵀ s(t) − ∇_x div v(x(t), t)

where ``s(t) = ∇_x log q_t(x)`` at ``x(t)`` and ``q_t`` is the density transported by the flow.
The second equation is Algorithm 1 of the paper for a continuous flow: one layer whose score
step is an ODE solved together with the state. The same equations, integrated from ``t1`` back
to ``t0``, carry a score at ``t1`` (the target's, for the forward KL) to ``t0``.

The default solver is a fixed-step RK4 written here, so the layer is a fixed differentiable map
of ``(x, θ)``: backpropagation through it is the exact gradient of what was computed, and
``torch.func`` transforms trace it. Its inverse is the same solver run backwards; the two agree
with each other and with the exact flow to ``O(h⁴)``, ``h = |t1 − t0| / steps``. Adaptive
solvers and the adjoint method come from ``torchdiffeq`` (the ``ode`` extra).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import vmap

from .._validation import per_call_finite_enabled
from ..distributions import StandardNormal
from . import _args
from .base import Flow, Layer, is_compiling
from .conditioners import MLP

State = tuple[Tensor, ...]
Rate = Callable[[float | Tensor, State], State]

FIXED_STEP = ("rk4",)
"""Solvers of this module: fixed step, ``steps`` steps of equal length."""


class VelocityMLP(nn.Module):
    """``v(x, t) = MLP([flatten(x), t])`` reshaped to ``x``'s shape: ``(N, *event_shape)`` and a
    0-d ``t`` to ``(N, *event_shape)``. Acts on each sample alone (no batch statistics), as the
    exact divergence needs. ``zero_init`` starts the flow at the identity map."""

    def __init__(
        self,
        event_shape: Sequence[int],
        hidden: Sequence[int] = (64, 64),
        activation: str = "tanh",
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        self.event_shape = tuple(_args.integer("event_shape", s) for s in event_shape)
        dim = math.prod(self.event_shape)
        # tanh (smooth): the fast path differentiates the divergence, a second derivative of v.
        self.net = MLP(dim + 1, dim, hidden, activation, zero_init_last=zero_init)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        time = t.to(x.dtype).expand(x.shape[0], 1)
        out: Tensor = self.net(torch.cat([flat, time], dim=1))
        return out.reshape(x.shape)


def velocity_and_divergence(
    velocity: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor
) -> tuple[Tensor, Tensor]:
    """``(v(x, t), div v(x, t))``, shapes ``(N, *event_shape)`` and ``(N,)``; the divergence is
    the exact trace of each sample's Jacobian, ``div v = Σ_k e_kᵀ J e_k``. Differentiable in
    ``x`` and in the parameters ``v`` closes over.

    The ``d`` products ``J e_k`` are forward-mode products of the whole batch, one per basis
    direction ``e_k`` (applied to every sample at once), batched by ``vmap``. That is the
    per-sample Jacobian because ``v`` acts on each sample alone (no batch statistics): the
    contract of a velocity. (It costs less than a ``vmap`` over samples of ``jacfwd``, whose
    per-sample calls of size one carry ``torch.func``'s overhead ``N`` times.)"""
    n = x.shape[0]
    event = x.shape[1:]
    dim = math.prod(event)
    eye = torch.eye(dim, dtype=x.dtype, device=x.device)
    basis = eye.reshape(dim, 1, *event).expand(dim, n, *event)

    def column(e: Tensor) -> tuple[Tensor, Tensor]:
        out: Any = torch.func.jvp(lambda u: velocity(u, t), (x,), (e,))
        return out[0], out[1]

    v, cols = vmap(column)(basis)
    if v.shape[1:] != x.shape:
        # Checked on shapes alone (no host read); a wrong shape would otherwise broadcast or
        # fail in a reshape far from its cause.
        raise ValueError(
            f"velocity(x, t) returned shape {tuple(v.shape[1:])}; expected x's shape "
            f"{tuple(x.shape)} (the velocity maps each sample to a vector of its own shape)"
        )
    # cols[k, i] = J_i e_k, the k-th Jacobian column of sample i; its k-th entry is J_i[k, k].
    div = cols.reshape(dim, n, dim).diagonal(dim1=0, dim2=2).sum(-1)
    return v[0], div


def score_rate(
    velocity: Callable[[Tensor, Tensor], Tensor], x: Tensor, score: Tensor, t: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``(v, div v, ds/dt)`` with ``ds/dt = −Jᵀ s − ∇_x div v``, all detached, parameters held
    fixed: one VJP of ``u ↦ (v(u, t), div v(u, t))`` with cotangent ``(s, 1)``.

    In eager code the VJP is an input-only ``autograd.grad`` (the cheaper of the two forms).
    Under ``torch.compile`` it is ``torch.func.vjp`` under ``no_grad``, which differentiates
    ``u`` only and records no graph in the parameters (it ignores the outer ``no_grad`` for its
    own level), as the coupling step does (:func:`~pathgrad_ref.flows.base.is_compiling`)."""
    if not is_compiling():
        with torch.enable_grad():
            u = x.detach().requires_grad_(True)
            v, div = velocity_and_divergence(velocity, u, t)
            (g,) = torch.autograd.grad((v, div), u, (score.detach(), torch.ones_like(div)))
        return v.detach(), div.detach(), -g

    def field(u: Tensor) -> tuple[Tensor, Tensor]:
        return velocity_and_divergence(velocity, u, t)

    with torch.no_grad():
        result: Any = torch.func.vjp(field, x.detach())
        (v_, div_), vjp_fn = result
        (g_,) = vjp_fn((score.detach(), torch.ones_like(div_)))
    return v_, div_, -g_


def rk4(rate: Rate, state: State, t0: float, t1: float, steps: int) -> State:
    """Classical fourth-order Runge-Kutta, ``steps`` equal steps from ``t0`` to ``t1`` (either
    order); ``rate(t, state) -> d state/dt`` with the state a tuple of tensors. Differentiable
    wherever ``rate`` is: the discrete map, not the exact flow, is what gets differentiated."""
    h = (t1 - t0) / steps

    def axpy(a: float, k: State, y: State) -> State:
        return tuple(yi + a * ki for yi, ki in zip(y, k, strict=True))

    for i in range(steps):
        t = t0 + i * h
        k1 = rate(t, state)
        k2 = rate(t + 0.5 * h, axpy(0.5 * h, k1, state))
        k3 = rate(t + 0.5 * h, axpy(0.5 * h, k2, state))
        k4 = rate(t + h, axpy(h, k3, state))
        state = tuple(
            y + (h / 6.0) * (a + 2.0 * b + 2.0 * c + d)
            for y, a, b, c, d in zip(state, k1, k2, k3, k4, strict=True)
        )
    return state


def _torchdiffeq() -> Any:
    try:
        import torchdiffeq
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "ContinuousLayer: solvers other than 'rk4' and the adjoint method need torchdiffeq; "
            "install the extra: pip install 'pathgrad-ref[ode]'"
        ) from err
    return torchdiffeq


def _torchdiffeq_methods() -> tuple[str, ...]:
    """The method names ``torchdiffeq.odeint`` accepts (its solver table)."""
    _torchdiffeq()
    table = importlib.import_module("torchdiffeq._impl.odeint").SOLVERS
    return tuple(sorted(table))


class ContinuousLayer(Layer):
    """``y = x(t1)`` for ``dx/dt = v(x, t)``, ``x(t0) = x``; ``log_det = ∫_{t0}^{t1} div v dt``.

    ``velocity(x, t)``: a module mapping ``(N, *event_shape)`` and a 0-d time tensor to
    ``(N, *event_shape)``, sample by sample. ``solver``: ``"rk4"`` (fixed step, ``steps``
    steps; the default) or a ``torchdiffeq`` method name (``"dopri5"``, ...) with tolerances
    ``atol``, ``rtol``; ``adjoint=True`` backpropagates ``forward``/``inverse`` by
    ``torchdiffeq.odeint_adjoint`` (optimise-then-discretise; with ``solver="rk4"`` it runs
    torchdiffeq's fixed-step RK4, the 3/8-rule variant, at the same step size). ``t0 > t1`` is
    allowed (zuko's sampling direction).

    - ``forward`` / ``inverse`` solve ``(x, ℓ)`` with ``dℓ/dt = div v`` and keep the graph: the
      standard gradient and maximum likelihood backpropagate through the augmented solve.
    - ``forward_and_score`` / ``inverse_and_score`` solve ``(x, ℓ, s)`` (the score ODE, module
      docstring). ``x`` keeps its graph to θ through the velocity alone; ``ℓ`` and ``s`` are
      detached, so the backward pass runs through the state trajectory only. The returned
      ``log_det`` is detached too: no estimator differentiates it on the fast path.
    """

    # The backward solve inverts the exact flow to O(h⁴), not the discrete forward map.
    inverse_is_exact = False

    def __init__(
        self,
        velocity: nn.Module,
        steps: int = 32,
        solver: str = "rk4",
        *,
        t0: float = 0.0,
        t1: float = 1.0,
        atol: float = 1e-8,
        rtol: float = 1e-8,
        adjoint: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(velocity, nn.Module):
            raise TypeError(
                f"velocity must be an nn.Module mapping (x, t) to dx/dt, got {type(velocity)}"
            )
        self.velocity = velocity
        self.steps = _args.integer("steps", steps)
        if not isinstance(solver, str):
            raise TypeError(f"solver must be a string, got {solver!r}")
        self.solver = solver
        for name, value in (("t0", t0), ("t1", t1)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        if t0 == t1:
            raise ValueError(f"t0 and t1 must differ, got t0 = t1 = {t0}")
        self.t0, self.t1 = float(t0), float(t1)
        self.atol = _args.positive_real("atol", atol)
        self.rtol = _args.positive_real("rtol", rtol)
        self.adjoint = _args.flag("adjoint", adjoint)
        if solver not in FIXED_STEP or adjoint:
            methods = _torchdiffeq_methods()
            if solver not in FIXED_STEP and solver not in methods:
                raise ValueError(
                    f"unknown solver {solver!r}; expected 'rk4' or a torchdiffeq method: "
                    f"{', '.join(sorted(methods))}"
                )

    def extra_repr(self) -> str:
        return f"steps={self.steps}, solver={self.solver!r}, t0={self.t0}, t1={self.t1}"

    # -- the two right-hand sides -------------------------------------------------------------

    def _time(self, t: float | Tensor, like: Tensor) -> Tensor:
        return torch.as_tensor(t, dtype=like.dtype, device=like.device)

    def _density_rate(self, t: float | Tensor, state: State) -> State:
        """``(v, div v)`` with the graph: the augmented system of ``forward``/``inverse``."""
        x = state[0]
        return velocity_and_divergence(self.velocity, x, self._time(t, x))

    def _score_rate(self, t: float | Tensor, state: State) -> State:
        """``(v, div v, ds/dt)``; ``v`` keeps the graph of the state ``x`` and of θ, the rest is
        detached (see :func:`score_rate`)."""
        x, _, s = state
        time = self._time(t, x)
        _, div, ds = score_rate(self.velocity, x, s, time)
        return self.velocity(x, time), div, ds

    def _detached_score_rate(self, t: float | Tensor, state: State) -> State:
        x, _, s = state
        return score_rate(self.velocity, x, s, self._time(t, x))

    # -- solves --------------------------------------------------------------------------------

    def _solve(self, rate: Rate, state: State, t0: float, t1: float, adjoint: bool) -> State:
        if self.solver == "rk4" and not adjoint:
            return rk4(rate, state, t0, t1, self.steps)
        tde = _torchdiffeq()
        like = state[0]
        times = torch.tensor([t0, t1], dtype=like.dtype, device=like.device)
        options = {"step_size": abs(t1 - t0) / self.steps} if self.solver == "rk4" else None
        kwargs: dict[str, Any] = {
            "rtol": self.rtol,
            "atol": self.atol,
            "method": self.solver,
            "options": options,
        }
        if adjoint:
            # odeint_adjoint needs a module for its parameters; the velocity's are the θ.
            func = _AdjointRate(rate, self.velocity)
            out = tde.odeint_adjoint(
                func, state, times, adjoint_params=tuple(self.velocity.parameters()), **kwargs
            )
        else:
            out = tde.odeint(rate, state, times, **kwargs)
        return tuple(o[-1] for o in out)

    def _density(self, x: Tensor, t0: float, t1: float) -> tuple[Tensor, Tensor]:
        y, ell = self._solve(self._density_rate, (x, x.new_zeros(x.shape[0])), t0, t1, self.adjoint)
        return y, ell

    def _with_score(
        self, x: Tensor, score: Tensor, t0: float, t1: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        start = (x, x.new_zeros(x.shape[0]), score.detach())
        if self.solver == "rk4" and not self.adjoint:
            # One loop: x with its graph through v alone, (ℓ, s) detached beside it.
            y, ell, s = rk4(self._score_rate, start, t0, t1, self.steps)
            return y, ell.detach(), s.detach()
        # Adaptive solvers choose steps from the whole state: solve (x, ℓ, s) without a graph,
        # then x alone with its graph (the same x to the solver's tolerance).
        with torch.no_grad():
            _, ell, s = self._solve(self._detached_score_rate, start, t0, t1, adjoint=False)
        (y,) = self._solve(
            lambda t, st: (self.velocity(st[0], self._time(t, st[0])),), (x,), t0, t1, self.adjoint
        )
        return y, ell, s

    # -- the Layer contract --------------------------------------------------------------------

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._density(x, self.t0, self.t1)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._density(y, self.t1, self.t0)

    def forward_and_score(self, x: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The score ODE from ``t0`` to ``t1``: ``(y, log|det ∂y/∂x|, s_y)``; ``y`` keeps the
        graph, ``log_det`` and ``s_y`` are detached. Shapes as in :class:`Layer`."""
        return self._with_score(x, score, self.t0, self.t1)

    def inverse_and_score(self, y: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The score ODE from ``t1`` back to ``t0``: ``(x, log|det ∂x/∂y|, s_x)``."""
        return self._with_score(y, score, self.t1, self.t0)


class _AdjointRate(nn.Module):
    """A rate function as a module owning the velocity, as ``odeint_adjoint`` requires."""

    def __init__(self, rate: Rate, velocity: nn.Module) -> None:
        super().__init__()
        self.rate = rate
        self.velocity = velocity

    def forward(self, t: Tensor, state: State) -> State:
        return self.rate(t.detach(), state)


def continuous_flow(
    dim: int | Sequence[int],
    hidden: Sequence[int] = (64, 64),
    steps: int = 32,
    solver: str = "rk4",
    *,
    activation: str = "tanh",
    zero_init: bool = True,
) -> Flow:
    """``N(0, I)`` on ``R^dim`` (or on an event shape such as an ``L × L`` lattice) through one
    :class:`ContinuousLayer` whose velocity is a :class:`VelocityMLP` of widths ``hidden``;
    ``t: 0 → 1``. ``zero_init`` starts at the identity map."""
    sizes = tuple(dim) if isinstance(dim, Sequence) else (dim,)
    shape = tuple(_args.integer("dim", s) for s in sizes)
    velocity = VelocityMLP(shape, hidden, activation, zero_init)
    return Flow(StandardNormal(shape), [ContinuousLayer(velocity, steps, solver)])


def flow_matching_loss(flow: Flow, x1: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Conditional flow matching on the linear path (no ODE solve):
    ``mean ‖v_θ(x_t, t) − (x1 − z)/(t1 − t0)‖²`` with ``x_t = z + τ (x1 − z)``,
    ``t = t0 + τ (t1 − t0)``, ``τ ~ U(0, 1)``, ``z ~ q0`` (one per row of ``x1``).

    ``flow``: a flow of one :class:`ContinuousLayer`; ``x1``: target samples
    ``(N, *event_shape)``. Returns a scalar whose gradient trains the velocity; the squared
    norm is summed over the event and averaged over the batch."""
    layers = flow._layers()
    if len(layers) != 1 or not isinstance(layers[0], ContinuousLayer):
        kinds = [type(layer).__name__ for layer in layers]
        raise ValueError(
            f"flow_matching_loss: expected a flow of one ContinuousLayer, got layers {kinds}"
        )
    # Shape, dtype and device always; NaN/inf only while the per-call check is on (it reads a
    # flag back to the host: a training loop checks each batch where it is made instead).
    flow.check_input(x1, name="x1 (target samples)", finite=per_call_finite_enabled())
    layer = layers[0]
    n = x1.shape[0]
    z = flow.base.sample(n, generator)
    tau = torch.rand(n, dtype=x1.dtype, device=x1.device, generator=generator)
    tau_b = tau.reshape(n, *([1] * (x1.dim() - 1)))
    x_t = z + tau_b * (x1 - z)
    span = layer.t1 - layer.t0
    t = layer.t0 + tau * span
    # One time per sample: vmap the velocity over (x_t, t) pairs.
    v: Tensor = vmap(lambda u, s: layer.velocity(u[None], s)[0])(x_t, t)
    residual = (v - (x1 - z) / span).reshape(n, -1)
    return residual.pow(2).sum(1).mean()
