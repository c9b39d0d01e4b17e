"""GPU smoke test: does the project run on CUDA, correctly and without per-step host syncs?

    python tests/gpu_smoke.py                      # every check, on cuda (a few minutes)
    python tests/gpu_smoke.py --dry-run            # list the checks, run nothing
    python tests/gpu_smoke.py --only estimator,syncs --keep /tmp/smoke

A plain script, not a pytest module (pytest collects ``test_*.py`` only). It prints one line per
check, ``PASS``, ``FAIL`` or ``SKIP``, its name, a measured figure and its seconds, then a
summary. Exit status: 0 when every check passed; 1 when one failed; 2 without CUDA (nothing can
be checked: this script never passes on a CPU-only machine); 3 when checks were skipped (e.g.
the 2-process NCCL run on a 1-GPU machine) and ``--allow-skip`` was not given.

The checks:

- ``cuda``: a CUDA device is visible; name, capability, torch and CUDA versions.
- ``precision``: the float32 precision policy (TF32 off) is in force on the device.
- ``estimator/<setup>/<name>``: every estimator (naive oracles included) on every flow (RealNVP
  on the GMM, Z2Nice on φ⁴, the U(1) flow, the neural spline flow on the GMM, the U(1) flow
  with circular splines, Glow, MAF, the continuous flow (RK4) on the GMM): the float64
  gradient on CUDA against the same on the CPU (max relative difference, must be <= 1e-9); and
  ``estimator-f32/<setup>``: the float32 fast-path gradient on CUDA against float64 on the CPU
  (<= 2e-3).
- ``float32/<case>``: the float32 tier of ``tests/test_float32.py`` on CUDA, every flow of
  ``tests/float32_cases.py`` (native and zuko): every estimator's float32 CUDA gradient
  against its float64 CPU oracle to ``64 ε₃₂ max(κ, 1)``, and the round trip of the edge points
  (bounds, tails, knots, circle seams) to ``64 ε₃₂ (1 + |z| + σ)``, nothing non-finite;
  ``κ`` and ``σ`` are measured on the CPU in float64, as in the tests.
- ``syncs/...``: host synchronisations counted with ``torch.cuda.set_sync_debug_mode``
  (``tests/syncs.py``) in steady state: a U(1) inverse (one per
  bisection, i.e. per layer), HMC trajectories (none), and the trainer's steps (batch,
  estimator, backward, clipping, fused Adam skipping non-finite steps on the device, on-device
  counters and plateau schedule) of the fast-path estimators on φ⁴ (none), the continuous flow
  (none) and U(1) (one per bisection in the inverse direction, none in the reverse one).
- ``paper_runs/<script>``: a few training steps of each script with ``--device cuda``, a
  forward-KL estimator so that the target-sample path (HMC on the GPU) runs; ``resume``:
  continuing the φ⁴ CUDA run from its checkpoint.
- ``table2``: ``benchmarks/table2.py --device cuda --scale small`` with few rounds.
- ``torchrun-nccl``: ``torchrun --nproc_per_node 2`` with NCCL (needs 2 GPUs).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

from pathgrad_ref.flows import Flow  # noqa: E402
from pathgrad_ref.targets import Target  # noqa: E402

SETUPS = (
    "realnvp-gmm",
    "z2nice-phi4",
    "u1-gauge",
    "nsf-gmm",
    "u1-circular",
    "glow-gmm",
    "maf-gmm",
    "mafspline-gmm",
    "continuous-gmm",
)
ESTIMATOR_NAMES = (
    "reverse-standard",
    "reverse-path-dropin",
    "reverse-path-fast",
    "forward-standard",
    "forward-path-gdreg",
    "forward-path-fast",
    "reverse-standard-naive",
    "reverse-path-naive",
    "forward-standard-naive",
    "forward-path-naive",
)
SCRIPTS = ("gmm", "phi4", "u1")


class SkipCheckError(Exception):
    """The check cannot run on this machine (the reason is printed)."""


@dataclass
class Check:
    name: str
    what: str
    run: Callable[[argparse.Namespace], str]


@dataclass
class Outcome:
    status: str
    name: str
    figure: str
    seconds: float


# --- helpers ---------------------------------------------------------------------------------


def _device(args: argparse.Namespace) -> torch.device:
    return torch.device(args.device)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _batch(setup: str, name: str, n: int = 8) -> tuple[Flow, Target, torch.Tensor]:
    """A CPU float64 flow, its target and a seeded batch for estimator ``name``."""
    from support import make_setup, target_batch

    from pathgrad_ref.estimators import direction

    if setup == "continuous-gmm":
        # Not in support.SETUPS: its estimators equal the oracles to the solver's error only.
        from float32_cases import CASES

        flow, target = CASES["continuous"].build()
    else:
        flow, target = make_setup(setup, torch.device("cpu"), torch.float64)
    if direction(name) == "reverse":
        torch.manual_seed(3)
        batch = flow.base.sample(n)
    else:
        batch = target_batch(flow, target, n, seed=3)
    return flow, target, batch


def _gradient_on(
    flow: Flow,
    target: Target,
    batch: torch.Tensor,
    name: str,
    dev: torch.device,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    from pathgrad_ref.estimators import gradient

    f = copy.deepcopy(flow).to(device=dev, dtype=dtype)
    return gradient(name, f, target, batch.to(device=dev, dtype=dtype))


def _max_rel(g: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    return max(_rel(g[k], ref[k]) for k in ref)


def _run(cmd: Sequence[str], args: argparse.Namespace, name: str) -> str:
    """Run ``cmd`` at the repository root; ``RuntimeError`` with the output tail if it fails."""
    path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    log = Path(args.work) / f"{name.replace('/', '_')}.log"
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(
            list(cmd),
            cwd=ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            timeout=args.timeout,
            check=False,
        )
    if proc.returncode != 0:
        tail = log.read_text()[-1500:]
        raise RuntimeError(f"exit status {proc.returncode}: {' '.join(cmd)}\n{tail}")
    return f"{time.perf_counter() - t0:.1f} s wall, log {log}"


def _train_cmd(script: str, out: Path, args: argparse.Namespace, *extra: str) -> list[str]:
    cmd = [
        sys.executable,
        str(ROOT / "paper_runs" / f"{script}.py"),
        "--device",
        args.device,
        "--steps",
        "5",
        "--out",
        str(out),
        "--no-progress",
        "--eval-every",
        "5",
        "--eval-samples",
        "256",
        "--checkpoint-every",
        "5",
        "--n-test-samples",
        "256",
        "--n-train-samples",
        "2048",
    ]
    if script != "gmm":
        cmd += ["--cache-dir", str(Path(args.work) / "cache"), "--hmc-chains", "128"]
    return cmd + list(extra)


def _summary(run_dir: Path, args: argparse.Namespace) -> dict[str, object]:
    """The run's ``summary.json``; ``RuntimeError`` unless it ran on ``args.device``'s type."""
    path = run_dir / "summary.json"
    if not path.exists():
        raise RuntimeError(f"no {path}")
    out: dict[str, object] = json.loads(path.read_text())
    want = _device(args).type
    if not str(out.get("device", "")).startswith(want):
        raise RuntimeError(f"{path} records device {out.get('device')!r}, expected {want}")
    return out


# --- the checks ------------------------------------------------------------------------------


def check_cuda(args: argparse.Namespace) -> str:
    dev = _device(args)
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError(
            f"CUDA not available (torch {torch.__version__}, CUDA {torch.version.cuda})"
        )
    cap = torch.cuda.get_device_capability(dev)
    return (
        f"{torch.cuda.get_device_name(dev)}, sm_{cap[0]}{cap[1]}, torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s)"
    )


def check_precision(args: argparse.Namespace) -> str:
    from pathgrad_ref.precision import apply_precision_policy

    policy = apply_precision_policy(torch.float32, _device(args))
    if (policy.matmul, policy.conv) != ("ieee", "ieee"):
        raise RuntimeError(f"TF32 still on after the policy: {policy}")
    # A matmul whose float32 result TF32 would spoil: exact in IEEE float32, not in TF32.
    a = torch.full((64, 64), 1.0 + 2.0**-12, device=_device(args))
    err = float((a @ a - 64 * (1.0 + 2.0**-12) ** 2).abs().max())
    if err > 1e-4:
        raise RuntimeError(f"float32 matmul error {err:.2e}: TF32 seems active")
    return f"{policy.as_dict()}, float32 matmul error {err:.1e}"


def _estimator_check(setup: str, name: str) -> Callable[[argparse.Namespace], str]:
    def run(args: argparse.Namespace) -> str:
        flow, target, batch = _batch(setup, name)
        cpu = _gradient_on(flow, target, batch, name, torch.device("cpu"), torch.float64)
        gpu = _gradient_on(flow, target, batch, name, _device(args), torch.float64)
        err = _max_rel(gpu, cpu)
        if not err <= 1e-9:
            raise RuntimeError(f"float64 CUDA vs CPU gradient max rel diff {err:.2e} > 1e-9")
        return f"float64 CUDA vs CPU gradient max rel diff {err:.1e}"

    return run


def _estimator_f32_check(setup: str) -> Callable[[argparse.Namespace], str]:
    def run(args: argparse.Namespace) -> str:
        from pathgrad_ref.precision import precision_policy

        name = "reverse-path-fast"
        flow, target, batch = _batch(setup, name)
        ref = _gradient_on(flow, target, batch, name, torch.device("cpu"), torch.float64)
        with precision_policy(torch.float32, _device(args)):
            g = _gradient_on(flow, target, batch, name, _device(args), torch.float32)
        err = _max_rel(g, ref)
        if not err <= 2e-3:
            raise RuntimeError(f"float32 CUDA vs float64 CPU max rel diff {err:.2e} > 2e-3")
        return f"{name} float32 CUDA (TF32 off) vs float64 CPU max rel diff {err:.1e}"

    return run


def _float32_check(case_name: str) -> Callable[[argparse.Namespace], str]:
    """The float32 tier (``tests/test_float32.py``) with the float32 flow on ``args.device``."""

    def run(args: argparse.Namespace) -> str:
        from float32_cases import CASES, EPS32, batch, edge_points, flows
        from support import rel_err
        from test_float32 import C_GRAD, C_ROUND_TRIP, ORACLE, ORACLES, _wrap, condition

        from pathgrad_ref.estimators import gradient
        from pathgrad_ref.precision import precision_policy

        dev = _device(args)
        case = CASES[case_name]
        f32_cpu, f64, target = flows(case)
        f32 = copy.deepcopy(f32_cpu).to(dev)
        worst_grad = 0.0
        with precision_policy(torch.float32, dev):
            for oracle in ORACLES:
                b32 = batch(case, f64, target, oracle).float()
                ref = gradient(oracle, f64, target, b32.double())
                kappa = max(condition(oracle, f64, target, b32.double()), 1.0)
                for name in [e for e, o in ORACLE.items() if o == oracle]:
                    g = gradient(name, f32, target, b32.to(dev))
                    if not all(bool(torch.isfinite(v).all()) for v in g.values()):
                        raise RuntimeError(f"{name}: non-finite float32 gradient on {dev}")
                    g_cpu = {k: v.double().cpu() for k, v in g.items()}
                    err = rel_err(g_cpu, ref) / (EPS32 * kappa)
                    worst_grad = max(worst_grad, err)
            z = edge_points(case, f32_cpu)
            with torch.no_grad():
                x, log_det = f32.transform(z.to(dev))
                z_back, log_det_inv = f32.inverse_transform(x)
                x64, _ = f64.transform(z.double())
                sign = torch.randint(0, 2, x64.shape, generator=torch.Generator().manual_seed(0))
                z_moved, _ = f64.inverse_transform(x64 * (1.0 + EPS32 * (2 * sign - 1)))
        for t in (x, log_det, z_back, log_det_inv):
            if not bool(torch.isfinite(t).all()):
                raise RuntimeError(f"non-finite float32 round trip on {dev}")
        sigma = _wrap(z_moved - z.double(), case).abs() / EPS32
        rt_err = _wrap(z_back.double().cpu() - z.double(), case).abs()
        worst_rt = float((rt_err / (EPS32 * (1.0 + z.double().abs() + sigma))).max())
        # The tests' measure and constants: a CUDA-only defect is off by far more than 64.
        if worst_grad > C_GRAD or worst_rt > C_ROUND_TRIP:
            raise RuntimeError(
                f"gradient {worst_grad:.1f} (max {C_GRAD:g}) or round trip {worst_rt:.1f} "
                f"(max {C_ROUND_TRIP:g}) units of eps32 too large"
            )
        return f"gradient {worst_grad:.1f}, round trip {worst_rt:.1f} units (max 64)"

    return run


def _count(fn: Callable[[], object], repeats: int = 3) -> tuple[float, list[str]]:
    """Syncs per call of ``fn`` in steady state (after two warm-up calls)."""
    from syncs import count_host_syncs

    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    with count_host_syncs() as c:
        for _ in range(repeats):
            fn()
    torch.cuda.synchronize()
    return c.count / repeats, c.sites


def _expect_syncs(what: str, per_call: float, expected: int, sites: list[str]) -> str:
    if per_call != expected:
        where = "; ".join(sites[:4]) or "-"
        raise RuntimeError(
            f"{what}: {per_call:g} host syncs per call, expected {expected} ({where})"
        )
    return f"{what}: {per_call:g} host syncs per call (expected {expected})"


def check_syncs_u1_inverse(args: argparse.Namespace) -> str:
    from pathgrad_ref.flows import u1_flow

    n_layers = 4
    flow = u1_flow(8, n_layers=n_layers, n_mixture=3, hidden=(4,)).to(_device(args), torch.float64)
    x, _ = flow.sample(64)

    def inverse() -> object:
        with torch.no_grad():
            return flow.inverse(x)

    per, sites = _count(inverse)
    return _expect_syncs(f"U(1) inverse, {n_layers} layers", per, n_layers, sites)


def check_syncs_hmc(args: argparse.Namespace) -> str:
    from pathgrad_ref.samplers.hmc import run_chains
    from pathgrad_ref.targets import Phi4

    target = Phi4((8, 8), kappa=0.3, lam=0.022)
    x = torch.randn(256, 8, 8, device=_device(args), dtype=torch.float64)

    def chains() -> object:
        with torch.no_grad():
            return run_chains(
                target,
                x,
                n_therm=5,
                n_kept=5,
                thin=2,
                step_size=0.1,
                n_leapfrog=5,
                adapt_step_size=True,
                step_jitter=0.1,
            )

    per, sites = _count(chains)
    return _expect_syncs("HMC, 15 trajectories with adaptation", per, 0, sites)


def _trainer_step(setup: str, name: str, dev: torch.device, n: int = 64) -> Callable[[], object]:
    """One steady-state step of the project's trainer (batch, estimator, backward, clipping,
    Adam with the on-device skip of non-finite steps, the on-device counters), float32 as in
    training, plateau schedule on; forward estimators draw from samples held on ``dev``."""
    from pathgrad_ref.training import TargetSamples, TrainConfig, Trainer

    flow, target, batch = _batch(setup, name, n=n)
    data = TargetSamples(train=batch, test=None, metadata={})
    cfg = TrainConfig(
        estimator=name, steps=1000, batch_size=n, lr=1e-4, clip_norm=1.0,
        lr_schedule="plateau", dtype="float32", progress=False,
    )  # fmt: skip
    trainer = Trainer(flow, target, cfg, device=dev, data=data, log=lambda _m: None)

    def step() -> object:
        loss, norm, finite = trainer._train_step()
        trainer.counters.update(loss, norm, finite)
        return loss

    return step


def _step_check(setup: str, name: str, expected: int) -> Callable[[argparse.Namespace], str]:
    def run(args: argparse.Namespace) -> str:
        per, sites = _count(_trainer_step(setup, name, _device(args)))
        return _expect_syncs(f"trainer step, {name} on {setup}", per, expected, sites)

    return run


def _script_check(script: str) -> Callable[[argparse.Namespace], str]:
    def run(args: argparse.Namespace) -> str:
        out = Path(args.work) / "runs" / script
        fig = _run(
            _train_cmd(script, out, args, "--estimator", "forward-path-fast", "--overwrite"),
            args,
            f"paper_runs/{script}",
        )
        s = _summary(out, args)
        if s.get("steps_done") != 5:
            raise RuntimeError(f"steps_done={s.get('steps_done')}, expected 5")
        return f"5 steps forward-path-fast, final {_final(s)}; {fig}"

    return run


def _final(s: dict[str, object]) -> str:
    final = s.get("final")
    if not isinstance(final, dict):
        return "-"
    keys = ("loss", "ess_reverse", "nll")
    return ", ".join(f"{k}={final[k]:.4g}" for k in keys if isinstance(final.get(k), float))


def check_resume(args: argparse.Namespace) -> str:
    out = Path(args.work) / "runs" / "phi4"
    if not (out / "summary.json").exists():
        _script_check("phi4")(args)
    fig = _run(
        _train_cmd(
            "phi4", out, args, "--estimator", "forward-path-fast", "--resume", "--steps", "10"
        ),
        args,
        "resume",
    )
    s = _summary(out, args)
    if s.get("steps_done") != 10:
        raise RuntimeError(f"resumed run: steps_done={s.get('steps_done')}, expected 10")
    return f"phi4 run resumed from step 5 to 10 on {args.device}; {fig}"


def check_table2(args: argparse.Namespace) -> str:
    out = Path(args.work) / "table2"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "table2.py"),
        "--device",
        args.device,
        "--scale",
        "small",
        "--rounds",
        str(args.table2_rounds),
        "--out",
        str(out),
        "--fresh",
    ]
    fig = _run(cmd, args, "table2")
    md = sorted(out.glob("*.md"))
    if not md:
        raise RuntimeError(f"table2 wrote no markdown table under {out}")
    return f"{md[0].name} written; {fig}"


def check_torchrun(args: argparse.Namespace) -> str:
    n = torch.cuda.device_count()
    if n < 2:
        raise SkipCheckError(
            f"needs 2 GPUs for 2 NCCL ranks (NCCL refuses two ranks on one GPU); {n} visible"
        )
    out = Path(args.work) / "runs" / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += _train_cmd("gmm", out, args, "--overwrite")[1:]
    fig = _run(cmd, args, "torchrun")
    s = _summary(out, args)
    if s.get("world_size") != 2:
        raise RuntimeError(f"world_size={s.get('world_size')}, expected 2")
    return f"2 ranks, nccl, gmm 5 steps; {fig}"


def all_checks() -> list[Check]:
    checks = [
        Check("cuda", "a CUDA device is visible", check_cuda),
        Check("precision", "float32 policy: TF32 off on matmul and conv", check_precision),
    ]
    for setup in SETUPS:
        for name in ESTIMATOR_NAMES:
            checks.append(
                Check(
                    f"estimator/{setup}/{name}",
                    "float64 CUDA == CPU gradient",
                    _estimator_check(setup, name),
                )
            )
        checks.append(
            Check(
                f"estimator-f32/{setup}", "float32 CUDA ≈ float64 CPU", _estimator_f32_check(setup)
            )
        )
    from float32_cases import CASES

    for case_name in CASES:
        checks.append(
            Check(
                f"float32/{case_name}",
                "float32 CUDA ≈ float64 CPU oracle",
                _float32_check(case_name),
            )
        )
    checks += [
        Check("syncs/u1-inverse", "one host sync per bisection", check_syncs_u1_inverse),
        Check("syncs/hmc", "no host sync per HMC trajectory", check_syncs_hmc),
        Check(
            "syncs/step/z2nice-phi4/reverse-path-fast",
            "no host sync per step",
            _step_check("z2nice-phi4", "reverse-path-fast", 0),
        ),
        Check(
            "syncs/step/z2nice-phi4/forward-path-fast",
            "no host sync per step",
            _step_check("z2nice-phi4", "forward-path-fast", 0),
        ),
        Check(
            "syncs/step/u1-gauge/reverse-path-fast",
            "no host sync per step",
            _step_check("u1-gauge", "reverse-path-fast", 0),
        ),
        Check(
            "syncs/step/continuous-gmm/reverse-path-fast",
            "no host sync per step",
            _step_check("continuous-gmm", "reverse-path-fast", 0),
        ),
        Check(
            "syncs/step/continuous-gmm/forward-path-fast",
            "no host sync per step",
            _step_check("continuous-gmm", "forward-path-fast", 0),
        ),
        Check(
            "syncs/step/u1-gauge/forward-path-fast",
            "one host sync per bisection (4 layers)",
            _step_check("u1-gauge", "forward-path-fast", 4),
        ),
    ]
    for script in SCRIPTS:
        checks.append(
            Check(f"paper_runs/{script}", "5 training steps on cuda", _script_check(script))
        )
    checks += [
        Check("resume", "resume a CUDA run from its checkpoint", check_resume),
        Check("table2", "benchmarks/table2.py --scale small on cuda", check_table2),
        Check("torchrun-nccl", "torchrun --nproc_per_node 2 with nccl", check_torchrun),
    ]
    return checks


def select(checks: list[Check], only: str | None) -> list[Check]:
    """The checks whose name starts with one of the comma-separated prefixes in ``only``."""
    if not only:
        return checks
    prefixes = [p.strip() for p in only.split(",") if p.strip()]
    chosen = [c for c in checks if any(c.name.startswith(p) for p in prefixes)]
    if not chosen:
        raise ValueError(f"--only {only!r} matches no check; see --dry-run for the names")
    return chosen


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="GPU smoke test of pathgrad-ref: one line per check, PASS/FAIL/SKIP.",
        epilog="Exit status: 0 all passed, 1 a check failed, 2 no CUDA, 3 skipped checks.",
    )
    parser.add_argument("--device", default="cuda", help="CUDA device to check [cuda]")
    parser.add_argument("--dry-run", action="store_true", help="list the checks, run nothing")
    parser.add_argument("--only", default=None, help="comma-separated name prefixes to run")
    parser.add_argument("--keep", default=None, help="work folder to keep (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per subprocess")
    parser.add_argument("--table2-rounds", type=int, default=2, help="rounds of table2 [2]")
    parser.add_argument("--allow-skip", action="store_true", help="exit 0 despite skipped checks")
    args = parser.parse_args(argv)
    if not args.device.startswith("cuda"):
        parser.error(f"--device: expected cuda or cuda:K, got {args.device!r}")
    if args.timeout <= 0 or args.table2_rounds < 1:
        parser.error("--timeout must be positive and --table2-rounds >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        checks = select(all_checks(), args.only)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.dry_run:
        for c in checks:
            print(f"{c.name:<48} {c.what}")
        print(f"{len(checks)} checks (dry run: nothing was run)")
        return 0
    if not torch.cuda.is_available():
        print(
            f"FAIL  cuda  CUDA not available (torch {torch.__version__}, built with CUDA "
            f"{torch.version.cuda}): nothing can be checked on this machine"
        )
        return 2
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gpu_smoke_"))
    work.mkdir(parents=True, exist_ok=True)
    args.work = str(work)
    outcomes: list[Outcome] = []
    for c in checks:
        t0 = time.perf_counter()
        try:
            figure, status = c.run(args), "PASS"
        except SkipCheckError as why:
            figure, status = str(why), "SKIP"
        except Exception as err:  # a smoke test reports every failure and goes on
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            figure, status = f"{type(err).__name__}: {first}", "FAIL"
            if args.keep:
                (work / f"{c.name.replace('/', '_')}.traceback").write_text(traceback.format_exc())
        o = Outcome(status, c.name, figure, time.perf_counter() - t0)
        outcomes.append(o)
        print(f"{o.status}  {o.name}  {o.figure}  ({o.seconds:.1f} s)", flush=True)
    n = {s: sum(o.status == s for o in outcomes) for s in ("PASS", "FAIL", "SKIP")}
    total = sum(o.seconds for o in outcomes)
    print(
        f"summary: {n['PASS']} passed, {n['FAIL']} failed, {n['SKIP']} skipped in {total:.0f} s;"
        f" work folder {work}"
    )
    if n["FAIL"]:
        return 1
    if n["SKIP"] and not args.allow_skip:
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
