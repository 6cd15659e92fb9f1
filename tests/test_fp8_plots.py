"""The FP8 replay, its figures and the notebook-07 widget."""

from __future__ import annotations

import numpy as np
import pytest

from mpcourse import fp8, plots, widgets
from mpcourse.fp8.replay import quantization_error, replay

JUMP = [np.full((4, 8), a, np.float32) for a in (1, 1, 1, 10, 10, 1)]


def test_replay_shows_the_lag_and_counts_the_saturation() -> None:
    t = replay(fp8.DelayedScaling(history=4), JUMP)
    # Step 0 at scale 1; then 448 / 1; the jump to 10 is cast at 448 (4480 > 464: all 32 saturate);
    # the next step's scale is 448 / 10.
    np.testing.assert_allclose(t["scale"], [1, 448, 448, 448, 44.8, 44.8], rtol=1e-7)
    assert t["saturated"].tolist() == [0, 0, 0, 32, 0, 0]
    assert t["scaled_amax"][3] == 4480 and float(t["fp8_max"]) == 448
    assert np.isclose(t["error"][3], 0.9)  # every 10 became 448 / 448 = 1: 90 % off
    # A margin of 4 (16x headroom) absorbs a 10x jump; current scaling never lags.
    assert replay(fp8.DelayedScaling(history=4, margin=4), JUMP)["saturated"].sum() == 0
    assert replay(fp8.CurrentScaling(), JUMP)["saturated"].sum() == 0


def test_replay_leaves_the_recipe_alone_and_quantization_error_is_relative() -> None:
    r = fp8.DelayedScaling(history=2)
    replay(r, JUMP)
    assert r.scales == {}
    x = np.linspace(-1, 1, 256, dtype=np.float32).reshape(4, 64)
    err = quantization_error(x, fp8.CurrentScaling(), "input")
    assert 0 < err < 2**-4  # e4m3 has 3 mantissa bits: relative rounding error below 2**-4


def test_figures_have_titles_and_axis_labels() -> None:
    fig = plots.fp8_trace({"delayed": replay(fp8.DelayedScaling(history=4), JUMP)}, title="t")
    assert fig.layout.title.text == "t" and len(fig.data) == 3
    assert fig.layout.yaxis.title.text and fig.layout.xaxis3.title.text
    bars = plots.quantization_error_bars({"tensorwise": 0.05, "rowwise": 0.01})
    assert list(bars.data[0].y) == [5.0, 1.0] and bars.layout.yaxis.title.text


def test_history_trace_reads_an_fp8_run(digits) -> None:
    pytest.importorskip("torch")
    import mpcourse as mpc

    eng = mpc.make_engine("torch", "mlp", mpc.TrainConfig(precision="fp8"), device="cpu")
    hist = eng.fit(digits, steps=3)
    t = plots.history_trace(hist, "head.grad_output")
    assert float(t["fp8_max"]) == 57344.0 and t["scale"][0] == 1.0
    assert plots.fp8_trace({"run": t}).data


def test_trace_explorer_redraws_on_each_control() -> None:
    ex = widgets.Fp8TraceExplorer(JUMP)
    assert ex.trace["saturated"].sum() == 32 and "saturated values: <b>32</b>" in ex.summary.value
    ex.margin.value = 4
    assert ex.trace["saturated"].sum() == 0
    ex.recipe.value = "current"
    assert ex.history.disabled and "CurrentScaling" in repr(ex)
    ex.fmt.value = "e5m2"
    assert float(ex.trace["fp8_max"]) == 57344.0 and len(ex.figure.data) == 3
    with pytest.raises(ValueError, match="at least one"):
        widgets.Fp8TraceExplorer([])


def test_compare_recipes_finds_the_finer_grain_better_on_outliers() -> None:
    from mpcourse.fp8.replay import compare_recipes

    x = np.random.default_rng(0).normal(size=(128, 256)).astype(np.float32)
    x[:, 7] *= 1e4  # one outlier channel
    ordinary = np.ones_like(x, bool)
    ordinary[:, 7] = False
    rows = compare_recipes(
        x, [fp8.CurrentScaling(fmt="e4m3"), fp8.RowwiseScaling(), fp8.BlockScaling()], where=ordinary
    )
    err = {r["recipe"]: r["error"] for r in rows}
    under = {r["recipe"]: r["underflowed"] for r in rows}
    assert err["block"] < err["rowwise"] < err["current"] and under["block"] < under["rowwise"] < under["current"]
    assert [r["tiles"] for r in rows] == [1, 128, 256]
