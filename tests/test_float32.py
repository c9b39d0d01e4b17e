"""The float32 tier: every flow of :data:`float32_cases.CASES` (each native constructor, both U(1)
transforms, circular splines, and the zuko families :func:`~pathgrad_ref.interop.from_zuko`
wraps) in float32 against float64.

- Gradients: every estimator in float32 against its float64 naive oracle evaluated on the
  float32 flow's own (rounded) parameters and batch, to ``C ε₃₂ max(κ, 1)`` in relative norm.
  ``κ`` is measured, not assumed: the oracle's relative change, in units of ``ε₃₂``, when every
  parameter and batch entry is moved by a random relative ``ε₃₂``, i.e. what rounding the
  inputs alone does. ``C = 64``: float32 arithmetic is a few roundings per operation chain,
  and the worst measured ratio ``error / (ε₃₂ max(κ, 1))`` over the 160 pairs was 12.6
  (MAF with splines; 10.6 the tight-bound NSF), so 64 leaves a factor 5; a wrong formula is
  off by O(1), i.e. ``1/ε₃₂ ≈ 8e6`` units. The root-found zuko families (solver tolerance
  1e-6 in float32) measured at most 15.7 (GF, reverse-KL orientation: its erf/erfinv cancel
  near ±1 inside the map, likely the cause: ``κ`` moves inputs only), 5.8 BPF, 4.1 NAF, 1.1 SOSPF;
  the native root-found ``TanhSum`` couplings 1.0; the continuous flow (RK4 at 16 steps, whose
  float64 solver gap to the oracle, 1.8e-7, is part of the error) 1.3.
- Round trips ``T⁻¹(T(z))`` of points on and one ulp beside the spline bounds, in the tails, on
  the knots of every native spline coupling, and at the seams of the circle, to
  ``C ε₃₂ (1 + |z| + σ)`` per element, ``σ`` the float64 inverse's response (in units of
  ``ε₃₂``) to a relative ``ε₃₂`` change of ``x = T(z)``, i.e. the error that rounding ``x`` to
  float32 alone causes. Measured at most 11.8 (U(1) tan mixture) of ``C = 64``; for the
  root-found zuko families the roots sit on, beside and beyond the solver's first bracket
  ``±10``: at most 27.4 (GF, the same cancellation), 4.8 NAF, 4.3 BPF, 0.9 SOSPF; 0.5 for the
  native ``TanhSum`` couplings, whose density direction's last roots are those points.
- Nothing non-finite anywhere: outputs, log-determinants, gradients.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from float32_cases import CASES, EPS32, Case, batch, edge_points, flows
from support import rel_err
from torch import Tensor

from pathgrad_ref.estimators import ESTIMATORS, gradient

C_GRAD = 64.0
C_ROUND_TRIP = 64.0

# Each estimator's float64 oracle: its naive twin (the naive estimators are their own).
ORACLE = {name: name for name in ESTIMATORS if name.endswith("-naive")}
ORACLE.update(
    {
        "reverse-path-fast": "reverse-path-naive",
        "reverse-path-dropin": "reverse-path-naive",
        "reverse-standard": "reverse-standard-naive",
        "forward-path-fast": "forward-path-naive",
        "forward-path-gdreg": "forward-path-naive",
        "forward-standard": "forward-standard-naive",
    }
)
assert ORACLE.keys() == ESTIMATORS.keys(), "a new estimator needs its oracle here"
ORACLES = sorted(set(ORACLE.values()))


def _finite(g: dict[str, Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in g.values())


def condition(oracle: str, f64: torch.nn.Module, target: object, b64: Tensor) -> float:
    """``κ``: the relative change of the float64 oracle gradient, in units of ``ε₃₂``, when the
    parameters and the batch are each moved by a random relative ``ε₃₂``."""
    ref = gradient(oracle, f64, target, b64)  # type: ignore[arg-type]
    moved = copy.deepcopy(f64)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in moved.parameters():
            p.mul_(1.0 + EPS32 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    b_moved = b64 * (1.0 + EPS32 * torch.randn(b64.shape, generator=gen, dtype=b64.dtype))
    return rel_err(gradient(oracle, moved, target, b_moved), ref) / EPS32  # type: ignore[arg-type]


@pytest.mark.parametrize("oracle", ORACLES)
@pytest.mark.parametrize("case_name", list(CASES))
def test_estimators_float32_match_float64_oracle(case_name: str, oracle: str) -> None:
    case = CASES[case_name]
    if case_name.startswith("zuko"):
        pytest.importorskip("zuko")
    f32, f64, target = flows(case)
    b32 = batch(case, f64, target, oracle).float()
    b64 = b32.double()
    ref = gradient(oracle, f64, target, b64)
    assert _finite(ref)
    kappa = condition(oracle, f64, target, b64)
    tol = C_GRAD * EPS32 * max(kappa, 1.0)
    for name in [e for e, o in ORACLE.items() if o == oracle]:
        g = gradient(name, f32, target, b32)
        assert all(v.dtype == torch.float32 for v in g.values())
        assert _finite(g), (name, "non-finite float32 gradient")
        err = rel_err({k: v.double() for k, v in g.items()}, ref)
        assert err <= tol, (name, f"rel err {err:.2e} > {C_GRAD:g} eps max(kappa={kappa:.0f}, 1)")


def _wrap(d: Tensor, case: Case) -> Tensor:
    return torch.remainder(d + math.pi, 2 * math.pi) - math.pi if case.periodic else d


@pytest.mark.parametrize("case_name", list(CASES))
def test_round_trip_at_bounds_knots_and_tails(case_name: str) -> None:
    case = CASES[case_name]
    if case_name.startswith("zuko"):
        pytest.importorskip("zuko")
    f32, f64, _ = flows(case)
    z = edge_points(case, f32)
    with torch.no_grad():
        x, log_det = f32.transform(z)
        z_back, log_det_inv = f32.inverse_transform(x)
        for t in (x, log_det, z_back, log_det_inv):
            assert t.dtype == torch.float32 and bool(torch.isfinite(t).all())
        x64, _ = f64.transform(z.double())
        sign = torch.randint(0, 2, x64.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
        z_moved, _ = f64.inverse_transform(x64 * (1.0 + EPS32 * sign))
    sigma = _wrap(z_moved - z.double(), case).abs() / EPS32
    err = _wrap(z_back.double() - z.double(), case).abs()
    unit = EPS32 * (1.0 + z.double().abs() + sigma)
    worst = float((err / unit).max())
    assert worst <= C_ROUND_TRIP, f"round trip {worst:.1f} units > {C_ROUND_TRIP:g}"
