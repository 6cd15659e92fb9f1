"""Each course widget's output carries the figure it drew, for pages without a kernel (the site)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

import mpcourse as mpc
from mpcourse import widgets
from mpcourse.history import History, StepRecord
from mpcourse.widgets.display import PLOTLY_MIME, figure_bundle

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _stored(widget: object) -> dict:
    """The figure JSON in the widget's display bundle (what a notebook stores for the cell)."""
    bundle = widget._repr_mimebundle_()  # type: ignore[attr-defined]
    assert WIDGET_MIME in bundle and bundle["text/plain"] == repr(widget)
    return bundle[PLOTLY_MIME]


def _decoded(values: object) -> np.ndarray:
    """A trace array as plotly's JSON stores it: a list, or base64 ``{"dtype", "bdata"}``."""
    if isinstance(values, dict):
        import base64

        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"])
    return np.asarray(values, dtype=float)


def _history(n: int, *, skip_at: int | None = None) -> History:
    recs = [
        StepRecord(
            step=i,
            loss=2.0 / (1 + i),
            scale=2.0**16 / (2 if skip_at is not None and i >= skip_at else 1),
            grad_norm=1.0,
            found_inf=i == skip_at,
            skipped=i == skip_at,
            seconds=0.01,
            samples=64,
        )
        for i in range(n)
    ]
    return History(records=recs, meta={"precision": "fp16"})


def test_figure_bundle_skips_a_missing_or_pointless_figure():
    assert figure_bundle(None) == {}
    assert figure_bundle(go.FigureWidget(go.Scatter(x=[], y=[]))) == {}  # a live figure before its first run
    fig = go.Figure(go.Scatter(x=[0, 1], y=[3.0, 4.0]), layout={"title": {"text": "t (units)"}})
    stored = figure_bundle(fig)[PLOTLY_MIME]
    assert list(_decoded(stored["data"][0]["y"])) == [3.0, 4.0] and stored["layout"]["title"]["text"] == "t (units)"


def test_fp8_explorer_stores_the_figure_of_its_current_settings():
    rng = np.random.default_rng(0)
    steps = [rng.normal(size=64).astype(np.float32) * (1 + 20 * (i == 5)) for i in range(8)]
    ex = widgets.Fp8TraceExplorer(steps)
    stored = _stored(ex)
    assert len(stored["data"]) == len(ex.figure.data) >= 1
    assert stored["layout"]["title"]["text"] == ex.figure.layout.title.text
    assert "DelayedScaling(history=16" in stored["layout"]["title"]["text"]  # the widget's default recipe
    ex.recipe.value = "current"
    assert "CurrentScaling" in _stored(ex)["layout"]["title"]["text"]  # a later display shows the new run


def test_history_inspector_stores_the_selected_runs_figure():
    insp = widgets.HistoryInspector({"fp16": _history(12, skip_at=4), "fp32": _history(12)}, reference="fp32")
    stored = _stored(insp)
    assert insp.figure is not None and stored["layout"]["title"]["text"] == insp.figure.layout.title.text
    assert "fp16" in stored["layout"]["title"]["text"]
    losses = [t for t in stored["data"] if "loss" in t.get("name", "")]
    assert losses and len(_decoded(losses[0]["y"])) == 12


def test_format_explorer_has_no_figure_to_store():
    bundle = widgets.FormatExplorer("0.1")._repr_mimebundle_()
    assert WIDGET_MIME in bundle and PLOTLY_MIME not in bundle


def test_loss_scaling_panel_opens_on_its_default_run_and_stores_it():
    pytest.importorskip("torch")
    task = mpc.data.load("underflow")
    panel = widgets.LossScalingPanel(task, steps=5, device="cpu", backends=["torch"])
    assert panel.last_run is not None and panel.last_run.history.meta["precision"] == "fp16"
    stored = _stored(panel)
    scales = _decoded(stored["data"][1]["y"])
    np.testing.assert_allclose(scales, panel.last_run.history.scales)
    assert scales[0] == panel.init_scale.value == 2.0**16  # the slider's default
    assert len(_decoded(stored["data"][0]["y"])) == 5 and "skipped" in panel.status.value
    empty = widgets.LossScalingPanel(task, steps=5, device="cpu", backends=["torch"], initial_run=False)
    assert empty.last_run is None and PLOTLY_MIME not in empty._repr_mimebundle_()


def test_clip_explorer_stores_its_default_strategys_figure():
    pytest.importorskip("torch")
    ex = widgets.ClipExplorer(mpc.data.load("digits"), mpc.TrainConfig(precision="fp32", lr=1e-2), model="mlp", steps=3)
    stored = _stored(ex)
    by_name = {t.get("name"): t for t in stored["data"]}
    np.testing.assert_allclose(_decoded(by_name["this strategy"]["y"]), ex.last_run.history.losses)
    np.testing.assert_allclose(_decoded(by_name["threshold"]["y"]), [1.0] * 3)  # the default max_norm
