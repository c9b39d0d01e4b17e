"""Options and fixtures of the runtime benchmarks (``nox -s bench``, i.e.
``pytest benchmarks --benchmark-only``).

``--bench-scale {small,paper-arch,paper}`` picks the sizes of ``harness.SIZES`` (``small`` for a
CPU or CI, ``paper`` for the paper's configuration on a GPU), ``--device`` the torch device,
``--bench-dtype`` the floating dtype (float32, as in training) and ``--bench-threads`` the
intra-op threads on the CPU (1 by default, see ``harness.set_threads``), ``--bench-compile``
swaps the runtime gates for those of compiled estimators (``test_bench_gates.compiled_gates``).

``--device cuda`` on a machine without CUDA is a usage error: the run stops with a non-zero exit
status before any benchmark, never a green run of skipped ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import harness
import pytest
import torch

from pathgrad_ref.training.config import ConfigError
from pathgrad_ref.training.trainer import resolve_device


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pathgrad-bench", "pathgrad-ref runtime benchmarks")
    group.addoption(
        "--bench-scale",
        default="small",
        choices=list(harness.SCALES),
        help="benchmark sizes: small (CPU/CI), paper-arch (paper architectures, CPU batches), "
        "paper (the paper's configuration, for a GPU)",
    )
    group.addoption(
        "--bench-dtype", default="float32", choices=["float32", "float64"], help="dtype"
    )
    group.addoption(
        "--bench-threads",
        type=int,
        default=1,
        help="CPU intra-op threads (0: torch's default); default 1",
    )
    group.addoption(
        "--bench-compile",
        action="store_true",
        help="runtime gates on compiled estimators (torch.compile) against eager ones",
    )
    # tests/conftest.py defines the same --device option; it is registered once when both
    # folders are collected in one run.
    with contextlib.suppress(ValueError):
        group.addoption("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")


def _requested_device(config: pytest.Config) -> torch.device:
    """The ``--device`` option (checked as the training runs check it), or
    ``pytest.UsageError`` naming what is wrong with it: never a silent fall-back to the CPU."""
    try:
        return resolve_device(config.getoption("--device"))
    except ConfigError as err:
        raise pytest.UsageError(
            f"--device: {err.message}; refusing to run the benchmarks elsewhere"
        ) from None


def pytest_configure(config: pytest.Config) -> None:
    _requested_device(config)


@pytest.fixture(scope="session")
def bench_device(request: pytest.FixtureRequest) -> torch.device:
    dev = _requested_device(request.config)
    if dev.type == "cpu":
        harness.set_threads(int(request.config.getoption("--bench-threads")))
    return dev


@pytest.fixture(scope="session")
def bench_compile(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--bench-compile"))


@pytest.fixture(scope="session")
def bench_scale(request: pytest.FixtureRequest) -> str:
    scale: str = request.config.getoption("--bench-scale")
    return scale


@pytest.fixture(scope="session")
def bench_dtype(request: pytest.FixtureRequest) -> torch.dtype:
    dt: torch.dtype = getattr(torch, request.config.getoption("--bench-dtype"))
    return dt


@pytest.fixture(scope="session")
def benches(
    bench_device: torch.device, bench_scale: str, bench_dtype: torch.dtype
) -> Callable[[str], harness.Bench]:
    """``benches(setup)``: the setup at the session's scale, built once per session."""
    cache: dict[str, harness.Bench] = {}

    def get(setup: str) -> harness.Bench:
        if setup not in cache:
            cache[setup] = harness.build(setup, bench_scale, bench_device, bench_dtype)
        return cache[setup]

    return get
