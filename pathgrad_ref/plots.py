"""The one plotting module: the plots of a run, and small helpers for studies that plot many.

matplotlib (with the Agg backend) is imported only when a plot is made (:func:`pyplot`).
A curve is a pair ``(xs, ys)`` of equal-length lists; :func:`series` reads one from metric
records, :func:`band` summarises several (one per seed) as a median with a quantile band.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .evaluation import Observable, fmt

Curve = tuple[list[float], list[float]]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def legend(ax: Any, **kw: Any) -> None:
    """A legend only where something is labelled (matplotlib warns on an empty one)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", **kw)


def log_if_decades(ax: Any, ys: Sequence[float], decades: float = 1.0) -> None:
    """Log y scale when the positive values span more than ``decades`` decades."""
    pos = [y for y in ys if y > 0 and math.isfinite(y)]
    if pos and math.log10(max(pos) / min(pos)) > decades:
        ax.set_yscale("log")


def series(records: Sequence[Mapping[str, Any]], key: str, x: str = "step") -> Curve:
    """``(x values, key values)`` over the records where both are finite numbers."""
    xs, ys = [], []
    for r in records:
        v, t = r.get(key), r.get(x)
        num = isinstance(v, (int, float)) and isinstance(t, (int, float))
        if num and math.isfinite(v) and math.isfinite(t):  # type: ignore[arg-type]
            xs.append(float(t))  # type: ignore[arg-type]
            ys.append(float(v))  # type: ignore[arg-type]
    return xs, ys


def band(
    curves: Sequence[Curve], quantiles: tuple[float, float] = (0.0, 1.0)
) -> tuple[list[float], list[float], list[float], list[float]]:
    """``(grid, median, low, high)`` over ``curves`` (e.g. one per seed) on the union of their
    x values, each curve held at its last value at or before the grid point (and absent before
    its first); ``low``/``high`` are the ``quantiles`` (default: min and max)."""
    grid = sorted({x for xs, _ in curves for x in xs})
    med, lo, hi = [], [], []
    for g in grid:
        vals = []
        for xs, ys in curves:
            at = [y for x, y in zip(xs, ys, strict=True) if x <= g]
            if at:
                vals.append(at[-1])
        m, low, high = np.quantile(vals, [0.5, *quantiles]).tolist()
        med.append(m)
        lo.append(low)
        hi.append(high)
    return grid, med, lo, hi


def plot_band(
    ax: Any,
    curves: Sequence[Curve],
    label: str,
    *,
    color: str | None = None,
    style: str = "-",
    quantiles: tuple[float, float] = (0.0, 1.0),
) -> bool:
    """Draw :func:`band` of ``curves`` (median line, shaded band); False if there is none."""
    curves = [c for c in curves if c[0]]
    if not curves:
        return False
    grid, med, lo, hi = band(curves, quantiles)
    (line,) = ax.plot(grid, med, style, color=color, label=label)
    ax.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    return True


def _fit_after_start(
    ax: Any, xs: Sequence[float], ys: Sequence[float], errs: Sequence[float] | None = None
) -> None:
    """Scale the y axis to the values (with their error bars) after step 0: the untrained
    flow's are far off and would flatten the curve (the legend gives them)."""
    e = errs if errs is not None else [0.0] * len(ys)
    later = [(y - d, y + d) for x, y, d in zip(xs, ys, e, strict=True) if x > 0]
    if len(later) >= 2:
        bottom, top = min(a for a, _ in later), max(b for _, b in later)
        pad = 0.08 * (top - bottom) if top > bottom else 0.05 * max(abs(top), 1e-12)
        ax.set_ylim(bottom - pad, top + pad)


def plot_run(
    records: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike[str],
    observables: Sequence[Observable] = (),
    references: Mapping[str, Mapping[str, Any]] | None = None,
    title: str = "",
    log_z_known: bool = False,
    loss_label: str = "",
) -> list[Path]:
    """Write, against the step: ``ess.png`` (reverse and forward ESS, linear and log scale);
    ``loss.png`` (the training loss, which ``loss_label`` names, and where ``log Z`` is known
    the KL divergences in their own panel); ``nll.png`` if NLL was measured;
    ``observables.png`` (one panel per observable, its reference as a line with its error band,
    unreliable reweightings circled). Returns the files."""
    plt, out, written = pyplot(), Path(out_dir), []

    def save(fig: Any, name: str) -> None:
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)

    def step0(xs: Sequence[float], ys: Sequence[float]) -> str:
        return f" (step 0: {fmt(ys[0])})" if xs and xs[0] == 0 else ""

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (
        ("ess_reverse", "reverse (flow samples)"),
        ("ess_forward", "forward (target)"),
    ):
        xs, ys = series(records, key)
        axes[0].plot(xs, ys, marker=".", label=label if xs else None)
        pos = [(x, y) for x, y in zip(xs, ys, strict=True) if y > 0]
        if pos:
            axes[1].semilogy(*zip(*pos, strict=True), marker=".", label=label)
    axes[0].set(xlabel="step", ylabel="ESS", ylim=(0, 1.02))
    # Forward ESS of a flow that misses part of the target can be 1e-300: the useful range.
    axes[1].set(xlabel="step", ylabel="ESS (log scale)", ylim=(1e-4, 1.5))
    legend(axes[0])
    save(fig, "ess.png")

    kl = [(k, series(records, k)) for k in ("kl_reverse", "kl_forward")]
    kl = [(k, c) for k, c in kl if c[0]] if log_z_known else []
    fig, axes = plt.subplots(1, 1 + bool(kl), figsize=(5.5 * (1 + bool(kl)), 4), squeeze=False)
    xs, ys = series(records, "loss")
    axes[0][0].plot(xs, ys, marker=".", label="mean since the last evaluation")
    axes[0][0].set(xlabel="step", ylabel="training loss (estimator's objective)")
    axes[0][0].set_title(f"loss = {loss_label}" if loss_label else "", fontsize="small")
    for key, (xs, ys) in kl:
        label = "KL(q‖p) on flow samples" if key == "kl_reverse" else "KL(p‖q) on target samples"
        axes[0][1].plot(xs, ys, marker=".", label=label)
    if kl:
        axes[0][1].set(xlabel="step", ylabel="KL divergence (exact log Z)")
        log_if_decades(axes[0][1], [y for _, (_, ys) in kl for y in ys])
    for ax in axes[0]:
        legend(ax)
    save(fig, "loss.png")

    xs, ys = series(records, "nll")
    if xs:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(xs, ys, marker=".", label="held-out" + step0(xs, ys))
        ax.set(xlabel="step", ylabel="NLL (held-out target samples)")
        _fit_after_start(ax, xs, ys)
        legend(ax)
        save(fig, "nll.png")

    if observables:
        fig, axes = plt.subplots(1, len(observables), figsize=(4.5 * len(observables), 4))
        unreliable = {r["step"] for r in records if r.get("reliable") is False}
        for ax, o in zip([axes] if len(observables) == 1 else axes, observables, strict=True):
            xs, ys = series(records, o.name)
            err_at = dict(zip(*series(records, f"{o.name}_err"), strict=True))
            errs = [err_at.get(x, 0.0) for x in xs]  # no error where it is not estimable
            label = "flow, reweighted" + step0(xs, ys)
            ax.errorbar(xs, ys, yerr=errs, marker=".", capsize=2, label=label)
            bad = [(x, y) for x, y in zip(xs, ys, strict=True) if x in unreliable]
            if bad:
                kw = {"mfc": "none", "mec": "r", "ms": 8, "label": "unreliable reweighting"}
                ax.plot(*zip(*bad, strict=True), "o", **kw)
            _fit_after_start(ax, xs, ys, errs)
            ref = (references or {}).get(o.name) or {}
            value, err = ref.get("value"), float(ref.get("err") or 0.0)
            if isinstance(value, (int, float)) and math.isfinite(value):
                ax.axhline(value, color="k", ls="--", label=str(ref.get("source", "reference")))
                ax.axhspan(value - err, value + err, color="k", alpha=0.15, lw=0)
                lo, hi = ax.get_ylim()
                ax.set_ylim(min(lo, value - 2 * err), max(hi, value + 2 * err))
            ax.set(xlabel="step", ylabel=o.tex or o.label)
            legend(ax)
        save(fig, "observables.png")
    return written
