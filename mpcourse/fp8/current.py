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

from typing import Any, ClassVar

import numpy as np

from mpcourse.fp8.base import Fp8Recipe, amax_to_scale, check_role, hybrid_formats

__all__ = ["CurrentScaling"]


class CurrentScaling(Fp8Recipe):
    """One scale per tensor from its own amax, every step (no state).

    Args:
        fmt: ``"hybrid"`` (e4m3 input and weight, e5m2 grad_output), ``"e4m3"`` or ``"e5m2"``.
            Default ``"hybrid"``.
        power_of_2: round each scale down to a power of two. Default False.
    """

    kind: ClassVar[str] = "current"

    def __init__(self, fmt: str = "hybrid", power_of_2: bool = False) -> None:
        self.formats = hybrid_formats(fmt)
        if not isinstance(power_of_2, bool):
            raise TypeError(f"power_of_2 must be a bool, got {power_of_2!r}")
        self._fmt, self.power_of_2 = fmt, power_of_2

    def settings(self) -> dict[str, Any]:
        return {"fmt": self._fmt, "power_of_2": self.power_of_2}

    def scale(self, key: str, role: str, amax: np.ndarray, *, record: bool = True) -> np.ndarray:
        return amax_to_scale(amax, self.fmt(check_role(role)), self.power_of_2)
