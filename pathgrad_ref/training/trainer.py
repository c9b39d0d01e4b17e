"""The training loop: Adam on one estimator's loss, with learning-rate decay, gradient
clipping, skipping of non-finite steps, periodic evaluation, resumable checkpoints and a clean
stop on SIGINT or SIGTERM.

One step, on every data-parallel rank of ``W``: draw ``batch_size / W`` samples from the rank's
own stream (base samples for a reverse-KL estimator, a minibatch of the training samples for a
forward one or for flow matching, :mod:`.objectives`); ``loss, _ = estimator(flow, target,
batch)``; ``backward``; average the gradients over the ranks; if the loss or the global gradient
norm is not finite, skip the update and count it, otherwise clip the norm and take the Adam
step.

No step reads a value on the host: "not finite" goes to the fused Adam kernel as ``found_inf``
(the protocol of ``torch.amp.GradScaler``), which then leaves parameters, moments and step count
untouched, and the bookkeeping stays on the device (:class:`_Counters`), read in one transfer
every ``STOP_VOTE_EVERY`` steps and at evaluation, checkpoint and stop steps. Hence a run of
``max_nonfinite`` non-finite steps stops up to ``STOP_VOTE_EVERY - 1`` steps late, and the
plateau schedule (patience counted in finite steps) lowers the rate only at multiples of
``STOP_VOTE_EVERY``, so that a resumed run decides alike.

The clock: ``train_time_s`` (the training steps alone: batch, estimator, backward, optimiser,
counter reads, stop votes; used by ``--time-limit``, the progress bar and step times),
``eval_time_s``, ``checkpoint_time_s`` and ``wall_time_s``, all cumulative over resumed
segments. On a GPU the queued steps' time reaches the clock at the next counter read.

Every ``eval_every`` steps, and with ``eval_every_time`` at every multiple of it in training
time (where it also checkpoints), rank 0 evaluates on flow samples from a stream seeded by the
step (evaluation never disturbs training). On SIGINT or SIGTERM the step is finished, a
checkpoint written and the summary says ``"status": "interrupted"``; a second signal stops at
once. Under ``torchrun`` the ranks vote on stopping (and on a time-based evaluation) every
``STOP_VOTE_EVERY`` steps. On the CPU a resumed
run retraces an uninterrupted one exactly: the checkpoint holds parameters, Adam's state, every
random stream of every rank and the counters.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import Tensor

from .._validation import check_finite, per_call_finite_check
from ..estimators import compile_estimator, get_estimator
from ..evaluation import Observable, evaluate, fmt, references
from ..flows.base import Flow
from ..metrics import gradient_variance
from ..plots import plot_run
from ..precision import apply_precision_policy
from ..progress import Progress, progress_bar
from ..targets.base import Target
from . import files as ckpt
from .config import ConfigError, TrainConfig
from .data import TargetSamples
from .distributed import (
    DistContext,
    all_reduce,
    average_gradients,
    broadcast_parameters,
    gather_objects,
    stream_seed,
    trainable,
)
from .files import unusable, write_json
from .objectives import FLOW_MATCHING, direction, flow_matching_objective
from .report import MetricRecord, MetricsLog, describe

# Random streams of a rank (the third argument of stream_seed); _MATCHING_STREAM: the base
# samples and times of flow matching.
_BATCH_STREAM, _INDEX_STREAM, _EVAL_STREAM, _NOISE_STREAM, _MATCHING_STREAM = 0, 1, 2, 3, 4
STOP_VOTE_EVERY = 10
"""Steps between the ranks' votes on stopping under ``torchrun`` (signal or time limit), and
between the reads of the on-device counters (non-finite steps, plateau schedule)."""


def device_generator(device: torch.device, seed: int) -> torch.Generator:
    """A random stream for sampling on ``device``, seeded with ``seed``. The ``meta`` device
    has no streams (nor values); its samplers take a CPU generator, which stands in there."""
    where = torch.device("cpu") if device.type == "meta" else device
    return torch.Generator(device=where).manual_seed(seed)


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite steps in a row); the message says why."""


class RunInterruptedError(Exception):
    """A run stopped by a signal after writing its checkpoint (``signum``, ``step``)."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
        self.signum = signum
        self.step = step


class HardStop(KeyboardInterrupt):
    """A second stop signal: leave at once (the last complete checkpoint stays loadable)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Records the first SIGINT/SIGTERM (``received``); a second one raises :class:`HardStop`."""

    def __init__(self) -> None:
        self.received: int | None = None

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.received is not None:
            raise HardStop(signum)
        self.received = signum

    @contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Handle both signals inside the block (only from the main thread, where Python
        delivers signals; elsewhere nothing is installed)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        saved = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in saved.items():
                signal.signal(s, h)


class _Counters:
    """The loop's per-step bookkeeping as 0-d device tensors, updated without host reads:
    non-finite steps in a row (``consecutive``), the longest such run (``longest``), all
    skipped steps (``skipped``); for the plateau schedule the lowest finite loss (``best``,
    ``+inf`` before the first) and the finite steps since it (``bad``); and since the last
    evaluation the sums of the finite steps' loss and gradient norm and their number ``n``."""

    KEYS = ("consecutive", "longest", "skipped", "best", "bad", "loss", "grad_norm", "n")
    _FLOAT = ("best", "loss", "grad_norm")

    def __init__(self, device: torch.device, state: dict[str, Any] | None = None) -> None:
        s = {"best": math.inf, **(state or {})}
        for k in self.KEYS:
            dtype = torch.float64 if k in self._FLOAT else torch.int64
            setattr(self, k, torch.tensor(s.get(k, 0), dtype=dtype, device=device))

    def update(self, loss: Tensor, grad_norm: Tensor, finite: Tensor) -> None:
        """Count a step with 0-d float64 ``loss`` and ``grad_norm`` and 0-d bool ``finite``."""
        c: Any = self
        c.consecutive = torch.where(finite, 0, c.consecutive + 1)
        c.longest = torch.maximum(c.longest, c.consecutive)
        c.skipped = c.skipped + ~finite
        # A new minimum is any lower loss (absolute threshold 0): the relative default of
        # ReduceLROnPlateau misjudges negative losses, as the φ⁴ KL without log Z is.
        improved = finite & (loss < c.best)
        c.best = torch.where(improved, loss, c.best)
        c.bad = torch.where(improved, 0, c.bad + finite)
        c.loss = c.loss + torch.where(finite, loss, 0.0)
        c.grad_norm = c.grad_norm + torch.where(finite, grad_norm, 0.0)
        c.n = c.n + finite

    def restart(self, *keys: str) -> None:
        for k in keys:
            setattr(self, k, torch.zeros_like(getattr(self, k)))

    def state(self) -> dict[str, float | int]:
        """The counters on the host (one transfer)."""
        values = torch.stack([getattr(self, k).to(torch.float64) for k in self.KEYS]).tolist()
        return {
            k: v if k in self._FLOAT else int(v) for k, v in zip(self.KEYS, values, strict=True)
        }


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → ``cuda`` if available, else ``cpu``; ``ConfigError`` for a CUDA device
    that is not there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev: torch.device | None = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError("train.device", f"expected auto, cpu or cuda[:K], got {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device", f"{name}: CUDA is not available on this machine")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ConfigError("train.device", f"{name}: only {torch.cuda.device_count()} CUDA devices")
    return dev


class Trainer:
    """Trains ``flow`` towards ``target`` with ``config.estimator`` (see the module docstring).

    ``flow`` is moved to ``device`` and the config's dtype. ``run_dir`` receives
    ``metrics.jsonl``, ``checkpoint.pt``, ``summary.json`` and plots (rank 0 writes; ``None``:
    nothing is written). ``data``: ``train`` for forward-KL estimators, ``test`` for NLL,
    forward ESS and the observables' sample references. ``log_z``: where known (absolute KL).
    ``run_config``: JSON-ready description stored in checkpoints and the summary. The training
    samples are held on ``device``; minibatches are drawn with replacement. ``config.estimator``
    may also be ``flow-matching`` (:mod:`.objectives`). ``stream_salt``: non-zero for a run's
    pretraining stage, whose random streams are then independent of the run's own.
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
        stream_salt: int = 0,
    ) -> None:
        try:
            config.validate()
        except ConfigError as e:
            raise ConfigError(f"train.{e.field}", e.message) from None
        self.config = config
        self.ctx = ctx if ctx is not None else DistContext()
        self.device = device
        self.dtype = config.torch_dtype
        # Process-global flags (TF32 off for float32 on a GPU), set before any model work.
        self.precision = apply_precision_policy(self.dtype, device)
        self.flow = flow.to(device=device, dtype=self.dtype)
        self.target = target
        self.stream_salt = stream_salt
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
            msg = f"{config.batch_size} is not divisible by the {world} processes"
            raise ConfigError("train.batch_size", msg)
        self.local_batch = config.batch_size // world
        self.params = trainable(self.flow)
        # Fused: a non-finite step is skipped by the kernel (found_inf), with no host read.
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr, fused=True)
        rank = self.ctx.rank
        self.generators = {"batch": device_generator(device, self._seed(rank, _BATCH_STREAM))}
        name, mode = config.estimator, config.compile_mode
        if name == FLOW_MATCHING:
            self.generators["matching"] = device_generator(
                device, self._seed(rank, _MATCHING_STREAM)
            )
            fm = flow_matching_objective(self.generators["matching"])
            self.estimator = compile_estimator(fm, mode=mode) if config.compile else fm
        else:
            est = get_estimator(name)
            self.estimator = compile_estimator(est, mode=mode) if config.compile else est
        self.train_samples: Tensor | None = None  # on the device, for forward-KL minibatches
        self.train_subset: Tensor | None = None
        if self.direction == "forward":
            if data is None or data.train is None:
                why = f"{config.estimator} minimises the forward KL and needs training samples"
                raise ConfigError("train.estimator", why + " of the target, but this run has none")
            check_finite(data.train, "training samples of the target")
            self.train_samples = data.train.to(device=device, dtype=self.dtype)
            self.generators["index"] = device_generator(device, self._seed(rank, _INDEX_STREAM))
            # A fixed part of the training set, as large as the held-out set, for the training
            # NLL (its gap to the held-out NLL shows overfitting).
            k = min(len(data.train), len(data.test) if data.test is not None else 10_000)
            self.train_subset = data.train[:k]
        if self.ctx.enabled and any(getattr(m, "pending_init", False) for m in flow.modules()):
            # Checked on every rank at once: the layer itself would refuse only at its first
            # batch, which rank 0's initial evaluation sees alone while the others wait.
            raise ValueError(
                "flow: a layer with data-dependent initialisation (ActNorm data_init=True) is "
                "not initialised; under torchrun each rank would initialise its own; build it "
                "with data_init=False"
            )
        broadcast_parameters(self.flow, self.ctx)

        self.step = 0
        self.checkpoint_step: int | None = None
        self.counters = _Counters(device)
        self.read: dict[str, float | int] = {}  # the counters as of the last check()
        self.consecutive_nonfinite = self.n_skipped = 0  # host copies, as of the last check()
        # The clock, and the training time and steps since the last evaluation.
        self.times = dict.fromkeys(("train", "eval", "checkpoint", "wall"), 0.0)
        self.interval_time, self.interval_steps = 0.0, 0
        self._wall_at = (0.0, time.perf_counter())
        self.history: list[MetricRecord] = []  # every evaluation record of the run
        report = ((data.metadata.get("test") or {}) if data is not None else {}).get("report")
        tau = float((report or {}).get("tau_int") or math.nan)
        self.references = references(self.observables, data.test if data is not None else None, tau)
        self.metrics: MetricsLog | None = None
        self.signals = StopSignals()
        self.stop_signal = 0  # the signal that stopped the last train() call, if any
        # The loss is the estimator's KL estimate, without log Z where the target lacks it.
        kl, shift = (
            ("KL(q‖p)", " − log Z") if self.direction == "reverse" else ("KL(p‖q)", " + log Z")
        )
        self.loss_label = f"{kl}{'' if target.log_z is not None else shift} on the training batch"
        if name == FLOW_MATCHING:
            self.loss_label = "flow-matching loss E‖v_θ(x_τ, τ) − (x − z)‖² on the training batch"
        # The training time at which the next time-based evaluation falls due (--eval-every-time).
        self.next_eval_time = math.inf

    def _seed(self, rank: int, stream: int, *more: int) -> int:
        """The seed of ``stream`` of ``rank`` (and ``more``, e.g. a step), mixed from the
        config's seed and a non-zero ``stream_salt``: a run's pretraining stage (salt 1) draws
        streams independent of the run's own, which are those of a plain run (salt 0)."""
        salt = (self.stream_salt,) if self.stream_salt else ()
        return stream_seed(self.config.seed, rank, stream, *more, *salt)

    def _next_due(self) -> float:
        """The training time of the next time-based evaluation: the next multiple of
        ``eval_every_time`` after the training time so far (``inf`` without one)."""
        every = self.config.eval_every_time
        if every is None:
            return math.inf
        return (math.floor(self.times["train"] / every) + 1) * every

    # ------------------------------------------------------------------ one step

    def _draw_batch(self) -> Tensor:
        """Base samples, or a minibatch of the training samples drawn with replacement (the
        indices from the generator's device: on ``meta`` a CPU stream)."""
        if self.train_samples is None:
            return self.flow.base.sample(self.local_batch, self.generators["batch"])
        g, n = self.generators["index"], len(self.train_samples)
        index = torch.randint(n, (self.local_batch,), generator=g, device=g.device)
        return self.train_samples[index.to(self.device)]

    def _train_step(self) -> tuple[Tensor, Tensor, Tensor]:
        """One step; returns ``(loss, grad_norm, finite)``: the loss averaged over ranks and
        the global gradient norm before clipping (0-d float64 device tensors) and whether both
        are finite, i.e. whether the update was applied (0-d bool device tensor). No host
        read."""
        batch = self._draw_batch()
        self.optimizer.zero_grad(set_to_none=True)
        loss, _ = self.estimator(self.flow, self.target, batch)
        torch.autograd.backward(loss)
        average_gradients(self.params, self.ctx)
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g) for g in grads])
            ).to(torch.float64)
        else:
            norm = torch.zeros((), dtype=torch.float64, device=self.device)
        loss_mean = all_reduce(loss.detach().to(torch.float64).reshape(1), self.ctx)[0]
        loss_mean = loss_mean / self.ctx.world_size
        finite = torch.isfinite(loss_mean) & torch.isfinite(norm)
        clip = self.config.clip_norm
        if clip is not None:
            # Scale by 1 (exactly) below the threshold: no host read of the norm. (A non-finite
            # norm gives 1; that step is skipped anyway.)
            scale = torch.where(norm > clip, clip / (norm + 1e-6), torch.ones_like(norm))
            for g in grads:
                g.mul_(scale.to(g.dtype))
        # The fused kernel leaves parameters, moments and step count as they are where
        # found_inf is 1 (the protocol of torch.amp.GradScaler, which sets this attribute).
        self.optimizer.found_inf = (~finite).to(torch.float32)  # type: ignore[attr-defined]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_mean, norm, finite

    def check(self, plateau: bool) -> None:
        """Read the on-device counters (one transfer); raise :class:`TrainingError` after
        ``max_nonfinite`` non-finite steps in a row; if ``plateau`` and the plateau schedule is
        on, lower the rate when the finite steps since the lowest loss exceed ``lr_patience``."""
        cfg = self.config
        c = self.read = self.counters.state()
        self.consecutive_nonfinite = int(c["consecutive"])
        self.n_skipped = int(c["skipped"])
        if int(c["longest"]) >= cfg.max_nonfinite:
            raise TrainingError(
                f"{int(c['longest'])} steps in a row with a non-finite loss or gradient, "
                f"found at step {self.step} (counted on the device, read every "
                f"{STOP_VOTE_EVERY} steps); the parameters are those of the last good step. "
                "Try a lower train.lr, gradient clipping (train.clip_norm) or train.dtype "
                "float64, or raise train.max_nonfinite"
            )
        if plateau and cfg.lr_schedule == "plateau" and int(c["bad"]) > cfg.lr_patience:
            for group in self.optimizer.param_groups:
                group["lr"] = max(float(group["lr"]) * cfg.lr_factor, cfg.lr_min)
            self.counters.restart("bad")

    def _stop_vote(self, over_time: bool, due: bool, boundary: bool) -> tuple[int, bool, bool]:
        """``(signal number or 0, over time, time-based evaluation due)`` agreed by all ranks.
        Alone: every step, no communication. Under ``torchrun``: every ``STOP_VOTE_EVERY``
        steps and at ``boundary`` steps (evaluation, checkpoint, last), so that all stop, and
        evaluate by the clock, at one step (each rank's clock differs a little)."""
        signum = self.signals.received or 0
        if not self.ctx.enabled:
            return signum, over_time, due
        if self.step % STOP_VOTE_EVERY and not boundary:
            return 0, False, False
        votes = torch.tensor([float(signum), float(over_time), float(due)], device=self.device)
        s, t, d = all_reduce(votes, self.ctx, "max").tolist()
        return int(s), t > 0, d > 0

    # ------------------------------------------------------------------ evaluation

    def clock(self) -> dict[str, float]:
        """``train_time_s``, ``eval_time_s``, ``checkpoint_time_s``, ``wall_time_s``."""
        return {f"{k}_time_s": v for k, v in self.times.items()}

    def evaluate(self) -> MetricRecord:
        """Metrics at the current parameters (see the module docstring), as a flat record,
        with the means since the last evaluation from the last :meth:`check`."""
        cfg = self.config
        gen = device_generator(self.device, self._seed(0, _EVAL_STREAM, self.step))
        c = self.read
        n, steps = int(c.get("n", 0)), self.interval_steps
        record: MetricRecord = {
            "step": self.step,
            **self.clock(),
            "lr": self.optimizer.param_groups[0]["lr"],
            "loss": c["loss"] / n if n else None,
            "grad_norm": c["grad_norm"] / n if n else None,
            "step_time_s": self.interval_time / steps if steps else None,
            "n_skipped": self.n_skipped,
        }
        record.update(
            evaluate(
                self.flow,
                self.target,
                n_samples=cfg.eval_samples,
                generator=gen,
                observables=self.observables,
                log_z=self.log_z,
                test=self.data.test if self.data is not None else None,
                train=self.train_subset,
                chunk=max(self.local_batch, 4096),
            )
        )
        if cfg.grad_var_batches > 0:
            record.update(self._gradient_noise())
        return record

    def _gradient_noise(self) -> dict[str, float]:
        """``grad_var_standard`` and ``grad_var_path``: ``Σ_k Var[g_k]`` of the standard and
        the path gradient of the run's direction at the current parameters, over
        ``grad_var_batches`` fresh batches from a stream seeded by the step (training streams
        and ``.grad`` untouched)."""
        seed, n = self._seed(0, _NOISE_STREAM, self.step), self.local_batch
        draw: Callable[[], Tensor]
        if self.data is not None and self.data.train is not None and self.direction == "forward":
            train, gen = self.data.train, torch.Generator().manual_seed(seed)
            draw = lambda: train[torch.randint(len(train), (n,), generator=gen)]  # noqa: E731
        else:
            base_gen = device_generator(self.device, seed)
            draw = lambda: self.flow.base.sample(n, base_gen)  # noqa: E731
        batches = [draw().to(self.device, self.dtype) for _ in range(self.config.grad_var_batches)]
        d, args = self.direction, (self.flow, self.target, batches)
        return {
            "grad_var_standard": gradient_variance(f"{d}-standard", *args).total_variance(),
            "grad_var_path": gradient_variance(f"{d}-path-fast", *args).total_variance(),
        }

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
            self.checkpoint_step = self.step
            return
        state = {
            "format_version": ckpt.FORMAT_VERSION,
            "step": self.step,
            "world_size": self.ctx.world_size,
            "model": self.flow.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": {"generators": gens, "global": glob},
            "loop": {
                "counters": self.counters.state(),
                "times": self.times,
                "interval": [self.interval_time, self.interval_steps],
            },
            "config": self.run_config,
        }
        ckpt.atomic_save(state, path)
        self.checkpoint_step = self.step

    def load_checkpoint(self, path: str | Path) -> None:
        """Continue from a checkpoint written by :meth:`save_checkpoint` (same number of
        ranks); :class:`ConfigError` naming the file if it cannot be used."""
        state = ckpt.load_checkpoint(path)
        if int(state["world_size"]) != self.ctx.world_size:
            why = f"was written by {state['world_size']} processes (got {self.ctx.world_size})"
            raise unusable(path, why, "resume it with the same number")
        try:
            self.flow.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            rank = self.ctx.rank
            ckpt.set_generator_states(self.generators, state["rng"]["generators"][rank])
            ckpt.set_global_rng_state(state["rng"]["global"][rank])
            loop = state["loop"]
            self.counters = _Counters(self.device, loop["counters"])
            self.times = {k: float(loop["times"][k]) for k in self.times}
            t, n = loop["interval"]
            self.interval_time, self.interval_steps = float(t), int(n)
        except (KeyError, RuntimeError, ValueError, IndexError, TypeError) as e:
            raise unusable(path, f"it does not fit this run ({e})") from None
        self.step = int(state["step"])
        self.checkpoint_step = self.step
        self.consecutive_nonfinite = int(loop["counters"]["consecutive"])
        self.n_skipped = int(loop["counters"]["skipped"])

    # ------------------------------------------------------------------ the loop

    @contextmanager
    def _timed(self, kind: str) -> Iterator[None]:
        """Add the block's duration to clock ``kind`` (and, for training, to the interval)."""
        t = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t
            self.times[kind] += dt
            if kind == "train":
                self.interval_time += dt

    def _evaluate_and_emit(self, bar: Progress | None) -> None:
        """Rank 0 evaluates, records and prints; every rank restarts the interval."""
        with self._timed("eval"):
            if self.ctx.is_main:
                self.history.append(record := self.evaluate())
                if self.metrics is not None:
                    self.metrics.write(record)
                line = describe(record, self.observables, self.references)
                if bar is not None:
                    bar.write(line)
                    short = describe(record, self.observables, self.references, short=True)
                    bar.set_postfix_str(short, refresh=False)
                else:
                    self._log(line)
        self.counters.restart("loss", "grad_norm", "n")
        self.read = {}
        self.interval_time, self.interval_steps = 0.0, 0
        self.next_eval_time = self._next_due()

    def _checkpoint(self) -> None:
        with self._timed("checkpoint"):
            self._tick()
            self.save_checkpoint()

    def _tick(self) -> None:
        """Bring the wall clock up to now (this segment's start is in ``_wall_at``)."""
        before, start = self._wall_at
        self.times["wall"] = before + (time.perf_counter() - start)

    def train(self, resume: bool = False) -> dict[str, Any]:
        """Run until ``config.steps``, the time limit or a stop signal; returns the summary
        (also written to ``summary.json`` by rank 0), whose ``status`` is ``completed``,
        ``stopped`` (time limit), ``interrupted`` (signal) or ``failed``. ``resume`` continues
        from ``run_dir/checkpoint.pt`` if it exists. Raises :class:`TrainingError` after
        ``max_nonfinite`` skipped steps in a row, :class:`HardStop` on a second signal."""
        # The estimators' per-call finiteness test is a host read at every step; base samples
        # are finite by construction and target samples were checked once, in __init__.
        with self.signals.installed(), per_call_finite_check(False):
            return self._train(resume)

    def _train(self, resume: bool) -> dict[str, Any]:
        cfg = self.config
        main = self.ctx.is_main
        segment_start = time.perf_counter()
        path = self.checkpoint_path
        resumed_from: int | None = None
        if resume and path is not None and path.exists():
            self.load_checkpoint(path)
            resumed_from = self.step
            if main:
                self._log(f"resumed from {path} at step {self.step}")
        self._wall_at = (self.times["wall"], segment_start)
        self.next_eval_time = self._next_due()
        if main and self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", keep_until=resumed_from)
            self.history = list(self.metrics.records)
        bar: Progress | None = None
        if main and cfg.progress:
            initial = min(self.step, cfg.steps)
            bar = progress_bar(cfg.steps, self.title, "step", initial=initial)
        status, reason = "failed", "error"
        signum = 0

        try:
            if self.step == 0:
                self._tick()
                self._evaluate_and_emit(bar)
            limit = cfg.time_limit
            over_time = limit is not None and self.times["train"] >= limit
            # Resumed after its time was used up: nothing to do until the limit is raised.
            stop = over_time
            while self.step < cfg.steps and not stop:
                with self._timed("train"):
                    self.counters.update(*self._train_step())
                self.step += 1
                self.interval_steps += 1
                at_eval = self.step % cfg.eval_every == 0
                at_ckpt = self.step % cfg.checkpoint_every == 0
                at_check = self.step % STOP_VOTE_EVERY == 0
                last = self.step >= cfg.steps
                over_time = limit is not None and self.times["train"] >= limit
                due = self.times["train"] >= self.next_eval_time
                with self._timed("train"):
                    signum, over_time, due = self._stop_vote(
                        over_time, due, at_eval or at_ckpt or last
                    )
                    # A time-based evaluation also checkpoints: a killed run loses at most one
                    # interval, whatever the step cost.
                    at_eval, at_ckpt = at_eval or due, at_ckpt or due
                    stop = bool(signum) or over_time
                    if at_check or at_eval or at_ckpt or last or stop:
                        # The read waits for the steps' queued device work: training time.
                        try:
                            self.check(plateau=at_check)
                        except TrainingError:
                            status, reason = "failed", "nonfinite"
                            raise
                if bar is not None:
                    bar.update(1)
                    bar.set_description(
                        f"{self.title} (train {fmt(self.times['train'])} s)", refresh=False
                    )
                self._tick()
                if at_eval or stop or last:
                    self._evaluate_and_emit(bar)
                if at_ckpt or stop or last:
                    self._checkpoint()
            if self.checkpoint_step != self.step:
                self._checkpoint()
            self.stop_signal = signum
            if signum:
                status, reason = "interrupted", signal.Signals(signum).name
            elif over_time:
                status, reason = "stopped", "time_limit"
            else:
                status, reason = "completed", "steps"
        except KeyboardInterrupt as e:
            # A second signal (or a plain KeyboardInterrupt): the last checkpoint stands.
            status = "interrupted"
            reason = signal.Signals(getattr(e, "signum", signal.SIGINT)).name + " (immediate)"
            raise
        finally:
            if bar is not None:
                bar.close()
            self._tick()
            summary = self.summary(status, reason)
            if main and self.run_dir is not None:
                write_json(self.run_dir / "summary.json", summary)
                if self.metrics is not None:
                    self.metrics.close()
                    plot_run(
                        self.history,
                        self.run_dir,
                        self.observables,
                        self.references,
                        title=self.title,
                        log_z_known=self.log_z is not None,
                        loss_label=self.loss_label,
                    )
        return summary

    def summary(self, status: str = "completed", reason: str = "steps") -> dict[str, Any]:
        """What the run reached: final evaluation, best reverse ESS, the clock, references."""
        ess = [r["ess_reverse"] for r in self.history if isinstance(r.get("ess_reverse"), float)]
        return {
            "experiment": self.run_config.get("experiment"),
            "estimator": self.config.estimator,
            "direction": self.direction,
            "status": status,
            "stop_reason": reason,
            "steps_done": self.step,
            "checkpoint_step": self.checkpoint_step,
            "steps_requested": self.config.steps,
            **self.clock(),
            "mean_step_time_s": self.times["train"] / self.step if self.step else None,
            "n_skipped": self.n_skipped,
            "initial": self.history[0] if self.history else {},
            "final": self.history[-1] if self.history else {},
            "best_ess_reverse": max(ess) if ess else None,
            "observables": {o.name: o.label for o in self.observables},
            "references": self.references,
            "data": self.data.metadata if self.data is not None else None,
            "device": str(self.device),
            "dtype": self.config.dtype,
            "precision": self.precision.as_dict(),
            "world_size": self.ctx.world_size,
            "torch": torch.__version__,
            "config": self.run_config,
        }
