"""Constructors for the paper's architectures; every size is a parameter."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..distributions import StandardNormal
from . import _args
from .base import Flow, Layer
from .conditioners import MLP
from .coupling import AdditiveCoupling, AffineCoupling, Coupling
from .masks import alternating_mask, checkerboard_mask
from .monotone import TanhSum
from .scaling import GlobalScaling
from .splines import RationalQuadraticSpline

MASKS = {"alternating": alternating_mask, "checkerboard": checkerboard_mask}


def _mask(kind: str, shape: Sequence[int], parity: int) -> Tensor:
    if kind not in MASKS:
        raise ValueError(f"unknown mask {kind!r}; expected one of {sorted(MASKS)}")
    return MASKS[kind](shape, parity)


def coupling_stack(
    dim: int,
    n_couplings: int,
    n_params: int,
    coupling: Callable[[Tensor, nn.Module], Coupling],
    hidden: Sequence[int],
    activation: str,
    zero_init: bool,
    before: Callable[[], Sequence[Layer]] = tuple,
    *,
    count: str = "n_couplings",
) -> Flow:
    """``N(0, I)`` on ``R^dim`` through ``n_couplings`` blocks; block ``i`` is ``before()`` then
    ``coupling(mask_i, MLP(n_passive, n_params·n_active))`` on the alternating mask of parity
    ``i mod 2`` (so every feature is transformed). The one loop of :func:`real_nvp`,
    :func:`neural_spline_flow` and :func:`~pathgrad_ref.flows.glow.glow_flow`.

    Each block's MLP is drawn before the block's other layers are built (the order of the
    random stream that the committed conformance vectors were made with). ``count`` is the
    caller's name for ``n_couplings`` in error messages."""
    dim = _args.integer("dim", dim)
    if dim < 2:
        raise ValueError(f"a coupling flow needs dim >= 2, got {dim}")
    n_couplings = _args.integer(count, n_couplings)
    zero_init = _args.flag("zero_init", zero_init)
    layers: list[Layer] = []
    for i in range(n_couplings):
        mask = alternating_mask((dim,), i % 2)
        n_act = int(mask.sum())
        net = MLP(dim - n_act, n_params * n_act, hidden, activation, zero_init_last=zero_init)
        layers += [*before(), coupling(mask, net)]
    return Flow(StandardNormal((dim,)), layers)


def real_nvp(
    dim: int,
    n_couplings: int = 6,
    hidden: Sequence[int] = (64, 64),
    activation: str = "tanh",
    zero_init: bool = True,
) -> Flow:
    """RealNVP on ``R^dim`` (the GMM flow): affine couplings on alternating masks, MLP
    conditioners, ``N(0, I)`` base. Sizes are *(our choice)*."""
    return coupling_stack(dim, n_couplings, 2, AffineCoupling, hidden, activation, zero_init)


def z2_nice(
    shape: Sequence[int],
    n_couplings: int = 8,
    hidden: Sequence[int] = (1000, 1000, 1000, 1000),
    mask: str = "checkerboard",
    zero_init: bool = True,
) -> Flow:
    """Z2Nice (the φ⁴ flow, ``docs/theory.md`` §7.2): additive couplings with bias-free tanh
    MLPs on alternating checkerboard halves, then a global scaling; ``N(0, I)`` base. Odd:
    ``T(−z) = −T(z)``.

    The paper's size is the default: 8 couplings, 4 hidden layers of width 1000."""
    shape = _args.widths("shape", shape)
    if not shape:
        raise ValueError("shape must be non-empty, got ()")
    n_couplings = _args.integer("n_couplings", n_couplings)
    zero_init = _args.flag("zero_init", zero_init)
    layers: list[Layer] = []
    for i in range(n_couplings):
        m = _mask(mask, shape, i % 2)
        n_act = int(m.sum())
        n_pas = m.numel() - n_act
        net = MLP(n_pas, n_act, hidden, "tanh", bias=False, zero_init_last=zero_init)
        layers.append(AdditiveCoupling(m, net))
    layers.append(GlobalScaling(shape))
    return Flow(StandardNormal(shape), layers)


def neural_spline_flow(
    dim: int,
    n_couplings: int = 6,
    bins: int = 8,
    bound: float = 5.0,
    hidden: Sequence[int] = (64, 64),
    activation: str = "tanh",
    zero_init: bool = True,
) -> Flow:
    """Neural spline flow on ``R^dim`` (Durkan et al. 2019): rational-quadratic spline couplings
    (``bins`` bins on ``[−bound, bound]``, identity tails; ``docs/theory.md`` §4.4) on
    alternating masks, MLP conditioners, ``N(0, I)`` base. With ``zero_init`` the conditioners'
    last layers are zero, every spline has uniform bins and unit slopes, and the flow starts as
    the identity. Sizes are *(our choice)*."""
    n_params = RationalQuadraticSpline(bins=bins, bound=bound).n_params  # checks bins, bound

    def coupling(mask: Tensor, net: nn.Module) -> Coupling:
        return Coupling(mask, net, RationalQuadraticSpline(bins=bins, bound=bound))

    return coupling_stack(dim, n_couplings, n_params, coupling, hidden, activation, zero_init)


def monotone_coupling_flow(
    dim: int,
    n_couplings: int = 6,
    components: int = 3,
    hidden: Sequence[int] = (64, 64),
    activation: str = "tanh",
    zero_init: bool = True,
) -> Flow:
    """Couplings with a root-found inverse on ``R^dim``: the element-wise map of
    :class:`~pathgrad_ref.flows.monotone.TanhSum`, ``f(a) = e^s a + Σ_k softplus(ρ_k)
    tanh(e^{α_k}(a − β_k))`` with ``components`` tanh steps, on alternating masks, MLP
    conditioners, ``N(0, I)`` base. The sampling direction is explicit, the density direction
    is solved by bisection with implicit gradients. With ``zero_init`` every map starts as
    ``a + K log 2 · tanh(a)``. Sizes are *(our choice)*."""
    n_params = TanhSum(components).n_params  # checks components

    def coupling(mask: Tensor, net: nn.Module) -> Coupling:
        sites = torch.nonzero(mask.reshape(-1)).flatten().tolist()
        return Coupling(mask, net, TanhSum(components, name=f"TanhSum coupling on {sites}"))

    return coupling_stack(dim, n_couplings, n_params, coupling, hidden, activation, zero_init)
