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

Every object keeps its widgets as attributes, so tests set values from Python.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from mpcourse import formats, plots
from mpcourse.config import PRECISIONS, TrainConfig
from mpcourse.data import Dataset
from mpcourse.engines import BACKENDS, missing_reason
from mpcourse.history import History
from mpcourse.studies import runs

__all__ = ["HistoryInspector", "ClipExplorer", "FormatExplorer", "LossScalingPanel", "Fp8TraceExplorer"]


# --- notebook 05: an inspector over a History ------------------------------------------------------


class HistoryInspector:
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

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(**kwargs) or {}
        bundle = dict(bundle[0] if isinstance(bundle, tuple) else bundle)
        bundle["text/plain"] = repr(self)
        return bundle


# --- notebook 04: gradient clipping ------------------------------------------------------------


class ClipExplorer:
    """Pick a clipping strategy and its threshold; the run retrains and the figure follows.

    Usage::

        ex = ClipExplorer(ds, mpc.TrainConfig(precision="fp16", lr=1e-2), model="deep_mlp")
        ex.strategy.value = "norm"; ex.max_norm.value = 0.5   # each change retrains (a few s)
        ex.policy(), ex.last_run.history.column("clipped").mean()

    The top panel shows the loss of this strategy against a run without clipping (trained once,
    same seed and data order); the bottom panel shows the pre-clip gradient norm with the
    threshold (norm clipping and AutoClip) and the steps the policy clipped.

    Args:
        task: the Dataset to train on.
        config: the TrainConfig (its ``clip`` is replaced by the chosen policy).
        model: a zoo model. Default ``"deep_mlp"``.
        steps: steps per run. Default 46 (two epochs of digits at batch 64).
        backend: ``"torch"`` or ``"mlx"``. Default ``"torch"``.
    """

    STRATEGIES = ("none", "norm", "value", "agc", "autoclip")

    def __init__(
        self, task: Dataset, config: TrainConfig, *, model: str = "deep_mlp", steps: int = 46, backend: str = "torch"
    ) -> None:
        from mpcourse.studies import clip_study

        if not isinstance(task, Dataset):
            raise TypeError(f"task must be an mpcourse Dataset, got {type(task).__name__}")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be an mpcourse TrainConfig, got {type(config).__name__}")
        self.task, self.config, self.model, self.steps, self.backend = task, config, model, steps, backend
        style = {"description_width": "150px"}
        slider = dict(style=style, continuous_update=False, readout_format=".3g")
        self.strategy = W.Dropdown(options=self.STRATEGIES, value="norm", description="strategy", style=style)
        self.max_norm = W.FloatLogSlider(
            value=1.0, base=10, min=-2, max=2, step=0.1, description="max_norm (norm)", **slider
        )
        self.clip_value = W.FloatLogSlider(
            value=0.05, base=10, min=-4, max=0, step=0.1, description="clip_value (value)", **slider
        )
        self.clipping = W.FloatLogSlider(
            value=0.01, base=10, min=-3, max=0, step=0.1, description="lambda (agc)", **slider
        )
        self.percentile = W.FloatSlider(
            value=10.0, min=1.0, max=100.0, step=1.0, description="percentile (autoclip)", **slider
        )
        self.status = W.HTML()
        self.baseline = clip_study.train(task, config, None, name="none", model=model, steps=steps, backend=backend)
        self.last_run = self.baseline
        self.figure = go.FigureWidget(self._empty_figure())
        for w in (self.strategy, self.max_norm, self.clip_value, self.clipping, self.percentile):
            w.observe(self.update, names="value")
        controls = W.VBox([self.strategy, self.max_norm, self.clip_value, self.clipping, self.percentile, self.status])
        self.widget = W.VBox([controls, self.figure])
        self.update()

    def policy(self) -> Any:
        """The clipping policy the controls describe (None for ``"none"``)."""
        from mpcourse.clipping import AGC, AutoClip, ClipByNorm, ClipByValue

        s = self.strategy.value
        return {
            "none": lambda: None,
            "norm": lambda: ClipByNorm(float(self.max_norm.value)),
            "value": lambda: ClipByValue(float(self.clip_value.value)),
            "agc": lambda: AGC(clipping=float(self.clipping.value)),
            "autoclip": lambda: AutoClip(percentile=float(self.percentile.value)),
        }[s]()

    def _empty_figure(self) -> go.Figure:
        fig = plots.clip_comparison(
            {"no clipping": self.baseline.history, "this strategy": self.baseline.history},
            title=f"Clipping explorer: {self.model} on {self.task.name!r}",
        )
        fig.add_trace(
            go.Scatter(x=[], y=[], mode="lines", name="threshold", line=dict(color="black", dash="dash")), row=2, col=1
        )
        return fig

    def update(self, change: Any = None) -> None:
        """Retrain with the current controls and redraw (called on every control change)."""
        from mpcourse.studies import clip_study

        active = {
            "norm": self.max_norm,
            "value": self.clip_value,
            "agc": self.clipping,
            "autoclip": self.percentile,
        }.get(self.strategy.value)
        for w in (self.max_norm, self.clip_value, self.clipping, self.percentile):
            w.disabled = w is not active
        self.status.value = "training..."
        try:
            run = clip_study.train(
                self.task,
                self.config,
                self.policy(),
                name=self.strategy.value,
                model=self.model,
                steps=self.steps,
                backend=self.backend,
            )
        except Exception as err:  # show it in the panel; the figure keeps the last good run
            self.status.value = f"<b>failed:</b> {html.escape(str(err))}"
            raise
        self.last_run = run
        h = run.history
        steps, norms = h.column("step"), h.grad_norms
        hit = h.column("clipped").astype(bool)
        # Traces of clip_comparison: per run: loss, norm, [clipped markers]; then the threshold.
        by_name = {t.name: t for t in self.figure.data}
        with self.figure.batch_update():
            by_name["this strategy"].y = plots.smooth(h.losses, 1)
            by_name["this strategy norm"].y = np.where(np.isfinite(norms), norms, np.nan)
            marks = by_name.get("this strategy clipped")
            if marks is not None:
                marks.x, marks.y = steps[hit], norms[hit]
            by_name["threshold"].x, by_name["threshold"].y = steps, run.thresholds
        final = clip_study.summarize({run.name: run})[0]
        loss_txt = f"{final['final_loss']:.3f}" if math.isfinite(final["final_loss"]) else "non-finite"
        base = clip_study.summarize({"none": self.baseline})[0]["final_loss"]
        self.status.value = (
            f"{self.policy()!r}: final loss {loss_txt} nats (no clipping: {base:.3f}), "
            f"clipped {final['clipped']:.0%} of steps, test accuracy {final['accuracy']:.1%}"
        )

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(**kwargs) or {}
        bundle = dict(bundle[0] if isinstance(bundle, tuple) else bundle)
        bundle["text/plain"] = repr(self)
        return bundle

    def __repr__(self) -> str:
        return f"ClipExplorer(model={self.model!r}, strategy={self.strategy.value!r}, steps={self.steps})"


# --- notebooks 01 and 02: format explorer, loss-scaling panel ---------------------------------------


class _Displayable:
    """Shows ``self.widget`` in Jupyter, with a short, stable text repr for plain outputs."""

    widget: W.Widget

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle = self.widget._repr_mimebundle_(**kwargs) or {}
        bundle = dict(bundle[0] if isinstance(bundle, tuple) else bundle)
        bundle["text/plain"] = repr(self)
        return bundle


# --- notebook 01: one number in every format ------------------------------------------------------


class FormatExplorer(_Displayable):
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


# --- notebook 02: the loss-scaling control panel ---------------------------------------------------


class LossScalingPanel(_Displayable):
    """Sliders for every loss-scaling setting, a Train button and a live loss/scale figure.

    Usage::

        panel = LossScalingPanel(mpc.data.load("underflow"), steps=60)
        panel                          # in a notebook: the controls and the figure
        panel.hysteresis.value = 3     # or drive it from Python
        run = panel.train()            # a short training; panel.figure now shows it

    Args:
        task: the Dataset to train on (its ``meta["loss_weight"]`` is honoured).
        steps: optimizer steps per click. Default 60.
        model: a zoo model name. Default ``"mlp"``.
        device: ``"auto"`` or an explicit device. Default ``"auto"``.
        backends: backends offered (default: those whose engine runs here).
        backend: the one selected first (default: the first offered).
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


# --- notebook 07: an FP8 recipe replayed over a tensor's steps ---------------------------------------


class Fp8TraceExplorer(_Displayable):
    """Set the recipe, its history length and margin; the amax/scale traces are redrawn.

    Usage::

        ex = Fp8TraceExplorer(steps)            # steps: one numpy tensor per training step
        ex.recipe.value = "delayed"; ex.history.value = 4; ex.margin.value = 2
        ex.trace["saturated"].sum()             # what the figure shows, from mpcourse.fp8.replay

    The replay is numpy (:func:`mpcourse.fp8.replay.replay`): every redraw is exact and instant.

    Args:
        steps: the tensor of each step (e.g. a layer's activations, one array per step).
        role: ``"input"``, ``"weight"`` or ``"grad_output"`` (sets the format). Default ``"input"``.
    """

    RECIPES = ("current", "delayed")

    def __init__(self, steps: Sequence[np.ndarray], role: str = "input") -> None:
        from mpcourse.fp8.replay import replay

        self._replay, self.steps, self.role = replay, [np.asarray(s, np.float32) for s in steps], role
        if not self.steps:
            raise ValueError("steps must hold at least one tensor")
        style = {"description_width": "120px"}
        self.recipe = W.Dropdown(options=self.RECIPES, value="delayed", description="recipe", style=style)
        self.history = W.IntSlider(value=16, min=1, max=64, description="history (steps)", style=style)
        self.margin = W.IntSlider(value=0, min=0, max=8, description="margin (2^m)", style=style)
        self.fmt = W.Dropdown(options=("hybrid", "e4m3", "e5m2"), value="hybrid", description="fmt", style=style)
        self.figure = go.FigureWidget()
        self.summary = W.HTML()
        for w in (self.recipe, self.history, self.margin, self.fmt):
            w.observe(self.update, names="value")
        self.widget = W.VBox([W.HBox([self.recipe, self.fmt]), self.history, self.margin, self.summary, self.figure])
        self.update()

    def make_recipe(self) -> Any:
        """The recipe the controls describe."""
        from mpcourse import fp8

        if self.recipe.value == "current":
            return fp8.CurrentScaling(fmt=self.fmt.value)
        return fp8.DelayedScaling(history=int(self.history.value), margin=int(self.margin.value), fmt=self.fmt.value)

    def update(self, change: Any = None) -> None:
        """Replay the recipe over the steps and redraw (called on every control change)."""
        recipe = self.make_recipe()
        self.history.disabled = self.margin.disabled = self.recipe.value == "current"
        self.trace = self._replay(recipe, self.steps, self.role)
        fig = plots.fp8_trace({repr(recipe): self.trace}, title=f"{recipe!r} over {len(self.steps)} steps")
        with self.figure.batch_update():
            self.figure.data = ()
            self.figure.add_traces(list(fig.data))
            self.figure.layout = fig.layout
        t = self.trace
        self.summary.value = (
            f"saturated values: <b>{int(t['saturated'].sum())}</b> in {int((t['saturated'] > 0).sum())} steps; "
            f"underflowed: <b>{int(t['underflowed'].sum())}</b>; mean relative error {100 * t['error'].mean():.2f} %"
        )

    def __repr__(self) -> str:
        return f"Fp8TraceExplorer({self.make_recipe()!r}, {len(self.steps)} steps, role={self.role!r})"
