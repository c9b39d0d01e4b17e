"""Every option is defined once (a field with its flag, help and check): the parser, presets,
error messages and resume checks all come from it, and every flag an error names exists."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from script_support import ROOT, SCRIPTS, load_script

from pathgrad_ref.evaluation import fmt
from pathgrad_ref.training import Experiment, build_parser
from pathgrad_ref.training.cli import flags, resolve, with_flags
from pathgrad_ref.training.config import (
    RESUMABLE_CHANGES,
    ConfigError,
    DataConfig,
    HMCConfig,
    TrainConfig,
    all_options,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore:series of .* too short:RuntimeWarning"),
    pytest.mark.usefixtures("one_thread"),
]


@pytest.fixture(scope="module")
def experiments() -> dict[str, Experiment]:
    return {name: load_script(name).EXPERIMENT for name in SCRIPTS}


def parser_flags(exp: Experiment) -> set[str]:
    return {f for a in build_parser(exp)._actions for f in a.option_strings}


def error_line(exp: Experiment, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    from pathgrad_ref.training import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(exp, argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_every_flag_named_in_the_code_exists(experiments: dict[str, Experiment]) -> None:
    """Scan the training library and the scripts for ``--flag`` in string literals: each one
    must be a flag of the parser (the issue found ``--hmc-n-chains`` in an error message)."""
    known = set().union(*(parser_flags(e) for e in experiments.values())) | {"--help"}
    known |= {f for a in load_script("study").build_parser()._actions for f in a.option_strings}
    known |= {
        f for a in load_script("heavy_tails").build_parser()._actions for f in a.option_strings
    }
    # --compare is parsed inside paper_runs/studies/compare.py (tests/test_study.py runs it).
    assert 'add_argument("--compare"' in (ROOT / "paper_runs/studies/compare.py").read_text()
    known.add("--compare")
    named: set[str] = set()
    for path in [*ROOT.glob("pathgrad_ref/training/*.py"), *ROOT.glob("paper_runs/*.py")]:
        for literal in re.findall(r"\"[^\"\n]*\"", path.read_text()):
            named |= set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", literal))
    assert named, "the scan found nothing: it is broken"
    assert named <= known, sorted(named - known)


def test_every_field_error_maps_to_an_existing_flag(
    experiments: dict[str, Experiment],
) -> None:
    """For each option with a check, a value it refuses: the library error names the field
    (its path in config.json) and the command line turns it into the option's flag."""
    phi4 = experiments["phi4"]
    table = flags(phi4)
    existing = parser_flags(phi4)
    bad_values: list[Any] = [-1, 0, 1.5, "nope", math.nan, None]
    checked = 0
    for path, opt, _ in all_options():
        assert table[path] == opt.flag and opt.flag in existing, path
        if opt.check is None:
            continue
        value = next(v for v in bad_values if opt.check(v) is not None)
        section, _, name = path.partition(".")
        train, hmc, data = TrainConfig(), HMCConfig(), DataConfig()
        if section == "train":
            train = dataclasses.replace(train, **{name: value})
        elif name.startswith("hmc."):
            hmc = dataclasses.replace(hmc, **{name.removeprefix("hmc."): value})
        else:
            data = dataclasses.replace(data, **{name: value})
        data = dataclasses.replace(data, hmc=hmc)
        with pytest.raises(ConfigError) as info:
            train.validate()
            data.validate()
        field = f"{section}.{info.value.field}"
        assert field == path
        # As the run's check re-raises it, with the field's full path:
        full = ConfigError(field, info.value.message)
        assert with_flags(str(full), phi4).startswith(f"{opt.flag}: expected ")
        checked += 1
    assert checked >= 20


def test_command_line_errors_name_the_flag(
    experiments: dict[str, Experiment], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    phi4 = experiments["phi4"]
    err = error_line(phi4, ["--hmc-chains", "0"], capsys)
    assert err.endswith("error: --hmc-chains: expected an integer >= 1, got 0 (see --help)")
    assert "--hmc-therm: step-size adaptation" in error_line(phi4, ["--hmc-therm", "0"], capsys)
    assert "--lr-factor: expected a number in (0, 1)" in error_line(
        phi4, ["--lr-factor", "2"], capsys
    )
    assert "--time-limit: expected a duration" in error_line(phi4, ["--time-limit", "x"], capsys)
    assert "give one of them" in error_line(phi4, ["--resume", "--overwrite"], capsys)


def test_odd_lattice_with_checkerboard_mask_is_refused(
    experiments: dict[str, Experiment], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    argv = ["--lattice", "7,7", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    err = error_line(experiments["phi4"], argv, capsys)
    assert "--lattice: 7,7 has an odd side" in err and "--mask alternating" in err
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_every_preset_resolves_and_validates(experiments: dict[str, Experiment]) -> None:
    for exp in experiments.values():
        parser = build_parser(exp)
        for preset in exp.presets:
            settings = resolve(exp, parser.parse_args(["--preset", preset]))
            values = exp.presets[preset]
            names = {opt.name: path for path, opt, _ in all_options()}
            for key, value in values.items():
                if key in names:
                    section, _, rest = names[key].partition(".")
                    obj: Any = settings.train if section == "train" else settings.data
                    for part in rest.split("."):
                        obj = getattr(obj, part)
                    assert obj == value, (exp.name, preset, key)


def test_a_preset_with_an_unknown_option_is_refused(experiments: dict[str, Experiment]) -> None:
    exp = experiments["gmm"]
    presets = {**exp.presets, "quick": {**exp.presets["quick"], "n_chains": 3}}
    with pytest.raises(ValueError, match="unknown options \\['n_chains'\\]"):
        dataclasses.replace(exp, presets=presets)


def test_resumable_options_are_marked_on_their_fields() -> None:
    assert {"train.steps", "train.time_limit", "data.hmc.chunk_size"} <= RESUMABLE_CHANGES
    assert "train.lr" not in RESUMABLE_CHANGES and "data.seed" not in RESUMABLE_CHANGES


def test_number_format() -> None:
    assert fmt(0.49883309632145256) == "0.499"
    assert fmt(1.234e-5) == "1.23e-05" and fmt(-3.2e-7) == "-3.20e-07"
    assert fmt(0.0) == "0" and fmt(1234.5) == "1.23e+03" and fmt(2.5e6) == "2.50e+06"
    assert fmt(math.nan) == "–" and fmt(None) == "–" and fmt(7) == "7"
    for v in (1e-4, 3e-9, 0.00049):
        assert float(fmt(v)) != 0.0, "a small non-zero value never prints as zero"


def test_importing_the_library_does_not_import_training() -> None:
    code = (
        "import sys, pathgrad_ref, pathgrad_ref.flows, pathgrad_ref.estimators\n"
        "loaded = [m for m in sys.modules if m.startswith('pathgrad_ref.training')]\n"
        "assert not loaded, loaded\n"
        "assert 'pathgrad_ref.targets' in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_runtime_records_the_precision_policy(
    tmp_path: Path, experiments: dict[str, Experiment]
) -> None:
    """``config.json`` records what the run found on its machine (the precision policy set at
    the start, TF32 off); a resume does not compare it."""
    from pathgrad_ref.training import main

    out = tmp_path / "run"
    argv = [
        "--estimator", "forward-path-fast", "--steps", "2", "--batch-size", "8",
        "--eval-every", "2", "--eval-samples", "16", "--n-train-samples", "32",
        "--n-test-samples", "16", "--dim", "2", "--n-couplings", "2", "--hidden", "4",
        "--no-progress", "--dtype", "float64", "--out", str(out),
    ]  # fmt: skip
    assert main(experiments["gmm"], argv) == 0
    runtime = json.loads((out / "config.json").read_text())["runtime"]
    assert (runtime["precision"]["matmul"], runtime["precision"]["conv"]) == ("ieee", "ieee")
    assert main(experiments["gmm"], [*argv, "--resume", "--steps", "4"]) == 0


def test_minibatches_come_from_the_index_stream() -> None:
    """A forward-KL minibatch is the training samples at indices drawn uniformly with
    replacement from the rank's index stream, the one a checkpoint saves."""
    from pathgrad_ref.flows import real_nvp
    from pathgrad_ref.targets import GaussianMixture
    from pathgrad_ref.training import TargetSamples, TrainConfig, Trainer
    from pathgrad_ref.training.distributed import stream_seed

    x = torch.randn(40, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(estimator="forward-path-fast", batch_size=16, seed=5, dtype="float64")
    data = TargetSamples(train=x, test=None, metadata={})
    flow = real_nvp(2, n_couplings=2, hidden=(4,))
    trainer = Trainer(flow, GaussianMixture(2), cfg, device=torch.device("cpu"), data=data)
    gen = torch.Generator().manual_seed(stream_seed(5, 0, 1))
    for _ in range(2):
        assert torch.equal(trainer._draw_batch(), x[torch.randint(40, (16,), generator=gen)])
