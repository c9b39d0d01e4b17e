"""Glow's layers and the masked autoregressive layer against dense autograd.

Every layer: the round trip, both log-dets against ``slogdet`` of the autograd Jacobian, and both
score steps, the closed-form ones AND the default of :class:`Layer` (one VJP through the other
direction), against ``tests/support.py::dense_score_step``; the MADE conditioner's autoregressive
structure; the constructors' identity at initialisation; ActNorm's data-dependent
initialisation; every layer on the ``meta`` device. The estimator-equality, finite-difference,
sticking-the-landing and meta suites run on ``glow_flow`` and ``masked_autoregressive_flow``
through the ``glow-gmm`` and ``maf-gmm`` setups of ``tests/support.py``.
"""

from __future__ import annotations

import pytest
import torch
from meta_support import META, meta_mode
from support import dense_log_det, dense_score_step, perturb, rel_err
from torch import Tensor

from pathgrad_ref.flows import (
    MADE,
    ActNorm,
    Layer,
    LULinear,
    MaskedAutoregressive,
    Permutation,
    RationalQuadraticSpline,
    glow_flow,
    masked_autoregressive_flow,
)

pytestmark = pytest.mark.usefixtures("one_thread")

DIM = 5
KINDS = [
    "actnorm",
    "lulinear",
    "permutation",
    "maf-affine",
    "maf-affine-reversed",
    "maf-spline",
]


def _layer(kind: str) -> Layer:
    torch.manual_seed(0)
    if kind == "actnorm":
        return ActNorm(DIM)
    if kind == "lulinear":
        return LULinear(DIM, permutation=torch.tensor([2, 0, 4, 1, 3]))
    if kind == "permutation":
        return Permutation(torch.tensor([3, 0, 4, 2, 1]))
    if kind == "maf-affine":
        return MaskedAutoregressive(DIM, hidden=(8, 8))
    if kind == "maf-affine-reversed":
        return MaskedAutoregressive(DIM, hidden=(7,), order=torch.tensor([2, 4, 0, 1, 3]))
    if kind == "maf-spline":
        return MaskedAutoregressive(DIM, RationalQuadraticSpline(bins=4, bound=3.0), hidden=(8,))
    raise ValueError(kind)


@pytest.fixture(params=KINDS)
def layer(request: pytest.FixtureRequest) -> Layer:
    lay = _layer(request.param).double()
    perturb(lay, 0.5)
    return lay


def _x(n: int = 6, seed: int = 1) -> Tensor:
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _one(f: object) -> object:
    return lambda u: f(u[None])[0][0]  # type: ignore[operator]


def test_round_trip(layer: Layer) -> None:
    x = _x()
    y, ld = layer(x)
    x_back, ld_inv = layer.inverse(y)
    assert rel_err(x_back, x) < 1e-12
    assert torch.allclose(ld + ld_inv, torch.zeros_like(ld), atol=1e-12)
    assert rel_err(y, x) > 1e-2, "the perturbed layer must not be the identity"


@pytest.mark.parametrize("inverse", [False, True])
def test_log_det_matches_slogdet(layer: Layer, inverse: bool) -> None:
    x = _x()
    f = layer.inverse if inverse else layer.forward
    ref = dense_log_det(_one(f), x)  # type: ignore[arg-type]
    assert torch.allclose(f(x)[1], ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("which", ["closed-form", "default"])
@pytest.mark.parametrize("inverse", [False, True])
def test_score_step_matches_dense(layer: Layer, inverse: bool, which: str) -> None:
    """The layer's own step and the default of :class:`Layer` (called on the same layer) agree
    with ``J^{-T}(s − ∇ log|det J|)`` from dense autograd."""
    x = _x().requires_grad_(True)
    score = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    cls = Layer if which == "default" else type(layer)
    step = cls.inverse_and_score if inverse else cls.forward_and_score
    y, log_det, score_y = step(layer, x, score)
    f = layer.inverse if inverse else layer.forward
    ref = dense_score_step(_one(f), x.detach(), score)  # type: ignore[arg-type]
    assert rel_err(score_y, ref) < 1e-10
    y_ref, ld_ref = f(x.detach())
    assert rel_err(y.detach(), y_ref.detach()) < 1e-14
    assert torch.allclose(log_det.detach(), ld_ref.detach(), atol=1e-13)
    assert not score_y.requires_grad
    if any(True for _ in layer.parameters()):
        assert y.requires_grad, "the output keeps the graph in the parameters"


def test_made_is_autoregressive() -> None:
    """Output ``[k, i]`` depends on input ``j`` iff ``order[j] < order[i]`` (with random
    weights every allowed dependence is present), for several orders and depths."""
    for order, hidden in [
        ([0, 1, 2, 3, 4], (8, 8)),
        ([3, 1, 4, 0, 2], (6,)),
        ([4, 3, 2, 1, 0], ()),
    ]:
        o = torch.tensor(order)
        made = MADE(o, n_params=2, hidden=hidden, zero_init_last=False).double()
        jac = torch.func.jacrev(lambda u, m=made: m(u[None])[0])(_x(1)[0])  # (2, d, d)
        allowed = o[:, None] > o[None, :]  # [i, j]: output i may see input j
        assert bool((jac.abs() > 0).eq(allowed).all()), (order, hidden)


def _hidden_masks(made: MADE) -> list[Tensor]:
    """The 0/1 masks of ``made``'s linear layers, input side first, each ``(n_out, n_in)``."""
    return [m.mask.double() for m in made.net if hasattr(m, "mask")]


@pytest.mark.parametrize(
    ("order", "hidden"),
    [(range(4), (16, 16)), ([3, 1, 4, 0, 2], (7, 9, 4)), ([1, 0], (3,)), (range(6), (5,))],
)
def test_made_degrees_and_every_hidden_unit_is_used(order: list[int], hidden: tuple[int]) -> None:
    """Read from the masks alone: a first-layer unit's degree is (number of inputs it sees) − 1
    and must be ``u mod (d−1)`` as documented; every hidden unit has a path from some input and
    a path to some output (a unit on no path to an output is a parameter that changes
    nothing); and output ``[k, i]`` has a path from input ``j`` exactly when
    ``order[j] < order[i]``. ``(range(4), (16, 16))`` is the ``maf-gmm`` size."""
    o = torch.tensor(list(order))
    d = len(o)
    made = MADE(o, n_params=2, hidden=hidden)
    masks = _hidden_masks(made)
    assert [tuple(m.shape) for m in masks] == [
        (w, n) for n, w in zip([d, *hidden], [*hidden, 2 * d], strict=True)
    ]
    first_degree = masks[0].sum(1) - 1
    assert torch.equal(first_degree.long(), torch.arange(hidden[0]) % (d - 1))
    # Reachability, forward from the inputs and backward from the outputs.
    from_input = [torch.ones(d, dtype=torch.bool)]
    for m in masks:
        from_input.append((m @ from_input[-1].double()) > 0)
    to_output = [torch.ones(2 * d, dtype=torch.bool)]
    for m in reversed(masks):
        to_output.append((m.T @ to_output[-1].double()) > 0)
    to_output.reverse()
    for layer, width in enumerate(hidden, start=1):
        assert bool(from_input[layer].all()), f"layer {layer}: a unit sees no input"
        dead = int((~to_output[layer]).sum())
        assert dead == 0, f"layer {layer}: {dead} of {width} units reach no output"
    paths = masks[0].double()
    for m in masks[1:]:
        paths = m.double() @ paths
    allowed = (o[:, None] > o[None, :]).repeat(2, 1)  # row k·d + i, column j
    assert torch.equal(paths > 0, allowed)


def test_made_refuses_a_width_below_d_minus_1() -> None:
    with pytest.raises(ValueError, match=r"hidden\[1\] must be >= d - 1 = 4"):
        MADE(torch.arange(5), 2, hidden=(8, 3))


def test_actnorm_constant_feature_is_centred_not_blown_up() -> None:
    """Before: ``log σ = −log(0 + 1e-6) = 13.8`` and the next batch's outputs reached 1e6."""
    data = _x(64, seed=2)
    data[:, 1] = 2.0
    lay = ActNorm(DIM, data_init=True).double()
    with pytest.warns(RuntimeWarning, match=r"1 feature\(s\) \[1\]"):
        out, _ = lay(data)
    assert lay.log_scale[1].item() == 0.0
    assert torch.equal(out[:, 1], torch.zeros(64, dtype=torch.float64))
    nxt, _ = lay(_x(64, seed=3) + 2.0)
    assert float(nxt.abs().max()) < 10.0


def test_actnorm_floor_is_relative() -> None:
    """float32 data of std 1e-7 is standardised (an absolute eps of 1e-6 gave std 0.09)."""
    data = 1e-7 * torch.randn(256, DIM, generator=torch.Generator().manual_seed(5))
    lay = ActNorm(DIM, data_init=True)
    out, _ = lay(data)
    assert torch.allclose(out.std(0), torch.ones(DIM), atol=1e-4)
    # Spread at the level of float32 rounding of values near 1e4 is noise: not rescaled.
    noisy = 1e4 + 1e-3 * torch.randn(256, DIM, generator=torch.Generator().manual_seed(6))
    with pytest.warns(RuntimeWarning, match=f"{DIM} feature"):
        ActNorm(DIM, data_init=True)(noisy)


def test_actnorm_refuses_a_nonfinite_batch_and_stays_uninitialised() -> None:
    data = _x(8)
    data[3, 2] = float("nan")
    lay = ActNorm(DIM, data_init=True).double()
    with pytest.raises(ValueError, match="expected finite values"):
        lay(data)
    assert lay.pending_init and torch.equal(lay.log_scale, torch.zeros(DIM, dtype=torch.float64))
    lay(_x(8))
    assert not lay.pending_init and bool(torch.isfinite(lay.log_scale).all())


def test_actnorm_refuses_to_initialise_per_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
    lay = ActNorm(DIM, data_init=True).double()
    with pytest.raises(RuntimeError, match=r"torch.distributed \(world size 2\)"):
        lay(_x(8))
    assert lay.pending_init
    ActNorm(DIM).double()(_x(8))  # no initialisation, nothing to refuse


def test_constructors_start_at_identity() -> None:
    z = _x(4)
    for flow in (glow_flow(DIM, n_blocks=2, hidden=(8,)), masked_autoregressive_flow(DIM, 3)):
        flow = flow.double()
        x, log_q = flow(z)
        assert torch.equal(x, z)
        assert torch.allclose(log_q, flow.base.log_prob(z), atol=0.0)
    lu = LULinear(DIM).double()
    assert torch.equal(lu.weight(), torch.eye(DIM, dtype=torch.float64))


def test_lulinear_weight_is_the_jacobian() -> None:
    lay = _layer("lulinear").double()
    perturb(lay, 0.5)
    jac = torch.func.jacrev(lambda u: lay(u[None])[0][0])(_x(1)[0])
    assert rel_err(lay.weight(), jac) < 1e-14
    assert not torch.allclose(jac, jac.tril()), "P L U with a permutation is not triangular"


@pytest.mark.parametrize("inverse", [False, True])
def test_actnorm_data_init(inverse: bool) -> None:
    data = 3.0 + 2.0 * _x(200, seed=4)
    lay = ActNorm(DIM, data_init=True).double()
    out, _ = lay.inverse(data) if inverse else lay(data)
    assert torch.allclose(out.mean(0), torch.zeros(DIM, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(out.std(0), torch.ones(DIM, dtype=torch.float64), atol=1e-5)
    assert not lay.pending_init
    before = lay.log_scale.detach().clone()
    lay(data[:10] * 5)  # only the first batch initialises
    assert torch.equal(lay.log_scale.detach(), before)
    fresh = ActNorm(DIM, data_init=True).double()
    fresh.load_state_dict(lay.state_dict())
    assert not fresh.pending_init, "a loaded layer is initialised"
    with pytest.raises(ValueError, match="batch of >= 2"):
        ActNorm(DIM, data_init=True)(torch.zeros(1, DIM))


def test_bad_input() -> None:
    with pytest.raises(ValueError, match=r"expects a \(batch, 5\) batch"):
        LULinear(DIM)(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="permutation of range"):
        Permutation(torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="order must be a permutation"):
        MADE(torch.tensor([0, 2]), 2)
    with pytest.raises(ValueError, match="unknown transform"):
        masked_autoregressive_flow(3, transform="cubic")


@pytest.mark.parametrize("kind", KINDS)
def test_layer_on_meta(kind: str) -> None:
    """Both directions and both score steps (closed form and default) on ``meta``: no tensor
    made on the CPU inside, no host read."""
    lay = _layer(kind).double().to(META)
    x = torch.empty(3, DIM, dtype=torch.float64, device=META, requires_grad=True)
    with meta_mode():
        outs = [*lay(x), *lay.inverse(x)]
        for cls in (type(lay), Layer):
            outs += [*cls.forward_and_score(lay, x, x.detach()), *cls.inverse_and_score(lay, x, x)]
        sum(o.sum() for o in outs if o.requires_grad).backward()  # type: ignore[union-attr]
    assert all(o.device == META for o in outs)
    for name, p in lay.named_parameters():
        assert p.grad is not None and p.grad.device == META, name


COMPILED = [("glow-gmm", "reverse-path-fast"), ("maf-gmm", "forward-path-fast")]


@pytest.mark.compile
@pytest.mark.parametrize(("setup", "name"), COMPILED, ids=[f"{s}-{n}" for s, n in COMPILED])
def test_compiled_fast_path_equals_oracle(setup: str, name: str) -> None:
    """A compiled training step (estimator and backward, as ``tests/test_compile.py`` builds it):
    the gradient equals the naive oracle's. Glow's reverse step covers the triangular solves of
    ``LULinear`` under compile; MAF's forward step the repeated VJPs of its Jacobi solve (MAF's
    reverse step is the default one, compiled in ``tests/test_user_layer.py``). Measured: both
    passed together in 8.5 min with both directions each on the loaded 2-core machine, hence one
    direction each."""
    import torch._dynamo
    from support import base_batch, make_setup, target_batch

    from pathgrad_ref.estimators import get_estimator, gradient

    flow, target = make_setup(setup, torch.device("cpu"), torch.float64)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    batch = base_batch(flow, 6) if name.startswith("reverse") else target_batch(flow, target, 6)
    est = get_estimator(name)

    def step(b: Tensor) -> None:
        loss, _ = est(flow, target, b)
        loss.backward()

    torch.compile(step)(batch)
    assert int(torch._dynamo.utils.counters["stats"]["unique_graphs"]) >= 1
    got = {k: p.grad.detach().clone() for k, p in flow.named_parameters() if p.grad is not None}
    oracle = gradient(name.replace("fast", "naive"), flow, target, batch)
    assert got.keys() == oracle.keys()
    assert rel_err(got, oracle) < 1e-10
    torch._dynamo.reset()
