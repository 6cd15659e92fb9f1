"""Figures of benchmark rows: throughput, peak memory and speedup per precision.

Usage::

    from mpcourse import bench, plots

    rows = bench.load_results("course/results")
    plots.throughput_bars(rows); plots.speedup_lines(rows, x="width")

Data in, ``plotly.graph_objects.Figure`` out; every figure has a title and axis labels with units.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

__all__ = ["throughput_bars", "peak_memory_bars", "speedup_lines", "memory_breakdown_bars"]


_PRECISION_ORDER = ("fp32", "tf32", "bf16", "fp16")
_PRECISION_COLORS = {"fp32": "#4C78A8", "tf32": "#72B7B2", "bf16": "#F58518", "fp16": "#E45756"}


def _config_name(row: Mapping[str, object]) -> str:
    model = str(row["model"]) + ("" if row.get("size", "small") == "small" else f":{row['size']}")
    if row.get("width"):
        model += f"@{row['width']}"
    return f"{row['backend']}:{row['device']} {model} b{row['batch']}"


def _by_precision(rows: Sequence[Mapping[str, object]]) -> dict[str, list[Mapping[str, object]]]:
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    present = [p for p in _PRECISION_ORDER if any(r["precision"] == p for r in ok)]
    return {p: [r for r in ok if r["precision"] == p] for p in present}


def throughput_bars(rows: Sequence[Mapping[str, object]], title: str = "Training throughput by precision") -> go.Figure:
    """Grouped bars of samples/s per configuration, one colour per precision, labelled with speedup vs fp32."""
    fig = go.Figure()
    for prec, rs in _by_precision(rows).items():
        text = [f"{r['speedup_vs_fp32']:.2f}x" if r.get("speedup_vs_fp32") else "" for r in rs]
        fig.add_trace(
            go.Bar(
                x=[_config_name(r) for r in rs],
                y=[float(r["samples_per_s"]) for r in rs],  # type: ignore[arg-type]
                name=prec,
                text=text,
                textposition="outside",
                marker_color=_PRECISION_COLORS[prec],
            )
        )
    fig.update_layout(
        title=title,
        barmode="group",
        xaxis_title="configuration (backend:device model batch)",
        yaxis_title="throughput (samples/s)",
        template="plotly_white",
        legend_title="precision",
    )
    return fig


def peak_memory_bars(
    rows: Sequence[Mapping[str, object]], title: str = "Peak training memory by precision"
) -> go.Figure:
    """Grouped bars of the memory each configuration added over its baseline (MiB), by precision.

    The baseline is what the process (CPU), the allocator (CUDA, MLX) held before the model was
    built, so the bar is model + optimizer + activations + workspace. The hover names the counter.
    """
    fig = go.Figure()
    for prec, rs in _by_precision(rows).items():
        mib = [(float(r["peak_memory_bytes"]) - float(r.get("baseline_memory_bytes") or 0)) / 2**20 for r in rs]  # type: ignore[arg-type]
        fig.add_trace(
            go.Bar(
                x=[_config_name(r) for r in rs],
                y=mib,
                name=prec,
                marker_color=_PRECISION_COLORS[prec],
                hovertext=[str(r.get("memory_kind", "")) for r in rs],
            )
        )
    fig.update_layout(
        title=title,
        barmode="group",
        xaxis_title="configuration (backend:device model batch)",
        yaxis_title="peak memory over baseline (MiB)",
        template="plotly_white",
        legend_title="precision",
    )
    return fig


def speedup_lines(rows: Sequence[Mapping[str, object]], x: str = "width", title: str | None = None) -> go.Figure:
    """Speedup vs fp32 against model width or batch size, one line per precision (fp32 = 1 drawn dashed).

    Args:
        rows: bench rows that differ in ``x`` (rows without ``speedup_vs_fp32`` are left out).
        x: ``"width"`` (hidden width of the MLP) or ``"batch"``.
        title: default "Speedup over fp32 vs <x>".
    """
    if x not in ("width", "batch"):
        raise ValueError(f"x must be 'width' or 'batch', got {x!r}")
    fig = go.Figure()
    for prec, rs in _by_precision(rows).items():
        pts = sorted(
            (float(r[x]), float(r["speedup_vs_fp32"]))  # type: ignore[arg-type]
            for r in rs
            if r.get(x) is not None and r.get("speedup_vs_fp32")
        )
        if not pts or prec == "fp32":
            continue
        fig.add_trace(
            go.Scatter(
                x=[p[0] for p in pts],
                y=[p[1] for p in pts],
                mode="lines+markers",
                name=prec,
                line_color=_PRECISION_COLORS[prec],
            )
        )
    fig.add_hline(y=1.0, line_dash="dash", line_color="gray", annotation_text="fp32 (1x)")
    label = "hidden width (units per layer)" if x == "width" else "batch size (samples)"
    fig.update_layout(
        title=title or f"Speedup over fp32 vs {x}",
        xaxis_title=label,
        yaxis_title="speedup over fp32 (x, step time ratio)",
        template="plotly_white",
        legend_title="precision",
    )
    fig.update_xaxes(type="log")
    return fig


def memory_breakdown_bars(
    parts: Mapping[str, Mapping[str, float]], title: str = "Training memory: model state vs activations"
) -> go.Figure:
    """Stacked bars of bytes per component (MiB) for each precision, e.g. ``{"fp32": {"model state": ..,
    "activations": ..}, "fp16": {...}}``."""
    fig = go.Figure()
    components = list(dict.fromkeys(k for p in parts.values() for k in p))
    for comp in components:
        ys = [float(parts[p].get(comp, 0.0)) / 2**20 for p in parts]
        fig.add_trace(go.Bar(x=list(parts), y=ys, name=comp, text=[f"{y:.1f}" for y in ys], textposition="inside"))
    fig.update_layout(
        title=title,
        barmode="stack",
        xaxis_title="precision",
        yaxis_title="memory (MiB)",
        template="plotly_white",
        legend_title="component",
    )
    return fig
