"""Arithmetic carried out in a given float format, one rounding per operation (numpy only).

Usage::

    from mpcourse import numerics

    numerics.running_sum([1e-4] * 10_000, "fp16")[-1]   # 0.25: the sum stalls (spacing at 0.25 > 2e-4)
    numerics.running_sum([1e-4] * 10_000, "fp32")[-1]   # 1.0000535...: close to the exact 1.0
    numerics.subtract(1.001, 1.0, "fp16")               # {..., "stored": 0.0009765625, "rel error": 0.0234...}

Each addition is rounded to the format, as hardware that accumulates in that format would;
that is why mixed precision keeps sums (and master weights) in fp32.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from mpcourse import formats

__all__ = ["running_sum", "subtract"]


def running_sum(values: Sequence[float] | np.ndarray, fmt: str) -> np.ndarray:
    """The partial sums of ``values`` accumulated in ``fmt`` (each term and each sum rounded).

    Args:
        values: the terms, in order (finite numbers).
        fmt: a format name from :func:`mpcourse.formats.names`.

    Returns:
        float64 array of the same length: element ``i`` is the accumulator after ``i + 1`` terms.
    """
    dtype = formats.info(fmt).dtype
    terms = np.asarray(formats.cast(np.asarray(values, dtype=np.float64).ravel(), fmt), dtype=dtype)
    out = np.empty(len(terms), dtype=np.float64)
    acc = dtype.type(0)
    for i, t in enumerate(terms):
        acc = dtype.type(acc + t)  # one rounding to the format per addition
        out[i] = float(acc)
    return out


def subtract(a: float, b: float, fmt: str) -> dict[str, Any]:
    """``a - b`` with ``a`` and ``b`` first stored in ``fmt``, against the exact difference.

    Returns:
        ``{"format", "a stored", "b stored", "stored", "exact", "rel error"}``; the relative
        error of a difference of two close numbers is their rounding error divided by a small
        result -- catastrophic cancellation.
    """
    a_s, b_s = float(formats.round_to(a, fmt)), float(formats.round_to(b, fmt))
    stored = float(formats.round_to(a_s - b_s, fmt))
    exact = float(a) - float(b)
    rel = abs(stored - exact) / abs(exact) if exact != 0 else (0.0 if stored == 0 else math.inf)
    return {"format": fmt, "a stored": a_s, "b stored": b_s, "stored": stored, "exact": exact,
            "rel error": rel}
