"""FormatExplorer and LossScalingPanel: numbers in every format, and loss scaling trained live.

Usage::

    widgets.FormatExplorer("0.1")          # type a number: bits and rounding in every format
    panel = widgets.LossScalingPanel(mpc.data.load("underflow"))
    panel.init_scale.value = 2.0**20; panel.train()  # the same from Python
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go

from mpcourse import formats, plots
from mpcourse.config import PRECISIONS, TrainConfig
from mpcourse.data import Dataset
from mpcourse.engines import BACKENDS, missing_reason
from mpcourse.studies import runs
from mpcourse.widgets.display import Displayable

__all__ = ["FormatExplorer", "LossScalingPanel"]


class FormatExplorer(Displayable):
    """Type a number; see its bits, stored value and rounding error in every format.

    Usage::

        ex = FormatExplorer("0.1")
        ex.text.value = "70000"      # the table updates: overflow in fp16 and fp8
        ex.rows                      # the rows shown, from mpcourse.formats.explain

    Args:
        value: the number to start with, as text. Default ``"0.1"``.
        fmts: formats to show (default: all of :func:`mpcourse.formats.names`).
    """

    def __init__(self, value: str = "0.1", fmts: Sequence[str] | None = None) -> None:
        self.fmts = list(fmts) if fmts is not None else formats.names()
        self.text = W.Text(value=str(value), description="number", continuous_update=False)
        self.table = W.HTML()
        self.rows: list[dict[str, Any]] = []
        self.widget = W.VBox([self.text, self.table])
        self.text.observe(self._update, names="value")
        self._update()

    def _update(self, change: Any = None) -> None:
        try:
            x = float(self.text.value.replace("_", ""))
        except ValueError:
            self.rows = []
            self.table.value = (
                f"<b>Not a number: {html.escape(self.text.value)!s}</b> (type e.g. 0.1, 1e-8, 70000 or -2.5)"
            )
            return
        self.rows = [r for r in formats.explain(x) if r["format"] in self.fmts]
        cells = "".join(
            f"<tr><td>{r['format']}</td><td style='font-family:monospace'>{r['bits']}</td>"
            f"<td>{r['stored']!r}</td><td>{r['abs error']:.3g}</td><td>{r['rel error']:.3g}</td>"
            f"<td>{r['class']}</td></tr>"
            for r in self.rows
        )
        self.table.value = (
            "<table><tr><th>format</th><th>bits (sign exponent mantissa)</th>"
            "<th>stored value</th><th>abs error</th><th>rel error</th><th>class</th></tr>"
            f"{cells}</table>"
        )

    def __repr__(self) -> str:
        return f"FormatExplorer(value={self.text.value!r}, formats={self.fmts})"


class LossScalingPanel(Displayable):
    """Sliders for every loss-scaling setting, a Train button and a live loss/scale figure.

    Usage::

        panel = LossScalingPanel(mpc.data.load("underflow"), steps=60)
        panel                          # in a notebook: the controls and the default run's figure
        panel.hysteresis.value = 3     # or drive it from Python
        run = panel.train()            # a short training; panel.figure now shows it

    Args:
        task: the Dataset to train on (its ``meta["loss_weight"]`` is honoured).
        steps: optimizer steps per click. Default 60.
        model: a zoo model name. Default ``"mlp"``.
        device: ``"auto"`` or an explicit device. Default ``"auto"``.
        backends: backends offered (default: those whose engine runs here).
        backend: the one selected first (default: the first offered).
        initial_run: train once on the default settings, so the panel opens on a run (and a
            static page shows that run's figure). Default True; False leaves the figure empty
            until the first Train.
    """

    def __init__(
        self,
        task: Dataset,
        *,
        steps: int = 60,
        model: str = "mlp",
        device: str = "auto",
        backends: Sequence[str] | None = None,
        backend: str | None = None,
        initial_run: bool = True,
    ) -> None:
        if not isinstance(task, Dataset):
            raise TypeError(f"task must be an mpcourse Dataset, got {type(task).__name__}")
        offered = list(backends) if backends is not None else [b for b in BACKENDS if missing_reason(b) is None]
        if not offered:
            raise ValueError("no backend can run here; install torch or mlx (see `mpcourse doctor`)")
        self.task, self.model, self.device = task, model, device
        style = {"description_width": "110px"}
        self.init_scale = W.FloatLogSlider(
            value=2.0**16, base=2, min=0, max=48, step=1, description="init scale", style=style, readout_format=".3g"
        )
        self.growth_factor = W.FloatSlider(
            value=2.0, min=1.25, max=8.0, step=0.25, description="growth factor", style=style
        )
        self.backoff_factor = W.FloatSlider(
            value=0.5, min=0.05, max=0.95, step=0.05, description="backoff factor", style=style
        )
        self.growth_interval = W.IntSlider(value=10, min=1, max=200, description="growth interval", style=style)
        self.hysteresis = W.IntSlider(value=1, min=1, max=8, description="hysteresis", style=style)
        self.precision = W.ToggleButtons(options=list(PRECISIONS), value="fp16", description="precision", style=style)
        self.loss_scale = W.ToggleButtons(
            options=["dynamic", "static", "none"], value="dynamic", description="loss scale", style=style
        )
        if backend is not None and backend not in offered:
            raise ValueError(f"backend {backend!r} is not among those offered here: {offered}")
        self.backend = W.Dropdown(options=offered, value=backend or offered[0], description="backend", style=style)
        self.steps = W.IntSlider(value=steps, min=1, max=400, description="steps", style=style)
        self.button = W.Button(description="Train", button_style="primary", icon="play")
        self.status = W.HTML("Press Train to run a short training with these settings.")
        self.figure = go.FigureWidget(plots.loss_and_scale(title=f"Loss and loss scale on {task.name!r}"))
        self.last_run: runs.Run | None = None
        self.button.on_click(self.train)
        controls = W.VBox(
            [
                self.precision,
                self.loss_scale,
                self.backend,
                self.init_scale,
                self.growth_factor,
                self.backoff_factor,
                self.growth_interval,
                self.hysteresis,
                self.steps,
                W.HBox([self.button, self.status]),
            ]
        )
        self.widget = W.VBox([controls, self.figure])
        if initial_run:
            self.train()

    def config(self) -> TrainConfig:
        """The TrainConfig the controls describe (a static run uses ``init scale`` as its scale)."""
        mode = self.loss_scale.value
        return TrainConfig(
            precision=self.precision.value,
            loss_scale=float(self.init_scale.value) if mode == "static" else mode,
            init_scale=float(self.init_scale.value),
            growth_factor=float(self.growth_factor.value),
            backoff_factor=float(self.backoff_factor.value),
            growth_interval=int(self.growth_interval.value),
            hysteresis=int(self.hysteresis.value),
        )

    def train(self, _button: Any = None) -> runs.Run:
        """Run ``steps`` steps with the current settings and redraw the figure (the Train button)."""
        self.button.disabled = True
        self.status.value = "training..."
        try:
            run = runs.train(
                self.task,
                self.config(),
                backend=self.backend.value,
                model=self.model,
                device=self.device,
                steps=int(self.steps.value),
            )
        except Exception as err:  # show it in the panel; the figure keeps the last good run
            self.status.value = f"<b>failed:</b> {html.escape(str(err))}"
            raise
        finally:
            self.button.disabled = False
        h = run.history
        bad = h.column("found_inf").astype(bool)
        with self.figure.batch_update():
            self.figure.data[0].x, self.figure.data[0].y = h.column("step"), run.losses
            self.figure.data[1].x, self.figure.data[1].y = h.column("step"), h.scales
            self.figure.data[2].x, self.figure.data[2].y = h.column("step")[bad], h.scales[bad]
            self.figure.layout.yaxis2.update(**plots.log2_ticks(h.scales))
        final = run.losses[-1]
        loss_txt = f"{final:.3f} nats" if math.isfinite(final) else "non-finite"
        self.status.value = (
            f"{h.meta['backend']}:{h.meta['device']} {h.meta['precision']} "
            f"{h.meta['scaling']}: final loss {loss_txt}, test accuracy {run.accuracy:.1%}, "
            f"skipped {h.skipped_steps}/{len(h)} steps, {h.total_seconds:.1f} s"
        )
        self.last_run = run
        return run

    def __repr__(self) -> str:
        return f"LossScalingPanel(task={self.task.name!r}, backend={self.backend.value!r}, steps={self.steps.value})"
