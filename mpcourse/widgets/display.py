"""How a course widget displays itself: the live widget, a text repr and a static copy of its figure.

Usage::

    from mpcourse import widgets

    ex = widgets.Fp8TraceExplorer(steps)
    bundle = ex._repr_mimebundle_()        # what Jupyter stores for the cell ``ex``
    bundle["application/vnd.jupyter.widget-view+json"]   # the live widget (needs a kernel)
    bundle["text/plain"]                   # repr(ex): short and stable (nbval compares it)
    bundle["application/vnd.plotly.v1+json"]             # the figure as the widget drew it

One output, three representations of the same thing; a front end shows the richest it can. With
a kernel and the widget manager (JupyterLab ranks widget views first), the live widget; the
course site, or a front end without widget support, draws the stored plotly figure instead, so
a static page still shows the widget's run on the settings the cell gave it. The figure is the
widget's own ``figure`` attribute at display time (a ``go.Figure`` or ``go.FigureWidget``);
a widget without one, or with an empty one, adds nothing and keeps only the two first.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as W

__all__ = ["PLOTLY_MIME", "Displayable", "figure_bundle"]

PLOTLY_MIME = "application/vnd.plotly.v1+json"


def figure_bundle(figure: Any) -> dict[str, Any]:
    """``{PLOTLY_MIME: figure JSON}`` as plotly's own ``plotly_mimetype`` renderer writes it.

    Empty (``{}``) when ``figure`` is None or none of its traces holds a point (a live figure
    before its first run), so nothing blank is stored.
    """
    if figure is None or not any(_has_points(t) for t in figure.data):
        return {}
    import plotly.io as pio

    return dict(pio.renderers["plotly_mimetype"].to_mimebundle(figure.to_dict()))


def _has_points(trace: Any) -> bool:
    return any(getattr(trace, axis, None) is not None and len(getattr(trace, axis)) for axis in ("x", "y", "z"))


class Displayable:
    """Shows ``self.widget`` in Jupyter, with a short, stable text repr and a copy of ``self.figure``."""

    widget: W.Widget

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(**kwargs) or {}
        bundle = dict(bundle[0] if isinstance(bundle, tuple) else bundle)
        bundle["text/plain"] = repr(self)
        bundle.update(figure_bundle(getattr(self, "figure", None)))
        return bundle
