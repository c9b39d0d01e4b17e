"""Progress output in a log file (issue 25, item 5): when stdout is not a terminal the bar is
plain lines at an interval (step, rate, latest ESS, time left), never carriage-return frames;
a run's log stays small. On a terminal it is tqdm's bar, unchanged."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from script_support import ROOT

from pathgrad_ref.progress import PlainProgress, progress_bar


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_at_the_interval_with_rate_and_time_left() -> None:
    clock, out = Clock(), io.StringIO()
    bar = PlainProgress(100, "run", "step", interval=10.0, file=out, clock=clock)
    for _ in range(40):  # 40 steps at 0.5 s: 20 s, so two lines (at 10 s and 20 s)
        clock.t += 0.5
        bar.update(1)
    bar.set_postfix_str("@40: ESS 0.5")
    bar.close()
    bar.close()  # a second close writes nothing
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in out.getvalue()
    assert lines[0] == "run: 20/100 step (20%), 2 step/s, 0:00:10 elapsed, 0:00:40 left"
    assert lines[2] == (
        "run: 40/100 step (40%), 2 step/s, @40: ESS 0.5, 0:00:20 elapsed, 0:00:30 left"
    )


def test_resumed_bar_counts_its_rate_from_where_it_started() -> None:
    clock, out = Clock(), io.StringIO()
    bar = PlainProgress(1000, "run", "step", initial=900, interval=1.0, file=out, clock=clock)
    clock.t = 4.0
    bar.update(100)
    assert (
        out.getvalue() == "run: 1000/1000 step (100%), 25 step/s, 0:00:04 elapsed, 0:00:00 left\n"
    )


def test_a_file_gets_plain_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under pytest stdout is captured (not a terminal); the interval comes from the env."""
    monkeypatch.setenv("PATHGRAD_PROGRESS_INTERVAL_S", "2.5")
    bar = progress_bar(10, "x")
    assert isinstance(bar, PlainProgress) and bar.interval == 2.5
    monkeypatch.setenv("PATHGRAD_PROGRESS_INTERVAL_S", "soon")
    with pytest.raises(ValueError, match="PATHGRAD_PROGRESS_INTERVAL_S: expected a number"):
        progress_bar(10, "x")


def test_a_redirected_training_run_writes_a_readable_log(tmp_path: Path) -> None:
    """A short GMM run with the bar on, stdout and stderr redirected to one file as a batch
    system does: no ``\\r``, a progress line per interval that says step, rate, ESS and time
    left, and a log bounded by its lines (a tqdm bar in a file redraws every 0.1 s)."""
    log = tmp_path / "log"
    argv = ["--steps", "300", "--batch-size", "16", "--eval-every", "100", "--eval-samples"]
    argv += ["64", "--checkpoint-every", "1000", "--dtype", "float64", "--n-test-samples", "64"]
    argv += ["--dim", "2", "--n-couplings", "2", "--hidden", "8", "--threads", "1"]
    argv += ["--out", str(tmp_path / "run")]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env["PATHGRAD_PROGRESS_INTERVAL_S"] = "0.05"
    start = time.monotonic()
    with open(log, "wb") as out:
        code = subprocess.call(
            [sys.executable, str(ROOT / "paper_runs" / "gmm.py"), *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            timeout=300,
        )
    wall = time.monotonic() - start
    text = log.read_text()
    assert code == 0, text
    assert "\r" not in text and "\x1b" not in text, "no carriage-return frames, no escapes"
    progress = [line for line in text.splitlines() if " step/s, " in line]
    assert len(progress) >= 2, text
    final = progress[-1]
    assert "300/300 step (100%)" in final and "ESS " in final and "0:00:00 left" in final
    assert all(line.endswith(" left") for line in progress)
    # Short lines, no more progress lines than intervals in the run, and a small log.
    assert max(len(line) for line in text.splitlines()) < 300
    assert len(progress) <= wall / 0.05 + 2
    assert len(text) < 300 * (len(progress) + 20), f"{len(text)} bytes"
