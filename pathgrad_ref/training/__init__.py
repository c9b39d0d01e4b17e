"""Training runs: settings, target samples, the loop, evaluation and the run's records, and the
command line shared by the scripts in ``paper_runs/``. Imported on its own
(``import pathgrad_ref`` does not import it). A run reads top-down:

================  ==============================================================
module            what
================  ==============================================================
``cli``           :func:`main`: the command line of ``paper_runs/*.py``
``run``           :func:`run_experiment`: checks before writing, samples, trainer
``experiment``    :class:`Experiment`: what a script defines (target, flow, presets)
``config``        every option once: :class:`TrainConfig`, :class:`DataConfig`,
                  :class:`HMCConfig` fields with their flag, help and check
``data``          exact and cached HMC target samples (checksummed), minibatches
``trainer``       :class:`Trainer`: Adam, schedules, clipping, non-finite steps,
                  signals, the clock
``distributed``   ``torchrun`` data parallelism: gradient averaging, per-rank streams
``evaluation``    :func:`evaluate`: ESS, KL, NLL, reweighted observables and the
                  rule for when they can be trusted
``report``        ``metrics.jsonl``, number format, printed lines
``plots``         the run plots and helpers for plots of many runs
``files``         the atomic writer, strict JSON, checkpoints, unusable-file errors
================  ==============================================================
"""

from .cli import build_parser, main
from .config import ConfigError, DataConfig, HMCConfig, TrainConfig
from .data import (
    MinibatchSampler,
    SampleStore,
    TargetSamples,
    cached_hmc_samples,
    exact_samples,
    load_sample_set,
    save_sample_set,
)
from .distributed import DistContext, average_gradients, init_distributed
from .evaluation import Estimate, Observable, evaluate, reweighted_mean, sample_mean
from .experiment import Experiment, Param, int_list
from .run import run_experiment
from .trainer import RunInterruptedError, Trainer, TrainingError, resolve_device

__all__ = [
    "ConfigError",
    "DataConfig",
    "DistContext",
    "Estimate",
    "Experiment",
    "HMCConfig",
    "MinibatchSampler",
    "Observable",
    "Param",
    "RunInterruptedError",
    "SampleStore",
    "TargetSamples",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "average_gradients",
    "build_parser",
    "cached_hmc_samples",
    "evaluate",
    "exact_samples",
    "init_distributed",
    "int_list",
    "load_sample_set",
    "main",
    "resolve_device",
    "reweighted_mean",
    "run_experiment",
    "sample_mean",
    "save_sample_set",
]
