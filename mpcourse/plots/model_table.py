"""The per-model table as a figure: what each precision and scaler did to each model.

Usage::

    from mpcourse import plots
    from mpcourse.studies import model_table

    rows = model_table.measure(mpc.data.load("underflow"), steps=44)
    plots.model_table_bars(rows)     # loss vs fp32, all-zero-gradient steps, skipped steps

Data in, ``plotly.graph_objects.Figure`` out; every figure has a title and axis labels with units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go

__all__ = ["model_table_bars", "PANELS"]

#: The three panels, top to bottom: (row key, y-axis title with its unit).
PANELS: tuple[tuple[str, str], ...] = (
    ("vs_fp32", "final loss / fp32's (ratio)"),
    ("zero_grad", "all-zero gradient (steps)"),
    ("skipped", "skipped, overflow (steps)"),
)

_COLOURS = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3")


def model_table_bars(
    rows: Sequence[Mapping[str, Any]], title: str = "What each precision and scaler did, per model (measured)"
) -> go.Figure:
    """Grouped bars, one colour per setup, one group per model, in three stacked panels: the final
    loss relative to the same model's fp32 run, the steps whose gradients were all zero, and the
    skipped (overflow) steps.

    Args:
        rows: as :func:`mpcourse.studies.model_table.measure` returns them (keys ``model``,
            ``setup``, ``vs_fp32``, ``zero_grad``, ``skipped``). Rows that also carry a ``task``
            key are grouped by task, then model, on a two-level axis.
        title: the figure title. Default names what is shown.

    Traces, in order: for each panel, one bar trace per setup (the legend shows the first panel's).
    """
    from plotly.subplots import make_subplots

    missing = [k for k in ("model", "setup", *(key for key, _ in PANELS)) if rows and k not in rows[0]]
    if missing:
        raise ValueError(f"rows lack the key(s) {missing}; pass the rows model_table.measure returns")
    setups = list(dict.fromkeys(r["setup"] for r in rows))
    by_task = bool(rows) and "task" in rows[0]
    fig = make_subplots(rows=len(PANELS), cols=1, shared_xaxes=True, vertical_spacing=0.06)
    for panel, (key, axis) in enumerate(PANELS, start=1):
        for setup in setups:
            mine = [r for r in rows if r["setup"] == setup]
            models = [r["model"] for r in mine]
            x: Any = [[r["task"] for r in mine], models] if by_task else models
            fig.add_trace(
                go.Bar(
                    x=x,
                    y=[float(r[key]) for r in mine],
                    name=setup,
                    legendgroup=setup,
                    showlegend=panel == 1,
                    marker_color=_COLOURS[setups.index(setup) % len(_COLOURS)],
                ),
                row=panel,
                col=1,
            )
        fig.update_yaxes(title_text=axis, row=panel, col=1)
    fig.add_hline(y=1.0, line_dash="dot", line_color="grey", row=1, col=1)  # fp32's own loss
    fig.update_xaxes(title_text="model" if not by_task else "task, model", row=len(PANELS), col=1)
    fig.update_layout(title=title, barmode="group", template="plotly_white", height=640)
    return fig
