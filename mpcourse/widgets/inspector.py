"""HistoryInspector: pick a run, slide through its steps, see the diagnosis at each one.

Usage::

    from mpcourse import widgets

    insp = widgets.HistoryInspector({"fp16": hist16, "fp32": hist32}, reference="fp32")
    insp.run.value = "fp16"; insp.step.value = 12   # the same from Python (what the tests do)
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go

from mpcourse import plots
from mpcourse.history import History
from mpcourse.widgets.display import Displayable

__all__ = ["HistoryInspector"]


class HistoryInspector(Displayable):
    """Pick a run, slide through its steps: the figure, the step's record and the findings.

    Args:
        histories: one History, or several by name.
        reference: the name of the run the others are diagnosed against (e.g. ``"fp32"``), or
            None. Default None.
        **thresholds: passed to :func:`mpcourse.debug.diagnose`.

    Attributes:
        run (Dropdown), step (IntSlider): the controls. figure: the current ``go.Figure``.
        record (HTML): the selected step. findings (HTML): the diagnosis of the selected run.
        widget: the whole panel.
    """

    def __init__(
        self, histories: History | Mapping[str, History], reference: str | None = None, **thresholds: Any
    ) -> None:
        if isinstance(histories, History):
            histories = {str(histories.meta.get("precision", "run")): histories}
        if (
            not isinstance(histories, Mapping)
            or not histories
            or not all(isinstance(h, History) and len(h) for h in histories.values())
        ):
            raise TypeError("histories must be a non-empty History or a mapping of names to non-empty Histories")
        if reference is not None and reference not in histories:
            raise ValueError(f"reference {reference!r} is not one of the runs: {', '.join(histories)}")
        from mpcourse import debug

        self.histories = dict(histories)
        self.reference = reference
        self.diagnoses = {
            name: debug.diagnose(
                h, self.histories[reference] if reference and name != reference else None, **thresholds
            )
            for name, h in self.histories.items()
        }
        self.run = W.Dropdown(options=list(self.histories), description="run")
        self.step = W.IntSlider(description="step", continuous_update=False)
        self.record = W.HTML()
        self.findings = W.HTML()
        self.plot = W.Output()
        self.figure: go.Figure | None = None
        self.run.observe(lambda _: self._select(), names="value")
        self.step.observe(lambda _: self._show_step(), names="value")
        self.widget = W.VBox([W.HBox([self.run, self.step]), self.plot, self.record, self.findings])
        self._select()

    @property
    def history(self) -> History:
        """The selected run's History."""
        return self.histories[self.run.value]

    def _select(self) -> None:
        h = self.history
        steps = h.column("step")
        self.step.min, self.step.max = int(steps[0]), int(steps[-1])
        worst = self.diagnoses[self.run.value]
        self.findings.value = worst._repr_html_()
        first = next((f.steps[0] for f in worst if f.steps), int(steps[0]))
        if self.step.value == first:
            self._show_step()
        self.step.value = first  # jump to where the first finding points

    def _show_step(self) -> None:
        h = self.history
        i = int(self.step.value) - int(h.column("step")[0])
        r = h.records[i]
        loss = f"{r.loss:.5g}" if math.isfinite(r.loss) else f"<b style='color:crimson'>{r.loss}</b>"
        flag = (
            " <b style='color:crimson'>overflow: step skipped</b>"
            if r.skipped
            else (" <b style='color:crimson'>non-finite gradients applied</b>" if r.found_inf else "")
        )
        self.record.value = (
            f"<p>step {r.step} (epoch {r.epoch}): loss {loss}, scale {r.scale:g}, "
            f"grad norm {r.grad_norm:.4g}, {r.samples} samples in "
            f"{1e3 * r.seconds:.1f} ms{flag}</p>"
        )
        self.figure = plots.history_panels(
            h, self.diagnoses[self.run.value], step=r.step, title=f"Run inspector: {html.escape(str(self.run.value))}"
        )
        self.plot.clear_output(wait=True)
        with self.plot:
            self.figure.show()

    def __repr__(self) -> str:
        return (
            f"HistoryInspector({len(self.histories)} runs: "
            + ", ".join(f"{n}: {len(h)} steps, {len(self.diagnoses[n])} finding(s)" for n, h in self.histories.items())
            + ")"
        )
