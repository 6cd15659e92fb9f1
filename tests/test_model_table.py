"""The per-model table: real runs, the reference first, the failure of unscaled fp16 visible."""

from __future__ import annotations

import numpy as np
import pytest

import mpcourse as mpc

pytest.importorskip("torch")


def test_model_table_rows_are_real_runs_and_show_underflow() -> None:
    from mpcourse.studies import model_table

    task = mpc.data.load("underflow")  # every fp16 gradient flushes to zero without scaling
    setups = {k: model_table.DEFAULT_SETUPS[k] for k in ("fp32", "fp16, dynamic", "fp16, no scaling")}
    rows = model_table.measure(task, models=("mlp",), setups=setups, steps=12)
    by = {r["setup"]: r for r in rows}
    assert [r["setup"] for r in rows] == list(setups) and by["fp32"]["vs_fp32"] == 1.0
    assert by["fp16, no scaling"]["zero_grad"] == 12 and by["fp16, dynamic"]["zero_grad"] == 0
    assert by["fp16, dynamic"]["skipped"] == 0 and 0 <= by["fp32"]["accuracy"] <= 1
    assert np.isfinite(by["fp32"]["ms_per_step"]) and "-" in by["fp32"]["ms_p10_p90"]
    text = model_table.format_rows(rows)
    assert text.splitlines()[0].split()[:3] == ["model", "setup", "final_loss"] and "fp16, no scaling" in text
    with pytest.raises(ValueError, match="unknown model"):
        model_table.measure(task, models=("nope",))
    with pytest.raises(ValueError, match="steps must be an int >= 10"):
        model_table.measure(task, steps=3)
