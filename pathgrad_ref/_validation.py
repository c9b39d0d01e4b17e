"""Input checks shared by flows and estimators: every failure names what was expected.

Shape, dtype and device are metadata: checking them costs nothing and they are checked on every
call. Finiteness needs the values: ``bool(isfinite(x).all())`` reads a flag back to the host (a
device synchronisation on a GPU, a graph break under ``torch.compile``). It is checked on every
estimator call by default; a training loop that checks each batch once where it is made
(:func:`check_finite`) turns the per-call check off with :func:`per_call_finite_check`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

_per_call_finite = True


def per_call_finite_enabled() -> bool:
    """Whether estimators test their batch for NaN and inf on every call (default ``True``)."""
    return _per_call_finite


def set_per_call_finite_check(enabled: bool) -> bool:
    """Switch the estimators' per-call finiteness test on or off; returns the previous setting.

    Off, shape, dtype and device are still checked on every call, and the caller owns the
    finiteness of the batches: call :func:`check_finite` where each batch is made."""
    global _per_call_finite
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected a bool, got {type(enabled).__name__}")
    previous, _per_call_finite = _per_call_finite, enabled
    return previous


@contextlib.contextmanager
def per_call_finite_check(enabled: bool) -> Iterator[None]:
    """Context manager form of :func:`set_per_call_finite_check` (restores the setting)."""
    previous = set_per_call_finite_check(enabled)
    try:
        yield
    finally:
        set_per_call_finite_check(previous)


def check_finite(x: Tensor, name: str = "batch") -> None:
    """Raise ``ValueError`` unless every entry of ``x`` is finite (one host read of a flag)."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).reshape(x.shape[0], -1).any(1).sum()) if x.dim() else 1
        raise ValueError(f"{name}: expected finite values, got NaN or inf in {bad} sample(s)")


def check_batch(
    x: Tensor,
    event_shape: Sequence[int],
    *,
    dtype: torch.dtype,
    device: torch.device,
    name: str = "batch",
    finite: bool = True,
) -> None:
    """Raise ``ValueError`` unless ``x`` has shape ``(N, *event_shape)``, ``dtype``, ``device``
    and, when ``finite``, only finite entries (see :func:`check_finite` for its cost)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    expected = tuple(event_shape)
    if x.dim() != len(expected) + 1 or tuple(x.shape[1:]) != expected:
        raise ValueError(
            f"{name}: expected shape (batch, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one sample, got an empty batch")
    if x.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype} (the flow's), got {x.dtype}")
    if x.device.type != device.type or (
        device.index is not None and x.device.index not in (None, device.index)
    ):
        raise ValueError(f"{name}: expected device {device} (the flow's), got {x.device}")
    if finite:
        check_finite(x, name)
