"""The command line shared by the training scripts in ``paper_runs/``.

``main(experiment, argv)`` parses the options (defaults from the chosen preset, then the
command line), checks them (a bad option is one ``error:`` line on stderr and exit code 2, as
argparse does), loads or generates the target samples, and trains one estimator or, with
``--compare``, several with the same seed, data and budget. Under ``torchrun`` it trains
data-parallel (see :mod:`pathgrad_ref.training.distributed`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from ..estimators import ESTIMATORS, direction
from . import checkpoint as ckpt
from .config import SCHEDULES, ConfigError, DataConfig, HMCConfig, TrainConfig, config_dict
from .config import resume_mismatches as _mismatches
from .data import TargetSamples, cached_hmc_samples, exact_samples
from .distributed import DistContext, barrier, init_distributed, shutdown
from .experiment import Experiment
from .report import read_jsonl, write_comparison, write_json
from .trainer import Trainer, TrainingError, resolve_device

# Defaults of the shared options; a preset overrides any of them, the command line overrides
# the preset.
DEFAULTS: dict[str, Any] = {
    "estimator": "reverse-path-fast",
    "steps": 1000,
    "batch_size": 256,
    "lr": 1e-3,
    "lr_schedule": "constant",
    "lr_patience": 3000,
    "lr_factor": 0.5,
    "lr_min": 0.0,
    "clip_norm": 0.0,
    "max_nonfinite": 100,
    "eval_every": 100,
    "eval_samples": 4096,
    "checkpoint_every": 1000,
    "time_limit": None,
    "seed": 0,
    "dtype": "float32",
    "device": "auto",
    "n_train_samples": 10_000,
    "n_test_samples": 10_000,
    "data_seed": 0,
    "cache_dir": "data/target_samples",
    "hmc_chains": 256,
    "hmc_step_size": 0.1,
    "hmc_leapfrog": 10,
    "hmc_therm": 200,
    "hmc_thin": 5,
    "hmc_chunk": 1_000_000,
    "hmc_dtype": "float64",
    "threads": None,
}


class _Parser(argparse.ArgumentParser):
    """``error()`` prints one line, ``prog: error: message``, and exits with code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_duration(text: str) -> float:
    """``"3600"``, ``"90s"``, ``"30m"``, ``"48h"`` → seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    t = text.strip().lower()
    scale = units.get(t[-1:])
    try:
        value = float(t[:-1] if scale is not None else t) * (scale or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 3600, 90m or 48h, got {text!r}"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive duration, got {text!r}")
    return value


def _estimator_name(text: str) -> str:
    if text not in ESTIMATORS:
        raise argparse.ArgumentTypeError(
            f"unknown estimator {text!r}; expected one of: {', '.join(ESTIMATORS)}"
        )
    return text


def _estimator_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of estimator names")
    for n in names:
        _estimator_name(n)
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"estimator listed twice in {text!r}")
    return names


def _fmt_default(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, tuple):
        return ",".join(str(x) for x in v)
    if isinstance(v, float) and v >= 1e4 and v == int(v):
        return str(int(v))
    return str(v)


def _preset_note(exp: Experiment, name: str) -> str:
    """``"quick: 1000; paper: 10000"``: the default of option ``name`` in each preset
    (``"default: X"`` when they agree)."""
    shown = {p: _fmt_default(v.get(name, DEFAULTS.get(name))) for p, v in exp.presets.items()}
    if len(set(shown.values())) == 1:
        return f"default: {next(iter(shown.values()))}"
    return "; ".join(f"{p}: {v}" for p, v in shown.items())


def build_parser(exp: Experiment) -> argparse.ArgumentParser:
    """The parser of ``paper_runs/<exp.name>.py``; every default is ``None`` and is filled in
    from the preset by :func:`resolve`."""
    p = _Parser(
        prog=f"paper_runs/{exp.name}.py",
        description=exp.description,
        epilog=exp.epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def add(group: Any, flag: str, dest: str, help: str, **kw: Any) -> None:
        note = _preset_note(exp, dest)
        group.add_argument(flag, dest=dest, default=None, help=f"{help} [{note}]", **kw)

    run = p.add_argument_group("run")
    run.add_argument(
        "--preset",
        choices=list(exp.presets),
        default="quick",
        help="default settings: 'quick' (a few minutes on a laptop CPU) or 'paper' (the "
        "paper's architecture and hyperparameters, for a GPU) [default: quick]",
    )
    add(
        run,
        "--estimator",
        "estimator",
        "gradient estimator to train with: " + ", ".join(ESTIMATORS),
        type=_estimator_name,
        metavar="NAME",
    )
    run.add_argument(
        "--compare",
        type=_estimator_list,
        default=None,
        metavar="A,B,...",
        help="train each listed estimator with the same seed, data and budget (one after "
        "the other, in OUT/<estimator>/) and write OUT/comparison.{md,json,png}",
    )
    add(run, "--device", "device", "auto (cuda if available), cpu, cuda or cuda:K", metavar="DEV")
    add(run, "--dtype", "dtype", "floating point precision", choices=["float32", "float64"])
    add(run, "--seed", "seed", "seed of the initialisation and of the training streams", type=int)
    run.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="run folder [default: runs/<experiment>/<preset>-<estimator or compare>-seed<seed>]",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoint (start it if there is none); "
        "--steps and --time-limit may be raised",
    )
    run.add_argument(
        "--overwrite", action="store_true", help="start afresh even if --out holds a run"
    )
    run.add_argument(
        "--prepare-data",
        action="store_true",
        help="only generate (or check) the cached target samples, then exit",
    )
    add(
        run,
        "--threads",
        "threads",
        "torch CPU threads (none: torch's default; tiny models run best on one, and idle "
        "threads spinning on a busy machine slow them down many times over)",
        type=int,
        metavar="N",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    tr = p.add_argument_group("training")
    add(tr, "--steps", "steps", "optimiser steps", type=int, metavar="N")
    add(
        tr,
        "--batch-size",
        "batch_size",
        "samples per step (over all processes)",
        type=int,
        metavar="N",
    )
    add(tr, "--lr", "lr", "Adam learning rate", type=float)
    add(
        tr,
        "--lr-schedule",
        "lr_schedule",
        "constant, or plateau: multiply the rate by --lr-factor when the training loss has "
        "not reached a new minimum for --lr-patience steps",
        choices=SCHEDULES,
    )
    add(tr, "--lr-patience", "lr_patience", "plateau patience in steps", type=int, metavar="N")
    add(tr, "--lr-factor", "lr_factor", "plateau decay factor", type=float, metavar="F")
    add(tr, "--lr-min", "lr_min", "lower bound of the decayed rate", type=float, metavar="LR")
    add(
        tr,
        "--clip-norm",
        "clip_norm",
        "clip the gradient norm to this (0: off)",
        type=float,
        metavar="C",
    )
    add(
        tr,
        "--max-nonfinite",
        "max_nonfinite",
        "stop after this many non-finite steps in a row (each is skipped)",
        type=int,
        metavar="N",
    )
    add(
        tr,
        "--time-limit",
        "time_limit",
        "stop with a checkpoint after this much training time (e.g. 48h, 90m, 3600)",
        type=parse_duration,
        metavar="T",
    )

    ev = p.add_argument_group("evaluation and checkpoints")
    add(ev, "--eval-every", "eval_every", "evaluate every N steps", type=int, metavar="N")
    add(ev, "--eval-samples", "eval_samples", "flow samples per evaluation", type=int, metavar="N")
    add(
        ev,
        "--checkpoint-every",
        "checkpoint_every",
        "checkpoint every N steps",
        type=int,
        metavar="N",
    )

    if exp.sampler is not None:
        what = "exact sampler" if exp.sampler == "exact" else "HMC, cached in --cache-dir"
        da = p.add_argument_group(f"target samples ({what})")
        add(
            da,
            "--n-train-samples",
            "n_train_samples",
            "training samples for forward-KL estimators",
            type=int,
            metavar="N",
        )
        add(
            da,
            "--n-test-samples",
            "n_test_samples",
            "held-out samples for NLL, forward ESS and reference observables (0: none)",
            type=int,
            metavar="N",
        )
        add(da, "--data-seed", "data_seed", "seed of the target samples", type=int, metavar="SEED")
        add(
            da,
            "--cache-dir",
            "cache_dir",
            "folder of cached HMC sample sets (exact samples are drawn afresh)",
            metavar="DIR",
        )
        if exp.sampler == "hmc":
            add(da, "--hmc-chains", "hmc_chains", "parallel chains", type=int, metavar="N")
            add(
                da,
                "--hmc-step-size",
                "hmc_step_size",
                "initial leapfrog step",
                type=float,
                metavar="EPS",
            )
            add(
                da,
                "--hmc-leapfrog",
                "hmc_leapfrog",
                "leapfrog steps per trajectory",
                type=int,
                metavar="N",
            )
            add(
                da,
                "--hmc-therm",
                "hmc_therm",
                "thermalisation trajectories (step size adapted to 80%% acceptance)",
                type=int,
                metavar="N",
            )
            add(
                da,
                "--hmc-thin",
                "hmc_thin",
                "trajectories between kept samples",
                type=int,
                metavar="N",
            )
            add(
                da, "--hmc-chunk", "hmc_chunk", "samples generated per chunk", type=int, metavar="N"
            )
            add(da, "--hmc-dtype", "hmc_dtype", "HMC precision", choices=["float32", "float64"])

    ph = p.add_argument_group(f"{exp.name}: physics and architecture")
    for prm in exp.params:
        flag = "--" + prm.name.replace("_", "-")
        add(ph, flag, prm.name, prm.help, type=prm.type, metavar=prm.metavar)
    return p


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a run needs, resolved from preset and command line."""

    preset: str
    train: TrainConfig
    data: DataConfig
    params: dict[str, Any]
    estimators: list[str]
    compare: bool
    out: Path
    resume: bool
    overwrite: bool
    prepare_data: bool
    threads: int | None


def resolve(exp: Experiment, args: argparse.Namespace) -> Settings:
    """Fill unset options from the preset (then :data:`DEFAULTS`) and build the configs;
    :class:`ConfigError` for values that cannot work."""
    preset = exp.presets[args.preset]
    values = {**DEFAULTS, **preset}
    for key, v in vars(args).items():
        if v is not None:
            values[key] = v

    clip = values["clip_norm"]
    train = TrainConfig(
        estimator=values["estimator"],
        steps=values["steps"],
        batch_size=values["batch_size"],
        lr=values["lr"],
        lr_schedule=values["lr_schedule"],
        lr_patience=values["lr_patience"],
        lr_factor=values["lr_factor"],
        lr_min=values["lr_min"],
        clip_norm=float(clip) if clip else None,
        max_nonfinite=values["max_nonfinite"],
        eval_every=values["eval_every"],
        eval_samples=values["eval_samples"],
        checkpoint_every=values["checkpoint_every"],
        time_limit=values["time_limit"],
        seed=values["seed"],
        dtype=values["dtype"],
        device=values["device"],
        progress=not args.no_progress,
    )
    hmc = None
    if exp.sampler == "hmc":
        hmc = HMCConfig(
            n_chains=values["hmc_chains"],
            step_size=values["hmc_step_size"],
            n_leapfrog=values["hmc_leapfrog"],
            n_therm=values["hmc_therm"],
            thin=values["hmc_thin"],
            chunk_size=values["hmc_chunk"],
            dtype=values["hmc_dtype"],
        )
    has_data = exp.sampler is not None
    data = DataConfig(
        n_train=values["n_train_samples"] if has_data else 0,
        n_test=values["n_test_samples"] if has_data else 0,
        seed=values["data_seed"],
        cache_dir=values["cache_dir"],
        hmc=hmc,
    )
    params = {p.name: values[p.name] for p in exp.params}
    estimators = args.compare if args.compare else [train.estimator]
    train.validate()
    data.validate()
    threads = values["threads"]
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads: expected an integer >= 1, got {threads}")
    for name in estimators:
        if direction(name) == "forward":
            if exp.sampler is None:
                raise ConfigError(
                    f"estimator {name} minimises the forward KL, which needs target samples, "
                    f"but the {exp.name} experiment has no sampler"
                )
            if data.n_train == 0:
                raise ConfigError(
                    f"estimator {name} minimises the forward KL and needs training samples; "
                    "--n-train-samples is 0"
                )
    tag = "compare" if args.compare else train.estimator
    out = (
        Path(args.out)
        if args.out
        else Path("runs") / exp.name / f"{args.preset}-{tag}-seed{train.seed}"
    )
    return Settings(
        preset=args.preset,
        train=train,
        data=data,
        params=params,
        estimators=list(estimators),
        compare=bool(args.compare),
        out=out,
        resume=args.resume,
        overwrite=args.overwrite,
        prepare_data=args.prepare_data,
        threads=threads,
    )


def _run_dirs(settings: Settings) -> dict[str, Path]:
    if not settings.compare:
        return {settings.estimators[0]: settings.out}
    return {name: settings.out / name for name in settings.estimators}


def _check_run_dirs(settings: Settings) -> None:
    """Refuse to overwrite an existing run by accident."""
    if settings.resume or settings.overwrite or settings.prepare_data:
        return
    for run_dir in _run_dirs(settings).values():
        if (run_dir / ckpt.CHECKPOINT_NAME).exists() or (run_dir / "config.json").exists():
            raise ConfigError(
                f"{run_dir} already holds a run; pass --resume to continue it, --overwrite to "
                "start afresh, or another --out"
            )


def load_target_data(
    exp: Experiment,
    target: Any,
    data: DataConfig,
    *,
    need_train: bool,
    dtype: torch.dtype,
    device: torch.device,
    ctx: DistContext,
    log: Callable[[str], None],
    progress: bool,
) -> TargetSamples | None:
    """Target samples for a run: exact ones drawn now, HMC ones from the cache (rank 0
    generates them if missing while the other ranks wait)."""
    n_train = data.n_train if need_train else 0
    if exp.sampler is None or (n_train == 0 and data.n_test == 0):
        return None
    if exp.sampler == "exact":
        return exact_samples(target, n_train, data.n_test, data.seed, dtype)
    assert data.hmc is not None
    hmc = data.hmc
    observable = exp.hmc_observable(target) if exp.hmc_observable is not None else None

    def get(n: int, split: str, quiet: bool) -> tuple[Any, dict[str, Any]] | tuple[None, None]:
        if n == 0:
            return None, None
        return cached_hmc_samples(
            target,
            n,
            hmc,
            seed=data.seed,
            split=split,
            dtype=dtype,
            device=device,
            cache_dir=data.cache_dir,
            periodic=exp.hmc_periodic,
            observable=observable,
            symmetry=exp.symmetry,
            progress=progress and not quiet,
            log=(lambda _m: None) if quiet else log,
        )

    if ctx.is_main:
        test, test_meta = get(data.n_test, "test", False)
        train, train_meta = get(n_train, "train", False)
    barrier(ctx)
    if not ctx.is_main:
        test, test_meta = None, None
        train, train_meta = get(n_train, "train", True)
    meta = {
        "sampler": "hmc",
        "target": type(target).__name__,
        "train": train_meta,
        "test": test_meta,
    }
    return TargetSamples(train, test, meta)


def _check_model(exp: Experiment, settings: Settings) -> None:
    """Build the target and the flow once, so that physics or architecture values they reject
    are reported before any sampling or training starts."""
    try:
        with torch.random.fork_rng(devices=[]):
            exp.make_target(settings.params)
            exp.make_flow(settings.params)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{exp.name}: {e}") from None


def _check_resume(run_dir: Path, run_config: dict[str, Any]) -> None:
    saved_path = run_dir / "config.json"
    if not saved_path.exists() or not (run_dir / ckpt.CHECKPOINT_NAME).exists():
        return
    saved = json.loads(saved_path.read_text())
    current = json.loads(json.dumps(run_config))
    diff = _mismatches(saved, current)
    if diff:
        raise ConfigError(
            f"--resume: {run_dir} was started with other settings ({', '.join(diff)}); resume "
            "with the same ones, or start a new run"
        )


def run_experiment(
    exp: Experiment,
    settings: Settings,
    *,
    ctx: DistContext | None = None,
    device: torch.device | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train every estimator of ``settings`` (one, or several with ``--compare``); returns the
    summaries (rank 0's are complete). With ``prepare_data`` only the samples are made."""
    ctx = ctx if ctx is not None else DistContext()
    device = device if device is not None else resolve_device(settings.train.device)
    main = ctx.is_main
    say: Callable[[str], None] = log if main else (lambda _m: None)
    target = exp.make_target(settings.params)
    need_train = settings.prepare_data or any(
        direction(n) == "forward" for n in settings.estimators
    )
    data = load_target_data(
        exp,
        target,
        settings.data,
        need_train=need_train,
        dtype=settings.train.torch_dtype,
        device=device,
        ctx=ctx,
        log=say,
        progress=settings.train.progress,
    )
    if settings.prepare_data:
        if exp.sampler == "exact":
            say(f"{exp.name}: the exact sampler draws its samples at the start of each run")
        return []
    observables = list(exp.observables(target))
    log_z = exp.log_z(target) if exp.log_z is not None else None
    summaries: list[dict[str, Any]] = []
    histories: dict[str, list[dict[str, Any]]] = {}
    references: dict[str, Any] = {}
    for name, run_dir in _run_dirs(settings).items():
        train = dataclasses.replace(settings.train, estimator=name, device=device.type)
        run_config = config_dict(exp.name, train, settings.data, settings.params)
        run_config["preset"] = settings.preset
        if settings.resume:
            _check_resume(run_dir, run_config)
        if main:
            if settings.overwrite and run_dir.exists():
                for f in (ckpt.CHECKPOINT_NAME, "metrics.jsonl", "summary.json"):
                    (run_dir / f).unlink(missing_ok=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / "config.json", run_config)
        with torch.random.fork_rng(devices=[]):
            # The same initial parameters for every estimator and rank, without touching the
            # caller's global random stream.
            torch.manual_seed(train.seed)
            flow = exp.make_flow(settings.params)
        trainer = Trainer(
            flow,
            target,
            train,
            device=device,
            run_dir=run_dir,
            data=data,
            observables=observables,
            log_z=log_z,
            ctx=ctx,
            run_config=run_config,
            log=say,
            title=f"{exp.name} {name}",
        )
        if main and not settings.compare:
            say(
                f"{exp.name}: {name}, preset {settings.preset}, {device}, {train.dtype}, "
                f"run in {run_dir}"
            )
        elif main:
            say(f"--- {name} ({run_dir})")
        summary = trainer.train(resume=settings.resume)
        summaries.append(summary)
        references = trainer.references
        if main:
            histories[name] = read_jsonl(run_dir / "metrics.jsonl")
            _print_final(summary, say)
    if settings.compare and main:
        files = write_comparison(
            settings.out,
            summaries,
            histories,
            references,
            title=f"{exp.name} ({settings.preset} preset): estimator comparison",
        )
        say((settings.out / "comparison.md").read_text())
        say("wrote " + ", ".join(str(f) for f in files))
    return summaries


def _print_final(summary: dict[str, Any], say: Callable[[str], None]) -> None:
    init, final = summary.get("initial") or {}, summary.get("final") or {}

    def g(r: dict[str, Any], k: str) -> str:
        v = r.get(k)
        return "–" if not isinstance(v, (int, float)) or not math.isfinite(v) else f"{v:.4g}"

    t = summary.get("mean_step_time_s")
    step_ms = f"{1e3 * t:.2f} ms/step" if isinstance(t, float) else "– ms/step"
    say(
        f"{summary['estimator']}: {summary['status']} after {summary['steps_done']} steps in "
        f"{summary['train_time_s']:.1f} s ({step_ms}); reverse ESS {g(init, 'ess_reverse')} → "
        f"{g(final, 'ess_reverse')} (best {g(summary, 'best_ess_reverse')})"
        + (f", NLL {g(init, 'nll')} → {g(final, 'nll')}" if "nll" in final else "")
    )


def main(exp: Experiment, argv: Sequence[str] | None = None) -> int:
    """Entry point of ``paper_runs/<exp.name>.py``; returns the exit code (0 done, 1 training
    failed, 2 bad options)."""
    parser = build_parser(exp)
    args = parser.parse_args(argv)
    try:
        settings = resolve(exp, args)
        device = resolve_device(settings.train.device)
        _check_model(exp, settings)
        _check_run_dirs(settings)
    except ConfigError as e:
        parser.error(str(e))
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    ctx = init_distributed(device.type)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    try:
        run_experiment(exp, settings, ctx=ctx, device=device)
    except ConfigError as e:
        parser.error(str(e))
    except TrainingError as e:
        print(f"{parser.prog}: training stopped: {e}", file=sys.stderr)
        return 1
    finally:
        shutdown(ctx)
    return 0
