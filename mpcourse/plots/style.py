"""What every figure shares: axis titles, smoothing, log2 ticks, the notebook renderer.

Usage::

    from mpcourse import plots

    plots.setup_notebook()                 # the renderer nbval and JupyterLab both show
    plots.smooth(losses, window=10)
    plots.log2_ticks(scales)               # tick values and 2^k labels for a scale axis

Data in, ``plotly.graph_objects.Figure`` out; every figure has a title and axis labels with units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

__all__ = [
    "LOSS_AXIS",
    "STEP_AXIS",
    "GRAD_NORM_AXIS",
    "smooth",
    "log2_ticks",
    "NOTEBOOK_RENDERER",
    "setup_notebook",
    "overflow_markers",
]


LOSS_AXIS = "training loss (cross-entropy, nats)"
STEP_AXIS = "optimizer step"


def smooth(values: Sequence[float] | np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over finite values (non-finite ones are left out of each window)."""
    v = np.asarray(values, dtype=float)
    if window <= 1 or len(v) == 0:
        return v
    out = np.empty_like(v)
    for i in range(len(v)):
        w = v[max(0, i - window + 1) : i + 1]
        w = w[np.isfinite(w)]
        out[i] = w.mean() if len(w) else np.nan
    return out


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


GRAD_NORM_AXIS = "global gradient L2 norm, unscaled, before clipping (log axis)"


#: The renderer the course notebooks use. ``plotly_mimetype`` gives JupyterLab (and VS Code) the
#: figure JSON, which plotly's bundled JupyterLab extension draws live; ``notebook_connected``
#: adds a text/html copy that loads plotly.js from its CDN, which is what nbconvert's HTML
#: export, the classic notebook and GitHub's nbviewer show. Connected keeps each notebook small
#: (no 4 MB plotly.js per file); the course-site builder swaps the CDN script for the plotly.js
#: shipped inside the plotly package, so the site works offline.
NOTEBOOK_RENDERER = "plotly_mimetype+notebook_connected"


def setup_notebook(renderer: str = NOTEBOOK_RENDERER) -> str:
    """Make ``fig.show()`` and a figure as a cell's value use the course renderer; returns it.

    Usage::

        from mpcourse import plots
        plots.setup_notebook()        # 'plotly_mimetype+notebook_connected'
    """
    import plotly.io as pio

    pio.renderers.default = renderer
    return renderer


def overflow_markers(
    steps: np.ndarray,
    scales: np.ndarray,
    found_inf: np.ndarray,
    name: str = "overflow (step skipped)",
    *,
    always: bool = False,
    **marker: Any,
) -> go.Scatter | None:
    """Red markers on the loss-scale line at the steps whose gradients overflowed.

    None when no step overflowed, unless ``always`` (a live figure that keeps a fixed trace order).
    """
    bad = np.asarray(found_inf, dtype=bool)
    if not bad.any() and not always:
        return None
    style = {"symbol": "x", "size": 9, "color": "crimson", **marker}
    return go.Scatter(x=steps[bad], y=scales[bad], mode="markers", name=name, marker=style)
