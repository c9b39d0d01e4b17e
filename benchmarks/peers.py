"""Side-by-side step times against the flow libraries people use, in one process.

    pip install -e ".[zuko]" normflows==1.7.3      # normflows: for this benchmark only
    python benchmarks/peers.py                      # CPU, float32, one thread
    python benchmarks/peers.py --device cuda        # the GPU rows
    python benchmarks/peers.py --render-only        # re-render RESULTS.md from the JSON

normflows is a dependency of this benchmark alone (not of the package, not of its extras);
without it the normflows rows are skipped and the JSON says so.

One *step* is ``zero_grad``, the loss, ``backward`` and an Adam step, on a batch of base
draws made once (normflows' ``reverse_kld`` draws its own, inside the step). All entries of a
setup run round-robin, the order rotated every round (``harness.interleaved_times``); a ratio is
taken round by round and summarised by its median. Setups (target: the Gaussian mixture):

- ``zuko-nsf``: zuko's NSF with ``passes=2`` (rational-quadratic coupling) and ``zuko-maf``:
  zuko's MAF (fully autoregressive, affine), both in the orientation of zuko's reverse-KL
  tutorial, ``Flow(flow.transform.inv, flow.base)``. Entries: ``zuko-total`` (zuko's loop, the
  total gradient from ``rsample_and_log_prob``), ``ours-fast`` (``reverse-path-fast`` through
  ``from_zuko``), ``ours-dropin`` (``reverse-path-dropin`` through ``from_zuko``) and
  ``tfp-stl`` (the stop-gradient sticking-the-landing recipe of TFP and others: sample with the
  graph, then ``log_prob`` under ``torch.func.functional_call`` with detached parameters).
- ``normflows-nsf``: normflows' ``CoupledRationalQuadraticSpline`` flow. Entries:
  ``normflows-stl`` (``reverse_kld(score_fn=False)``: an inverse pass with ``requires_grad``
  toggled off on every parameter), ``normflows-total`` (``score_fn=True``) and ``ours-fast`` on
  the closest zuko flow through ``from_zuko``: an NSF with ``passes=2`` of the same dimension,
  number of couplings, bins and hidden width, whose fixed-parameter spline on the passive half
  matches normflows' ``apply_unconditional_transform=True``, with an MLP of as many linear layers
  as normflows' residual conditioner. It is not the same function class (a residual net there,
  tails linear at bound 3 there, identity at bound 5 in zuko): the ratio compares the work of a
  step on architectures of the same size, not one network.

Results: ``benchmarks/results/peers-<device type>.json`` (commit, versions, hardware, load, every
round) rendered into ``benchmarks/RESULTS.md`` between the ``peers-<device type>`` markers.

``--roots`` (``python benchmarks/peers.py --roots``) measures zuko's root-found families instead,
into ``peers-roots-<device type>.json`` and the ``peers-roots-<device type>`` markers:

- ``zuko-naf``, ``zuko-sospf``: NAF and SOSPF in the reverse-KL orientation, whose sampling
  direction is zuko's explicit map; entries ``zuko-total`` and ``ours-fast`` as above (our score
  step pays the density direction, i.e. the project's bisection, on the sequential passes).
- ``precision``: round trips of one NAF and one BPF transform (zuko's orientation, ``T``: data
  to latent) near and beyond the ``[−10, 10]`` bracket of zuko's bisection (BPF's: ``[−5, 5]``),
  which zuko clamps silently: ``max |T⁻¹(T(x)) − x|`` and ``max |T(T⁻¹(y)) − y|`` over points
  whose entries are ``±m``, with zuko's inverse (``transform.inv``) and ours (``from_zuko``:
  bisection from ``[−10, 10]``, the bracket doubled, never clamped), float64 and float32.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import torch
import zuko
from torch import Tensor, nn

from pathgrad_ref.estimators import get_estimator, per_call_finite_check
from pathgrad_ref.flows import Flow
from pathgrad_ref.flows.implicit import BisectionError
from pathgrad_ref.interop import from_zuko
from pathgrad_ref.targets import GaussianMixture

RESULTS = Path(__file__).resolve().parent / "results"
RESULTS_MD = RESULTS.parent / "RESULTS.md"
README = RESULTS.parent.parent / "README.md"
Step = Callable[[], Tensor]

# The brief's targets on spline coupling flows, CPU: fast / peer step time at most this.
TARGETS = {
    ("normflows-nsf", "ours-fast", "normflows-stl"): 0.8,
    ("zuko-nsf", "ours-fast", "zuko-total"): 1.5,
}


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _adam_step(params: list[nn.Parameter], loss_fn: Callable[[], Tensor]) -> Step:
    opt = torch.optim.Adam(params, lr=1e-4)

    def step() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        return loss.detach()

    return step


class _LogProb(nn.Module):
    """``x ↦ log q(x)`` of a zuko flow as one module call, for ``functional_call``."""

    def __init__(self, flow: nn.Module) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor) -> Tensor:
        log_q: Tensor = self.flow().log_prob(x)
        return log_q


def zuko_entries(
    flow: Any, target: GaussianMixture, z: Tensor, names: list[str]
) -> dict[str, Step]:
    """The steps of one zuko flow (tutorial orientation), each on its own copy of it."""
    steps: dict[str, Step] = {}
    for name in names:
        own = copy.deepcopy(flow)
        params = list(own.parameters())
        if name == "zuko-total":

            def total(f: Any = own) -> Tensor:
                dist = f()  # rsample_and_log_prob, on the fixed draw z
                x, ladj = dist.transform.inv.call_and_ladj(z)
                return (dist.base.log_prob(z) - ladj + target.action(x)).mean()

            steps[name] = _adam_step(params, total)
        elif name == "tfp-stl":
            log_prob = _LogProb(own)

            def stl(f: Any = own, lp: _LogProb = log_prob) -> Tensor:
                x = f().transform.inv(z)
                frozen = {k: v.detach() for k, v in lp.named_parameters()}
                log_q = torch.func.functional_call(lp, frozen, (x,))
                return (log_q + target.action(x)).mean()

            steps[name] = _adam_step(params, stl)
        elif name in ("ours-fast", "ours-dropin"):
            wrapped: Flow = from_zuko(own)
            est = get_estimator(
                "reverse-path-fast" if name == "ours-fast" else "reverse-path-dropin"
            )

            def ours(w: Flow = wrapped, e: Any = est) -> Tensor:
                loss: Tensor = e(w, target, z)[0]
                return loss

            steps[name] = _adam_step(params, ours)
        else:
            raise ValueError(name)
    return steps


class _NormflowsTarget:
    """The GMM as a normflows target (``log_prob``)."""

    def __init__(self, target: GaussianMixture) -> None:
        self.target = target

    def log_prob(self, x: Tensor) -> Tensor:
        return -self.target.action(x)


def normflows_entries(
    dim: int,
    couplings: int,
    hidden: int,
    blocks: int,
    bins: int,
    batch: int,
    dtype: Any,
    device: Any,
) -> tuple[dict[str, Step], dict[str, Any]]:
    import normflows as nf

    target = GaussianMixture(dim)
    steps: dict[str, Step] = {}
    for name, score_fn in (("normflows-stl", False), ("normflows-total", True)):
        torch.manual_seed(0)
        layers = [
            nf.flows.CoupledRationalQuadraticSpline(
                dim, blocks, hidden, num_bins=bins, reverse_mask=bool(i % 2)
            )
            for i in range(couplings)
        ]
        model = nf.NormalizingFlow(
            nf.distributions.DiagGaussian(dim, trainable=False),
            layers,
            p=_NormflowsTarget(target),
        ).to(device=device, dtype=dtype)

        def kld(m: Any = model, s: bool = score_fn) -> Tensor:
            loss: Tensor = m.reverse_kld(batch, score_fn=s)
            return loss

        steps[name] = _adam_step([p for p in model.parameters() if p.requires_grad], kld)
    # The closest zuko flow: as many linear layers as the residual net (input, 2 per block,
    # output), same width, bins and couplings; passes=2 spline on the passive half as well.
    torch.manual_seed(0)
    nsf = zuko.flows.NSF(
        dim, transforms=couplings, passes=2, bins=bins, hidden_features=(hidden,) * (2 * blocks + 1)
    )
    flow = zuko.lazy.Flow(nsf.transform.inv, nsf.base).to(device=device, dtype=dtype)
    z = torch.randn(batch, dim, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    steps.update(zuko_entries(flow, target, z, ["ours-fast"]))
    n_nf = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_zuko = sum(p.numel() for p in flow.parameters())
    info = {"normflows": nf.__version__, "n_parameters": {"normflows": n_nf, "zuko": n_zuko}}
    return steps, info


def measure(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    dtype = getattr(torch, args.dtype)
    d, batch = args.dim, args.batch
    hidden = (args.hidden, args.hidden)
    target = GaussianMixture(d)
    z = torch.randn(batch, d, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    zuko_names = ["zuko-total", "ours-fast", "ours-dropin", "tfp-stl"]
    setups: dict[str, tuple[dict[str, Step], dict[str, Any]]] = {}
    torch.manual_seed(0)
    nsf = zuko.flows.NSF(
        d, transforms=args.couplings, passes=2, bins=args.bins, hidden_features=hidden
    )
    flow = zuko.lazy.Flow(nsf.transform.inv, nsf.base).to(device=device, dtype=dtype)
    setups["zuko-nsf"] = (zuko_entries(flow, target, z, zuko_names), {})
    torch.manual_seed(0)
    maf = zuko.flows.MAF(d, transforms=args.couplings, hidden_features=hidden)
    flow = zuko.lazy.Flow(maf.transform.inv, maf.base).to(device=device, dtype=dtype)
    setups["zuko-maf"] = (zuko_entries(flow, target, z, zuko_names), {})
    skipped: dict[str, str] = {}
    try:
        setups["normflows-nsf"] = normflows_entries(
            d, args.couplings, args.hidden, args.blocks, args.bins, batch, dtype, device
        )
    except ImportError as err:
        skipped["normflows-nsf"] = f"normflows not installed ({err})"

    entries: dict[str, Any] = {}
    for setup, (steps, info) in setups.items():
        print(f"{setup}: {', '.join(steps)}", file=sys.stderr, flush=True)
        with per_call_finite_check(False):
            times = harness.interleaved_times(
                steps, device, args.rounds, args.steps_per_round, args.warmup
            )
        ref = {"zuko-nsf": "zuko-total", "zuko-maf": "zuko-total", "normflows-nsf": "normflows-stl"}
        ratios = {
            f"{name}/{other}": harness.summary(harness.round_ratios(times, name, other))
            for name in steps
            for other in steps
            if name != other and (other == ref[setup] or (name == "ours-fast"))
        }
        entries[setup] = {
            **info,
            "step_time_s": {n: harness.summary(t) for n, t in times.items()},
            "ratios": ratios,
            "raw_step_time_s": times,
        }
    return {
        "commit": _commit(),
        "versions": {"torch": torch.__version__, "zuko": zuko.__version__},
        "provenance": harness.provenance(device),
        "sizes": {
            "dim": d,
            "couplings": args.couplings,
            "hidden": args.hidden,
            "normflows_blocks": args.blocks,
            "bins": args.bins,
            "batch": batch,
            "dtype": args.dtype,
        },
        "protocol": {
            "rounds": args.rounds,
            "steps_per_round": args.steps_per_round,
            "warmup_steps": args.warmup,
            "order": "round-robin over a setup's entries, rotated by one every round",
            "step": "zero_grad, loss, backward, Adam step",
            "ratio": "per round, then the median over rounds",
        },
        "skipped": skipped,
        "setups": entries,
    }


ROOT_MAGNITUDES = (5.0, 9.9, 10.5, 20.0, 100.0)


def _root_flow(name: str, dim: int, transforms: int, hidden: int) -> Any:
    """A seeded zuko flow of a root-found family, zuko's orientation, float64."""
    torch.manual_seed(0)
    sizes = {"hidden_features": (hidden, hidden)}
    if name == "naf":
        return zuko.flows.NAF(
            dim, transforms=transforms, signal=8, network={"hidden_features": (16,)}, **sizes
        ).double()
    if name == "sospf":
        return zuko.flows.SOSPF(dim, transforms=transforms, **sizes).double()
    if name == "bpf":
        return zuko.flows.BPF(dim, transforms=transforms, **sizes).double()
    raise ValueError(name)


def _round_trip_errors(
    flow: Any, dtype: torch.dtype, dim: int
) -> dict[str, dict[str, float | None]]:
    """Round-trip errors of zuko's inverse and ours at each magnitude of ROOT_MAGNITUDES."""
    zf = copy.deepcopy(flow).to(dtype)
    ours = from_zuko(zf)
    t = zf().transform  # data -> latent: T explicit, T.inv zuko's clamped bisection
    # Signs: every entry +m, every entry -m, and alternating ones (a seeded pattern).
    signs = torch.tensor([[1.0] * dim, [-1.0] * dim, [(-1.0) ** i for i in range(dim)]])

    def error(round_trip: Callable[[Tensor], Tensor], u: Tensor) -> float | None:
        """``max |round_trip(u) − u|``; ``None`` where our solver refuses a target at or inside a
        jump of the map (zuko's Bernstein polynomial jumps by about 1e-5 at its bound ``B``, as
        ``results/peers-roots-cpu.json`` shows, and ``y = B`` is the jump's edge) instead of
        returning a point up to the jump off."""
        try:
            return float((round_trip(u) - u).abs().max())
        except BisectionError:
            return None

    out: dict[str, dict[str, float | None]] = {}
    with torch.no_grad():
        for m in ROOT_MAGNITUDES:
            u = (m * signs).to(dtype)
            out[f"{m:g}"] = {
                # x in data space: the explicit map, then the inverse.
                "zuko |T^-1(T(x)) - x|": error(lambda v: t.inv(t(v)), u),
                "ours |T^-1(T(x)) - x|": error(
                    lambda v: ours.transform(ours.inverse_transform(v)[0])[0], u
                ),
                # y in latent space: the inverse first.
                "zuko |T(T^-1(y)) - y|": error(lambda v: t(t.inv(v)), u),
                "ours |T(T^-1(y)) - y|": error(
                    lambda v: ours.inverse_transform(ours.transform(v)[0])[0], u
                ),
            }
    return out


def measure_roots(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    dtype = getattr(torch, args.dtype)
    d, batch = args.roots_dim, args.roots_batch
    target = GaussianMixture(d)
    z = torch.randn(batch, d, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    entries: dict[str, Any] = {}
    for name in ("naf", "sospf"):
        zf = _root_flow(name, d, args.roots_transforms, args.roots_hidden)
        flow = zuko.lazy.Flow(zf.transform.inv, zf.base).to(device=device, dtype=dtype)
        steps = zuko_entries(flow, target, z, ["zuko-total", "ours-fast"])
        print(f"zuko-{name}: {', '.join(steps)}", file=sys.stderr, flush=True)
        with per_call_finite_check(False):
            times = harness.interleaved_times(
                steps, device, args.rounds, args.steps_per_round, args.warmup
            )
        entries[f"zuko-{name}"] = {
            "step_time_s": {n: harness.summary(t) for n, t in times.items()},
            "ratios": {
                "ours-fast/zuko-total": harness.summary(
                    harness.round_ratios(times, "ours-fast", "zuko-total")
                )
            },
            "raw_step_time_s": times,
        }
    precision = {
        name: {
            str(dt).removeprefix("torch."): _round_trip_errors(
                _root_flow(name, args.roots_dim, 1, args.roots_hidden), dt, args.roots_dim
            )
            for dt in (torch.float64, torch.float32)
        }
        for name in ("naf", "bpf")
    }
    return {
        "commit": _commit(),
        "versions": {"torch": torch.__version__, "zuko": zuko.__version__},
        "provenance": harness.provenance(device),
        "sizes": {
            "dim": d,
            "transforms": args.roots_transforms,
            "hidden": args.roots_hidden,
            "naf_signal": 8,
            "naf_network_hidden": 16,
            "batch": batch,
            "dtype": args.dtype,
            "precision_transforms": 1,
        },
        "protocol": {
            "rounds": args.rounds,
            "steps_per_round": args.steps_per_round,
            "warmup_steps": args.warmup,
            "order": "round-robin over a setup's entries, rotated by one every round",
            "step": "zero_grad, loss, backward, Adam step",
            "ratio": "per round, then the median over rounds",
            "precision": "max abs error over entries of points (+m..., -m..., alternating)",
        },
        "setups": entries,
        "precision": precision,
    }


def render_roots(data: dict[str, Any]) -> str:
    p = data["provenance"]
    sz = data["sizes"]
    lines = [
        f"Commit `{data['commit']}`, torch {data['versions']['torch']}, zuko "
        f"{data['versions']['zuko']}; {p.get('gpu', p['cpu'])}, {p['torch_threads']} thread(s), "
        f"load average {p.get('load_average_1_5_15', 'n/a')} at the end; {sz['dtype']}, batch "
        f"{sz['batch']}, d = {sz['dim']}, {sz['transforms']} transforms, width {sz['hidden']}; "
        f"{data['protocol']['rounds']} interleaved rounds of "
        f"{data['protocol']['steps_per_round']} steps.",
        "",
        "| setup | ours-fast / zuko-total (median over rounds) | zuko-total median step (ms) |",
        "|---|---|---|",
    ]
    for setup, entry in data["setups"].items():
        r = entry["ratios"]["ours-fast/zuko-total"]["median"]
        ms = 1e3 * entry["step_time_s"]["zuko-total"]["median"]
        lines.append(f"| {setup} | {r:.2f} | {ms:.1f} |")
    lines += [
        "",
        f"Round trips, one transform, d = {sz['dim']}, entries ±m (max abs error):",
        "",
        "| transform | dtype | m | zuko T⁻¹(T(x)) | ours T⁻¹(T(x)) | zuko T(T⁻¹(y)) | ours "
        "T(T⁻¹(y)) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, by_dtype in data["precision"].items():
        for dt, by_m in by_dtype.items():
            for m, e in by_m.items():
                cells = [
                    e[f"{who} {what}"]
                    for what in ("|T^-1(T(x)) - x|", "|T(T^-1(y)) - y|")
                    for who in ("zuko", "ours")
                ]
                text = ["raises (jump)" if c is None else f"{c:.1e}" for c in cells]
                lines.append(f"| {name} | {dt} | {m} | " + " | ".join(text) + " |")
    return "\n".join(lines) + "\n"


def render(data: dict[str, Any]) -> str:
    lines = [
        f"Commit `{data['commit']}`, torch {data['versions']['torch']}, zuko "
        f"{data['versions']['zuko']}"
        + (
            f", normflows {data['setups']['normflows-nsf']['normflows']}"
            if "normflows-nsf" in data["setups"]
            else ""
        )
        + f"; {data['provenance'].get('gpu', data['provenance']['cpu'])}, "
        f"{data['provenance']['torch_threads']} thread(s), load average "
        f"{data['provenance'].get('load_average_1_5_15', 'n/a')} at the end; "
        f"{data['sizes']['dtype']}, batch {data['sizes']['batch']}, d = {data['sizes']['dim']}, "
        f"{data['sizes']['couplings']} layers, width {data['sizes']['hidden']}, "
        f"{data['sizes']['bins']} bins; {data['protocol']['rounds']} interleaved rounds of "
        f"{data['protocol']['steps_per_round']} steps.",
        "",
        "| setup | entry | median step (ms) | ratio to the peer's step (median over rounds) |",
        "|---|---|---|---|",
    ]
    ref = {"zuko-nsf": "zuko-total", "zuko-maf": "zuko-total", "normflows-nsf": "normflows-stl"}
    for setup, entry in data["setups"].items():
        for name, s in entry["step_time_s"].items():
            key = f"{name}/{ref[setup]}"
            ratio = entry["ratios"].get(key)
            text = "1 (peer)" if name == ref[setup] else f"{ratio['median']:.2f}" if ratio else ""
            if setup == "normflows-nsf" and name == "ours-fast":
                total = entry["ratios"].get("ours-fast/normflows-total")
                if total:
                    text += f" (to normflows-total: {total['median']:.2f})"
            lines.append(f"| {setup} | {name} | {1e3 * s['median']:.1f} | {text} |")
    lines += ["", "Targets (spline coupling flows, CPU):", ""]
    for (setup, num, den), bound in TARGETS.items():
        r = data["setups"].get(setup, {}).get("ratios", {}).get(f"{num}/{den}")
        if r is None:
            lines.append(f"- {setup}: {num}/{den} ≤ {bound}: not measured")
            continue
        verdict = "met" if r["median"] <= bound else f"missed by {r['median'] / bound:.2f}×"
        lines.append(f"- {setup}: {num}/{den} = {r['median']:.2f} (target ≤ {bound}): {verdict}")
    if data["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in data["skipped"].items())]
    return "\n".join(lines) + "\n"


def headline(data: dict[str, Any]) -> str:
    """The README's headline ratios (CPU rows only), one bullet per peer."""

    def ratio(setup: str, key: str) -> str:
        r = data["setups"].get(setup, {}).get("ratios", {}).get(key)
        return "n/a" if r is None else f"**{r['median']:.2f}**"

    p = data["provenance"]
    nsf_total, nsf_stl = (
        ratio("zuko-nsf", "ours-fast/zuko-total"),
        ratio("zuko-nsf", "ours-fast/tfp-stl"),
    )
    nf_stl = ratio("normflows-nsf", "ours-fast/normflows-stl")
    maf_total = ratio("zuko-maf", "ours-fast/zuko-total")
    load = p.get("load_average_1_5_15", ["n/a"])[0]
    lines = [
        f"- zuko NSF (`passes=2`): our fast-path step = {nsf_total} × zuko's total-gradient "
        f"step, {nsf_stl} × the TFP-style stop-gradient STL step",
        f"- normflows `CoupledRationalQuadraticSpline` flow: {nf_stl} × "
        "`reverse_kld(score_fn=False)`",
        f"- zuko MAF (fully autoregressive): {maf_total} × zuko's total-gradient step (every "
        "path gradient pays MAF's sequential density pass)",
        "",
        f"(commit `{data['commit']}`, {p['cpu']}, {p['torch_threads']} thread, load {load}; "
        "`benchmarks/RESULTS.md` has every row.)",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--dim", type=int, default=8)
    ap.add_argument("--couplings", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--blocks", type=int, default=2, help="normflows residual blocks")
    ap.add_argument("--bins", type=int, default=8)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps-per-round", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--roots", action="store_true", help="zuko's root-found families instead")
    ap.add_argument("--roots-dim", type=int, default=4)
    ap.add_argument("--roots-transforms", type=int, default=2)
    ap.add_argument("--roots-hidden", type=int, default=32)
    ap.add_argument("--roots-batch", type=int, default=128)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    kind, measure_fn, render_fn = (
        ("peers-roots", measure_roots, render_roots) if args.roots else ("peers", measure, render)
    )
    block = f"{kind}-{device.type}"
    path = args.out / f"{block}.json"
    if args.render_only:
        data = json.loads(path.read_text())
    else:
        if device.type == "cpu":
            harness.set_threads(args.threads)
        data = measure_fn(args, device)
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")
    text = render_fn(data)
    print(text)
    if not harness.replace_block(RESULTS_MD, block, text):
        print(f"(no {block} markers in {RESULTS_MD}; not rendered there)")
    if device.type == "cpu" and not args.roots:
        harness.replace_block(README, "peers-headline", headline(data))


if __name__ == "__main__":
    main()
