"""Constructors for the paper's architectures; every size is a parameter."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..distributions import StandardNormal
from .base import Flow, Layer
from .conditioners import MLP
from .coupling import AdditiveCoupling, AffineCoupling, Coupling
from .masks import alternating_mask, checkerboard_mask
from .scaling import GlobalScaling
from .splines import RationalQuadraticSpline

MASKS = {"alternating": alternating_mask, "checkerboard": checkerboard_mask}


def _mask(kind: str, shape: Sequence[int], parity: int) -> Tensor:
    if kind not in MASKS:
        raise ValueError(f"unknown mask {kind!r}; expected one of {sorted(MASKS)}")
    return MASKS[kind](shape, parity)


def real_nvp(
    dim: int,
    n_couplings: int = 6,
    hidden: Sequence[int] = (64, 64),
    activation: str = "tanh",
    zero_init: bool = True,
) -> Flow:
    """RealNVP on ``R^dim`` (the GMM flow): affine couplings on alternating masks, MLP
    conditioners, ``N(0, I)`` base. Sizes are *(our choice)*."""
    if dim < 2:
        raise ValueError(f"a coupling flow needs dim >= 2, got {dim}")
    layers: list[Layer] = []
    for i in range(n_couplings):
        mask = alternating_mask((dim,), i % 2)
        n_act = int(mask.sum())
        net = MLP(dim - n_act, 2 * n_act, hidden, activation, zero_init_last=zero_init)
        layers.append(AffineCoupling(mask, net))
    return Flow(StandardNormal((dim,)), layers)


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
    shape = tuple(int(s) for s in shape)
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
    if dim < 2:
        raise ValueError(f"a coupling flow needs dim >= 2, got {dim}")
    layers: list[Layer] = []
    for i in range(n_couplings):
        mask = alternating_mask((dim,), i % 2)
        n_act = int(mask.sum())
        spline = RationalQuadraticSpline(bins=bins, bound=bound)
        net = MLP(
            dim - n_act, spline.n_params * n_act, hidden, activation, zero_init_last=zero_init
        )
        layers.append(Coupling(mask, net, spline))
    return Flow(StandardNormal((dim,)), layers)
