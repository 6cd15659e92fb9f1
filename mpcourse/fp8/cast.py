"""The FP8 cast, bit-exact with ``ml_dtypes``: scale, saturate, round, and count what was lost.

Usage::

    import numpy as np
    from mpcourse.fp8.cast import quantize, dequantize, cast_counts, FP8_MAX

    x = np.array([0.001, 3.0, 1000.0], np.float32)
    q = quantize(x, np.float32(1.0), "e4m3")      # ml_dtypes float8_e4m3fn: [0.00195, 3, 448]
    dequantize(q, np.float32(1.0))                # float32 again
    cast_counts(x, np.float32(1.0), q, "e4m3")    # {'saturated': 1, 'underflowed': 0}

One cast, as every engine does it (torchao's ``to_fp8_saturated`` and Transformer Engine's
cast kernels)::

    y = float32(x) * scale                 # the scale maps the tensor's range onto fp8's
    y = clip(y, -fp8_max, fp8_max)         # saturate: NaN stays NaN, inf becomes +-fp8_max
    q = round_to_nearest_even(y, fp8)      # 8 bits
    x_hat = float32(q) / scale             # dequantize (a division, as torchao's emulation)

The clip is why counting matters: ``torch``'s eager cast to ``float8_e4m3fn`` saturates too
(since 2.12: inf and 1e6 both become 448), so an overflow leaves no inf behind to find. The
counts are the only trace: ``saturated`` = values that a cast without the clip would have made
inf or NaN (``|x * scale|`` past fp8_max by more than half a step: above 464 for e4m3, from
61440 for e5m2; inf included), ``underflowed`` = non-zero values that became 0. A value a hair
above fp8_max (current scaling's ``amax * scale`` can be one ulp over) rounds to fp8_max
anyway and is not counted.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

__all__ = [
    "FP8_FORMATS",
    "FP8_MAX",
    "FP8_DTYPES",
    "EMAX",
    "OVERFLOW",
    "check_fp8",
    "quantize",
    "dequantize",
    "cast_counts",
]

FP8_FORMATS: tuple[str, ...] = ("e4m3", "e5m2")
# e4m3 is the "fn" variant (finite + NaN, no inf) that H100/Blackwell and torch's float8_e4m3fn use.
FP8_DTYPES: dict[str, Any] = {"e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2}
FP8_MAX: dict[str, float] = {"e4m3": 448.0, "e5m2": 57344.0}
# The exponent of the largest power of two below fp8_max (OCP MX spec, "emax_elem").
EMAX: dict[str, int] = {"e4m3": 8, "e5m2": 15}
# Where round-to-nearest-even leaves fp8_max: e4m3's max 448 = 1.110b * 2**8 has an even
# mantissa, so the tie 464 rounds down (overflow is |y| > 464); e5m2's 57344 = 1.11b * 2**15 is
# odd, so the tie 61440 rounds up to inf (overflow is |y| >= 61440). (threshold, tie overflows)
OVERFLOW: dict[str, tuple[float, bool]] = {"e4m3": (464.0, False), "e5m2": (61440.0, True)}


def check_fp8(name: str, fmt: Any) -> str:
    """``fmt`` if it is ``"e4m3"`` or ``"e5m2"``; otherwise a ValueError naming it."""
    if fmt not in FP8_FORMATS:
        raise ValueError(f"{name} must be 'e4m3' or 'e5m2', got {fmt!r}")
    return str(fmt)


def quantize(x: np.ndarray, scale: np.ndarray | np.float32, fmt: str) -> np.ndarray:
    """``x * scale`` saturated to ``+-fp8_max`` and rounded to ``fmt`` (an ml_dtypes array)."""
    check_fp8("fmt", fmt)
    with np.errstate(over="ignore", invalid="ignore"):
        y = np.asarray(x, dtype=np.float32) * np.asarray(scale, dtype=np.float32)
        y = np.clip(y, -FP8_MAX[fmt], FP8_MAX[fmt])
    return y.astype(FP8_DTYPES[fmt])


def dequantize(q: np.ndarray, scale: np.ndarray | np.float32) -> np.ndarray:
    """``float32(q) / scale``: the values the emulated matmul multiplies."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(q).astype(np.float32) / np.asarray(scale, dtype=np.float32)


def cast_counts(x: np.ndarray, scale: np.ndarray | np.float32, q: np.ndarray, fmt: str) -> dict[str, int]:
    """Saturated (the clip stopped an inf/NaN, inf inputs included) and underflowed (non-zero -> 0) values."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        y = x * np.asarray(scale, dtype=np.float32)
        unclipped = y.astype(FP8_DTYPES[fmt]).astype(np.float32)  # ml_dtypes: overflow -> inf or NaN
    return {
        "saturated": int(np.count_nonzero(~np.isfinite(unclipped) & ~np.isnan(y))),
        "underflowed": int(np.count_nonzero((x != 0) & (np.asarray(q).astype(np.float32) == 0))),
    }
