"""Test options: ``--device`` (default cpu) and ``--dtype`` (default float64); a per-test seed;
``PATHGRAD_TEST_ORDER=reverse`` runs the suite in reverse order.

``--device cuda`` on a machine without CUDA is a usage error: the run stops with a non-zero exit
status before any test, never a green run of skipped tests. Tests that take the ``device``
fixture run on the chosen device.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from pathgrad_ref.training.config import ConfigError
from pathgrad_ref.training.trainer import resolve_device


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="torch device for the tests (cpu, cuda)")
    parser.addoption(
        "--dtype", default="float64", choices=["float64", "float32"], help="floating dtype"
    )
    parser.addoption(
        "--compile-backend",
        default=None,
        choices=["inductor", "aot_eager"],
        help="one torch.compile backend for the whole compile grid of tests/test_compile.py "
        "(default: inductor for the fast path and RealNVP, aot_eager for the rest)",
    )


def _requested_device(config: pytest.Config) -> torch.device:
    """The ``--device`` option (checked as the training runs check it), or
    ``pytest.UsageError`` naming what is wrong with it: never a silent fall-back to the CPU."""
    try:
        return resolve_device(config.getoption("--device"))
    except ConfigError as err:
        raise pytest.UsageError(
            f"--device: {err.message}; refusing to run the tests elsewhere"
        ) from None


def pytest_configure(config: pytest.Config) -> None:
    _requested_device(config)


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> torch.device:
    return _requested_device(request.config)


@pytest.fixture(scope="session")
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    dt: torch.dtype = getattr(torch, request.config.getoption("--dtype"))
    return dt


@pytest.fixture(scope="session")
def exact_tol(dtype: torch.dtype) -> float:
    """Relative tolerance for quantities that agree up to rounding."""
    return 1e-9 if dtype == torch.float64 else 2e-3


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for the module: tiny models gain nothing from a second thread, and on
    a busy 2-core machine spinning OpenMP threads slow such runs down many times over."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed_global_generators() -> None:
    """Every test starts from the same global torch state, so that a test gives the same result
    alone, in the full suite and in any order (tests should still prefer explicit generators).
    The default dtype must be torch's own: a module that changes it at import time changes
    every test collected after it (parameters drawn in another dtype, other random streams)."""
    torch.manual_seed(0)
    if torch.get_default_dtype() != torch.float32:
        raise RuntimeError(
            f"the default dtype is {torch.get_default_dtype()} at the start of a test; a test "
            "module changed it and did not restore it (use a fixture that restores it)"
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``PATHGRAD_TEST_ORDER=reverse pytest`` runs the suite back to front, to prove that no
    test depends on state left by another."""
    if os.environ.get("PATHGRAD_TEST_ORDER") == "reverse":
        items.reverse()
