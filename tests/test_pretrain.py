"""Flow matching in the training loop and two-stage runs: the objective's gradient, its random
stream in the checkpoint (exact resumption), evaluations on the training clock
(``--eval-every-time``), the pretraining stage (shared by the runs of a seed, resumed after a
kill, its streams independent of the run's) and the settings it refuses."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from pathgrad_ref.flows import real_nvp
from pathgrad_ref.flows.continuous import continuous_flow, flow_matching_loss
from pathgrad_ref.targets import GaussianMixture
from pathgrad_ref.training import TrainConfig, Trainer, exact_samples
from pathgrad_ref.training import files as ckpt
from pathgrad_ref.training.config import ConfigError
from pathgrad_ref.training.objectives import (
    FLOW_MATCHING,
    OBJECTIVES,
    direction,
    flow_matching_objective,
    is_continuous,
)
from pathgrad_ref.training.pretrain import stage_one_config, stage_one_folder

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
CPU = torch.device("cpu")


def quiet(_message: str) -> None:
    pass


def small_cnf(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    # zero_init=False: a flow that is not the identity, so that every step moves something.
    return continuous_flow(2, hidden=(8,), steps=2, zero_init=False)


def fm_trainer(run_dir: Path | None, steps: int, **overrides: Any) -> Trainer:
    target = GaussianMixture(2)
    cfg = TrainConfig(
        **{
            "estimator": FLOW_MATCHING,
            "steps": steps,
            "batch_size": 16,
            "lr": 1e-2,
            "eval_every": 4,
            "eval_samples": 32,
            "checkpoint_every": 5,
            "dtype": "float64",
            "progress": False,
            **overrides,
        }
    )
    data = exact_samples(target, 128, 32, seed=0, dtype=F64)
    return Trainer(small_cnf(), target, cfg, device=CPU, run_dir=run_dir, data=data, log=quiet)


def test_objectives_name_flow_matching_next_to_the_estimators() -> None:
    assert OBJECTIVES[-1] == FLOW_MATCHING and FLOW_MATCHING not in OBJECTIVES[:-1]
    assert direction(FLOW_MATCHING) == "forward"  # it trains on target samples
    assert direction("reverse-path-fast") == "reverse"
    with pytest.raises(ValueError, match="flow-matching"):
        direction("nope")
    assert is_continuous(small_cnf()) and not is_continuous(real_nvp(2, 2, (8,)))


def test_the_objective_is_the_library_loss_with_the_runs_stream() -> None:
    """The objective's loss and gradient are those of ``flow_matching_loss`` with the same
    generator state; it returns no weights."""
    flow = small_cnf().double()
    x = GaussianMixture(2).sample(16, torch.Generator().manual_seed(1))
    objective = flow_matching_objective(torch.Generator().manual_seed(5))
    loss, log_w = objective(flow, GaussianMixture(2), x)
    (g1,) = torch.autograd.grad(loss, [next(flow.parameters())])
    ref = flow_matching_loss(flow, x, torch.Generator().manual_seed(5))
    (g2,) = torch.autograd.grad(ref, [next(flow.parameters())])
    assert log_w.numel() == 0
    assert torch.equal(loss.detach(), ref.detach()) and torch.equal(g1, g2)


def test_flow_matching_run_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The objective's own stream (base samples and times) is checkpointed: a flow-matching run
    killed after its step-5 checkpoint and resumed ends with the very same parameters."""
    full = fm_trainer(tmp_path / "full", steps=12)
    full.train()
    original = Trainer._train_step

    def killed(self: Trainer) -> tuple[Tensor, Tensor, Tensor]:
        if self.step == 7:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "_train_step", killed)
    with pytest.raises(KeyboardInterrupt):
        fm_trainer(tmp_path / "cut", steps=12).train()
    monkeypatch.setattr(Trainer, "_train_step", original)
    assert (
        "matching"
        in ckpt.load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["rng"]["generators"][0]
    )
    resumed = fm_trainer(tmp_path / "cut", steps=12)
    assert resumed.train(resume=True)["steps_done"] == 12
    a, b = full.flow.state_dict(), resumed.flow.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.loss_label.startswith("flow-matching loss")


def test_stream_salt_gives_independent_streams() -> None:
    """The pretraining stage (salt 1) and the run itself (salt 0, a plain run's streams) draw
    different minibatches and noise from one seed."""
    plain, salted = fm_trainer(None, 1), fm_trainer(None, 1)
    salted_streams = Trainer(
        small_cnf(),
        salted.target,
        salted.config,
        device=CPU,
        data=salted.data,
        log=quiet,
        stream_salt=1,
    )
    for name in ("index", "matching", "batch"):
        a = torch.rand(4, generator=plain.generators[name])
        b = torch.rand(4, generator=salted_streams.generators[name])
        assert not torch.equal(a, b), name
        c = torch.rand(4, generator=fm_trainer(None, 1).generators[name])
        assert torch.equal(a, c), f"a plain run's {name} stream must not change"


def test_evaluations_follow_the_training_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``eval_every_time`` T and steps of about T/4 of training time, the run evaluates
    and checkpoints at the first step past each multiple of T (and at its end), whatever
    ``eval_every`` in steps says."""
    every, step_s = 0.2, 0.05
    original = Trainer._train_step

    def slow(self: Trainer) -> tuple[Tensor, Tensor, Tensor]:
        time.sleep(step_s)
        return original(self)

    monkeypatch.setattr(Trainer, "_train_step", slow)
    saves: list[int] = []
    original_save = Trainer.save_checkpoint

    def save(self: Trainer) -> None:
        saves.append(self.step)
        original_save(self)

    monkeypatch.setattr(Trainer, "save_checkpoint", save)
    trainer = fm_trainer(
        tmp_path, steps=18, eval_every=1000, checkpoint_every=1000, eval_every_time=every
    )
    summary = trainer.train()
    records = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    times = [r["train_time_s"] for r in records]
    inner = records[1:-1]
    assert records[0]["step"] == 0 and records[-1]["step"] == 18
    assert len(inner) >= 2, times
    for k, rec in enumerate(inner, start=1):
        # The first step at or past k·T: past it by less than one step.
        t = rec["train_time_s"]
        assert k * every <= t < k * every + step_s * 3, (k, times)
    assert saves == [r["step"] for r in inner] + [18]
    assert summary["steps_done"] == 18


def test_eval_every_time_is_checked_and_resumable() -> None:
    from pathgrad_ref.training.config import RESUMABLE_CHANGES

    with pytest.raises(ConfigError, match="eval_every_time"):
        TrainConfig(eval_every_time=-1.0).validate()
    assert "train.eval_every_time" in RESUMABLE_CHANGES
    assert "train.pretrain_dir" in RESUMABLE_CHANGES
    assert "train.pretrain_steps" not in RESUMABLE_CHANGES


def test_stage_one_settings_and_folder() -> None:
    """Stage 1 is flow matching with the pretraining values (or the run's), no time limit; its
    folder's key ignores what does not change its trajectory (the stage-2 estimator, time limit
    and evaluation cadence) and follows what does (seed, steps, rate, number of processes)."""
    run = TrainConfig(
        estimator="reverse-path-fast", steps=99, lr=1e-4, batch_size=64, pretrain_steps=50,
        pretrain_lr=1e-3, time_limit=60.0, grad_var_batches=4, eval_every_time=5.0,
    )  # fmt: skip
    one = stage_one_config(run)
    assert (one.estimator, one.steps, one.lr, one.batch_size) == (FLOW_MATCHING, 50, 1e-3, 64)
    assert one.time_limit is None and one.grad_var_batches == 0 and one.pretrain_steps == 0
    assert stage_one_config(TrainConfig(lr=3e-3, pretrain_steps=5)).lr == 3e-3

    def key(train: TrainConfig, world: int = 1) -> str:
        config = {"experiment": "x", "train": dataclasses.asdict(stage_one_config(train))}
        return stage_one_folder("x", config, train.seed, "d", world)[1]

    base = key(run)
    for same in (
        {"estimator": "flow-matching"},
        {"time_limit": 5.0},
        {"eval_every_time": 1.0},
        {"steps": 7},
        {"lr": 1.0},
    ):
        assert key(dataclasses.replace(run, **same)) == base, same
    for other in ({"seed": 1}, {"pretrain_steps": 51}, {"pretrain_lr": 2e-3}, {"dtype": "float64"}):
        assert key(dataclasses.replace(run, **other)) != base, other
    assert key(run, world=2) != base


def test_the_lock_serialises_stage_one(tmp_path: Path) -> None:
    """Two holders of one stage-1 folder's lock never overlap."""
    from pathgrad_ref.training.distributed import DistContext
    from pathgrad_ref.training.pretrain import _exclusive

    inside: list[int] = []
    overlaps: list[bool] = []

    def hold(tag: int) -> None:
        # flock locks belong to the open file description: each thread opens its own.
        with _exclusive(tmp_path / "stage1", DistContext()):
            overlaps.append(bool(inside))
            inside.append(tag)
            time.sleep(0.1)
            inside.remove(tag)

    threads = [threading.Thread(target=hold, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [False, False, False]
