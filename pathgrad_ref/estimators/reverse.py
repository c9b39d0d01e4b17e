"""Reverse-KL estimators, ``KL(q_θ‖p)``, from base samples ``z ~ q0`` (``docs/theory.md`` §2)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..flows.base import Flow
from ..targets.base import Target
from ._common import check_inputs, kl_value, path_surrogate


def reverse_standard(flow: Flow, target: Target, z: Tensor) -> tuple[Tensor, Tensor]:
    """Reparameterised total gradient of ``mean[log q_θ(T_θ z) + S(T_θ z)]``: the path gradient
    plus the score term ``∂_θ log q_θ(x)|_x``, which has mean zero but not variance zero."""
    check_inputs(flow, target, z, "reverse")
    x, log_q = flow(z)
    log_w = -target.action(x) - log_q
    return kl_value(log_w, target, "reverse"), log_w.detach()


def reverse_path_fast(flow: Flow, target: Target, z: Tensor) -> tuple[Tensor, Tensor]:
    """Algorithm 1: ``mean⟨stop_grad(G), T_θ(z)⟩`` with ``G = s_L + ∇S(x)``, the score ``s_L``
    carried along the forward pass; no inverse pass."""
    check_inputs(flow, target, z, "reverse")
    # z is constant; requiring grad gives every layer input a graph node for the input VJPs.
    x, log_q, score = flow.forward_and_score(z.detach().requires_grad_(True))
    x_fixed = x.detach()
    log_w = -target.action(x_fixed) - log_q
    G = score + target.force(x_fixed)
    return path_surrogate(kl_value(log_w, target, "reverse"), G, x), log_w


def reverse_path_dropin(flow: Flow, target: Target, z: Tensor) -> tuple[Tensor, Tensor]:
    """Algorithm 2 (2022): ``x = T_θ(z)`` without grad; ``log q_θ(x)`` through the inverse with
    ``x`` requiring grad; ``G = ∇_x(log q_θ + S)``; a second forward pass with grad."""
    check_inputs(flow, target, z, "reverse")
    with torch.no_grad():
        x0, _ = flow.transform(z)
    x_leaf = x0.requires_grad_(True)
    with torch.enable_grad():
        log_q = flow.log_prob(x_leaf)
        action = target.action(x_leaf)
        (G,) = torch.autograd.grad((log_q + action).sum(), x_leaf)
    log_w = (-action - log_q).detach()
    x, _ = flow.transform(z)
    return path_surrogate(kl_value(log_w, target, "reverse"), G, x), log_w
