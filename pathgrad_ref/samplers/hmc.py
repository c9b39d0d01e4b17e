"""Hamiltonian (hybrid) Monte Carlo for targets ``p(x) ∝ exp(−S(x))``, many chains in one batch.

Each trajectory draws momenta ``π ~ N(0, I)``, integrates Hamilton's equations for
``H(x, π) = S(x) + ½|π|²`` with the leapfrog scheme and the target's analytic force ``∇S``, and
accepts the end point with probability ``min(1, exp(−ΔH))``. Chains are independent and run as
one batch of shape ``(n_chains, *event_shape)``, on the CPU or a GPU.

No trajectory reads a value back to the host (which on a GPU would wait for the device):
accept/reject is a ``torch.where`` (:func:`hmc_trajectory`), acceptances are counted and the
step size adapted on the device (:func:`run_chains`); :func:`hmc_sample` reads the counts, the
final step size and the observable series once, after the last trajectory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..progress import Progress, progress_bar
from ..targets.base import Target
from .diagnostics import integrated_autocorrelation_time

Observable = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class HMCResult:
    """Output of :func:`hmc_sample`.

    - ``samples``: ``(n_samples, *event_shape)``, time-major: ``samples[k·n_chains + c]`` is
      chain ``c`` at its ``k``-th kept step (``chains`` gives the ``(n_kept, n_chains, …)`` view).
    - ``acceptance_rate``: fraction of accepted trajectories in the sampling phase.
    - ``n_steps``: trajectories per chain in the sampling phase (``n_kept · thin``).
    - ``step_size``: the leapfrog step used for sampling (after any adaptation).
    - ``final_state``: ``(n_chains, *event_shape)``, the chains' last positions; pass it as
      ``init`` with ``n_therm=0`` to continue the chains.
    - ``observable``: ``(n_kept, n_chains)``, the observable at every kept step.
    - ``tau_int``: integrated autocorrelation time of ``observable`` in kept steps (NaN if fewer
      than 2 kept steps or a constant observable).
    - ``metadata``: the settings that produced the result (JSON-friendly), e.g. for caching.
    """

    samples: Tensor
    acceptance_rate: float
    n_steps: int
    step_size: float
    final_state: Tensor
    observable: Tensor
    tau_int: float
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def chains(self) -> Tensor:
        """``samples`` as ``(n_kept, n_chains, *event_shape)`` (a view)."""
        n_kept, n_chains = self.observable.shape
        return self.samples.view(n_kept, n_chains, *self.samples.shape[1:])

    @property
    def effective_sample_size(self) -> float:
        """``n_samples / (2τ_int)`` for the recorded observable."""
        return self.samples.shape[0] / (2.0 * self.tau_int)


def _leapfrog(
    target: Target, x: Tensor, p: Tensor, eps: Tensor, n_steps: int, force: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Leapfrog from ``(x, p)`` with ``force = ∇S(x)`` given; returns ``(x, p, ∇S(x))`` at the
    end so the caller can reuse the force for the next trajectory."""
    p = p - 0.5 * eps * force
    for i in range(n_steps):
        x = x + eps * p
        force = target.force(x)
        # Full momentum kicks between drifts; the last one is a half kick closing the step.
        p = p - (eps if i < n_steps - 1 else 0.5 * eps) * force
    return x, p, force


def _broadcast_step(step_size: float | Tensor, x: Tensor) -> Tensor:
    eps = torch.as_tensor(step_size, dtype=x.dtype, device=x.device)
    if eps.dim() == 1:
        # One step per chain: (N,) → (N, 1, …, 1).
        eps = eps.view(-1, *([1] * (x.dim() - 1)))
    return eps


def leapfrog(
    target: Target, x: Tensor, p: Tensor, step_size: float | Tensor, n_steps: int
) -> tuple[Tensor, Tensor]:
    """``n_steps`` leapfrog steps for ``H = S(x) + ½|p|²``:

        p ← p − ε/2 ∇S(x);  [x ← x + ε p;  p ← p − ε ∇S(x)] × n_steps, last kick halved.

    ``x``, ``p``: ``(N, *event_shape)``; ``step_size``: a float or a ``(N,)`` tensor (one step
    per chain). Returns ``(x, p)`` at the end. Volume preserving and reversible: running it
    again from ``(x, −p)`` returns to the start; ``ΔH = O(ε²)`` at fixed ``ε · n_steps``.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps: expected >= 1, got {n_steps}")
    eps = _broadcast_step(step_size, x)
    x, p, _ = _leapfrog(target, x, p, eps, n_steps, target.force(x))
    return x, p


def _check_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def _initial_state(
    target: Target,
    init: Tensor | None,
    n_chains: int,
    periodic: float | None,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device,
) -> Tensor:
    shape = (n_chains, *target.event_shape)
    if init is None:
        if periodic is not None:
            u = torch.rand(shape, generator=generator, dtype=dtype, device=device)
            return periodic * u
        # A random start seeds every mode of a multimodal target (e.g. both signs of φ⁴).
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    if not isinstance(init, Tensor):
        raise ValueError(f"init: expected a torch.Tensor or None, got {type(init).__name__}")
    event = tuple(target.event_shape)
    if tuple(init.shape) == event:
        init = init.expand(shape)
    elif tuple(init.shape) != shape:
        raise ValueError(
            f"init: expected shape {shape} (n_chains, *event_shape) or {event}, "
            f"got {tuple(init.shape)}"
        )
    x = init.detach().to(dtype=dtype, device=device).clone()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("init: expected finite values, got NaN or inf")
    if periodic is not None:
        x = _wrap(x, periodic)
    return x


def _wrap(x: Tensor, period: float) -> Tensor:
    x = torch.remainder(x, period)
    # remainder can round a tiny negative input up to exactly `period`.
    return torch.where(x >= period, x - period, x)


def hmc_trajectory(
    target: Target,
    x: Tensor,
    action: Tensor,
    force: Tensor,
    step_size: Tensor,
    n_leapfrog: int,
    *,
    generator: torch.Generator | None = None,
    periodic: float | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One HMC trajectory of every chain, device code only (no host read).

    Draws ``π ~ N(0, I)``, runs :func:`leapfrog` from ``(x, π)`` with ``force = ∇S(x)`` given,
    and accepts chain ``c`` where ``log u_c < −ΔH_c``, ``u_c ~ U(0, 1)``,
    ``ΔH = S(x') − S(x) + ½(|π'|² − |π|²)``, by ``torch.where``; a NaN or infinite ``ΔH`` (a
    diverging trajectory) compares false and is rejected.

    Shapes: ``x``, ``force``: ``(N, *event_shape)``; ``action``: ``(N,)``; ``step_size``: a
    0-dim tensor or one step per chain, ``(N, 1, …, 1)``. Returns ``(x, S(x), ∇S(x), accept,
    ΔH)`` after the accept/reject step, ``accept`` bool ``(N,)``; with ``periodic`` the
    positions are wrapped to ``[0, periodic)`` (the action and force, periodic, stay valid).
    """
    n_chains = x.shape[0]
    p = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    x_new, p_new, force_new = _leapfrog(target, x, p, step_size, n_leapfrog, force)
    action_new = target.action(x_new)
    kinetic = 0.5 * (p_new * p_new - p * p).flatten(1).sum(1)
    delta_h = action_new - action + kinetic
    u = torch.rand(n_chains, generator=generator, dtype=x.dtype, device=x.device)
    accept = torch.log(u) < -delta_h
    mask = accept.view(-1, *([1] * (x.dim() - 1)))
    x = torch.where(mask, x_new, x)
    force = torch.where(mask, force_new, force)
    action = torch.where(accept, action_new, action)
    if periodic is not None:
        x = _wrap(x, periodic)
    return x, action, force, accept, delta_h


@dataclass(frozen=True)
class ChainState:
    """Output of :func:`run_chains`, all on the chains' device (nothing read to the host).

    ``samples``: ``(n_kept, n_chains, *event_shape)``; ``observable``: ``(n_kept, n_chains)``;
    ``final_state``: ``(n_chains, *event_shape)``; ``n_accepted``: int64 ``()``, accepted
    trajectories of the sampling phase summed over chains; ``log_step_size``: float64 ``()``,
    ``log ε`` after any adaptation.
    """

    samples: Tensor
    observable: Tensor
    final_state: Tensor
    n_accepted: Tensor
    log_step_size: Tensor


def run_chains(
    target: Target,
    x: Tensor,
    *,
    n_therm: int,
    n_kept: int,
    thin: int,
    step_size: float,
    n_leapfrog: int,
    generator: torch.Generator | None = None,
    periodic: float | None = None,
    step_jitter: float = 0.0,
    adapt_step_size: bool = False,
    target_acceptance: float = 0.8,
    observable: Observable | None = None,
    progress: Callable[[int], Any] | None = None,
) -> ChainState:
    """The trajectories of :func:`hmc_sample` from the start ``x`` (``(n_chains, *event)``,
    validated by the caller): ``n_therm`` thermalisation trajectories, then ``n_kept · thin``
    sampling ones keeping every ``thin``-th state. No host synchronisation per trajectory:
    accept/reject is a ``torch.where``, acceptances are summed on the device and the step-size
    adaptation keeps ``log ε`` as a device tensor, all read once by the caller.
    ``progress(1)`` is called after each trajectory. Call under ``torch.no_grad()``.
    """
    obs_fn: Observable = target.action if observable is None else observable
    n_chains, dtype, device = x.shape[0], x.dtype, x.device
    kept = torch.empty((n_kept, *x.shape), dtype=dtype, device=device)
    obs = torch.empty((n_kept, n_chains), dtype=dtype, device=device)
    # Adaptation state in float64 whatever the chains' dtype, as a host float would be.
    log_eps = torch.full((), math.log(step_size), dtype=torch.float64, device=device)
    n_accepted = torch.zeros((), dtype=torch.int64, device=device)
    action = target.action(x)
    force = target.force(x)
    for t in range(n_therm + n_kept * thin):
        sampling = t >= n_therm
        eps = log_eps.exp().to(dtype)
        if step_jitter > 0:
            u = torch.rand(n_chains, generator=generator, dtype=dtype, device=device)
            eps = _broadcast_step(eps * (1.0 + step_jitter * (2.0 * u - 1.0)), x)
        x, action, force, accept, delta_h = hmc_trajectory(
            target, x, action, force, eps, n_leapfrog, generator=generator, periodic=periodic
        )
        if sampling:
            n_accepted += accept.sum()
            k, r = divmod(t - n_therm + 1, thin)
            if r == 0:
                kept[k - 1] = x
                obs[k - 1] = obs_fn(x)
        elif adapt_step_size:
            prob = torch.exp(torch.clamp(-delta_h, max=0.0)).nan_to_num(0.0)
            log_eps = log_eps + (prob.mean().to(torch.float64) - target_acceptance) / (t + 1) ** 0.6
        if progress is not None:
            progress(1)
    return ChainState(kept, obs, x, n_accepted, log_eps)


def hmc_sample(
    target: Target,
    n_samples: int,
    *,
    n_chains: int,
    step_size: float,
    n_leapfrog: int,
    n_therm: int,
    thin: int = 1,
    init: Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    periodic: float | None = None,
    step_jitter: float = 0.0,
    adapt_step_size: bool = False,
    target_acceptance: float = 0.8,
    observable: Observable | None = None,
    progress: bool = False,
) -> HMCResult:
    """Sample ``p(x) ∝ exp(−S(x))`` by HMC with ``n_chains`` independent chains in one batch.

    Per trajectory and chain: ``π ~ N(0, I)``; ``n_leapfrog`` leapfrog steps of size ``ε`` with
    ``target.force``; accept with probability ``min(1, exp(−ΔH))``,
    ``ΔH = S(x') − S(x) + ½(|π'|² − |π|²)`` computed in ``dtype``. After ``n_therm``
    thermalisation trajectories every chain keeps its state every ``thin`` trajectories, so
    ``n_samples = n_chains · n_kept`` (``n_samples`` must be a multiple of ``n_chains``).

    Options:

    - ``init``: ``(n_chains, *event_shape)`` or ``event_shape`` (shared); default ``N(0, I)``, or
      uniform on ``[0, periodic)`` when ``periodic`` is set.
    - ``periodic``: a period ``P`` (e.g. ``2π`` for U(1) link angles): positions are wrapped to
      ``[0, P)`` after every trajectory. The action must itself be ``P``-periodic.
    - ``step_jitter``: ``j ∈ [0, 1)``; each chain draws its step uniformly from
      ``ε·[1 − j, 1 + j]`` per trajectory, which breaks the resonances of fixed-length
      trajectories on near-Gaussian targets without affecting detailed balance.
    - ``adapt_step_size``: during thermalisation only, move ``log ε`` by
      ``(ā − target_acceptance)/(t + 1)^0.6`` after trajectory ``t``, ``ā`` the chain-mean
      acceptance probability (a Robbins–Monro step); sampling then uses the final ``ε``.
      Needs ``n_therm >= 1``.
    - ``observable``: ``f(x) -> (n_chains,)`` recorded at kept steps to report ``tau_int``;
      default ``target.action``.
    - ``generator``: a ``torch.Generator`` on ``device`` for reproducible runs.
    - ``progress``: show progress (:func:`pathgrad_ref.progress.progress_bar`: a tqdm bar on
      a terminal, tqdm then required; plain lines at an interval when the output is a file).
    """
    n_samples = _check_int("n_samples", n_samples, 1)
    n_chains = _check_int("n_chains", n_chains, 1)
    n_leapfrog = _check_int("n_leapfrog", n_leapfrog, 1)
    n_therm = _check_int("n_therm", n_therm, 0)
    thin = _check_int("thin", thin, 1)
    eps0 = _check_positive("step_size", step_size)
    if n_samples % n_chains:
        raise ValueError(f"n_samples: expected a multiple of n_chains={n_chains}, got {n_samples}")
    if periodic is not None:
        periodic = _check_positive("periodic", periodic)
    if not (isinstance(step_jitter, (int, float)) and 0.0 <= step_jitter < 1.0):
        raise ValueError(f"step_jitter: expected a number in [0, 1), got {step_jitter!r}")
    if not (isinstance(target_acceptance, (int, float)) and 0.0 < target_acceptance < 1.0):
        raise ValueError(
            f"target_acceptance: expected a number in (0, 1), got {target_acceptance!r}"
        )
    if adapt_step_size and n_therm == 0:
        raise ValueError("adapt_step_size: needs n_therm >= 1 (adaptation runs only then)")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype: expected a floating point dtype, got {dtype}")
    device = torch.device(device)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(
            f"generator: expected a generator on device type {device.type!r}, "
            f"got one on {generator.device.type!r}"
        )
    obs_fn: Observable = target.action if observable is None else observable

    n_kept = n_samples // n_chains
    n_total = n_therm + n_kept * thin
    x = _initial_state(target, init, n_chains, periodic, generator, dtype, device)
    obs0 = obs_fn(x)
    if not isinstance(obs0, Tensor) or tuple(obs0.shape) != (n_chains,):
        got = tuple(obs0.shape) if isinstance(obs0, Tensor) else type(obs0).__name__
        raise ValueError(f"observable: expected a tensor of shape ({n_chains},), got {got}")

    bar: Progress | None = None
    if progress:
        bar = progress_bar(n_total, "HMC", "traj")

    with torch.no_grad():
        chains = run_chains(
            target,
            x,
            n_therm=n_therm,
            n_kept=n_kept,
            thin=thin,
            step_size=eps0,
            n_leapfrog=n_leapfrog,
            generator=generator,
            periodic=periodic,
            step_jitter=step_jitter,
            adapt_step_size=adapt_step_size,
            target_acceptance=target_acceptance,
            observable=obs_fn,
            progress=bar.update if bar is not None else None,
        )
    if bar is not None:
        bar.close()
    # The run's host reads, once, after all trajectories.
    x, kept, obs = chains.final_state, chains.samples, chains.observable
    final_step = float(chains.log_step_size.exp())
    n_accepted = int(chains.n_accepted)

    tau = math.nan
    if n_kept >= 2:
        tau = integrated_autocorrelation_time(obs)
    metadata: dict[str, Any] = {
        "target": type(target).__name__,
        "target_params": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in vars(target).items()
            if not k.startswith("_") and isinstance(v, (bool, int, float, str, tuple))
        },
        "n_samples": n_samples,
        "n_chains": n_chains,
        "step_size": eps0,
        "final_step_size": final_step,
        "n_leapfrog": n_leapfrog,
        "n_therm": n_therm,
        "thin": thin,
        "periodic": periodic,
        "step_jitter": float(step_jitter),
        "adapt_step_size": adapt_step_size,
        "target_acceptance": float(target_acceptance),
        "init": "given" if init is not None else ("uniform" if periodic else "normal"),
        "seed": generator.initial_seed() if generator is not None else None,
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "torch": torch.__version__,
    }
    n_traj = n_kept * thin
    return HMCResult(
        samples=kept.view(n_samples, *target.event_shape),
        acceptance_rate=n_accepted / (n_traj * n_chains),
        n_steps=n_traj,
        step_size=final_step,
        final_state=x,
        observable=obs,
        tau_int=tau,
        metadata=metadata,
    )
