"""Current (dynamic) per-tensor scaling: this step's amax sets this step's scale.

Usage::

    from mpcourse.fp8 import CurrentScaling

    r = CurrentScaling()                     # hybrid: e4m3 forward, e5m2 gradients
    r.scale("fc1.input", "input", np.float32([[3.5]]))     # [[128.]] = 448 / 3.5

The rule (torchao's ``Float8LinearConfig()`` "tensorwise", Transformer Engine's
``Float8CurrentScaling``)::

    amax  = max(|x|)                                   # over the whole tensor, this step
    scale = float32(fp8_max / max(amax, 1e-12))        # computed in float64, as torchao
    if power_of_2: scale = 2**floor(log2(scale))       # exact to apply and to undo
    q = cast(x * scale)                                # the largest |x| lands on fp8_max

It never saturates a finite tensor (the amax maps onto fp8_max), at the price of an extra
read of the tensor before the cast: on a GPU that is a second pass over memory per cast.
"""

from __future__ import annotations

from typing import ClassVar

from mpcourse.fp8.base import AmaxScaling

__all__ = ["CurrentScaling"]


class CurrentScaling(AmaxScaling):
    """One scale per tensor from its own amax, every step (no state).

    Args:
        fmt: ``"hybrid"`` (e4m3 input and weight, e5m2 grad_output), ``"e4m3"`` or ``"e5m2"``.
            Default ``"hybrid"``.
        power_of_2: round each scale down to a power of two. Default False.
    """

    kind: ClassVar[str] = "current"

    def __init__(self, fmt: str = "hybrid", power_of_2: bool = False) -> None:
        super().__init__(fmt, power_of_2)
