"""Shared by the tests of the training scripts: load ``paper_runs/<name>.py`` as a module, and
run one expecting a single ``error:`` line."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("gmm", "phi4", "u1", "cnf")


def load_script(name: str) -> ModuleType:
    """``paper_runs/<name>.py`` as a fresh module (not registered in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(
        f"paper_runs_{name}", ROOT / "paper_runs" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def error_of(script: ModuleType, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``argv``, expect exit code 2 and return the single stderr line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        script.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"paper_runs/{script.EXPERIMENT.name}.py: error: "), err
    return err
