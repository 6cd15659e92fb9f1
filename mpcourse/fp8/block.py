"""Block scaling (DeepSeek-V3): 1x128 tiles for activations and gradients, 128x128 weight blocks.

Usage::

    from mpcourse.fp8 import BlockScaling

    r = BlockScaling()                          # block=128, e4m3 everywhere
    r.tile("input"), r.tile("weight")           # (1, 128), (128, 128)

The rule (DeepSeek-V3 technical report, arXiv:2412.19437, section 3.3.2)::

    for every GEMM C = A @ B, in the K-major view (rows run along the contraction dim K):
        activations, gradients: one scale per 1 x block tile   (per token, per 128 channels)
        weights:                one scale per block x block block (the same for w and w.T)
        scale = float32(448 / max(amax_of_tile, 1e-12))        # online, this step's amax
        C = sum over K-tiles of (cast(A*s_A)/s_A) @ (cast(B*s_B)/s_B), accumulated in fp32

A dimension that is not a multiple of ``block`` ends in a smaller tile. The fine grain lets an
outlier spoil 128 values instead of a whole tensor, which is why DeepSeek-V3 could use e4m3
for the gradients too.
"""

from __future__ import annotations

from typing import Any, ClassVar

from mpcourse.fp8.base import AmaxScaling, Tile, check_block, check_role

__all__ = ["BlockScaling"]


class BlockScaling(AmaxScaling):
    """Fine-grained scales: ``1 x block`` tiles of activations/gradients, ``block x block`` of weights.

    Args:
        block: tile length, >= 1. Default 128 (DeepSeek-V3).
        fmt: ``"e4m3"`` (DeepSeek-V3), ``"hybrid"`` or ``"e5m2"``. Default ``"e4m3"``.
        power_of_2: round the scales down to powers of two. Default False.
    """

    kind: ClassVar[str] = "block"

    def __init__(self, block: int = 128, fmt: str = "e4m3", power_of_2: bool = False) -> None:
        self.block = check_block("block", block)
        super().__init__(fmt, power_of_2)

    def settings(self) -> dict[str, Any]:
        return {"block": self.block, **super().settings()}

    def tile(self, role: str) -> Tile:
        return (self.block, self.block) if check_role(role) == "weight" else (1, self.block)
