"""The study machinery: aggregation against hand-computed values, the verdict rules, the ESS
standard errors against their Monte Carlo spread, plots without warnings, and a tiny study end
to end (two estimators, two seeds) that is killed and resumed."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pathgrad_ref.metrics import forward_ess, forward_ess_error, reverse_ess, reverse_ess_error
from pathgrad_ref.training.study import aggregate, quantile, value_at_time
from pathgrad_ref.training.study_report import higher, markdown, plot, verdicts

ROOT = Path(__file__).resolve().parents[1]


def test_aggregate_matches_hand_computed_values() -> None:
    agg = aggregate([1.0, 2.0, 4.0, 9.0, None])
    # mean 4, sample variance ((−3)² + (−2)² + 0² + 5²)/3 = 38/3, se = sqrt(38/3/4)
    assert agg["n"] == 4
    assert agg["values"] == [1.0, 2.0, 4.0, 9.0, None]
    assert agg["mean"] == pytest.approx(4.0, rel=1e-15)
    assert agg["se"] == pytest.approx(math.sqrt(38 / 12), rel=1e-14)
    assert agg["median"] == pytest.approx(3.0)
    # numpy's default (linear) quantiles, an independent implementation
    xs = np.array([1.0, 2.0, 4.0, 9.0])
    assert agg["q25"] == pytest.approx(float(np.quantile(xs, 0.25)), rel=1e-15)
    assert agg["q75"] == pytest.approx(float(np.quantile(xs, 0.75)), rel=1e-15)
    assert agg["se"] == pytest.approx(float(np.std(xs, ddof=1) / 2), rel=1e-14)
    assert (agg["min"], agg["max"]) == (1.0, 9.0)


def test_aggregate_edge_cases() -> None:
    assert aggregate([None, float("nan")])["mean"] is None
    one = aggregate([0.5])
    assert one["mean"] == 0.5 and one["se"] is None and one["median"] == 0.5
    assert math.isnan(quantile([], 0.5))


def test_value_at_time_takes_the_last_evaluation_within_the_budget() -> None:
    curve = [
        {"elapsed_s": 0.0, "ess_reverse": 0.1},
        {"elapsed_s": 5.0, "ess_reverse": 0.3},
        {"elapsed_s": 9.0, "ess_reverse": 0.5},
    ]
    assert value_at_time(curve, "ess_reverse", 8.9) == 0.3
    assert value_at_time(curve, "ess_reverse", 9.0) == 0.5
    assert value_at_time(curve, "ess_reverse", -1.0) is None


def _agg(mean: float, se: float | None) -> dict[str, Any]:
    return {"mean": mean, "se": se}


def test_higher_needs_two_combined_standard_errors() -> None:
    # combined se = hypot(0.03, 0.04) = 0.05: a difference of 0.11 > 0.10 holds, 0.09 does not
    assert higher(_agg(0.61, 0.03), _agg(0.50, 0.04)) == "holds"
    assert higher(_agg(0.59, 0.03), _agg(0.50, 0.04)) == "inconclusive"
    assert higher(_agg(0.39, 0.03), _agg(0.50, 0.04)) == "does not hold"
    assert higher(_agg(0.9, None), _agg(0.1, 0.01)) == "inconclusive"


def _study(
    ess: dict[str, list[float]], ratios: tuple[float, float] | None = None
) -> dict[str, Any]:
    """A synthetic study record: final reverse ESS per estimator and seed; with ``ratios``
    the fast-path runs carry a gradient-variance curve whose path/standard ratio goes from
    ``ratios[0]`` to ``ratios[1]``."""
    runs = []
    for e, values in ess.items():
        for seed, v in enumerate(values):
            curve = [
                {"step": 0, "elapsed_s": 0.0, "ess_reverse": 0.01},
                {"step": 10, "elapsed_s": 1.0 + seed, "ess_reverse": v},
            ]
            if ratios is not None and e == "reverse-path-fast":
                curve[0].update(grad_var_standard=1.0, grad_var_path=ratios[0])
                curve[1].update(grad_var_standard=2.0, grad_var_path=2.0 * ratios[1])
            runs.append({"estimator": e, "seed": seed, "curve": curve, "final": curve[-1]})
    estimators = {
        e: {
            "final_ess_reverse": aggregate(v),
            "ess_reverse_at_equal_time": aggregate(v),
        }
        for e, v in ess.items()
    }
    spec = {
        "name": "synthetic",
        "experiment": "gmm",
        "preset": "study",
        "estimators": list(ess),
        "seeds": [0, 1, 2],
        "claim": "a test",
        "gpu_command": "",
    }
    return {
        "spec": spec,
        "hardware": {"cpu": "test", "cores": 1, "torch": torch.__version__, "gpu": None},
        "equal_time_s": 1.0,
        "observables": {},
        "references": {},
        "estimators": estimators,
        "runs": runs,
    }


def test_verdicts_follow_the_stated_rules() -> None:
    study = _study(
        {"reverse-standard": [0.50, 0.52, 0.48], "reverse-path-fast": [0.80, 0.82, 0.78]},
        ratios=(0.8, 0.01),
    )
    by_claim = {
        (v["claim"][:2], v["estimator"], v["claim"][-10:]): v["verdict"] for v in verdicts(study)
    }
    assert set(by_claim.values()) == {"holds"}
    assert len(by_claim) == 3  # equal steps, equal time, variance
    flat = _study(
        {"reverse-standard": [0.50, 0.60, 0.40], "reverse-path-fast": [0.52, 0.62, 0.42]},
        ratios=(0.8, 1.5),
    )
    got = [v["verdict"] for v in verdicts(flat)]
    assert got == ["inconclusive", "inconclusive", "does not hold"]


def test_reverse_ess_error_matches_its_monte_carlo_spread() -> None:
    gen = torch.Generator().manual_seed(1)
    for ess_fn, err_fn in ((reverse_ess, reverse_ess_error), (forward_ess, forward_ess_error)):
        values, errors = [], []
        for _ in range(300):
            log_w = 0.8 * torch.randn(2000, generator=gen, dtype=torch.float64)
            values.append(ess_fn(log_w))
            errors.append(err_fn(log_w))
        spread = float(np.std(values, ddof=1))
        # the spread of 300 draws is itself known to about 1/sqrt(2·299) ≈ 4%
        assert np.mean(errors) == pytest.approx(spread, rel=0.15)
    # scale invariance, as the ESS itself
    log_w = torch.randn(500, generator=gen, dtype=torch.float64)
    assert reverse_ess_error(log_w + 700) == pytest.approx(reverse_ess_error(log_w), rel=1e-12)
    assert forward_ess_error(log_w - 700) == pytest.approx(forward_ess_error(log_w), rel=1e-12)
    assert reverse_ess_error(torch.zeros(10, dtype=torch.float64)) == 0.0


def test_markdown_and_plots_without_warnings(tmp_path: Path) -> None:
    study = _study(
        {"reverse-standard": [0.50, 0.52, 0.48], "reverse-path-fast": [0.80, 0.82, 0.78]},
        ratios=(0.8, 0.01),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        files = plot(study, tmp_path)
    assert {f.name for f in files} == {"ess.png", "gradvar.png"}
    assert all(f.stat().st_size > 10_000 for f in files)
    text = markdown(study)
    assert "**holds**" in text and "reverse-path-fast" in text
    json.dumps(study)  # the record is JSON-ready


TINY_ARGS = (
    "--dim", "2", "--n-couplings", "2", "--hidden", "8", "--batch-size", "16",
    "--steps", "1500", "--eval-every", "500", "--eval-samples", "64", "--n-test-samples", "64",
    "--checkpoint-every", "500", "--grad-var-batches", "2", "--dtype", "float64",
)  # fmt: skip


def _tiny_spec() -> Any:
    from pathgrad_ref.training.study import StudySpec

    return StudySpec(
        name="tiny",
        experiment="gmm",
        preset="quick",
        estimators=("reverse-standard", "reverse-path-fast"),
        seeds=(0, 1),
        claim="a test of the machinery",
        extra_args=TINY_ARGS,
    )


def _run_in_subprocess(root: Path) -> Any:
    import subprocess

    code = (
        "import sys; sys.path.insert(0, 'tests'); from pathlib import Path; "
        "from test_study import _tiny_spec; from pathgrad_ref.training.study import run_study; "
        f"run_study(_tiny_spec(), Path('paper_runs/gmm.py'), Path({str(root)!r}), workers=1, "
        "progress=False)"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_tiny_study_end_to_end_killed_and_resumed(tmp_path: Path) -> None:
    import os
    import signal
    import time

    from pathgrad_ref.training.study import collect, run_order, run_state, run_study, summarise

    spec = _tiny_spec()
    dirs = [spec.run_dir(tmp_path, e, s) for e, s in run_order(spec)]
    assert len(set(dirs)) == 4
    # Ctrl-C the study (its process group) while its second run trains.
    proc = _run_in_subprocess(tmp_path)
    deadline = time.monotonic() + 120
    while not (dirs[1] / "metrics.jsonl").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "the second run did not start"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert b"StudyInterruptedError: stopped by SIGINT" in err, err.decode()
    assert [run_state(d) for d in dirs] == ["completed", "partial", "absent", "absent"]
    summary = json.loads((dirs[1] / "summary.json").read_text())
    assert summary["status"] == "interrupted" and (dirs[1] / "checkpoint.pt").exists()
    assert summary["steps_done"] < 1500
    first = (dirs[0] / "summary.json").stat().st_mtime_ns

    run_study(spec, ROOT / "paper_runs" / "gmm.py", tmp_path, workers=2, progress=False)
    assert [run_state(d) for d in dirs] == ["completed"] * 4
    assert (dirs[0] / "summary.json").stat().st_mtime_ns == first  # reused, not retrained

    study = summarise(spec, collect(spec, tmp_path), {"cpu": "test", "cores": 1})
    for name in spec.estimators:
        agg = study["estimators"][name]["final_ess_reverse"]
        finals = [r["final"]["ess_reverse"] for r in study["runs"] if r["estimator"] == name]
        assert agg["n"] == 2 and agg["mean"] == pytest.approx(sum(finals) / 2, rel=1e-15)
    assert all(r["steps_done"] == 1500 for r in study["runs"])
    curve = study["runs"][0]["curve"]
    assert [c["step"] for c in curve] == [0, 500, 1000, 1500]
    assert all(c["grad_var_standard"] > 0 and c["grad_var_path"] > 0 for c in curve)
    assert {v["estimator"] for v in verdicts(study)} == {"reverse-path-fast"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        files = plot(study, tmp_path)
    assert {f.name for f in files} == {"ess.png", "gradvar.png"}


def test_quick_verdict_checks_ess_observables_and_time() -> None:
    from pathgrad_ref.training.study_report import quick_verdicts

    def study(ess: float, value: float, wall: float, reliable: bool = True) -> dict[str, Any]:
        final = {"ess_reverse": ess, "ess_reverse_err": 0.01, "m": value, "m_err": 0.03}
        final["reliable"] = reliable
        return {
            "spec": {"preset": "quick"},
            "observables": {"m": "M"},
            "references": {"m": {"value": 1.0, "err": 0.04}},  # combined σ = 0.05
            "runs": [{"estimator": "e", "final": final, "wall_s": wall}],
        }

    assert quick_verdicts(study(0.5, 1.14, 100.0))[0]["verdict"] == "holds"  # 2.8σ
    assert quick_verdicts(study(0.5, 1.16, 100.0))[0]["verdict"] == "does not hold"  # 3.2σ
    assert quick_verdicts(study(0.19, 1.0, 100.0))[0]["verdict"] == "does not hold"
    assert quick_verdicts(study(0.5, 1.0, 200.0))[0]["verdict"] == "does not hold"
    assert quick_verdicts(study(0.5, 1.0, 100.0, False))[0]["verdict"] == "does not hold"
    assert "+2.8σ" in quick_verdicts(study(0.5, 1.14, 100.0))[0]["figures"]


def test_committed_results_are_rendered_from_their_json() -> None:
    """``paper_runs/RESULTS.md`` is exactly what ``study.py --render`` makes of the committed
    ``paper_runs/results/*/study.json``: no figure in it is typed by hand."""
    from script_support import load_script

    committed = (ROOT / "paper_runs" / "RESULTS.md").read_text()
    assert load_script("study").results_markdown() == committed
