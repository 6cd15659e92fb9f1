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
from collections.abc import Sequence
from typing import Any

import numpy as np

from mpcourse import formats
from mpcourse._validate import positive_finite

__all__ = ["running_sum", "subtract", "underflow_stats", "range_stats"]


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
    return {"format": fmt, "a stored": a_s, "b stored": b_s, "stored": stored, "exact": exact, "rel error": rel}


def underflow_stats(values: Any, *, scale: float = 1.0, fmt: str = "fp16") -> dict[str, float]:
    """How gradient values fare in ``fmt`` once multiplied by the loss scale.

    ``underflow_stats([1e-9, 1e-6, 1e-3, 0.0], scale=1.0)`` -> ``{"n": 4, "zero": 0.25,
    "flushed": 0.25, "subnormal": 0.25, "underflow": 0.75, ...}``.

    Args:
        values: gradient values (any shape; numpy or a list).
        scale: the loss scale they are multiplied by before they are stored (> 0). Default 1.0.
        fmt: the storage format, a :func:`mpcourse.formats.names` entry. Default ``"fp16"``.

    Returns:
        Fractions of all values: ``zero`` (exactly zero already), ``flushed`` (nonzero, but
        rounds to zero in ``fmt``), ``subnormal`` (nonzero and below ``min_normal``: precision
        lost), ``underflow`` (the three together: zero or subnormal in ``fmt``), ``overflow``
        (finite, but beyond ``fmt``'s max) and ``nonfinite``; plus ``n``, the count.
    """
    positive_finite("scale", scale)
    v = np.asarray(values, dtype=np.float64).ravel() * float(scale)
    n = v.size
    if n == 0:
        raise ValueError("underflow_stats needs at least one value")
    zero = int(np.sum(v == 0))
    flushed = int(formats.underflow_mask(v, fmt).sum())
    sub = int(formats.subnormal_mask(v, fmt).sum())
    return {
        "n": float(n),
        "zero": zero / n,
        "flushed": flushed / n,
        "subnormal": sub / n,
        "underflow": (zero + flushed + sub) / n,
        "overflow": float(formats.overflow_mask(v, fmt).sum()) / n,
        "nonfinite": float(np.sum(~np.isfinite(v))) / n,
    }


def range_stats(values: Any, *, fmt: str = "fp16") -> dict[str, float]:
    """How activation values sit in ``fmt``'s range.

    Returns ``max_abs`` (largest finite magnitude), ``headroom_bits`` (log2 of the format's max
    over ``max_abs``: below 0 means overflow; -inf when there is nothing finite), ``overflow``
    (share of finite values beyond the format's max), ``underflow`` (share of nonzero values
    that round to zero or a subnormal), ``nonfinite`` (share already inf/nan) and ``n``.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    n = v.size
    if n == 0:
        raise ValueError("range_stats needs at least one value")
    f = formats.info(fmt)
    finite = v[np.isfinite(v)]
    max_abs = float(np.max(np.abs(finite))) if finite.size else float("nan")
    headroom = math.log2(f.max / max_abs) if max_abs > 0 else (float("inf") if max_abs == 0 else -math.inf)
    small = formats.underflow_mask(v, fmt) | formats.subnormal_mask(np.where(np.isfinite(v), v, 0.0), fmt)
    return {
        "n": float(n),
        "max_abs": max_abs,
        "headroom_bits": headroom,
        "overflow": float(formats.overflow_mask(v, fmt).sum()) / n,
        "underflow": float(small.sum()) / n,
        "nonfinite": float(np.sum(~np.isfinite(v))) / n,
    }
