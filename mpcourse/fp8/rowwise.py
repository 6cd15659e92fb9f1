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

from typing import ClassVar

from mpcourse.fp8.base import AmaxScaling, Tile, check_role

__all__ = ["RowwiseScaling"]


class RowwiseScaling(AmaxScaling):
    """One scale per row (along the contraction dim) of every operand of every GEMM.

    Args:
        fmt: ``"e4m3"`` (torchao's rowwise recipe), ``"hybrid"`` or ``"e5m2"``. Default ``"e4m3"``.
        power_of_2: round the scales down to powers of two. Default True (as torchao's recipe).
    """

    kind: ClassVar[str] = "rowwise"

    def __init__(self, fmt: str = "e4m3", power_of_2: bool = True) -> None:
        super().__init__(fmt, power_of_2)

    def tile(self, role: str) -> Tile:
        check_role(role)
        return (1, None)
