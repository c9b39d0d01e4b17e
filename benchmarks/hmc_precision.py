"""HMC in float32 against float64 at equal settings: acceptance, observables and ΔH error.

    python benchmarks/hmc_precision.py                    # writes results/hmc-precision-cpu.json
    python benchmarks/hmc_precision.py --chains 128 --kept 200 --repeats 2   # a quicker look

Two targets, as in the quick presets: φ⁴ on 8×8 (κ = 0.3, λ = 0.022; observable ⟨|M|⟩/V) and
U(1) gauge theory on 8×8 (β = 1; observable ⟨cos P⟩, with its exact value). For each target a
float64 pilot run adapts the leapfrog step towards 80 % acceptance; then float64 and float32
chains run with that same fixed step, trajectory length, chain count, thermalisation, thinning
and seed, ``--repeats`` times with different seeds, the two precisions interleaved so that
their wall-clock ratio is measured under the same machine load. Reported per precision:
acceptance, observable ± standard error (from τ_int), and the seconds per run; and, on
identical start points and momenta, the float32 energy error ``|ΔH_32 − ΔH_64|`` and how often
the two precisions would decide accept/reject differently with the same uniform draw.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pathgrad_ref.samplers import HMCResult, hmc_sample
from pathgrad_ref.samplers.diagnostics import integrated_autocorrelation_time
from pathgrad_ref.samplers.hmc import leapfrog
from pathgrad_ref.targets import Phi4, Target, U1Gauge
from pathgrad_ref.targets.u1 import exact_average_plaquette

RESULTS = Path(__file__).resolve().parent / "results"
TWO_PI = 2.0 * math.pi


def _setups() -> dict[str, tuple[Target, Callable[[Tensor], Tensor], float | None, float | None]]:
    """name -> (target, observable per sample (N,), period of the variables, exact value)."""
    phi4 = Phi4((8, 8), kappa=0.3, lam=0.022)
    u1 = U1Gauge(8, beta=1.0)
    return {
        "phi4-8x8-k0.3-l0.022 <|M|>/V": (
            phi4,
            lambda x: phi4.magnetisation(x).abs() / phi4.volume,
            None,
            None,
        ),
        "u1-8x8-beta1 <cos P>": (u1, u1.average_plaquette, TWO_PI, exact_average_plaquette(8, 1.0)),
    }


def _estimate(series: Tensor) -> dict[str, float]:
    """Mean of a ``(n_kept, n_chains)`` series with the standard error ``σ √(2τ_int / n)``."""
    s = series.to(torch.float64)
    tau = integrated_autocorrelation_time(s)
    tau = tau if math.isfinite(tau) else 0.5
    err = float(s.std()) * math.sqrt(2.0 * tau / s.numel())
    return {"mean": float(s.mean()), "stderr": err, "tau_int": tau}


def _energy_error(
    target: Target, x64: Tensor, eps: float, n_leapfrog: int, seed: int
) -> dict[str, float]:
    """Same start points, momenta and uniform draws in both precisions: ``|ΔH_32 − ΔH_64|``
    and the fraction of chains whose accept/reject decision differs."""
    g = torch.Generator().manual_seed(seed)
    p64 = torch.randn(x64.shape, generator=g, dtype=torch.float64)
    log_u = torch.log(torch.rand(x64.shape[0], generator=g, dtype=torch.float64))
    dh: dict[torch.dtype, Tensor] = {}
    for dt in (torch.float64, torch.float32):
        x, p = x64.to(dt), p64.to(dt)
        x1, p1 = leapfrog(target, x, p, eps, n_leapfrog)
        kinetic = 0.5 * (p1 * p1 - p * p).flatten(1).sum(1)
        dh[dt] = (target.action(x1) - target.action(x) + kinetic).to(torch.float64)
    diff = (dh[torch.float32] - dh[torch.float64]).abs()
    flips = (log_u < -dh[torch.float32]) != (log_u < -dh[torch.float64])
    return {
        "mean_abs_delta_h_64": float(dh[torch.float64].abs().mean()),
        "mean_abs_dh_error_32": float(diff.mean()),
        "max_abs_dh_error_32": float(diff.max()),
        "accept_decision_flips": float(flips.double().mean()),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {
        "command": "python benchmarks/hmc_precision.py " + " ".join(sys.argv[1:]),
        "settings": {
            k: getattr(args, k) for k in ("chains", "therm", "kept", "thin", "leapfrog", "repeats")
        },
        "machine": {
            "device": "cpu",
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "note": "shared, loaded machine: only the interleaved float32/float64 time ratio "
            "is meaningful, not the absolute seconds",
        },
        "targets": {},
    }
    for name, (target, obs, period, exact) in _setups().items():
        pilot = _pilot(target, period, args, seed=12345)
        eps = pilot.step_size
        rows: dict[str, list[dict[str, Any]]] = {"float64": [], "float32": []}
        for rep in range(args.repeats):
            order = (
                (torch.float64, torch.float32) if rep % 2 == 0 else (torch.float32, torch.float64)
            )
            for dt in order:
                t0 = time.perf_counter()
                res = hmc_sample(
                    target,
                    args.chains * args.kept,
                    n_chains=args.chains,
                    step_size=eps,
                    n_leapfrog=args.leapfrog,
                    n_therm=args.therm,
                    thin=args.thin,
                    periodic=period,
                    dtype=dt,
                    observable=obs,
                    generator=torch.Generator().manual_seed(1000 + rep),
                )
                seconds = time.perf_counter() - t0
                rows[str(dt).removeprefix("torch.")].append(
                    {
                        "seed": 1000 + rep,
                        "acceptance": res.acceptance_rate,
                        "observable": _estimate(res.observable),
                        "seconds": seconds,
                    }
                )
        summary: dict[str, Any] = {}
        for dt_name, runs in rows.items():
            means = [r["observable"]["mean"] for r in runs]
            errs = [r["observable"]["stderr"] for r in runs]
            # Independent seeds: combine by inverse-variance weights.
            w = [1.0 / e**2 for e in errs]
            mean = sum(wi * m for wi, m in zip(w, means, strict=True)) / sum(w)
            summary[dt_name] = {
                "acceptance": sum(r["acceptance"] for r in runs) / len(runs),
                "observable": mean,
                "stderr": 1.0 / math.sqrt(sum(w)),
                "seconds_per_run": sum(r["seconds"] for r in runs) / len(runs),
            }
        s32, s64 = summary["float32"], summary["float64"]
        diff = s32["observable"] - s64["observable"]
        sigma = math.hypot(s32["stderr"], s64["stderr"])
        ratios = [
            r32["seconds"] / r64["seconds"]
            for r32, r64 in zip(rows["float32"], rows["float64"], strict=True)
        ]
        entry: dict[str, Any] = {
            "step_size": eps,
            "runs": rows,
            "summary": summary,
            "float32_minus_float64": {"observable": diff, "sigma": diff / sigma},
            "acceptance_difference": s32["acceptance"] - s64["acceptance"],
            "time_ratio_float32_over_float64": sorted(ratios)[len(ratios) // 2],
            "energy_error": _energy_error(target, pilot.final_state, eps, args.leapfrog, 7),
        }
        if exact is not None:
            entry["exact"] = exact
            entry["sigma_from_exact"] = {
                k: (v["observable"] - exact) / v["stderr"] for k, v in summary.items()
            }
        out["targets"][name] = entry
        print(_line(name, entry), flush=True)
    # The float32 energy error grows with the action, i.e. with the volume: measure it at the
    # paper presets' lattices too (a float64 thermalised state, then one trajectory per chain).
    paper: list[tuple[str, Target, float | None]] = [
        ("phi4-16x8-k0.3-l0.022", Phi4((16, 8), kappa=0.3, lam=0.022), None),
        ("u1-16x16-beta3", U1Gauge(16, beta=3.0), TWO_PI),
    ]
    out["energy_error_paper_lattices"] = {}
    for name, target, period in paper:
        pilot = _pilot(target, period, args, seed=54321)
        err = _energy_error(target, pilot.final_state, pilot.step_size, args.leapfrog, 8)
        out["energy_error_paper_lattices"][name] = {"step_size": pilot.step_size, **err}
        print(f"{name}: eps={pilot.step_size:.4f} {err}", flush=True)
    return out


def _pilot(target: Target, period: float | None, args: argparse.Namespace, seed: int) -> HMCResult:
    """A float64 run with step-size adaptation: its step size and final (thermalised) state."""
    return hmc_sample(
        target,
        args.chains,
        n_chains=args.chains,
        step_size=0.1,
        n_leapfrog=args.leapfrog,
        n_therm=args.therm,
        periodic=period,
        adapt_step_size=True,
        generator=torch.Generator().manual_seed(seed),
    )


def _line(name: str, e: dict[str, Any]) -> str:
    s = e["summary"]
    return (
        f"{name}: eps={e['step_size']:.4f}  acc64={s['float64']['acceptance']:.4f} "
        f"acc32={s['float32']['acceptance']:.4f}  obs64={s['float64']['observable']:.5f}"
        f"±{s['float64']['stderr']:.5f} obs32={s['float32']['observable']:.5f}"
        f"±{s['float32']['stderr']:.5f} ({e['float32_minus_float64']['sigma']:+.2f}σ)  "
        f"|dH32-dH64| mean {e['energy_error']['mean_abs_dh_error_32']:.2e} "
        f"max {e['energy_error']['max_abs_dh_error_32']:.2e}, decision flips "
        f"{e['energy_error']['accept_decision_flips']:.4f}  t32/t64="
        f"{e['time_ratio_float32_over_float64']:.2f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chains", type=int, default=256, help="chains per run [256]")
    parser.add_argument("--therm", type=int, default=400, help="thermalisation trajectories [400]")
    parser.add_argument("--kept", type=int, default=200, help="kept states per chain [200]")
    parser.add_argument("--thin", type=int, default=5, help="trajectories per kept state [5]")
    parser.add_argument("--leapfrog", type=int, default=10, help="leapfrog steps [10]")
    parser.add_argument("--repeats", type=int, default=8, help="seeds per precision [8]")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads [1]")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "hmc-precision-cpu.json", help="JSON output"
    )
    args = parser.parse_args(argv)
    for k in ("chains", "therm", "kept", "thin", "leapfrog", "repeats", "threads"):
        if getattr(args, k) < (0 if k == "therm" else 1):
            parser.error(f"--{k}: expected a positive integer, got {getattr(args, k)}")
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
