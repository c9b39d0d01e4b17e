"""Autocorrelation diagnostics for Markov chain time series.

Convention: ``τ_int = ½ + Σ_{t≥1} ρ(t)``, so that independent samples have ``τ_int = ½`` and the
variance of a mean over ``N`` correlated samples is ``σ² · 2τ_int / N``. The effective sample
size is ``N / (2τ_int)``. For an AR(1) process ``x_{t+1} = ρ x_t + ε_t``,
``τ_int = (1 + ρ) / (2(1 − ρ))``.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
from torch import Tensor

Method = Literal["geyer", "sokal"]

_MIN_STEPS_PER_TAU = 50


def _as_2d(series: Tensor) -> Tensor:
    """``(n_steps,)`` or ``(n_steps, n_chains)`` → float64 CPU ``(n_steps, n_chains)``."""
    if not isinstance(series, Tensor):
        raise TypeError(f"series: expected a torch.Tensor, got {type(series).__name__}")
    if series.dim() == 1:
        series = series[:, None]
    if series.dim() != 2:
        raise ValueError(
            f"series: expected shape (n_steps,) or (n_steps, n_chains), got {tuple(series.shape)}"
        )
    if series.shape[0] < 2 or series.shape[1] < 1:
        raise ValueError(
            f"series: expected at least 2 steps and 1 chain, got {tuple(series.shape)}"
        )
    x = series.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("series: expected finite values, got NaN or inf")
    return x


def autocorrelation(series: Tensor) -> Tensor:
    """Normalised autocorrelation ``ρ(t) = Γ(t)/Γ(0)``, ``t = 0, …, n_steps − 1``, shape
    ``(n_steps,)``, float64 on the CPU.

        Γ(t) = 1/(C·n) Σ_c Σ_{i < n−t} (x_{i,c} − x̄)(x_{i+t,c} − x̄)

    with ``x̄`` the mean over all steps *and* chains: chains stuck in different modes then show
    up as slowly decaying correlations, not as independent samples. The ``1/n`` (not
    ``1/(n−t)``) normalisation keeps the estimate positive semi-definite, which Geyer's
    sequence relies on. Computed by zero-padded FFT in ``O(n log n)`` per chain.
    A constant series has no defined ``ρ``; it gives NaN.
    """
    x = _as_2d(series)
    n, c = x.shape
    d = x - x.mean()
    # Padding to ≥ 2n − 1 turns the FFT's circular correlation into the linear one.
    nfft = 1 << (2 * n - 1).bit_length()
    f = torch.fft.rfft(d, n=nfft, dim=0)
    acov: Tensor = torch.fft.irfft(f * f.conj(), n=nfft, dim=0)[:n].sum(1) / (c * n)
    if not float(acov[0]) > 0:
        return torch.full((n,), math.nan, dtype=torch.float64)
    return acov / acov[0]


def _tau_geyer(rho: Tensor) -> tuple[float, bool]:
    # Pair sums P_k = ρ(2k) + ρ(2k+1) are positive and decreasing for reversible chains; keep
    # the initial positive run and enforce monotonicity (Geyer 1992, initial monotone sequence).
    n_pairs = rho.shape[0] // 2
    pairs = rho[: 2 * n_pairs].view(n_pairs, 2).sum(1)
    nonpos = (pairs <= 0).nonzero()
    truncated = nonpos.numel() > 0
    k_end = int(nonpos[0]) if truncated else n_pairs
    kept = pairs[:k_end]
    if kept.numel() > 0:
        kept = torch.cummin(kept, 0).values
    return -0.5 + float(kept.sum()), truncated


def _tau_sokal(rho: Tensor, c: float) -> tuple[float, bool]:
    # τ(W) = ½ + Σ_{t=1..W} ρ(t); the window is the smallest W with W ≥ c·τ(W) (Madras & Sokal
    # 1988): it balances the bias of cutting the sum against the noise of long lags.
    tau_w = 0.5 + torch.cumsum(rho[1:], 0)
    windows = torch.arange(1, rho.shape[0], dtype=torch.float64)
    ok = (windows >= c * tau_w).nonzero()
    if ok.numel() == 0:
        return float(tau_w[-1]), False
    return float(tau_w[int(ok[0])]), True


def integrated_autocorrelation_time(
    series: Tensor, *, method: Method = "geyer", c: float = 5.0
) -> float:
    """Integrated autocorrelation time ``τ_int = ½ + Σ_{t≥1} ρ(t)`` of a scalar observable.

    ``series``: ``(n_steps,)`` for one chain or ``(n_steps, n_chains)`` for independent chains
    of one sampler; ``ρ`` is estimated jointly over chains (see :func:`autocorrelation`). The
    result is in units of the series' steps (kept samples, after any thinning).

    The infinite sum is cut off from the noisy estimate ``ρ̂`` by

    - ``"geyer"`` (default): the initial monotone sequence of Geyer (1992). With
      ``P_k = ρ(2k) + ρ(2k+1)``, sum the initial run of positive ``P_k``, made non-increasing:
      ``τ_int = −½ + Σ_k P_k``. Valid for reversible chains (HMC with full momentum refresh is
      one) and well behaved for anticorrelated observables, where ``τ_int < ½``.
    - ``"sokal"``: the automatic window of Madras & Sokal (1988): ``τ(W) = ½ + Σ_{t=1}^W ρ(t)``
      at the smallest ``W ≥ c·τ(W)``, with ``c`` (default 5). Standard in lattice field theory
      for positively correlated series; not meant for strongly anticorrelated ones.

    Warns (``RuntimeWarning``) if the cut-off is not reached or a chain is shorter than
    ``50 τ_int``: the estimate is then unreliable and usually too low. NaN for a constant series.
    """
    if method not in ("geyer", "sokal"):
        raise ValueError(f"method: expected 'geyer' or 'sokal', got {method!r}")
    if not (math.isfinite(c) and c > 0):
        raise ValueError(f"c: expected a finite positive window factor, got {c}")
    rho = autocorrelation(series)
    if not bool(torch.isfinite(rho[0])):
        return math.nan
    if method == "geyer":
        tau, converged = _tau_geyer(rho)
    else:
        tau, converged = _tau_sokal(rho, c)
    # Mean subtraction biases ρ̂ low over the whole series, so a cut-off that was reached is no
    # guarantee on its own; ask also for chains much longer than τ_int (as emcee does).
    n_steps = rho.shape[0]
    if not converged or n_steps < _MIN_STEPS_PER_TAU * tau:
        warnings.warn(
            f"series of {n_steps} steps is too short for a reliable τ_int (estimate {tau:.3g}, "
            f"likely too low; want >= {_MIN_STEPS_PER_TAU}·τ_int steps per chain)",
            RuntimeWarning,
            stacklevel=2,
        )
    return tau


def effective_sample_size(series: Tensor, *, method: Method = "geyer", c: float = 5.0) -> float:
    """``N_eff = N / (2τ_int)`` with ``N = n_steps · n_chains`` the total number of samples.

    ``series`` as in :func:`integrated_autocorrelation_time`. NaN for a constant series.
    """
    n_total = series.numel()
    tau = integrated_autocorrelation_time(series, method=method, c=c)
    return n_total / (2.0 * tau)
