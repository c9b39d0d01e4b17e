"""The training scripts in ``paper_runs/``: tiny runs of each preset, the files they write,
``--resume``, data-parallel runs, and one-line errors for bad options.

The scripts are imported and their ``main(argv)`` called in-process (fast); sizes are cut to a
few steps on tiny lattices so that the whole module runs in seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import warnings
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.multiprocessing as mp
from script_support import SCRIPTS, error_of, load_script
from torch import Tensor

from pathgrad_ref.training import Experiment, Trainer, build_parser, resolve_device
from pathgrad_ref.training import files as ckpt
from pathgrad_ref.training.config import ConfigError

pytestmark = [
    pytest.mark.filterwarnings("ignore:series of .* too short:RuntimeWarning"),
    pytest.mark.usefixtures("one_thread"),
]

COMMON = [
    "--steps", "4", "--batch-size", "16", "--eval-every", "2", "--eval-samples", "32",
    "--checkpoint-every", "2", "--dtype", "float64", "--no-progress", "--n-test-samples", "32",
    "--n-train-samples", "64",
]  # fmt: skip
HMC = ["--hmc-chains", "16", "--hmc-therm", "10", "--hmc-thin", "1", "--hmc-leapfrog", "3"]
TINY = {
    "gmm": ["--dim", "2", "--n-couplings", "2", "--hidden", "8"],
    "phi4": ["--lattice", "4,4", "--n-couplings", "2", "--hidden", "8", *HMC],
    "u1": ["--L", "4", "--beta", "1", "--n-layers", "2", "--n-mixture", "2", "--hidden", "4", *HMC],
    "cnf": [
        "--dim",
        "2",
        "--hidden",
        "8",
        "--ode-steps",
        "2",
        "--pretrain-steps",
        "4",
        "--pretrain-batch-size",
        "16",
    ],
}


@pytest.fixture(scope="module")
def scripts() -> dict[str, ModuleType]:
    return {name: load_script(name) for name in SCRIPTS}


def tiny(name: str, tmp_path: Path, *extra: str) -> list[str]:
    where = ["--cache-dir", str(tmp_path / "cache"), "--pretrain-dir", str(tmp_path / "pre")]
    return [*COMMON, *TINY[name], *where, *extra]


def run(script: ModuleType, argv: list[str]) -> int:
    code: int = script.main(argv)
    return code


# ---------------------------------------------------------------- runs and their files


@pytest.mark.parametrize(
    ("name", "estimator"),
    [
        ("gmm", "reverse-path-fast"),
        ("gmm", "forward-path-gdreg"),
        ("phi4", "reverse-path-fast"),
        ("phi4", "forward-path-fast"),
        ("u1", "reverse-path-fast"),
        ("u1", "forward-standard"),
    ],
)
def test_tiny_run_writes_its_files(
    scripts: dict[str, ModuleType], tmp_path: Path, name: str, estimator: str
) -> None:
    out = tmp_path / "run"
    assert (
        run(scripts[name], tiny(name, tmp_path, "--estimator", estimator, "--out", str(out))) == 0
    )
    files = {p.name for p in out.iterdir()}
    expected = {"config.json", "metrics.jsonl", "summary.json", "checkpoint.pt"}
    expected |= {"ess.png", "loss.png", "nll.png", "observables.png"}
    assert expected <= files, expected - files
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_done"] == 4
    assert summary["estimator"] == estimator and summary["world_size"] == 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 2, 4]
    final = records[-1]
    for key in ("ess_reverse", "ess_forward", "nll", "loss", "grad_norm", "step_time_s", "lr"):
        assert isinstance(final[key], float), key
    for obs in summary["observables"]:
        assert isinstance(final[obs], float) and obs in summary["references"]
    config = json.loads((out / "config.json").read_text())
    assert config["experiment"] == name and config["train"]["steps"] == 4
    assert config["train"]["device"] == "cpu" and config["preset"] == "quick"
    state = ckpt.load_checkpoint(out / "checkpoint.pt")  # weights_only=True
    assert state["step"] == 4
    if name != "gmm":
        # HMC samples: cached with their sampler report.
        sets = sorted((tmp_path / "cache").iterdir())
        splits = {p.name.split("-")[1] for p in sets}
        assert splits == ({"test", "train"} if estimator.startswith("forward") else {"test"})
        for folder in sets:
            meta = json.loads((folder / "metadata.json").read_text())
            assert 0 < meta["report"]["acceptance_rate"] <= 1
            assert meta["report"]["n_chains"] == 16 and "tau_int" in meta["report"]


def test_cnf_pretrains_once_then_fine_tunes(
    scripts: dict[str, ModuleType], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cnf.py``: stage 1 (flow matching) is trained by the first run of a seed and reused by
    the next one (another fine-tuning arm), each starting from its final parameters."""
    cnf = scripts["cnf"]
    arms = ["forward-path-fast", "flow-matching"]
    for arm in arms:
        assert (
            run(cnf, tiny("cnf", tmp_path, "--estimator", arm, "--out", str(tmp_path / arm))) == 0
        )
    out = capsys.readouterr().out
    assert out.count("stage 1: flow matching for 4 steps") == 1, out
    assert out.count("stage 1: reusing the pretrained flow") == 1, out
    (folder,) = [p for p in (tmp_path / "pre").iterdir() if p.is_dir()]
    assert folder.name.startswith("cnf-seed0-")
    stage1 = json.loads((folder / "summary.json").read_text())
    assert stage1["estimator"] == "flow-matching" and stage1["steps_done"] == 4
    for arm in arms:
        summary = json.loads((tmp_path / arm / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps_done"] == 4
        info = summary["config"]["runtime"]["pretraining"]
        assert info["folder"] == str(folder) and info["steps"] == 4
        first = json.loads((tmp_path / arm / "metrics.jsonl").read_text().splitlines()[0])
        # The held-out NLL needs no flow samples: stage 2 starts at stage 1's final flow.
        assert first["step"] == 0 and first["nll"] == stage1["final"]["nll"]


def test_flow_matching_needs_a_continuous_flow(
    scripts: dict[str, ModuleType], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gmm = scripts["gmm"]
    out = ["--out", str(tmp_path / "r")]
    err = error_of(gmm, tiny("gmm", tmp_path, "--estimator", "flow-matching", *out), capsys)
    assert "--estimator: flow matching trains a continuous flow" in err
    err = error_of(gmm, tiny("gmm", tmp_path, "--pretrain-steps", "3", *out), capsys)
    assert "--pretrain-steps: flow matching trains a continuous flow" in err
    err = error_of(scripts["cnf"], ["--n-train-samples", "0", *out], capsys)
    assert "--n-train-samples: is 0, but estimator forward-path-fast" in err
    err = error_of(
        scripts["cnf"], ["--estimator", "reverse-path-fast", "--n-train-samples", "0"], capsys
    )
    assert "stage 1 (flow matching, --pretrain-steps) needs training samples" in err
    assert not (tmp_path / "r").exists()


def test_hmc_samples_are_cached_between_runs(
    scripts: dict[str, ModuleType], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    phi4 = scripts["phi4"]
    assert run(phi4, tiny("phi4", tmp_path, "--prepare-data", "--out", str(tmp_path / "a"))) == 0
    first = capsys.readouterr().out
    assert "generating 32 test samples" in first and "generating 64 train samples" in first
    assert not (tmp_path / "a").exists(), "--prepare-data trains nothing"
    assert run(phi4, tiny("phi4", tmp_path, "--out", str(tmp_path / "b"))) == 0
    second = capsys.readouterr().out
    assert "loaded 32 cached test samples" in second and "generating" not in second
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    ref = summary["references"]["abs_m"]
    assert ref["source"] == "target samples" and ref["err"] > 0


def test_compare_runs_a_one_seed_study(scripts: dict[str, ModuleType], tmp_path: Path) -> None:
    """``--compare`` trains each estimator with one seed through the study machinery and
    renders the study's tables and plots (one comparison system)."""
    names = ["reverse-standard", "reverse-path-fast", "forward-standard"]
    out = tmp_path / "cmp"
    argv = tiny("gmm", tmp_path, "--compare", ",".join(names), "--seed", "3", "--out", str(out))
    assert run(scripts["gmm"], argv) == 0
    for n in names:
        run_dir = out / n / "seed3"
        assert json.loads((run_dir / "summary.json").read_text())["steps_done"] == 4
        config = json.loads((run_dir / "config.json").read_text())
        assert config["train"]["estimator"] == n and config["train"]["seed"] == 3
    study = json.loads((out / "study.json").read_text())
    assert study["spec"]["estimators"] == names and study["spec"]["seeds"] == [3]
    assert study["provenance"]["commands"][0][:2] == ["python", "paper_runs/gmm.py"]
    table = (out / "study.md").read_text()
    assert "one seed: no claim is tested" in table
    assert table.count("\n| `") >= len(names)  # every run in the per-seed table
    assert (out / "ess.png").stat().st_size > 10_000


def test_runs_with_one_seed_start_alike(scripts: dict[str, ModuleType], tmp_path: Path) -> None:
    """Runs of different estimators with the same seed and data (what a comparison of them
    is made of) start from the same flow: the same first evaluation."""
    names = ["reverse-standard", "reverse-path-fast", "forward-standard"]
    for n in names:
        argv = tiny("gmm", tmp_path, "--estimator", n, "--out", str(tmp_path / n))
        assert run(scripts["gmm"], argv) == 0
        assert json.loads((tmp_path / n / "config.json").read_text())["train"]["estimator"] == n
    first = [
        json.loads((tmp_path / n / "metrics.jsonl").read_text().splitlines()[0]) for n in names
    ]
    assert len({r["ess_reverse"] for r in first}) == 1 and len({r["nll"] for r in first}) == 1


def test_resume_after_a_kill_matches_an_uninterrupted_run(
    scripts: dict[str, ModuleType], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forward-KL φ⁴ run (minibatches of cached HMC samples, plateau schedule, clipping)
    killed after its step-4 checkpoint and resumed ends with the very same parameters."""
    phi4 = scripts["phi4"]
    extra = ["--estimator", "forward-path-fast", "--steps", "8", "--lr-patience", "1"]
    assert run(phi4, tiny("phi4", tmp_path, *extra, "--out", str(tmp_path / "full"))) == 0

    original = Trainer._train_step

    def killed(self: Trainer) -> tuple[Tensor, Tensor, bool]:
        if self.step == 5:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "_train_step", killed)
    cut = ["--out", str(tmp_path / "cut")]
    assert run(phi4, tiny("phi4", tmp_path, *extra, *cut)) == 128 + signal.SIGINT
    monkeypatch.setattr(Trainer, "_train_step", original)
    assert ckpt.load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 4
    cut_summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert cut_summary["status"] == "interrupted" and cut_summary["checkpoint_step"] == 4
    assert run(phi4, tiny("phi4", tmp_path, *extra, *cut, "--resume")) == 0

    a = ckpt.load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = ckpt.load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert a["step"] == b["step"] == 8
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]


def test_time_limit_stops_with_a_checkpoint_and_progress_bar(
    scripts: dict[str, ModuleType], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gmm = scripts["gmm"]
    argv = [a for a in tiny("gmm", tmp_path, "--out", str(tmp_path / "t")) if a != "--no-progress"]
    assert run(gmm, [*argv, "--steps", "50", "--time-limit", "1e-6s"]) == 0
    assert "gmm reverse-path-fast" in capsys.readouterr().err, "the tqdm bar goes to stderr"
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["stop_reason"] == "time_limit"
    assert summary["steps_done"] < 50
    assert ckpt.load_checkpoint(tmp_path / "t" / "checkpoint.pt")["step"] == summary["steps_done"]
    # A resumed run whose time is used up does nothing more; a raised limit lets it go on.
    assert run(gmm, [*argv, "--steps", "50", "--time-limit", "1e-6s", "--resume"]) == 0
    again = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert again["steps_done"] == summary["steps_done"]
    assert run(gmm, [*argv, "--steps", "50", "--time-limit", "1h", "--resume"]) == 0
    assert json.loads((tmp_path / "t" / "summary.json").read_text())["steps_done"] == 50


# ---------------------------------------------------------------- data parallel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ddp_main(rank: int, world: int, port: int, argv: list[str], name: str = "gmm") -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    code = load_script(name).main(argv)
    if code != 0:
        sys.exit(code)


def test_data_parallel_run(tmp_path: Path) -> None:
    """``torchrun``-style: two gloo processes train one run; rank 0 writes it once, the
    checkpoint holds both ranks' random streams."""
    out = tmp_path / "ddp"
    argv = tiny("gmm", tmp_path, "--device", "cpu", "--out", str(out))
    mp.spawn(_ddp_main, args=(2, _free_port(), argv), nprocs=2, join=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps_done"] == 4
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["step"] for s in lines] == [0, 2, 4]
    state = ckpt.load_checkpoint(out / "checkpoint.pt")
    gens = state["rng"]["generators"]
    assert len(gens) == 2 and not torch.equal(gens[0]["batch"], gens[1]["batch"])


def test_data_parallel_two_stage_run_on_the_training_clock(tmp_path: Path) -> None:
    """Under ``torchrun`` the ranks train stage 1 together (rank 0 holds its lock) and agree
    on time-based evaluations: with every step past the time grid, they evaluate at the vote
    steps (every 10) and at the end, not at every step."""
    out = tmp_path / "ddp"
    argv = tiny(
        "cnf", tmp_path, "--device", "cpu", "--out", str(out), "--steps", "12",
        "--eval-every", "1000", "--checkpoint-every", "1000", "--eval-every-time", "1e-9s",
    )  # fmt: skip
    mp.spawn(_ddp_main, args=(2, _free_port(), argv, "cnf"), nprocs=2, join=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps_done"] == 12
    steps = [json.loads(s)["step"] for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 10, 12]
    (folder,) = [p for p in (tmp_path / "pre").iterdir() if p.is_dir()]
    assert json.loads((folder / "summary.json").read_text())["world_size"] == 2


# ---------------------------------------------------------------- the command line


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_explains_every_option(
    scripts: dict[str, ModuleType], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        scripts[name].main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    parser = build_parser(scripts[name].EXPERIMENT)
    flags = [opt for action in parser._actions for opt in action.option_strings]
    for flag in ("--estimator", "--preset", "--resume", "--device", "--dtype"):
        assert flag in flags
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"
        for flag in action.option_strings:
            assert flag in text
    for param in scripts[name].EXPERIMENT.params:
        assert "--" + param.name.replace("_", "-") in text
    assert "quick:" in text and "paper:" in text, "help shows each preset's defaults"


def test_bad_options_give_one_line_errors(
    scripts: dict[str, ModuleType],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gmm = scripts["gmm"]
    assert "--estimator: expected one of reverse-standard" in error_of(
        gmm, ["--estimator", "nope"], capsys
    )
    assert "unrecognized arguments" in error_of(gmm, ["--bogus"], capsys)
    assert "--steps" in error_of(gmm, ["--steps", "-3"], capsys)
    err = error_of(gmm, ["--estimator", "forward-standard", "--n-train-samples", "0"], capsys)
    assert "needs training samples" in err
    u1_argv = tiny("u1", tmp_path, "--L", "6", "--out", str(tmp_path / "u1"))
    assert "divisible by 4" in error_of(scripts["u1"], u1_argv, capsys)
    assert not (tmp_path / "u1").exists(), "bad settings are refused before anything is written"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "CUDA is not available" in error_of(gmm, ["--device", "cuda"], capsys)


def test_run_folder_guards(
    scripts: dict[str, ModuleType], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gmm = scripts["gmm"]
    out = ["--out", str(tmp_path / "r")]
    assert run(gmm, tiny("gmm", tmp_path, *out)) == 0
    assert "already holds a run" in error_of(gmm, tiny("gmm", tmp_path, *out), capsys)
    err = error_of(gmm, tiny("gmm", tmp_path, *out, "--resume", "--lr", "0.5"), capsys)
    assert "other settings (--lr)" in err
    # Raising --steps on resume continues the run.
    assert run(gmm, tiny("gmm", tmp_path, *out, "--resume", "--steps", "6")) == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["steps_done"] == 6
    assert run(gmm, tiny("gmm", tmp_path, *out, "--overwrite")) == 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["steps_done"] == 4


def test_forward_kl_without_a_sampler(
    scripts: dict[str, ModuleType], capsys: pytest.CaptureFixture[str]
) -> None:
    from pathgrad_ref.training import main

    exp: Experiment = scripts["gmm"].EXPERIMENT
    nosampler = Experiment(
        name="gmm",
        description="",
        params=exp.params,
        presets=exp.presets,
        make_target=exp.make_target,
        make_flow=exp.make_flow,
        sampler=None,
    )

    class Wrapper:
        EXPERIMENT = nosampler

        @staticmethod
        def main(argv: list[str]) -> int:
            return main(nosampler, argv)

    err = error_of(Wrapper, ["--estimator", "forward-path-fast"], capsys)  # type: ignore[arg-type]
    assert "has no sampler" in err


def test_auto_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    with pytest.raises(ConfigError):
        resolve_device("tpu")


def test_presets_are_complete(scripts: dict[str, ModuleType]) -> None:
    """The quick and paper presets exist everywhere, every study's preset exists in its
    experiment, and the paper presets hold the paper's settings."""
    for module in scripts.values():
        assert {"quick", "paper"} <= set(module.EXPERIMENT.presets)
    for spec in load_script("study").STUDIES.values():
        assert spec.preset in scripts[spec.experiment].EXPERIMENT.presets, spec.name
    phi4 = scripts["phi4"].PRESETS["paper"]
    assert phi4["lattice"] == (16, 8) and (phi4["kappa"], phi4["lam"]) == (0.3, 0.022)
    assert phi4["n_couplings"] == 8 and phi4["hidden"] == (1000,) * 4
    assert (phi4["batch_size"], phi4["lr"], phi4["lr_patience"]) == (8000, 5e-4, 3000)
    assert phi4["lr_schedule"] == "plateau" and phi4["clip_norm"] == 1.0
    assert phi4["n_train_samples"] == 50_000_000
    gmm = scripts["gmm"].PRESETS["paper"]
    assert (gmm["dim"], gmm["lr"], gmm["batch_size"], gmm["steps"]) == (6, 1e-5, 4000, 10_000)
    assert gmm["n_train_samples"] == gmm["n_test_samples"] == 10_000
    u1 = scripts["u1"].PRESETS["paper"]
    assert (u1["L"], u1["beta"], u1["n_layers"], u1["n_mixture"]) == (16, 3.0, 24, 6)
    assert (u1["hidden"], u1["kernel_size"], u1["batch_size"], u1["lr"]) == ((8, 8), 3, 1000, 1e-4)


def test_progress_bar_shows_the_latest_evaluation(
    scripts: dict[str, ModuleType], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a for a in tiny("gmm", tmp_path, "--out", str(tmp_path / "b")) if a != "--no-progress"]
    capsys.readouterr()
    assert run(scripts["gmm"], argv) == 0
    final_bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "4/4" in final_bar and "@4: ESS " in final_bar, final_bar


def test_zero_steps_writes_everything_without_warnings(
    scripts: dict[str, ModuleType], tmp_path: Path
) -> None:
    out = tmp_path / "zero"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run(scripts["u1"], tiny("u1", tmp_path, "--steps", "0", "--out", str(out))) == 0
    assert {"loss.png", "observables.png", "nll.png", "ess.png"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "summary.json").read_text())["steps_done"] == 0
