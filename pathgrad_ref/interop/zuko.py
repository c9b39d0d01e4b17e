"""``from_zuko``: path gradients for the flows of zuko (probabilists/zuko, written against 1.6.0).

A zuko ``Flow(transform, base)`` maps **data to latent** with ``transform`` (``log_prob`` runs
it, ``rsample`` runs ``transform.inv``); zuko's reverse-KL tutorial trains the other orientation,
``Flow(flow.transform.inv, flow.base)``. :func:`from_zuko` unrolls the lazy transform of either
orientation into its leaves and turns each into a :class:`~pathgrad_ref.flows.Layer` whose
``forward`` is the **sampling** direction, latent to data. The zuko modules become submodules of
the layers: the parameters are zuko's own tensors, so an optimiser built on either object trains
both.

Score steps (``docs/theory.md`` §4 and §11): zuko's coupling transforms get the closed form of
:class:`~pathgrad_ref.flows.Coupling` (one input-only VJP through the conditioner on the graph the
pass builds anyway). This covers ``GeneralCouplingTransform`` (NICE, RealNVP) and
``MaskedAutoregressiveTransform`` with ``passes=2`` (the coupling NSF/MAF), with the univariate
maps ``AdditiveTransform``, ``MonotonicAffineTransform`` and ``MonotonicRQSTransform`` (the latter
through :func:`pathgrad_ref.flows.splines.rational_quadratic` on zuko's own knots, since zuko
computes no ``f''``). Every other invertible transform (fully autoregressive flows, circular
splines, permutations, ...) gets the default score step of :class:`~pathgrad_ref.flows.Layer`,
one pass of the other direction. Conditional flows, transforms without an inverse and bases other
than ``DiagNormal`` and ``BoxUniform`` are refused with an error naming the piece.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import torch
from torch import Tensor, nn

from ..distributions import BaseDistribution
from ..flows.base import Flow, Layer, is_compiling
from ..flows.coupling import Coupling
from ..flows.transforms import Elementwise, ElementwiseTransform

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


class _Univariate(NamedTuple):
    """The tensors of one of zuko's element-wise maps, batch first: ``(N, n)`` for ``additive``
    ``(shift,)`` and ``affine`` ``(shift, log_scale, scale)``, ``(N, n, K+1)`` for ``rqs``
    ``(x_knots, y_knots, derivatives)``."""

    kind: str
    tensors: tuple[Tensor, ...]

    def select(self, index: Tensor) -> _Univariate:
        """The maps of the features ``index`` (dimension 1)."""
        return _Univariate(self.kind, tuple(t.index_select(1, index) for t in self.tensors))

    def expand(self, n: int) -> _Univariate:
        """Batch-1 parameters broadcast to a batch of ``n``."""
        return _Univariate(self.kind, tuple(t.expand(n, *t.shape[1:]) for t in self.tensors))

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
        from ..flows.splines import rational_quadratic

        x_knots, y_knots, derivatives = self.tensors
        res: Elementwise = rational_quadratic(a, x_knots, y_knots, derivatives, inverse=inverse)
        return res


# The tensors each known univariate map of zuko holds, by kind.
_FIELDS = {
    "additive": ("shift",),
    "affine": ("shift", "log_scale", "scale"),
    "rqs": ("horizontal", "vertical", "derivatives"),
}


def _kind(dependent: Any) -> str | None:
    """The kind of the map inside zuko's ``DependentTransform(univariate, 1)``; ``None`` for a
    map without a closed-form score step here. Called when wrapping, not on every step (the
    ``isinstance`` checks need zuko's classes, which compiled code should not look up)."""
    t = getattr(dependent, "base", None)
    zt = _zuko().transforms
    if isinstance(t, zt.AdditiveTransform):
        return "additive"
    if isinstance(t, zt.MonotonicAffineTransform):
        return "affine"
    if isinstance(t, zt.MonotonicRQSTransform):
        return "rqs"
    return None


def _univariate(kind: str, dependent: Any) -> _Univariate:
    """The tensors of the map of kind ``kind`` (from :func:`_kind`) that zuko's ``meta`` built."""
    return _Univariate(kind, tuple(getattr(dependent.base, f) for f in _FIELDS[kind]))


class _FromZukoMeta(ElementwiseTransform):
    """Placeholder for :class:`Coupling`'s element-wise map: a zuko coupling builds its map from
    its own ``meta`` on every call (:meth:`ZukoCoupling._couple`), never through this object."""

    n_params = 0

    def forward(self, a: Tensor, p: Tensor) -> Elementwise:
        raise RuntimeError("a zuko coupling builds its element-wise map with zuko's meta")

    def inverse(self, a: Tensor, p: Tensor) -> Elementwise:
        raise RuntimeError("a zuko coupling builds its element-wise map with zuko's meta")


# --- layers ----------------------------------------------------------------------------------


class ZukoTransform(Layer):
    """Any invertible zuko transform as a layer, with the default score step.

    ``lazy`` is the zuko lazy transform; its data-to-latent map is ``lazy()`` (``lazy().inv``
    when ``flipped``). ``forward`` is the sampling direction, the inverse of that map. Shapes
    ``(N, d)``; ``log_det`` ``(N,)``.
    """

    def __init__(self, lazy: Any, flipped: bool) -> None:
        super().__init__()
        self.lazy = lazy
        self.flipped = bool(flipped)

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

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._run(self._data_to_latent().inv, x)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self._run(self._data_to_latent(), y)


class ZukoCoupling(Coupling):
    """zuko's ``GeneralCouplingTransform`` with the closed-form coupling score step.

    zuko's mask marks the *passive* features (``idx_a``, fed to the hyper-network); the others
    (``idx_b``) go through the univariate map that ``meta(x_a)`` builds. Data to latent applies
    that map, the sampling direction its inverse (the other way round when ``flipped``). The
    step is :meth:`Coupling._score_step` with the map read from zuko's ``meta`` on every call.
    """

    def __init__(self, lazy: Any, flipped: bool, kind: str) -> None:
        super().__init__(~lazy.mask.bool(), lazy, _FromZukoMeta())
        self.flipped = bool(flipped)
        self.kind = kind

    def _elementwise_inverse(self, inverse: bool) -> bool:
        # Unflipped: forward (sampling) = inverse of zuko's map = the univariate's inverse.
        return inverse == self.flipped

    def _couple(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor, Tensor, Elementwise]:
        a, b = self._split(x)  # a: transformed (zuko's x_b), b: passive (zuko's x_a)
        uni = _univariate(self.kind, cast(Any, self.conditioner).meta(None, b))
        res = uni.apply(a, self._elementwise_inverse(inverse))
        return self._merge(res.out, b), res.log_deriv.sum(1), b, res

    def _score_step_functional(
        self, x: Tensor, score: Tensor, inverse: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        # Under torch.compile: the default step, which takes its VJP with torch.func.
        if inverse:
            return Layer.inverse_and_score(self, x, score)
        return Layer.forward_and_score(self, x, score)


class ZukoAutoregressive2(Layer):
    """zuko's ``MaskedAutoregressiveTransform(passes=2)`` with a closed-form score step.

    zuko's ``order`` splits the features into groups 0 and 1; the hyper-network gives group 1
    parameters from group 0 and group 0 parameters from its biases alone (``docs/theory.md``
    §11). So the data-to-latent map ``u ↦ v`` is a coupling followed by an element-wise map with
    fixed parameters,

        v_1 = f(u_1; c_1(u_0)),   v_0 = f(u_0; c_0),

    and the sampling direction undoes the two in reverse order. Each piece gets its closed-form
    score step: ``s ← (s − f''/f') / f'`` on an element-wise group, and for the coupling, on the
    passive group, ``s_0 ← s_0 − ∂_{u_0}[Σ log f'(u_1; c_1(u_0)) + ⟨s_1', f(u_1; c_1(u_0))⟩]``,
    one input-only VJP through the hyper-network. Shapes ``(N, d)``, ``log_det`` ``(N,)``.
    """

    first: Tensor
    second: Tensor
    order: Tensor
    unpermute: Tensor

    def __init__(self, lazy: Any, flipped: bool, kind: str) -> None:
        super().__init__()
        self.lazy = lazy
        self.flipped = bool(flipped)
        self.kind = kind
        groups = lazy.order.long()
        self.register_buffer("first", torch.nonzero(groups == 0).flatten(), persistent=False)
        self.register_buffer("second", torch.nonzero(groups == 1).flatten(), persistent=False)
        order = torch.cat([self.first, self.second])
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("unpermute", torch.argsort(order), persistent=False)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        sizes = [self.first.numel(), self.second.numel()]
        g0, g1 = torch.split(x.index_select(1, self.order), sizes, dim=1)
        return g0, g1

    def _merge(self, g0: Tensor, g1: Tensor) -> Tensor:
        return torch.cat([g0, g1], dim=1).index_select(1, self.unpermute)

    def _split_elementwise(self, res: Elementwise) -> tuple[Elementwise, Elementwise]:
        """Group 0 and group 1 parts of an element-wise result over all features."""
        out, ld = self._split(res.out), self._split(res.log_deriv)
        gld = (None, None) if res.grad_log_deriv is None else self._split(res.grad_log_deriv)
        return Elementwise(out[0], ld[0], gld[0]), Elementwise(out[1], ld[1], gld[1])

    def _params(self, g0: Tensor) -> _Univariate:
        """All features' maps from the hyper-network at ``(g0, 0)`` (group 1 is masked out)."""
        cond = self._merge(g0, g0.new_zeros(g0.shape[0], self.second.numel()))
        return _univariate(self.kind, cast(Any, self.lazy).meta(None, cond))

    def _pass(self, x: Tensor, zuko_forward: bool) -> tuple[Tensor, Tensor, Any]:
        """``(y, log_det, pieces)`` of zuko's map (``zuko_forward``) or of its inverse."""
        x0, x1 = self._split(x)
        if zuko_forward:  # coupling on group 1 conditioned on the input x0, then group 0
            # One element-wise pass over all features (group 0's parameters are the fixed
            # ones); x0 reaches the maps' parameters only, so the VJP to x0 is the coupling's.
            res0, res1 = self._split_elementwise(self._params(x0).apply(x, inverse=False))
            passive = x0
        else:  # group 0 (fixed parameters) first, then group 1 conditioned on its output
            fixed = self._params(x0.new_zeros(1, self.first.numel()))
            res0 = fixed.select(self.first).expand(x.shape[0]).apply(x0, inverse=True)
            passive = res0.out
            res1 = self._params(passive).select(self.second).apply(x1, inverse=True)
        y = self._merge(res0.out, res1.out)
        return y, res0.log_deriv.sum(1) + res1.log_deriv.sum(1), (passive, res0, res1)

    def _zuko_forward(self, inverse: bool) -> bool:
        # Unflipped: forward (sampling) = inverse of zuko's data-to-latent map.
        return inverse != self.flipped

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, log_det, _ = self._pass(x, self._zuko_forward(False))
        return y, log_det

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        x, log_det, _ = self._pass(y, self._zuko_forward(True))
        return x, log_det

    def _score_step(self, x: Tensor, score: Tensor, inverse: bool) -> tuple[Tensor, Tensor, Tensor]:
        if not x.requires_grad:
            raise ValueError(
                "the fast-path score step needs an input that requires grad "
                "(start from z.detach().requires_grad_())"
            )
        if is_compiling():  # the autograd VJP below needs the eager graph; see Coupling
            if inverse:
                return Layer.inverse_and_score(self, x, score)
            return Layer.forward_and_score(self, x, score)
        zuko_forward = self._zuko_forward(inverse)
        y, log_det, (passive, res0, res1) = self._pass(x, zuko_forward)
        s0, s1 = self._split(score)

        def elementwise(s: Tensor, res: Elementwise) -> Tensor:
            u = s if res.grad_log_deriv is None else s - res.grad_log_deriv.detach()
            return u * torch.exp(-res.log_deriv.detach())

        s1_new = elementwise(s1, res1)
        outputs, cotangents = [res1.out], [s1_new]
        ld1 = res1.log_deriv.sum(1)
        if ld1.requires_grad:
            outputs.append(ld1)
            cotangents.append(torch.ones_like(ld1))
        (vjp0,) = torch.autograd.grad(
            outputs, passive, cotangents, retain_graph=True, allow_unused=True
        )
        if zuko_forward:  # coupling first, then the element-wise map of group 0
            s0_mid = s0 if vjp0 is None else s0 - vjp0
            s0_new = elementwise(s0_mid, res0)
        else:  # the element-wise map of group 0 first, then the coupling
            s0_mid = elementwise(s0, res0)
            s0_new = s0_mid if vjp0 is None else s0_mid - vjp0
        return y, log_det, self._merge(s0_new, s1_new)

    def forward_and_score(self, x: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self._score_step(x, score, inverse=False)

    def inverse_and_score(self, y: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self._score_step(y, score, inverse=True)


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
    try:
        dist = lazy(None)
    except Exception as err:
        raise ValueError(
            f"from_zuko: could not build the base distribution {type(lazy).__name__} without a "
            f"context (only unconditional flows are supported): {err}"
        ) from err
    zd = _zuko().distributions
    if isinstance(dist, zd.DiagNormal):
        return ZukoDiagNormal(lazy)
    if isinstance(dist, zd.BoxUniform):
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
    """The context size of zuko's coupling and masked autoregressive transforms (0 else): their
    hyper-networks (``zuko.nn.MLP``, ``MaskedMLP``) take the passive features (coupling) or all
    ``features`` (autoregressive), then the context."""
    zf = _zuko().flows
    hyper_in = getattr(getattr(lazy, "hyper", None), "in_features", None)
    if hyper_in is None:
        return 0
    if isinstance(lazy, zf.GeneralCouplingTransform):
        return int(hyper_in) - int(cast(Any, lazy).mask.sum())
    if isinstance(lazy, zf.MaskedAutoregressiveTransform):
        return int(hyper_in) - features
    return 0


def _layer(lazy: Any, flipped: bool, probe: Tensor) -> Layer:
    name = type(lazy).__name__
    context = _context_features(lazy, probe.shape[1])
    if context:
        raise ValueError(
            f"from_zuko: {name} takes {context} context features; only unconditional flows "
            "are supported (build the flow with context=0)"
        )
    zf = _zuko().flows
    layer: Layer
    kind: str | None = None
    if isinstance(lazy, zf.GeneralCouplingTransform):
        kind = _kind(lazy.meta(None, probe[:, lazy.mask.bool()]))
        if kind is not None:
            layer = ZukoCoupling(lazy, flipped, kind)
    elif (
        isinstance(lazy, zf.MaskedAutoregressiveTransform)
        and lazy.passes == 2
        and lazy.order is not None
    ):
        kind = _kind(lazy.meta(None, probe))
        if kind is not None:
            layer = ZukoAutoregressive2(lazy, flipped, kind)
    if kind is None:
        layer = ZukoTransform(lazy, flipped)
    _check_layer(layer, lazy, probe)
    return layer


def _check_layer(layer: Layer, lazy: nn.Module, probe: Tensor) -> None:
    """Build the transform and run both directions once on ``probe``; a clear error otherwise."""
    name = type(lazy).__name__
    try:
        built = lazy(None)
    except Exception as err:
        raise ValueError(
            f"from_zuko: could not build {name} without a context (only unconditional flows "
            f"are supported): {err}"
        ) from err
    if not getattr(built, "bijective", False):
        raise ValueError(f"from_zuko: {name} builds {built!r}, which is not bijective")
    try:
        with torch.no_grad():
            y, ld = layer(probe)
            x, ld_inv = layer.inverse(probe)
    except NotImplementedError as err:
        raise ValueError(
            f"from_zuko: {name} ({built!r}) has no inverse; both directions are needed "
            "(sampling and density)"
        ) from err
    except Exception as err:
        raise ValueError(f"from_zuko: could not evaluate {name} ({built!r}): {err}") from err
    n = probe.shape[0]
    if y.shape != probe.shape or x.shape != probe.shape or ld.shape != (n,) or ld_inv.shape != (n,):
        raise ValueError(
            f"from_zuko: {name} maps {tuple(probe.shape)} to {tuple(y.shape)} with log-det "
            f"{tuple(ld.shape)}; expected a bijection of (N, d) with a log-det of shape (N,)"
        )


def from_zuko(flow: nn.Module) -> Flow:
    """The zuko flow ``flow`` as a :class:`~pathgrad_ref.flows.Flow` with every estimator.

    ``flow``: an unconditional ``zuko.lazy.Flow`` (``zuko.flows.NSF(...)``, or the reverse-KL
    orientation ``zuko.lazy.Flow(flow.transform.inv, flow.base)``) with a ``DiagNormal`` or
    ``BoxUniform`` base. The result's layers are the zuko transforms in the sampling direction
    (``x = T(z)``, ``z ~ base``): ``result.log_prob(x)`` equals ``flow().log_prob(x)`` and
    ``result.transform(z)[0]`` is the sample ``flow().rsample()`` makes from ``z``. Parameters
    are shared, not copied. Batches are ``(N, d)``.

    Raises ``TypeError`` for a non-flow and ``ValueError`` naming the piece for a conditional
    flow, a transform without an inverse or an unsupported base.
    """
    zuko = _zuko()
    if not isinstance(flow, zuko.lazy.Flow):
        raise TypeError(f"from_zuko: expected a zuko.lazy.Flow, got {type(flow).__name__}")
    base = _base(flow.base)
    if len(base.event_shape) != 1:
        raise ValueError(
            f"from_zuko: expected a base over vectors (d,), got event shape {base.event_shape}"
        )
    probe = torch.zeros(2, base.dim, dtype=base.anchor.dtype, device=base.anchor.device)
    leaves = _leaves(flow.transform, flipped=False)
    layers = [_layer(lazy, flipped, probe) for lazy, flipped in reversed(leaves)]
    return Flow(base, layers)
