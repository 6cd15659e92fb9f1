"""ipywidgets controls and live dashboards built on :mod:`mpcourse.plots`.

Usage (in a notebook; each object displays itself as its widget)::

    from mpcourse import widgets

    insp = widgets.HistoryInspector({"fp16": hist16, "fp32": hist32}, reference="fp32")
    insp                                   # pick a run, slide through its steps
    insp.run.value = "fp16"; insp.step.value = 12   # the same from Python (what the tests do)

    ex = widgets.ClipExplorer(mpc.data.load("digits"), mpc.TrainConfig(precision="fp16", lr=1e-2))
    ex.strategy.value = "autoclip"         # strategy dropdown and sliders; each change retrains

    widgets.FormatExplorer("0.1")          # type a number: bits and rounding in every format
    panel = widgets.LossScalingPanel(mpc.data.load("underflow"))
    panel                                  # loss-scaling sliders, a Train button, a live figure
    panel.init_scale.value = 2.0**20; panel.train()  # the same from Python
    widgets.Fp8TraceExplorer(steps)        # fp8 recipe, history and margin; amax/scale traces redraw

Every object keeps its widgets as attributes, so tests set values from Python. One module per
widget family: ``inspector``, ``clipping``, ``panels``, ``fp8``. Each displays as its live widget
plus a static copy of its figure (``display``): a page without a kernel (the course site) shows
that figure of the cell's run where the widget would be.
"""

from mpcourse.widgets.clipping import ClipExplorer
from mpcourse.widgets.fp8 import Fp8TraceExplorer
from mpcourse.widgets.inspector import HistoryInspector
from mpcourse.widgets.panels import FormatExplorer, LossScalingPanel

__all__ = ["HistoryInspector", "ClipExplorer", "FormatExplorer", "LossScalingPanel", "Fp8TraceExplorer"]
