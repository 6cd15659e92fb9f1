"""What every FP8 recipe shares: the roles, the scale tiles, the state_dict checks.

Usage::

    from mpcourse.fp8 import CurrentScaling

    r = CurrentScaling()
    r.fmt("grad_output"), r.tile("weight")      # ('e5m2', (None, None)): one scale per tensor
    r.scale("fc1.input", "input", np.float32([3.5]).reshape(1, 1))   # float32 [[128.]]
    r.update()                                  # once per optimizer step (delayed scaling rolls)
    r.clone()                                   # same settings, fresh state (what an engine runs)

A linear layer ``y = x @ w.T`` casts three tensors, the *roles*: ``"input"`` (x) and
``"weight"`` (w) in the forward, ``"grad_output"`` (dL/dy) in the backward. Each of the three
GEMMs ``y = x @ w.T``, ``dx = dy @ w``, ``dw = dy.T @ x`` reads its two operands as matrices
whose rows run along the contraction dimension K ("K-major": ``x``, ``w``, ``dy``, ``w.T``,
``dy.T``, ``x.T``). A recipe's ``tile(role)`` is the ``(rows, cols)`` of one scale's tile in that
K-major view, ``None`` meaning the whole dimension: ``(None, None)`` is one scale per tensor,
``(1, None)`` one per row, ``(1, 128)`` DeepSeek-V3's activation tiles, ``(128, 128)`` its weight
blocks, ``(1, 32)`` an MX block. The engine computes one amax per tile, asks ``scale`` for the
scales, casts with :func:`mpcourse.fp8.cast.quantize` and logs the counts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from mpcourse._validate import int_at_least
from mpcourse.fp8.cast import FP8_MAX, check_fp8

__all__ = [
    "ROLES",
    "FMT_CHOICES",
    "Tile",
    "Fp8Recipe",
    "AmaxScaling",
    "hybrid_formats",
    "amax_to_scale",
    "round_down_pow2",
]

ROLES: tuple[str, ...] = ("input", "weight", "grad_output")
FMT_CHOICES: tuple[str, ...] = ("hybrid", "e4m3", "e5m2")
Tile = tuple[int | None, int | None]
EPS = 1e-12  # torchao's floor on amax, so an all-zero tensor gets a finite scale


def hybrid_formats(fmt: Any) -> dict[str, str]:
    """Role -> fp8 format: ``"hybrid"`` is e4m3 forward (input, weight), e5m2 for gradients."""
    if fmt not in FMT_CHOICES:
        raise ValueError(f"fmt must be one of {', '.join(map(repr, FMT_CHOICES))}; got {fmt!r}")
    if fmt == "hybrid":
        return {"input": "e4m3", "weight": "e4m3", "grad_output": "e5m2"}
    return dict.fromkeys(ROLES, check_fp8("fmt", fmt))


def round_down_pow2(scale: np.ndarray) -> np.ndarray:
    """``2**floor(log2(scale))`` in float32 (torchao's ``round_scales_to_power_of_2``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.exp2(np.floor(np.log2(np.asarray(scale, np.float32)))).astype(np.float32)


def amax_to_scale(amax: np.ndarray, fmt: str, power_of_2: bool = False) -> np.ndarray:
    """torchao's rule: ``float32(fp8_max / max(amax, 1e-12))`` computed in float64.

    An inf amax gives scale 0 (the tensor casts to zeros and NaNs), a NaN amax a NaN scale:
    current scaling has no earlier scale to fall back on.
    """
    a = np.maximum(np.asarray(amax, dtype=np.float64), EPS)  # NaN stays NaN
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (FP8_MAX[fmt] / a).astype(np.float32)
    return round_down_pow2(s) if power_of_2 else s


def check_role(role: Any) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(map(repr, ROLES))}; got {role!r}")
    return str(role)


def check_block(name: str, value: Any) -> int:
    return int_at_least(name, value, 1)


class Fp8Recipe(ABC):
    """Base of the recipes: formats per role, a tile per role, a scale rule, and state.

    Subclasses set ``kind`` and implement :meth:`scale` and :meth:`settings`; a stateful one
    (delayed scaling) also overrides :meth:`update`, :meth:`_state` and :meth:`_load_state`.
    """

    kind: ClassVar[str]
    formats: dict[str, str]

    def fmt(self, role: str) -> str:
        """The fp8 format ``role`` is cast to (``"e4m3"`` or ``"e5m2"``)."""
        return self.formats[check_role(role)]

    def tile(self, role: str) -> Tile:
        """The ``(rows, cols)`` one scale covers in the K-major view (``None``: the whole dim)."""
        check_role(role)
        return (None, None)

    @abstractmethod
    def scale(self, key: str, role: str, amax: np.ndarray, *, record: bool = True) -> np.ndarray:
        """The float32 scales (shaped like ``amax``, one per tile) to cast tensor ``key`` with now.

        ``record=False`` (evaluation) leaves the recipe's state untouched.
        """

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The constructor arguments, e.g. ``{"fmt": "hybrid"}``."""

    def update(self) -> None:
        """End of an optimizer step: a stateless recipe has nothing to do."""
        return None

    def clone(self) -> Fp8Recipe:
        """The same recipe with fresh state (an engine runs a clone, never the config's object)."""
        return type(self)(**self.settings())

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: dict[str, Any]) -> None:
        """Apply a state already checked by :meth:`_check_state`."""
        return None

    def _check_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """Validate the recipe-specific part of a state_dict; return what :meth:`_load_state` applies."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """``{"kind": ..., "settings": {...}, **state}``; plain Python values (JSON-friendly)."""
        return {"kind": self.kind, "settings": self.settings(), **self._state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a wrong kind, setting or key is a ValueError naming it.

        Everything is checked before anything changes: a refused state leaves the recipe as it was.
        """
        if not isinstance(state, dict):
            raise TypeError(f"an fp8 recipe state_dict must be a dict, got {type(state).__name__}")
        if state.get("kind") != self.kind:
            raise ValueError(f"state_dict is for fp8 recipe {state.get('kind')!r}, this recipe is {self.kind!r}")
        allowed = {"kind", "settings", *self._state()}
        for key in state:
            if key not in allowed:
                raise ValueError(f"unknown key {key!r} in a {self.kind} state_dict; expected {sorted(allowed)}")
        mine = self.settings()
        got = state.get("settings")
        if not isinstance(got, dict):
            raise ValueError(f"state_dict 'settings' must be a dict like {mine!r}, got {got!r}")
        for name in sorted(set(mine) | set(got)):
            if got.get(name, "<missing>") != mine.get(name, "<missing>"):
                raise ValueError(
                    f"state_dict setting {name!r} is {got.get(name, '<missing>')!r}, this recipe has "
                    f"{mine.get(name, '<missing>')!r}; build the recipe with the same settings"
                )
        self._load_state(self._check_state(state))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.settings().items())})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.settings() == self.settings()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.settings().items()))))


class AmaxScaling(Fp8Recipe):
    """A stateless recipe whose scales come from this step's amax of each tile (torchao's rule).

    What current, rowwise and block scaling share: a format per role from ``fmt``, optional
    power-of-two rounding of the scales, and :func:`amax_to_scale`. Subclasses set ``kind``,
    their defaults and their :meth:`tile`.
    """

    def __init__(self, fmt: str, power_of_2: bool) -> None:
        self.formats = hybrid_formats(fmt)
        if not isinstance(power_of_2, bool):
            raise TypeError(f"power_of_2 must be a bool, got {power_of_2!r}")
        self._fmt, self.power_of_2 = fmt, power_of_2

    def settings(self) -> dict[str, Any]:
        return {"fmt": self._fmt, "power_of_2": self.power_of_2}

    def scale(self, key: str, role: str, amax: np.ndarray, *, record: bool = True) -> np.ndarray:
        return amax_to_scale(amax, self.fmt(check_role(role)), self.power_of_2)
