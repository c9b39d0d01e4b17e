"""The command line shared by the training scripts in ``paper_runs/``: the parser is built
from the option fields of :mod:`.config` and the experiment's parameters, unset options come
from the preset, and everything is checked before :func:`~.run.run_experiment` (a bad option or
damaged run file is one ``error:`` line, exit code 2, nothing on disk changed). Exit codes: 0
done, 1 training failed, 2 bad options or files, ``128 + signum`` stopped by a signal.
"""

from __future__ import annotations

import argparse
import re
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import torch

from .config import ConfigError, DataConfig, HMCConfig, Option, TrainConfig, all_options
from .distributed import init_distributed, shutdown
from .experiment import Experiment
from .files import RunFileError
from .run import Settings, check_run_dir, check_settings, run_experiment
from .trainer import HardStop, RunInterruptedError, TrainingError, resolve_device


class _Parser(argparse.ArgumentParser):
    """``error()`` prints one line, ``prog: error: message``, and exits with code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def config_error(self, e: ConfigError, exp: Experiment) -> NoReturn:
        """One line for a setting (pointing to ``--help``) or a damaged run file, exit code 2."""
        if isinstance(e, RunFileError):
            self.exit(2, f"{self.prog}: error: {e}\n")
        self.error(with_flags(str(e), exp))


def _options(exp: Experiment) -> list[tuple[str, Option, Any]]:
    """The run options that apply to ``exp`` (no data options without a sampler, no HMC
    options without HMC), then its parameters as ``params.<name>``."""
    out = []
    for path, opt, default in all_options():
        if path.startswith("data.") and exp.sampler is None:
            continue
        if path.startswith("data.hmc.") and exp.sampler != "hmc":
            continue
        out.append((path, opt, default))
    for prm in exp.params:
        flag = "--" + prm.name.replace("_", "-")
        out.append(
            (f"params.{prm.name}", Option(flag, prm.help, prm.type, None, prm.metavar), None)
        )
    return out


def flags(exp: Experiment) -> dict[str, str]:
    """``{dotted path: flag}`` of every option of ``exp`` (``"train.lr": "--lr"``)."""
    return {path: opt.flag for path, opt, _ in _options(exp)}


def with_flags(text: str, exp: Experiment) -> str:
    """``text`` with every dotted option path it names replaced by the option's flag."""
    table = flags(exp)
    return re.sub(r"\b(?:train|data|params)\.[\w.]+\b", lambda m: table.get(m[0], m[0]), text)


def _parse(opt: Option) -> Any:
    """``opt.parse`` with its ``ValueError`` turned into argparse's one-line error."""
    if opt.parse is None:
        return None

    def parse(text: str) -> Any:
        try:
            return opt.parse(text)  # type: ignore[misc]
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _shown(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, tuple):
        return ",".join(str(x) for x in v)
    if isinstance(v, float) and v >= 1e4 and v == int(v):
        return str(int(v))
    return str(v)


def build_parser(exp: Experiment) -> _Parser:
    """The parser of ``paper_runs/<exp.name>.py``, generated from the option fields; every
    default is ``None`` and is filled in from the preset by :func:`resolve`."""
    p = _Parser(
        prog=f"paper_runs/{exp.name}.py",
        description=exp.description,
        epilog=exp.epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run = p.add_argument_group("run")
    run.add_argument(
        "--preset", choices=list(exp.presets), default="quick",
        help="default settings: 'quick' (a few minutes on a laptop CPU) or 'paper' (the "
        "paper's architecture and hyperparameters, for a GPU) [default: quick]",
    )  # fmt: skip
    run.add_argument(
        "--out", default=None, metavar="DIR",
        help="run folder [default: runs/<experiment>/<preset>-<estimator>-seed<seed>]",
    )  # fmt: skip
    run.add_argument(
        "--resume", action="store_true",
        help="continue the run in --out from its checkpoint (start it if there is none); "
        "--steps, --time-limit and the evaluation cadence may change",
    )  # fmt: skip
    run.add_argument(
        "--overwrite", action="store_true", help="start afresh even if --out holds a run"
    )
    run.add_argument(
        "--prepare-data", action="store_true",
        help="only generate (or check) the cached target samples, then exit",
    )  # fmt: skip
    groups = {
        "train": p.add_argument_group("training"),
        "data": p.add_argument_group("target samples"),
        "params": p.add_argument_group(f"{exp.name}: physics and architecture"),
    }
    for path, opt, default in _options(exp):
        shown = {k: _shown(v.get(opt.name, default)) for k, v in exp.presets.items()}
        note = (
            f"default: {next(iter(shown.values()))}"
            if len(set(shown.values())) == 1
            else "; ".join(f"{k}: {v}" for k, v in shown.items())
        )
        group = groups[path.split(".")[0]]
        text = f"{opt.help} [{note}]".replace("%", "%%")
        if isinstance(default, bool):
            group.add_argument(
                opt.flag, dest=opt.name, action="store_const", const=not default, default=None,
                help=text,
            )  # fmt: skip
        else:
            group.add_argument(
                opt.flag, dest=opt.name, default=None, type=_parse(opt), help=text,
                metavar=opt.metavar, choices=opt.choices,
            )  # fmt: skip
    return p


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    kw = {
        path.removeprefix(prefix): values[opt.name]
        for path, opt, _ in all_options()
        if path.startswith(prefix) and "." not in path.removeprefix(prefix)
    }
    return cls(**kw)


def resolve(exp: Experiment, args: argparse.Namespace) -> Settings:
    """Fill unset options from the preset (then the fields' defaults) and build the settings;
    :class:`ConfigError` naming the field for values that cannot work."""
    values = {opt.name: default for _, opt, default in all_options()}
    values.update(exp.presets[args.preset])
    values.update({k: v for k, v in vars(args).items() if v is not None})
    train: TrainConfig = _build(TrainConfig, values, "train.")
    hmc = _build(HMCConfig, values, "data.hmc.") if exp.sampler == "hmc" else None
    data: DataConfig = _build(DataConfig, values, "data.")
    if exp.sampler is None:
        data = DataConfig(n_train=0, n_test=0, seed=data.seed, cache_dir=data.cache_dir)
    else:
        data = DataConfig(**{**data.__dict__, "hmc": hmc})
    if args.resume and args.overwrite:
        raise ConfigError(None, "--resume and --overwrite: give one of them")
    default_out = Path("runs", exp.name, f"{args.preset}-{train.estimator}-seed{train.seed}")
    settings = Settings(
        preset=args.preset,
        train=train,
        data=data,
        params={p.name: values[p.name] for p in exp.params},
        out=Path(args.out) if args.out else default_out,
        resume=args.resume,
        overwrite=args.overwrite,
        prepare_data=args.prepare_data,
    )
    check_settings(exp, settings)
    return settings


def _hard_stop(signum: int, _frame: FrameType | None) -> None:
    raise HardStop(signum)


def main(exp: Experiment, argv: Sequence[str] | None = None) -> int:
    """Entry point of ``paper_runs/<exp.name>.py``; returns the exit code (0 done, 1 training
    failed, 2 bad options or files, ``128 + signum`` interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(exp)
    args = parser.parse_args(argv)
    try:
        settings = resolve(exp, args)
        device = resolve_device(settings.train.device)
        check_run_dir(settings)
    except ConfigError as e:
        parser.config_error(e, exp)
    if settings.train.threads is not None:
        torch.set_num_threads(settings.train.threads)
    # Outside the training loop (sampling, loading) SIGTERM stops at once, like Ctrl-C, so
    # that partial sample sets are cleaned up; the trainer handles both signals itself.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _hard_stop) if in_main_thread else None
    again = [a for a in argv if a != "--overwrite"] + ([] if "--resume" in argv else ["--resume"])
    resume = " ".join(["python", parser.prog, *map(shlex.quote, again)])
    ctx = init_distributed(device.type)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    # Whether every rank ends here together (a finished run, or a stop the ranks voted on):
    # only then do they wait for each other before leaving the process group.
    together = False
    try:
        run_experiment(exp, settings, ctx=ctx, device=device)
        together = True
    except ConfigError as e:
        parser.config_error(e, exp)
    except TrainingError as e:
        together = True
        print(f"{parser.prog}: training stopped: {with_flags(str(e), exp)}", file=sys.stderr)
        return 1
    except RunInterruptedError as e:
        together = True
        if ctx.is_main:
            print(f"{parser.prog}: {e}; resume with: {resume}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt as e:
        # A second signal, or Ctrl-C outside the training loop (e.g. while sampling).
        signum = e.signum if isinstance(e, HardStop) else signal.SIGINT
        if ctx.is_main:
            name = signal.Signals(signum).name
            print(
                f"{parser.prog}: stopped at once by {name}; the last complete checkpoint "
                f"stands; resume with: {resume}",
                file=sys.stderr,
            )
        return 128 + signum
    except OSError as e:
        print(
            f"{parser.prog}: training stopped: cannot write {e.filename or 'a run file'} "
            f"({e.strerror or e}); the last checkpoint stands; free space and resume with: "
            f"{resume}",
            file=sys.stderr,
        )
        return 1
    finally:
        shutdown(ctx, together)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0
