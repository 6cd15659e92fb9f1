"""Validate a mixed precision run against fp32: accuracy, speed, overflows, one verdict.

Usage::

    import mpcourse as mpc
    from mpcourse import production as prod

    report = prod.validate(mpc.data.load("digits"), precision="fp16", epochs=3)
    report.passed, report.checks        # each Check names what it measured and its threshold
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mpcourse._validate import int_at_least
from mpcourse.config import TrainConfig
from mpcourse.data import Dataset
from mpcourse.engines import make_engine
from mpcourse.history import History
from mpcourse.production.fallback import check_precision

__all__ = ["Check", "judge", "ValidationReport", "validate"]


# --- validation against fp32 ---------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """One pass/fail line of a validation."""

    name: str
    value: float
    threshold: float
    rule: str
    passed: bool


def judge(
    *,
    fp32_accuracy: float,
    mixed_accuracy: float,
    overflow_rate: float,
    speedup: float,
    max_accuracy_drop: float = 0.01,
    max_overflow_rate: float = 0.05,
    min_speedup: float | None = None,
) -> tuple[Check, ...]:
    """The pass/fail rules of :func:`validate`, as a pure function.

    Accuracy: mixed may be at most ``max_accuracy_drop`` (a fraction: 0.01 = 1 point) below
    fp32; being better passes. Overflow rate: strictly below ``max_overflow_rate``. Speedup
    (fp32 time / mixed time): judged only when ``min_speedup`` is given, since on a CPU
    half precision is usually slower and that is no defect of the run.
    """
    drop = fp32_accuracy - mixed_accuracy
    checks = [
        Check(
            "accuracy drop vs fp32",
            drop,
            max_accuracy_drop,
            "<=",
            bool(math.isfinite(drop) and drop <= max_accuracy_drop + 1e-12),
        ),
        Check("overflow rate", overflow_rate, max_overflow_rate, "<", bool(overflow_rate < max_overflow_rate)),
    ]
    if min_speedup is not None:
        checks.append(
            Check(
                "speedup vs fp32", speedup, min_speedup, ">=", bool(math.isfinite(speedup) and speedup >= min_speedup)
            )
        )
    return tuple(checks)


@dataclass(frozen=True)
class ValidationReport:
    """fp32 against mixed precision on one task; ``passed`` when every check passed."""

    precision: str
    fp32_accuracy: float
    mixed_accuracy: float
    speedup: float
    overflow_rate: float
    checks: tuple[Check, ...]
    fp32_history: History = field(repr=False)
    mixed_history: History = field(repr=False)
    warmup_steps: int = field(default=5, repr=False)
    test_samples: int = field(default=0, repr=False)

    @property
    def accuracy_stderr_points(self) -> float:
        """The standard error of the fp32 accuracy on this test set, in points:
        ``100 * sqrt(p (1 - p) / n)``. A tolerance below about twice this is inside the noise
        (e.g. 1.9 points for p = 0.84 on 360 samples). NaN when the test size is unknown."""
        n, p = self.test_samples, self.fp32_accuracy
        return 100.0 * math.sqrt(p * (1.0 - p) / n) if n > 0 else float("nan")

    @property
    def speedup_spread(self) -> tuple[float, float]:
        """The p10-p90 range of the speedup: fp32's p10 seconds per sample over the mixed run's
        p90, up to fp32's p90 over the mixed p10 (the steps after ``warmup_steps``)."""
        a = _per_sample(self.fp32_history, self.warmup_steps)
        b = _per_sample(self.mixed_history, self.warmup_steps)
        return (float(np.percentile(a, 10) / np.percentile(b, 90)), float(np.percentile(a, 90) / np.percentile(b, 10)))

    @property
    def speedup_text(self) -> str:
        """The speedup with its spread, e.g. ``'0.39x (p10-p90 0.21-0.62x)'``."""
        lo, hi = self.speedup_spread
        return f"{self.speedup:.2f}x (p10-p90 {lo:.2f}-{hi:.2f}x)"

    @property
    def accuracy_diff(self) -> float:
        """Mixed minus fp32 accuracy, in points (percentage points)."""
        return 100.0 * (self.mixed_accuracy - self.fp32_accuracy)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def table(self) -> list[dict[str, Any]]:
        """The checks as rows, ready for a DataFrame or a printout."""
        return [
            {
                "check": c.name,
                "value": c.value,
                "rule": f"{c.rule} {c.threshold:g}",
                "result": "PASS" if c.passed else "FAIL",
            }
            for c in self.checks
        ]


def _per_sample(h: History, skip: int) -> np.ndarray:
    rs = h.records[skip:] or h.records
    return np.array([r.seconds / r.samples for r in rs], dtype=float)


def _seconds_per_sample(h: History, skip: int) -> float:
    # The median step: one step stalled by another process does not decide the verdict.
    return float(np.median(_per_sample(h, skip)))


def validate(
    data: Dataset,
    *,
    backend: str = "torch",
    model: str = "mlp",
    precision: str = "fp16",
    config: TrainConfig | None = None,
    epochs: int = 3,
    device: str = "auto",
    size: str = "small",
    max_accuracy_drop: float = 0.01,
    max_overflow_rate: float = 0.05,
    min_speedup: float | None = None,
    warmup_steps: int = 5,
) -> ValidationReport:
    """Train fp32 and ``precision`` on the same task, seed and data order; compare them.

    The two runs advance in turns, one step each, so a busy machine slows both alike; the
    speedup is the ratio of their median device-synchronised seconds per sample.

    Args:
        data: the dataset (train split trained on, test split scored).
        backend, model, device, size: as for :func:`mpcourse.make_engine`.
        precision: the mixed precision under test. Default ``"fp16"``.
        config: base TrainConfig (its precision is replaced). Default ``TrainConfig()``.
        epochs: epochs for each run. Default 3.
        max_accuracy_drop, max_overflow_rate, min_speedup: see :func:`judge`.
        warmup_steps: first steps left out of the timing (allocation, caches). Default 5.
    """
    check_precision("precision", precision)
    int_at_least("epochs", epochs, 1)
    base = config or TrainConfig()
    engines = {
        p: make_engine(
            backend,
            model,
            base.replace(precision=p, loss_scale=base.loss_scale if p == base.precision else "auto"),
            device=device,
            data=data,
            size=size,
            verbose=False,
        )
        for p in ("fp32", precision)
    }
    hists = {p: History(meta=e.describe()) for p, e in engines.items()}
    # Interleaved step by step, so both runs see the same machine load when they are timed.
    for _ in range(epochs * engines["fp32"].steps_per_epoch(len(data.x_train))):
        for p, e in engines.items():
            hists[p].extend(e.fit(data, steps=1, progress=False))
    runs = {p: (hists[p], engines[p].evaluate(data)["accuracy"]) for p in engines}
    (h32, a32), (hmp, amp) = runs["fp32"], runs[precision]
    speedup = _seconds_per_sample(h32, warmup_steps) / _seconds_per_sample(hmp, warmup_steps)
    checks = judge(
        fp32_accuracy=a32,
        mixed_accuracy=amp,
        overflow_rate=hmp.overflow_rate,
        speedup=speedup,
        max_accuracy_drop=max_accuracy_drop,
        max_overflow_rate=max_overflow_rate,
        min_speedup=min_speedup,
    )
    return ValidationReport(
        precision, a32, amp, speedup, hmp.overflow_rate, checks, h32, hmp, warmup_steps, len(data.y_test)
    )
