"""A minimal JAX port of the path gradient estimators, written from ``docs/theory.md``.

Covers: affine (RealNVP) and additive (NICE) couplings with MLP conditioners, the global
scaling layer, the standard normal base, the Gaussian-mixture and φ⁴ actions, the standard and
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


Layer = Coupling | Scaling


@dataclass(frozen=True)
class Model:
    event_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    target: dict[str, Any]

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)


class UnsupportedError(ValueError):
    """The manifest describes a layer, base or target this port does not implement."""


def model_from_manifest(meta: dict[str, Any]) -> Model:
    if meta["base"]["kind"] != "standard_normal":
        raise UnsupportedError(f"base {meta['base']['kind']!r} is not implemented in the JAX port")
    shape = tuple(int(s) for s in meta["event_shape"])
    layers: list[Layer] = []
    for entry in meta["layers"]:
        kind = entry["kind"]
        if kind in ("affine_coupling", "additive_coupling"):
            cond = entry["conditioner"]
            if cond["kind"] != "mlp" or cond["activation"] != "tanh":
                raise UnsupportedError(f"conditioner {cond['kind']}/{cond['activation']}")
            layers.append(
                Coupling(
                    kind="affine" if kind == "affine_coupling" else "additive",
                    active=np.asarray(entry["active"], dtype=np.int64),
                    passive=np.asarray(entry["passive"], dtype=np.int64),
                    weights=tuple(lin["weight"] for lin in cond["layers"]),
                    biases=tuple(lin["bias"] for lin in cond["layers"]),
                )
            )
        elif kind == "global_scaling":
            layers.append(Scaling(entry["parameter"], math.prod(shape)))
        else:
            raise UnsupportedError(f"layer {kind!r} is not implemented in the JAX port")
    if meta["target"]["kind"] not in ("gmm", "phi4"):
        raise UnsupportedError(f"target {meta['target']['kind']!r} is not implemented")
    return Model(shape, tuple(layers), meta["target"])


# --- base, targets -----------------------------------------------------------------------------


def log_q0(z: Array) -> Array:
    """Standard normal: ``−|z|²/2 − (d/2) log 2π``."""
    return -0.5 * jnp.sum(z * z) - 0.5 * z.shape[0] * math.log(2 * math.pi)


def score_q0(z: Array) -> Array:
    return -z


def action(model: Model, x: Array) -> Array:
    """``S(x)`` for one flat sample: (7.1) or (7.2)."""
    t = model.target
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


def conditioner(params: Params, layer: Coupling, b: Array) -> Array:
    """MLP with tanh between linear maps ``y = W h + c``; output read as ``(n_params, n_a)``."""
    h = b
    last = len(layer.weights) - 1
    for i, (w, c) in enumerate(zip(layer.weights, layer.biases, strict=True)):
        h = params[w] @ h
        if c is not None:
            h = h + params[c]
        if i < last:
            h = jnp.tanh(h)
    return h.reshape(layer.n_params, layer.active.size)


def elementwise(layer: Coupling, a: Array, p: Array, inverse: bool) -> tuple[Array, Array, Array]:
    """``(f(a), log f'(a), f''/f')``: affine ``a e^σ + μ``, additive ``a + μ`` (4.3, 4.4)."""
    if layer.kind == "affine":
        sigma, mu = p[0], p[1]
        if inverse:
            return (a - mu) * jnp.exp(-sigma), -sigma, jnp.zeros_like(a)
        return a * jnp.exp(sigma) + mu, sigma, jnp.zeros_like(a)
    mu = p[0]
    return (a - mu if inverse else a + mu), jnp.zeros_like(a), jnp.zeros_like(a)


def layer_map(params: Params, layer: Layer, x: Array, inverse: bool) -> tuple[Array, Array]:
    """``(T_l(x), log|det ∂T_l/∂x|)`` or the same for ``T_l^{-1}``."""
    if isinstance(layer, Scaling):
        gamma = params[layer.parameter]
        sign = -1.0 if inverse else 1.0
        return x * jnp.exp(sign * gamma), sign * layer.dim * gamma
    a, b = x[layer.active], x[layer.passive]
    out, log_deriv, _ = elementwise(layer, a, conditioner(params, layer, b), inverse)
    return x.at[layer.active].set(out), jnp.sum(log_deriv)


def layer_score(
    params: Params, layer: Layer, x: Array, s: Array, inverse: bool
) -> tuple[Array, Array, Array]:
    """``(y, log_det, s')`` with ``s' = J^{-T}(s − ∇ log|det J|)`` by the closed forms (4.2),
    (4.5); parameters held fixed in ``s'``."""
    y, log_det = layer_map(params, layer, x, inverse)
    if isinstance(layer, Scaling):
        gamma = sg(params[layer.parameter])
        return y, log_det, s * jnp.exp(gamma if inverse else -gamma)
    fixed = sg_tree(params)
    a, b = sg(x[layer.active]), sg(x[layer.passive])
    _, log_deriv, grad_log_deriv = elementwise(layer, a, conditioner(fixed, layer, b), inverse)
    s_a = (s[layer.active] - grad_log_deriv) * jnp.exp(-log_deriv)

    def through_conditioner(bb: Array) -> Array:
        f, ld, _ = elementwise(layer, a, conditioner(fixed, layer, bb), inverse)
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


def log_q(params: Params, model: Model, x: Array) -> Array:
    """(1.2) through the inverse."""
    z, ld = pull(params, model, x)
    return log_q0(z) + ld


def forward_trace(
    params: Params, model: Model, z: Array
) -> tuple[list[Array], list[Array], list[Array]]:
    """Per layer ``(x_{l+1}, log_det_l, s_{l+1})`` of Algorithm 1 (3.1) from ``s_0 = −z``."""
    xs, lds, ss = [], [], []
    x, s = z, score_q0(z)
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
        return -action(model, x) - (log_q0(u) - ld)

    return _kl(model, jax.vmap(one)(z), "reverse")


def reverse_path_fast(params: Params, model: Model, z: Array) -> Array:
    """Algorithm 1: ``G = s_L + ∇S(x)`` from the score recursion, no inverse."""

    def one(u: Array) -> tuple[Array, Array]:
        xs, lds, ss = forward_trace(sg_tree(params), model, u)
        x = xs[-1]
        lq = log_q0(u) - sum(lds)
        return -action(model, x) - lq, ss[-1] + force(model, x)

    log_w, G = jax.vmap(one)(z)
    x_theta = jax.vmap(lambda u: push(params, model, u)[0])(z)
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
    x = jax.vmap(lambda u: push(fixed, model, u)[0])(z)
    log_w, G = jax.vmap(lambda v: _data_field(fixed, model, v))(x)
    x_theta = jax.vmap(lambda u: push(params, model, u)[0])(z)
    return _surrogate(_kl(model, log_w, "reverse"), G, x_theta)


def forward_standard(params: Params, model: Model, x: Array) -> Array:
    """Maximum likelihood."""
    log_w = jax.vmap(lambda v: -action(model, v) - log_q(params, model, v))(x)
    return _kl(model, log_w, "forward")


def forward_path_gdreg(params: Params, model: Model, x: Array) -> Array:
    """Algorithm 3."""
    fixed = sg_tree(params)
    log_w, G = jax.vmap(lambda v: _data_field(fixed, model, v))(x)
    z = jax.vmap(lambda v: pull(fixed, model, v)[0])(x)
    x_theta = jax.vmap(lambda u: push(params, model, u)[0])(z)
    return _surrogate(_kl(model, log_w, "forward"), G, x_theta)


def forward_path_fast(params: Params, model: Model, x: Array) -> Array:
    """Algorithm 1 through the inverse (5.4): ``G_z = s_L − ∇ log q0(z)``."""

    def one(v: Array) -> tuple[Array, Array]:
        zs, lds, ss = inverse_trace(sg_tree(params), model, v, -force(model, v))
        z = zs[0]
        lq = log_q0(z) + sum(lds.values())
        return -action(model, v) - lq, ss[0] - score_q0(z)

    log_w, G = jax.vmap(one)(x)
    z_theta = jax.vmap(lambda v: pull(params, model, v)[0])(x)
    return _surrogate(_kl(model, log_w, "forward"), G, z_theta)


# --- the naive oracle: dense Jacobians, slogdet, jax.grad (section 10) -------------------------


def _jacobian(params: Params, model: Model, z: Array) -> Array:
    return jax.jacfwd(lambda u: push(params, model, u)[0])(z)


def _dense_field(params: Params, model: Model, z: Array) -> tuple[Array, Array, Array]:
    """``(x, log q(x), G)`` at one ``z`` from the dense Jacobian (10.1)."""
    J = _jacobian(params, model, z)
    x = push(params, model, z)[0]
    lq = log_q0(z) - jnp.linalg.slogdet(J)[1]
    grad_log_det = jax.grad(lambda u: jnp.linalg.slogdet(_jacobian(params, model, u))[1])(z)
    score_x = jnp.linalg.solve(J.T, score_q0(z) - grad_log_det)
    return x, lq, score_x + force(model, x)


def reverse_standard_naive(params: Params, model: Model, z: Array) -> Array:
    def one(p: Params, u: Array) -> Array:
        x = push(p, model, u)[0]
        return log_q0(u) - jnp.linalg.slogdet(_jacobian(p, model, u))[1] + action(model, x)

    return jnp.mean(jax.vmap(lambda u: one(params, u))(z)) + log_z(model)


def reverse_path_naive(params: Params, model: Model, z: Array) -> Array:
    fixed = sg_tree(params)
    x, lq, G = jax.vmap(lambda u: _dense_field(fixed, model, u))(z)
    log_w = -jax.vmap(lambda v: action(model, v))(x) - lq
    x_theta = jax.vmap(lambda u: push(params, model, u)[0])(z)
    return _surrogate(_kl(model, log_w, "reverse"), G, x_theta)


def forward_standard_naive(params: Params, model: Model, x: Array) -> Array:
    fixed = sg_tree(params)
    z_star = jax.vmap(lambda v: pull(fixed, model, v)[0])(x)
    J0 = jax.vmap(lambda u: _jacobian(fixed, model, u))(z_star)

    def one(u: Array, J: Array, v: Array) -> Array:
        t = push(params, model, u)[0]
        z_theta = u - jnp.linalg.solve(J, t - sg(t))  # (10.2)
        lq = log_q0(z_theta) - jnp.linalg.slogdet(_jacobian(params, model, z_theta))[1]
        return -action(model, v) - lq

    return _kl(model, jax.vmap(one)(z_star, J0, x), "forward")


def forward_path_naive(params: Params, model: Model, x: Array) -> Array:
    fixed = sg_tree(params)
    z_star = jax.vmap(lambda v: pull(fixed, model, v)[0])(x)
    _, lq, G = jax.vmap(lambda u: _dense_field(fixed, model, u))(z_star)
    log_w = -jax.vmap(lambda v: action(model, v))(x) - lq
    x_theta = jax.vmap(lambda u: push(params, model, u)[0])(z_star)
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
