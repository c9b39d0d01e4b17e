"""``from_zuko`` on zuko's continuous flow (``CNF``: ``FFJTransform``).

The wrapped layer is a :class:`~pathgrad_ref.flows.ContinuousLayer` on zuko's own vector field
``f(t, x)`` and parameters, solved by the project's fixed-step RK4 where zuko runs its adaptive
solver. So nothing here agrees to rounding: with ``h = 1/steps``,

- the wrapped ``log_prob`` and samples equal zuko's to the two solvers' errors (RK4's, and
  zuko's at its tolerances, whose log-determinant is the coarser of the two);
- every fast estimator equals its naive oracle to RK4's error: the oracle differentiates the
  discrete RK4 map exactly, the fast path integrates the score ODE with the same RK4 steps. On a
  smooth (tanh) field the gap falls as ``h⁴``, checked by halving the step; on zuko's default
  ELU field, whose divergence has kinks, they converge more slowly (order 2 to 3).

Tolerances are measured gaps times about 3 (the figures are in the docstrings; ``pytest -s``
prints them). zuko's orientation samples by its backward solve (``t: 1 → 0``), the reverse-KL
orientation (``Flow(flow.transform.inv, flow.base)``) by its forward solve; both are checked.
The last part plants a wrong time direction and a wrong time convention, expects the wrap-time
check to refuse them, and checks the refusals (Hutchinson's trace, conditional CNFs, bad
``cnf_steps``, a field too fast for the steps).
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from support import perturb, rel_err
from torch import Tensor, nn

from pathgrad_ref.estimators import ESTIMATORS, direction, gradient
from pathgrad_ref.flows import ContinuousLayer, Flow
from pathgrad_ref.targets import GaussianMixture

zuko = pytest.importorskip("zuko")

from pathgrad_ref.interop import from_zuko  # noqa: E402
from pathgrad_ref.interop import zuko as adapter  # noqa: E402
from pathgrad_ref.interop.zuko import CNF_STEPS, ZukoVelocity  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

ORACLE = {
    "reverse-path-naive": ("reverse-path-fast", "reverse-path-dropin"),
    "reverse-standard-naive": ("reverse-standard",),
    "forward-path-naive": ("forward-path-fast", "forward-path-gdreg"),
    "forward-standard-naive": ("forward-standard",),
}
ORIENTATIONS = ("zuko", "reverse-kl")
DIM = 2

# The dense oracles differentiate through every RK4 stage (the forward ones Newton-refine the
# inverse through it too), so the estimators are compared at 8 steps on a smooth field, where
# the measured fast-vs-oracle gaps are 4.8e-6 to 4.0e-5 (and 20 to 50 times smaller at 16).
ESTIMATOR_STEPS = 8
ESTIMATOR_TOL = 1.2e-4


def _build(activation: str = "elu", scale: float = 0.2) -> Any:
    """zuko's CNF on R² with one hidden layer of 8 (zuko's default ELU, or tanh), float64, its
    parameters perturbed so that the field is far from zero and depends on time."""
    kwargs: dict[str, Any] = {"hidden_features": (8,)}
    if activation == "tanh":
        kwargs["activation"] = nn.Tanh
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        flow = zuko.flows.CNF(DIM, **kwargs).double()
    perturb(flow, scale, seed=1)
    return flow


def _oriented(flow: Any, orientation: str) -> Any:
    return zuko.lazy.Flow(flow.transform.inv, flow.base) if orientation == "reverse-kl" else flow


@functools.cache
def _wrapped(activation: str, orientation: str, steps: int) -> tuple[Any, Flow]:
    """The oriented zuko flow and its wrapping, built once per session (nothing below changes
    their parameters; the wrap-time check runs zuko's reference solve)."""
    flow = _oriented(_build(activation), orientation)
    return flow, from_zuko(flow, cnf_steps=steps)


def _zuko_tight(flow: Any, tol: float = 1e-9) -> Any:
    """zuko's own distribution with its ODE solved at ``atol = rtol = tol``."""
    dist = flow()
    dist.transform.atol = dist.transform.rtol = tol
    return dist


def _batch(estimator: str, wrapped: Flow, n: int = 2) -> Tensor:
    """Base samples (reverse KL) or the target's samples (forward KL)."""
    if direction(estimator) == "reverse":
        return wrapped.base.sample(n, torch.Generator().manual_seed(3))
    return GaussianMixture(DIM).sample(n, torch.Generator().manual_seed(4))


def _gap(a: Tensor, b: Tensor) -> float:
    """``max |a − b| / (1 + |b|)``, the measure of the wrap-time check."""
    return float(((a - b).abs() / (1.0 + b.abs())).max())


@functools.cache
def _oracle_gaps(activation: str, orientation: str, steps: int, oracle: str) -> dict[str, float]:
    """Relative error of each fast estimator sharing ``oracle``, against it, on a GMM target
    (cached: the convergence test reuses the comparisons at 8 steps)."""
    return _oracle_gaps_of(_wrapped(activation, orientation, steps)[1], oracle)


def _oracle_gaps_of(wrapped: Flow, oracle: str) -> dict[str, float]:
    target = GaussianMixture(DIM)
    batch = _batch(oracle, wrapped)
    g_oracle = gradient(oracle, wrapped, target, batch)
    assert all(torch.isfinite(g).all() for g in g_oracle.values())
    if oracle == "reverse-path-naive":
        # Guard against a vacuous equality: the path gradient is not the standard one.
        assert rel_err(gradient("reverse-standard", wrapped, target, batch), g_oracle) > 1e-2
    return {f: rel_err(gradient(f, wrapped, target, batch), g_oracle) for f in ORACLE[oracle]}


# --- the layer and zuko's values -------------------------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "times"), [("zuko", (1.0, 0.0)), ("reverse-kl", (0.0, 1.0))]
)
def test_layer_is_zukos_field_with_shared_parameters(
    orientation: str, times: tuple[float, float]
) -> None:
    """One :class:`ContinuousLayer` on zuko's ``f`` (argument order swapped), sampling from
    ``t = 1`` to ``0`` in zuko's orientation, ``0`` to ``1`` in the reverse-KL one; its
    parameters are zuko's tensors."""
    flow, wrapped = _wrapped("elu", orientation, CNF_STEPS)
    (layer,) = wrapped.layers
    assert isinstance(layer, ContinuousLayer) and isinstance(layer.velocity, ZukoVelocity)
    assert (layer.t0, layer.t1, layer.steps) == (*times, CNF_STEPS)
    assert {id(p) for p in wrapped.parameters()} == {id(p) for p in flow.parameters()}
    ffj = flow.transform.transform if orientation == "reverse-kl" else flow.transform
    x = torch.randn(5, DIM, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(0.3)
    assert torch.equal(layer.velocity(x, t), ffj(None).f(t, x))


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_log_prob_and_samples_match_zuko(orientation: str) -> None:
    """At the default 32 steps, on zuko's default ELU field, ``|a − b| / (1 + |b|)`` over 8
    points, measured in the two orientations: against zuko's own ``log_prob`` and sampling at
    its default tolerances 2.0e-4, 2.1e-4 in ``log q`` and 6.0e-5, 5.1e-5 in the samples, mostly
    zuko's error (its trace's tolerance is relaxed a hundredfold); against zuko at 1e-9,
    RK4's error alone, 1.9e-5, 3.5e-5 and 4.4e-6, 5.3e-6. The round trip through the backward
    solve: 4.3e-9, 6.1e-9."""
    flow, wrapped = _wrapped("elu", orientation, CNF_STEPS)
    z = wrapped.base.sample(8, torch.Generator().manual_seed(5))
    with torch.no_grad():
        x, log_q = wrapped(z)
        z_back, _ = wrapped.inverse(x)
        tight = _zuko_tight(flow)
        gaps = {
            "log q (zuko)": _gap(log_q, flow().log_prob(x)),
            "sample (zuko)": _gap(x, flow().transform.inv(z)),
            "log q (tight)": _gap(log_q, tight.log_prob(x)),
            "sample (tight)": _gap(x, tight.transform.inv(z)),
            "round trip": _gap(z_back, z),
        }
    print(orientation, {k: f"{v:.1e}" for k, v in gaps.items()})
    assert gaps["log q (zuko)"] <= 6e-4
    assert gaps["sample (zuko)"] <= 2e-4
    assert gaps["log q (tight)"] <= 1e-4
    assert gaps["sample (tight)"] <= 2e-5
    assert gaps["round trip"] <= 2e-8


# --- every estimator against its oracle --------------------------------------------------------


def test_every_estimator_is_covered() -> None:
    covered = set(ORACLE) | {fast for fasts in ORACLE.values() for fast in fasts}
    assert covered == set(ESTIMATORS)


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("oracle", list(ORACLE))
def test_estimators_agree_with_oracle(orientation: str, oracle: str) -> None:
    """On a tanh field at 8 steps (module docstring)."""
    gaps = _oracle_gaps("tanh", orientation, ESTIMATOR_STEPS, oracle)
    print(orientation, {k: f"{v:.1e}" for k, v in gaps.items()})
    assert all(gap <= ESTIMATOR_TOL for gap in gaps.values()), gaps


@pytest.mark.parametrize(
    ("orientation", "oracle"),
    [("zuko", "reverse-path-naive"), ("reverse-kl", "forward-path-naive")],
)
def test_fast_path_converges_to_the_oracle(orientation: str, oracle: str) -> None:
    """The fast paths' score ODE (forward in one case, backward in the other) against the exact
    derivative of the RK4 map: halving the step divides the gap by 22 to 48 on the tanh field
    (``2⁴ = 16`` expected). An error in the score step would leave a gap that does not shrink."""
    before = _oracle_gaps("tanh", orientation, ESTIMATOR_STEPS, oracle)
    after = _oracle_gaps("tanh", orientation, 2 * ESTIMATOR_STEPS, oracle)
    print(orientation, {k: f"{before[k]:.1e} -> {after[k]:.1e}" for k in before})
    assert all(before[k] >= 10.0 * after[k] for k in before), (before, after)


def test_estimators_on_zukos_default_field() -> None:
    """zuko's ELU field (perturbed by 0.1, so that 8 steps pass the wrap-time check): the path
    gradients equal the oracle to 8e-6 (measured 2.3e-6 and 2.8e-6)."""
    flow = _build("elu", scale=0.1)
    gaps = _oracle_gaps_of(from_zuko(flow, cnf_steps=ESTIMATOR_STEPS), "reverse-path-naive")
    print(gaps)
    assert all(gap <= 8e-6 for gap in gaps.values()), gaps


# --- the wrap-time check and the refusals ---------------------------------------------------


def test_planted_wrong_time_direction_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A layer that integrates the sampling direction the wrong way (``t0``, ``t1`` swapped in
    forward and inverse both, so its round trip still holds) disagrees with zuko's solve by
    0.87 and 1.07 here (the tolerance is 1e-3) and is refused, in both orientations."""
    real = adapter._cnf_layer

    def swapped(*args: Any) -> ContinuousLayer:
        layer = real(*args)
        layer.t0, layer.t1 = layer.t1, layer.t0
        return layer

    monkeypatch.setattr(adapter, "_cnf_layer", swapped)
    for orientation in ORIENTATIONS:
        flow = _oriented(_build("tanh"), orientation)
        with pytest.raises(ValueError, match="wrong time direction") as info:
            from_zuko(flow, cnf_steps=ESTIMATOR_STEPS)
        print(info.value)


def test_planted_wrong_time_convention_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """A field read at ``1 − t`` (the time axis reversed, the direction right) is off by 2.0e-2
    here and refused."""
    monkeypatch.setattr(ZukoVelocity, "forward", lambda self, x, t: self.lazy.f(1.0 - t, x))
    with pytest.raises(ValueError, match="disagrees with zuko's own call_and_ladj") as info:
        from_zuko(_build("tanh"), cnf_steps=ESTIMATOR_STEPS)
    print(info.value)


def test_refuses_hutchinson_trace() -> None:
    flow = zuko.flows.CNF(DIM, hidden_features=(8,), exact=False).double()
    for orientation in ORIENTATIONS:
        with pytest.raises(ValueError, match="Hutchinson"):
            from_zuko(_oriented(flow, orientation))
    flow.transform.exact = True  # the same field with the exact trace
    assert isinstance(from_zuko(flow, cnf_steps=8).layers[0], ContinuousLayer)


def test_refuses_conditional_cnf() -> None:
    with pytest.raises(ValueError, match="takes 2 context features"):
        from_zuko(zuko.flows.CNF(DIM, context=2, hidden_features=(8,)).double())


@pytest.mark.parametrize(
    ("steps", "error"), [(0, ValueError), (-3, ValueError), (2.0, TypeError), (True, TypeError)]
)
def test_refuses_bad_cnf_steps(steps: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="cnf_steps must be a positive int"):
        from_zuko(_build(), cnf_steps=steps)


def test_too_few_steps_for_the_field_are_refused() -> None:
    """A field that RK4 does not resolve at ``cnf_steps`` fails the check, which says so."""
    with pytest.raises(ValueError, match="raise cnf_steps"):
        from_zuko(_build(scale=0.5), cnf_steps=2)
