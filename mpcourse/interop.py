"""The mixed-precision knobs of other frameworks, mapped onto mpcourse's.

Usage::

    import mpcourse as mpc
    from mpcourse import interop

    block = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16,
             "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}   # DeepSpeed "fp16"
    cfg = mpc.TrainConfig(**interop.from_deepspeed(block))     # fp16, dynamic, 65536, 1000, 2, 1
    s = interop.deepspeed_scaler(block)                          # the same as a DynamicLossScaler

DeepSpeed's ``fp16`` block (its configuration documentation): ``loss_scale`` 0 means dynamic
scaling, any other value a static scale; the dynamic scale starts at
``2**initial_scale_power`` (default 16), doubles after ``loss_scale_window`` overflow-free
steps (default 1000), halves on an overflow once ``hysteresis`` overflows (default 2) have used
up the allowance, and never goes below ``min_loss_scale`` (default 1). That is mpcourse's
:class:`~mpcourse.scaler.DynamicLossScaler` with ``hysteresis=N`` (DeepSpeed's default,
non-consecutive mode); ``consecutive_hysteresis: true`` is refused, since mpcourse does not
implement it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mpcourse.scaler import DynamicLossScaler, StaticLossScaler

__all__ = ["DEEPSPEED_FP16_DEFAULTS", "from_deepspeed", "deepspeed_scaler"]

#: DeepSpeed's documented defaults for the ``fp16`` block.
DEEPSPEED_FP16_DEFAULTS: dict[str, Any] = {
    "enabled": False,
    "auto_cast": False,
    "loss_scale": 0,
    "initial_scale_power": 16,
    "loss_scale_window": 1000,
    "hysteresis": 2,
    "consecutive_hysteresis": False,
    "min_loss_scale": 1,
}


def _merged(block: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(block, Mapping):
        raise TypeError(f"a DeepSpeed fp16 block must be a mapping, got {type(block).__name__}")
    unknown = sorted(set(block) - set(DEEPSPEED_FP16_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown DeepSpeed fp16 key(s) {unknown}; known: {', '.join(DEEPSPEED_FP16_DEFAULTS)}")
    merged = {**DEEPSPEED_FP16_DEFAULTS, **block}
    if merged["consecutive_hysteresis"]:
        raise ValueError("consecutive_hysteresis=true is not implemented by mpcourse's scaler; use false")
    for key in ("initial_scale_power", "loss_scale_window", "hysteresis"):
        v = merged[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "initial_scale_power" else 1):
            raise ValueError(f"{key} must be an int >= {0 if key == 'initial_scale_power' else 1}, got {v!r}")
    for key in ("loss_scale", "min_loss_scale"):
        v = merged[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"{key} must be a number >= 0, got {v!r}")
    return merged


def from_deepspeed(block: Mapping[str, Any]) -> dict[str, Any]:
    """TrainConfig keyword arguments for a DeepSpeed ``fp16`` block (precision "fp16").

    ``enabled`` is not read: the block describes the fp16 run you asked to translate.
    """
    m = _merged(block)
    if m["loss_scale"]:
        return {"precision": "fp16", "loss_scale": float(m["loss_scale"])}
    return {
        "precision": "fp16",
        "loss_scale": "dynamic",
        "init_scale": float(2 ** m["initial_scale_power"]),
        "growth_interval": int(m["loss_scale_window"]),
        "hysteresis": int(m["hysteresis"]),
        "min_scale": float(m["min_loss_scale"]) if m["min_loss_scale"] > 0 else None,
    }


def deepspeed_scaler(block: Mapping[str, Any]) -> DynamicLossScaler | StaticLossScaler:
    """The mpcourse scaler that behaves as DeepSpeed's for this ``fp16`` block."""
    kw = from_deepspeed(block)
    if kw["loss_scale"] != "dynamic":
        return StaticLossScaler(kw["loss_scale"])
    return DynamicLossScaler(
        init_scale=kw["init_scale"],
        growth_interval=kw["growth_interval"],
        hysteresis=kw["hysteresis"],
        min_scale=kw["min_scale"],
    )
