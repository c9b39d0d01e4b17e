"""Run settings: the training loop's options, the target-sample settings and their validation.

A run is fully described by a :class:`TrainConfig`, a :class:`DataConfig` and the experiment's
own physics and architecture parameters (a plain ``dict``); :func:`config_dict` turns the three
into the JSON written to ``config.json``. Presets are plain mappings from option names to values
(see :mod:`pathgrad_ref.training.experiment`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..estimators import ESTIMATORS

Schedule = Literal["constant", "plateau"]
SCHEDULES: tuple[Schedule, ...] = ("constant", "plateau")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


class ConfigError(ValueError):
    """A setting that cannot work; the message names the option and what it needs."""


@dataclass(frozen=True)
class TrainConfig:
    """Options of the training loop (:class:`~pathgrad_ref.training.trainer.Trainer`).

    - ``estimator``: a name from :data:`pathgrad_ref.estimators.ESTIMATORS`.
    - ``steps``: optimiser steps in total (a resumed run counts the steps already done).
    - ``batch_size``: samples per step over all processes; each of ``W`` data-parallel
      processes draws ``batch_size / W``.
    - ``lr``, ``lr_schedule`` (``"constant"`` or ``"plateau"``: multiply the learning rate by
      ``lr_factor`` once the training loss has not improved for ``lr_patience`` steps, down to
      ``lr_min``, as ``torch.optim.lr_scheduler.ReduceLROnPlateau`` does).
    - ``clip_norm``: clip the global gradient norm to this value; ``None`` for no clipping.
    - ``max_nonfinite``: a step whose loss or gradient is not finite is skipped and counted;
      this many skipped steps in a row stop the run with an error.
    - ``eval_every``, ``eval_samples``: evaluate every this many steps on this many fresh flow
      samples (and on the held-out target samples, if any).
    - ``checkpoint_every``: write the checkpoint every this many steps (and at the end).
    - ``time_limit``: stop (with a checkpoint) after this many seconds of training, summed over
      resumed segments; ``None`` for no limit.
    - ``seed``: seeds the flow's initialisation and the training and evaluation streams.
    - ``dtype``: ``"float32"`` or ``"float64"``; ``device``: ``"auto"``, ``"cpu"``, ``"cuda"``
      or ``"cuda:K"``.
    """

    estimator: str = "reverse-path-fast"
    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    lr_schedule: Schedule = "constant"
    lr_patience: int = 3000
    lr_factor: float = 0.5
    lr_min: float = 0.0
    clip_norm: float | None = None
    max_nonfinite: int = 100
    eval_every: int = 100
    eval_samples: int = 4096
    checkpoint_every: int = 1000
    time_limit: float | None = None
    seed: int = 0
    dtype: str = "float32"
    device: str = "auto"
    progress: bool = True

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first setting that cannot work."""
        if self.estimator not in ESTIMATORS:
            raise ConfigError(
                f"unknown estimator {self.estimator!r}; expected one of: {', '.join(ESTIMATORS)}"
            )
        for name in ("batch_size", "eval_every", "eval_samples", "checkpoint_every"):
            _positive_int(name, getattr(self, name))
        _positive_int("steps", self.steps, minimum=0)
        _positive_int("lr_patience", self.lr_patience, minimum=0)
        _positive_int("max_nonfinite", self.max_nonfinite)
        _positive_float("lr", self.lr)
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(f"--lr-schedule: expected one of {SCHEDULES}, got {self.lr_schedule}")
        if not 0.0 < self.lr_factor < 1.0:
            raise ConfigError(f"--lr-factor: expected a number in (0, 1), got {self.lr_factor}")
        if not (math.isfinite(self.lr_min) and self.lr_min >= 0):
            raise ConfigError(f"--lr-min: expected a number >= 0, got {self.lr_min}")
        if self.clip_norm is not None:
            _positive_float("clip_norm", self.clip_norm)
        if self.time_limit is not None:
            _positive_float("time_limit", self.time_limit)
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype: expected one of {sorted(DTYPES)}, got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class HMCConfig:
    """HMC settings for target samples (:func:`pathgrad_ref.samplers.hmc_sample`).

    ``n_chains`` chains run in one batch; after ``n_therm`` thermalisation trajectories (with
    step-size adaptation towards ``target_acceptance`` if ``adapt_step_size``) every chain keeps
    one state every ``thin`` trajectories. Samples are produced ``chunk_size`` at a time,
    each chunk continuing the chains of the previous one, so that only one chunk is ever held
    on the device. ``dtype`` is the precision of the trajectories (the stored samples take the
    run's dtype).
    """

    n_chains: int = 256
    step_size: float = 0.1
    n_leapfrog: int = 10
    n_therm: int = 200
    thin: int = 5
    adapt_step_size: bool = True
    target_acceptance: float = 0.8
    chunk_size: int = 1_000_000
    dtype: str = "float64"

    def validate(self) -> None:
        for name in ("n_chains", "n_leapfrog", "thin", "chunk_size"):
            _positive_int(f"hmc_{name}", getattr(self, name))
        _positive_int("hmc_therm", self.n_therm, minimum=0)
        _positive_float("hmc_step_size", self.step_size)
        if self.adapt_step_size and self.n_therm == 0:
            raise ConfigError("--hmc-therm: step-size adaptation needs at least 1 trajectory")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--hmc-dtype: expected one of {sorted(DTYPES)}, got {self.dtype!r}")


@dataclass(frozen=True)
class DataConfig:
    """Target samples: ``n_train`` for forward-KL minibatches (made only for forward
    estimators), ``n_test`` held out for NLL, forward ESS and reference observables (``0``:
    none). ``seed`` seeds the sampler independently of the training seed, so that runs with
    different training seeds share one cached sample set in ``cache_dir``. ``hmc`` holds the
    sampler settings of targets without an exact sampler (``None`` for exact samplers). The
    training and test sets come from independent streams, so each is the same whatever the
    size of the other."""

    n_train: int = 10_000
    n_test: int = 10_000
    seed: int = 0
    cache_dir: str = "data/target_samples"
    hmc: HMCConfig | None = None

    def validate(self) -> None:
        _positive_int("n_train_samples", self.n_train, minimum=0)
        _positive_int("n_test_samples", self.n_test, minimum=0)
        if self.hmc is not None:
            self.hmc.validate()


def _positive_int(name: str, value: int, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        option = "--" + name.replace("_", "-")
        raise ConfigError(f"{option}: expected an integer >= {minimum}, got {value!r}")


def _positive_float(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        option = "--" + name.replace("_", "-")
        raise ConfigError(f"{option}: expected a finite number > 0, got {value!r}")


def config_dict(
    experiment: str, train: TrainConfig, data: DataConfig, params: dict[str, Any]
) -> dict[str, Any]:
    """The JSON-ready description of a run, as written to ``config.json``."""
    return {
        "experiment": experiment,
        "train": dataclasses.asdict(train),
        "data": dataclasses.asdict(data),
        "params": dict(params),
    }


# Settings that may change when a run is resumed: they shape how long and how visibly the run
# goes on, not the trajectory of the parameters.
RESUMABLE_CHANGES = frozenset(
    {
        "preset",
        "train.steps",
        "train.time_limit",
        "train.progress",
        "train.eval_every",
        "train.eval_samples",
        "train.checkpoint_every",
        "data.cache_dir",
        "data.n_test",
        "data.hmc.chunk_size",
    }
)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key != "params":
            out.update(_flatten(value, name + "."))
        elif isinstance(value, dict):
            out.update({f"params.{k}": v for k, v in value.items()})
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def resume_mismatches(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Settings (dotted names) that differ between a saved run config and the current one and
    would change the parameters' trajectory if the run were resumed with them."""
    a, b = _flatten(saved), _flatten(current)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k not in RESUMABLE_CHANGES and a.get(k) != b.get(k)]
