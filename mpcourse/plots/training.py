"""Figures of training runs: loss curves, the loss scale per step, time per precision.

Usage::

    from mpcourse import plots

    plots.loss_curves({"fp32": h32, "fp16": h16}, window=5)
    plots.scale_trajectory(h16)            # the loss scale on a log2 axis
    plots.loss_and_scale(h16)

Data in, ``plotly.graph_objects.Figure`` out; every figure has a title and axis labels with units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from mpcourse.history import History
from mpcourse.plots.style import LOSS_AXIS, STEP_AXIS, log2_ticks, overflow_markers, smooth

__all__ = ["loss_curves", "scale_trajectory", "time_bars", "training_curves", "loss_and_scale", "moved_curves"]


def loss_curves(
    histories: Mapping[str, History], window: int = 1, title: str = "Training loss by run", log_y: bool = False
) -> go.Figure:
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
    symbols = ("x", "circle-open", "diamond-open", "square-open")
    for i, (name, hist) in enumerate(runs.items()):
        steps, scales = hist.column("step"), hist.scales
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=scales,
                mode="lines",
                line_shape="hv",
                name=f"{name} scale",
                line=dict(dash=("solid", "dash", "dot", "dashdot")[i % 4]),
            )
        )
        marks = overflow_markers(
            steps,
            scales,
            hist.column("found_inf"),
            f"{name} overflow (step skipped)",
            symbol=symbols[i % 4],
            size=10,
            line=dict(width=2, color="crimson"),
        )
        if marks is not None:
            fig.add_trace(marks)
    fig.update_layout(title=title, xaxis_title=STEP_AXIS, yaxis_title="loss scale (log2 axis)", template="plotly_white")
    all_scales = np.concatenate([h.scales for h in runs.values()]) if runs else np.zeros(0)
    fig.update_yaxes(type="log", **log2_ticks(all_scales))
    return fig


def time_bars(
    seconds: Mapping[str, float], title: str = "Training time by precision (measured here)", *, per_step: bool = False
) -> go.Figure:
    """Bars of measured seconds per run, each labelled with its ratio to the first run.

    ``per_step=True``: the values are seconds per step, drawn in milliseconds.
    """
    names = list(seconds)
    scale, unit = (1000.0, "ms") if per_step else (1.0, "s")
    vals = [float(seconds[n]) * scale for n in names]
    base = vals[0] if vals else float("nan")
    text = [f"{v:.2f} {unit} ({base / v:.2f}x vs {names[0]})" if v > 0 else "n/a" for v in vals]
    fig = go.Figure(go.Bar(x=names, y=vals, text=text, textposition="auto"))
    axis = f"time per step ({unit})" if per_step else "training time (s)"
    fig.update_layout(title=title, xaxis_title="run", yaxis_title=axis, template="plotly_white")
    return fig


def training_curves(runs: Mapping[str, object], title: str = "Training loss by run") -> go.Figure:
    """Loss in nats per step for named :class:`mpcourse.studies.runs.Run` objects (loss weight divided out)."""
    fig = go.Figure()
    for name, run in runs.items():
        hist = run.history  # type: ignore[attr-defined]
        fig.add_trace(go.Scatter(x=hist.column("step"), y=run.losses, mode="lines", name=name))  # type: ignore[attr-defined]
    fig.update_layout(title=title, xaxis_title=STEP_AXIS, yaxis_title=LOSS_AXIS, template="plotly_white")
    return fig


def loss_and_scale(
    history: History | None = None, loss_weight: float = 1.0, title: str = "Loss and loss scale per step"
) -> go.Figure:
    """Two stacked panels sharing the step axis: loss (nats) on top, the scale (log2) below.

    Traces, in order: loss, scale, overflow markers (steps with inf/nan gradients, skipped).
    With ``history=None`` the traces are empty (a figure for a widget to fill).
    """
    from plotly.subplots import make_subplots

    steps = history.column("step") if history is not None and len(history) else np.zeros(0)
    loss = history.losses / loss_weight if history is not None and len(history) else np.zeros(0)
    scale = history.scales if history is not None and len(history) else np.zeros(0)
    bad = history.column("found_inf").astype(bool) if history is not None and len(history) else np.zeros(0, bool)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    fig.add_trace(go.Scatter(x=steps, y=loss, mode="lines", name="loss"), row=1, col=1)
    fig.add_trace(go.Scatter(x=steps, y=scale, mode="lines", line_shape="hv", name="loss scale"), row=2, col=1)
    fig.add_trace(overflow_markers(steps, scale, bad, always=True), row=2, col=1)  # trace 2, even when empty
    fig.update_layout(title=title, template="plotly_white", height=480)
    fig.update_yaxes(title_text="loss (nats)", row=1, col=1)  # short: two stacked axis titles
    fig.update_yaxes(title_text="loss scale (log2)", type="log", row=2, col=1, **log2_ticks(scale))
    fig.update_xaxes(title_text=STEP_AXIS, row=2, col=1)
    return fig


def moved_curves(
    runs: Mapping[str, Mapping[str, Sequence[float]]], title: str = "Distance moved by a layer"
) -> go.Figure:
    """One line per named run: the L2 distance of a layer's weights from their start, per step.

    ``runs`` maps a name to a dict with a ``"moved"`` list, as ``engines.torch.master.train`` returns.
    """
    fig = go.Figure()
    for name, run in runs.items():
        fig.add_trace(go.Scatter(x=list(range(len(run["moved"]))), y=list(run["moved"]), mode="lines", name=name))
    fig.update_layout(
        title=title, xaxis_title=STEP_AXIS, yaxis_title="L2 distance from the start", template="plotly_white"
    )
    return fig
