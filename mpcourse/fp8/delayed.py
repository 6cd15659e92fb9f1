"""Delayed scaling (Transformer Engine's ``DelayedScaling``): scales from an amax history.

Usage::

    from mpcourse.fp8 import DelayedScaling

    r = DelayedScaling(history=4, margin=0)        # TE's defaults: history=1024, margin=0, "hybrid"
    r.scale("fc1.input", "input", np.float32([[3.5]]))   # [[1.]]: the first step uses scale 1
    r.update()                                     # end of the step: history [0, 0, 0, 3.5]
    r.scale("fc1.input", "input", np.float32([[7.0]]))   # [[128.]] = 448 / max(history)

The rule, per tensor (followed from Transformer Engine's ``transformer_engine/common/recipe/
delayed_scaling.cu`` and the ``DelayedScaling`` API docs: "use scale factor from previous
iteration ... and record amax history of amax_history_len steps")::

    state: amax_history[history] = zeros, scale = 1.0         # the first step casts with scale 1
    each cast during a step:                                  # the scale is known before the cast
        q = cast(x * scale)                                   # no extra pass over x
        amax_now = max(amax_now, max(|x|))                    # recorded by the cast itself
    update(), once per optimizer step, after the backward:
        window = amax_history[1:] + [amax_now]                # the history rolls: the oldest
        amax_history, amax_now = window, 0                    #   drops, this step's joins
        amax = max(window)       if amax_compute == "max"
               amax_now          if amax_compute == "most_recent"
        if isfinite(amax) and amax > 0:                       # else keep the old scale
            scale = float32(float32(fp8_max * 2**-margin) / amax)

So the scale of step k comes from the amaxes of steps k-history .. k-1: when an amax jumps, the
cast of that step still uses the old, too large scale and saturates (counted in the stats); the
scale catches up one step later, and with ``"max"`` it stays low until the jump has left the
window. An inf amax (an overflowing gradient) freezes the scale until it leaves the window, as
in TE; a NaN amax is ignored, as TE's ``fmaxf`` ignores it. TE's kernel keeps the history
newest-first in a ring; the window and the scales are the same.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from mpcourse.fp8.base import Fp8Recipe, check_block, check_role, hybrid_formats
from mpcourse.fp8.cast import FP8_MAX

__all__ = ["DelayedScaling"]

AMAX_COMPUTE = ("max", "most_recent")


class DelayedScaling(Fp8Recipe):
    """Per-tensor scales from the last ``history`` steps' amaxes (one step late).

    Args:
        history: amaxes kept per tensor, >= 1 (TE's ``amax_history_len``). Default 1024.
        margin: the scale is divided by ``2**margin`` (headroom against growth). Default 0.
        fmt: ``"hybrid"`` (e4m3 forward, e5m2 gradients), ``"e4m3"`` or ``"e5m2"``. Default ``"hybrid"``.
        amax_compute: ``"max"`` of the window or ``"most_recent"`` amax. Default ``"max"``.
    """

    kind: ClassVar[str] = "delayed"

    def __init__(self, history: int = 1024, margin: float = 0, fmt: str = "hybrid", amax_compute: str = "max") -> None:
        self.history = check_block("history", history)
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not np.isfinite(margin):
            raise ValueError(f"margin must be a finite number (TE uses ints >= 0), got {margin!r}")
        self.margin = margin
        self.formats = hybrid_formats(fmt)
        if amax_compute not in AMAX_COMPUTE:
            raise ValueError(f"amax_compute must be 'max' or 'most_recent', got {amax_compute!r}")
        self._fmt, self.amax_compute = fmt, amax_compute
        self.amax_history: dict[str, np.ndarray] = {}  # key -> float32[history], oldest first
        self.scales: dict[str, np.float32] = {}  # key -> the scale the next cast uses
        self.pending: dict[str, np.float32] = {}  # key -> amax seen so far this step
        self.roles: dict[str, str] = {}

    def settings(self) -> dict[str, Any]:
        return {"history": self.history, "margin": self.margin, "fmt": self._fmt, "amax_compute": self.amax_compute}

    def scale(self, key: str, role: str, amax: np.ndarray, *, record: bool = True) -> np.ndarray:
        a = np.asarray(amax, dtype=np.float32)
        if a.size != 1:
            raise ValueError(f"DelayedScaling is per tensor: one amax per cast, got shape {a.shape} for {key!r}")
        if not record:  # evaluation: the scale training would use, and no history
            return np.full(a.shape, self.scales.get(key, np.float32(1.0)), dtype=np.float32)
        if key not in self.scales:
            self.roles[key] = check_role(role)
            self.scales[key] = np.float32(1.0)
            self.amax_history[key] = np.zeros(self.history, np.float32)
        value = np.float32(a.reshape(()))
        # fmax ignores NaN, as fmaxf does in TE's amax kernels; inf is kept.
        self.pending[key] = np.fmax(self.pending.get(key, np.float32(0.0)), value)
        return np.full(a.shape, self.scales[key], dtype=np.float32)

    def update(self) -> None:
        """Roll every tensor's history and compute the scales the next step uses."""
        for key, hist in self.amax_history.items():
            now = self.pending.get(key, np.float32(0.0))
            window = np.concatenate([hist[1:], np.array([now], np.float32)])
            self.amax_history[key] = window
            amax = np.float32(np.fmax.reduce(window)) if self.amax_compute == "max" else now
            if np.isfinite(amax) and amax > 0:
                top = np.float32(FP8_MAX[self.fmt(self.roles[key])] * 2.0 ** -float(self.margin))
                self.scales[key] = np.float32(top / amax)
        self.pending = {}

    # --- state ------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "tensors": {
                k: {
                    "role": self.roles[k],
                    "scale": float(self.scales[k]),
                    "amax_history": [float(v) for v in self.amax_history[k]],
                }
                for k in self.scales
            },
            "pending": {k: float(v) for k, v in self.pending.items()},
        }

    def _check_state(self, state: dict[str, Any]) -> dict[str, Any]:
        tensors, pending = state.get("tensors", {}), state.get("pending", {})
        if not isinstance(tensors, dict) or not isinstance(pending, dict):
            raise ValueError("DelayedScaling state_dict: 'tensors' and 'pending' must be dicts")
        out: dict[str, Any] = {"roles": {}, "scales": {}, "hist": {}, "pending": {}}
        for k, t in tensors.items():
            if not isinstance(t, dict) or set(t) != {"role", "scale", "amax_history"}:
                raise ValueError(f"DelayedScaling state_dict tensor {k!r} needs keys role, scale, amax_history")
            h = np.asarray(t["amax_history"], dtype=np.float32)
            if h.shape != (self.history,):
                raise ValueError(
                    f"DelayedScaling state_dict tensor {k!r}: amax_history has {h.size} entries, "
                    f"this recipe keeps history={self.history}"
                )
            s = np.float32(t["scale"])
            if not (np.isfinite(s) and s > 0):
                raise ValueError(f"DelayedScaling state_dict tensor {k!r}: scale must be finite and > 0, got {s!r}")
            out["roles"][k], out["scales"][k], out["hist"][k] = check_role(t["role"]), s, h
        for k, v in pending.items():
            if k not in tensors:
                raise ValueError(f"DelayedScaling state_dict: pending amax for unknown tensor {k!r}")
            out["pending"][k] = np.float32(v)
        return out

    def _load_state(self, state: dict[str, Any]) -> None:
        self.roles, self.scales = dict(state["roles"]), dict(state["scales"])
        self.amax_history, self.pending = dict(state["hist"]), dict(state["pending"])
