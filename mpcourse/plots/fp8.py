"""Figures of FP8 scaling: where the largest value lands, the scale, the saturation events.

Usage::

    from mpcourse import plots
    from mpcourse.fp8.replay import replay

    plots.fp8_trace({"delayed": replay(fp8.DelayedScaling(), steps)})    # or from a History:
    plots.fp8_trace({"run": plots.history_trace(hist, "layers.0.input")})
    plots.quantization_error_bars({"tensorwise": 0.06, "rowwise": 0.03})

Data in, ``plotly.graph_objects.Figure`` out; every figure has a title and axis labels with units.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go

from mpcourse.fp8.cast import FP8_MAX
from mpcourse.history import History
from mpcourse.plots.style import STEP_AXIS

__all__ = ["fp8_trace", "history_trace", "quantization_error_bars"]


def history_trace(hist: History, key: str) -> dict[str, np.ndarray]:
    """One tensor's fp8 stats over a run's steps, shaped as :func:`fp8_trace` wants them."""
    t = {f: hist.fp8_trace(key, f) for f in ("amax", "scale", "saturated", "underflowed")}
    t["scaled_amax"] = t["amax"] * t["scale"]
    fmt = next(r.fp8[key]["fmt"] for r in hist.records if r.fp8 and key in r.fp8)
    t["fp8_max"] = np.array(FP8_MAX[fmt])
    return t


def fp8_trace(traces: Mapping[str, Mapping[str, np.ndarray]], title: str = "FP8 scaling of one tensor") -> go.Figure:
    """Three panels over the steps, one colour per trace: ``amax * scale`` against fp8_max (log),
    the scale (log), and the saturated values per step."""
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.07,
        subplot_titles=(
            "amax x scale: where the largest |value| lands (above the dashed fp8 max it saturates)",
            "scale (multiplier applied before the cast)",
            "saturated values in the cast (count)",
        ),
    )
    tops = set()
    for i, (name, t) in enumerate(traces.items()):
        color = qualitative.Plotly[i % len(qualitative.Plotly)]
        steps = np.arange(len(t["scale"]))
        kw = dict(legendgroup=name, line=dict(color=color))
        fig.add_trace(go.Scatter(x=steps, y=t["scaled_amax"], mode="lines+markers", name=name, **kw), row=1, col=1)
        fig.add_trace(go.Scatter(x=steps, y=t["scale"], mode="lines+markers", showlegend=False, **kw), row=2, col=1)
        fig.add_trace(
            go.Bar(
                x=steps,
                y=t["saturated"],
                name=f"{name}: saturated",
                showlegend=False,
                marker_color=color,
                legendgroup=name,
            ),
            row=3,
            col=1,
        )
        tops.add(float(t["fp8_max"]))
    for top in sorted(tops):
        fig.add_hline(
            y=top,
            line_dash="dash",
            line_color="gray",
            row=1,
            col=1,
            annotation_text=f"fp8 max {top:g}",
            annotation_position="bottom right",
        )
    fig.update_yaxes(type="log", title_text="|value| after scaling", row=1, col=1)
    fig.update_yaxes(type="log", title_text="scale (log)", row=2, col=1)
    fig.update_yaxes(title_text="values", row=3, col=1)
    fig.update_xaxes(title_text=STEP_AXIS, row=3, col=1)
    fig.update_layout(title=title, height=640, barmode="group")
    return fig


def quantization_error_bars(errors: Mapping[str, float], title: str = "FP8 quantization error per recipe") -> go.Figure:
    """One bar per recipe: the relative RMS error of a cast (log axis, in percent)."""
    names = list(errors)
    vals = [100.0 * float(errors[n]) for n in names]
    fig = go.Figure(go.Bar(x=names, y=vals, text=[f"{v:.2f} %" for v in vals], textposition="outside"))
    fig.update_layout(
        title=title,
        xaxis_title="recipe (scale granularity)",
        yaxis_title="relative RMS error of the cast (%, log axis)",
        yaxis_type="log",
    )
    return fig
