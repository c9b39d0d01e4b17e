"""The training loop: Adam on one estimator's loss, with learning-rate decay, gradient
clipping, skipping of non-finite steps, periodic evaluation and resumable checkpoints.

One step, on every data-parallel rank ``r`` of ``W``:

1. draw ``batch_size / W`` samples from rank ``r``'s own stream: base samples ``z ~ q0`` for a
   reverse-KL estimator, a random minibatch of the training target samples for a forward one;
2. ``loss, _ = estimator(flow, target, batch)``; ``loss.backward()``;
3. average the gradients over the ranks (:func:`~.distributed.average_gradients`);
4. if the loss (averaged over ranks) or the global gradient norm is not finite, skip the update
   and count it; otherwise clip the gradient norm, take the Adam step and feed the loss to the
   plateau schedule.

Every ``eval_every`` steps rank 0 draws ``eval_samples`` fresh flow samples from a stream
seeded by the step (so evaluation never disturbs training, and a resumed run evaluates on the
same samples) and records: reverse ESS, ``KL(q‖p)`` where ``log Z`` is known, the observables
reweighted with the importance weights, and on held-out target samples, if any, forward ESS,
NLL and ``KL(p‖q)``; with the mean training loss, gradient norm and step time since the last
evaluation.

On the CPU a resumed run retraces an uninterrupted one exactly: the checkpoint holds the
parameters, Adam's and the schedule's state, every random stream of every rank and the
loop's counters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..estimators import direction, get_estimator
from ..flows.base import Flow
from ..metrics import forward_ess, reverse_ess
from ..targets.base import Target
from . import checkpoint as ckpt
from .config import ConfigError, TrainConfig
from .data import MinibatchSampler, TargetSamples
from .distributed import (
    DistContext,
    all_reduce_sum,
    average_gradients,
    broadcast_parameters,
    gather_objects,
    stream_seed,
    trainable,
)
from .observables import Estimate, Observable, reweighted_mean, sample_mean
from .report import MetricRecord, MetricsLog, plot_run, write_json

# Random streams of a rank (the third argument of stream_seed).
_BATCH_STREAM, _INDEX_STREAM, _EVAL_STREAM = 0, 1, 2


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite steps in a row); the message says why."""


@dataclass
class _Interval:
    """Sums over the steps since the last evaluation."""

    loss: float = 0.0
    grad_norm: float = 0.0
    step_time: float = 0.0
    n: int = 0

    def state(self) -> dict[str, float | int]:
        return {
            "loss": self.loss,
            "grad_norm": self.grad_norm,
            "step_time": self.step_time,
            "n": self.n,
        }


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → ``cuda`` if available, else ``cpu``; ``ConfigError`` for a CUDA device
    that is not there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device: expected auto, cpu or cuda[:K], got {name!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) available"
            )
    elif dev.type != "cpu":
        raise ConfigError(f"--device: expected auto, cpu or cuda[:K], got {name!r}")
    return dev


def _ess(fn: Callable[[Tensor], float], log_w: Tensor) -> float:
    """``fn(log_w)``, or 0 when a weight is NaN or infinite (a broken flow has no sample size)."""
    if not bool(torch.isfinite(log_w).all()):
        return 0.0
    return fn(log_w)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Trainer:
    """Trains ``flow`` towards ``target`` with ``config.estimator`` (see the module docstring).

    Args:
        flow: the flow; moved to ``device`` and the config's dtype.
        target: the target (stateless, follows the inputs).
        config: the loop's options.
        device: where to train.
        run_dir: folder for ``metrics.jsonl``, ``checkpoint.pt``, ``summary.json`` and plots
            (rank 0 writes); ``None`` keeps everything in memory (no checkpoints).
        data: target samples: ``train`` is needed by forward-KL estimators, ``test`` gives
            NLL, forward ESS and sample references for the observables.
        observables: estimated with importance weights at every evaluation.
        log_z: ``log Z`` of the target where known (absolute KL values).
        ctx: the data-parallel context (default: a single process).
        run_config: JSON-ready description of the run, stored in checkpoints and the summary.
        log: where progress lines go (rank 0 only).
        title: a name for plots and the progress bar.
    """

    def __init__(
        self,
        flow: Flow,
        target: Target,
        config: TrainConfig,
        *,
        device: torch.device,
        run_dir: str | Path | None = None,
        data: TargetSamples | None = None,
        observables: Sequence[Observable] = (),
        log_z: float | None = None,
        ctx: DistContext | None = None,
        run_config: dict[str, Any] | None = None,
        log: Callable[[str], None] = print,
        title: str = "",
    ) -> None:
        config.validate()
        self.config = config
        self.ctx = ctx if ctx is not None else DistContext()
        self.device = device
        self.dtype = config.torch_dtype
        self.flow = flow.to(device=device, dtype=self.dtype)
        self.target = target
        self.estimator = get_estimator(config.estimator)
        self.direction = direction(config.estimator)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.data = data
        self.observables = list(observables)
        self.log_z = log_z if log_z is not None else target.log_z
        self.run_config = run_config or {}
        self._log = log
        self.title = title or config.estimator

        world = self.ctx.world_size
        if config.batch_size % world:
            raise ConfigError(
                f"--batch-size {config.batch_size} is not divisible by the {world} processes"
            )
        self.local_batch = config.batch_size // world
        self.params = trainable(self.flow)
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr)
        self.scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        if config.lr_schedule == "plateau":
            # An absolute threshold of 0: any new minimum of the loss counts as progress. (The
            # default relative threshold misjudges negative losses, as the φ⁴ KL without
            # log Z is.)
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer,
                mode="min",
                factor=config.lr_factor,
                patience=config.lr_patience,
                threshold=0.0,
                threshold_mode="abs",
                min_lr=config.lr_min,
            )
        rank = self.ctx.rank
        self.generators = {
            "batch": torch.Generator(device=device).manual_seed(
                stream_seed(config.seed, rank, _BATCH_STREAM)
            ),
            "index": torch.Generator().manual_seed(stream_seed(config.seed, rank, _INDEX_STREAM)),
        }
        self.sampler: MinibatchSampler | None = None
        if self.direction == "forward":
            if data is None or data.train is None:
                raise ConfigError(
                    f"estimator {config.estimator} minimises the forward KL and needs training "
                    "samples of the target, but this run has none"
                )
            self.sampler = MinibatchSampler(
                data.train, self.generators["index"], device, self.dtype
            )
        broadcast_parameters(self.flow, self.ctx)

        self.step = 0
        self.consecutive_nonfinite = 0
        self.n_skipped = 0
        self.elapsed = 0.0  # seconds in the training loop, over all resumed segments
        self.interval = _Interval()
        self.last_eval: MetricRecord = {}
        self.history: list[MetricRecord] = []  # every evaluation record of the run
        self.references = self._references()
        self.metrics: MetricsLog | None = None

    # ------------------------------------------------------------------ references

    def _references(self) -> dict[str, dict[str, Any]]:
        """Per observable: the exact value if known, and the mean over held-out target
        samples if there are any (error with the sampler's ``τ_int``)."""
        test = self.data.test if self.data is not None else None
        refs: dict[str, dict[str, Any]] = {}
        tau = math.nan
        if self.data is not None:
            report = (self.data.metadata.get("test") or {}).get("report") or {}
            tau = float(report.get("tau_int") or math.nan)
        for o in self.observables:
            ref: dict[str, Any] = {}
            if test is not None:
                values = torch.cat([o.fn(c.to(torch.float64)) for c in test.chunks])
                est = sample_mean(values, tau)
                ref.update(sample_value=est.mean, sample_err=est.err)
            if o.exact is not None:
                ref.update(value=o.exact, err=0.0, source="exact")
            elif ref:
                ref.update(
                    value=ref["sample_value"], err=ref["sample_err"], source="target samples"
                )
            if ref:
                refs[o.name] = ref
        return refs

    # ------------------------------------------------------------------ one step

    def _draw_batch(self) -> Tensor:
        if self.sampler is not None:
            return self.sampler.draw(self.local_batch)
        return self.flow.base.sample(self.local_batch, self.generators["batch"])

    def _train_step(self, stop_requested: bool) -> tuple[float, float, bool, bool]:
        """One step; returns ``(loss, grad_norm, finite, stop)`` with the loss averaged over
        ranks, the global gradient norm before clipping, whether the update was applied, and
        whether any rank asked to stop."""
        batch = self._draw_batch()
        self.optimizer.zero_grad(set_to_none=True)
        loss, _ = self.estimator(self.flow, self.target, batch)
        torch.autograd.backward(loss)
        average_gradients(self.params, self.ctx)
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g) for g in grads])
            )
        else:
            norm = loss.new_zeros(())
        shared = torch.stack(
            [loss.detach().to(norm.dtype), loss.new_tensor(float(stop_requested), dtype=norm.dtype)]
        )
        shared = all_reduce_sum(shared, self.ctx)
        loss_mean, norm_value, n_stop = torch.stack(
            [shared[0] / self.ctx.world_size, norm, shared[1]]
        ).tolist()
        finite = math.isfinite(loss_mean) and math.isfinite(norm_value)
        if finite:
            clip = self.config.clip_norm
            if clip is not None and norm_value > clip:
                for g in grads:
                    g.mul_(clip / (norm_value + 1e-6))
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step(loss_mean)
        self.optimizer.zero_grad(set_to_none=True)
        return loss_mean, norm_value, finite, n_stop > 0

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> MetricRecord:
        """Metrics at the current parameters (see the module docstring), as a flat record."""
        cfg = self.config
        gen = torch.Generator(device=self.device).manual_seed(
            stream_seed(cfg.seed, 0, _EVAL_STREAM, self.step)
        )
        chunk = max(self.local_batch, 4096)
        log_ws: list[Tensor] = []
        values: dict[str, list[Tensor]] = {o.name: [] for o in self.observables}
        left = cfg.eval_samples
        while left > 0:
            m = min(left, chunk)
            x, log_q = self.flow.sample(m, gen)
            log_ws.append((-self.target.action(x) - log_q).to(torch.float64))
            for o in self.observables:
                values[o.name].append(o.fn(x).to(torch.float64))
            left -= m
        log_w = torch.cat(log_ws)
        it = self.interval
        record: MetricRecord = {
            "step": self.step,
            "elapsed_s": self.elapsed,
            "lr": self.optimizer.param_groups[0]["lr"],
            "loss": it.loss / it.n if it.n else None,
            "grad_norm": it.grad_norm / it.n if it.n else None,
            "step_time_s": it.step_time / it.n if it.n else None,
            "n_skipped": self.n_skipped,
        }
        record["ess_reverse"] = _ess(reverse_ess, log_w)
        record["finite_fraction"] = float(torch.isfinite(log_w).double().mean())
        if self.log_z is not None:
            record["kl_reverse"] = float(-log_w.mean()) + self.log_z
        for o in self.observables:
            est: Estimate = reweighted_mean(torch.cat(values[o.name]), log_w)
            record[o.name] = est.mean
            record[f"{o.name}_err"] = est.err
        test = self.data.test if self.data is not None else None
        if test is not None:
            record.update(self._evaluate_test(test.chunks, chunk))
        return record

    def _evaluate_test(self, chunks: Sequence[Tensor], size: int) -> MetricRecord:
        log_qs, log_ws = [], []
        for c in chunks:
            for part in torch.split(c, size):
                x = part.to(device=self.device, dtype=self.dtype)
                log_q = self.flow.log_prob(x)
                log_qs.append(log_q.to(torch.float64))
                log_ws.append((-self.target.action(x) - log_q).to(torch.float64))
        log_q_all, log_w = torch.cat(log_qs), torch.cat(log_ws)
        out: MetricRecord = {"nll": float(-log_q_all.mean())}
        out["ess_forward"] = _ess(forward_ess, log_w)
        if self.log_z is not None:
            out["kl_forward"] = float(log_w.mean()) - self.log_z
        return out

    def _describe(self, r: MetricRecord) -> str:
        def f(key: str, fmt: str = ".4g") -> str:
            v = r.get(key)
            return "–" if v is None or not math.isfinite(v) else format(v, fmt)

        parts = [f"step {r['step']:>7d}", f"loss {f('loss')}"]
        if "kl_reverse" in r:
            parts.append(f"KL(q‖p) {f('kl_reverse')}")
        parts.append(f"ESS {f('ess_reverse', '.4f')}")
        if "ess_forward" in r:
            parts += [f"fwd-ESS {f('ess_forward', '.4f')}", f"NLL {f('nll')}"]
        for o in self.observables:
            text = f"{o.label} {f(o.name)} ± {f(o.name + '_err', '.2g')}"
            ref = self.references.get(o.name)
            if ref is not None:
                text += f" (ref {ref['value']:.4g}"
                text += f" ± {ref['err']:.2g})" if ref["err"] else ")"
            parts.append(text)
        if r.get("step_time_s") is not None:
            parts.append(f"{1e3 * r['step_time_s']:.1f} ms/step")
        return "  ".join(parts)

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / ckpt.CHECKPOINT_NAME

    def save_checkpoint(self) -> None:
        """Write ``checkpoint.pt`` (all ranks take part: their random streams are gathered)."""
        gens = gather_objects(ckpt.generator_states(self.generators), self.ctx)
        glob = gather_objects(ckpt.global_rng_state(), self.ctx)
        path = self.checkpoint_path
        if not self.ctx.is_main or path is None:
            return
        state = {
            "format_version": ckpt.FORMAT_VERSION,
            "step": self.step,
            "world_size": self.ctx.world_size,
            "model": self.flow.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "rng": {"generators": gens, "global": glob},
            "loop": {
                "consecutive_nonfinite": self.consecutive_nonfinite,
                "n_skipped": self.n_skipped,
                "elapsed": self.elapsed,
                "interval": self.interval.state(),
            },
            "config": self.run_config,
        }
        ckpt.atomic_save(state, path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Continue from a checkpoint written by :meth:`save_checkpoint` (same number of
        ranks)."""
        state = ckpt.load_checkpoint(path)
        if int(state["world_size"]) != self.ctx.world_size:
            raise ConfigError(
                f"the checkpoint was written by {state['world_size']} processes; resume it with "
                f"the same number (got {self.ctx.world_size})"
            )
        self.flow.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        rank = self.ctx.rank
        ckpt.set_generator_states(self.generators, state["rng"]["generators"][rank])
        ckpt.set_global_rng_state(state["rng"]["global"][rank])
        loop = state["loop"]
        self.step = int(state["step"])
        self.consecutive_nonfinite = int(loop["consecutive_nonfinite"])
        self.n_skipped = int(loop["n_skipped"])
        self.elapsed = float(loop["elapsed"])
        iv = loop["interval"]
        self.interval = _Interval(
            float(iv["loss"]), float(iv["grad_norm"]), float(iv["step_time"]), int(iv["n"])
        )

    # ------------------------------------------------------------------ the loop

    def _emit(self, record: MetricRecord, bar: Any) -> None:
        self.last_eval = record
        self.history.append(record)
        if self.metrics is not None:
            self.metrics.write(record)
        line = self._describe(record)
        if bar is not None:
            bar.write(line)
        else:
            self._log(line)

    def train(self, resume: bool = False) -> dict[str, Any]:
        """Run until ``config.steps`` (or the time limit); returns the summary (also written to
        ``summary.json`` by rank 0). ``resume`` continues from ``run_dir/checkpoint.pt`` if it
        exists. Raises :class:`TrainingError` after ``max_nonfinite`` skipped steps in a row."""
        cfg = self.config
        main = self.ctx.is_main
        path = self.checkpoint_path
        resumed_from: int | None = None
        if resume and path is not None and path.exists():
            self.load_checkpoint(path)
            resumed_from = self.step
            if main:
                self._log(f"resumed from {path} at step {self.step}")
        if main and self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", keep_until=resumed_from)
            self.history = list(self.metrics.records)
            if self.history:
                self.last_eval = self.history[-1]
        bar: Any = None
        if main and cfg.progress:
            from tqdm.auto import tqdm  # optional dependency, only for the bar

            bar = tqdm(total=cfg.steps, initial=min(self.step, cfg.steps), desc=self.title)
        status, reason = "completed", "steps"
        segment_start = time.perf_counter()
        elapsed_at_start = self.elapsed
        try:
            if self.step == 0 and main:
                self._emit(self.evaluate(), bar)
            last_saved = self.step
            if cfg.time_limit is not None and self.elapsed >= cfg.time_limit:
                # Resumed after its time was used up: nothing to do until the limit is raised.
                status, reason = "stopped", "time_limit"
            while self.step < cfg.steps and reason != "time_limit":
                over_time = cfg.time_limit is not None and self.elapsed >= cfg.time_limit
                t0 = time.perf_counter()
                loss, norm, finite, stop = self._train_step(over_time)
                self.step += 1
                dt = time.perf_counter() - t0
                if finite:
                    self.consecutive_nonfinite = 0
                    self.interval.loss += loss
                    self.interval.grad_norm += norm
                    self.interval.n += 1
                    self.interval.step_time += dt
                else:
                    self.consecutive_nonfinite += 1
                    self.n_skipped += 1
                    if self.consecutive_nonfinite >= cfg.max_nonfinite:
                        status, reason = "failed", "nonfinite"
                        raise TrainingError(
                            f"{self.consecutive_nonfinite} steps in a row with a non-finite loss "
                            f"or gradient (last loss {loss}, gradient norm {norm}) at step "
                            f"{self.step}; the parameters are those of the last good step. Try a "
                            "lower --lr, gradient clipping (--clip-norm) or float64, or raise "
                            "--max-nonfinite"
                        )
                self.elapsed = elapsed_at_start + (time.perf_counter() - segment_start)
                if bar is not None:
                    bar.update(1)
                    if self.step % 10 == 0 or not finite:
                        ess = self.last_eval.get("ess_reverse")
                        bar.set_postfix(
                            loss=f"{loss:.4g}",
                            ess="–" if ess is None else f"{ess:.3f}",
                            skipped=self.n_skipped,
                            refresh=False,
                        )
                last = self.step >= cfg.steps or stop
                if self.step % cfg.eval_every == 0 or last:
                    _sync(self.device)
                    if main:
                        self._emit(self.evaluate(), bar)
                    self.interval = _Interval()
                if self.step % cfg.checkpoint_every == 0 or last:
                    self.save_checkpoint()
                    last_saved = self.step
                if stop:
                    status, reason = "stopped", "time_limit"
                    break
            if last_saved != self.step:
                self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
            self.elapsed = elapsed_at_start + (time.perf_counter() - segment_start)
            if main:
                summary = self.summary(status, reason)
                if self.run_dir is not None:
                    write_json(self.run_dir / "summary.json", summary)
                    if self.metrics is not None:
                        self.metrics.close()
                        self._plots()
        return summary if main else self.summary(status, reason)

    def _plots(self) -> None:
        if self.run_dir is None:
            return
        obs = [
            (o.name, o.label, self.references.get(o.name, {}).get("value"))
            for o in self.observables
        ]
        plot_run(self.history, self.run_dir, obs, title=self.title)

    def summary(self, status: str = "completed", reason: str = "steps") -> dict[str, Any]:
        """What the run reached: final evaluation, best reverse ESS, times, references."""
        records = self.history
        ess = [r["ess_reverse"] for r in records if isinstance(r.get("ess_reverse"), float)]
        times = [r["step_time_s"] for r in records if isinstance(r.get("step_time_s"), float)]
        return {
            "experiment": self.run_config.get("experiment"),
            "estimator": self.config.estimator,
            "direction": self.direction,
            "status": status,
            "stop_reason": reason,
            "steps_done": self.step,
            "steps_requested": self.config.steps,
            "train_time_s": self.elapsed,
            "mean_step_time_s": sum(times) / len(times) if times else None,
            "n_skipped": self.n_skipped,
            "initial": records[0] if records else {},
            "final": self.last_eval,
            "best_ess_reverse": max(ess) if ess else None,
            "observables": {o.name: o.label for o in self.observables},
            "references": self.references,
            "data": self.data.metadata if self.data is not None else None,
            "device": str(self.device),
            "dtype": self.config.dtype,
            "world_size": self.ctx.world_size,
            "torch": torch.__version__,
            "config": self.run_config,
        }
