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

__all__ = ["loss_curves", "scale_trajectory", "time_bars", "smooth", "history_panels"]

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


# --- notebook 05 (debugging) -----------------------------------------------------------------------

def history_panels(history: History, findings: Sequence[object] = (), step: int | None = None,
                   title: str | None = None) -> go.Figure:
    """Loss, loss scale and gradient norm of one run, stacked on a shared step axis.

    Steps whose loss is NaN/inf are marked on the loss panel (at the top), overflowed (skipped)
    steps on the scale panel, and the steps each finding of :func:`mpcourse.debug.diagnose`
    points at on the loss panel; ``step`` draws a vertical line at one step.

    Usage::

        fig = plots.history_panels(hist, mpc.debug.diagnose(hist), step=12)
    """
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06)
    steps = history.column("step") if len(history) else np.zeros(0, int)
    loss, scales, norms = history.losses, history.scales, history.grad_norms
    ok = np.isfinite(loss)
    fig.add_trace(go.Scatter(x=steps[ok], y=loss[ok], mode="lines", name="loss (finite)"), row=1, col=1)
    top = float(np.max(loss[ok])) if ok.any() else 1.0
    if (~ok).any():
        fig.add_trace(go.Scatter(x=steps[~ok], y=np.full(int((~ok).sum()), top), mode="markers",
                                 name="loss NaN/inf", marker=dict(symbol="x", color="crimson", size=8)),
                      row=1, col=1)
    for f in findings:
        mark = np.isin(steps, list(getattr(f, "steps", ())))
        if mark.any():
            y = np.where(ok[mark], loss[mark], top)
            fig.add_trace(go.Scatter(x=steps[mark], y=y, mode="markers", name=f"finding: {f.kind}",
                                     marker=dict(symbol="circle-open", size=11)), row=1, col=1)
    fig.add_trace(go.Scatter(x=steps, y=scales, mode="lines", line_shape="hv", name="loss scale"), row=2, col=1)
    bad = history.column("found_inf").astype(bool) if len(history) else np.zeros(0, bool)
    if bad.any():
        fig.add_trace(go.Scatter(x=steps[bad], y=scales[bad], mode="markers", name="overflow (step skipped)",
                                 marker=dict(symbol="x", size=8, color="crimson")), row=2, col=1)
    good = np.isfinite(norms) & (norms > 0)
    fig.add_trace(go.Scatter(x=steps[good], y=norms[good], mode="lines", name="grad norm (finite, > 0)"),
                  row=3, col=1)
    zero = norms == 0
    if zero.any():
        floor = float(norms[good].min()) if good.any() else 1e-12
        fig.add_trace(go.Scatter(x=steps[zero], y=np.full(int(zero.sum()), floor), mode="markers",
                                 name="grad norm exactly 0", marker=dict(symbol="triangle-down", size=7)),
                      row=3, col=1)
    if step is not None:
        fig.add_vline(x=step, line_dash="dot", line_color="gray")
    name = title or (f"Run inspector: {history.meta.get('model', '?')} "
                     f"{history.meta.get('precision', '?')}, scaling {history.meta.get('scaling', '?')}")
    fig.update_layout(title=name, template="plotly_white", height=620)
    fig.update_yaxes(title_text="loss (nats)", row=1, col=1)
    fig.update_yaxes(title_text="loss scale (log axis)", type="log", row=2, col=1)
    fig.update_yaxes(title_text="grad norm (unscaled, log axis)", type="log", row=3, col=1)
    fig.update_xaxes(title_text=STEP_AXIS, row=3, col=1)
    return fig
