"""Training configuration: one frozen, keyword-only, validated dataclass.

Usage::

    import mpcourse as mpc

    cfg = mpc.TrainConfig(precision="fp16", loss_scale="dynamic", lr=1e-3, batch_size=64)
    cfg.replace(precision="bf16")          # a new, validated config
    mpc.TrainConfig(precision="fp8")       # FP8 linears under DelayedScaling(), the rest in bf16
    mpc.TrainConfig(precision="fp9")       # ValueError: precision must be one of ...
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from mpcourse.scaler import DynamicLossScaler, LossScaler, NoOpLossScaler, StaticLossScaler

__all__ = ["TrainConfig", "PRECISIONS", "OPTIMIZERS", "LOSS_SCALE_MODES", "compute_precision"]

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "fp8")
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd")
LOSS_SCALE_MODES: tuple[str, ...] = ("auto", "dynamic", "none")

LossScale = str | float


def compute_precision(precision: str) -> str:
    """The 16/32-bit precision everything but the fp8 matmuls computes in: bf16 for ``"fp8"``.

    Usage::

        compute_precision("fp8")    # 'bf16': the linears cast their own operands to fp8
        compute_precision("fp16")   # 'fp16'
    """
    return "bf16" if precision == "fp8" else precision


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train: precision, loss scaling, clipping, optimizer and batching.

    Args:
        precision: ``"fp32"``, ``"fp16"``, ``"bf16"`` (compute dtype; master weights stay
            fp32) or ``"fp8"``: every linear layer's matmul in FP8 under the ``fp8`` recipe,
            everything else in bf16. Default ``"fp32"``.
        loss_scale: ``"dynamic"``, ``"none"``, a positive number (a static scale), or
            ``"auto"``: dynamic for fp16, none otherwise. FP8 needs none by default: the
            output gradient is cast with its own per-tensor scale (e5m2 under "hybrid"), which
            does what a loss scale does but per tensor, and the rest runs in bf16, which has
            fp32's range. Default ``"auto"``.
        init_scale: first dynamic scale. Default ``2.0**16``.
        growth_factor: dynamic growth multiplier, > 1. Default 2.0.
        backoff_factor: dynamic back-off multiplier, in (0, 1). Default 0.5.
        growth_interval: finite steps before growing, >= 1. Default 2000.
        hysteresis: non-finite steps tolerated before backing off, >= 1. Default 1.
        min_scale: lower clamp of the dynamic scale, or None. Default None.
        max_scale: upper clamp of the dynamic scale, or None. Default None.
        clip: a clipping policy from :mod:`mpcourse.clipping`, or None. Default None.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``. Default ``"adam"``.
        lr: learning rate, > 0. Default 1e-3.
        weight_decay: >= 0, or None for the optimizer's own default. Default None.
        momentum: SGD momentum in [0, 1). Default 0.9.
        batch_size: samples per step, >= 1. Default 64.
        seed: seeds the model's initial weights and the data order. Default 0.
        master_weights: keep fp32 master weights (the mixed-precision recipe). False trains
            the parameters themselves in fp16/bf16, to show what that loses (MLX). Default True.
        fused: the torch engine's fast path: a fused optimizer (one kernel per step, that
            also reads GradScaler's inf/nan flag on the device, so skipping a step needs no
            host sync). None picks it where it pays (CUDA); True asks for it (an error where
            torch has no fused kernel for the device); False keeps the standard foreach
            optimizer. Other backends ignore it. Default None.
        fp8: an :mod:`mpcourse.fp8` recipe; only with ``precision="fp8"``, where None means
            ``DelayedScaling()`` (Transformer Engine's default). Engines run a clone, so the
            config's recipe never changes. Default None.
    """

    precision: str = "fp32"
    loss_scale: LossScale = "auto"
    init_scale: float = 2.0**16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    hysteresis: int = 1
    min_scale: float | None = None
    max_scale: float | None = None
    clip: Any = None
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float | None = None
    momentum: float = 0.9
    batch_size: int = 64
    seed: int = 0
    master_weights: bool = True
    fused: bool | None = None
    fp8: Any = None

    def __post_init__(self) -> None:
        _choice("precision", self.precision, PRECISIONS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        if isinstance(self.loss_scale, str):
            _choice("loss_scale", self.loss_scale, LOSS_SCALE_MODES)
        elif _number("loss_scale", self.loss_scale) <= 0:
            raise ValueError(f"loss_scale must be 'dynamic', 'none', 'auto' or a number > 0; got {self.loss_scale!r}")
        if _number("init_scale", self.init_scale) <= 0:
            raise ValueError(f"init_scale must be > 0, got {self.init_scale!r}")
        if _number("growth_factor", self.growth_factor) <= 1:
            raise ValueError(f"growth_factor must be > 1, got {self.growth_factor!r}")
        if not 0 < _number("backoff_factor", self.backoff_factor) < 1:
            raise ValueError(f"backoff_factor must be in (0, 1), got {self.backoff_factor!r}")
        _int("growth_interval", self.growth_interval, 1)
        _int("hysteresis", self.hysteresis, 1)
        for name in ("min_scale", "max_scale"):
            value = getattr(self, name)
            if value is not None and _number(name, value) <= 0:
                raise ValueError(f"{name} must be > 0 or None, got {value!r}")
        if self.min_scale is not None and self.max_scale is not None and self.min_scale > self.max_scale:
            raise ValueError(f"min_scale ({self.min_scale!r}) must be <= max_scale ({self.max_scale!r})")
        if _number("lr", self.lr) <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.weight_decay is not None and _number("weight_decay", self.weight_decay) < 0:
            raise ValueError(f"weight_decay must be >= 0 or None, got {self.weight_decay!r}")
        if not 0 <= _number("momentum", self.momentum) < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        _int("batch_size", self.batch_size, 1)
        _int("seed", self.seed, 0)
        if not isinstance(self.master_weights, bool):
            raise TypeError(f"master_weights must be a bool, got {self.master_weights!r}")
        if self.fused is not None and not isinstance(self.fused, bool):
            raise TypeError(f"fused must be True, False or None (auto), got {self.fused!r}")
        self._check_fp8()
        if self.clip is not None:
            from mpcourse.clipping import ClipPolicy  # local: clipping imports nothing heavy

            if not isinstance(self.clip, ClipPolicy):
                raise TypeError(
                    f"clip must be None or a policy from mpcourse.clipping "
                    f"(ClipByNorm, ClipByValue, AGC, AutoClip); got {self.clip!r}"
                )

    def _check_fp8(self) -> None:
        from mpcourse.fp8 import DelayedScaling, Fp8Recipe  # local: the core's fp8 rules

        if self.fp8 is None:
            if self.precision == "fp8":
                object.__setattr__(self, "fp8", DelayedScaling())  # frozen: set once, here
            return
        if not isinstance(self.fp8, Fp8Recipe):
            raise TypeError(
                f"fp8 must be None or a recipe from mpcourse.fp8 (CurrentScaling, DelayedScaling, "
                f"RowwiseScaling, BlockScaling, MXScaling); got {self.fp8!r}"
            )
        if self.precision != "fp8":
            raise ValueError(f"fp8={self.fp8!r} needs precision='fp8', got precision={self.precision!r}")

    @property
    def scaling_mode(self) -> str:
        """What loss scaling actually runs: ``"dynamic"``, ``"static"`` or ``"none"``."""
        if self.loss_scale == "auto":
            return "dynamic" if self.precision == "fp16" else "none"
        if isinstance(self.loss_scale, str):
            return self.loss_scale
        return "static"

    def make_scaler(self) -> LossScaler:
        """A fresh mpcourse scaler for this config (a :class:`NoOpLossScaler` when scaling is off)."""

        mode = self.scaling_mode
        if mode == "static":
            return StaticLossScaler(float(self.loss_scale))
        if mode == "dynamic":
            return DynamicLossScaler(
                self.init_scale,
                self.growth_factor,
                self.backoff_factor,
                self.growth_interval,
                self.hysteresis,
                self.min_scale,
                self.max_scale,
            )
        return NoOpLossScaler()

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed, validated again (leaving fp8 drops its recipe)."""
        if changes.get("precision", self.precision) != "fp8" and "fp8" not in changes:
            changes["fp8"] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-friendly fields (the clip policy as its repr)."""
        d = dataclasses.asdict(self)
        d["clip"] = None if self.clip is None else repr(self.clip)
        d["fp8"] = None if self.fp8 is None else repr(self.fp8)
        return d
