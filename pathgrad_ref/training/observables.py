"""Physics observables and their estimates: importance-reweighted on flow samples, plain on
target samples.

For ``x_i ~ q_θ`` with ``w_i = exp(log w_i)``, ``log w = −S − log q_θ``, the self-normalised
estimate of ``⟨O⟩_p`` is

    Ô = Σ_i w_i O(x_i) / Σ_i w_i,

with the delta-method standard error ``sqrt(Σ_i w_i² (O(x_i) − Ô)²) / Σ_i w_i`` (it reduces to
``std/√N`` for equal weights). Both are computed with weights normalised in log space. The
error is itself estimated from the weights and is meaningless when a handful of samples carry
all the weight (it goes to zero with a single one): below ``MIN_EFFECTIVE_SAMPLES`` effective
samples, ``(Σ w)² / Σ w²``, it is reported as NaN.

When is a reweighted estimate trustworthy? :func:`reliable` asks for two things:

- ``N_eff = ESS · N ≥ RELIABLE_EFFECTIVE_SAMPLES`` (1000). The error bar above is computed
  from the weights themselves; it only describes the estimate when the tail of the weight
  distribution has been sampled, which a few hundred effective samples do not guarantee: the
  8×8, κ = 0.3 φ⁴ flow of an earlier quick preset (``python paper_runs/phi4.py --kappa 0.3``),
  at ``N_eff ≈ 290``, sat 3–5σ off its HMC reference at every evaluation. At 1000 the relative
  error of a Gaussian error bar is about ``1/sqrt(2 N_eff) ≈ 2%``.
- where held-out target samples exist, forward ESS ``≥ RELIABLE_FORWARD_ESS`` (0.01). The
  reverse ESS is blind to regions where ``q_θ ≈ 0`` but ``p`` is not (flow samples never go
  there); the forward ESS, on samples of ``p``, is not: below 1% the flow misses part of the
  target, and no reweighting of its samples can recover what they never visit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

MIN_EFFECTIVE_SAMPLES = 10.0
RELIABLE_EFFECTIVE_SAMPLES = 1000.0
RELIABLE_FORWARD_ESS = 0.01


def reliable(n_eff: float, ess_forward: float | None = None) -> bool:
    """Whether reweighted estimates from ``n_eff = ESS · N`` effective flow samples can be
    trusted (see the module docstring); ``ess_forward`` on held-out target samples, if any."""
    if not n_eff >= RELIABLE_EFFECTIVE_SAMPLES:  # also False for NaN
        return False
    return ess_forward is None or ess_forward >= RELIABLE_FORWARD_ESS


@dataclass(frozen=True)
class Observable:
    """A scalar observable ``fn: (N, *event_shape) -> (N,)``.

    ``name`` is the key in ``metrics.jsonl`` (an identifier), ``label`` the printed name and
    ``exact`` the exactly known expectation under the target, if there is one; ``tex`` the
    plot label in matplotlib mathtext (``r"$\\chi_\\mathrm{top}$"``; default ``label``).
    """

    name: str
    label: str
    fn: Callable[[Tensor], Tensor]
    exact: float | None = None
    tex: str | None = None


@dataclass(frozen=True)
class Estimate:
    """A mean with its standard error (NaN where it cannot be estimated)."""

    mean: float
    err: float


def reweighted_mean(values: Tensor, log_w: Tensor) -> Estimate:
    """Self-normalised importance-sampling estimate of ``⟨O⟩_p`` from flow samples.

    ``values``: ``O(x_i)``, shape ``(N,)``; ``log_w``: log importance weights, shape ``(N,)``.
    Weights of ``−inf`` (zero) are allowed; NaN or ``+inf`` weights and non-finite values of
    samples with non-zero weight give NaN.
    """
    if values.shape != log_w.shape or values.dim() != 1:
        raise ValueError(
            f"values and log_w: expected two (N,) tensors, got {tuple(values.shape)} and "
            f"{tuple(log_w.shape)}"
        )
    v = values.detach().to(torch.float64)
    lw = log_w.detach().to(torch.float64)
    if bool(torch.isnan(lw).any()) or bool((lw == math.inf).any()) or bool((lw == -math.inf).all()):
        return Estimate(math.nan, math.nan)
    p = torch.softmax(lw, 0)
    if not bool(torch.isfinite(v[p > 0]).all()):
        return Estimate(math.nan, math.nan)
    v = torch.where(p > 0, v, torch.zeros_like(v))
    mean = (p * v).sum()
    err = float(torch.sqrt((p * p * (v - mean) ** 2).sum()))
    if float(1.0 / (p * p).sum()) < MIN_EFFECTIVE_SAMPLES:
        err = math.nan
    return Estimate(float(mean), err)


def sample_mean(values: Tensor, tau_int: float = 0.5) -> Estimate:
    """Mean of ``O`` over target samples with the standard error ``std · sqrt(2τ_int / N)``
    (``τ_int = ½``: independent samples). ``values``: shape ``(N,)``."""
    v = values.detach().to(torch.float64)
    n = v.numel()
    if n == 0:
        return Estimate(math.nan, math.nan)
    mean = float(v.mean())
    if n < 2:
        return Estimate(mean, math.nan)
    tau = tau_int if math.isfinite(tau_int) else 0.5
    err = float(v.std()) * math.sqrt(2.0 * max(tau, 0.5) / n)
    return Estimate(mean, err)
