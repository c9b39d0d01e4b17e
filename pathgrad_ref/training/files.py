"""Run files: one atomic writer, strict JSON, and the one error for a file a run cannot use.

Every file a run writes goes through :func:`atomic_write`: the bytes go to a temporary file in
the destination folder, are flushed to disk (``fsync``) and renamed over the destination with
``os.replace``; on any error the temporary file is removed and the previous file is untouched.
So a run killed or out of disk space while writing leaves the last complete file readable.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

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
    """The error for a run file that cannot be used: names the file, says why and what to do
    (the command line prints it as one ``error:`` line, exit code 2)."""
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
