"""A recipe replayed over a sequence of tensors, in numpy: the traces a plot draws.

Usage::

    import numpy as np
    from mpcourse import fp8
    from mpcourse.fp8.replay import replay, quantization_error

    steps = [np.full((4, 8), a, np.float32) for a in (1, 1, 1, 10, 10, 1)]   # an amax jump at step 3
    t = replay(fp8.DelayedScaling(history=4), steps)
    t["scale"], t["saturated"]       # the jump is cast with the old scale: 32 values saturate
    quantization_error(steps[3], fp8.CurrentScaling(), "input")   # relative RMS error of one cast
    compare_recipes(x, [fp8.CurrentScaling(), fp8.MXScaling()])   # one row per recipe: error, counts

``replay`` does per step what an engine does per tensor: cast (:func:`~mpcourse.fp8.tiles.cast_operand`),
then ``recipe.update()``. It works on a clone, so the recipe passed in is not changed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mpcourse.fp8.base import Fp8Recipe
from mpcourse.fp8.cast import FP8_MAX, dequantize
from mpcourse.fp8.tiles import cast_operand

__all__ = ["replay", "quantization_error", "compare_recipes"]


def _as_2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x.reshape(1, -1) if x.ndim < 2 else x.reshape(-1, x.shape[-1])


def replay(recipe: Fp8Recipe, tensors: Sequence[np.ndarray], role: str = "input") -> dict[str, np.ndarray]:
    """Cast each tensor in turn (one per step) under a clone of ``recipe``.

    Returns:
        Arrays over the steps: ``amax``, ``scale`` (the smallest over tiles), ``scaled_amax``
        (``amax * scale``, where the largest value lands; above fp8_max it saturates),
        ``saturated``, ``underflowed`` and ``error`` (relative RMS error of the cast), plus
        ``fp8_max`` (the format's max, a 0-d array).
    """
    r = recipe.clone()
    rows = []
    for x in tensors:
        x2 = _as_2d(x)
        q, s, stats = cast_operand(x2, r, "x", role)
        rows.append({**stats, "error": _rel_rms(x2, dequantize(q, s))})
        r.update()
    out = {k: np.array([row[k] for row in rows], dtype=float) for k in ("amax", "scale", "saturated", "underflowed")}
    out["scaled_amax"] = out["amax"] * out["scale"]
    out["error"] = np.array([row["error"] for row in rows])
    out["fp8_max"] = np.array(FP8_MAX[r.fmt(role)])
    return out


def _rel_rms(x: np.ndarray, x_hat: np.ndarray, where: np.ndarray | None = None) -> float:
    ok = np.isfinite(x) if where is None else np.isfinite(x) & np.asarray(where, bool).reshape(x.shape)
    ref = float(np.sqrt(np.mean(np.square(x[ok], dtype=np.float64)))) if ok.any() else 0.0
    err = float(np.sqrt(np.mean(np.square((x_hat - x)[ok], dtype=np.float64)))) if ok.any() else 0.0
    return err / ref if ref > 0 else 0.0


def quantization_error(x: np.ndarray, recipe: Fp8Recipe, role: str = "input") -> float:
    """Relative RMS error ``||deq(cast(x)) - x|| / ||x||`` of one cast of ``x`` under ``recipe``."""
    x2 = _as_2d(x)
    q, s, _ = cast_operand(x2, recipe.clone(), "x", role)
    return _rel_rms(x2, dequantize(q, s))


def compare_recipes(
    x: np.ndarray, recipes: Sequence[Fp8Recipe], role: str = "input", where: np.ndarray | None = None
) -> list[dict[str, object]]:
    """One cast of ``x`` per recipe: ``{"recipe", "error", "underflowed", "saturated", "tiles"}``.

    ``error`` is the relative RMS error over the entries selected by ``where`` (default: all),
    e.g. the ordinary values of a tensor with outliers, which is where coarse scales hurt.
    """
    x2 = _as_2d(x)
    rows: list[dict[str, object]] = []
    for recipe in recipes:
        q, s, stats = cast_operand(x2, recipe.clone(), "x", role)
        rows.append(
            {
                "recipe": recipe.kind,
                "error": _rel_rms(x2, dequantize(q, s), where),
                "underflowed": stats["underflowed"],
                "saturated": stats["saturated"],
                "tiles": stats["tiles"],
            }
        )
    return rows
