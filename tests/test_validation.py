"""Every flow constructor refuses a bad argument at construction, with one ``TypeError`` or
``ValueError`` that names the argument and what was expected (issue 25, item 4): sizes are
positive ints (not bools, not floats that ``int()`` would truncate), permutations hold each
index once and have the layer's length, hidden widths are positive and wide enough for MADE."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from pathgrad_ref.flows import (
    MADE,
    MLP,
    ActNorm,
    GlobalScaling,
    LULinear,
    MaskedAutoregressive,
    Permutation,
    alternating_mask,
    glow_flow,
    masked_autoregressive_flow,
    neural_spline_flow,
    real_nvp,
    z2_nice,
)

CASES: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    ("actnorm-0", lambda: ActNorm(0), ValueError, r"dim must be a positive int, got 0"),
    ("lulinear-0", lambda: LULinear(0), ValueError, r"dim must be a positive int, got 0"),
    ("actnorm-2.7", lambda: ActNorm(2.7), TypeError, r"dim must be a positive int, got 2\.7"),
    ("actnorm-bool", lambda: ActNorm(True), TypeError, r"dim must be a positive int, got True"),
    ("actnorm-init", lambda: ActNorm(3, data_init=1), TypeError, r"data_init must be a bool"),
    ("actnorm-floor", lambda: ActNorm(3, rel_std_floor=0.0), ValueError, r"rel_std_floor"),
    ("maf-dim-2.7", lambda: masked_autoregressive_flow(2.7), TypeError, r"dim must be a positive"),
    ("maf-layers", lambda: masked_autoregressive_flow(3, n_layers=-1), ValueError,
     r"n_layers must be a positive int, got -1"),
    ("glow-blocks", lambda: glow_flow(4, n_blocks=0), ValueError,
     r"n_blocks must be a positive int, got 0"),
    ("glow-dim", lambda: glow_flow(2.7), TypeError, r"dim must be a positive int, got 2\.7"),
    ("realnvp-n", lambda: real_nvp(4, n_couplings=0), ValueError, r"n_couplings must be a pos"),
    ("nsf-n", lambda: neural_spline_flow(4, n_couplings=-2), ValueError, r"n_couplings must"),
    ("z2nice-n", lambda: z2_nice((4, 4), n_couplings=0, hidden=(4,)), ValueError, "n_couplings"),
    ("z2nice-shape", lambda: z2_nice((4, 4.5)), TypeError, r"shape\[1\] must be a positive"),
    ("scaling-shape", lambda: GlobalScaling((0,)), ValueError, r"event_shape\[0\] must be"),
    ("perm-dup", lambda: Permutation([1, 1, 2]), ValueError, r"permutation must be a permutation"),
    ("perm-float", lambda: Permutation(torch.tensor([1.0, 0.0])), TypeError, r"integer dtype"),
    ("perm-str", lambda: Permutation("10"), TypeError, r"permutation must be a 1-d integer"),
    ("lu-perm-len", lambda: LULinear(3, permutation=[1, 0]), ValueError, r"range\(3\)"),
    ("maf-order-len", lambda: MaskedAutoregressive(3, order=torch.tensor([1, 0])), ValueError,
     r"order must be a permutation of range\(3\), got \[1, 0\]"),
    ("maf-transform", lambda: MaskedAutoregressive(3, transform="affine"), TypeError,
     r"transform must be an ElementwiseTransform"),
    ("mlp-hidden-0", lambda: MLP(3, 2, hidden=(0,)), ValueError,
     r"hidden\[0\] must be a positive int, got 0"),
    ("mlp-hidden-int", lambda: MLP(3, 2, hidden=8), TypeError, r"hidden must be a sequence"),
    ("mlp-in-0", lambda: MLP(0, 2), ValueError, r"in_features must be a positive int, got 0"),
    ("mlp-bias", lambda: MLP(3, 2, bias="no"), TypeError, r"bias must be a bool"),
    ("made-hidden-0", lambda: MADE(torch.arange(3), 2, hidden=(0,)), ValueError, r"hidden\[0\]"),
    ("made-narrow", lambda: MADE(torch.arange(4), 2, hidden=(2,)), ValueError,
     r"hidden\[0\] must be >= d - 1 = 3"),
    ("made-params", lambda: MADE(torch.arange(3), 0), ValueError, r"n_params must be a positive"),
    ("realnvp-hidden-0", lambda: real_nvp(4, hidden=(0,)), ValueError, r"hidden\[0\] must be"),
    ("mask-parity", lambda: alternating_mask((4,), True), TypeError, r"parity must be an int"),
    ("mask-shape", lambda: alternating_mask((2.5,)), TypeError, r"shape\[0\] must be a positive"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("build", "error", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_argument_is_refused_by_name(
    build: Callable[[], Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        build()


def test_permutation_takes_a_list() -> None:
    """A list of ints is a permutation as good as a tensor (it failed with "'list' object has
    no attribute 'long'")."""
    lay = Permutation([1, 0, 2]).double()
    x = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    assert torch.equal(lay(x)[0], x[:, [1, 0, 2]])
    assert torch.equal(LULinear(3, permutation=[2, 0, 1]).permutation, torch.tensor([2, 0, 1]))


def test_integer_like_sizes_are_accepted() -> None:
    """NumPy and 0-d tensor integers are sizes; the flows they build are the usual ones."""
    import numpy as np

    assert ActNorm(np.int64(3)).dim == 3
    assert len(masked_autoregressive_flow(torch.tensor(3), n_layers=np.int32(2)).layers) == 2
