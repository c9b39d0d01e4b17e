"""Forward-KL estimators, ``KL(p‖q_θ)``, from target samples ``x ~ p`` (``docs/theory.md`` §5)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..flows.base import Flow
from ..targets.base import Target
from ._common import check_inputs, kl_value, path_surrogate


def forward_standard(flow: Flow, target: Target, x: Tensor) -> tuple[Tensor, Tensor]:
    """Maximum likelihood: the gradient of ``mean[−log q_θ(x)]`` (the loss value adds the
    θ-independent ``−S(x)`` so that it is the KL estimate)."""
    check_inputs(flow, target, x, "forward")
    _, log_q = flow.inverse(x)
    log_w = -target.action(x) - log_q
    return kl_value(log_w, target, "forward"), log_w.detach()


def forward_path_gdreg(flow: Flow, target: Target, x: Tensor) -> tuple[Tensor, Tensor]:
    """Algorithm 3 (GDReG style): inverse pass with grad, ``G = ∇_x(log q_θ + S)``, detach
    ``z = T_θ^{-1}(x)``, forward pass ``x' = T_θ(z)`` with grad, ``mean⟨stop_grad(G), x'⟩``."""
    check_inputs(flow, target, x, "forward")
    x_leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        z, log_q = flow.inverse(x_leaf)
        action = target.action(x_leaf)
        (G,) = torch.autograd.grad((log_q + action).sum(), x_leaf)
    log_w = (-action - log_q).detach()
    x_again, _ = flow.transform(z.detach())
    return path_surrogate(kl_value(log_w, target, "forward"), G, x_again), log_w


def forward_path_fast(flow: Flow, target: Target, x: Tensor) -> tuple[Tensor, Tensor]:
    """Algorithm 1 on the inverse flow: the score of the pull-back ``p_{θ,0}`` is carried from
    ``s_0 = −∇S(x)`` through the inverse layers; ``G_z = s_L − ∇ log q0(z)``;
    ``mean⟨stop_grad(G_z), T_θ^{-1}(x)⟩``."""
    check_inputs(flow, target, x, "forward")
    x_leaf = x.detach().requires_grad_(True)
    z, log_det, score = flow.inverse_and_score(x_leaf, -target.force(x.detach()))
    z_fixed = z.detach()
    log_q = flow.base.log_prob(z_fixed) + log_det
    log_w = -target.action(x.detach()) - log_q
    G = score - flow.base.score(z_fixed)
    return path_surrogate(kl_value(log_w, target, "forward"), G, z), log_w
