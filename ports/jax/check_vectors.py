"""Run the JAX port on the committed conformance vectors and report the differences.

    python ports/jax/check_vectors.py          # largest difference per case and per group

The metric is the vectors' own: ``max|port − vector| / max(1, max|vector|)`` per array.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pathgrad_jax as pj

VECTORS = Path(__file__).resolve().parents[2] / "conformance"


def load(name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    meta = json.loads((VECTORS / name / "manifest.json").read_text())
    with np.load(VECTORS / name / "arrays.npz") as f:
        arrays = {k: np.asarray(f[k]) for k in f.files}
    return meta, arrays


def port_arrays(meta: dict[str, Any], vec: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Everything the vectors hold, recomputed by the port from the parameters and inputs."""
    model = pj.model_from_manifest(meta)
    params = {k[len("param/") :]: jnp.asarray(v) for k, v in vec.items() if k.startswith("param/")}
    n = vec["z"].shape[0]
    z = jnp.asarray(vec["z"]).reshape(n, -1)
    x = jnp.asarray(vec["x"]).reshape(n, -1)
    shape = (n, *model.event_shape)
    out: dict[str, np.ndarray] = {}

    def put(key: str, value: jax.Array, batch_shape: tuple[int, ...] = shape) -> None:
        out[key] = np.asarray(value).reshape(batch_shape if value.ndim > 1 else value.shape)

    def put_ode(key: str, i: int, x_in: jax.Array, s_in: jax.Array) -> None:
        """The RK4 steps of continuous layer ``i`` from its input ``(x_in, s_in)``."""
        layer = model.layers[i]
        if not isinstance(layer, pj.Continuous):
            return
        inverse = key == "inverse"
        trace = jax.vmap(lambda u, s: pj.ode_trace(params, layer, u, s, inverse))(x_in, s_in)
        for k, (xk, ldk, sk) in enumerate(trace, start=1):
            put(f"{key}/ode/x/{i}/{k}", xk)
            put(f"{key}/ode/log_det/{i}/{k}", ldk)
            put(f"{key}/ode/score/{i}/{k}", sk)

    xs, lds, ss = jax.vmap(lambda u: pj.forward_trace(params, model, u))(z)
    s0 = jax.vmap(lambda u: pj.score_q0(model, u))(z)
    for i in range(len(model.layers)):
        put(f"forward/x/{i}", xs[i])
        put(f"forward/log_det/{i}", lds[i])
        put(f"forward/score/{i}", ss[i])
        put_ode("forward", i, z if i == 0 else xs[i - 1], s0 if i == 0 else ss[i - 1])
    x_fwd = xs[-1]
    log_q_fwd = jax.vmap(lambda u: pj.log_q0(model, u))(z) - sum(lds)
    s_fwd = jax.vmap(lambda v: pj.action(model, v))(x_fwd)
    put("forward/log_q", log_q_fwd)
    put("forward/action", s_fwd)
    put("forward/force", jax.vmap(lambda v: pj.force(model, v))(x_fwd))

    force_x = jax.vmap(lambda v: pj.force(model, v))(x)
    zs, ilds, iss = jax.vmap(lambda v, s: pj.inverse_trace(params, model, v, s))(x, -force_x)
    last = len(model.layers) - 1
    for i in range(len(model.layers)):
        put(f"inverse/x/{i}", zs[i])
        put(f"inverse/log_det/{i}", ilds[i])
        put(f"inverse/score/{i}", iss[i])
        put_ode("inverse", i, x if i == last else zs[i + 1], -force_x if i == last else iss[i + 1])
    log_q_x = jax.vmap(lambda v: pj.log_q(params, model, v))(x)
    s_x = jax.vmap(lambda v: pj.action(model, v))(x)
    put("inverse/log_q", log_q_x)
    put("inverse/action", s_x)
    put("inverse/force", force_x)
    put("log_w/reverse", -s_fwd - log_q_fwd)
    put("log_w/forward", -s_x - log_q_x)

    for name in pj.ESTIMATORS:
        batch = z if name.startswith("reverse") else x
        value, grads = pj.value_and_gradient(name, params, model, batch)
        out[f"loss/{name}"] = np.asarray(value)
        for p, g in grads.items():
            out[f"grad/{name}/{p}"] = np.asarray(g)
    return out


def differences(vec: dict[str, np.ndarray], port: dict[str, np.ndarray]) -> dict[str, float]:
    """Per array of the vectors ``vec``: ``max|port − vector| / max(1, max|vector|)``."""
    errors: dict[str, float] = {}
    for key, expected in vec.items():
        if key.startswith("param/") or key in ("z", "x"):
            continue
        got = port[key]
        if got.shape != expected.shape:
            raise ValueError(f"{key}: shape {got.shape}, expected {expected.shape}")
        scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
        errors[key] = float(np.max(np.abs(got - expected))) / scale if expected.size else 0.0
    return errors


def main() -> int:
    for case in sorted(p.name for p in VECTORS.iterdir() if p.is_dir()):
        meta, vec = load(case)
        try:
            pj.model_from_manifest(meta)
        except pj.UnsupportedError as why:
            print(f"{case}: not covered by the JAX port ({why})")
            continue
        errs = differences(vec, port_arrays(meta, vec))
        tol = meta["tolerances"]["port_float64"]["rtol"]
        groups: dict[str, float] = {}
        for key, err in errs.items():
            group = key.split("/")[0]
            groups[group] = max(groups.get(group, 0.0), err)
        worst = max(errs, key=errs.__getitem__)
        print(f"{case}: largest difference {errs[worst]:.1e} ({worst}), tolerance {tol:.0e}")
        print("  by group: " + ", ".join(f"{g} {e:.1e}" for g, e in sorted(groups.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
