"""A layer written as a user would write it, with ``forward`` and ``inverse`` only, gets every
estimator through the default score step of :class:`pathgrad_ref.flows.Layer`.

``MixAndWarp`` below is ``y = sas(W x + c)``: a dense invertible matrix (no triangular
structure) followed by an element-wise sinh-arcsinh warp, ``sas(v) = sinh((asinh v + ε)·e^δ)``.
Nothing in it has a hand-derived score step. The estimator-equality suite of
``tests/test_estimators.py`` runs on a flow of such layers (mixed with an affine coupling, whose
closed-form step it must compose with), in both KL directions, together with sticking the
landing, per-layer checks against dense autograd, and a compiled training step.
"""

from __future__ import annotations

import pytest
import test_estimators as suite
import torch
from support import dense_log_det, dense_score_step, perturb, rel_err
from torch import Tensor, nn

from pathgrad_ref.distributions import StandardNormal
from pathgrad_ref.estimators import gradient
from pathgrad_ref.flows import MLP, AffineCoupling, Flow, Layer, alternating_mask
from pathgrad_ref.targets import GaussianMixture, Target

pytestmark = pytest.mark.usefixtures("one_thread")

DIM = 4


class MixAndWarp(Layer):
    """``y = sas(W x + c)``, ``sas(v) = sinh((asinh v + ε)·e^δ)`` element-wise; ``(N, d)``.

    ``log|det ∂y/∂x| = log|det W| + Σ [δ + log cosh u − ½ log(1 + v²)]``, ``u = (asinh v + ε)e^δ``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.event_shape = (dim,)
        self.weight = nn.Parameter(torch.eye(dim) + 0.3 * torch.randn(dim, dim))
        self.shift = nn.Parameter(torch.zeros(dim))
        self.skew = nn.Parameter(torch.zeros(dim))  # ε
        self.log_tail = nn.Parameter(torch.zeros(dim))  # δ

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        v = x @ self.weight.T + self.shift
        u = (torch.asinh(v) + self.skew) * torch.exp(self.log_tail)
        ladj = (self.log_tail + torch.log(torch.cosh(u)) - 0.5 * torch.log1p(v**2)).sum(1)
        return torch.sinh(u), ladj + torch.linalg.slogdet(self.weight)[1]

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        w = torch.asinh(y) * torch.exp(-self.log_tail) - self.skew
        v = torch.sinh(w)
        ladj = (-self.log_tail + torch.log(torch.cosh(w)) - 0.5 * torch.log1p(y**2)).sum(1)
        x = torch.linalg.solve(self.weight, (v - self.shift).T).T
        return x, ladj - torch.linalg.slogdet(self.weight)[1]


class Detaching(MixAndWarp):
    """A broken user layer: its inverse leaves the autograd graph."""

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        x, ladj = super().inverse(y.detach())
        return x, ladj


def user_flow(seed: int = 0) -> Flow:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mask = alternating_mask((DIM,), 0)
        layers: list[Layer] = [
            MixAndWarp(DIM),
            AffineCoupling(mask, MLP(DIM // 2, DIM, (8,), "tanh")),
            MixAndWarp(DIM),
        ]
        flow = Flow(StandardNormal((DIM,)), layers).double()
    perturb(flow, 0.2, seed=seed)
    return flow


@pytest.fixture
def setup() -> tuple[Flow, Target]:
    return user_flow(), GaussianMixture(DIM)


# The suite's test functions are called through their module (imported by name they would be
# collected a second time here).
PAIRS = suite.EQUAL_PAIRS


@pytest.mark.parametrize(("fast", "oracle"), PAIRS, ids=[f"{a}=={b}" for a, b in PAIRS])
def test_user_layer_estimators_agree(setup: tuple[Flow, Target], fast: str, oracle: str) -> None:
    suite.test_estimators_agree(setup, fast, oracle, exact_tol=1e-9)


@pytest.mark.parametrize("dirn", ["reverse", "forward"])
def test_user_layer_loss_values(setup: tuple[Flow, Target], dirn: str) -> None:
    suite.test_loss_values_equal_within_direction(setup, dirn, exact_tol=1e-9)


def test_user_layer_path_differs_from_standard(setup: tuple[Flow, Target]) -> None:
    suite.test_path_differs_from_standard(setup)


@pytest.mark.parametrize("dirn", ["reverse", "forward"])
def test_user_layer_sticks_the_landing(setup: tuple[Flow, Target], dirn: str) -> None:
    suite.test_sticking_the_landing(setup, dirn, exact_tol=1e-9)


@pytest.mark.parametrize("inverse", [False, True])
def test_default_score_step_matches_dense(inverse: bool) -> None:
    torch.manual_seed(1)
    layer = MixAndWarp(DIM).double()
    perturb(layer, 0.4)
    x = torch.randn(6, DIM, dtype=torch.float64)
    score = torch.randn_like(x)
    f = layer.inverse if inverse else layer.forward
    step = layer.inverse_and_score if inverse else layer.forward_and_score
    y, log_det, score_y = step(x.clone().requires_grad_(True), score)
    ref = dense_score_step(lambda u: f(u[None])[0][0], x, score)
    assert rel_err(score_y, ref) < 1e-10
    assert not score_y.requires_grad and y.requires_grad and log_det.requires_grad
    assert torch.allclose(log_det, dense_log_det(lambda u: f(u[None])[0][0], x), atol=1e-12)
    y_ref, _ = f(x)
    assert rel_err(y.detach(), y_ref.detach()) < 1e-14
    # the returned outputs keep the graph in the parameters
    log_det.sum().backward()
    assert layer.weight.grad is not None and layer.log_tail.grad is not None


def test_default_score_step_under_vmap() -> None:
    """The step is built on ``torch.func.vjp``, so other ``torch.func`` transforms compose with
    it: one sample at a time under ``vmap`` equals the batched step."""
    torch.manual_seed(2)
    layer = MixAndWarp(DIM).double()
    perturb(layer, 0.4)
    x = torch.randn(5, DIM, dtype=torch.float64)
    score = torch.randn_like(x)
    batched = layer.forward_and_score(x, score)[2]
    one = torch.func.vmap(lambda u, s: layer.forward_and_score(u[None], s[None])[2][0])
    assert rel_err(one(x, score), batched) < 1e-13


def test_disconnected_vjp_raises() -> None:
    """A VJP that finds no path to the input must fail loudly, not become a zero score."""
    layer = Detaching(DIM).double()
    x = torch.randn(3, DIM, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"inverse\(\) output does not depend on its input"):
        layer.forward_and_score(x, torch.randn_like(x))


@pytest.mark.compile
def test_user_flow_compiled_step_equals_oracle() -> None:
    """A compiled training step of the reverse fast path on the user flow: same gradient as the
    naive oracle (``tests/test_compile.py`` has the rationale of the step)."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    flow, target = user_flow(), GaussianMixture(DIM)
    z = flow.base.sample(6, torch.Generator().manual_seed(3))
    for name in ("reverse-path-fast", "forward-path-fast"):
        batch = z if name.startswith("reverse") else target.sample(6, torch.Generator())
        oracle = gradient(name.replace("fast", "naive"), flow, target, batch)

        def step(b: Tensor, name: str = name) -> None:
            from pathgrad_ref.estimators import get_estimator

            loss, _ = get_estimator(name)(flow, target, b)
            loss.backward()

        compiled = torch.compile(step)
        for p in flow.parameters():
            p.grad = None
        compiled(batch)
        assert int(torch._dynamo.utils.counters["stats"]["unique_graphs"]) >= 1
        got = {k: p.grad.detach().clone() for k, p in flow.named_parameters() if p.grad is not None}
        assert got.keys() == oracle.keys()
        assert rel_err(got, oracle) < 1e-10, name
    torch._dynamo.reset()
