"""Gradient estimators for the reverse and forward KL, each with a full-Jacobian naive twin.

Every estimator has the signature ``estimator(flow, target, batch) -> (loss, log_w)``
(see :data:`Estimator`); look them up by name with :func:`get_estimator`, or get the gradient
directly with :func:`gradient`. :func:`compile_estimator` gives the ``torch.compile`` form of an
estimator (same gradients); :func:`per_call_finite_check` switches off the per-call NaN/inf test
of the batch, for training loops that check batches where they make them.

========================  ==========================================================
name                      algorithm
========================  ==========================================================
reverse-standard          reparameterised total gradient of ``KL(q‖p)``
reverse-path-dropin       Algorithm 2 (2022): path gradient through the inverse pass
reverse-path-fast         Algorithm 1: score carried along the forward pass
forward-standard          maximum likelihood
forward-path-gdreg        Algorithm 3: GDReG-style path gradient of ``KL(p‖q)``
forward-path-fast         Algorithm 1 on the inverse flow
reverse-standard-naive    oracle of reverse-standard (dense Jacobian, ``slogdet``)
reverse-path-naive        oracle of both reverse path gradients
forward-standard-naive    oracle of forward-standard
forward-path-naive        oracle of both forward path gradients
========================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import torch
from torch import Tensor

from .._validation import (
    check_finite,
    per_call_finite_check,
    per_call_finite_enabled,
    set_per_call_finite_check,
)
from ..flows.base import Flow
from ..targets.base import Target
from ._common import Direction, Estimator, kl_value, path_surrogate
from .forward import forward_path_fast, forward_path_gdreg, forward_standard
from .naive import (
    forward_path_naive,
    forward_standard_naive,
    reverse_path_naive,
    reverse_standard_naive,
)
from .reverse import reverse_path_dropin, reverse_path_fast, reverse_standard

ESTIMATORS: Mapping[str, Estimator] = MappingProxyType(
    {
        "reverse-standard": reverse_standard,
        "reverse-path-dropin": reverse_path_dropin,
        "reverse-path-fast": reverse_path_fast,
        "forward-standard": forward_standard,
        "forward-path-gdreg": forward_path_gdreg,
        "forward-path-fast": forward_path_fast,
        "reverse-standard-naive": reverse_standard_naive,
        "reverse-path-naive": reverse_path_naive,
        "forward-standard-naive": forward_standard_naive,
        "forward-path-naive": forward_path_naive,
    }
)


def get_estimator(name: str) -> Estimator:
    """The estimator called ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown estimator {name!r}; expected one of: {', '.join(ESTIMATORS)}"
        ) from None


def direction(name: str) -> Direction:
    """``"reverse"`` or ``"forward"``: which KL the estimator ``name`` minimises."""
    get_estimator(name)
    return "reverse" if name.startswith("reverse") else "forward"


def gradient(name: str, flow: Flow, target: Target, batch: Tensor) -> dict[str, Tensor]:
    """The estimator's gradient, keyed like ``flow.named_parameters()`` (trainable ones);
    parameters the loss does not reach get zeros. ``.grad`` fields are left untouched."""
    loss, _ = get_estimator(name)(flow, target, batch)
    named = [(n, p) for n, p in flow.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return {
        n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(named, grads, strict=True)
    }


def compile_estimator(
    estimator: str | Estimator,
    *,
    mode: str | None = None,
    dynamic: bool | None = None,
    fullgraph: bool = False,
) -> Estimator:
    """``torch.compile(estimator)``, an :data:`Estimator` whose gradients are those of the eager
    one (to rounding; ``tests/test_compile.py`` checks every estimator against eager and the naive
    oracle to 1e-10 in float64).

    Call the result like the eager estimator and run ``backward`` on its loss outside it; the
    backward is compiled too (AOTAutograd). ``mode`` (e.g. ``"reduce-overhead"`` for CUDA
    graphs), ``dynamic`` and ``fullgraph`` go to :func:`torch.compile`. The estimator's per-call
    finiteness check reads a flag back to the host and splits the graph: in a training loop turn
    it off (:func:`per_call_finite_check`) and check each batch where it is made
    (:func:`check_finite` or ``flow.check_input``). Shape, dtype and device are still checked on
    every call. With ``mode="reduce-overhead"`` on a GPU the outputs live in CUDA-graph memory
    that the next call overwrites: clone what is kept across steps (e.g. ``log_w``).
    """
    est = get_estimator(estimator) if isinstance(estimator, str) else estimator
    if not callable(est):
        raise TypeError(f"estimator: expected a name or a callable, got {type(est).__name__}")
    compiled: Estimator = torch.compile(est, mode=mode, dynamic=dynamic, fullgraph=fullgraph)
    return compiled


__all__ = [
    "ESTIMATORS",
    "Direction",
    "Estimator",
    "check_finite",
    "compile_estimator",
    "direction",
    "get_estimator",
    "gradient",
    "kl_value",
    "path_surrogate",
    "per_call_finite_check",
    "per_call_finite_enabled",
    "set_per_call_finite_check",
]
