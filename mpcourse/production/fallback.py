"""Precision fallback: leave fp16 for bf16, then fp32, when overflows pile up.

Usage::

    import mpcourse as mpc
    from mpcourse import production as prod

    policy = prod.FallbackPolicy(window=20, max_overflow_rate=0.5)   # fp16 -> bf16 -> fp32
    eng = prod.switch_precision(eng, "bf16")     # a new engine, the same fp32 masters, bit for bit

Switching precision is exact: master weights and optimizer state are fp32 in every precision,
so a new engine in the new precision takes them over bit for bit; only the loss scaler starts
afresh (bf16 and fp32 need none). Engines convert their tensors in
:mod:`mpcourse.engines.portable`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mpcourse._validate import int_at_least
from mpcourse.config import PRECISIONS, TrainConfig
from mpcourse.engines import ZOO, Engine, make_engine
from mpcourse.history import StepRecord

__all__ = ["check_precision", "transfer", "SAFETY", "FallbackPolicy", "switch_precision"]


# Range, not precision: fp16 overflows first, bf16 has fp32's exponent range, fp32 is the floor.
# fp8 (per-tensor scaled matmuls, the rest in bf16) falls back to bf16 like fp16 does.
SAFETY: dict[str, int] = {"fp16": 0, "fp8": 0, "bf16": 1, "fp32": 2}


def check_precision(name: str, p: Any) -> str:
    if p not in PRECISIONS:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, PRECISIONS))}; got {p!r}")
    return p


# --- fallback ----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class FallbackPolicy:
    """When to give up on a precision, and what to fall back to.

    Usage::

        pol = FallbackPolicy(window=50, max_overflow_rate=0.2)   # fp16 -> bf16 -> fp32
        pol.check(last_records, min_scale=1.0)   # None, or ("overflow_rate", {evidence})

    Args:
        chain: precisions from least to most robust. Default ``("fp16", "bf16", "fp32")``.
        window: steps the overflow rate is measured over; the rate is judged only once a full
            window has run in the current precision. Default 50.
        max_overflow_rate: fall back when the share of overflowing steps in the window
            reaches this, in (0, 1]. Default 0.2 (a healthy dynamic scaler overflows about
            once per ``growth_interval`` steps).
        on_min_scale: also fall back when an overflow finds the scale already at
            ``TrainConfig(min_scale=...)``: the scaler cannot back off any further. Default True.
    """

    chain: tuple[str, ...] = ("fp16", "bf16", "fp32")
    window: int = 50
    max_overflow_rate: float = 0.2
    on_min_scale: bool = True

    def __post_init__(self) -> None:
        if not self.chain or len(set(self.chain)) != len(self.chain):
            raise ValueError(f"chain must list distinct precisions, got {self.chain!r}")
        for p in self.chain:
            check_precision("each chain entry", p)
        if [SAFETY[p] for p in self.chain] != sorted(SAFETY[p] for p in self.chain):
            raise ValueError(f"chain must go from less to more range (fp16, bf16, fp32), got {self.chain!r}")
        int_at_least("window", self.window, 1)
        if not isinstance(self.max_overflow_rate, (int, float)) or not 0 < self.max_overflow_rate <= 1:
            raise ValueError(f"max_overflow_rate must be in (0, 1], got {self.max_overflow_rate!r}")

    def next_precision(self, current: str) -> str | None:
        """The first precision in the chain with more range than ``current``, or None."""
        return next((p for p in self.chain if SAFETY[p] > SAFETY[current]), None)

    def check(self, recent: Sequence[StepRecord], min_scale: float | None = None) -> tuple[str, dict[str, Any]] | None:
        """Judge the steps run so far in the current precision (newest last).

        Returns None (keep going) or ``(reason, evidence)`` with reason ``"min_scale"`` or
        ``"overflow_rate"``.
        """
        if not recent:
            return None
        last = recent[-1]
        if self.on_min_scale and min_scale is not None and last.found_inf and last.scale <= min_scale:
            return "min_scale", {
                "scale": last.scale,
                "min_scale": min_scale,
                "step": last.step,
                "overflow_steps": [r.step for r in recent[-self.window :] if r.found_inf],
            }
        if len(recent) >= self.window:
            win = recent[-self.window :]
            over = [r.step for r in win if r.found_inf]
            rate = len(over) / len(win)
            if rate >= self.max_overflow_rate:
                return "overflow_rate", {
                    "overflow_rate": rate,
                    "threshold": self.max_overflow_rate,
                    "window": [win[0].step, win[-1].step],
                    "overflow_steps": over,
                    "last_scale": last.scale,
                }
        return None


def _rebuild(engine: Engine, config: TrainConfig) -> Engine:
    base, _, size = engine.model_name.partition(":")
    model: Any = base if base in ZOO else engine.model  # a user's model object is taken over as is
    # The user's own loss, or None for the engine's default (MLX compiles only its own loss).
    new = make_engine(
        engine.backend,
        model,
        config,
        device=engine.device,
        loss_fn=engine.user_loss_fn,
        num_features=engine.num_features,
        num_classes=engine.num_classes,
        size=size or "small",
        verbose=False,
    )
    new.model_name = engine.model_name
    return new


def switch_precision(engine: Engine, precision: str) -> Engine:
    """A new engine in ``precision`` that takes over ``engine``'s weights, optimizer and data position.

    Exact, because the master weights and the optimizer state are fp32 whatever the compute
    precision; the new engine gets the loss scaler its precision needs (``loss_scale="auto"``),
    starting fresh. The old engine should not be used afterwards.

    Raises:
        ValueError: an unknown precision, or an engine without fp32 master weights
            (``master_weights=False`` keeps no fp32 copy to hand over).
    """
    check_precision("precision", precision)
    return transfer(engine, engine.config.replace(precision=precision, loss_scale="auto"))


def transfer(engine: Engine, config: TrainConfig) -> Engine:
    """A new engine with ``config`` holding ``engine``'s state, with a fresh scaler of its own."""
    if config == engine.config:
        return engine
    if not engine.config.master_weights:
        raise ValueError(
            "switching precision needs fp32 master weights (TrainConfig(master_weights=True)); "
            "this engine trains its half-precision parameters directly"
        )
    new = _rebuild(engine, config)
    state = engine.state_dict()
    fresh = new.state_dict()["framework"]
    if "scaler" in fresh:
        state["framework"]["scaler"] = fresh["scaler"]
    new.load_state_dict(state)
    return new
