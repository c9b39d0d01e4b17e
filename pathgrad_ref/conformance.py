"""Language-neutral conformance vectors: generate them, and check the library against them.

    python -m pathgrad_ref.conformance --check     # the library reproduces conformance/ (1e-12)
    python -m pathgrad_ref.conformance --write     # regenerate conformance/ (deliberately!)
    python -m pathgrad_ref.conformance --write --case nsf_gmm_d4   # one case only

Each case is a small instance of one of the paper's flows with randomised (seeded) parameters.
``conformance/<case>/manifest.json`` describes the architecture in framework-neutral terms
(layer order, masks as explicit index lists, conditioner shapes and activations, parameter
names and layouts, the array keys and tolerances); ``conformance/<case>/arrays.npz`` holds the
float64 arrays, readable by numpy alone (``np.load``). Stored per case, for ``N`` samples:

- ``param/<name>``: every parameter, in the layout the manifest states;
- ``z`` (base samples) and ``x`` (points standing in for target samples);
- ``forward/{x,log_det,score}/<i>`` after layer ``i`` of ``T(z)`` (Algorithm 1, from
  ``s_0 = ∇ log q0(z)``), ``forward/log_q``, ``forward/action``, ``forward/force`` at ``T(z)``;
- ``inverse/{x,log_det,score}/<i>``: the input of layer ``i`` recovered from ``x`` by the inverse
  layers (``i = L−1, …, 0``), the inverse layer's log-det and the score carried through it from
  ``s = ∇ log p(x) = −∇S(x)``; ``inverse/log_q`` (``log q_θ(x)``), ``inverse/action``,
  ``inverse/force`` at ``x``;
- ``loss/<estimator>`` and ``grad/<estimator>/<name>`` for every estimator of
  :data:`pathgrad_ref.estimators.ESTIMATORS` (reverse ones on ``z``, forward ones on ``x``),
  and ``log_w/<direction>`` from the flow's ``log q`` (the standard estimators');
- for a continuous layer ``i`` (an ODE solved by fixed-step RK4), the solver's state after each
  step ``k = 1, …, steps``: ``forward/ode/{x,log_det,score}/<i>/<k>`` (from ``t0`` towards
  ``t1``) and ``inverse/ode/{x,log_det,score}/<i>/<k>`` (from ``t1`` back towards ``t0``), the
  log-det accumulated from 0 at the layer's input; step ``steps`` is the layer's output.

The docs (``docs/porting.md``) explain how a port checks itself against these files.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from .estimators import ESTIMATORS, direction, get_estimator, gradient
from .flows import (
    Flow,
    continuous_flow,
    monotone_coupling_flow,
    neural_spline_flow,
    real_nvp,
    u1_flow,
    z2_nice,
)
from .flows.continuous import ContinuousLayer, VelocityMLP
from .flows.coupling import AdditiveCoupling, AffineCoupling, Coupling
from .flows.implicit import EXPANSIONS, INITIAL_BOUND, default_tolerance
from .flows.monotone import TanhSum
from .flows.scaling import GlobalScaling
from .flows.splines import RationalQuadraticSpline
from .flows.u1 import CircularPlaquetteTransform, U1Conditioner, U1Coupling
from .targets import GaussianMixture, Phi4, Target, U1Gauge

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "conformance"
LIBRARY_TOL = 1e-12
"""The library must reproduce its own vectors to this: ``|a − b| <= tol · max(1, max|b|)``."""

# What a port in float64 should reach, per case (stated in every manifest). Explicit flows are
# exact to rounding; the U(1) inverse is a bisection to 1e-13 per element, and its errors are
# amplified through 8 layers and by the 1/h' of the implicit gradients. The continuous flow is
# a fixed sequence of RK4 steps, exact to rounding too: a port runs the same discrete map.
PORT_TOL = {
    "realnvp_gmm_d6": {"rtol": 1e-10, "atol": 1e-10},
    "z2nice_phi4_4x4": {"rtol": 1e-10, "atol": 1e-10},
    "u1_4x4_8layers": {"rtol": 1e-8, "atol": 1e-8},
    "nsf_gmm_d4": {"rtol": 1e-10, "atol": 1e-10},
    "u1_circular_4x4": {"rtol": 1e-10, "atol": 1e-10},
    "tanhsum_gmm_d4": {"rtol": 1e-10, "atol": 1e-10},
    "cnf_gmm_d3": {"rtol": 1e-10, "atol": 1e-10},
}

Arrays = dict[str, npt.NDArray[np.float64]]


@dataclass(frozen=True)
class Case:
    """A named flow, its target and how to draw the inputs."""

    name: str
    build: Callable[[], tuple[Flow, Target]]
    target_points: Callable[[Flow, Target, torch.Generator, int], Tensor]
    description: str


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Initialise modules from a fixed seed without touching the caller's global generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _perturb(flow: Flow, scale: float, seed: int) -> None:
    """Seeded noise on every parameter, so that no layer (zero-initialised last layers) is the
    identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64))


def _realnvp_gmm() -> tuple[Flow, Target]:
    with _seeded(0):
        flow = real_nvp(6, n_couplings=4, hidden=(8, 8)).double()
    _perturb(flow, 0.3, seed=1)
    return flow, GaussianMixture(6)


def _z2nice_phi4() -> tuple[Flow, Target]:
    with _seeded(0):
        flow = z2_nice((4, 4), n_couplings=4, hidden=(8, 8)).double()
    _perturb(flow, 0.3, seed=1)
    with torch.no_grad():
        scaling = flow.layers[-1]
        assert isinstance(scaling, GlobalScaling)
        scaling.log_scale.fill_(0.2)
    return flow, Phi4((4, 4), kappa=0.3, lam=0.022)


def _u1() -> tuple[Flow, Target]:
    with _seeded(0):
        flow = u1_flow(4, n_layers=8, n_mixture=2, hidden=(4,), kernel_size=3).double()
    _perturb(flow, 0.3, seed=1)
    return flow, U1Gauge(4, beta=1.0)


def _nsf_gmm() -> tuple[Flow, Target]:
    with _seeded(0):
        flow = neural_spline_flow(4, n_couplings=4, bins=4, bound=2.5, hidden=(8, 8)).double()
    _perturb(flow, 0.3, seed=1)
    return flow, GaussianMixture(4)


def _u1_circular() -> tuple[Flow, Target]:
    with _seeded(0):
        flow = u1_flow(
            4, n_layers=4, hidden=(4,), kernel_size=3, transform="circular-spline", bins=4
        ).double()
    # 0.2, not 0.3: circular splines turn conditioner noise into steep slopes faster than tan
    # mixtures do, and steep slopes cost digits in every comparison.
    _perturb(flow, 0.2, seed=1)
    return flow, U1Gauge(4, beta=1.0)


def _tanhsum_gmm() -> tuple[Flow, Target]:
    with _seeded(0):
        flow = monotone_coupling_flow(4, n_couplings=4, components=2, hidden=(8, 8)).double()
    _perturb(flow, 0.3, seed=1)
    return flow, GaussianMixture(4)


CNF_STEPS = 8
"""RK4 steps of the continuous case: a power of two, so that every stage time ``t0 + n h`` and
``t0 + n h + h/2`` is exact in binary floating point and no port can round it differently."""


def _cnf_gmm() -> tuple[Flow, Target]:
    with _seeded(0):
        flow = continuous_flow(3, hidden=(8,), steps=CNF_STEPS).double()
    _perturb(flow, 0.3, seed=1)
    return flow, GaussianMixture(3)


def _gmm_points(flow: Flow, target: Target, gen: torch.Generator, n: int) -> Tensor:
    return target.sample(n, gen)


def _normal_points(flow: Flow, target: Target, gen: torch.Generator, n: int) -> Tensor:
    return 1.5 * torch.randn((n, *flow.event_shape), generator=gen, dtype=torch.float64)


def _angle_points(flow: Flow, target: Target, gen: torch.Generator, n: int) -> Tensor:
    return 2 * math.pi * torch.rand((n, *flow.event_shape), generator=gen, dtype=torch.float64)


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case(
            "realnvp_gmm_d6",
            _realnvp_gmm,
            _gmm_points,
            "RealNVP (4 affine couplings, alternating masks, MLP 8-8 tanh) on the Gaussian "
            "mixture in d = 6; x are exact mixture samples",
        ),
        Case(
            "z2nice_phi4_4x4",
            _z2nice_phi4,
            _normal_points,
            "Z2Nice (4 additive couplings, checkerboard masks, bias-free MLP 8-8 tanh) and a "
            "global scaling on phi^4, 4x4, kappa = 0.3, lambda = 0.022; x ~ 1.5 N(0, I)",
        ),
        Case(
            "u1_4x4_8layers",
            _u1,
            _angle_points,
            "Gauge-equivariant U(1) flow, 8 couplings (every mask offset in both directions), "
            "2 tan transforms, conv 2-4-6 with kernel 3, on 4x4, beta = 1; x uniform angles",
        ),
        Case(
            "nsf_gmm_d4",
            _nsf_gmm,
            _gmm_points,
            "Neural spline flow (4 rational-quadratic spline couplings, 4 bins on [-2.5, 2.5] "
            "with identity tails, alternating masks, MLP 8-8 tanh) on the Gaussian mixture in "
            "d = 4; x are exact mixture samples",
        ),
        Case(
            "u1_circular_4x4",
            _u1_circular,
            _angle_points,
            "Gauge-equivariant U(1) flow with circular-spline couplings (4 layers, 4 bins and "
            "a rotation, conv 2-4-13 with kernel 3; closed-form inverse) on 4x4, beta = 1; x "
            "uniform angles",
        ),
        Case(
            "tanhsum_gmm_d4",
            _tanhsum_gmm,
            _gmm_points,
            "Root-found monotone couplings (4 couplings of a linear map plus 2 positive tanh "
            "steps, inverse by bisection with implicit gradients, alternating masks, MLP 8-8 "
            "tanh) on the Gaussian mixture in d = 4; x are exact mixture samples",
        ),
        Case(
            "cnf_gmm_d3",
            _cnf_gmm,
            _gmm_points,
            f"Continuous flow dx/dt = v(x, t), t from 0 to 1, v an MLP of [x, t] (one hidden "
            f"layer of 8, tanh), {CNF_STEPS} classical RK4 steps, exact divergence, the score "
            f"ODE solved with the state, on the Gaussian mixture in d = 3; x are exact mixture "
            f"samples",
        ),
    )
}
N_SAMPLES = 3


# --- manifest ---------------------------------------------------------------------------------


def _linear_stack(prefix: str, seq: nn.Sequential) -> list[dict[str, Any]]:
    """The linear or conv layers of a ``Sequential``, with their parameter names, in order."""
    out: list[dict[str, Any]] = []
    for idx, module in enumerate(seq):
        if isinstance(module, nn.Linear):
            out.append(
                {
                    "in": module.in_features,
                    "out": module.out_features,
                    "weight": f"{prefix}.{idx}.weight",
                    "bias": None if module.bias is None else f"{prefix}.{idx}.bias",
                }
            )
        elif isinstance(module, nn.Conv2d):
            out.append(
                {
                    "in_channels": module.in_channels,
                    "out_channels": module.out_channels,
                    "kernel_size": list(module.kernel_size),
                    "padding": "circular",
                    "weight": f"{prefix}.{idx}.weight",
                    "bias": None if module.bias is None else f"{prefix}.{idx}.bias",
                }
            )
    return out


_U1_INPUT = (
    "channels (cos P, sin P) of the plaquettes P (L, L) of the links with "
    "the active links set to 0, multiplied by the frozen mask (1 on frozen "
    "plaquettes, 0 elsewhere)"
)

_SPLINE_KNOTS = (
    "knots t_0 = lo, t_k = lo + (hi - lo) * cumsum(m + (1 - K m) softmax(raw))_{k-1} for "
    "0 < k < K, t_K = hi (m the minimum bin size); knot derivatives delta = min_derivative + "
    "softplus(raw + log(expm1(1 - min_derivative)))"
)
_SPLINE_MAP = (
    "rational-quadratic spline (Durkan et al. 2019): in bin k, w = x_{k+1} - x_k, "
    "h = y_{k+1} - y_k, s = h / w, xi = (x - x_k) / w, f = y_k + h (s xi^2 + delta_k xi (1 - xi)) "
    "/ (s + (delta_k + delta_{k+1} - 2 s) xi (1 - xi)); bin k holds x_k <= x < x_{k+1} (the last "
    "bin also its right end); inverse by the root xi = 2c / (-b - sqrt(b^2 - 4ac)) of the "
    "quadratic in xi"
)


def _spline_entry(i: int, layer: Coupling, spline: RationalQuadraticSpline) -> dict[str, Any]:
    net = layer.conditioner.net
    assert isinstance(net, nn.Sequential)
    K = spline.bins
    return {
        "kind": "rqs_coupling",
        "active": layer.active.tolist(),
        "passive": layer.passive.tolist(),
        "bins": K,
        "bound": spline.bound,
        "min_bin_width": spline.params.min_bin_width,
        "min_bin_height": spline.params.min_bin_height,
        "min_derivative": spline.params.min_derivative,
        "conditioner": {
            "kind": "mlp",
            "activation": type(net[1]).__name__.lower() if len(net) > 1 else "none",
            "layers": _linear_stack(f"layers.{i}.conditioner.net", net),
            "input": "b = x_flat[:, passive] (passive sites in the listed order)",
            "output": f"(N, {spline.n_params} * n_active) read as (N, {spline.n_params}, "
            f"n_active): rows [0, K) width logits, [K, 2K) height logits, [2K, 3K - 1) raw "
            f"interior knot derivatives; K = {K}",
        },
        "transform": f"a' = f(a) on [-B, B] (B = bound), identity outside; x and y knots on "
        f"[-B, B] from the width and height logits; {_SPLINE_KNOTS}; boundary derivatives "
        f"delta_0 = delta_K = 1; {_SPLINE_MAP}; log|det| = sum log f'(a)",
    }


def _u1_spline_entry(
    i: int,
    layer: U1Coupling,
    transform: CircularPlaquetteTransform,
    cond: U1Conditioner,
    frozen: list[int],
) -> dict[str, Any]:
    spline = transform.spline
    K = spline.bins
    rot = ", [3K, 3K + 1) rotation rho" if spline.rotation else ""
    return {
        "kind": "u1_spline_coupling",
        "index": layer.index,
        "active": layer.active.tolist(),
        "passive": layer.passive.tolist(),
        "active_plaquette": cond.active_plaquette.tolist(),
        "frozen_plaquettes": frozen,
        "bins": K,
        "rotation": spline.rotation,
        "min_bin_width": spline.params.min_bin_width,
        "min_bin_height": spline.params.min_bin_height,
        "min_derivative": spline.params.min_derivative,
        "conditioner": {
            "kind": "conv2d",
            "activation": "tanh",
            "layers": _linear_stack(f"layers.{i}.conditioner.net", cond.net),
            "input": _U1_INPUT,
            "output": f"{spline.n_params} channels on (L, L), read at active_plaquette: channels "
            f"[0, K) width logits, [K, 2K) height logits, [2K, 3K) raw knot derivatives "
            f"delta_0 .. delta_(K-1){rot}; K = {K}, L = {cond.L}",
        },
        "transform": f"P = a + r with r the active plaquette at a = 0; a' = (g(P mod 2pi) + rho "
        f"- r) mod 2pi (rho = 0 without rotation); g on [0, 2pi] from the logits: "
        f"{_SPLINE_KNOTS}; delta_K = delta_0; {_SPLINE_MAP}; inverse: P = g^-1((a' + r - rho) "
        f"mod 2pi), a = (P - r) mod 2pi; log|det| = sum log g'(P mod 2pi)",
    }


def _tanh_sum_entry(i: int, layer: Coupling, transform: TanhSum) -> dict[str, Any]:
    net = layer.conditioner.net
    assert isinstance(net, nn.Sequential)
    K = transform.components
    reach = INITIAL_BOUND * 2.0**EXPANSIONS
    return {
        "kind": "tanh_sum_coupling",
        "active": layer.active.tolist(),
        "passive": layer.passive.tolist(),
        "components": K,
        "conditioner": {
            "kind": "mlp",
            "activation": type(net[1]).__name__.lower() if len(net) > 1 else "none",
            "layers": _linear_stack(f"layers.{i}.conditioner.net", net),
            "input": "b = x_flat[:, passive] (passive sites in the listed order)",
            "output": f"(N, {transform.n_params} * n_active) read as (N, {transform.n_params}, "
            f"n_active): row 0 log-slope s, rows [1, 1 + K) raw weights rho, [1 + K, 1 + 2K) "
            f"log-scales alpha, [1 + 2K, 1 + 3K) shifts beta; K = {K}",
        },
        "transform": "a' = f(a) = exp(s) a + sum_k w_k tanh(exp(alpha_k) (a - beta_k)), "
        "w_k = softplus(rho_k) = log(1 + exp(rho_k)); f'(a) = exp(s) + sum_k w_k exp(alpha_k) "
        "(1 - t_k^2), t_k = tanh(exp(alpha_k) (a - beta_k)); f''(a) = -2 sum_k w_k "
        "exp(2 alpha_k) t_k (1 - t_k^2); log|det| = sum log f'(a); increasing with range R "
        "(f' >= exp(s), |f(a) - exp(s) a| < sum_k w_k)",
        "inverse": f"no closed form: a = f^-1(a') by bisection of f(x) = a' (the library: "
        f"bracket [-{INITIAL_BOUND:g}, {INITIAL_BOUND:g}] doubled at each end while it does not "
        f"hold the root, {EXPANSIONS} times, reach +-{reach:g}; bisection to an absolute "
        f"width {default_tolerance(torch.float64):g}); derivatives by the implicit function "
        "theorem: da/da' = 1 / f'(a), da/dp = -(df/dp)(a) / f'(a), never through the "
        "iterations; inverse log|det| = -sum log f'(a), its gradient -(f''/f')(a) / f'(a)",
    }


def _coupling_entry(i: int, layer: Coupling) -> dict[str, Any]:
    active = layer.active.tolist()
    passive = layer.passive.tolist()
    if isinstance(layer, U1Coupling):
        cond = layer.conditioner
        assert isinstance(cond, U1Conditioner)
        L = cond.L
        # Read off the masks themselves, not recomputed from the cycle formula.
        mu, site = divmod(active[0], L * L)
        offset = divmod(site, L)[1 - mu]
        frozen = torch.nonzero(cond.frozen.reshape(-1) > 0).flatten().tolist()
        if isinstance(layer.transform, CircularPlaquetteTransform):
            return _u1_spline_entry(i, layer, layer.transform, cond, frozen)
        return {
            "kind": "u1_coupling",
            "index": layer.index,
            "mu": mu,
            "offset": offset,
            "active": active,
            "passive": passive,
            "active_plaquette": cond.active_plaquette.tolist(),
            "frozen_plaquettes": frozen,
            "n_mixture": layer.transform.mixture.n_mixture,
            "alpha_min": layer.transform.mixture.alpha_min,
            "conditioner": {
                "kind": "conv2d",
                "activation": "tanh",
                "layers": _linear_stack(f"layers.{i}.conditioner.net", cond.net),
                "input": _U1_INPUT,
                "output": f"3K channels on (L, L), read at active_plaquette: channels [0, K) "
                f"mixture logits, [K, 2K) raw slopes, [2K, 3K) shifts beta; L = {L}",
            },
            "transform": "P = a + r with r the active plaquette at a = 0; a' = (a + h(P) - P) "
            "mod 2pi; h(P) = P + sum_k w_k 2 atan2((alpha_k - 1) sin(P - beta_k), "
            "(1 + alpha_k) + (1 - alpha_k) cos(P - beta_k)); w = softmax(logits); "
            "alpha = alpha_min + (1 - alpha_min) exp(raw); log|det| = sum log h'(P)",
        }
    if isinstance(layer.transform, RationalQuadraticSpline):
        return _spline_entry(i, layer, layer.transform)
    if isinstance(layer.transform, TanhSum):
        return _tanh_sum_entry(i, layer, layer.transform)
    net = layer.conditioner.net
    assert isinstance(net, nn.Sequential)
    act = type(net[1]).__name__.lower() if len(net) > 1 else "none"
    if isinstance(layer, AffineCoupling):
        kind, n_params, names = "affine_coupling", 2, ["sigma", "mu"]
        transform = "a' = a * exp(sigma) + mu; log|det| = sum(sigma)"
    elif isinstance(layer, AdditiveCoupling):
        kind, n_params, names = "additive_coupling", 1, ["mu"]
        transform = "a' = a + mu; log|det| = 0"
    else:
        raise TypeError(f"no manifest entry for {type(layer).__name__}")
    return {
        "kind": kind,
        "active": active,
        "passive": passive,
        "conditioner": {
            "kind": "mlp",
            "activation": act,
            "layers": _linear_stack(f"layers.{i}.conditioner.net", net),
            "input": "b = x_flat[:, passive] (passive sites in the listed order)",
            "output": f"(N, {n_params} * n_active) read as (N, {n_params}, n_active): "
            f"parameter k = {names} of active site j is out[:, k * n_active + j]",
        },
        "transform": transform,
    }


_RK4 = (
    "classical RK4 on the state Y (a tuple, every component advanced together) with rate "
    "F(t, Y): h = (t_end - t_start) / steps; for n = 0, ..., steps - 1, t_n = t_start + n h: "
    "k1 = F(t_n, Y), k2 = F(t_n + h/2, Y + (h/2) k1), k3 = F(t_n + h/2, Y + (h/2) k2), "
    "k4 = F(t_n + h, Y + h k3), Y <- Y + (h/6) (k1 + 2 k2 + 2 k3 + k4)"
)


def _continuous_entry(i: int, layer: ContinuousLayer) -> dict[str, Any]:
    velocity = layer.velocity
    if not isinstance(velocity, VelocityMLP) or layer.solver != "rk4" or layer.adjoint:
        raise TypeError("a continuous case needs a VelocityMLP solved by the fixed-step 'rk4'")
    net = velocity.net.net
    assert isinstance(net, nn.Sequential)
    return {
        "kind": "continuous",
        "t0": layer.t0,
        "t1": layer.t1,
        "steps": layer.steps,
        "solver": "rk4",
        "inverse_is_exact": layer.inverse_is_exact,
        "velocity": {
            "kind": "mlp",
            "activation": type(net[1]).__name__.lower() if len(net) > 1 else "none",
            "layers": _linear_stack(f"layers.{i}.velocity.net.net", net),
            "input": "[x_flat, t]: the flat sample (d features, row-major) followed by the time "
            "t as the last feature (d + 1 features)",
            "output": "(N, d): v(x, t) = dx/dt, in the flat order of x",
        },
        "rk4": _RK4,
        "transform": "y = x(t1) for dx/dt = v(x, t), x(t0) = x: the RK4 of the state (x, l) "
        "from t_start = t0 to t_end = t1 with rate (v(x, t), div v(x, t)), l(t0) = 0; "
        "div v = tr dv/dx, the exact trace of the d x d Jacobian; log|det| = l(t1). This "
        "discrete map is the flow (its Jacobian determinant is exp(l) only to O(h^4))",
        "inverse": "the same RK4 of (x, l) from t_start = t1 to t_end = t0 (h < 0): x(t0) and "
        "log|det dx/dy| = l(t0); it inverts the discrete forward map only to O(h^4) "
        "(inverse_is_exact false). The forward-KL oracles (*-naive) take this point and refine "
        "it by 4 Newton steps z <- z - J(z)^-1 (T(z) - x) on the discrete forward map T with "
        "its dense Jacobian J, then work at that root",
        "score": "score steps (forward/inverse score, the *-fast estimators): the RK4 of "
        "(x, l, s) over the same interval (t0 to t1 for the forward pass from s = grad log q0(z); "
        "t1 to t0 for the inverse pass from s = -grad S(x)) with rate (v, div v, -J^T s - "
        "grad_x div v), J = dv/dx at (x, t); the rates of l and s are evaluated with the "
        "parameters and the state held fixed, so the parameter derivative of the output (the "
        "point of the path gradient) runs through the x stages alone",
    }


def _layer_entry(i: int, layer: nn.Module) -> dict[str, Any]:
    if isinstance(layer, ContinuousLayer):
        return _continuous_entry(i, layer)
    if isinstance(layer, Coupling):
        return _coupling_entry(i, layer)
    if isinstance(layer, GlobalScaling):
        return {
            "kind": "global_scaling",
            "parameter": f"layers.{i}.log_scale",
            "transform": "x' = x * exp(gamma); log|det| = d * gamma",
        }
    raise TypeError(f"no manifest entry for {type(layer).__name__}")


def _target_entry(target: Target) -> dict[str, Any]:
    if isinstance(target, GaussianMixture):
        return {"kind": "gmm", "dim": target.dim, "sigma2": target.sigma2, "log_z": 0.0}
    if isinstance(target, Phi4):
        return {
            "kind": "phi4",
            "shape": list(target.event_shape),
            "kappa": target.kappa,
            "lambda": target.lam,
            "log_z": None,
        }
    if isinstance(target, U1Gauge):
        return {"kind": "u1_wilson", "L": target.L, "beta": target.beta, "log_z": None}
    raise TypeError(f"no manifest entry for {type(target).__name__}")


def manifest(case: Case, flow: Flow, target: Target) -> dict[str, Any]:
    """The framework-neutral description of a case (written as ``manifest.json``)."""
    base = flow.base
    base_entry: dict[str, Any]
    if type(base).__name__ == "Uniform":
        base_entry = {"kind": "uniform", "low": 0.0, "high": 2 * math.pi}
    else:
        base_entry = {"kind": "standard_normal"}
    layouts = {
        n: {
            "shape": list(p.shape),
            "layout": (
                "(out, in): y = x @ W.T + b"
                if n.endswith("weight") and p.dim() == 2
                else "(out_channels, in_channels, kh, kw): cross-correlation, circular padding"
                if n.endswith("weight") and p.dim() == 4
                else "scalar"
                if p.dim() == 0
                else "(out,)"
            ),
        }
        for n, p in flow.named_parameters()
    }
    return {
        "case": case.name,
        "description": case.description,
        "dtype": "float64",
        "event_shape": list(flow.event_shape),
        "flattening": "sites are indexed by the row-major (C order) flat index of event_shape",
        "n_samples": N_SAMPLES,
        "base": base_entry,
        "target": _target_entry(target),
        "layers": [_layer_entry(i, layer) for i, layer in enumerate(flow.layers)],
        "parameters": layouts,
        "estimators": {name: direction(name) for name in ESTIMATORS},
        "conventions": {
            "log_det": "forward/log_det/i = log|det dT_i/dx_i|; inverse/log_det/i = "
            "log|det dT_i^{-1}/dy| (= -forward log_det at the same point)",
            "log_q": "log q(x) = log q0(z) - sum_i forward log_det_i = log q0(z) + sum_i "
            "inverse log_det_i",
            "log_w": "log w = -S(x) - log q(x)",
            "loss": "reverse: -mean(log w) + log Z; forward: mean(log w) - log Z; log Z = 0 "
            "where the target's log_z is null",
            "score_start": "forward: s = grad log q0(z) (-z for the normal base, 0 for the "
            "uniform base); inverse: s = -grad S(x)",
            "gradients": "grad/<estimator>/<parameter>: d loss / d parameter, same layout as "
            "the parameter",
        },
        "tolerances": {
            "library": {"atol_relative_to_max_abs": LIBRARY_TOL},
            "port_float64": PORT_TOL[case.name],
        },
    }


# --- arrays -----------------------------------------------------------------------------------


def _np(t: Tensor) -> npt.NDArray[np.float64]:
    return np.asarray(t.detach().cpu().to(torch.float64).numpy(), dtype=np.float64)


def _ode_steps(
    layer: ContinuousLayer, x: Tensor, score: Tensor, inverse: bool
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """``(x, log_det, score)`` after each of the layer's RK4 steps, ``steps`` entries of shapes
    ``(N, d)``, ``(N,)``, ``(N, d)``, the log-det accumulated from 0.

    Each step is a one-step layer on ``[t_n, t_n + h]`` sharing the velocity, so the library's
    own score step computes it; with a power-of-two step count its times and its ``h`` are
    exactly the full solve's (``tests/test_conformance.py`` checks that the last entry is the
    layer's output)."""
    start, end = (layer.t1, layer.t0) if inverse else (layer.t0, layer.t1)
    h = (end - start) / layer.steps
    out = []
    log_det = x.new_zeros(x.shape[0])
    for n in range(layer.steps):
        a, b = start + n * h, start + (n + 1) * h
        # A one-step layer solves from its t0 to its t1 forward and from t1 to t0 inverse.
        step = ContinuousLayer(layer.velocity, 1, t0=b if inverse else a, t1=a if inverse else b)
        leaf = x.detach().requires_grad_(True)
        if inverse:
            x, ld, score = step.inverse_and_score(leaf, score)
        else:
            x, ld, score = step.forward_and_score(leaf, score)
        log_det = log_det + ld
        out.append((x, log_det, score))
    return out


def _record_ode(
    arrays: Arrays, key: str, i: int, layer: ContinuousLayer, x: Tensor, score: Tensor
) -> None:
    """``<key>/ode/{x,log_det,score}/<i>/<k>``, ``k = 1, …, steps``, for the pass ``key``."""
    for k, (xk, ldk, sk) in enumerate(_ode_steps(layer, x, score, key == "inverse"), start=1):
        arrays[f"{key}/ode/x/{i}/{k}"] = _np(xk)
        arrays[f"{key}/ode/log_det/{i}/{k}"] = _np(ldk)
        arrays[f"{key}/ode/score/{i}/{k}"] = _np(sk)


def compute(case: Case) -> tuple[dict[str, Any], Arrays]:
    """The manifest and all arrays of ``case``, from the library as it is now."""
    flow, target = case.build()
    gen = torch.Generator().manual_seed(2)
    z = flow.base.sample(N_SAMPLES, gen)
    x = case.target_points(flow, target, gen, N_SAMPLES).to(torch.float64)
    arrays: Arrays = {f"param/{n}": _np(p) for n, p in flow.named_parameters()}
    arrays["z"], arrays["x"] = _np(z), _np(x)

    layers = list(flow.layers)
    h = z.detach().clone().requires_grad_(True)
    score = flow.base.score(z)
    for i, layer in enumerate(layers):
        assert isinstance(layer, Coupling | GlobalScaling | ContinuousLayer)
        if isinstance(layer, ContinuousLayer):
            _record_ode(arrays, "forward", i, layer, h, score)
        h, log_det, score = layer.forward_and_score(h, score)
        arrays[f"forward/x/{i}"] = _np(h)
        arrays[f"forward/log_det/{i}"] = _np(log_det)
        arrays[f"forward/score/{i}"] = _np(score)
    x_fwd, log_q_fwd = flow(z)
    arrays["forward/log_q"] = _np(log_q_fwd)
    arrays["forward/action"] = _np(target.action(x_fwd.detach()))
    arrays["forward/force"] = _np(target.force(x_fwd.detach()))

    h = x.detach().clone().requires_grad_(True)
    score = -target.force(x)
    for i in reversed(range(len(layers))):
        layer = layers[i]
        assert isinstance(layer, Coupling | GlobalScaling | ContinuousLayer)
        if isinstance(layer, ContinuousLayer):
            _record_ode(arrays, "inverse", i, layer, h, score)
        h, log_det, score = layer.inverse_and_score(h, score)
        arrays[f"inverse/x/{i}"] = _np(h)
        arrays[f"inverse/log_det/{i}"] = _np(log_det)
        arrays[f"inverse/score/{i}"] = _np(score)
    arrays["inverse/log_q"] = _np(flow.log_prob(x))
    arrays["inverse/action"] = _np(target.action(x))
    arrays["inverse/force"] = _np(target.force(x))

    for name in ESTIMATORS:
        batch = z if direction(name) == "reverse" else x
        loss, log_w = get_estimator(name)(flow, target, batch)
        arrays[f"loss/{name}"] = _np(loss)
        # log w of the flow's own log q (its layers' log-dets, as forward/log_q and
        # inverse/log_q), from the first estimator of each direction, the standard one. The
        # oracles' log q is a dense slogdet: equal to rounding for the explicit and root-found
        # layers, but O(h^4) away from an ODE layer's RK4 log-det.
        arrays.setdefault(f"log_w/{direction(name)}", _np(log_w))
        for pname, g in gradient(name, flow, target, batch).items():
            arrays[f"grad/{name}/{pname}"] = _np(g)
    return manifest(case, flow, target), arrays


def write(directory: Path = DEFAULT_DIR, names: Sequence[str] | None = None) -> None:
    """Regenerate every case (or those in ``names``) under ``directory``."""
    for case in CASES.values() if names is None else [CASES[n] for n in names]:
        meta, arrays = compute(case)
        out = directory / case.name
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").write_text(json.dumps(meta, indent=1) + "\n")
        np.savez_compressed(out / "arrays.npz", **arrays)  # type: ignore[arg-type]
        print(f"wrote {out} ({len(arrays)} arrays)")


def load(directory: Path, name: str) -> tuple[dict[str, Any], Arrays]:
    """``(manifest, arrays)`` of the committed case ``name``."""
    meta: dict[str, Any] = json.loads((directory / name / "manifest.json").read_text())
    with np.load(directory / name / "arrays.npz") as f:
        arrays = {k: np.asarray(f[k], dtype=np.float64) for k in f.files}
    return meta, arrays


def compare(expected: Arrays, actual: Arrays) -> dict[str, float]:
    """Per key ``max|actual − expected| / max(1, max|expected|)``; ``inf`` for a key or shape
    that does not match."""
    errors: dict[str, float] = {}
    for key in sorted(expected.keys() | actual.keys()):
        if key not in expected or key not in actual:
            errors[key] = math.inf
            continue
        a, b = actual[key], expected[key]
        if a.shape != b.shape:
            errors[key] = math.inf
            continue
        if a.size == 0:
            errors[key] = 0.0
            continue
        errors[key] = float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))
    return errors


def check(
    directory: Path = DEFAULT_DIR, tol: float = LIBRARY_TOL, names: Sequence[str] | None = None
) -> dict[str, float]:
    """The largest difference per case (all, or those in ``names``) between the library now and
    the committed vectors; raises ``AssertionError`` naming the worst keys where it exceeds
    ``tol`` or where the manifest changed."""
    worst: dict[str, float] = {}
    failures: list[str] = []
    for name in CASES if names is None else names:
        case = CASES[name]
        meta, arrays = compute(case)
        committed_meta, committed = load(directory, case.name)
        if json.loads(json.dumps(meta)) != committed_meta:
            failures.append(f"{case.name}: manifest.json differs from the library's description")
        errors = compare(committed, arrays)
        worst[case.name] = max(errors.values())
        bad = sorted((e, k) for k, e in errors.items() if not e <= tol)
        if bad:
            listed = ", ".join(f"{k} ({e:.1e})" for e, k in bad[-5:])
            failures.append(f"{case.name}: {len(bad)} arrays beyond {tol:.0e}, worst: {listed}")
    if failures:
        raise AssertionError(
            "the library no longer reproduces the conformance vectors; if a definition was "
            "changed deliberately, regenerate them with `python -m pathgrad_ref.conformance "
            "--write`:\n" + "\n".join(failures)
        )
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pathgrad_ref.conformance", description=__doc__.split("\n\n")[0]
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="compare the library to the vectors")
    mode.add_argument("--write", action="store_true", help="regenerate the vectors")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="vector directory")
    parser.add_argument(
        "--case",
        action="append",
        choices=sorted(CASES),
        help="only this case (repeatable); default: all. --write --case NEW adds a case "
        "without rewriting the others (the compressed archives carry timestamps)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.write:
        write(args.dir, args.case)
        return 0
    try:
        worst = check(args.dir, names=args.case)
    except AssertionError as err:
        print(err, file=sys.stderr)
        return 1
    for name, largest in worst.items():
        print(f"{name}: largest difference {largest:.1e} (tolerance {LIBRARY_TOL:.0e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
