"""Every layer against dense autograd: round trip, log-det, and both score steps."""

from __future__ import annotations

import pytest
import torch
from support import dense_log_det, dense_score_step, flat_map, perturb, rel_err

from pathgrad_ref.flows import (
    MLP,
    AdditiveCoupling,
    AffineCoupling,
    GlobalScaling,
    Layer,
    alternating_mask,
    checkerboard_mask,
    real_nvp,
    z2_nice,
)

SHAPE = (4, 3)


def _layer(kind: str) -> Layer:
    if kind == "affine-checkerboard":
        m = checkerboard_mask(SHAPE, 1)
        n = int(m.sum())
        return AffineCoupling(m, MLP(m.numel() - n, 2 * n, (8, 8), "tanh"))
    if kind == "affine-alternating":
        m = alternating_mask((5,), 0)
        n = int(m.sum())
        return AffineCoupling(m, MLP(5 - n, 2 * n, (8,), "relu"))
    if kind == "additive-z2":
        m = checkerboard_mask(SHAPE, 0)
        n = int(m.sum())
        return AdditiveCoupling(m, MLP(m.numel() - n, n, (8, 8), "tanh", bias=False))
    if kind == "scaling":
        return GlobalScaling(SHAPE, log_scale=0.3)
    raise ValueError(kind)


KINDS = ["affine-checkerboard", "affine-alternating", "additive-z2", "scaling"]


@pytest.fixture(params=KINDS)
def layer(request: pytest.FixtureRequest, device: torch.device, dtype: torch.dtype) -> Layer:
    torch.manual_seed(0)
    lay = _layer(request.param).to(device=device, dtype=dtype)
    perturb(lay, 0.5)
    return lay


def _shape(layer: Layer) -> tuple[int, ...]:
    return tuple(layer.event_shape)  # type: ignore[arg-type]


def _inputs(layer: Layer, n: int = 6) -> torch.Tensor:
    p = next(layer.parameters())
    return torch.randn(n, *_shape(layer), dtype=p.dtype, device=p.device)


def test_round_trip(layer: Layer, exact_tol: float) -> None:
    x = _inputs(layer)
    y, ld = layer(x)
    x_back, ld_inv = layer.inverse(y)
    assert rel_err(x_back, x) < exact_tol
    assert torch.allclose(ld + ld_inv, torch.zeros_like(ld), atol=exact_tol)
    assert rel_err(y, x) > 1e-3, "parameters were perturbed: the layer must not be the identity"


@pytest.mark.parametrize("inverse", [False, True])
def test_log_det_matches_slogdet(layer: Layer, inverse: bool, exact_tol: float) -> None:
    shape = _shape(layer)
    x = _inputs(layer)
    f = layer.inverse if inverse else layer.forward
    ref = dense_log_det(flat_map(lambda u: f(u)[0], shape), x.flatten(1))
    got = f(x)[1]
    assert torch.allclose(got, ref, rtol=exact_tol, atol=exact_tol)


@pytest.mark.parametrize("inverse", [False, True])
def test_score_step_matches_dense(layer: Layer, inverse: bool, exact_tol: float) -> None:
    shape = _shape(layer)
    x = _inputs(layer).requires_grad_(True)
    score = torch.randn_like(x)
    step = layer.inverse_and_score if inverse else layer.forward_and_score
    y, log_det, score_y = step(x, score)
    f = layer.inverse if inverse else layer.forward
    ref = dense_score_step(
        flat_map(lambda u: f(u)[0], shape), x.detach().flatten(1), score.flatten(1)
    )
    assert rel_err(score_y.flatten(1), ref) < exact_tol
    y_ref, ld_ref = f(x.detach())
    assert rel_err(y.detach(), y_ref) < exact_tol
    assert torch.allclose(log_det.detach(), ld_ref, atol=exact_tol)
    assert not score_y.requires_grad
    assert y.requires_grad, "the output keeps the graph in the parameters"


def test_score_step_leaves_graph_usable(layer: Layer) -> None:
    x = _inputs(layer).requires_grad_(True)
    y, _, _ = layer.forward_and_score(x, torch.randn_like(x))
    y.sum().backward()  # the graph was retained for the final backward of the surrogate
    assert any(p.grad is not None for p in layer.parameters())


def test_score_step_needs_grad_input() -> None:
    lay = _layer("affine-checkerboard").double()
    x = torch.randn(2, *SHAPE, dtype=torch.float64)
    with pytest.raises(ValueError, match="requires grad"):
        lay.forward_and_score(x, x)


class _DetachingMLP(MLP):
    """A conditioner that cuts its input from the graph: the failure the score step must name."""

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        return super().forward(b.detach())


def test_score_step_raises_on_broken_graph() -> None:
    m = checkerboard_mask(SHAPE, 1)
    n = int(m.sum())
    lay = AffineCoupling(m, _DetachingMLP(m.numel() - n, 2 * n, (8,), "tanh")).double()
    x = torch.randn(3, *SHAPE, dtype=torch.float64, requires_grad=True)
    for step in (lay.forward_and_score, lay.inverse_and_score):
        with pytest.raises(RuntimeError, match=r"graph from the passive half b .* is broken"):
            step(x, torch.randn_like(x))


def test_masks() -> None:
    cb = checkerboard_mask((4, 6), 0)
    # every active site has only passive nearest neighbours, on the periodic lattice
    for ax in (0, 1):
        assert not bool((cb & torch.roll(cb, 1, ax)).any())
    assert int(cb.sum()) == 12 and bool((cb ^ checkerboard_mask((4, 6), 1)).all())
    alt = alternating_mask((5,), 1)
    assert alt.tolist() == [False, True, False, True, False]
    with pytest.raises(ValueError, match="parity"):
        checkerboard_mask((4, 4), 2)
    with pytest.raises(ValueError, match="active and passive"):
        AffineCoupling(torch.ones(4, dtype=torch.bool), MLP(1, 8))


def test_mlp_bias_free_tanh_is_odd() -> None:
    net = MLP(5, 3, (7, 7), "tanh", bias=False, zero_init_last=False).double()
    b = torch.randn(4, 5, dtype=torch.float64)
    assert torch.allclose(net(-b), -net(b), atol=1e-15)
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(2, 2, activation="sigmoid-ish")


def test_z2nice_is_odd(device: torch.device, dtype: torch.dtype, exact_tol: float) -> None:
    flow = z2_nice((4, 4), n_couplings=4, hidden=(8, 8)).to(device=device, dtype=dtype)
    perturb(flow)
    z = flow.base.sample(5)
    x, log_q = flow(z)
    x_neg, log_q_neg = flow(-z)
    assert rel_err(x_neg, -x) < exact_tol
    assert torch.allclose(log_q_neg, log_q, rtol=exact_tol)
    assert torch.allclose(flow.log_prob(-x), flow.log_prob(x), rtol=exact_tol)


def test_flow_consistency(device: torch.device, dtype: torch.dtype, exact_tol: float) -> None:
    flow = z2_nice((4, 4), n_couplings=4, hidden=(8, 8)).to(device=device, dtype=dtype)
    perturb(flow)
    z = flow.base.sample(5)
    x, log_q = flow(z)
    z_back, log_q_inv = flow.inverse(x)
    assert rel_err(z_back, z) < exact_tol
    assert torch.allclose(log_q_inv, log_q, rtol=exact_tol)
    # log q from the layers equals log q0 − slogdet of the Jacobian of the whole flow
    ref = flow.base.log_prob(z) - dense_log_det(
        flat_map(lambda u: flow.transform(u)[0], flow.event_shape), z.flatten(1)
    )
    assert torch.allclose(log_q, ref, rtol=exact_tol)
    x2, log_q2, _ = flow.forward_and_score(z.requires_grad_(True))
    assert rel_err(x2.detach(), x) < exact_tol
    assert torch.allclose(log_q2, log_q, rtol=exact_tol)


@pytest.mark.parametrize("kind", ["realnvp", "z2nice"])
def test_flow_score_against_dense_inverse_transpose(
    kind: str, device: torch.device, dtype: torch.dtype, exact_tol: float
) -> None:
    """The whole flow's fast-path scores against dense linear algebra on the whole map:
    forward, ``∇_x log q(x) = J^{-T}(∇_z log q0(z) − ∇_z log|det J(z)|)`` with ``J = ∂T/∂z``;
    inverse, ``J_inv^{-T}(s − ∇_x log|det J_inv(x)|)`` with ``J_inv = ∂T^{-1}/∂x`` for a given
    data-space score ``s``. No layer structure enters the references."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if kind == "realnvp":
            flow = real_nvp(5, n_couplings=4, hidden=(8,))
        else:
            flow = z2_nice((4, 4), n_couplings=4, hidden=(8,))
    flow = flow.to(device=device, dtype=dtype)
    perturb(flow, 0.5)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(4, *flow.event_shape, generator=gen, dtype=torch.float64).to(
        device=device, dtype=dtype
    )
    s_data = torch.randn(z.shape, generator=gen, dtype=torch.float64).to(z)
    shape = flow.event_shape
    push = flat_map(lambda u: flow.transform(u)[0], shape)
    pull = flat_map(lambda u: flow.inverse_transform(u)[0], shape)

    x, _, score = flow.forward_and_score(z.clone().requires_grad_(True))
    ref = dense_score_step(push, z.flatten(1), flow.base.score(z).flatten(1))
    assert rel_err(score.flatten(1), ref) < exact_tol

    xd = x.detach()
    _, _, score_z = flow.inverse_and_score(xd.clone().requires_grad_(True), s_data)
    ref_z = dense_score_step(pull, xd.flatten(1), s_data.flatten(1))
    assert rel_err(score_z.flatten(1), ref_z) < exact_tol
