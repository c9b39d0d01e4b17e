"""``from_zuko`` on zuko's root-found flows, and the adapter's refusals and silent paths.

NAF, UNAF, SOSPF, BPF and GF invert by root-finding; the adapter gives them the project's
solver (``pathgrad_ref/flows/implicit.py``) in place of zuko's bisection, so every estimator
equals its dense oracle (float64, relative error ≤ 1e-9). zuko's own orientation samples by
root-finding; the reverse-KL orientation (``Flow(flow.transform.inv, flow.base)``) samples by
zuko's explicit map. Each case is in the orientations where the flow is a bijection of ``R^d``
(the others are refused at wrap time, tested below). The last part plants each silent path a
review found and expects an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from support import assert_sticks_the_landing, perturb, rel_err
from torch import Tensor, nn

from pathgrad_ref.estimators import direction, gradient
from pathgrad_ref.flows import Flow, Layer
from pathgrad_ref.targets import GaussianMixture, Target

zuko = pytest.importorskip("zuko")

from pathgrad_ref.interop import from_zuko  # noqa: E402
from pathgrad_ref.interop.zuko import (  # noqa: E402
    ZukoAutoregressive,
    ZukoCoupling,
    ZukoElementwise,
    ZukoTransform,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ORACLE = {
    "reverse-path-naive": ("reverse-path-fast", "reverse-path-dropin"),
    "reverse-standard-naive": ("reverse-standard",),
    "forward-path-naive": ("forward-path-fast", "forward-path-gdreg"),
    "forward-standard-naive": ("forward-standard",),
}
HIDDEN = {"hidden_features": (8,)}
NETWORK = {"signal": 4, "network": {"hidden_features": (8,)}}


def _build(name: str, transforms: int) -> Any:
    """A small seeded zuko flow in float64, parameters perturbed so that no layer is trivial."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        flow: Any
        if name == "naf":
            flow = zuko.flows.NAF(3, transforms=transforms, **NETWORK, **HIDDEN)
        elif name == "unaf":
            flow = zuko.flows.UNAF(2, transforms=transforms, **NETWORK, **HIDDEN)
        elif name == "sospf":
            flow = zuko.flows.SOSPF(3, transforms=transforms, **HIDDEN)
        elif name == "bpf":
            flow = zuko.flows.BPF(3, transforms=transforms, **HIDDEN)
        elif name == "gf":
            flow = zuko.flows.GF(3, transforms=transforms)
        elif name == "bernstein":  # a hand-built BernsteinTransform (unbounded, linear tails)
            base = zuko.lazy.UnconditionalDistribution(
                zuko.distributions.DiagNormal, torch.zeros(3), torch.ones(3), buffer=True
            )
            layers = [
                zuko.flows.MaskedAutoregressiveTransform(
                    3, univariate=zuko.transforms.BernsteinTransform, shapes=[(6,)], **HIDDEN
                )
                for _ in range(transforms)
            ]
            flow = zuko.lazy.Flow(layers, base)
        else:
            raise ValueError(name)
    flow = flow.double()
    perturb(flow, 0.1, seed=1)
    return flow


# (family, transforms, orientation): zuko's orientation with one transform (no soft clip),
# the reverse-KL orientation with two.
CASES = [
    ("naf", 1, "zuko"),
    ("naf", 2, "reverse-kl"),
    ("sospf", 1, "zuko"),
    ("sospf", 2, "reverse-kl"),
    ("bpf", 1, "zuko"),
    ("bpf", 2, "reverse-kl"),
    ("gf", 2, "reverse-kl"),
    ("bernstein", 1, "zuko"),
    ("bernstein", 1, "reverse-kl"),
    ("unaf", 1, "reverse-kl"),
]
LAYERS = {"naf": ZukoAutoregressive, "unaf": ZukoAutoregressive, "sospf": ZukoAutoregressive}


def _oriented(flow: Any, orientation: str) -> Any:
    return zuko.lazy.Flow(flow.transform.inv, flow.base) if orientation == "reverse-kl" else flow


def _setup(name: str, transforms: int, orientation: str) -> tuple[Any, Flow, Target]:
    flow = _oriented(_build(name, transforms), orientation)
    wrapped = from_zuko(flow)
    return flow, wrapped, GaussianMixture(wrapped.event_shape[0])


def _batch(estimator: str, wrapped: Flow, n: int = 3) -> Tensor:
    """Base samples (reverse KL), or points inside the flow's image standing in for ``x ~ p``
    (forward KL): the flow's own samples, moved a little. A point outside the image has
    ``q = 0`` and no pull-back."""
    z = wrapped.base.sample(n, torch.Generator().manual_seed(3))
    if direction(estimator) == "reverse":
        return z
    with torch.no_grad():
        x, _ = wrapped(z)
    gen = torch.Generator().manual_seed(4)
    return x + 0.05 * torch.randn(x.shape, generator=gen, dtype=x.dtype)


@pytest.mark.parametrize(("name", "transforms", "orientation"), CASES)
@pytest.mark.parametrize("oracle", list(ORACLE))
def test_estimators_agree_with_oracle(
    name: str, transforms: int, orientation: str, oracle: str
) -> None:
    _, wrapped, target = _setup(name, transforms, orientation)
    batch = _batch(oracle, wrapped)
    g_oracle = gradient(oracle, wrapped, target, batch)
    assert all(torch.isfinite(g).all() for g in g_oracle.values())
    for fast in ORACLE[oracle]:
        assert rel_err(gradient(fast, wrapped, target, batch), g_oracle) <= 1e-9, fast
    # Guard against a vacuous equality: the path gradient is not the standard one.
    if oracle == "reverse-path-naive":
        assert rel_err(gradient("reverse-standard", wrapped, target, batch), g_oracle) > 1e-3


@pytest.mark.parametrize(("name", "transforms", "orientation"), CASES)
def test_explicit_direction_matches_zuko(name: str, transforms: int, orientation: str) -> None:
    """Where zuko's map is explicit the adapter computes zuko's values to rounding: the
    density direction (``log_prob``) in zuko's orientation, the samples in the reverse-KL one.
    UNAF is the exception in ``log q``: zuko takes ``log g`` as the log-derivative of ``∫g`` by
    quadrature, the adapter the derivative of the quadrature it computes (their gap is the
    quadrature's error, about 1e-4 here)."""
    flow, wrapped, _ = _setup(name, transforms, orientation)
    z = wrapped.base.sample(16, torch.Generator().manual_seed(5))
    with torch.no_grad():
        x, log_q = wrapped(z)
        z_back, _ = wrapped.inverse(x)
        assert float((z_back - z).abs().max()) <= 1e-12
        if orientation == "zuko":
            assert torch.allclose(wrapped.log_prob(x), flow().log_prob(x), rtol=1e-12, atol=1e-12)
        else:
            x_zuko = flow().transform.inv(z)  # zuko's explicit sampling map
            assert float((x - x_zuko).abs().max()) <= 1e-12
            tol = 1e-3 if name == "unaf" else 1e-12
            # zuko's log_prob of x inverts by its bisection (to 1e-6): compare via its explicit
            # map's log-det instead.
            _, ladj = flow().transform.inv.call_and_ladj(z)
            log_q_zuko = flow().base.log_prob(z) - ladj
            assert torch.allclose(log_q, log_q_zuko, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    ("name", "transforms", "orientation"),
    [("naf", 1, "zuko"), ("sospf", 2, "reverse-kl"), ("gf", 2, "reverse-kl")],
)
@pytest.mark.parametrize("dirn", ["reverse", "forward"])
def test_sticking_the_landing(name: str, transforms: int, orientation: str, dirn: str) -> None:
    """At ``p = q_θ`` the path gradient of every single sample vanishes; the standard one not.
    The target's force runs through the flow's inverse, root-found in one of the two
    orientations, so the implicit gradients enter the check."""
    _, wrapped, _ = _setup(name, transforms, orientation)
    assert_sticks_the_landing(wrapped, dirn)


def test_root_found_layers_get_the_project_solver() -> None:
    for name, transforms, orientation in CASES:
        if orientation != "zuko":
            continue
        _, wrapped, _ = _setup(name, transforms, orientation)
        assert all(type(layer) is ZukoAutoregressive for layer in wrapped.layers), name
        assert all(getattr(layer, "kind", None) == "monotone" for layer in wrapped.layers)
    _, gf, _ = _setup("gf", 2, "reverse-kl")
    assert {type(layer) for layer in gf.layers} == {ZukoElementwise, ZukoTransform}


def test_inverse_is_more_precise_than_zukos() -> None:
    """zuko's orientation samples by root-finding. Pushed back through zuko's own explicit map,
    our samples return to their base points to rounding; zuko's (bisection to 1e-6 on
    [−10, 10], clamped outside) do not, and a base point whose root lies beyond 10 is lost."""
    flow, wrapped, _ = _setup("naf", 1, "zuko")
    z = wrapped.base.sample(64, torch.Generator().manual_seed(6))
    with torch.no_grad():
        x, _ = wrapped(z)
        ours = float((flow().transform(x) - z).abs().max())
        theirs = float((flow().transform(flow().transform.inv(z)) - z).abs().max())
        assert ours <= 1e-12
        assert theirs > 1e3 * ours
        far = z.clone()
        far[:, 0] = flow().transform(torch.full((1, 3), 40.0, dtype=z.dtype))[0, 0]
        x_far, _ = wrapped(far)
        assert float(x_far[:, 0].min()) > 39.0
        assert float((flow().transform(x_far) - far).abs().max()) <= 1e-10
        clamped = flow().transform.inv(far)
        assert float(clamped[:, 0].max()) <= 10.0 + 1e-6  # zuko's bound, silently


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_network_weights_get_implicit_gradients_in_both_modes(mode: str) -> None:
    """NAF's monotone network receives the inverse's implicit gradients in train and eval mode
    alike (zuko passes them to its bisection's backward only in training mode)."""
    _, wrapped, target = _setup("naf", 1, "zuko")
    wrapped.train(mode == "train")
    z = _batch("reverse-path-fast", wrapped)
    g = gradient("reverse-path-fast", wrapped, target, z)
    network = {k: v for k, v in g.items() if ".univariate.network." in k}
    assert network and all(float(v.abs().max()) > 0 for v in network.values())
    g_oracle = gradient("reverse-path-naive", wrapped, target, z)
    assert rel_err(g, g_oracle) <= 1e-9


# --- every zuko flow class: works or is refused when wrapping ----------------------------------


def _every_flow() -> dict[str, Callable[[], Any]]:
    f = zuko.flows
    return {
        "NICE": lambda: f.NICE(3, transforms=2, **HIDDEN),
        "RealNVP": lambda: f.RealNVP(3, transforms=2, **HIDDEN),
        "MAF": lambda: f.MAF(3, transforms=2, **HIDDEN),
        "NSF": lambda: f.NSF(3, transforms=2, bins=4, **HIDDEN),
        "NCSF": lambda: f.NCSF(3, transforms=2, bins=4, **HIDDEN),
        "NAF": lambda: f.NAF(3, transforms=2, **NETWORK, **HIDDEN),
        "UNAF": lambda: f.UNAF(2, transforms=2, **NETWORK, **HIDDEN),
        "SOSPF": lambda: f.SOSPF(3, transforms=2, **HIDDEN),
        "BPF": lambda: f.BPF(3, transforms=2, **HIDDEN),
        "GF": lambda: f.GF(3, transforms=2),
        "CNF": lambda: f.CNF(3, **HIDDEN),
    }


# Refused at wrap time, with the reason: (class, orientation) -> message pattern.
REFUSED = {
    ("NAF", "zuko"): "inverse of a soft clip",
    ("UNAF", "zuko"): "inverse of a soft clip",
    ("SOSPF", "zuko"): "inverse of a soft clip",
    ("GF", "zuko"): "range reaches only",
}


@pytest.mark.parametrize("orientation", ["zuko", "reverse-kl"])
@pytest.mark.parametrize("cls", list(_every_flow()))
def test_every_flow_class_works_or_is_refused(cls: str, orientation: str) -> None:
    """Accepted means every estimator runs and gives finite gradients (their equality to the
    oracles is proven above and in ``test_interop_zuko.py``); refused means a ``ValueError``
    when wrapping that says why. Nothing is accepted that later crashes."""
    torch.manual_seed(0)
    flow = _oriented(_every_flow()[cls]().double(), orientation)
    pattern = REFUSED.get((cls, orientation))
    if pattern is not None:
        with pytest.raises(ValueError, match=pattern):
            from_zuko(flow)
        return
    wrapped = from_zuko(flow)
    target = GaussianMixture(wrapped.event_shape[0])
    for name in (
        "reverse-path-fast",
        "reverse-path-dropin",
        "forward-path-fast",
        "forward-standard",
    ):
        g = gradient(name, wrapped, target, _batch(name, wrapped, n=2))
        assert all(torch.isfinite(v).all() for v in g.values()), name


def test_refuses_conditional_flows_with_the_cause() -> None:
    with pytest.raises(ValueError, match="takes 2 context features"):
        from_zuko(zuko.flows.CNF(3, context=2, **HIDDEN))
    with pytest.raises(ValueError, match="takes 2 context features"):
        from_zuko(zuko.flows.NAF(3, context=2, transforms=1, **NETWORK, **HIDDEN))
    with pytest.raises(ValueError, match="takes 1 context features"):
        from_zuko(zuko.flows.GF(3, context=1, transforms=1))


def test_refuses_a_batched_base() -> None:
    flow = zuko.flows.RealNVP(3, transforms=1, **HIDDEN)
    batched = zuko.lazy.UnconditionalDistribution(
        zuko.distributions.DiagNormal, torch.zeros(2, 3), torch.ones(2, 3), buffer=True
    )
    with pytest.raises(ValueError, match=r"batch shape \(2,\)"):
        from_zuko(zuko.lazy.Flow(flow.transform, batched))


def test_base_errors_name_their_cause() -> None:
    flow = zuko.flows.RealNVP(3, transforms=1, **HIDDEN)

    def invalid(scale: Tensor) -> Any:
        raise ValueError(f"scale must be positive, got {scale.min():g}")

    broken = zuko.lazy.UnconditionalDistribution(invalid, -torch.ones(3), buffer=True)
    with pytest.raises(ValueError, match="raised ValueError: scale must be positive") as info:
        from_zuko(zuko.lazy.Flow(flow.transform, broken))
    assert "unconditional" not in str(info.value)


# --- non-standard bases ---------------------------------------------------------------------


def _with_base(base: Any) -> Any:
    torch.manual_seed(0)
    flow = zuko.flows.RealNVP(3, transforms=2, **HIDDEN)
    perturb(flow, 0.1, seed=1)
    return zuko.lazy.Flow(flow.transform, base).double()


BASES = {
    "diag-normal": lambda: zuko.lazy.UnconditionalDistribution(
        zuko.distributions.DiagNormal,
        torch.tensor([0.3, -0.2, 0.1]),
        torch.tensor([2.0, 0.5, 1.5]),
        buffer=True,
    ),
    "box-uniform": lambda: zuko.lazy.UnconditionalDistribution(
        zuko.distributions.BoxUniform,
        torch.tensor([-0.5, 1.0, -3.0]),
        torch.tensor([2.0, 1.5, -1.0]),
        buffer=True,
    ),
}


@pytest.mark.parametrize("base", list(BASES))
def test_non_standard_bases(base: str) -> None:
    """A base with ``loc ≠ 0``, ``scale ≠ 1`` (or an off-centre box): the wrapped log q equals
    zuko's, the base score equals autograd of the base's ``log_prob``, and every fast
    estimator equals its oracle."""
    flow = _with_base(BASES[base]())
    wrapped = from_zuko(flow)
    z = wrapped.base.sample(8, torch.Generator().manual_seed(2))
    with torch.no_grad():
        x, log_q = wrapped(z)
        assert torch.allclose(log_q, flow().log_prob(x), rtol=1e-12, atol=1e-12)
        assert torch.allclose(wrapped.base.log_prob(z), flow().base.log_prob(z), rtol=1e-12)
    u = z.clone().requires_grad_()
    log_q0 = flow().base.log_prob(u).sum()
    # zuko's box density is piecewise constant: no graph, a zero gradient.
    auto = torch.autograd.grad(log_q0, u)[0] if log_q0.requires_grad else torch.zeros_like(z)
    assert torch.allclose(wrapped.base.score(z), auto, rtol=1e-12, atol=1e-12)
    target = GaussianMixture(3)
    for oracle, fasts in ORACLE.items():
        batch = _batch(oracle, wrapped)
        g_oracle = gradient(oracle, wrapped, target, batch)
        for fast in fasts:
            assert rel_err(gradient(fast, wrapped, target, batch), g_oracle) <= 1e-9, fast


# --- the compiled branch, forced in eager mode ---------------------------------------------------


def _forced_compile_equals_oracle(
    wrapped: Flow, target: Target, monkeypatch: pytest.MonkeyPatch, label: str
) -> None:
    """The fast paths with every layer's compiled branch taken in eager mode (``is_compiling``
    forced true where the coupling step and the adapter read it) equal their oracles."""
    import pathgrad_ref.flows.coupling as coupling
    from pathgrad_ref.interop import zuko as adapter

    for fast, oracle in (
        ("reverse-path-fast", "reverse-path-naive"),
        ("forward-path-fast", "forward-path-naive"),
    ):
        batch = _batch(fast, wrapped)
        expected = gradient(oracle, wrapped, target, batch)
        with monkeypatch.context() as m:
            m.setattr(coupling, "is_compiling", lambda: True)
            m.setattr(adapter, "is_compiling", lambda: True)
            forced = gradient(fast, wrapped, target, batch)
        assert rel_err(forced, expected) <= 1e-9, (label, fast)


@pytest.mark.parametrize("cls", ["RealNVP", "MAF"])
def test_compiled_branch_of_the_coupling_step(cls: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``torch.compile`` zuko's couplings (``passes=2`` autoregressive ones too) take the
    functional branch (``Coupling._score_step_functional``); forced here, it equals the oracle."""
    torch.manual_seed(0)
    flow = {"RealNVP": zuko.flows.RealNVP, "MAF": zuko.flows.MAF}[cls]
    passes = {"passes": 2} if cls == "MAF" else {}
    zf = flow(4, transforms=2, **passes, **HIDDEN).double()
    perturb(zf, 0.1, seed=1)
    for orientation in ("zuko", "reverse-kl"):
        wrapped = from_zuko(_oriented(zf, orientation))
        assert all(type(layer) is ZukoCoupling for layer in wrapped.layers)
        _forced_compile_equals_oracle(wrapped, GaussianMixture(4), monkeypatch, orientation)


@pytest.mark.parametrize(("name", "orientation"), [("naf", "reverse-kl"), ("sospf", "zuko")])
def test_compiled_branch_of_the_autoregressive_step(
    name: str, orientation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ``torch.compile`` a fully autoregressive layer takes the default step (functional
    VJPs) instead of the triangular one; forced here in eager mode, it equals the oracle."""
    _, wrapped, target = _setup(name, 2 if orientation == "reverse-kl" else 1, orientation)
    assert any(type(layer) is ZukoAutoregressive for layer in wrapped.layers)
    _forced_compile_equals_oracle(wrapped, target, monkeypatch, orientation)


# --- each silent path the review found now raises -----------------------------------------------


class _ShiftedAffine(zuko.transforms.MonotonicAffineTransform):  # type: ignore[misc]
    """A user's affine map that adds 1 after zuko's: ``_call`` and its inverse changed."""

    def _call(self, x: Tensor) -> Tensor:
        return super()._call(x) + 1.0

    def _inverse(self, y: Tensor) -> Tensor:
        return super()._inverse(y - 1.0)


def _subclass_flow() -> Any:
    torch.manual_seed(0)
    flow = zuko.flows.MAF(3, transforms=2, passes=2, univariate=_ShiftedAffine, **HIDDEN)
    return flow.double()


def test_a_subclass_is_not_given_its_parents_closed_form() -> None:
    """Dispatch is by exact type: a subclass of ``MonotonicAffineTransform`` runs zuko's own
    code (default score step), and its log q is zuko's."""
    flow = _subclass_flow()
    wrapped = from_zuko(flow)
    assert all(type(layer) is ZukoTransform for layer in wrapped.layers)
    x = GaussianMixture(3).sample(8, torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(wrapped.log_prob(x), flow().log_prob(x), rtol=1e-12)


def test_the_wrap_time_probe_catches_a_wrong_closed_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """Were the subclass given the affine closed form (``isinstance`` dispatch, or another zuko
    version's internals), the probe against zuko's ``call_and_ladj`` refuses it."""
    from pathgrad_ref.interop import zuko as adapter

    original = adapter._kind
    monkeypatch.setattr(
        adapter,
        "_kind",
        lambda dep: "affine" if isinstance(dep.base, _ShiftedAffine) else original(dep),
    )
    with pytest.raises(ValueError, match="disagrees with zuko's own call_and_ladj"):
        from_zuko(_subclass_flow())


class _DetachingHyper(nn.Module):
    """A hyper-network that detaches its input: the conditioner's VJP is lost."""

    def __init__(self, hyper: nn.Module) -> None:
        super().__init__()
        self.hyper = hyper
        self.in_features = hyper.in_features

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.hyper(x.detach())
        return out


def test_a_detaching_hyper_network_raises() -> None:
    """``MaskedAutoregressiveTransform(passes=2)`` uses the one coupling score step, which
    raises on a broken graph from the passive half (a copy once treated it as zero)."""
    torch.manual_seed(0)
    flow = zuko.flows.MAF(3, transforms=1, passes=2, **HIDDEN).double()
    lazy = flow.transform.transforms[0]
    lazy.hyper = _DetachingHyper(lazy.hyper)
    wrapped = from_zuko(flow)
    z = _batch("reverse-path-fast", wrapped)
    with pytest.raises(RuntimeError, match="graph from the passive half b"):
        gradient("reverse-path-fast", wrapped, GaussianMixture(3), z)


class _DetachedLogDet(Layer):
    """``y = x + tanh(x)`` element-wise, whose inverse computes its log-det from a detached
    input: the default score step must refuse it."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x + torch.tanh(x), torch.log(2.0 - torch.tanh(x) ** 2).sum(1)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        x = y / 2.0
        for _ in range(60):  # Newton, differentiable in y
            x = x - (x + torch.tanh(x) - y) / (2.0 - torch.tanh(x) ** 2)
        return x, -torch.log(2.0 - torch.tanh(x.detach()) ** 2).sum(1)


class _VolumePreserving(Layer):
    """``y = x + c`` with a constant log-det, declared."""

    constant_log_det = True

    def __init__(self) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.tensor([0.3, -0.2], dtype=torch.float64))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x + self.shift, x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return y - self.shift, y.new_zeros(y.shape[0])


def test_default_score_step_refuses_a_detached_log_det() -> None:
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    score = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="log-det does not depend on its input"):
        _DetachedLogDet().forward_and_score(x, score)
    # A declared constant log-det passes, and its step is the identity on the score.
    _, _, new = _VolumePreserving().forward_and_score(x, score)
    assert torch.equal(new, score)
    undeclared = _VolumePreserving()
    undeclared.constant_log_det = False
    with pytest.raises(RuntimeError, match="must declare constant_log_det"):
        undeclared.forward_and_score(x, score)
