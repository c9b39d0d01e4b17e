"""Everything a run reads is validated: a damaged checkpoint, config.json, metrics.jsonl or HMC
cache gives one ``error:`` line naming the file and what to do, exit code 2, no traceback, and
a failed start or resume changes nothing on disk. A failing write leaves the previous
checkpoint loadable."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import pytest
import torch
from script_support import error_of, load_script

from pathgrad_ref.training import files as ckpt
from pathgrad_ref.training.config import ConfigError
from pathgrad_ref.training.files import atomic_write

pytestmark = [
    pytest.mark.filterwarnings("ignore:series of .* too short:RuntimeWarning"),
    pytest.mark.usefixtures("one_thread"),
]

GMM = [
    "--steps", "4", "--batch-size", "8", "--eval-every", "2", "--eval-samples", "16",
    "--checkpoint-every", "2", "--dtype", "float64", "--no-progress", "--n-test-samples", "16",
    "--dim", "2", "--n-couplings", "2", "--hidden", "4",
]  # fmt: skip
PHI4 = [
    "--steps", "2", "--batch-size", "8", "--eval-every", "2", "--eval-samples", "16",
    "--dtype", "float64", "--no-progress", "--n-test-samples", "16", "--lattice", "4,4",
    "--n-couplings", "2", "--hidden", "4", "--hmc-chains", "8", "--hmc-therm", "5",
    "--hmc-thin", "1", "--hmc-leapfrog", "3", "--hmc-chunk", "8", "--n-train-samples", "16",
    "--estimator", "forward-path-fast",
]  # fmt: skip


@pytest.fixture(scope="module")
def gmm() -> ModuleType:
    return load_script("gmm")


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: contents and modification time."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def empty(p: Path) -> None:
    p.write_bytes(b"")


def garbage(p: Path) -> None:
    p.write_bytes(b"\x00\x01not a file of ours\xff" * 10)


def foreign_checkpoint(p: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, p)


@pytest.mark.parametrize(
    ("name", "damage", "says"),
    [
        ("checkpoint.pt", truncate, "cannot be loaded, it is truncated or not a checkpoint"),
        ("checkpoint.pt", empty, "is empty"),
        ("checkpoint.pt", garbage, "cannot be loaded"),
        ("checkpoint.pt", foreign_checkpoint, "is not a pathgrad_ref training checkpoint"),
        ("config.json", truncate, "cannot be read as JSON"),
        ("config.json", empty, "cannot be read as JSON"),
        ("config.json", lambda p: p.write_text("[1, 2]"), "is not a JSON object"),
        ("metrics.jsonl", lambda p: p.write_text('{"step": 0}\nnot json\n{"step": 2}\n'), "line 2"),
        ("metrics.jsonl", lambda p: p.write_text('{"x": 1}\n{"step": 2}\n'), "line 1"),
    ],
)
def test_a_damaged_run_file_is_one_error_and_nothing_changes(
    gmm: ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    damage: Callable[[Path], None],
    says: str,
) -> None:
    out = tmp_path / "run"
    argv = [*GMM, "--out", str(out)]
    assert gmm.main(argv) == 0
    damage(out / name)
    before = snapshot(out)
    err = error_of(gmm, [*argv, "--resume", "--steps", "6"], capsys)
    assert f"{out / name}: {says}" in err, err
    assert "--overwrite" in err, "the error says what to do"
    assert snapshot(out) == before, "a failed resume changes nothing on disk"


def test_a_torn_last_metrics_line_is_dropped(gmm: ModuleType, tmp_path: Path) -> None:
    """A run killed while appending leaves a torn last line: resuming drops it."""
    out = tmp_path / "run"
    argv = [*GMM, "--out", str(out)]
    assert gmm.main(argv) == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "ess_rev')
    assert gmm.main([*argv, "--resume", "--steps", "6"]) == 0
    steps = [json.loads(s)["step"] for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 2, 4, 6]


def test_a_failing_write_leaves_the_previous_checkpoint(
    gmm: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """The disk fills up while the step-4 checkpoint is written: exit code 1 with one line,
    the step-2 checkpoint still loads, no temporary file is left."""
    real_save = torch.save
    calls = {"n": 0}

    def full_disk(obj: Any, f: IO[bytes], *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            real_save(obj, f, *args, **kwargs)
            raise OSError(28, "No space left on device", str(getattr(f, "name", "")))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "run"
    capsys.readouterr()
    assert gmm.main([*GMM, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "No space left on device" in err and "--resume" in err, err
    monkeypatch.setattr(torch, "save", real_save)
    assert ckpt.load_checkpoint(out / "checkpoint.pt")["step"] == 2
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


def test_atomic_write_keeps_the_old_file_on_error(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    atomic_write(path, b"old")

    def fails(f: IO[bytes]) -> None:
        f.write(b"half of the new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(path, fails)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.txt"]


# ---------------------------------------------------------------- the HMC cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cache")
    assert load_script("phi4").main([*PHI4, "--prepare-data", "--cache-dir", str(folder)]) == 0
    return folder


def _copy(src: Path, dst: Path) -> Path:
    for p in src.rglob("*"):
        if p.is_file():
            target = dst / p.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(p.read_bytes())
    return dst


@pytest.mark.parametrize(
    ("what", "damage", "says"),
    [
        ("chunk", lambda p: p.write_bytes(p.read_bytes()[:-7]), "does not match its checksum"),
        ("chunk", lambda p: p.unlink(), "is missing"),
        ("metadata", truncate, "cannot be read as JSON"),
        ("metadata", lambda p: p.write_text('{"n_chunks": 2}'), "lacks the chunk count"),
    ],
)
def test_a_damaged_hmc_cache_is_reported(
    cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    what: str,
    damage: Callable[[Path], None],
    says: str,
) -> None:
    local = _copy(cache, tmp_path / "cache")
    sets = sorted(p for p in local.iterdir() if p.is_dir())
    assert sets, "the fixture made a cached set"
    victim = sets[0] / ("chunk_00000.pt" if what == "chunk" else "metadata.json")
    damage(victim)
    meta = json.loads((cache / sets[0].name / "metadata.json").read_text())
    assert len(meta["sha256"]) == meta["n_chunks"] >= 2, "checksums are recorded per chunk"
    out = tmp_path / "run"
    argv = [*PHI4, "--cache-dir", str(local), "--out", str(out)]
    before = snapshot(local)
    err = error_of(load_script("phi4"), argv, capsys)
    assert f"{victim}: {says}" in err and f"delete {sets[0]}" in err, err
    assert snapshot(local) == before and not out.exists()


def test_config_error_names_field_and_message() -> None:
    e = ConfigError("train.lr", "expected a finite number > 0, got -1")
    assert str(e) == "train.lr: expected a finite number > 0, got -1" and e.field == "train.lr"
