"""Two-stage runs: a continuous flow first trained by flow matching (stage 1, the pretraining),
then by the run's own estimator from the pretrained parameters (stage 2, the run itself).

Stage 1 is an ordinary run of the training loop with ``estimator = flow-matching``,
``steps = pretrain_steps``, ``lr = pretrain_lr`` and ``batch_size = pretrain_batch_size`` (each
defaulting to the run's value), no time limit and no gradient-variance measurements; every
other setting is the run's. It starts from the same initial parameters as a plain run of the
seed and draws its random streams independently of stage 2's (``stream_salt = 1``). Its folder,
``<pretrain_dir>/<experiment>-seed<k>-<key>``, is named by a hash of the settings that determine
its trajectory (:func:`~.config.trajectory_settings` of its config, and the number of
processes), so every run whose stage 1 would be the same, e.g. the fine-tuning arms of one seed
in a study, shares one: the first trains it, later ones load its final checkpoint, and a killed
stage 1 resumes from its own checkpoint. An exclusive lock on ``<folder>.lock`` (``fcntl``) lets
one process at a time train or read it, so that runs started together wait for the one that
trains it instead of training it twice.

Stage 2 starts with a fresh Adam state and the run's learning rate, whatever its estimator
(continued flow matching included): the stage-2 estimators differ in their objective alone.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..evaluation import Observable
from ..flows.base import Flow
from ..targets.base import Target
from . import files
from .config import ConfigError, TrainConfig, trajectory_settings
from .data import TargetSamples, settings_key
from .distributed import DistContext, barrier
from .objectives import FLOW_MATCHING
from .trainer import RunInterruptedError, Trainer

PRETRAINING_SALT = 1
"""The ``stream_salt`` of stage 1 (:class:`~.trainer.Trainer`)."""


def stage_one_config(train: TrainConfig) -> TrainConfig:
    """Stage 1's training settings from the run's (module docstring)."""
    return dataclasses.replace(
        train,
        estimator=FLOW_MATCHING,
        steps=train.pretrain_steps,
        lr=train.pretrain_lr if train.pretrain_lr is not None else train.lr,
        batch_size=(
            train.pretrain_batch_size if train.pretrain_batch_size is not None else train.batch_size
        ),
        time_limit=None,
        grad_var_batches=0,
        pretrain_steps=0,
        pretrain_lr=None,
        pretrain_batch_size=None,
    )


def stage_one_folder(
    experiment: str, run_config: dict[str, Any], seed: int, pretrain_dir: str, world_size: int
) -> tuple[Path, str]:
    """``(folder, key)`` of a stage-1 run with the config ``run_config`` (``config.json``'s
    form): the key hashes its trajectory settings, its number of steps (which a resumed run may
    change, but a shared stage 1 may not) and ``world_size``."""
    blob = json.loads(json.dumps(files.jsonable(run_config)))
    steps = blob["train"]["steps"]
    key = settings_key({**trajectory_settings(blob), "steps": steps, "world_size": world_size})
    return Path(pretrain_dir) / f"{experiment}-seed{seed}-{key}", key


@contextmanager
def _exclusive(folder: Path, ctx: DistContext) -> Iterator[None]:
    """Hold an exclusive lock on ``<folder>.lock`` (rank 0 takes it; the other ranks of a
    ``torchrun`` job wait for rank 0 to hold it and to let go)."""
    handle = None
    try:
        if ctx.is_main:
            folder.parent.mkdir(parents=True, exist_ok=True)
            handle = open(folder.with_name(folder.name + ".lock"), "a")  # noqa: SIM115
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        barrier(ctx)
        yield
        barrier(ctx)
    finally:
        if handle is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()


def _finished(folder: Path, steps: int) -> bool:
    """Whether ``folder`` holds a stage 1 that completed its ``steps``."""
    path = folder / "summary.json"
    if not path.exists() or not (folder / files.CHECKPOINT_NAME).exists():
        return False
    summary = files.read_json(path, f"delete {folder} and it will be trained again")
    return summary.get("status") == "completed" and summary.get("steps_done") == steps


def pretrained_parameters(
    *,
    experiment: str,
    make_flow: Callable[[], Flow],
    target: Target,
    train: TrainConfig,
    run_config: dict[str, Any],
    data: TargetSamples | None,
    observables: Sequence[Observable],
    log_z: float | None,
    device: torch.device,
    ctx: DistContext,
    log: Callable[[str], None],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train stage 1, or resume or reuse it, and return its final parameters (a
    ``state_dict``) and what the run records of it: ``folder``, ``key``, ``steps``,
    ``train_time_s`` and the final evaluation of the pretrained flow.

    ``train``: the run's (stage-2) settings, with ``pretrain_steps > 0``; ``run_config``: the
    run's config (``config.json``'s form), from which stage 1's is made; ``make_flow()``: the
    flow with the run's initial parameters. Raises :class:`~.trainer.RunInterruptedError` if a
    signal stops stage 1 (its checkpoint stands; the run's resume continues it)."""
    cfg = stage_one_config(train)
    config = {
        **run_config,
        "train": dataclasses.asdict(cfg),
        "runtime": dict(run_config.get("runtime") or {}),
        "stage": "pretraining (flow matching)",
    }
    folder, key = stage_one_folder(experiment, config, cfg.seed, cfg.pretrain_dir, ctx.world_size)
    with _exclusive(folder, ctx):
        if _finished(folder, cfg.steps):
            log(f"stage 1: reusing the pretrained flow in {folder}")
        else:
            log(f"stage 1: flow matching for {cfg.steps} steps in {folder}")
            if ctx.is_main:
                folder.mkdir(parents=True, exist_ok=True)
                files.write_json(folder / "config.json", config)
            try:
                trainer = Trainer(
                    make_flow(),
                    target,
                    cfg,
                    device=device,
                    run_dir=folder,
                    data=data,
                    observables=observables,
                    log_z=log_z,
                    ctx=ctx,
                    run_config=config,
                    log=log,
                    title=f"{experiment} stage 1 ({FLOW_MATCHING})",
                    stream_salt=PRETRAINING_SALT,
                )
            except ConfigError as e:
                # Stage 1's batch size is the pretraining one: name the option the user sets.
                field = "train.pretrain_batch_size" if e.field == "train.batch_size" else e.field
                raise ConfigError(field, e.message) from None
            summary = trainer.train(resume=True)
            if summary["status"] == "interrupted":
                raise RunInterruptedError(trainer.stop_signal, summary["steps_done"])
        barrier(ctx)
        state = files.load_checkpoint(folder / files.CHECKPOINT_NAME)["model"]
        summary = files.read_json(folder / "summary.json")
    final = summary.get("final") or {}
    info = {
        "folder": str(folder),
        "key": key,
        "steps": summary.get("steps_done"),
        "train_time_s": summary.get("train_time_s"),
        "final": {k: v for k, v in final.items() if not isinstance(v, (dict, list))},
    }
    return state, info
