"""Boolean masks selecting the *active* (transformed) sites of a coupling layer.

``True`` marks active sites; the passive rest conditions the transform. Masks of a flow are
usually alternated (``parity`` 0, 1, 0, …) so that every site is transformed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import _args


def _check(shape: Sequence[int], parity: int) -> tuple[int, ...]:
    dims = _args.widths("shape", shape)
    if not dims:
        raise ValueError("mask shape must be non-empty and positive, got ()")
    if _args.integer("parity", parity, minimum=0) not in (0, 1):
        raise ValueError(f"parity must be 0 or 1, got {parity}")
    return dims


def alternating_mask(shape: Sequence[int], parity: int = 0) -> Tensor:
    """Active where the flat (row-major) site index ``i`` has ``i % 2 == parity``.

    For vectors this is the classic even/odd RealNVP split; on lattices it is a flat split
    for fully-connected conditioners."""
    dims = _check(shape, parity)
    n = 1
    for d in dims:
        n *= d
    return (torch.arange(n) % 2 == parity).reshape(dims)


def checkerboard_mask(shape: Sequence[int], parity: int = 0) -> Tensor:
    """Active where the sum of lattice coordinates has ``Σ_μ x_μ % 2 == parity``: every
    active site has only passive nearest neighbours."""
    dims = _check(shape, parity)
    grids = torch.meshgrid(*(torch.arange(d) for d in dims), indexing="ij")
    return (sum(grids, torch.zeros(dims, dtype=torch.long)) % 2) == parity
