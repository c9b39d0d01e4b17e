"""Evaluation of a flow against its target, as plain functions that any training loop can call
(:mod:`pathgrad_ref.training` does), and :func:`fmt`, the number format of its figures.

With flow samples ``x_i ~ q_θ`` and log weights ``log w_i = −S(x_i) − log q_θ(x_i)`` (``p ∝
e^{−S}``): reverse ESS ``(Σ w)² / (N Σ w²)``; ``KL(q‖p) = −mean(log w) + log Z`` where ``log Z``
is known; observables reweighted, ``Ô = Σ w O / Σ w``, with the delta-method error ``sqrt(Σ w²
(O − Ô)²) / Σ w`` (NaN below ``MIN_EFFECTIVE_SAMPLES`` effective samples). On held-out target
samples: NLL ``−mean(log q_θ)``, forward ESS ``N² / (Σ w · Σ 1/w)`` and ``KL(p‖q) = mean(log w)
− log Z``; on part of the training samples the training NLL (its gap shows overfitting).

When can a reweighted estimate be trusted? :func:`unreliable_reason`, the one place the rule
is written, asks for ``N_eff = ESS · N ≥ RELIABLE_EFFECTIVE_SAMPLES`` (1000: below it the error
bar, computed from the weights, does not describe the estimate; an 8×8, κ = 0.3 φ⁴ flow at
``N_eff ≈ 290`` sat 3–5σ off its HMC reference) and, where held-out target samples exist,
forward ESS ``≥ RELIABLE_FORWARD_ESS`` (0.01: the reverse ESS is blind to regions where
``q_θ ≈ 0`` but ``p`` is not, and no reweighting recovers what the flow never visits).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .flows.base import Flow
from .metrics import (
    forward_ess,
    forward_ess_error,
    reverse_ess,
    reverse_ess_error,
)
from .targets.base import Target

MIN_EFFECTIVE_SAMPLES = 10.0
RELIABLE_EFFECTIVE_SAMPLES = 1000.0
RELIABLE_FORWARD_ESS = 0.01


def unreliable_reason(n_eff: Any, ess_forward: Any = None) -> str:
    """Why reweighted estimates from ``n_eff`` effective flow samples (and forward ESS
    ``ess_forward``, where known) cannot be trusted; ``""`` when they can (module docstring)."""
    why = []
    if not (isinstance(n_eff, (int, float)) and n_eff >= RELIABLE_EFFECTIVE_SAMPLES):
        shown = f"{n_eff:.3g}" if isinstance(n_eff, (int, float)) else "–"
        why.append(f"N_eff {shown} < {RELIABLE_EFFECTIVE_SAMPLES:.0f}")
    if isinstance(ess_forward, (int, float)) and not ess_forward >= RELIABLE_FORWARD_ESS:
        why.append(f"fwd-ESS {ess_forward:.3g} < {RELIABLE_FORWARD_ESS}: q misses part of p")
    return "; ".join(why)


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


def _ess(fn: Callable[[Tensor], float], log_w: Tensor) -> float:
    """``fn(log_w)``, or 0 when a weight is NaN or infinite (a broken flow has no sample size)."""
    return fn(log_w) if bool(torch.isfinite(log_w).all()) else 0.0


@torch.no_grad()
def evaluate(
    flow: Flow,
    target: Target,
    *,
    n_samples: int,
    generator: torch.Generator,
    observables: Sequence[Observable] = (),
    log_z: float | None = None,
    test: Tensor | None = None,
    train: Tensor | None = None,
    chunk: int = 4096,
) -> dict[str, Any]:
    """Metrics of ``flow`` (see the module docstring) on ``n_samples`` flow samples drawn with
    ``generator`` (in chunks of ``chunk``) and, if given, on the held-out samples ``test``.

    Returns a flat ``dict``: ``ess_reverse`` and ``ess_reverse_err``, ``n_eff``
    (``ESS · n_samples``), ``finite_fraction`` (of the weights), ``kl_reverse`` (with
    ``log_z``), ``<observable>`` and ``<observable>_err``, ``reliable`` (whether the reweighted
    observables can be trusted); with ``test`` also ``nll``, ``ess_forward``,
    ``ess_forward_err`` and ``kl_forward`` (with ``log_z``); with ``train`` (give a fixed
    subset: its size sets the cost) ``nll_train``."""
    log_ws: list[Tensor] = []
    values: dict[str, list[Tensor]] = {o.name: [] for o in observables}
    left = n_samples
    while left > 0:
        m = min(left, chunk)
        x, log_q = flow.sample(m, generator)
        log_ws.append((-target.action(x) - log_q).to(torch.float64))
        for o in observables:
            values[o.name].append(o.fn(x).to(torch.float64))
        left -= m
    log_w = torch.cat(log_ws)
    ess = _ess(reverse_ess, log_w)
    out: dict[str, Any] = {
        "ess_reverse": ess,
        "ess_reverse_err": _ess(reverse_ess_error, log_w),
        "n_eff": ess * log_w.numel(),
        "finite_fraction": float(torch.isfinite(log_w).double().mean()),
    }
    if log_z is not None:
        out["kl_reverse"] = float(-log_w.mean()) + log_z
    for o in observables:
        est = reweighted_mean(torch.cat(values[o.name]), log_w)
        out[o.name], out[f"{o.name}_err"] = est.mean, est.err
    if test is not None:
        out.update(evaluate_on_samples(flow, target, test, log_z=log_z, chunk=chunk))
    if train is not None:
        out["nll_train"] = evaluate_on_samples(flow, target, train, log_z=None, chunk=chunk)["nll"]
    out["reliable"] = not unreliable_reason(out["n_eff"], out.get("ess_forward"))
    return out


@torch.no_grad()
def evaluate_on_samples(
    flow: Flow, target: Target, samples: Tensor, *, log_z: float | None, chunk: int
) -> dict[str, float]:
    """NLL, forward ESS and (with ``log_z``) ``KL(p‖q)`` on target samples, moved to the
    flow's device and dtype ``chunk`` at a time."""
    log_qs, log_ws = [], []
    for part in torch.split(samples, chunk):
        x = part.to(device=flow.device, dtype=flow.dtype)
        log_q = flow.log_prob(x)
        log_qs.append(log_q.to(torch.float64))
        log_ws.append((-target.action(x) - log_q).to(torch.float64))
    log_q_all, log_w = torch.cat(log_qs), torch.cat(log_ws)
    out = {
        "nll": float(-log_q_all.mean()),
        "ess_forward": _ess(forward_ess, log_w),
        "ess_forward_err": _ess(forward_ess_error, log_w),
    }
    if log_z is not None:
        out["kl_forward"] = float(log_w.mean()) - log_z
    return out


def references(
    observables: Sequence[Observable], test: Tensor | None, tau_int: float = math.nan
) -> dict[str, dict[str, Any]]:
    """Per observable: the exact value where known, and the mean over held-out target samples
    if there are any, with the error ``std · sqrt(2 τ_int / N)``. ``value``/``err``/``source``
    is the one to compare with (exact first)."""
    refs: dict[str, dict[str, Any]] = {}
    for o in observables:
        ref: dict[str, Any] = {}
        if test is not None:
            est = sample_mean(o.fn(test.to(torch.float64)), tau_int)
            ref.update(sample_value=est.mean, sample_err=est.err)
        if o.exact is not None:
            ref.update(value=o.exact, err=0.0, source="exact")
        elif ref:
            ref.update(value=ref["sample_value"], err=ref["sample_err"], source="target samples")
        if ref:
            refs[o.name] = ref
    return refs


def fmt(v: Any, digits: int = 3) -> str:
    """A number as a physicist reads it: ``digits`` significant figures, scientific notation
    when tiny or huge (never ``0.0000`` for a small non-zero value), ``–`` for a missing or
    non-finite one; integers and strings as they are."""
    if v is None or isinstance(v, bool):
        return "–" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        if v != 0 and not 1e-3 <= abs(v) < 1e5:
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}"
    return str(v)
