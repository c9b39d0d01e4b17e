"""One run of an experiment from resolved settings: checks, then target samples, the trainer
and its summary. Everything a run would read (settings, the model they build, on ``--resume``
the run folder's files) is checked first, so that a failed start or resume changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..evaluation import fmt
from ..flows.base import Flow
from ..precision import apply_precision_policy
from ..targets.base import Target
from . import files
from .config import ConfigError, DataConfig, TrainConfig, config_dict, resume_mismatches
from .data import TargetSamples, cached_hmc_samples, exact_samples
from .distributed import DistContext, barrier
from .experiment import Experiment
from .objectives import FLOW_MATCHING, direction, is_continuous
from .pretrain import pretrained_parameters
from .report import final_line, read_jsonl
from .trainer import RunInterruptedError, Trainer, resolve_device


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a run needs, resolved from preset and command line."""

    preset: str
    train: TrainConfig
    data: DataConfig
    params: dict[str, Any]
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
    """:class:`ConfigError` for a value or combination that cannot work: field checks, a
    forward-KL estimator or flow matching without samples, flow matching of a flow that is not
    continuous, the experiment's check, what the model refuses."""
    _prefixed("train.", settings.train.validate)
    _prefixed("data.", settings.data.validate)
    name = settings.train.estimator
    pretrain = settings.train.pretrain_steps > 0
    uses: list[tuple[str, str]] = []  # (field, what needs the training samples)
    if direction(name) == "forward":
        why = "flow matching" if name == FLOW_MATCHING else "minimises the forward KL"
        uses.append(("train.estimator", f"estimator {name} ({why})"))
    if pretrain:
        uses.append(("train.pretrain_steps", "stage 1 (flow matching, train.pretrain_steps)"))
    for field, what in uses:
        if exp.sampler is None:
            raise ConfigError(
                field, f"{what} needs target samples, but the {exp.name} experiment has no sampler"
            )
        if settings.data.n_train == 0:
            raise ConfigError("data.n_train", f"is 0, but {what} needs training samples")
    if exp.check is not None:
        exp.check(settings.params)
    try:
        with torch.random.fork_rng(devices=[]):
            exp.make_target(settings.params)
            flow = exp.make_flow(settings.params)
    except (ValueError, TypeError) as e:
        raise ConfigError(None, f"{exp.name}: {e}") from None
    if (name == FLOW_MATCHING or pretrain) and not is_continuous(flow):
        raise ConfigError(
            "train.estimator" if name == FLOW_MATCHING else "train.pretrain_steps",
            f"flow matching trains a continuous flow (one ContinuousLayer); the {exp.name} "
            "flow is not one",
        )


def check_run_dir(settings: Settings) -> None:
    """Refuse to overwrite a run by accident; on ``--resume`` read every file the run folder
    holds (:class:`ConfigError` naming a damaged one)."""
    if settings.overwrite or settings.prepare_data:
        return
    run_dir = settings.out
    has_ckpt = (run_dir / files.CHECKPOINT_NAME).exists()
    has_config = (run_dir / "config.json").exists()
    if not settings.resume:
        if has_ckpt or has_config:
            raise ConfigError(
                None,
                f"{run_dir} already holds a run; pass --resume to continue it, "
                "--overwrite to start afresh, or another --out",
            )
        return
    if has_config:
        files.read_json(run_dir / "config.json")
    if has_ckpt:
        files.load_checkpoint(run_dir / files.CHECKPOINT_NAME)
    read_jsonl(run_dir / "metrics.jsonl")


def load_target_data(
    exp: Experiment,
    target: Target,
    data: DataConfig,
    *,
    need_train: bool,
    dtype: torch.dtype,
    device: torch.device,
    ctx: DistContext,
    log: Callable[[str], None],
    progress: bool,
) -> TargetSamples | None:
    """Target samples for a run of ``exp``: exact ones drawn now, HMC ones from the cache
    (rank 0 generates them if missing while the other ranks wait)."""
    n_train = data.n_train if need_train else 0
    if exp.sampler is None or (n_train == 0 and data.n_test == 0):
        return None
    if exp.sampler == "exact":
        return exact_samples(target, n_train, data.n_test, data.seed, dtype)
    assert data.hmc is not None
    hmc, observable = data.hmc, exp.hmc_observable(target) if exp.hmc_observable else None
    sampler = {"periodic": exp.hmc_periodic, "symmetry": exp.symmetry, "observable": observable}

    def get(n: int, split: str, quiet: bool) -> tuple[Tensor | None, dict[str, Any] | None]:
        """Rank 0 makes (or loads and verifies) a set; the others load what it made, quietly."""
        if n == 0:
            return None, None
        return cached_hmc_samples(
            target, n, hmc, seed=data.seed, split=split, dtype=dtype, device=device,
            cache_dir=data.cache_dir, log=(lambda _m: None) if quiet else log, verify=not quiet,
            progress=progress and not quiet, **sampler,
        )  # fmt: skip

    test: Tensor | None = None
    test_meta: dict[str, Any] | None = None
    if ctx.is_main:
        test, test_meta = get(data.n_test, "test", False)
        train, train_meta = get(n_train, "train", False)
    barrier(ctx)
    if not ctx.is_main:
        train, train_meta = get(n_train, "train", True)
    meta = {
        "sampler": "hmc",
        "target": type(target).__name__,
        "train": train_meta,
        "test": test_meta,
    }
    return TargetSamples(train, test, meta)


def run_experiment(
    exp: Experiment,
    settings: Settings,
    *,
    ctx: DistContext | None = None,
    device: torch.device | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Train ``settings.train.estimator`` in ``settings.out``; returns the summary (rank 0's is
    complete), or ``None`` with ``prepare_data`` (only the samples are made). Raises
    :class:`~.trainer.RunInterruptedError` after a run stopped by a signal."""
    ctx = ctx if ctx is not None else DistContext()
    device = device if device is not None else resolve_device(settings.train.device)
    say: Callable[[str], None] = log if ctx.is_main else (lambda _m: None)
    target = exp.make_target(settings.params)
    train = dataclasses.replace(settings.train, device=device.type)
    forward = direction(train.estimator) == "forward" or train.pretrain_steps > 0
    data = load_target_data(
        exp,
        target,
        settings.data,
        need_train=settings.prepare_data or forward,
        dtype=train.torch_dtype,
        device=device,
        ctx=ctx,
        log=say,
        progress=train.progress,
    )
    if settings.prepare_data:
        if exp.sampler == "exact":
            say(f"{exp.name}: the exact sampler draws its samples at the start of each run")
        return None
    run_dir = settings.out
    # Process-global precision flags, set once before the model is built, and recorded.
    precision = apply_precision_policy(train.torch_dtype, device).as_dict()
    run_config = config_dict(exp.name, train, settings.data, settings.params)
    run_config["preset"] = settings.preset
    run_config["runtime"] = {"precision": precision}
    if settings.resume and (run_dir / files.CHECKPOINT_NAME).exists():
        saved_config = files.read_json(run_dir / "config.json")
        diff = resume_mismatches(saved_config, json.loads(json.dumps(files.jsonable(run_config))))
        if diff:
            raise ConfigError(
                None,
                f"{run_dir} was started with other settings ({', '.join(diff)}); resume with "
                "the same ones, or start a new run",
            )
    if ctx.is_main:
        if settings.overwrite and run_dir.exists():
            for f in (files.CHECKPOINT_NAME, "metrics.jsonl", "summary.json"):
                (run_dir / f).unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        files.write_json(run_dir / "config.json", run_config)

    def make_flow() -> Flow:
        with torch.random.fork_rng(devices=[]):
            # The same initial parameters on every rank, without touching the caller's stream.
            torch.manual_seed(train.seed)
            return exp.make_flow(settings.params)

    flow = make_flow()
    log_z = exp.log_z(target) if exp.log_z is not None else None
    observables = list(exp.observables(target))
    if train.pretrain_steps > 0:
        # Stage 1 (flow matching), trained, resumed or reused; stage 2 starts where it ended.
        state, info = pretrained_parameters(
            experiment=exp.name, make_flow=make_flow, target=target, train=train,
            run_config=run_config, data=data, observables=observables, log_z=log_z,
            device=device, ctx=ctx, log=say,
        )  # fmt: skip
        # In the run's dtype first: load_state_dict copies into the parameters' own dtype.
        flow.to(dtype=train.torch_dtype).load_state_dict(state)
        run_config["runtime"]["pretraining"] = info
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
        title=f"{exp.name} {train.estimator}",
    )
    say(
        f"{exp.name}: {train.estimator}, preset {settings.preset}, {device}, {train.dtype}, "
        f"run in {run_dir}"
    )
    say(
        f"loss = {trainer.loss_label}"
        + (f"; KL values use the exact log Z = {fmt(log_z)}" if log_z is not None else "")
    )
    summary = trainer.train(resume=settings.resume)
    say(final_line(summary))
    if summary["status"] == "interrupted":
        raise RunInterruptedError(trainer.stop_signal, summary["steps_done"])
    return summary
