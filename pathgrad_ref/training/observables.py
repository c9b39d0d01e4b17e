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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

MIN_EFFECTIVE_SAMPLES = 10.0


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
