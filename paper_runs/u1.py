"""Train a gauge-equivariant flow on 2D U(1) lattice gauge theory (see ``docs/theory.md``).

    python paper_runs/u1.py                           # quick preset: 8×8, β = 1, CPU
    python paper_runs/u1.py --preset paper --device cuda
    python paper_runs/u1.py --preset paper --estimator reverse-standard

Wilson action ``S = −β Σ_x cos P(x)`` on a periodic L × L lattice of link angles; the flow is a
stack of gauge-equivariant couplings with mixtures of tan transforms on plaquettes over a
uniform base on [0, 2π). The flow is only implicitly invertible: whatever needs ``T⁻¹`` (NLL on
target samples, forward-KL estimators, Algorithm 2) bisects. Observables ⟨cos P⟩ and
χ_top = ⟨Q²⟩/V are reweighted with the importance weights and compared with their exact
finite-volume values; ``log Z`` is exact too, so the printed KL values are absolute. Target
samples (forward KL, NLL) come from HMC, generated once and cached. Run with ``--help`` for
every option.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from studies.compare import compare  # noqa: E402

from pathgrad_ref.flows import Flow, u1_flow  # noqa: E402
from pathgrad_ref.targets import Target, U1Gauge  # noqa: E402
from pathgrad_ref.targets.u1 import (  # noqa: E402
    exact_average_plaquette,
    exact_log_z,
    exact_topological_susceptibility,
)
from pathgrad_ref.training import Experiment, Observable, Param, int_list  # noqa: E402
from pathgrad_ref.training import main as training_main  # noqa: E402

PARAMS = (
    Param("L", int, "lattice size L (L × L, periodic; divisible by 4)", "L"),
    Param("beta", float, "inverse coupling β", "B"),
    Param("n_layers", int, "gauge-equivariant coupling layers", "N"),
    Param("n_mixture", int, "tan transforms per mixture", "K"),
    Param("hidden", int_list, "hidden channels of each conditioner conv net", "C,C,..."),
    Param("kernel_size", int, "conv kernel size (odd)", "K"),
)

# Quick (our choice): meant to meet the quick targets of paper_runs/studies/rules.py on a 2-core
# CPU; its measured wall time, reverse ESS with its error, KL and observables are in
# paper_runs/results/u1-quick/study.json (runs[0]). β = 1 on 8×8, where the flow's reverse ESS
# visibly rises; 12 layers rather than 8 because with 8 the KL stalled higher and the ESS ended
# lower, near the target (ESS ≥ 0.2) or under it, in an exploratory comparison that left no
# record (its figures are in this comment as of ea6b15b; python paper_runs/u1.py --n-layers 8
# repeats it). The ESS of this flow fluctuates between evaluations (heavy-tailed weights): 8192
# evaluation samples keep its error small (runs[0].final.ess_reverse_err in that record) and
# N_eff above 1000. 300 steps, not the
# earlier 1000, which overran the time target when the machine ran slower (the u1-quick record's
# history in paper_runs/results/): the fast path's ESS has stopped rising by step 200 and
# fluctuates from there on (the reverse-path-fast runs' curves in
# paper_runs/results/u1-reverse/study.json). Changed after that outcome was seen; the preset's
# check is a usability target, not a claim of the paper.
QUICK: dict[str, Any] = {
    "L": 8,
    "beta": 1.0,
    "n_layers": 12,
    "n_mixture": 4,
    "hidden": (8, 8),
    "kernel_size": 3,
    "threads": 1,
    "steps": 300,
    "batch_size": 128,
    "lr": 2e-3,
    "eval_every": 100,
    "eval_samples": 8192,
    "checkpoint_every": 100,
    "n_train_samples": 20_000,
    "n_test_samples": 512,
    "hmc_chains": 256,
    "hmc_step_size": 0.1,
    "hmc_leapfrog": 10,
    "hmc_therm": 300,
    "hmc_thin": 5,
}

PRESETS: dict[str, dict[str, Any]] = {
    "quick": QUICK,
    # For paper_runs/study.py: the quick flow for 600 steps (the fast path's ESS has stopped
    # rising by step 200, and Algorithm 2, bisecting every step, costs more per step: the
    # curves and step_time_s in paper_runs/results/u1-reverse/study.json), with the gradient
    # variances measured at every evaluation (8 batches) and 2048 held-out HMC samples for the
    # forward ESS.
    "study": {
        **QUICK,
        "steps": 600,
        "eval_every": 50,
        "grad_var_batches": 8,
        "n_test_samples": 2048,
    },
    # The paper (settings from the authors' public code): L = 16, β = 3, 24 layers, 6 tan
    # transforms, conv channels [8, 8], kernel 3, batch 1000, Adam 1e-4. Steps, evaluation
    # sizes, the forward-KL sample count and the HMC settings are (our choice).
    "paper": {
        "L": 16,
        "beta": 3.0,
        "n_layers": 24,
        "n_mixture": 6,
        "hidden": (8, 8),
        "kernel_size": 3,
        "steps": 100_000,
        "batch_size": 1000,
        "lr": 1e-4,
        "eval_every": 1000,
        "eval_samples": 10_000,
        "checkpoint_every": 5000,
        "n_train_samples": 1_000_000,
        "n_test_samples": 10_000,
        "hmc_chains": 1000,
        "hmc_step_size": 0.1,
        "hmc_leapfrog": 10,
        "hmc_therm": 1000,
        "hmc_thin": 10,
    },
}


def make_target(p: Mapping[str, Any]) -> Target:
    return U1Gauge(p["L"], p["beta"])


def make_flow(p: Mapping[str, Any]) -> Flow:
    return u1_flow(
        p["L"],
        n_layers=p["n_layers"],
        n_mixture=p["n_mixture"],
        hidden=p["hidden"],
        kernel_size=p["kernel_size"],
    )


def observables(target: Target) -> Sequence[Observable]:
    assert isinstance(target, U1Gauge)
    volume = target.volume

    def chi_top(links: Tensor) -> Tensor:
        return target.topological_charge(links) ** 2 / volume

    return (
        Observable(
            "plaquette",
            "⟨cos P⟩",
            target.average_plaquette,
            exact=exact_average_plaquette(target.L, target.beta),
            tex=r"$\langle \cos P \rangle$",
        ),
        Observable(
            "chi_top",
            "χ_top",
            chi_top,
            exact=exact_topological_susceptibility(target.L, target.beta),
            tex=r"$\chi_\mathrm{top} = \langle Q^2 \rangle / V$",
        ),
    )


def topological_charge(target: Target) -> Callable[[Tensor], Tensor]:
    """The observable whose autocorrelation time HMC reports (the slowest one)."""
    assert isinstance(target, U1Gauge)
    return target.topological_charge


def log_z(target: Target) -> float:
    """``log Z`` w.r.t. ``dθ`` on ``[0, 2π)^{2V}``: the convention of the flow's ``log q``."""
    assert isinstance(target, U1Gauge)
    return exact_log_z(target.L, target.beta, measure="lebesgue")


EXPERIMENT = Experiment(
    name="u1",
    description=__doc__ or "",
    params=PARAMS,
    presets=PRESETS,
    make_target=make_target,
    make_flow=make_flow,
    observables=observables,
    sampler="hmc",
    hmc_periodic=2 * math.pi,
    hmc_observable=topological_charge,
    log_z=log_z,
)


def main(argv: Sequence[str] | None = None) -> int:
    compared = compare(EXPERIMENT.name, Path(__file__), argv)
    return training_main(EXPERIMENT, argv) if compared is None else compared


if __name__ == "__main__":
    sys.exit(main())
