"""Training runs: the loop, evaluation, checkpoints, target samples, data parallelism and the
command line shared by the scripts in ``paper_runs/``. Imported on its own
(``import pathgrad_ref`` does not import it).

================  ==============================================================
module            what
================  ==============================================================
``config``        every option once: :class:`TrainConfig`, :class:`DataConfig`,
                  :class:`HMCConfig` fields with their flag, help and check
``experiment``    :class:`Experiment`: what a script defines (target, flow, presets)
``trainer``       :class:`Trainer`: Adam, schedules, clipping, non-finite steps, signals
``evaluation``    :func:`evaluate`: ESS, KL, NLL, reweighted observables
``observables``   :class:`Observable`, importance-reweighted estimates
``data``          exact and cached HMC target samples (checksummed), minibatches
``checkpoint``    ``weights_only`` checkpoints, random-stream states
``files``         the atomic writer, strict JSON, errors for unusable run files
``distributed``   ``torchrun`` data parallelism: setup, gradient averaging, per-rank streams
``report``        ``metrics.jsonl``, number format, plots, comparison tables
``run``           :func:`run_experiment`: checks before writing, one trainer per estimator
``cli``           :func:`main`: the command line of ``paper_runs/*.py``
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
from .evaluation import evaluate
from .experiment import Experiment, Param, int_list
from .observables import Estimate, Observable, reweighted_mean, sample_mean
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
