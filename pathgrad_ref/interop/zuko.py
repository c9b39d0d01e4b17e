"""``from_zuko``: path gradients for the flows of zuko (probabilists/zuko, written against 1.6.0).

A zuko ``Flow(transform, base)`` maps **data to latent** with ``transform`` (``log_prob`` runs
it, ``rsample`` runs ``transform.inv``); zuko's reverse-KL tutorial trains the other orientation,
``Flow(flow.transform.inv, flow.base)``. :func:`from_zuko` unrolls the lazy transform of either
orientation into its leaves and turns each into a :class:`~pathgrad_ref.flows.Layer` whose
``forward`` is the **sampling** direction, latent to data. The zuko modules become submodules of
the layers: the parameters are zuko's own tensors, so an optimiser built on either object trains
both.

Score steps (``docs/theory.md`` §4, §6 and §11), chosen by the exact type of zuko's pieces:

- couplings (``GeneralCouplingTransform``: NICE, RealNVP; and ``MaskedAutoregressiveTransform``
  with ``passes=2``, a coupling with fixed element-wise maps on its passive half) take the one
  closed-form step
  of :class:`~pathgrad_ref.flows.Coupling`, with zuko's additive, affine and rational-quadratic
  maps in closed form;
- zuko's root-found maps (``MonotonicTransform`` and its families: NAF, UNAF, SOSPF, BPF, GF)
  are evaluated in their explicit direction and inverted by the project's solver
  (:mod:`pathgrad_ref.flows.implicit`), to rounding, never clamped, with implicit gradients;
- zuko's continuous flow (``CNF``: ``FFJTransform``, an ODE ``dx/dt = f(t, x)`` solved by
  ``FreeFormJacobianTransform``) becomes a :class:`~pathgrad_ref.flows.ContinuousLayer` on
  zuko's own vector field and parameters, solved by the project's fixed-step RK4
  (``cnf_steps`` steps, not zuko's adaptive solver) with the score carried as an ODE;
- fully autoregressive transforms and everything else (circular splines, permutations, soft
  clips) take the default score step of :class:`~pathgrad_ref.flows.Layer`.

Accept only what works: every layer is checked when wrapping against zuko's own explicit
``call_and_ladj`` and by its round trip (a CNF against zuko's solve at tight tolerances, to
``CNF_CHECK_TOL``); a transform that needs ``torch.func`` support it lacks, a sampling direction
not defined on ``R^d`` (zuko's soft clip and Gaussianization in zuko's orientation), a CNF with
zuko's stochastic trace (``exact=False``), conditional flows, transforms without an inverse,
batched bases and bases other than ``DiagNormal`` and ``BoxUniform`` are refused with an error
naming the piece.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import torch
from torch import Tensor, nn

from ..distributions import BaseDistribution
from ..flows import _args
from ..flows.base import Flow, Layer, is_compiling
from ..flows.continuous import ContinuousLayer
from ..flows.coupling import Coupling
from ..flows.implicit import EXPANSIONS, INITIAL_BOUND, implicit_inverse, log_derivatives
from ..flows.transforms import Elementwise, ElementwiseTransform, elementwise_score

if TYPE_CHECKING:
    from types import ModuleType

ZUKO_VERSION = "1.6.0"
"""The zuko release whose internals (lazy transforms, ``meta``, the univariate maps' tensors)
this adapter reads; ``tests/test_interop_zuko.py`` proves it against the oracle there."""


@functools.cache
def _zuko() -> ModuleType:
    """zuko, imported on first use (with a warning if its version is not the one read here)."""
    try:
        import zuko
    except ImportError as err:
        raise ImportError(
            f"from_zuko needs zuko: pip install 'pathgrad-ref[zuko]' (zuko=={ZUKO_VERSION})"
        ) from err
    if getattr(zuko, "__version__", ZUKO_VERSION) != ZUKO_VERSION:
        warnings.warn(
            f"from_zuko reads zuko {ZUKO_VERSION} internals; found zuko {zuko.__version__}. "
            "Run tests/test_interop_zuko.py to check the adapter against the oracle.",
            stacklevel=2,
        )
    module: ModuleType = zuko
    return module


# --- the univariate maps -------------------------------------------------------------------------


def _explicit_form(t: Any) -> str | None:
    """How the explicit direction ``y = f(x)`` of zuko's univariate transform ``t`` is evaluated
    here, chosen by exact type or by which methods define the map; ``None`` where no form is
    known. ``"call"``: the closed form ``t._call`` (additive, affine); ``"f"``: ``t.f``, a monotone
    function that zuko inverts by bisection (``MonotonicTransform`` and subclasses that keep its
    ``_call`` and ``call_and_ladj``: NAF's networks, Bernstein polynomials, Gaussianization);
    ``"integral"``: ``∫_0^x t.g`` by Gauss-Legendre quadrature (UMNN, sums of squares);
    ``"composed"``: a ``ComposedTransform`` of such parts."""
    zt = _zuko().transforms
    cls = type(t)
    if cls is zt.ComposedTransform:
        parts = [_explicit_form(part) for part in t.transforms]
        return "composed" if parts and None not in parts else None
    if cls in (zt.AdditiveTransform, zt.MonotonicAffineTransform):
        return "call"
    monotone = zt.MonotonicTransform
    if not isinstance(t, monotone) or cls._call is not monotone._call:
        return None
    if isinstance(t, zt.UnconstrainedMonotonicTransform):
        base = zt.UnconstrainedMonotonicTransform
        same = cls.f is base.f and cls.call_and_ladj is base.call_and_ladj
        return "integral" if same else None
    same = (
        cls.call_and_ladj is monotone.call_and_ladj
        and cls.log_abs_det_jacobian is monotone.log_abs_det_jacobian
    )
    return "f" if same else None


@functools.cache
def _legendre(n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Nodes ``t_i`` and weights ``w_i`` of the ``n``-point Gauss-Legendre rule on ``[−1, 1]``."""
    import numpy as np

    nodes, weights = np.polynomial.legendre.leggauss(n)
    return tuple(float(v) for v in nodes), tuple(float(v) for v in weights)


def _integral(g: Any, x: Tensor, n: int) -> Tensor:
    """``∫_0^x g(u) du ≈ (x/2) Σ_i w_i g(x(1 + t_i)/2)`` (``n``-point Gauss-Legendre), element-
    wise, shape of ``x``. Plain torch operations, so that autodiff gives the derivatives of the
    map actually computed (``docs/theory.md`` §6.2)."""
    nodes, weights = _legendre(n)
    t = x.new_tensor(nodes)
    w = x.new_tensor(weights)
    u = 0.5 * x.unsqueeze(-1) * (1.0 + t)
    values: Tensor = g(u.movedim(-1, 0)).movedim(0, -1)
    out: Tensor = 0.5 * x * (values * w).sum(-1)
    return out


def _sos_integrand(t: Any) -> Any:
    """zuko's sum-of-squares integrand ``g(u) = mean_k (1 + Σ_j a_kj (u/B)^j)² + slope`` with
    the powers ``(u/B)^j`` built by repeated products. zuko raises ``u/B`` to a tensor of
    exponents, whose forward-mode derivative torch differentiates in reverse mode to NaN at
    negative bases (the dense oracles and the score steps need both modes)."""
    a, bound, slope = t.a, float(t.bound), float(t.slope)

    def g(u: Tensor) -> Tensor:
        v = u / bound
        powers = [torch.ones_like(v)]
        for _ in range(a.shape[-1] - 1):
            powers.append(powers[-1] * v)
        poly = 1.0 + (a * torch.stack(powers, dim=-1).unsqueeze(-2)).sum(-1)
        out: Tensor = poly.square().mean(dim=-1) + slope
        return out

    return g


def _explicit(t: Any, x: Tensor) -> Tensor:
    """``f(x)`` of zuko's univariate transform ``t`` (data to latent), element-wise, by the form
    :func:`_explicit_form` names; differentiable under ``torch.func``."""
    form = _explicit_form(t)
    if form == "composed":
        for part in t.transforms:
            x = _explicit(part, x)
        return x
    if form == "call":
        out: Tensor = t._call(x)
        return out
    if form == "f":
        value: Tensor = t.f(x)
        return value
    if form == "integral":
        g = _sos_integrand(t) if type(t) is _zuko().transforms.SOSPolynomialTransform else t.g
        return _integral(g, x, int(t.n))
    raise TypeError(f"no explicit form for zuko's {type(t).__name__}")


class _Explicit(nn.Module):
    """``(x, *phi) ↦ f(x)`` for ``f = univariate(*phi)``: the map as one module call, so that
    ``torch.func.functional_call`` can give the univariate network explicit weights."""

    def __init__(self, univariate: Any) -> None:
        super().__init__()
        self.univariate = univariate

    def forward(self, x: Tensor, *phi: Tensor) -> Tensor:
        return _explicit(self.univariate(*phi), x)


class ZukoMonotoneMap:
    """zuko's monotone univariate maps ``y = f(x; φ, W)`` as a
    :class:`~pathgrad_ref.flows.implicit.MonotoneMap` for the project's solver.

    ``φ`` are the ``n_phi`` tensors zuko's hyper-network makes (shapes ``(N, n, *s_k)``, laid
    out like ``x`` of shape ``(N, n)``); ``W`` the univariate module's own weights (NAF's
    monotone network, UMNN's integrand), shared by all elements. Both are explicit inputs of
    the solver, so the inverse's implicit gradients reach them in train and eval mode alike.
    """

    def __init__(self, univariate: Any, n_phi: int) -> None:
        self.n_phi = n_phi
        self.explicit = _Explicit(univariate)
        module = univariate if isinstance(univariate, nn.Module) else None
        self.module = module
        self.weight_names = (
            [f"univariate.{n}" for n, _ in module.named_parameters()] if module else []
        )
        self.element_axes = (0,) * n_phi + (None,) * len(self.weight_names)

    def weights(self) -> tuple[Tensor, ...]:
        """The univariate module's parameters, read now (under ``functional_call`` of the flow,
        the tensors it was given)."""
        if self.module is None:
            return ()
        return tuple(p for _, p in self.module.named_parameters())

    def h(self, x: Tensor, *params: Tensor) -> Tensor:
        phi, weights = params[: self.n_phi], params[self.n_phi :]
        if not self.weight_names:
            out: Tensor = self.explicit(x, *phi)
            return out
        named = dict(zip(self.weight_names, weights, strict=True))
        out = torch.func.functional_call(self.explicit, named, (x, *phi), strict=True)
        return out

    def prepare(self, *params: Tensor) -> Any:
        """``x ↦ h(x, *params)``, with zuko's transform built once where it holds no weights
        (Bernstein polynomials, Gaussianization, sums of squares)."""
        if self.weight_names:
            return lambda x: self.h(x, *params)
        t = self.explicit.univariate(*params)
        return lambda x: _explicit(t, x)


class _Univariate(NamedTuple):
    """The maps of one of zuko's univariate transforms, batch first: ``(N, n)`` for ``additive``
    ``(shift,)`` and ``affine`` ``(shift, log_scale, scale)``, ``(N, n, K+1)`` for ``rqs``
    ``(x_knots, y_knots, derivatives)``; for ``monotone``, zuko's raw parameters ``φ``
    (``(N, n, *s_k)``) with the map ``family`` and its shared ``weights``."""

    kind: str
    tensors: tuple[Tensor, ...]
    family: ZukoMonotoneMap | None = None
    name: str = ""

    def select(self, index: Tensor) -> _Univariate:
        """The maps of the features ``index`` (dimension 1); closed forms only (a monotone map's
        weights may be stacked per feature)."""
        if self.family is not None:
            raise RuntimeError("a monotone univariate map is evaluated on all its features")
        return _Univariate(self.kind, tuple(t.index_select(1, index) for t in self.tensors))

    def expand(self, n: int) -> _Univariate:
        """Batch-1 parameters broadcast to a batch of ``n``."""
        tensors = tuple(t.expand(n, *t.shape[1:]) for t in self.tensors)
        return _Univariate(self.kind, tensors, self.family, self.name)

    def apply(self, a: Tensor, inverse: bool) -> Elementwise:
        """``f(a)`` (or ``f^{-1}(a)``), ``log f'`` and ``f''/f'`` element-wise, ``a`` ``(N, n)``."""
        if self.kind == "additive":
            (shift,) = self.tensors
            out = a - shift if inverse else a + shift
            return Elementwise(out, torch.zeros_like(a), None)
        if self.kind == "affine":
            shift, log_scale, scale = self.tensors
            if inverse:
                return Elementwise((a - shift) / scale, -log_scale, None)
            return Elementwise(a * scale + shift, log_scale, None)
        if self.kind == "monotone":
            return self._monotone(a, inverse)
        from ..flows.splines import rational_quadratic

        x_knots, y_knots, derivatives = self.tensors
        # zuko builds valid knots; the check would read the device on every call.
        res: Elementwise = rational_quadratic(
            a, x_knots, y_knots, derivatives, inverse=inverse, check=False
        )
        return res

    def _monotone(self, a: Tensor, inverse: bool) -> Elementwise:
        """Forward: ``(f, log f', f''/f')`` by autodiff of the explicit map. Inverse: the root
        ``x = f^{-1}(a)`` by the project's solver (implicit gradients, never clamped), then
        ``(x, −log f'(x), −(f''/f')(x) / f'(x))``."""
        family = self.family
        assert family is not None
        params = (*self.tensors, *family.weights())

        def f(u: Tensor) -> Tensor:
            return family.h(u, *params)

        if not inverse:
            y, log_deriv, grad_log_deriv = log_derivatives(f, a)
            return Elementwise(y, log_deriv, grad_log_deriv)
        x = implicit_inverse(family, a, params, name=self.name)
        _, log_deriv, grad_log_deriv = log_derivatives(f, x)
        return Elementwise(x, -log_deriv, -grad_log_deriv * torch.exp(-log_deriv))


# The tensors each closed-form univariate map of zuko holds, by exact type.
_CLOSED = {
    "AdditiveTransform": ("additive", ("shift",)),
    "MonotonicAffineTransform": ("affine", ("shift", "log_scale", "scale")),
    "MonotonicRQSTransform": ("rqs", ("horizontal", "vertical", "derivatives")),
}


def _kind(dependent: Any) -> str | None:
    """The kind of the map inside zuko's ``DependentTransform(univariate, 1)``, by exact type
    (a subclass may change the map: it gets no closed form); ``"monotone"`` for maps with an
    explicit form (:func:`_explicit_form`); ``None`` otherwise. Called when wrapping, not on
    every step."""
    t = getattr(dependent, "base", None)
    zt = _zuko().transforms
    for name, (kind, _) in _CLOSED.items():
        if type(t) is getattr(zt, name):
            return kind
    if t is not None and _explicit_form(t) is not None:
        return "monotone"
    return None


def _phi(lazy: Any, hyper_input: Tensor) -> tuple[Tensor, ...]:
    """zuko's raw univariate parameters from its hyper-network: ``(N, n, *s_k)`` each."""
    from zuko.utils import unpack

    raw = lazy.hyper(hyper_input)
    raw = raw.unflatten(-1, (-1, lazy.total))
    return tuple(unpack(raw, lazy.shapes))


def _univariate(kind: str, lazy: Any, hyper_input: Tensor, name: str) -> _Univariate:
    """The maps of kind ``kind`` that zuko's coupling or autoregressive ``lazy`` builds from
    ``hyper_input`` (the passive features, or all features masked)."""
    if kind == "monotone":
        family = ZukoMonotoneMap(lazy.univariate, len(lazy.shapes))
        return _Univariate(kind, _phi(lazy, hyper_input), family, name)
    fields = next(f for k, f in _CLOSED.values() if k == kind)
    dependent = lazy.meta(None, hyper_input)
    return _Univariate(kind, tuple(getattr(dependent.base, f) for f in fields))


class _FromZukoMeta(ElementwiseTransform):
    """Placeholder for :class:`Coupling`'s element-wise map: a zuko coupling builds its map from
    its own ``meta`` on every call (:meth:`ZukoCoupling._couple`), never through this object."""

    n_params = 0

    def forward(self, a: Tensor, p: Tensor) -> Elementwise:
        raise RuntimeError("a zuko coupling builds its element-wise map with zuko's meta")

    def inverse(self, a: Tensor, p: Tensor) -> Elementwise:
        raise RuntimeError("a zuko coupling builds its element-wise map with zuko's meta")


# --- layers ----------------------------------------------------------------------------------


def _constant_log_det(t: Any) -> bool:
    """Whether zuko's transform ``t`` has a log-determinant that does not depend on its input
    (linear maps, shifts, affine maps with fixed parameters), by exact type."""
    zt = _zuko().transforms
    cls = type(t)
    if cls is zt.ComposedTransform:
        return all(_constant_log_det(part) for part in t.transforms)
    if cls is zt.DependentTransform:
        return _constant_log_det(t.base)
    constant = (
        "IdentityTransform",
        "PermutationTransform",
        "RotationTransform",
        "LULinearTransform",
        "AdditiveTransform",
        "MonotonicAffineTransform",
        "CircularShiftTransform",
    )
    return any(cls is getattr(zt, name, None) for name in constant)


class ZukoTransform(Layer):
    """Any invertible zuko transform as a layer, with the default score step.

    ``lazy`` is the zuko lazy transform; its data-to-latent map is ``lazy()`` (``lazy().inv``
    when ``flipped``). ``forward`` is the sampling direction, the inverse of that map. Shapes
    ``(N, d)``; ``log_det`` ``(N,)``. ``constant_log_det`` is set by exact type when wrapping.
    """

    def __init__(self, lazy: Any, flipped: bool) -> None:
        super().__init__()
        self.lazy = lazy
        self.flipped = bool(flipped)
        built = lazy(None)
        self.constant_log_det = _constant_log_det(built)
        # zuko's soft clip maps R onto (−B, B); its inverse is defined there alone, and zuko's
        # formula returns finite garbage outside. Here it returns NaN outside: loud, not wrong.
        clip = type(built) is _zuko().transforms.SoftclipTransform
        self.clip_bound = float(built.bound) if clip else None

    def _data_to_latent(self) -> Any:
        t = self.lazy(None)
        return t.inv if self.flipped else t

    @staticmethod
    def _run(t: Any, x: Tensor) -> tuple[Tensor, Tensor]:
        y, ladj = t.call_and_ladj(x)
        # An element-wise transform returns a log-det per feature; a vector transform, per sample.
        if ladj.dim() > 1:
            ladj = ladj.flatten(1).sum(1)
        return y, ladj

    def _guarded(self, t: Any, x: Tensor, clip_inverse: bool) -> tuple[Tensor, Tensor]:
        y, ladj = self._run(t, x)
        if clip_inverse and self.clip_bound is not None:
            inside = x.abs() < self.clip_bound
            y = torch.where(inside, y, torch.nan)
            ladj = torch.where(inside.all(1), ladj, torch.nan)
        return y, ladj

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # The soft clip's inverse is the sampling direction unless flipped.
        return self._guarded(self._data_to_latent().inv, x, not self.flipped)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._guarded(self._data_to_latent(), y, self.flipped)


class ZukoCoupling(Coupling):
    """A zuko coupling transform with the closed-form coupling score step.

    ``source="coupling"``: zuko's ``GeneralCouplingTransform``, whose mask marks the *passive*
    features (``idx_a``, fed to the hyper-network); the others go through the univariate map.
    Data to latent applies the univariate map, the sampling direction its inverse (the other way
    round when ``flipped``). The step is :meth:`Coupling._score_step` with the map read from
    zuko's hyper-network on every call.

    ``source="autoregressive"``: zuko's ``MaskedAutoregressiveTransform`` with ``passes=2``.
    Its ``order`` splits the features into groups 0 (passive) and 1 (active); the hyper-network,
    reading all features with group 1 masked out, gives group 1 parameters from group 0 and
    group 0 parameters from its biases alone (``docs/theory.md`` §11). So data to latent is
    ``E ∘ C``: the coupling ``C`` of group 1 on group 0, then the element-wise map ``E`` of
    group 0 with fixed parameters; sampling undoes them in reverse order. The score step is
    :meth:`Coupling._coupling_score` for ``C`` and :func:`elementwise_score` for ``E``; data to
    latent takes both from one hyper-network pass and one evaluation of the maps.
    """

    def __init__(
        self, lazy: Any, flipped: bool, kind: str, active: Tensor, source: str, name: str
    ) -> None:
        super().__init__(active, lazy, _FromZukoMeta())
        self.flipped = bool(flipped)
        self.kind = kind
        self.source = source
        self.name = name

    def _elementwise_inverse(self, inverse: bool) -> bool:
        # Unflipped: forward (sampling) = inverse of zuko's map = the univariate's inverse.
        return inverse == self.flipped

    def _hyper_input(self, b: Tensor) -> Tensor:
        if self.source == "coupling":
            return b
        # All features in zuko's order, the transformed group (a) set to zero: masked anyway.
        return self._merge(b.new_zeros(b.shape[0], self.n_active), b)

    def _maps(self, b: Tensor) -> _Univariate:
        return _univariate(self.kind, self.conditioner, self._hyper_input(b), self.name)

    def univariate_at(self, x: Tensor) -> _Univariate:
        """The univariate maps of the transformed features at the points ``x``."""
        uni = self._maps(self._split(x)[1])
        return uni.select(self.active) if self.source == "autoregressive" else uni

    def _split_result(self, res: Elementwise) -> tuple[Elementwise, Elementwise]:
        """The active and passive parts of an element-wise result over all features."""
        out, ld = self._split(res.out), self._split(res.log_deriv)
        gld = (None, None) if res.grad_log_deriv is None else self._split(res.grad_log_deriv)
        return Elementwise(out[0], ld[0], gld[0]), Elementwise(out[1], ld[1], gld[1])

    def _autoregressive(
        self, x: Tensor, inverse: bool
    ) -> tuple[Tensor, Tensor, Tensor, Elementwise, Elementwise, bool]:
        """``(y, log_det, b, res_a, res_b, zuko_forward)`` of the ``passes=2`` transform: ``b`` the
        conditioner's input (the passive half, after ``E⁻¹`` in the inverse direction),
        ``res_a`` the coupling's maps of the active half, ``res_b`` the fixed maps of group 0."""
        a, b = self._split(x)
        zuko_forward = not self._elementwise_inverse(inverse)
        if zuko_forward:  # C, then E: one hyper-network pass, one evaluation of all the maps
            res_a, res_b = self._split_result(self._maps(b).apply(x, inverse=False))
            y = self._merge(res_a.out, res_b.out)
        else:  # E⁻¹ on group 0, then C⁻¹ conditioned on its output
            fixed = self._maps(b.new_zeros(1, b.shape[1])).select(self.passive)
            res_b = fixed.expand(x.shape[0]).apply(b, inverse=True)
            b = res_b.out
            res_a = self._maps(b).select(self.active).apply(a, inverse=True)
            y = self._merge(res_a.out, b)
        log_det = res_a.log_deriv.sum(1) + res_b.log_deriv.sum(1)
        return y, log_det, b, res_a, res_b, zuko_forward

    def _couple(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor, Tensor, Elementwise]:
        if self.source == "autoregressive":
            y, log_det, b, res_a, _, _ = self._autoregressive(x, inverse)
            return y, log_det, b, res_a
        a, b = self._split(x)  # a: transformed, b: passive
        res = self._maps(b).apply(a, self._elementwise_inverse(inverse))
        return self._merge(res.out, b), res.log_deriv.sum(1), b, res

    def _score_step(self, x: Tensor, score: Tensor, inverse: bool) -> tuple[Tensor, Tensor, Tensor]:
        if self.source != "autoregressive" or is_compiling() or not x.requires_grad:
            return super()._score_step(x, score, inverse)
        y, log_det, b, res_a, res_b, zuko_forward = self._autoregressive(x, inverse)
        s_a, s_b = self._split(score)
        log_det_a = res_a.log_deriv.sum(1)
        if zuko_forward:  # C's step, then E's on group 0
            s_a, s_b = self._coupling_score(s_a, s_b, b, res_a, log_det_a)
            s_b = elementwise_score(s_b, res_b)
        else:  # E⁻¹'s step on group 0, then C⁻¹'s, its VJP to E⁻¹'s output
            s_b = elementwise_score(s_b, res_b)
            s_a, s_b = self._coupling_score(s_a, s_b, b, res_a, log_det_a)
        return y, log_det, self._merge(s_a, s_b)

    def _score_step_functional(
        self, x: Tensor, score: Tensor, inverse: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        # Under torch.compile: the default step, which takes its VJP with torch.func.
        if inverse:
            return Layer.inverse_and_score(self, x, score)
        return Layer.forward_and_score(self, x, score)


class _ZukoMapLayer(Layer):
    """A layer on zuko's lazy transform ``lazy`` whose univariate maps are of kind ``kind``
    (:func:`_kind`); ``flipped`` when the flow inverts it; ``name`` for errors."""

    def __init__(self, lazy: Any, flipped: bool, kind: str, name: str) -> None:
        super().__init__()
        self.lazy = lazy
        self.flipped = bool(flipped)
        self.kind = kind
        self.name = name


class ZukoElementwise(_ZukoMapLayer):
    """zuko's unconditional ``ElementWiseTransform`` (GF's Gaussianization layers): an
    element-wise map with its own fixed parameters, ``v_i = f_i(u_i)`` data to latent, with the
    closed-form score step ``s' = (s − f''/f') / f'`` of :func:`elementwise_score`. Shapes
    ``(N, d)``, ``log_det`` ``(N,)``.
    """

    def univariate_at(self, x: Tensor) -> _Univariate:
        """The univariate maps (fixed parameters), broadcast to the batch of ``x``."""
        n = x.shape[0]
        if self.kind == "monotone":
            phi = tuple(p.unsqueeze(0).expand(n, *p.shape) for p in self.lazy.phi)
            family = ZukoMonotoneMap(self.lazy.univariate, len(phi))
            return _Univariate(self.kind, phi, family, self.name)
        fields = next(f for k, f in _CLOSED.values() if k == self.kind)
        base = self.lazy(None).base
        tensors = tuple(getattr(base, f).unsqueeze(0) for f in fields)
        return _Univariate(self.kind, tensors).expand(n)

    def _map(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor, Elementwise]:
        # Unflipped: forward (sampling) = inverse of zuko's map.
        res = self.univariate_at(x).apply(x, inverse == self.flipped)
        return res.out, res.log_deriv.sum(1), res

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, log_det, _ = self._map(x, inverse=False)
        return y, log_det

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        x, log_det, _ = self._map(y, inverse=True)
        return x, log_det

    def forward_and_score(self, x: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        y, log_det, res = self._map(x, inverse=False)
        return y, log_det, elementwise_score(score, res)

    def inverse_and_score(self, y: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, log_det, res = self._map(y, inverse=True)
        return x, log_det, elementwise_score(score, res)


class ZukoAutoregressive(_ZukoMapLayer):
    """zuko's ``MaskedAutoregressiveTransform`` (any ``passes``) on the project's univariate maps.

    Data to latent is one pass, ``v = f(u; c(u))`` element-wise, the conditioner ``c`` zuko's
    masked hyper-network; its inverse is ``passes`` sequential passes ``u ← f^{-1}(v; c(u))``
    from ``u = 0`` (exact after ``passes`` passes: each fixes one more group of the order). Root-
    found maps (NAF, UNAF, SOSPF, BPF) invert with the project's solver. Score steps: through
    zuko's one-pass direction, a triangular solve by ``passes + 1`` VJPs of that pass
    (:meth:`_triangular_step`, no root-finding); through the sequential direction, the default
    of :class:`~pathgrad_ref.flows.Layer` (one VJP through the one-pass direction). Shapes
    ``(N, d)``.
    """

    def univariate_at(self, x: Tensor) -> _Univariate:
        """The univariate maps at the points ``x`` (the conditioner read at ``x``)."""
        return _univariate(self.kind, self.lazy, x, self.name)

    def _zuko_map(self, u: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        lazy = self.lazy
        if not inverse:
            res = _univariate(self.kind, lazy, u, self.name).apply(u, inverse=False)
            return res.out, res.log_deriv.sum(1)
        x = torch.zeros_like(u)
        log_det = u.new_zeros(u.shape[0])
        for _ in range(int(lazy.passes)):
            res = _univariate(self.kind, lazy, x, self.name).apply(u, inverse=True)
            x, log_det = res.out, res.log_deriv.sum(1)
        return x, log_det

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # Unflipped: forward (sampling) = inverse of zuko's data-to-latent map.
        return self._zuko_map(x, inverse=not self.flipped)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._zuko_map(y, inverse=self.flipped)

    def _triangular_step(self, u: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The score step through zuko's one-pass map ``v = F(u)`` without its inverse.

        ``J = ∂v/∂u = D + N``: ``D = diag(f')``, ``N`` strictly triangular in zuko's order
        (``v_i`` depends on ``u_j`` of earlier groups through the conditioner), so ``(D^{-1} N)``
        is nilpotent of index at most ``passes``. ``s_v = J^{-T}(s_u − ∇_u log|det J|)`` solves
        ``Jᵀ s = w`` by the iteration ``s ← D^{-1}(w − Nᵀ s)``, exact after ``passes`` steps;
        ``Nᵀ s = Jᵀ s − D s`` is one input-only VJP through the graph of the one pass. So the
        step costs ``passes + 1`` VJPs and no root-finding (the default step would run the
        sequential inverse, a root-find per pass for NAF-like maps)."""
        if not u.requires_grad:
            raise ValueError(
                "the fast-path score step needs an input that requires grad "
                "(start from z.detach().requires_grad_())"
            )
        res = _univariate(self.kind, self.lazy, u, self.name).apply(u, inverse=False)
        v, log_det = res.out, res.log_deriv.sum(1)
        (grad_log_det,) = torch.autograd.grad(log_det.sum(), u, retain_graph=True)
        w = score - grad_log_det
        d = torch.exp(res.log_deriv.detach())
        s = w / d
        for _ in range(int(self.lazy.passes)):
            (jt_s,) = torch.autograd.grad(v, u, s, retain_graph=True)
            s = (w - (jt_s - d * s)) / d
        return v, log_det, s.detach()

    def forward_and_score(self, x: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # The explicit direction takes the triangular step; the root-found one the default step
        # (one VJP through the explicit pass), as does compiled code (functional VJPs).
        if self.flipped and not is_compiling():
            return self._triangular_step(x, score)
        return super().forward_and_score(x, score)

    def inverse_and_score(self, y: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if not self.flipped and not is_compiling():
            return self._triangular_step(y, score)
        return super().inverse_and_score(y, score)


# --- continuous flows ------------------------------------------------------------------------

CNF_STEPS = 32
"""Default number of RK4 steps of a wrapped CNF (``from_zuko(flow, cnf_steps=...)``). RK4's
error falls as ``h⁴``, ``h = 1/steps``, on smooth fields; zuko's default ELU network has kinks
in its divergence, and there the log-determinant converges about as ``h²``. Measured at 32
steps against zuko's solve at 1e-11 (``max |a − b| / (1 + |b|)``): points 6e-7 to 2e-5,
log-determinants 1e-5 to 1.5e-4 on ELU fields of zuko's CNF (d = 2 and 3, displacements up to
2.5); 4e-7 and less on tanh fields. zuko's own default solve is 2e-5 and 2e-4 off."""

CNF_REFERENCE_TOL = 1e-9
"""``atol`` and ``rtol`` of zuko's own adaptive solve that a wrapped CNF is checked against
when wrapping (in float64; ``10·eps`` in a coarser dtype). zuko's defaults (1e-6, 1e-5, with
the trace's tolerance relaxed a hundredfold) leave its log-determinant up to 2e-4 off the exact
flow's, as far off as the RK4 solve being checked; at 1e-9 it is 3e-6 off (measured against
1e-11), and a probe of 4 points costs a fraction of a second."""

CNF_CHECK_TOL = 1e-3
"""Wrap-time tolerance of a CNF layer against zuko's reference solve, and of its round trip,
in ``max |a − b| / (1 + |b|)`` over the probe's points and log-determinants. It passes what the
RK4 solve at the default steps gives on moderate fields (at most 1.5e-4, ``CNF_STEPS``; the
round trip 4e-7) and refuses a wrong time direction (off by 0.6 to 4) and a time axis read
backwards (off by 4e-3 on zuko's initial field, whose dependence on time is weakest, to 2e-2
and more once trained or perturbed; ``tests/test_interop_zuko_cnf.py``). A field that RK4
does not resolve at ``cnf_steps`` fails it too (one of zuko's CNF perturbed to displacements of
70 is 3e-3 off at 32 steps): the error says to raise ``cnf_steps``."""


class ZukoVelocity(nn.Module):
    """``v(x, t) = f(t, x)``: the vector field of zuko's ``FFJTransform`` ``lazy`` in the
    argument order of :class:`~pathgrad_ref.flows.ContinuousLayer`. ``f`` is zuko's own method
    with no context, the callable that ``lazy(None)`` hands to ``FreeFormJacobianTransform``:
    ``MLP([x, cos(πk t), sin(πk t)])``, ``k = 1 … freqs``. ``x`` ``(N, d)``, ``t`` 0-d, output
    ``(N, d)``; each row is mapped alone (the exact divergence needs that). The module owns
    ``lazy``, so its parameters are zuko's tensors, seen by ``.parameters()`` and
    ``torch.func.functional_call``."""

    def __init__(self, lazy: nn.Module) -> None:
        super().__init__()
        self.lazy = lazy

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        out: Tensor = cast(Any, self.lazy).f(t, x)
        return out


def _cnf_layer(lazy: Any, flipped: bool, steps: int, name: str) -> ContinuousLayer:
    """The :class:`~pathgrad_ref.flows.ContinuousLayer` of zuko's ``FFJTransform``.

    zuko maps data to latent by integrating ``f`` from its ``t0`` to its ``t1`` (0 and 1, read
    from its buffers when wrapping); the layer's forward is the sampling direction, so it runs
    from ``t1`` back to ``t0`` (from ``t0`` to ``t1`` when ``flipped``: the reverse-KL
    orientation samples with zuko's forward solve)."""
    built = lazy(None)
    ffj = _zuko().transforms.FreeFormJacobianTransform
    if type(built) is not ffj:
        raise ValueError(
            f"from_zuko: {name} builds {type(built).__name__}, not zuko's "
            "FreeFormJacobianTransform; a subclass may change the map"
        )
    if not built.exact:
        raise ValueError(
            f"from_zuko: {name} estimates its log-determinant by Hutchinson's trace estimator "
            "(exact=False): zuko's log_prob is then a random number, and no estimator built on "
            "it is exact. The vector field is the same with the exact trace: set "
            "flow.transform.exact = True (or build the CNF with exact=True) and wrap again"
        )
    t0, t1 = float(built.t0), float(built.t1)
    start, end = (t0, t1) if flipped else (t1, t0)
    return ContinuousLayer(ZukoVelocity(lazy), steps, t0=start, t1=end)


def _builds_ffj(lazy: Any) -> bool:
    """Whether the lazy transform ``lazy`` builds zuko's ODE transform (by instance: subclasses
    too) without a context."""
    try:
        built = lazy(None)
    except Exception:
        return False
    return isinstance(built, _zuko().transforms.FreeFormJacobianTransform)


# --- bases -----------------------------------------------------------------------------------


class ZukoDiagNormal(BaseDistribution):
    """zuko's ``DiagNormal(loc, scale)``: ``log q0(z) = Σ_i [−½((z_i − μ_i)/σ_i)² − log σ_i
    − ½ log 2π]``, ``score(z) = −(z − μ)/σ²``. Batches ``(N, d)``; ``loc``, ``scale`` are read
    from zuko's lazy distribution on every call (they follow ``.to(...)``)."""

    def __init__(self, lazy: nn.Module) -> None:
        dist = cast(Any, lazy)(None)
        super().__init__(tuple(dist.event_shape))
        self.lazy = lazy
        self.anchor = self.anchor.to(dist.base_dist.loc)

    def _loc_scale(self) -> tuple[Tensor, Tensor]:
        normal = self.lazy(None).base_dist
        return normal.loc, normal.scale

    def log_prob(self, z: Tensor) -> Tensor:
        loc, scale = self._loc_scale()
        u = (z - loc) / scale
        return (-0.5 * u * u - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)

    def score(self, z: Tensor) -> Tensor:
        loc, scale = self._loc_scale()
        return -(z - loc) / (scale * scale)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        loc, scale = self._loc_scale()
        eps = torch.randn(
            (n, *self.event_shape), generator=generator, dtype=loc.dtype, device=loc.device
        )
        return loc + scale * eps


class ZukoBoxUniform(BaseDistribution):
    """zuko's ``BoxUniform(lower, upper)``: ``log q0 = −Σ_i log(u_i − l_i)`` on
    ``l ≤ z < u``, ``−inf`` outside; ``score = 0``. Batches ``(N, d)``."""

    def __init__(self, lazy: nn.Module) -> None:
        dist = cast(Any, lazy)(None)
        super().__init__(tuple(dist.event_shape))
        self.lazy = lazy
        self.anchor = self.anchor.to(dist.base_dist.low)

    def _bounds(self) -> tuple[Tensor, Tensor]:
        uniform = self.lazy(None).base_dist
        return uniform.low, uniform.high

    def log_prob(self, z: Tensor) -> Tensor:
        low, high = self._bounds()
        inside = ((z >= low) & (z < high)).all(-1)
        # Written with z so that the result is a function of z under torch.func transforms.
        value = -torch.log(high - low).sum() + 0.0 * z.sum(-1)
        return torch.where(inside, value, value - math.inf)

    def score(self, z: Tensor) -> Tensor:
        return torch.zeros_like(z)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        low, high = self._bounds()
        u = torch.rand(
            (n, *self.event_shape), generator=generator, dtype=low.dtype, device=low.device
        )
        return low + (high - low) * u


# --- the adapter -----------------------------------------------------------------------------


def _base(lazy: nn.Module) -> BaseDistribution:
    trainable = [n for n, p in lazy.named_parameters() if p.requires_grad]
    if trainable:
        raise ValueError(
            f"from_zuko: the base distribution {lazy!r} has trainable parameters {trainable}; "
            "the estimators take the base as fixed: register them as buffers "
            "(UnconditionalDistribution(..., buffer=True)) or call requires_grad_(False)"
        )
    zl = _zuko().lazy
    try:
        dist = cast(Any, lazy)(None)
    except Exception as err:
        if isinstance(lazy, zl.UnconditionalDistribution):
            raise ValueError(
                f"from_zuko: building the base distribution {type(lazy).__name__} raised "
                f"{type(err).__name__}: {err}"
            ) from err
        raise ValueError(
            f"from_zuko: the base distribution {type(lazy).__name__} could not be built without "
            f"a context ({type(err).__name__}: {err}); only unconditional flows are supported"
        ) from err
    batch_shape = tuple(getattr(dist, "batch_shape", ()))
    if batch_shape:
        raise ValueError(
            f"from_zuko: the base distribution {dist!r} has batch shape {batch_shape}; expected "
            "one distribution over vectors (batch shape ()), e.g. DiagNormal(zeros(d), ones(d))"
        )
    zd = _zuko().distributions
    if type(dist) is zd.DiagNormal:
        return ZukoDiagNormal(lazy)
    if type(dist) is zd.BoxUniform:
        return ZukoBoxUniform(lazy)
    raise ValueError(
        f"from_zuko: unsupported base distribution {dist!r}; expected zuko.distributions."
        "DiagNormal or BoxUniform"
    )


def _leaves(lazy: nn.Module, flipped: bool) -> list[tuple[nn.Module, bool]]:
    """The leaf lazy transforms in data-to-latent order, each with whether it is inverted."""
    zl = _zuko().lazy
    if isinstance(lazy, zl.LazyComposedTransform):
        parts = [leaf for t in lazy.transforms for leaf in _leaves(t, flipped)]
        return parts[::-1] if flipped else parts
    if isinstance(lazy, zl.LazyInverse):
        return _leaves(lazy.transform, not flipped)
    if not isinstance(lazy, zl.LazyTransform):
        raise TypeError(f"from_zuko: expected a zuko LazyTransform, got {type(lazy).__name__}")
    return [(lazy, flipped)]


def _context_features(lazy: nn.Module, features: int) -> int:
    """The context size of zuko's coupling, masked autoregressive, element-wise and ODE
    transforms (0 else): their hyper-networks (``zuko.nn.MLP``, ``MaskedMLP``) take the passive
    features (coupling), all ``features`` (autoregressive) or the context alone (element-wise),
    then the context; the ODE network takes the features, the time embedding, the context."""
    zf = _zuko().flows
    if type(lazy) is zf.FFJTransform:
        # zuko's ODE network reads [x, time embedding (2·freqs), context].
        ode = cast(Any, lazy)
        return int(ode.ode.in_features) - features - 2 * int(ode.freqs.numel())
    hyper_in = getattr(getattr(lazy, "hyper", None), "in_features", None)
    if hyper_in is None:
        return 0
    if type(lazy) is zf.GeneralCouplingTransform:
        return int(hyper_in) - int(cast(Any, lazy).mask.sum())
    if type(lazy) is zf.MaskedAutoregressiveTransform:
        return int(hyper_in) - features
    return int(hyper_in)


def _layer(lazy: Any, flipped: bool, probe: Tensor, index: int, cnf_steps: int) -> Layer:
    """The layer of one leaf lazy transform: the closed form where the adapter knows the
    transform by exact type, a :class:`~pathgrad_ref.flows.ContinuousLayer` of ``cnf_steps``
    RK4 steps for zuko's ``FFJTransform``, else :class:`ZukoTransform`."""
    zf = _zuko().flows
    cls_name = type(lazy).__name__
    name = f"zuko transform {index} ({cls_name})"
    context = _context_features(lazy, probe.shape[1])
    if context:
        raise ValueError(
            f"from_zuko: {cls_name} takes {context} context features; only unconditional flows "
            "are supported (build the flow with context=0)"
        )
    if type(lazy) is zf.FFJTransform:
        return _cnf_layer(lazy, flipped, cnf_steps, name)
    if _builds_ffj(lazy):
        # zuko's solve does not run under torch.func, and where the field's parameters live is
        # known for FFJTransform alone.
        raise ValueError(
            f"from_zuko: {name} builds zuko's FreeFormJacobianTransform but is not zuko's "
            "FFJTransform (by exact type): its vector field and parameters are not known to the "
            "adapter; build the continuous flow with zuko.flows.CNF or FFJTransform"
        )
    layer: Layer | None = None
    if type(lazy) is zf.GeneralCouplingTransform:
        kind = _kind(lazy.meta(None, probe[:, lazy.mask.bool()]))
        if kind is not None:
            layer = ZukoCoupling(lazy, flipped, kind, ~lazy.mask.bool(), "coupling", name)
    elif type(lazy) is zf.MaskedAutoregressiveTransform:
        kind = _kind(lazy.meta(None, probe))
        if kind is not None and kind != "monotone" and lazy.passes == 2 and lazy.order is not None:
            active = lazy.order.long() == 1
            layer = ZukoCoupling(lazy, flipped, kind, active, "autoregressive", name)
        elif kind is not None:
            layer = ZukoAutoregressive(lazy, flipped, kind, name)
    elif type(lazy) is zf.ElementWiseTransform:
        kind = _kind(lazy(None))
        if kind is not None:
            layer = ZukoElementwise(lazy, flipped, kind, name)
    if layer is None:
        layer = ZukoTransform(lazy, flipped)
    return layer


def _check_leaf(layer: Layer, lazy: Any, flipped: bool, z: Tensor, name: str) -> Tensor:
    """Check the layer of one zuko transform at the points ``z`` (its sampling-direction input)
    against zuko's own ``call_and_ladj`` and by its round trip; return its output at ``z``.

    A mismatch raises: it catches a subclass that changes the map under a known type, and a
    zuko version whose internals differ from those read here. Explicit directions and the
    round trip are compared at ``sqrt(eps)``. A CNF (:class:`~pathgrad_ref.flows.
    ContinuousLayer`) agrees with zuko only to the solvers' errors: it is compared, and its
    round trip checked, at ``CNF_CHECK_TOL``, against zuko's own ``call_and_ladj`` run at
    ``CNF_REFERENCE_TOL`` (zuko's default tolerances are as coarse as the RK4 solve checked).
    :class:`ZukoTransform` layers are also run under the ``torch.func`` transforms the
    estimators use."""
    try:
        built = lazy(None)
    except Exception as err:
        raise ValueError(
            f"from_zuko: could not build {name} without a context (only unconditional flows "
            f"are supported): {type(err).__name__}: {err}"
        ) from err
    if not getattr(built, "bijective", False):
        raise ValueError(f"from_zuko: {name} builds {built!r}, which is not bijective")
    cnf = isinstance(layer, ContinuousLayer)
    if cnf:
        # A fresh transform of zuko's: tightening its tolerances changes nothing of the user's.
        reference = max(CNF_REFERENCE_TOL, 10.0 * torch.finfo(z.dtype).eps)
        built.atol = built.rtol = reference
    try:
        with torch.no_grad():
            pushed: tuple[Tensor, Tensor] = layer(z)
            y, ld = pushed
            x, ld_inv = layer.inverse(y)
            # zuko's transform in its own orientation maps data to latent: our density
            # direction unflipped, our sampling direction flipped.
            ref, ld_ref = ZukoTransform._run(built, z if flipped else y)
    except NotImplementedError as err:
        raise ValueError(
            f"from_zuko: {name} ({built!r}) has no inverse; both directions are needed "
            "(sampling and density)"
        ) from err
    except Exception as err:
        raise ValueError(
            f"from_zuko: could not evaluate {name} ({built!r}): {type(err).__name__}: {err}"
        ) from err
    n = z.shape[0]
    if y.shape != z.shape or x.shape != z.shape or ld.shape != (n,) or ld_inv.shape != (n,):
        raise ValueError(
            f"from_zuko: {name} maps {tuple(z.shape)} to {tuple(y.shape)} with log-det "
            f"{tuple(ld.shape)}; expected a bijection of (N, d) with a log-det of shape (N,)"
        )
    ours = (y, ld) if flipped else (x, ld_inv)
    checks = [
        ("zuko's explicit direction", ours, (ref, ld_ref)),
        ("round trip", (x, ld + ld_inv), (z, torch.zeros_like(ld))),
    ]
    tight = math.sqrt(torch.finfo(z.dtype).eps)
    # zuko takes log g as the log-derivative of ∫g by quadrature; the adapter differentiates
    # the quadrature it computes (the density of the map actually applied). The two differ by
    # the quadrature's error in the derivative (about 1e-4 for UNAF's 32 points).
    ladj_tol = QUADRATURE_LADJ_TOL if _quadrature(layer, z) else tight
    # Two ODE solves agree to their discretisation errors, not to rounding.
    tols = (CNF_CHECK_TOL, CNF_CHECK_TOL) if cnf else (tight, ladj_tol)
    for what, mine, theirs in checks:
        for part, a, b, tol in zip(("points", "log-det"), mine, theirs, tols, strict=True):
            gap = float(((a - b).abs() / (1.0 + b.abs())).max().detach())
            if not gap <= tol:
                cause = (
                    f"a subclass that changes the map, or a zuko version other than {ZUKO_VERSION}?"
                )
                if cnf:
                    steps = cast(ContinuousLayer, layer).steps
                    cause = (
                        f"a wrong time direction or time convention, or a field that {steps} "
                        f"RK4 steps do not resolve (raise cnf_steps)?"
                    )
                raise ValueError(
                    f"from_zuko: {name} ({type(built).__name__}) disagrees with zuko's own "
                    f"call_and_ladj ({what}, {part}) by {gap:.2e} (tolerance {tol:.0e}) on a "
                    f"probe: {cause}"
                )
    if isinstance(layer, ZukoTransform):
        _check_torch_func(layer, z, f"{name} ({built!r})")
    return y


QUADRATURE_LADJ_TOL = 1e-3
"""Tolerance of the wrap-time comparison of log-determinants with zuko's for maps integrated by
quadrature (not exact for UNAF's network integrand; exact for sums of squares)."""


def _quadrature(layer: Layer, z: Tensor) -> bool:
    """Whether the layer's map is an integral that its quadrature does not integrate exactly."""
    univariate_at = getattr(layer, "univariate_at", None)
    if univariate_at is None or getattr(layer, "kind", None) != "monotone":
        return False
    uni = univariate_at(z)
    assert uni.family is not None
    zt = _zuko().transforms

    def inexact(t: Any) -> bool:
        if type(t) is zt.ComposedTransform:
            return any(inexact(part) for part in t.transforms)
        return isinstance(t, zt.UnconstrainedMonotonicTransform) and not isinstance(
            t, zt.SOSPolynomialTransform
        )

    return inexact(uni.family.explicit.univariate(*uni.tensors))


RANGE_FLOOR = 100.0
"""A root-found sampling direction needs a map whose range covers ``[−100, 100]`` at least
within the solver's reach (checked at the probe's parameters): base samples reach a few tens
at most. A map of bounded range (Gaussianization: ``±4.9``) fails; one of unbounded range
(linear tails of slope ``>= 1e-3``: ``>= ±655`` at the reach) passes."""


def _check_sampling_domain(layer: Layer, flipped: bool, z: Tensor, name: str) -> None:
    """Refuse a transform whose sampling direction is not defined on all of ``R^d``.

    Unflipped, the sampling direction is zuko's inverse. For zuko's soft clip that is defined
    on ``(−B, B)`` alone, and for a monotone map of bounded range (Gaussianization: about
    ``±4.9``) the root of a target beyond the range does not exist: zuko's bisection clamps to
    ``[−10, 10]`` there, silently. So NAF, UNAF and SOSPF with several transforms (a soft clip
    between them) and GF are bijections of ``R^d`` only in the other orientation."""
    if flipped:
        return
    why = ""
    if isinstance(layer, ZukoTransform) and layer.clip_bound is not None:
        why = (
            f"its sampling direction is the inverse of a soft clip, defined on "
            f"(-{layer.clip_bound:g}, {layer.clip_bound:g}) only"
        )
    univariate_at = getattr(layer, "univariate_at", None)
    if univariate_at is not None and getattr(layer, "kind", None) == "monotone":
        uni = univariate_at(z)
        family = uni.family
        assert family is not None
        params = (*uni.tensors, *family.weights())
        # (N, n), the maps' elements, at the reach of the solver's bracket.
        far = z.new_full(uni.tensors[0].shape[:2], INITIAL_BOUND * 2.0**EXPANSIONS)
        with torch.no_grad():
            low, high = family.h(-far, *params), family.h(far, *params)
        reach = float(torch.minimum(-low, high).min())
        if not reach >= RANGE_FLOOR:
            why = (
                f"its sampling direction inverts a monotone map whose range reaches only "
                f"±{reach:.3g} (less than ±{RANGE_FLOOR:g}): samples beyond have no root"
            )
    if why:
        raise ValueError(
            f"from_zuko: {name}: {why}, so the flow is not a bijection of R^d in this "
            "orientation (zuko's bisection clamps such samples to [-10, 10] silently). Use the "
            "reverse-KL orientation zuko.lazy.Flow(flow.transform.inv, flow.base), whose sampling "
            "direction is explicit"
        )


def _check_torch_func(layer: Layer, z: Tensor, name: str) -> None:
    """Run a layer that keeps zuko's own code through what the estimators need: its default
    score step both ways (``torch.func.vjp``), a dense Jacobian (``torch.func.jacfwd``) and a
    parameter gradient under ``functional_call`` (``torch.func.grad``); refuse it otherwise."""
    params = {k: p.detach() for k, p in layer.named_parameters()}
    score = torch.zeros_like(z)

    def pushed(p: dict[str, Tensor], u: Tensor) -> Tensor:
        out: Tensor = torch.func.functional_call(layer, p, (u,))[0]
        return out.sum()

    try:
        u = z.detach().requires_grad_()
        y, _, _ = layer.forward_and_score(u, score)
        layer.inverse_and_score(y.detach().requires_grad_(), score)
        torch.func.jacfwd(lambda v: layer(v.unsqueeze(0))[0][0])(z[0].detach())
        if params:
            torch.func.grad(pushed)(params, z.detach())
    except Exception as err:
        raise ValueError(
            f"from_zuko: {name} does not run under the torch.func transforms that the "
            f"estimators and oracles use ({type(err).__name__}: {err}); this transform is not "
            "supported"
        ) from err


def from_zuko(flow: nn.Module, *, cnf_steps: int = CNF_STEPS) -> Flow:
    """The zuko flow ``flow`` as a :class:`~pathgrad_ref.flows.Flow` with every estimator.

    ``flow``: an unconditional ``zuko.lazy.Flow`` (``zuko.flows.NSF(...)``, or the reverse-KL
    orientation ``zuko.lazy.Flow(flow.transform.inv, flow.base)``) with a ``DiagNormal`` or
    ``BoxUniform`` base. The result's layers are the zuko transforms in the sampling direction
    (``x = T(z)``, ``z ~ base``): ``result.log_prob(x)`` equals ``flow().log_prob(x)`` and
    ``result.transform(z)[0]`` is the sample ``flow().rsample()`` makes from ``z``, where zuko's
    map is explicit; where zuko inverts by bisection (NAF, UNAF, SOSPF, BPF, GF) the project's
    solver inverts to rounding instead, never clamping. Parameters are shared, not copied.
    Batches are ``(N, d)``.

    zuko's CNF (``FFJTransform``: ``x(1) = x + ∫_0^1 f(t, x(t)) dt`` data to latent,
    ``log|det| = ∫_0^1 tr ∂f/∂x dt``) becomes a :class:`~pathgrad_ref.flows.ContinuousLayer`
    on zuko's own ``f`` and parameters, solved by the project's fixed-step RK4 with
    ``cnf_steps`` steps (a positive int, default ``CNF_STEPS = 32``) in place of zuko's adaptive
    solver; sampling integrates from ``t = 1`` to ``0`` in zuko's orientation, from 0 to 1 in
    the reverse-KL one. Its ``log_prob`` and samples equal zuko's to the two solvers' errors
    (RK4's ``O(cnf_steps⁻⁴)``, zuko's 1e-6/1e-5 tolerances), and the estimators are exact for
    the RK4 map. A CNF with zuko's Hutchinson trace (``exact=False``) is refused: its
    ``log_prob`` is a random estimate, so nothing built on it is an exact estimator (the same
    field with ``exact=True`` is accepted).

    Every layer is checked when wrapping, on a few base samples pushed through the flow, against
    zuko's own ``call_and_ladj`` in both directions (a CNF to ``CNF_CHECK_TOL``). Raises
    ``TypeError`` for a non-flow or a ``cnf_steps`` that is not an int, and ``ValueError`` for
    ``cnf_steps < 1`` or naming the piece for a conditional flow, a CNF with ``exact=False``, a
    transform without an inverse, one that does not run under ``torch.func``, a layer that
    disagrees with zuko, or an unsupported base.
    """
    zuko = _zuko()
    cnf_steps = _args.integer("from_zuko: cnf_steps", cnf_steps)
    if not isinstance(flow, zuko.lazy.Flow):
        raise TypeError(f"from_zuko: expected a zuko.lazy.Flow, got {type(flow).__name__}")
    base = _base(flow.base)
    if len(base.event_shape) != 1:
        raise ValueError(
            f"from_zuko: expected a base over vectors (d,), got event shape {base.event_shape}"
        )
    probe = torch.zeros(2, base.dim, dtype=base.anchor.dtype, device=base.anchor.device)
    leaves = _leaves(flow.transform, flipped=False)
    built = [
        (_layer(lazy, flipped, probe, i, cnf_steps), lazy, flipped, i)
        for i, (lazy, flipped) in enumerate(leaves)
    ]
    # Check each layer where it acts: base samples pushed through the layers before it.
    z = base.sample(4, torch.Generator(device=base.anchor.device).manual_seed(0))
    layers: list[Layer] = []
    for layer, lazy, flipped, i in reversed(built):
        name = f"zuko transform {i} ({type(lazy).__name__})"
        _check_sampling_domain(layer, flipped, z, name)
        z = _check_leaf(layer, lazy, flipped, z, name)
        layers.append(layer)
    return Flow(base, layers)
