"""``from_zuko``: zuko's flows through every estimator, against the naive oracle.

Five zuko flows (NICE, RealNVP, NSF with ``passes=2``, NSF fully autoregressive, NCSF on a
torus target), plus MAF with ``passes=2``, each in both orientations: zuko's own (``transform``
maps data to latent) and its reverse-KL tutorial's (``Flow(flow.transform.inv, flow.base)``).
The equalities are exact identities (float64, relative error ≤ 1e-9); the closed-form layers are
also checked against zuko's own ``log_prob`` and ``rsample``, which run zuko's code, not ours.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from support import assert_sticks_the_landing, perturb, rel_err
from torch import Tensor

from pathgrad_ref.estimators import direction, get_estimator, gradient
from pathgrad_ref.flows import Flow
from pathgrad_ref.targets import GaussianMixture, Target

zuko = pytest.importorskip("zuko")

from pathgrad_ref.interop import from_zuko  # noqa: E402
from pathgrad_ref.interop.zuko import (  # noqa: E402
    ZukoAutoregressive,
    ZukoCoupling,
    ZukoTransform,
)

# Each fast estimator against the oracle of its gradient (the naive twin); one oracle
# evaluation serves every estimator that shares it.
ORACLE = {
    "reverse-path-naive": ("reverse-path-fast", "reverse-path-dropin"),
    "reverse-standard-naive": ("reverse-standard",),
    "forward-path-naive": ("forward-path-fast", "forward-path-gdreg"),
    "forward-standard-naive": ("forward-standard",),
}

FLOWS = ("nice", "realnvp", "maf-coupling", "nsf-coupling", "nsf-autoregressive", "ncsf")
ORIENTATIONS = ("zuko", "reverse-kl")
# The layer classes each flow's transforms become (the closed form where the adapter has one):
# a masked autoregressive transform with passes=2 is a coupling with fixed maps on its passive half.
LAYER = {
    "nice": {ZukoCoupling},
    "realnvp": {ZukoCoupling},
    "maf-coupling": {ZukoCoupling},
    "nsf-coupling": {ZukoCoupling},
    "nsf-autoregressive": {ZukoAutoregressive},
    "ncsf": {ZukoTransform},
}


class Torus(Target):
    """A coupled von Mises density on ``[−π, π)^d``: ``S(x) = −κ Σ_i cos(x_i − μ_i)
    − J Σ_i cos(x_i − x_{i+1})`` (unnormalised), for the circular spline flow."""

    def __init__(self, dim: int, kappa: float = 1.5, coupling: float = 0.7) -> None:
        self.event_shape = (dim,)
        self.mu = [0.5 * (i + 1) - 1.0 for i in range(dim)]
        self.kappa, self.coupling = kappa, coupling

    def action(self, x: Tensor) -> Tensor:
        mu = torch.tensor(self.mu, dtype=x.dtype, device=x.device)
        single = -self.kappa * torch.cos(x - mu).sum(-1)
        pair = -self.coupling * torch.cos(x[..., :-1] - x[..., 1:]).sum(-1)
        return single + pair


def _zuko_flow(name: str) -> Any:
    """A small seeded zuko flow in float64, parameters perturbed so that no layer is trivial."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hidden = {"hidden_features": (8,)}
        flow: Any
        if name == "nice":
            flow = zuko.flows.NICE(
                4, transforms=3, univariate=zuko.transforms.AdditiveTransform, shapes=[()], **hidden
            )
        elif name == "realnvp":
            flow = zuko.flows.RealNVP(4, transforms=3, **hidden)
        elif name == "maf-coupling":
            flow = zuko.flows.MAF(4, transforms=3, passes=2, **hidden)
        elif name == "nsf-coupling":
            flow = zuko.flows.NSF(4, transforms=3, passes=2, bins=4, **hidden)
        elif name == "nsf-autoregressive":
            flow = zuko.flows.NSF(3, transforms=2, bins=4, **hidden)
        elif name == "ncsf":
            flow = zuko.flows.NCSF(3, transforms=2, bins=4, **hidden)
        else:
            raise ValueError(name)
    flow = flow.double()
    perturb(flow, 0.1, seed=1)
    return flow


def _setup(name: str, orientation: str) -> tuple[Any, Flow, Target]:
    """``(zuko flow, wrapped flow, target)``; the zuko flow in the requested orientation."""
    flow = _zuko_flow(name)
    if orientation == "reverse-kl":
        flow = zuko.lazy.Flow(flow.transform.inv, flow.base)
    wrapped = from_zuko(flow)
    dim = wrapped.event_shape[0]
    target: Target = Torus(dim) if name == "ncsf" else GaussianMixture(dim)
    return flow, wrapped, target


def _base_batch(wrapped: Flow, n: int, seed: int = 3) -> Tensor:
    return wrapped.base.sample(n, torch.Generator().manual_seed(seed))


def _target_batch(name: str, wrapped: Flow, target: Target, n: int, seed: int = 1) -> Tensor:
    """Points standing in for ``x ~ p`` (the equalities hold at any point in the domain)."""
    gen = torch.Generator().manual_seed(seed)
    if isinstance(target, GaussianMixture):
        return target.sample(n, gen)
    with torch.no_grad():
        x, _ = wrapped(_base_batch(wrapped, n, seed))
    x = x + 0.3 * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi  # back on the torus


def _batch(name: str, estimator: str, wrapped: Flow, target: Target, n: int = 4) -> Tensor:
    if direction(estimator) == "reverse":
        return _base_batch(wrapped, n)
    return _target_batch(name, wrapped, target, n)


@pytest.fixture(params=FLOWS)
def flow_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(params=ORIENTATIONS)
def orientation(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def setup(flow_name: str, orientation: str) -> tuple[Any, Flow, Target]:
    return _setup(flow_name, orientation)


def test_layers_get_the_closed_form_where_known(
    setup: tuple[Any, Flow, Target], flow_name: str
) -> None:
    _, wrapped, _ = setup
    assert {type(layer) for layer in wrapped.layers} == LAYER[flow_name]


@pytest.mark.parametrize("oracle", list(ORACLE))
def test_estimators_agree_with_oracle(
    setup: tuple[Any, Flow, Target], flow_name: str, oracle: str
) -> None:
    _, wrapped, target = setup
    batch = _batch(flow_name, oracle, wrapped, target)
    g_oracle = gradient(oracle, wrapped, target, batch)
    assert g_oracle.keys() == dict(wrapped.named_parameters()).keys()
    for fast in ORACLE[oracle]:
        g_fast = gradient(fast, wrapped, target, batch)
        assert rel_err(g_fast, g_oracle) <= 1e-9, fast


def test_path_differs_from_standard(setup: tuple[Any, Flow, Target], flow_name: str) -> None:
    """Guard against the equality tests passing vacuously (e.g. every gradient zero)."""
    _, wrapped, target = setup
    for path, standard in [
        ("reverse-path-fast", "reverse-standard"),
        ("forward-path-fast", "forward-standard"),
    ]:
        batch = _batch(flow_name, path, wrapped, target)
        g_path = gradient(path, wrapped, target, batch)
        assert rel_err(g_path, gradient(standard, wrapped, target, batch)) > 1e-3


def test_log_prob_and_samples_match_zuko(setup: tuple[Any, Flow, Target]) -> None:
    """zuko's own code, not the adapter's: ``log_prob`` runs zuko's data-to-latent map, and
    ``rsample`` pushes a base draw through zuko's inverse; the same draw through the wrapped
    flow's sampling direction must give the same points and densities."""
    flow, wrapped, _ = setup
    torch.manual_seed(5)
    x_zuko = flow().rsample((16,))
    torch.manual_seed(5)
    z = flow().base.rsample((16,))
    with torch.no_grad():
        x, log_q = wrapped(z)
        assert torch.allclose(x, x_zuko, rtol=1e-12, atol=1e-12)
        assert torch.allclose(log_q, flow().log_prob(x_zuko), rtol=1e-10, atol=1e-10)
        assert torch.allclose(wrapped.log_prob(x_zuko), flow().log_prob(x_zuko), rtol=1e-10)
        z_back, _ = wrapped.inverse(x)
        assert torch.allclose(z_back, z, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dirn", ["reverse", "forward"])
def test_sticking_the_landing(setup: tuple[Any, Flow, Target], dirn: str) -> None:
    """At ``p = q_θ`` the path gradient of every single sample vanishes; the standard one not."""
    _, wrapped, _ = setup
    assert_sticks_the_landing(wrapped, dirn)


@pytest.mark.parametrize("orientation_name", ORIENTATIONS)
def test_parameters_are_shared(orientation_name: str) -> None:
    """The wrapped flow holds zuko's own parameter tensors: a step of an optimiser built on the
    wrapped flow moves zuko's density, and one built on zuko's flow moves the wrapped one."""
    flow, wrapped, target = _setup("realnvp", orientation_name)
    assert {id(p) for p in wrapped.parameters()} == {id(p) for p in flow.parameters()}
    x = target.sample(8, torch.Generator().manual_seed(2))
    z = _base_batch(wrapped, 8)
    before = flow().log_prob(x).detach()
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    loss, _ = get_estimator("reverse-path-fast")(wrapped, target, z)
    loss.backward()
    opt.step()
    after = flow().log_prob(x).detach()
    assert (after - before).abs().max() > 1e-4
    assert torch.allclose(wrapped.log_prob(x).detach(), after, rtol=1e-12)
    opt = torch.optim.SGD(flow.parameters(), lr=0.1)
    (-flow().log_prob(x).mean()).backward()
    opt.step()
    assert not torch.allclose(wrapped.log_prob(x).detach(), after)
    assert torch.allclose(wrapped.log_prob(x).detach(), flow().log_prob(x).detach(), rtol=1e-12)


# --- clear errors ----------------------------------------------------------------------------


def test_refuses_a_conditional_flow() -> None:
    flow = zuko.flows.NSF(3, context=2, passes=2, hidden_features=(8,))
    with pytest.raises(ValueError, match=r"MaskedAutoregressiveTransform takes 2 context"):
        from_zuko(flow)
    flow = zuko.flows.RealNVP(3, context=1, hidden_features=(8,))
    with pytest.raises(ValueError, match=r"GeneralCouplingTransform takes 1 context"):
        from_zuko(flow)


class _NoInverse(torch.distributions.Transform):
    """``y = 2x``, declared bijective but without ``_inverse``."""

    domain = torch.distributions.constraints.real_vector
    codomain = torch.distributions.constraints.real_vector
    bijective = True

    def _call(self, x: Tensor) -> Tensor:
        return 2 * x

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return torch.full(x.shape[:-1], x.shape[-1] * math.log(2.0), dtype=x.dtype)


def _with_transform(transform: Any) -> Any:
    base = zuko.flows.RealNVP(3, transforms=1, hidden_features=(8,))
    return zuko.lazy.Flow([transform, *base.transform.transforms], base.base)


def test_refuses_a_transform_without_inverse() -> None:
    flow = _with_transform(zuko.lazy.UnconditionalTransform(_NoInverse))
    with pytest.raises(
        ValueError, match=r"\(UnconditionalTransform\) \(_NoInverse\(\)\) has no inverse"
    ):
        from_zuko(flow)
    flow = _with_transform(zuko.lazy.UnconditionalTransform(torch.distributions.AbsTransform))
    with pytest.raises(ValueError, match=r"AbsTransform\(\).*not bijective"):
        from_zuko(flow)


def test_refuses_bad_bases_and_non_flows() -> None:
    flow = zuko.flows.RealNVP(3, transforms=1, hidden_features=(8,))
    trainable = zuko.lazy.UnconditionalDistribution(
        zuko.distributions.DiagNormal, torch.zeros(3), torch.ones(3)
    )
    with pytest.raises(ValueError, match=r"base distribution .* has trainable parameters"):
        from_zuko(zuko.lazy.Flow(flow.transform, trainable))
    mvn = zuko.lazy.UnconditionalDistribution(
        torch.distributions.MultivariateNormal, torch.zeros(3), torch.eye(3), buffer=True
    )
    with pytest.raises(ValueError, match=r"unsupported base distribution MultivariateNormal"):
        from_zuko(zuko.lazy.Flow(flow.transform, mvn))
    with pytest.raises(TypeError, match=r"expected a zuko.lazy.Flow, got Linear"):
        from_zuko(torch.nn.Linear(3, 3))


# --- the example -----------------------------------------------------------------------------


def test_example_runs_with_a_tiny_budget(
    one_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """``examples/zuko_reverse_kl.py`` end to end, 3 steps: both loops start from the same flow
    (equal ESS at step 0 on the shared evaluation draw) and print their final ESS."""
    path = Path(__file__).resolve().parents[1] / "examples" / "zuko_reverse_kl.py"
    spec = importlib.util.spec_from_file_location("zuko_reverse_kl_example", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    argv = ["--steps", "3", "--every", "1", "--dim", "2", "--batch", "16", "--eval-samples", "64"]
    curves = example.main(argv)
    assert [s for s, _ in curves["zuko"]] == [s for s, _ in curves["path"]] == [0, 1, 2, 3]
    assert curves["zuko"][0][1] == pytest.approx(curves["path"][0][1], rel=1e-5)
    assert all(0 < ess <= 1 for c in curves.values() for _, ess in c)
    assert "final reverse ESS after 3 steps" in capsys.readouterr().out


def test_without_zuko_the_error_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """``pathgrad_ref.interop`` imports zuko only when ``from_zuko`` is called; without zuko the
    call fails with the install command, and ``import pathgrad_ref`` never needed it."""
    from pathgrad_ref.interop import zuko as adapter

    monkeypatch.setitem(sys.modules, "zuko", None)  # makes ``import zuko`` raise ImportError
    adapter._zuko.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"pip install 'pathgrad-ref\[zuko\]'"):
            from_zuko(torch.nn.Linear(3, 3))
    finally:
        adapter._zuko.cache_clear()


@pytest.mark.compile
@pytest.mark.parametrize("name", ["reverse-path-fast", "forward-path-fast"])
def test_compiled_fast_path_equals_eager(name: str, one_thread: None) -> None:
    """Under ``torch.compile`` the zuko coupling layers take the default score step (a
    ``torch.func`` VJP); the compiled gradient equals the eager one (minutes of compilation)."""
    from pathgrad_ref.estimators import compile_estimator, per_call_finite_check

    # From scratch: a shared cache could hit the recompile limit and fall back to eager.
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    _, wrapped, target = _setup("realnvp", "reverse-kl")
    batch = _batch("realnvp", name, wrapped, target)
    with per_call_finite_check(False):
        loss, _ = compile_estimator(name)(wrapped, target, batch)
    params = dict(wrapped.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    compiled = {
        k: torch.zeros_like(p) if g is None else g
        for (k, p), g in zip(params.items(), grads, strict=True)
    }
    # Something was compiled (not an eager fall-back compared with eager).
    assert int(torch._dynamo.utils.counters["stats"]["unique_graphs"]) > 0
    assert rel_err(compiled, gradient(name, wrapped, target, batch)) <= 1e-10
    torch._dynamo.reset()
