"""Atomic checkpoints that load with ``torch.load(..., weights_only=True)``, and RNG states.

A checkpoint is a ``dict`` of tensors and plain Python values only (no pickled objects), so
loading it cannot run code. It is written to a temporary file in the destination folder and
moved into place with ``os.replace`` (:func:`~.files.atomic_write`): a run killed, or out of disk
space, while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .config import ConfigError
from .files import atomic_write, unusable

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def atomic_save(obj: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` through :func:`~.files.atomic_write` (temporary file,
    ``fsync``, ``os.replace``): a failed or killed save leaves the previous file intact."""
    atomic_write(path, lambda f: torch.save(obj, f))


_KEYS = ("step", "world_size", "model", "optimizer", "scheduler", "rng", "loop")


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint onto the CPU with ``weights_only=True``; :class:`ConfigError` naming
    the file if it is empty, truncated, foreign or incomplete."""
    p = Path(path)
    try:
        if p.stat().st_size == 0:
            raise unusable(p, "is empty (a save was cut short)")
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except ConfigError:
        raise
    except Exception as e:  # torch raises many types for damaged archives
        text = str(e).strip()
        first = text.splitlines()[0].split(". ")[0] if text else type(e).__name__
        raise unusable(
            p, f"cannot be loaded, it is truncated or not a checkpoint ({first})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format_version") != FORMAT_VERSION:
        raise unusable(p, "is not a pathgrad_ref training checkpoint")
    missing = [k for k in _KEYS if k not in obj]
    if missing:
        raise unusable(p, f"is incomplete (no {', '.join(missing)})")
    return obj


def global_rng_state() -> dict[str, Any]:
    """The process-wide RNG states: torch CPU, every CUDA device (if initialised), Python's
    ``random``. Stored as tensors and plain values. (The training code draws all its random
    numbers from explicit generators; these are saved so that user code relying on the global
    streams resumes too.)"""
    state: dict[str, Any] = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["torch_cuda"] = list(torch.cuda.get_rng_state_all())
    version, internal, gauss = random.getstate()
    state["python"] = {"version": version, "state": list(internal), "gauss": gauss}
    return state


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`global_rng_state` saved (CUDA states only where CUDA is in use)."""
    torch.set_rng_state(state["torch_cpu"])
    cuda: list[Tensor] | None = state.get("torch_cuda")
    if cuda is not None and torch.cuda.is_available():
        n = min(len(cuda), torch.cuda.device_count())
        for i in range(n):
            torch.cuda.set_rng_state(cuda[i], i)
    py = state.get("python")
    if py is not None:
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))


def generator_states(generators: dict[str, torch.Generator]) -> dict[str, Tensor]:
    """``{name: generator.get_state()}`` (CPU byte tensors, for CPU and CUDA generators)."""
    return {name: g.get_state() for name, g in generators.items()}


def set_generator_states(generators: dict[str, torch.Generator], states: dict[str, Tensor]) -> None:
    """Restore generator states saved by :func:`generator_states`; ``KeyError`` naming a
    generator the checkpoint lacks."""
    for name, g in generators.items():
        if name not in states:
            raise KeyError(f"checkpoint has no state for the {name!r} random stream")
        g.set_state(states[name])
