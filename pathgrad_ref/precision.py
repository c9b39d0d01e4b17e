"""The precision policy of float32 runs on a GPU: TensorFloat-32 (TF32) off, unless asked for.

TF32 rounds the inputs of float32 matrix products and convolutions to a 10-bit mantissa
(unit roundoff ``2^-11 ≈ 4.9e-4`` instead of ``2^-24 ≈ 6e-8``) on NVIDIA GPUs from Ampere on.
In this torch version cuDNN convolutions use TF32 by default and matmuls do not. The project's
estimators are defined by their agreement with dense oracles: emulated on the CPU, TF32 raises
the U(1) fast-path-versus-oracle gradient error in float32 from 5e-7 to 8e-4, against a
float32 test tolerance of 2e-3, and it enters the score ``s_l`` that the fast path carries
through every layer. So the policy is

    float32 on CUDA:  matmuls "ieee", cuDNN convolutions "ieee", cuDNN RNNs "ieee"  (TF32 off)

unless ``allow_tf32=True`` is passed explicitly (a speed study that reports the choice). float64
and the CPU are unaffected by these flags; :func:`apply_precision_policy` still records them.

The flags are process-global torch state: set them once at start-up, before building models,
and record :class:`PrecisionPolicy` (``as_dict()``) in the run's configuration.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

Fp32Precision = Literal["ieee", "tf32"]


@dataclass(frozen=True)
class PrecisionPolicy:
    """What float32 matmuls and convolutions use on a GPU: ``"ieee"`` (full float32) or
    ``"tf32"``; ``api`` names the torch flags that carry it (``"fp32_precision"`` from torch 2.9,
    ``"allow_tf32"`` before)."""

    matmul: Fp32Precision
    conv: Fp32Precision
    api: Literal["fp32_precision", "allow_tf32"]

    def as_dict(self) -> dict[str, str]:
        return dict(asdict(self))


def _backends() -> Any:
    # Untyped view of torch.backends: its fp32_precision attributes exist from torch 2.9 on.
    return torch.backends


def _new_api() -> bool:
    # torch >= 2.9: per-backend fp32_precision; mixing it with allow_tf32 raises on reads.
    b = _backends()
    return hasattr(b.cuda.matmul, "fp32_precision") and hasattr(b.cudnn, "conv")


def _effective(flag: str, parent: str) -> Fp32Precision:
    # "none" defers to the parent flag (torch.backends.fp32_precision), itself "none" = IEEE
    # by default.
    return "tf32" if flag == "tf32" or (flag == "none" and parent == "tf32") else "ieee"


def current_policy() -> PrecisionPolicy:
    """The flags as torch holds them now (``"tf32"`` wherever TF32 is allowed)."""
    b = _backends()
    if _new_api():
        parent = str(b.fp32_precision)
        return PrecisionPolicy(
            matmul=_effective(str(b.cuda.matmul.fp32_precision), parent),
            conv=_effective(str(b.cudnn.conv.fp32_precision), parent),
            api="fp32_precision",
        )
    return PrecisionPolicy(
        matmul="tf32" if b.cuda.matmul.allow_tf32 else "ieee",
        conv="tf32" if b.cudnn.allow_tf32 else "ieee",
        api="allow_tf32",
    )


def _set(matmul: Fp32Precision, conv: Fp32Precision) -> None:
    b = _backends()
    if _new_api():
        b.cuda.matmul.fp32_precision = matmul
        b.cudnn.conv.fp32_precision = conv
        # Kept equal to conv: cuDNN reads of a mixed conv/rnn state raise in torch >= 2.9.
        b.cudnn.rnn.fp32_precision = conv
    else:
        b.cuda.matmul.allow_tf32 = matmul == "tf32"
        b.cudnn.allow_tf32 = conv == "tf32"


def apply_precision_policy(
    dtype: torch.dtype, device: str | torch.device, *, allow_tf32: bool = False
) -> PrecisionPolicy:
    """Set the float32 matmul and convolution precision for a run in ``dtype`` on ``device``
    and return it: TF32 off (``"ieee"``) unless ``allow_tf32``.

    The flags are set whatever ``dtype`` and ``device`` (they act only on float32 CUDA work), so
    that a run's recorded policy never depends on what an earlier run in the process left.
    ``ValueError`` for a non-floating ``dtype`` or ``allow_tf32`` outside float32.
    """
    if not dtype.is_floating_point:
        raise ValueError(f"dtype: expected a floating point dtype, got {dtype}")
    try:
        torch.device(device)
    except RuntimeError as err:
        raise ValueError(
            f"device: expected a torch device (cpu, cuda, cuda:K), got {device!r}"
        ) from err
    if allow_tf32 and dtype != torch.float32:
        raise ValueError(f"allow_tf32: TF32 only concerns float32 runs, got dtype {dtype}")
    mode: Fp32Precision = "tf32" if allow_tf32 else "ieee"
    _set(mode, mode)
    return current_policy()


def _raw_flags() -> tuple[Any, ...]:
    b = _backends()
    if _new_api():
        return (
            b.cuda.matmul.fp32_precision,
            b.cudnn.conv.fp32_precision,
            b.cudnn.rnn.fp32_precision,
        )
    return (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32)


def _restore_flags(flags: tuple[Any, ...]) -> None:
    b = _backends()
    if _new_api():
        b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision = flags[0], flags[1]
        b.cudnn.rnn.fp32_precision = flags[2]
    else:
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32 = flags


@contextmanager
def precision_policy(
    dtype: torch.dtype, device: str | torch.device, *, allow_tf32: bool = False
) -> Iterator[PrecisionPolicy]:
    """:func:`apply_precision_policy` within the block; the flags as they were (their raw
    values, torch's defaults included) are restored after it."""
    before = _raw_flags()
    try:
        yield apply_precision_policy(dtype, device, allow_tf32=allow_tf32)
    finally:
        _restore_flags(before)
