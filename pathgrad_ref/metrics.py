"""Sampling-quality metrics and gradient statistics (``docs/theory.md`` §8), in log space."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from .estimators import gradient
from .flows.base import Flow
from .targets.base import Target


def _check_log_w(log_w: Tensor) -> Tensor:
    if log_w.dim() != 1 or log_w.numel() == 0:
        raise ValueError(f"log_w: expected a non-empty (N,) tensor, got shape {tuple(log_w.shape)}")
    if bool(torch.isnan(log_w).any()):
        raise ValueError("log_w: expected no NaN entries")
    return log_w.detach()


def reverse_ess(log_w: Tensor) -> float:
    """``(Σ w)² / (N Σ w²)`` ∈ (0, 1] for ``x ~ q_θ``; ``log_w`` shape ``(N,)``."""
    lw = _check_log_w(log_w)
    log_ess = 2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0) - math.log(lw.numel())
    return float(torch.exp(log_ess))


def forward_ess(log_w: Tensor) -> float:
    """``N² / (Σ w · Σ 1/w)`` ∈ (0, 1] for ``x ~ p``; ``log_w`` shape ``(N,)``."""
    lw = _check_log_w(log_w)
    log_ess = 2 * math.log(lw.numel()) - torch.logsumexp(lw, 0) - torch.logsumexp(-lw, 0)
    return float(torch.exp(log_ess))


def reverse_ess_error(log_w: Tensor) -> float:
    """Delta-method standard error of :func:`reverse_ess` from its own ``N`` samples.

    With ``a = mean w``, ``b = mean w²`` and ``ESS = a²/b``, the influence of sample ``i`` is
    ``ESS · [2(w_i/a − 1) − (w_i²/b − 1)]``, so ``SE = ESS · sqrt(mean(ψ_i²) / N)`` with ``ψ_i``
    the bracket. Computed with ``w_i/a`` and ``w_i²/b`` in log space (no overflow). It is the
    weights' own estimate: where ``q_θ`` misses part of ``p`` it is optimistic, like the ESS.
    ``log_w`` shape ``(N,)``.
    """
    lw = _check_log_w(log_w).to(torch.float64)
    n = lw.numel()
    u = torch.exp(lw - torch.logsumexp(lw, 0) + math.log(n))  # w_i / a
    v = torch.exp(2 * lw - torch.logsumexp(2 * lw, 0) + math.log(n))  # w_i² / b
    psi = 2 * (u - 1) - (v - 1)
    return reverse_ess(lw) * math.sqrt(float((psi * psi).mean()) / n)


def forward_ess_error(log_w: Tensor) -> float:
    """Delta-method standard error of :func:`forward_ess` from its own ``N`` samples ``x ~ p``.

    With ``a = mean w``, ``c = mean 1/w`` and ``ESS = 1/(a c)``, the influence of sample ``i`` is
    ``−ESS · [(w_i/a − 1) + (w_i⁻¹/c − 1)]``, so ``SE = ESS · sqrt(mean(ψ_i²) / N)``; both ratios
    are computed in log space. ``log_w`` shape ``(N,)``.
    """
    lw = _check_log_w(log_w).to(torch.float64)
    n = lw.numel()
    u = torch.exp(lw - torch.logsumexp(lw, 0) + math.log(n))  # w_i / a
    v = torch.exp(-lw - torch.logsumexp(-lw, 0) + math.log(n))  # w_i⁻¹ / c
    psi = (u - 1) + (v - 1)
    return forward_ess(lw) * math.sqrt(float((psi * psi).mean()) / n)


def nll(flow: Flow, x: Tensor) -> float:
    """``−mean log q_θ(x)`` on held-out target samples ``x`` ``(N, *event_shape)``."""
    flow.check_input(x, name="x (held-out target samples)")
    with torch.no_grad():
        return float(-flow.log_prob(x).mean())


@dataclass(frozen=True)
class GradientStatistics:
    """Element-wise mean and unbiased variance of an estimator's gradient over ``n`` batches,
    keyed like ``flow.named_parameters()``."""

    mean: dict[str, Tensor]
    variance: dict[str, Tensor]
    n: int

    def total_variance(self) -> float:
        """``Σ_k Var[g_k]`` over all parameter entries: the trace of the covariance."""
        return float(sum(float(v.sum()) for v in self.variance.values()))

    def mean_norm(self) -> float:
        return math.sqrt(sum(float((m * m).sum()) for m in self.mean.values()))


def gradient_variance(
    name: str, flow: Flow, target: Target, batches: Iterable[Tensor]
) -> GradientStatistics:
    """Per-parameter variance of estimator ``name`` across independent batches at the flow's
    current (fixed) parameters. Needs at least two batches."""
    grads = [gradient(name, flow, target, b) for b in batches]
    if len(grads) < 2:
        raise ValueError(f"gradient_variance needs at least 2 batches, got {len(grads)}")
    stacked = {k: torch.stack([g[k] for g in grads]) for k in grads[0]}
    return GradientStatistics(
        mean={k: v.mean(0) for k, v in stacked.items()},
        variance={k: v.var(0, unbiased=True) for k, v in stacked.items()},
        n=len(grads),
    )
