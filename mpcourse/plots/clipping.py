"""Figures of gradient clipping: runs compared, norms against thresholds, the wrong order.

Usage::

    from mpcourse import plots

    plots.clip_comparison(histories)
    plots.grad_norm_history(hist, threshold=1.0)
    plots.clip_order_bars(effect)          # from mpcourse.studies.wrong_order.clip_order_effect
    plots.recommendation_spread(table, ["none", "norm"])   # from clip_study.recommend(..., seeds=...)

Data in, ``plotly.graph_objects.Figure`` out; every figure has a title and axis labels with units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from mpcourse.history import History
from mpcourse.plots.style import GRAD_NORM_AXIS, STEP_AXIS, smooth

__all__ = ["clip_comparison", "grad_norm_history", "clip_order_bars", "recommendation_heatmap", "recommendation_spread"]


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


def _n_seeds(rows: Sequence[Mapping[str, object]]) -> int:
    return max((len(r.get("seeds", ()) or ()) for r in rows), default=1)  # type: ignore[arg-type]


def recommendation_heatmap(
    rows: Sequence[Mapping[str, object]],
    strategies: Sequence[str],
    title: str | None = None,
) -> go.Figure:
    """Heatmap of ``loss_<strategy>`` per model row (from :func:`mpcourse.studies.clip_study.recommend`),
    each cell labelled with its value and the recommended strategy starred.

    Rows from ``recommend(..., seeds=...)`` add each cell's seed range ``[lo, hi]`` to its label
    and its std and per-seed values to the hover; a row without a clear winner gets no star and
    says so in its label. Default title: what the cells are, in nats, and over how many seeds.
    """
    n = _n_seeds(rows)
    ranged = n > 1 and all(f"lo_{s}" in r for r in rows for s in strategies)
    models = [f"{r['model']}{' (no clear winner)' if r.get('clear') is False else ''}" for r in rows]
    z = [[float(r[f"loss_{s}"]) for s in strategies] for r in rows]  # type: ignore[arg-type]

    def label(r: Mapping[str, object], s: str, v: float) -> str:
        star = " *" if r["best"] == s and r.get("clear", True) else ""
        return f"{v:.3f}{star}" + (f"<br>[{r[f'lo_{s}']:.3f}, {r[f'hi_{s}']:.3f}]" if ranged else "")

    def hover(r: Mapping[str, object], s: str) -> str:
        if f"per_seed_{s}" not in r:
            return ""
        seeds = ", ".join(f"{v:.3f}" for v in r[f"per_seed_{s}"])  # type: ignore[attr-defined]
        return f"std {float(r[f'std_{s}']):.3f} nats<br>per seed: {seeds}"  # type: ignore[arg-type]

    text = [[label(r, s, v) for v, s in zip(zrow, strategies)] for zrow, r in zip(z, rows)]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(strategies),
            y=models,
            text=text,
            texttemplate="%{text}",
            customdata=[[hover(r, s) for s in strategies] for r in rows],
            hovertemplate="%{y}, %{x}<br>final loss %{z:.3f} nats<br>%{customdata}<extra></extra>",
            colorscale="Viridis",
            reversescale=True,
            colorbar=dict(title="loss (nats)"),
        )
    )
    fig.update_layout(
        title=title
        or "Final training loss (nats) by model and clipping strategy: "
        + (f"mean over {n} seeds, [min, max] below" if ranged else "one seed"),
        xaxis_title="clipping strategy (* = recommended)",
        yaxis_title="model",
        template="plotly_white",
    )
    return fig


def recommendation_spread(
    rows: Sequence[Mapping[str, object]], strategies: Sequence[str], title: str | None = None
) -> go.Figure:
    """One panel per model: each strategy's mean final loss with a bar from its lowest to its
    highest seed, and every seed as a dot -- overlapping bars are the "no clear winner" case.

    Usage::

        plots.recommendation_spread(clip_study.recommend(ds, configs, seeds=(0, 1, 2)), list(policies))
    """
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(rows), subplot_titles=[str(r["model"]) for r in rows], shared_yaxes=False)
    for c, r in enumerate(rows, start=1):
        mean = [float(r[f"loss_{s}"]) for s in strategies]  # type: ignore[arg-type]
        lo = [float(r[f"lo_{s}"]) for s in strategies]  # type: ignore[arg-type]
        hi = [float(r[f"hi_{s}"]) for s in strategies]  # type: ignore[arg-type]
        err = dict(type="data", symmetric=False, array=np.subtract(hi, mean), arrayminus=np.subtract(mean, lo))
        fig.add_trace(
            go.Scatter(x=list(strategies), y=mean, error_y=err, mode="markers", name="mean, [min, max]",
                       marker=dict(color="black", size=8), showlegend=c == 1, legendgroup="mean"),
            row=1, col=c,
        )  # fmt: skip
        xs = [s for s in strategies for _ in r[f"per_seed_{s}"]]  # type: ignore[attr-defined]
        ys = [v for s in strategies for v in r[f"per_seed_{s}"]]  # type: ignore[attr-defined]
        fig.add_trace(
            go.Scatter(x=xs, y=ys, mode="markers", name="one seed", marker=dict(color="steelblue", size=5, opacity=0.6),
                       showlegend=c == 1, legendgroup="seed"),
            row=1, col=c,
        )  # fmt: skip
        fig.update_xaxes(title_text="strategy", tickangle=-60, row=1, col=c)
    fig.update_yaxes(title_text="final training loss (nats)", row=1, col=1)
    fig.update_layout(
        title=title or f"Final training loss by strategy over {_n_seeds(rows)} seeds: mean, [min, max] and each seed",
        template="plotly_white",
        height=420,
    )
    return fig
