"""The float32 tier's flows: one table of every native flow constructor and every zuko family
that :func:`pathgrad_ref.interop.from_zuko` wraps, shared by ``tests/test_float32.py`` and
``tests/gpu_smoke.py``. Add a family by adding one entry to :data:`CASES`."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from support import base_batch, make_setup, perturb, target_batch
from torch import Tensor

from pathgrad_ref.estimators import direction
from pathgrad_ref.flows import (
    Flow,
    continuous_flow,
    monotone_coupling_flow,
    neural_spline_flow,
    u1_flow,
)
from pathgrad_ref.flows.coupling import Coupling
from pathgrad_ref.flows.implicit import INITIAL_BOUND
from pathgrad_ref.flows.splines import CircularSpline, RationalQuadraticSpline
from pathgrad_ref.targets import GaussianMixture, Target

EPS32 = torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class Case:
    """``build()``: a float64 module and its target; ``wrap`` makes the :class:`Flow` of a
    module (``None``: it is one; zuko's flows are cast before they are wrapped). ``bound``: the
    largest spline bound in the flow (``None``: no spline on the real line); ``periodic``:
    coordinates are angles (compared mod 2π)."""

    build: Callable[[], tuple[Any, Target]]
    wrap: Callable[[Any], Flow] | None = None
    bound: float | None = None
    periodic: bool = False
    torus: bool = False  # data on [−π, π) (zuko's NCSF): forward batches are wrapped there
    # Root-found layers (zuko's NAF, SOSPF, BPF, GF): the half-width of the solver's first
    # bracket (``implicit.INITIAL_BOUND``), where the edge points put the roots; and whether
    # the roots are those of the sampling direction (zuko's orientation) or of the density
    # direction (the reverse-KL orientation).
    root_bound: float | None = None
    sampling_roots: bool = False
    # The sampling direction's image is not R^d (the reverse-KL orientation of a root-found
    # flow: q = 0 outside it, where the density direction has no root): forward batches are
    # flow samples moved by ``image_noise`` instead of target samples.
    image_noise: float | None = None


def _setup(name: str) -> Callable[[], tuple[Flow, Target]]:
    return lambda: make_setup(name, torch.device("cpu"), torch.float64)


def _seeded(build: Callable[[], Flow], scale: float) -> Flow:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        flow = build().double()
    perturb(flow, scale)
    return flow


def _nsf_tight() -> tuple[Flow, Target]:
    """A neural spline flow whose bound 1.5 puts many base samples in the tails, and whose
    splines (perturbation 0.5) have uneven bins: knots, bounds and tails all get traffic."""
    flow = _seeded(
        lambda: neural_spline_flow(4, n_couplings=2, bins=5, bound=1.5, hidden=(8,)), 0.5
    )
    return flow, GaussianMixture(4)


def _tanh_sum() -> tuple[Flow, Target]:
    """The native root-found coupling (:class:`~pathgrad_ref.flows.monotone.TanhSum`): the
    density direction is solved by the project's solver; its edge points put the last roots
    on, beside and beyond the first bracket ``±10``."""
    build = lambda: monotone_coupling_flow(2, n_couplings=2, components=2, hidden=(8,))  # noqa: E731
    return _seeded(build, 0.3), GaussianMixture(2)


def _continuous() -> tuple[Flow, Target]:
    """A continuous flow (RK4, 16 steps): in float64 the estimators and the dense oracle
    differ by the solver's error, ``O(h⁴)``: at most 1.8e-7 relative here (measured), about
    ``1.5 ε₃₂``, against the float32 tolerance ``64 ε₃₂ max(κ, 1)``. The backward solve inverts
    the forward one to ``O(h⁵)``."""
    build = lambda: continuous_flow(3, hidden=(8,), steps=16)  # noqa: E731
    return _seeded(build, 0.5), GaussianMixture(3)


def _u1_circular_norot() -> tuple[Flow, Target]:
    from pathgrad_ref.targets import U1Gauge

    build = lambda: u1_flow(  # noqa: E731
        4, n_layers=2, hidden=(4,), transform="circular-spline", bins=3, rotation=False
    )
    return _seeded(build, 0.2), U1Gauge(4, beta=1.0)


def _from_zuko(module: Any) -> Flow:
    from pathgrad_ref.interop import from_zuko

    flow: Flow = from_zuko(module)
    return flow


def _zuko(name: str) -> Callable[[], tuple[Any, Target]]:
    def build() -> tuple[Any, Target]:
        import zuko

        hidden = {"hidden_features": (8,)}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            zf: Any
            if name == "nice":
                zf = zuko.flows.NICE(
                    3, transforms=2, univariate=zuko.transforms.AdditiveTransform, shapes=[()],
                    **hidden,
                )  # fmt: skip
            elif name == "realnvp":
                zf = zuko.flows.RealNVP(3, transforms=2, **hidden)
            elif name == "maf":
                zf = zuko.flows.MAF(3, transforms=2, passes=2, **hidden)
            elif name == "nsf":
                zf = zuko.flows.NSF(3, transforms=2, passes=2, bins=4, **hidden)
            elif name == "nsf-autoregressive":
                zf = zuko.flows.NSF(3, transforms=2, bins=4, **hidden)
            elif name == "ncsf":
                zf = zuko.flows.NCSF(3, transforms=2, bins=4, **hidden)
            else:
                raise ValueError(name)
        zf = zf.double()
        perturb(zf, 0.1, seed=1)
        return zf, GaussianMixture(3)

    return build


def _zuko_roots(
    name: str, transforms: int, reverse_kl: bool, features: int = 3, **sizes: Any
) -> Callable[[], tuple[Any, Target]]:
    """zuko's root-found families (3 features, width 8, perturbed as above); ``reverse_kl``:
    the orientation ``Flow(flow.transform.inv, flow.base)`` of zuko's reverse-KL tutorial,
    whose sampling direction is the explicit map and whose density direction the root."""

    def build() -> tuple[Any, Target]:
        import zuko

        hidden = {"hidden_features": (8,)}
        kw = {**hidden, **sizes}
        d = features
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            zf: Any
            if name == "naf":
                zf = zuko.flows.NAF(d, transforms=transforms, signal=4, network=hidden, **kw)
            elif name == "unaf":
                zf = zuko.flows.UNAF(d, transforms=transforms, signal=4, network=hidden, **kw)
            elif name == "sospf":
                zf = zuko.flows.SOSPF(d, transforms=transforms, **kw)
            elif name == "bpf":
                zf = zuko.flows.BPF(d, transforms=transforms, **kw)
            elif name == "gf":
                zf = zuko.flows.GF(d, transforms=transforms, **sizes)
            else:
                raise ValueError(name)
        zf = zf.double()
        perturb(zf, 0.1, seed=1)
        if reverse_kl:
            zf = zuko.lazy.Flow(zf.transform.inv, zf.base)
        return zf, GaussianMixture(features)

    return build


# Gaussianization's map is Φ⁻¹ of a mean of erf's: float32's erf rounds to ±1 from |t| ≈ 3.83,
# i.e. where a component's argument |e^a x + b| passes ≈ 5.42 (float64: 8.37), and there the
# float32 map is flat, not invertible (a round trip of such a point leaves the flow's float32
# image and the solver rightly finds no root). GF's edge points therefore stay at |z| ≤ 3B = 4.5.
GF_BOUND = 1.5


def _roots(
    name: str,
    transforms: int = 1,
    reverse_kl: bool = False,
    features: int = 2,
    root_bound: float = INITIAL_BOUND,
    **sizes: Any,
) -> Case:
    # zuko's orientation: the sampling direction is the root; the reverse-KL one: the density
    # direction is, and the sampling direction's image is a subset of R^d (GF: bounded).
    return Case(
        _zuko_roots(name, transforms, reverse_kl, features, **sizes),
        _from_zuko,
        root_bound=root_bound,
        sampling_roots=not reverse_kl,
        image_noise=0.1 if reverse_kl else None,
    )


# zuko's NSF and NCSF use splines on [−5, 5] and [−π, π]: their bound for the point sets.
CASES: dict[str, Case] = {
    "realnvp": Case(_setup("realnvp-gmm")),
    "z2nice": Case(_setup("z2nice-phi4")),
    "nsf": Case(_setup("nsf-gmm"), bound=2.5),
    "nsf-tails": Case(_nsf_tight, bound=1.5),
    "glow": Case(_setup("glow-gmm")),
    "maf": Case(_setup("maf-gmm")),
    "maf-spline": Case(_setup("mafspline-gmm"), bound=5.0),
    "u1-tan-mixture": Case(_setup("u1-gauge"), periodic=True),
    "u1-circular": Case(_setup("u1-circular"), periodic=True),
    "u1-circular-norot": Case(_u1_circular_norot, periodic=True),
    "tanh-sum": Case(_tanh_sum, root_bound=INITIAL_BOUND),
    "continuous": Case(_continuous),
    "zuko-nice": Case(_zuko("nice"), _from_zuko),
    "zuko-realnvp": Case(_zuko("realnvp"), _from_zuko),
    "zuko-maf": Case(_zuko("maf"), _from_zuko),
    "zuko-nsf": Case(_zuko("nsf"), _from_zuko, bound=5.0),
    "zuko-nsf-autoregressive": Case(_zuko("nsf-autoregressive"), _from_zuko, bound=5.0),
    "zuko-ncsf": Case(_zuko("ncsf"), _from_zuko, bound=math.pi, periodic=True, torus=True),
    "zuko-naf": _roots("naf"),
    "zuko-sospf": _roots("sospf"),
    "zuko-bpf": _roots("bpf", degree=6),
    "zuko-naf-reverse-kl": _roots("naf", transforms=2, reverse_kl=True),
    "zuko-gf-reverse-kl": _roots("gf", transforms=2, reverse_kl=True, root_bound=GF_BOUND),
}


def batch(case: Case, flow: Flow, target: Target, estimator: str, n: int = 4) -> Tensor:
    """A float64 batch for ``estimator``: base samples (reverse), target samples (forward;
    on the torus, flow samples moved by noise and wrapped, as the equalities hold anywhere)."""
    if direction(estimator) == "reverse":
        return base_batch(flow, n, seed=3)
    if not case.torus and case.image_noise is None:
        return target_batch(flow, target, n, seed=1)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        x, _ = flow(base_batch(flow, n, seed=3))
    noise = 0.3 if case.image_noise is None else case.image_noise
    x = x + noise * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    if not case.torus:
        return x
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


def flows(case: Case) -> tuple[Flow, Flow, Target]:
    """``(float32 flow, float64 flow with the float32 flow's parameters, target)``: the oracle
    runs on the rounded parameters, so that a comparison sees float32 arithmetic alone."""
    module, target = case.build()
    m32 = copy.deepcopy(module).float()
    m64 = copy.deepcopy(m32).double()
    if case.wrap is None:
        return m32, m64, target
    return case.wrap(m32), case.wrap(m64), target


def edge_points(case: Case, flow: Flow, n: int = 24, seed: int = 5) -> Tensor:
    """``n`` float32 base points ``(n, *event)`` whose entries sit where float32 is hardest: on
    and one ulp either side of the spline bounds ``±B``, in the tails (``|z|`` up to ``3B``),
    at 0; for angles at 0, one ulp above, one ulp below 2π and at π. With native spline
    couplings, later rows are moved so that each such layer sees its active inputs on its x
    knots (:func:`_on_knots`), and its inverse therefore its y knots. With root-found layers
    the values are taken about the solver's first bracket ``±root_bound`` instead, and in zuko's
    orientation mapped back so that the sampling direction's roots are those values
    (:func:`_roots_at`); in the reverse-KL orientation the density direction's last root is
    ``z`` itself."""
    gen = torch.Generator().manual_seed(seed)
    inf = torch.tensor(math.inf)
    if case.periodic and case.torus:
        pi = torch.tensor(math.pi, dtype=torch.float32)
        values = torch.stack([pi, torch.nextafter(pi, -inf), torch.tensor(0.0)])
        values = torch.cat([values, -values])
    elif case.periodic:
        two_pi = torch.tensor(2 * math.pi, dtype=torch.float32)
        zero = torch.tensor(0.0)
        values = torch.stack(
            [zero, torch.nextafter(zero, inf), torch.nextafter(two_pi, zero), two_pi / 2]
        )
    else:
        bound = case.root_bound or case.bound
        B = torch.tensor(bound if bound is not None else 2.5, dtype=torch.float32)
        edge = torch.stack([B, torch.nextafter(B, inf), torch.nextafter(B, -inf)])
        values = torch.cat([edge, -edge, torch.tensor([0.0]), 1.5 * B.view(1), -3.0 * B.view(1)])
    shape = (n, *flow.event_shape)
    pick = torch.randint(len(values), shape, generator=gen)
    z = values[pick]
    if case.sampling_roots:
        return _roots_at(flow, z)
    return _on_knots(flow, z)


def _roots_at(flow: Flow, x: Tensor) -> Tensor:
    """Base points whose samples are ``x``: the root-found sampling direction then solves for
    ``x`` itself (on and one ulp beside the solver's first bracket, beyond it, at 0). The
    explicit density direction runs in float64; rounding to float32 moves the roots by an ulp
    of ``z`` over the slope."""
    f64 = copy.deepcopy(flow).double()
    with torch.no_grad():
        z, _ = f64.inverse_transform(x.double())
    return z.to(x.dtype)


def _on_knots(flow: Flow, z: Tensor) -> Tensor:
    """``z`` with rows ``i ≡ l (mod layers)`` replaced so that spline coupling layer ``l``
    receives its active inputs exactly on its x knots (knot ``i mod (K+1)``): the input of that
    layer is computed, its active part set to the knots, and the earlier layers inverted."""
    layers = list(flow._layers())
    spline_layers = [
        i
        for i, layer in enumerate(layers)
        if isinstance(layer, Coupling)
        and isinstance(layer.transform, (RationalQuadraticSpline, CircularSpline))
    ]
    if not spline_layers:
        return z
    z = z.clone()
    with torch.no_grad():
        for j, li in enumerate(spline_layers):
            rows = torch.arange(j, z.shape[0], len(spline_layers))
            x = z[rows]
            for layer in layers[:li]:
                x, _ = layer(x)
            lay = layers[li]
            assert isinstance(lay, Coupling)
            spline = lay.transform
            assert isinstance(spline, (RationalQuadraticSpline, CircularSpline))
            a, b = lay._split(x)
            knots = spline.knots(lay._params(b))[0]  # (rows, n_active, K+1)
            k = torch.arange(len(rows)) % knots.shape[-1]
            a = knots.gather(-1, k.view(-1, 1, 1).expand(-1, a.shape[1], 1)).squeeze(-1)
            x = lay._merge(a, b)
            for layer in reversed(layers[:li]):
                x, _ = layer.inverse(x)
            z[rows] = x
    return z
