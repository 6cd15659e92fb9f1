"""The debugging dashboard of one run: loss, scale, norms and findings, step by step.

Usage::

    from mpcourse import plots

    plots.history_panels(hist, findings=mpc.debug.diagnose(hist))

Data in, ``plotly.graph_objects.Figure`` out; every figure has a title and axis labels with units.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from mpcourse.history import History
from mpcourse.plots.style import STEP_AXIS, overflow_markers

__all__ = ["history_panels"]


def history_panels(
    history: History, findings: Sequence[object] = (), step: int | None = None, title: str | None = None
) -> go.Figure:
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
        fig.add_trace(
            go.Scatter(
                x=steps[~ok],
                y=np.full(int((~ok).sum()), top),
                mode="markers",
                name="loss NaN/inf",
                marker=dict(symbol="x", color="crimson", size=8),
            ),
            row=1,
            col=1,
        )
    for f in findings:
        mark = np.isin(steps, list(getattr(f, "steps", ())))
        if mark.any():
            y = np.where(ok[mark], loss[mark], top)
            fig.add_trace(
                go.Scatter(
                    x=steps[mark],
                    y=y,
                    mode="markers",
                    name=f"finding: {getattr(f, 'kind', '?')}",
                    marker=dict(symbol="circle-open", size=11),
                ),
                row=1,
                col=1,
            )
    fig.add_trace(go.Scatter(x=steps, y=scales, mode="lines", line_shape="hv", name="loss scale"), row=2, col=1)
    marks = overflow_markers(steps, scales, history.column("found_inf") if len(history) else np.zeros(0, bool), size=8)
    if marks is not None:
        fig.add_trace(marks, row=2, col=1)
    good = np.isfinite(norms) & (norms > 0)
    fig.add_trace(go.Scatter(x=steps[good], y=norms[good], mode="lines", name="grad norm (finite, > 0)"), row=3, col=1)
    zero = norms == 0
    if zero.any():
        floor = float(norms[good].min()) if good.any() else 1e-12
        fig.add_trace(
            go.Scatter(
                x=steps[zero],
                y=np.full(int(zero.sum()), floor),
                mode="markers",
                name="grad norm exactly 0",
                marker=dict(symbol="triangle-down", size=7),
            ),
            row=3,
            col=1,
        )
    if step is not None:
        fig.add_vline(x=step, line_dash="dot", line_color="gray")
    name = title or (
        f"Run inspector: {history.meta.get('model', '?')} "
        f"{history.meta.get('precision', '?')}, scaling {history.meta.get('scaling', '?')}"
    )
    fig.update_layout(title=name, template="plotly_white", height=620)
    fig.update_yaxes(title_text="loss (nats)", row=1, col=1)
    fig.update_yaxes(title_text="loss scale (log axis)", type="log", row=2, col=1)
    fig.update_yaxes(title_text="grad norm (unscaled, log axis)", type="log", row=3, col=1)
    fig.update_xaxes(title_text=STEP_AXIS, row=3, col=1)
    return fig
