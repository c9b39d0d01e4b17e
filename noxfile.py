"""Developer sessions: ``nox -s tests typecheck lint port_jax`` (what CI runs) and
``nox -s bench``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "typecheck", "lint", "port_jax"]
nox.options.default_venv_backend = "venv"

# The CPU wheel of torch is pinned here, not in pyproject.toml: the package keeps a plain lower
# bound, while development and CI environments must never resolve to the multi-gigabyte CUDA build.
TORCH_CPU = "torch==2.13.0"
# Formatting rules change between ruff releases; lint with one version everywhere.
RUFF = "ruff==0.17.6"
# The JAX port's environment: the CPU wheels of jax (jaxlib resolves to its CPU build), numpy and
# pytest only. torch is deliberately absent: the port must stand on the conformance vectors.
JAX_CPU = ["jax==0.10.2", "jaxlib==0.10.2"]


def _install(session: nox.Session) -> None:
    session.install(TORCH_CPU)
    # The zuko and ode extras, so that the tests and the type check cover pathgrad_ref.interop
    # and the torchdiffeq solvers of the continuous flows.
    session.install("-e", ".[dev,zuko,ode]")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (float64 by default; pass e.g. ``-- --dtype float32``)."""
    _install(session)
    session.run("pytest", *session.posargs)


@nox.session
def typecheck(session: nox.Session) -> None:
    """``mypy --strict`` on the package."""
    _install(session)
    session.run("mypy", "--strict", "pathgrad_ref")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole tree."""
    session.install(RUFF)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def bench(session: nox.Session) -> None:
    """Runtime benchmarks and ratio gates (pytest-benchmark)."""
    _install(session)
    session.run("pytest", "benchmarks", "--benchmark-only", *session.posargs)


@nox.session
def port_jax(session: nox.Session) -> None:
    """The JAX port (``ports/jax``) against the conformance vectors, without torch."""
    session.install(*JAX_CPU, "numpy", "pytest")
    session.run("pytest", "ports/jax", "-p", "no:cacheprovider", *session.posargs)
