"""Figures of number formats: bit layouts, ranges, rounding, sums and updates lost to spacing.

Usage::

    from mpcourse import plots

    plots.bit_layout(0.1)                  # the bits of 0.1 in fp32, fp16, bf16
    plots.format_ranges()
    plots.updates_vs_spacing(weights, updates, "fp16")

Data in, ``plotly.graph_objects.Figure`` out; every figure has a title and axis labels with units.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

__all__ = ["bit_layout", "format_ranges", "number_line", "running_sums", "gradient_histogram", "updates_vs_spacing"]


_FIELD_COLORS = {"sign": "#d62728", "exponent": "#1f77b4", "mantissa": "#2ca02c"}


def bit_layout(value: float, fmts: Sequence[str] | None = None) -> go.Figure:
    """One row of bit boxes per format for ``value``: sign, exponent and mantissa fields coloured.

    Usage::

        fig = plots.bit_layout(0.1, ["fp32", "fp16", "bf16"])   # fig.data[0].text holds the bits
    """
    from mpcourse import formats

    fmts = list(fmts) if fmts is not None else formats.names()
    width = max(formats.info(f).bits for f in fmts)
    fig = go.Figure()
    for field, color in _FIELD_COLORS.items():
        xs, ys, texts, hovers = [], [], [], []
        for f in fmts:
            info = formats.info(f)
            pattern = formats.bits(value, f).replace(" ", "")
            stored = float(formats.round_to(value, f))
            start = {"sign": 0, "exponent": 1, "mantissa": 1 + info.exponent_bits}[field]
            stop = {"sign": 1, "exponent": 1 + info.exponent_bits, "mantissa": info.bits}[field]
            for i in range(start, stop):
                xs.append(i)
                ys.append(f)
                texts.append(pattern[i])
                hovers.append(f"{f} {field} bit {info.bits - 1 - i}; stored value {stored!r}")
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers+text",
                name=field,
                text=texts,
                hovertext=hovers,
                hoverinfo="text",
                textfont=dict(color="white", size=11),
                marker=dict(symbol="square", size=17, color=color),
            )
        )
    fig.update_layout(
        title=f"Bit layout of {value!r} in each format (sign, exponent, mantissa)",
        xaxis_title="bit position (most significant first; bits)",
        yaxis_title="format",
        template="plotly_white",
        height=110 + 40 * len(fmts),
    )
    fig.update_xaxes(range=[-1, width], dtick=4)
    fig.update_yaxes(autorange="reversed")
    return fig


def format_ranges(fmts: Sequence[str] | None = None) -> go.Figure:
    """Where each format's positive values lie: subnormal and normal ranges on a log2 axis."""
    from mpcourse import formats

    fmts = list(fmts) if fmts is not None else formats.names()
    fig = go.Figure()
    for part, color in (("subnormal", "#ff7f0e"), ("normal", "#1f77b4")):
        xs: list[float | None] = []
        ys: list[str | None] = []
        for f in fmts:
            info = formats.info(f)
            lo, hi = (info.min_subnormal, info.min_normal) if part == "subnormal" else (info.min_normal, info.max)
            xs += [math.log2(lo), math.log2(hi), None]
            ys += [f, f, None]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines+markers",
                name=f"{part} values",
                line=dict(width=14, color=color),
                marker=dict(size=4),
            )
        )
    fig.update_layout(
        title="Range of each format: positive subnormal and normal values",
        xaxis_title="log2 of the magnitude (binades)",
        yaxis_title="format",
        template="plotly_white",
        height=120 + 45 * len(fmts),
    )
    fig.update_yaxes(autorange="reversed")
    return fig


def number_line(fmts: Sequence[str], lo: float, hi: float) -> go.Figure:
    """Every representable value of 8/16-bit formats in ``[lo, hi]``: the gaps grow with magnitude."""
    from mpcourse import formats

    fig = go.Figure()
    for f in fmts:
        vals = formats.representable_values(f, lo, hi)
        fig.add_trace(
            go.Scatter(
                x=vals,
                y=[f] * len(vals),
                mode="markers",
                name=f"{f} ({len(vals)} values)",
                marker=dict(symbol="line-ns-open", size=16),
            )
        )
    fig.update_layout(
        title=f"Representable values between {lo:g} and {hi:g}",
        xaxis_title="value (dimensionless)",
        yaxis_title="format",
        template="plotly_white",
        height=120 + 60 * len(fmts),
    )
    return fig


def running_sums(
    sums: Mapping[str, Sequence[float]],
    exact: Sequence[float] | None = None,
    title: str = "A long sum of small values, accumulated in each format",
    max_points: int = 500,
) -> go.Figure:
    """Partial sums against the number of terms, one line per accumulator format.

    Long series are drawn at ``max_points`` evenly spaced terms (the last one always included).
    """
    series = dict(sums) if exact is None else {**sums, "exact": exact}
    fig = go.Figure()
    for name, s in series.items():
        v = np.asarray(s, dtype=float)
        idx = np.unique(np.linspace(0, len(v) - 1, min(len(v), max_points)).astype(int))
        line = dict(dash="dot", color="black") if (exact is not None and name == "exact") else None
        fig.add_trace(go.Scatter(x=idx + 1, y=v[idx], mode="lines", name=name, line=line))
    fig.update_layout(
        title=title,
        xaxis_title="terms added (count)",
        yaxis_title="running sum (dimensionless)",
        template="plotly_white",
    )
    return fig


def gradient_histogram(
    values: Sequence[float] | np.ndarray, fmt: str = "fp16", title: str = "Gradient magnitudes"
) -> go.Figure:
    """Histogram of log2 |gradient| with ``fmt``'s normal and subnormal ranges shaded.

    The title reports the share of nonzero gradients that ``fmt`` flushes to zero and the share
    it keeps only as subnormals (computed with :mod:`mpcourse.formats`).
    """
    from mpcourse import formats

    g = np.asarray(values, dtype=np.float64).ravel()
    nz = g[(g != 0) & np.isfinite(g)]
    info = formats.info(fmt)
    under = float(formats.underflow_mask(nz, fmt).mean()) if len(nz) else 0.0
    sub = float(formats.subnormal_mask(nz, fmt).mean()) if len(nz) else 0.0
    logs = np.log2(np.abs(nz)) if len(nz) else np.zeros(0)
    lo = math.floor(min(logs.min(), math.log2(info.min_subnormal)) if len(nz) else -30) - 1
    hi = math.ceil(max(logs.max(), 0.0) if len(nz) else 0.0) + 1
    # Binned here (one bar per binade), so the figure carries counts, not every gradient.
    counts, edges = np.histogram(logs, bins=np.arange(lo, hi + 1))
    fig = go.Figure(
        go.Bar(
            x=edges[:-1] + 0.5,
            y=counts,
            width=0.95,
            name="gradients",
            marker_color="#444",
            hovertemplate="binade [2^%{customdata}, 2^(%{customdata}+1)): %{y} values<extra></extra>",
            customdata=edges[:-1].astype(int),
        )
    )
    fig.add_vrect(
        x0=math.log2(info.min_normal),
        x1=min(math.log2(info.max), hi),
        fillcolor="#1f77b4",
        opacity=0.15,
        line_width=0,
        annotation_text=f"{fmt} normal",
        annotation_position="top left",
    )
    fig.add_vrect(
        x0=math.log2(info.min_subnormal),
        x1=math.log2(info.min_normal),
        fillcolor="#ff7f0e",
        opacity=0.2,
        line_width=0,
        annotation_text=f"{fmt} subnormal",
        annotation_position="top left",
    )
    fig.add_vrect(
        x0=lo,
        x1=math.log2(info.min_subnormal) - 1,
        fillcolor="crimson",
        opacity=0.12,
        line_width=0,
        annotation_text="flushed to 0",
        annotation_position="bottom left",
    )
    fig.update_layout(
        title=f"{title}: {under:.2%} flush to zero in {fmt}, {sub:.2%} become subnormal",
        xaxis_title="log2 |gradient| (binade)",
        yaxis_title="number of gradient values (count)",
        template="plotly_white",
        bargap=0.05,
        showlegend=False,
    )
    return fig


def updates_vs_spacing(
    weights: Sequence[float] | np.ndarray,
    updates: Sequence[float] | np.ndarray,
    fmt: str = "fp16",
    max_points: int = 1500,
    title: str = "Weight updates against the format's spacing",
) -> go.Figure:
    """|update| against |weight| (log-log), with half of ``fmt``'s spacing drawn as the line
    below which an update added to a weight stored in ``fmt`` is lost (rounds back)."""
    from mpcourse import formats

    w = np.asarray(weights, dtype=np.float64).ravel()
    u = np.asarray(updates, dtype=np.float64).ravel()
    if w.shape != u.shape:
        raise ValueError(f"weights and updates must have the same size, got {w.size} and {u.size}")
    keep = (w != 0) & (u != 0) & np.isfinite(w) & np.isfinite(u)
    w, u = w[keep], u[keep]
    lost = formats.lost_update_mask(w, u, fmt)
    share = float(lost.mean()) if len(lost) else 0.0
    if len(w) > max_points:  # thin the scatter evenly; the share above uses every point
        idx = np.linspace(0, len(w) - 1, max_points).astype(int)
        w, u, lost = w[idx], u[idx], lost[idx]
    fig = go.Figure()
    for mask, name, color in ((~lost, "update kept", "#2ca02c"), (lost, f"update lost in {fmt}", "crimson")):
        fig.add_trace(
            go.Scatter(
                x=np.abs(w[mask]),
                y=np.abs(u[mask]),
                mode="markers",
                name=name,
                marker=dict(size=4, color=color, opacity=0.6),
            )
        )
    if len(w):
        grid = np.logspace(np.log10(np.abs(w).min()), np.log10(np.abs(w).max()), 200)
        fig.add_trace(
            go.Scatter(
                x=grid,
                y=formats.spacing(grid, fmt) / 2,
                mode="lines",
                name=f"half the {fmt} spacing",
                line=dict(color="black", dash="dash"),
            )
        )
    fig.update_layout(
        title=f"{title}: {share:.1%} of updates lost in {fmt}",
        xaxis_title="|weight| (dimensionless)",
        yaxis_title="|update| = |lr x step| (dimensionless)",
        template="plotly_white",
    )
    fig.update_xaxes(type="log", exponentformat="power")
    fig.update_yaxes(type="log", exponentformat="power")
    return fig
