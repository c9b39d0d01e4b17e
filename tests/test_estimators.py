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
from support import SETUPS, FlowDensity, make_setup, perturb, rel_err, target_batch

from pathgrad_ref.estimators import ESTIMATORS, direction, get_estimator, gradient
from pathgrad_ref.flows import Flow, real_nvp
from pathgrad_ref.metrics import gradient_variance
from pathgrad_ref.targets import GaussianMixture, Target

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
        torch.manual_seed(3)
        return flow.base.sample(n)
    return target_batch(flow, target, n)


@pytest.fixture(params=SETUPS)
def setup(
    request: pytest.FixtureRequest, device: torch.device, dtype: torch.dtype
) -> tuple[Flow, Target]:
    return make_setup(request.param, device, dtype)


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
    """Central difference ``(F(θ + εv) − F(θ − εv)) / 2ε`` on a copy of the flow."""
    moved = copy.deepcopy(flow)
    params = dict(moved.named_parameters())
    values = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(dict(flow.named_parameters())[k] + sign * eps * v[k])
        with torch.no_grad():
            values.append(float(objective(moved)))
    return (values[0] - values[1]) / (2 * eps)


@pytest.mark.parametrize("dirn", ["reverse", "forward"])
def test_path_gradient_matches_finite_differences(
    setup: tuple[Flow, Target], dirn: str, dtype: torch.dtype
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
        fd = _directional_fd(flow, objective, v, eps=1e-5)
        assert abs(fd - exact) <= 1e-6 * max(1.0, abs(exact)), (fd, exact)


@pytest.mark.parametrize("dirn", ["reverse", "forward"])
def test_sticking_the_landing(setup: tuple[Flow, Target], dirn: str, exact_tol: float) -> None:
    """With ``p = q_θ`` the path gradient vanishes for every single sample; the standard
    gradient does not."""
    flow, _ = setup
    own = FlowDensity(flow)
    torch.manual_seed(11)
    with torch.no_grad():
        z = flow.base.sample(4)
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
    flow: Flow, target: Target, a: str, b: str, batches: list[torch.Tensor]
) -> torch.Tensor:
    """Per-parameter z-scores of ``mean(g_a − g_b)`` over independent batches."""
    diffs = []
    for batch in batches:
        ga, gb = gradient(a, flow, target, batch), gradient(b, flow, target, batch)
        diffs.append(torch.cat([(ga[k] - gb[k]).flatten() for k in ga]))
    d = torch.stack(diffs)
    se = d.std(0) / math.sqrt(d.shape[0])
    return d.mean(0) / se.clamp_min(1e-300)


@pytest.mark.parametrize("dirn", ["reverse", "forward"])
def test_path_and_standard_have_the_same_mean(dirn: str) -> None:
    """The score term has mean zero, so path and standard gradients agree in expectation: the
    paired difference over 300 batches is within standard errors for every parameter."""
    torch.manual_seed(0)
    flow = real_nvp(2, n_couplings=2, hidden=(8,)).double()
    perturb(flow, 0.2)
    target = GaussianMixture(2)
    gen = torch.Generator().manual_seed(5)
    batches = [
        flow.base.sample(16, gen) if dirn == "reverse" else target.sample(16, gen)
        for _ in range(300)
    ]
    zs = _paired_z_scores(flow, target, f"{dirn}-path-fast", f"{dirn}-standard", batches)
    # 2-sided Bonferroni bound for ~100 parameters at 1e-4 overall; |z| > 5.3 would be biased.
    assert float(zs.abs().max()) < 5.3


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


def test_biased_estimator_is_detected() -> None:
    """The mean-agreement statistic rejects a gradient that differs from the standard one by a
    20% scaling, so the agreement test above can fail."""
    torch.manual_seed(0)
    flow = real_nvp(2, n_couplings=2, hidden=(8,)).double()
    perturb(flow, 0.2)
    target = GaussianMixture(2)
    gen = torch.Generator().manual_seed(5)
    batches = [flow.base.sample(16, gen) for _ in range(300)]
    diffs = []
    for batch in batches:
        g = gradient("reverse-path-fast", flow, target, batch)
        gs = gradient("reverse-standard", flow, target, batch)
        diffs.append(torch.cat([(1.2 * g[k] - gs[k]).flatten() for k in g]))
    d = torch.stack(diffs)
    zs = d.mean(0) / (d.std(0) / math.sqrt(d.shape[0]))
    assert float(zs.abs().max()) > 5.3


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


def test_bad_device() -> None:
    flow, target = make_setup("realnvp-gmm", torch.device("cpu"), torch.float64)
    meta = torch.zeros(3, 4, dtype=torch.float64, device="meta")
    with pytest.raises(ValueError, match="expected device cpu"):
        get_estimator("reverse-standard")(flow, target, meta)
