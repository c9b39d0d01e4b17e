"""Conditioner networks: the maps from the passive half to the transform parameters."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from . import _args

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
}


class MaskedLinear(nn.Linear):
    """``y = b + (W ⊙ M) x`` with a fixed 0/1 mask ``M`` of ``(out_features, in_features)``."""

    mask: Tensor

    def __init__(self, mask: Tensor, bias: bool = True) -> None:
        super().__init__(mask.shape[1], mask.shape[0], bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class MLP(nn.Module):
    """``(N, in_features) -> (N, out_features)``: ``len(hidden)`` hidden layers and an activation.

    ``bias=False`` with an odd activation (tanh) gives an odd map, as Z2-equivariant couplings
    need. ``zero_init_last`` starts the coupling at the identity map. ``masks`` (one 0/1 tensor
    of shape ``(n_out, n_in)`` per linear layer) makes every layer a :class:`MaskedLinear`, as
    :class:`~pathgrad_ref.flows.autoregressive.MADE` needs; the layers are drawn in the same
    order and from the same random stream either way.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "tanh",
        bias: bool = True,
        zero_init_last: bool = True,
        masks: Sequence[Tensor] | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}"
            )
        in_features = _args.integer("in_features", in_features)
        out_features = _args.integer("out_features", out_features)
        sizes = [in_features, *_args.widths("hidden", hidden), out_features]
        bias = _args.flag("bias", bias)
        zero_init_last = _args.flag("zero_init_last", zero_init_last)
        shapes = [(n_out, n_in) for n_in, n_out in itertools.pairwise(sizes)]
        if masks is not None and [tuple(m.shape) for m in masks] != shapes:
            got = [tuple(m.shape) for m in masks]
            raise ValueError(f"masks must have the layers' shapes {shapes}, got {got}")
        layers: list[nn.Module] = []
        for i, (n_out, n_in) in enumerate(shapes):
            if masks is None:
                layers.append(nn.Linear(n_in, n_out, bias=bias))
            else:
                layers.append(MaskedLinear(masks[i], bias=bias))
            if i < len(shapes) - 1:
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)
        if zero_init_last:
            last = layers[-1]
            assert isinstance(last, nn.Linear)
            with torch.no_grad():
                last.weight.zero_()
                if last.bias is not None:
                    last.bias.zero_()

    def forward(self, b: Tensor) -> Tensor:
        out: Tensor = self.net(b)
        return out
