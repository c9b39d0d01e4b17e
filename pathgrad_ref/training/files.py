"""Run files: one atomic writer, strict JSON, checkpoints, and the one error for a file a run
cannot use.

Every file a run writes goes through :func:`atomic_write` (temporary file, ``fsync``,
``os.replace``): a run killed or out of disk space while writing leaves the last complete file.
A checkpoint holds tensors and plain values only, so it loads with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from .config import ConfigError


def atomic_write(path: str | os.PathLike[str], data: bytes | Callable[[IO[bytes]], object]) -> None:
    """Write ``data`` (or call ``data(f)``) to a temporary sibling of ``path``, ``fsync`` it
    and move it into place; the temporary file never outlives an error."""
    dest = Path(path)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if isinstance(data, bytes):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def jsonable(obj: Any) -> Any:
    """``obj`` with non-finite floats as ``None``, tuples as lists and keys as strings (strict
    JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as strict, indented JSON with :func:`atomic_write`."""
    text = json.dumps(jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write(path, text.encode())


class RunFileError(ConfigError):
    """A run file (checkpoint, ``config.json``, ``metrics.jsonl``, cached samples) that cannot
    be used; the message names it and says what to do."""


def unusable(path: str | os.PathLike[str], why: str, todo: str = "") -> RunFileError:
    """The error for a run file that cannot be used: names it, says why and what to do."""
    todo = todo or "restore it, or start afresh with --overwrite or another --out"
    return RunFileError(None, f"{path}: {why}; {todo}")


def read_json(path: str | os.PathLike[str], todo: str = "") -> dict[str, Any]:
    """A JSON object from ``path``; :func:`unusable` if it is empty, truncated or not one."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise unusable(path, f"cannot be read as JSON ({e})", todo) from None
    if not isinstance(obj, dict):
        raise unusable(path, "is not a JSON object", todo)
    return obj


CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 2
"""2: the loop state holds the clock (training, evaluation, checkpoint and wall time)."""


def atomic_save(obj: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


_KEYS = ("step", "world_size", "model", "optimizer", "rng", "loop")


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint onto the CPU (``weights_only=True``); :func:`unusable` if it is empty,
    truncated, foreign or incomplete."""
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
    if not isinstance(obj, dict) or "format_version" not in obj:
        raise unusable(p, "is not a pathgrad_ref training checkpoint")
    if obj["format_version"] != FORMAT_VERSION:
        version = obj["format_version"]
        raise unusable(p, f"has format {version}; this version reads format {FORMAT_VERSION}")
    missing = [k for k in _KEYS if k not in obj]
    if missing:
        raise unusable(p, f"is incomplete (no {', '.join(missing)})")
    return obj


def global_rng_state() -> dict[str, Any]:
    """The process-wide RNG states (torch CPU, CUDA if initialised, Python's ``random``) as
    tensors and plain values, so that user code relying on the global streams resumes too."""
    state: dict[str, Any] = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["torch_cuda"] = list(torch.cuda.get_rng_state_all())
    version, internal, gauss = random.getstate()
    state["python"] = {"version": version, "state": list(internal), "gauss": gauss}
    return state


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`global_rng_state` saved (CUDA states only where CUDA is in use)."""
    torch.set_rng_state(state["torch_cpu"])
    if torch.cuda.is_available():
        for i, s in enumerate(state.get("torch_cuda", [])[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
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
