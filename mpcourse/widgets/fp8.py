"""Fp8TraceExplorer: an FP8 recipe replayed over a tensor's steps; amax/scale traces redraw.

Usage::

    from mpcourse import widgets

    ex = widgets.Fp8TraceExplorer(steps)    # fp8 recipe, history and margin; amax/scale traces redraw
    ex.recipe.value = "delayed"; ex.history.value = 4; ex.margin.value = 2
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from mpcourse import plots
from mpcourse.widgets.display import Displayable

__all__ = ["Fp8TraceExplorer"]


class Fp8TraceExplorer(Displayable):
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
