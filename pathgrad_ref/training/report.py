"""Run records: ``metrics.jsonl``, JSON files, plots and the comparison of several runs.

Plots use matplotlib with the Agg backend, imported only when a plot is made.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

MetricRecord = dict[str, Any]


def jsonable(obj: Any) -> Any:
    """``obj`` with non-finite floats as ``None`` and tuples as lists (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write strict JSON atomically (temporary file and ``os.replace``)."""
    dest = Path(path)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, dest)


def read_jsonl(path: str | os.PathLike[str]) -> list[MetricRecord]:
    """All records of a JSON-lines file (a torn last line, from a killed run, is dropped)."""
    p = Path(path)
    if not p.exists():
        return []
    records = []
    for line in p.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


class MetricsLog:
    """Appends one JSON record per line to ``metrics.jsonl``, flushed at once.

    ``keep_until``: on opening, drop records with ``step`` beyond it (a resumed run repeats the
    steps after its checkpoint); ``None`` starts a fresh file."""

    def __init__(self, path: str | os.PathLike[str], keep_until: int | None = None) -> None:
        self.path = Path(path)
        kept = [] if keep_until is None else read_jsonl(self.path)
        kept = [r for r in kept if keep_until is not None and int(r.get("step", 0)) <= keep_until]
        with open(self.path, "w") as f:
            for r in kept:
                f.write(json.dumps(jsonable(r), allow_nan=False) + "\n")
        self.records: list[MetricRecord] = kept
        self._file: IO[str] | None = open(self.path, "a")  # noqa: SIM115 (closed in close())

    def write(self, record: MetricRecord) -> None:
        self.records.append(record)
        if self._file is not None:
            self._file.write(json.dumps(jsonable(record), allow_nan=False) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _series(
    records: Sequence[MetricRecord], key: str, x: str = "step"
) -> tuple[list[float], list[float]]:
    """``(x values, key values)`` over the records where both are finite numbers."""
    xs, ys = [], []
    for r in records:
        v, t = r.get(key), r.get(x)
        if isinstance(v, (int, float)) and isinstance(t, (int, float)) and math.isfinite(v):
            xs.append(float(t))
            ys.append(float(v))
    return xs, ys


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(
    records: Sequence[MetricRecord],
    out_dir: str | os.PathLike[str],
    observables: Sequence[tuple[str, str, float | None]] = (),
    title: str = "",
) -> list[Path]:
    """Write ``ess.png``, ``loss.png``, ``nll.png`` (if NLL was measured) and
    ``observables.png`` (one panel per ``(name, label, reference)``, reference as a line)
    against the step. Returns the files written."""
    plt = _pyplot()
    out = Path(out_dir)
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (
        ("ess_reverse", "reverse ESS (flow samples)"),
        ("ess_forward", "forward ESS (target samples)"),
    ):
        xs, ys = _series(records, key)
        if xs:
            axes[0].plot(xs, ys, marker=".", label=label)
            pos = [(x, y) for x, y in zip(xs, ys, strict=True) if y > 0]
            if pos:
                axes[1].semilogy(*zip(*pos, strict=True), marker=".", label=label)
    axes[0].set(xlabel="step", ylabel="ESS", ylim=(0, 1.02))
    # Forward ESS of a flow that misses part of the target can be 1e-300: show the useful range.
    axes[1].set(xlabel="step", ylabel="ESS (log scale)", ylim=(1e-4, 1.5))
    axes[0].legend()
    save(fig, "ess.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (
        ("loss", "training loss"),
        ("kl_reverse", "KL(q‖p), eval"),
        ("kl_forward", "KL(p‖q), eval"),
    ):
        xs, ys = _series(records, key)
        if xs:
            ax.plot(xs, ys, marker=".", label=label)
    ax.set(xlabel="step", ylabel="loss")
    ax.legend()
    save(fig, "loss.png")

    xs, ys = _series(records, "nll")
    if xs:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(xs, ys, marker=".")
        ax.set(xlabel="step", ylabel="NLL (held-out target samples)")
        save(fig, "nll.png")

    if observables:
        n = len(observables)
        fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 4), squeeze=False)
        for ax, (name, label, ref) in zip(axes[0], observables, strict=True):
            xs, ys = _series(records, name)
            err_at = dict(zip(*_series(records, f"{name}_err"), strict=True))
            if xs:
                errs = [err_at.get(x, 0.0) for x in xs]  # no error where it is not estimable
                ax.errorbar(xs, ys, yerr=errs, marker=".", capsize=2, label="flow, reweighted")
            if ref is not None and math.isfinite(ref):
                ax.axhline(ref, color="k", ls="--", label="reference")
            ax.set(xlabel="step", ylabel=label)
            ax.legend()
        save(fig, "observables.png")
    return written


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, bool) or v is None:
        return "–" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.{digits}g}"
    return str(v)


def comparison_rows(summaries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per run: estimator, steps, times, final and best metrics, observables."""
    rows = []
    for s in summaries:
        final = s.get("final", {}) or {}
        row: dict[str, Any] = {
            "estimator": s.get("estimator"),
            "status": s.get("status"),
            "steps": s.get("steps_done"),
            "train_time_s": s.get("train_time_s"),
            "step_time_ms": 1e3 * float(s.get("mean_step_time_s") or math.nan),
            "ess_reverse": final.get("ess_reverse"),
            "best_ess_reverse": s.get("best_ess_reverse"),
            "ess_forward": final.get("ess_forward"),
            "nll": final.get("nll"),
            "skipped_steps": s.get("n_skipped"),
        }
        for name in s.get("observables", {}):
            row[name] = final.get(name)
            row[f"{name}_err"] = final.get(f"{name}_err")
        rows.append(row)
    return rows


def comparison_markdown(
    rows: Sequence[Mapping[str, Any]], references: Mapping[str, Any] | None = None
) -> str:
    """A markdown table of :func:`comparison_rows` (observables as ``mean ± err``), with a
    reference row for observables that have one."""
    if not rows:
        return ""
    base = ["estimator", "status", "steps", "train_time_s", "step_time_ms"]
    base += ["ess_reverse", "best_ess_reverse", "ess_forward", "nll", "skipped_steps"]
    obs = [k for k in rows[0] if k not in base and not k.endswith("_err")]
    header = base + obs
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [_fmt(r.get(k)) for k in base]
        for k in obs:
            m, e = r.get(k), r.get(f"{k}_err")
            cells.append(_fmt(m) if e is None else f"{_fmt(m)} ± {_fmt(e, 2)}")
        lines.append("| " + " | ".join(cells) + " |")
    if references:
        cells = ["reference"] + [""] * (len(base) - 1)
        for k in obs:
            ref = references.get(k) or {}
            m, e = ref.get("value"), ref.get("err")
            cells.append(_fmt(m) if e is None else f"{_fmt(m)} ± {_fmt(e, 2)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(
    out_dir: str | os.PathLike[str],
    summaries: Sequence[Mapping[str, Any]],
    histories: Mapping[str, Sequence[MetricRecord]],
    references: Mapping[str, Any] | None = None,
    title: str = "",
) -> list[Path]:
    """Write ``comparison.md``, ``comparison.json`` and ``comparison.png`` (reverse ESS
    against step and against training time, one line per estimator)."""
    out = Path(out_dir)
    rows = comparison_rows(summaries)
    md = f"# {title}\n\n" if title else ""
    md += comparison_markdown(rows, references)
    (out / "comparison.md").write_text(md)
    write_json(out / "comparison.json", {"rows": rows, "references": references or {}})
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, records in histories.items():
        xs, ys = _series(records, "ess_reverse")
        axes[0].plot(xs, ys, marker=".", label=name)
        ts, ys = _series(records, "ess_reverse", x="elapsed_s")
        axes[1].plot(ts, ys, marker=".", label=name)
    axes[0].set(xlabel="step", ylabel="reverse ESS", ylim=(0, 1.02))
    axes[1].set(xlabel="wall time [s]", ylabel="reverse ESS", ylim=(0, 1.02))
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=110)
    plt.close(fig)
    return [out / "comparison.md", out / "comparison.json", out / "comparison.png"]
