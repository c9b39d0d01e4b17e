"""Where a result came from: the commit (and whether the tree had uncommitted changes), the
torch and Python versions, the hardware, the machine's load, the date and the exact commands.

Every record a study or a diagnosis writes carries :func:`provenance` under ``"provenance"``;
replacing a committed record appends to its ``"history"`` (:func:`history_entry`).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _git(folder: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit(folder: Path) -> str | None:
    """The commit checked out at ``folder`` (``None`` outside git)."""
    return _git(folder, "rev-parse", "HEAD") or None


# The records the studies write: committing one study must not mark the next one's code dirty.
OUTPUTS = ("paper_runs/results", "paper_runs/RESULTS.md")


# The code a run imports: an untracked file here (a new module not yet committed) is code the
# commit does not hold, as much as a modified tracked file.
CODE = ("pathgrad_ref", "paper_runs")


def git_dirty(folder: Path) -> bool | None:
    """Whether the checkout differs from its commit (``None`` outside git): a tracked file
    other than the study records (:data:`OUTPUTS`) is modified, or an untracked file that git
    does not ignore lies under the code a run imports (:data:`CODE`). Ignored files (run
    outputs, caches, ``__pycache__``) are not code and do not count."""
    excluded = [f":(top,exclude){o}" for o in OUTPUTS]
    tracked = _git(folder, "status", "--porcelain", "--untracked-files=no", "--", ":/", *excluded)
    code = [f":(top){c}" for c in CODE]
    untracked = _git(folder, "ls-files", "--others", "--exclude-standard", "--", *code, *excluded)
    if tracked is None or untracked is None:
        return None
    return bool(tracked) or bool(untracked)


def hardware_info() -> dict[str, Any]:
    """Processor, core count and GPU (if torch sees one)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def load_average() -> float | None:
    """The 1-minute load average (``None`` where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def provenance(folder: Path, commands: Sequence[Sequence[str]]) -> dict[str, Any]:
    """``commit``, ``dirty``, ``torch``, ``python``, ``hardware``, ``load_average_1m``, ``date``
    (UTC) and ``commands`` (each an argument list, as run); and where the imported
    ``pathgrad_ref`` lives with its commit and dirty flag (``library``), which differ from
    ``folder``'s when the package is installed from another checkout."""
    import torch

    import pathgrad_ref

    library = Path(pathgrad_ref.__file__).resolve().parent
    return {
        "commit": git_commit(folder),
        "dirty": git_dirty(folder),
        "library": {
            "path": str(library),
            "commit": git_commit(library),
            "dirty": git_dirty(library),
        },
        "torch": torch.__version__,
        "python": platform.python_version(),
        "hardware": hardware_info(),
        "load_average_1m": load_average(),
        "date": now(),
        "commands": [list(c) for c in commands],
    }


def history_entry(
    previous: dict[str, Any], why: str, verdicts: Sequence[dict[str, str]] = ()
) -> dict[str, Any]:
    """What a replaced record was: its date and code commit (from its provenance), why it was
    replaced and, where given, its verdicts under the rules in force when it was replaced
    (``verdicts``, see ``report.record_verdicts``). (Entries reconstructed from git for records
    older than their provenance have ``commit: null`` and name the commit that added the
    record, ``committed_in``.)"""
    prov = previous.get("provenance") or {}
    entry: dict[str, Any] = {"date": prov.get("date"), "commit": prov.get("commit"), "why": why}
    if verdicts:
        entry["verdicts"] = [dict(v) for v in verdicts]
    return entry
