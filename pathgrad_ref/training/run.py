"""One run of an experiment from resolved settings: checks made before anything is written,
target samples, one trainer per estimator (several with ``--compare``) and the comparison.

Everything a run would read is checked first (the settings, the model they build, and on
``--resume`` the checkpoint, ``config.json`` and ``metrics.jsonl`` of every run folder), so
that a failed start or resume changes nothing on disk.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..estimators import direction
from ..precision import apply_precision_policy
from . import checkpoint as ckpt
from .config import ConfigError, DataConfig, TrainConfig, config_dict, resume_mismatches
from .data import MinibatchSampler, TargetSamples, load_target_data
from .distributed import DistContext
from .experiment import Experiment
from .files import jsonable, read_json, write_json
from .report import fmt, read_jsonl, write_comparison
from .trainer import RunInterruptedError, Trainer, resolve_device


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


def _prefixed(prefix: str, check: Callable[[], None]) -> None:
    try:
        check()
    except ConfigError as e:
        raise ConfigError(prefix + (e.field or ""), e.message) from None


def check_settings(exp: Experiment, settings: Settings) -> None:
    """:class:`ConfigError` for a value or combination that cannot work, before any work:
    field checks, forward-KL estimators without samples, the experiment's own check and
    whatever the target and the flow refuse to build."""
    _prefixed("train.", settings.train.validate)
    _prefixed("data.", settings.data.validate)
    for name in settings.estimators:
        if direction(name) != "forward":
            continue
        if exp.sampler is None:
            raise ConfigError(
                "train.estimator",
                f"{name} minimises the forward KL, which needs target samples, but the "
                f"{exp.name} experiment has no sampler",
            )
        if settings.data.n_train == 0:
            raise ConfigError(
                "data.n_train",
                f"is 0, but estimator {name} minimises the forward KL and needs training samples",
            )
    if exp.check is not None:
        exp.check(settings.params)
    try:
        with torch.random.fork_rng(devices=[]):
            exp.make_target(settings.params)
            exp.make_flow(settings.params)
    except (ValueError, TypeError) as e:
        raise ConfigError(None, f"{exp.name}: {e}") from None


def run_dirs(settings: Settings) -> dict[str, Path]:
    if not settings.compare:
        return {settings.estimators[0]: settings.out}
    return {name: settings.out / name for name in settings.estimators}


def check_run_dirs(settings: Settings) -> None:
    """Refuse to overwrite a run by accident; on ``--resume`` read every file a run folder
    holds (:class:`ConfigError` naming a damaged one)."""
    if settings.overwrite or settings.prepare_data:
        return
    for run_dir in run_dirs(settings).values():
        has_ckpt = (run_dir / ckpt.CHECKPOINT_NAME).exists()
        has_config = (run_dir / "config.json").exists()
        if not settings.resume:
            if has_ckpt or has_config:
                raise ConfigError(
                    None,
                    f"{run_dir} already holds a run; pass --resume to continue it, "
                    "--overwrite to start afresh, or another --out",
                )
            continue
        if has_config:
            read_json(run_dir / "config.json")
        if has_ckpt:
            ckpt.load_checkpoint(run_dir / ckpt.CHECKPOINT_NAME)
        read_jsonl(run_dir / "metrics.jsonl")


def _check_resume(run_dir: Path, run_config: dict[str, Any]) -> None:
    saved_path = run_dir / "config.json"
    if not saved_path.exists() or not (run_dir / ckpt.CHECKPOINT_NAME).exists():
        return
    saved = read_json(saved_path)
    diff = resume_mismatches(saved, json.loads(json.dumps(jsonable(run_config))))
    if diff:
        raise ConfigError(
            None,
            f"{run_dir} was started with other settings ({', '.join(diff)}); resume with the "
            "same ones, or start a new run",
        )


def _data_on_device(
    data: TargetSamples | None, estimators: list[str], device: torch.device, dtype: torch.dtype
) -> bool | None:
    """One choice for all estimators of a comparison: hold the training samples on the device
    or gather them from memory-mapped files (``None`` without forward estimators)."""
    if data is None or data.train is None or not any(direction(n) == "forward" for n in estimators):
        return None
    return MinibatchSampler.fits(data.train, device, dtype)


def run_experiment(
    exp: Experiment,
    settings: Settings,
    *,
    ctx: DistContext | None = None,
    device: torch.device | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train every estimator of ``settings`` (one, or several with ``--compare``); returns the
    summaries (rank 0's are complete). With ``prepare_data`` only the samples are made.
    Raises :class:`~.trainer.RunInterruptedError` after a run stopped by a signal (the next
    estimators of a comparison are not started)."""
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
    dirs = run_dirs(settings)
    on_device = _data_on_device(data, settings.estimators, device, settings.train.torch_dtype)
    if settings.resume and on_device is not None:
        # The index stream lives where the samples do: a resumed run keeps its data path.
        for run_dir in dirs.values():
            if (run_dir / "config.json").exists():
                saved = read_json(run_dir / "config.json").get("runtime") or {}
                if isinstance(saved.get("training_samples_on_device"), bool):
                    on_device = saved["training_samples_on_device"]
                    break
    # Process-global precision flags, set once before any model is built and recorded.
    precision = apply_precision_policy(settings.train.torch_dtype, device).as_dict()
    configs = {}
    for name, run_dir in dirs.items():
        train = dataclasses.replace(settings.train, estimator=name, device=device.type)
        run_config = config_dict(exp.name, train, settings.data, settings.params)
        run_config["preset"] = settings.preset
        run_config["runtime"] = {"training_samples_on_device": on_device, "precision": precision}
        if settings.resume:
            _check_resume(run_dir, run_config)
        configs[name] = (train, run_config)
    summaries: list[dict[str, Any]] = []
    histories: dict[str, list[dict[str, Any]]] = {}
    references: dict[str, Any] = {}
    for name, run_dir in dirs.items():
        train, run_config = configs[name]
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
            data_on_device=on_device,
        )
        if not settings.compare:
            say(
                f"{exp.name}: {name}, preset {settings.preset}, {device}, {train.dtype}, "
                f"run in {run_dir}"
            )
        else:
            say(f"--- {name} ({run_dir})")
        say(
            f"loss = {trainer.loss_label}"
            + (f"; KL values use the exact log Z = {fmt(log_z)}" if log_z is not None else "")
        )
        summary = trainer.train(resume=settings.resume)
        trainer_signal = trainer.stop_signal
        summaries.append(summary)
        references = trainer.references
        if main:
            histories[name] = read_jsonl(run_dir / "metrics.jsonl")
            say(final_line(summary))
        # Free this trainer (and its device copy of the samples) before the next one, so that
        # every estimator of a comparison starts from the same free memory.
        del trainer, flow
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if summary["status"] == "interrupted":
            raise RunInterruptedError(trainer_signal, summary["steps_done"])
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


def final_line(summary: dict[str, Any]) -> str:
    """One line on how a run ended."""
    init, final = summary.get("initial") or {}, summary.get("final") or {}
    t = summary.get("mean_step_time_s")
    step_ms = f"{fmt(1e3 * t)} ms/step" if isinstance(t, float) else "– ms/step"
    line = (
        f"{summary['estimator']}: {summary['status']} after {summary['steps_done']} steps in "
        f"{fmt(summary['train_time_s'])} s ({step_ms}); reverse ESS "
        f"{fmt(init.get('ess_reverse'))} → {fmt(final.get('ess_reverse'))} (best "
        f"{fmt(summary.get('best_ess_reverse'))})"
    )
    if "kl_reverse" in final:
        line += f", KL(q‖p) {fmt(init.get('kl_reverse'))} → {fmt(final.get('kl_reverse'))}"
    if "nll" in final:
        line += f", NLL {fmt(init.get('nll'))} → {fmt(final.get('nll'))}"
    return line
