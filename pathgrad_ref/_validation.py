"""Input checks shared by flows and estimators: every failure names what was expected."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def check_batch(
    x: Tensor,
    event_shape: Sequence[int],
    *,
    dtype: torch.dtype,
    device: torch.device,
    name: str = "batch",
) -> None:
    """Raise ``ValueError`` unless ``x`` has shape ``(N, *event_shape)``, ``dtype``, ``device``
    and only finite entries."""
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
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise ValueError(f"{name}: expected finite values, got NaN or inf in {bad} sample(s)")
