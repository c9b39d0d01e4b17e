"""The float32 precision policy: TF32 off for matmuls and convolutions unless asked for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import pathgrad_ref.precision as precision
from pathgrad_ref.precision import (
    PrecisionPolicy,
    apply_precision_policy,
    current_policy,
    precision_policy,
)

ROOT = Path(__file__).resolve().parent.parent


def test_default_policy_turns_tf32_off() -> None:
    with precision_policy(torch.float32, "cuda") as policy:
        assert (policy.matmul, policy.conv) == ("ieee", "ieee")
        assert current_policy() == policy
        if policy.api == "fp32_precision":
            b: Any = torch.backends
            flags = (
                b.cuda.matmul.fp32_precision,
                b.cudnn.conv.fp32_precision,
                b.cudnn.rnn.fp32_precision,
            )
            assert flags == ("ieee", "ieee", "ieee")
        else:
            assert not torch.backends.cuda.matmul.allow_tf32
            assert not torch.backends.cudnn.allow_tf32


def test_tf32_only_when_asked_and_only_for_float32() -> None:
    with precision_policy(torch.float32, "cuda", allow_tf32=True) as policy:
        assert (policy.matmul, policy.conv) == ("tf32", "tf32")
        assert current_policy() == policy
    with pytest.raises(ValueError, match="only concerns float32"):
        apply_precision_policy(torch.float64, "cuda", allow_tf32=True)
    with pytest.raises(ValueError, match="floating point dtype"):
        apply_precision_policy(torch.int64, "cpu")
    with pytest.raises(ValueError, match="expected a torch device"):
        apply_precision_policy(torch.float32, "gpu0")


def test_torch_default_allows_tf32_convolutions_and_the_context_restores_it() -> None:
    """Why the policy exists: torch's own default lets cuDNN convolutions use TF32 (read in a
    fresh process, whatever this one has set), and the context manager puts back the raw
    flags it found."""
    code = "from pathgrad_ref.precision import current_policy; print(current_policy().conv)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert out.stdout.strip() == "tf32"
    before = precision._raw_flags()
    with precision_policy(torch.float32, "cuda"):
        assert current_policy().conv == "ieee"
    assert precision._raw_flags() == before


def test_legacy_allow_tf32_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch < 2.9 has only ``allow_tf32``: the policy sets and reads those."""
    fake = SimpleNamespace(
        cuda=SimpleNamespace(matmul=SimpleNamespace(allow_tf32=True)),
        cudnn=SimpleNamespace(allow_tf32=True),
    )
    monkeypatch.setattr(precision, "_backends", lambda: fake)
    assert current_policy() == PrecisionPolicy("tf32", "tf32", "allow_tf32")
    with precision_policy(torch.float32, "cuda") as policy:
        assert policy == PrecisionPolicy("ieee", "ieee", "allow_tf32")
        assert fake.cuda.matmul.allow_tf32 is False and fake.cudnn.allow_tf32 is False
    assert fake.cuda.matmul.allow_tf32 is True and fake.cudnn.allow_tf32 is True
    assert policy.as_dict() == {"matmul": "ieee", "conv": "ieee", "api": "allow_tf32"}
