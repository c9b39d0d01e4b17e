"""The verdict rules that were replaced, kept as code so that ``paper_runs/RESULTS.md`` can show
what each rule set gives on the committed records next to what the current rules give
(:data:`.rules.RULE_HISTORY` says when each was set, what had been read by then and why it was
replaced). Nothing here backs a verdict.

Rule sets (the ``rule_set`` of a :class:`.rules.RuleChange`)
    ``first`` (2d0c8d6, before any study record): claims 1a, 1b and 3 hold when the mean over
    seeds of the path estimator beats the other by more than ``FIRST_Z = 2`` combined standard
    errors, and do not hold when it trails by as much (values at the last evaluation; 1b at
    the last evaluation at or before the equal training time, read here on the record's own
    clock); claim 3 needs both its conditions; claim 2 holds when the median over seeds of
    ``V_path/V_standard`` at the last evaluation is below ``FIRST_RATIO = 0.1`` and below half
    its median at the first evaluation, and does not hold at 1 or more. Claims 4 and 5 did
    not exist.

    ``c80e2c0``: the current rules but for claim 2, which asked ``V_path`` to fall at least
    ``VAR_FALL = 4×`` from the first to the last evaluation and to end at most ``VAR_RATIO =
    0.1×`` ``V_standard`` (single evaluations; two one-sided Wilcoxon signed-rank tests on the
    logarithms), and for claim 4, which had no premise. Claim 5 and its premise were added
    to this set in 31cb58c.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from . import rules
from .running import aggregate

FIRST_Z = 2.0
FIRST_RATIO = 0.1
VAR_FALL = 4.0
VAR_RATIO = 0.1

NOT_A_CLAIM = "not a claim then"


def _last(curve: list[dict[str, Any]], key: str) -> float | None:
    xs = [float(r[key]) for r in curve if rules._number(r.get(key))]
    return xs[-1] if xs else None


def _last_at(curve: list[dict[str, Any]], key: str, t: float, clock: str) -> float | None:
    early = [r for r in curve if rules._number(r.get(clock)) and float(r[clock]) <= t]
    return _last(early, key)


def _beyond_two_se(a: list[float | None], b: list[float | None]) -> str:
    """The first rules' comparison of two estimators' per-seed values."""
    x, y = aggregate(a), aggregate(b)
    if x["mean"] is None or y["mean"] is None or x["se"] is None or y["se"] is None:
        return rules.INCONCLUSIVE
    d, se = x["mean"] - y["mean"], math.hypot(x["se"], y["se"])
    if d > FIRST_Z * se:
        return rules.HOLDS
    if d < -FIRST_Z * se:
        return rules.FAILS
    return rules.INCONCLUSIVE


def _values(study: dict[str, Any], estimator: str, value: Any) -> list[float | None]:
    runs = sorted(
        (r for r in study["runs"] if r["estimator"] == estimator), key=lambda r: r["seed"]
    )
    return [value(r["curve"]) for r in runs]


def first_rules(study: dict[str, Any]) -> dict[tuple[str, str], str]:
    """The verdicts of the first rules (module docstring), by ``(claim, estimator)``."""
    est = study["spec"]["estimators"]
    out: dict[tuple[str, str], str] = {}
    if "reverse-standard" in est and "reverse-path-fast" in est:
        std, fast = "reverse-standard", "reverse-path-fast"
        out["1a", fast] = _beyond_two_se(
            _values(study, fast, lambda c: _last(c, "ess_reverse")),
            _values(study, std, lambda c: _last(c, "ess_reverse")),
        )
        t, clock = rules.equal_time(study), rules.time_key(study)
        if t is not None:
            out["1b", fast] = _beyond_two_se(
                _values(study, fast, lambda c: _last_at(c, "ess_reverse", t, clock)),
                _values(study, std, lambda c: _last_at(c, "ess_reverse", t, clock)),
            )
    if "forward-standard" in est and "forward-path-fast" in est:
        std, fast = "forward-standard", "forward-path-fast"

        def gap(c: list[dict[str, Any]]) -> float | None:
            held, train = _last(c, "nll"), _last(c, "nll_train")
            return None if held is None or train is None else held - train

        def nll(c: list[dict[str, Any]]) -> float | None:
            return _last(c, "nll")

        both = (
            _beyond_two_se(_values(study, std, gap), _values(study, fast, gap)),
            _beyond_two_se(_values(study, std, nll), _values(study, fast, nll)),
        )
        if rules.FAILS in both:
            out["3", fast] = rules.FAILS
        elif both == (rules.HOLDS, rules.HOLDS):
            out["3", fast] = rules.HOLDS
        else:
            out["3", fast] = rules.INCONCLUSIVE
    for fast in ("reverse-path-fast", "forward-path-fast"):
        ends = variance_ends(study, fast)
        if fast in est and ends:
            first = statistics.median(e["path_first"] / e["standard_first"] for e in ends)
            last = statistics.median(e["path_last"] / e["standard_last"] for e in ends)
            if last < FIRST_RATIO and last < 0.5 * first:
                out["2", fast] = rules.HOLDS
            elif last >= 1.0:
                out["2", fast] = rules.FAILS
            else:
                out["2", fast] = rules.INCONCLUSIVE
    return out


def variance_ends(study: dict[str, Any], estimator: str) -> list[dict[str, float]]:
    """Per run of ``estimator``: ``V_path`` and ``V_standard`` at the first and the last
    evaluation that has both (positive): the single evaluations both replaced claim-2 rules
    read."""
    out = []
    for run in sorted(study["runs"], key=lambda r: r["seed"]):
        if run["estimator"] != estimator:
            continue
        recs = [
            r
            for r in run["curve"]
            if rules._number(r.get("grad_var_path"))
            and rules._number(r.get("grad_var_standard"))
            and r["grad_var_path"] > 0
            and r["grad_var_standard"] > 0
        ]
        if len(recs) >= 2:
            out.append(
                {
                    "path_first": float(recs[0]["grad_var_path"]),
                    "path_last": float(recs[-1]["grad_var_path"]),
                    "standard_first": float(recs[0]["grad_var_standard"]),
                    "standard_last": float(recs[-1]["grad_var_standard"]),
                }
            )
    return out


def fall_ratio_claim(study: dict[str, Any], fast: str) -> rules.Claim | None:
    """Claim 2 as c80e2c0 stated it (module docstring)."""
    ends = variance_ends(study, fast)
    if not ends:
        return None
    log_fall = [math.log(e["path_first"] / e["path_last"]) for e in ends]
    log_ratio = [math.log(e["path_last"] / e["standard_last"]) for e in ends]
    fall_for, fall_against = rules.signed_rank([x - math.log(VAR_FALL) for x in log_fall])
    ratio_less, ratio_greater = rules.signed_rank([x - math.log(VAR_RATIO) for x in log_ratio])
    return rules.Claim(
        number="2",
        text=f"V_path falls ≥ {VAR_FALL:g}× and ends ≤ {VAR_RATIO:g}× V_standard",
        estimator=fast,
        p_for=max(fall_for, ratio_greater),
        p_against=min(1.0, 2 * min(fall_against, ratio_less)),
        effect="",
        figures="",
        n_seeds=len(ends),
        values={
            "fall": math.exp(sum(log_fall) / len(log_fall)),
            "ratio": math.exp(sum(log_ratio) / len(log_ratio)),
        },
    )


def c80e2c0_rules(study: dict[str, Any]) -> dict[tuple[str, str], str]:
    """The verdicts (Holm within the study) of the rules of c80e2c0 as amended up to this
    rule set (module docstring), by ``(claim, estimator)``."""
    cs: list[rules.Claim] = []
    for c in rules.claims(study):
        if c.number == "2":
            old = fall_ratio_claim(study, c.estimator)
            if old is not None:
                cs.append(old)
        elif c.number == "4":
            cs.append(
                rules.forward_ess_claim(
                    study, "forward-standard", "forward-path-fast", premise=False
                )
            )
        else:
            cs.append(c)
    return {(c.number, c.estimator): c.verdict for c in rules.decide(study, cs)}


RULE_SETS = {"first": first_rules, "c80e2c0": c80e2c0_rules}


def by_rule_set(study: dict[str, Any]) -> list[dict[str, str]]:
    """One row per claim of the current rules (:func:`.rules.decide`): ``claim``,
    ``estimator``, and the verdict of each rule set (``first``, ``c80e2c0``, ``current``);
    ``not a claim then`` where a rule set had no such claim."""
    now = rules.decide(study)
    older = {name: f(study) for name, f in RULE_SETS.items()}
    return [
        {
            "claim": c.number,
            "estimator": c.estimator,
            **{name: v.get((c.number, c.estimator), NOT_A_CLAIM) for name, v in older.items()},
            "current": c.verdict,
        }
        for c in now
    ]
