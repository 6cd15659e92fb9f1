"""Plotly figure builders: data in, ``go.Figure`` out, no side effects.

Usage::

    import mpcourse as mpc
    from mpcourse import plots

    fig = plots.loss_curves({"fp32": hist32, "fp16": hist16})   # loss per step, one line per run
    fig = plots.scale_trajectory(hist16)                        # log2 scale with overflow markers
    fig.show()

Every figure has a title and axis titles with units.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from mpcourse.engines.base import History

__all__ = ["loss_curves", "scale_trajectory", "time_bars", "smooth"]

LOSS_AXIS = "training loss (cross-entropy, nats)"
STEP_AXIS = "optimizer step"


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average over finite values (non-finite ones are left out of each window)."""
    v = np.asarray(values, dtype=float)
    if window <= 1 or len(v) == 0:
        return v
    out = np.empty_like(v)
    for i in range(len(v)):
        w = v[max(0, i - window + 1):i + 1]
        w = w[np.isfinite(w)]
        out[i] = w.mean() if len(w) else np.nan
    return out


def loss_curves(histories: Mapping[str, History], window: int = 1, title: str = "Training loss by run",
                log_y: bool = False) -> go.Figure:
    """One line of loss against step per named History (optionally smoothed over ``window`` steps)."""
    fig = go.Figure()
    for name, hist in histories.items():
        fig.add_trace(go.Scatter(x=hist.column("step"), y=smooth(hist.losses, window), mode="lines", name=name))
    fig.update_layout(title=title, xaxis_title=STEP_AXIS, yaxis_title=LOSS_AXIS, template="plotly_white")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def scale_trajectory(history: History | Mapping[str, History], title: str = "Loss scale per step") -> go.Figure:
    """The loss scale (log2 axis) against step, with the overflow (skipped) steps marked."""
    runs = history if isinstance(history, Mapping) else {history.meta.get("precision", "run"): history}
    fig = go.Figure()
    for name, hist in runs.items():
        steps, scales = hist.column("step"), hist.scales
        fig.add_trace(go.Scatter(x=steps, y=scales, mode="lines", line_shape="hv", name=f"{name} scale"))
        bad = hist.column("found_inf").astype(bool) if len(hist) else np.zeros(0, bool)
        if bad.any():
            fig.add_trace(go.Scatter(x=steps[bad], y=scales[bad], mode="markers", name=f"{name} overflow (step skipped)",
                                     marker=dict(symbol="x", size=9, color="crimson")))
    fig.update_layout(title=title, xaxis_title=STEP_AXIS, yaxis_title="loss scale (log2 axis)",
                      template="plotly_white")
    fig.update_yaxes(type="log", dtick=math.log10(2) * 4, exponentformat="power")
    return fig


def time_bars(seconds: Mapping[str, float], title: str = "Training time by precision (measured here)") -> go.Figure:
    """Bars of measured seconds per run, each labelled with its ratio to the first run."""
    names = list(seconds)
    vals = [float(seconds[n]) for n in names]
    base = vals[0] if vals else float("nan")
    text = [f"{v:.2f} s ({base / v:.2f}x vs {names[0]})" if v > 0 else "n/a" for v in vals]
    fig = go.Figure(go.Bar(x=names, y=vals, text=text, textposition="auto"))
    fig.update_layout(title=title, xaxis_title="run", yaxis_title="training time (s)", template="plotly_white")
    return fig
