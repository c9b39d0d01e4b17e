"""Run the library on PyTorch's ``meta`` device, where tensors have shapes but no values.

A computation on ``meta`` raises as soon as it meets a non-scalar tensor on another device
("Tensor on device cpu is not on the expected device meta"), so running code on ``meta`` finds
every tensor created on the wrong device, on a machine without a GPU, exactly as a CUDA run
would. It equally raises at every host read of a value (``bool(t)``, ``float(t)``,
``t.item()``, ``t.tolist()``): code that runs on ``meta`` makes no host synchronisation.

Two host reads are deliberate and are stood in for by :func:`meta_mode`:

- the bisection's single status read (:func:`pathgrad_ref.flows.implicit.read_status`): the
  stand-in checks that the status is a ``(3,)`` bool tensor on the solver's device, counts the
  call and reports success;
- the finiteness check of an input batch (``check_batch``), while it reads a value: its shape,
  dtype and device checks still run, only the value read is skipped;
- the naive forward oracles' check that the pull-back inverts the flow
  (:func:`pathgrad_ref.estimators.naive.check_pullback`): the stand-in checks that the residual
  is on ``meta`` and counts the call.

Reuse, e.g. for trainer steps::

    with meta_mode() as reads:
        flow = make_flow().to("meta")
        ...                      # any code: a wrong-device tensor or a host read raises
    assert reads.bisection == expected_solves
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any
from unittest import mock

import torch
from torch import Tensor

import pathgrad_ref._validation as validation
import pathgrad_ref.estimators.naive as naive
import pathgrad_ref.flows.base as flows_base
from pathgrad_ref.flows.implicit import STATUS_FIELDS, read_status, status_check

META = torch.device("meta")


@dataclass
class MetaReads:
    """How often the deliberate host reads were stood in for."""

    bisection: int = 0
    batch_checks: int = 0
    pullback_checks: int = 0


def _reads_a_value(err: BaseException) -> bool:
    return "meta" in str(err) and ("item()" in str(err) or "data" in str(err))


@contextmanager
def meta_mode() -> Iterator[MetaReads]:
    """Within the block, the deliberate host reads (module docstring) are stood in for on
    ``meta`` tensors; on other devices they run as usual. Yields the read counts."""
    reads = MetaReads()

    def bisection_status(status: Tensor) -> list[bool]:
        if status.device.type != "meta":
            raise AssertionError(f"bisection status on {status.device}, expected meta")
        if status.dtype != torch.bool or tuple(status.shape) != (len(STATUS_FIELDS),):
            raise AssertionError(f"bisection status {status.dtype} {tuple(status.shape)}")
        reads.bisection += 1
        return [True] * len(STATUS_FIELDS)

    def patched(real: Callable[..., None]) -> Callable[..., None]:
        def check(x: Tensor, *args: Any, **kwargs: Any) -> None:
            try:
                real(x, *args, **kwargs)
            except (RuntimeError, NotImplementedError) as err:
                # Shape, dtype and device were checked before the value read that failed.
                if not (isinstance(x, Tensor) and x.device.type == "meta" and _reads_a_value(err)):
                    raise
                reads.batch_checks += 1

        return check

    real_pullback = naive.check_pullback

    def pullback(residual: Tensor, x: Tensor) -> None:
        if residual.device.type != "meta":
            real_pullback(residual, x)
            return
        if x.device.type != "meta":
            raise AssertionError(f"pull-back residual on meta, its target on {x.device}")
        reads.pullback_checks += 1

    with ExitStack() as stack:
        stack.enter_context(status_check(bisection_status))
        stack.enter_context(mock.patch.object(naive, "check_pullback", pullback))
        for module in (validation, flows_base):
            real = getattr(module, "check_batch", None)
            if real is not None:
                stack.enter_context(mock.patch.object(module, "check_batch", patched(real)))
        yield reads


class StatusCounter:
    """A counting wrapper around :func:`read_status`, the solver's one host read (pass it to
    :func:`status_check`)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, status: Tensor) -> list[bool]:
        self.calls += 1
        return read_status(status)
