"""Training runs: the loop, evaluation, checkpoints, target samples, data parallelism and the
command line shared by the scripts in ``paper_runs/``.

================  ==============================================================
module            what
================  ==============================================================
``config``        :class:`TrainConfig`, :class:`DataConfig`, :class:`HMCConfig`
``experiment``    :class:`Experiment`: what a script defines (target, flow, presets)
``trainer``       :class:`Trainer`: Adam, schedules, clipping, non-finite steps, evaluation
``observables``   :class:`Observable`, importance-reweighted estimates
``data``          exact and cached HMC target samples, minibatches
``checkpoint``    atomic ``weights_only`` checkpoints, random-stream states
``distributed``   ``torchrun`` data parallelism: setup, gradient averaging, per-rank streams
``report``        ``metrics.jsonl``, summaries, plots, comparison tables
``cli``           :func:`main`: the command line of ``paper_runs/*.py``
================  ==============================================================
"""

from .cli import build_parser, main, run_experiment
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
from .experiment import Experiment, Param, int_list
from .observables import Estimate, Observable, reweighted_mean, sample_mean
from .trainer import Trainer, TrainingError, resolve_device

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
    "SampleStore",
    "TargetSamples",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "average_gradients",
    "build_parser",
    "cached_hmc_samples",
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
