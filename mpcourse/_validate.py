"""Argument checks shared by the framework-neutral modules (scaler, clipping).

Usage::

    from mpcourse._validate import positive_finite
    positive_finite("max_norm", 1.0)     # 1.0
    positive_finite("max_norm", -1)      # ValueError: max_norm must be a finite number > 0, got -1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["positive_finite", "check_choice"]


def positive_finite(name: str, value: Any) -> float:
    """``value`` as a float if it is a finite number > 0; otherwise a TypeError/ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number > 0, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    """A ValueError naming ``value`` and the allowed ones, unless ``value`` is among them."""
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}")
