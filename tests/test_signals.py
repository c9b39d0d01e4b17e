"""SIGINT and SIGTERM: a run finishes its step, writes its checkpoint, says "interrupted",
prints one resume line and exits with 128 + signum; resumed, it ends with the parameters of an
uninterrupted run. A second signal stops at once with the last checkpoint loadable; under
``torchrun`` all ranks stop at the same step."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from script_support import ROOT, load_script
from torch import Tensor

from pathgrad_ref.training import Trainer
from pathgrad_ref.training import files as ckpt
from pathgrad_ref.training.trainer import HardStop, StopSignals

pytestmark = pytest.mark.usefixtures("one_thread")

ARGS = [
    "--steps", "600", "--batch-size", "16", "--eval-every", "50", "--eval-samples", "64",
    "--checkpoint-every", "7", "--dtype", "float64", "--no-progress", "--n-test-samples", "64",
    "--dim", "2", "--n-couplings", "2", "--hidden", "8", "--threads", "1",
]  # fmt: skip


def model(path: Path) -> dict[str, Tensor]:
    state: dict[str, Tensor] = ckpt.load_checkpoint(path)["model"]
    return state


def same(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tensor]:
    """The parameters of the uninterrupted run (in-process: the CPU run is deterministic)."""
    out = tmp_path_factory.mktemp("full") / "run"
    assert load_script("gmm").main([*ARGS, "--out", str(out)]) == 0
    return model(out / "checkpoint.pt")


@pytest.mark.parametrize(("signum", "seed"), [(signal.SIGINT, 0), (signal.SIGTERM, 1)])
def test_signal_then_resume_equals_an_uninterrupted_run(
    tmp_path: Path, reference: dict[str, Tensor], signum: int, seed: int
) -> None:
    out = tmp_path / "run"
    argv = [*ARGS, "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "paper_runs" / "gmm.py"), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # training has started once the step-50 evaluation is out
        if line.startswith("step      50"):
            break
    time.sleep(random.Random(seed).uniform(0.0, 0.3))  # an arbitrary moment of a step
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"stopped by {signal.Signals(signum).name}" in lines[0]
    assert lines[0].endswith(f"--out {out} --resume")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["stop_reason"] == signal.Signals(signum).name
    assert 50 <= summary["steps_done"] < 600
    assert ckpt.load_checkpoint(out / "checkpoint.pt")["step"] == summary["steps_done"]
    assert summary["checkpoint_step"] == summary["steps_done"]

    assert load_script("gmm").main([*argv, "--resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert same(model(out / "checkpoint.pt"), reference)


def test_a_second_signal_stops_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two SIGINTs inside step 10 (last checkpoint: step 7): the run leaves without finishing
    the step, the summary says so, the step-7 checkpoint loads, exit code 130."""
    original = Trainer._train_step

    def twice(self: Trainer) -> tuple[Tensor, Tensor, bool]:
        if self.step == 9:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self)

    monkeypatch.setattr(Trainer, "_train_step", twice)
    out = tmp_path / "run"
    handler = signal.getsignal(signal.SIGINT)
    assert load_script("gmm").main([*ARGS, "--out", str(out)]) == 128 + signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is handler, "the handlers are restored"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["stop_reason"] == "SIGINT (immediate)"
    assert summary["checkpoint_step"] == 7 and summary["steps_done"] == 9
    assert ckpt.load_checkpoint(out / "checkpoint.pt")["step"] == 7
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_stop_signals_record_then_raise() -> None:
    s = StopSignals()
    s.handle(signal.SIGTERM, None)
    assert s.received == signal.SIGTERM
    with pytest.raises(HardStop) as info:
        s.handle(signal.SIGINT, None)
    assert info.value.signum == signal.SIGINT


# ---------------------------------------------------------------- data parallel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _rank_main(rank: int, world: int, port: int, argv: list[str], out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )  # fmt: skip
    torch.set_num_threads(1)
    original = Trainer._train_step

    def only_rank_1_is_signalled(self: Trainer) -> Any:
        if self.ctx.rank == 1 and self.step == 3:
            self.signals.received = signal.SIGTERM
        return original(self)

    Trainer._train_step = only_rank_1_is_signalled  # type: ignore[method-assign]
    code = load_script("gmm").main(argv)
    Path(out, f"rank{rank}.json").write_text(json.dumps({"code": code}))


def test_all_ranks_stop_at_the_same_step(tmp_path: Path) -> None:
    """Only rank 1 gets SIGTERM (during step 4): the ranks vote at the step-6 evaluation and
    both stop there, with one checkpoint of step 6 and exit code 143 on both."""
    out = tmp_path / "ddp"
    argv = [*ARGS, "--eval-every", "6", "--checkpoint-every", "100", "--device", "cpu"]
    argv += ["--out", str(out)]
    mp.spawn(_rank_main, args=(2, _free_port(), argv, str(tmp_path)), nprocs=2, join=True)
    codes = [json.loads((tmp_path / f"rank{r}.json").read_text())["code"] for r in range(2)]
    assert codes == [128 + signal.SIGTERM] * 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps_done"] == 6
    assert ckpt.load_checkpoint(out / "checkpoint.pt")["step"] == 6


def test_sigterm_while_sampling_leaves_no_partial_cache(tmp_path: Path) -> None:
    """SIGTERM during HMC generation (before training): exit 143, one line, and the partial
    sample set is removed, so the next run generates it afresh."""
    cache = tmp_path / "cache"
    argv = ["--lattice", "4,4", "--n-test-samples", "400000", "--hmc-chains", "64"]
    argv += ["--cache-dir", str(cache), "--out", str(tmp_path / "run"), "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "paper_runs" / "phi4.py"), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("generating"):
            break
    time.sleep(0.5)
    proc.terminate()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert len(err.strip().splitlines()) == 1 and "stopped at once by SIGTERM" in err
    assert not list(cache.rglob("*")), "no partial sample set is left behind"
