"""Figures of gradient clipping: runs compared, norms against thresholds, the wrong order.

Usage::

    from mpcourse import plots

    plots.clip_comparison(histories)
    plots.grad_norm_history(hist, threshold=1.0)
    plots.clip_order_bars(effect)          # from mpcourse.studies.wrong_order.clip_order_effect

Data in, ``plotly.graph_objects.Figure`` out; every figure has a title and axis labels with units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from mpcourse.history import History
from mpcourse.plots.style import GRAD_NORM_AXIS, STEP_AXIS, smooth

__all__ = ["clip_comparison", "grad_norm_history", "clip_order_bars", "recommendation_heatmap"]


def clip_comparison(
    histories: Mapping[str, History], window: int = 1, title: str = "Training with each clipping strategy"
) -> go.Figure:
    """Two panels sharing the step axis: the loss (top) and the pre-clip gradient norm (bottom),
    one colour per run; steps where the policy acted are dotted on the norm panel."""
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08,
        subplot_titles=("training loss", "gradient norm (dots: steps the policy clipped)"),
    )
    for i, (name, hist) in enumerate(histories.items()):
        color = qualitative.Plotly[i % len(qualitative.Plotly)]
        steps = hist.column("step")
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=smooth(hist.losses, window),
                mode="lines",
                name=name,
                legendgroup=name,
                line=dict(color=color),
            ),
            row=1,
            col=1,
        )
        norms = hist.grad_norms
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=np.where(np.isfinite(norms), norms, np.nan),
                mode="lines",
                name=f"{name} norm",
                legendgroup=name,
                showlegend=False,
                line=dict(color=color, width=1),
            ),
            row=2,
            col=1,
        )
        hit = hist.column("clipped").astype(bool) if len(hist) else np.zeros(0, bool)
        fig.add_trace(
            go.Scatter(
                x=steps[hit],
                y=norms[hit],
                mode="markers",
                name=f"{name} clipped",
                legendgroup=name,
                showlegend=False,
                marker=dict(color=color, size=4),
            ),
            row=2,
            col=1,
        )
    fig.update_layout(title=title, template="plotly_white", height=560)
    fig.update_yaxes(title_text="loss (cross-entropy, nats)", row=1, col=1)
    fig.update_yaxes(title_text="grad L2 norm (log axis)", type="log", row=2, col=1)
    fig.update_xaxes(title_text=STEP_AXIS, row=2, col=1)
    return fig


def grad_norm_history(
    history: History, threshold: float | Sequence[float] | None = None, name: str = "run", title: str | None = None
) -> go.Figure:
    """A run's pre-clip gradient norm per step (log axis) with the clipping threshold drawn.

    Args:
        history: the run.
        threshold: a constant (ClipByNorm's ``max_norm``), one value per step (AutoClip's
            moving percentile, e.g. from :func:`mpcourse.studies.clip_study.thresholds`), or None.
        name: the run's name, for the legend.
        title: default ``"Gradient norm per step: <name>"``.
    """
    steps, norms = history.column("step"), history.grad_norms
    fig = go.Figure(
        go.Scatter(x=steps, y=np.where(np.isfinite(norms), norms, np.nan), mode="lines", name=f"{name}: gradient norm")
    )
    hit = history.column("clipped").astype(bool) if len(history) else np.zeros(0, bool)
    if hit.any():
        fig.add_trace(
            go.Scatter(
                x=steps[hit], y=norms[hit], mode="markers", name="clipped step", marker=dict(color="crimson", size=5)
            )
        )
    if threshold is not None:
        thr = np.broadcast_to(np.asarray(threshold, dtype=float), (len(history),))
        fig.add_trace(go.Scatter(x=steps, y=thr, mode="lines", name="threshold", line=dict(color="black", dash="dash")))
    fig.update_layout(
        title=title or f"Gradient norm per step: {name}",
        xaxis_title=STEP_AXIS,
        yaxis_title=GRAD_NORM_AXIS,
        template="plotly_white",
    )
    fig.update_yaxes(type="log")
    return fig


def clip_order_bars(effect: Mapping[str, float], title: str | None = None) -> go.Figure:
    """Bars from ``clip_order_effect``: the gradient norm before clipping, after the right order
    (unscale, then clip) and after the wrong one (clip, then unscale), on a log axis."""
    labels = ["before clipping", "unscale, then clip (right)", "clip, then unscale (wrong)"]
    vals = [effect["grad_norm"], effect["norm_correct"], effect["norm_wrong"]]
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=vals,
            text=[f"{v:.3g}" for v in vals],
            textposition="outside",
            marker_color=["gray", "seagreen", "crimson"],
        )
    )
    fig.update_layout(
        title=title
        or f"Clipping order at loss scale {effect['scale']:g}: the wrong order "
        f"shrinks the update {effect['shrink']:.3g}x",
        xaxis_title="gradient",
        yaxis_title="gradient L2 norm (log axis)",
        template="plotly_white",
    )
    fig.update_yaxes(type="log")
    return fig


def recommendation_heatmap(
    rows: Sequence[Mapping[str, object]],
    strategies: Sequence[str],
    title: str = "Final training loss by model and clipping strategy (measured)",
) -> go.Figure:
    """Heatmap of ``loss_<strategy>`` per model row (from :func:`mpcourse.studies.clip_study.recommend`),
    each cell labelled with its value and the recommended strategy starred."""
    models = [str(r["model"]) for r in rows]
    z = [[float(r[f"loss_{s}"]) for s in strategies] for r in rows]  # type: ignore[arg-type]
    text = [[f"{v:.3f}{' *' if r['best'] == s else ''}" for v, s in zip(zrow, strategies)] for zrow, r in zip(z, rows)]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(strategies),
            y=models,
            text=text,
            texttemplate="%{text}",
            colorscale="Viridis",
            reversescale=True,
            colorbar=dict(title="loss (nats)"),
        )
    )
    fig.update_layout(
        title=title, xaxis_title="clipping strategy (* = recommended)", yaxis_title="model", template="plotly_white"
    )
    return fig
