"""Rowwise scaling (torchao's "rowwise" recipe): one scale per row of each GEMM operand.

Usage::

    from mpcourse.fp8 import RowwiseScaling

    r = RowwiseScaling()
    r.tile("input")                                 # (1, None): one scale per row
    r.scale("fc1.input", "input", np.float32([[3.5], [0.1]]))   # [[128.], [4096.]]

The rule (``Float8LinearConfig.from_recipe_name("rowwise")``)::

    for every GEMM C = A @ B:                       # y = x @ w.T, dx = dy @ w, dw = dy.T @ x
        amax_A[i] = max_k |A[i, k]|                 # per row of A, over the contraction dim
        amax_B[j] = max_k |B[k, j]|                 # per column of B, likewise
        scale = 2**floor(log2(fp8_max / max(amax, 1e-12)))    # power-of-two scales
        C = (cast(A * s_A) / s_A) @ (cast(B * s_B) / s_B)     # e4m3 everywhere

Scaling along the contraction dim means each operand is cast twice, once per GEMM it enters
(x by rows for y, by columns for dw): an outlier spoils only its own row, not the tensor.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from mpcourse.fp8.base import Fp8Recipe, Tile, amax_to_scale, check_role, hybrid_formats

__all__ = ["RowwiseScaling"]


class RowwiseScaling(Fp8Recipe):
    """One scale per row (along the contraction dim) of every operand of every GEMM.

    Args:
        fmt: ``"e4m3"`` (torchao's rowwise recipe), ``"hybrid"`` or ``"e5m2"``. Default ``"e4m3"``.
        power_of_2: round the scales down to powers of two. Default True (as torchao's recipe).
    """

    kind: ClassVar[str] = "rowwise"

    def __init__(self, fmt: str = "e4m3", power_of_2: bool = True) -> None:
        self.formats = hybrid_formats(fmt)
        if not isinstance(power_of_2, bool):
            raise TypeError(f"power_of_2 must be a bool, got {power_of_2!r}")
        self._fmt, self.power_of_2 = fmt, power_of_2

    def settings(self) -> dict[str, Any]:
        return {"fmt": self._fmt, "power_of_2": self.power_of_2}

    def tile(self, role: str) -> Tile:
        check_role(role)
        return (1, None)

    def scale(self, key: str, role: str, amax: np.ndarray, *, record: bool = True) -> np.ndarray:
        return amax_to_scale(amax, self.fmt(check_role(role)), self.power_of_2)
