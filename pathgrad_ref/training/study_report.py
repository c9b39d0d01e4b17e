"""Verdicts, tables and plots of a study record (``study.json``, see :mod:`.study`).

Everything here is a function of the record alone, so committed study results re-render
without re-running anything. The verdict rules are fixed in code, before any study ran:

- **higher ESS** (path against standard, reverse KL), at equal steps (final evaluation) and at
  equal wall time (the last evaluation within the shortest median training time of the
  study's estimators): with ``d = mean_path − mean_standard`` over seeds and
  ``se = sqrt(se_path² + se_standard²)``, *holds* if ``d > 2 se``, *does not hold* if
  ``d < −2 se``, *inconclusive* otherwise (no difference resolved at this scale).
- **variance** (path-gradient variance falls towards zero as ``q → p``, the standard one's does
  not): in the runs trained with the fast path, ``ρ = Var_path / Var_standard`` (total variance
  over all parameters, same ``θ``, same batch size) at the first and at the final evaluation;
  *holds* if the median final ``ρ`` is below 0.1 and below half the median initial ``ρ``,
  *does not hold* if the median final ``ρ`` is 1 or more, *inconclusive* otherwise.
- **overfitting** (forward KL with a finite training set): maximum likelihood against each
  forward path estimator; *holds* if both the generalisation gap (held-out minus training NLL)
  and the held-out NLL of maximum likelihood exceed the path estimator's by more than
  ``2 se``, *does not hold* if either is lower by more than ``2 se``, *inconclusive* otherwise.
- **quick presets** (:func:`quick_verdicts`): the default command learns: final reverse ESS at
  least 0.2, every reweighted observable within 3 combined standard errors of its reference and
  marked reliable, all within 3 minutes of wall time.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .report import fmt
from .study import quantile

Z = 2.0  # how many combined standard errors a difference must exceed

_LABELS = {
    "reverse-standard": "standard",
    "reverse-path-fast": "path (fast, Alg. 1)",
    "reverse-path-dropin": "path (drop-in, Alg. 2)",
    "forward-standard": "max. likelihood",
    "forward-path-fast": "path (fast, Alg. 1)",
    "forward-path-gdreg": "path (GDReG, Alg. 3)",
}


def label(estimator: str) -> str:
    return f"{estimator}" if estimator not in _LABELS else f"{estimator} ({_LABELS[estimator]})"


# ---------------------------------------------------------------------------------- verdicts


def difference(a: dict[str, Any], b: dict[str, Any]) -> tuple[float | None, float | None]:
    """``(mean_a − mean_b, sqrt(se_a² + se_b²))`` of two aggregates; ``None`` where unknown."""
    if a.get("mean") is None or b.get("mean") is None:
        return None, None
    d = float(a["mean"]) - float(b["mean"])
    if a.get("se") is None or b.get("se") is None:
        return d, None
    return d, math.hypot(float(a["se"]), float(b["se"]))


def higher(a: dict[str, Any], b: dict[str, Any]) -> str:
    """``"holds"`` if ``a`` exceeds ``b`` by more than ``Z`` combined standard errors,
    ``"does not hold"`` if it is lower by as much, else ``"inconclusive"``."""
    d, se = difference(a, b)
    if d is None or se is None:
        return "inconclusive"
    if d > Z * se:
        return "holds"
    if d < -Z * se:
        return "does not hold"
    return "inconclusive"


def _pm(agg: dict[str, Any]) -> str:
    if agg.get("mean") is None:
        return "–"
    if agg.get("se") is None:
        return fmt(agg["mean"])
    return f"{fmt(agg['mean'])} ± {fmt(agg['se'], 2)}"


def _variance_ends(
    study: dict[str, Any], estimator: str, key: str
) -> tuple[list[float], list[float]]:
    """Per run trained with ``estimator``: ``key`` (a function of an evaluation record) at the
    first and at the last evaluation that has the gradient variances."""
    initial, final = [], []
    for run in study["runs"]:
        if run["estimator"] != estimator:
            continue
        values = [
            _VARIANCE_KEYS[key](r)
            for r in run["curve"]
            if isinstance(r.get("grad_var_path"), (int, float))
            and isinstance(r.get("grad_var_standard"), (int, float))
            and r["grad_var_standard"] > 0
        ]
        if len(values) >= 2:
            initial.append(values[0])
            final.append(values[-1])
    return initial, final


_VARIANCE_KEYS = {
    "ratio": lambda r: r["grad_var_path"] / r["grad_var_standard"],
    "path": lambda r: r["grad_var_path"],
    "standard": lambda r: r["grad_var_standard"],
}


def _median(xs: Sequence[float]) -> float:
    return quantile(sorted(xs), 0.5)


QUICK_MIN_ESS = 0.2
QUICK_MAX_WALL_S = 180.0


def quick_verdicts(study: dict[str, Any]) -> list[dict[str, str]]:
    """A quick preset's targets, per run: final reverse ESS ``≥ QUICK_MIN_ESS``, every
    reweighted observable within 3 combined standard errors of its reference and marked
    reliable, and the whole command (target samples included) within ``QUICK_MAX_WALL_S``."""
    out = []
    refs = study.get("references") or {}
    for run in study["runs"]:
        f = run.get("final") or {}
        ess = f.get("ess_reverse")
        ok = isinstance(ess, float) and ess >= QUICK_MIN_ESS and f.get("reliable") is True
        figures = [f"reverse ESS {fmt(ess)} ± {fmt(f.get('ess_reverse_err'), 1)}"]
        for o, label_ in (study.get("observables") or {}).items():
            ref, value, err = refs.get(o) or {}, f.get(o), f.get(f"{o}_err")
            if not isinstance(value, float) or not isinstance(ref.get("value"), (int, float)):
                ok = False
                continue
            sigma = math.hypot(err if isinstance(err, float) else math.nan, ref.get("err") or 0.0)
            pull = (value - ref["value"]) / sigma if sigma > 0 else math.inf
            ok = ok and abs(pull) <= 3.0
            figures.append(f"{label_} {fmt(value)} vs {fmt(ref['value'])} ({pull:+.1f}σ)")
        wall = run.get("wall_s")
        figures.append(f"wall time {fmt(wall)} s" if isinstance(wall, float) else "wall time –")
        fast = isinstance(wall, float) and wall <= QUICK_MAX_WALL_S
        out.append(
            {
                "claim": f"quick preset: ESS ≥ {QUICK_MIN_ESS}, observables within 3σ and "
                f"reliable, within {QUICK_MAX_WALL_S:.0f} s",
                "estimator": run["estimator"],
                "verdict": "holds" if ok and fast else "does not hold",
                "figures": "; ".join(figures) + ("" if f.get("reliable") else "; UNRELIABLE"),
            }
        )
    return out


def verdicts(study: dict[str, Any]) -> list[dict[str, str]]:
    """Every claim the study tests, with its verdict (see the module docstring) and figures."""
    if study["spec"].get("preset") == "quick" and len(study["spec"]["estimators"]) == 1:
        return quick_verdicts(study)
    est = study["estimators"]
    out: list[dict[str, str]] = []
    for std, paths, fast in (
        ("reverse-standard", ("reverse-path-fast", "reverse-path-dropin"), "reverse-path-fast"),
        ("forward-standard", ("forward-path-fast", "forward-path-gdreg"), "forward-path-fast"),
    ):
        if std not in est:
            continue
        for p in (p for p in paths if p in est):
            if std.startswith("reverse"):
                for key, what in (
                    ("final_ess_reverse", "equal steps"),
                    ("ess_reverse_at_equal_time", "equal wall time"),
                ):
                    if key not in est[p]:
                        continue
                    out.append(
                        {
                            "claim": f"1. higher reverse ESS than the standard gradient, {what}",
                            "estimator": p,
                            "verdict": higher(est[p][key], est[std][key]),
                            "figures": f"{p} {_pm(est[p][key])} vs {std} {_pm(est[std][key])}",
                        }
                    )
            else:
                gap = higher(est[std]["final_nll_gap"], est[p]["final_nll_gap"])
                held = higher(est[std]["final_nll"], est[p]["final_nll"])
                if "does not hold" in (gap, held):
                    v = "does not hold"
                elif gap == held == "holds":
                    v = "holds"
                else:
                    v = "inconclusive"
                out.append(
                    {
                        "claim": "3. maximum likelihood overfits a finite training set, the "
                        "path gradient far less",
                        "estimator": p,
                        "verdict": v,
                        "figures": (
                            f"NLL gap (held-out − train): {std} {_pm(est[std]['final_nll_gap'])}"
                            f" vs {p} {_pm(est[p]['final_nll_gap'])}; held-out NLL: "
                            f"{_pm(est[std]['final_nll'])} vs {_pm(est[p]['final_nll'])}; "
                            f"held-out forward ESS: {_pm(est[std]['final_ess_forward'])} vs "
                            f"{_pm(est[p]['final_ess_forward'])}"
                        ),
                    }
                )
        if fast in est:
            initial, final = _variance_ends(study, fast, "ratio")
            p0, p1 = (_median(v) if v else math.nan for v in _variance_ends(study, fast, "path"))
            s0, s1 = (
                _median(v) if v else math.nan for v in _variance_ends(study, fast, "standard")
            )
            if final:
                m0, m1 = _median(initial), _median(final)
                if m1 < 0.1 and m1 < 0.5 * m0:
                    v = "holds"
                elif m1 >= 1.0:
                    v = "does not hold"
                else:
                    v = "inconclusive"
                out.append(
                    {
                        "claim": "2. the path gradient's variance falls towards zero as q → p, "
                        "the standard one's does not",
                        "estimator": fast,
                        "verdict": v,
                        "figures": (
                            f"Var_path/Var_standard along {fast} training: median "
                            f"{fmt(m0)} at the first evaluation → {fmt(m1)} at the last "
                            f"(per seed: {', '.join(fmt(x) for x in final)}); medians of "
                            f"Σ Var: path {fmt(p0)} → {fmt(p1)}, standard {fmt(s0)} → {fmt(s1)}"
                        ),
                    }
                )
    return out


# ---------------------------------------------------------------------------------- tables


def _cell(agg: dict[str, Any] | None, skewed: bool = False) -> str:
    if not agg or agg.get("mean") is None:
        return "–"
    if skewed:
        return f"{fmt(agg['median'])} [{fmt(agg['q25'])}, {fmt(agg['q75'])}]"
    return _pm(agg)


def markdown(study: dict[str, Any], *, heading: str = "#", image_dir: str = "") -> str:
    """``study.md``: the claim, settings, verdicts, the table across seeds, every seed's
    final values and the plots (``image_dir`` is prefixed to the image paths)."""
    spec, hw, est = study["spec"], study["hardware"], study["estimators"]
    load = study.get("load_average_1m") or {}
    seeds = ", ".join(str(s) for s in spec["seeds"])
    lines = [
        f"{heading} Study `{spec['name']}`: {spec['experiment']}, preset `{spec['preset']}`",
        "",
        f"*Claim tested*: {spec['claim']}",
        "",
        f"- command: `python paper_runs/study.py {spec['name']}`",
        f"- seeds: {seeds} (every seed is reported); hardware: {hw.get('cpu')}, "
        f"{hw.get('cores')} cores, torch {hw.get('torch')}"
        + (f", GPU {hw['gpu']}" if hw.get("gpu") else ", no GPU")
        + (
            f"; load average (1 min) as each run ended: median {fmt(load['median'], 2)}, "
            f"max {fmt(load['max'], 2)}"
            if load.get("median") is not None
            else ""
        ),
    ]
    if spec.get("gpu_command"):
        lines.append(f"- paper size on a GPU: `{spec['gpu_command']}`")
    if study.get("equal_time_s") is not None:
        lines.append(
            f"- equal wall time: {fmt(study['equal_time_s'])} s of training (the shortest "
            "median training time of the estimators)"
        )
    lines += ["", "**Verdicts**", ""]
    vs = verdicts(study)
    for v in vs:
        lines.append(f"- {v['claim']} — `{v['estimator']}`: **{v['verdict']}** ({v['figures']})")
    if not vs:
        lines.append("- (this study tests no claim by itself)")
    rows: list[tuple[str, str, bool]] = [
        ("final reverse ESS", "final_ess_reverse", True),
        ("best reverse ESS", "best_ess_reverse", True),
        ("reverse ESS at equal wall time", "ess_reverse_at_equal_time", True),
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
        rows.append((f"final {name}{ref_text}".replace("|", "\\|"), f"final_{o}", False))
    names = list(est)
    lines += [
        "",
        "Across seeds: mean ± standard error; ESS as median [first quartile, third quartile].",
        "",
        "| | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for title, key, skewed in rows:
        cells = []
        for n in names:
            agg = est[n].get(key)
            if key == "step_time_s" and agg and agg.get("mean") is not None:
                agg = {k: (v * 1e3 if isinstance(v, float) else v) for k, v in agg.items()}
            cells.append(_cell(agg, skewed))
        if all(c == "–" for c in cells):
            continue
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines += ["", "Every seed (final evaluation):", ""]
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
        "ess.png": "reverse ESS against step and wall time (median, band: min–max over seeds)",
        "nll.png": "held-out and training NLL, held-out forward ESS",
        "gradvar.png": "gradient variance along training",
    }
    for png in plot_names(study):
        lines.append(f"![{captions[png]}]({image_dir}{png})")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- plots


def _series(
    runs: Sequence[dict[str, Any]], key: str, x: str
) -> list[tuple[list[float], list[float]]]:
    out = []
    for run in runs:
        pts = [
            (float(r[x]), float(r[key]))
            for r in run["curve"]
            if isinstance(r.get(x), (int, float))
            and isinstance(r.get(key), (int, float))
            and math.isfinite(r[key])
        ]
        if pts:
            out.append(([p[0] for p in pts], [p[1] for p in pts]))
    return out


def _band(
    series: list[tuple[list[float], list[float]]], grid: list[float]
) -> tuple[list[float], list[float], list[float]]:
    """Median, min and max over runs on ``grid``, each run held at its last value ≤ x."""
    med, lo, hi = [], [], []
    for g in grid:
        vals = []
        for xs, ys in series:
            v = None
            for xv, yv in zip(xs, ys, strict=True):
                if xv <= g:
                    v = yv
            if v is not None:
                vals.append(v)
        if vals:
            med.append(_median(vals))
            lo.append(min(vals))
            hi.append(max(vals))
        else:
            med.append(math.nan)
            lo.append(math.nan)
            hi.append(math.nan)
    return med, lo, hi


def _plot_band(
    ax: Any, study: dict[str, Any], key: str, x: str, *, style: str = "-", suffix: str = ""
) -> bool:
    drawn = False
    for i, e in enumerate(study["estimators"]):
        runs = [r for r in study["runs"] if r["estimator"] == e]
        series = _series(runs, key, x)
        if not series:
            continue
        grid = sorted({v for xs, _ in series for v in xs})
        med, lo, hi = _band(series, grid)
        color = f"C{i}"
        ax.plot(grid, med, style, color=color, label=f"{e}{suffix}")
        ax.fill_between(grid, lo, hi, color=color, alpha=0.2, linewidth=0)
        drawn = True
    return drawn


def _log_if_wide(ax: Any, study: dict[str, Any], key: str) -> None:
    vals = [
        r[key]
        for run in study["runs"]
        for r in run["curve"]
        if isinstance(r.get(key), (int, float)) and r[key] > 0
    ]
    if vals and max(vals) / min(vals) > 100:
        ax.set_yscale("log")
        if key.startswith("ess"):
            ax.set_ylim(top=1.5)  # an ESS is at most 1


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
    """``ess.png``, and where the record has the values ``nll.png`` and ``gradvar.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    name = study["spec"]["name"]
    written: list[Path] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a plot that warns is a plot that is wrong
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
        for ax, x, xlabel in (
            (axes[0], "step", "step"),
            (axes[1], "elapsed_s", "training time [s]"),
        ):
            _plot_band(ax, study, "ess_reverse", x)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("reverse ESS")
            _log_if_wide(ax, study, "ess_reverse")
            ax.grid(alpha=0.3)
        if study.get("equal_time_s") is not None and len(study["estimators"]) > 1:
            axes[1].axvline(study["equal_time_s"], color="k", lw=0.8, ls=":", label="equal time")
        axes[0].legend(fontsize=8)
        axes[1].legend(fontsize=8)
        fig.suptitle(f"{name}: reverse ESS (median over seeds, band: min–max)")
        written.append(out_dir / "ess.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

        if "nll.png" in plot_names(study):
            fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
            _plot_band(axes[0], study, "nll", "step", suffix=" held-out")
            _plot_band(axes[0], study, "nll_train", "step", style="--", suffix=" train")
            axes[0].set_ylabel("NLL")
            _plot_band(axes[1], study, "ess_forward", "step")
            axes[1].set_ylabel("forward ESS (held-out)")
            _log_if_wide(axes[1], study, "ess_forward")
            for ax in axes:
                ax.set_xlabel("step")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
            fig.suptitle(f"{name}: held-out (solid) and training (dashed) NLL")
            written.append(out_dir / "nll.png")
            fig.savefig(written[-1], dpi=110)
            plt.close(fig)

        gv_runs = [r for r in study["runs"] if any("grad_var_path" in c for c in r["curve"])]
        if "gradvar.png" in plot_names(study):
            trained = [e for e in study["estimators"] if any(r["estimator"] == e for r in gv_runs)]
            fig, axes = plt.subplots(
                1,
                len(trained),
                figsize=(4.2 * len(trained), 3.8),
                squeeze=False,
                constrained_layout=True,
            )
            for ax, e in zip(axes[0], trained, strict=True):
                runs = [r for r in gv_runs if r["estimator"] == e]
                sub_runs: list[dict[str, Any]] = []
                sub = {"estimators": {"standard": 0, "path": 0}, "runs": sub_runs}
                for kind in ("standard", "path"):
                    for r in runs:
                        sub_runs.append(
                            {
                                "estimator": kind,
                                "curve": [
                                    {"step": c["step"], "v": c.get(f"grad_var_{kind}")}
                                    for c in r["curve"]
                                ],
                            }
                        )
                _plot_band(ax, sub, "v", "step")
                ax.set_yscale("log")
                ax.set_xlabel("step")
                ax.set_ylabel(r"total gradient variance $\sum_k \mathrm{Var}[g_k]$")
                ax.set_title(f"trained with {e}", fontsize=9)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=8)
            fig.suptitle(f"{name}: gradient variance at the same θ", fontsize=10)
            written.append(out_dir / "gradvar.png")
            fig.savefig(written[-1], dpi=110)
            plt.close(fig)
    return written
