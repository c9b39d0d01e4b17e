"""Glow's layers (Kingma & Dhariwal 2018) with closed-form score steps (``docs/theory.md`` §4.6).

- :class:`ActNorm`, ``y = x·exp(σ) + μ`` per feature: ``s_y = s_x·exp(−σ)``;
- :class:`LULinear`, ``y = W x`` with ``W = P L U``: ``log|det J| = Σ log|diag U|`` is constant
  in ``x``, so ``s_y = W^{-T} s_x``, two triangular solves and a permutation;
- :class:`Permutation`, ``y = P x``: ``s_y = P s_x``.

All act on flat ``(N, d)`` batches; :func:`glow_flow` stacks them with affine couplings.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .._validation import check_finite
from . import _args
from .base import Flow, Layer
from .coupling import AffineCoupling
from .models import coupling_stack
from .scaling import Scaling


def _check_flat(x: Tensor, dim: int, name: str) -> None:
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"{name} expects a (batch, {dim}) batch, got shape {tuple(x.shape)}")


class ActNorm(Scaling):
    """``y = x·exp(σ) + μ`` with one ``(σ, μ)`` per feature, ``(N, d) -> (N, d)``.

    ``log|det J| = Σ_i σ_i`` (the same for every sample); score steps ``s_y = s_x·exp(−σ)`` and,
    through the inverse, ``s_x = s_y·exp(σ)`` (:class:`~pathgrad_ref.flows.scaling.Scaling`).
    It starts as the identity (``σ = μ = 0``).

    With ``data_init=True`` the first batch that passes through the layer, in either direction,
    sets ``(σ, μ)`` so that the *output* of that call has zero mean and unit variance per
    feature (Glow's data-dependent initialisation), and the call returns that output. It runs
    once, in eager code (the parameters are written in place): pass one batch through the flow
    before compiling or using ``torch.func``. Loading a state dict marks the layer initialised.

    The initialising batch must be finite (``ValueError`` otherwise, and the layer stays
    uninitialised). A feature whose standard deviation is at most ``rel_std_floor`` times its
    root mean square (a constant feature, or one whose spread is rounding noise) is only
    centred, ``σ_i = 0``, with a warning: dividing by that spread would blow the next batch up.
    The floor is relative, so data of any scale (std ``1e-7`` in float32, say) is standardised;
    its default is ``sqrt(finfo(dtype).eps)`` of the batch. Under ``torch.distributed`` with
    more than one rank the initialisation is refused (``RuntimeError``): each rank would set
    the parameters from its own batch and the ranks would train different flows.
    """

    def __init__(
        self, dim: int, data_init: bool = False, rel_std_floor: float | None = None
    ) -> None:
        super().__init__()
        self.dim = _args.integer("dim", dim)
        self.event_shape = (self.dim,)
        self.log_scale = nn.Parameter(torch.zeros(self.dim))
        self.shift = nn.Parameter(torch.zeros(self.dim))
        self.rel_std_floor = (
            None if rel_std_floor is None else _args.positive_real("rel_std_floor", rel_std_floor)
        )
        self.pending_init = _args.flag("data_init", data_init)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.pending_init = False

    @torch.no_grad()
    def _initialize(self, batch: Tensor, inverse: bool) -> None:
        """Standardise the output of this call: forward, ``σ = −log std(x)``,
        ``μ = −mean(x)·exp(σ)``; inverse, ``μ = mean(y)``, ``σ = log std(y)``; ``σ = 0`` for
        the features at or below the floor (see the class docstring)."""
        if batch.shape[0] < 2:
            raise ValueError("ActNorm's data-dependent initialisation needs a batch of >= 2")
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise RuntimeError(
                "ActNorm's data-dependent initialisation under torch.distributed (world size "
                f"{dist.get_world_size()}) would give each rank its own parameters; build the "
                "flow with data_init=False, or initialise it and load one state dict on every rank"
            )
        check_finite(batch, "ActNorm's data-dependent initialisation batch")
        mean = batch.mean(0)
        std = batch.std(0)
        rel = self.rel_std_floor
        if rel is None:
            rel = float(torch.finfo(batch.dtype).eps) ** 0.5
        # The spread is measured against the feature's own size: rounding noise is relative.
        flat = std <= rel * batch.square().mean(0).sqrt()
        if bool(flat.any()):
            idx = torch.nonzero(flat).flatten().tolist()
            warnings.warn(
                f"ActNorm data-dependent initialisation: {len(idx)} feature(s) {idx[:10]} have a "
                f"standard deviation at most {rel:.3g} of their RMS (constant, or rounding "
                "noise); they are centred but not rescaled",
                RuntimeWarning,
                stacklevel=2,
            )
        log_std = torch.where(flat, torch.zeros_like(std), torch.log(std))
        if inverse:
            self.log_scale.copy_(log_std)
            self.shift.copy_(mean)
        else:
            self.log_scale.copy_(-log_std)
            self.shift.copy_(-mean * torch.exp(-log_std))
        self.pending_init = False

    def _log_det(self, x: Tensor, sign: float) -> Tensor:
        return (sign * self.log_scale.sum()).expand(x.shape[0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _check_flat(x, self.dim, "ActNorm")
        if self.pending_init:
            self._initialize(x, inverse=False)
        return x * torch.exp(self.log_scale) + self.shift, self._log_det(x, 1.0)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        _check_flat(y, self.dim, "ActNorm")
        if self.pending_init:
            self._initialize(y, inverse=True)
        return (y - self.shift) * torch.exp(-self.log_scale), self._log_det(y, -1.0)


class LULinear(Layer):
    """``y = W x``, ``W = P L U``, on ``(N, d)`` batches (Glow's LU-decomposed 1×1 convolution).

    ``P`` is a fixed permutation (``permutation[i]`` is the input of row ``i``: ``(P v)_i =
    v_{permutation[i]}``; identity by default), ``L`` unit lower triangular, ``U`` upper
    triangular with the positive diagonal ``exp(log_diag)``. Then

        log|det J| = Σ_i log_diag_i                       (constant in x)
        s_y = W^{-T} s_x = P L^{-T} U^{-T} s_x            (two triangular solves, P^{-T} = P)

    and ``s_x = W^T s_y = U^T L^T P^T s_y`` through the inverse, which is
    ``x = U^{-1} L^{-1} P^T y`` (two triangular solves). ``L = U = I`` at initialisation.
    """

    # log|det| = Σ log|diag U| does not depend on x (the default score step checks the declaration).
    constant_log_det = True

    permutation: Tensor
    unpermutation: Tensor
    lower_mask: Tensor

    def __init__(self, dim: int, permutation: Tensor | Sequence[int] | None = None) -> None:
        super().__init__()
        self.dim = _args.integer("dim", dim)
        self.event_shape = (self.dim,)
        if permutation is None:
            perm = torch.arange(self.dim)
        else:
            perm = _args.permutation("permutation", permutation, self.dim)
        self.register_buffer("permutation", perm.clone(), persistent=True)
        self.register_buffer("unpermutation", torch.argsort(perm), persistent=False)
        self.register_buffer(
            "lower_mask", torch.ones(self.dim, self.dim).tril(-1), persistent=False
        )
        self.lower = nn.Parameter(torch.zeros(self.dim, self.dim))
        self.upper = nn.Parameter(torch.zeros(self.dim, self.dim))
        self.log_diag = nn.Parameter(torch.zeros(self.dim))

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Earlier versions saved a ``sign`` buffer that was never anything but ones (U's
        # diagonal is exp(log_diag), positive): accept such a state dict, refuse any other sign.
        sign = state_dict.pop(prefix + "sign", None)
        if sign is not None and not bool((sign == 1).all()):
            raise ValueError(f"{prefix}sign: this LULinear supports only a positive U diagonal")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def factors(self) -> tuple[Tensor, Tensor]:
        """``(L, U)``, both ``(d, d)``; only the strict triangles of ``lower`` and ``upper``
        are used."""
        eye = torch.eye(self.dim, dtype=self.lower.dtype, device=self.lower.device)
        L = self.lower * self.lower_mask + eye
        U = self.upper * self.lower_mask.T + torch.diag(torch.exp(self.log_diag))
        return L, U

    def weight(self) -> Tensor:
        """The dense ``W = P L U``, ``(d, d)`` (for tests and inspection)."""
        L, U = self.factors()
        out: Tensor = (L @ U).index_select(0, self.permutation)
        return out

    def _log_det(self, x: Tensor, sign: float) -> Tensor:
        return (sign * self.log_diag.sum()).expand(x.shape[0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _check_flat(x, self.dim, "LULinear")
        L, U = self.factors()
        # Row vectors: (W x)ᵀ = xᵀ Uᵀ Lᵀ, then P permutes the columns.
        y = (x @ U.T @ L.T).index_select(1, self.permutation)
        return y, self._log_det(x, 1.0)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        _check_flat(y, self.dim, "LULinear")
        L, U = self.factors()
        v = y.index_select(1, self.unpermutation)  # Pᵀ y
        # w Lᵀ = v and x Uᵀ = w, solved for the rows w, x (solves from the right).
        w = torch.linalg.solve_triangular(L.T, v, upper=True, left=False, unitriangular=True)
        x = torch.linalg.solve_triangular(U.T, w, upper=False, left=False)
        return x, self._log_det(y, -1.0)

    def forward_and_score(self, x: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``s_y = P L^{-T} U^{-T} s_x``: rows ``a U = s_x``, ``b L = a``, then ``P``."""
        y, log_det = self.forward(x)
        with torch.no_grad():
            L, U = self.factors()
            a = torch.linalg.solve_triangular(U, score, upper=True, left=False)
            b = torch.linalg.solve_triangular(L, a, upper=False, left=False, unitriangular=True)
            s_y = b.index_select(1, self.permutation)
        return y, log_det, s_y

    def inverse_and_score(self, y: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``s_x = U^T L^T P^T s_y`` (row vectors: ``(Pᵀ s_y)ᵀ L U``)."""
        x, log_det = self.inverse(y)
        with torch.no_grad():
            L, U = self.factors()
            s_x = score.index_select(1, self.unpermutation) @ L @ U
        return x, log_det, s_x


class Permutation(Layer):
    """A fixed permutation ``y_i = x_{permutation[i]}`` of ``(N, d)`` batches: ``log|det| = 0``,
    ``s_y = P s_x`` (``P`` orthogonal, ``P^{-T} = P``) and ``s_x = Pᵀ s_y``. ``permutation``
    is a 1-d integer tensor or a list of ints holding each of ``0 … d−1`` once."""

    # log|det| = 0 does not depend on x (the default score step checks the declaration).
    constant_log_det = True

    permutation: Tensor
    unpermutation: Tensor

    def __init__(self, permutation: Tensor | Sequence[int]) -> None:
        super().__init__()
        perm = _args.permutation("permutation", permutation)
        self.dim = int(perm.numel())
        self.event_shape = (self.dim,)
        self.register_buffer("permutation", perm.clone(), persistent=True)
        self.register_buffer("unpermutation", torch.argsort(perm), persistent=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _check_flat(x, self.dim, "Permutation")
        return x.index_select(1, self.permutation), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        _check_flat(y, self.dim, "Permutation")
        return y.index_select(1, self.unpermutation), y.new_zeros(y.shape[0])

    def forward_and_score(self, x: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        y, log_det = self.forward(x)
        return y, log_det, score.index_select(1, self.permutation)

    def inverse_and_score(self, y: Tensor, score: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, log_det = self.inverse(y)
        return x, log_det, score.index_select(1, self.unpermutation)


def glow_flow(
    dim: int,
    n_blocks: int = 4,
    hidden: Sequence[int] = (64, 64),
    activation: str = "tanh",
    data_init: bool = False,
) -> Flow:
    """Glow on ``R^dim``: per block ActNorm → LULinear → affine coupling (alternating masks,
    MLP conditioner with a zero last layer); ``N(0, I)`` base. Every layer starts as the
    identity (unless ``data_init``, see :class:`ActNorm`)."""
    data_init = _args.flag("data_init", data_init)

    def before() -> list[Layer]:
        return [ActNorm(dim, data_init=data_init), LULinear(dim)]

    return coupling_stack(
        dim, n_blocks, 2, AffineCoupling, hidden, activation, True, before, count="n_blocks"
    )
