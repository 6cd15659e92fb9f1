"""What Accelerate and Lightning train in when asked for fp16 on a CPU (optional extras; skipped without them).

Install them without touching torch: ``pip install accelerate lightning`` (neither upgrades a
torch >= 2.1). Each check trains the zoo MLP a few steps through the library's own loop.
"""

from __future__ import annotations

import math

import pytest

pytest.importorskip("torch")

from mpcourse.engines.torch import launchers


def test_accelerate_fp16_on_cpu_silently_trains_in_fp32() -> None:
    pytest.importorskip("accelerate")
    out = launchers.accelerate_run("fp16", steps=3)
    assert out["device"] == "cpu" and out["reported"] == "fp16"  # it says fp16 ...
    assert out["compute_dtype"] == "float32"  # ... the matmuls ran in fp32
    assert out["scaler"] is False  # and no loss scaler was made
    assert not any("fp16" in w or "float16" in w for w in out["warnings"])  # without a word
    assert all(math.isfinite(v) for v in out["losses"]) and out["losses"][-1] < out["losses"][0]


def test_lightning_16_mixed_on_cpu_becomes_bf16() -> None:
    pytest.importorskip("lightning")
    out = launchers.lightning_run("16-mixed", steps=3)
    assert out["device"] == "cpu" and out["reported"] == "bf16-mixed"
    assert out["compute_dtype"] == "bfloat16"
    assert out["scaler"] is False  # bf16 needs none
    assert any("bf16-mixed" in w for w in out["warnings"])  # it says so
    assert all(math.isfinite(v) for v in out["losses"]) and out["losses"][-1] < out["losses"][0]
