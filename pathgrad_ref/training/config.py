"""Run settings, each defined once: a dataclass field whose metadata holds its command-line
flag, help text, parser and check (:func:`option`). The parser, the presets' check,
``config.json``, resume compatibility and error messages are generated from these fields.
Errors name fields by their dotted path in ``config.json`` (``train.lr``, ``data.hmc.n_chains``);
the command line turns it into the flag (``--lr``, ``--hmc-chains``). Presets map option names
(the flag without dashes: ``batch_size``, ``hmc_chains``) to values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .objectives import OBJECTIVES

Schedule = Literal["constant", "plateau"]
SCHEDULES: tuple[Schedule, ...] = ("constant", "plateau")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")

Check = Callable[[Any], "str | None"]  # value -> None if it can work, else what is expected


class ConfigError(ValueError):
    """A setting that cannot work. ``field`` is its dotted path in ``config.json``
    (``"train.lr"``), or ``None`` for a combination of settings or the run folder; ``str(e)``
    is ``"<field>: <message>"``."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Option:
    """How a field appears on the command line. ``parse``: text → value (``ValueError`` for
    bad text); ``resumable``: may change on resume (it does not change the trajectory). A
    ``bool`` field's flag sets the opposite of its default."""

    flag: str
    help: str
    parse: Callable[[str], Any] | None = None
    check: Check | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    resumable: bool = False

    @property
    def name(self) -> str:
        """The option's name in presets: the flag without dashes (``hmc_chains``)."""
        return self.flag.removeprefix("--").removeprefix("no-").replace("-", "_")


def option(default: Any, flag: str, help: str, **kw: Any) -> Any:
    """A dataclass field carrying its :class:`Option` (keywords as in :class:`Option`)."""
    return field(default=default, metadata={"option": Option(flag, help, **kw)})


def count(default: int, flag: str, help: str, minimum: int = 1, **kw: Any) -> Any:
    """An integer option ``>= minimum`` (an :func:`option`; metavar ``N`` unless given)."""
    kw.setdefault("metavar", "N")
    return option(default, flag, help, parse=int, check=at_least(minimum), **kw)


# ---------------------------------------------------------------- checks and parsers


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def at_least(minimum: int) -> Check:
    def check(v: Any) -> str | None:
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= minimum
        return None if ok else f"an integer >= {minimum}"

    return check


def off_or_at_least(minimum: int) -> Check:
    """0 (off) or an integer ``>= minimum``."""

    def check(v: Any) -> str | None:
        off = v == 0 and not isinstance(v, bool)
        return None if off or at_least(minimum)(v) is None else f"0 or an integer >= {minimum}"

    return check


def positive(v: Any) -> str | None:
    return None if _number(v) and v > 0 else "a finite number > 0"


def non_negative(v: Any) -> str | None:
    return None if _number(v) and v >= 0 else "a finite number >= 0"


def open_unit(v: Any) -> str | None:
    return None if _number(v) and 0 < v < 1 else "a number in (0, 1)"


def one_of(*allowed: str) -> Check:
    return lambda v: None if v in allowed else "one of " + ", ".join(allowed)


def optional(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


def parse_duration(text: str) -> float:
    """``"3600"``, ``"90s"``, ``"30m"``, ``"48h"``, ``"2d"`` → seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    t = text.strip().lower()
    scale = units.get(t[-1:])
    try:
        return float(t[:-1] if scale is not None else t) * (scale or 1.0)
    except ValueError:
        raise ValueError(f"expected a duration like 3600, 90m or 48h, got {text!r}") from None


def parse_clip(text: str) -> float | None:
    """``"1.0"`` → 1.0; ``"0"`` or ``"none"`` → ``None`` (no clipping)."""
    if text.strip().lower() in ("none", "off"):
        return None
    return float(text) or None


def _estimator(v: Any) -> str | None:
    return None if v in OBJECTIVES else "one of " + ", ".join(OBJECTIVES)


# ---------------------------------------------------------------- the settings


@dataclass(frozen=True)
class TrainConfig:
    """Options of the training loop (:class:`~.trainer.Trainer`), each with its help text."""

    estimator: str = option(
        "reverse-path-fast",
        "--estimator",
        "gradient estimator to train with, or flow-matching (continuous flows): "
        + ", ".join(OBJECTIVES),
        check=_estimator,
        metavar="NAME",
    )
    steps: int = count(1000, "--steps", "optimiser steps in total", minimum=0, resumable=True)
    batch_size: int = count(256, "--batch-size", "samples per step, over all processes")
    lr: float = option(1e-3, "--lr", "Adam learning rate", parse=float, check=positive)
    lr_schedule: Schedule = option(  # noqa: RUF009 (a field, not a shared default)
        "constant",
        "--lr-schedule",
        "constant, or plateau: multiply the rate by --lr-factor when the training loss has "
        "not reached a new minimum for --lr-patience steps (decided every few steps, from "
        "counts kept on the device)",
        check=one_of(*SCHEDULES),
        choices=SCHEDULES,
    )
    lr_patience: int = count(3000, "--lr-patience", "plateau patience in steps", minimum=0)
    lr_factor: float = option(
        0.5, "--lr-factor", "plateau decay factor", parse=float, check=open_unit, metavar="F"
    )
    lr_min: float = option(
        0.0, "--lr-min", "lower bound of the decayed rate", parse=float, check=non_negative,
        metavar="LR",
    )  # fmt: skip
    clip_norm: float | None = option(
        None, "--clip-norm", "clip the global gradient norm to this (0 or none: off)",
        parse=parse_clip, check=optional(positive), metavar="C",
    )  # fmt: skip
    max_nonfinite: int = count(
        100, "--max-nonfinite",
        "stop after this many steps in a row with a non-finite loss or gradient (each is "
        "skipped; counted on the device and checked every few steps, so the stop may come a "
        "few steps later)",
    )  # fmt: skip
    eval_every: int = count(100, "--eval-every", "evaluate every N steps", resumable=True)
    eval_every_time: float | None = option(
        None, "--eval-every-time",
        "also evaluate and checkpoint whenever another T of training time has passed (e.g. "
        "10s): evaluations at equal training times for estimators of very different step "
        "costs; under torchrun decided every few steps by the ranks' vote",
        parse=parse_duration, check=optional(positive), metavar="T", resumable=True,
    )  # fmt: skip
    eval_samples: int = count(4096, "--eval-samples", "flow samples per evaluation", resumable=True)
    grad_var_batches: int = option(
        0, "--grad-var-batches",
        "at every evaluation, measure the variance of the standard and the path gradient over "
        "this many fresh batches (0: off)",
        parse=int, check=off_or_at_least(2), metavar="K", resumable=True,
    )  # fmt: skip
    checkpoint_every: int = count(
        1000, "--checkpoint-every", "checkpoint every N steps", resumable=True
    )
    time_limit: float | None = option(
        None, "--time-limit",
        "stop with a checkpoint after this much training time (the steps alone, without "
        "evaluation and checkpoints), summed over resumed segments (e.g. 48h, 90m, 3600)",
        parse=parse_duration, check=optional(positive), metavar="T", resumable=True,
    )  # fmt: skip
    pretrain_steps: int = count(
        0, "--pretrain-steps",
        "first train a continuous flow by flow matching for this many steps on the training "
        "samples (stage 1, kept in --pretrain-dir and shared by every run with the same stage-1 "
        "settings), then --estimator from there (stage 2; 0: no stage 1)",
        minimum=0,
    )  # fmt: skip
    pretrain_lr: float | None = option(
        None, "--pretrain-lr", "Adam learning rate of stage 1 (none: --lr)", parse=float,
        check=optional(positive), metavar="LR",
    )  # fmt: skip
    pretrain_batch_size: int | None = option(
        None, "--pretrain-batch-size", "training samples per stage-1 step (none: --batch-size)",
        parse=int, check=optional(at_least(1)), metavar="N",
    )  # fmt: skip
    pretrain_dir: str = option(
        "runs/pretrained", "--pretrain-dir",
        "folder of stage-1 runs, one per settings hash (a finished one is reused)", metavar="DIR",
        resumable=True,
    )  # fmt: skip
    seed: int = count(
        0, "--seed", "seed of the initialisation and of the training and evaluation streams",
        minimum=0, metavar="SEED",
    )  # fmt: skip
    dtype: str = option(
        "float32", "--dtype", "floating point precision", check=one_of(*DTYPES),
        choices=tuple(DTYPES),
    )  # fmt: skip
    device: str = option(
        "auto", "--device", "auto (cuda if available), cpu, cuda or cuda:K", metavar="DEV"
    )
    compile: bool = option(
        False, "--compile",
        "compile the estimator with torch.compile (its gradients stay those of the eager one; "
        "the first steps are slow while it compiles)",
    )  # fmt: skip
    compile_mode: str = option(
        "default", "--compile-mode",
        "torch.compile mode with --compile (reduce-overhead: CUDA graphs on a GPU)",
        check=one_of(*COMPILE_MODES), choices=COMPILE_MODES,
    )  # fmt: skip
    threads: int | None = option(
        None, "--threads",
        "torch CPU threads (none: torch's default; tiny models run best on one, and idle "
        "threads spinning on a busy machine slow them down many times over)",
        parse=int, check=optional(at_least(1)), metavar="N", resumable=True,
    )  # fmt: skip
    progress: bool = option(True, "--no-progress", "no progress bar", resumable=True)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first field that cannot work."""
        validate(self)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class HMCConfig:
    """HMC settings for target samples (:func:`pathgrad_ref.samplers.hmc_sample`): ``n_chains``
    chains, after ``n_therm`` thermalisation trajectories (adapting the step size if
    ``adapt_step_size``) keep one state every ``thin`` trajectories, ``chunk_size`` samples at a
    time (one chunk on the device). ``dtype``: of the trajectories, not the stored samples."""

    n_chains: int = count(256, "--hmc-chains", "parallel chains")
    step_size: float = option(
        0.1, "--hmc-step-size", "initial leapfrog step", parse=float, check=positive,
        metavar="EPS",
    )  # fmt: skip
    n_leapfrog: int = count(10, "--hmc-leapfrog", "leapfrog steps per trajectory")
    n_therm: int = count(200, "--hmc-therm", "thermalisation trajectories", minimum=0)
    thin: int = count(5, "--hmc-thin", "trajectories between kept samples")
    adapt_step_size: bool = option(
        True, "--hmc-no-adapt", "keep the step size fixed during thermalisation"
    )
    target_acceptance: float = option(
        0.8, "--hmc-acceptance", "acceptance rate the step size is adapted to", parse=float,
        check=open_unit, metavar="A",
    )  # fmt: skip
    chunk_size: int = count(1_000_000, "--hmc-chunk", "samples generated per chunk", resumable=True)
    # float32 by measurement (benchmarks/hmc_precision.py): agrees with float64 within ~1e-4
    # relative errors (φ⁴ and U(1) 8×8) at 0.5-0.7 of the CPU time.
    dtype: str = option(
        "float32", "--hmc-dtype", "HMC precision (float32 agrees with float64 within errors)",
        check=one_of(*DTYPES), choices=tuple(DTYPES),
    )  # fmt: skip

    def validate(self) -> None:
        validate(self)
        if self.adapt_step_size and self.n_therm == 0:
            raise ConfigError(
                "n_therm", "step-size adaptation needs at least 1 thermalisation trajectory"
            )


@dataclass(frozen=True)
class DataConfig:
    """Target samples: ``n_train`` for forward-KL minibatches, ``n_test`` held out (``0``: none),
    from independent streams seeded by ``seed`` (not the training seed: runs of several seeds
    share one cached set in ``cache_dir``). ``hmc``: for targets without an exact sampler."""

    n_train: int = count(
        10_000, "--n-train-samples", "training samples for forward-KL estimators", minimum=0
    )
    n_test: int = count(
        10_000,
        "--n-test-samples",
        "held-out samples for NLL, forward ESS and reference observables (0: none)",
        minimum=0,
        resumable=True,
    )
    seed: int = count(0, "--data-seed", "seed of the target samples", minimum=0, metavar="SEED")
    cache_dir: str = option(
        "data/target_samples", "--cache-dir",
        "folder of cached HMC sample sets (exact samples are drawn afresh)", metavar="DIR",
        resumable=True,
    )  # fmt: skip
    hmc: HMCConfig | None = None

    def validate(self) -> None:
        validate(self)
        if self.hmc is not None:
            try:
                self.hmc.validate()
            except ConfigError as e:
                raise ConfigError(f"hmc.{e.field}", e.message) from None


def validate(settings: Any, prefix: str = "") -> None:
    """Run every field's check; :class:`ConfigError` naming the first that fails."""
    for f in dataclasses.fields(settings):
        opt: Option | None = f.metadata.get("option")
        if opt is None or opt.check is None:
            continue
        value = getattr(settings, f.name)
        expected = opt.check(value)
        if expected is not None:
            raise ConfigError(prefix + f.name, f"expected {expected}, got {value!r}")


def options(cls: type, prefix: str = "") -> Iterator[tuple[str, Option, Any]]:
    """``(dotted path, option, default)`` of every field of ``cls`` with a flag, nested
    settings included (``DataConfig`` yields ``hmc.n_chains``, …)."""
    nested = {"hmc": HMCConfig}
    for f in dataclasses.fields(cls):
        opt: Option | None = f.metadata.get("option")
        if opt is not None:
            yield prefix + f.name, opt, f.default
        elif f.name in nested:
            yield from options(nested[f.name], f"{prefix}{f.name}.")


def all_options() -> Iterator[tuple[str, Option, Any]]:
    """Every option of a run, by its path in ``config.json`` (``train.lr``, ``data.n_test``)."""
    yield from options(TrainConfig, "train.")
    yield from options(DataConfig, "data.")


def config_dict(
    experiment: str, train: TrainConfig, data: DataConfig, params: dict[str, Any]
) -> dict[str, Any]:
    """The JSON-ready description of a run, as written to ``config.json``."""
    train_data = {"train": dataclasses.asdict(train), "data": dataclasses.asdict(data)}
    return {"experiment": experiment, **train_data, "params": dict(params)}


# Settings that may change on resume; so may everything under ``runtime`` (the precision flags).
RESUMABLE_CHANGES = frozenset({"preset"} | {p for p, o, _ in all_options() if o.resumable})


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = list(value) if isinstance(value, tuple) else value
    return out


def trajectory_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a run config (``config.json``'s form, flattened to dotted paths) that
    determine the parameters' trajectory: all but :data:`RESUMABLE_CHANGES` and ``runtime``."""
    return {
        k: v
        for k, v in _flatten(config).items()
        if k not in RESUMABLE_CHANGES and not k.startswith("runtime.")
    }


def resume_mismatches(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Settings (dotted paths) that differ between a saved run config and the current one and
    would change the parameters' trajectory if the run were resumed with them."""
    a, b = trajectory_settings(saved), trajectory_settings(current)
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
