"""``--compare A,B,...`` of the training scripts: a one-seed study.

    python paper_runs/gmm.py --compare reverse-standard,reverse-path-fast [options]

trains each named estimator with the one ``--seed`` (default 0) through the study machinery
(:mod:`.running`: one resumable run per estimator in ``<out>/<estimator>/seed<k>/``, every other
option passed on to each run), then writes ``study.json``, ``study.md`` and the study plots in
``<out>`` (default ``runs/<experiment>/<preset>-compare-seed<k>``). One seed tests no claim:
the tables and plots compare the runs, the verdicts need ``paper_runs/study.py``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pathgrad_ref.training.objectives import OBJECTIVES


def _fail(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def estimator_list(prog: str, text: str) -> tuple[str, ...]:
    """The comma-separated estimator names, checked against the registry."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        _fail(
            prog, f"unknown estimator {unknown[0]!r}; expected names from: {', '.join(OBJECTIVES)}"
        )
    if not names:
        _fail(prog, "--compare: expected a comma-separated list of estimator names")
    if len(set(names)) != len(names):
        _fail(prog, f"--compare: estimator listed twice in {text!r}")
    return tuple(names)


def compare(experiment: str, script: Path, argv: Sequence[str] | None) -> int | None:
    """Run ``--compare`` if ``argv`` asks for it (exit status), else ``None``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--compare" or a.startswith("--compare=") for a in args):
        return None
    # The study machinery is imported only here: a training run without --compare needs none
    # of it (nor matplotlib and scipy).
    from pathgrad_ref.training.files import write_json

    from .report import markdown, plot
    from .running import (
        StudyError,
        StudyInterruptedError,
        StudySpec,
        collect,
        run_study,
        study_provenance,
        summarise,
    )

    prog = f"paper_runs/{experiment}.py"
    p = argparse.ArgumentParser(prog=prog, add_help=False)
    p.add_argument("--compare", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="quick")
    p.add_argument("--out")
    p.add_argument("--no-progress", action="store_true")
    known, rest = p.parse_known_args(args)
    estimators = estimator_list(prog, known.compare)
    if any(a == "--estimator" or a.startswith("--estimator=") for a in rest):
        _fail(prog, "--estimator and --compare: give one of them")
    spec = StudySpec(
        name=f"{experiment}-compare",
        experiment=experiment,
        preset=known.preset,
        estimators=estimators,
        seeds=(known.seed,),
        claim="a one-seed comparison (--compare); it tests no claim",
        extra_args=tuple(rest),
    )
    root = Path(known.out or Path("runs", experiment, f"{known.preset}-compare-seed{known.seed}"))
    try:
        run_study(spec, script, root, workers=1, progress=not known.no_progress)
        runs = collect(spec, root)
    except StudyError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except StudyInterruptedError as e:
        print(f"{prog}: {e}; run the same command again to resume", file=sys.stderr)
        return 128 + e.signum
    study = summarise(spec, runs, study_provenance(spec, runs, script.parent))
    study["provenance"]["commands"] = [["python", prog, *args]]
    write_json(root / "study.json", study)
    plot(study, root)
    text = markdown(study)
    (root / "study.md").write_text(text)
    print(text)
    return 0
