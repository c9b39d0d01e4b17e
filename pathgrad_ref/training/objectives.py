"""What a run can train with: every gradient estimator of :mod:`pathgrad_ref.estimators`, and
conditional flow matching for continuous flows.

Flow matching (``flow-matching``) regresses the velocity on the linear path between a base
sample and a target sample,

    L(θ) = E_{τ ~ U(0,1), z ~ q0, x ~ p} ‖v_θ(z + τ (x − z), τ) − (x − z)‖²

(:func:`pathgrad_ref.flows.continuous.flow_matching_loss`). It needs target samples but no
energy and no ODE solve, and it is no gradient of a KL: it is an objective next to the
estimators, not one of them. In a run it takes the estimators' place: the loop hands it a
minibatch of training samples, like a forward-KL estimator, and it draws its own ``z`` and ``τ``
from a random stream of the run (checkpointed with the others).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..estimators import ESTIMATORS, Direction, Estimator
from ..estimators import direction as estimator_direction
from ..flows.base import Flow
from ..flows.continuous import ContinuousLayer, flow_matching_loss
from ..targets.base import Target

FLOW_MATCHING = "flow-matching"
"""The name of the flow-matching objective in ``--estimator`` and ``--compare``."""

OBJECTIVES: tuple[str, ...] = (*ESTIMATORS, FLOW_MATCHING)
"""Every name ``--estimator`` accepts: the estimators, then flow matching."""


def direction(name: str) -> Direction:
    """Which samples ``name`` trains on: ``"reverse"`` (base samples, the reverse KL) or
    ``"forward"`` (minibatches of target samples: the forward KL and flow matching).
    ``ValueError`` listing the names for an unknown one."""
    if name == FLOW_MATCHING:
        return "forward"
    if name not in ESTIMATORS:
        raise ValueError(f"unknown objective {name!r}; expected one of: {', '.join(OBJECTIVES)}")
    return estimator_direction(name)


def is_continuous(flow: Flow) -> bool:
    """Whether ``flow`` is one :class:`~pathgrad_ref.flows.continuous.ContinuousLayer` on its
    base distribution, the flows flow matching trains."""
    layers = flow._layers()
    return len(layers) == 1 and isinstance(layers[0], ContinuousLayer)


def flow_matching_objective(generator: torch.Generator) -> Estimator:
    """Flow matching in the estimators' signature: ``objective(flow, target, batch) ->
    (loss, log_w)`` with ``batch`` target samples ``(N, *event_shape)`` and ``loss`` the scalar
    of the module docstring; ``z`` and ``τ`` come from ``generator`` (on the batch's device).
    ``log_w`` is an empty tensor: flow matching evaluates no density, so it has no weights (the
    training loop does not read them)."""

    def objective(flow: Flow, target: Target, batch: Tensor) -> tuple[Tensor, Tensor]:
        del target  # flow matching needs the target's samples only, not its energy
        return flow_matching_loss(flow, batch, generator), batch.new_zeros(0)

    return objective
