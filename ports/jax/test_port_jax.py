"""The JAX port against the committed conformance vectors (float64), per-layer intermediates
included, and against its own naive oracle."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pathgrad_jax as pj
import pytest
from check_vectors import VECTORS, differences, load, port_arrays

CASES = sorted(p.name for p in VECTORS.iterdir() if p.is_dir())


@functools.cache
def computed(case: str) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(manifest, vectors, the port's arrays)`` of a case, computed once per session: the
    vector test and the oracle test read the same port run."""
    meta, vec = load(case)
    return meta, vec, port_arrays(meta, vec)


def params_and_z(vec: dict[str, np.ndarray]) -> tuple[dict[str, jax.Array], jax.Array]:
    """The parameters and the base samples ``z (n, dim)`` stored in a case's vectors."""
    params = {k[6:]: jnp.asarray(v) for k, v in vec.items() if k.startswith("param/")}
    return params, jnp.asarray(vec["z"]).reshape(vec["z"].shape[0], -1)


def layer_error(meta: dict[str, Any], vec: dict[str, np.ndarray], i: int) -> float:
    """``max|x_{i+1} − vector|`` after layer ``i`` of the forward pass of the model in ``meta``."""
    model = pj.model_from_manifest(meta)
    params, z = params_and_z(vec)
    xs, _, _ = jax.vmap(lambda u: pj.forward_trace(params, model, u))(z)
    return float(jnp.max(jnp.abs(xs[i] - vec[f"forward/x/{i}"].reshape(z.shape))))


COVERED = [
    "realnvp_gmm_d6",
    "z2nice_phi4_4x4",
    "u1_4x4_8layers",
    "nsf_gmm_d4",
    "u1_circular_4x4",
    "tanhsum_gmm_d4",
    "cnf_gmm_d3",
]

# The port's fast paths against its own dense oracle, relative L2 difference of the gradients.
# Rounding for every flow that is one discrete map with exact log-dets; the continuous flow's
# log-det and score ODE are RK4 solutions (O(h^4) from the discrete map's slogdet and exact
# score), measured at most 2.9e-7 at its 8 steps (test_continuous_gap_is_the_rk4_error).
ORACLE_TOL = {"cnf_gmm_d3": 1e-6}


def test_the_vectors_are_there() -> None:
    assert set(COVERED) <= set(CASES), CASES


@pytest.mark.parametrize("case", COVERED)
def test_port_reproduces_the_vectors(case: str) -> None:
    meta, vec, port = computed(case)
    tol = meta["tolerances"]["port_float64"]["rtol"]
    errs = differences(vec, port)
    n_layers = len(meta["layers"])
    for i in range(n_layers):
        for key in ("forward/x", "forward/score", "inverse/x", "inverse/score"):
            assert f"{key}/{i}" in errs
        if meta["layers"][i]["kind"] == "continuous":
            steps = meta["layers"][i]["steps"]
            for key in ("forward/ode", "inverse/ode"):
                for what in ("x", "log_det", "score"):
                    assert all(f"{key}/{what}/{i}/{k}" in errs for k in range(1, steps + 1))
    assert sum(k.startswith("grad/") for k in errs) == 10 * len(meta["parameters"])
    worst = max(errs, key=errs.__getitem__)
    print(f"{case}: largest difference {errs[worst]:.1e} at {worst}")
    assert errs[worst] <= tol, (worst, errs[worst])


def test_unknown_layers_are_refused_clearly() -> None:
    meta, _ = load("realnvp_gmm_d6")
    meta["layers"][0]["kind"] = "spline_coupling"
    with pytest.raises(pj.UnsupportedError, match="'spline_coupling' is not implemented"):
        pj.model_from_manifest(meta)


def test_a_changed_u1_mask_cycle_fails() -> None:
    """Layer 1 given layer 3's masks (the cycle ((i + 1) // 2) % 4 would do that): a valid
    gauge-equivariant flow, and far from the vectors from layer 1 on."""
    meta, vec = load("u1_4x4_8layers")
    for key in ("active", "passive", "active_plaquette", "frozen_plaquettes", "offset"):
        meta["layers"][1][key] = meta["layers"][3][key]
    assert layer_error(meta, vec, 0) < 1e-12
    assert layer_error(meta, vec, 1) > 1e-3


def test_a_wrong_mask_order_fails() -> None:
    """Swapping two active sites of one layer (a port that orders its mask differently) must
    show in the per-layer intermediates far above the tolerance."""
    meta, vec = load("realnvp_gmm_d6")
    layer = meta["layers"][1]
    layer["active"] = [layer["active"][1], layer["active"][0], *layer["active"][2:]]
    assert layer_error(meta, vec, 0) < 1e-12
    assert layer_error(meta, vec, 1) > 1e-3


def relative_gap(grads: dict[str, Any], fast: str, oracle: str) -> float:
    """``‖g_fast − g_oracle‖ / ‖g_oracle‖`` over all parameters; ``grads[name][parameter]``."""
    g, h = grads[fast], grads[oracle]
    den = sum(float(np.sum(np.asarray(h[k]) ** 2)) for k in h)
    assert den > 0, oracle
    num = sum(float(np.sum((np.asarray(g[k]) - np.asarray(h[k])) ** 2)) for k in h)
    return (num / den) ** 0.5


def port_grads(vec: dict[str, np.ndarray], port: dict[str, np.ndarray]) -> dict[str, Any]:
    """The port's gradients of one run, ``{estimator: {parameter: array}}``."""
    names = [k[6:] for k in vec if k.startswith("param/")]
    return {e: {k: port[f"grad/{e}/{k}"] for k in names} for e in pj.ESTIMATORS}


@pytest.mark.parametrize("case", COVERED)
def test_fast_path_equals_own_oracle(case: str) -> None:
    """Independent of the vectors: the port's fast paths and drop-ins equal its dense oracle
    (both computed from the parameters and inputs alone, in the same port run), to rounding or,
    for the continuous flow, to its RK4 error (``ORACLE_TOL``)."""
    _, vec, port = computed(case)
    grads = port_grads(vec, port)
    pairs = [
        ("reverse-path-fast", "reverse-path-naive"),
        ("reverse-path-dropin", "reverse-path-naive"),
        ("reverse-standard", "reverse-standard-naive"),
        ("forward-path-fast", "forward-path-naive"),
        ("forward-path-gdreg", "forward-path-naive"),
        ("forward-standard", "forward-standard-naive"),
    ]
    tol = ORACLE_TOL.get(case, 1e-12)
    for fast, oracle in pairs:
        gap = relative_gap(grads, fast, oracle)
        assert gap < tol, (fast, oracle, gap)


def test_continuous_gap_is_the_rk4_error() -> None:
    """The continuous flow's fast paths differ from the dense oracle of its discrete map by the
    RK4 error of the score ODE, O(h^4): twice the steps divide the gap by about 2^4 = 16
    (measured 15.5 to 16), where a first- or second-order slip (a wrong stage time, a stage
    weight) would divide it by 2 or 4."""
    meta, vec, port = computed("cnf_gmm_d3")
    coarse = port_grads(vec, port)
    model = pj.model_from_manifest(meta)
    (layer,) = model.layers
    assert isinstance(layer, pj.Continuous)
    finer = dataclasses.replace(model, layers=(dataclasses.replace(layer, steps=2 * layer.steps),))
    params, z = params_and_z(vec)
    x = jnp.asarray(vec["x"]).reshape(z.shape)
    for batch, fast, oracle in (
        (z, "reverse-path-fast", "reverse-path-naive"),
        (x, "forward-path-fast", "forward-path-naive"),
    ):
        fine = {e: pj.value_and_gradient(e, params, finer, batch)[1] for e in (fast, oracle)}
        ratio = relative_gap(coarse, fast, oracle) / relative_gap(fine, fast, oracle)
        assert 12 < ratio < 20, (fast, ratio)


def test_tanh_sum_inverse_far_roots_and_no_clamping() -> None:
    """The port's bisection of the root-found monotone map: roots on, beside and far beyond the
    first bracket ±10 come back to rounding, ``dx/dy = 1/f'(x)``, and a root past the reach
    ±655,360 gives NaN, not a clamped value."""
    K = 2
    values = np.array([0.0, 9.99, 10.0, 10.01, 1e3, 4.5e4, 3e5, 6e5])
    x0 = jnp.asarray(np.concatenate([values, -values[1:]]))
    p = jnp.asarray(0.7 * np.random.default_rng(0).standard_normal((1 + 3 * K, x0.size)))
    y = pj.tanh_sum(x0, p, K)
    x = pj.tanh_sum_inverse(y, p, K)
    slope = pj.tanh_sum_derivatives(x0, p, K)[0]
    eps = np.finfo(np.float64).eps
    allowed = 4 * eps * (jnp.abs(y) + 1) / slope + 2 * eps * jnp.abs(x0)
    assert bool(jnp.all(jnp.abs(x - x0) <= allowed)), float(jnp.max(jnp.abs(x - x0)))
    # Element-wise: the gradient of the sum is the diagonal of the Jacobian.
    dx_dy = jax.grad(lambda v: jnp.sum(pj.tanh_sum_inverse(v, p, K)))(y)
    assert np.allclose(np.asarray(dx_dy), np.asarray(1 / slope), rtol=1e-13)
    far = pj.tanh_sum_inverse(jnp.array([1e7, -1e7]), jnp.zeros((1 + 3 * K, 2)), K)
    assert bool(jnp.all(jnp.isnan(far)))
