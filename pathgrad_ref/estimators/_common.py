"""Pieces shared by all estimators: input checks, the loss value, the path-gradient surrogate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from torch import Tensor

from .._validation import per_call_finite_enabled
from ..flows.base import Flow
from ..targets.base import Target

Estimator = Callable[[Flow, Target, Tensor], tuple[Tensor, Tensor]]
"""``estimator(flow, target, batch) -> (surrogate_loss, log_w)``.

``batch`` holds base samples ``z ~ q0`` for the reverse KL and target samples ``x ~ p`` for the
forward KL, shape ``(N, *event_shape)``. ``surrogate_loss`` is a scalar whose value is the KL
estimate of the direction (see :func:`kl_value`) and whose ``backward()`` accumulates the
estimator's gradient; ``log_w = −S(x) − log q_θ(x)``, shape ``(N,)``, is detached."""

Direction = Literal["reverse", "forward"]


def check_inputs(flow: Flow, target: Target, batch: Tensor, direction: Direction) -> None:
    """Raise ``ValueError`` naming the expectation when the inputs do not fit together.

    Shape, dtype and device on every call; NaN and inf only while the per-call finiteness
    check is on (:func:`pathgrad_ref.estimators.per_call_finite_check`): it syncs the host and
    breaks a compiled graph, so a training loop checks each batch where it is made instead."""
    if tuple(target.event_shape) != tuple(flow.event_shape):
        raise ValueError(
            f"target event shape {tuple(target.event_shape)} does not match the flow's "
            f"{tuple(flow.event_shape)}"
        )
    what = "base samples z ~ q0" if direction == "reverse" else "target samples x ~ p"
    flow.check_input(batch, name=f"batch ({what})", finite=per_call_finite_enabled())


def kl_value(log_w: Tensor, target: Target, direction: Direction) -> Tensor:
    """``KL(q‖p) ≈ −mean(log w) + log Z`` (reverse) or ``KL(p‖q) ≈ mean(log w) − log Z``
    (forward), with ``log Z`` dropped where the target does not know it."""
    log_z = 0.0 if target.log_z is None else target.log_z
    if direction == "reverse":
        return -log_w.mean() + log_z
    return log_w.mean() - log_z


def path_surrogate(value: Tensor, direction_field: Tensor, point: Tensor) -> Tensor:
    """``value + mean⟨G, y⟩ − stop_grad(mean⟨G, y⟩)``: the value of ``value``, the gradient of
    ``mean⟨stop_grad(G), y_θ⟩``, i.e. ``E[Gᵀ ∂_θ y]``. ``G`` and ``y`` are ``(N, *event)``."""
    inner = (direction_field.detach() * point).flatten(1).sum(1).mean()
    return value.detach() + inner - inner.detach()
