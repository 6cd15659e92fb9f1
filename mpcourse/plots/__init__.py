"""Plotly figure builders, one module per concept: data in, ``go.Figure`` out, no side effects.

Usage::

    import mpcourse as mpc
    from mpcourse import plots

    fig = plots.loss_curves({"fp32": hist32, "fp16": hist16})   # loss per step, one line per run
    fig = plots.scale_trajectory(hist16)                        # log2 scale with overflow markers
    fig.show()

Modules: ``style`` (shared axes, smoothing, renderer), ``training``, ``formats``, ``clipping``,
``debug``, ``production``, ``bench``, ``fp8``, ``model_table``. Every figure has a title and axis titles with units.
"""

from mpcourse.plots.bench import memory_breakdown_bars, peak_memory_bars, speedup_lines, throughput_bars
from mpcourse.plots.clipping import (
    clip_comparison,
    clip_order_bars,
    grad_norm_history,
    recommendation_heatmap,
    recommendation_spread,
)
from mpcourse.plots.debug import history_panels
from mpcourse.plots.formats import (
    bit_layout,
    format_ranges,
    gradient_histogram,
    number_line,
    running_sums,
    updates_vs_spacing,
)
from mpcourse.plots.fp8 import fp8_trace, history_trace, quantization_error_bars
from mpcourse.plots.model_table import model_table_bars
from mpcourse.plots.production import memory_bars, monitor_dashboard, precision_timeline, predict_memory
from mpcourse.plots.style import (
    GRAD_NORM_AXIS,
    LOSS_AXIS,
    NOTEBOOK_RENDERER,
    STEP_AXIS,
    log2_ticks,
    overflow_markers,
    setup_notebook,
    smooth,
)
from mpcourse.plots.training import (
    loss_and_scale,
    loss_curves,
    moved_curves,
    scale_trajectory,
    time_bars,
    training_curves,
)

__all__ = [
    "overflow_markers",
    "GRAD_NORM_AXIS",
    "LOSS_AXIS",
    "NOTEBOOK_RENDERER",
    "STEP_AXIS",
    "bit_layout",
    "clip_comparison",
    "clip_order_bars",
    "format_ranges",
    "fp8_trace",
    "grad_norm_history",
    "gradient_histogram",
    "history_panels",
    "history_trace",
    "log2_ticks",
    "loss_and_scale",
    "loss_curves",
    "memory_bars",
    "model_table_bars",
    "predict_memory",
    "memory_breakdown_bars",
    "monitor_dashboard",
    "number_line",
    "peak_memory_bars",
    "precision_timeline",
    "quantization_error_bars",
    "recommendation_heatmap",
    "recommendation_spread",
    "running_sums",
    "scale_trajectory",
    "setup_notebook",
    "smooth",
    "speedup_lines",
    "throughput_bars",
    "time_bars",
    "training_curves",
    "moved_curves",
    "updates_vs_spacing",
]
