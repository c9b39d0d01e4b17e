"""The dirty flag of the study records (``paper_runs/studies/provenance.py:git_dirty``), on a
scratch repository: tracked changes and untracked code count, study records and ignored files
do not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "paper_runs") not in sys.path:
    sys.path.insert(0, str(ROOT / "paper_runs"))

from studies.provenance import git_dirty  # noqa: E402


def _repo(tmp_path: Path) -> Path:
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    for f in ["paper_runs/gmm.py", "pathgrad_ref/flows/base.py", "paper_runs/RESULTS.md"]:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("0\n")
    (tmp_path / ".gitignore").write_text("runs/\n__pycache__/\n")
    git("add", "-A")
    git("commit", "-qm", "init")
    return tmp_path / "paper_runs"


def test_untracked_code_makes_the_tree_dirty(tmp_path: Path) -> None:
    """A new module that the commit does not hold, under the package or the run scripts, is
    as dirty as a modified one."""
    folder = _repo(tmp_path)
    assert git_dirty(folder) is False
    new = tmp_path / "pathgrad_ref" / "flows" / "new_layer.py"
    new.write_text("x = 1\n")
    assert git_dirty(folder) is True
    new.unlink()
    (tmp_path / "paper_runs" / "helper.py").write_text("x = 1\n")
    assert git_dirty(folder) is True


def test_ignored_files_records_and_other_folders_do_not_count(tmp_path: Path) -> None:
    """Run outputs (ignored), caches, new study records and untracked files outside the code
    leave the flag clean."""
    folder = _repo(tmp_path)
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "pathgrad_ref" / "__pycache__").mkdir()
    (tmp_path / "pathgrad_ref" / "__pycache__" / "base.pyc").write_text("")
    (tmp_path / "paper_runs" / "results" / "new").mkdir(parents=True)
    (tmp_path / "paper_runs" / "results" / "new" / "study.json").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("scratch\n")
    assert git_dirty(folder) is False
    (tmp_path / "paper_runs" / "RESULTS.md").write_text("1\n")
    assert git_dirty(folder) is False
    (tmp_path / "paper_runs" / "gmm.py").write_text("1\n")
    assert git_dirty(folder) is True


def test_benchmark_code_commit_counts_untracked_code_not_its_own_outputs(tmp_path: Path) -> None:
    """The benchmarks' commit stamp (``benchmarks/harness.py:code_commit``): a modified or new
    file of the library or the benchmarks marks it ``+dirty``; the records the script rewrites
    and ignored files do not."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import harness
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    _repo(tmp_path)
    for f in [
        "benchmarks/table2.py",
        "benchmarks/results/table2-cpu.json",
        "benchmarks/RESULTS.md",
    ]:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("0\n")
    subprocess.run(["git", "-C", str(tmp_path), "add", "-A"], check=True, capture_output=True)
    subprocess.run(
        ["git", "-C", str(tmp_path), "commit", "-qm", "b"], check=True, capture_output=True
    )
    outputs = ("benchmarks/results/table2-*", "benchmarks/RESULTS.md")
    script = str(tmp_path / "benchmarks" / "table2.py")

    def stamp() -> dict[str, object]:
        return harness.code_commit(outputs, script, root=tmp_path)

    clean = stamp()
    assert clean["dirty"] is False and "+dirty" not in str(clean["commit"])
    assert clean["script_in_package_checkout"] is True
    (tmp_path / "benchmarks" / "results" / "table2-cpu.json").write_text("1\n")
    (tmp_path / "benchmarks" / "RESULTS.md").write_text("1\n")
    (tmp_path / "pathgrad_ref" / "__pycache__").mkdir()
    (tmp_path / "pathgrad_ref" / "__pycache__" / "base.pyc").write_text("")
    assert stamp()["dirty"] is False
    (tmp_path / "benchmarks" / "helper.py").write_text("x = 1\n")
    assert stamp()["dirty"] is True and str(stamp()["commit"]).endswith("+dirty")
    (tmp_path / "benchmarks" / "helper.py").unlink()
    (tmp_path / "pathgrad_ref" / "flows" / "base.py").write_text("1\n")
    assert stamp()["dirty"] is True
