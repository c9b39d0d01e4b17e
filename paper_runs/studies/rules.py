"""The verdict rules of the studies, fixed here before any study under them runs.

A study trains each estimator with every seed (the same seeds for every estimator); a *per-seed
value* is one number per run. Every rule below is a function of the study record alone.

Design
    - At least ``MIN_SEEDS = 8`` seeds per CPU study. A record with fewer seeds, or one whose
      curves carry the old clock (evaluation counted as training; see ``equal time``) for a claim
      that needs the clock, gets the verdict **pending re-run**: its tests are computed and
      shown, but they back no verdict.
    - Significance level ``ALPHA = 0.05``, one-sided tests in the direction each claim states.
    - Multiplicity: Holm's step-down correction over all claims of one study (the family is
      the study's claims, listed by :func:`claims`). With ``m`` p-values sorted
      ``p_(1) ≤ … ≤ p_(m)``, the adjusted ``p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j))``.
    - A claim **holds** if its Holm-adjusted p-value in the claimed direction is ``≤ ALPHA``;
      it **does not hold** if its Holm-adjusted p-value in the opposite direction (a separate
      family of the same size) is ``≤ ALPHA``; otherwise it is **inconclusive**. A claim made of
      several conditions (claims 2 and 3) is an intersection–union test: its p-value in the
      claimed direction is the largest of its conditions' p-values, and its p-value against is
      ``min(1, c · min_i p_i^against)`` over its ``c`` conditions (Bonferroni within the claim).
    - Per-seed values are read from the last ``K = 3`` evaluations, fixed in advance: the
      *final* value of a run is the mean of its last ``K`` evaluations; its value *at training
      time t* is the mean of its last ``K`` evaluations whose training time is ``≤ t`` (a run
      with fewer than ``K`` such evaluations has no value there).
    - Effect sizes: a difference of means over seeds (or a geometric mean for ratios) with a
      95 % percentile bootstrap interval over seeds (``scipy.stats.bootstrap``, 9,999
      resamples, generator seeded with ``BOOTSTRAP_SEED = 0``).

Claims
    1. *Reverse ESS* (reverse studies): ``reverse-path-fast`` against ``reverse-standard``,
       one-sided Mann–Whitney U (``scipy.stats.mannwhitneyu``, ``alternative="greater"``) on
       the per-seed reverse ESS, (a) at equal steps (final values) and (b) at equal training
       time ``t* = min_e median_seeds(training time of e)`` (the cheapest estimator's budget).
       Training time is the ``train_time_s`` of the records (the time of the training steps
       alone); records that only carry ``elapsed_s`` are the old clock, which also counts
       evaluation, and make claim 1b **pending re-run**.
    2. *Variance* (every study with gradient variances): along the runs trained with the fast
       path, the path gradient's own summed variance ``V_path = Σ_k Var[g_k]`` must fall by at
       least ``VAR_FALL = 4`` from the first to the last evaluation, *and* at the last
       evaluation be small against the standard one's: ``V_path / V_standard ≤ VAR_RATIO =
       0.1`` (same θ, same batch size). Two one-sided Wilcoxon signed-rank tests over seeds
       (``scipy.stats.wilcoxon``): ``log(V_path^first / V_path^last) − log VAR_FALL > 0`` and
       ``log(V_path^last / V_standard^last) − log VAR_RATIO < 0``.
    3. *Overfitting* (forward studies): maximum likelihood (``forward-standard``) overfits a
       finite training set, the fast forward path gradient far less: one-sided Mann–Whitney U
       that the final generalisation gap (held-out NLL − training NLL) *and* the final
       held-out NLL of maximum likelihood exceed the path gradient's.
    4. *Held-out forward ESS* (forward studies): the fast forward path gradient's final
       held-out forward ESS exceeds maximum likelihood's (one-sided Mann–Whitney U).
    5. *Fine-tuning after flow matching* (studies of a continuous flow whose arms all start from
       one flow-matching pretraining per seed and include ``flow-matching``, i.e. continued flow
       matching): each path-gradient arm (``forward-path-fast`` as 5a, ``reverse-path-fast`` as
       5b) reaches a higher reverse ESS than continued flow matching at equal training time.
       The arms of a seed start from one pretrained flow, so the test is paired: one-sided
       Wilcoxon signed-rank (``scipy.stats.wilcoxon``) on the per-seed differences of the final
       reverse ESS, path arm minus continued flow matching (the seeds' pretrained flows differ
       more than the arms do); effect: the mean difference with its bootstrap interval over
       the seeds' differences. Equal training time is the
       design: every arm trains for one budget of training time (``--time-limit``), so the
       final values (the last ``K`` evaluations, which fall at the same fractions of the budget
       when evaluation follows the training clock, ``--eval-every-time``) are at equal time.
       The arms' median final training times must agree to ``EQUAL_TIME_TOLERANCE = 5 %``,
       else **pending re-run**. (Claim 1b's ``t*``, the smallest median, would cut off the last
       evaluation of every arm that overshoots the budget by more than the cheapest one, i.e.
       by one path-gradient step against one flow-matching step, and compare a path arm one
       evaluation interval earlier.)
       *Premise*: the pretrained flow is one whose weights can be trusted: the first evaluation
       of every arm of the seed (the pretrained flow, before any fine-tuning step) is marked
       reliable by ``pathgrad_ref/evaluation.py`` (``N_eff ≥ 1000`` and held-out forward ESS
       ``≥ 0.01``). Seeds outside the premise are listed and left out of the tests; with fewer
       than ``MIN_SEEDS`` seeds inside it the claim is **outside its premise** (no verdict; the
       tests on the seeds inside are shown).

Not tested
    ``reverse-path-dropin`` (Algorithm 2) and ``forward-path-gdreg`` (Algorithm 3) compute the
    fast path's gradient to rounding: with the same seeds they retrace its trajectory and are no
    second piece of evidence. They are reported as that trajectory at their own cost: their own
    value at the equal training time ``t*`` and the largest per-seed difference from the fast
    path at equal steps.

Quick presets (a separate section, not a claim of the paper)
    The default command of each experiment meets its targets: final reverse ESS ``≥ 0.2``,
    every reweighted observable within 3 combined standard errors of its reference and marked
    reliable, and the whole command, target samples included (fresh cache), within
    ``QUICK_MAX_WALL_S = 120`` s on the development machine. A record that does not say its
    cache was fresh cannot back the time target: where everything else holds, it is
    **pending re-run**.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

MIN_SEEDS = 8
ALPHA = 0.05
K = 3
VAR_FALL = 4.0
VAR_RATIO = 0.1
BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 9999
QUICK_MIN_ESS = 0.2
QUICK_MAX_WALL_S = 120.0
EQUAL_TIME_TOLERANCE = 0.05

HOLDS, FAILS, INCONCLUSIVE, PENDING = "holds", "does not hold", "inconclusive", "pending re-run"
OUTSIDE = "outside its premise"

# Claim 5: continued flow matching, and the path-gradient arms tested against it.
CONTINUED = "flow-matching"
FINE_TUNERS = {"5a": "forward-path-fast", "5b": "reverse-path-fast"}

# The estimator whose trajectory each drop-in estimator retraces (same gradient to rounding).
SAME_TRAJECTORY = {
    "reverse-path-dropin": "reverse-path-fast",
    "forward-path-gdreg": "forward-path-fast",
}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---------------------------------------------------------------------------------- per seed


def time_key(study: dict[str, Any]) -> str:
    """``"train_time_s"`` when every evaluation record has it (the training steps' own
    time), else ``"elapsed_s"`` (the old clock, which counts evaluation as training)."""
    curves = [rec for run in study["runs"] for rec in run["curve"]]
    return "train_time_s" if curves and all("train_time_s" in r for r in curves) else "elapsed_s"


def final_value(curve: Sequence[dict[str, Any]], key: str, k: int = K) -> float | None:
    """Mean of ``key`` over the last ``k`` evaluations that have it (``None`` if fewer)."""
    xs = [float(r[key]) for r in curve if _number(r.get(key))]
    return sum(xs[-k:]) / k if len(xs) >= k else None


def value_at_time(
    curve: Sequence[dict[str, Any]], key: str, t: float, clock: str, k: int = K
) -> float | None:
    """Mean of ``key`` over the last ``k`` evaluations at training time ``≤ t``."""
    early = [r for r in curve if _number(r.get(clock)) and float(r[clock]) <= t]
    return final_value(early, key, k)


def per_seed(
    study: dict[str, Any], estimator: str, value: Callable[[list[dict[str, Any]]], float | None]
) -> list[float]:
    """``value(curve)`` of every run of ``estimator`` that has one, in seed order."""
    runs = sorted(
        (r for r in study["runs"] if r["estimator"] == estimator), key=lambda r: r["seed"]
    )
    out = [value(r["curve"]) for r in runs]
    return [v for v in out if v is not None and math.isfinite(v)]


def equal_time(study: dict[str, Any]) -> float | None:
    """``t*``: the smallest over estimators of the median over seeds of the final training time."""
    clock = time_key(study)
    medians = []
    for e in study["spec"]["estimators"]:
        ts = per_seed(study, e, lambda c: _last(c, clock))
        if ts:
            medians.append(statistics.median(ts))
    return min(medians) if medians else None


def _last(curve: Sequence[dict[str, Any]], key: str) -> float | None:
    xs = [float(r[key]) for r in curve if _number(r.get(key))]
    return xs[-1] if xs else None


def variance_ends(study: dict[str, Any], estimator: str) -> list[dict[str, float]]:
    """Per run of ``estimator``: ``V_path`` and ``V_standard`` at the first and the last
    evaluation that has both (positive)."""
    out = []
    for run in sorted(study["runs"], key=lambda r: r["seed"]):
        if run["estimator"] != estimator:
            continue
        recs = [
            r
            for r in run["curve"]
            if _number(r.get("grad_var_path"))
            and _number(r.get("grad_var_standard"))
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


# ---------------------------------------------------------------------------------- statistics


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (see the module docstring)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [math.nan] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """One-sided Mann–Whitney U p-values ``(a > b, a < b)``; ``(1, 1)`` with fewer than two
    values on a side."""
    if len(a) < 2 or len(b) < 2:
        return 1.0, 1.0
    greater = float(stats.mannwhitneyu(a, b, alternative="greater").pvalue)
    less = float(stats.mannwhitneyu(a, b, alternative="less").pvalue)
    return greater, less


def signed_rank(x: Sequence[float]) -> tuple[float, float]:
    """One-sided Wilcoxon signed-rank p-values ``(median(x) > 0, median(x) < 0)``; ``(1, 1)``
    with fewer than two values or all of them zero."""
    if len(x) < 2 or all(v == 0 for v in x):
        return 1.0, 1.0
    greater = float(stats.wilcoxon(x, alternative="greater").pvalue)
    less = float(stats.wilcoxon(x, alternative="less").pvalue)
    return greater, less


def bootstrap_ci(
    samples: Sequence[Sequence[float]], statistic: Callable[..., Any]
) -> tuple[float, float] | None:
    """95 % percentile bootstrap interval of ``statistic`` over seeds (each sample resampled
    on its own); ``None`` with fewer than two values in a sample."""
    if any(len(s) < 2 for s in samples):
        return None
    res = stats.bootstrap(
        tuple(np.asarray(s, dtype=float) for s in samples),
        statistic,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(BOOTSTRAP_SEED),
        vectorized=True,
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mean_difference(a: Any, b: Any, axis: int = -1) -> Any:
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def _geometric_mean(logs: Any, axis: int = -1) -> Any:
    return np.exp(np.mean(logs, axis=axis))


# ---------------------------------------------------------------------------------- claims


@dataclass
class Claim:
    """One claim of a study: its tests' p-values (claimed direction and against), the effect
    size with its interval, the figures shown, and after :func:`decide` the verdict."""

    number: str
    text: str
    estimator: str
    p_for: float
    p_against: float
    effect: str
    figures: str
    n_seeds: int
    needs_clock: bool = False
    premise: str = ""  # why the claim is outside its premise ("" inside it)
    p_for_holm: float = math.nan
    p_against_holm: float = math.nan
    verdict: str = INCONCLUSIVE
    tests_verdict: str = INCONCLUSIVE  # what the tests alone give, before the design checks
    note: str = ""
    values: dict[str, Any] = field(default_factory=dict)


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    if x != 0 and not 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def _ci(ci: tuple[float, float] | None) -> str:
    return "–" if ci is None else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _list(xs: Sequence[float]) -> str:
    return ", ".join(_fmt(x) for x in xs)


def _compare(
    number: str,
    text: str,
    estimator: str,
    a: list[float],
    b: list[float],
    name_a: str,
    name_b: str,
    *,
    needs_clock: bool = False,
) -> Claim:
    """``a > b`` by one-sided Mann–Whitney U, effect ``mean(a) − mean(b)`` with its interval."""
    p_for, p_against = mann_whitney(a, b)
    d = (sum(a) / len(a) - sum(b) / len(b)) if a and b else None
    ci = bootstrap_ci((a, b), _mean_difference)
    return Claim(
        number=number,
        text=text,
        estimator=estimator,
        p_for=p_for,
        p_against=p_against,
        effect=f"mean difference {_fmt(d)} {_ci(ci)}",
        figures=f"{name_a}: {_list(a)}; {name_b}: {_list(b)}",
        n_seeds=min(len(a), len(b)),
        needs_clock=needs_clock,
        values={"a": a, "b": b, "difference": d, "ci": ci},
    )


def _variance_claim(study: dict[str, Any], fast: str) -> Claim | None:
    ends = variance_ends(study, fast)
    if not ends:
        return None
    log_fall = [math.log(e["path_first"] / e["path_last"]) for e in ends]
    log_ratio = [math.log(e["path_last"] / e["standard_last"]) for e in ends]
    fall_for, fall_against = signed_rank([x - math.log(VAR_FALL) for x in log_fall])
    ratio_less, ratio_greater = signed_rank([x - math.log(VAR_RATIO) for x in log_ratio])
    fall_ci = bootstrap_ci((log_fall,), _geometric_mean)
    ratio_ci = bootstrap_ci((log_ratio,), _geometric_mean)
    fall_gm = math.exp(sum(log_fall) / len(log_fall))
    ratio_gm = math.exp(sum(log_ratio) / len(log_ratio))

    def med(key: str) -> float:
        return statistics.median(e[key] for e in ends)

    return Claim(
        number="2",
        text=f"the path gradient's own variance falls ≥ {VAR_FALL:g}× along training and ends "
        f"≤ {VAR_RATIO:g}× the standard one's",
        estimator=fast,
        p_for=max(fall_for, ratio_greater),
        p_against=min(1.0, 2 * min(fall_against, ratio_less)),
        effect=f"fall V_path first/last: geometric mean {_fmt(fall_gm)} {_ci(fall_ci)}; "
        f"V_path/V_standard at the last evaluation: geometric mean {_fmt(ratio_gm)} "
        f"{_ci(ratio_ci)}",
        figures=f"medians of Σ Var along {fast} training: path {_fmt(med('path_first'))} → "
        f"{_fmt(med('path_last'))}, standard {_fmt(med('standard_first'))} → "
        f"{_fmt(med('standard_last'))}; per seed fall {_list([math.exp(x) for x in log_fall])}, "
        f"last ratio {_list([math.exp(x) for x in log_ratio])}",
        n_seeds=len(ends),
        values={"ends": ends, "fall": fall_gm, "ratio": ratio_gm},
    )


def _overfitting_claim(study: dict[str, Any], std: str, fast: str) -> Claim:
    def gap(c: list[dict[str, Any]]) -> float | None:
        held, train = final_value(c, "nll"), final_value(c, "nll_train")
        return None if held is None or train is None else held - train

    def nll(c: list[dict[str, Any]]) -> float | None:
        return final_value(c, "nll")

    gap_ml, gap_path = per_seed(study, std, gap), per_seed(study, fast, gap)
    nll_ml, nll_path = per_seed(study, std, nll), per_seed(study, fast, nll)
    gap_for, gap_against = mann_whitney(gap_ml, gap_path)
    nll_for, nll_against = mann_whitney(nll_ml, nll_path)
    gap_ci = bootstrap_ci((gap_ml, gap_path), _mean_difference)
    nll_ci = bootstrap_ci((nll_ml, nll_path), _mean_difference)

    def diff(a: list[float], b: list[float]) -> float | None:
        return sum(a) / len(a) - sum(b) / len(b) if a and b else None

    return Claim(
        number="3",
        text="maximum likelihood overfits a finite training set (larger generalisation gap "
        "and held-out NLL), the path gradient far less",
        estimator=fast,
        p_for=max(gap_for, nll_for),
        p_against=min(1.0, 2 * min(gap_against, nll_against)),
        effect=f"ML − path: gap {_fmt(diff(gap_ml, gap_path))} {_ci(gap_ci)}, held-out NLL "
        f"{_fmt(diff(nll_ml, nll_path))} {_ci(nll_ci)}",
        figures=f"gap (held-out − train NLL) {std}: {_list(gap_ml)}; {fast}: {_list(gap_path)}; "
        f"held-out NLL {std}: {_list(nll_ml)}; {fast}: {_list(nll_path)}",
        n_seeds=min(len(gap_ml), len(gap_path), len(nll_ml), len(nll_path)),
        values={"gap": (gap_ml, gap_path), "nll": (nll_ml, nll_path)},
    )


def premise_seeds(study: dict[str, Any]) -> tuple[list[int], dict[int, str]]:
    """Claim 5's premise per seed: ``(seeds inside, {seed outside: why})``. A seed is inside
    when the first evaluation of every run of the seed (the pretrained flow) is reliable."""
    by_seed: dict[int, list[dict[str, Any]]] = {}
    for run in study["runs"]:
        by_seed.setdefault(int(run["seed"]), []).append(run)
    inside, outside = [], {}
    for seed in sorted(by_seed):
        firsts = [r["curve"][0] if r["curve"] else {} for r in by_seed[seed]]
        bad = [f for f in firsts if f.get("reliable") is not True]
        if not bad:
            inside.append(seed)
            continue
        ess = bad[0].get("ess_reverse")
        n_eff = bad[0].get("n_eff")
        outside[seed] = (
            f"pretrained flow unreliable (reverse ESS {_fmt(ess)}, N_eff {_fmt(n_eff)}, "
            f"forward ESS {_fmt(bad[0].get('ess_forward'))})"
        )
    return inside, outside


def _median_final_time(study: dict[str, Any], estimator: str, clock: str) -> float | None:
    ts = per_seed(study, estimator, lambda c: _last(c, clock))
    return statistics.median(ts) if ts else None


def _mean(x: Any, axis: int = -1) -> Any:
    return np.mean(x, axis=axis)


def _fine_tuning_claims(study: dict[str, Any]) -> list[Claim]:
    """Claim 5 (module docstring): one claim per path-gradient arm against continued flow
    matching, paired by seed, on the seeds inside the premise."""
    est = study["spec"]["estimators"]
    clock = time_key(study)
    inside, outside = premise_seeds(study)

    def final_ess(estimator: str) -> dict[int, float]:
        out = {}
        for r in study["runs"]:
            v = final_value(r["curve"], "ess_reverse")
            if r["estimator"] == estimator and r["seed"] in inside and v is not None:
                out[int(r["seed"])] = v
        return out

    times = {e: _median_final_time(study, e, clock) for e in est}
    known = [t for t in times.values() if t is not None]
    spread = max(known) / min(known) - 1 if known and min(known) > 0 else math.inf
    time_text = ", ".join(f"{e} {_fmt(t)} s" for e, t in times.items())
    continued = final_ess(CONTINUED)
    pretrained = {
        int(r["seed"]): r["curve"][0].get("ess_reverse")
        for r in study["runs"]
        if r["estimator"] == CONTINUED and r["curve"]
    }
    out = []
    for number, arm in FINE_TUNERS.items():
        if arm not in est:
            continue
        mine = final_ess(arm)
        seeds = sorted(set(mine) & set(continued))
        diffs = [mine[s] - continued[s] for s in seeds]
        p_for, p_against = signed_rank(diffs)
        mean = sum(diffs) / len(diffs) if diffs else None
        pairs = ", ".join(
            f"seed {s}: {_fmt(pretrained.get(s))} → {_fmt(continued[s])}, {_fmt(mine[s])}"
            for s in seeds
        )
        c = Claim(
            number=number,
            text="fine-tuning the flow-matching flow reaches a higher reverse ESS than "
            "continued flow matching at equal training time",
            estimator=arm,
            p_for=p_for,
            p_against=p_against,
            effect=f"mean paired difference {_fmt(mean)} {_ci(bootstrap_ci((diffs,), _mean))}",
            figures=f"reverse ESS, pretrained → final of {CONTINUED}, of {arm}: {pairs}; "
            f"median final training time {time_text}",
            n_seeds=len(diffs),
            needs_clock=True,
            values={"differences": diffs, "difference": mean, "seeds": seeds},
        )
        if outside:
            c.figures += "; outside the premise: " + "; ".join(
                f"seed {s}: {why}" for s, why in outside.items()
            )
        if len(inside) < MIN_SEEDS:
            c.premise = (
                f"{len(inside)} of {len(inside) + len(outside)} seeds start from a reliable "
                f"pretrained flow (< {MIN_SEEDS})"
            )
        c.values.update(inside=inside, outside=outside, time_spread=spread)
        out.append(c)
    return out


def claims(study: dict[str, Any]) -> list[Claim]:
    """Every claim the study tests (the Holm family), before :func:`decide`."""
    est = study["spec"]["estimators"]
    out: list[Claim] = []
    if "reverse-standard" in est and "reverse-path-fast" in est:
        std, fast = "reverse-standard", "reverse-path-fast"
        out.append(
            _compare(
                "1a",
                "higher reverse ESS than the standard gradient at equal steps",
                fast,
                per_seed(study, fast, lambda c: final_value(c, "ess_reverse")),
                per_seed(study, std, lambda c: final_value(c, "ess_reverse")),
                fast,
                std,
            )
        )
        t, clock = equal_time(study), time_key(study)
        if t is not None:
            out.append(
                _compare(
                    "1b",
                    "higher reverse ESS than the standard gradient at equal training time",
                    fast,
                    per_seed(study, fast, lambda c: value_at_time(c, "ess_reverse", t, clock)),
                    per_seed(study, std, lambda c: value_at_time(c, "ess_reverse", t, clock)),
                    fast,
                    std,
                    needs_clock=True,
                )
            )
    if "forward-standard" in est and "forward-path-fast" in est:
        std, fast = "forward-standard", "forward-path-fast"
        out.append(_overfitting_claim(study, std, fast))
        out.append(
            _compare(
                "4",
                "higher held-out forward ESS than maximum likelihood",
                fast,
                per_seed(study, fast, lambda c: final_value(c, "ess_forward")),
                per_seed(study, std, lambda c: final_value(c, "ess_forward")),
                fast,
                std,
            )
        )
    if CONTINUED in est:
        out += _fine_tuning_claims(study)
    for fast in ("reverse-path-fast", "forward-path-fast"):
        if fast in est:
            variance = _variance_claim(study, fast)
            if variance is not None:
                out.append(variance)
    return out


def decide(study: dict[str, Any]) -> list[Claim]:
    """:func:`claims` with Holm-adjusted p-values and verdicts (module docstring)."""
    cs = claims(study)
    for c, p in zip(cs, holm([c.p_for for c in cs]), strict=True):
        c.p_for_holm = p
    for c, p in zip(cs, holm([c.p_against for c in cs]), strict=True):
        c.p_against_holm = p
    old_clock = time_key(study) != "train_time_s"
    n_seeds = len(study["spec"]["seeds"])
    for c in cs:
        if c.p_for_holm <= ALPHA:
            c.verdict = HOLDS
        elif c.p_against_holm <= ALPHA:
            c.verdict = FAILS
        else:
            c.verdict = INCONCLUSIVE
        c.tests_verdict = c.verdict
        reasons = []
        if n_seeds < MIN_SEEDS:
            reasons.append(f"{n_seeds} seeds < {MIN_SEEDS}")
        if c.needs_clock and old_clock:
            reasons.append("old clock, which counts evaluation as training")
        spread = c.values.get("time_spread")
        if isinstance(spread, float) and not spread <= EQUAL_TIME_TOLERANCE:
            reasons.append(
                f"the arms' median training times differ by {_fmt(100 * spread)} % > "
                f"{100 * EQUAL_TIME_TOLERANCE:g} %"
            )
        if reasons:
            c.note = "no verdict: " + " and ".join(reasons) + f"; the tests alone give {c.verdict}"
            c.verdict = PENDING
        elif c.premise:
            c.note = f"no verdict: {c.premise}; the tests on the seeds inside give {c.verdict}"
            c.verdict = OUTSIDE
    return cs


def same_trajectory(study: dict[str, Any]) -> list[dict[str, Any]]:
    """For each drop-in estimator in the study: its own reverse ESS at ``t*`` (mean over
    seeds; the fast path's trajectory at the drop-in's cost) and the largest per-seed
    difference from the fast path at equal steps in the final reverse ESS and held-out NLL."""
    est = study["spec"]["estimators"]
    t, clock = equal_time(study), time_key(study)
    out = []
    for dropin, fast in SAME_TRAJECTORY.items():
        if dropin not in est or fast not in est:
            continue
        entry: dict[str, Any] = {"estimator": dropin, "retraces": fast, "equal_time_s": t}
        for key in ("ess_reverse", "ess_forward", "nll"):
            mine = {
                r["seed"]: final_value(r["curve"], key)
                for r in study["runs"]
                if r["estimator"] == dropin
            }
            theirs = {
                r["seed"]: final_value(r["curve"], key)
                for r in study["runs"]
                if r["estimator"] == fast
            }
            diffs = [
                abs(v - w)
                for s, v in mine.items()
                if v is not None and (w := theirs.get(s)) is not None
            ]
            entry[f"max_abs_difference_{key}"] = max(diffs) if diffs else None
        if t is not None:
            for e in (dropin, fast):
                vs = per_seed(study, e, lambda c: value_at_time(c, "ess_reverse", t, clock))
                entry[f"ess_reverse_at_equal_time[{e}]"] = sum(vs) / len(vs) if vs else None
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------- presets


def is_preset_check(study: dict[str, Any]) -> bool:
    """Whether the record checks a quick preset's targets (``<experiment>-quick``) rather
    than the paper's claims."""
    return bool(study["spec"]["name"].endswith("-quick"))


def quick_targets(study: dict[str, Any]) -> list[dict[str, str]]:
    """A quick preset's targets, per run (module docstring)."""
    out = []
    refs = study.get("references") or {}
    fresh = bool(study["spec"].get("fresh_cache"))
    for run in study["runs"]:
        f = run.get("final") or {}
        ess: Any = f.get("ess_reverse")
        ok = _number(ess) and float(ess) >= QUICK_MIN_ESS and f.get("reliable") is True
        figures = [f"reverse ESS {_fmt(ess)} ± {_fmt(f.get('ess_reverse_err'), 1)}"]
        for o, label_ in (study.get("observables") or {}).items():
            ref, value = refs.get(o) or {}, f.get(o)
            err: Any = f.get(f"{o}_err")
            if not _number(value) or not _number(ref.get("value")):
                ok = False
                continue
            sigma = math.hypot(float(err) if _number(err) else math.nan, ref.get("err") or 0.0)
            pull = (value - ref["value"]) / sigma if sigma > 0 else math.inf
            ok = ok and abs(pull) <= 3.0
            figures.append(f"{label_} {_fmt(value)} vs {_fmt(ref['value'])} ({pull:+.1f}σ)")
        wall = run.get("wall_s")
        cache = "fresh cache" if fresh else "cache state not recorded"
        figures.append(f"wall time {_fmt(wall)} s ({cache})" if _number(wall) else "wall time –")
        fast = _number(wall) and wall <= QUICK_MAX_WALL_S
        verdict = HOLDS if ok and fast else FAILS
        if verdict == HOLDS and not fresh:
            # the wall time may leave out the target samples: it cannot back the time target
            verdict = PENDING
        out.append(
            {
                "target": f"ESS ≥ {QUICK_MIN_ESS}, observables within 3σ and reliable, within "
                f"{QUICK_MAX_WALL_S:.0f} s (target samples included)",
                "estimator": run["estimator"],
                "verdict": verdict,
                "figures": "; ".join(figures) + ("" if f.get("reliable") else "; UNRELIABLE"),
            }
        )
    return out
