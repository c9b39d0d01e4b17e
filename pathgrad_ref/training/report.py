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

from .files import atomic_write, jsonable, unusable, write_json
from .observables import RELIABLE_EFFECTIVE_SAMPLES, RELIABLE_FORWARD_ESS, Observable

MetricRecord = dict[str, Any]


def fmt(v: Any, digits: int = 3) -> str:
    """A number as a physicist reads it: ``digits`` significant figures, scientific notation
    when tiny or huge (never ``0.0000`` for a small non-zero value), ``–`` for a missing or
    non-finite one; integers and strings as they are."""
    if v is None or isinstance(v, bool):
        return "–" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        if v != 0 and not 1e-3 <= abs(v) < 1e5:
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}"
    return str(v)


def describe(
    r: MetricRecord,
    observables: Sequence[Observable] = (),
    references: Mapping[str, Mapping[str, Any]] | None = None,
    short: bool = False,
) -> str:
    """One line for an evaluation record: step, training loss (``KL(q‖p) − log Z`` for the
    reverse estimators, hence "loss" apart from the KL where ``log Z`` is known), KL, ESS,
    NLL, observables with their references. ``short``: the progress bar's postfix."""
    if short:
        parts = [f"ESS {fmt(r.get('ess_reverse'))}"]
        if "kl_reverse" in r:
            parts.append(f"KL {fmt(r.get('kl_reverse'))}")
        return f"@{r.get('step')}: " + ", ".join([*parts, f"loss {fmt(r.get('loss'))}"])
    parts = [f"step {r['step']:>7d}", f"loss {fmt(r.get('loss'))}"]
    if "kl_reverse" in r:
        parts.append(f"KL(q‖p) {fmt(r.get('kl_reverse'))}")
    parts.append(f"ESS {_pm(r, 'ess_reverse')}")
    if "ess_forward" in r:
        parts += [f"fwd-ESS {_pm(r, 'ess_forward')}", f"NLL {fmt(r.get('nll'))}"]
    if "nll_train" in r:
        parts.append(f"train NLL {fmt(r.get('nll_train'))}")
    for o in observables:
        text = f"{o.label} {fmt(r.get(o.name))} ± {fmt(r.get(o.name + '_err'), 2)}"
        ref = (references or {}).get(o.name)
        if ref is not None:
            err = f" ± {fmt(ref['err'], 2)}" if ref.get("err") else ""
            text += f" (ref {fmt(ref['value'])}{err})"
        parts.append(text)
    if observables and r.get("reliable") is False:
        parts.append(f"UNRELIABLE reweighting ({unreliable_reason(r)})")
    if r.get("step_time_s") is not None:
        parts.append(f"{fmt(1e3 * r['step_time_s'])} ms/step")
    return "  ".join(parts)


def _pm(r: MetricRecord, key: str) -> str:
    """``value ± error`` of ``key`` (error from ``key + "_err"``, one significant figure)."""
    err = r.get(f"{key}_err")
    return fmt(r.get(key)) + (f" ± {fmt(err, 1)}" if isinstance(err, float) and err > 0 else "")


def unreliable_reason(r: Mapping[str, Any]) -> str:
    """Why :func:`~.observables.reliable` said no, for an evaluation record."""
    why = []
    n_eff = r.get("n_eff")
    if not (isinstance(n_eff, (int, float)) and n_eff >= RELIABLE_EFFECTIVE_SAMPLES):
        why.append(f"N_eff {fmt(n_eff)} < {RELIABLE_EFFECTIVE_SAMPLES:.0f}")
    fwd = r.get("ess_forward")
    if isinstance(fwd, (int, float)) and fwd < RELIABLE_FORWARD_ESS:
        why.append(f"fwd-ESS {fmt(fwd)} < {RELIABLE_FORWARD_ESS}: q misses part of p")
    return "; ".join(why)


def read_jsonl(path: str | os.PathLike[str]) -> list[MetricRecord]:
    """All records of a JSON-lines file. A torn last line (a run killed while appending) is
    dropped; any other line that is not a JSON object with an integer ``step`` is a
    :class:`~.config.ConfigError` naming the file."""
    p = Path(path)
    if not p.exists():
        return []
    try:
        lines = p.read_bytes().decode().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise unusable(p, f"cannot be read ({e})") from None
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise unusable(p, f"line {i + 1} is not JSON") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            raise unusable(p, f"line {i + 1} is not a metrics record")
        records.append(rec)
    return records


class MetricsLog:
    """Appends one JSON record per line to ``metrics.jsonl``, flushed at once.

    ``keep_until``: on opening, drop records with ``step`` beyond it (a resumed run repeats the
    steps after its checkpoint); ``None`` starts a fresh file."""

    def __init__(self, path: str | os.PathLike[str], keep_until: int | None = None) -> None:
        self.path = Path(path)
        kept = [] if keep_until is None else read_jsonl(self.path)
        kept = [r for r in kept if keep_until is not None and r["step"] <= keep_until]
        text = "".join(json.dumps(jsonable(r), allow_nan=False) + "\n" for r in kept)
        atomic_write(self.path, text.encode())
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
            "ess_reverse_err": final.get("ess_reverse_err"),
            "best_ess_reverse": s.get("best_ess_reverse"),
            "ess_forward": final.get("ess_forward"),
            "nll": final.get("nll"),
            "skipped_steps": s.get("n_skipped"),
            "n_eff": final.get("n_eff"),
            "reliable": final.get("reliable"),
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
    base += ["ess_reverse", "best_ess_reverse", "ess_forward", "nll", "skipped_steps", "n_eff"]
    obs = [k for k in rows[0] if k not in base and k != "reliable" and not k.endswith("_err")]
    header = base + obs
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [_pm(dict(r), k) for k in base]
        for k in obs:
            m, e = r.get(k), r.get(f"{k}_err")
            cell = fmt(m) if e is None else f"{fmt(m)} ± {fmt(e, 2)}"
            cells.append(cell + (" (unreliable)" if r.get("reliable") is False else ""))
        lines.append("| " + " | ".join(cells) + " |")
    if any(r.get("reliable") is False for r in rows):
        note = (
            f"\n(unreliable: reweighted from fewer than {RELIABLE_EFFECTIVE_SAMPLES:.0f} effective "
            f"samples, or with a forward ESS below {RELIABLE_FORWARD_ESS}; see "
            "pathgrad_ref/training/observables.py)\n"
        )
    else:
        note = ""
    if references:
        cells = ["reference"] + [""] * (len(base) - 1)
        for k in obs:
            ref = references.get(k) or {}
            m, e = ref.get("value"), ref.get("err")
            exact = e == 0 and ref.get("source") == "exact"
            cells.append(
                fmt(m) if e is None else f"{fmt(m)} (exact)" if exact else f"{fmt(m)} ± {fmt(e, 2)}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + note


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
    atomic_write(out / "comparison.md", md.encode())
    write_json(out / "comparison.json", {"rows": rows, "references": references or {}})
    from .plots import legend, pyplot, series

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, records in histories.items():
        xs, ys = series(records, "ess_reverse")
        axes[0].plot(xs, ys, marker=".", label=name)
        ts, ys = series(records, "ess_reverse", x="elapsed_s")
        axes[1].plot(ts, ys, marker=".", label=name)
    axes[0].set(xlabel="step", ylabel="reverse ESS", ylim=(0, 1.02))
    axes[1].set(xlabel="wall time [s]", ylabel="reverse ESS", ylim=(0, 1.02))
    legend(axes[0])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=110)
    plt.close(fig)
    return [out / "comparison.md", out / "comparison.json", out / "comparison.png"]
