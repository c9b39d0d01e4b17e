"""Adapters from other flow libraries to :class:`pathgrad_ref.flows.Flow`.

:func:`from_zuko` wraps an unconditional ``zuko`` flow (``pip install "pathgrad-ref[zuko]"``);
zuko is imported only when it is called, so ``import pathgrad_ref`` never needs it.
"""

from .zuko import from_zuko

__all__ = ["from_zuko"]
