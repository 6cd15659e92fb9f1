"""Loss scalers as a pure-Python state machine, shared by every engine.

Usage::

    import mpcourse as mpc

    s = mpc.DynamicLossScaler(init_scale=2.0**16, growth_interval=2000)
    for batch in batches:
        loss = model_loss(batch) * s.scale      # scale the loss before backward
        grads = backward(loss)
        grads = [g / s.scale for g in grads]    # unscale in fp32
        found_inf = not all_finite(grads)       # one reduction over every gradient
        if not found_inf:
            optimizer_step(grads)               # a non-finite step is skipped
        s.update(found_inf)                     # the decision: new scale, counters

The dynamic algorithm (``hysteresis=1`` and no bounds is ``torch.amp.GradScaler`` step for
step)::

    if found_inf:                       # the step is skipped in every case
        growth_tracker = 0
        if hysteresis_left > 1:         # DeepSpeed-style allowance: keep the scale
            hysteresis_left -= 1
        else:
            scale = max(scale * backoff_factor, min_scale)
    else:
        growth_tracker += 1
        if growth_tracker == growth_interval:
            growth_tracker = 0
            hysteresis_left = hysteresis            # a growth restores the allowance
            if isfinite(scale * growth_factor):
                scale = min(scale * growth_factor, max_scale)

The scale is kept as a float32 value, as GradScaler keeps it in a float32 tensor, so the two
agree bit for bit even for growth factors that are not powers of two.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mpcourse._validate import positive_finite

__all__ = [
    "LossScaler",
    "NoOpLossScaler",
    "StaticLossScaler",
    "DynamicLossScaler",
    "scaler_from_state_dict",
    "state_int",
    "state_scale",
]


def _f32(x: float) -> float:
    """Round a Python float through float32, as torch's float32 scale tensor does (inf past its max)."""
    with np.errstate(over="ignore"):
        return float(np.float32(x))


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


# --- checks for a loaded state (shared with the torch engine's GradScaler state) -------------------
def state_int(key: str, value: Any, lo: int = 0, hi: int | None = None) -> int:
    """``value`` as an int in ``[lo, hi]``, or a TypeError/ValueError naming ``key`` of a scaler state_dict.

    Bools, floats (even ``3.0``) and strings are refused: a counter is an int.
    """
    allowed = f"an int in [{lo}, {hi}]" if hi is not None else f"an int >= {lo}"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"scaler state_dict: {key!r} must be {allowed}, got {type(value).__name__} {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"scaler state_dict: {key!r} must be {allowed}, got {value!r}")
    return int(value)


def state_scale(key: str, value: Any, lo: float | None = None, hi: float | None = None) -> float:
    """``value`` as a float32 scale, finite, > 0 and within ``[lo, hi]``, or an error naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"scaler state_dict: {key!r} must be a finite number > 0, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v) or v <= 0.0:
        raise ValueError(f"scaler state_dict: {key!r} must be a finite number > 0, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"scaler state_dict: {key!r} must be within [min_scale, max_scale] = [{lo}, {hi}], got {v!r}")
    return _f32(v)


def _check_counters(state: dict[str, Any]) -> tuple[int, int, int]:
    total = state_int("total_steps", state["total_steps"])
    skipped = state_int("total_skipped", state["total_skipped"], 0, total)
    consecutive = state_int("consecutive_skipped", state["consecutive_skipped"], 0, skipped)
    return total, skipped, consecutive


@runtime_checkable
class LossScaler(Protocol):
    """The interface every scaler offers; engines speak only this.

    ``kind`` names it in a state dict; ``skips_nonfinite`` says whether a step whose gradients
    hold inf/nan is skipped (static, dynamic) or applied as a plain loop applies it (no-op).
    """

    kind: str
    skips_nonfinite: bool

    @property
    def scale(self) -> float: ...

    def update(self, found_inf: bool) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class _Counters:
    """Skip counters common to both scalers."""

    total_steps: int
    total_skipped: int
    consecutive_skipped: int

    def _reset_counters(self) -> None:
        self.total_steps = 0
        self.total_skipped = 0
        self.consecutive_skipped = 0

    def _count(self, found_inf: bool) -> None:
        self.total_steps += 1
        if found_inf:
            self.total_skipped += 1
            self.consecutive_skipped += 1
        else:
            self.consecutive_skipped = 0

    @property
    def overflow_rate(self) -> float:
        """Share of all steps so far whose gradients were non-finite (0.0 before any step)."""
        return self.total_skipped / self.total_steps if self.total_steps else 0.0


def _check_verdict(found_inf: Any) -> bool:
    if not isinstance(found_inf, (bool, np.bool_)):
        raise TypeError(f"found_inf must be a bool, got {type(found_inf).__name__} {found_inf!r}")
    return bool(found_inf)


class NoOpLossScaler:
    """No loss scaling, as an object with the scalers' interface (``GradScaler(enabled=False)``).

    Usage::

        s = NoOpLossScaler()
        s.scale                     # 1.0, always
        s.update(found_inf=True)    # nothing changes; the engine applies the step anyway
        s.skips_nonfinite           # False: a plain loop, even a non-finite step is applied

    Engines hold one scaler object in every precision, so their step has one path: fp32, bf16
    and ``loss_scale="none"`` get this one. It keeps no state.
    """

    kind = "none"
    skips_nonfinite = False

    @property
    def scale(self) -> float:
        """Always 1.0."""
        return 1.0

    def update(self, found_inf: bool) -> None:
        """Check the verdict's type; the scaler has nothing to change."""
        _check_verdict(found_inf)

    def state_dict(self) -> dict[str, Any]:
        """Only the kind: there is no state."""
        return {"kind": self.kind}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Accept only a no-op scaler's state dict."""
        _expect_keys(state, self.state_dict(), self.kind)

    def __repr__(self) -> str:
        return "NoOpLossScaler()"


class StaticLossScaler(_Counters):
    """A fixed loss scale; non-finite steps are still skipped and counted.

    Usage::

        s = StaticLossScaler(1024.0)
        s.update(found_inf=False)   # the scale never changes
        s.scale                     # 1024.0

    Args:
        scale: the loss scale, a finite number > 0 (no default: a static scale is a choice).
    """

    kind = "static"
    skips_nonfinite = True

    def __init__(self, scale: float) -> None:
        self._scale = _f32(positive_finite("scale", scale))
        self._reset_counters()

    @property
    def scale(self) -> float:
        """The current loss scale (a Python float)."""
        return self._scale

    def update(self, found_inf: bool) -> None:
        """Record one step's verdict; the scale stays where it is."""
        self._count(_check_verdict(found_inf))

    def state_dict(self) -> dict[str, Any]:
        """Every field, so ``load_state_dict`` restores the scaler exactly."""
        return {
            "kind": self.kind,
            "scale": self._scale,
            "total_steps": self.total_steps,
            "total_skipped": self.total_skipped,
            "consecutive_skipped": self.consecutive_skipped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; every field is checked first, and a refused state
        (another kind, a missing or unknown key, a bad type, range or combination) changes nothing.
        """
        _expect_keys(state, self.state_dict(), self.kind)
        scale = state_scale("scale", state["scale"])
        counters = _check_counters(state)
        self._scale = scale
        self.total_steps, self.total_skipped, self.consecutive_skipped = counters

    def __repr__(self) -> str:
        return f"StaticLossScaler(scale={self._scale:g}, skipped={self.total_skipped}/{self.total_steps})"


class DynamicLossScaler(_Counters):
    """Dynamic loss scaling with optional hysteresis and bounds.

    Usage::

        s = DynamicLossScaler(init_scale=2.0**16, growth_interval=2000, hysteresis=1)
        s.update(found_inf=True)   # back off: 32768.0
        s.scale

    Args:
        init_scale: the first scale. Default ``2.0**16``.
        growth_factor: multiplier after ``growth_interval`` finite steps in a row; > 1. Default 2.0.
        backoff_factor: multiplier on a non-finite step; in (0, 1). Default 0.5.
        growth_interval: finite steps in a row before growing; >= 1. Default 2000.
        hysteresis: non-finite steps tolerated since the last growth before backing off
            (DeepSpeed's ``delayed_shift``); 1 backs off on every one. Default 1.
        min_scale: lower clamp for backing off, or None. Default None.
        max_scale: upper clamp for growing, or None. Default None.
    """

    kind = "dynamic"
    skips_nonfinite = True

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        hysteresis: int = 1,
        min_scale: float | None = None,
        max_scale: float | None = None,
    ) -> None:
        self.init_scale = _f32(positive_finite("init_scale", init_scale))
        self.growth_factor = positive_finite("growth_factor", growth_factor)
        if self.growth_factor <= 1.0:
            raise ValueError(f"growth_factor must be > 1, got {growth_factor!r}")
        self.backoff_factor = positive_finite("backoff_factor", backoff_factor)
        if self.backoff_factor >= 1.0:
            raise ValueError(f"backoff_factor must be in (0, 1), got {backoff_factor!r}")
        self.growth_interval = _positive_int("growth_interval", growth_interval)
        self.hysteresis = _positive_int("hysteresis", hysteresis)
        self.min_scale = None if min_scale is None else _f32(positive_finite("min_scale", min_scale))
        self.max_scale = None if max_scale is None else _f32(positive_finite("max_scale", max_scale))
        if self.min_scale is not None and self.max_scale is not None and self.min_scale > self.max_scale:
            raise ValueError(f"min_scale ({min_scale!r}) must be <= max_scale ({max_scale!r})")
        self._scale = self._clamp(self.init_scale)
        self.growth_tracker = 0
        self.hysteresis_left = self.hysteresis
        self._reset_counters()

    @property
    def scale(self) -> float:
        """The current loss scale (a Python float holding a float32 value)."""
        return self._scale

    @property
    def at_min_scale(self) -> bool:
        """True when the scale sits at ``min_scale`` (a signal for a precision fallback)."""
        return self.min_scale is not None and self._scale <= self.min_scale

    def _clamp(self, scale: float) -> float:
        if self.min_scale is not None:
            scale = max(scale, self.min_scale)
        if self.max_scale is not None:
            scale = min(scale, self.max_scale)
        return scale

    def update(self, found_inf: bool) -> None:
        """Advance the state machine by one step's verdict (True: gradients had inf/nan)."""
        found_inf = _check_verdict(found_inf)
        self._count(found_inf)
        if found_inf:
            self.growth_tracker = 0
            if self.hysteresis_left > 1:
                self.hysteresis_left -= 1
            else:
                self._scale = self._clamp(_f32(self._scale * self.backoff_factor))
            return
        self.growth_tracker += 1
        if self.growth_tracker == self.growth_interval:
            self.growth_tracker = 0
            self.hysteresis_left = self.hysteresis
            grown = _f32(self._scale * self.growth_factor)
            if math.isfinite(grown):  # GradScaler keeps the old scale rather than reach inf
                self._scale = self._clamp(grown)

    def state_dict(self) -> dict[str, Any]:
        """Every field (settings, state and counters), so a restored scaler continues exactly."""
        return {
            "kind": self.kind,
            "scale": self._scale,
            "init_scale": self.init_scale,
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
            "hysteresis": self.hysteresis,
            "min_scale": self.min_scale,
            "max_scale": self.max_scale,
            "growth_tracker": self.growth_tracker,
            "hysteresis_left": self.hysteresis_left,
            "total_steps": self.total_steps,
            "total_skipped": self.total_skipped,
            "consecutive_skipped": self.consecutive_skipped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; a refused state changes nothing.

        Settings are checked as in the constructor; the state must be one that ``update`` can
        reach: ``0 <= growth_tracker < growth_interval``, ``1 <= hysteresis_left <= hysteresis``,
        the scale within ``[min_scale, max_scale]``, ``consecutive_skipped <= total_skipped <=
        total_steps``, and no growth count during a run of skipped steps. The error names the key.
        """
        _expect_keys(state, self.state_dict(), self.kind)
        fresh = DynamicLossScaler(
            **{
                k: state[k]
                for k in (
                    "init_scale",
                    "growth_factor",
                    "backoff_factor",
                    "growth_interval",
                    "hysteresis",
                    "min_scale",
                    "max_scale",
                )
            }
        )
        fresh._scale = state_scale("scale", state["scale"], fresh.min_scale, fresh.max_scale)
        fresh.growth_tracker = state_int("growth_tracker", state["growth_tracker"], 0, fresh.growth_interval - 1)
        fresh.hysteresis_left = state_int("hysteresis_left", state["hysteresis_left"], 1, fresh.hysteresis)
        fresh.total_steps, fresh.total_skipped, fresh.consecutive_skipped = _check_counters(state)
        finite_steps = fresh.total_steps - fresh.total_skipped
        if fresh.growth_tracker > finite_steps:
            raise ValueError(
                f"scaler state_dict: 'growth_tracker' ({fresh.growth_tracker}) counts more finite steps "
                f"than the counters hold (total_steps - total_skipped = {finite_steps})"
            )
        if fresh.growth_tracker > 0 and fresh.consecutive_skipped > 0:
            raise ValueError(
                f"scaler state_dict: 'growth_tracker' ({fresh.growth_tracker}) and 'consecutive_skipped' "
                f"({fresh.consecutive_skipped}) cannot both be > 0 (a skipped step resets the growth count)"
            )
        used = fresh.hysteresis - fresh.hysteresis_left
        if used > fresh.total_skipped:
            raise ValueError(
                f"scaler state_dict: 'hysteresis_left' ({fresh.hysteresis_left}) says {used} overflows were "
                f"tolerated, but 'total_skipped' is {fresh.total_skipped}"
            )
        self.__dict__.update(fresh.__dict__)

    def __repr__(self) -> str:
        return (
            f"DynamicLossScaler(scale={self._scale:g}, growth_interval={self.growth_interval}, "
            f"hysteresis={self.hysteresis}, skipped={self.total_skipped}/{self.total_steps})"
        )


def _expect_keys(state: Any, reference: dict[str, Any], kind: str) -> None:
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}")
    if state.get("kind") != kind:
        raise ValueError(f"this state_dict is for a {state.get('kind')!r} scaler, not a {kind!r} one")
    missing = sorted(set(reference) - set(state))
    if missing:
        raise ValueError(f"scaler state_dict is missing keys {missing}")
    unknown = sorted(map(str, set(state) - set(reference)))
    if unknown:
        raise ValueError(f"scaler state_dict has unknown keys {unknown} (a {kind!r} scaler has {sorted(reference)})")


def scaler_from_state_dict(state: dict[str, Any]) -> NoOpLossScaler | StaticLossScaler | DynamicLossScaler:
    """Build the right scaler from a state dict written by any kind."""
    kind = state.get("kind") if isinstance(state, dict) else None
    s: NoOpLossScaler | StaticLossScaler | DynamicLossScaler
    if kind == "none":
        s = NoOpLossScaler()
    elif kind == "static":
        s = StaticLossScaler(1.0)  # load_state_dict checks and sets every field
    elif kind == "dynamic":
        s = DynamicLossScaler()
    else:
        raise ValueError(f"unknown scaler kind {kind!r}; expected 'none', 'static' or 'dynamic'")
    s.load_state_dict(state)
    return s
