"""Running and collecting studies: several estimators × several seeds of one experiment and
preset, run as separate training runs, then gathered into one study record (``study.json``).

A :class:`StudySpec` fixes everything before anything runs (experiment, preset, estimators,
seeds, the claim it tests); :func:`run_study` trains every (estimator, seed) that has not
finished, each in its own process (``python paper_runs/<experiment>.py … --resume``), so a
killed study resumes where it stopped and finished runs are reused; :func:`collect` reads the
runs' ``summary.json``, ``metrics.jsonl`` and ``invocations.json`` (the exact commands, the
commit they ran at and the load); :func:`summarise` makes the JSON-ready study record, with its
provenance, from which :mod:`.rules` and :mod:`.report` draw every verdict, table and plot, so
committed results re-render without re-running anything.

Aggregates (:func:`aggregate`) give every seed's value together with mean ± standard error and
median with quartiles, because ESS across seeds is often skewed. They are for the tables only;
the verdicts come from per-seed values (:mod:`.rules`).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pathgrad_ref.progress import Progress, progress_bar
from pathgrad_ref.training.files import RunFileError, read_json, write_json
from pathgrad_ref.training.report import read_jsonl

from .provenance import git_commit, git_dirty, load_average, now, provenance

# Keys of an evaluation record kept in ``study.json`` (the curves the plots need).
CURVE_KEYS = (
    "step",
    "elapsed_s",
    "train_time_s",
    "eval_time_s",
    "checkpoint_time_s",
    "wall_time_s",
    "ess_reverse",
    "ess_reverse_err",
    "ess_forward",
    "ess_forward_err",
    "kl_reverse",
    "kl_forward",
    "nll",
    "nll_train",
    "grad_var_standard",
    "grad_var_path",
    "n_eff",
    "reliable",
)


@dataclass(frozen=True)
class StudySpec:
    """One study, fixed before it runs.

    - ``name``: folder and file names; ``experiment``: a script ``paper_runs/<experiment>.py``;
      ``preset``: its preset; ``estimators``: trained one after the other for every seed;
      ``seeds``: training seeds (the target samples are shared: same data seed).
    - ``claim``: what the study tests, in one sentence; ``gpu_command``: the paper-size
      command for a GPU, printed next to the CPU result.
    - ``fresh_cache``: every run makes its own target samples (``--cache-dir`` in its run
      folder), so that its wall time includes them (the quick presets' targets).
    - ``pretrains``: the preset has a pretraining stage (``--pretrain-steps``); the runs of a
      seed share it in ``<root>/pretrained`` (with ``fresh_cache``, each run trains its own in
      its folder, so that its wall time includes it).
    - ``extra_args``: appended to every run's command.
    - ``design``: how the settings were chosen (which exploratory runs, with which seeds, led
      to them), shown with the study's results.
    - ``confirms``: for a confirmatory record, the name of the (exploratory) study it repeats on
      fresh seeds (``paper_runs/study.py --confirm``; :mod:`.rules`, confirmation).
    """

    name: str
    experiment: str
    preset: str
    estimators: tuple[str, ...]
    seeds: tuple[int, ...]
    claim: str
    gpu_command: str = ""
    fresh_cache: bool = False
    pretrains: bool = False
    extra_args: tuple[str, ...] = field(default_factory=tuple)
    design: str = ""
    confirms: str = ""

    def run_dir(self, root: Path, estimator: str, seed: int) -> Path:
        return root / estimator / f"seed{seed}"


class StudyError(RuntimeError):
    """A study cannot be run or collected; the message names the run and what to do."""


class StudyInterruptedError(RuntimeError):
    """SIGINT or SIGTERM stopped the study; every run that was training has checkpointed."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


# ---------------------------------------------------------------------------------- running


def run_state(run_dir: Path) -> str:
    """``"completed"`` (``summary.json`` says so, or that the run used up its training-time
    budget, ``--time-limit``), ``"partial"`` (a run was started: resume it) or ``"absent"``."""
    summary = run_dir / "summary.json"
    if summary.exists():
        try:
            record = json.loads(summary.read_text())
            status, reason = record.get("status"), record.get("stop_reason")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            status = reason = None
        if status == "completed" or (status == "stopped" and reason == "time_limit"):
            return "completed"
    if run_dir.exists() and any(run_dir.iterdir()):
        return "partial"
    return "absent"


def run_command(
    spec: StudySpec, script: Path, run_dir: Path, estimator: str, seed: int
) -> list[str]:
    """The training command of one run (``--resume`` starts it when nothing is there yet)."""
    # run_dir is <root>/<estimator>/seed<k>: the seed's runs share <root>/pretrained.
    shared = run_dir.parent.parent / "pretrained"
    pretrained = run_dir / "pretrained" if spec.fresh_cache else shared
    return [
        sys.executable,
        str(script),
        "--preset",
        spec.preset,
        "--estimator",
        estimator,
        "--seed",
        str(seed),
        "--out",
        str(run_dir),
        "--resume",
        "--no-progress",
        *(["--cache-dir", str(run_dir / "cache")] if spec.fresh_cache else []),
        *(["--pretrain-dir", str(pretrained)] if spec.pretrains else []),
        *spec.extra_args,
    ]


def run_order(spec: StudySpec) -> list[tuple[str, int]]:
    """``(estimator, seed)`` in the order they are trained: seed by seed, the estimators in a
    rotating order, so that whatever else loads the machine while the study runs slows every
    estimator alike and their wall times stay comparable."""
    n = len(spec.estimators)
    return [(spec.estimators[(i + k) % n], s) for i, s in enumerate(spec.seeds) for k in range(n)]


def run_study(
    spec: StudySpec,
    script: Path,
    root: Path,
    *,
    workers: int = 1,
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> None:
    """Train every (estimator, seed) of ``spec`` whose run in ``root`` has not completed.

    Runs go to ``root/<estimator>/seed<k>/`` with their output in ``train.log`` there; up to
    ``workers`` run at once, one thread each, seed by seed with the estimators interleaved. Raises
    :class:`StudyError` naming the runs that failed (their logs say why)."""
    todo = [
        (e, s) for e, s in run_order(spec) if run_state(spec.run_dir(root, e, s)) != "completed"
    ]
    done = len(spec.estimators) * len(spec.seeds) - len(todo)
    log(
        f"study {spec.name}: {len(todo)} run(s) to train, {done} reused, {workers} at a time, "
        f"in {root}"
    )
    if not todo:
        return
    bar: Progress | None = None
    if progress:
        bar = progress_bar(len(todo), f"study {spec.name}", "run")
    failures: list[str] = []
    children: set[subprocess.Popen[bytes]] = set()
    stop = threading.Event()
    received: list[int] = []
    lock = threading.Lock()

    def train(job: tuple[str, int]) -> None:
        estimator, seed = job
        if stop.is_set():
            return
        run_dir = spec.run_dir(root, estimator, seed)
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = run_command(spec, script, run_dir, estimator, seed)
        with open(run_dir / "train.log", "ab") as out:
            # One thread per run: ``workers`` runs share the cores without oversubscription.
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": _library_path()}
            start = time.perf_counter()
            with lock:
                if stop.is_set():
                    return
                # A session of its own: a Ctrl-C reaches the study alone, which passes exactly
                # one signal on (a second one would make the run stop without a checkpoint).
                child = subprocess.Popen(
                    cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
                children.add(child)
            code = child.wait()
            with lock:
                children.discard(child)
        _record_wall_time(run_dir, cmd, time.perf_counter() - start, code)
        if code != 0 and not stop.is_set():
            failures.append(f"{estimator} seed {seed} (exit {code}, see {run_dir / 'train.log'})")
        if bar is not None:
            bar.update(1)

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            return
        stop.set()
        received.append(signum)
        with lock:
            for child in children:
                child.send_signal(signum)  # the run checkpoints, then exits

    handlers: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, on_signal)
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        futures = [pool.submit(train, job) for job in todo]
        for future in futures:
            future.result()
    finally:
        pool.shutdown(wait=True)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        if bar is not None:
            bar.close()
    if received:
        raise StudyInterruptedError(received[0])
    if failures:
        raise StudyError("runs failed: " + "; ".join(failures))


def _library_path() -> str:
    """``PYTHONPATH`` for the runs: the folder holding the ``pathgrad_ref`` this process
    imported first, so that every run trains with the same library as the study that
    records it (not another checkout an editable install may point at)."""
    import pathgrad_ref

    root = str(Path(pathgrad_ref.__file__).resolve().parents[1])
    rest = os.environ.get("PYTHONPATH")
    return root if not rest else os.pathsep.join([root, rest])


def _record_wall_time(run_dir: Path, cmd: Sequence[str], seconds: float, code: int) -> None:
    """Append this invocation (command, wall time including start-up and target samples, exit
    code) to ``run_dir/invocations.json``."""
    path = run_dir / "invocations.json"
    try:
        previous = json.loads(path.read_text()) if path.exists() else []
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        previous = []
    entry = {
        "command": [Path(cmd[0]).name, *cmd[1:]],
        "wall_s": seconds,
        "exit_code": code,
        "commit": git_commit(Path(cmd[1]).parent),
        "dirty": git_dirty(Path(cmd[1]).parent),
        "finished": now(),
        # Other work on the machine slows runs unevenly: wall and step times compare fairly
        # only when this stays below the core count.
        "load_average_1m": load_average(),
    }
    write_json(path, [*(previous if isinstance(previous, list) else []), entry])


# ---------------------------------------------------------------------------------- collecting


_REDO = "re-run the study to redo this run"


def collect(spec: StudySpec, root: Path) -> list[dict[str, Any]]:
    """One entry per completed run: ``estimator``, ``seed``, ``summary``, the evaluation
    ``curve`` (records restricted to :data:`CURVE_KEYS` and the observables) and the run's
    ``invocations`` (command, wall time, exit code, commit, dirty flag, load)."""
    runs = []
    for e in spec.estimators:
        for s in spec.seeds:
            run_dir = spec.run_dir(root, e, s)
            if run_state(run_dir) != "completed":
                raise StudyError(f"{run_dir}: the run has not completed; run the study first")
            try:
                summary = read_json(run_dir / "summary.json", _REDO)
                records = read_jsonl(run_dir / "metrics.jsonl")
            except RunFileError as err:
                raise StudyError(str(err)) from None
            observables = list((summary.get("observables") or {}).keys())
            keep = set(CURVE_KEYS) | set(observables) | {f"{o}_err" for o in observables}
            keep |= {f"{o}_n_eff" for o in observables}
            curve = [{k: v for k, v in rec.items() if k in keep} for rec in records]
            calls: list[dict[str, Any]] = []
            if (run_dir / "invocations.json").exists():
                loaded = json.loads((run_dir / "invocations.json").read_text())
                calls = loaded if isinstance(loaded, list) else []
            runs.append(
                {
                    "estimator": e,
                    "seed": s,
                    "summary": summary,
                    "curve": curve,
                    "invocations": calls,
                    "wall_s": sum(c["wall_s"] for c in calls) if calls else None,
                    "load_average_1m": calls[-1].get("load_average_1m") if calls else None,
                }
            )
    return runs


# ---------------------------------------------------------------------------------- statistics


def _finite(values: Iterable[Any]) -> list[float]:
    return [
        float(v)
        for v in values
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ]


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of already sorted values."""
    if not sorted_values:
        return math.nan
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


def aggregate(values: Sequence[Any]) -> dict[str, Any]:
    """Across seeds: every value (``None`` where a run has none), and over the finite ones
    ``n``, ``mean``, ``se = std/√n`` (``std`` with ``n − 1``), ``median``, ``q25``, ``q75``,
    ``min``, ``max``."""
    xs = _finite(values)
    n = len(xs)
    out: dict[str, Any] = {
        "values": [float(v) if v is not None else None for v in values],
        "n": n,
    }
    if n == 0:
        out.update(mean=None, se=None, median=None, q25=None, q75=None, min=None, max=None)
        return out
    mean = sum(xs) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1) / n) if n > 1 else None
    s = sorted(xs)
    out.update(
        mean=mean,
        se=se,
        median=quantile(s, 0.5),
        q25=quantile(s, 0.25),
        q75=quantile(s, 0.75),
        min=s[0],
        max=s[-1],
    )
    return out


def _best(run: dict[str, Any], key: str) -> Any:
    xs = _finite(rec.get(key) for rec in run["curve"])
    return max(xs) if xs else None


def summarise(
    spec: StudySpec,
    runs: Sequence[dict[str, Any]],
    study_provenance: dict[str, Any],
    history: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The study record: the spec; the provenance (:func:`study_provenance`) and ``history``
    of the records it replaced; every run's curve, summary figures and invocations; and the
    table aggregates (:func:`with_aggregates`)."""
    runs_out = [
        {
            "estimator": r["estimator"],
            "seed": r["seed"],
            "status": r["summary"].get("status"),
            "steps_done": r["summary"].get("steps_done"),
            "train_time_s": r["summary"].get("train_time_s"),
            "eval_time_s": r["summary"].get("eval_time_s"),
            "wall_s": r.get("wall_s"),
            "mean_step_time_s": r["summary"].get("mean_step_time_s"),
            "final": {
                k: v
                for k, v in (r["summary"].get("final") or {}).items()
                if not isinstance(v, (dict, list))
            },
            "curve": r["curve"],
            "invocations": r.get("invocations") or [],
        }
        for r in runs
    ]
    observables: dict[str, str] = {}
    references: dict[str, Any] = {}
    for r in runs:
        observables.update(r["summary"].get("observables") or {})
        references.update(r["summary"].get("references") or {})
    record: dict[str, Any] = {
        "format": "pathgrad-ref study 2",
        "spec": {**asdict(spec), "estimators": list(spec.estimators), "seeds": list(spec.seeds)},
        "provenance": study_provenance,
        "history": list(history),
        "observables": observables,
        "references": references,
        "load_average_1m": aggregate([r.get("load_average_1m") for r in runs]),
        "runs": runs_out,
    }
    return with_aggregates(record)


def with_aggregates(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with ``clock``, ``equal_time_s`` and the per-estimator table aggregates
    (re)computed from its runs' curves (final values as :func:`.rules.final_value`)."""
    from .rules import equal_time, final_value, time_key, value_at_time

    clock = time_key(record)
    t = equal_time(record)
    observables = record.get("observables") or {}
    estimators: dict[str, Any] = {}
    for e in record["spec"]["estimators"]:
        rs = [r for r in record["runs"] if r["estimator"] == e]
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in rs]}
        for key in (
            "ess_reverse",
            "ess_forward",
            "nll",
            "nll_train",
            "kl_reverse",
            "kl_forward",
            *observables,
        ):
            entry[f"final_{key}"] = aggregate([final_value(r["curve"], key) for r in rs])
        entry["best_ess_reverse"] = aggregate([_best(r, "ess_reverse") for r in rs])
        gaps = [
            (h - t_) if h is not None and t_ is not None else None
            for h, t_ in zip(
                entry["final_nll"]["values"], entry["final_nll_train"]["values"], strict=True
            )
        ]
        entry["final_nll_gap"] = aggregate(gaps)
        entry["step_time_s"] = aggregate([r.get("mean_step_time_s") for r in rs])
        entry["train_time_s"] = aggregate([r.get("train_time_s") for r in rs])
        if t is not None:
            entry["ess_reverse_at_equal_time"] = aggregate(
                [value_at_time(r["curve"], "ess_reverse", t, clock) for r in rs]
            )
        estimators[e] = entry
    return {**record, "clock": clock, "equal_time_s": t, "estimators": estimators}


def study_provenance(
    spec: StudySpec, runs: Sequence[dict[str, Any]], folder: Path
) -> dict[str, Any]:
    """The study's provenance (:func:`.provenance.provenance` at collection time, with the
    study command), plus what its runs recorded: every commit and dirty flag they ran at and
    their exact commands."""
    prov = provenance(folder, [["python", "paper_runs/study.py", spec.name]])
    calls = [c for r in runs for c in (r.get("invocations") or [])]
    prov["run_commits"] = sorted({str(c.get("commit")) for c in calls})
    prov["runs_dirty"] = sorted({str(c.get("dirty")) for c in calls})
    prov["run_commands"] = [c["command"] for c in calls]
    return prov
