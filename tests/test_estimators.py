"""Every estimator against its full-Jacobian oracle, finite differences and sticking the landing.

The pairs below are exact identities (equal up to rounding in float64, relative error ≤ 1e-9),
not statistical statements: the optimised estimators and the naive twins compute the same
gradient of the same batch by different routes.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from support import (
    SETUPS,
    FlowDensity,
    base_batch,
    make_setup,
    perturb,
    rel_err,
    target_batch,
)

from pathgrad_ref.estimators import ESTIMATORS, direction, get_estimator, gradient
from pathgrad_ref.flows import Flow, real_nvp, u1_flow, z2_nice
from pathgrad_ref.metrics import gradient_variance
from pathgrad_ref.targets import GaussianMixture, Phi4, Target, U1Gauge

EQUAL_PAIRS = [
    ("reverse-path-fast", "reverse-path-naive"),
    ("reverse-path-dropin", "reverse-path-naive"),
    ("reverse-path-dropin", "reverse-path-fast"),
    ("reverse-standard", "reverse-standard-naive"),
    ("forward-path-fast", "forward-path-naive"),
    ("forward-path-gdreg", "forward-path-naive"),
    ("forward-path-gdreg", "forward-path-fast"),
    ("forward-standard", "forward-standard-naive"),
]


def _batch(name: str, flow: Flow, target: Target, n: int = 8) -> torch.Tensor:
    if direction(name) == "reverse":
        return base_batch(flow, n, seed=3)
    return target_batch(flow, target, n)


@pytest.fixture(params=SETUPS)
def setup_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def setup(setup_name: str, device: torch.device, dtype: torch.dtype) -> tuple[Flow, Target]:
    return make_setup(setup_name, device, dtype)


@pytest.mark.parametrize(("fast", "oracle"), EQUAL_PAIRS, ids=[f"{a}=={b}" for a, b in EQUAL_PAIRS])
def test_estimators_agree(
    setup: tuple[Flow, Target], fast: str, oracle: str, exact_tol: float
) -> None:
    flow, target = setup
    batch = _batch(fast, flow, target)
    g_fast = gradient(fast, flow, target, batch)
    g_oracle = gradient(oracle, flow, target, batch)
    assert g_fast.keys() == dict(flow.named_parameters()).keys()
    assert rel_err(g_fast, g_oracle) <= exact_tol


@pytest.mark.parametrize("dirn", ["reverse", "forward"])
def test_loss_values_equal_within_direction(
    setup: tuple[Flow, Target], dirn: str, exact_tol: float
) -> None:
    flow, target = setup
    names = [n for n in ESTIMATORS if direction(n) == dirn]
    batch = _batch(names[0], flow, target)
    results = {n: get_estimator(n)(flow, target, batch) for n in names}
    loss_ref, log_w_ref = results[names[0]]
    for name, (loss, log_w) in results.items():
        assert loss.dim() == 0 and loss.requires_grad, name
        scale = max(1.0, abs(float(loss_ref.detach())))
        assert abs(float((loss - loss_ref).detach())) <= exact_tol * scale, name
        assert log_w.shape == (batch.shape[0],) and not log_w.requires_grad, name
        assert torch.allclose(log_w, log_w_ref, rtol=exact_tol, atol=exact_tol), name
    sign = -1.0 if dirn == "reverse" else 1.0
    assert math.isclose(float(loss_ref.detach()), sign * float(log_w_ref.mean()), rel_tol=1e-12)


def test_path_differs_from_standard(setup: tuple[Flow, Target]) -> None:
    """Guard against the equality tests passing vacuously (e.g. every gradient zero)."""
    flow, target = setup
    for path, standard in [
        ("reverse-path-fast", "reverse-standard"),
        ("forward-path-fast", "forward-standard"),
    ]:
        batch = _batch(path, flow, target)
        assert (
            rel_err(gradient(path, flow, target, batch), gradient(standard, flow, target, batch))
            > 1e-3
        )


def _directional_fd(
    flow: Flow, objective: Callable[[Flow], torch.Tensor], v: dict[str, torch.Tensor], eps: float
) -> float:
    """Richardson-extrapolated central difference along ``v`` (error ``O(ε⁴)``) on a copy of
    the flow: ``(4 c(ε/2) − c(ε)) / 3`` with ``c(ε) = (F(θ + εv) − F(θ − εv)) / 2ε``."""
    moved = copy.deepcopy(flow)
    params = dict(moved.named_parameters())
    base = {k: p.detach().clone() for k, p in flow.named_parameters()}

    def central(e: float) -> float:
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(base[k] + sign * e * v[k])
                values.append(float(objective(moved)))
        return (values[0] - values[1]) / (2 * e)

    return (4 * central(eps / 2) - central(eps)) / 3


# Relative tolerances of the finite-difference checks, set above measured noise floors: with
# Richardson at ε = 1e-5 the largest |fd − exact| / max(1, |exact|) over 3 directions × both
# KL directions was 5e-11 for RealNVP and Z2Nice (rounding), and 4.2e-9 for the 8-layer U(1)
# flow, whose objective carries the bisection tolerance (1e-13) of every layer's inverse,
# divided by ε. Plain central differences at ε = 1e-5 were truncation-limited at 9e-4 there.
# Spline flows are C¹, not C²: f'' jumps at the knots, so the objective's second derivative
# jumps where a sample crosses a knot within ±ε, Richardson's O(ε⁴) no longer holds and a kink
# costs O(ε). At ε = 1e-5 that was 2e-8 (NSF) and 8e-6 (U(1) circular, whose steep splines
# cross knots within 1e-4); at ε = 1e-6 the largest error over both directions was 3.8e-10
# (NSF) and 4.7e-9 (U(1) circular).
FD_TOL = {
    "realnvp-gmm": 1e-9,
    "z2nice-phi4": 1e-9,
    "u1-gauge": 1e-7,
    "glow-gmm": 1e-9,
    "maf-gmm": 1e-9,
    "mafspline-gmm": 1e-9,
    "nsf-gmm": 5e-8,
    "u1-circular": 5e-8,
}
FD_EPS = {"nsf-gmm": 1e-6, "u1-circular": 1e-6}


@pytest.mark.parametrize("dirn", ["reverse", "forward"])
def test_path_gradient_matches_finite_differences(
    setup: tuple[Flow, Target], setup_name: str, dirn: str, dtype: torch.dtype
) -> None:
    """Reverse: ``F(θ) = mean[log q_θ0(T_θ z) + S(T_θ z)]``; forward: the same at
    ``z = T_θ0^{-1}(x)`` held fixed, ``x ~ p``. Their θ-derivative at θ0 is the path gradient."""
    if dtype != torch.float64:
        pytest.skip("finite differences need float64")
    flow, target = setup
    frozen = FlowDensity(flow)  # log q_θ0, parameters fixed at θ0
    name = f"{dirn}-path-fast"
    batch = _batch(name, flow, target)
    if dirn == "reverse":
        z = batch
    else:
        with torch.no_grad():
            z, _ = flow.inverse(batch)

    def objective(f: Flow) -> torch.Tensor:
        x, _ = f.transform(z)
        return (-frozen.action(x) + target.action(x)).mean()

    g = gradient(name, flow, target, batch)
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        v = {
            k: torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device) for k, t in g.items()
        }
        exact = sum(float((g[k] * v[k]).sum()) for k in g)
        fd = _directional_fd(flow, objective, v, eps=FD_EPS.get(setup_name, 1e-5))
        assert abs(fd - exact) <= FD_TOL[setup_name] * max(1.0, abs(exact)), (fd, exact)


@pytest.mark.parametrize("dirn", ["reverse", "forward"])
def test_sticking_the_landing(setup: tuple[Flow, Target], dirn: str, exact_tol: float) -> None:
    """With ``p = q_θ`` the path gradient vanishes for every single sample; the standard
    gradient does not."""
    flow, _ = setup
    own = FlowDensity(flow)
    z = base_batch(flow, 4, seed=11)
    with torch.no_grad():
        x, _ = flow(z)
    samples = z if dirn == "reverse" else x
    for path in (
        f"{dirn}-path-fast",
        f"{dirn}-path-naive",
        "reverse-path-dropin" if dirn == "reverse" else "forward-path-gdreg",
    ):
        for i in range(samples.shape[0]):
            one = samples[i : i + 1]
            g_std = gradient(f"{dirn}-standard", flow, own, one)
            g_path = gradient(path, flow, own, one)
            norm_std = math.sqrt(sum(float((t**2).sum()) for t in g_std.values()))
            norm_path = math.sqrt(sum(float((t**2).sum()) for t in g_path.values()))
            assert norm_std > 1e-3
            assert norm_path <= 10 * exact_tol * norm_std, (path, i, norm_path, norm_std)


def _paired_z_scores(
    ga: list[dict[str, torch.Tensor]], gb: list[dict[str, torch.Tensor]], scale_a: float = 1.0
) -> torch.Tensor:
    """Per-parameter z-scores of ``mean(scale_a·g_a − g_b)`` over independent batches, from the
    per-batch gradients ``ga[i]``, ``gb[i]``."""
    rows = [
        torch.cat([(scale_a * a[k] - b[k]).flatten() for k in a])
        for a, b in zip(ga, gb, strict=True)
    ]
    d = torch.stack(rows)
    se = d.std(0) / math.sqrt(d.shape[0])
    return d.mean(0) / se.clamp_min(1e-300)


def _bonferroni_z(n_tests: int, alpha: float = 1e-4) -> float:
    """Two-sided normal threshold at family-wise level ``alpha`` over ``n_tests`` z-scores."""
    return float(torch.special.ndtri(torch.tensor(1 - alpha / (2 * n_tests), dtype=torch.float64)))


def _unbiasedness_case(name: str, dirn: str) -> tuple[Flow, Target, list[torch.Tensor]]:
    """A small flow, a target and independent batches drawn exactly from ``q0`` (reverse) or
    from ``p`` (forward). Forward-KL unbiasedness needs exact target samples, which only the GMM
    has; for φ⁴ and U(1) the forward target is therefore ``p = q_φ`` of a second, differently
    perturbed flow of the same family, sampled exactly through that flow."""
    gen = torch.Generator().manual_seed(5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        flow: Flow
        reference: Flow
        target: Target
        if name == "gmm":
            flow = real_nvp(2, n_couplings=2, hidden=(8,)).double()
            target = GaussianMixture(2)
            reference = flow
        elif name == "phi4":
            flow = z2_nice((4, 4), n_couplings=2, hidden=(4,)).double()
            reference = z2_nice((4, 4), n_couplings=2, hidden=(4,)).double()
            target = Phi4((4, 4))
        elif name == "u1":
            flow = u1_flow(4, n_layers=8, n_mixture=2, hidden=(2,)).double()
            reference = u1_flow(4, n_layers=8, n_mixture=2, hidden=(2,)).double()
            target = U1Gauge(4, beta=1.0)
        else:
            raise ValueError(name)
    perturb(flow, 0.2, seed=1)
    # U(1) forward: 100 batches, each gradient needs bisection inverses of two 8-layer flows.
    n_batches, n = (100 if (name, dirn) == ("u1", "forward") else 200), 8
    if dirn == "reverse":
        return flow, target, [flow.base.sample(n, gen) for _ in range(n_batches)]
    if name == "gmm":
        return flow, target, [target.sample(n, gen) for _ in range(n_batches)]
    perturb(reference, 0.5, seed=2)
    with torch.no_grad():
        batches = [reference.sample(n, gen)[0] for _ in range(n_batches)]
    return flow, FlowDensity(reference), batches


UNBIASED = [
    ("gmm", "reverse-path-fast"),
    ("gmm", "forward-path-fast"),
    ("phi4", "reverse-path-dropin"),
    ("phi4", "forward-path-gdreg"),
    ("u1", "reverse-path-fast"),
    ("u1", "forward-path-fast"),
]
# Where the batches cannot resolve a 20% bias: on U(1) the forward path gradient's mean is
# small next to the standard estimator's score-term noise (measured max |z| of the 1.2-scaled
# difference over 100-200 batches: 2.3 against a threshold of 5.2; pushing the flows further
# apart makes the path gradient heavy-tailed instead). There the check shows agreement only;
# the power of the statistic in the forward direction is shown on the GMM and on φ⁴.
NO_POWER = {("u1", "forward-path-fast")}


@pytest.mark.parametrize(("case", "path"), UNBIASED, ids=[f"{c}-{p}" for c, p in UNBIASED])
def test_path_and_standard_have_the_same_mean(case: str, path: str) -> None:
    """The score term has mean zero, so path and standard gradients agree in expectation: the
    paired difference over 200 (U(1) forward: 100) independent batches is within a Bonferroni
    bound (family-wise level 1e-4) for every parameter. The same statistic must reject the path
    gradient scaled by 1.2, in the same direction and on the same batches: the test can fail."""
    dirn = direction(path)
    flow, target, batches = _unbiasedness_case(case, dirn)
    n_params = sum(p.numel() for p in flow.parameters())
    threshold = _bonferroni_z(n_params)
    standard = f"{dirn}-standard"
    g_path = [gradient(path, flow, target, b) for b in batches]
    g_standard = [gradient(standard, flow, target, b) for b in batches]
    zs = _paired_z_scores(g_path, g_standard)
    assert float(zs.abs().max()) < threshold, (float(zs.abs().max()), threshold)
    if (case, path) in NO_POWER:
        return
    biased = _paired_z_scores(g_path, g_standard, scale_a=1.2)
    assert float(biased.abs().max()) > threshold, (float(biased.abs().max()), threshold)


def test_path_gradient_variance_vanishes_at_optimum() -> None:
    """Near ``q_θ = p`` the path gradient's variance is far below the standard one's and falls
    like the squared distance to the optimum, while the standard one's stays put."""
    torch.manual_seed(0)
    flow = real_nvp(3, n_couplings=4, hidden=(16,)).double()
    perturb(flow, 0.3)
    batches = [flow.base.sample(32) for _ in range(20)]
    var: dict[tuple[str, float], float] = {}
    for dist in (1e-2, 1e-3):
        near = copy.deepcopy(flow)
        perturb(near, dist, seed=9)
        target = FlowDensity(near)  # the optimum is ``dist`` of parameter noise away
        for name in ("reverse-path-fast", "reverse-standard"):
            stats = gradient_variance(name, flow, target, batches)
            var[name, dist] = stats.total_variance()
    assert var["reverse-path-fast", 1e-3] < 1e-3 * var["reverse-standard", 1e-3], var
    ratio = var["reverse-path-fast", 1e-2] / var["reverse-path-fast", 1e-3]
    assert 50 < ratio < 200, var  # quadratic in the distance: 100
    assert math.isclose(var["reverse-standard", 1e-2], var["reverse-standard", 1e-3], rel_tol=0.2)


# --- bad input -------------------------------------------------------------------------------


def test_unknown_estimator_name() -> None:
    with pytest.raises(
        ValueError, match=r"unknown estimator 'reverse-pathfast'.*reverse-path-fast"
    ):
        get_estimator("reverse-pathfast")


@pytest.mark.parametrize("name", ["reverse-path-fast", "forward-path-fast", "reverse-path-naive"])
def test_bad_batches(name: str) -> None:
    flow, target = make_setup("realnvp-gmm", torch.device("cpu"), torch.float64)
    est = get_estimator(name)
    with pytest.raises(ValueError, match=r"expected shape \(batch, 4\)"):
        est(flow, target, torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expected dtype torch\.float64"):
        est(flow, target, torch.zeros(3, 4, dtype=torch.float32))
    bad = torch.zeros(3, 4, dtype=torch.float64)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="expected finite values"):
        est(flow, target, bad)
    bad[1, 2] = float("inf")
    with pytest.raises(ValueError, match="expected finite values"):
        est(flow, target, bad)
    with pytest.raises(ValueError, match="does not match the flow"):
        est(flow, GaussianMixture(3), torch.zeros(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="empty batch"):
        est(flow, target, torch.zeros(0, 4, dtype=torch.float64))


@pytest.mark.parametrize("name", ["forward-path-naive", "forward-standard-naive"])
def test_forward_oracle_checks_its_pullback(name: str) -> None:
    """The forward oracles take ``z* = T^{-1}(x)`` from the flow: a wrong inverse must fail
    loudly (``T(z*) ≠ x``), not move the point where the oracle evaluates."""
    flow, target = make_setup("realnvp-gmm", torch.device("cpu"), torch.float64)
    x = target_batch(flow, target, 4)
    get_estimator(name)(flow, target, x)  # the true inverse passes
    true_inverse = flow.inverse_transform

    def off_by_a_bit(xx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, log_det = true_inverse(xx)
        return z + 1e-4, log_det

    flow.inverse_transform = off_by_a_bit  # type: ignore[method-assign]
    with pytest.raises(AssertionError, match=r"pull-back failed: max \|T\(T\^-1\(x\)\) - x\|"):
        get_estimator(name)(flow, target, x)


def test_bad_device() -> None:
    flow, target = make_setup("realnvp-gmm", torch.device("cpu"), torch.float64)
    meta = torch.zeros(3, 4, dtype=torch.float64, device="meta")
    with pytest.raises(ValueError, match="expected device cpu"):
        get_estimator("reverse-standard")(flow, target, meta)
