"""Constructor argument checks: one clear ``TypeError``/``ValueError`` that names the argument
and what was expected, raised where the layer is built rather than at its first batch.

``bool`` is refused where an int is expected (``True`` is an ``int`` to Python, never a size
here), and so is a float with an integer value's look (``2.7`` or ``2.0``): a size is truncated
by ``int()`` without a word, which hides the mistake."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def integer(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is an integer (Python, NumPy or 0-d integer tensor, not a
    bool) and ``>= minimum``."""
    if isinstance(value, Tensor) and value.dim() == 0 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise TypeError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")
    if int(value) < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {int(value)}")
    return int(value)


def widths(name: str, value: Any) -> tuple[int, ...]:
    """A sequence of positive ints (hidden layer widths; empty means no hidden layer)."""
    if isinstance(value, (str, bytes, Tensor)) or not isinstance(value, Sequence):
        raise TypeError(
            f"{name} must be a sequence of positive ints, got {value!r} ({type(value).__name__})"
        )
    return tuple(integer(f"{name}[{i}]", w) for i, w in enumerate(value))


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")
    return value


def positive_real(name: str, value: Any) -> float:
    """A finite ``float > 0`` (an int is accepted, a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {value!r}")
    v = float(value)
    if not (v > 0.0 and v < float("inf")):
        raise ValueError(f"{name} must be a finite positive number, got {v}")
    return v


def permutation(name: str, value: Any, size: int | None = None) -> Tensor:
    """A 1-d integer tensor holding each of ``0 … n−1`` once (``n = size`` when given); a list
    or tuple of ints is accepted and converted."""
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in value):
            raise TypeError(f"{name} must hold ints, got {list(value)!r}")
        value = torch.tensor([int(v) for v in value], dtype=torch.long)
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{name} must be a 1-d integer tensor or a list of ints, got {type(value).__name__}"
        )
    if value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
        raise TypeError(f"{name} must have an integer dtype, got {value.dtype}")
    if value.dim() != 1:
        raise ValueError(f"{name} must be 1-d, got shape {tuple(value.shape)}")
    perm = value.long()
    n = int(perm.numel()) if size is None else size
    if perm.numel() != n or sorted(perm.tolist()) != list(range(n)):
        raise ValueError(f"{name} must be a permutation of range({n}), got {perm.tolist()}")
    if n < 1:
        raise ValueError(f"{name} must not be empty")
    return perm
