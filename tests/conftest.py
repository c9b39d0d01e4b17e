"""Test options: ``--device`` (default cpu) and ``--dtype`` (default float64)."""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="torch device for the tests (cpu, cuda)")
    parser.addoption(
        "--dtype", default="float64", choices=["float64", "float32"], help="floating dtype"
    )


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    dev = torch.device(request.config.getoption("--device"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda requested but CUDA is not available")
    return dev


@pytest.fixture(scope="session")
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    dt: torch.dtype = getattr(torch, request.config.getoption("--dtype"))
    return dt


@pytest.fixture(scope="session")
def exact_tol(dtype: torch.dtype) -> float:
    """Relative tolerance for quantities that agree up to rounding."""
    return 1e-9 if dtype == torch.float64 else 2e-3
