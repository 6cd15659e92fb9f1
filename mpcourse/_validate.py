"""Argument checks shared by every module: positive numbers, choices, counts.

Usage::

    from mpcourse._validate import positive_finite
    positive_finite("max_norm", 1.0)     # 1.0
    positive_finite("max_norm", -1)      # ValueError: max_norm must be a finite number > 0, got -1.0
    int_at_least("epochs", 3, 1)         # 3; a bool, a float or 0 is a ValueError naming epochs
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["positive_finite", "check_choice", "int_at_least"]


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


def int_at_least(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int when it is an integer (not a bool) >= ``minimum``; else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)
