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

__all__ = ["loss_curves", "scale_trajectory", "time_bars", "smooth", "log2_ticks", "history_panels"]

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
    symbols = ("x", "circle-open", "diamond-open", "square-open")
    for i, (name, hist) in enumerate(runs.items()):
        steps, scales = hist.column("step"), hist.scales
        fig.add_trace(go.Scatter(x=steps, y=scales, mode="lines", line_shape="hv", name=f"{name} scale",
                                 line=dict(dash=("solid", "dash", "dot", "dashdot")[i % 4])))
        bad = hist.column("found_inf").astype(bool) if len(hist) else np.zeros(0, bool)
        if bad.any():
            fig.add_trace(go.Scatter(x=steps[bad], y=scales[bad], mode="markers", name=f"{name} overflow (step skipped)",
                                     marker=dict(symbol=symbols[i % 4], size=10, color="crimson",
                                                 line=dict(width=2, color="crimson"))))
    fig.update_layout(title=title, xaxis_title=STEP_AXIS, yaxis_title="loss scale (log2 axis)",
                      template="plotly_white")
    all_scales = np.concatenate([h.scales for h in runs.values()]) if runs else np.zeros(0)
    fig.update_yaxes(type="log", **log2_ticks(all_scales))
    return fig


def log2_ticks(values: Sequence[float] | np.ndarray, max_ticks: int = 8) -> dict[str, list]:
    """``tickvals``/``ticktext`` for a log axis labelled in powers of two (``2^16``), at most
    ``max_ticks`` of them, covering the positive finite ``values``."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if not len(v):
        return {}
    lo, hi = math.floor(math.log2(v.min())), math.ceil(math.log2(v.max()))
    step = max(1, math.ceil((hi - lo + 1) / max_ticks))
    ks = list(range(lo, hi + 1, step))
    return {"tickvals": [2.0**k for k in ks], "ticktext": [f"2^{k}" for k in ks]}


def time_bars(seconds: Mapping[str, float], title: str = "Training time by precision (measured here)") -> go.Figure:
    """Bars of measured seconds per run, each labelled with its ratio to the first run."""
    names = list(seconds)
    vals = [float(seconds[n]) for n in names]
    base = vals[0] if vals else float("nan")
    text = [f"{v:.2f} s ({base / v:.2f}x vs {names[0]})" if v > 0 else "n/a" for v in vals]
    fig = go.Figure(go.Bar(x=names, y=vals, text=text, textposition="auto"))
    fig.update_layout(title=title, xaxis_title="run", yaxis_title="training time (s)", template="plotly_white")
    return fig


# --- notebook 04: gradient clipping ------------------------------------------------------------

__all__ += ["clip_comparison", "grad_norm_history", "clip_order_bars", "recommendation_heatmap"]

GRAD_NORM_AXIS = "global gradient L2 norm, unscaled, before clipping (log axis)"


def clip_comparison(histories: Mapping[str, History], window: int = 1,
                    title: str = "Training with each clipping strategy") -> go.Figure:
    """Two panels sharing the step axis: the loss (top) and the pre-clip gradient norm (bottom),
    one colour per run; steps where the policy acted are dotted on the norm panel."""
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("training loss", "gradient norm (dots: steps the policy clipped)"))
    for i, (name, hist) in enumerate(histories.items()):
        color = qualitative.Plotly[i % len(qualitative.Plotly)]
        steps = hist.column("step")
        fig.add_trace(go.Scatter(x=steps, y=smooth(hist.losses, window), mode="lines", name=name,
                                 legendgroup=name, line=dict(color=color)), row=1, col=1)
        norms = hist.grad_norms
        fig.add_trace(go.Scatter(x=steps, y=np.where(np.isfinite(norms), norms, np.nan), mode="lines",
                                 name=f"{name} norm", legendgroup=name, showlegend=False,
                                 line=dict(color=color, width=1)), row=2, col=1)
        hit = hist.column("clipped").astype(bool) if len(hist) else np.zeros(0, bool)
        fig.add_trace(go.Scatter(x=steps[hit], y=norms[hit], mode="markers", name=f"{name} clipped",
                                 legendgroup=name, showlegend=False,
                                 marker=dict(color=color, size=4)), row=2, col=1)
    fig.update_layout(title=title, template="plotly_white", height=560)
    fig.update_yaxes(title_text="loss (cross-entropy, nats)", row=1, col=1)
    fig.update_yaxes(title_text="grad L2 norm (log axis)", type="log", row=2, col=1)
    fig.update_xaxes(title_text=STEP_AXIS, row=2, col=1)
    return fig


def grad_norm_history(history: History, threshold: float | Sequence[float] | None = None,
                      name: str = "run", title: str | None = None) -> go.Figure:
    """A run's pre-clip gradient norm per step (log axis) with the clipping threshold drawn.

    Args:
        history: the run.
        threshold: a constant (ClipByNorm's ``max_norm``), one value per step (AutoClip's
            moving percentile, e.g. from :func:`mpcourse.clip_study.thresholds`), or None.
        name: the run's name, for the legend.
        title: default ``"Gradient norm per step: <name>"``.
    """
    steps, norms = history.column("step"), history.grad_norms
    fig = go.Figure(go.Scatter(x=steps, y=np.where(np.isfinite(norms), norms, np.nan), mode="lines",
                               name=f"{name}: gradient norm"))
    hit = history.column("clipped").astype(bool) if len(history) else np.zeros(0, bool)
    if hit.any():
        fig.add_trace(go.Scatter(x=steps[hit], y=norms[hit], mode="markers", name="clipped step",
                                 marker=dict(color="crimson", size=5)))
    if threshold is not None:
        thr = np.broadcast_to(np.asarray(threshold, dtype=float), (len(history),))
        fig.add_trace(go.Scatter(x=steps, y=thr, mode="lines", name="threshold",
                                 line=dict(color="black", dash="dash")))
    fig.update_layout(title=title or f"Gradient norm per step: {name}", xaxis_title=STEP_AXIS,
                      yaxis_title=GRAD_NORM_AXIS, template="plotly_white")
    fig.update_yaxes(type="log")
    return fig


def clip_order_bars(effect: Mapping[str, float], title: str | None = None) -> go.Figure:
    """Bars from ``clip_order_effect``: the gradient norm before clipping, after the right order
    (unscale, then clip) and after the wrong one (clip, then unscale), on a log axis."""
    labels = ["before clipping", "unscale, then clip (right)", "clip, then unscale (wrong)"]
    vals = [effect["grad_norm"], effect["norm_correct"], effect["norm_wrong"]]
    fig = go.Figure(go.Bar(x=labels, y=vals, text=[f"{v:.3g}" for v in vals], textposition="outside",
                           marker_color=["gray", "seagreen", "crimson"]))
    fig.update_layout(title=title or f"Clipping order at loss scale {effect['scale']:g}: the wrong order "
                      f"shrinks the update {effect['shrink']:.3g}x",
                      xaxis_title="gradient", yaxis_title="gradient L2 norm (log axis)",
                      template="plotly_white")
    fig.update_yaxes(type="log")
    return fig


def recommendation_heatmap(rows: Sequence[Mapping[str, object]], strategies: Sequence[str],
                           title: str = "Final training loss by model and clipping strategy (measured)") -> go.Figure:
    """Heatmap of ``loss_<strategy>`` per model row (from :func:`mpcourse.clip_study.recommend`),
    each cell labelled with its value and the recommended strategy starred."""
    models = [str(r["model"]) for r in rows]
    z = [[float(r[f"loss_{s}"]) for s in strategies] for r in rows]  # type: ignore[arg-type]
    text = [[f"{v:.3f}{' *' if r['best'] == s else ''}" for v, s in zip(zrow, strategies)]
            for zrow, r in zip(z, rows)]
    fig = go.Figure(go.Heatmap(z=z, x=list(strategies), y=models, text=text, texttemplate="%{text}",
                               colorscale="Viridis", reversescale=True,
                               colorbar=dict(title="loss (nats)")))
    fig.update_layout(title=title, xaxis_title="clipping strategy (* = recommended)",
                      yaxis_title="model", template="plotly_white")
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


# --- notebooks 01 (fundamentals) and 02 (loss scaling) -------------------------------------------

__all__ += ["NOTEBOOK_RENDERER", "setup_notebook", "bit_layout", "format_ranges", "number_line",
            "running_sums", "gradient_histogram", "training_curves", "loss_and_scale", "updates_vs_spacing"]

#: The renderer the course notebooks use. ``plotly_mimetype`` gives JupyterLab (and VS Code) the
#: figure JSON, which plotly's bundled JupyterLab extension draws live; ``notebook_connected``
#: adds a text/html copy that loads plotly.js from its CDN, which is what nbconvert's HTML
#: export, the classic notebook and GitHub's nbviewer show. Connected keeps each notebook small
#: (no 4 MB plotly.js per file); the course-site builder swaps the CDN script for the plotly.js
#: shipped inside the plotly package, so the site works offline.
NOTEBOOK_RENDERER = "plotly_mimetype+notebook_connected"

_FIELD_COLORS = {"sign": "#d62728", "exponent": "#1f77b4", "mantissa": "#2ca02c"}


def setup_notebook(renderer: str = NOTEBOOK_RENDERER) -> str:
    """Make ``fig.show()`` and a figure as a cell's value use the course renderer; returns it.

    Usage::

        from mpcourse import plots
        plots.setup_notebook()        # 'plotly_mimetype+notebook_connected'
    """
    import plotly.io as pio

    pio.renderers.default = renderer
    return renderer


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
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers+text", name=field, text=texts,
                                 hovertext=hovers, hoverinfo="text", textfont=dict(color="white", size=11),
                                 marker=dict(symbol="square", size=17, color=color)))
    fig.update_layout(title=f"Bit layout of {value!r} in each format (sign, exponent, mantissa)",
                      xaxis_title="bit position (most significant first; bits)", yaxis_title="format",
                      template="plotly_white", height=110 + 40 * len(fmts))
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
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=f"{part} values",
                                 line=dict(width=14, color=color), marker=dict(size=4)))
    fig.update_layout(title="Range of each format: positive subnormal and normal values",
                      xaxis_title="log2 of the magnitude (binades)", yaxis_title="format",
                      template="plotly_white", height=120 + 45 * len(fmts))
    fig.update_yaxes(autorange="reversed")
    return fig


def number_line(fmts: Sequence[str], lo: float, hi: float) -> go.Figure:
    """Every representable value of 8/16-bit formats in ``[lo, hi]``: the gaps grow with magnitude."""
    from mpcourse import formats

    fig = go.Figure()
    for f in fmts:
        vals = formats.representable_values(f, lo, hi)
        fig.add_trace(go.Scatter(x=vals, y=[f] * len(vals), mode="markers", name=f"{f} ({len(vals)} values)",
                                 marker=dict(symbol="line-ns-open", size=16)))
    fig.update_layout(title=f"Representable values between {lo:g} and {hi:g}",
                      xaxis_title="value (dimensionless)", yaxis_title="format", template="plotly_white",
                      height=120 + 60 * len(fmts))
    return fig


def running_sums(sums: Mapping[str, Sequence[float]], exact: Sequence[float] | None = None,
                 title: str = "A long sum of small values, accumulated in each format",
                 max_points: int = 500) -> go.Figure:
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
    fig.update_layout(title=title, xaxis_title="terms added (count)", yaxis_title="running sum (dimensionless)",
                      template="plotly_white")
    return fig


def gradient_histogram(values: Sequence[float] | np.ndarray, fmt: str = "fp16",
                       title: str = "Gradient magnitudes") -> go.Figure:
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
    fig = go.Figure(go.Bar(x=edges[:-1] + 0.5, y=counts, width=0.95, name="gradients", marker_color="#444",
                           hovertemplate="binade [2^%{customdata}, 2^(%{customdata}+1)): %{y} values<extra></extra>",
                           customdata=edges[:-1].astype(int)))
    fig.add_vrect(x0=math.log2(info.min_normal), x1=min(math.log2(info.max), hi), fillcolor="#1f77b4",
                  opacity=0.15, line_width=0, annotation_text=f"{fmt} normal", annotation_position="top left")
    fig.add_vrect(x0=math.log2(info.min_subnormal), x1=math.log2(info.min_normal), fillcolor="#ff7f0e",
                  opacity=0.2, line_width=0, annotation_text=f"{fmt} subnormal", annotation_position="top left")
    fig.add_vrect(x0=lo, x1=math.log2(info.min_subnormal) - 1, fillcolor="crimson", opacity=0.12, line_width=0,
                  annotation_text="flushed to 0", annotation_position="bottom left")
    fig.update_layout(title=f"{title}: {under:.2%} flush to zero in {fmt}, {sub:.2%} become subnormal",
                      xaxis_title="log2 |gradient| (binade)", yaxis_title="number of gradient values (count)",
                      template="plotly_white", bargap=0.05, showlegend=False)
    return fig


def training_curves(runs: Mapping[str, object], title: str = "Training loss by run") -> go.Figure:
    """Loss in nats per step for named :class:`mpcourse.runs.Run` objects (loss weight divided out)."""
    fig = go.Figure()
    for name, run in runs.items():
        hist = run.history  # type: ignore[attr-defined]
        fig.add_trace(go.Scatter(x=hist.column("step"), y=run.losses, mode="lines", name=name))  # type: ignore[attr-defined]
    fig.update_layout(title=title, xaxis_title=STEP_AXIS, yaxis_title=LOSS_AXIS, template="plotly_white")
    return fig


def loss_and_scale(history: History | None = None, loss_weight: float = 1.0,
                   title: str = "Loss and loss scale per step") -> go.Figure:
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
    fig.add_trace(go.Scatter(x=steps[bad], y=scale[bad], mode="markers", name="overflow (step skipped)",
                             marker=dict(symbol="x", size=9, color="crimson")), row=2, col=1)
    fig.update_layout(title=title, template="plotly_white", height=480)
    fig.update_yaxes(title_text="loss (nats)", row=1, col=1)  # short: two stacked axis titles
    fig.update_yaxes(title_text="loss scale (log2)", type="log", row=2, col=1, **log2_ticks(scale))
    fig.update_xaxes(title_text=STEP_AXIS, row=2, col=1)
    return fig


def updates_vs_spacing(weights: Sequence[float] | np.ndarray, updates: Sequence[float] | np.ndarray,
                       fmt: str = "fp16", max_points: int = 1500,
                       title: str = "Weight updates against the format's spacing") -> go.Figure:
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
        fig.add_trace(go.Scatter(x=np.abs(w[mask]), y=np.abs(u[mask]), mode="markers", name=name,
                                 marker=dict(size=4, color=color, opacity=0.6)))
    if len(w):
        grid = np.logspace(np.log10(np.abs(w).min()), np.log10(np.abs(w).max()), 200)
        fig.add_trace(go.Scatter(x=grid, y=formats.spacing(grid, fmt) / 2, mode="lines",
                                 name=f"half the {fmt} spacing", line=dict(color="black", dash="dash")))
    fig.update_layout(title=f"{title}: {share:.1%} of updates lost in {fmt}",
                      xaxis_title="|weight| (dimensionless)", yaxis_title="|update| = |lr x step| (dimensionless)",
                      template="plotly_white")
    fig.update_xaxes(type="log", exponentformat="power")
    fig.update_yaxes(type="log", exponentformat="power")
    return fig


# --- production (notebook 06) ------------------------------------------------------------------

__all__ += ["precision_timeline", "monitor_dashboard", "memory_bars"]


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


def precision_timeline(history: History, window: int = 10,
                       title: str = "Loss and overflow rate by precision, with switches") -> go.Figure:
    """Loss per step coloured by the precision it ran in; below, the overflow rate over ``window``
    steps; a dashed line and a label at every fallback or phase switch."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.65, 0.35], vertical_spacing=0.08)
    steps, losses = history.column("step"), history.losses
    found = history.column("found_inf").astype(float) if len(history) else np.zeros(0)
    colors = {"fp32": "#1f77b4", "bf16": "#2ca02c", "fp16": "#d62728"}
    for start, end, p in _precision_segments(history):
        m = (steps >= start) & (steps <= end)
        fig.add_trace(go.Scatter(x=steps[m], y=losses[m], mode="lines", name=f"loss in {p}",
                                 line=dict(color=colors.get(p))), row=1, col=1)
    rate = np.array([found[max(0, i - window + 1):i + 1].mean() for i in range(len(found))])
    fig.add_trace(go.Scatter(x=steps, y=rate, mode="lines", name=f"overflow rate ({window}-step window)",
                             line=dict(color="black")), row=2, col=1)
    for e in history.events:
        if e.get("kind") in ("fallback", "phase"):
            label = f"{e['kind']}: {e['from']}→{e['to']}" + (f" ({e['reason']})" if "reason" in e else "")
            fig.add_vline(x=e["step"], line_dash="dash", line_color="gray")
            fig.add_annotation(x=e["step"], y=1.0, yref="paper", text=label, showarrow=False,
                               xanchor="left", yanchor="bottom")
    fig.update_layout(title=title, template="plotly_white")
    fig.update_yaxes(title_text=LOSS_AXIS + ", log axis", type="log", row=1, col=1)
    fig.update_yaxes(title_text="overflow rate (share of steps)", range=[-0.05, 1.05], row=2, col=1)
    fig.update_xaxes(title_text=STEP_AXIS, row=2, col=1)
    return fig


def monitor_dashboard(rows: Sequence[Mapping[str, float]], title: str = "Training monitor") -> go.Figure:
    """Four panels from :attr:`mpcourse.monitor.Monitor.rows`: throughput, overflow rate, loss
    scale, process memory."""
    from plotly.subplots import make_subplots

    panels = [("samples_per_second", "throughput (samples/s)"),
              ("overflow_rate", "overflow rate (share, rolling window)"),
              ("scale", "loss scale (log2 axis)"), ("rss_mb", "process memory, RSS (MiB)")]
    fig = make_subplots(rows=2, cols=2, subplot_titles=[t for _, t in panels])
    steps = [r["step"] for r in rows]
    for i, (key, label) in enumerate(panels):
        fig.add_trace(go.Scatter(x=steps, y=[r[key] for r in rows], mode="lines", name=label, showlegend=False),
                      row=i // 2 + 1, col=i % 2 + 1)
        fig.update_xaxes(title_text=STEP_AXIS, row=i // 2 + 1, col=i % 2 + 1)
        fig.update_yaxes(title_text=label, row=i // 2 + 1, col=i % 2 + 1)
    fig.update_yaxes(type="log", row=2, col=1)
    fig.update_layout(title=title, template="plotly_white", height=600)
    return fig


def memory_bars(estimates: Mapping[str, object], title: str = "Estimated training memory by precision") -> go.Figure:
    """Stacked bars of a :class:`mpcourse.production.MemoryEstimate` per name (MiB): weights,
    gradients, optimizer state, the half-precision weight copy, activations."""
    parts = [("weights", "fp32 master weights"), ("grads", "fp32 gradients"), ("optimizer", "optimizer state"),
             ("compute_copy", "half weight copy"), ("activation_bytes", "saved activations")]
    names = list(estimates)
    fig = go.Figure()
    for attr, label in parts:
        fig.add_trace(go.Bar(x=names, y=[getattr(estimates[n], attr) / 2**20 for n in names], name=label))
    fig.update_layout(barmode="stack", title=title, xaxis_title="run (precision, batch)",
                      yaxis_title="estimated memory (MiB)", template="plotly_white")
    return fig


# --- benchmark figures (notebook 03): rows are mpcourse.bench result dicts ----------------------

__all__ += ["throughput_bars", "peak_memory_bars", "speedup_lines", "memory_breakdown_bars"]
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
        fig.add_trace(go.Bar(x=[_config_name(r) for r in rs], y=[float(r["samples_per_s"]) for r in rs],  # type: ignore[arg-type]
                             name=prec, text=text, textposition="outside", marker_color=_PRECISION_COLORS[prec]))
    fig.update_layout(title=title, barmode="group", xaxis_title="configuration (backend:device model batch)",
                      yaxis_title="throughput (samples/s)", template="plotly_white", legend_title="precision")
    return fig


def peak_memory_bars(rows: Sequence[Mapping[str, object]], title: str = "Peak training memory by precision") -> go.Figure:
    """Grouped bars of the memory each configuration added over its baseline (MiB), by precision.

    The baseline is what the process (CPU), the allocator (CUDA, MLX) held before the model was
    built, so the bar is model + optimizer + activations + workspace. The hover names the counter.
    """
    fig = go.Figure()
    for prec, rs in _by_precision(rows).items():
        mib = [(float(r["peak_memory_bytes"]) - float(r.get("baseline_memory_bytes") or 0)) / 2**20 for r in rs]  # type: ignore[arg-type]
        fig.add_trace(go.Bar(x=[_config_name(r) for r in rs], y=mib, name=prec, marker_color=_PRECISION_COLORS[prec],
                             hovertext=[str(r.get("memory_kind", "")) for r in rs]))
    fig.update_layout(title=title, barmode="group", xaxis_title="configuration (backend:device model batch)",
                      yaxis_title="peak memory over baseline (MiB)", template="plotly_white", legend_title="precision")
    return fig


def speedup_lines(rows: Sequence[Mapping[str, object]], x: str = "width",
                  title: str | None = None) -> go.Figure:
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
        pts = sorted((float(r[x]), float(r["speedup_vs_fp32"])) for r in rs  # type: ignore[arg-type]
                     if r.get(x) is not None and r.get("speedup_vs_fp32"))
        if not pts or prec == "fp32":
            continue
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=prec,
                                 line_color=_PRECISION_COLORS[prec]))
    fig.add_hline(y=1.0, line_dash="dash", line_color="gray", annotation_text="fp32 (1x)")
    label = "hidden width (units per layer)" if x == "width" else "batch size (samples)"
    fig.update_layout(title=title or f"Speedup over fp32 vs {x}", xaxis_title=label,
                      yaxis_title="speedup over fp32 (x, step time ratio)", template="plotly_white",
                      legend_title="precision")
    fig.update_xaxes(type="log")
    return fig


def memory_breakdown_bars(parts: Mapping[str, Mapping[str, float]],
                          title: str = "Training memory: model state vs activations") -> go.Figure:
    """Stacked bars of bytes per component (MiB) for each precision, e.g. ``{"fp32": {"model state": ..,
    "activations": ..}, "fp16": {...}}``."""
    fig = go.Figure()
    components = list(dict.fromkeys(k for p in parts.values() for k in p))
    for comp in components:
        ys = [float(parts[p].get(comp, 0.0)) / 2**20 for p in parts]
        fig.add_trace(go.Bar(x=list(parts), y=ys, name=comp, text=[f"{y:.1f}" for y in ys], textposition="inside"))
    fig.update_layout(title=title, barmode="stack", xaxis_title="precision", yaxis_title="memory (MiB)",
                      template="plotly_white", legend_title="component")
    return fig
