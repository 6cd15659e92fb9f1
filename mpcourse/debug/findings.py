"""What a diagnosis reports, and the thresholds it uses: Finding, Diagnosis, Thresholds.

Usage::

    import mpcourse as mpc

    t = mpc.debug.Thresholds(max_overflow_rate=0.1)     # validated; every field has a default
    found = mpc.debug.diagnose(hist, thresholds=t)     # a Diagnosis: a list of Finding, worst first
    found.kinds, found[0].fix
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KINDS", "Finding", "Diagnosis", "Thresholds", "check_value"]


KINDS: tuple[str, ...] = ("nan_loss", "scale_too_high", "underflow_stall", "worse_than_reference", "no_speedup")


@dataclass(frozen=True)
class Finding:
    """One symptom found in a History.

    Attributes:
        kind: one of :data:`KINDS`.
        symptom: what you see, in one sentence.
        evidence: the numbers behind it, in words (steps and values).
        fix: what to do about it.
        steps: the steps the evidence points at (e.g. the first NaN), 0-based.
        values: the measured numbers, by name (for tests and plots).
    """

    kind: str
    symptom: str
    evidence: str
    fix: str
    steps: tuple[int, ...] = ()
    values: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"[{self.kind}] {self.symptom}\n  evidence: {self.evidence}\n  fix: {self.fix}"


class Diagnosis(list):
    """The findings of :func:`diagnose`, worst first: a plain list with a table view."""

    @property
    def kinds(self) -> list[str]:
        """The ``kind`` of each finding, in order."""
        return [f.kind for f in self]

    def __repr__(self) -> str:
        if not self:
            return "Diagnosis: no findings (no symptom passed its threshold)"
        return "\n".join([f"Diagnosis: {len(self)} finding(s)"] + [repr(f) for f in self])

    def _repr_html_(self) -> str:
        if not self:
            return "<p><b>Diagnosis:</b> no findings (no symptom passed its threshold)</p>"
        cell = 'style="text-align:left; vertical-align:top"'
        rows = "".join(
            f"<tr><td {cell}><code>{html.escape(f.kind)}</code></td><td {cell}>{html.escape(f.symptom)}"
            f"</td><td {cell}>{html.escape(f.evidence)}</td><td {cell}>{html.escape(f.fix)}</td></tr>"
            for f in self
        )
        head = "".join(f"<th {cell}>{h}</th>" for h in ("kind", "symptom", "evidence", "fix"))
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def check_value(
    name: str,
    value: Any,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise TypeError(f"threshold {name} must be a finite {'int' if integer else 'number'}, got {value!r}")
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        raise ValueError(f"threshold {name} must be {' and '.join(s for s in (lo, hi) if s)}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """When :func:`diagnose` calls something a symptom. Every field is validated.

    Args:
        nan_steps: non-finite losses tolerated before ``nan_loss`` fires (>= 0). Default 0.
        max_overflow_rate: share of overflowing steps, after the dynamic scale's first
            calibration, above which ``scale_too_high`` fires (in (0, 1)). Default 0.05, the
            production check's limit.
        min_steps: steps needed (after calibration) to judge an overflow rate (>= 1). Default 20.
        window: steps averaged at the start and at the end of a run to compare losses (>= 1).
            Default 20.
        min_improvement: a run whose loss falls by less than this fraction of its first
            window's mean has stalled (in [0, 1)). Default 0.05.
        zero_grad_fraction: share of finite steps with an all-zero gradient that counts as
            underflow (in (0, 1]). Default 0.2.
        low_scale: a loss scale at or below this no longer lifts small gradients out of
            fp16's underflow range (> 0). Default 1.0.
        underflow_grad_ratio: a median grad norm this many times smaller than the reference's
            counts as underflow (> 1). Default 10.
        max_shortfall: how much of the reference's loss improvement the run may miss before
            ``worse_than_reference`` fires (in (0, 1)). Default 0.1.
        max_accuracy_drop: final accuracy drop against the reference (fraction, 0.01 = one
            point) tolerated (in [0, 1)). Default 0.01.
        min_speedup: mixed precision must reach this many times the reference's samples/s, or
            ``no_speedup`` fires (> 0). Default 1.1.
        timing_warmup: first steps left out of timings (>= 0). Default 5.
    """

    nan_steps: int = 0
    max_overflow_rate: float = 0.05
    min_steps: int = 20
    window: int = 20
    min_improvement: float = 0.05
    zero_grad_fraction: float = 0.2
    low_scale: float = 1.0
    underflow_grad_ratio: float = 10.0
    max_shortfall: float = 0.1
    max_accuracy_drop: float = 0.01
    min_speedup: float = 1.1
    timing_warmup: int = 5

    def __post_init__(self) -> None:
        check_value("nan_steps", self.nan_steps, integer=True, low=0)
        check_value("max_overflow_rate", self.max_overflow_rate, low=0, high=1, low_open=True, high_open=True)
        check_value("min_steps", self.min_steps, integer=True, low=1)
        check_value("window", self.window, integer=True, low=1)
        check_value("min_improvement", self.min_improvement, low=0, high=1, high_open=True)
        check_value("zero_grad_fraction", self.zero_grad_fraction, low=0, high=1, low_open=True)
        check_value("low_scale", self.low_scale, low=0, low_open=True)
        check_value("underflow_grad_ratio", self.underflow_grad_ratio, low=1, low_open=True)
        check_value("max_shortfall", self.max_shortfall, low=0, high=1, low_open=True, high_open=True)
        check_value("max_accuracy_drop", self.max_accuracy_drop, low=0, high=1, high_open=True)
        check_value("min_speedup", self.min_speedup, low=0, low_open=True)
        check_value("timing_warmup", self.timing_warmup, integer=True, low=0)
