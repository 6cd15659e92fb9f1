"""Figures of production runs: the precision timeline, the monitor, memory per precision.

Usage::

    from mpcourse import plots

    plots.precision_timeline(hist)         # which precision ran when, and why it switched
    plots.monitor_dashboard(monitor.rows)

Data in, ``plotly.graph_objects.Figure`` out; every figure has a title and axis labels with units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from mpcourse.history import History
from mpcourse.plots.style import LOSS_AXIS, STEP_AXIS

__all__ = ["precision_timeline", "monitor_dashboard", "memory_bars", "predict_memory"]


def _precision_segments(history: History) -> list[tuple[int, int, str]]:
    """(first step, last step, precision) per stretch, from the meta and the switch events."""
    steps = history.column("step")
    if not len(steps):
        return []
    bounds = [(int(steps[0]), history.meta.get("precision", "?"))]
    bounds += [(int(e["step"]), e["to"]) for e in history.events if e.get("kind") in ("fallback", "phase")]
    out = []
    for i, (start, p) in enumerate(bounds):
        end = bounds[i + 1][0] - 1 if i + 1 < len(bounds) else int(steps[-1])
        out.append((start, end, p))
    return out


def precision_timeline(
    history: History, window: int = 10, title: str = "Loss and overflow rate by precision, with switches"
) -> go.Figure:
    """Loss per step coloured by the precision it ran in; below, the overflow rate over ``window``
    steps; a dashed line and a label at every fallback or phase switch."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.08)
    steps, losses = history.column("step"), history.losses
    found = history.column("found_inf").astype(float) if len(history) else np.zeros(0)
    colors = {"fp32": "#1f77b4", "bf16": "#2ca02c", "fp16": "#d62728"}
    for start, end, p in _precision_segments(history):
        m = (steps >= start) & (steps <= end)
        fig.add_trace(
            go.Scatter(x=steps[m], y=losses[m], mode="lines", name=f"loss in {p}", line=dict(color=colors.get(p))),
            row=1,
            col=1,
        )
    rate = np.array([found[max(0, i - window + 1) : i + 1].mean() for i in range(len(found))])
    fig.add_trace(
        go.Scatter(
            x=steps, y=rate, mode="lines", name=f"overflow rate ({window}-step window)", line=dict(color="black")
        ),
        row=2,
        col=1,
    )
    for e in history.events:
        if e.get("kind") in ("fallback", "phase"):
            label = f"{e['kind']}: {e['from']}→{e['to']}" + (f" ({e['reason']})" if "reason" in e else "")
            fig.add_vline(x=e["step"], line_dash="dash", line_color="gray")
            fig.add_annotation(
                x=e["step"], y=1.0, yref="paper", text=label, showarrow=False, xanchor="left", yanchor="bottom"
            )
    fig.update_layout(title=title, template="plotly_white")
    fig.update_yaxes(title_text=LOSS_AXIS + ", log axis", type="log", row=1, col=1)
    fig.update_yaxes(title_text="overflow rate (share of steps)", range=[-0.05, 1.05], row=2, col=1)
    fig.update_xaxes(title_text=STEP_AXIS, row=2, col=1)
    return fig


def monitor_dashboard(rows: Sequence[Mapping[str, float]], title: str = "Training monitor") -> go.Figure:
    """Four panels from :attr:`mpcourse.production.monitor.Monitor.rows`: throughput, overflow rate, loss
    scale, process memory."""
    from plotly.subplots import make_subplots

    panels = [
        ("samples_per_second", "throughput (samples/s)"),
        ("overflow_rate", "overflow rate (share, rolling window)"),
        ("scale", "loss scale (log2 axis)"),
        ("rss_mb", "process memory, RSS (MiB)"),
    ]
    fig = make_subplots(rows=2, cols=2, subplot_titles=[t for _, t in panels])
    steps = [r["step"] for r in rows]
    for i, (key, label) in enumerate(panels):
        fig.add_trace(
            go.Scatter(x=steps, y=[r[key] for r in rows], mode="lines", name=label, showlegend=False),
            row=i // 2 + 1,
            col=i % 2 + 1,
        )
        fig.update_xaxes(title_text=STEP_AXIS, row=i // 2 + 1, col=i % 2 + 1)
        fig.update_yaxes(title_text=label, row=i // 2 + 1, col=i % 2 + 1)
    fig.update_yaxes(type="log", row=2, col=1)
    fig.update_layout(title=title, template="plotly_white", height=600)
    return fig


def memory_bars(estimates: Mapping[str, object], title: str = "Estimated training memory by precision") -> go.Figure:
    """Stacked bars of a :class:`mpcourse.production.MemoryEstimate` per name (MiB): weights,
    gradients, optimizer state, the half-precision weight copy, activations."""
    parts = [
        ("weights", "fp32 master weights"),
        ("grads", "fp32 gradients"),
        ("optimizer", "optimizer state"),
        ("compute_copy", "half weight copy"),
        ("activation_bytes", "saved activations"),
    ]
    names = list(estimates)
    fig = go.Figure()
    for attr, label in parts:
        fig.add_trace(go.Bar(x=names, y=[getattr(estimates[n], attr) / 2**20 for n in names], name=label))
    fig.update_layout(
        barmode="stack",
        title=title,
        xaxis_title="run (precision, batch)",
        yaxis_title="estimated memory (MiB)",
        template="plotly_white",
    )
    return fig


def predict_memory(report: Any, title: str | None = None) -> go.Figure:
    """Stacked bars of a :class:`mpcourse.production.PredictReport`'s measured bytes (KiB): the
    training state, then the fp32 and the serving copy's weights and activation peak."""
    train, ref, serve = report.train_state_bytes, report.reference, report.serving
    names = [f"training ({report.train_precision})", "predict, fp32 copy", f"predict, {serve.precision} copy"]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=names[:1], y=[train / 1024], name="weights + gradients + optimizer state"))
    fig.add_trace(go.Bar(x=names[1:], y=[ref.weight_bytes / 1024, serve.weight_bytes / 1024], name="weights"))
    fig.add_trace(
        go.Bar(
            x=names[1:],
            y=[ref.activation_peak_bytes / 1024, serve.activation_peak_bytes / 1024],
            name=f"activation peak (batch {report.batch_size})",
        )
    )
    fig.update_layout(
        barmode="stack",
        title=title or f"Measured memory: training vs the predict phase ({report.backend} {report.device})",
        xaxis_title="phase and copy",
        yaxis_title="measured memory (KiB)",
        template="plotly_white",
    )
    return fig
