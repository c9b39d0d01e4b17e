"""Training runs: settings, target samples, the loop and the run's records, and the command line
shared by the scripts in ``paper_runs/``. Imported on its own (``import pathgrad_ref`` does not
import it). Evaluation (:mod:`pathgrad_ref.evaluation`) and plots (:mod:`pathgrad_ref.plots`)
are library modules that any loop can use; this package calls them. A run reads top-down:

================  ==============================================================
module            what
================  ==============================================================
``cli``           :func:`main`: the command line of ``paper_runs/*.py``
``run``           :func:`run_experiment`: checks before writing, samples, trainer
``pretrain``      two-stage runs: flow matching first, shared by the runs of a seed
``objectives``    the estimators and flow matching, by name
``experiment``    :class:`Experiment`: what a script defines (target, flow, presets)
``config``        every option once: :class:`TrainConfig`, :class:`DataConfig`,
                  :class:`HMCConfig` fields with their flag, help and check
``data``          exact and cached HMC target samples (checksummed)
``trainer``       :class:`Trainer`: Adam, schedules, clipping, non-finite steps,
                  signals, the clock
``distributed``   ``torchrun`` data parallelism: gradient averaging, per-rank streams
``report``        ``metrics.jsonl`` and the printed lines
``files``         the atomic writer, strict JSON, checkpoints, unusable-file errors
================  ==============================================================
"""

from ..evaluation import Observable, evaluate
from .cli import build_parser, main
from .config import ConfigError, DataConfig, HMCConfig, TrainConfig
from .data import TargetSamples, cached_hmc_samples, exact_samples
from .experiment import Experiment, Param, int_list
from .run import run_experiment
from .trainer import RunInterruptedError, Trainer, TrainingError, resolve_device

__all__ = [
    "ConfigError",
    "DataConfig",
    "Experiment",
    "HMCConfig",
    "Observable",
    "Param",
    "RunInterruptedError",
    "TargetSamples",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "build_parser",
    "cached_hmc_samples",
    "evaluate",
    "exact_samples",
    "int_list",
    "main",
    "resolve_device",
    "run_experiment",
]
