"""A long run under a production GradScaler configuration: does the scale grow, and reach its clamp?

Usage::

    import mpcourse as mpc
    from mpcourse.production import long_run

    cfg = long_run.rust_report_config()          # fp16; init 65536, growth every 2000, clamp [1, 262144]
    run = long_run.run(mpc.data.load("digits"), cfg, steps=4500)   # minutes on a small CPU
    run.milestones()          # [(0, 65536.0), (2000, 131072.0), (4000, 262144.0)]: (step, new scale)
    run.clamp_reached_at      # 4000: the first step at the upper clamp, or None
    run.monitor.alerts        # overflow-rate alerts (rolling window) and a first-NaN alert

``RUST_REPORT`` is the configuration of the Rust report the course was asked to cover:
``GradScaler(init_scale=65536, growth_interval=2000)`` with the scale clamped to [1, 262144].
With growth factor 2, the clamp is two growths above the start: at least 4000 finite steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mpcourse._validate import int_at_least
from mpcourse.config import TrainConfig
from mpcourse.data import Dataset
from mpcourse.engines import make_engine
from mpcourse.history import History
from mpcourse.production.monitor import Monitor

__all__ = ["RUST_REPORT", "rust_report_config", "LongRun", "run"]

#: The scaler settings of the Rust report: start, growth interval and the clamp.
RUST_REPORT: dict[str, float] = {
    "init_scale": 65536.0,
    "growth_interval": 2000,
    "min_scale": 1.0,
    "max_scale": 262144.0,
}


def rust_report_config(**overrides: Any) -> TrainConfig:
    """``TrainConfig(precision="fp16", loss_scale="dynamic", **RUST_REPORT)``, with overrides."""
    settings: dict[str, Any] = {"precision": "fp16", "loss_scale": "dynamic", **RUST_REPORT}
    settings["growth_interval"] = int(settings["growth_interval"])
    settings.update(overrides)
    return TrainConfig(**settings)


@dataclass
class LongRun:
    """A finished long run: its History, its Monitor (with alerts) and the test evaluation."""

    history: History
    monitor: Monitor
    evaluation: dict[str, float]
    config: TrainConfig

    def milestones(self) -> list[tuple[int, float]]:
        """``(step, scale)`` at the start and at every step where the scale changed."""
        out: list[tuple[int, float]] = []
        for r in self.history.records:
            if not out or r.scale != out[-1][1]:
                out.append((r.step, float(r.scale)))
        return out

    @property
    def clamp_reached_at(self) -> int | None:
        """The first step whose scale is the upper clamp (``config.max_scale``), or None."""
        top = self.config.max_scale
        return next((r.step for r in self.history.records if top is not None and r.scale >= top), None)

    def summary(self) -> dict[str, Any]:
        """Steps, skipped steps, the milestones, the clamp step, alerts, loss and accuracy."""
        return {
            "steps": len(self.history),
            "skipped_steps": self.history.skipped_steps,
            "milestones": self.milestones(),
            "clamp_reached_at": self.clamp_reached_at,
            "max_scale_seen": max(float(r.scale) for r in self.history.records) if len(self.history) else None,
            "alerts": list(self.monitor.alerts),
            "final_loss": float(self.history.losses[-1]) if len(self.history) else None,
            "accuracy": self.evaluation["accuracy"],
            "seconds": float(self.history.total_seconds),
        }


def run(
    data: Dataset,
    config: TrainConfig | None = None,
    *,
    steps: int = 4500,
    backend: str = "torch",
    model: str = "mlp",
    device: str = "cpu",
    window: int = 100,
    max_overflow_rate: float = 0.05,
) -> LongRun:
    """Train ``steps`` steps under ``config`` (default :func:`rust_report_config`) with a
    :class:`Monitor` that alerts when the overflow rate over ``window`` steps passes
    ``max_overflow_rate``; evaluate on the test split.

    Args:
        data: the task (a :class:`~mpcourse.data.Dataset`).
        config: the configuration. Default :func:`rust_report_config`.
        steps: steps to train, >= 1. Default 4500 (past the second growth at 4000).
        backend, model, device: as for ``make_engine``. Defaults "torch", "mlp", "cpu".
        window, max_overflow_rate: the monitor's alert. Defaults 100 and 0.05.
    """
    int_at_least("steps", steps, 1)
    cfg = rust_report_config() if config is None else config
    mon = Monitor(window=window, memory=False, max_overflow_rate=max_overflow_rate)
    eng = make_engine(backend, model, cfg, device=device, data=data, verbose=False)
    hist = eng.fit(data, steps=steps, progress=False, callback=mon)
    return LongRun(hist, mon, eng.evaluate(data), cfg)
