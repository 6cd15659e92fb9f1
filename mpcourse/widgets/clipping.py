"""ClipExplorer: a clipping strategy and its sliders; each change retrains and redraws.

Usage::

    ex = widgets.ClipExplorer(mpc.data.load("digits"), mpc.TrainConfig(precision="fp16", lr=1e-2))
    ex.strategy.value = "autoclip"
"""

from __future__ import annotations

import html
import math
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from mpcourse import plots
from mpcourse.config import TrainConfig
from mpcourse.data import Dataset
from mpcourse.widgets.display import Displayable

__all__ = ["ClipExplorer"]


class ClipExplorer(Displayable):
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

    def __repr__(self) -> str:
        return f"ClipExplorer(model={self.model!r}, strategy={self.strategy.value!r}, steps={self.steps})"
