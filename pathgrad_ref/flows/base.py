"""The layer contract and the flow that composes layers over a base distribution.

Notation (``docs/theory.md`` §1–3): ``x_{l+1} = T_l(x_l)``, ``x_0 = z ~ q0``,
``log q_{l+1}(x_{l+1}) = log q_l(x_l) − log|det J_l(x_l)|``. The *score* of layer ``l`` is
``s_l = ∇_{x_l} log q_l(x_l)``; one layer carries it forward by

    s_{l+1} = J_l^{-T} (s_l − ∇_{x_l} log|det J_l(x_l)|)                    (Algorithm 1)

and the same formula with ``T_l^{-1}`` in place of ``T_l`` carries it through the inverse. This
is the whole of the fast path; the estimators only compose these steps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_batch
from ..distributions import BaseDistribution


def is_compiling() -> bool:
    """``True`` while ``torch.compile`` (dynamo) traces the caller, ``False`` in eager code.

    Layers use it to pick the form of their score step that the compiler differentiates
    correctly (see :meth:`pathgrad_ref.flows.coupling.Coupling._score_step_functional`)."""
    check = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    if check is None:  # torch < 2.3
        import torch._dynamo as dynamo

        return bool(dynamo.is_compiling())
    return bool(check())


class Layer(nn.Module, ABC):
    """A bijection of ``(N, *event_shape)`` batches with its log-determinant and score steps.

    Contract, for every subclass:

    - ``forward(x) -> (y, log_det)`` with ``log_det = log|det ∂y/∂x|``, shape ``(N,)``.
    - ``inverse(y) -> (x, log_det)`` with ``log_det = log|det ∂x/∂y|`` (so the two log-dets of a
      round trip cancel), shape ``(N,)``.
    - ``forward_and_score(x, score) -> (y, log_det, score_y)`` returns ``forward(x)`` and
      ``score_y = J^{-T} (score − ∇_x log|det J(x)|)``. ``y`` and ``log_det`` keep the autograd
      graph in the parameters; ``score_y`` is computed with the parameters held fixed and is
      returned detached. ``x`` must require grad: the step takes input-only vector-Jacobian
      products through the graph that ``forward`` builds, which it leaves intact. Under
      ``torch.compile`` (:func:`is_compiling`) that graph is not the eager one, and the step
      must take its VJPs functionally (``torch.func.vjp``) instead.
    - ``inverse_and_score(y, score)`` is the same for the inverse map.

    A subclass must write ``forward`` and ``inverse``; the two score steps have a default that is
    correct for every invertible layer (:meth:`forward_and_score`, ``docs/theory.md`` §4.5),
    at the price of one pass of the *other* direction. Layers with a closed form override them.
    The default step refuses a log-det that does not depend on the input unless the layer
    declares ``constant_log_det = True`` (linear and volume-preserving maps): a log-det computed
    from a detached input would otherwise drop its gradient from the score silently.
    """

    constant_log_det: bool = False
    inverse_is_exact: bool = True
    """``False`` where ``inverse`` inverts ``forward`` only approximately (an ODE solved
    backwards inverts the exact flow, not the discrete forward map); the forward-KL oracles
    then refine the inverse's point by Newton's method on the forward map."""

    @abstractmethod
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]: ...

    @abstractmethod
    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]: ...

    def forward_and_score(self, x: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Default score step, ``s_y = J_g(y)ᵀ s_x + ∇_y ladj_g(y)`` with ``g = T^{-1}``,
        ``ladj_g = log|det ∂g/∂y|``, at ``y = T(x)``.

        It follows from ``log q_y(y) = log q_x(g(y)) + ladj_g(y)`` and equals the contract's
        ``J_T^{-T}(s_x − ∇_x ladj_T(x))``. It is one input-only VJP of ``y ↦ (g(y), ladj_g(y))``
        with cotangent ``(s_x, 1)``, parameters held fixed: one inverse pass and its backward
        per layer. Shapes: ``x``, ``score`` and the returned score ``(N, *event_shape)``,
        ``log_det`` ``(N,)``; ``y`` and ``log_det`` carry the graph in the parameters.
        """
        y, log_det = self.forward(x)
        return y, log_det, _score_through(self.inverse, y, score, "inverse", self.constant_log_det)

    def inverse_and_score(self, y: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Default score step through the inverse, ``s_x = J_T(x)ᵀ s_y + ∇_x ladj_T(x)`` at
        ``x = T^{-1}(y)``: one input-only VJP of ``x ↦ (T(x), ladj_T(x))`` with cotangent
        ``(s_y, 1)``, i.e. one forward pass and its backward. Shapes as in
        :meth:`forward_and_score`."""
        x, log_det = self.inverse(y)
        return x, log_det, _score_through(self.forward, x, score, "forward", self.constant_log_det)


def _score_through(
    other: Callable[[Tensor], tuple[Tensor, Tensor]],
    point: Tensor,
    score: Tensor,
    name: str,
    constant_log_det: bool,
) -> Tensor:
    """``J_other(u)ᵀ score + ∇_u ladj_other(u)`` at ``u = point`` (detached), parameters fixed.

    ``torch.func.vjp`` differentiates the function itself, so the step is the same in eager
    code, inside other ``torch.func`` transforms and under ``torch.compile`` (where an autograd
    VJP through the graph of a compiled region can find no path; see
    :class:`pathgrad_ref.flows.coupling.Coupling`). Under ``no_grad`` the transform still
    differentiates to its primal (it ignores an outer ``no_grad``) but records no graph in the
    parameters: the returned score is a detached value.
    """

    def pass_of_other(u: Tensor) -> tuple[Tensor, Tensor]:
        out, ladj = other(u)
        # A map that does not depend on its input (an ``inverse`` that detaches, or computes
        # under ``no_grad``) would give a zero VJP: a wrong score, silently. Refuse it. A
        # log-det that is constant in ``u`` (linear, volume-preserving layers) is legitimate,
        # when the layer says so; any other log-det must depend on ``u``.
        if not out.requires_grad:
            raise RuntimeError(
                f"default score step: the layer's {name}() output does not depend on its input "
                "under torch.func.vjp (does it detach, use .data or no_grad?); expected a "
                "differentiable map of the input"
            )
        if not ladj.requires_grad and not constant_log_det:
            raise RuntimeError(
                f"default score step: the layer's {name}() log-det does not depend on its input "
                "under torch.func.vjp (is it computed from a detached input?); a layer whose "
                "log-det is constant in the input must declare constant_log_det = True"
            )
        if out.shape != score.shape or ladj.shape != score.shape[:1]:
            raise ValueError(
                f"default score step: {name}() returned shapes {tuple(out.shape)} and "
                f"{tuple(ladj.shape)}; expected {tuple(score.shape)} and {tuple(score.shape[:1])}"
            )
        return out, ladj

    with torch.no_grad():
        # torch's annotation of vjp does not describe the returned pair precisely.
        result: Any = torch.func.vjp(pass_of_other, point.detach())
        (_, ladj), vjp_fn = result
        (new_score,) = vjp_fn((score.detach(), torch.ones_like(ladj)))
    out: Tensor = new_score
    return out


class Flow(nn.Module):
    """``x = T_θ(z) = T_L ∘ … ∘ T_1(z)``, ``z ~ q0``, ``log q_θ(x) = log q0(z) − Σ_l log|det J_l|``.

    All tensors are batches ``(N, *event_shape)``; log-densities have shape ``(N,)``.
    """

    def __init__(self, base: BaseDistribution, layers: Sequence[Layer]) -> None:
        super().__init__()
        self.base = base
        self.layers = nn.ModuleList(layers)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.base.event_shape

    @property
    def dtype(self) -> torch.dtype:
        return self.base.anchor.dtype

    @property
    def device(self) -> torch.device:
        return self.base.anchor.device

    def _layers(self) -> list[Layer]:
        return [layer for layer in self.layers if isinstance(layer, Layer)]

    def check_input(self, x: Tensor, name: str = "batch", finite: bool = True) -> None:
        """Raise a ``ValueError`` naming the expectation unless ``x`` is a ``(N, *event_shape)``
        batch of the flow's dtype and device, and (when ``finite``) has only finite entries.

        The finiteness test reads a flag back to the host; shape, dtype and device cost
        nothing. A training loop calls this once where each batch is made."""
        check_batch(
            x, self.event_shape, dtype=self.dtype, device=self.device, name=name, finite=finite
        )

    def transform(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(T_θ(z), log|det J_T(z)|)``, shapes ``(N, *event_shape)`` and ``(N,)``."""
        log_det = z.new_zeros(z.shape[0])
        x = z
        for layer in self._layers():
            x, ld = layer(x)
            log_det = log_det + ld
        return x, log_det

    def inverse_transform(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(T_θ^{-1}(x), log|det J_{T^{-1}}(x)|)``."""
        log_det = x.new_zeros(x.shape[0])
        z = x
        for layer in reversed(self._layers()):
            z, ld = layer.inverse(z)
            log_det = log_det + ld
        return z, log_det

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, log q_θ(x))`` for base samples ``z``."""
        x, log_det = self.transform(z)
        return x, self.base.log_prob(z) - log_det

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log q_θ(x))`` with ``z = T_θ^{-1}(x)``."""
        z, log_det = self.inverse_transform(x)
        return z, self.base.log_prob(z) + log_det

    def log_prob(self, x: Tensor) -> Tensor:
        """``log q_θ(x)``, shape ``(N,)``."""
        return self.inverse(x)[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(x, log q_θ(x))`` for ``n`` fresh samples."""
        x, log_q = self.forward(self.base.sample(n, generator))
        return x, log_q

    def forward_and_score(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Algorithm 1, forward: ``(x, log q_θ(x), ∇_x log q_θ(x))``.

        ``x`` carries the graph in θ; ``log q`` and the score are detached. ``z`` must require
        grad (see :class:`Layer`).
        """
        score = self.base.score(z.detach())
        log_q = self.base.log_prob(z.detach())
        x = z
        for layer in self._layers():
            x, log_det, score = layer.forward_and_score(x, score)
            log_q = log_q - log_det.detach()
        return x, log_q, score

    def inverse_and_score(self, x: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Algorithm 1 through the inverse flow: from ``score = ∇_x log p(x)`` to
        ``(z, log|det J_{T^{-1}}(x)|, ∇_z log p_{θ,0}(z))`` with ``p_{θ,0}`` the pull-back of
        ``p``. ``z`` carries the graph in θ; the rest is detached. ``x`` must require grad."""
        log_det = x.new_zeros(x.shape[0])
        z = x
        for layer in reversed(self._layers()):
            z, ld, score = layer.inverse_and_score(z, score)
            log_det = log_det + ld.detach()
        return z, log_det, score
