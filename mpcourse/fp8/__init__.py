"""FP8 training recipes as framework-neutral rules: how each one picks the scales of a cast.

Usage::

    import mpcourse as mpc
    from mpcourse import fp8

    cfg = mpc.TrainConfig(precision="fp8", fp8=fp8.DelayedScaling(history=16))
    hist = mpc.make_engine("torch", "mlp", config=cfg).fit(mpc.data.load("digits"))
    hist[-1].fp8["layers.0.input"]        # {'amax': ..., 'scale': ..., 'saturated': 0, ...}

    model = fp8.convert(my_torch_model, fp8.CurrentScaling())   # every nn.Linear -> FP8

The recipes (each module's docstring has the algorithm as pseudo-code):

- :class:`CurrentScaling` -- per tensor, from this step's amax (torchao "tensorwise", TE
  ``Float8CurrentScaling``).
- :class:`DelayedScaling` -- per tensor, from an amax history, one step late (TE's default).
- :class:`RowwiseScaling` -- one scale per row along the contraction dim (torchao "rowwise").
- :class:`BlockScaling` -- 1x128 activation tiles, 128x128 weight blocks (DeepSeek-V3).
- :class:`MXScaling` -- 1x32 blocks with power-of-two E8M0 scales (OCP MX, Blackwell).

The rules are numpy (a host sync per cast on a GPU: this is a course, the numbers come first);
the cast is bit-exact ``ml_dtypes`` rounding with saturation (:mod:`mpcourse.fp8.cast`). Only
the cast itself and the matmul are framework code, in ``engines/torch/fp8.py`` and
``engines/mlx/fp8.py``.
"""

from __future__ import annotations

import importlib
from typing import Any

from mpcourse.fp8.base import ROLES, Fp8Recipe
from mpcourse.fp8.block import BlockScaling
from mpcourse.fp8.cast import FP8_MAX, dequantize, quantize
from mpcourse.fp8.current import CurrentScaling
from mpcourse.fp8.delayed import DelayedScaling
from mpcourse.fp8.mx import MXScaling
from mpcourse.fp8.rowwise import RowwiseScaling

__all__ = [
    "BlockScaling",
    "CurrentScaling",
    "DelayedScaling",
    "FP8_MAX",
    "Fp8Recipe",
    "MXScaling",
    "RECIPES",
    "ROLES",
    "RowwiseScaling",
    "convert",
    "dequantize",
    "quantize",
    "recipe_from_state_dict",
]

RECIPES: dict[str, type[Fp8Recipe]] = {
    c.kind: c for c in (CurrentScaling, DelayedScaling, RowwiseScaling, BlockScaling, MXScaling)
}


def recipe_from_state_dict(state: dict[str, Any]) -> Fp8Recipe:
    """A recipe rebuilt from its :meth:`~Fp8Recipe.state_dict` (its kind and settings, then its state)."""
    kind = state.get("kind") if isinstance(state, dict) else None
    if kind not in RECIPES:
        raise ValueError(f"unknown fp8 recipe kind {kind!r}; allowed: {', '.join(map(repr, RECIPES))}")
    recipe = RECIPES[kind](**state.get("settings", {}))
    recipe.load_state_dict(state)
    return recipe


def convert(module: Any, recipe: Fp8Recipe | None = None, **kwargs: Any) -> Any:
    """Replace every ``nn.Linear`` of a torch ``module`` (in place) by an FP8 linear under ``recipe``.

    A lazy door to :func:`mpcourse.engines.torch.fp8.convert` (torch is imported only here, when
    called); ``recipe`` defaults to ``DelayedScaling()``. Returns the module.
    """
    impl = importlib.import_module("mpcourse.engines.torch.fp8")
    return impl.convert(module, DelayedScaling() if recipe is None else recipe, **kwargs)
