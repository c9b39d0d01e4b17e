"""The training library: target-sample caching, reweighted observables, checkpoints, the loop
(non-finite steps, clipping, schedules, learning), exact resumption and data parallelism."""

from __future__ import annotations

import json
import math
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from torch import Tensor

from pathgrad_ref.estimators import get_estimator
from pathgrad_ref.evaluation import reweighted_mean, sample_mean
from pathgrad_ref.flows import Flow, real_nvp
from pathgrad_ref.samplers import hmc_sample
from pathgrad_ref.targets import GaussianMixture, Phi4
from pathgrad_ref.training import (
    DataConfig,
    HMCConfig,
    Observable,
    TrainConfig,
    Trainer,
    TrainingError,
    cached_hmc_samples,
    exact_samples,
)
from pathgrad_ref.training import files as ckpt
from pathgrad_ref.training.config import ConfigError, resume_mismatches
from pathgrad_ref.training.data import generate_hmc, load_sample_set, save_sample_set
from pathgrad_ref.training.distributed import (
    DistContext,
    average_gradients,
    init_distributed,
    shutdown,
    stream_seed,
)
from pathgrad_ref.training.trainer import STOP_VOTE_EVERY

F64 = torch.float64
CPU = torch.device("cpu")
TIMING_KEYS = {"train_time_s", "eval_time_s", "checkpoint_time_s", "wall_time_s", "step_time_s"}

# Short HMC runs give unreliable τ_int estimates, which the sampler says.
pytestmark = [
    pytest.mark.filterwarnings("ignore:series of .* too short:RuntimeWarning"),
    pytest.mark.usefixtures("one_thread"),
]


def quiet(_message: str) -> None:
    pass


# ---------------------------------------------------------------- target samples


def test_sample_set_round_trip_weights_only(tmp_path: Path) -> None:
    chunks = [torch.randn(4, 2, dtype=F64), torch.randn(3, 2, dtype=F64)]
    folder = save_sample_set(
        tmp_path / "set", chunks, {"report": {"tau_int": math.nan}, "x": (1, 2)}
    )
    assert not list(tmp_path.glob(".set.tmp*")), "the temporary folder must be gone"
    for f in folder.glob("chunk_*.pt"):
        assert isinstance(torch.load(f, weights_only=True), Tensor)
    samples, meta = load_sample_set(folder)
    assert torch.equal(samples, torch.cat(chunks))
    assert meta["n_samples"] == 7 and meta["x"] == [1, 2] and meta["report"]["tau_int"] is None


def test_cached_hmc_samples_round_trip(tmp_path: Path) -> None:
    target = Phi4((4, 4), kappa=0.2, lam=0.02)
    hmc = HMCConfig(n_chains=16, n_leapfrog=4, n_therm=10, thin=2, chunk_size=32)
    kw: dict[str, Any] = dict(
        seed=3, dtype=F64, device="cpu", cache_dir=tmp_path, log=quiet, split="test"
    )
    first, meta1 = cached_hmc_samples(target, 80, hmc, **kw)
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1 and len(first) == 80
    assert meta1["settings"]["n_samples"] == 80 and meta1["report"]["n_chains"] == 16
    assert 0.3 < meta1["report"]["acceptance_rate"] <= 1.0
    assert meta1["n_chunks"] == 3  # 32 + 32 + 16

    again, meta2 = cached_hmc_samples(target, 80, hmc, **kw)
    assert list(tmp_path.iterdir()) == folders, "the second call must load, not generate"
    assert torch.equal(again, first) and meta2 == meta1

    # Another seed, split or size is another set; the chunk size is not part of the key.
    other, _ = cached_hmc_samples(target, 80, hmc, **{**kw, "split": "train"})
    assert len(list(tmp_path.iterdir())) == 2
    assert not torch.equal(other, first)
    rechunked = HMCConfig(n_chains=16, n_leapfrog=4, n_therm=10, thin=2, chunk_size=1000)
    same, _ = cached_hmc_samples(target, 80, rechunked, **kw)
    assert len(list(tmp_path.iterdir())) == 2 and torch.equal(same, first)


def test_chunked_hmc_continues_the_chains() -> None:
    """Chunks that continue from ``final_state`` give exactly the samples of one long run."""
    target = Phi4((4, 4), kappa=0.2, lam=0.02)
    hmc = HMCConfig(n_chains=8, n_leapfrog=3, n_therm=5, thin=2, chunk_size=16, dtype="float64")
    chunks: list[Tensor] = []
    kw: dict[str, Any] = dict(seed=1, split=0, dtype=F64, device="cpu", on_chunk=chunks.append)
    report = generate_hmc(target, 48, hmc, **kw)
    assert [c.shape[0] for c in chunks] == [16, 16, 16]
    gen = torch.Generator().manual_seed(stream_seed(1, 0, 200))
    whole = hmc_sample(
        target, 48, n_chains=8, step_size=0.1, n_leapfrog=3, n_therm=5, thin=2,
        generator=gen, adapt_step_size=True,
    )  # fmt: skip
    assert torch.equal(torch.cat(chunks), whole.samples)
    assert report["step_size"] == pytest.approx(whole.step_size)


def test_exact_samples_are_independent_streams() -> None:
    target = GaussianMixture(3)
    a = exact_samples(target, 100, 50, seed=0, dtype=F64)
    b = exact_samples(target, 0, 50, seed=0, dtype=F64)
    assert a.train is not None and a.test is not None and b.test is not None
    assert b.train is None and torch.equal(a.test, b.test)
    assert a.train.shape == (100, 3) and a.train.dtype == F64


def test_symmetry_is_applied(tmp_path: Path) -> None:
    target = Phi4((4, 4), kappa=0.2, lam=0.02)
    hmc = HMCConfig(n_chains=8, n_leapfrog=3, n_therm=5, thin=1)

    def flip(x: Tensor, g: torch.Generator) -> Tensor:
        return -x

    plain: list[Tensor] = []
    flipped: list[Tensor] = []
    kw: dict[str, Any] = dict(seed=0, split=0, dtype=F64, device="cpu")
    assert not generate_hmc(target, 16, hmc, on_chunk=plain.append, **kw)["symmetrised"]
    rep = generate_hmc(target, 16, hmc, on_chunk=flipped.append, symmetry=flip, **kw)
    assert rep["symmetrised"] and torch.equal(flipped[0], -plain[0])


# ---------------------------------------------------------------- observables


def test_reweighted_mean() -> None:
    v = torch.tensor([1.0, 2.0, 3.0, 4.0] * 5, dtype=F64)
    equal = reweighted_mean(v, torch.zeros(20, dtype=F64))
    assert equal.mean == pytest.approx(2.5)
    assert equal.err == pytest.approx(float(v.std(unbiased=False)) / math.sqrt(20))
    w = torch.tensor([1.0, 3.0, 0.0, 0.0] * 5, dtype=F64)
    est = reweighted_mean(v, torch.log(w))  # zero weights (log w = −inf) are allowed
    assert est.mean == pytest.approx((1 * 1 + 2 * 3) / 4)
    assert math.isnan(reweighted_mean(v, torch.full((20,), math.nan, dtype=F64)).mean)
    # A single sample carrying all the weight: a mean, but no meaningful error.
    one = reweighted_mean(v, torch.tensor([0.0] + [-1e3] * 19, dtype=F64))
    assert one.mean == pytest.approx(1.0) and math.isnan(one.err)


def test_sample_mean_error_scales_with_tau() -> None:
    v = torch.arange(100, dtype=F64)
    assert sample_mean(v, 2.0).err == pytest.approx(2 * sample_mean(v).err)


# ---------------------------------------------------------------- checkpoints and configs


def test_atomic_checkpoint_round_trip(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(5)
    state = {
        "format_version": ckpt.FORMAT_VERSION,
        **{k: {} for k in ("step", "world_size", "model", "optimizer", "loop")},
        "rng": ckpt.generator_states({"batch": g}),
        "global": ckpt.global_rng_state(),
        "x": [1, 2.5, None, "s"],
    }
    expected = torch.rand(3, generator=g)
    ckpt.atomic_save(state, tmp_path / "c.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    loaded = ckpt.load_checkpoint(tmp_path / "c.pt")
    g2 = torch.Generator()
    ckpt.set_generator_states({"batch": g2}, loaded["rng"])
    assert torch.equal(torch.rand(3, generator=g2), expected)
    ckpt.set_global_rng_state(loaded["global"])
    with pytest.raises(KeyError, match="index"):
        ckpt.set_generator_states({"index": g2}, loaded["rng"])
    torch.save({"format_version": 999}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match=r"other\.pt: has format 999; this version reads"):
        ckpt.load_checkpoint(tmp_path / "other.pt")


def test_config_validation_and_resume_mismatches() -> None:
    TrainConfig().validate()
    DataConfig(hmc=HMCConfig()).validate()
    with pytest.raises(ConfigError, match=r"^estimator: expected one of reverse-standard"):
        TrainConfig(estimator="nope").validate()
    with pytest.raises(ConfigError, match=r"^batch_size: expected an integer >= 1, got 0"):
        TrainConfig(batch_size=0).validate()
    with pytest.raises(ConfigError, match=r"^lr_factor: expected a number in \(0, 1\)"):
        TrainConfig(lr_factor=1.5).validate()
    # Library errors name fields (the command line maps them to flags).
    with pytest.raises(ConfigError) as info:
        DataConfig(hmc=HMCConfig(n_chains=0)).validate()
    assert info.value.field == "hmc.n_chains"
    saved = {"train": {"lr": 1e-3, "steps": 10}, "params": {"hidden": [8, 8]}}
    assert (
        resume_mismatches(saved, {"train": {"lr": 1e-3, "steps": 99}, "params": {"hidden": [8, 8]}})
        == []
    )
    changed = {"train": {"lr": 1e-2, "steps": 10}, "params": {"hidden": [8, 9]}}
    assert resume_mismatches(saved, changed) == ["params.hidden", "train.lr"]
    # What the run found on its machine may differ on resume (another GPU, another policy).
    found = {"runtime": {"precision": {"matmul": "tf32"}, "training_samples_on_device": True}}
    assert resume_mismatches({**saved, **found}, {**saved, "runtime": {}}) == []


# ---------------------------------------------------------------- the loop


def small_flow(seed: int = 0, dim: int = 2) -> Flow:
    torch.manual_seed(seed)
    return real_nvp(dim, n_couplings=2, hidden=(8,))


def gmm_observables(target: GaussianMixture) -> list[Observable]:
    return [Observable("x2", "x²", lambda x: (x * x).mean(1), exact=1 + target.sigma2)]


def make_trainer(run_dir: Path | None, estimator: str, steps: int, **overrides: Any) -> Trainer:
    target = GaussianMixture(2)
    cfg = TrainConfig(
        **{
            "estimator": estimator,
            "steps": steps,
            "batch_size": 32,
            "lr": 2e-2,
            "lr_schedule": "plateau",
            "lr_patience": 2,
            "clip_norm": 0.5,
            "eval_every": 4,
            "eval_samples": 64,
            "checkpoint_every": 5,
            "dtype": "float64",
            "progress": False,
            **overrides,
        }
    )
    data = exact_samples(target, 256, 64, seed=0, dtype=F64)
    return Trainer(
        small_flow(),
        target,
        cfg,
        device=CPU,
        run_dir=run_dir,
        data=data,
        observables=gmm_observables(target),
        log=quiet,
    )


@pytest.mark.parametrize("killed_at", [13, 8])
@pytest.mark.parametrize("estimator", ["reverse-path-fast", "forward-path-fast"])
def test_resume_retraces_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, estimator: str, killed_at: int
) -> None:
    """Killed after the checkpoint of step 10 (a plateau decision step) or of step 5 (between
    two), resumed: the same parameters and rate, bit for bit."""
    full = make_trainer(tmp_path / "full", estimator, steps=17)
    full.train()
    # The schedule acted (patience 2), so the rate is part of what must be retraced.
    assert full.optimizer.param_groups[0]["lr"] < 2e-2

    original = Trainer._train_step

    def killed(self: Trainer) -> tuple[Tensor, Tensor, Tensor]:
        if self.step == killed_at - 1:
            raise KeyboardInterrupt  # as if killed while computing that step
        return original(self)

    monkeypatch.setattr(Trainer, "_train_step", killed)
    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path / "cut", estimator, steps=17).train()
    saved_step = ckpt.load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"]
    assert saved_step == 5 * ((killed_at - 1) // 5)
    monkeypatch.setattr(Trainer, "_train_step", original)

    resumed = make_trainer(tmp_path / "cut", estimator, steps=17)
    summary = resumed.train(resume=True)
    assert summary["steps_done"] == 17 and summary["status"] == "completed"
    a, b = full.flow.state_dict(), resumed.flow.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full.optimizer.param_groups[0]["lr"] == resumed.optimizer.param_groups[0]["lr"]

    def strip(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]

    lines = [json.loads(s) for s in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    full_lines = [
        json.loads(s) for s in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in lines] == [0, 4, 8, 12, 16, 17]
    assert strip(lines) == strip(full_lines)


def test_run_folder_contents(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "reverse-path-fast", steps=6)
    summary = trainer.train()
    names = {p.name for p in tmp_path.iterdir()}
    assert {"metrics.jsonl", "checkpoint.pt", "summary.json", "ess.png", "loss.png"} <= names
    assert {"nll.png", "observables.png"} <= names
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["steps_done"] == 6 == summary["steps_done"]
    assert on_disk["references"]["x2"]["value"] == 1.5
    assert on_disk["references"]["x2"]["sample_value"] == pytest.approx(1.5, abs=0.3)
    final = on_disk["final"]
    for key in ("ess_reverse", "ess_forward", "nll", "kl_reverse", "kl_forward", "x2", "x2_err"):
        assert isinstance(final[key], float), key
    for key in ("loss", "grad_norm", "step_time_s", "lr"):
        assert isinstance(final[key], float), key


class FlakyMixture(GaussianMixture):
    """A mixture whose action is NaN on the calls listed in ``bad`` (0-based call numbers of
    ``action`` made while ``armed``)."""

    def __init__(self, bad: set[int]) -> None:
        super().__init__(2)
        self.bad = bad
        self.calls = 0
        self.armed = True

    def action(self, x: Tensor) -> Tensor:
        s = super().action(x)
        if self.armed:
            self.calls += 1
            if self.calls - 1 in self.bad:
                return s * math.nan
        return s


def test_nonfinite_steps_are_skipped_then_stop() -> None:
    # reverse-path-fast evaluates the action once per step; evaluation calls are disarmed.
    target = FlakyMixture(bad={2, 3})
    cfg = TrainConfig(
        steps=6, batch_size=16, eval_every=100, eval_samples=16, dtype="float64", progress=False
    )
    trainer = Trainer(small_flow(), target, cfg, device=CPU, log=quiet)
    original_eval = trainer.evaluate

    def disarmed_eval() -> dict[str, Any]:
        target.armed = False
        try:
            return original_eval()
        finally:
            target.armed = True

    trainer.evaluate = disarmed_eval  # type: ignore[method-assign]
    summary = trainer.train()
    assert summary["n_skipped"] == 2 and summary["status"] == "completed"

    target2 = FlakyMixture(bad=set(range(3, 100)))
    cfg2 = TrainConfig(**{**cfg.__dict__, "max_nonfinite": 4, "steps": 20})
    trainer2 = Trainer(small_flow(), target2, cfg2, device=CPU, log=quiet)
    trainer2.evaluate = lambda: {"step": trainer2.step}  # type: ignore[method-assign]
    before: dict[str, Tensor] = {}

    original_step = Trainer._train_step

    def spy() -> tuple[Tensor, Tensor, Tensor]:
        if trainer2.step == 3:
            before.update({k: v.clone() for k, v in trainer2.flow.state_dict().items()})
        return original_step(trainer2)

    trainer2._train_step = spy  # type: ignore[method-assign]
    # Steps 4, 5, ... are non-finite: the 4th in a row is step 7, seen at the read of step 10.
    with pytest.raises(TrainingError, match="7 steps in a row with a non-finite loss"):
        trainer2.train()
    after = trainer2.flow.state_dict()
    assert trainer2.step == STOP_VOTE_EVERY
    assert (trainer2.n_skipped, trainer2.consecutive_nonfinite) == (7, 7)
    assert all(torch.equal(before[k], after[k]) for k in before), "skipped steps must not update"


def test_a_checkpoint_of_another_format_is_refused(tmp_path: Path) -> None:
    """A checkpoint of the format before the clock (no training, evaluation and checkpoint
    times) cannot resume this run: an error naming the file and both formats, not a guess."""
    make_trainer(tmp_path, "reverse-path-fast", steps=5).train()
    path = tmp_path / ckpt.CHECKPOINT_NAME
    state = torch.load(path, weights_only=True)
    state["format_version"] = 1
    torch.save(state, path)
    resumed = make_trainer(tmp_path, "reverse-path-fast", steps=8)
    with pytest.raises(
        ConfigError, match=r"checkpoint\.pt: has format 1; this version reads format 2"
    ):
        resumed.train(resume=True)


def test_the_clock_counts_training_steps_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An evaluation and a checkpoint made artificially slow (0.25 s and 0.15 s each) go to
    ``eval_time_s`` and ``checkpoint_time_s``; ``train_time_s``, which the time limit and the
    step times use, stays that of the steps; all four clocks survive a resume."""
    slow_eval, slow_ckpt = 0.25, 0.15
    original_eval, original_save = Trainer.evaluate, Trainer.save_checkpoint

    def evaluate(self: Trainer) -> dict[str, Any]:
        time.sleep(slow_eval)
        return original_eval(self)

    def save(self: Trainer) -> None:
        time.sleep(slow_ckpt)
        original_save(self)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    monkeypatch.setattr(Trainer, "save_checkpoint", save)
    cfg = dict(steps=8, eval_every=2, checkpoint_every=4, eval_samples=64)
    summary = make_trainer(tmp_path, "reverse-path-fast", **cfg).train()
    n_eval, n_ckpt = 5, 2  # steps 0, 2, 4, 6, 8; steps 4, 8
    assert summary["eval_time_s"] >= n_eval * slow_eval
    assert summary["checkpoint_time_s"] >= n_ckpt * slow_ckpt
    # Had the sleeps leaked into training time, it would exceed n_eval · slow_eval.
    assert summary["train_time_s"] < n_eval * slow_eval / 2, "evaluation leaked into training"
    parts = summary["train_time_s"] + summary["eval_time_s"] + summary["checkpoint_time_s"]
    assert parts <= summary["wall_time_s"] < parts + 1.0
    assert summary["mean_step_time_s"] == pytest.approx(summary["train_time_s"] / 8)
    records = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for key in TIMING_KEYS - {"step_time_s"}:
        values = [r[key] for r in records]
        assert values == sorted(values) and values[-1] <= summary[key], key
    assert all(r["step_time_s"] < slow_eval for r in records[1:])

    # Resumed from the checkpoint at step 8 with two more steps: the clocks go on from it.
    state = ckpt.load_checkpoint(tmp_path / ckpt.CHECKPOINT_NAME)
    more = make_trainer(tmp_path, "reverse-path-fast", **{**cfg, "steps": 10}).train(resume=True)
    for kind in ("train", "eval", "checkpoint", "wall"):
        assert more[f"{kind}_time_s"] > state["loop"]["times"][kind], kind
    assert more["train_time_s"] < n_eval * slow_eval / 2


def test_the_time_limit_reads_the_training_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With evaluations (0.5 s each) far slower than the limit (1 s), a run still takes all its
    steps: only training time counts against the limit."""
    original_eval = Trainer.evaluate

    def evaluate(self: Trainer) -> dict[str, Any]:
        time.sleep(0.5)
        return original_eval(self)

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    summary = make_trainer(
        tmp_path, "reverse-path-fast", steps=6, eval_every=1, time_limit=1.0, eval_samples=64
    ).train()
    assert summary["status"] == "completed", "evaluation time was counted against the limit"
    assert summary["eval_time_s"] > 0.5 * 7 and summary["train_time_s"] < 1.0


def test_a_nonfinite_step_is_skipped_like_no_step() -> None:
    """A NaN in step 4's loss and gradient: the parameters and Adam's state afterwards equal
    those of a run that took no optimiser step at step 4 (its batch still drawn), bit for bit;
    the counters say one skipped step. The fused Adam kernel skips it (no host read)."""
    cfg = TrainConfig(
        estimator="reverse-path-fast", steps=8, batch_size=16, lr=2e-2, clip_norm=0.5,
        eval_every=100, dtype="float64", progress=False,
    )  # fmt: skip
    bad_step = 4
    flaky = Trainer(small_flow(), FlakyMixture(bad={bad_step - 1}), cfg, device=CPU, log=quiet)
    reference = Trainer(small_flow(), FlakyMixture(bad=set()), cfg, device=CPU, log=quiet)
    original = Trainer._train_step

    def no_step_at_bad(self: Trainer) -> tuple[Tensor, Tensor, Tensor]:
        if self.step != bad_step - 1:
            return original(self)
        self._draw_batch()  # keep the batch stream in step with the flaky run
        nan = torch.tensor(math.nan, dtype=torch.float64)
        return nan, nan, torch.tensor(False)

    reference._train_step = no_step_at_bad.__get__(reference)  # type: ignore[method-assign]
    for t in (flaky, reference):
        t.evaluate = lambda t=t: {"step": t.step}  # type: ignore[misc]
        assert t.train()["n_skipped"] == 1
    a, b = flaky.flow.state_dict(), reference.flow.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = flaky.optimizer.state_dict()["state"], reference.optimizer.state_dict()["state"]
    for i in sa:
        assert all(torch.equal(sa[i][k], sb[i][k]) for k in sa[i]), (i, sa[i]["step"])
        assert float(sa[i]["step"]) == cfg.steps - 1
    assert (flaky.n_skipped, flaky.consecutive_nonfinite) == (1, 0)
    # A run without the skip differs: the comparison can fail.
    plain = Trainer(small_flow(), FlakyMixture(bad=set()), cfg, device=CPU, log=quiet)
    plain.evaluate = lambda: {"step": plain.step}  # type: ignore[method-assign]
    plain.train()
    c = plain.flow.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_plateau_schedule_follows_its_stated_rule() -> None:
    """The on-device plateau schedule against a host re-implementation of the rule in the
    trainer's docstring, fed the run's own losses: per finite step a new minimum restarts the
    count, any other step adds one; at multiples of STOP_VOTE_EVERY a count above the patience
    lowers the rate to max(lr · factor, lr_min) and restarts the count."""
    patience, factor, lr_min, lr0 = 3, 0.5, 3e-3, 2e-2
    trainer = make_trainer(
        None, "reverse-path-fast", steps=60, lr=lr0, lr_patience=patience, lr_factor=factor,
        lr_min=lr_min, eval_every=1000, checkpoint_every=1000,
    )  # fmt: skip
    trainer.evaluate = lambda: {"step": trainer.step}  # type: ignore[method-assign]
    losses: list[float] = []
    lrs: list[float] = []
    original = Trainer._train_step

    def recording(self: Trainer) -> tuple[Tensor, Tensor, Tensor]:
        lrs.append(float(self.optimizer.param_groups[0]["lr"]))
        out = original(self)
        losses.append(float(out[0]))
        return out

    trainer._train_step = recording.__get__(trainer)  # type: ignore[method-assign]
    trainer.train()
    best, bad, lr, expected = math.inf, 0, lr0, []
    for step, loss in enumerate(losses, start=1):
        expected.append(lr)
        best, bad = (loss, 0) if loss < best else (best, bad + 1)
        if step % STOP_VOTE_EVERY == 0 and bad > patience:
            lr, bad = max(lr * factor, lr_min), 0
    assert lrs == expected
    assert trainer.optimizer.param_groups[0]["lr"] == lr
    assert len(set(lrs)) >= 3, "the rate should have been lowered at least twice"
    assert lr == lr_min, "and reached its floor"


def test_gradient_clipping_and_plateau_decay() -> None:
    trainer = make_trainer(None, "reverse-standard", steps=0, clip_norm=1e-3, lr_patience=0)
    seen: list[float] = []
    step = trainer.optimizer.step

    def recording_step(*args: Any, **kwargs: Any) -> Any:
        grads = [p.grad for p in trainer.params if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))))
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step  # type: ignore[method-assign]
    loss, norm, finite = trainer._train_step()
    assert bool(finite) and float(norm) > 1e-2
    assert seen[0] == pytest.approx(1e-3, rel=1e-3), "the update must use the clipped gradient"
    # With patience 0 the rate decays at the next decision once the loss missed a new minimum.
    trainer.counters.update(loss, norm, finite)
    for _ in range(6):
        trainer.counters.update(*trainer._train_step())
    trainer.check(plateau=False)
    assert trainer.optimizer.param_groups[0]["lr"] == 2e-2, "decisions only at plateau steps"
    trainer.check(plateau=True)
    assert trainer.optimizer.param_groups[0]["lr"] == 2e-2 * 0.5


def test_learning_raises_reverse_ess() -> None:
    """A short run on the 2D mixture: the reverse ESS clearly rises above its initial value."""
    target = GaussianMixture(2)
    torch.manual_seed(0)
    flow = real_nvp(2, n_couplings=4, hidden=(32, 32))
    cfg = TrainConfig(
        steps=200, batch_size=256, lr=1e-2, eval_every=200, eval_samples=4096, dtype="float64",
        progress=False,
    )  # fmt: skip
    trainer = Trainer(flow, target, cfg, device=CPU, log=quiet)
    summary = trainer.train()
    initial, final = summary["initial"]["ess_reverse"], summary["final"]["ess_reverse"]
    assert final > initial + 0.08, (initial, final)
    assert summary["final"]["kl_reverse"] < summary["initial"]["kl_reverse"]


def test_forward_estimator_needs_training_samples() -> None:
    cfg = TrainConfig(estimator="forward-standard", steps=1, dtype="float64", progress=False)
    with pytest.raises(ConfigError, match="needs training samples"):
        Trainer(small_flow(), GaussianMixture(2), cfg, device=CPU, log=quiet)


# ---------------------------------------------------------------- data parallelism


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ddp_worker(rank: int, world: int, port: int, batches: dict[str, Tensor], out: str) -> None:
    import os

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    ctx = init_distributed("cpu", timeout_s=120)
    assert ctx.enabled and ctx.world_size == world
    grads = {}
    for name, batch in batches.items():
        flow = small_flow(seed=1).double()
        share = batch.shape[0] // world
        loss, _ = get_estimator(name)(
            flow, GaussianMixture(2), batch[rank * share : (rank + 1) * share]
        )
        loss.backward()
        params = [p for p in flow.parameters() if p.requires_grad]
        average_gradients(params, ctx)
        grads[name] = [p.grad.clone() if p.grad is not None else None for p in params]
    torch.save(grads, Path(out) / f"rank{rank}.pt")
    shutdown(ctx)


def test_ddp_average_equals_single_process_gradient(tmp_path: Path) -> None:
    """Two gloo processes, each on half the batch: the averaged gradient is the gradient on
    the whole batch (estimators whose loss is a mean over the batch)."""
    g = torch.Generator().manual_seed(0)
    batches = {
        "reverse-path-fast": torch.randn(64, 2, generator=g, dtype=F64),
        "reverse-standard": torch.randn(64, 2, generator=g, dtype=F64),
        "forward-standard": GaussianMixture(2).sample(64, g),
    }
    mp.spawn(_ddp_worker, args=(2, free_port(), batches, str(tmp_path)), nprocs=2, join=True)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, batch in batches.items():
        flow = small_flow(seed=1).double()
        loss, _ = get_estimator(name)(flow, GaussianMixture(2), batch)
        loss.backward()
        expected = [p.grad for p in flow.parameters() if p.requires_grad]
        for grads in per_rank:
            for got, want in zip(grads[name], expected, strict=True):
                assert want is not None and got is not None
                torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
        # Both ranks hold the very same averaged gradient.
        assert all(
            torch.equal(a, b) for a, b in zip(per_rank[0][name], per_rank[1][name], strict=True)
        )


def test_single_process_context_is_a_no_op() -> None:
    flow = small_flow()
    loss, _ = get_estimator("reverse-standard")(flow, GaussianMixture(2), torch.randn(8, 2))
    loss.backward()
    before = [p.grad.clone() for p in flow.parameters() if p.grad is not None]
    average_gradients(list(flow.parameters()), DistContext())
    after = [p.grad for p in flow.parameters() if p.grad is not None]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert stream_seed(0, 0, 0) != stream_seed(0, 1, 0) != stream_seed(1, 0, 0)


@pytest.mark.compile
@pytest.mark.parametrize("name", ["reverse-path-fast", "forward-path-fast"])
def test_compiled_training_follows_the_eager_run(name: str) -> None:
    """``--compile``: a few Adam steps with the compiled estimator end at the parameters of the
    eager run (float64, to rounding), forward-KL data checked once where it is made."""
    target = GaussianMixture(2)
    data = exact_samples(target, 256, 0, seed=1, dtype=F64)
    params = []
    for compiled in (False, True):
        torch.manual_seed(0)
        flow = real_nvp(2, n_couplings=2, hidden=(8,))
        cfg = TrainConfig(
            estimator=name, steps=3, batch_size=32, eval_every=10, eval_samples=64,
            dtype="float64", progress=False, compile=compiled,
        )  # fmt: skip
        trainer = Trainer(flow, target, cfg, device=CPU, data=data, log=quiet)
        trainer.train()
        params.append(torch.cat([p.detach().flatten() for p in trainer.flow.parameters()]))
    assert torch.allclose(params[0], params[1], rtol=1e-10, atol=1e-12)


def test_nonfinite_training_samples_are_refused_where_they_are_made() -> None:
    target = GaussianMixture(2)
    data = exact_samples(target, 64, 0, seed=1, dtype=F64)
    assert data.train is not None
    data.train[5, 1] = math.nan
    cfg = TrainConfig(estimator="forward-standard", steps=1, dtype="float64", progress=False)
    with pytest.raises(ValueError, match="training samples of the target: expected finite"):
        Trainer(real_nvp(2, n_couplings=2, hidden=(8,)), target, cfg, device=CPU, data=data)


def test_plot_band_is_median_and_quantiles_of_held_curves() -> None:
    """The study helper against numpy: each curve held at its last value at or before the grid
    point, then median and quantiles over the curves present there."""
    import numpy as np

    from pathgrad_ref.plots import band, series

    rng = np.random.default_rng(0)
    curves = [
        (sorted(rng.uniform(0, 10, 6).tolist()), rng.normal(size=6).tolist()) for _ in range(5)
    ]
    grid, med, lo, hi = band(curves, (0.25, 0.75))
    assert grid == sorted({x for xs, _ in curves for x in xs})
    for g, m, a, b in zip(grid, med, lo, hi, strict=True):
        held = [ys[max(i for i, x in enumerate(xs) if x <= g)] for xs, ys in curves if xs[0] <= g]
        assert m == pytest.approx(np.median(held))
        assert (a, b) == pytest.approx(tuple(np.quantile(held, [0.25, 0.75])))
    records = [
        {"step": 0, "v": 1.0},
        {"step": 1, "v": float("nan")},
        {"step": 2},
        {"step": 3, "v": 2},
    ]
    assert series(records, "v") == ([0.0, 3.0], [1.0, 2.0])


def test_the_reliability_rule() -> None:
    """The one rule, at its thresholds: 1000 effective samples, forward ESS 0.01 where held-out
    samples exist; evaluation records carry its verdict."""
    from pathgrad_ref.evaluation import unreliable_reason

    assert unreliable_reason(1000.0) == "" and unreliable_reason(1000.0, 0.01) == ""
    assert unreliable_reason(999.0).startswith("N_eff 999 < 1000")
    assert unreliable_reason(math.nan) and unreliable_reason(None)
    assert unreliable_reason(5e3, 0.00999) == "fwd-ESS 0.00999 < 0.01: q misses part of p"
    assert unreliable_reason(5e3, math.nan), "a NaN forward ESS is no evidence of coverage"
    both = unreliable_reason(10.0, 0.0)
    assert "N_eff" in both and "fwd-ESS" in both
    trainer = make_trainer(None, "reverse-path-fast", steps=0)
    record = trainer.evaluate()
    assert record["reliable"] == (unreliable_reason(record["n_eff"], record["ess_forward"]) == "")


def test_data_dependent_init_is_refused_under_torchrun() -> None:
    """Each rank would initialise ActNorm from its own batch: the Trainer refuses such a flow
    on every rank at construction (rank 0's first evaluation would otherwise initialise alone
    while the others wait)."""
    from pathgrad_ref.flows import glow_flow

    cfg = TrainConfig(steps=1, batch_size=4, dtype="float64", progress=False)
    ctx = DistContext(rank=0, world_size=2, enabled=True)
    flow = glow_flow(2, n_blocks=1, hidden=(4,), data_init=True)
    with pytest.raises(ValueError, match="data-dependent initialisation"):
        Trainer(flow, GaussianMixture(2), cfg, device=CPU, log=quiet, ctx=ctx)
