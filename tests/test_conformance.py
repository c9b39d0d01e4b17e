"""The library reproduces the committed conformance vectors (``conformance/``) to 1e-12.

A change to any definition the vectors pin (a mask, a layout, a sign, a score step, an
estimator) fails here until the vectors are deliberately regenerated with
``python -m pathgrad_ref.conformance --write``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pathgrad_ref.flows.u1 as u1
from pathgrad_ref import conformance
from pathgrad_ref.estimators import ESTIMATORS


@pytest.fixture(scope="module")
def worst(one_thread: None) -> dict[str, float]:
    return conformance.check()


def test_library_reproduces_the_vectors(worst: dict[str, float]) -> None:
    assert worst.keys() == conformance.CASES.keys()
    print("largest differences:", {k: f"{v:.1e}" for k, v in worst.items()})
    assert max(worst.values()) <= conformance.LIBRARY_TOL


@pytest.mark.parametrize("name", list(conformance.CASES))
def test_vectors_are_complete_and_small(name: str) -> None:
    meta, arrays = conformance.load(conformance.DEFAULT_DIR, name)
    n_layers = len(meta["layers"])
    for i in range(n_layers):
        for d in ("forward", "inverse"):
            for what in ("x", "log_det", "score"):
                assert f"{d}/{what}/{i}" in arrays
    for est in ESTIMATORS:
        for p in meta["parameters"]:
            assert arrays[f"grad/{est}/{p}"].shape == tuple(meta["parameters"][p]["shape"])
    assert all(a.dtype == np.float64 for a in arrays.values())
    size = (conformance.DEFAULT_DIR / name / "arrays.npz").stat().st_size
    assert size < 1_000_000
    json.dumps(meta)  # plain JSON, nothing framework specific
    if name == "u1_4x4_8layers":
        assert sorted({layer["offset"] for layer in meta["layers"]}) == [0, 1, 2, 3]
        assert sorted({layer["mu"] for layer in meta["layers"]}) == [0, 1]


def test_continuous_steps_end_at_the_layer_output() -> None:
    """The RK4 intermediates of a continuous layer (one-step layers sharing its velocity) are
    the steps of its own solve: every step is recorded, and the last is the layer's output in
    both passes, to the last bit (the step times are dyadic, the arithmetic the same)."""
    meta, arrays = conformance.load(conformance.DEFAULT_DIR, "cnf_gmm_d3")
    ((i, layer),) = [(i, e) for i, e in enumerate(meta["layers"]) if e["kind"] == "continuous"]
    steps = layer["steps"]
    for d in ("forward", "inverse"):
        for what in ("x", "log_det", "score"):
            recorded = sorted(k for k in arrays if k.startswith(f"{d}/ode/{what}/{i}/"))
            assert len(recorded) == steps
            np.testing.assert_array_equal(
                arrays[f"{d}/ode/{what}/{i}/{steps}"], arrays[f"{d}/{what}/{i}"]
            )


def test_a_changed_mask_cycle_fails(monkeypatch: pytest.MonkeyPatch, one_thread: None) -> None:
    """The review's alternative cycle ``offset = ((i + 1) // 2) % 4`` is just as valid a flow,
    and exactly what the vectors must catch."""
    original = u1.u1_masks

    def shifted_cycle(L: int, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # ((i + 1) // 2) % 4 == (j // 2) % 4 for the index j = 2·((i + 1) // 2) + i % 2.
        return original(L, 2 * ((index + 1) // 2) + index % 2)

    monkeypatch.setattr(u1, "u1_masks", shifted_cycle)
    with pytest.raises(AssertionError, match="no longer reproduces the conformance vectors"):
        conformance.check(names=["u1_4x4_8layers"])


def test_compare_reports_differences() -> None:
    a = {"k": np.array([1.0, 2.0]), "m": np.zeros(1)}
    assert conformance.compare(a, {"k": np.array([1.0, 2.0 + 1e-9]), "m": np.zeros(1)}) == {
        "k": pytest.approx(0.5e-9),
        "m": 0.0,
    }
    assert conformance.compare(a, {"k": np.zeros(3), "m": np.zeros(1)})["k"] == float("inf")
    assert conformance.compare(a, {"k": a["k"]})["m"] == float("inf")
