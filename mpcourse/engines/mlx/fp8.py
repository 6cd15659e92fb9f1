"""FP8 linear layers for MLX: the torch twin's three GEMMs, with MLX's fp8 conversion.

Usage::

    from mpcourse import fp8
    from mpcourse.engines.mlx.fp8 import convert

    model = convert(mlx_model, fp8.DelayedScaling())    # every nn.Linear -> Fp8Linear
    loss, grads = nn.value_and_grad(model, loss_fn)(model, x, y)
    stats = model.fp8_state.end_step()                  # per-tensor amax, scale, counts

The cast (bit-exact with ``ml_dtypes``; the tests check every code)::

    y = clip(float32(x) * scale, -fp8_max, fp8_max)
    e4m3: q = mx.from_fp8(mx.to_fp8(y))           # MLX's own e4m3 conversion (round to nearest even);
                                                  #   it turns NaN into 448, so NaN is put back
    e5m2: MLX has no e5m2 conversion: rounded here to 2 mantissa bits, to nearest even, from the
          float32 bits (exponent field, quantum = 2**(max(e, -14) - 2), round(y / quantum))

The layers are the torch twin's (``engines/torch/fp8.py``): ``y = deq(x) @ deq(w).T``,
``dx = deq(dy) @ deq(w.T).T``, ``dw = deq(dy.T) @ deq(x.T).T`` in fp32, through an
``mx.custom_function`` whose vjp casts the output gradient. The recipe's rule is numpy, so
each cast evaluates its amax on the host: an FP8 step cannot be ``mx.compile``-d.

One difference from the torch engine: the MLX engine computes with a bf16 copy of the fp32
master weights (as for ``precision="bf16"``), so a weight is rounded to bf16 before its fp8
cast, where torch casts from the fp32 master. Both are bit-exact fp8 casts of what they are given.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mpcourse.fp8.base import Fp8Recipe, Tile
from mpcourse.fp8.cast import FP8_MAX, OVERFLOW
from mpcourse.fp8.session import Fp8Session
from mpcourse.fp8.tiles import tensor_stats, tile_size

__all__ = ["Fp8Linear", "Fp8State", "convert", "cast", "round_fp8", "fp8_for_engine", "fp8_state_of"]

# (mantissa bits, smallest normal exponent) of the formats, for the rounding written out below.
_LAYOUT = {"e4m3": (3, -6), "e5m2": (2, -14)}


def round_fp8(y: mx.array, fmt: str) -> mx.array:
    """``y`` (float32, already within +-fp8_max) rounded to ``fmt``, to nearest even, as float32."""
    if fmt == "e4m3":
        q = mx.from_fp8(mx.to_fp8(y), dtype=mx.float32)
    else:
        mant, emin = _LAYOUT[fmt]
        exp = (mx.view(y, mx.uint32) >> 23).astype(mx.int32) & 0xFF
        e = mx.maximum(exp - 127, emin)  # subnormals share the smallest normal exponent's quantum
        quantum = mx.view(((e - mant + 127) << 23).astype(mx.uint32), mx.float32)  # 2**(e-mant), exact
        q = mx.round(y / quantum) * quantum  # exact division by a power of two; mx.round: half to even
    return mx.where(mx.isnan(y), y, q)


class Fp8State(Fp8Session):
    """What the converted layers of one model share: the recipe and the step's log (see Fp8Session)."""


def _tile_amax(x: mx.array, r: int, c: int) -> mx.array:
    rows, cols = x.shape
    a = mx.abs(x)
    if r >= rows and c >= cols:
        return mx.max(a).reshape(1, 1)
    if r == 1 and c >= cols:
        return mx.max(a, axis=1, keepdims=True)
    gr, gc = -(-rows // r), -(-cols // c)
    a = mx.pad(a, [(0, gr * r - rows), (0, gc * c - cols)])
    return mx.max(a.reshape(gr, r, gc, c), axis=(1, 3))


def cast(x: mx.array, state: Fp8State, key: str, role: str, *, record: bool = True) -> mx.array:
    """The dequantized fp8 values ``q / scale`` of a K-major 2-D operand (float32)."""
    recipe, fmt = state.recipe, state.recipe.fmt(role)
    record = record and state.recording
    xf = x.astype(mx.float32)
    rows, cols = xf.shape
    r, c = tile_size((rows, cols), recipe.tile(role))
    amax_np = np.array(_tile_amax(xf, r, c))  # evaluates now: the rule is numpy, for every engine
    grid = recipe.scale(key, role, amax_np, record=record)
    scale = mx.array(grid)
    if scale.shape[0] not in (1, rows):
        scale = mx.repeat(scale, r, axis=0)[:rows]
    if scale.shape[1] not in (1, cols):
        scale = mx.repeat(scale, c, axis=1)[:, :cols]
    y = xf * scale
    q = round_fp8(mx.clip(y, -FP8_MAX[fmt], FP8_MAX[fmt]), fmt)
    if record:
        limit, tie = OVERFLOW[fmt]
        over = (mx.abs(y) >= limit) if tie else (mx.abs(y) > limit)
        under = mx.logical_and(xf != 0, q == 0)
        counts = np.array(mx.stack([mx.sum(over), mx.sum(under)])).tolist()
        state.log.setdefault(
            key, tensor_stats(amax_np, grid, {"saturated": counts[0], "underflowed": counts[1]}, rows * cols, fmt)
        )
    return q / scale


def _transposable(tile: Tile) -> bool:
    return tile == (None, None) or (tile[0] is not None and tile[0] == tile[1])


def _fp8_matmul(state: Fp8State, name: str, training: bool) -> Any:
    """``x @ w.T`` with fp8 operands in all three GEMMs, as an ``mx.custom_function``."""
    recipe = state.recipe

    @mx.custom_function
    def matmul(x: mx.array, w: mx.array) -> mx.array:
        xd = cast(x, state, f"{name}.input", "input", record=training)
        wd = cast(w, state, f"{name}.weight", "weight", record=training)
        return xd @ wd.T

    @matmul.vjp
    def matmul_vjp(primals: tuple[mx.array, mx.array], g: mx.array, _out: mx.array) -> tuple[mx.array, mx.array]:
        x, w = primals
        gd = cast(g, state, f"{name}.grad_output", "grad_output")
        # The forward casts again without recording: the scales have not changed since (the
        # recipe advances in end_step), so these are the forward's fp8 values.
        if _transposable(recipe.tile("weight")):
            wt = cast(w, state, f"{name}.weight", "weight", record=False).T
        else:
            wt = cast(w.T, state, f"{name}.weight.T", "weight")
        dx = gd @ wt.T
        gt = (
            gd.T
            if _transposable(recipe.tile("grad_output"))
            else cast(g.T, state, f"{name}.grad_output.T", "grad_output")
        )
        if _transposable(recipe.tile("input")):
            xt = cast(x, state, f"{name}.input", "input", record=False).T
        else:
            xt = cast(x.T, state, f"{name}.input.T", "input")
        dw = gt @ xt.T
        return dx.astype(x.dtype), dw.astype(w.dtype)

    return matmul


class Fp8Linear(nn.Module):
    """An ``nn.Linear`` whose matmul runs in fp8 under ``fp8_state``'s recipe (same parameter names)."""

    def __init__(self, lin: nn.Linear, state: Fp8State, name: str) -> None:
        super().__init__()
        self.weight = lin.weight
        if "bias" in lin:
            self.bias = lin.bias
        self.fp8_state, self.fp8_name = state, name

    def __call__(self, x: mx.array) -> mx.array:
        lead = x.shape[:-1]
        out = _fp8_matmul(self.fp8_state, self.fp8_name, self.training)(x.reshape(-1, x.shape[-1]), self.weight)
        out = out.astype(x.dtype).reshape(*lead, self.weight.shape[0])
        return out + self.bias.astype(x.dtype) if "bias" in self else out


def _linears(module: Any, prefix: str = "") -> Iterator[tuple[Any, Any, str, nn.Linear]]:
    items = module.items() if isinstance(module, dict) else enumerate(module)
    for k, child in list(items):
        path = f"{prefix}{k}"
        if isinstance(child, nn.Linear):
            yield module, k, path, child
        elif isinstance(child, (nn.Module, dict, list)):
            yield from _linears(child, f"{path}.")


def convert(module: nn.Module, recipe: Fp8Recipe) -> nn.Module:
    """Replace every ``nn.Linear`` in ``module`` (in place) by an :class:`Fp8Linear`; return ``module``.

    The layers share one :class:`Fp8State` (``module.fp8_state``) with a clone of ``recipe``.
    A bare ``nn.Linear`` cannot be replaced in place: the new ``Fp8Linear`` is returned instead.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"convert() takes an mlx.nn.Module, got {type(module).__name__}")
    if isinstance(getattr(module, "fp8_state", None), Fp8State):
        raise ValueError("this module was converted to fp8 already (it has an fp8_state)")
    if not isinstance(recipe, Fp8Recipe):
        raise TypeError(f"recipe must be an mpcourse.fp8 recipe, got {recipe!r}")
    state = Fp8State(recipe.clone())
    if isinstance(module, nn.Linear):
        return Fp8Linear(module, state, "linear")
    for parent, k, path, lin in list(_linears(module)):
        parent[k] = Fp8Linear(lin, state, path)
    module.fp8_state = state
    return module


def fp8_state_of(module: nn.Module) -> Fp8State:
    """The :class:`Fp8State` of a converted module (a TypeError for one that was not converted)."""
    return Fp8State.of(module)


def fp8_for_engine(model: nn.Module, config: Any) -> Fp8State | None:
    """The engine's hook: for ``precision="fp8"``, convert ``model`` in place and return its state."""
    if config.precision != "fp8":
        return None
    return fp8_state_of(convert(model, config.fp8)).for_engine()  # only training steps record
