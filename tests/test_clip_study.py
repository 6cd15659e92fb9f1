"""The clipping experiments, figure builders and the ClipExplorer widget (notebook 04)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import mpcourse as mpc
from mpcourse.clipping import AutoClip, ClipByNorm, ClipByValue
from mpcourse.history import History, StepRecord
from mpcourse.studies import clip_study

pytest.importorskip("torch")


def _hist(norms, clipped=None, losses=None):
    n = len(norms)
    clipped = clipped if clipped is not None else [False] * n
    losses = losses if losses is not None else [1.0] * n
    return History(
        [
            StepRecord(
                step=i,
                loss=losses[i],
                scale=1.0,
                grad_norm=norms[i],
                found_inf=not math.isfinite(norms[i]),
                skipped=False,
                seconds=0.0,
                samples=1,
                clipped=clipped[i],
            )
            for i in range(n)
        ]
    )


def test_thresholds_per_policy():
    h = _hist([4.0, 1.0, math.inf, 2.0])
    np.testing.assert_array_equal(clip_study.thresholds(ClipByNorm(0.5), h), [0.5] * 4)
    np.testing.assert_allclose(
        clip_study.thresholds(AutoClip(50), h), [4.0, 2.5, 2.5, np.percentile([4.0, 1.0, 2.0], 50)]
    )
    assert np.isnan(clip_study.thresholds(ClipByValue(1.0), h)).all()
    assert np.isnan(clip_study.thresholds(None, h)).all()


def test_loss_spikes_counts_jumps_and_non_finite_steps():
    assert clip_study.loss_spikes([1.0, 1.0, 1.0, 1.0, 3.0, 1.0, math.nan, 1.0]) == 2
    assert clip_study.loss_spikes([2.0, 1.9, 1.8, 1.7, 1.6]) == 0


def test_compare_summarize_and_recommend_are_measured(digits):
    cfg = mpc.TrainConfig(precision="fp32", lr=1e-2)
    pols = {"none": None, "norm": ClipByNorm(0.05), "value": ClipByValue(1e-3)}
    runs = clip_study.compare(digits, cfg, pols, model="mlp", steps=8)
    rows = clip_study.summarize(runs, last=4)
    assert [r["strategy"] for r in rows] == ["none", "norm", "value"]
    for r, run in zip(rows, runs.values()):
        assert r["final_loss"] == pytest.approx(float(np.mean(run.history.losses[-4:])))
        assert r["clipped"] == pytest.approx(run.history.column("clipped").mean())
    assert rows[0]["clipped"] == 0.0 and rows[1]["clipped"] == 1.0  # max_norm 0.05 is tiny
    table = clip_study.recommend(digits, {"mlp": cfg}, pols, steps=8, last=4)
    (row,) = table
    losses = {k: row[f"loss_{k}"] for k in pols}
    assert losses == pytest.approx({r["strategy"]: r["final_loss"] for r in rows})
    best = min(losses.values())
    assert losses[row["best"]] <= best * 1.02  # the winner is within the tie margin of the lowest
    text = clip_study.format_table(table)
    assert "mlp" in text and row["best"] in text


def test_clip_figures_have_titles_axes_and_the_data(digits):
    from mpcourse import plots

    h = _hist([3.0, 0.5, 2.0], clipped=[True, False, True], losses=[2.0, 1.5, 1.2])
    fig = plots.grad_norm_history(h, threshold=1.0, name="norm")
    assert fig.layout.title.text and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    names = [t.name for t in fig.data]
    assert names == ["norm: gradient norm", "clipped step", "threshold"]
    np.testing.assert_array_equal(fig.data[1].x, [0, 2])
    np.testing.assert_array_equal(fig.data[2].y, [1.0, 1.0, 1.0])
    comp = plots.clip_comparison({"a": h, "b": h})
    assert comp.layout.title.text and comp.layout.xaxis2.title.text and comp.layout.yaxis.title.text
    np.testing.assert_array_equal(comp.data[0].y, [2.0, 1.5, 1.2])
    eff = {"scale": 65536.0, "grad_norm": 2.0, "norm_correct": 1.0, "norm_wrong": 1 / 65536, "shrink": 65536.0}
    bars = plots.clip_order_bars(eff)
    assert list(bars.data[0].y) == [2.0, 1.0, 1 / 65536] and "65536" in bars.layout.title.text
    rows = [{"model": "mlp", "best": "norm", "loss_none": 1.0, "loss_norm": 0.5}]
    heat = plots.recommendation_heatmap(rows, ["none", "norm"])
    assert heat.data[0].text[0][1] == "0.500 *" and heat.layout.xaxis.title.text


def test_clip_explorer_retrains_when_a_control_changes(digits):
    pytest.importorskip("ipywidgets")
    from mpcourse.widgets import ClipExplorer

    ex = ClipExplorer(digits, mpc.TrainConfig(precision="fp32", lr=1e-2), model="mlp", steps=6)
    assert ex.strategy.value == "norm" and not ex.max_norm.disabled and ex.clip_value.disabled
    ex.max_norm.value = 0.01  # tiny: every step clips
    assert ex.last_run.policy == ClipByNorm(0.01)
    assert ex.last_run.history.column("clipped").all()
    thr = [t for t in ex.figure.data if t.name == "threshold"][0]
    np.testing.assert_allclose(thr.y, [0.01] * 6)
    ex.strategy.value = "autoclip"
    ex.percentile.value = 50.0
    assert ex.last_run.policy == AutoClip(50.0) and ex.max_norm.disabled
    thr = [t for t in ex.figure.data if t.name == "threshold"][0]
    np.testing.assert_allclose(thr.y, [np.percentile(ex.last_run.history.grad_norms[: k + 1], 50) for k in range(6)])
    line = [t for t in ex.figure.data if t.name == "this strategy"][0]
    np.testing.assert_allclose(line.y, ex.last_run.history.losses)
    assert "AutoClip(percentile=50.0" in ex.status.value
    assert repr(ex) == "ClipExplorer(model='mlp', strategy='autoclip', steps=6)"
    with pytest.raises(TypeError, match="Dataset"):
        ClipExplorer("digits", mpc.TrainConfig())
