"""A training monitor: throughput, overflow rate, scale, memory and NaN count, step by step.

Usage::

    import mpcourse as mpc
    from mpcourse.production.monitor import Monitor

    mon = Monitor(window=50)
    eng.fit(ds, epochs=3, callback=mon)   # a fit() callback: records every step, never stops it
    mon.summary()                         # {'samples_per_second': ..., 'overflow_rate': ..., ...}
    mon.to_csv("run.csv"); mon.to_json("run.json")
    mon.to_tensorboard("runs/exp1")       # where TensorBoard is installed; else None

    mon = Monitor(window=50, max_overflow_rate=0.05)   # alert when the rolling rate passes 5 %
    eng.fit(ds, epochs=3, callback=mon)
    mon.alerts                            # [{'step': 61, 'kind': 'overflow_rate', 'value': 0.06, ...}]

Throughput and overflow rate are given both over the last ``window`` steps (what an alert
watches: ``max_overflow_rate`` raises one when a full window's rate passes it, once per
crossing, and a first non-finite loss raises a ``nan`` alert) and over the whole run
(``summary``). Step time is the engine's own, device-synchronised measurement. Memory is the
process's resident set (psutil) and, on an accelerator, what the framework has allocated there.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections import deque
from pathlib import Path
from typing import Any

from mpcourse._validate import int_at_least

__all__ = ["Monitor", "COLUMNS"]

COLUMNS: tuple[str, ...] = (
    "step",
    "epoch",
    "precision",
    "loss",
    "scale",
    "grad_norm",
    "found_inf",
    "skipped",
    "seconds",
    "samples",
    "samples_per_second",
    "overflow_rate",
    "overflow_steps",
    "nan_count",
    "rss_mb",
    "device_mb",
)


def _rss_mb() -> float:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / 2**20


class Monitor:
    """Per-step health of a run, ready to plot, alert on or export.

    Args:
        window: steps in the rolling throughput and overflow rate, >= 1. Default 50.
        memory: read memory every step (a cheap system call). Default True.
        max_overflow_rate: raise an ``overflow_rate`` alert when the rate over a full window
            passes this (0 to 1); it re-arms once the rate is back at or below it. Default None:
            no overflow alert.
        warn: also emit each alert as a :class:`UserWarning`. Default False.

    Alerts are dicts in :attr:`alerts`: ``step``, ``kind`` ("overflow_rate" or "nan"),
    ``value``, ``threshold`` and ``window`` (the first and last step the value covers).
    """

    def __init__(
        self, window: int = 50, memory: bool = True, *, max_overflow_rate: float | None = None, warn: bool = False
    ) -> None:
        int_at_least("window", window, 1)
        if max_overflow_rate is not None and (
            isinstance(max_overflow_rate, bool)
            or not isinstance(max_overflow_rate, (int, float))
            or not 0 <= max_overflow_rate < 1
        ):
            raise ValueError(f"max_overflow_rate must be None or a number in [0, 1), got {max_overflow_rate!r}")
        self.window, self.memory = window, bool(memory)
        self.max_overflow_rate = None if max_overflow_rate is None else float(max_overflow_rate)
        self.warn = bool(warn)
        self.alerts: list[dict[str, Any]] = []
        self._armed = True
        self.rows: list[dict[str, Any]] = []
        self._recent: deque[tuple[int, float, bool]] = deque(maxlen=window)
        self._overflows = 0
        self._nans = 0

    def __call__(self, engine: Any, record: Any) -> bool:
        """The ``fit(callback=...)`` form: record the step and let training go on."""
        self.update(record, engine)
        return False

    def update(self, record: Any, engine: Any = None) -> dict[str, Any]:
        """Record one StepRecord (``engine`` adds precision and device memory); returns the row."""
        self._recent.append((record.samples, record.seconds, record.found_inf))
        self._overflows += int(record.found_inf)
        # NaN count: steps whose loss or gradient norm was not finite.
        self._nans += int(not (math.isfinite(record.loss) and math.isfinite(record.grad_norm)))
        secs = sum(s for _, s, _ in self._recent)
        row = {
            "step": record.step,
            "epoch": record.epoch,
            "precision": engine.config.precision if engine is not None else "",
            "loss": record.loss,
            "scale": record.scale,
            "grad_norm": record.grad_norm,
            "found_inf": bool(record.found_inf),
            "skipped": bool(record.skipped),
            "seconds": record.seconds,
            "samples": record.samples,
            "samples_per_second": sum(n for n, _, _ in self._recent) / secs if secs > 0 else float("nan"),
            "overflow_rate": sum(f for _, _, f in self._recent) / len(self._recent),
            "overflow_steps": self._overflows,
            "nan_count": self._nans,
            "rss_mb": _rss_mb() if self.memory else float("nan"),
            "device_mb": self._device_mb(engine),
        }
        self.rows.append(row)
        self._check_alerts(row)
        return row

    def _alert(self, alert: dict[str, Any]) -> None:
        self.alerts.append(alert)
        if self.warn:
            warnings.warn(
                f"mpcourse monitor: {alert['kind']} {alert['value']:.3g} at step {alert['step']} "
                f"(threshold {alert['threshold']:g}, steps {alert['window'][0]}..{alert['window'][1]})",
                stacklevel=3,
            )

    def _check_alerts(self, row: dict[str, Any]) -> None:
        if row["nan_count"] == 1 and not any(a["kind"] == "nan" for a in self.alerts):
            self._alert(
                {"step": row["step"], "kind": "nan", "value": row["loss"], "threshold": 0.0,
                 "window": (row["step"], row["step"])}
            )  # fmt: skip
        if self.max_overflow_rate is None or len(self._recent) < self.window:
            return
        rate = row["overflow_rate"]
        if rate > self.max_overflow_rate and self._armed:
            self._armed = False
            first = self.rows[-self.window]["step"]
            self._alert(
                {"step": row["step"], "kind": "overflow_rate", "value": rate, "threshold": self.max_overflow_rate,
                 "window": (first, row["step"])}
            )  # fmt: skip
        elif rate <= self.max_overflow_rate:
            self._armed = True

    def _device_mb(self, engine: Any) -> float:
        if engine is None or not self.memory:
            return float("nan")
        from mpcourse.engines.portable import device_memory_bytes

        b = device_memory_bytes(engine)
        return float("nan") if b is None else b / 2**20

    @classmethod
    def from_history(cls, history: Any, window: int = 50) -> Monitor:
        """A monitor filled from a finished History (no memory readings: they were not taken)."""
        mon = cls(window=window, memory=False)
        for rec in history.records:
            mon.update(rec).update(precision=history.meta.get("precision", ""))
        return mon

    def column(self, name: str) -> list[Any]:
        """One column over all recorded steps."""
        if name not in COLUMNS:
            raise ValueError(f"unknown column {name!r}; columns: {', '.join(COLUMNS)}")
        return [r[name] for r in self.rows]

    def summary(self) -> dict[str, Any]:
        """Whole-run figures: throughput, overflow rate, NaN count, final scale, peak memory."""
        if not self.rows:
            return {"steps": 0}
        secs = sum(r["seconds"] for r in self.rows)
        finite = [r["rss_mb"] for r in self.rows if math.isfinite(r["rss_mb"])]
        dev = [r["device_mb"] for r in self.rows if math.isfinite(r["device_mb"])]
        return {
            "steps": len(self.rows),
            "samples_per_second": sum(r["samples"] for r in self.rows) / secs if secs > 0 else float("nan"),
            "overflow_rate": self._overflows / len(self.rows),
            "overflow_steps": self._overflows,
            "nan_count": self._nans,
            "final_scale": self.rows[-1]["scale"],
            "final_loss": self.rows[-1]["loss"],
            "peak_rss_mb": max(finite) if finite else float("nan"),
            "peak_device_mb": max(dev) if dev else float("nan"),
            "alerts": len(self.alerts),
        }

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write one row per step with :data:`COLUMNS` as the header."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(self.rows)
        return path

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write ``{"summary": ..., "rows": [...]}`` (non-finite values as JSON's NaN/Infinity)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"window": self.window, "summary": self.summary(), "rows": self.rows}))
        return path

    def to_tensorboard(self, logdir: str | os.PathLike[str]) -> Path | None:
        """Write every numeric column as TensorBoard scalars; None when TensorBoard is not installed."""
        from mpcourse.engines.torch.tensorboard import summary_writer

        writer = summary_writer(str(logdir))
        if writer is None:
            return None
        try:
            for row in self.rows:
                for name in COLUMNS:
                    v = row[name]
                    if name not in ("step", "precision") and isinstance(v, (int, float)) and math.isfinite(v):
                        writer.add_scalar(f"mpcourse/{name}", float(v), global_step=row["step"])
        finally:
            writer.close()
        return Path(logdir)

    def __repr__(self) -> str:
        s = self.summary()
        if not s["steps"]:
            return "Monitor(0 steps)"
        return (
            f"Monitor({s['steps']} steps, {s['samples_per_second']:.0f} samples/s, overflow rate "
            f"{s['overflow_rate']:.1%}, NaN steps {s['nan_count']}, final scale {s['final_scale']:g}, "
            f"{len(self.alerts)} alert(s))"
        )
