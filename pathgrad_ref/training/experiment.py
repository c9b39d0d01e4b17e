"""What a training script defines: the target, the flow, their parameters, presets,
observables and where target samples come from. Each ``paper_runs/*.py`` builds one
:class:`Experiment` and hands it to :func:`pathgrad_ref.training.cli.main`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor

from ..evaluation import Observable
from ..flows.base import Flow
from ..targets.base import Target
from .config import all_options
from .data import Symmetry

Params = Mapping[str, Any]


@dataclass(frozen=True)
class Param:
    """One physics or architecture option: ``--name`` (underscores become dashes) parsed by
    ``type``; its default comes from the active preset."""

    name: str
    type: Callable[[str], Any]
    help: str
    metavar: str | None = None


def int_list(text: str) -> tuple[int, ...]:
    """``"64,64"`` → ``(64, 64)``; also accepts ``x`` as separator (``"16x8"``)."""
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"expected positive integers, got {text!r}")
    return values


@dataclass(frozen=True)
class Experiment:
    """A training experiment.

    ``params``: physics and architecture options; ``presets``: ``{preset: {option: value}}``
    with a value for every ``params`` entry and any run option to override (option names are
    flags without dashes: ``steps``, ``batch_size``, ``hmc_chains``; a ``quick`` preset is
    required). ``make_target(params)``, ``make_flow(params)`` build them (the flow in the
    default dtype on the CPU). ``observables(target)``: what to estimate with importance
    weights. ``sampler``: ``"exact"`` (``target.sample``), ``"hmc"`` or ``None`` (no target
    samples: forward-KL estimators are refused). For HMC: ``hmc_periodic`` (the coordinates'
    period, ``2π`` for link angles), ``hmc_observable(target)`` (whose ``τ_int`` is reported)
    and ``symmetry`` (:data:`~.data.Symmetry`). ``log_z(target)``: where known. ``check(params)``
    refuses parameter combinations that cannot work, raising :class:`~.config.ConfigError`
    naming the field (``"params.lattice"``). ``epilog``: extra ``--help`` text.
    """

    name: str
    description: str
    params: Sequence[Param]
    presets: Mapping[str, Mapping[str, Any]]
    make_target: Callable[[Params], Target]
    make_flow: Callable[[Params], Flow]
    observables: Callable[[Target], Sequence[Observable]] = field(default=lambda _t: ())
    sampler: Literal["exact", "hmc"] | None = None
    hmc_periodic: float | None = None
    hmc_observable: Callable[[Target], Callable[[Tensor], Tensor]] | None = None
    symmetry: Symmetry | None = None
    log_z: Callable[[Target], float | None] | None = None
    check: Callable[[Params], None] | None = None
    epilog: str = ""

    def __post_init__(self) -> None:
        if "quick" not in self.presets:
            raise ValueError(f"experiment {self.name!r} needs a 'quick' preset")
        names = {opt.name for _, opt, _ in all_options()} | {p.name for p in self.params}
        for preset, values in self.presets.items():
            missing = [p.name for p in self.params if p.name not in values]
            if missing:
                raise ValueError(f"preset {preset!r} of {self.name!r} lacks values for {missing}")
            if unknown := sorted(set(values) - names):
                raise ValueError(f"preset {preset!r} of {self.name!r}: unknown options {unknown}")
