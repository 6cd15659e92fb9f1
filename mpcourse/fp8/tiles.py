"""Scale tiles and the reference cast of one GEMM operand, in numpy (what the engines mirror).

Usage::

    import numpy as np
    from mpcourse.fp8 import BlockScaling
    from mpcourse.fp8.tiles import cast_operand, tile_amax

    x = np.random.default_rng(0).normal(size=(4, 256)).astype(np.float32)
    tile_amax(x, (1, 128)).shape                # (4, 2): one amax per 1x128 tile
    q, scale, stats = cast_operand(x, BlockScaling(), "fc1.input", "input")
    stats                                       # {'amax': ..., 'scale': ..., 'saturated': 0, ...}

The operand is a 2-D matrix in the K-major view (its rows run along the contraction dim), so a
tile ``(r, c)`` covers r rows and c columns; ``None`` is the whole dimension and a dimension
that is not a multiple of the tile ends in a smaller tile. ``scale`` comes back expanded to the
operand's shape, so ``dequantize(q, scale)`` works element by element.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mpcourse.fp8.base import Fp8Recipe, Tile
from mpcourse.fp8.cast import cast_counts, quantize

__all__ = ["tile_size", "tile_amax", "expand", "cast_operand", "tensor_stats"]


def tile_size(shape: tuple[int, ...], tile: Tile) -> tuple[int, int]:
    """The concrete ``(rows, cols)`` of a tile over a 2-D ``shape`` (``None`` -> the whole dim)."""
    if len(shape) != 2:
        raise ValueError(f"an fp8 GEMM operand is 2-D, got shape {shape}")
    r = shape[0] if tile[0] is None else min(tile[0], shape[0])
    c = shape[1] if tile[1] is None else min(tile[1], shape[1])
    return max(r, 1), max(c, 1)


def tile_amax(x: np.ndarray, tile: Tile) -> np.ndarray:
    """``max(|x|)`` of every tile: float32 of shape ``(ceil(R/r), ceil(K/c))`` (NaN propagates)."""
    x = np.asarray(x, dtype=np.float32)
    r, c = tile_size(x.shape, tile)
    gr, gc = -(-x.shape[0] // r), -(-x.shape[1] // c)
    padded = np.zeros((gr * r, gc * c), np.float32)  # zeros never raise an amax
    padded[: x.shape[0], : x.shape[1]] = np.abs(x)
    return padded.reshape(gr, r, gc, c).max(axis=(1, 3))


def expand(scale: np.ndarray, shape: tuple[int, ...], tile: Tile) -> np.ndarray:
    """One scale per tile -> one per element of a ``shape`` operand."""
    r, c = tile_size(shape, tile)
    full = np.repeat(np.repeat(np.asarray(scale, np.float32), r, axis=0), c, axis=1)
    return full[: shape[0], : shape[1]]


def tensor_stats(amax: np.ndarray, scale: np.ndarray, counts: dict[str, int], numel: int, fmt: str) -> dict[str, Any]:
    """The per-cast record: amax and scale (max amax, min scale over tiles), counts, size, format."""
    a, s = np.asarray(amax, np.float32), np.asarray(scale, np.float32)
    return {
        "amax": float(np.max(a)) if a.size else 0.0,
        "scale": float(np.min(s)) if s.size else 1.0,
        "saturated": int(counts["saturated"]),
        "underflowed": int(counts["underflowed"]),
        "numel": int(numel),
        "tiles": int(a.size),
        "fmt": fmt,
    }


def cast_operand(
    x: np.ndarray, recipe: Fp8Recipe, key: str, role: str
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Cast one K-major operand as the engines do: ``(q, per-element scale, stats)``."""
    x = np.asarray(x, dtype=np.float32)
    tile = recipe.tile(role)
    amax = tile_amax(x, tile)
    grid = recipe.scale(key, role, amax)
    scale = expand(grid, x.shape, tile)
    fmt = recipe.fmt(role)
    q = quantize(x, scale, fmt)
    return q, scale, tensor_stats(amax, grid, cast_counts(x, scale, q, fmt), x.size, fmt)
