"""Builders for notebooks 01/02 (data in, titled figure out) and the widgets' callbacks."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

import mpcourse as mpc
from mpcourse import plots, widgets


def _labelled(fig: go.Figure) -> None:
    assert isinstance(fig, go.Figure)
    assert fig.layout.title.text
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_setup_notebook_sets_the_renderer():
    import plotly.io as pio

    old = pio.renderers.default
    try:
        assert plots.setup_notebook() == "plotly_mimetype+notebook_connected" == pio.renderers.default
    finally:
        pio.renderers.default = old


def test_bit_layout_holds_each_formats_bits():
    fig = plots.bit_layout(-2.5, ["fp32", "fp16"])
    _labelled(fig)
    by_field = {t.name: t for t in fig.data}
    for fmt in ("fp32", "fp16"):
        got = "".join(
            t for f in ("sign", "exponent", "mantissa") for t, y in zip(by_field[f].text, by_field[f].y) if y == fmt
        )
        assert got == mpc.formats.bits(-2.5, fmt).replace(" ", "")


def test_format_ranges_and_number_line():
    fig = plots.format_ranges(["fp16", "bf16"])
    _labelled(fig)
    normal = fig.data[1]
    assert normal.x[0] == pytest.approx(np.log2(mpc.formats.info("fp16").min_normal))
    assert normal.x[1] == pytest.approx(np.log2(65504.0))
    nl = plots.number_line(["fp8_e4m3"], 0.0, 2.0)
    _labelled(nl)
    np.testing.assert_array_equal(nl.data[0].x, mpc.formats.representable_values("fp8_e4m3", 0.0, 2.0))


def test_running_sums_thins_but_keeps_the_last_point():
    s = np.arange(1, 2001, dtype=float)
    fig = plots.running_sums({"a": s}, exact=s, max_points=100)
    _labelled(fig)
    assert len(fig.data) == 2 and len(fig.data[0].x) == 100
    assert fig.data[0].x[-1] == 2000 and fig.data[0].y[-1] == 2000.0


def test_gradient_histogram_counts_and_reports_underflow():
    g = np.array([1e-9] * 3 + [1e-6] * 2 + [0.5] * 5)
    fig = plots.gradient_histogram(g, "fp16")
    _labelled(fig)
    assert int(np.sum(fig.data[0].y)) == 10
    assert "30.00% flush to zero in fp16" in fig.layout.title.text
    assert "20.00% become subnormal" in fig.layout.title.text


def test_loss_and_scale_empty_and_filled():
    empty = plots.loss_and_scale()
    assert [len(t.x) for t in empty.data] == [0, 0, 0]
    recs = [
        mpc.StepRecord(
            step=i, loss=2.0 * 2**-20, scale=s, grad_norm=1.0, found_inf=f, skipped=f, seconds=0.01, samples=64
        )
        for i, (s, f) in enumerate([(8.0, False), (8.0, True), (4.0, False)])
    ]
    fig = plots.loss_and_scale(mpc.History(recs), loss_weight=2**-20)
    assert fig.layout.title.text and fig.layout.xaxis2.title.text and fig.layout.yaxis.title.text
    np.testing.assert_allclose(fig.data[0].y, [2.0, 2.0, 2.0])
    assert list(fig.data[2].x) == [1] and list(fig.data[2].y) == [8.0]


def test_updates_vs_spacing_splits_lost_and_kept():
    w = np.array([1.0, 1.0, 1e-3, 1e-3])
    u = np.array([1e-5, 1e-2, 1e-5, 1e-9])
    fig = plots.updates_vs_spacing(w, u, "fp16")
    _labelled(fig)
    kept, lost = fig.data[0], fig.data[1]
    assert list(lost.y) == [1e-5, 1e-9] and list(kept.y) == [1e-2, 1e-5]
    assert "50.0% of updates lost" in fig.layout.title.text
    with pytest.raises(ValueError, match="same size"):
        plots.updates_vs_spacing([1.0], [1.0, 2.0])


def test_format_explorer_updates_on_typing():
    ex = widgets.FormatExplorer("1.0")
    assert [r["class"] for r in ex.rows] == ["normal"] * 5
    ex.text.value = "1e-8"
    assert dict((r["format"], r["class"]) for r in ex.rows)["fp16"] == "underflow"
    assert "0 00000 0000000000" in ex.table.value
    ex.text.value = "abc"
    assert ex.rows == [] and "Not a number" in ex.table.value
    bundle = ex._repr_mimebundle_()
    assert bundle["text/plain"].startswith("FormatExplorer(") and "application/vnd.jupyter.widget-view+json" in bundle


def test_loss_scaling_panel_click_trains_and_redraws():
    pytest.importorskip("torch")
    panel = widgets.LossScalingPanel(
        mpc.data.load("underflow"), steps=12, device="cpu", backends=["torch"], initial_run=False
    )
    assert [len(t.x) for t in panel.figure.data] == [0, 0, 0]
    panel.init_scale.value = 2.0**40
    panel.growth_interval.value = 3
    panel.hysteresis.value = 2
    cfg = panel.config()
    assert (cfg.init_scale, cfg.growth_interval, cfg.hysteresis, cfg.precision) == (2.0**40, 3, 2, "fp16")
    panel.button.click()  # the Train button's callback
    run = panel.last_run
    assert run is not None and len(panel.figure.data[0].y) == 12
    np.testing.assert_allclose(panel.figure.data[1].y, run.history.scales)
    assert panel.figure.data[1].y[0] == 2.0**40
    assert len(panel.figure.data[2].x) == run.history.column("found_inf").sum() > 0
    assert "skipped" in panel.status.value and not panel.button.disabled
    first = list(panel.figure.data[0].y)
    panel.precision.value, panel.loss_scale.value = "fp16", "none"
    panel.train()
    assert list(panel.figure.data[0].y) != first and np.all(panel.figure.data[1].y == 1.0)
    assert panel.config().scaling_mode == "none"
    panel.loss_scale.value = "static"
    assert panel.config().loss_scale == 2.0**40


def test_loss_scaling_panel_rejects_bad_input():
    with pytest.raises(TypeError, match="Dataset"):
        widgets.LossScalingPanel("underflow")
    with pytest.raises(ValueError, match="not among those offered"):
        widgets.LossScalingPanel(mpc.data.load("underflow"), backends=["torch"], backend="mlx")


def test_log2_ticks_label_powers_of_two():
    t = plots.log2_ticks([2.0**10, 2.0**13, float("inf"), 0.0])
    assert t["tickvals"] == [2.0**k for k in range(10, 14)] and t["ticktext"] == ["2^10", "2^11", "2^12", "2^13"]
    assert len(plots.log2_ticks([1.0, 2.0**40])["tickvals"]) <= 8
    assert plots.log2_ticks([]) == {}


def test_time_bars_draws_totals_in_seconds_and_per_step_times_in_ms() -> None:
    from mpcourse import plots

    total = plots.time_bars({"fp32": 2.0, "fp16": 4.0})
    assert list(total.data[0].y) == [2.0, 4.0] and total.layout.yaxis.title.text == "training time (s)"
    assert total.data[0].text[1] == "4.00 s (0.50x vs fp32)"
    step = plots.time_bars({"fp32": 0.002, "fp16": 0.008}, title="per step", per_step=True)
    assert list(step.data[0].y) == [2.0, 8.0] and step.layout.yaxis.title.text == "time per step (ms)"
    assert step.data[0].text[1] == "8.00 ms (0.25x vs fp32)" and step.layout.title.text == "per step"
