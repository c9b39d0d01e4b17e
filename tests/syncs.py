"""Counting host synchronisations of CUDA code with ``torch.cuda.set_sync_debug_mode``.

With the sync debug mode at ``"warn"``, torch emits a ``UserWarning`` ("called a synchronizing
CUDA operation") at every CUDA operation that blocks the host on the device: ``.item()``,
``bool(t)``, ``float(t)``, ``.tolist()``, ``.cpu()``, ``torch.nonzero``, copies to pageable
host memory, and so on. :func:`count_host_syncs` counts those warnings. The mode only sees CUDA
work: on a machine without CUDA use the ``meta`` device instead (a host read raises there).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

_SYNC_MESSAGE = "called a synchronizing CUDA operation"


@dataclass
class SyncCount:
    """Synchronising operations seen in a :func:`count_host_syncs` block: ``count`` of them,
    ``sites`` the first few warning locations (``file:line``) for a report."""

    count: int = 0
    sites: list[str] = field(default_factory=list)


@contextmanager
def count_host_syncs(max_sites: int = 10) -> Iterator[SyncCount]:
    """Count the CUDA host synchronisations inside the block (filled in when it exits).

    ``RuntimeError`` without CUDA: the count would be zero whatever the code does. The previous
    sync debug mode is restored. Call ``torch.cuda.synchronize()`` before the block so that
    earlier work is not attributed to it (that call itself is outside the count).
    """
    if not torch.cuda.is_available():
        raise RuntimeError(
            "count_host_syncs needs CUDA (torch.cuda.set_sync_debug_mode only sees CUDA work); "
            "on the CPU run the code on the meta device, where a host read raises"
        )
    result = SyncCount()
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield result
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    for w in caught:
        if _SYNC_MESSAGE in str(w.message):
            result.count += 1
            if len(result.sites) < max_sites:
                result.sites.append(f"{w.filename}:{w.lineno}")
