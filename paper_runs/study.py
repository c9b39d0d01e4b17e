"""Studies over seeds: the paper's claims, path against standard gradients, tested at a scale a
2-core CPU runs (``--dry-run`` prints the expected time of each study from the committed
records; the 90-minute budget the studies were first sized for no longer holds, see below).

    python paper_runs/study.py all                          # every study; prints the expected time
    python paper_runs/study.py gmm-reverse                  # one study (resumes if killed)
    python paper_runs/study.py all --commit --why "…"      # also copy into paper_runs/results/
    python paper_runs/study.py all --confirm --dry-run      # the confirmatory plan and its time
    python paper_runs/study.py gmm-reverse --confirm --commit   # one confirmatory record
    python paper_runs/study.py --render                     # re-render paper_runs/RESULTS.md

Every study is fixed here: experiment, preset (defined in the experiment's script, with the
reasons for its sizes), estimators and seeds; the verdict rules are in
``paper_runs/studies/rules.py``, whose ``RULE_HISTORY`` says when each rule was set and which
records had been read by then (not every rule came before the data it judges). Each
(estimator, seed) is an ordinary training run in ``runs/studies/<study>/<estimator>/seed<k>/``,
trained by the experiment's own script with ``--resume``: a killed study picks up where it
stopped and reuses finished runs. The study then writes ``study.json`` (provenance, aggregates
and every run's curves), ``study.md`` (verdicts and tables) and plots next to the runs.
``--commit`` copies the JSON and plots to ``paper_runs/results/<study>/`` (a replaced record
goes into the new one's ``history`` with ``--why``) and regenerates ``paper_runs/RESULTS.md``
from the committed JSON alone.

Exploratory and confirmatory records. The records on seeds 0–7 are exploratory: rules were
written after reading them. ``--confirm`` runs a claim study again, unchanged but for its seeds,
on ``rules.CONFIRM_SEEDS`` (never run before), into ``runs/studies/<study>-confirm/`` and, with
``--commit``, ``paper_runs/results/<study>-confirm/``, kept beside the exploratory record;
RESULTS.md sets the two verdicts side by side and calls a claim established only where the
confirmation holds (Holm across all claims). Run it only at a commit whose rules are committed
(a record made on uncommitted changes backs no verdict).

Sizes: 8 seeds per study (the rules' minimum, up from 4). Nothing else changed: the presets
keep the 4-seed studies' training sizes, so that no setting was re-tuned after their outcomes
were seen, and the new ``gmm-forward-10k`` differs from ``gmm-forward`` in the training-set size
alone. By the wall times of the 4-seed records, all studies at 8 seeds, two runs at a time,
were to fit a 90-minute budget on the 2-core machine; by the 8-seed records they do not
(``--dry-run`` prints the estimate per study from the committed records,
:func:`expected_seconds`; the continuous-flow study came on top). When the 8-seed re-run came,
the same machine ran the same code several times slower (compare the mean step times in the
study tables with those of the 4-seed records in git history), so ``u1-reverse`` was run on its
own after the others (each record's provenance gives its date and load).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from studies import replaced, rules  # noqa: E402
from studies.provenance import git_dirty, history_entry  # noqa: E402
from studies.report import (  # noqa: E402
    markdown,
    plot,
    premise_cell,
    provenance_lines,
    record_verdicts,
    test_cell,
)
from studies.running import (  # noqa: E402
    StudyError,
    StudyInterruptedError,
    StudySpec,
    collect,
    run_state,
    run_study,
    study_provenance,
    summarise,
    with_aggregates,
)

from pathgrad_ref.evaluation import fmt  # noqa: E402
from pathgrad_ref.training.files import write_json  # noqa: E402

ROOT = HERE.parent
RESULTS_DIR = HERE / "results"
BENCHMARKS = ROOT / "benchmarks" / "results" / "table2-cpu.json"
REVERSE = ("reverse-standard", "reverse-path-fast", "reverse-path-dropin")
FORWARD = ("forward-standard", "forward-path-fast", "forward-path-gdreg")
# After flow-matching pretraining: continued flow matching and the two path-gradient arms.
FINE_TUNING = (rules.CONTINUED, *rules.FINE_TUNERS.values())
SEEDS = tuple(range(rules.MIN_SEEDS))

STUDIES: dict[str, StudySpec] = {
    s.name: s
    for s in (
        StudySpec(
            name="gmm-reverse",
            experiment="gmm",
            preset="study",
            estimators=REVERSE,
            seeds=SEEDS,
            claim="reverse KL on the 64-component Gaussian mixture (d = 6): path gradients "
            "train the flow to a higher ESS than the standard gradient, at equal steps and "
            "equal training time; their variance vanishes as q → p.",
            gpu_command="python paper_runs/gmm.py --preset paper --device cuda "
            "--compare reverse-standard,reverse-path-fast,reverse-path-dropin",
        ),
        StudySpec(
            name="gmm-reverse-nsf",
            experiment="gmm",
            preset="study-nsf",
            estimators=REVERSE,
            seeds=SEEDS,
            claim="reverse KL on the same Gaussian mixture with a neural spline flow (6 "
            "rational-quadratic spline couplings, 8 bins): path gradients train the flow to a "
            "higher ESS than the standard gradient, at equal steps and equal training time; "
            "their variance vanishes as q → p.",
            gpu_command="python paper_runs/gmm.py --preset paper --flow nsf --device cuda "
            "--compare reverse-standard,reverse-path-fast,reverse-path-dropin",
        ),
        StudySpec(
            name="gmm-forward",
            experiment="gmm",
            preset="study-forward",
            estimators=FORWARD,
            seeds=SEEDS,
            claim="forward KL from a finite set of 1,000 target samples: maximum likelihood "
            "overfits (held-out NLL rises above the training NLL, held-out forward ESS falls), "
            "the forward path gradients far less.",
            gpu_command="python paper_runs/gmm.py --preset paper --device cuda "
            "--compare forward-standard,forward-path-fast,forward-path-gdreg",
        ),
        StudySpec(
            name="gmm-forward-10k",
            experiment="gmm",
            preset="study-forward-10k",
            estimators=FORWARD,
            seeds=SEEDS,
            claim="forward KL at the paper's sample count, 10,000 training and 10,000 held-out "
            "samples: the forward path gradient reaches a higher held-out forward ESS and "
            "overfits less than maximum likelihood.",
            gpu_command="python paper_runs/gmm.py --preset paper --device cuda "
            "--compare forward-standard,forward-path-fast,forward-path-gdreg",
        ),
        StudySpec(
            name="phi4-reverse",
            experiment="phi4",
            preset="study",
            estimators=REVERSE,
            seeds=SEEDS,
            claim="reverse KL on φ⁴ (8×8, κ = 0.25, λ = 0.022): path gradients train the "
            "Z2Nice flow to a higher ESS than the standard gradient; their variance vanishes "
            "as q → p.",
            gpu_command="python paper_runs/phi4.py --preset paper --device cuda "
            "--compare reverse-standard,reverse-path-fast,reverse-path-dropin",
        ),
        StudySpec(
            name="u1-reverse",
            experiment="u1",
            preset="study",
            estimators=REVERSE,
            seeds=SEEDS,
            claim="reverse KL on U(1) gauge theory (8×8, β = 1): path gradients train the "
            "gauge-equivariant flow to a higher ESS than the standard gradient; their "
            "variance vanishes as q → p.",
            gpu_command="python paper_runs/u1.py --preset paper --device cuda "
            "--compare reverse-standard,reverse-path-fast,reverse-path-dropin",
        ),
        StudySpec(
            name="cnf-gmm",
            experiment="cnf",
            preset="study",
            estimators=FINE_TUNING,
            seeds=SEEDS,
            claim="after flow matching (a continuous flow on the 16-component Gaussian mixture, "
            "d = 4, σ² = 0.1, pretrained by conditional flow matching), fine-tuning with path "
            "gradients (forward: target samples and the target's force; reverse: flow samples "
            "and the force) reaches a higher reverse ESS than continued flow matching at equal "
            "training time (Vaitl & Klein 2025, at our scale).",
            gpu_command="python paper_runs/cnf.py --preset paper --device cuda "
            "--compare " + ",".join(FINE_TUNING),
            pretrains=True,
            design="fixed, with this rule and these seeds, before the study ran, after "
            "exploratory runs with seeds 900-904 only (the comment above `STUDY` in "
            "`paper_runs/cnf.py` lists them): d = 2 (σ² = 0.5 and 0.1, seeds 900, 901) left "
            "the pretrained flow at reverse ESS 0.95-0.99, too close to 1 to tell the arms "
            "apart, so d = 4, σ² = 0.1 (seeds 902-904: ESS 0.74-0.81 after 10,000 "
            "flow-matching steps); the stage-2 rate 1e-4 for every arm after a grid of 1e-4 "
            "and 1e-3 per arm (seeds 903, 904), where 1e-4 was better for continued flow "
            "matching and the reverse arm and within 0.003 for the forward arm; the 45 s "
            "budget and the evaluation sizes to fit the studies' CPU budget. A first run of "
            "the study, at 31cb58c, was stopped after its first seeds because "
            "`pathgrad_ref/flows/continuous.py` changed under it (097e0d6: a faster "
            "divergence and score step, gradients equal to rounding), which would have mixed "
            "two step costs in one equal-time comparison; its runs were deleted without being "
            "looked at, and this record is the re-run from scratch, all runs at one commit, "
            "rules, settings and seeds unchanged.",
        ),
        *(
            StudySpec(
                name=f"{exp}-quick",
                experiment=exp,
                preset="quick",
                estimators=("reverse-path-fast",),
                seeds=(0,),
                claim=f"the default command, `python paper_runs/{exp}.py`, learns within about "
                "2 minutes on a 2-core CPU (target samples included): reverse ESS ≥ 0.2 and "
                "the reweighted observables within 3σ of their references.",
                fresh_cache=True,
            )
            for exp in ("gmm", "phi4", "u1")
        ),
        StudySpec(
            name="cnf-quick",
            experiment="cnf",
            preset="quick",
            estimators=("forward-path-fast",),
            seeds=(0,),
            claim="the default command, `python paper_runs/cnf.py`, learns within about 2 "
            "minutes on a 2-core CPU (target samples and the flow-matching pretraining "
            "included): reverse ESS ≥ 0.2 and the reweighted observables within 3σ of their "
            "references.",
            fresh_cache=True,
            pretrains=True,
        ),
    )
}


# The claim studies (not the quick presets' checks): the ones a confirmatory record repeats.
CLAIM_STUDIES = tuple(n for n in STUDIES if not n.endswith("-quick"))


def confirm_spec(spec: StudySpec) -> StudySpec:
    """The confirmatory study of ``spec``: the same experiment, preset, estimators and claim,
    on ``rules.CONFIRM_SEEDS``, named ``<study>-confirm`` (module docstring)."""
    return replace(
        spec,
        name=f"{spec.name}-confirm",
        seeds=rules.CONFIRM_SEEDS,
        confirms=spec.name,
        claim=f"confirmatory record of `{spec.name}` on fresh seeds: {spec.claim}",
        design=f"the study `{spec.name}` unchanged but for its seeds, run under the rules as "
        "committed before it ran",
    )


# A study without a committed record is estimated from a committed one (its runs' wall times
# times a factor): the 10k forward study trains like the 1k one (same steps and batch) and
# evaluates the training NLL on 10 times as many samples.
ESTIMATE_FROM = {"gmm-forward-10k": ("gmm-forward", 1.2)}


def expected_seconds(spec: StudySpec, root: Path, workers: int) -> float | None:
    """Expected wall time of the runs of ``spec`` still to train: per estimator the median
    wall time of a run in the committed record of the study (of the study it confirms, for a
    confirmatory one), or where there is none in the one :data:`ESTIMATE_FROM` names, times
    its factor; summed over the runs to train and divided by ``workers`` (or by the number of
    runs to train, if smaller)."""
    name = spec.confirms or spec.name
    source, factor = name, 1.0
    if not (RESULTS_DIR / name / "study.json").exists():
        source, factor = ESTIMATE_FROM.get(name, (name, 1.0))
    path = RESULTS_DIR / source / "study.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    total, runs = 0.0, 0
    for e in spec.estimators:
        walls = [r["wall_s"] for r in record["runs"] if r["estimator"] == e and r.get("wall_s")]
        if not walls:
            return None
        todo = sum(run_state(spec.run_dir(root, e, s)) != "completed" for s in spec.seeds)
        total += statistics.median(walls) * factor * todo
        runs += todo
    return total / max(1, min(workers, runs))


def finish(spec: StudySpec, root: Path, *, commit: bool, why: str | None) -> dict[str, Any]:
    """Collect, aggregate, write ``study.json``, ``study.md`` and the plots; with ``commit``
    also copy them to ``paper_runs/results/<study>/``, recording the record it replaces in
    ``history`` (``why`` says why)."""
    runs = collect(spec, root)
    history: list[dict[str, Any]] = []
    dest = RESULTS_DIR / spec.name
    if commit and (dest / "study.json").exists():
        if not why:
            raise StudyError(f'{dest / "study.json"} exists: say why it is replaced with --why "…"')
        previous = json.loads((dest / "study.json").read_text())
        # Its verdicts under the current rules, so that the new record says what changed.
        verdicts = record_verdicts(with_aggregates(previous)) if previous.get("runs") else []
        history = [*(previous.get("history") or []), history_entry(previous, why, verdicts)]
    study = summarise(spec, runs, study_provenance(spec, runs, HERE), history)
    write_json(root / "study.json", study)
    plot(study, root)
    (root / "study.md").write_text(markdown(study))
    if commit:
        dest.mkdir(parents=True, exist_ok=True)
        for f in ("study.json", "ess.png", "nll.png", "gradvar.png"):
            if (root / f).exists():
                shutil.copy2(root / f, dest / f)
        render_results()
    return study


# Code changes after which a cost measurement of the named setups no longer measures the current
# code: (commit, its date, setups it touched, what changed).
COST_CHANGES = (("a469adc", "2026-11-25T00:28:44Z", ("u1",), "the U(1) flow's bisection"),)


def _span(xs: Sequence[float]) -> str:
    """``lo–hi`` to two decimals, or one value where both round alike."""
    lo, hi = f"{min(xs):.2f}", f"{max(xs):.2f}"
    return lo if lo == hi else f"{lo}–{hi}"


def cost_claim() -> str:
    """The cost claim, named *Cost (C)* (not claim 4 of the verdict table), with its figures
    read from ``benchmarks/results/table2-cpu.json`` (the medians over rounds of the step-time
    ratios of the eager, not compiled, entries) and that record's provenance as it stands."""
    record = json.loads(BENCHMARKS.read_text())
    entries = [e for e in record["entries"].values() if not e.get("compiled")]

    def span(setups: Sequence[str], factor: str) -> str:
        xs = [
            e["factors"][factor]["median"]
            for e in entries
            if e["setup"] in setups and factor in e["factors"]
        ]
        return _span(xs)

    provs = [e.get("provenance") or {} for e in entries]
    stamps = [(e.get("code") or {}).get("commit") for e in entries]
    commits = sorted({str(c) for c in stamps if c and c != "unknown"})
    unstamped = sum(1 for c in stamps if not c or c == "unknown")
    dates = sorted(str(pr["time_utc"]) for pr in provs if pr.get("time_utc"))
    torch = sorted({str(pr["torch"]) for pr in provs if pr.get("torch")})
    load_1m = [pr["load_average_1_5_15"][0] for pr in provs if pr.get("load_average_1_5_15")]
    loads = _span(load_1m) if load_1m else "not recorded"
    dirty = False
    if not commits:
        commit_text = "**no code commit recorded**, so the code it measured cannot be named"
    else:
        commit_text = "code commit " + ", ".join(f"`{c}`" for c in commits)
        if dirty := any(c.endswith("+dirty") for c in commits):
            commit_text += " (**+dirty**: the measured tree differed from its commit)"
        if unstamped:
            commit_text += f"; **{unstamped} entries without a commit**"
    stale = [
        f"{', '.join(setups)} rows measured before {commit} ({date[:10]}), which changed {what}"
        for commit, date, setups, what in COST_CHANGES
        if any(
            e["setup"] in setups and str((e.get("provenance") or {}).get("time_utc", "")) < date
            for e in entries
        )
    ]
    fast = "reverse-path-fast / reverse-standard"
    dropin = "reverse-path-dropin / reverse-path-fast"
    return (
        "**Cost (C)** (a claim of the paper measured in `benchmarks/`, not by the studies; not "
        "claim 4 of the verdict table): the fast path's reverse training step costs "
        f"{span(('gmm', 'phi4'), fast)}× the standard step for the coupling flows (GMM, φ⁴) and "
        f"{span(('u1',), fast)}× for U(1); the drop-in Algorithm 2 costs "
        f"{span(('gmm', 'phi4'), dropin)}× and {span(('u1',), dropin)}× the fast path "
        "(medians over interleaved rounds, eager, float32, CPU; rendered from "
        "`benchmarks/results/table2-cpu.json`, see "
        "[benchmarks/RESULTS.md](../benchmarks/RESULTS.md)). The step times in the study "
        "tables come from runs that shared the two cores two at a "
        "time: they order the estimators but are not a cost measurement.\n\n"
        f"*Provenance of Cost (C)*: `benchmarks/results/table2-cpu.json`, {commit_text}; "
        f"entries measured {dates[0] if dates else '–'} to {dates[-1] if dates else '–'}"
        f"{', torch ' + ', '.join(torch) if torch else ''}"
        + (f"; {'; '.join(stale)}" if stale else "")
        + (
            ". A re-measurement at the current commit, with its commit in the record, is owed."
            if stale or unstamped or dirty or not commits
            else f"; load averages at the end of each entry in the record (1 min: {loads})."
        )
    )


def reading() -> str:
    """How to read the verdicts: the rules of ``studies/rules.py`` with their constants."""
    r = rules
    tol = 100 * r.EQUAL_TIME_TOLERANCE
    seeds = f"{r.CONFIRM_SEEDS[0]}–{r.CONFIRM_SEEDS[-1]}"
    return f"""## Reading the verdicts

The rules are in `paper_runs/studies/rules.py` (its docstring is the full statement; the
section above says when each was set and what had been read by then):

- at least {r.MIN_SEEDS} seeds per study; per-seed values are means over the last {r.K}
  evaluations (at the end, or at or before the equal training time t*, the smallest median
  training time of the study's estimators, measured by the training steps' own clock); claim
  2's trend alone reads every evaluation along the run;
- one-sided tests over seeds from `scipy.stats` in the direction each claim states:
  Mann–Whitney U for the ESS, NLL and generalisation-gap comparisons, Wilcoxon signed-rank for
  the variance claim and for claim 5 (on the per-seed differences: the arms of a seed start
  from one pretrained flow); significance level {r.ALPHA}; a claim *holds* if its corrected
  p-value is at most {r.ALPHA}, *does not hold* if the corrected p-value of the opposite
  direction is, and is *inconclusive* otherwise;
- two corrections for multiplicity, both Holm's: over the claims of each study (the
  exploratory column), and over every claim of the table as one family (the column beside it,
  and the confirmatory column); every row is a member of both, also one without a verdict;
- claim 2, the variance claim as the paper makes it: along each fast-path run the Spearman
  rank correlation between the path gradient's summed variance and the distance from `p`
  (1 − reverse ESS) is positive, over seeds, and at the end (last {r.K} evaluations) the path
  gradient's variance is below {r.VAR_RATIO_MAX:g}× the standard gradient's;
- premises: a claim is judged only inside the situation it is about. Claim 2: the run
  approaches `p` (final reverse ESS at least {r.NEAR_ESS} and above its first value); claim 4:
  on each seed at least one arm ends with a held-out forward ESS of at least
  {r.RELIABLE_FORWARD_ESS} (`pathgrad_ref/evaluation.py`'s reliability threshold); claim 5: a
  reliable pretrained flow. Seeds outside are listed and left out of the tests; with fewer than
  {r.MIN_SEEDS} seeds inside the claim reads *{r.OUTSIDE}*, and the premise column says why;
- effect sizes: differences of means (geometric means for variance ratios, plain means for
  rank correlations) with 95 % percentile bootstrap intervals over seeds
  ({r.BOOTSTRAP_RESAMPLES} resamples, seed {r.BOOTSTRAP_SEED});
- *pending re-run*: the record does not meet this design (fewer than {r.MIN_SEEDS} seeds, the
  old clock that counted evaluation as training for an equal-time claim, or, for a
  confirmatory record, a seed shared with its exploratory record or a run on uncommitted
  changes); its tests are computed and shown, but they back no verdict;
- *exploratory* records (seeds 0–7) were read before some of these rules were written;
  *confirmatory* records repeat each claim study on seeds {seeds}, never run before, under the
  rules as committed before they run; a claim is *established* only where its confirmatory
  verdict, Holm-corrected across all claims, holds;
- `reverse-path-dropin` (Algorithm 2) and `forward-path-gdreg` (Algorithm 3) compute the fast
  path's gradient to rounding, so with the same seeds they retrace its training curve; they
  are reported at their own cost, not tested as further evidence;
- claim 5 (fine-tuning after flow matching) compares final values: every arm trains for one
  budget of training time (`--time-limit`) and is evaluated on the training clock
  (`--eval-every-time`); the arms' median training times must agree to {tol:g} %.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _p(x: float) -> str:
    return f"{x:.2g}"


def disclosure(studies: Sequence[dict[str, Any]]) -> list[str]:
    """How the rules came about (:data:`.rules.RULE_HISTORY`), what each rule set gives on the
    committed records (:mod:`studies.replaced`), and every threshold with its reason."""
    lines = [
        "## How the rules came about",
        "",
        "Not every rule was fixed before the data it judges. Per rule set: the commit that set "
        "it, which records had been read by then, what it replaced and why, and the verdicts "
        f"the replacement flipped. The rules set last, in {rules.LATEST} (premises, claim 2 as "
        "the paper makes it, Holm across all claims, the confirmation), are **new and were "
        "written after every committed record had been read**: on those records they are "
        "exploratory, and only the confirmatory records on fresh seeds test them.",
        "",
    ]
    for h in rules.RULE_HISTORY:
        lines += [
            f"- **{h.commit}** ({h.date}): {h.rules}.",
            f"  - records read by then: {h.seen}.",
            f"  - replaced: {h.replaced}. Why: {h.why}.",
            f"  - verdicts it flipped: {h.flips}.",
        ]
    names = {h.rule_set: f"{h.commit} ({h.date})" for h in rules.RULE_HISTORY if h.rule_set}
    lines += [
        "",
        "### What each rule set gives on the committed records",
        "",
        "Every rule set applied to the same committed records (`paper_runs/studies/replaced.py` "
        "keeps the replaced rules as code). The first rules compared means by 2 standard errors "
        "at the last evaluation and claim 2 by the median variance ratio; c80e2c0 brought the "
        "rank tests, Holm within each study, and claim 2 as a 4× fall of V_path and a final "
        "ratio of at most 0.1 (claim 5, added in 31cb58c, belongs to this set); the current "
        "rules are those of the verdict table (within-study Holm).",
        "",
        f"| study | claim | first rules, {names['first']} | rules of {names['c80e2c0']} | "
        "current rules | changed by the current rules |",
        "|---|---|---|---|---|---|",
    ]
    flips = []
    for study in studies:
        name = study["spec"]["name"]
        for row in replaced.by_rule_set(study):
            changed = row["c80e2c0"] != row["current"]
            if changed:
                flips.append(f"`{name}` {row['claim']}: {row['c80e2c0']} → {row['current']}")
            lines.append(
                f"| `{name}` | {row['claim']} | {row['first']} | {row['c80e2c0']} | "
                f"{row['current']} | {'**yes**' if changed else 'no'} |"
            )
    lines += [
        "",
        "Flips by the current rules on these records: "
        + ("; ".join(flips) if flips else "none")
        + ". Where a rule written after reading the data turns a verdict towards the paper, "
        "only the confirmation can tell a finding from a fitted rule.",
        "",
        "### Thresholds",
        "",
        "| threshold | value | set in | reason |",
        "|---|---|---|---|",
    ]
    for t in rules.THRESHOLDS:
        lines.append(f"| `{t.name}` | {t.value} | {t.set_in} | {_cell(t.reason)} |")
    margins = rules.premise_margins(studies)
    parts = []
    for key, (lo, hi) in margins.items():
        lo_text = "any value" if lo is None else f"above {fmt(lo)}"
        hi_text = "" if hi is None else f" up to {fmt(hi)}"
        parts.append(f"`{key}` {lo_text}{hi_text}")
    lines += [
        "",
        "Sensitivity of the premises on the committed records: these thresholds put every run "
        "(claim 2) and seed (claim 4) on the side they are on now: " + "; ".join(parts) + ".",
        "",
    ]
    return lines


def render_results() -> Path:
    """Write ``paper_runs/RESULTS.md`` (:func:`results_markdown`)."""
    out = HERE / "RESULTS.md"
    out.write_text(results_markdown())
    return out


def committed_studies() -> list[dict[str, Any]]:
    """The committed records of :data:`STUDIES`, in order, with their aggregates recomputed
    from their runs under the current rules."""
    out = []
    for name in STUDIES:
        path = RESULTS_DIR / name / "study.json"
        if path.exists():
            out.append(with_aggregates(json.loads(path.read_text())))
    return out


def confirmatory_records() -> dict[str, dict[str, Any]]:
    """The committed confirmatory records (``results/<study>-confirm/study.json``), by the
    name of the study each confirms."""
    out = {}
    for name in CLAIM_STUDIES:
        path = RESULTS_DIR / confirm_spec(STUDIES[name]).name / "study.json"
        if path.exists():
            out[name] = with_aggregates(json.loads(path.read_text()))
    return out


def _verdict_text(verdict: str, p_for: float, p_against: float) -> str:
    if verdict in (rules.PENDING, rules.OUTSIDE):
        return f"**{verdict}**"
    return f"**{verdict}** (Holm {_p(p_for)}; against {_p(p_against)})"


def results_markdown() -> str:
    """``paper_runs/RESULTS.md`` from the committed ``paper_runs/results/*/study.json``."""
    studies = committed_studies()
    claims = [s for s in studies if not rules.is_preset_check(s)]
    quick = [s for s in studies if rules.is_preset_check(s)]
    confirmatory = confirmatory_records()
    decided = rules.decide_all(claims)
    confirmed = rules.confirm_all(claims, confirmatory)
    m = sum(len(cs) for cs in decided)
    seeds = f"{rules.CONFIRM_SEEDS[0]}–{rules.CONFIRM_SEEDS[-1]}"
    lines = [
        "# Results: the paper's claims, path against standard gradients",
        "",
        "<!-- generated by `python paper_runs/study.py --render` from paper_runs/results/*/"
        "study.json; do not edit by hand -->",
        "",
        f"Each study trains every estimator with every seed (at least {rules.MIN_SEEDS} under "
        "the rules, all reported) and tests the paper's claims with the rules of "
        "`paper_runs/studies/rules.py`. **Not every rule was fixed before the data it "
        "judges**: [How the rules came about](#how-the-rules-came-about) says when each was "
        "set, which records had been read by then and which verdicts each replacement "
        "flipped. The records on seeds 0–7 are therefore *exploratory*; each claim study is to "
        f"be repeated on seeds {seeds}, never run before, as a *confirmatory* record under the "
        "rules as committed, and a claim counts as *established* only where that confirmation "
        "holds. Each study names the paper-size command for a GPU.",
        "",
    ]
    pending = [s["spec"]["name"] for s in claims if len(s["spec"]["seeds"]) < rules.MIN_SEEDS]
    old = [s["spec"]["name"] for s in studies if rules.time_key(s) != "train_time_s"]
    if pending or old:
        lines += [
            "**Status: the re-run is pending.** "
            + (
                f"The committed records of {', '.join(f'`{n}`' for n in pending)} have fewer "
                f"than {rules.MIN_SEEDS} seeds. "
                if pending
                else ""
            )
            + (
                f"Those of {', '.join(f'`{n}`' for n in old)} carry the old clock (the time "
                "axis counts evaluation and checkpoints as training). "
                if old
                else ""
            )
            + "They are old-rule data: rendered below under the new rules, their verdicts read "
            "*pending re-run* wherever the data cannot back one. Re-run with "
            '`python paper_runs/study.py all --commit --why "…"`.',
            "",
        ]
    replaced_records = [s["spec"]["name"] for s in studies if s.get("history")]
    if replaced_records:
        lines += [
            "**Replaced records.** "
            + ", ".join(f"`{n}`" for n in replaced_records)
            + " replace earlier committed records of the same studies; each study's "
            "provenance below says when, from which commit and why (the `history` in its JSON).",
            "",
        ]
    lines += [
        "## Verdicts",
        "",
        "Exploratory verdicts with Holm over each study's claims, beside Holm over all "
        f"{m} claims of the table as one family; the confirmatory verdicts on seeds {seeds} "
        f"(Holm over the same {m} claims; a claim not yet confirmed counts with p = 1); "
        "*established* only where the confirmation holds. Claim 2's test, the premises of "
        "claims 2 and 4 and the family across all claims are **new, written after these "
        "records were read** (see [How the rules came about](#how-the-rules-came-about)).",
        "",
        "| claim | study | estimator | premise | exploratory verdict, seeds 0–7 (Holm within "
        f"the study) | exploratory, Holm across all {m} claims | confirmatory, seeds {seeds} "
        f"(Holm across all {m}) | established? | test | effect (95 % bootstrap interval) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    survive: list[str] = []
    lost: list[str] = []
    for study, cs, conf in zip(claims, decided, confirmed, strict=True):
        name = study["spec"]["name"]
        for c, k in zip(cs, conf, strict=True):
            note = f" ({c.note})" if c.note else ""
            if c.withheld == rules.OUTSIDE:
                inside = f"the {c.n_seeds} seeds inside" if c.n_seeds else "no seed inside"
                note = f" (why: the premise column; tests on {inside}: {c.tests_verdict})"
            if c.verdict in (rules.HOLDS, rules.FAILS):
                label = f"`{name}` {c.number} ({c.verdict}, Holm {_p(c.p_for_all)})"
                if c.verdict == rules.FAILS:
                    label = f"`{name}` {c.number} ({c.verdict}, Holm against {_p(c.p_against_all)})"
                (survive if c.verdict_all == c.verdict else lost).append(label)
            cells = [
                f"{c.number}. {c.text}",
                f"`{name}`",
                f"`{c.estimator}`",
                premise_cell(c),
                f"**{c.verdict}**{note}",
                _verdict_text(c.verdict_all, c.p_for_all, c.p_against_all),
                rules.NOT_RUN
                if k is None
                else _verdict_text(k.verdict_all, k.p_for_all, k.p_against_all)
                + (f" ({k.note})" if k.note else ""),
                rules.status(k),
                test_cell(c),
                c.effect,
            ]
            lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    n_conf = sum(k is not None for row in confirmed for k in row)
    lines += [
        "",
        f"**Across all {m} claims.** Of the exploratory verdicts that hold or do not hold "
        f"within their study, these survive Holm across all claims: "
        + ("; ".join(survive) if survive else "none")
        + ". These do not (they read *inconclusive* across all claims): "
        + ("; ".join(lost) if lost else "none")
        + ".",
        "",
        f"**Confirmation.** {n_conf} of {m} claims have a confirmatory verdict"
        + (
            "; no confirmatory record exists yet, so no claim is established. "
            if not confirmatory
            else ". "
        )
        + ("The command that reproduces them" if n_conf == m else "The plan")
        + f": `python paper_runs/study.py all --confirm --commit` runs every claim study "
        f"({', '.join(f'`{n}`' for n in CLAIM_STUDIES)}) on seeds {seeds}"
        + ("" if n_conf == m else _plan_time())
        + ".",
        "",
        cost_claim(),
        "",
    ]
    missing = [n for n in STUDIES if not (RESULTS_DIR / n / "study.json").exists()]
    if missing:
        lines += ["Not yet committed: " + ", ".join(f"`{m}`" for m in missing), ""]
    lines += disclosure(claims)
    lines += [reading(), "## Presets meet their targets", ""]
    lines += [
        "Not a claim of the paper: each experiment's default command (`python paper_runs/"
        "<experiment>.py`) is checked against targets of its own, fixed in "
        "`paper_runs/studies/rules.py`.",
        "",
    ]
    for study in quick:
        for q in rules.quick_targets(study):
            lines.append(
                f"- `{study['spec']['name']}` (`{q['estimator']}`): {q['target']}: "
                f"**{q['verdict']}** ({q['figures']})"
            )
        lines += [f"  {x}" for x in provenance_lines(study)]
    lines.append("")
    for study in claims:
        name = study["spec"]["name"]
        lines.append(markdown(study, heading="##", image_dir=f"results/{name}/"))
        if name in confirmatory:
            conf_name = confirmatory[name]["spec"]["name"]
            lines.append(
                markdown(confirmatory[name], heading="##", image_dir=f"results/{conf_name}/")
            )
    return "\n".join(lines)


def _plan_time(workers: int = 2) -> str:
    """The confirmatory plan's expected time from the committed records, as in ``--dry-run``
    before any confirmatory run has started."""
    nowhere = Path("/nonexistent-study-root")
    times = [
        expected_seconds(confirm_spec(STUDIES[n]), nowhere / n, workers) for n in CLAIM_STUDIES
    ]
    if any(t is None for t in times):
        return ""
    hours = sum(t for t in times if t is not None) / 3600
    return (
        f", expected about {hours:.1f} h with {workers} runs at a time (from the exploratory "
        "records' wall times; `--dry-run` prints it per study)"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="paper_runs/study.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "studies",
        nargs="*",
        metavar="STUDY",
        help=f"study names ({', '.join(STUDIES)}) or 'all'",
    )
    p.add_argument("--workers", type=int, default=2, help="runs at a time [default: 2]")
    p.add_argument("--out", default="runs/studies", help="root of the study folders")
    p.add_argument("--commit", action="store_true", help="copy results to paper_runs/results/")
    p.add_argument("--render", action="store_true", help="re-render paper_runs/RESULTS.md")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--why", help="with --commit: why a committed record is replaced (kept in its history)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the expected time per study and stop"
    )
    p.add_argument(
        "--confirm",
        action="store_true",
        help="run the named claim studies ('all': every one) as confirmatory records on seeds "
        f"{rules.CONFIRM_SEEDS[0]}-{rules.CONFIRM_SEEDS[-1]}, in <out>/<study>-confirm and, "
        "with --commit, paper_runs/results/<study>-confirm (refused on uncommitted changes)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.studies == ["all"]:
        names = list(CLAIM_STUDIES if args.confirm else STUDIES)
    else:
        names = args.studies
    unknown = [n for n in names if n not in STUDIES]
    if unknown:
        p.error(f"unknown study {', '.join(unknown)}; expected one of: {', '.join(STUDIES)}, all")
    if args.confirm:
        presets = [n for n in names if n not in CLAIM_STUDIES]
        if presets:
            p.error(
                f"--confirm: {', '.join(presets)} checks a preset, not a claim; expected claim "
                f"studies: {', '.join(CLAIM_STUDIES)}, all"
            )
    if args.workers < 1:
        p.error(f"--workers: expected an integer >= 1, got {args.workers}")
    if not names and not args.render:
        p.error("name a study (or 'all'), or pass --render")
    specs = [confirm_spec(STUDIES[n]) if args.confirm else STUDIES[n] for n in names]
    if args.confirm:
        seeds = rules.CONFIRM_SEEDS
        print(
            f"confirmatory plan: {len(specs)} claim stud{'y' if len(specs) == 1 else 'ies'} on "
            f"seeds {seeds[0]}-{seeds[-1]}, {sum(len(s.estimators) for s in specs) * len(seeds)} "
            "runs, under the rules of the current commit"
        )
    total = 0.0
    for spec in specs:
        seconds = expected_seconds(spec, Path(args.out) / spec.name, args.workers)
        total += seconds or 0.0
        print(
            f"{spec.name}: expected {'unknown' if seconds is None else f'{seconds / 60:.1f} min'}"
        )
    if specs:
        print(
            f"expected total: about {total / 60:.0f} min ({total / 3600:.1f} h) with "
            f"{args.workers} run(s) at a time"
        )
    if args.dry_run:
        return 0
    if args.confirm and git_dirty(HERE) is not False:
        p.error(
            "--confirm: the checkout has uncommitted changes (or is not a git checkout); "
            "commit the rules first: a confirmatory record must run under rules that are in "
            "history"
        )
    for spec in specs:
        root = Path(args.out) / spec.name
        try:
            run_study(
                spec,
                HERE / f"{spec.experiment}.py",
                root,
                workers=args.workers,
                progress=not args.no_progress,
            )
            finish(spec, root, commit=args.commit, why=args.why)
        except StudyError as e:
            print(f"{p.prog}: error: {e}", file=sys.stderr)
            return 1
        except StudyInterruptedError as e:
            again = " ".join([*args.studies, *(["--confirm"] if args.confirm else [])])
            print(
                f"{p.prog}: {e}; finished runs are kept, the others checkpointed: run "
                f"`python paper_runs/study.py {again}` again to resume",
                file=sys.stderr,
            )
            return 128 + e.signum
        print((root / "study.md").read_text())
    if args.render:
        print(f"wrote {render_results()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
