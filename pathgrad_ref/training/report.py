"""Run records: ``metrics.jsonl``, the number format, and the lines a run prints."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from ..evaluation import Observable, fmt, unreliable_reason
from .files import atomic_write, jsonable, unusable

MetricRecord = dict[str, Any]


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
        parts.append(
            f"UNRELIABLE reweighting ({unreliable_reason(r.get('n_eff'), r.get('ess_forward'))})"
        )
    if r.get("step_time_s") is not None:
        parts.append(f"{fmt(1e3 * r['step_time_s'])} ms/step")
    return "  ".join(parts)


def _pm(r: MetricRecord, key: str) -> str:
    """``value ± error`` of ``key`` (error from ``key + "_err"``, one significant figure)."""
    err = r.get(f"{key}_err")
    return fmt(r.get(key)) + (f" ± {fmt(err, 1)}" if isinstance(err, float) and err > 0 else "")


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


def final_line(summary: Mapping[str, Any]) -> str:
    """One line on how a run ended."""
    init, final = summary.get("initial") or {}, summary.get("final") or {}
    t = summary.get("mean_step_time_s")
    step_ms = f"{fmt(1e3 * t)} ms/step" if isinstance(t, float) else "– ms/step"
    line = (
        f"{summary['estimator']}: {summary['status']} after {summary['steps_done']} steps in "
        f"{fmt(summary['train_time_s'])} s of training ({step_ms}; evaluation "
        f"{fmt(summary.get('eval_time_s'))} s, wall {fmt(summary.get('wall_time_s'))} s); "
        f"reverse ESS {fmt(init.get('ess_reverse'))} → {fmt(final.get('ess_reverse'))} (best "
        f"{fmt(summary.get('best_ess_reverse'))})"
    )
    if "kl_reverse" in final:
        line += f", KL(q‖p) {fmt(init.get('kl_reverse'))} → {fmt(final.get('kl_reverse'))}"
    if "nll" in final:
        line += f", NLL {fmt(init.get('nll'))} → {fmt(final.get('nll'))}"
    return line
