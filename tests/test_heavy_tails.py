"""The heavy-tail diagnosis (``paper_runs/heavy_tails.py``): Hill's tail index against samples
with a known Pareto tail, the window summaries against numpy, a tiny run end to end, and the
committed write-up regenerated from its JSON alone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from script_support import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def heavy() -> object:
    return load_script("heavy_tails")


@pytest.mark.parametrize("alpha", [0.8, 1.5, 3.0])
def test_hill_recovers_a_pareto_tail_index(heavy: object, alpha: float) -> None:
    rng = np.random.default_rng(7)
    x = (1.0 - rng.random(50_000)) ** (-1.0 / alpha)  # P(X > x) = x^{-α}, x ≥ 1
    got = heavy.hill_alpha(x.tolist(), 5_000)  # type: ignore[attr-defined]
    # the Hill estimator's standard error is α / sqrt(k) ≈ 1.4 % of α here
    assert got == pytest.approx(alpha, rel=0.06)
    assert heavy.hill_alpha([1.0, 2.0], 5) is None  # type: ignore[attr-defined]


def test_window_summary_matches_numpy(heavy: object) -> None:
    xs = [0.5, 1.0, 4.0, 2.0, 8.0, math.nan, 3.0]
    s = heavy.window_summary(xs, clip=2.5)  # type: ignore[attr-defined]
    finite = np.array([v for v in xs if math.isfinite(v)])
    assert s["n"] == 6 and s["non_finite"] == 1
    assert s["median"] == pytest.approx(float(np.quantile(finite, 0.5)))
    assert s["q99"] == pytest.approx(float(np.quantile(finite, 0.99)))
    assert s["max_over_median"] == pytest.approx(8.0 / float(np.median(finite)))
    assert s["clipped_fraction"] == pytest.approx(3 / 6)  # 4, 8, 3 exceed 2.5


def test_tiny_run_writes_json_plot_and_write_up(heavy: object, tmp_path: Path) -> None:
    argv = ["--dim", "2", "--steps", "12", "--eval-every", "6", "--n-train", "64",
            "--n-test", "64", "--batch-size", "16", "--out", str(tmp_path)]  # fmt: skip
    assert heavy.main(argv) == 0  # type: ignore[attr-defined]
    record = json.loads((tmp_path / "heavy_tails.json").read_text())
    assert [(r["estimator"], r["clip_norm"]) for r in record["runs"]] == [
        (e, c)
        for e in heavy.ESTIMATORS
        for c in (None, 1.0)  # type: ignore[attr-defined]
    ]
    assert all(len(r["norms"]) == 12 for r in record["runs"])
    # the two forward path gradients are the same gradient: the same norms, step by step
    by = {(r["estimator"], r["clip_norm"]): r["norms"] for r in record["runs"]}
    assert by[("forward-path-fast", None)] == pytest.approx(by[("forward-path-gdreg", None)])
    assert record["provenance"]["commands"][0][:2] == ["python", "paper_runs/heavy_tails.py"]
    assert (tmp_path / "heavy_tails.png").stat().st_size > 10_000
    assert "Heavy tails" in (tmp_path / "heavy_tails.md").read_text()


def test_committed_write_up_is_rendered_from_its_json(heavy: object) -> None:
    record = json.loads(
        (ROOT / "paper_runs" / "results" / "heavy-tails" / "heavy_tails.json").read_text()
    )
    committed = (ROOT / "paper_runs" / "heavy_tails.md").read_text()
    assert heavy.write_up(record) == committed  # type: ignore[attr-defined]
