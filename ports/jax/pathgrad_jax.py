"""A minimal JAX port of the path gradient estimators, written from ``docs/theory.md``.

Covers: affine (RealNVP) and additive (NICE) couplings with MLP conditioners, rational-quadratic
spline couplings (the neural spline flow, section 4.4), the global scaling layer, the
gauge-equivariant U(1) coupling (tan mixtures, conv conditioner, bisection inverse with
implicit-function-theorem derivatives; or circular splines with their closed-form inverse), a
root-found monotone coupling (a linear map plus positive tanh steps, bisection inverse with
bracket expansion and implicit-function-theorem derivatives), a continuous flow (``dx/dt =
v(x, t)`` by fixed-step RK4 with the exact divergence and the score ODE), the standard normal
and uniform bases, the Gaussian-mixture, φ⁴ and U(1) Wilson actions, the standard and
fast-path (Algorithm 1) estimators of both KL directions, the drop-in estimators (Algorithms 2
and 3) and a naive ``jax.grad`` / dense-Jacobian oracle of each direction. The architecture is
read from a conformance manifest (``conformance/<case>/manifest.json``); parameters are a flat
``dict`` from the manifest's names to arrays in the manifest's layouts.

Everything acts on one flattened sample ``(d,)`` (row-major over the event shape) and is
``jax.vmap``-ed over the batch. Equation numbers refer to ``docs/theory.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

Array = jax.Array
Params = dict[str, Array]
sg = jax.lax.stop_gradient


# --- architecture from a manifest --------------------------------------------------------------


@dataclass(frozen=True)
class Coupling:
    """``a' = f(a; c(b))`` on the active sites (4.1); ``kind`` is "affine" or "additive"."""

    kind: str
    active: np.ndarray
    passive: np.ndarray
    weights: tuple[str, ...]
    biases: tuple[str | None, ...]

    @property
    def n_params(self) -> int:
        return 2 if self.kind == "affine" else 1


@dataclass(frozen=True)
class Scaling:
    """``x' = x·exp(γ)`` (4.2)."""

    parameter: str
    dim: int


@dataclass(frozen=True)
class U1Coupling:
    """Gauge-equivariant coupling in link space (4.7, 4.8): ``a' = a + h(P) − P mod 2π``."""

    L: int
    active: np.ndarray
    passive: np.ndarray
    active_plaquette: np.ndarray
    frozen: np.ndarray  # (L, L) float mask of the frozen plaquettes
    n_mixture: int
    alpha_min: float
    weights: tuple[str, ...]
    biases: tuple[str | None, ...]


@dataclass(frozen=True)
class SplineCoupling:
    """Rational-quadratic spline coupling (4.11-4.14) on ``[-B, B]``, identity tails; the MLP
    conditioner's output is read as ``(3K - 1, n_a)``."""

    active: np.ndarray
    passive: np.ndarray
    weights: tuple[str, ...]
    biases: tuple[str | None, ...]
    bins: int
    bound: float
    min_bin_width: float
    min_bin_height: float
    min_derivative: float

    @property
    def n_params(self) -> int:
        return 3 * self.bins - 1


@dataclass(frozen=True)
class U1SplineCoupling:
    """The U(1) coupling with a circular spline ``h`` (4.15): ``a' = (h(a + r) − r) mod 2π``."""

    L: int
    active: np.ndarray
    passive: np.ndarray
    active_plaquette: np.ndarray
    frozen: np.ndarray
    weights: tuple[str, ...]
    biases: tuple[str | None, ...]
    bins: int
    rotation: bool
    min_bin_width: float
    min_bin_height: float
    min_derivative: float


@dataclass(frozen=True)
class TanhSumCoupling:
    """A coupling with the root-found map ``f(a) = e^s a + Σ_k w_k tanh(e^{α_k}(a − β_k))``,
    ``w = softplus(ρ)`` (``K`` steps); the MLP conditioner's output is read as
    ``(1 + 3K, n_a)``: ``s``, ``ρ``, ``α``, ``β``. The inverse is a bisection."""

    active: np.ndarray
    passive: np.ndarray
    weights: tuple[str, ...]
    biases: tuple[str | None, ...]
    components: int

    @property
    def n_params(self) -> int:
        return 1 + 3 * self.components


@dataclass(frozen=True)
class Continuous:
    """``y = x(t1)`` for ``dx/dt = v(x, t)``, ``x(t0) = x``, by ``steps`` classical RK4 steps;
    ``v(x, t) = MLP([x, t])`` (tanh), the time the MLP's last input feature."""

    weights: tuple[str, ...]
    biases: tuple[str | None, ...]
    t0: float
    t1: float
    steps: int


Layer = (
    Coupling
    | Scaling
    | U1Coupling
    | SplineCoupling
    | U1SplineCoupling
    | TanhSumCoupling
    | Continuous
)


@dataclass(frozen=True)
class Model:
    event_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    target: dict[str, Any]
    base: str

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    @property
    def inverse_is_exact(self) -> bool:
        """``False`` where a layer's inverse only approximates its forward map (an ODE solved
        backwards by RK4 inverts the exact flow, not the discrete forward map)."""
        return not any(isinstance(layer, Continuous) for layer in self.layers)


class UnsupportedError(ValueError):
    """The manifest describes a layer, base or target this port does not implement."""


def _mlp_coupling_fields(entry: dict[str, Any]) -> dict[str, Any]:
    """The masks and the tanh-MLP conditioner's arrays of a coupling entry of the manifest."""
    cond = entry["conditioner"]
    if cond["kind"] != "mlp" or cond["activation"] != "tanh":
        raise UnsupportedError(f"conditioner {cond['kind']}/{cond['activation']}")
    return {
        "active": np.asarray(entry["active"], dtype=np.int64),
        "passive": np.asarray(entry["passive"], dtype=np.int64),
        "weights": tuple(lin["weight"] for lin in cond["layers"]),
        "biases": tuple(lin["bias"] for lin in cond["layers"]),
    }


def model_from_manifest(meta: dict[str, Any]) -> Model:
    if meta["base"]["kind"] not in ("standard_normal", "uniform"):
        raise UnsupportedError(f"base {meta['base']['kind']!r} is not implemented in the JAX port")
    shape = tuple(int(s) for s in meta["event_shape"])
    layers: list[Layer] = []
    for entry in meta["layers"]:
        kind = entry["kind"]
        if kind in ("affine_coupling", "additive_coupling"):
            layers.append(
                Coupling(
                    kind="affine" if kind == "affine_coupling" else "additive",
                    **_mlp_coupling_fields(entry),
                )
            )
        elif kind == "rqs_coupling":
            layers.append(
                SplineCoupling(
                    **_mlp_coupling_fields(entry),
                    bins=int(entry["bins"]),
                    bound=float(entry["bound"]),
                    min_bin_width=float(entry["min_bin_width"]),
                    min_bin_height=float(entry["min_bin_height"]),
                    min_derivative=float(entry["min_derivative"]),
                )
            )
        elif kind == "tanh_sum_coupling":
            layers.append(
                TanhSumCoupling(
                    **_mlp_coupling_fields(entry),
                    components=int(entry["components"]),
                )
            )
        elif kind == "u1_spline_coupling":
            cond = entry["conditioner"]
            if cond["kind"] != "conv2d" or cond["activation"] != "tanh":
                raise UnsupportedError(f"conditioner {cond['kind']}/{cond['activation']}")
            L = int(shape[-1])
            frozen = np.zeros(L * L)
            frozen[np.asarray(entry["frozen_plaquettes"], dtype=np.int64)] = 1.0
            layers.append(
                U1SplineCoupling(
                    L=L,
                    active=np.asarray(entry["active"], dtype=np.int64),
                    passive=np.asarray(entry["passive"], dtype=np.int64),
                    active_plaquette=np.asarray(entry["active_plaquette"], dtype=np.int64),
                    frozen=frozen.reshape(L, L),
                    weights=tuple(c["weight"] for c in cond["layers"]),
                    biases=tuple(c["bias"] for c in cond["layers"]),
                    bins=int(entry["bins"]),
                    rotation=bool(entry["rotation"]),
                    min_bin_width=float(entry["min_bin_width"]),
                    min_bin_height=float(entry["min_bin_height"]),
                    min_derivative=float(entry["min_derivative"]),
                )
            )
        elif kind == "continuous":
            net = entry["velocity"]
            if entry["solver"] != "rk4" or net["kind"] != "mlp" or net["activation"] != "tanh":
                raise UnsupportedError(
                    f"continuous layer with solver {entry['solver']!r} and velocity "
                    f"{net['kind']}/{net['activation']}"
                )
            layers.append(
                Continuous(
                    weights=tuple(lin["weight"] for lin in net["layers"]),
                    biases=tuple(lin["bias"] for lin in net["layers"]),
                    t0=float(entry["t0"]),
                    t1=float(entry["t1"]),
                    steps=int(entry["steps"]),
                )
            )
        elif kind == "global_scaling":
            layers.append(Scaling(entry["parameter"], math.prod(shape)))
        elif kind == "u1_coupling":
            cond = entry["conditioner"]
            if cond["kind"] != "conv2d" or cond["activation"] != "tanh":
                raise UnsupportedError(f"conditioner {cond['kind']}/{cond['activation']}")
            L = int(shape[-1])
            frozen = np.zeros(L * L)
            frozen[np.asarray(entry["frozen_plaquettes"], dtype=np.int64)] = 1.0
            layers.append(
                U1Coupling(
                    L=L,
                    active=np.asarray(entry["active"], dtype=np.int64),
                    passive=np.asarray(entry["passive"], dtype=np.int64),
                    active_plaquette=np.asarray(entry["active_plaquette"], dtype=np.int64),
                    frozen=frozen.reshape(L, L),
                    n_mixture=int(entry["n_mixture"]),
                    alpha_min=float(entry["alpha_min"]),
                    weights=tuple(c["weight"] for c in cond["layers"]),
                    biases=tuple(c["bias"] for c in cond["layers"]),
                )
            )
        else:
            raise UnsupportedError(f"layer {kind!r} is not implemented in the JAX port")
    if meta["target"]["kind"] not in ("gmm", "phi4", "u1_wilson"):
        raise UnsupportedError(f"target {meta['target']['kind']!r} is not implemented")
    return Model(shape, tuple(layers), meta["target"], meta["base"]["kind"])


# --- base, targets -----------------------------------------------------------------------------


def log_q0(model: Model, z: Array) -> Array:
    """Standard normal ``−|z|²/2 − (d/2) log 2π``, or uniform on ``[0, 2π)^d``: ``−d log 2π``
    (written with ``z`` so that it stays a function of ``z``)."""
    if model.base == "uniform":
        return 0.0 * jnp.sum(z) - z.shape[0] * math.log(2 * math.pi)
    return -0.5 * jnp.sum(z * z) - 0.5 * z.shape[0] * math.log(2 * math.pi)


def score_q0(model: Model, z: Array) -> Array:
    return jnp.zeros_like(z) if model.base == "uniform" else -z


def plaquette(links: Array) -> Array:
    """(4.6) on ``(2, L, L)`` links: ``θ_0(x) + θ_1(x+0̂) − θ_0(x+1̂) − θ_1(x)``, unwrapped."""
    t0, t1 = links[0], links[1]
    return t0 + jnp.roll(t1, -1, axis=0) - jnp.roll(t0, -1, axis=1) - t1


def action(model: Model, x: Array) -> Array:
    """``S(x)`` for one flat sample: (7.1) or (7.2)."""
    t = model.target
    if t["kind"] == "u1_wilson":
        return -t["beta"] * jnp.sum(jnp.cos(plaquette(x.reshape(model.event_shape))))
    if t["kind"] == "gmm":
        s2 = t["sigma2"]
        u = jnp.abs(x / s2)
        log_cosh = u + jnp.log1p(jnp.exp(-2 * u)) - math.log(2.0)
        per_site = (x * x + 1) / (2 * s2) - log_cosh
        return jnp.sum(per_site) + 0.5 * x.shape[0] * math.log(2 * math.pi * s2)
    phi = x.reshape(model.event_shape)
    kappa, lam = t["kappa"], t["lambda"]
    hop = sum(jnp.roll(phi, -1, axis=ax) for ax in range(phi.ndim))
    density = -2 * kappa * phi * hop + (1 - 2 * lam) * phi**2 + lam * phi**4
    return jnp.sum(density)


def force(model: Model, x: Array) -> Array:
    """``∇S`` in closed form, (7.1) and (7.2)."""
    t = model.target
    if t["kind"] == "u1_wilson":
        sin_p = jnp.sin(plaquette(x.reshape(model.event_shape)))
        f0 = sin_p - jnp.roll(sin_p, 1, axis=1)
        f1 = jnp.roll(sin_p, 1, axis=0) - sin_p
        return t["beta"] * jnp.stack([f0, f1]).reshape(-1)
    if t["kind"] == "gmm":
        s2 = t["sigma2"]
        return (x - jnp.tanh(x / s2)) / s2
    phi = x.reshape(model.event_shape)
    kappa, lam = t["kappa"], t["lambda"]
    nb = sum(jnp.roll(phi, s, axis=ax) for ax in range(phi.ndim) for s in (-1, 1))
    f = -2 * kappa * nb + 2 * (1 - 2 * lam) * phi + 4 * lam * phi**3
    return f.reshape(-1)


def log_z(model: Model) -> float:
    value = model.target.get("log_z")
    return 0.0 if value is None else float(value)


# --- layers ------------------------------------------------------------------------------------


def mlp(
    params: Params, weights: tuple[str, ...], biases: tuple[str | None, ...], h: Array
) -> Array:
    """Linear maps ``y = W h + c`` (``W`` of shape ``(out, in)``) with tanh between them."""
    last = len(weights) - 1
    for i, (w, c) in enumerate(zip(weights, biases, strict=True)):
        h = params[w] @ h
        if c is not None:
            h = h + params[c]
        if i < last:
            h = jnp.tanh(h)
    return h


def conditioner(
    params: Params, layer: Coupling | SplineCoupling | TanhSumCoupling, b: Array
) -> Array:
    """The tanh MLP of ``b``, output read as ``(n_params, n_a)``."""
    return mlp(params, layer.weights, layer.biases, b).reshape(layer.n_params, layer.active.size)


def _affine_or_additive(
    layer: Coupling, a: Array, p: Array, inverse: bool
) -> tuple[Array, Array, Array]:
    """Affine ``a e^σ + μ`` and additive ``a + μ`` (4.3, 4.4) and their inverses."""
    if layer.kind == "affine":
        sigma, mu = p[0], p[1]
        if inverse:
            return (a - mu) * jnp.exp(-sigma), -sigma, jnp.zeros_like(a)
        return a * jnp.exp(sigma) + mu, sigma, jnp.zeros_like(a)
    mu = p[0]
    return (a - mu if inverse else a + mu), jnp.zeros_like(a), jnp.zeros_like(a)


# --- U(1): tan mixtures (4.9, 4.10), bisection with implicit gradients (6.1), conv conditioner --

TWO_PI = 2 * math.pi


def _mixture(q: Array, alpha_min: float) -> tuple[Array, Array, Array]:
    """``(w, α, β)`` from ``q`` of shape ``(3K, n)``: softmax logits, raw slopes, shifts."""
    K = q.shape[0] // 3
    w = jax.nn.softmax(q[:K], axis=0)
    alpha = alpha_min + (1 - alpha_min) * jnp.exp(q[K : 2 * K])
    return w, alpha, q[2 * K :]


def tan_h(x: Array, q: Array, alpha_min: float) -> Array:
    """(4.9): ``h(x) = x + Σ_k w_k 2 atan2((α−1) sin φ, (1+α) + (1−α) cos φ)``, ``φ = x − β``."""
    w, alpha, beta = _mixture(q, alpha_min)
    phi = x - beta
    d = 2 * jnp.arctan2((alpha - 1) * jnp.sin(phi), (1 + alpha) + (1 - alpha) * jnp.cos(phi))
    return x + jnp.sum(w * d, axis=0)


def tan_derivatives(x: Array, q: Array, alpha_min: float) -> tuple[Array, Array]:
    """(4.10): ``(h', h'')``."""
    w, alpha, beta = _mixture(q, alpha_min)
    phi = x - beta
    den = (1 + alpha**2) + (1 - alpha**2) * jnp.cos(phi)
    d1 = jnp.sum(w * 2 * alpha / den, axis=0)
    d2 = jnp.sum(w * 2 * alpha * (1 - alpha**2) * jnp.sin(phi) / den**2, axis=0)
    return d1, d2


# Compiled once per shape: run op by op, the loop would be traced and compiled at every call.
@partial(jax.jit, static_argnums=(2,))
def _bisect(y: Array, q: Array, alpha_min: float) -> Array:
    """The root of ``h(x) = y`` in ``[y − π, y + π]`` (``|h(x) − x| < π``), 80 halvings: the
    bracket (2π wide) shrinks below the float64 spacing of the answer."""

    def step(_: int, bounds: tuple[Array, Array]) -> tuple[Array, Array]:
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        above = tan_h(mid, q, alpha_min) >= y
        return jnp.where(above, lo, mid), jnp.where(above, mid, hi)

    lo, hi = jax.lax.fori_loop(0, 80, step, (y - math.pi, y + math.pi))
    return 0.5 * (lo + hi)


def implicit_inverse(
    bisect: Callable[[Array, Array, Any], Array],
    h: Callable[[Array, Array, Any], Array],
    h_prime: Callable[[Array, Array, Any], Array],
) -> Callable[[Array, Array, Any], Array]:
    """``x = h^{-1}(y; p)`` element-wise from a bisection ``bisect(y, p, static)``, with the
    derivatives of the implicit function theorem (6.1): ``dx = (dy − (∂h/∂p)·dp) / h'(x)``,
    written with ``x``, itself differentiable by this rule, so that higher derivatives are those
    of the true inverse. The port's one implicit solver, as the library's."""

    @partial(jax.custom_jvp, nondiff_argnums=(2,))
    def inverse(y: Array, p: Array, static: Any) -> Array:
        return bisect(sg(y), sg(p), static)

    @inverse.defjvp
    def _jvp(
        static: Any, primals: tuple[Array, Array], tangents: tuple[Array, Array]
    ) -> tuple[Array, Array]:
        y, p = primals
        dy, dp = tangents
        x = inverse(y, p, static)
        _, dh_p = jax.jvp(lambda pp: h(x, pp, static), (p,), (dp,))
        return x, (dy - dh_p) / h_prime(x, p, static)

    return inverse


tan_h_inverse = implicit_inverse(
    _bisect, tan_h, lambda x, q, alpha_min: tan_derivatives(x, q, alpha_min)[0]
)
"""``x = h^{-1}(y)`` of the tan mixture, by bisection, with implicit derivatives."""


def _conv_circular(h: Array, weight: Array, bias: Array | None) -> Array:
    """Cross-correlation of ``(C_in, L, L)`` with ``(C_out, C_in, k, k)``, circular padding."""
    pad = weight.shape[-1] // 2
    hp = jnp.pad(h, ((0, 0), (pad, pad), (pad, pad)), mode="wrap")
    out = jax.lax.conv_general_dilated(
        hp[None], weight, (1, 1), "VALID", dimension_numbers=("NCHW", "OIHW", "NCHW")
    )[0]
    return out if bias is None else out + bias[:, None, None]


def u1_conditioner(params: Params, layer: U1Coupling | U1SplineCoupling, b: Array) -> Array:
    """``(1 + 3K, n_a)``: row 0 ``r`` (the active plaquettes with the active links at 0), then
    the conv net's ``3K`` channels at the active plaquettes, from ``(cos P, sin P)`` of the
    frozen plaquettes (section 4.3)."""
    L = layer.L
    links = jnp.zeros(2 * L * L, b.dtype).at[layer.passive].set(b).reshape(2, L, L)
    plaq = plaquette(links)
    r = plaq.reshape(-1)[layer.active_plaquette]
    h = jnp.stack([jnp.cos(plaq), jnp.sin(plaq)]) * layer.frozen
    last = len(layer.weights) - 1
    for i, (w, c) in enumerate(zip(layer.weights, layer.biases, strict=True)):
        h = _conv_circular(h, params[w], None if c is None else params[c])
        if i < last:
            h = jnp.tanh(h)
    q = h.reshape(h.shape[0], -1)[:, layer.active_plaquette]
    return jnp.concatenate([r[None], q], axis=0)


def _u1_map(layer: U1Coupling, a: Array, p: Array, inverse: bool) -> tuple[Array, Array, Array]:
    """(4.8) and its inverse: ``(f(a), log f', f''/f')`` with ``P = a + r``."""
    r, q = p[0], p[1:]
    if inverse:
        plaq = tan_h_inverse(a + r, q, layer.alpha_min)
        d1, d2 = tan_derivatives(plaq, q, layer.alpha_min)
        return jnp.mod(plaq - r, TWO_PI), -jnp.log(d1), -d2 / d1**2
    plaq = a + r
    d1, d2 = tan_derivatives(plaq, q, layer.alpha_min)
    out = jnp.mod(a + tan_h(plaq, q, layer.alpha_min) - plaq, TWO_PI)
    return out, jnp.log(d1), d2 / d1


# --- rational-quadratic splines (4.11-4.15) ------------------------------------------------------


def _spline_knots(raw: Array, low: float, high: float, min_size: float) -> Array:
    """``(n, K+1)`` knots from ``(n, K)`` raw sizes: ``m + (1 − K m) softmax`` of the range,
    end knots exactly ``low`` and ``high``."""
    K = raw.shape[-1]
    sizes = min_size + (1 - min_size * K) * jax.nn.softmax(raw, axis=-1)
    inner = low + (high - low) * jnp.cumsum(sizes, axis=-1)[:, :-1]
    n = raw.shape[0]
    return jnp.concatenate([jnp.full((n, 1), low), inner, jnp.full((n, 1), high)], axis=-1)


def _knot_derivative(raw: Array, min_derivative: float) -> Array:
    """``δ = δ_min + softplus(raw + log(e^{1 − δ_min} − 1))``: raw 0 gives 1."""
    return min_derivative + jax.nn.softplus(raw + math.log(math.expm1(1 - min_derivative)))


def rq_spline(
    x: Array, xk: Array, yk: Array, dk: Array, inverse: bool
) -> tuple[Array, Array, Array]:
    """(4.11)-(4.14) element-wise for ``x (n,)`` and knots ``(n, K+1)``: ``(out, log-derivative,
    its x-derivative)``; identity outside the knot range of the input side."""
    lo_in = (yk if inverse else xk)[:, 0]
    hi_in = (yk if inverse else xk)[:, -1]
    inside = (x >= lo_in) & (x <= hi_in)
    safe = jnp.where(inside, x, lo_in)  # finite values in the discarded branch
    knots_in = yk if inverse else xk
    k = jnp.sum(safe[:, None] >= knots_in[:, 1:-1], axis=-1)  # bin index, 0 .. K-1

    def at(t: Array, j: Array) -> Array:
        return jnp.take_along_axis(t, j[:, None], axis=-1)[:, 0]

    x0, y0, d0 = at(xk, k), at(yk, k), at(dk, k)
    w, h, d1 = at(xk, k + 1) - x0, at(yk, k + 1) - y0, at(dk, k + 1)
    s = h / w
    c_d = d0 + d1 - 2 * s
    if inverse:
        dy = safe - y0
        qa = h * (s - d0) + dy * c_d
        qb = h * d0 - dy * c_d
        qc = -s * dy
        xi = 2 * qc / (-qb - jnp.sqrt(jnp.maximum(qb * qb - 4 * qa * qc, 0.0)))
        out = x0 + w * xi
    else:
        xi = (safe - x0) / w
        out = y0 + h * (s * xi**2 + d0 * xi * (1 - xi)) / (s + c_d * xi * (1 - xi))
    num = d1 * xi**2 + 2 * s * xi * (1 - xi) + d0 * (1 - xi) ** 2
    den = s + c_d * xi * (1 - xi)
    log_d = 2 * jnp.log(s) + jnp.log(num) - 2 * jnp.log(den)
    d_num = 2 * d1 * xi + 2 * s * (1 - 2 * xi) - 2 * d0 * (1 - xi)
    grad = (d_num / num - 2 * c_d * (1 - 2 * xi) / den) / w
    if inverse:
        # (4.14): −log f' and −(f''/f')/f' at the root.
        log_d, grad = -log_d, -grad * jnp.exp(-log_d)
    zero = jnp.zeros_like(x)
    return jnp.where(inside, out, x), jnp.where(inside, log_d, zero), jnp.where(inside, grad, zero)


def _spline_map(
    layer: SplineCoupling, a: Array, p: Array, inverse: bool
) -> tuple[Array, Array, Array]:
    """The neural spline flow's map: ``p (3K − 1, n)`` raw widths, heights, interior δ."""
    K, B = layer.bins, layer.bound
    q = p.T
    xk = _spline_knots(q[:, :K], -B, B, layer.min_bin_width)
    yk = _spline_knots(q[:, K : 2 * K], -B, B, layer.min_bin_height)
    ones = jnp.ones((q.shape[0], 1))
    dk = jnp.concatenate([ones, _knot_derivative(q[:, 2 * K :], layer.min_derivative), ones], 1)
    return rq_spline(a, xk, yk, dk, inverse)


def _u1_spline_map(
    layer: U1SplineCoupling, a: Array, p: Array, inverse: bool
) -> tuple[Array, Array, Array]:
    """(4.15) on the active plaquette ``P = a + r``: ``a' = (g(P mod 2π) + ρ − r) mod 2π``."""
    K = layer.bins
    r, q = p[0], p[1:].T
    xk = _spline_knots(q[:, :K], 0.0, TWO_PI, layer.min_bin_width)
    yk = _spline_knots(q[:, K : 2 * K], 0.0, TWO_PI, layer.min_bin_height)
    delta = _knot_derivative(q[:, 2 * K : 3 * K], layer.min_derivative)
    dk = jnp.concatenate([delta, delta[:, :1]], axis=1)
    rho = q[:, 3 * K] if layer.rotation else jnp.zeros_like(a)
    if inverse:
        plaq, log_d, grad = rq_spline(jnp.mod(a + r - rho, TWO_PI), xk, yk, dk, True)
        return jnp.mod(plaq - r, TWO_PI), log_d, grad
    out, log_d, grad = rq_spline(jnp.mod(a + r, TWO_PI), xk, yk, dk, False)
    return jnp.mod(out + rho - r, TWO_PI), log_d, grad


# --- a root-found monotone map: linear plus positive tanh steps, bisection inverse (6.1) --------


def _tanh_sum_parts(x: Array, p: Array, K: int) -> tuple[Array, Array, Array, Array, Array]:
    """``(e^s, w, e^α, t)`` and ``w e^α`` for ``x (n,)`` and ``p (1 + 3K, n)``: ``t_k =
    tanh(e^{α_k}(x − β_k))``, shapes ``(n,)`` and ``(K, n)``."""
    slope = jnp.exp(p[0])
    w = jax.nn.softplus(p[1 : 1 + K])
    scale = jnp.exp(p[1 + K : 1 + 2 * K])
    t = jnp.tanh(scale * (x - p[1 + 2 * K : 1 + 3 * K]))
    return slope, w, scale, t, w * scale


def tanh_sum(x: Array, p: Array, K: int) -> Array:
    """``f(x) = e^s x + Σ_k w_k t_k``."""
    slope, w, _, t, _ = _tanh_sum_parts(x, p, K)
    return slope * x + jnp.sum(w * t, axis=0)


def tanh_sum_derivatives(x: Array, p: Array, K: int) -> tuple[Array, Array]:
    """``(f', f'')``: ``e^s + Σ w_k e^{α_k}(1 − t_k²)`` and ``−2 Σ w_k e^{2α_k} t_k (1 − t_k²)``."""
    slope, _, scale, t, ws = _tanh_sum_parts(x, p, K)
    sech2 = 1 - t * t
    return slope + jnp.sum(ws * sech2, axis=0), -2 * jnp.sum(ws * scale * t * sech2, axis=0)


TANH_SUM_BOUND = 10.0  # first bracket [−B, B], doubled at each end 16 times (reach ±655,360)
TANH_SUM_EXPANSIONS = 16


@partial(jax.jit, static_argnums=(2,))
def _bisect_tanh_sum(y: Array, p: Array, K: int) -> Array:
    """The root of ``f(x) = y``: the bracket ``[−B, B]`` doubled at an end while it does not
    hold the root, then 100 halvings (width ``≤ 1.4e6 · 2^-100``, below the float64 spacing of
    the answer). A root that no bracket holds gives NaN (nothing is clamped)."""

    def expand(_: int, bounds: tuple[Array, Array]) -> tuple[Array, Array]:
        lo, hi = bounds
        lo = jnp.where(tanh_sum(lo, p, K) > y, 2 * lo, lo)
        hi = jnp.where(tanh_sum(hi, p, K) < y, 2 * hi, hi)
        return lo, hi

    start = (jnp.full_like(y, -TANH_SUM_BOUND), jnp.full_like(y, TANH_SUM_BOUND))
    lo, hi = jax.lax.fori_loop(0, TANH_SUM_EXPANSIONS, expand, start)
    held = (tanh_sum(lo, p, K) <= y) & (tanh_sum(hi, p, K) >= y)

    def step(_: int, bounds: tuple[Array, Array]) -> tuple[Array, Array]:
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        above = tanh_sum(mid, p, K) >= y
        return jnp.where(above, lo, mid), jnp.where(above, mid, hi)

    lo, hi = jax.lax.fori_loop(0, 100, step, (lo, hi))
    return jnp.where(held, 0.5 * (lo + hi), jnp.nan)


tanh_sum_inverse = implicit_inverse(
    _bisect_tanh_sum, tanh_sum, lambda x, p, K: tanh_sum_derivatives(x, p, K)[0]
)
"""``x = f^{-1}(y)`` of the tanh sum, by bisection, with implicit derivatives."""


@tanh_sum_inverse.defjvp
def _tanh_sum_inverse_jvp(
    K: int, primals: tuple[Array, Array], tangents: tuple[Array, Array]
) -> tuple[Array, Array]:
    y, p = primals
    dy, dp = tangents
    x = tanh_sum_inverse(y, p, K)
    # dx = (dy − (∂f/∂p)·dp) / f'(x), in terms of x (itself differentiable by this rule), so
    # that higher derivatives are those of the true inverse.
    _, df_p = jax.jvp(lambda pp: tanh_sum(x, pp, K), (p,), (dp,))
    return x, (dy - df_p) / tanh_sum_derivatives(x, p, K)[0]


def _tanh_sum_map(
    layer: TanhSumCoupling, a: Array, p: Array, inverse: bool
) -> tuple[Array, Array, Array]:
    """``(f(a), log f', f''/f')``, or for ``f^{-1}``: ``(x, −log f'(x), −(f''/f')(x)/f'(x))``."""
    K = layer.components
    if inverse:
        x = tanh_sum_inverse(a, p, K)
        d1, d2 = tanh_sum_derivatives(x, p, K)
        return x, -jnp.log(d1), -d2 / (d1 * d1)
    d1, d2 = tanh_sum_derivatives(a, p, K)
    return tanh_sum(a, p, K), jnp.log(d1), d2 / d1


# --- a continuous flow: fixed-step RK4 of the state, the log-det and the score ODE --------------

State = tuple[Array, ...]
Rate = Callable[[float, State], State]


def velocity(params: Params, layer: Continuous, x: Array, t: float) -> Array:
    """``v(x, t) = MLP([x, t])``, ``x (d,)`` to ``(d,)``: the time is the last input feature."""
    return mlp(params, layer.weights, layer.biases, jnp.append(x, jnp.asarray(t, x.dtype)))


def divergence(params: Params, layer: Continuous, x: Array, t: float) -> Array:
    """``div v = tr ∂v/∂x``, a scalar: the exact trace of the ``d × d`` forward-mode Jacobian."""
    return jnp.trace(jax.jacfwd(lambda u: velocity(params, layer, u, t))(x))


def rk4(rate: Rate, state: State, t_start: float, t_end: float, steps: int) -> list[State]:
    """``Y ← Y + (h/6)(k1 + 2 k2 + 2 k3 + k4)`` per step, ``h = (t_end − t_start)/steps``
    (either order), the stages ``k = rate(t, Y)`` at ``t_n``, ``t_n + h/2`` (twice) and
    ``t_n + h``, ``t_n = t_start + n h``: the classical RK4. Returns the state (a tuple of
    arrays of any shapes) after each of the ``steps`` steps. A Python loop, so the discrete map,
    not the exact flow, is what every transform differentiates."""
    h = (t_end - t_start) / steps

    def axpy(a: float, k: State, y: State) -> State:
        return tuple(yi + a * ki for yi, ki in zip(y, k, strict=True))

    out = []
    for n in range(steps):
        t = t_start + n * h
        k1 = rate(t, state)
        k2 = rate(t + 0.5 * h, axpy(0.5 * h, k1, state))
        k3 = rate(t + 0.5 * h, axpy(0.5 * h, k2, state))
        k4 = rate(t + h, axpy(h, k3, state))
        state = tuple(
            y + (h / 6.0) * (a + 2.0 * b + 2.0 * c + d)
            for y, a, b, c, d in zip(state, k1, k2, k3, k4, strict=True)
        )
        out.append(state)
    return out


def _interval(layer: Continuous, inverse: bool) -> tuple[float, float]:
    """``(t_start, t_end)``: ``t0 → t1`` forward, ``t1 → t0`` for the inverse."""
    return (layer.t1, layer.t0) if inverse else (layer.t0, layer.t1)


def continuous_point(params: Params, layer: Continuous, x: Array, inverse: bool) -> Array:
    """``x(t_end)`` alone, ``(d,)``: the state's solve without the log-det, whose divergence
    would cost every dense Jacobian of the oracle a nested ``jacfwd`` for nothing. Its
    arithmetic on ``x`` is that of :func:`continuous_map`, so the two points are equal."""

    def rate(t: float, st: State) -> State:
        return (velocity(params, layer, st[0], t),)

    return rk4(rate, (x,), *_interval(layer, inverse), layer.steps)[-1][0]


def continuous_map(
    params: Params, layer: Continuous, x: Array, inverse: bool
) -> tuple[Array, Array]:
    """``(x(t_end), ℓ(t_end))``: RK4 of ``(x, ℓ)`` with ``dℓ/dt = div v``, ``ℓ = 0`` at the
    start; ``ℓ`` is ``log|det|`` of the layer (``< 0`` times ``∫ div`` for the inverse)."""

    def rate(t: float, st: State) -> State:
        return velocity(params, layer, st[0], t), divergence(params, layer, st[0], t)

    y, ell = rk4(rate, (x, jnp.zeros((), x.dtype)), *_interval(layer, inverse), layer.steps)[-1]
    return y, ell


def score_rate(params: Params, layer: Continuous, x: Array, s: Array, t: float) -> State:
    """``(v, div v, ds/dt)`` with ``ds/dt = −Jᵀ s − ∇_x div v``, ``J = ∂v/∂x``: one VJP of
    ``u ↦ (v(u, t), div v(u, t))`` with cotangent ``(s, 1)``. ``v`` keeps its dependence on
    ``x`` and the parameters; ``div v`` and ``ds/dt`` are values at fixed parameters and state,
    so that a parameter derivative of the solve runs through the ``x`` stages alone."""
    fixed = sg_tree(params)

    def field(u: Array) -> tuple[Array, Array]:
        return velocity(fixed, layer, u, t), divergence(fixed, layer, u, t)

    (_, div), pullback = jax.vjp(field, sg(x))
    (g,) = pullback((sg(s), jnp.ones_like(div)))
    return velocity(params, layer, x, t), sg(div), sg(-g)


def ode_trace(
    params: Params, layer: Continuous, x: Array, s: Array, inverse: bool
) -> list[tuple[Array, Array, Array]]:
    """``(x, ℓ, s)`` after each RK4 step of the score ODE (``steps`` entries; shapes ``(d,)``,
    ``()``, ``(d,)``): from ``t0`` to ``t1``, or from ``t1`` back to ``t0`` for the inverse."""

    def rate(t: float, st: State) -> State:
        return score_rate(params, layer, st[0], st[2], t)

    start = (x, jnp.zeros((), x.dtype), s)
    trace = rk4(rate, start, *_interval(layer, inverse), layer.steps)
    return [(y, sg(ell), sg(sy)) for y, ell, sy in trace]


Conditioned = Coupling | U1Coupling | SplineCoupling | U1SplineCoupling | TanhSumCoupling


def layer_params(params: Params, layer: Conditioned, b: Array) -> Array:
    if isinstance(layer, U1Coupling | U1SplineCoupling):
        return u1_conditioner(params, layer, b)
    return conditioner(params, layer, b)


def elementwise(
    layer: Conditioned, a: Array, p: Array, inverse: bool
) -> tuple[Array, Array, Array]:
    """``(f(a), log f'(a), f''/f')`` of the layer's element-wise map (or of its inverse)."""
    if isinstance(layer, U1Coupling):
        return _u1_map(layer, a, p, inverse)
    if isinstance(layer, SplineCoupling):
        return _spline_map(layer, a, p, inverse)
    if isinstance(layer, U1SplineCoupling):
        return _u1_spline_map(layer, a, p, inverse)
    if isinstance(layer, TanhSumCoupling):
        return _tanh_sum_map(layer, a, p, inverse)
    return _affine_or_additive(layer, a, p, inverse)


def layer_map(params: Params, layer: Layer, x: Array, inverse: bool) -> tuple[Array, Array]:
    """``(T_l(x), log|det ∂T_l/∂x|)`` or the same for ``T_l^{-1}``."""
    if isinstance(layer, Continuous):
        return continuous_map(params, layer, x, inverse)
    if isinstance(layer, Scaling):
        gamma = params[layer.parameter]
        sign = -1.0 if inverse else 1.0
        return x * jnp.exp(sign * gamma), sign * layer.dim * gamma
    a, b = x[layer.active], x[layer.passive]
    out, log_deriv, _ = elementwise(layer, a, layer_params(params, layer, b), inverse)
    return x.at[layer.active].set(out), jnp.sum(log_deriv)


def layer_score(
    params: Params, layer: Layer, x: Array, s: Array, inverse: bool
) -> tuple[Array, Array, Array]:
    """``(y, log_det, s')`` with ``s' = J^{-T}(s − ∇ log|det J|)`` by the closed forms (4.2),
    (4.5), or for a continuous layer by the score ODE solved with the state (:func:`ode_trace`);
    parameters held fixed in ``s'``."""
    if isinstance(layer, Continuous):
        # Algorithm 1 for an ODE: the score is solved with the state (the score ODE).
        return ode_trace(params, layer, x, s, inverse)[-1]
    y, log_det = layer_map(params, layer, x, inverse)
    if isinstance(layer, Scaling):
        gamma = sg(params[layer.parameter])
        return y, log_det, s * jnp.exp(gamma if inverse else -gamma)
    fixed = sg_tree(params)
    a, b = sg(x[layer.active]), sg(x[layer.passive])
    _, log_deriv, grad_log_deriv = elementwise(layer, a, layer_params(fixed, layer, b), inverse)
    s_a = (s[layer.active] - grad_log_deriv) * jnp.exp(-log_deriv)

    def through_conditioner(bb: Array) -> Array:
        f, ld, _ = elementwise(layer, a, layer_params(fixed, layer, bb), inverse)
        return jnp.sum(ld) + jnp.dot(s_a, f)

    s_b = s[layer.passive] - jax.grad(through_conditioner)(b)
    s_new = jnp.zeros_like(s).at[layer.active].set(s_a).at[layer.passive].set(s_b)
    return y, log_det, sg(s_new)


def sg_tree(params: Params) -> Params:
    return {k: sg(v) for k, v in params.items()}


# --- the flow ----------------------------------------------------------------------------------


def push(params: Params, model: Model, z: Array) -> tuple[Array, Array]:
    """``(T(z), log|det J_T|)``."""
    total = jnp.zeros((), z.dtype)
    for layer in model.layers:
        z, ld = layer_map(params, layer, z, inverse=False)
        total = total + ld
    return z, total


def pull(params: Params, model: Model, x: Array) -> tuple[Array, Array]:
    """``(T^{-1}(x), log|det J_{T^{-1}}|)``."""
    total = jnp.zeros((), x.dtype)
    for layer in reversed(model.layers):
        x, ld = layer_map(params, layer, x, inverse=True)
        total = total + ld
    return x, total


def _point(params: Params, layer: Layer, x: Array, inverse: bool) -> Array:
    if isinstance(layer, Continuous):
        return continuous_point(params, layer, x, inverse)
    return layer_map(params, layer, x, inverse)[0]


def push_x(params: Params, model: Model, z: Array) -> Array:
    """``T(z)`` alone: :func:`push`'s point without computing log-dets that are not used."""
    for layer in model.layers:
        z = _point(params, layer, z, inverse=False)
    return z


def pull_x(params: Params, model: Model, x: Array) -> Array:
    """``T^{-1}(x)`` alone."""
    for layer in reversed(model.layers):
        x = _point(params, layer, x, inverse=True)
    return x


def log_q(params: Params, model: Model, x: Array) -> Array:
    """(1.2) through the inverse."""
    z, ld = pull(params, model, x)
    return log_q0(model, z) + ld


def forward_trace(
    params: Params, model: Model, z: Array
) -> tuple[list[Array], list[Array], list[Array]]:
    """Per layer ``(x_{l+1}, log_det_l, s_{l+1})`` of Algorithm 1 (3.1) from ``s_0 = −z``."""
    xs, lds, ss = [], [], []
    x, s = z, score_q0(model, z)
    for layer in model.layers:
        x, ld, s = layer_score(params, layer, x, s, inverse=False)
        xs.append(x)
        lds.append(ld)
        ss.append(s)
    return xs, lds, ss


def inverse_trace(
    params: Params, model: Model, x: Array, s: Array
) -> tuple[dict[int, Array], dict[int, Array], dict[int, Array]]:
    """(3.1) through the inverse layers, keyed by layer index ``i = L−1, …, 0``."""
    xs, lds, ss = {}, {}, {}
    for i in reversed(range(len(model.layers))):
        x, ld, s = layer_score(params, model.layers[i], x, s, inverse=True)
        xs[i], lds[i], ss[i] = x, ld, s
    return xs, lds, ss


# --- estimators: surrogate losses whose value is the KL and whose jax.grad is the estimator ----

Estimator = Callable[[Params, Model, Array], Array]


def _kl(model: Model, log_w: Array, direction: str) -> Array:
    if direction == "reverse":
        return -jnp.mean(log_w) + log_z(model)
    return jnp.mean(log_w) - log_z(model)


def _surrogate(value: Array, field: Array, point: Array) -> Array:
    """(2.4): ``value + mean⟨sg(G), y⟩ − sg(mean⟨G, y⟩)``."""
    inner = jnp.mean(jnp.sum(sg(field) * point, axis=1))
    return sg(value) + inner - sg(inner)


def reverse_standard(params: Params, model: Model, z: Array) -> Array:
    """(2.2)."""

    def one(u: Array) -> Array:
        x, ld = push(params, model, u)
        return -action(model, x) - (log_q0(model, u) - ld)

    return _kl(model, jax.vmap(one)(z), "reverse")


def reverse_path_fast(params: Params, model: Model, z: Array) -> Array:
    """Algorithm 1: ``G = s_L + ∇S(x)`` from the score recursion, no inverse."""

    def one(u: Array) -> tuple[Array, Array]:
        xs, lds, ss = forward_trace(sg_tree(params), model, u)
        x = xs[-1]
        lq = log_q0(model, u) - sum(lds)
        return -action(model, x) - lq, ss[-1] + force(model, x)

    log_w, G = jax.vmap(one)(z)
    x_theta = jax.vmap(lambda u: push_x(params, model, u))(z)
    return _surrogate(_kl(model, log_w, "reverse"), G, x_theta)


def _data_field(params: Params, model: Model, x: Array) -> tuple[Array, Array]:
    """``(log w, G = ∇_x(log q + S))`` through the inverse by autodiff (Algorithms 2, 3)."""

    def energy(v: Array) -> Array:
        return log_q(params, model, v) + action(model, v)

    lw = -energy(x)
    return lw, jax.grad(energy)(x)


def reverse_path_dropin(params: Params, model: Model, z: Array) -> Array:
    """Algorithm 2."""
    fixed = sg_tree(params)
    x = jax.vmap(lambda u: push_x(fixed, model, u))(z)
    log_w, G = jax.vmap(lambda v: _data_field(fixed, model, v))(x)
    x_theta = jax.vmap(lambda u: push_x(params, model, u))(z)
    return _surrogate(_kl(model, log_w, "reverse"), G, x_theta)


def forward_standard(params: Params, model: Model, x: Array) -> Array:
    """Maximum likelihood."""
    log_w = jax.vmap(lambda v: -action(model, v) - log_q(params, model, v))(x)
    return _kl(model, log_w, "forward")


def forward_path_gdreg(params: Params, model: Model, x: Array) -> Array:
    """Algorithm 3."""
    fixed = sg_tree(params)
    log_w, G = jax.vmap(lambda v: _data_field(fixed, model, v))(x)
    z = jax.vmap(lambda v: pull_x(fixed, model, v))(x)
    x_theta = jax.vmap(lambda u: push_x(params, model, u))(z)
    return _surrogate(_kl(model, log_w, "forward"), G, x_theta)


def forward_path_fast(params: Params, model: Model, x: Array) -> Array:
    """Algorithm 1 through the inverse (5.4): ``G_z = s_L − ∇ log q0(z)``."""

    def one(v: Array) -> tuple[Array, Array]:
        zs, lds, ss = inverse_trace(sg_tree(params), model, v, -force(model, v))
        z = zs[0]
        lq = log_q0(model, z) + sum(lds.values())
        return -action(model, v) - lq, ss[0] - score_q0(model, z)

    log_w, G = jax.vmap(one)(x)
    z_theta = jax.vmap(lambda v: pull_x(params, model, v))(x)
    return _surrogate(_kl(model, log_w, "forward"), G, z_theta)


# --- the naive oracle: dense Jacobians, slogdet, jax.grad (section 10) -------------------------


def _jacobian(params: Params, model: Model, z: Array) -> Array:
    return jax.jacfwd(lambda u: push_x(params, model, u))(z)


NEWTON_STEPS = 4
"""Newton steps that refine the oracle's root where the inverse is approximate."""


def _root(params: Params, model: Model, x: Array) -> Array:
    """``z*`` with ``T(z*) = x`` for the forward-KL oracles: the inverse's point, refined where
    the inverse is approximate (a continuous layer) by ``NEWTON_STEPS`` Newton steps
    ``z ← z − J(z)^{-1}(T(z) − x)`` on the forward map itself, so that the oracle is that of
    the map ``T`` as computed."""
    z = pull_x(params, model, x)
    if not model.inverse_is_exact:
        for _ in range(NEWTON_STEPS):
            z = z - jnp.linalg.solve(_jacobian(params, model, z), push_x(params, model, z) - x)
    return z


def _dense_field(params: Params, model: Model, z: Array) -> tuple[Array, Array, Array]:
    """``(x, log q(x), G)`` at one ``z`` from the dense Jacobian (10.1)."""
    J = _jacobian(params, model, z)
    x = push_x(params, model, z)
    lq = log_q0(model, z) - jnp.linalg.slogdet(J)[1]
    grad_log_det = jax.grad(lambda u: jnp.linalg.slogdet(_jacobian(params, model, u))[1])(z)
    score_x = jnp.linalg.solve(J.T, score_q0(model, z) - grad_log_det)
    return x, lq, score_x + force(model, x)


def reverse_standard_naive(params: Params, model: Model, z: Array) -> Array:
    def one(p: Params, u: Array) -> Array:
        x = push_x(p, model, u)
        return log_q0(model, u) - jnp.linalg.slogdet(_jacobian(p, model, u))[1] + action(model, x)

    return jnp.mean(jax.vmap(lambda u: one(params, u))(z)) + log_z(model)


def reverse_path_naive(params: Params, model: Model, z: Array) -> Array:
    fixed = sg_tree(params)
    x, lq, G = jax.vmap(lambda u: _dense_field(fixed, model, u))(z)
    log_w = -jax.vmap(lambda v: action(model, v))(x) - lq
    x_theta = jax.vmap(lambda u: push_x(params, model, u))(z)
    return _surrogate(_kl(model, log_w, "reverse"), G, x_theta)


def forward_standard_naive(params: Params, model: Model, x: Array) -> Array:
    fixed = sg_tree(params)
    z_star = jax.vmap(lambda v: _root(fixed, model, v))(x)
    J0 = jax.vmap(lambda u: _jacobian(fixed, model, u))(z_star)

    def one(u: Array, J: Array, v: Array) -> Array:
        t = push_x(params, model, u)
        z_theta = u - jnp.linalg.solve(J, t - sg(t))  # (10.2)
        lq = log_q0(model, z_theta) - jnp.linalg.slogdet(_jacobian(params, model, z_theta))[1]
        return -action(model, v) - lq

    return _kl(model, jax.vmap(one)(z_star, J0, x), "forward")


def forward_path_naive(params: Params, model: Model, x: Array) -> Array:
    fixed = sg_tree(params)
    z_star = jax.vmap(lambda v: _root(fixed, model, v))(x)
    _, lq, G = jax.vmap(lambda u: _dense_field(fixed, model, u))(z_star)
    log_w = -jax.vmap(lambda v: action(model, v))(x) - lq
    x_theta = jax.vmap(lambda u: push_x(params, model, u))(z_star)
    return _surrogate(_kl(model, log_w, "forward"), G, x_theta)


ESTIMATORS: dict[str, Estimator] = {
    "reverse-standard": reverse_standard,
    "reverse-path-dropin": reverse_path_dropin,
    "reverse-path-fast": reverse_path_fast,
    "forward-standard": forward_standard,
    "forward-path-gdreg": forward_path_gdreg,
    "forward-path-fast": forward_path_fast,
    "reverse-standard-naive": reverse_standard_naive,
    "reverse-path-naive": reverse_path_naive,
    "forward-standard-naive": forward_standard_naive,
    "forward-path-naive": forward_path_naive,
}


def value_and_gradient(
    name: str, params: Params, model: Model, batch: Array
) -> tuple[Array, Params]:
    """The estimator's loss value and its gradient, keyed like ``params``."""
    value, grads = jax.value_and_grad(ESTIMATORS[name])(params, model, batch)
    return value, grads
