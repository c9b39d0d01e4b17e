"""Minimal reproduction, independent of the package: under ``torch.compile`` an input-only
``autograd.grad`` to a tensor *made inside the compiled region* finds no path.

Eager autograd records ``b = x[:, 2:]`` and ``y = a·exp(tanh(b W))`` as separate nodes, so
``b`` is an ancestor of ``y`` and ``autograd.grad(y, b)`` is the vector-Jacobian product to ``b``.
Dynamo breaks the graph at ``autograd.grad`` and AOTAutograd turns the region before it into one
autograd node whose inputs are the region's inputs (``x``, ``W``); ``b`` and ``y`` both come
out of that node as siblings. ``autograd.grad(y, b)`` then raises "appears to not have been used
in the graph", or with ``allow_unused=True`` returns ``None``: a VJP term that silently
vanishes. This is what made the compiled fast path's gradients wrong (by 10% and 22%): its
coupling step asked for exactly this gradient. ``torch.func.vjp`` of the function of ``b`` is
traced by the compiler as a function and is exact (``test_functional_vjp_is_exact``).

The first tests document the torch behaviour as it is (torch 2.13): they are strict xfails of
the eager result, so that a torch release that preserves the eager semantics turns them into
failures ("XPASS(strict)") and tells us. The text of an upstream report is in
``docs/upstream/torch-compile-retained-graph.md``.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch import Tensor

pytestmark = pytest.mark.compile

F64 = torch.float64


def _inputs() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, 2, generator=g, dtype=F64, requires_grad=True)
    x = torch.randn(5, 4, generator=g, dtype=F64)
    return x, w


def vjp_to_intermediate(x: Tensor, w: Tensor) -> Tensor | None:
    """``∂/∂b ⟨1, y(a, b)⟩`` through the graph, ``b`` sliced from ``x`` in the same function."""
    x = x.detach().requires_grad_(True)
    a, b = x[:, :2], x[:, 2:]
    y = a * torch.exp(torch.tanh(b @ w))
    (v,) = torch.autograd.grad(y, b, torch.ones_like(y), retain_graph=True, allow_unused=True)
    return v


def surrogate_step(x: Tensor, w: Tensor) -> Tensor:
    """The fast path's pattern in miniature: an input-only VJP with the graph retained, its
    value used as a fixed direction, then ``backward`` through the same graph."""
    x = x.detach().requires_grad_(True)
    a, b = x[:, :2], x[:, 2:]
    y = a * torch.exp(torch.tanh(b @ w))
    (v,) = torch.autograd.grad(y, b, torch.ones_like(y), retain_graph=True, allow_unused=True)
    v = torch.zeros_like(b) if v is None else v
    loss = (y * v.detach()).sum() + (b * v.detach()).sum()
    loss.backward()
    return loss.detach()


def functional_step(x: Tensor, w: Tensor) -> Tensor:
    """The same step with the VJP taken by ``torch.func.vjp`` (the package's compiled form)."""
    a, b = x[:, :2], x[:, 2:]
    y, vjp_fn = torch.func.vjp(lambda b_in: a * torch.exp(torch.tanh(b_in @ w)), b)
    (v,) = vjp_fn(torch.ones_like(y))
    loss = (y * v.detach()).sum() + (b * v.detach()).sum()
    loss.backward()
    return loss.detach()


def _grad_w(step: object, x: Tensor, w: Tensor) -> Tensor:
    w.grad = None
    step(x, w)  # type: ignore[operator]
    assert w.grad is not None
    return w.grad.detach().clone()


@pytest.fixture(autouse=True)
def fresh_dynamo() -> None:
    torch._dynamo.reset()


def test_eager_vjp_to_intermediate_exists() -> None:
    x, w = _inputs()
    assert vjp_to_intermediate(x, w) is not None


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="torch.compile: a tensor made in a compiled region is no ancestor of the region's "
    "other outputs, so autograd.grad to it finds no path (None with allow_unused)",
)
def test_compiled_vjp_to_intermediate_exists() -> None:
    x, w = _inputs()
    v = torch.compile(vjp_to_intermediate)(x, w)
    assert v is not None, "compiled: autograd.grad to the intermediate b returned None"


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="the VJP term vanishes under torch.compile (see the test above): wrong gradients",
)
def test_compiled_surrogate_gradient_equals_eager() -> None:
    x, w = _inputs()
    eager = _grad_w(surrogate_step, x, w)
    compiled = _grad_w(torch.compile(surrogate_step), x, w)
    assert torch.allclose(compiled, eager, rtol=1e-12, atol=0.0), (
        f"compiled gradient off by {float((compiled - eager).norm() / eager.norm()):.2e} (rel)"
    )


def test_functional_vjp_is_exact() -> None:
    x, w = _inputs()
    eager = _grad_w(surrogate_step, x, w)
    assert torch.allclose(_grad_w(functional_step, x, w), eager, rtol=1e-12, atol=0.0)
    compiled = _grad_w(torch.compile(functional_step), x, w)
    assert torch.allclose(compiled, eager, rtol=1e-12, atol=0.0)
