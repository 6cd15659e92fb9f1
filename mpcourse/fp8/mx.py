"""Microscaling (OCP MX v1.0, MXFP8): one power-of-two E8M0 scale per block of 32 values.

Usage::

    from mpcourse.fp8 import MXScaling

    r = MXScaling()                                   # block=32, e4m3, the spec's floor rule
    r.scale("fc1.input", "input", np.float32([[3.5]]))    # [[128.]] = 2**-(floor(log2 3.5) - 8)

The rule (OCP Microscaling Formats (MX) Specification v1.0, section 6.3), per block of 32
values along the contraction dim, for every operand of every GEMM::

    if rounding == "floor":                      # the spec
        e = floor(log2(amax)) - emax             # emax = 8 for e4m3, 15 for e5m2
    else:                                        # "ceil": NVIDIA's RCEIL (cuBLAS, TE's MXFP8)
        e = ceil(log2(amax / fp8_max))
    e = clip(e, -127, 127)                       # E8M0: 2**-127 .. 2**127 (an all-zero block: -127)
    scale = 2**-e                                # the multiplier; the stored E8M0 byte is e + 127
    q = cast(x * scale)                          # exact: multiplying by 2**-e only moves the exponent

With ``"floor"`` the block's amax lands in [2**emax, 2**(emax+1)), so its top values above
fp8_max (448 for e4m3) saturate: the spec accepts that, and the counts show it. ``"ceil"``
never saturates and gives up up to one binade at the bottom.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from mpcourse.fp8.base import Fp8Recipe, Tile, check_block, check_role, hybrid_formats
from mpcourse.fp8.cast import EMAX, FP8_MAX

__all__ = ["MXScaling", "floor_log2", "ceil_log2"]

ROUNDINGS = ("floor", "ceil")


def floor_log2(x: np.ndarray) -> np.ndarray:
    """Exact ``floor(log2(x))`` of positive finite float32 values (frexp, no log rounding)."""
    _, p = np.frexp(np.asarray(x, dtype=np.float32))
    return (p - 1).astype(np.int64)


def ceil_log2(x: np.ndarray) -> np.ndarray:
    """Exact ``ceil(log2(x))`` of positive finite float32 values."""
    m, p = np.frexp(np.asarray(x, dtype=np.float32))
    return np.where(m == 0.5, p - 1, p).astype(np.int64)


class MXScaling(Fp8Recipe):
    """OCP MX: 1 x ``block`` blocks along the contraction dim, E8M0 (power-of-two) scales.

    Args:
        block: values per scale, >= 1. Default 32 (the spec's MXFP8).
        fmt: ``"e4m3"`` (MXFP8 E4M3, as Transformer Engine's MXFP8BlockScaling), ``"hybrid"``
            or ``"e5m2"``. Default ``"e4m3"``.
        rounding: ``"floor"`` (the spec) or ``"ceil"`` (NVIDIA's RCEIL). Default ``"floor"``.
    """

    kind: ClassVar[str] = "mx"

    def __init__(self, block: int = 32, fmt: str = "e4m3", rounding: str = "floor") -> None:
        self.block = check_block("block", block)
        self.formats = hybrid_formats(fmt)
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be 'floor' (OCP MX spec) or 'ceil' (RCEIL); got {rounding!r}")
        self._fmt, self.rounding = fmt, rounding

    def settings(self) -> dict[str, Any]:
        return {"block": self.block, "fmt": self._fmt, "rounding": self.rounding}

    def tile(self, role: str) -> Tile:
        check_role(role)
        return (1, self.block)

    def exponent(self, role: str, amax: np.ndarray) -> np.ndarray:
        """The unbiased E8M0 exponents ``e`` (scale = 2**-e) for these block amaxes."""
        fmt = self.fmt(check_role(role))
        a = np.asarray(amax, dtype=np.float32)
        ok = np.isfinite(a) & (a > 0)
        safe = np.where(ok, a, np.float32(1.0))
        with np.errstate(over="ignore"):
            e = floor_log2(safe) - EMAX[fmt] if self.rounding == "floor" else ceil_log2(safe / np.float32(FP8_MAX[fmt]))
        # An all-zero block gets the smallest E8M0 value (e = -127); an inf/NaN one the largest.
        e = np.where(ok, e, np.where(a == 0, -127, 127))
        return np.clip(e, -127, 127)

    def scale(self, key: str, role: str, amax: np.ndarray, *, record: bool = True) -> np.ndarray:
        return np.exp2(-self.exponent(role, amax).astype(np.float64)).astype(np.float32)
