"""Tables and plots of a study record (``study.json``, see :mod:`.running`), with the verdicts
of :mod:`.rules`.

Everything here is a function of the record alone, so committed study results re-render
without re-running anything.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from pathgrad_ref import plots
from pathgrad_ref.evaluation import fmt

from . import rules


def _pm(agg: dict[str, Any]) -> str:
    if agg.get("mean") is None:
        return "–"
    if agg.get("se") is None:
        return str(fmt(agg["mean"]))
    return f"{fmt(agg['mean'])} ± {fmt(agg['se'], 2)}"


def _cell(agg: dict[str, Any] | None, skewed: bool = False) -> str:
    if not agg or agg.get("mean") is None:
        return "–"
    if skewed:
        return f"{fmt(agg['median'])} [{fmt(agg['q25'])}, {fmt(agg['q75'])}]"
    return _pm(agg)


def clock_text(study: dict[str, Any]) -> str:
    """What the time axis and the equal-time comparison measure."""
    if rules.time_key(study) == "train_time_s":
        return "training time = the training steps' own time (evaluation and checkpoints excluded)"
    return (
        "**old clock**: the records carry only `elapsed_s`, which counts evaluation and "
        "checkpoints as training; equal-time comparisons from it await the re-run"
    )


def provenance_lines(study: dict[str, Any]) -> list[str]:
    """The record's provenance and history as Markdown bullet points."""
    prov = study.get("provenance") or {}
    hw = prov.get("hardware") or study.get("hardware") or {}
    lines = []
    if prov.get("reconstructed"):
        lines.append(f"- provenance (reconstructed after the fact): {prov['reconstructed']}")
    dirty = prov.get("dirty")
    dirty_text = (
        {True: " (uncommitted changes)", False: " (clean tree)"}.get(dirty, "")
        if isinstance(dirty, bool)
        else ""
    )
    lines.append(
        f"- code commit: `{prov.get('commit') or 'not recorded'}`{dirty_text}; torch "
        f"{prov.get('torch') or hw.get('torch') or '–'}, Python "
        f"{prov.get('python') or hw.get('python') or '–'}; {hw.get('cpu', '–')}, "
        f"{hw.get('cores', '–')} cores" + (f", GPU {hw['gpu']}" if hw.get("gpu") else ", no GPU")
    )
    load = study.get("load_average_1m") or {}
    lines.append(
        f"- date: {prov.get('date') or 'not recorded'}"
        + (
            f"; load average (1 min) as each run ended: median {fmt(load['median'], 2)}, "
            f"max {fmt(load['max'], 2)}"
            if load.get("median") is not None
            else ""
        )
    )
    commands = prov.get("commands") or []
    if commands:
        lines.append("- commands: " + "; ".join(f"`{' '.join(c)}`" for c in commands))
    runs = prov.get("run_commands") or []
    if runs:
        lines.append(
            f"- every run's exact command is in the JSON ({len(runs)} invocations), e.g. "
            f"`{' '.join(runs[0])}`"
        )
    for h in study.get("history") or []:
        where = f", committed in `{h['committed_in']}`" if h.get("committed_in") else ""
        lines.append(
            f"- replaced: the record of {h.get('date') or '–'} (code commit "
            f"`{h.get('commit') or 'not recorded'}`{where}): {h.get('why')}"
        )
        if h.get("verdicts"):
            lines.append(f"  - its verdicts → this record's: {verdict_changes(study, h)}")
    return lines


def record_verdicts(study: dict[str, Any]) -> list[dict[str, str]]:
    """Every verdict of a record, as kept in a replacing record's ``history``: ``claim``
    (the claim's number, or the preset's target), ``estimator``, ``verdict`` and ``tests``
    (what the tests alone give; differs from ``verdict`` where the design withholds one)."""
    if rules.is_preset_check(study):
        return [
            {"claim": q["target"], "estimator": q["estimator"], "verdict": q["verdict"],
             "tests": q["verdict"]}
            for q in rules.quick_targets(study)
        ]  # fmt: skip
    return [
        {"claim": c.number, "estimator": c.estimator, "verdict": c.verdict,
         "tests": c.tests_verdict}
        for c in rules.decide(study)
    ]  # fmt: skip


def verdict_changes(study: dict[str, Any], replaced: dict[str, Any]) -> str:
    """``"1a (`reverse-path-fast`): pending re-run (tests alone: holds) → holds; …"``: each
    verdict of a replaced record (a ``history`` entry with ``verdicts``) against this one's."""
    now = {(v["claim"], v["estimator"]): v["verdict"] for v in record_verdicts(study)}
    parts = []
    for v in replaced.get("verdicts") or []:
        was = v["verdict"] + (f" (tests alone: {v['tests']})" if v["tests"] != v["verdict"] else "")
        new = now.get((v["claim"], v["estimator"]), "not tested now")
        same = " (unchanged)" if new == v["verdict"] else ""
        parts.append(f"{v['claim']} (`{v['estimator']}`): {was} → {new}{same}")
    return "; ".join(parts)


def premise_cell(c: rules.Claim) -> str:
    """The claim's premise (:data:`.rules.PREMISES`) and whether the record meets it."""
    rule = c.premise_rule
    inside, outside = c.values.get("inside"), c.values.get("outside")
    if c.premise:
        return f"{rule}: **not met**, {c.premise}"
    if inside is not None:
        return f"{rule}: met ({len(inside)} of {len(inside) + len(outside or {})} seeds)"
    return rule


def test_cell(c: rules.Claim) -> str:
    """The claim's p-value, Holm-adjusted within its study, and its seeds."""
    return (
        f"p = {c.p_for:.2g}, Holm {c.p_for_holm:.2g} (against: Holm {c.p_against_holm:.2g}); "
        f"{c.n_seeds} seeds"
    )


def verdict_rows(
    study: dict[str, Any], decided: list[rules.Claim] | None = None
) -> list[dict[str, str]]:
    """One row per claim (:func:`.rules.decide`, or the claims ``decided``): claim,
    estimator, verdict, premise, p-values, effect."""
    out = []
    for c in rules.decide(study) if decided is None else decided:
        out.append(
            {
                "claim": f"{c.number}. {c.text}",
                "estimator": c.estimator,
                "verdict": c.verdict,
                "premise": premise_cell(c),
                "test": test_cell(c),
                "effect": c.effect,
                "figures": c.figures,
                "note": c.note,
            }
        )
    return out


def markdown(study: dict[str, Any], *, heading: str = "#", image_dir: str = "") -> str:
    """``study.md``: the claim, provenance, verdicts, the table across seeds, every seed's
    final values and the plots (``image_dir`` is prefixed to the image paths)."""
    spec, est = study["spec"], study["estimators"]
    seeds = ", ".join(str(s) for s in spec["seeds"])
    confirms = spec.get("confirms")
    command = f"{confirms} --confirm" if confirms else spec["name"]
    lines = [
        f"{heading} Study `{spec['name']}`: {spec['experiment']}, preset `{spec['preset']}`",
        "",
        f"*Claim tested*: {spec['claim']}",
        "",
        f"- command: `python paper_runs/study.py {command}`; seeds: {seeds} (every seed "
        "is reported)",
        *provenance_lines(study),
        f"- clock: {clock_text(study)}",
    ]
    if spec.get("design"):
        lines.append(f"- how the settings were chosen: {spec['design']}")
    if spec.get("gpu_command"):
        lines.append(f"- paper size on a GPU: `{spec['gpu_command']}`")
    if study.get("equal_time_s") is not None and len(spec["estimators"]) > 1:
        lines.append(
            f"- equal training time t* = {fmt(study['equal_time_s'])} s (the smallest median "
            "final training time of the estimators)"
        )
    quick = rules.is_preset_check(study)
    lines += ["", "**Targets**" if quick else "**Verdicts** (Holm over this study's claims)", ""]
    if len(spec["seeds"]) < 2 and not quick:
        lines.append("- one seed: no claim is tested (`paper_runs/study.py` runs the studies)")
    elif quick:
        for q in rules.quick_targets(study):
            lines.append(
                f"- {q['target']} — `{q['estimator']}`: **{q['verdict']}** ({q['figures']})"
            )
    else:
        rows = verdict_rows(study)
        for v in rows:
            note = f" — {v['note']}" if v["note"] else ""
            lines.append(
                f"- {v['claim']} — `{v['estimator']}`: **{v['verdict']}**{note}. Premise: "
                f"{v['premise']}. {v['test']}; effect {v['effect']}. Per seed: {v['figures']}"
            )
        if not rows:
            lines.append("- (this study tests no claim by itself)")
        for t in rules.same_trajectory(study):
            at = t.get(f"ess_reverse_at_equal_time[{t['estimator']}]")
            fast_at = t.get(f"ess_reverse_at_equal_time[{t['retraces']}]")
            lines.append(
                f"- `{t['estimator']}` retraces `{t['retraces']}` (same gradient to rounding; "
                "not tested separately): largest per-seed difference at equal steps in reverse "
                f"ESS {fmt(t['max_abs_difference_ess_reverse'])}, forward ESS "
                f"{fmt(t['max_abs_difference_ess_forward'])}, held-out NLL "
                f"{fmt(t['max_abs_difference_nll'])}; at its own cost, its reverse ESS at t* is "
                f"{fmt(at)} (mean over seeds) against {fmt(fast_at)} for `{t['retraces']}`"
            )
    rows_spec: list[tuple[str, str, bool]] = [
        ("final reverse ESS", "final_ess_reverse", True),
        ("best reverse ESS", "best_ess_reverse", True),
        ("reverse ESS at equal training time", "ess_reverse_at_equal_time", True),
        ("final forward ESS (held-out)", "final_ess_forward", True),
        ("final NLL (held-out)", "final_nll", False),
        ("final NLL (training set)", "final_nll_train", False),
        ("NLL gap (held-out − train)", "final_nll_gap", False),
        ("final KL(q‖p)", "final_kl_reverse", False),
        ("final KL(p‖q)", "final_kl_forward", False),
        ("mean step time [ms]", "step_time_s", False),
        ("training time [s]", "train_time_s", False),
    ]
    for o, name in study.get("observables", {}).items():
        ref = study.get("references", {}).get(o)
        ref_text = ""
        if ref:
            ref_text = f" (reference {fmt(ref['value'])}" + (
                f" ± {fmt(ref['err'], 2)})" if ref.get("err") else ", exact)"
            )
        # "|" would end the table cell (⟨|M|⟩/V)
        rows_spec.append((f"final {name}{ref_text}".replace("|", "\\|"), f"final_{o}", False))
    names = list(est)
    lines += [
        "",
        f"Across seeds: mean ± standard error; ESS as median [first quartile, third quartile]; "
        f"final values are means over the last {rules.K} evaluations.",
        "",
        "| | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for title, key, skewed in rows_spec:
        cells = []
        for n in names:
            agg = est[n].get(key)
            if key == "step_time_s" and agg and agg.get("mean") is not None:
                agg = {k: (v * 1e3 if isinstance(v, float) else v) for k, v in agg.items()}
            cells.append(_cell(agg, skewed))
        if all(c == "–" for c in cells):
            continue
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines += ["", "Every seed (last evaluation):", ""]
    lines += ["| estimator | seed | steps | reverse ESS | forward ESS | NLL | reliable |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for run in study["runs"]:
        f = run.get("final") or {}
        ess = fmt(f.get("ess_reverse"))
        if f.get("ess_reverse_err") is not None:
            ess += f" ± {fmt(f['ess_reverse_err'], 1)}"
        lines.append(
            f"| `{run['estimator']}` | {run['seed']} | {run.get('steps_done')} | {ess} | "
            f"{fmt(f.get('ess_forward'))} | {fmt(f.get('nll'))} | "
            f"{'–' if f.get('reliable') is None else ('yes' if f['reliable'] else 'no')} |"
        )
    lines.append("")
    captions = {
        "ess.png": "reverse ESS against step and training time (median, band: min–max over seeds)",
        "nll.png": "held-out and training NLL, held-out forward ESS",
        "gradvar.png": "gradient variance along training",
    }
    for png in plot_names(study):
        lines.append(f"![{captions[png]}]({image_dir}{png})")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- plots


def _time_label(study: dict[str, Any]) -> str:
    if rules.time_key(study) == "train_time_s":
        return "training time [s] (steps only)"
    return "elapsed time [s] (old clock: evaluation included)"


def _curves(study: dict[str, Any], estimator: str, key: str, x: str) -> list[plots.Curve]:
    """One curve of ``key`` against ``x`` per run of ``estimator``."""
    return [plots.series(r["curve"], key, x) for r in study["runs"] if r["estimator"] == estimator]


def _values(study: dict[str, Any], key: str) -> list[float]:
    return [y for e in study["estimators"] for _, ys in _curves(study, e, key, "step") for y in ys]


def _bands(
    ax: Any, study: dict[str, Any], key: str, x: str, *, style: str = "-", suffix: str = ""
) -> None:
    for i, e in enumerate(study["estimators"]):
        plots.plot_band(ax, _curves(study, e, key, x), f"{e}{suffix}", color=f"C{i}", style=style)


def _has(study: dict[str, Any], key: str) -> bool:
    return any(key in rec for run in study["runs"] for rec in run["curve"])


def plot_names(study: dict[str, Any]) -> list[str]:
    """The files :func:`plot` writes for this record."""
    names = ["ess.png"]
    if _has(study, "nll_train"):
        names.append("nll.png")
    if _has(study, "grad_var_path"):
        names.append("gradvar.png")
    return names


def plot(study: dict[str, Any], out_dir: Path) -> list[Path]:
    """``ess.png`` (reverse ESS against step and training time), and where the record has the
    values ``nll.png`` (held-out and training NLL, held-out forward ESS) and ``gradvar.png``
    (both gradients' summed variance along the runs of each estimator that measured it); each
    a median over seeds with a min–max band, or the one run's curve (:mod:`pathgrad_ref.plots`)."""
    plt = plots.pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    name = study["spec"]["name"]
    written: list[Path] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a plot that warns is a plot that is wrong
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
        ess = _values(study, "ess_reverse")
        for ax, x, xlabel in (
            (axes[0], "step", "step"),
            (axes[1], rules.time_key(study), _time_label(study)),
        ):
            _bands(ax, study, "ess_reverse", x)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("reverse ESS")
            plots.log_if_decades(ax, ess, decades=2.0)
            ax.grid(alpha=0.3)
        if study.get("equal_time_s") is not None and len(study["estimators"]) > 1:
            axes[1].axvline(study["equal_time_s"], color="k", lw=0.8, ls=":", label="equal time")
        for ax in axes:
            plots.legend(ax)
        seeds = study["spec"]["seeds"]
        over = "median over seeds, band: min–max" if len(seeds) > 1 else f"one run, seed {seeds[0]}"
        fig.suptitle(f"{name}: reverse ESS ({over})")
        written.append(out_dir / "ess.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

        if "nll.png" in plot_names(study):
            fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
            _bands(axes[0], study, "nll", "step", suffix=" held-out")
            _bands(axes[0], study, "nll_train", "step", style="--", suffix=" train")
            axes[0].set_ylabel("NLL")
            _bands(axes[1], study, "ess_forward", "step")
            axes[1].set_ylabel("forward ESS (held-out)")
            plots.log_if_decades(axes[1], _values(study, "ess_forward"), decades=2.0)
            for ax in axes:
                ax.set_xlabel("step")
                ax.grid(alpha=0.3)
                plots.legend(ax)
            fig.suptitle(f"{name}: held-out (solid) and training (dashed) NLL")
            written.append(out_dir / "nll.png")
            fig.savefig(written[-1], dpi=110)
            plt.close(fig)

        if "gradvar.png" in plot_names(study):
            trained = [
                e
                for e in study["estimators"]
                if any(c[0] for c in _curves(study, e, "grad_var_path", "step"))
            ]
            fig, axes = plt.subplots(
                1,
                len(trained),
                figsize=(4.2 * len(trained), 3.8),
                squeeze=False,
                constrained_layout=True,
            )
            for ax, e in zip(axes[0], trained, strict=True):
                for i, kind in enumerate(("standard", "path")):
                    curves = _curves(study, e, f"grad_var_{kind}", "step")
                    plots.plot_band(ax, curves, kind, color=f"C{i}")
                ax.set_yscale("log")
                ax.set_xlabel("step")
                ax.set_ylabel(r"total gradient variance $\sum_k \mathrm{Var}[g_k]$")
                ax.set_title(f"trained with {e}", fontsize=9)
                ax.grid(alpha=0.3)
                plots.legend(ax)
            fig.suptitle(f"{name}: gradient variance at the same θ", fontsize=10)
            written.append(out_dir / "gradvar.png")
            fig.savefig(written[-1], dpi=110)
            plt.close(fig)
    return written
