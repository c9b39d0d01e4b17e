"""The study machinery and its verdict rules: aggregation against hand-computed values,
Holm's correction and the tests against independent computations, every rule on a synthetic
study whose verdict is known in advance (holds, does not hold, inconclusive, pending re-run),
the ESS standard errors against their Monte Carlo spread, provenance and history, plots
without warnings, and a tiny study end to end (two estimators, two seeds) that is killed and
resumed."""

from __future__ import annotations

import itertools
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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "paper_runs") not in sys.path:
    sys.path.insert(0, str(ROOT / "paper_runs"))

from studies import rules  # noqa: E402
from studies.report import markdown, plot, verdict_rows  # noqa: E402
from studies.running import aggregate, quantile, summarise, with_aggregates  # noqa: E402


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


def test_final_value_and_value_at_time_average_the_last_three_evaluations() -> None:
    curve = [
        {"train_time_s": float(t), "ess_reverse": v}
        for t, v in enumerate([0.1, 0.2, 0.3, 0.5, 0.7, 0.9])
    ]
    assert rules.K == 3
    assert rules.final_value(curve, "ess_reverse") == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    # t = 3.5: the evaluations at t = 1, 2, 3
    got = rules.value_at_time(curve, "ess_reverse", 3.5, "train_time_s")
    assert got == pytest.approx((0.2 + 0.3 + 0.5) / 3)
    assert rules.value_at_time(curve, "ess_reverse", 1.5, "train_time_s") is None  # 2 < K
    assert rules.final_value(curve[:2], "ess_reverse") is None


def test_holm_matches_hand_computed_values() -> None:
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, max(0.06, 0.04·1) = 0.06
    assert rules.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert rules.holm([0.9, 0.8]) == [1.0, 1.0]  # 0.8 · 2 capped at 1, then monotone
    assert rules.holm([0.04, 0.3]) == pytest.approx([0.08, 0.3])
    assert rules.holm([]) == []


def test_mann_whitney_matches_exact_enumeration() -> None:
    """The one-sided p-value against an independent count over all C(6, 3) = 20 ways to
    split the pooled values (no ties): P(U ≥ U_observed) under exchangeability."""
    a, b = [0.3, 0.9, 0.7], [0.1, 0.5, 0.2]
    pooled = a + b

    def u(x: list[float], y: list[float]) -> int:
        return sum(xi > yi for xi in x for yi in y)

    observed = u(a, b)
    splits = list(itertools.combinations(range(6), 3))
    count = sum(
        u([pooled[i] for i in idx], [pooled[i] for i in range(6) if i not in idx]) >= observed
        for idx in splits
    )
    greater, less = rules.mann_whitney(a, b)
    assert greater == pytest.approx(count / len(splits), rel=1e-12)
    assert less == pytest.approx(rules.mann_whitney(b, a)[0], rel=1e-12)
    assert rules.mann_whitney([0.5], [0.1, 0.2]) == (1.0, 1.0)


SEEDS8 = list(range(8))


def _curve(
    final: float, seconds_per_eval: float, extra: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """Six evaluations at steps 0, 100, …, 500 and training time i · seconds_per_eval; the
    reverse ESS ramps linearly to ``final`` (so the mean of the last three is 0.8 · final)."""
    curve: list[dict[str, Any]] = [
        {
            "step": 100 * i,
            "train_time_s": i * seconds_per_eval,
            "elapsed_s": i * seconds_per_eval,
            "ess_reverse": final * i / 5,
        }
        for i in range(6)
    ]
    for rec in curve:
        rec.update(extra or {})
    return curve


def _synthetic(
    ess: dict[str, list[float]],
    *,
    seconds: dict[str, float] | None = None,
    variance: tuple[float, float] | None = None,
    forward: dict[str, dict[str, list[float]]] | None = None,
    old_clock: bool = False,
) -> dict[str, Any]:
    """A study record whose verdicts are known in advance.

    ``ess``: final reverse ESS per estimator and seed; ``seconds``: training time per
    evaluation interval per estimator (default 1); ``variance``: ``(fall, ratio)``: along the
    fast-path runs ``V_path`` falls geometrically by ``fall`` from the first evaluation to the
    last (rises where ``fall < 1``) and ``V_path/V_standard`` is ``ratio`` at every evaluation
    but the first (0.5 there), both jittered by ±1 % per seed; ``forward``: per estimator
    ``nll``, ``nll_train`` and ``ess_forward`` per seed (constant along training);
    ``old_clock``: drop ``train_time_s``."""
    seconds = seconds or {}
    runs = []
    names = list(ess) or list(forward or {})
    for e in names:
        n = len(ess.get(e) or next(iter((forward or {}).values()))["nll"])
        for seed in range(n):
            extra = {k: v[seed] for k, v in ((forward or {}).get(e) or {}).items()}
            curve = _curve(ess[e][seed] if e in ess else 0.5, seconds.get(e, 1.0), extra)
            if variance is not None and e.endswith("path-fast"):
                jitter = 1 + 0.01 * (seed - (n - 1) / 2)
                fall, ratio = variance[0] * jitter, variance[1] * jitter
                for i, rec in enumerate(curve):
                    v = fall ** (-i / (len(curve) - 1))
                    rec.update(grad_var_path=v, grad_var_standard=v / (ratio if i else 0.5))
            if old_clock:
                for rec in curve:
                    del rec["train_time_s"]
            runs.append(
                {"estimator": e, "seed": seed, "curve": curve, "final": curve[-1], "wall_s": 1.0}
            )
    n_seeds = max(r["seed"] for r in runs) + 1
    spec = {
        "name": "synthetic",
        "experiment": "gmm",
        "preset": "study",
        "estimators": names,
        "seeds": list(range(n_seeds)),
        "claim": "a test",
        "gpu_command": "",
    }
    record = {"spec": spec, "observables": {}, "references": {}, "runs": runs, "history": []}
    return with_aggregates(record)


def _verdicts(study: dict[str, Any]) -> dict[str, str]:
    return {c.number: c.verdict for c in rules.decide(study)}


STD8 = [0.50, 0.51, 0.52, 0.53, 0.54, 0.55, 0.56, 0.57]


def _shift(xs: list[float], d: float) -> list[float]:
    return [x + d for x in xs]


def test_reverse_study_that_holds() -> None:
    study = _synthetic(
        {"reverse-standard": STD8, "reverse-path-fast": _shift(STD8, 0.3)},
        variance=(10.0, 0.01),
    )
    assert _verdicts(study) == {"1a": "holds", "1b": "holds", "2": "holds"}
    one_a = rules.decide(study)[0]
    # 8 against 8, perfectly separated: the exact p-value is 1 / C(16, 8)
    assert one_a.p_for == pytest.approx(1 / math.comb(16, 8), rel=1e-9)
    assert one_a.values["difference"] == pytest.approx(0.8 * 0.3, rel=1e-9)
    lo, hi = one_a.values["ci"]
    assert lo <= 0.24 <= hi


def test_reverse_study_that_does_not_hold() -> None:
    study = _synthetic(
        {"reverse-standard": STD8, "reverse-path-fast": _shift(STD8, -0.3)},
        variance=(10.0, 0.01),
    )
    # the path runs end at reverse ESS 0.16-0.22: they do not approach p, so claim 2 is
    # outside its premise whatever its variances do
    assert _verdicts(study) == {
        "1a": "does not hold",
        "1b": "does not hold",
        "2": "outside its premise",
    }


def test_reverse_study_that_is_inconclusive() -> None:
    # the same values up to a shift smaller than their spread (both high enough for the
    # path runs to approach p: claim 2 is inside its premise)
    study = _synthetic(
        {"reverse-standard": _shift(STD8, 0.2), "reverse-path-fast": _shift(STD8, 0.205)},
        variance=(10.0, 0.01),
    )
    assert _verdicts(study) == {"1a": "inconclusive", "1b": "inconclusive", "2": "holds"}


def test_holm_turns_a_nominally_significant_claim_inconclusive() -> None:
    # a shift of three spacings of 8 evenly spaced values: one-sided p ≈ 0.02 < 0.05 for 1a
    # and 1b; the variance claim has p = 1 (its path variance rises as q approaches p, and
    # ends above the standard one's), so Holm multiplies the two equal p-values by 3 and 2
    # and keeps the larger: ≈ 0.06 > 0.05.
    study = _synthetic(
        {"reverse-standard": _shift(STD8, 0.2), "reverse-path-fast": _shift(STD8, 0.23)},
        variance=(0.5, 2.0),
    )
    cs = {c.number: c for c in rules.decide(study)}
    assert cs["1a"].p_for < rules.ALPHA < cs["1a"].p_for_holm
    assert cs["1a"].verdict == cs["1b"].verdict == "inconclusive"


def test_equal_time_compares_at_the_cheaper_estimators_budget() -> None:
    """The path estimator is better per step but twice as slow: at the standard one's total
    training time (t* = 5) it has done two of its five intervals, so at equal time it is
    behind: 1a holds, 1b does not."""
    study = _synthetic(
        {"reverse-standard": STD8, "reverse-path-fast": _shift(STD8, 0.3)},
        seconds={"reverse-standard": 1.0, "reverse-path-fast": 2.0},
    )
    assert rules.equal_time(study) == 5.0
    # path at t ≤ 5: evaluations 0, 1, 2 → mean (0 + 1 + 2)/15 of its final ESS
    fast = rules.per_seed(
        study,
        "reverse-path-fast",
        lambda c: rules.value_at_time(c, "ess_reverse", 5.0, "train_time_s"),
    )
    assert fast == pytest.approx([(x + 0.3) * 3 / 15 for x in STD8])
    assert _verdicts(study) == {"1a": "holds", "1b": "does not hold"}


def test_old_clock_and_too_few_seeds_give_no_verdict() -> None:
    old = _synthetic(
        {"reverse-standard": STD8, "reverse-path-fast": _shift(STD8, 0.3)}, old_clock=True
    )
    assert rules.time_key(old) == "elapsed_s"
    assert _verdicts(old) == {"1a": "holds", "1b": "pending re-run"}
    note = next(c.note for c in rules.decide(old) if c.number == "1b")
    assert "old clock" in note and "holds" in note
    few = _synthetic({"reverse-standard": STD8[:4], "reverse-path-fast": _shift(STD8[:4], 0.3)})
    assert _verdicts(few) == {"1a": "pending re-run", "1b": "pending re-run"}


HIGH = _shift(STD8, 0.3)  # path runs that end at reverse ESS 0.64-0.70: they approach p


def test_variance_claim_as_the_paper_makes_it() -> None:
    """Claim 2: V_path falls as q approaches p (Spearman ρ with 1 − ESS along each run, > 0
    over seeds) and ends below V_standard (last-K means). A path variance that falls on every
    seed gives ρ = 1 and the exact signed-rank p-value 2^-8; one that rises as q approaches p
    does not hold, whatever its ratio; one that falls but ends above the standard one's does
    not hold either."""
    study = _synthetic({"reverse-standard": STD8, "reverse-path-fast": HIGH}, variance=(10, 0.05))
    assert _verdicts(study)["2"] == "holds"
    c = next(c for c in rules.decide(study) if c.number == "2")
    assert c.p_for == pytest.approx(2**-8, rel=1e-12)
    # ρ per seed against an independent computation on the curves
    from scipy.stats import spearmanr

    for run, got in zip(
        (r for r in study["runs"] if r["estimator"] == "reverse-path-fast"),
        c.values["runs"],
        strict=True,
    ):
        v = [rec["grad_var_path"] for rec in run["curve"]]
        d = [1 - rec["ess_reverse"] for rec in run["curve"]]
        assert got["rho"] == pytest.approx(spearmanr(v, d).statistic, abs=1e-12)
        assert got["rho"] == pytest.approx(1.0)
    jitter = 1 + 0.01 * (np.arange(8) - 3.5)
    assert c.values["ratio"] == pytest.approx(0.05 * np.exp(np.mean(np.log(jitter))), rel=1e-12)
    assert "path 1 →" in c.figures and "standard 2 →" in c.figures  # both variances shown
    rises = _synthetic({"reverse-standard": STD8, "reverse-path-fast": HIGH}, variance=(0.5, 0.05))
    assert _verdicts(rises)["2"] == "does not hold"
    big = _synthetic({"reverse-standard": STD8, "reverse-path-fast": HIGH}, variance=(10, 2.0))
    assert _verdicts(big)["2"] == "does not hold"
    # falls, ends at the standard one's (the ratio jittered around 1): inconclusive
    even = _synthetic({"reverse-standard": STD8, "reverse-path-fast": HIGH}, variance=(10, 1.0))
    assert _verdicts(even)["2"] == "inconclusive"


def test_variance_ratio_is_the_mean_of_the_last_k_evaluations() -> None:
    """The per-seed ratio follows the docstring: the mean of V_path over the last K
    evaluations over that of V_standard, not the last evaluation alone."""
    study = _synthetic({"reverse-standard": STD8, "reverse-path-fast": HIGH}, variance=(10, 0.05))
    for run in study["runs"]:
        if run["estimator"] == "reverse-path-fast":
            run["curve"][-1]["grad_var_standard"] *= 100  # one outlying last evaluation
    [first, *_] = rules.variance_runs(study, "reverse-path-fast")
    curve = next(r["curve"] for r in study["runs"] if r["estimator"] == "reverse-path-fast")
    path = np.mean([r["grad_var_path"] for r in curve[-3:]])
    standard = np.mean([r["grad_var_standard"] for r in curve[-3:]])
    assert first["ratio"] == pytest.approx(path / standard, rel=1e-12)
    assert first["path_first"] == curve[0]["grad_var_path"]


def test_variance_claim_outside_its_premise() -> None:
    """Runs that flatten far from p (final reverse ESS below NEAR_ESS) or move away from it
    say nothing about q → p: the claim reads outside its premise, and says why."""
    low = _synthetic(
        {"reverse-standard": STD8, "reverse-path-fast": _shift(STD8, -0.2)}, variance=(10, 0.05)
    )
    c = next(c for c in rules.decide(low) if c.number == "2")
    assert c.verdict == rules.OUTSIDE and c.n_seeds == 0
    assert "0 of 8 runs approach p" in c.premise and "reverse ESS 0.24–0.296" in c.premise
    assert "seed 0: final reverse ESS 0.24 < 0.5" in c.figures
    # a run that ends above NEAR_ESS but below where it started moved away from p
    away = _synthetic({"reverse-standard": STD8, "reverse-path-fast": HIGH}, variance=(10, 0.05))
    for run in away["runs"]:
        if run["estimator"] == "reverse-path-fast" and run["seed"] < 2:
            run["curve"][0]["ess_reverse"] = 0.99
    c = next(c for c in rules.decide(away) if c.number == "2")
    assert c.verdict == rules.OUTSIDE and c.values["inside"] == [2, 3, 4, 5, 6, 7]
    assert "reverse ESS fell from 0.99" in c.values["outside"][0]
    assert "ESS fell along seeds 0, 1" in c.premise


def test_the_replaced_rules_give_what_they_gave() -> None:
    """The rules kept in studies/replaced.py reproduce the story of the GMM study on a
    synthetic record: V_path falls 1.5×, the ratio ends at 0.05 (0.5 at the first
    evaluation). The first rules (ratio below 0.1 and half its first value) hold; c80e2c0's
    (a 4× fall) do not; the current rules (rank trend, ratio < 1) hold."""
    from studies import replaced

    study = _synthetic({"reverse-standard": STD8, "reverse-path-fast": HIGH}, variance=(1.5, 0.05))
    [row] = [r for r in replaced.by_rule_set(study) if r["claim"] == "2"]
    assert (row["first"], row["c80e2c0"], row["current"]) == ("holds", "does not hold", "holds")
    rows = {r["claim"]: r for r in replaced.by_rule_set(_forward(30.0, 1.0, 0.0, 1e-12))}
    assert rows["4"]["first"] == replaced.NOT_A_CLAIM
    assert rows["4"]["c80e2c0"] == "holds" and rows["4"]["current"] == rules.OUTSIDE
    assert rows["3"]["first"] == rows["3"]["current"] == "holds"


def _forward(ml_gap: float, path_gap: float, ml_ess: float, path_ess: float) -> dict[str, Any]:
    def runs(gap: float, ess: float) -> dict[str, list[float]]:
        train = [10.0 + 0.1 * s for s in SEEDS8]
        return {
            "nll_train": train,
            "nll": [t + gap + 0.05 * s for s, t in enumerate(train)],
            "ess_forward": [ess * (1 + 0.01 * s) for s in SEEDS8],
        }

    return _synthetic(
        {},
        forward={
            "forward-standard": runs(ml_gap, ml_ess),
            "forward-path-fast": runs(path_gap, path_ess),
        },
    )


def test_overfitting_and_forward_ess_rules() -> None:
    assert _verdicts(_forward(30.0, 1.0, 0.1, 0.5)) == {"3": "holds", "4": "holds"}
    assert _verdicts(_forward(1.0, 30.0, 0.5, 0.1)) == {"3": "does not hold", "4": "does not hold"}
    # identical training curves: nothing resolved
    assert _verdicts(_forward(5.0, 5.0, 0.3, 0.3)) == {"3": "inconclusive", "4": "inconclusive"}
    # a larger gap for maximum likelihood but a held-out NLL that is not larger cannot hold:
    # the held-out NLL here is equal, so the claim is inconclusive
    study = _forward(5.0, 5.0, 0.3, 0.3)
    for run in study["runs"]:
        if run["estimator"] == "forward-standard":
            for rec in run["curve"]:
                rec["nll_train"] -= 20.0
    assert _verdicts(study)["3"] == "inconclusive"


def test_forward_ess_claim_needs_a_measurable_forward_ess() -> None:
    """Claim 4's premise: on a seed where both flows end below the reliability threshold of
    pathgrad_ref/evaluation.py (1e-12 against 0, as in gmm-forward) the forward ESS measures
    nothing; with fewer than MIN_SEEDS seeds inside, the claim is outside its premise. One arm
    above the threshold is enough: a flow that covers p against one that misses part of it."""
    from pathgrad_ref.evaluation import RELIABLE_FORWARD_ESS

    assert rules.RELIABLE_FORWARD_ESS == RELIABLE_FORWARD_ESS
    tiny = _forward(30.0, 1.0, 0.0, 1e-12)
    c = next(c for c in rules.decide(tiny) if c.number == "4")
    assert c.verdict == rules.OUTSIDE and c.tests_verdict == "inconclusive"
    assert "0 of 8 seeds" in c.premise and "both flows miss part of p" in c.premise
    assert "seed 0: forward ESS 1.00e-12 (forward-path-fast) and 0 (forward-standard)" in (
        c.figures
    )
    covers = _forward(30.0, 1.0, 0.0, 0.5)
    assert _verdicts(covers)["4"] == "holds"
    # two seeds where neither covers p: listed, left out, and 6 < 8 seeds inside
    for run in covers["runs"]:
        if run["seed"] in (3, 6):
            for rec in run["curve"]:
                rec["ess_forward"] = 1e-9 if run["estimator"] == "forward-path-fast" else 0.0
    c = next(c for c in rules.decide(covers) if c.number == "4")
    assert c.values["inside"] == [0, 1, 2, 4, 5, 7] and c.n_seeds == 6
    assert c.verdict == rules.OUTSIDE and c.tests_verdict == "holds"


def _three_moderate_studies() -> list[dict[str, Any]]:
    """Three reverse studies whose claims each hold within their study (1a and 1b at
    p ≈ 0.02, claim 2 at 2^-8; Holm ×2 → 0.04) but not across all nine claims."""
    return [
        _synthetic(
            {"reverse-standard": _shift(STD8, 0.2), "reverse-path-fast": _shift(STD8, 0.23)},
            variance=(10, 0.05),
        )
        for _ in range(3)
    ]


def test_holm_across_all_claims_is_one_family() -> None:
    studies = _three_moderate_studies()
    decided = rules.decide_all(studies)
    flat = [c for cs in decided for c in cs]
    assert len(flat) == 9
    assert [c.p_for_all for c in flat] == pytest.approx(rules.holm([c.p_for for c in flat]))
    one_a = decided[0][0]
    assert one_a.verdict == "holds" and one_a.p_for_holm < rules.ALPHA
    # six p ≈ 0.02 behind three of 2^-8: the first of them is multiplied by 6
    assert one_a.p_for_all == pytest.approx(6 * one_a.p_for, rel=1e-9)
    assert one_a.verdict_all == "inconclusive"
    assert decided[0][2].verdict_all == "holds"  # 9 × 2^-8 < 0.05
    # a withheld verdict stays withheld in the larger family
    few = _synthetic({"reverse-standard": STD8[:4], "reverse-path-fast": _shift(STD8[:4], 0.3)})
    [[a, b]] = rules.decide_all([few])
    assert a.verdict_all == b.verdict_all == rules.PENDING


def _confirmatory(study: dict[str, Any], name: str, **prov: Any) -> dict[str, Any]:
    """``study`` as the confirmatory record of ``name``: seeds 100-107, clean provenance."""
    record = json.loads(json.dumps(study))
    for run in record["runs"]:
        run["seed"] += 100
    record["spec"].update(name=f"{name}-confirm", confirms=name, seeds=list(rules.CONFIRM_SEEDS))
    record["provenance"] = {"commit": "abc", "dirty": False, "runs_dirty": ["False"], **prov}
    return with_aggregates(record)


def test_confirmation_counts_every_claim_and_establishes_only_what_it_confirms() -> None:
    """The confirmatory family has one member per exploratory claim, fixed in advance: a claim
    without a confirmatory record counts with p = 1. Established: where the confirmatory
    verdict across all claims holds."""
    clear = _synthetic({"reverse-standard": STD8, "reverse-path-fast": HIGH}, variance=(10, 0.05))
    flat = _synthetic(
        {"reverse-standard": _shift(STD8, 0.2), "reverse-path-fast": _shift(STD8, 0.205)},
        variance=(10, 0.05),
    )
    clear["spec"]["name"], flat["spec"]["name"] = "a", "b"
    nothing = rules.confirm_all([clear, flat], {})
    assert nothing == [[None] * 3, [None] * 3]
    assert rules.status(None) == "no: not yet confirmed"
    confirmed = rules.confirm_all([clear, flat], {"a": _confirmatory(clear, "a")})
    one_a, one_b, two = confirmed[0]
    assert one_a is not None and two is not None and confirmed[1] == [None] * 3
    # six members: three confirmed, three at p = 1
    assert one_b is not None
    expected = rules.holm([one_a.p_for, one_b.p_for, two.p_for, 1.0, 1.0, 1.0])
    assert one_a.p_for_all == pytest.approx(expected[0])
    assert two.p_for_all == pytest.approx(expected[2])
    assert [rules.status(c) for c in confirmed[0]] == [rules.ESTABLISHED] * 3
    # a confirmation that does not hold establishes nothing
    against = _synthetic(
        {"reverse-standard": STD8, "reverse-path-fast": HIGH}, variance=(0.5, 0.05)
    )
    [[_, _, no]] = rules.confirm_all([clear], {"a": _confirmatory(against, "a")})
    assert no is not None and rules.status(no) == "no: the confirmation reads does not hold"


def test_a_confirmation_on_seen_seeds_or_uncommitted_rules_backs_no_verdict() -> None:
    clear = _synthetic({"reverse-standard": STD8, "reverse-path-fast": HIGH}, variance=(10, 0.05))
    clear["spec"]["name"] = "a"
    dirty = _confirmatory(clear, "a", dirty=True)
    [[c, *_]] = rules.confirm_all([clear], {"a": dirty})
    assert c is not None and c.verdict_all == rules.PENDING and "uncommitted" in c.note
    reused = _confirmatory(clear, "a")
    reused["spec"]["seeds"] = [*range(4, 12)]
    [[c, *_]] = rules.confirm_all([clear], {"a": reused})
    assert c is not None and c.verdict_all == rules.PENDING
    assert "seeds 4, 5, 6, 7 were run by the exploratory record" in c.note
    # an exploratory record is never held to these checks
    assert rules.confirmation_problems(clear, [0]) == []


def test_drop_in_estimators_are_reported_not_tested() -> None:
    study = _synthetic(
        {
            "reverse-standard": STD8,
            "reverse-path-fast": _shift(STD8, 0.3),
            "reverse-path-dropin": _shift(STD8, 0.3),
        },
        seconds={"reverse-path-dropin": 2.0},
    )
    assert {c.estimator for c in rules.decide(study)} == {"reverse-path-fast"}
    (entry,) = rules.same_trajectory(study)
    assert entry["max_abs_difference_ess_reverse"] == 0.0
    # its own cost: at t* = 5 the drop-in has done two of its five intervals
    mean = sum((x + 0.3) * 3 / 15 for x in STD8) / 8
    assert entry["ess_reverse_at_equal_time[reverse-path-dropin]"] == pytest.approx(mean)
    assert "retraces `reverse-path-fast`" in markdown(study)


FM, FWD, REV = "flow-matching", "forward-path-fast", "reverse-path-fast"
UP = [0.02 + 0.001 * s for s in SEEDS8]  # a paired gain on every seed, no ties


def _fine_tuning(
    fwd: list[float],
    rev: list[float],
    *,
    seconds: dict[str, float] | None = None,
    unreliable: tuple[int, ...] = (),
) -> dict[str, Any]:
    """A study of the arms after flow matching: continued flow matching at STD8 (the seeds'
    pretrained flows differ), each path arm at STD8 plus its per-seed difference ``fwd``,
    ``rev``; every arm's first evaluation (the pretrained flow) is reliable except on the
    seeds ``unreliable``."""
    study = _synthetic(
        {
            FM: STD8,
            FWD: [a + d for a, d in zip(STD8, fwd, strict=True)],
            REV: [a + d for a, d in zip(STD8, rev, strict=True)],
        },
        seconds=seconds,
    )
    for run in study["runs"]:
        run["curve"][0].update(reliable=run["seed"] not in unreliable, n_eff=4096.0)
    return with_aggregates(study)


def test_fine_tuning_claims_after_flow_matching() -> None:
    """Claim 5: each path arm against continued flow matching, paired by seed (a gain of 0.02
    on every seed is significant although the seeds spread over 0.07, which an unpaired test
    would not resolve), one Holm family; no variances, no claim 2."""
    down = [-d for d in UP]
    assert _verdicts(_fine_tuning(UP, UP)) == {"5a": "holds", "5b": "holds"}
    assert _verdicts(_fine_tuning(down, down)) == {"5a": "does not hold", "5b": "does not hold"}
    mixed = _fine_tuning(UP, down)
    assert _verdicts(mixed) == {"5a": "holds", "5b": "does not hold"}
    five_a = rules.decide(mixed)[0]
    assert (five_a.number, five_a.estimator) == ("5a", FWD)
    # all 8 differences positive: the exact one-sided p-value is 2^-8
    assert five_a.p_for == pytest.approx(2**-8, rel=1e-9)
    assert five_a.values["difference"] == pytest.approx(0.8 * sum(UP) / 8, rel=1e-9)
    assert "median final training time flow-matching 5 s" in five_a.figures
    assert "seed 0: 0 → 0.4, 0.416" in five_a.figures  # pretrained → continued, path
    alternating = [0.01 * (-1) ** s * (1 + 0.1 * s) for s in SEEDS8]
    assert _verdicts(_fine_tuning(alternating, alternating)) == {
        "5a": "inconclusive",
        "5b": "inconclusive",
    }


def test_fine_tuning_claims_need_equal_time_and_their_premise() -> None:
    """Arms that trained for different times (20 % apart) back no verdict; seeds whose
    pretrained flow is unreliable are listed and left out, and with fewer than MIN_SEEDS
    seeds inside the premise the claim is outside it, whatever its tests say."""
    slow = _fine_tuning(UP, UP, seconds={FWD: 1.2})
    assert _verdicts(slow) == {"5a": "pending re-run", "5b": "pending re-run"}
    assert "differ by 20 % > 5 %" in rules.decide(slow)[0].note
    out = _fine_tuning(UP, UP, unreliable=(2, 5))
    assert rules.premise_seeds(out)[0] == [0, 1, 3, 4, 6, 7]
    claims = rules.decide(out)
    assert {c.verdict for c in claims} == {rules.OUTSIDE}
    assert claims[0].n_seeds == 6 and "6 of 8 seeds" in claims[0].note
    assert "tests on the seeds inside give holds" in claims[0].note
    assert "seed 2: pretrained flow unreliable" in claims[0].figures
    assert [r["verdict"] for r in verdict_rows(out)] == [rules.OUTSIDE] * 2


def test_time_limited_runs_are_finished_runs(tmp_path: Path) -> None:
    """A run that used up its training-time budget is finished; one stopped by a signal is
    not. A study of a pretraining preset shares each seed's stage 1 in the study's folder (a
    fresh-cache study: in each run's own)."""
    from studies.running import StudySpec, run_command, run_state

    def state(summary: dict[str, Any]) -> str:
        run_dir = tmp_path / str(len(list(tmp_path.iterdir())))
        run_dir.mkdir()
        (run_dir / "summary.json").write_text(json.dumps(summary))
        return run_state(run_dir)

    assert state({"status": "stopped", "stop_reason": "time_limit"}) == "completed"
    assert state({"status": "interrupted", "stop_reason": "SIGINT"}) == "partial"
    spec = StudySpec("s", "cnf", "study", (FM,), (0,), "c", pretrains=True)
    run_dir = spec.run_dir(tmp_path / "root", FM, 0)
    cmd = run_command(spec, Path("paper_runs/cnf.py"), run_dir, FM, 0)
    assert cmd[cmd.index("--pretrain-dir") + 1] == str(tmp_path / "root" / "pretrained")
    fresh = StudySpec("s", "cnf", "quick", (FM,), (0,), "c", pretrains=True, fresh_cache=True)
    cmd = run_command(fresh, Path("paper_runs/cnf.py"), run_dir, FM, 0)
    assert cmd[cmd.index("--pretrain-dir") + 1] == str(run_dir / "pretrained")
    plain = StudySpec("s", "gmm", "study", (FM,), (0,), "c")
    assert "--pretrain-dir" not in run_command(plain, Path("gmm.py"), run_dir, FM, 0)


def test_markdown_shows_the_verdicts_the_rules_give() -> None:
    study = _synthetic(
        {"reverse-standard": STD8, "reverse-path-fast": _shift(STD8, 0.3)},
        seconds={"reverse-standard": 1.0, "reverse-path-fast": 2.0},
        variance=(0.5, 2.0),
    )
    text = markdown(study)
    rows = {r["claim"][:2]: r["verdict"] for r in verdict_rows(study)}
    assert rows == {"1a": "holds", "1b": "does not hold", "2.": "does not hold"}
    assert "at equal steps — `reverse-path-fast`: **holds**" in text
    assert "at equal training time — `reverse-path-fast`: **does not hold**" in text


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
    study = _synthetic(
        {"reverse-standard": STD8, "reverse-path-fast": _shift(STD8, 0.3)}, variance=(10.0, 0.01)
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
    from studies.running import StudySpec

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
        "import sys; sys.path[:0] = ['tests', 'paper_runs']; from pathlib import Path; "
        "from test_study import _tiny_spec; from studies.running import run_study; "
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

    from studies.running import collect, run_order, run_state, run_study, study_provenance

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

    runs = collect(spec, tmp_path)
    study = summarise(spec, runs, study_provenance(spec, runs, ROOT))
    assert all(r["steps_done"] == 1500 for r in study["runs"])
    assert study["clock"] == "train_time_s"  # the training steps' own time
    curve = study["runs"][0]["curve"]
    assert [c["step"] for c in curve] == [0, 500, 1000, 1500]
    assert all(c["grad_var_standard"] > 0 and c["grad_var_path"] > 0 for c in curve)
    # provenance: the commit the runs ran at, their exact commands, versions, date
    prov = study["provenance"]
    assert prov["commit"] and prov["torch"] == torch.__version__ and prov["date"]
    assert prov["run_commits"] == [prov["commit"]]
    assert len(prov["run_commands"]) == 5  # four runs, the interrupted one invoked twice
    assert all("--seed" in c for c in prov["run_commands"])
    # the verdicts' values, recomputed independently from the per-seed curves: two seeds
    # are fewer than the rules ask for, so no verdict, whatever the tests say
    finals = {
        e: [float(np.mean([c["ess_reverse"] for c in r["curve"][-3:]])) for r in study["runs"]
            if r["estimator"] == e]
        for e in spec.estimators
    }  # fmt: skip
    for name in spec.estimators:
        agg = study["estimators"][name]["final_ess_reverse"]
        assert agg["n"] == 2 and agg["mean"] == pytest.approx(np.mean(finals[name]), rel=1e-12)
    from scipy.stats import mannwhitneyu

    claims = {c.number: c for c in rules.decide(study)}
    assert set(claims) == {"1a", "1b", "2"}
    expected = mannwhitneyu(
        finals["reverse-path-fast"], finals["reverse-standard"], alternative="greater"
    ).pvalue
    assert claims["1a"].p_for == pytest.approx(expected, rel=1e-12)
    assert all(c.verdict == "pending re-run" for c in claims.values())
    assert all("2 seeds < 8" in c.note for c in claims.values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        files = plot(study, tmp_path)
    assert {f.name for f in files} == {"ess.png", "gradvar.png"}


def test_quick_verdict_checks_ess_observables_and_time() -> None:
    quick_verdicts = rules.quick_targets

    def study(ess: float, value: float, wall: float, reliable: bool = True) -> dict[str, Any]:
        final = {"ess_reverse": ess, "ess_reverse_err": 0.01, "m": value, "m_err": 0.03}
        final["reliable"] = reliable
        return {
            "spec": {"preset": "quick", "fresh_cache": True},
            "observables": {"m": "M"},
            "references": {"m": {"value": 1.0, "err": 0.04}},  # combined σ = 0.05
            "runs": [{"estimator": "e", "final": final, "wall_s": wall}],
        }

    assert quick_verdicts(study(0.5, 1.14, 100.0))[0]["verdict"] == "holds"  # 2.8σ
    assert quick_verdicts(study(0.5, 1.16, 100.0))[0]["verdict"] == "does not hold"  # 3.2σ
    assert quick_verdicts(study(0.19, 1.0, 100.0))[0]["verdict"] == "does not hold"
    assert quick_verdicts(study(0.5, 1.0, 121.0))[0]["verdict"] == "does not hold"
    assert quick_verdicts(study(0.5, 1.0, 100.0, False))[0]["verdict"] == "does not hold"
    assert "+2.8σ" in quick_verdicts(study(0.5, 1.14, 100.0))[0]["figures"]
    # a record that does not say its cache was fresh cannot back the time target
    stale = study(0.5, 1.0, 100.0)
    stale["spec"]["fresh_cache"] = False
    assert quick_verdicts(stale)[0]["verdict"] == "pending re-run"
    stale["runs"][0]["wall_s"] = 200.0  # too slow even without the target samples
    assert quick_verdicts(stale)[0]["verdict"] == "does not hold"


def test_committed_results_are_rendered_from_their_json() -> None:
    """``paper_runs/RESULTS.md`` is exactly what ``study.py --render`` makes of the committed
    ``paper_runs/results/*/study.json``: no figure in it is typed by hand."""
    from script_support import load_script

    committed = (ROOT / "paper_runs" / "RESULTS.md").read_text()
    assert load_script("study").results_markdown() == committed


def _committed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: dict[str, Any]
) -> tuple[Any, Any, Path]:
    """``paper_runs/study.py`` loaded with ``old`` as the committed ``gmm-reverse`` record in
    ``tmp_path/results`` and, as the runs a study would collect, an 8-seed record where the path
    gradient is clearly better. Returns the module, the study's spec and the record's path."""
    from script_support import load_script

    study_py = load_script("study")
    spec = study_py.STUDIES["gmm-reverse"]
    results = tmp_path / "results"
    (results / spec.name).mkdir(parents=True)
    (results / spec.name / "study.json").write_text(json.dumps(old))
    monkeypatch.setattr(study_py, "RESULTS_DIR", results)
    monkeypatch.setattr(study_py, "render_results", lambda: tmp_path / "RESULTS.md")
    synthetic = _synthetic({"reverse-standard": STD8, "reverse-path-fast": _shift(STD8, 0.3)})
    monkeypatch.setattr(
        study_py, "collect", lambda spec, root: [
            {"estimator": r["estimator"], "seed": r["seed"], "curve": r["curve"],
             "summary": {"status": "completed", "final": r["final"]}, "invocations": []}
            for r in synthetic["runs"]
        ],
    )  # fmt: skip
    (tmp_path / "run").mkdir()
    return study_py, spec, results / spec.name / "study.json"


def test_replacing_a_committed_study_keeps_its_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``finish(..., commit=True)`` over a committed record asks why, then keeps the old
    record's date and commit in the new one's history."""
    old = {"provenance": {"date": "2026-01-01T00:00:00Z", "commit": "abc"}, "history": []}
    study_py, spec, record = _committed_over(tmp_path, monkeypatch, old)
    with pytest.raises(study_py.StudyError, match="--why"):
        study_py.finish(spec, tmp_path / "run", commit=True, why=None)
    study_py.finish(spec, tmp_path / "run", commit=True, why="the new clock")
    new = json.loads(record.read_text())
    assert new["history"] == [
        {"date": "2026-01-01T00:00:00Z", "commit": "abc", "why": "the new clock"}
    ]
    assert new["provenance"]["commands"] == [["python", "paper_runs/study.py", "gmm-reverse"]]


def test_a_replacing_record_says_which_verdicts_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replaced record's verdicts, under the rules in force, go into the new record's
    history, and its provenance lines set them against the new verdicts: a known answer,
    4 seeds of equal ESS (pending re-run; the tests alone: inconclusive) replaced by 8 seeds
    where the path gradient is clearly better (holds)."""
    from studies.report import provenance_lines

    old = _synthetic({"reverse-standard": STD8[:4], "reverse-path-fast": STD8[:4]})
    old["provenance"] = {"date": "2026-01-01T00:00:00Z", "commit": "abc"}
    study_py, spec, record = _committed_over(tmp_path, monkeypatch, old)
    study_py.finish(spec, tmp_path / "run", commit=True, why="8 seeds")
    new = json.loads(record.read_text())
    [entry] = new["history"]
    one_a = next(v for v in entry["verdicts"] if v["claim"] == "1a")
    assert one_a == {
        "claim": "1a",
        "estimator": "reverse-path-fast",
        "verdict": "pending re-run",
        "tests": "inconclusive",
    }
    text = "\n".join(provenance_lines(study_py.with_aggregates(new)))
    assert "1a (`reverse-path-fast`): pending re-run (tests alone: inconclusive) → holds" in text


def test_committed_records_carry_provenance_and_history() -> None:
    for path in sorted((ROOT / "paper_runs" / "results").glob("*/study.json")):
        record = json.loads(path.read_text())
        prov = record["provenance"]
        assert {"commit", "dirty", "torch", "python", "hardware", "date", "commands"} <= set(prov)
        assert isinstance(record["history"], list), path


def test_cost_claim_figures_come_from_the_benchmarks() -> None:
    from script_support import load_script

    text = load_script("study").cost_claim()
    assert text.startswith("**Cost (C)**") and "not claim 4 of the verdict table" in text
    table = json.loads((ROOT / "benchmarks" / "results" / "table2-cpu.json").read_text())
    u1 = [
        e["factors"]["reverse-path-fast / reverse-standard"]["median"]
        for e in table["entries"].values()
        if e["setup"] == "u1" and not e.get("compiled")
    ]
    assert f"{min(u1):.2f}–{max(u1):.2f}× for U(1)" in text
    assert "4/3" not in text


def test_cost_claim_names_the_measured_commit_or_says_it_is_owed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cost (C) names the commit stamped in every entry of the benchmark record, and says a
    re-measurement is owed where an entry has none or was measured before a change to its
    setup's code (``COST_CHANGES``)."""
    from script_support import load_script

    study = load_script("study")
    fast, dropin = "reverse-path-fast / reverse-standard", "reverse-path-dropin / reverse-path-fast"

    def entry(setup: str, when: str, commit: str | None) -> dict[str, object]:
        e: dict[str, object] = {
            "setup": setup,
            "factors": {fast: {"median": 1.3}, dropin: {"median": 2.0}},
            "provenance": {"time_utc": when, "torch": "2.13.0", "load_average_1_5_15": [0.5, 1, 1]},
        }
        if commit:
            e["code"] = {"commit": commit}
        return e

    def claim(*entries: dict[str, object]) -> str:
        path = tmp_path / "table2-cpu.json"
        path.write_text(json.dumps({"entries": {str(i): e for i, e in enumerate(entries)}}))
        monkeypatch.setattr(study, "BENCHMARKS", path)
        return str(study.cost_claim())

    late = "2026-12-03T20:00:00Z"
    text = claim(
        entry("gmm", late, "abc1234"), entry("phi4", late, "abc1234"), entry("u1", late, "abc1234")
    )
    assert "code commit `abc1234`" in text and "owed" not in text and "0.50–0.50" not in text
    text = claim(
        entry("gmm", late, "abc1234"), entry("phi4", late, None), entry("u1", late, "abc1234")
    )
    assert "1 entries without a commit" in text and "is owed" in text
    text = claim(entry("gmm", late, None), entry("phi4", late, None), entry("u1", late, None))
    assert "no code commit recorded" in text and "is owed" in text
    text = claim(entry("gmm", late, "abc1234"), entry("u1", "2026-11-24T00:00:00Z", "abc1234"))
    assert "u1 rows measured before a469adc" in text and "is owed" in text
    text = claim(entry("gmm", late, "abc1234+dirty"), entry("u1", late, "abc1234+dirty"))
    assert "+dirty" in text and "is owed" in text


def test_expected_time_counts_only_the_runs_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per estimator: the median wall time of a committed run × the runs still to train, over
    the workers; an estimate for a study without a record comes from the one it names."""
    from script_support import load_script

    study_py = load_script("study")
    results = tmp_path / "results"
    (results / "gmm-forward").mkdir(parents=True)
    walls = {
        "forward-standard": [10, 20, 90],
        "forward-path-fast": [30],
        "forward-path-gdreg": [40],
    }
    record = {"runs": [{"estimator": e, "wall_s": w} for e, ws in walls.items() for w in ws]}
    (results / "gmm-forward" / "study.json").write_text(json.dumps(record))
    monkeypatch.setattr(study_py, "RESULTS_DIR", results)
    spec = study_py.STUDIES["gmm-forward"]
    root = tmp_path / "runs"
    assert study_py.expected_seconds(spec, root, 2) == pytest.approx((20 + 30 + 40) * 8 / 2)
    done = spec.run_dir(root, "forward-path-fast", 0)
    done.mkdir(parents=True)
    (done / "summary.json").write_text(json.dumps({"status": "completed"}))
    assert study_py.expected_seconds(spec, root, 2) == pytest.approx((20 * 8 + 30 * 7 + 40 * 8) / 2)
    factor = study_py.ESTIMATE_FROM["gmm-forward-10k"][1]
    ten_k = study_py.STUDIES["gmm-forward-10k"]
    other = tmp_path / "other"
    assert study_py.expected_seconds(ten_k, other, 1) == pytest.approx((20 + 30 + 40) * 8 * factor)
    assert study_py.expected_seconds(study_py.STUDIES["u1-reverse"], other, 1) is None


def test_confirm_runs_each_claim_study_on_fresh_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--confirm``: every claim study (no preset check) on CONFIRM_SEEDS, disjoint from the
    exploratory seeds, in its own folder and record; ``--dry-run`` prints the plan and its
    time from the exploratory records; a checkout with uncommitted changes is refused before
    anything runs."""
    from script_support import load_script

    study_py = load_script("study")
    spec = study_py.confirm_spec(study_py.STUDIES["gmm-forward"])
    assert spec.name == "gmm-forward-confirm" and spec.confirms == "gmm-forward"
    assert spec.seeds == rules.CONFIRM_SEEDS and not set(spec.seeds) & set(study_py.SEEDS)
    assert spec.estimators == study_py.STUDIES["gmm-forward"].estimators
    assert spec.preset == study_py.STUDIES["gmm-forward"].preset
    assert not any(n.endswith("-quick") for n in study_py.CLAIM_STUDIES)
    # the expected time comes from the exploratory record's wall times
    results = tmp_path / "results"
    (results / "gmm-forward").mkdir(parents=True)
    walls = {"forward-standard": 10, "forward-path-fast": 30, "forward-path-gdreg": 40}
    record = {"runs": [{"estimator": e, "wall_s": w} for e, w in walls.items()]}
    (results / "gmm-forward" / "study.json").write_text(json.dumps(record))
    monkeypatch.setattr(study_py, "RESULTS_DIR", results)
    assert study_py.expected_seconds(spec, tmp_path / "runs", 2) == pytest.approx(80 * 8 / 2)
    out = str(tmp_path / "runs")
    assert study_py.main(["gmm-forward", "--confirm", "--dry-run", "--out", out]) == 0
    text = capsys.readouterr().out
    assert "confirmatory plan: 1 claim study on seeds 100-107, 24 runs" in text
    assert "gmm-forward-confirm: expected 5.3 min" in text
    with pytest.raises(SystemExit):
        study_py.main(["gmm-quick", "--confirm", "--dry-run"])
    assert "checks a preset, not a claim" in capsys.readouterr().err

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a confirmatory study ran on uncommitted changes")

    monkeypatch.setattr(study_py, "run_study", never)
    monkeypatch.setattr(study_py, "git_dirty", lambda folder: True)
    with pytest.raises(SystemExit):
        study_py.main(["gmm-forward", "--confirm", "--out", out])
    assert "commit the rules first" in capsys.readouterr().err


def test_results_render_exploratory_and_confirmatory_side_by_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RESULTS.md sets each claim's exploratory verdict beside its confirmatory one: "not yet
    run" until the record exists, then its verdict and "established" where it holds."""
    from script_support import load_script

    study_py = load_script("study")
    results = tmp_path / "results"
    monkeypatch.setattr(study_py, "RESULTS_DIR", results)
    clear = _synthetic({"reverse-standard": STD8, "reverse-path-fast": HIGH}, variance=(10, 0.05))
    clear["spec"]["name"] = "gmm-reverse"
    clear["provenance"] = {"commit": "abc", "dirty": False, "date": "2026-01-01T00:00:00Z"}
    (results / "gmm-reverse").mkdir(parents=True)
    (results / "gmm-reverse" / "study.json").write_text(json.dumps(clear))
    text = study_py.results_markdown()
    rows = [line for line in text.splitlines() if line.startswith("| 1a. ")]
    assert len(rows) == 1 and "| not yet run | no: not yet confirmed |" in rows[0]
    assert "0 of 3 claims have a confirmatory verdict" in text
    assert "across all 3 claims" in text
    for h in rules.RULE_HISTORY:
        assert f"**{h.commit}** ({h.date})" in text
    assert "written after every committed record had been read" in text
    assert "| `gmm-reverse` | 2 | holds | holds | holds | no |" in text
    (results / "gmm-reverse-confirm").mkdir()
    confirm = _confirmatory(clear, "gmm-reverse")
    (results / "gmm-reverse-confirm" / "study.json").write_text(json.dumps(confirm))
    text = study_py.results_markdown()
    rows = [line for line in text.splitlines() if line.startswith("| 1a. ")]
    assert "| **holds** (Holm" in rows[0] and rows[0].count("| established |") == 1
    assert "3 of 3 claims have a confirmatory verdict" in text
    assert "## Study `gmm-reverse-confirm`" in text
    assert "`python paper_runs/study.py gmm-reverse --confirm`" in text


def test_committed_results_disclose_the_rules_and_name_the_cost_claim_apart() -> None:
    """The committed RESULTS.md says when each rule was set and what it flipped, gives Holm
    across all claims and the confirmatory column, and calls the cost claim Cost (C)."""
    text = (ROOT / "paper_runs" / "RESULTS.md").read_text()
    assert "## How the rules came about" in text
    for h in rules.RULE_HISTORY:
        assert f"**{h.commit}** ({h.date})" in text
    assert "41300bc" in text and "true of seeds 4–7 only" in text
    assert "Holm across all" in text and "confirmatory, seeds 100–107" in text
    assert "claims have a confirmatory verdict" in text
    assert "**Cost (C)**" in text and "claim 4, measured" not in text
    table = json.loads((ROOT / "benchmarks" / "results" / "table2-cpu.json").read_text())
    stamps = {(e.get("code") or {}).get("commit") for e in table["entries"].values()}
    if None in stamps or "unknown" in stamps:
        assert "no code commit recorded" in text or "without a commit" in text
    else:
        assert all(f"`{c}`" in text for c in stamps) and "no code commit recorded" not in text


def test_dirty_flag_ignores_the_study_records_only(tmp_path: Path) -> None:
    """A study committed before the next one runs leaves the next one's code clean; any other
    tracked change makes it dirty. Checked on a scratch repository."""
    import subprocess

    from studies.provenance import git_dirty

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    (tmp_path / "paper_runs" / "results" / "s").mkdir(parents=True)
    files = ["paper_runs/results/s/study.json", "paper_runs/RESULTS.md", "paper_runs/gmm.py"]
    for f in files:
        (tmp_path / f).write_text("0\n")
    git("add", "-A")
    git("commit", "-qm", "init")
    folder = tmp_path / "paper_runs"
    assert git_dirty(folder) is False
    for f in files[:2]:
        (tmp_path / f).write_text("1\n")
    assert git_dirty(folder) is False
    (tmp_path / files[2]).write_text("1\n")
    assert git_dirty(folder) is True
